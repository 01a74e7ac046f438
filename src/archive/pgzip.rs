//! A parallel gzip writer in the manner of pigz: [`ParGz`] compresses 128 KiB blocks on worker
//! threads and writes them, in order, as one gzip member.
//!
//! # Format
//!
//! The output is exactly one gzip member (RFC 1952):
//!
//! - a 10-byte header `1f 8b 08 00 00000000 XFL 03`: deflate, no flags (so no file name),
//!   mtime 0, OS Unix; XFL is 2 at level 9, 4 at level 1 and 0 otherwise, as gzip and pigz
//!   write it;
//! - one raw deflate stream, made of independently compressed blocks: the input is cut into
//!   [`BLOCK_SIZE`] blocks, each compressed by a fresh raw deflate compressor primed with the
//!   last 32 KiB of the previous block's input as preset dictionary (none for the first block).
//!   Every block but the last ends with a sync flush, which byte-aligns it so that the next
//!   block simply continues the same deflate stream; the last one ends the stream. An empty
//!   input gives one empty final block;
//! - the trailer: the CRC-32 of the whole input (per-block CRCs combined in order) and its
//!   length modulo 2^32, little-endian.
//!
//! # Why one member
//!
//! Concatenated gzip members (one per block) would be simpler, but many readers stop after the
//! first member: Go's `compress/gzip` with `Multistream(false)`, flate2's `GzDecoder`. One
//! member with a sync-flushed deflate stream reads everywhere, and the dictionary keeps the
//! ratio within a fraction of a percent of single-threaded gzip.
//!
//! # Determinism
//!
//! Block boundaries depend only on the byte count, the compressor of each block sees only that
//! block and its dictionary, and blocks are written in input order, so the output depends only
//! on the input and the level: not on the thread count, the scheduling, nor how the caller
//! splits its `write` calls. (A full block is kept until one more byte arrives or
//! [`ParGz::finish`] is called, so that the last block is always the one that ends the stream.)
//!
//! # Memory
//!
//! At most `2 × threads` blocks are in flight (handed to the workers and not yet written);
//! past that, `write` waits for the oldest one. Input and output buffers go back to a pool once
//! their block is written, so a long stream allocates them only once: about
//! `2 × threads × (160 KiB + 128 KiB)`, plus a deflate state (a few hundred KiB) for each block
//! being compressed.

use std::any::Any;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use crc32fast::Hasher;
use flate2::{Compress, Compression, FlushCompress, Status};

/// Input bytes per block (pigz's default).
pub const BLOCK_SIZE: usize = 128 * 1024;

/// Size of the preset dictionary: deflate's whole window.
const DICT_SIZE: usize = 32 * 1024;

/// Blocks in flight per worker thread: one being compressed, one waiting.
const BLOCKS_PER_THREAD: usize = 2;

/// Compresses one block: `(level, dictionary, data, last, output)`. A parameter so that the
/// tests can inject failures; [`compress_block`] is the real one.
type BlockFn = fn(Compression, &[u8], &[u8], bool, &mut Vec<u8>) -> io::Result<()>;

/// A gzip writer that compresses on several threads and writes one gzip member to `inner`.
///
/// Bytes written go into the current block; each full block is handed to a worker thread, and
/// compressed blocks are written to `inner` in order, from the caller's thread, during later
/// `write`, `flush` and [`finish`](ParGz::finish) calls. [`finish`](ParGz::finish) must be
/// called to complete the stream; dropping the writer without it stops the workers and leaves
/// `inner` with a truncated stream.
///
/// After an error (from `inner`, or a block that failed to compress) the stream is broken and
/// every later call fails.
pub struct ParGz<W: Write> {
    inner: W,
    level: Compression,
    workers: Workers,
    max_in_flight: usize,
    /// The current block: `dict_len` bytes of dictionary, then up to [`BLOCK_SIZE`] of input.
    block: Vec<u8>,
    dict_len: usize,
    /// Sequence number of the next block to hand out, and of the next block to write.
    next_seq: u64,
    next_write: u64,
    /// Blocks compressed out of order, waiting for their turn: index 0 is `next_write`.
    done: VecDeque<Option<Done>>,
    crc: Hasher,
    total_in: u64,
    free_inputs: Vec<Vec<u8>>,
    free_outputs: Vec<Vec<u8>>,
    /// Set by the first error: the stream cannot be completed after it.
    broken: Option<(io::ErrorKind, String)>,
}

/// A block on its way to a worker.
struct Job {
    seq: u64,
    /// The dictionary (`dict_len` bytes) followed by the block's data.
    input: Vec<u8>,
    dict_len: usize,
    last: bool,
    /// An empty buffer for the compressed bytes, reused from an earlier block when possible.
    out: Vec<u8>,
}

/// A block back from a worker, with its buffers for reuse.
struct Done {
    seq: u64,
    input: Vec<u8>,
    out: Vec<u8>,
    /// CRC-32 of the block's data (dictionary excluded).
    crc: Hasher,
    result: io::Result<()>,
}

impl<W: Write> ParGz<W> {
    /// Starts a gzip stream into `inner` at `level` 0..=9 (above 9 counts as 9), compressing
    /// on `threads` worker threads (0 means [`std::thread::available_parallelism`]).
    ///
    /// Nothing is written to `inner` until the first block is compressed. If no worker thread
    /// can be started, the first `write`, `flush` or `finish` returns the error.
    pub fn new(inner: W, level: u32, threads: usize) -> Self {
        Self::with_block_fn(inner, level, threads, compress_block)
    }

    fn with_block_fn(inner: W, level: u32, threads: usize, block_fn: BlockFn) -> Self {
        let threads = match threads {
            0 => thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let level = Compression::new(level.min(9));
        let (workers, spawn_error) = Workers::spawn(threads, level, block_fn);
        let max_in_flight = BLOCKS_PER_THREAD * workers.handles.len().max(1);
        Self {
            inner,
            level,
            workers,
            max_in_flight,
            block: Vec::with_capacity(DICT_SIZE + BLOCK_SIZE),
            dict_len: 0,
            next_seq: 0,
            next_write: 0,
            done: VecDeque::with_capacity(max_in_flight),
            crc: Hasher::new(),
            total_in: 0,
            free_inputs: Vec::new(),
            free_outputs: Vec::new(),
            broken: spawn_error.map(|e| (e.kind(), format!("cannot start a gzip worker: {e}"))),
        }
    }

    /// Compresses what is buffered, writes the gzip trailer, stops the workers and returns the
    /// inner writer. The inner writer is not flushed: that is the caller's business.
    pub fn finish(mut self) -> io::Result<W> {
        self.check_usable()?;
        self.dispatch(true)?;
        self.wait_all()?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        // ISIZE is the input length modulo 2^32: truncation is the format.
        trailer[4..].copy_from_slice(&(self.total_in as u32).to_le_bytes());
        self.inner.write_all(&trailer)?;
        self.workers.join()?;
        Ok(self.inner)
    }

    /// Blocks handed to the workers and not yet written.
    fn in_flight(&self) -> usize {
        // At most `max_in_flight`, so the conversion cannot truncate.
        (self.next_seq - self.next_write) as usize
    }

    fn check_usable(&self) -> io::Result<()> {
        match &self.broken {
            None => Ok(()),
            Some((kind, message)) => Err(io::Error::new(
                *kind,
                format!("the gzip stream is broken by an earlier error: {message}"),
            )),
        }
    }

    /// Records `error` as breaking the stream and returns it unchanged.
    fn break_with(&mut self, error: io::Error) -> io::Error {
        if self.broken.is_none() {
            self.broken = Some((error.kind(), error.to_string()));
        }
        error
    }

    /// Hands the current block to the workers (waiting while too many are in flight) and
    /// starts the next one, primed with the tail of this one as dictionary.
    fn dispatch(&mut self, last: bool) -> io::Result<()> {
        while self.in_flight() >= self.max_in_flight {
            self.wait_one()?;
        }
        let next = if last {
            Vec::new()
        } else {
            let mut next = self
                .free_inputs
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(DICT_SIZE + BLOCK_SIZE));
            // Only called with a full block, so the tail is a whole window.
            next.extend_from_slice(&self.block[self.block.len() - DICT_SIZE..]);
            next
        };
        let job = Job {
            seq: self.next_seq,
            input: mem::replace(&mut self.block, next),
            dict_len: mem::replace(&mut self.dict_len, if last { 0 } else { DICT_SIZE }),
            last,
            out: self.free_outputs.pop().unwrap_or_default(),
        };
        if let Err(error) = self.workers.send(job) {
            return Err(self.break_with(error));
        }
        self.next_seq += 1;
        self.write_ready()
    }

    /// Waits for one block from the workers, then writes whatever is ready.
    fn wait_one(&mut self) -> io::Result<()> {
        match self.workers.done.recv() {
            Ok(done) => self.stash(done),
            Err(_) => return Err(self.break_with(workers_gone())),
        }
        self.write_ready()
    }

    /// Waits until every block handed out is written.
    fn wait_all(&mut self) -> io::Result<()> {
        while self.in_flight() > 0 {
            self.wait_one()?;
        }
        Ok(())
    }

    /// Collects the blocks already compressed (without waiting) and writes those whose turn
    /// it is.
    fn write_ready(&mut self) -> io::Result<()> {
        loop {
            match self.workers.done.try_recv() {
                Ok(done) => self.stash(done),
                Err(TryRecvError::Empty) => break,
                // Blocks still in flight are lost: the next wait reports it.
                Err(TryRecvError::Disconnected) => break,
            }
        }
        while self.done.front().is_some_and(Option::is_some) {
            if let Some(Some(done)) = self.done.pop_front() {
                self.write_block(done)?;
            }
        }
        Ok(())
    }

    /// Files a compressed block by its sequence number.
    fn stash(&mut self, done: Done) {
        // Within the in-flight window, so the conversion cannot truncate.
        let index = (done.seq - self.next_write) as usize;
        if self.done.len() <= index {
            self.done.resize_with(index + 1, || None);
        }
        self.done[index] = Some(done);
    }

    /// Writes the next block in order (after the header, for the first one).
    fn write_block(&mut self, done: Done) -> io::Result<()> {
        let Done {
            seq,
            mut input,
            mut out,
            crc,
            result,
        } = done;
        if let Err(error) = result {
            let error = io::Error::new(error.kind(), format!("gzip block {seq}: {error}"));
            return Err(self.break_with(error));
        }
        if seq == 0 {
            let header = gzip_header(self.level);
            if let Err(error) = self.inner.write_all(&header) {
                return Err(self.break_with(error));
            }
        }
        if let Err(error) = self.inner.write_all(&out) {
            return Err(self.break_with(error));
        }
        self.crc.combine(&crc);
        self.next_write += 1;
        input.clear();
        out.clear();
        if input.capacity() > 0 {
            self.free_inputs.push(input);
        }
        self.free_outputs.push(out);
        Ok(())
    }
}

impl<W: Write> Write for ParGz<W> {
    /// Takes all of `buf` into the current block, handing out each block that fills up; waits
    /// when `2 × threads` blocks are in flight.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check_usable()?;
        let mut rest = buf;
        while !rest.is_empty() {
            // A full block leaves only now that more input is known to follow it.
            if self.block.len() - self.dict_len == BLOCK_SIZE {
                self.dispatch(false)?;
            }
            let room = BLOCK_SIZE - (self.block.len() - self.dict_len);
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.block.extend_from_slice(now);
            rest = later;
        }
        self.total_in += buf.len() as u64;
        Ok(buf.len())
    }

    /// Writes every block already handed to the workers and flushes `inner`. The current block
    /// (up to [`BLOCK_SIZE`] bytes) stays buffered: cutting it here would make the output
    /// depend on when the caller flushes.
    fn flush(&mut self) -> io::Result<()> {
        self.check_usable()?;
        self.wait_all()?;
        self.inner.flush()
    }
}

/// The worker threads, and the channels to and from them.
///
/// Dropping it stops the workers: blocks not yet started are discarded, and the drop waits
/// only for the blocks being compressed.
struct Workers {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    cancel: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts up to `threads` workers; also returns the error that stopped it short, if any.
    fn spawn(threads: usize, level: Compression, block_fn: BlockFn) -> (Self, Option<io::Error>) {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let cancel = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(threads);
        let mut spawn_error = None;
        for index in 0..threads {
            let (jobs, done, cancel) = (jobs_rx.clone(), done_tx.clone(), cancel.clone());
            let spawned = thread::Builder::new()
                .name(format!("pgzip-{index}"))
                .spawn(move || work(&jobs, &done, &cancel, level, block_fn));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    spawn_error = Some(error);
                    break;
                }
            }
        }
        // Some workers run: fewer threads is still a working writer.
        if !handles.is_empty() {
            spawn_error = None;
        }
        let workers = Self {
            jobs: Some(jobs_tx),
            done: done_rx,
            cancel,
            handles,
        };
        (workers, spawn_error)
    }

    fn send(&self, job: Job) -> io::Result<()> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|_| workers_gone()),
            None => Err(workers_gone()),
        }
    }

    /// Closes the job queue and waits for every worker to exit.
    fn join(&mut self) -> io::Result<()> {
        self.jobs = None;
        let mut panicked = 0;
        for handle in self.handles.drain(..) {
            if handle.join().is_err() {
                panicked += 1;
            }
        }
        match panicked {
            0 => Ok(()),
            n => Err(io::Error::other(format!(
                "{n} gzip worker thread(s) panicked"
            ))),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Panics were already reported as block errors, or the stream is abandoned anyway.
        let _ = self.join();
    }
}

/// A worker: compresses blocks until the job queue closes or the writer is dropped.
fn work(
    jobs: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
    cancel: &AtomicBool,
    level: Compression,
    block_fn: BlockFn,
) {
    loop {
        // The lock is only held while waiting for a job: nothing can panic and poison it.
        let next = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(job) = next else {
            return;
        };
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let Job {
            seq,
            input,
            dict_len,
            last,
            mut out,
        } = job;
        let (dict, data) = input.split_at(dict_len);
        let mut crc = Hasher::new();
        crc.update(data);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            block_fn(level, dict, data, last, &mut out)
        }));
        let result = outcome.unwrap_or_else(|payload| {
            Err(io::Error::other(format!(
                "the compressing thread panicked: {}",
                panic_message(payload.as_ref())
            )))
        });
        let block = Done {
            seq,
            input,
            out,
            crc,
            result,
        };
        if done.send(block).is_err() {
            return;
        }
    }
}

/// Compresses `data` as the next piece of a raw deflate stream, with `dict` as preset
/// dictionary, ending with a sync flush or, for the `last` block, the end of the stream.
///
/// The compressor is a fresh one for every block, not one reused with `reset()`: zlib-rs
/// 0.6.8 (like zlib-ng before its fix for issue 2100) can choose other matches after a reset
/// followed by `set_dictionary`, which would make the output depend on which blocks a worker
/// compressed before. Setting up a compressor costs little next to 128 KiB of deflate.
fn compress_block(
    level: Compression,
    dict: &[u8],
    data: &[u8],
    last: bool,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let failed = |e: flate2::CompressError| io::Error::other(format!("deflate failed: {e}"));
    let mut compress = Compress::new(level, false);
    if !dict.is_empty() {
        compress.set_dictionary(dict).map_err(failed)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    out.clear();
    // Above zlib's deflateBound plus a sync flush: one call is enough, save for oddities.
    out.reserve(data.len() + (data.len() >> 10) + 64);
    let mut consumed = 0;
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity() / 2 + 64);
        }
        let (in_before, out_before) = (compress.total_in(), out.len());
        let status = compress
            .compress_vec(&data[consumed..], out, flush)
            .map_err(failed)?;
        // Bounded by `data.len()`, so the conversion cannot truncate.
        consumed += (compress.total_in() - in_before) as usize;
        let complete = if last {
            status == Status::StreamEnd
        } else {
            // With room left in the output, the sync flush is complete.
            consumed == data.len() && out.len() < out.capacity()
        };
        if complete {
            return Ok(());
        }
        if compress.total_in() == in_before && out.len() == out_before {
            return Err(io::Error::other(format!(
                "deflate made no progress ({status:?}) with {} of {} bytes consumed",
                consumed,
                data.len()
            )));
        }
    }
}

/// The gzip header: deflate, no flags, mtime 0, XFL as gzip sets it, OS Unix.
fn gzip_header(level: Compression) -> [u8; 10] {
    let xfl = match level.level() {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3]
}

fn workers_gone() -> io::Error {
    io::Error::other("all gzip worker threads have exited")
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use flate2::read::GzDecoder;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 4093) as u8)
            .collect()
    }

    fn decode(gz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(gz)
            .read_to_end(&mut out)
            .expect("valid gzip");
        out
    }

    #[test]
    fn a_panicking_worker_becomes_an_io_error() {
        let mut gz = ParGz::with_block_fn(Vec::new(), 6, 2, |_, _, _, _, _| panic!("injected"));
        let data = sample(3 * BLOCK_SIZE);
        let error = gz
            .write_all(&data)
            .and_then(|()| gz.finish().map(drop))
            .expect_err("a panicking worker must fail the stream");
        let message = error.to_string();
        assert!(message.contains("panicked"), "{message}");
        assert!(message.contains("injected"), "{message}");
    }

    #[test]
    fn a_failing_block_breaks_the_stream() {
        let mut gz = ParGz::with_block_fn(Vec::new(), 6, 2, |_, _, _, _, _| {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "injected failure",
            ))
        });
        let data = sample(3 * BLOCK_SIZE);
        let first = gz
            .write_all(&data)
            .and_then(|()| gz.flush())
            .expect_err("a failing block must fail the stream");
        assert_eq!(first.kind(), io::ErrorKind::InvalidData);
        assert!(first.to_string().contains("injected failure"), "{first}");
        let later = gz.write(b"more").expect_err("the stream stays broken");
        assert!(later.to_string().contains("earlier error"), "{later}");
        assert!(gz.finish().is_err());
    }

    #[test]
    fn blocks_in_flight_and_buffers_stay_bounded() {
        fn slow(
            level: Compression,
            dict: &[u8],
            data: &[u8],
            last: bool,
            out: &mut Vec<u8>,
        ) -> io::Result<()> {
            thread::sleep(std::time::Duration::from_millis(2));
            compress_block(level, dict, data, last, out)
        }
        let threads = 3;
        let mut gz = ParGz::with_block_fn(Vec::new(), 1, threads, slow);
        let data = sample(40 * BLOCK_SIZE + 17);
        for chunk in data.chunks(10_007) {
            gz.write_all(chunk).expect("write");
            assert!(gz.in_flight() <= BLOCKS_PER_THREAD * threads);
        }
        gz.flush().expect("flush");
        assert_eq!(gz.in_flight(), 0);
        // Every buffer is back in the pool: their number is what was ever allocated.
        assert!(gz.free_inputs.len() <= BLOCKS_PER_THREAD * threads);
        assert!(gz.free_outputs.len() <= BLOCKS_PER_THREAD * threads);
        let out = gz.finish().expect("finish");
        assert_eq!(decode(&out), data);
    }

    #[test]
    fn a_stored_stream_round_trips() {
        let data = sample(2 * BLOCK_SIZE + 5);
        let mut gz = ParGz::new(Vec::new(), 0, 2);
        gz.write_all(&data).expect("write");
        let out = gz.finish().expect("finish");
        assert_eq!(out[8], 0, "XFL at level 0");
        assert_eq!(decode(&out), data);
    }
}
