//! Packing a watched source directory into a `.tar.gz` the platform accepts.
//!
//! [`pack`] streams the entries that [`IgnoreRules::walk`] lists into a gzip-compressed tar
//! under one top-level folder, reading one file at a time through fixed-size buffers (neither a
//! file nor the archive is held in memory). The archive passes
//! [`inspect`](crate::archive::inspect::inspect), and it is deterministic: packing an unchanged
//! tree twice gives the same bytes.
//!
//! What goes in, and how:
//! - `<prefix>/` first (the root's mode and mtime), then every entry in walk order (byte order
//!   of the relative path), directories named with a trailing `/`;
//! - owner 0/0 with empty user and group names; the entry's mtime; its permission bits
//!   (`0o777`: setuid, setgid and sticky bits are dropped, a deploy has no use for them);
//!   GNU long-name records for paths or link targets over 100 bytes;
//! - symlinks as symlinks (never followed), unless their target is absolute or leaves the tree
//!   (judged lexically from the link's folder, as `inspect` does): those are skipped with a
//!   warning, as are sockets, fifos and devices, and listed in [`PackSummary::skipped`];
//! - hard links are packed as separate regular files;
//! - an entry that vanishes between the walk and its packing is skipped (and listed), so is one
//!   whose type changed (a file replaced by a symlink, say), since a change event follows;
//! - a file whose size changes while it is read is packed with the size it had when opened:
//!   the rest is cut off or padded with zeros, a warning names it, and the digest covers exactly
//!   the bytes written. The change that caused it also triggers the next pack.
//!
//! Compression runs on every core: [`ParGz`] cuts the tar stream into 128 KiB blocks and
//! compresses them in parallel into one gzip member, as pigz does (the bytes do not depend on
//! the number of threads). The gzip header holds no file name and mtime 0. While the archive is
//! written, its SHA-256 and its uncompressed size are computed, so the caller need not read it
//! again; with [`PackOptions::max_uncompressed`] set, packing stops as soon as the tar stream
//! passes that size ([`PackError::TooLarge`]). Nothing is fsynced: that is the caller's
//! business, as is running this blocking code off the async runtime (`spawn_blocking`).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::archive::ignore::{EntryKind, IgnoreError, IgnoreRules, TreeEntry};
use crate::archive::pgzip::ParGz;

/// The gzip level used unless told otherwise (gzip's own default).
pub const DEFAULT_LEVEL: u32 = 6;

/// How to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackOptions {
    /// The single top-level folder of the archive, e.g. the app name: one path component of
    /// `[A-Za-z0-9._-]`, not `.` or `..` (else [`PackError::BadPrefix`]).
    pub prefix: String,
    /// The gzip level, 0 (store) to 9 (smallest); above 9 counts as 9.
    pub level: u32,
    /// Compression threads; 0 (the default) means one per core.
    pub threads: usize,
    /// The largest uncompressed tar stream accepted (as
    /// [`Limits::max_uncompressed`](crate::archive::inspect::Limits)); `None`: no limit.
    pub max_uncompressed: Option<u64>,
}

impl PackOptions {
    /// Options with this prefix and the [`DEFAULT_LEVEL`].
    pub fn new(prefix: impl Into<String>) -> Self {
        PackOptions {
            prefix: prefix.into(),
            level: DEFAULT_LEVEL,
            threads: 0,
            max_uncompressed: None,
        }
    }
}

impl Default for PackOptions {
    /// Prefix `app`, level [`DEFAULT_LEVEL`].
    fn default() -> Self {
        PackOptions::new("app")
    }
}

/// What a pack wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSummary {
    /// Tar entries, the top-level folder included (GNU long-name records are not counted): the
    /// same count as [`Summary::entries`](crate::archive::inspect::Summary::entries).
    pub entries: u64,
    /// Regular files among them.
    pub files: u64,
    /// File content bytes written (the sum of the regular files' sizes).
    pub bytes_in: u64,
    /// Size of the archive written.
    pub bytes_out: u64,
    /// Size of the uncompressed tar stream (what `gzip -dc` gives back), padding included.
    pub uncompressed_bytes: u64,
    /// SHA-256 of the archive written, lowercase hex.
    pub sha256: String,
    /// The tree's content digest, as [`tree_digest`] computes it.
    pub digest: String,
    /// Entries left out while packing (absolute path, and why): sockets, fifos, devices,
    /// symlinks leaving the tree, entries that vanished or changed type meanwhile.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Why a pack failed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading a source entry or writing the archive failed: `path` is the file that failed
    /// (empty when writing to a caller's writer failed) and `action` what was being done to it,
    /// e.g. `cannot open /src/app/secret.pem: Permission denied (os error 13)`.
    #[error("{}", describe_io(action, path, source))]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    /// The ignore rules could not list the tree.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    /// The tar stream grew past [`PackOptions::max_uncompressed`]; packing stopped there.
    #[error(
        "the tree is too large: its archive would exceed the limit of {limit} bytes uncompressed \
         (max_archive_size)"
    )]
    TooLarge { limit: u64 },
    /// The prefix is not a single safe path component.
    #[error(
        "bad archive folder name {0:?}: it must be one path component made of letters, digits, \
         '.', '_' or '-' (and not '.' or '..')"
    )]
    BadPrefix(String),
}

fn describe_io(action: &str, path: &Path, source: &io::Error) -> String {
    if path.as_os_str().is_empty() {
        format!("cannot {action}: {source}")
    } else {
        format!("cannot {action} {}: {source}", path.display())
    }
}

/// Packs the tree of `rules` into a new archive at `out` (created, or truncated).
///
/// Blocking; streaming (never holds a file or the archive in memory); writes through a
/// `BufWriter`, does not fsync. On error the partial archive is removed (best effort) and the
/// error names the path that failed: an unreadable source file fails the whole pack.
pub fn pack(rules: &IgnoreRules, out: &Path, opts: &PackOptions) -> Result<PackSummary, PackError> {
    pack_with_progress(rules, out, opts, &mut |_| {})
}

/// How far a pack is: called after each entry is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackProgress {
    /// Entries written so far, the top-level folder included.
    pub entries: u64,
    /// Entries the pack will write at most (some may still be skipped).
    pub total_entries: u64,
    /// Regular files written so far.
    pub files: u64,
    /// File content bytes written so far.
    pub bytes_in: u64,
}

/// Like [`pack`], telling `progress` after each entry how far it is (for a progress bar).
pub fn pack_with_progress(
    rules: &IgnoreRules,
    out: &Path,
    opts: &PackOptions,
    progress: &mut dyn FnMut(PackProgress),
) -> Result<PackSummary, PackError> {
    check_prefix(&opts.prefix)?;
    let file = File::create(out).map_err(|source| PackError::Io {
        path: out.to_path_buf(),
        action: "create",
        source,
    })?;
    match checked_limit(write_tar_gz(rules, file, opts, progress), opts) {
        Ok(summary) => Ok(summary),
        Err(error) => {
            let _ = fs::remove_file(out);
            Err(match error {
                PackError::Io { path, source, .. } if path.as_os_str().is_empty() => {
                    PackError::Io {
                        path: out.to_path_buf(),
                        action: "write",
                        source,
                    }
                }
                other => other,
            })
        }
    }
}

/// Like [`pack`], into any writer (buffered here; flushed before returning). A failure to write
/// is a [`PackError::Io`] with an empty `path`.
pub fn pack_to_writer(
    rules: &IgnoreRules,
    out: impl Write,
    opts: &PackOptions,
) -> Result<PackSummary, PackError> {
    check_prefix(&opts.prefix)?;
    checked_limit(write_tar_gz(rules, out, opts, &mut |_| {}), opts)
}

/// Every write error, wherever it surfaced, is checked here for the size limit.
fn checked_limit(
    packed: Result<PackSummary, PackError>,
    opts: &PackOptions,
) -> Result<PackSummary, PackError> {
    packed.map_err(|error| match error {
        PackError::Io { source, .. }
            if source.get_ref().is_some_and(|e| e.is::<LimitReached>()) =>
        {
            PackError::TooLarge {
                limit: opts.max_uncompressed.unwrap_or(u64::MAX),
            }
        }
        other => other,
    })
}

fn write_tar_gz(
    rules: &IgnoreRules,
    out: impl Write,
    opts: &PackOptions,
    progress: &mut dyn FnMut(PackProgress),
) -> Result<PackSummary, PackError> {
    let write_error = |source| PackError::Io {
        path: PathBuf::new(),
        action: "write the archive",
        source,
    };
    let entries = rules.walk()?;
    let hashed = Hashed {
        inner: BufWriter::with_capacity(128 * 1024, out),
        bytes: 0,
        hasher: Sha256::new(),
    };
    let gzip = ParGz::new(hashed, opts.level.min(9), opts.threads);
    let counted = Limited {
        inner: gzip,
        bytes: 0,
        limit: opts.max_uncompressed.unwrap_or(u64::MAX),
    };
    let mut builder = tar::Builder::new(counted);

    let root = rules.root();
    let meta = fs::metadata(root).map_err(|source| PackError::Io {
        path: root.to_path_buf(),
        action: "read the metadata of",
        source,
    })?;
    let mut header = base_header(&meta, EntryType::Directory);
    builder
        .append_data(&mut header, format!("{}/", opts.prefix), io::empty())
        .map_err(write_error)?;

    let mut walker = Walker::new();
    walker.summary.entries = 1;
    let total_entries = entries.len() as u64 + 1;
    for entry in &entries {
        walker.entry(entry, Some((&mut builder, &opts.prefix)))?;
        progress(PackProgress {
            entries: walker.summary.entries,
            total_entries,
            files: walker.summary.files,
            bytes_in: walker.summary.bytes_in,
        });
    }

    let counted = builder.into_inner().map_err(write_error)?;
    let uncompressed_bytes = counted.bytes;
    let hashed = counted.inner.finish().map_err(write_error)?;
    let (bytes_out, sha256) = (hashed.bytes, hex::encode(hashed.hasher.finalize()));
    hashed
        .inner
        .into_inner()
        .map_err(|error| write_error(error.into_error()))?
        .flush()
        .map_err(write_error)?;
    let mut summary = walker.finish();
    summary.bytes_out = bytes_out;
    summary.uncompressed_bytes = uncompressed_bytes;
    summary.sha256 = sha256;
    Ok(summary)
}

/// The tree's content digest without writing an archive: the same value as
/// [`PackSummary::digest`] for an unchanged tree, and the same reads (so the same errors).
///
/// It is the lowercase hex SHA-256 over, for each packed entry in walk order: its relative
/// path, NUL, its kind and permission bits as text (`dir 755`, `symlink 777`, `file 644 <size
/// in bytes>`), NUL, the content (a file's bytes, a symlink's target, nothing for a folder),
/// NUL. So a rename, a chmod or an edit changes it; touching a file (mtime only) does not, nor
/// does the archive's prefix. Entries that are skipped do not count.
pub fn tree_digest(rules: &IgnoreRules) -> Result<String, PackError> {
    let mut walker = Walker::new();
    for entry in &rules.walk()? {
        walker.entry::<io::Sink>(entry, None)?;
    }
    Ok(walker.finish().digest)
}

fn check_prefix(prefix: &str) -> Result<(), PackError> {
    let safe = !prefix.is_empty()
        && prefix != "."
        && prefix != ".."
        && prefix
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    if safe {
        Ok(())
    } else {
        Err(PackError::BadPrefix(prefix.to_string()))
    }
}

/// A header with the fields every entry shares: owner 0/0, no names, mode and mtime.
fn base_header(meta: &fs::Metadata, kind: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(meta.mode() & 0o777);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    header.set_size(0);
    header
}

/// Counts and hashes the bytes written through it (the archive).
struct Hashed<W> {
    inner: W,
    bytes: u64,
    hasher: Sha256,
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The error payload of a write past [`Limited::limit`].
#[derive(Debug)]
struct LimitReached;

impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the uncompressed size limit is reached")
    }
}

impl std::error::Error for LimitReached {}

/// Counts the bytes written through it (the tar stream) and refuses to pass `limit`.
struct Limited<W> {
    inner: W,
    bytes: u64,
    limit: u64,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.saturating_add(buf.len() as u64) > self.limit {
            return Err(io::Error::other(LimitReached));
        }
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What an entry is now, from its `lstat` (symbolic links are not followed).
fn entry_kind(file_type: &fs::FileType) -> EntryKind {
    if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File
    } else if file_type.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Special
    }
}

/// Packs (or only digests) entries one by one, keeping the digest and the counts.
struct Walker {
    hasher: Sha256,
    summary: PackSummary,
}

impl Walker {
    fn new() -> Self {
        Walker {
            hasher: Sha256::new(),
            summary: PackSummary {
                entries: 0,
                files: 0,
                bytes_in: 0,
                bytes_out: 0,
                uncompressed_bytes: 0,
                sha256: String::new(),
                digest: String::new(),
                skipped: Vec::new(),
            },
        }
    }

    fn finish(mut self) -> PackSummary {
        self.summary.digest = hex::encode(self.hasher.finalize());
        self.summary
    }

    fn skip(&mut self, path: &Path, why: String) {
        tracing::warn!(path = %path.display(), "not packed: {why}");
        self.summary.skipped.push((path.to_path_buf(), why));
    }

    /// One entry: into the archive if there is one, into the digest in any case.
    fn entry<W: Write>(
        &mut self,
        entry: &TreeEntry,
        mut archive: Option<(&mut tar::Builder<W>, &str)>,
    ) -> Result<(), PackError> {
        let path = &entry.absolute;
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.skip(path, "it vanished while packing".into());
                return Ok(());
            }
            Err(source) => {
                return Err(PackError::Io {
                    path: path.clone(),
                    action: "read the metadata of",
                    source,
                });
            }
        };
        let file_type = meta.file_type();
        let kind = entry_kind(&file_type);
        if kind == EntryKind::Special {
            self.skip(path, special_reason(&file_type).into());
            return Ok(());
        }
        if kind != entry.kind {
            self.skip(path, "its type changed while packing".into());
            return Ok(());
        }
        let name = archive_name(archive.as_ref().map(|(_, prefix)| *prefix), entry);
        let mode = meta.mode() & 0o777;
        let write_error = |source| PackError::Io {
            path: PathBuf::new(),
            action: "write the archive",
            source,
        };
        match kind {
            EntryKind::Dir => {
                self.digest_head(entry, &format!("dir {mode:o}"));
                self.hasher.update([0]);
                if let Some((builder, _)) = archive.as_mut() {
                    let mut header = base_header(&meta, EntryType::Directory);
                    builder
                        .append_data(&mut header, &name, io::empty())
                        .map_err(write_error)?;
                }
            }
            EntryKind::Symlink => {
                let target = fs::read_link(path).map_err(|source| PackError::Io {
                    path: path.clone(),
                    action: "read the symlink",
                    source,
                })?;
                if let Some(why) = unsafe_target(&entry.relative, &target) {
                    self.skip(path, why);
                    return Ok(());
                }
                self.digest_head(entry, &format!("symlink {mode:o}"));
                self.hasher.update(target.as_os_str().as_bytes());
                self.hasher.update([0]);
                if let Some((builder, _)) = archive.as_mut() {
                    let mut header = base_header(&meta, EntryType::Symlink);
                    builder
                        .append_link(&mut header, &name, &target)
                        .map_err(write_error)?;
                }
            }
            EntryKind::File => return self.file(entry, &meta, &name, archive.map(|(b, _)| b)),
            EntryKind::Special => {}
        }
        self.summary.entries += 1;
        Ok(())
    }

    /// A regular file; `seen` is its `lstat`, which said it was one.
    fn file<W: Write>(
        &mut self,
        entry: &TreeEntry,
        seen: &fs::Metadata,
        name: &Path,
        archive: Option<&mut tar::Builder<W>>,
    ) -> Result<(), PackError> {
        let path = &entry.absolute;
        let io_error = |action, source| PackError::Io {
            path: path.clone(),
            action,
            source,
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.skip(path, "it vanished while packing".into());
                return Ok(());
            }
            Err(source) => return Err(io_error("open", source)),
        };
        // What was opened is what was seen: not a symlink or another file swapped in since.
        let meta = file
            .metadata()
            .map_err(|source| io_error("read the metadata of", source))?;
        if !meta.is_file() || (meta.dev(), meta.ino()) != (seen.dev(), seen.ino()) {
            self.skip(path, "it was replaced while packing".into());
            return Ok(());
        }
        let size = meta.len();
        self.digest_head(entry, &format!("file {:o} {size}", meta.mode() & 0o777));
        let mut body = ExactSize {
            file,
            remaining: size,
            at_end: false,
            hasher: &mut self.hasher,
            error: None,
        };
        let written = match archive {
            Some(builder) => {
                let mut header = base_header(&meta, EntryType::Regular);
                header.set_size(size);
                builder
                    .append_data(&mut header, name, &mut body)
                    .map(|()| size)
            }
            None => io::copy(&mut body, &mut io::sink()),
        };
        if let Some(source) = body.error.take() {
            return Err(io_error("read", source));
        }
        written.map_err(|source| PackError::Io {
            path: PathBuf::new(),
            action: "write the archive",
            source,
        })?;
        let shrank = body.at_end;
        let grew = !shrank && body.file.read(&mut [0u8; 1]).is_ok_and(|n| n > 0);
        self.hasher.update([0]);
        if shrank || grew {
            tracing::warn!(
                path = %path.display(),
                "the file {} while it was packed: packed as its first {size} bytes{}",
                if shrank { "shrank" } else { "grew" },
                if shrank { ", padded with zeros" } else { "" }
            );
        }
        self.summary.entries += 1;
        self.summary.files += 1;
        self.summary.bytes_in += size;
        Ok(())
    }

    /// Relative path, NUL, kind and mode, NUL.
    fn digest_head(&mut self, entry: &TreeEntry, kind_and_mode: &str) {
        self.hasher.update(entry.relative.as_os_str().as_bytes());
        self.hasher.update([0]);
        self.hasher.update(kind_and_mode.as_bytes());
        self.hasher.update([0]);
    }
}

/// `<prefix>/<relative>`, with a trailing `/` for a folder (as GNU tar writes them).
fn archive_name(prefix: Option<&str>, entry: &TreeEntry) -> PathBuf {
    let mut name = PathBuf::from(prefix.unwrap_or(""));
    name.push(&entry.relative);
    if entry.kind == EntryKind::Dir {
        name.push("");
    }
    name
}

fn special_reason(file_type: &fs::FileType) -> &'static str {
    if file_type.is_fifo() {
        "a fifo (named pipe) cannot be deployed"
    } else if file_type.is_socket() {
        "a socket cannot be deployed"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device file cannot be deployed"
    } else {
        "not a file, folder or symlink"
    }
}

/// Why a symlink at `relative` (from the root) pointing to `target` cannot be packed, if it
/// cannot: `inspect` refuses links that are absolute or leave the top-level folder.
fn unsafe_target(relative: &Path, target: &Path) -> Option<String> {
    let bytes = target.as_os_str().as_bytes();
    let shown = target.display();
    if bytes.is_empty() {
        return Some("symlink with an empty target".into());
    }
    if bytes.starts_with(b"/") {
        return Some(format!("symlink to an absolute path ({shown})"));
    }
    let mut depth = relative.iter().count().saturating_sub(1);
    for part in bytes.split(|&byte| byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return Some(format!("symlink leaving the source folder ({shown})")),
            },
            _ => depth += 1,
        }
    }
    None
}

/// A file's body as announced in its header: exactly `remaining` bytes, cut off if the file
/// grew, padded with zeros if it shrank; every byte given out is hashed. A read error is kept
/// (to be reported with the file's path) rather than passed up as the archive's.
struct ExactSize<'a> {
    file: File,
    remaining: u64,
    /// The file ended before its announced size.
    at_end: bool,
    hasher: &'a mut Sha256,
    error: Option<io::Error>,
}

impl Read for ExactSize<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = loop {
            if self.at_end {
                buf[..want].fill(0);
                break want;
            }
            match self.file.read(&mut buf[..want]) {
                Ok(0) => self.at_end = true,
                Ok(n) => break n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let kind = error.kind();
                    self.error = Some(error);
                    return Err(io::Error::new(kind, "reading a source file failed"));
                }
            }
        };
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
