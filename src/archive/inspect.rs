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
//!   `gzip` and `tar` alike, so that is what we accept too;
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

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Cursor, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::GzDecoder;
use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::archive::paths;
use crate::config::DEFAULT_MAX_ARCHIVE_BYTES;

/// How much an archive may hold before it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest accepted size, in bytes, of the uncompressed tar stream (headers, bodies and
    /// padding included). One byte more and the archive is refused as
    /// [`RejectionKind::TooLarge`], without decompressing further.
    pub max_uncompressed: u64,
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
    /// Bad deflate data, a CRC or length mismatch, or non-zero data after the last member.
    CorruptGzip,
    /// The gzip stream ends before its end: an incomplete copy or upload.
    TruncatedGzip,
    /// The gzip stream is fine but does not hold a tar archive.
    NotTar,
    /// The tar archive is damaged or truncated after a valid start.
    CorruptTar,
    /// The uncompressed size exceeds [`Limits::max_uncompressed`].
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
    let gzip = GzipMembers::new(BufReader::with_capacity(64 * 1024, source));
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

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Enough to see the `ustar` magic of an uncompressed tar header (offset 257).
const SNIFF_LEN: usize = 512;
/// Distinct top-level names remembered for the error message; more are only counted as "more".
const MAX_TRACKED_ROOTS: usize = 1000;
/// Top-level names spelled out in a "several top-level entries" reason.
const MAX_LISTED_ROOTS: usize = 3;

fn read_prefix(reader: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut prefix = Vec::with_capacity(len);
    reader.take(len as u64).read_to_end(&mut prefix)?;
    Ok(prefix)
}

fn not_gzip(prefix: &[u8]) -> Rejection {
    let shown: Vec<String> = prefix
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let reason = match looks_like(prefix) {
        Some(format) => format!(
            "not a gzip file (it starts with bytes {}, which looks like {format})",
            shown.join(" ")
        ),
        None => format!("not a gzip file (it starts with bytes {})", shown.join(" ")),
    };
    Rejection::new(RejectionKind::NotGzip, reason)
}

/// Names the format of a file by its first bytes, for the formats people confuse with `.tar.gz`.
fn looks_like(prefix: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"PK\x03\x04", "a zip archive"),
        (b"PK\x05\x06", "an empty zip archive"),
        (b"BZh", "a bzip2-compressed file"),
        (b"\xfd7zXZ\x00", "an xz-compressed file"),
        (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
        (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
        (b"Rar!", "a RAR archive"),
        (b"\x1f\x9d", "a compress (.Z) file"),
    ];
    if let Some((_, name)) = MAGICS.iter().find(|(magic, _)| prefix.starts_with(magic)) {
        return Some(name);
    }
    if prefix.get(257..262) == Some(b"ustar") {
        return Some("an uncompressed tar archive");
    }
    let text = prefix.trim_ascii_start();
    let lower: Vec<u8> = text.iter().take(14).map(u8::to_ascii_lowercase).collect();
    if lower.starts_with(b"<!doctype html") || lower.starts_with(b"<html") {
        return Some("an HTML page (a failed download?)");
    }
    None
}

/// The bottom of the stream: counts and hashes the bytes as they are read, and keeps the
/// reader's own error so it is not mistaken for a fault of the archive.
struct SourceReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    error: Option<io::Error>,
}

impl<R> SourceReader<R> {
    fn new(inner: R) -> Self {
        SourceReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
            error: None,
        }
    }
}

impl<R: Read> Read for SourceReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.hasher.update(&buf[..n]);
                    self.bytes += n as u64;
                    return Ok(n);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    let kind = error.kind();
                    self.error.get_or_insert(error);
                    return Err(io::Error::new(kind, "reading the archive failed"));
                }
            }
        }
    }
}

type Compressed<R> = BufReader<SourceReader<R>>;

/// How far gzip has consumed the file (what was read minus what is still buffered).
fn consumed<R>(input: &Compressed<R>) -> u64 {
    input.get_ref().bytes - input.buffer().len() as u64
}

/// Decompresses every gzip member in turn, then accepts only zero bytes up to the end of the
/// file. Records the first fault as a [`Rejection`] (and keeps failing with it).
struct GzipMembers<R> {
    /// `None` only while one member's decoder is swapped for the next one's.
    decoder: Option<GzDecoder<Compressed<R>>>,
    /// The last member ended cleanly and the file is at its end.
    done: bool,
    fault: Option<Rejection>,
}

impl<R: Read> GzipMembers<R> {
    fn new(input: Compressed<R>) -> Self {
        GzipMembers {
            decoder: Some(GzDecoder::new(input)),
            done: false,
            fault: None,
        }
    }

    /// The file's own read error, if reading it failed (not the archive's fault).
    fn take_source_error(&mut self) -> Option<io::Error> {
        let decoder = self.decoder.as_mut()?;
        decoder.get_mut().get_mut().error.take()
    }

    /// The bottom reader, with its count and hash; `None` cannot happen between reads.
    fn into_source(self) -> Option<SourceReader<R>> {
        Some(self.decoder?.into_inner().into_inner())
    }

    fn fail(&mut self, rejection: Rejection) -> io::Error {
        let error = io::Error::new(io::ErrorKind::InvalidData, rejection.reason.clone());
        self.fault.get_or_insert(rejection);
        error
    }

    /// Turns a decoder error into a recorded fault, unless the file itself failed to read.
    fn classify(&mut self, error: io::Error) -> io::Error {
        let Some(decoder) = self.decoder.as_ref() else {
            return error;
        };
        let input = decoder.get_ref();
        if input.get_ref().error.is_some() {
            return error;
        }
        let rejection = if error.kind() == io::ErrorKind::UnexpectedEof {
            Rejection::new(
                RejectionKind::TruncatedGzip,
                format!(
                    "truncated gzip stream after {}",
                    human_size(input.get_ref().bytes)
                ),
            )
        } else if error.to_string().contains("checksum") {
            // flate2 reports a CRC or length mismatch of a member with this wording only.
            Rejection::new(RejectionKind::CorruptGzip, "gzip checksum mismatch")
        } else {
            Rejection::new(
                RejectionKind::CorruptGzip,
                format!(
                    "gzip data corrupt at {}: {error}",
                    human_size(consumed(input))
                ),
            )
        };
        self.fail(rejection)
    }

    /// Called when a member has ended: start the next one, or accept only zeros to the end.
    fn after_member(&mut self) -> io::Result<()> {
        let Some(decoder) = self.decoder.as_mut() else {
            self.done = true;
            return Ok(());
        };
        let input = decoder.get_mut();
        let first = match input.fill_buf()?.first() {
            None => {
                self.done = true;
                return Ok(());
            }
            Some(&byte) => byte,
        };
        if first == GZIP_MAGIC[0] {
            if let Some(previous) = self.decoder.take() {
                self.decoder = Some(GzDecoder::new(previous.into_inner()));
            }
            return Ok(());
        }
        loop {
            let available = input.fill_buf()?;
            if available.is_empty() {
                self.done = true;
                return Ok(());
            }
            let length = available.len();
            match available.iter().position(|&byte| byte != 0) {
                None => input.consume(length),
                Some(at) => {
                    input.consume(at);
                    let offset = consumed(input);
                    return Err(self.fail(Rejection::new(
                        RejectionKind::CorruptGzip,
                        format!(
                            "unexpected data after the end of the gzip stream at {}",
                            human_size(offset)
                        ),
                    )));
                }
            }
        }
    }
}

impl<R: Read> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(fault) = &self.fault {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    fault.reason.clone(),
                ));
            }
            if self.done {
                return Ok(0);
            }
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            match decoder.read(buf) {
                Ok(0) => self.after_member()?,
                Ok(n) => return Ok(n),
                Err(error) => return Err(self.classify(error)),
            }
        }
    }
}

/// Counts the uncompressed bytes and fails once they exceed the limit, having read at most one
/// byte past it (so a gzip bomb costs no more than the limit to refuse).
///
/// It also follows the tar structure ([`Headers`]) to refuse an oversized extension record
/// before the tar reader takes it: `tar` reads a GNU long name or a PAX header into memory
/// whole, so without this a hostile header announcing 300 MB would cost 300 MB.
struct SizeLimit<R> {
    inner: R,
    bytes: u64,
    max: u64,
    exceeded: bool,
    headers: Headers,
}

impl<R> SizeLimit<R> {
    fn new(inner: R, max: u64) -> Self {
        SizeLimit {
            inner,
            bytes: 0,
            max,
            exceeded: false,
            headers: Headers::default(),
        }
    }
}

impl<R: Read> Read for SizeLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.exceeded {
            return Err(io::Error::other("uncompressed size limit exceeded"));
        }
        if self.headers.fault.is_some() {
            return Err(io::Error::other("oversized extension header"));
        }
        let allowed = self.max.saturating_add(1) - self.bytes;
        let len = buf
            .len()
            .min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.bytes += n as u64;
        if self.bytes > self.max {
            self.exceeded = true;
            return Err(io::Error::other("uncompressed size limit exceeded"));
        }
        if !self.headers.observe(&buf[..n]) {
            return Err(io::Error::other("oversized extension header"));
        }
        Ok(n)
    }
}

/// The largest GNU long-name/long-link or PAX record body accepted (a path is at most 4 KiB on
/// Linux; PAX records of a source archive are a few hundred bytes).
const MAX_EXTENSION_BYTES: u64 = 1024 * 1024;

/// Follows the tar stream block by block as it is read, to see each header before the tar
/// reader acts on it. It only ever refuses extension records larger than
/// [`MAX_EXTENSION_BYTES`]; on anything it cannot follow for sure (an unreadable size, a PAX
/// `size` override, the end-of-archive block) it stops looking and leaves the verdict to the
/// tar reader.
#[derive(Default)]
struct Headers {
    /// Body and padding bytes still to pass before the next header.
    skip: u64,
    block: Vec<u8>,
    /// GNU sparse extension blocks follow, then `after_sparse` bytes of data.
    sparse: bool,
    after_sparse: u64,
    /// The body of the PAX header being passed, to look for a `size` override.
    pax: Option<Vec<u8>>,
    done: bool,
    fault: Option<Rejection>,
}

impl Headers {
    /// Takes the next bytes of the stream; false once an oversized record is found.
    fn observe(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() && !self.done {
            if self.skip > 0 {
                let k = data
                    .len()
                    .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                if let Some(pax) = self.pax.as_mut() {
                    pax.extend_from_slice(&data[..k]);
                }
                self.skip -= k as u64;
                data = &data[k..];
                if self.skip == 0
                    && let Some(pax) = self.pax.take()
                    && (pax.starts_with(b"size=") || pax.windows(6).any(|w| w == b" size="))
                {
                    // The next entry's size is not its header's: stop following.
                    self.done = true;
                }
                continue;
            }
            let k = data.len().min(512 - self.block.len());
            self.block.extend_from_slice(&data[..k]);
            data = &data[k..];
            if self.block.len() < 512 {
                break;
            }
            let mut block = [0u8; 512];
            block.copy_from_slice(&self.block);
            self.block.clear();
            if self.sparse {
                // A GNU sparse extension block: byte 504 says whether another follows.
                self.sparse = block[504] != 0;
                if !self.sparse {
                    self.skip = self.after_sparse;
                }
                continue;
            }
            if block.iter().all(|&b| b == 0) {
                self.done = true;
                break;
            }
            let header = tar::Header::from_byte_slice(&block);
            let Ok(size) = header.entry_size() else {
                self.done = true;
                break;
            };
            let kind = header.entry_type();
            let extension = matches!(
                kind,
                EntryType::GNULongName
                    | EntryType::GNULongLink
                    | EntryType::XHeader
                    | EntryType::XGlobalHeader
            );
            if extension && size > MAX_EXTENSION_BYTES {
                self.fault = Some(Rejection::new(
                    RejectionKind::CorruptTar,
                    format!(
                        "{} of {} (more than {} allowed)",
                        match kind {
                            EntryType::GNULongName => "a long-name record",
                            EntryType::GNULongLink => "a long-link record",
                            _ => "a PAX header",
                        },
                        human_size(size),
                        human_size(MAX_EXTENSION_BYTES)
                    ),
                ));
                return false;
            }
            let padded = size.div_ceil(512) * 512;
            if kind == EntryType::XHeader && padded > 0 {
                self.pax = Some(Vec::new());
            }
            if kind == EntryType::GNUSparse && header.as_gnu().is_some_and(|g| g.is_extended()) {
                self.sparse = true;
                self.after_sparse = padded;
            } else {
                self.skip = padded;
            }
        }
        true
    }
}

/// What the walk over the entries has learnt so far.
#[derive(Default)]
struct Scan {
    entries: u64,
    files: u64,
    /// Top-level names in order of appearance, at most [`MAX_TRACKED_ROOTS`].
    roots: Vec<Root>,
    root_index: HashMap<Vec<u8>, usize>,
    /// More distinct top-level names were seen than are tracked.
    more_roots: bool,
    /// The last entry read: its name and where its body (padding included) ends.
    last: Option<(String, u64)>,
    /// Entry paths and links, judged as the local extractor judges them.
    paths: paths::Policy,
}

struct Root {
    name: Vec<u8>,
    /// The type of the entry naming the top-level item itself, if there is one.
    own_type: Option<EntryType>,
    /// Some entry lives inside it, which makes it a folder even without its own entry.
    has_children: bool,
}

impl Root {
    fn is_folder(&self) -> bool {
        match self.own_type {
            Some(kind) => kind.is_dir(),
            None => self.has_children,
        }
    }

    fn shown(&self) -> String {
        let name = String::from_utf8_lossy(&self.name);
        if self.is_folder() {
            format!("{name}/")
        } else {
            name.into_owned()
        }
    }
}

impl Scan {
    fn note_root(&mut self, components: &[&[u8]], kind: EntryType) {
        let Some(first) = components.first() else {
            return;
        };
        let index = match self.root_index.get(*first) {
            Some(&index) => index,
            None if self.roots.len() >= MAX_TRACKED_ROOTS => {
                self.more_roots = true;
                return;
            }
            None => {
                self.roots.push(Root {
                    name: first.to_vec(),
                    own_type: None,
                    has_children: false,
                });
                self.root_index.insert(first.to_vec(), self.roots.len() - 1);
                self.roots.len() - 1
            }
        };
        let root = &mut self.roots[index];
        if components.len() > 1 {
            root.has_children = true;
        } else if root.own_type.is_none() || !kind.is_dir() {
            // A non-folder entry for the top-level name wins: it cannot also be a folder.
            root.own_type = Some(kind);
        }
    }

    fn single_root(&self) -> Result<String, Rejection> {
        if self.entries == 0 {
            return Err(Rejection::new(
                RejectionKind::Empty,
                "empty archive: no entries",
            ));
        }
        match self.roots.as_slice() {
            [] => Err(Rejection::new(
                RejectionKind::Empty,
                "empty archive: no files or folders besides ./",
            )),
            [root] if !self.more_roots => match root.own_type {
                Some(kind) if !kind.is_dir() => Err(Rejection::new(
                    RejectionKind::NoSingleRoot,
                    format!(
                        "the single top-level entry {} is {}, not a folder",
                        String::from_utf8_lossy(&root.name),
                        describe_type(kind)
                    ),
                )),
                _ => Ok(String::from_utf8_lossy(&root.name).into_owned()),
            },
            [first, second] if !self.more_roots => Err(Rejection::new(
                RejectionKind::NoSingleRoot,
                format!(
                    "two top-level entries: {} and {}",
                    first.shown(),
                    second.shown()
                ),
            )),
            roots => {
                let listed: Vec<String> = roots
                    .iter()
                    .take(MAX_LISTED_ROOTS)
                    .map(Root::shown)
                    .collect();
                let unlisted = roots.len() - listed.len();
                let reason = if self.more_roots {
                    format!(
                        "more than {} top-level entries: {} and others",
                        roots.len(),
                        listed.join(", ")
                    )
                } else if unlisted > 0 {
                    format!(
                        "{} top-level entries: {} and {unlisted} more",
                        roots.len(),
                        listed.join(", ")
                    )
                } else {
                    format!("{} top-level entries: {}", roots.len(), join_and(&listed))
                };
                Err(Rejection::new(RejectionKind::NoSingleRoot, reason))
            }
        }
    }
}

/// `a, b and c`
fn join_and(items: &[String]) -> String {
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, head)) => format!("{} and {last}", head.join(", ")),
    }
}

fn describe_type(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Symlink => "a symlink",
        EntryType::Link => "a hard link",
        _ => "a file",
    }
}

enum ScanError {
    /// One of our own checks failed on an entry that tar read fine.
    Rejected(Rejection),
    /// Tar (or a layer below it) could not read on.
    Tar(io::Error),
}

impl From<Rejection> for ScanError {
    fn from(rejection: Rejection) -> Self {
        ScanError::Rejected(rejection)
    }
}

fn scan_entries<R: Read>(archive: &mut tar::Archive<R>, scan: &mut Scan) -> Result<(), ScanError> {
    // Bodies are not read here: fetching the next header skips them, which reads every byte.
    for entry in archive.entries().map_err(ScanError::Tar)? {
        let entry = entry.map_err(ScanError::Tar)?;
        check_entry(&entry, scan)?;
    }
    Ok(())
}

fn check_entry<R: Read>(entry: &tar::Entry<'_, R>, scan: &mut Scan) -> Result<(), Rejection> {
    let kind = entry.header().entry_type();
    if kind.is_pax_global_extensions() {
        // Metadata for the whole archive (git archive puts the commit id there), not a member.
        return Ok(());
    }
    let path = entry.path_bytes();
    let shown = String::from_utf8_lossy(&path).into_owned();
    let padded = entry.size().div_ceil(512) * 512;
    scan.last = Some((shown.clone(), entry.raw_file_position() + padded));
    scan.entries += 1;

    let target = match kind {
        EntryType::Symlink | EntryType::Link => entry.link_name_bytes().unwrap_or_default(),
        _ => Default::default(),
    };
    let policy_kind = match kind {
        EntryType::Directory => paths::EntryKind::Folder,
        EntryType::Symlink => paths::EntryKind::Symlink(&target),
        EntryType::Link => paths::EntryKind::HardLink(&target),
        _ => paths::EntryKind::File,
    };
    match scan.paths.admit(&path, policy_kind) {
        Ok(_) => {}
        // Left to the end, where every top-level name can be listed.
        Err(refusal) if refusal.kind == paths::RefusalKind::Root => {}
        Err(refusal) => {
            let kind = match refusal.kind {
                paths::RefusalKind::Unnamed => RejectionKind::CorruptTar,
                _ => RejectionKind::UnsafePath,
            };
            return Err(Rejection::new(kind, refusal.reason));
        }
    }

    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => scan.files += 1,
        EntryType::Directory | EntryType::Symlink | EntryType::Link => {}
        EntryType::Char | EntryType::Block => {
            return Err(Rejection::new(
                RejectionKind::SpecialFile,
                format!("device file {shown}"),
            ));
        }
        EntryType::Fifo => {
            return Err(Rejection::new(
                RejectionKind::SpecialFile,
                format!("fifo {shown}"),
            ));
        }
        other => {
            return Err(Rejection::new(
                RejectionKind::SpecialFile,
                format!(
                    "unsupported entry type {:?} ({}) for {shown}",
                    char::from(other.as_byte()),
                    describe_unknown(other)
                ),
            ));
        }
    }
    scan.note_root(&paths::components(&path), kind);
    Ok(())
}

fn describe_unknown(kind: EntryType) -> &'static str {
    match kind {
        EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => {
            "an extension header tar could not apply"
        }
        _ => "not a file, folder or link",
    }
}

/// After tar's end-of-archive: read the rest so gzip checks its CRCs, and accept only zeros.
fn check_tail<R: Read>(stream: &mut SizeLimit<R>, entries: u64) -> Result<(), ScanError> {
    let mut buf = [0u8; 8192];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(ScanError::Tar(error)),
        };
        if let Some(at) = buf[..n].iter().position(|&byte| byte != 0) {
            let offset = stream.bytes - n as u64 + at as u64;
            let rejection = if entries == 0 {
                Rejection::new(
                    RejectionKind::NotTar,
                    format!(
                        "not a tar archive inside the gzip stream: it starts with an empty block, \
                         then has data at {}",
                        human_size(offset)
                    ),
                )
            } else {
                Rejection::new(
                    RejectionKind::CorruptTar,
                    format!(
                        "unexpected data after the end of the tar archive at {} (uncompressed)",
                        human_size(offset)
                    ),
                )
            };
            return Err(ScanError::Rejected(rejection));
        }
    }
}

/// Words for a tar error that no lower layer explains.
fn tar_rejection(error: &io::Error, scan: &Scan, bytes: u64, ended: bool) -> Rejection {
    let Some((last, body_end)) = &scan.last else {
        let detail = if ended && bytes < 512 {
            format!(
                "it holds only {}, less than one 512-byte tar header",
                plural(bytes, "byte", "bytes")
            )
        } else {
            format!(
                "its first block is not a tar header ({})",
                brief(&error.to_string())
            )
        };
        return Rejection::new(
            RejectionKind::NotTar,
            format!("not a tar archive inside the gzip stream: {detail}"),
        );
    };
    let reason = if ended && bytes < *body_end {
        format!("truncated tar data: it ends inside the contents of {last}")
    } else if ended {
        format!("truncated tar data: it ends after {last}, inside the next header")
    } else {
        format!(
            "tar data corrupt after {last}: {}",
            brief(&error.to_string())
        )
    };
    Rejection::new(RejectionKind::CorruptTar, reason)
}

/// Tar quotes whole header fields in some messages; one line is enough.
fn brief(message: &str) -> String {
    const MAX_CHARS: usize = 80;
    match message.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_string(),
    }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    if count == 1 {
        format!("1 {one}")
    } else {
        format!("{count} {many}")
    }
}

pub(crate) fn human_size(bytes: u64) -> String {
    crate::human::bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// A tar built with `tar::Builder`: names ending in `/` are folders, others files.
    fn tar_of(names: &[&str]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for name in names {
            append(&mut builder, name.as_bytes(), entry_kind(name), None, b"");
        }
        builder.into_inner().unwrap()
    }

    fn entry_kind(name: &str) -> EntryType {
        if name.ends_with('/') {
            EntryType::Directory
        } else {
            EntryType::Regular
        }
    }

    /// Appends a raw GNU header, bypassing `tar::Builder`'s refusal of `..` and absolute paths.
    fn append(
        builder: &mut tar::Builder<Vec<u8>>,
        name: &[u8],
        kind: EntryType,
        link: Option<&[u8]>,
        data: &[u8],
    ) {
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        header.set_entry_type(kind);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    fn tgz_of(names: &[&str]) -> Vec<u8> {
        gzip(&tar_of(names))
    }

    /// A raw entry: name, type and link target, all bytes as they go in the header.
    type RawEntry<'a> = (&'a [u8], EntryType, Option<&'a [u8]>);

    /// A tar.gz of `app/` holding the given raw entries.
    fn tgz_with(raw: &[RawEntry<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        append(&mut builder, b"app/", EntryType::Directory, None, b"");
        for (name, kind, link) in raw {
            append(&mut builder, name, *kind, *link, b"");
        }
        gzip(&builder.into_inner().unwrap())
    }

    fn check(bytes: &[u8]) -> Result<Summary, Rejection> {
        check_with(bytes, &Limits::default())
    }

    fn check_with(bytes: &[u8], limits: &Limits) -> Result<Summary, Rejection> {
        inspect_reader(bytes, limits).expect("a slice never fails to read")
    }

    #[track_caller]
    fn rejected(bytes: &[u8], kind: RejectionKind) -> String {
        match check(bytes) {
            Ok(summary) => panic!("accepted, expected {kind:?}: {summary}"),
            Err(rejection) => {
                assert_eq!(rejection.kind, kind, "{}", rejection.reason);
                rejection.reason
            }
        }
    }

    #[test]
    fn accepts_a_single_folder_and_summarises_it() {
        let mut builder = tar::Builder::new(Vec::new());
        append(&mut builder, b"app/", EntryType::Directory, None, b"");
        append(
            &mut builder,
            b"app/main.go",
            EntryType::Regular,
            None,
            b"package main\n",
        );
        append(&mut builder, b"app/lib/", EntryType::Directory, None, b"");
        append(
            &mut builder,
            b"app/lib/x.txt",
            EntryType::Regular,
            None,
            &[7; 3000],
        );
        let tar = builder.into_inner().unwrap();
        let bytes = gzip(&tar);

        let summary = check(&bytes).unwrap();
        assert_eq!(
            summary,
            Summary {
                root: "app".into(),
                entries: 4,
                files: 2,
                uncompressed_bytes: tar.len() as u64,
                compressed_bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
            }
        );
    }

    #[test]
    fn summary_display_shows_root_counts_sizes_and_full_sha256() {
        let summary = Summary {
            root: "app".into(),
            entries: 132,
            files: 120,
            uncompressed_bytes: 4_100_000,
            compressed_bytes: 1_234_567,
            sha256: "ab".repeat(32),
        };
        assert_eq!(
            summary.to_string(),
            format!(
                "app/: 132 entries (120 files), 4.1 MB uncompressed, 1.2 MB compressed, sha256 {}",
                "ab".repeat(32)
            )
        );
        let one = Summary {
            entries: 1,
            files: 1,
            ..summary
        };
        assert!(one.to_string().starts_with("app/: 1 entry (1 file), "));
    }

    #[test]
    fn human_size_uses_decimal_units_with_one_decimal() {
        assert_eq!(human_size(0), "0 bytes");
        assert_eq!(human_size(1), "1 byte");
        assert_eq!(human_size(999), "999 bytes");
        assert_eq!(human_size(1000), "1.0 kB");
        assert_eq!(human_size(345_000), "345.0 kB");
        assert_eq!(human_size(999_960), "1.0 MB");
        assert_eq!(human_size(1_234_567), "1.2 MB");
        assert_eq!(human_size(DEFAULT_MAX_ARCHIVE_BYTES), "314.6 MB");
        assert_eq!(human_size(u64::MAX), "18.4 EB");
    }

    #[test]
    fn default_limit_is_the_platform_limit() {
        assert_eq!(Limits::default().max_uncompressed, 314_572_800);
    }

    #[test]
    fn accepts_dot_slash_prefix() {
        let summary = check(&tgz_of(&["./", "./app/", "./app/x"])).unwrap();
        assert_eq!(summary.root, "app");
        assert_eq!((summary.entries, summary.files), (3, 1));
    }

    #[test]
    fn accepts_a_folder_implied_by_its_entries() {
        let summary = check(&tgz_of(&["app/a", "app/b/c"])).unwrap();
        assert_eq!(summary.root, "app");
    }

    #[test]
    fn accepts_multi_member_gzip() {
        let tar = tar_of(&["app/", "app/a", "app/b"]);
        let mut bytes = Vec::new();
        for part in tar.chunks(700) {
            bytes.extend(gzip(part));
        }
        bytes.extend(gzip(b""));
        let summary = check(&bytes).unwrap();
        assert_eq!(summary.entries, 3);
        assert_eq!(summary.uncompressed_bytes, tar.len() as u64);
        assert_eq!(summary.compressed_bytes, bytes.len() as u64);
    }

    #[test]
    fn accepts_zero_padding_after_the_tar_end() {
        let mut tar = tar_of(&["app/", "app/a"]);
        tar.resize(10240, 0);
        assert_eq!(check(&gzip(&tar)).unwrap().uncompressed_bytes, 10240);
    }

    #[test]
    fn accepts_a_tar_without_end_of_archive_blocks() {
        let tar = tar_of(&["app/", "app/a"]);
        let summary = check(&gzip(&tar[..tar.len() - 1024])).unwrap();
        assert_eq!(summary.entries, 2);
    }

    #[test]
    fn accepts_zero_bytes_after_the_gzip_end_as_gzip_does() {
        let mut bytes = tgz_of(&["app/", "app/a"]);
        bytes.extend([0; 3000]);
        let summary = check(&bytes).unwrap();
        assert_eq!(summary.compressed_bytes, bytes.len() as u64);
        assert_eq!(summary.sha256, hex::encode(Sha256::digest(&bytes)));
    }

    #[test]
    fn rejects_garbage_after_the_gzip_end_as_gnu_tar_does() {
        let mut bytes = tgz_of(&["app/", "app/a"]);
        let end = bytes.len();
        bytes.extend([0, 0]);
        bytes.extend(b"garbage");
        let reason = rejected(&bytes, RejectionKind::CorruptGzip);
        assert_eq!(
            reason,
            format!(
                "unexpected data after the end of the gzip stream at {}",
                human_size(end as u64 + 2)
            )
        );
    }

    #[test]
    fn rejects_data_after_the_tar_end() {
        let mut tar = tar_of(&["app/", "app/a"]);
        tar.extend(tar_of(&["app/b"]));
        let reason = rejected(&gzip(&tar), RejectionKind::CorruptTar);
        assert!(
            reason.starts_with("unexpected data after the end of the tar archive at "),
            "{reason}"
        );
    }

    #[test]
    fn rejects_an_empty_file() {
        assert_eq!(rejected(b"", RejectionKind::Empty), "empty file (0 bytes)");
    }

    #[test]
    fn rejects_an_archive_without_entries() {
        let empty_tar = tar::Builder::new(Vec::new()).into_inner().unwrap();
        assert_eq!(
            rejected(&gzip(&empty_tar), RejectionKind::Empty),
            "empty archive: no entries"
        );
        assert_eq!(
            rejected(&gzip(b""), RejectionKind::Empty),
            "empty archive: no entries"
        );
    }

    #[test]
    fn rejects_an_archive_holding_only_dot() {
        let reason = rejected(&tgz_of(&["./"]), RejectionKind::Empty);
        assert_eq!(reason, "empty archive: no files or folders besides ./");
    }

    #[test]
    fn rejects_a_zip_and_says_so() {
        let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00";
        assert_eq!(
            rejected(zip, RejectionKind::NotGzip),
            "not a gzip file (it starts with bytes 50 4b 03 04, which looks like a zip archive)"
        );
    }

    #[test]
    fn rejects_other_formats_and_names_them() {
        let tar = tar_of(&["app/", "app/a"]);
        let cases: [(&[u8], &str); 5] = [
            (&tar, "an uncompressed tar archive"),
            (b"BZh91AY&SY", "a bzip2-compressed file"),
            (b"\xfd7zXZ\x00\x00\x04", "an xz-compressed file"),
            (b"\x28\xb5\x2f\xfd\x00", "a zstd-compressed file"),
            (
                b"<!DOCTYPE html><html>",
                "an HTML page (a failed download?)",
            ),
        ];
        for (bytes, format) in cases {
            let reason = rejected(bytes, RejectionKind::NotGzip);
            assert!(
                reason.ends_with(&format!("which looks like {format})")),
                "{reason}"
            );
        }
        assert_eq!(
            rejected(b"hi", RejectionKind::NotGzip),
            "not a gzip file (it starts with bytes 68 69)"
        );
    }

    #[test]
    fn rejects_a_truncated_gzip_stream() {
        let mut builder = tar::Builder::new(Vec::new());
        append(&mut builder, b"app/", EntryType::Directory, None, b"");
        let noise: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        append(&mut builder, b"app/noise", EntryType::Regular, None, &noise);
        let bytes = gzip(&builder.into_inner().unwrap());
        for cut in [1, 5, 20, bytes.len() / 2, bytes.len() - 4, bytes.len() - 1] {
            let reason = rejected(&bytes[..cut], RejectionKind::TruncatedGzip);
            assert_eq!(
                reason,
                format!("truncated gzip stream after {}", human_size(cut as u64))
            );
        }
    }

    #[test]
    fn rejects_corrupt_deflate_data() {
        let mut bytes = tgz_of(&["app/", "app/a"]);
        // The first block header: final, type 3, which deflate reserves.
        bytes[10] = 0xff;
        let reason = rejected(&bytes, RejectionKind::CorruptGzip);
        assert!(reason.starts_with("gzip data corrupt at "), "{reason}");
    }

    #[test]
    fn rejects_a_crc_or_length_mismatch() {
        let good = tgz_of(&["app/", "app/a"]);
        for position in [good.len() - 8, good.len() - 1] {
            let mut bytes = good.clone();
            bytes[position] ^= 1;
            assert_eq!(
                rejected(&bytes, RejectionKind::CorruptGzip),
                "gzip checksum mismatch"
            );
        }
    }

    #[test]
    fn rejects_a_gzip_that_holds_no_tar() {
        assert_eq!(
            rejected(&gzip(b"hello\n"), RejectionKind::NotTar),
            "not a tar archive inside the gzip stream: it holds only 6 bytes, less than one \
             512-byte tar header"
        );
        let reason = rejected(&gzip(&[b'x'; 2000]), RejectionKind::NotTar);
        assert!(
            reason.starts_with(
                "not a tar archive inside the gzip stream: its first block is not a tar header (numeric field was not a number: xxxxxxxx"
            ),
            "{reason}"
        );
        assert!(reason.ends_with("…)"), "{reason}");
        let mut not_tar = vec![b' '; 1000];
        not_tar[148..156].copy_from_slice(b"0000000\0");
        assert_eq!(
            rejected(&gzip(&not_tar), RejectionKind::NotTar),
            "not a tar archive inside the gzip stream: its first block is not a tar header \
             (archive header checksum mismatch)"
        );
    }

    #[test]
    fn rejects_a_corrupt_tar_header_after_a_good_one() {
        let mut tar = tar_of(&["app/", "app/a"]);
        tar[512 + 10] ^= 0x20;
        let reason = rejected(&gzip(&tar), RejectionKind::CorruptTar);
        assert_eq!(
            reason,
            "tar data corrupt after app/: archive header checksum mismatch"
        );
    }

    #[test]
    fn rejects_a_truncated_tar_inside_a_complete_gzip() {
        let mut builder = tar::Builder::new(Vec::new());
        append(&mut builder, b"app/", EntryType::Directory, None, b"");
        append(
            &mut builder,
            b"app/big",
            EntryType::Regular,
            None,
            &[1; 5000],
        );
        let tar = builder.into_inner().unwrap();
        assert_eq!(
            rejected(&gzip(&tar[..3000]), RejectionKind::CorruptTar),
            "truncated tar data: it ends inside the contents of app/big"
        );
        let header_end = 512 + 512 + 5120;
        assert_eq!(
            rejected(&gzip(&tar[..header_end + 100]), RejectionKind::CorruptTar),
            "truncated tar data: it ends after app/big, inside the next header"
        );
    }

    #[test]
    fn rejects_two_top_level_entries() {
        assert_eq!(
            rejected(
                &tgz_of(&["app/", "app/a", "README.md"]),
                RejectionKind::NoSingleRoot
            ),
            "two top-level entries: app/ and README.md"
        );
    }

    #[test]
    fn rejects_several_top_level_entries_listing_a_few() {
        assert_eq!(
            rejected(
                &tgz_of(&["a/", "b/x", "a/y", "README.md"]),
                RejectionKind::NoSingleRoot
            ),
            "3 top-level entries: a/, b/ and README.md"
        );
        assert_eq!(
            rejected(
                &tgz_of(&["a", "b", "c", "d", "e/"]),
                RejectionKind::NoSingleRoot
            ),
            "5 top-level entries: a, b, c and 2 more"
        );
    }

    #[test]
    fn rejects_a_lone_file_at_the_top() {
        assert_eq!(
            rejected(&tgz_of(&["README.md"]), RejectionKind::NoSingleRoot),
            "the single top-level entry README.md is a file, not a folder"
        );
        let mut builder = tar::Builder::new(Vec::new());
        append(
            &mut builder,
            b"app",
            EntryType::Symlink,
            Some(b"elsewhere"),
            b"",
        );
        assert_eq!(
            rejected(
                &gzip(&builder.into_inner().unwrap()),
                RejectionKind::NoSingleRoot
            ),
            "the single top-level entry app is a symlink, not a folder"
        );
    }

    #[test]
    fn rejects_a_file_that_is_also_used_as_the_folder() {
        let reason = rejected(&tgz_of(&["app", "app/x"]), RejectionKind::NoSingleRoot);
        assert_eq!(
            reason,
            "the single top-level entry app is a file, not a folder"
        );
    }

    #[test]
    fn rejects_an_absolute_path() {
        assert_eq!(
            rejected(
                &tgz_with(&[(b"/etc/passwd", EntryType::Regular, None)]),
                RejectionKind::UnsafePath
            ),
            "absolute path /etc/passwd"
        );
    }

    #[test]
    fn rejects_any_dot_dot_component() {
        assert_eq!(
            rejected(
                &tgz_with(&[(b"app/../../x", EntryType::Regular, None)]),
                RejectionKind::UnsafePath
            ),
            "path app/../../x leaves the archive"
        );
        assert_eq!(
            rejected(
                &tgz_with(&[(b"app/x/../y", EntryType::Regular, None)]),
                RejectionKind::UnsafePath
            ),
            "path app/x/../y contains a .. component"
        );
    }

    #[test]
    fn rejects_device_files_and_fifos() {
        assert_eq!(
            rejected(
                &tgz_with(&[(b"app/dev/sda", EntryType::Block, None)]),
                RejectionKind::SpecialFile
            ),
            "device file app/dev/sda"
        );
        assert_eq!(
            rejected(
                &tgz_with(&[(b"app/tty", EntryType::Char, None)]),
                RejectionKind::SpecialFile
            ),
            "device file app/tty"
        );
        assert_eq!(
            rejected(
                &tgz_with(&[(b"app/pipe", EntryType::Fifo, None)]),
                RejectionKind::SpecialFile
            ),
            "fifo app/pipe"
        );
    }

    #[test]
    fn accepts_links_that_stay_inside_the_folder() {
        let bytes = tgz_with(&[
            (b"app/a", EntryType::Regular, None),
            (b"app/d/", EntryType::Directory, None),
            (b"app/d/up", EntryType::Symlink, Some(b"../a")),
            (b"app/d/here", EntryType::Symlink, Some(b"./x/../y")),
            (b"app/self", EntryType::Symlink, Some(b".")),
            (b"app/hard", EntryType::Link, Some(b"app/a")),
            (b"./app/hard2", EntryType::Link, Some(b"./app/d/../a")),
        ]);
        let summary = check(&bytes).unwrap();
        assert_eq!((summary.entries, summary.files), (8, 1));
    }

    #[test]
    fn rejects_links_that_leave_the_folder() {
        let cases: [(&[u8], EntryType, &[u8], &str); 6] = [
            (
                b"app/l",
                EntryType::Symlink,
                b"/etc/passwd",
                "symlink app/l points to the absolute path /etc/passwd, outside the app/ folder",
            ),
            (
                b"app/l",
                EntryType::Symlink,
                b"../../x",
                "symlink app/l points outside the app/ folder (../../x)",
            ),
            (
                b"app/l",
                EntryType::Symlink,
                b"../other",
                "symlink app/l points outside the app/ folder (../other)",
            ),
            (
                b"app/d/l",
                EntryType::Symlink,
                b"../../app/x",
                "symlink app/d/l points outside the app/ folder (../../app/x)",
            ),
            (
                b"app/h",
                EntryType::Link,
                b"/etc/shadow",
                "hard link app/h points to the absolute path /etc/shadow, outside the app/ folder",
            ),
            (
                b"app/h",
                EntryType::Link,
                b"../x",
                "hard link app/h points outside the app/ folder (../x)",
            ),
        ];
        for (name, kind, target, expected) in cases {
            let bytes = tgz_with(&[(name, kind, Some(target))]);
            assert_eq!(rejected(&bytes, RejectionKind::UnsafePath), expected);
        }
        let other_root = tgz_with(&[(b"app/h", EntryType::Link, Some(b"other/x"))]);
        assert_eq!(
            rejected(&other_root, RejectionKind::UnsafePath),
            "hard link app/h points outside the app/ folder (other/x)"
        );
        let empty = tgz_with(&[(b"app/l", EntryType::Symlink, None)]);
        assert_eq!(
            rejected(&empty, RejectionKind::UnsafePath),
            "symlink app/l has an empty target"
        );
    }

    #[test]
    fn rejects_a_link_chain_that_leaves_the_folder() {
        // Lexically `app/a/x/../..` is `app`; but x is a link to app/a, so it is app/.. .
        let bytes = tgz_with(&[
            (b"app/a/", EntryType::Directory, None),
            (b"app/a/x", EntryType::Symlink, Some(b".")),
            (b"app/a/y", EntryType::Symlink, Some(b"x/../..")),
        ]);
        assert_eq!(
            rejected(&bytes, RejectionKind::UnsafePath),
            "symlink app/a/y points outside the app/ folder (x/../.., through the symlink \
             app/a/x -> .)"
        );
    }

    #[test]
    fn handles_long_names_and_pax_headers_through_tar() {
        let long = format!("app/{}/file.txt", "d".repeat(150));
        let mut builder = tar::Builder::new(Vec::new());
        let mut global = tar::Header::new_ustar();
        global.set_path("pax_global_header").unwrap();
        global.set_entry_type(EntryType::XGlobalHeader);
        let comment = b"52 comment=0123456789012345678901234567890123456789\n";
        global.set_size(comment.len() as u64);
        global.set_cksum();
        builder.append(&global, &comment[..]).unwrap();
        builder
            .append_pax_extensions([("path", b"app/pax-named".as_slice())])
            .unwrap();
        append(&mut builder, b"ignored", EntryType::Regular, None, b"x");
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        builder.append_data(&mut header, &long, &b"y"[..]).unwrap();
        let summary = check(&gzip(&builder.into_inner().unwrap())).unwrap();
        assert_eq!((summary.root.as_str(), summary.entries), ("app", 2));

        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        let escaping = format!("app/{}/../../../x", "d".repeat(150));
        builder
            .append_data(&mut header, "app/ok", &b""[..])
            .unwrap();
        append_long_name(&mut builder, escaping.as_bytes());
        assert_eq!(
            rejected(
                &gzip(&builder.into_inner().unwrap()),
                RejectionKind::UnsafePath
            ),
            format!("path {escaping} leaves the archive")
        );
    }

    /// A header of `kind` announcing `size` bytes, followed by `body` (which may be shorter).
    fn announced(kind: EntryType, size: u64, body: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(size);
        header.set_cksum();
        let mut tar = header.as_bytes().to_vec();
        tar.extend_from_slice(body);
        tar
    }

    #[test]
    fn refuses_an_oversized_extension_record_before_the_tar_reader_takes_it() {
        // Announced far beyond what is there: refused on the header alone, nothing buffered.
        for (kind, what) in [
            (EntryType::GNULongName, "a long-name record of 300.0 MB"),
            (EntryType::GNULongLink, "a long-link record of 300.0 MB"),
            (EntryType::XHeader, "a PAX header of 300.0 MB"),
            (EntryType::XGlobalHeader, "a PAX header of 300.0 MB"),
        ] {
            let bytes = gzip(&announced(kind, 300_000_000, &[b'a'; 4096]));
            let reason = rejected(&bytes, RejectionKind::CorruptTar);
            assert_eq!(reason, format!("{what} (more than 1.0 MB allowed)"));
        }
        // Complete, just over the limit, after a good entry: the same.
        let mut tar = tar_of(&["app/"]);
        tar.truncate(tar.len() - 1024);
        let body = vec![b'n'; 1024 * 1024 + 1];
        tar.extend(announced(EntryType::GNULongName, body.len() as u64, &body));
        tar.resize(tar.len().div_ceil(512) * 512 + 2048, 0);
        let reason = rejected(&gzip(&tar), RejectionKind::CorruptTar);
        assert!(
            reason.starts_with("a long-name record of 1.0 MB"),
            "{reason}"
        );
    }

    #[test]
    fn follows_headers_through_sparse_files_and_pax_size_overrides() {
        // A PAX `size` record overrides the next header's size: the guard stops following
        // (it would otherwise lose its place) and the archive is judged by tar alone.
        let mut builder = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(EntryType::Directory);
        dir.set_size(0);
        builder.append_data(&mut dir, "app/", &b""[..]).unwrap();
        builder
            .append_pax_extensions([("size", b"600".as_slice())])
            .unwrap();
        let mut file = tar::Header::new_ustar();
        file.set_path("app/big").unwrap();
        file.set_size(0);
        file.set_mode(0o644);
        file.set_cksum();
        let mut tar = builder.into_inner().unwrap();
        tar.truncate(tar.len() - 1024); // the end-of-archive blocks
        tar.extend_from_slice(file.as_bytes());
        // 600 bytes of body that look like a huge long-name header to a reader that trusted
        // the header's size of 0.
        let mut body = announced(EntryType::GNULongName, 300_000_000, &[]);
        body.resize(1024, b'z');
        tar.extend_from_slice(&body);
        tar.extend_from_slice(&[0; 1024]);
        let summary = check(&gzip(&tar)).unwrap();
        assert_eq!((summary.root.as_str(), summary.files), ("app", 1));

        // GNU tar's sparse format with extension blocks, from GNU tar itself when present.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("app");
        std::fs::create_dir(&src).unwrap();
        let sparse = std::fs::File::create(src.join("sparse")).unwrap();
        // Many holes: more than the 4 sparse entries of the main header.
        for i in 0..12u64 {
            use std::os::unix::fs::FileExt;
            sparse.write_at(b"data", i * 1024 * 1024).unwrap();
        }
        std::fs::write(src.join("after"), "x").unwrap();
        let archive = dir.path().join("s.tar.gz");
        let made = std::process::Command::new("tar")
            .args(["--format=gnu", "-S", "-czf"])
            .arg(&archive)
            .arg("-C")
            .arg(dir.path())
            .arg("app")
            .status()
            .unwrap();
        assert!(made.success());
        let summary = inspect(&archive, &Limits::default()).unwrap();
        assert_eq!((summary.root.as_str(), summary.files), ("app", 2));
    }

    /// A GNU long-name entry followed by a file, written by hand so `..` gets through.
    fn append_long_name(builder: &mut tar::Builder<Vec<u8>>, name: &[u8]) {
        let mut long = tar::Header::new_gnu();
        long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(EntryType::GNULongName);
        long.set_mode(0o644);
        long.set_size(name.len() as u64 + 1);
        long.set_cksum();
        let mut data = name.to_vec();
        data.push(0);
        builder.append(&long, &data[..]).unwrap();
        append(builder, b"short", EntryType::Regular, None, b"");
    }

    #[test]
    fn enforces_the_uncompressed_limit_exactly() {
        let tar = tar_of(&["app/", "app/a"]);
        let bytes = gzip(&tar);
        let size = tar.len() as u64;
        let at_limit = Limits {
            max_uncompressed: size,
        };
        assert_eq!(
            check_with(&bytes, &at_limit).unwrap().uncompressed_bytes,
            size
        );
        let below = Limits {
            max_uncompressed: size - 1,
        };
        let rejection = check_with(&bytes, &below).unwrap_err();
        assert_eq!(rejection.kind, RejectionKind::TooLarge);
        assert_eq!(
            rejection.reason,
            format!(
                "uncompressed size exceeds the limit of {}",
                human_size(size - 1)
            )
        );
    }

    /// Counts what the inspector pulls from its input.
    struct Metered<'a> {
        bytes: &'a [u8],
        read: u64,
    }

    impl Read for Metered<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.bytes.read(buf)?;
            self.read += n as u64;
            Ok(n)
        }
    }

    /// A tar.gz of `app/zeros`, a file of zeros filling `mib` MiB of tar stream (end blocks
    /// included), as one gzip member. Writing 400 MB through an encoder takes ~20 s in a debug
    /// build, so one deflate block of 1 MiB of zeros ending in a full flush (which makes it
    /// self-contained) is repeated instead, and the CRCs are combined.
    fn zero_bomb(mib: u64) -> Vec<u8> {
        const MIB: u64 = 1 << 20;
        let mut header = tar::Header::new_gnu();
        header.set_path("app/zeros").unwrap();
        header.set_size(mib * MIB - 1024);
        header.set_mode(0o644);
        header.set_cksum();

        let mut deflate = flate2::Compress::new(Compression::best(), false);
        let mut full_flush = |input: &[u8]| {
            let before = deflate.total_in();
            let mut out = Vec::with_capacity(input.len() + 1024);
            deflate
                .compress_vec(input, &mut out, flate2::FlushCompress::Full)
                .unwrap();
            assert_eq!(deflate.total_in() - before, input.len() as u64);
            out
        };
        let zeros = vec![0u8; MIB as usize];
        let start = full_flush(header.as_bytes());
        let block = full_flush(&zeros);
        assert_eq!(
            full_flush(&zeros),
            block,
            "a full flush makes blocks repeatable"
        );
        let mut end = Vec::with_capacity(64);
        deflate
            .compress_vec(&[], &mut end, flate2::FlushCompress::Finish)
            .unwrap();

        let mut crc = flate2::Crc::new();
        crc.update(header.as_bytes());
        let mut zeros_crc = flate2::Crc::new();
        zeros_crc.update(&zeros);
        for _ in 0..mib {
            crc.combine(&zeros_crc);
        }

        let mut bomb = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        bomb.extend(&start);
        for _ in 0..mib {
            bomb.extend(&block);
        }
        bomb.extend(&end);
        bomb.extend(crc.sum().to_le_bytes());
        bomb.extend(crc.amount().to_le_bytes());
        bomb
    }

    #[test]
    fn the_test_bomb_is_a_valid_archive() {
        let bomb = zero_bomb(3);
        let unlimited = Limits {
            max_uncompressed: u64::MAX,
        };
        let summary = check_with(&bomb, &unlimited).unwrap();
        assert_eq!((summary.entries, summary.files), (1, 1));
        assert_eq!(summary.uncompressed_bytes, 512 + 3 * (1 << 20));
    }

    #[test]
    fn refuses_a_gzip_bomb_without_reading_it_all() {
        // 400 MiB of zeros in one file: about 400 kB compressed.
        let bomb = zero_bomb(400);
        assert!(bomb.len() < 1_000_000, "{}", bomb.len());

        let mut input = Metered {
            bytes: &bomb,
            read: 0,
        };
        let rejection = inspect_reader(&mut input, &Limits::default())
            .unwrap()
            .unwrap_err();
        assert_eq!(rejection.kind, RejectionKind::TooLarge);
        assert_eq!(
            rejection.reason,
            "uncompressed size exceeds the limit of 314.6 MB"
        );
        // It stopped at the limit (3/4 of the stream), not at the end.
        assert!(
            input.read < bomb.len() as u64 * 8 / 10,
            "read {} of {}",
            input.read,
            bomb.len()
        );
    }

    struct Failing;

    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::PermissionDenied, "no"))
        }
    }

    #[test]
    fn a_failing_reader_is_an_io_error_not_a_rejection() {
        let error = inspect_reader(Failing, &Limits::default()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);

        // Failing after a valid start: still the reader's fault, reported as such.
        let bytes = tgz_of(&["app/", "app/a"]);
        let reader = (&bytes[..20]).chain(Failing);
        let error = inspect_reader(reader, &Limits::default()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn inspect_reads_a_file_and_names_it_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.tar.gz");
        let bytes = tgz_of(&["app/", "app/a"]);
        std::fs::write(&path, &bytes).unwrap();
        let summary = inspect(&path, &Limits::default()).unwrap();
        assert_eq!(summary.sha256, hex::encode(Sha256::digest(&bytes)));

        let missing = dir.path().join("missing.tar.gz");
        match inspect(&missing, &Limits::default()) {
            Err(InspectError::Io { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }

        std::fs::write(&path, b"").unwrap();
        let error = inspect(&path, &Limits::default()).unwrap_err();
        assert!(matches!(&error, InspectError::Rejected(r) if r.kind == RejectionKind::Empty));
        assert_eq!(error.to_string(), "empty file (0 bytes)");
    }
}
