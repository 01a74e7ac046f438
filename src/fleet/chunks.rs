//! Archives in the fleet's database: streamed in chunks of 1 MiB, each stored once under the
//! SHA-256 of its bytes, the archive under the SHA-256 of the whole. Neither way holds more
//! than a chunk or two in memory; both check every hash.
//!
//! A chunk is inserted by a statement of its own (a retried or crashed upload leaves chunks
//! that the next upload of the same bytes reuses); the archive's row and its list of chunks
//! are written with the job, in its transaction.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::pg::{OPERATION_TIMEOUT, Pg, Pool};
use crate::queue::store::StoreError;

/// The size of a chunk.
pub const CHUNK: usize = 1 << 20;

/// An archive whose chunks are in the database, not yet linked to a job.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sha256: String,
    pub bytes: i64,
    /// The chunks' hashes, in order.
    pub chunks: Vec<String>,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Sends the archive at `path` chunk by chunk (read on the calling thread).
pub fn upload(pg: &Pg, path: &Path) -> Result<Stored, StoreError> {
    let mut file = File::open(path).map_err(io_error("cannot open the archive", path))?;
    let mut whole = Sha256::new();
    let mut stored = Stored {
        sha256: String::new(),
        bytes: 0,
        chunks: Vec::new(),
    };
    loop {
        let data = read_chunk(&mut file).map_err(io_error("cannot read the archive", path))?;
        if data.is_empty() && !stored.chunks.is_empty() {
            break;
        }
        whole.update(&data);
        stored.bytes += data.len() as i64;
        let sha = hex::encode(Sha256::digest(&data));
        stored.chunks.push(sha.clone());
        let last = data.len() < CHUNK;
        pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0.execute(
                    "INSERT INTO chunks (sha256, data) VALUES ($1, $2)
                     ON CONFLICT (sha256) DO NOTHING",
                    &[&sha, &data],
                ),
            )
            .await;
            pool.settle(conn, result)
        })?;
        if last {
            break;
        }
    }
    stored.sha256 = hex::encode(whole.finalize());
    Ok(stored)
}

/// Up to [`CHUNK`] bytes (fewer only at the end of the file).
fn read_chunk(file: &mut File) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(CHUNK);
    Read::take(&mut *file, CHUNK as u64).read_to_end(&mut data)?;
    Ok(data)
}

/// Writes the archive's row and its list of chunks (in the job's transaction).
pub async fn link(
    tx: &tokio_postgres::Transaction<'_>,
    archive: &Stored,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "INSERT INTO archives (sha256, bytes) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING",
        &[&archive.sha256, &archive.bytes],
    )
    .await?;
    tx.execute(
        "INSERT INTO archive_chunks (archive, idx, chunk)
         SELECT $1, (t.i - 1)::int, t.c FROM unnest($2::text[]) WITH ORDINALITY AS t(c, i)
         ON CONFLICT (archive, idx) DO NOTHING",
        &[&archive.sha256, &archive.chunks],
    )
    .await?;
    Ok(())
}

/// Copies job `id`'s archive into the new file `to`, checking each chunk's hash and the
/// whole's; on any mismatch the file is removed and the archive refused.
pub fn download(pg: &Pg, id: &str, to: &Path) -> Result<(), StoreError> {
    let key = id.to_owned();
    let row = pg.run(move |pool: Arc<Pool>| async move {
        let conn = pool.get().await?;
        let result = tokio::time::timeout(
            OPERATION_TIMEOUT,
            conn.0.query_opt(
                "SELECT j.archive, a.bytes,
                        array(SELECT chunk FROM archive_chunks WHERE archive = j.archive
                              ORDER BY idx)
                 FROM jobs j LEFT JOIN archives a ON a.sha256 = j.archive WHERE j.id = $1",
                &[&key],
            ),
        )
        .await;
        pool.settle(conn, result)
    })?;
    let Some(row) = row else {
        return Err(StoreError::Missing(id.to_owned()));
    };
    let (Some(sha256), Some(bytes)) = (
        row.get::<_, Option<String>>(0),
        row.get::<_, Option<i64>>(1),
    ) else {
        return Err(StoreError::Record {
            id: id.to_owned(),
            reason: "it has no archive in the store".into(),
        });
    };
    let chunks: Vec<String> = row.get(2);
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_error("cannot create", to))?;
    let result = write_chunks(pg, id, &chunks, (&sha256, bytes), (file, to));
    if result.is_err() {
        // Only the file made here is removed (never one that was there before).
        let _ = std::fs::remove_file(to);
    }
    result
}

fn write_chunks(
    pg: &Pg,
    id: &str,
    chunks: &[String],
    (sha256, bytes): (&str, i64),
    (mut file, to): (File, &Path),
) -> Result<(), StoreError> {
    let mut whole = Sha256::new();
    let mut written: i64 = 0;
    for (index, chunk) in chunks.iter().enumerate() {
        let key = chunk.clone();
        let data: Option<Vec<u8>> = pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0
                    .query_opt("SELECT data FROM chunks WHERE sha256 = $1", &[&key]),
            )
            .await;
            pool.settle(conn, result).map(|row| row.map(|r| r.get(0)))
        })?;
        let corrupt = |what: String| {
            io_error("refusing to write", to)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the archive of job {id} in the store is damaged: {what}"),
            ))
        };
        let Some(data) = data else {
            return Err(corrupt(format!("chunk {index} ({chunk}) is missing")));
        };
        if hex::encode(Sha256::digest(&data)) != *chunk {
            return Err(corrupt(format!("chunk {index} does not match its SHA-256")));
        }
        whole.update(&data);
        written += data.len() as i64;
        file.write_all(&data)
            .map_err(io_error("cannot write", to))?;
    }
    if written != bytes || hex::encode(whole.finalize()) != sha256 {
        return Err(io_error("refusing to write", to)(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the archive of job {id} in the store is damaged: {written} bytes whose SHA-256 \
                 is not the archive's ({bytes} bytes, {sha256})"
            ),
        )));
    }
    file.sync_all().map_err(io_error("cannot sync", to))
}
