//! Checking a `.tar.gz` before it is uploaded.
//!
//! The platform accepts any bytes at upload and only fails minutes later with a `build-error`,
//! so dropdeploy checks the archive first. [`inspect`] streams the file once, in constant memory
//! (no extraction; beyond fixed-size buffers it keeps only up to 1000 top-level names, the
//! symlinks and the names their targets step through, within the paths policy's fixed budget,
//! and the `tar` crate holds one GNU long-name or pax extension body at a time, which the size
//! limit bounds), and returns either a [`Summary`] (root folder, counts, sizes, sha256 of the exact
//! bytes read) or a [`Rejection`] whose reason a person can act on.
//!
//! What is checked, in stream order:
//! - the file is gzip (one or more members, as parallel packers write), every member's CRC and
//!   length verified, and nothing but zero bytes after the last member: GNU `tar xzf` fails on
//!   other trailing data ("trailing garbage ignored", exit 2), while zero padding is accepted by
//!   `gzip` and `tar` alike, so that is what we accept too, up to [`gzip::MAX_TRAILING_ZEROS`];
//! - the file itself is at most [`Limits::max_compressed`] (reading stops one chunk past it);
//! - the uncompressed stream (counted as it is read, reading stops one byte past the limit) is at
//!   most [`Limits::max_uncompressed`];
//! - it is a readable tar archive: every header and body read or skipped, so truncation is found,
//!   and nothing but zeros after its end-of-archive blocks;
//! - entry paths and links pass the [`paths`](crate::archive::paths) policy, the same one the
//!   local extractor applies: no absolute path, no `..` component, nothing written through a
//!   symlink, and no symlink or hard link that leads outside the top-level folder, with link
//!   chains resolved as the extracted tree would resolve them;
//! - no device file or fifo;
//! - every entry lives under one single top-level folder (a leading `./` is ignored).

mod guard;
mod gzip;
mod messages;
mod scan;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::config::DEFAULT_MAX_ARCHIVE_BYTES;
use guard::SizeLimit;
use gzip::{GZIP_MAGIC, GzipMembers, SNIFF_LEN, SourceReader, read_prefix};
pub(crate) use messages::human_size;
use messages::{not_gzip, plural, tar_rejection};
use scan::{Scan, ScanError, check_tail, scan_entries};

/// How much an archive may hold before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest accepted size, in bytes, of the uncompressed tar stream (headers, bodies and
    /// padding included). One byte more and the archive is refused as
    /// [`RejectionKind::TooLarge`], without decompressing further.
    pub max_uncompressed: u64,
}

impl Limits {
    /// The largest accepted size of the file itself: what any gzip of a tar stream within
    /// [`Limits::max_uncompressed`] can take (deflate's stored blocks add 5 bytes per 64 KiB,
    /// every member about 20), with room to spare. Past it the archive is refused as
    /// [`RejectionKind::TooLarge`] without reading further: empty gzip members or zero padding
    /// could otherwise go on for ever, and every byte of the file would be uploaded.
    pub fn max_compressed(&self) -> u64 {
        self.max_uncompressed
            .saturating_add(self.max_uncompressed / 16)
            .saturating_add(1024 * 1024)
    }
}

impl Default for Limits {
    /// The platform's own ceiling, [`DEFAULT_MAX_ARCHIVE_BYTES`] (300 MiB).
    fn default() -> Self {
        Limits {
            max_uncompressed: DEFAULT_MAX_ARCHIVE_BYTES,
        }
    }
}

/// What an accepted archive holds, as found while streaming it once.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    /// The name of the single top-level folder, without a trailing `/` (lossy UTF-8).
    pub root: String,
    /// Tar entries, folders and links included; pax global headers are not counted.
    pub entries: u64,
    /// Regular files among the entries.
    pub files: u64,
    /// Size of the uncompressed tar stream, padding included.
    pub uncompressed_bytes: u64,
    /// Size of the file, i.e. every byte that was read and hashed.
    pub compressed_bytes: u64,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

impl fmt::Display for Summary {
    /// `app/: 132 entries (120 files), 4.1 MB uncompressed, 1.2 MB compressed, sha256 <hex>`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/: {} ({}), {} uncompressed, {} compressed, sha256 {}",
            self.root,
            plural(self.entries, "entry", "entries"),
            plural(self.files, "file", "files"),
            human_size(self.uncompressed_bytes),
            human_size(self.compressed_bytes),
            self.sha256
        )
    }
}

/// Why [`inspect`] did not produce a [`Summary`].
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be opened or read. This is not the archive's fault (missing file,
    /// permissions, disk error); trying again later may work.
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The archive is bad and the platform would fail to build it; trying again will not help.
    /// Displays as the reason alone.
    #[error(transparent)]
    Rejected(#[from] Rejection),
}

/// A verdict against an archive: a reason meant for a person, and its category for code.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rejection {
    /// One line, naming the offending entry or offset, e.g. `fifo app/pipe`.
    pub reason: String,
    /// What kind of problem it is.
    pub kind: RejectionKind,
}

impl Rejection {
    fn new(kind: RejectionKind, reason: impl Into<String>) -> Self {
        Rejection {
            reason: reason.into(),
            kind,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Rejection {}

/// The category of a [`Rejection`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionKind {
    /// A zero-byte file, or an archive with no entries.
    Empty,
    /// The file is not gzip at all (the reason names the format it looks like, if known).
    NotGzip,
    /// Bad deflate data, a CRC or length mismatch, or non-zero data (or more than
    /// [`gzip::MAX_TRAILING_ZEROS`] zero bytes) after the last member.
    CorruptGzip,
    /// The gzip stream ends before its end: an incomplete copy or upload.
    TruncatedGzip,
    /// The gzip stream is fine but does not hold a tar archive.
    NotTar,
    /// The tar archive is damaged or truncated after a valid start.
    CorruptTar,
    /// The uncompressed size exceeds [`Limits::max_uncompressed`], or the file's own size
    /// [`Limits::max_compressed`].
    TooLarge,
    /// Not exactly one top-level folder.
    NoSingleRoot,
    /// An absolute path, a `..` component, or a link leaving the top-level folder.
    UnsafePath,
    /// A device file, a fifo, or an entry type tar cannot extract as a file, folder or link.
    SpecialFile,
}

/// Checks the archive at `path` and summarises it; see the [module docs](self) for the checks.
///
/// Blocking: it reads the whole file (once, in constant memory), so async callers run it in
/// `spawn_blocking`. The summary's `sha256` and `compressed_bytes` describe exactly the bytes
/// that were read and checked; upload those same bytes (do not let the file change in between).
pub fn inspect(path: &Path, limits: &Limits) -> Result<Summary, InspectError> {
    let io_error = |source| InspectError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    match inspect_reader(file, limits) {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(rejection)) => Err(InspectError::Rejected(rejection)),
        Err(source) => Err(io_error(source)),
    }
}

/// The same checks as [`inspect`], on any byte stream (tests, fuzzing, a download in flight).
///
/// The outer `Err` is an error of `reader` itself (not the archive's fault); the inner
/// `Result` is the verdict on the archive. On acceptance `reader` has been read to its end.
pub fn inspect_reader(
    mut reader: impl Read,
    limits: &Limits,
) -> io::Result<Result<Summary, Rejection>> {
    // Sniff the start before gzip sees it, to say what a non-gzip file looks like instead.
    let prefix = read_prefix(&mut reader, SNIFF_LEN)?;
    if prefix.is_empty() {
        return Ok(Err(Rejection::new(
            RejectionKind::Empty,
            "empty file (0 bytes)",
        )));
    }
    if !prefix.starts_with(&GZIP_MAGIC) && prefix[..] != GZIP_MAGIC[..1] {
        return Ok(Err(not_gzip(&prefix)));
    }

    let source = SourceReader::new(Cursor::new(prefix).chain(reader));
    let gzip = GzipMembers::new(
        BufReader::with_capacity(64 * 1024, source),
        limits.max_compressed(),
    );
    let mut archive = tar::Archive::new(SizeLimit::new(gzip, limits.max_uncompressed));
    let mut scan = Scan::default();
    let mut scanned = scan_entries(&mut archive, &mut scan);
    let mut stream = archive.into_inner();
    if scanned.is_ok() {
        // Reading to the end checks the last gzip CRCs and whatever follows the tar's end.
        scanned = check_tail(&mut stream, scan.entries);
    }

    // A failure surfaces at the top (tar) but the lowest layer that saw it knows its cause.
    if let Some(error) = stream.inner.take_source_error() {
        return Err(error);
    }
    if let Some(rejection) = stream.inner.fault.take() {
        return Ok(Err(rejection));
    }
    if let Some(rejection) = stream.headers.fault.take() {
        return Ok(Err(rejection));
    }
    if stream.exceeded {
        return Ok(Err(Rejection::new(
            RejectionKind::TooLarge,
            format!(
                "uncompressed size exceeds the limit of {}",
                human_size(limits.max_uncompressed)
            ),
        )));
    }
    match scanned {
        Ok(()) => {}
        Err(ScanError::Rejected(rejection)) => return Ok(Err(rejection)),
        Err(ScanError::Tar(error)) => {
            return Ok(Err(tar_rejection(
                &error,
                &scan,
                stream.bytes,
                stream.inner.done,
            )));
        }
    }
    let root = match scan.single_root() {
        Ok(root) => root,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let uncompressed_bytes = stream.bytes;
    let Some(source) = stream.inner.into_source() else {
        return Err(io::Error::other("the gzip reader lost its input"));
    };
    Ok(Ok(Summary {
        root,
        entries: scan.entries,
        files: scan.files,
        uncompressed_bytes,
        compressed_bytes: source.bytes,
        sha256: hex::encode(source.hasher.finalize()),
    }))
}
