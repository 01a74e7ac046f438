//! The parallel gzip writer, seen from outside: its bytes follow the documented format whatever
//! the thread count or write pattern, and every common gzip reader takes them.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use dropdeploy::archive::pgzip::{BLOCK_SIZE, ParGz};
use flate2::read::{GzDecoder, MultiGzDecoder};
use flate2::write::GzEncoder;
use flate2::{Compress, Compression, FlushCompress, Status};

/// Input sizes around the block boundaries, and a long one.
const SIZES: [usize; 8] = [
    0,
    1,
    BLOCK_SIZE - 1,
    BLOCK_SIZE,
    BLOCK_SIZE + 1,
    3 * BLOCK_SIZE,
    7 * BLOCK_SIZE + 12_345,
    5_000_000,
];

/// Compressible but not trivial: words from a small vocabulary, numbers, some noise.
fn sample(len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "deploy ",
        "archive ",
        "lane ",
        "spool ",
        "outcome ",
        "gzip ",
        "block ",
        "the ",
        "of ",
        "scalingo ",
        "\n",
        "retry ",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        match state % 16 {
            0 => out.extend_from_slice(&state.to_le_bytes()),
            1 => out.extend_from_slice(format!("{} ", state % 100_000).as_bytes()),
            n => out.extend_from_slice(WORDS[n as usize % WORDS.len()].as_bytes()),
        }
    }
    out.truncate(len);
    out
}

/// Compresses `data` with [`ParGz`], writing it in pieces of `chunk` bytes.
fn pgzip(data: &[u8], level: u32, threads: usize, chunk: usize) -> Vec<u8> {
    let mut gz = ParGz::new(Vec::new(), level, threads);
    for piece in data.chunks(chunk.max(1)) {
        gz.write_all(piece).expect("write to ParGz");
    }
    gz.finish().expect("finish ParGz")
}

/// The format rule, written out serially and literally: a fresh compressor per block, the
/// previous block's last 32 KiB as dictionary, sync flush between blocks, one CRC at the end.
fn reference(data: &[u8], level: u32) -> Vec<u8> {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3];
    let blocks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(BLOCK_SIZE).collect()
    };
    for (index, block) in blocks.iter().enumerate() {
        let mut compress = Compress::new(Compression::new(level), false);
        if index > 0 {
            let previous = blocks[index - 1];
            compress
                .set_dictionary(&previous[previous.len() - 32 * 1024..])
                .expect("set dictionary");
        }
        let last = index == blocks.len() - 1;
        let flush = if last {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        let mut deflated = Vec::with_capacity(2 * block.len() + 1024);
        let status = compress
            .compress_vec(block, &mut deflated, flush)
            .expect("deflate");
        assert_eq!(compress.total_in(), block.len() as u64);
        if last {
            assert_eq!(status, Status::StreamEnd);
        }
        out.extend_from_slice(&deflated);
    }
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn gunzip_single(gz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(gz)
        .read_to_end(&mut out)
        .expect("GzDecoder reads the stream");
    out
}

fn gunzip_multi(gz: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(gz)
        .read_to_end(&mut out)
        .expect("MultiGzDecoder reads the stream");
    out
}

/// Writes `bytes` to a fresh temporary file and returns the directory guard and the path.
fn temp_file(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("out.gz");
    std::fs::write(&path, bytes).expect("write the gzip file");
    (dir, path)
}

/// Runs a command to completion and returns its stdout; fails the test if it cannot run or
/// exits non-zero.
fn run(program: &str, args: &[&str], path: &Path) -> Vec<u8> {
    let output = Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (it is expected on the machine): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn output_depends_only_on_input_and_level() {
    for size in SIZES {
        let data = sample(size);
        let expected = pgzip(&data, 6, 1, data.len());
        // Compressing in a debug build is slow: fewer combinations for the long input.
        let cases: Vec<(usize, usize)> = if size > 1_000_000 {
            vec![(2, 65_537), (4, 1_000_003)]
        } else {
            // Byte-by-byte writes only while that stays quick.
            let chunks: &[usize] = if size <= BLOCK_SIZE + 1 {
                &[1, 7, 4_093, 131_071, 300_001]
            } else {
                &[7, 4_093, 131_071, 300_001]
            };
            [1, 2, 4]
                .iter()
                .flat_map(|&threads| chunks.iter().map(move |&chunk| (threads, chunk)))
                .collect()
        };
        for (threads, chunk) in cases {
            assert!(
                pgzip(&data, 6, threads, chunk) == expected,
                "size {size}, {threads} threads, writes of {chunk} bytes: output differs"
            );
        }
    }
}

#[test]
fn output_matches_the_serial_reference_encoding() {
    for level in [0, 1, 6, 9] {
        for size in SIZES {
            if size > 1_000_000 && level != 6 {
                continue;
            }
            let data = sample(size);
            assert!(
                pgzip(&data, level, 3, 50_000) == reference(&data, level),
                "level {level}, size {size}: not the documented format"
            );
        }
    }
}

#[test]
fn levels_above_nine_count_as_nine() {
    let data = sample(3 * BLOCK_SIZE + 1);
    assert!(pgzip(&data, 12, 2, 9_999) == pgzip(&data, 9, 2, 9_999));
}

#[test]
fn round_trips_through_single_and_multi_member_decoders() {
    for level in [0, 1, 6, 9] {
        for size in SIZES {
            if size > 1_000_000 && level != 6 {
                continue;
            }
            let data = sample(size);
            let gz = pgzip(&data, level, 2, 77_777);
            assert!(gunzip_single(&gz) == data, "level {level}, size {size}");
            assert!(gunzip_multi(&gz) == data, "level {level}, size {size}");
        }
    }
}

#[test]
fn header_and_trailer_follow_gzip_and_pigz() {
    for (level, xfl) in [(0, 0), (1, 4), (6, 0), (9, 2)] {
        let data = sample(2 * BLOCK_SIZE + 3);
        let gz = pgzip(&data, level, 2, data.len());
        assert_eq!(
            gz[..10],
            [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3],
            "level {level}"
        );
        let trailer = &gz[gz.len() - 8..];
        assert_eq!(trailer[..4], crc32fast::hash(&data).to_le_bytes());
        assert_eq!(trailer[4..], (data.len() as u32).to_le_bytes());
    }
}

#[test]
fn empty_input_gives_a_valid_empty_gzip() {
    let gz = ParGz::new(Vec::new(), 6, 2).finish().expect("finish");
    // Header, an empty final fixed-Huffman block (03 00), CRC 0 and length 0.
    assert_eq!(
        gz,
        [
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0
        ]
    );
    assert!(gunzip_single(&gz).is_empty());
}

#[test]
fn gnu_gzip_tests_and_decompresses_a_multi_block_stream() {
    let data = sample(9 * BLOCK_SIZE + 4_321);
    let (_dir, path) = temp_file(&pgzip(&data, 6, 4, 12_345));
    run("gzip", &["-t"], &path);
    assert!(
        run("gzip", &["-dc"], &path) == data,
        "gzip -dc gave other bytes"
    );
}

#[test]
fn python_gzip_decompresses_a_multi_block_stream() {
    let data = sample(9 * BLOCK_SIZE + 4_321);
    let (_dir, path) = temp_file(&pgzip(&data, 9, 2, 12_345));
    let script = "import gzip, sys\n\
                  sys.stdout.buffer.write(gzip.decompress(open(sys.argv[1], 'rb').read()))";
    assert!(
        run("python3", &["-c", script], &path) == data,
        "python3 gzip.decompress gave other bytes"
    );
}

/// This repository's Rust sources, repeated to about 4 MB: real text, and more than one window.
fn repo_text() -> Vec<u8> {
    fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {dir:?}: {e}"));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                collect(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    collect(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    files.sort();
    let mut text = Vec::new();
    for file in &files {
        text.extend(std::fs::read(file).unwrap_or_else(|e| panic!("read {file:?}: {e}")));
    }
    assert!(!text.is_empty(), "no Rust sources found");
    let one = text.clone();
    while text.len() < 4_000_000 {
        text.extend_from_slice(&one);
    }
    text
}

#[test]
fn compresses_text_nearly_as_well_as_a_single_stream() {
    let text = repo_text();
    let parallel = pgzip(&text, 6, 2, 64 * 1024);
    let mut single = GzEncoder::new(Vec::new(), Compression::new(6));
    single.write_all(&text).expect("GzEncoder write");
    let single = single.finish().expect("GzEncoder finish");
    let ratio = parallel.len() as f64 / single.len() as f64;
    assert!(
        ratio <= 1.02,
        "{} bytes in parallel vs {} in one stream ({ratio:.4})",
        parallel.len(),
        single.len()
    );
    assert!(gunzip_single(&parallel) == text);
}

/// Records what reaches it, and how often it was flushed.
#[derive(Clone, Default)]
struct Shared {
    bytes: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<Mutex<usize>>,
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        *self.flushes.lock().expect("lock") += 1;
        Ok(())
    }
}

#[test]
fn flush_writes_every_block_handed_out_and_flushes_inner() {
    let data = sample(3 * BLOCK_SIZE + 10);
    let shared = Shared::default();
    let mut gz = ParGz::new(shared.clone(), 6, 2);
    gz.write_all(&data).expect("write");
    gz.flush().expect("flush");
    assert_eq!(*shared.flushes.lock().expect("lock"), 1);
    // Three full blocks are out (the third because more input followed it); the 10 bytes wait.
    let flushed = shared.bytes.lock().expect("lock").clone();
    let mut decoded = Vec::new();
    let _ = GzDecoder::new(&flushed[..]).read_to_end(&mut decoded);
    assert_eq!(decoded.len(), 3 * BLOCK_SIZE);
    assert!(decoded == data[..3 * BLOCK_SIZE]);
    gz.finish().expect("finish");
    let all = shared.bytes.lock().expect("lock").clone();
    assert!(all.starts_with(&flushed));
    assert!(gunzip_single(&all) == data);
}

/// Fails every write with a distinctive error.
struct Failing;

impl Write for Failing {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::StorageFull,
            "disk full (test)",
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_inner_write_error_is_returned_as_is() {
    let mut gz = ParGz::new(Failing, 6, 2);
    let error = gz
        .write_all(&sample(4 * BLOCK_SIZE))
        .and_then(|()| gz.flush())
        .expect_err("the inner error must come back");
    assert_eq!(error.kind(), io::ErrorKind::StorageFull);
    assert_eq!(error.to_string(), "disk full (test)");
    assert!(gz.write(b"x").is_err(), "the stream stays broken");
    assert!(gz.finish().is_err());
}

#[test]
fn dropping_without_finish_stops_the_workers() {
    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || {
        for threads in [1, 2, 4] {
            let mut gz = ParGz::new(Vec::new(), 9, threads);
            gz.write_all(&sample(20 * BLOCK_SIZE + 1)).expect("write");
            drop(gz);
            // Dropped before anything was handed out, and right after creation.
            let mut gz = ParGz::new(Vec::new(), 9, threads);
            gz.write_all(b"abc").expect("write");
            drop(gz);
            drop(ParGz::new(Vec::new(), 9, threads));
        }
        done_tx.send(()).expect("report");
    });
    done_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("dropping a ParGz must neither hang nor panic");
}
