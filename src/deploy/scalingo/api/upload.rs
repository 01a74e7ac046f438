//! The upload: the archive streamed from disk to the storage's URL, with a length and no
//! chunking, redirects followed by hand (the body cannot be replayed by the HTTP client).

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};

use super::{ApiError, ScalingoClient, http_error, read_error_response};

/// The slowest upload rate tolerated before an upload counts as timed out.
const MIN_UPLOAD_RATE: u64 = 64 * 1024;
/// Redirects followed by an upload.
const MAX_UPLOAD_REDIRECTS: usize = 5;
/// Bytes read from the archive at a time during an upload.
pub(super) const UPLOAD_CHUNK: usize = 256 * 1024;
/// Chunks read ahead of the socket during an upload.
const UPLOAD_READ_AHEAD: usize = 8;

/// An upload buffer that goes back to its pool when the HTTP client drops it.
struct Recycled {
    buffer: Vec<u8>,
    pool: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        if let Ok(mut free) = self.pool.lock()
            && free.len() < UPLOAD_READ_AHEAD + 2
        {
            free.push(std::mem::take(&mut self.buffer));
        }
    }
}

/// A file's content as a stream of [`UPLOAD_CHUNK`]-sized chunks, read on a blocking thread
/// straight into the buffers the HTTP client sends (no copy in between), at most
/// [`UPLOAD_READ_AHEAD`] chunks ahead. A buffer the client is done with goes back to the
/// reader, so an upload of any size touches the same few buffers (fresh ones would cost a page
/// fault per page, every chunk). The reader stops when the stream is dropped. A read error
/// names `path`.
pub(super) fn file_chunks(
    mut file: std::fs::File,
    path: &Path,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    let path = path.to_path_buf();
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::channel(UPLOAD_READ_AHEAD);
    let pool = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    tokio::task::spawn_blocking(move || {
        loop {
            let mut chunk = pool
                .lock()
                .ok()
                .and_then(|mut free| free.pop())
                .unwrap_or_else(|| Vec::with_capacity(UPLOAD_CHUNK));
            chunk.clear();
            // Read into spare capacity: no zeroing.
            let outcome = loop {
                match (&mut file)
                    .take((UPLOAD_CHUNK - chunk.len()) as u64)
                    .read_to_end(&mut chunk)
                {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    other => break other,
                }
            };
            let at_end = chunk.len() < UPLOAD_CHUNK;
            if !chunk.is_empty() {
                let owner = Recycled {
                    buffer: chunk,
                    pool: pool.clone(),
                };
                if tx
                    .blocking_send(Ok(bytes::Bytes::from_owner(owner)))
                    .is_err()
                {
                    return;
                }
            }
            if let Err(e) = outcome {
                let e = std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()));
                let _ = tx.blocking_send(Err(e));
                return;
            }
            if at_end {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

impl ScalingoClient {
    /// `PUT upload_url` with the archive streamed from disk: `Content-Length` set, no chunked
    /// encoding, no `Authorization` header. Redirects are followed; only 200 counts as success.
    /// `progress` is called with the number of bytes sent so far.
    pub async fn upload(
        &self,
        upload_url: &str,
        archive: &Path,
        progress: impl Fn(u64) + Send + Sync + Clone + 'static,
    ) -> Result<(), ApiError> {
        let what = "upload";
        let mut url = upload_url.to_string();
        for _ in 0..=MAX_UPLOAD_REDIRECTS {
            let file = tokio::fs::File::open(archive)
                .await
                .map_err(|source| ApiError::File {
                    what,
                    path: archive.to_path_buf(),
                    source,
                })?;
            let len = file
                .metadata()
                .await
                .map_err(|source| ApiError::File {
                    what,
                    path: archive.to_path_buf(),
                    source,
                })?
                .len();
            let limit = self.timeout + Duration::from_secs(len / MIN_UPLOAD_RATE);
            let started = Instant::now();
            let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let report = progress.clone();
            let stream = file_chunks(file.into_std().await, archive).inspect_ok(move |chunk| {
                let total = sent
                    .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed)
                    + chunk.len() as u64;
                report(total);
            });
            let response = self
                .http
                .put(&url)
                .header(CONTENT_TYPE, "application/x-gzip")
                .header(CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(stream))
                .timeout(limit)
                .send()
                .await
                .map_err(|e| http_error(what, &url, e, started, limit))?;
            let status = response.status();
            if status.is_redirection() {
                let next = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| response.url().join(l).ok());
                match next {
                    Some(next) => {
                        url = next.to_string();
                        continue;
                    }
                    None => {
                        return Err(ApiError::Decode {
                            what,
                            detail: format!("HTTP {status} without a usable Location header"),
                        });
                    }
                }
            }
            if status != reqwest::StatusCode::OK {
                return Err(read_error_response(what, response).await);
            }
            return Ok(());
        }
        Err(ApiError::Decode {
            what,
            detail: format!("more than {MAX_UPLOAD_REDIRECTS} redirects"),
        })
    }
}
