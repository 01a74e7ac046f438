//! Between gzip and tar: the uncompressed size limit, and a guard that follows the tar
//! headers to refuse an oversized extension record before the tar reader takes it in memory.

use std::io::{self, Read};

use tar::EntryType;

use super::messages::human_size;
use super::{Rejection, RejectionKind};

/// Counts the uncompressed bytes and fails once they exceed the limit, having read at most one
/// byte past it (so a gzip bomb costs no more than the limit to refuse).
///
/// It also follows the tar structure ([`Headers`]) to refuse an oversized extension record
/// before the tar reader takes it: `tar` reads a GNU long name or a PAX header into memory
/// whole, so without this a hostile header announcing 300 MB would cost 300 MB.
pub(super) struct SizeLimit<R> {
    pub(super) inner: R,
    pub(super) bytes: u64,
    max: u64,
    pub(super) exceeded: bool,
    pub(super) headers: Headers,
}

impl<R> SizeLimit<R> {
    pub(super) fn new(inner: R, max: u64) -> Self {
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
pub(super) struct Headers {
    /// Body and padding bytes still to pass before the next header.
    skip: u64,
    block: Vec<u8>,
    /// GNU sparse extension blocks follow, then `after_sparse` bytes of data.
    sparse: bool,
    after_sparse: u64,
    /// The body of the PAX header being passed, to look for a `size` override.
    pax: Option<Vec<u8>>,
    done: bool,
    pub(super) fault: Option<Rejection>,
}

impl Headers {
    /// Takes the next bytes of the stream; false once an oversized record is found.
    fn observe(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() && !self.done {
            if self.skip > 0 {
                data = self.pass_body(data);
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
            if !self.take_block(&block) {
                return false;
            }
        }
        true
    }

    /// Passes body bytes (keeping those of a PAX header); returns the rest of `data`.
    fn pass_body<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let k = data
            .len()
            .min(usize::try_from(self.skip).unwrap_or(usize::MAX));
        if let Some(pax) = self.pax.as_mut() {
            pax.extend_from_slice(&data[..k]);
        }
        self.skip -= k as u64;
        if self.skip == 0
            && let Some(pax) = self.pax.take()
            && (pax.starts_with(b"size=") || pax.windows(6).any(|w| w == b" size="))
        {
            // The next entry's size is not its header's: stop following.
            self.done = true;
        }
        &data[k..]
    }

    /// One whole block where a header (or a GNU sparse extension block) is due; false once it
    /// announces an oversized record.
    fn take_block(&mut self, block: &[u8; 512]) -> bool {
        if self.sparse {
            // A GNU sparse extension block: byte 504 says whether another follows.
            self.sparse = block[504] != 0;
            if !self.sparse {
                self.skip = self.after_sparse;
            }
            return true;
        }
        if block.iter().all(|&b| b == 0) {
            self.done = true;
            return true;
        }
        let header = tar::Header::from_byte_slice(block);
        let Ok(size) = header.entry_size() else {
            self.done = true;
            return true;
        };
        let kind = header.entry_type();
        if let Some(rejection) = oversized_extension(kind, size) {
            self.fault = Some(rejection);
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
        true
    }
}

/// The rejection of an extension record (long name, long link, PAX header) whose body is over
/// [`MAX_EXTENSION_BYTES`]; `None` for any other entry, or a record of a fair size.
fn oversized_extension(kind: EntryType, size: u64) -> Option<Rejection> {
    let what = match kind {
        EntryType::GNULongName => "a long-name record",
        EntryType::GNULongLink => "a long-link record",
        EntryType::XHeader | EntryType::XGlobalHeader => "a PAX header",
        _ => return None,
    };
    (size > MAX_EXTENSION_BYTES).then(|| {
        Rejection::new(
            RejectionKind::CorruptTar,
            format!(
                "{what} of {} (more than {} allowed)",
                human_size(size),
                human_size(MAX_EXTENSION_BYTES)
            ),
        )
    })
}
