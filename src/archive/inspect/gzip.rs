//! The bottom of the stream: the file's bytes, counted and hashed, then every gzip member
//! decompressed in turn, with a fault recorded as a [`Rejection`] in the words of its cause.

use std::io::{self, BufRead, BufReader, Read};

use flate2::bufread::GzDecoder;
use sha2::{Digest, Sha256};

use super::messages::human_size;
use super::{Rejection, RejectionKind};

pub(super) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The most zero bytes accepted after the last gzip member: padding to a tape block or a
/// device's sector, never more than a few kB; more is not padding but a file to refuse before
/// it is read (and uploaded) whole.
pub(crate) const MAX_TRAILING_ZEROS: u64 = 1024 * 1024;
/// Enough to see the `ustar` magic of an uncompressed tar header (offset 257).
pub(super) const SNIFF_LEN: usize = 512;

pub(super) fn read_prefix(reader: &mut impl Read, len: usize) -> io::Result<Vec<u8>> {
    let mut prefix = Vec::with_capacity(len);
    reader.take(len as u64).read_to_end(&mut prefix)?;
    Ok(prefix)
}

/// The bottom of the stream: counts and hashes the bytes as they are read, and keeps the
/// reader's own error so it is not mistaken for a fault of the archive.
pub(super) struct SourceReader<R> {
    inner: R,
    pub(super) hasher: Sha256,
    pub(super) bytes: u64,
    error: Option<io::Error>,
}

impl<R> SourceReader<R> {
    pub(super) fn new(inner: R) -> Self {
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
pub(super) struct GzipMembers<R> {
    /// `None` only while one member's decoder is swapped for the next one's.
    decoder: Option<GzDecoder<Compressed<R>>>,
    /// The last member ended cleanly and the file is at its end.
    pub(super) done: bool,
    pub(super) fault: Option<Rejection>,
    /// The most of the file read ([`super::Limits::max_compressed`]).
    max_compressed: u64,
}

impl<R: Read> GzipMembers<R> {
    pub(super) fn new(input: Compressed<R>, max_compressed: u64) -> Self {
        GzipMembers {
            decoder: Some(GzDecoder::new(input)),
            done: false,
            fault: None,
            max_compressed,
        }
    }

    /// Fails once more of the file than [`Self::max_compressed`] was read.
    fn check_size(&mut self) -> io::Result<()> {
        let read = self
            .decoder
            .as_ref()
            .map_or(0, |decoder| decoder.get_ref().get_ref().bytes);
        if read <= self.max_compressed {
            return Ok(());
        }
        Err(self.fail(Rejection::new(
            RejectionKind::TooLarge,
            format!(
                "the file is larger than the {} any archive within the size limit takes \
                 compressed (read so far: {})",
                human_size(self.max_compressed),
                human_size(read)
            ),
        )))
    }

    /// The file's own read error, if reading it failed (not the archive's fault).
    pub(super) fn take_source_error(&mut self) -> Option<io::Error> {
        let decoder = self.decoder.as_mut()?;
        decoder.get_mut().get_mut().error.take()
    }

    /// The bottom reader, with its count and hash; `None` cannot happen between reads.
    pub(super) fn into_source(self) -> Option<SourceReader<R>> {
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
        let padding_from = consumed(input);
        loop {
            let available = input.fill_buf()?;
            if available.is_empty() {
                self.done = true;
                return Ok(());
            }
            let length = available.len();
            match available.iter().position(|&byte| byte != 0) {
                None => {
                    input.consume(length);
                    if consumed(input) - padding_from > MAX_TRAILING_ZEROS {
                        return Err(self.fail(Rejection::new(
                            RejectionKind::CorruptGzip,
                            format!(
                                "unexpected data after the end of the gzip stream at {}: more \
                                 than {} of zero bytes, not padding",
                                human_size(padding_from),
                                human_size(MAX_TRAILING_ZEROS)
                            ),
                        )));
                    }
                }
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
            let read = decoder.read(buf);
            self.check_size()?;
            match read {
                Ok(0) => self.after_member()?,
                Ok(n) => return Ok(n),
                Err(error) => return Err(self.classify(error)),
            }
        }
    }
}
