//! Every kind of bad archive is refused before anything is uploaded, with a reason naming the
//! file and the problem; `dropdeploy check` says the same without an account.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::support::World;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A tar with entries written header by header, so that paths tar::Builder refuses can be made.
fn raw_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, body) in entries {
        let mut h = tar::Header::new_gnu();
        let bytes = name.as_bytes();
        h.as_gnu_mut().unwrap().name[..bytes.len()].copy_from_slice(bytes);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(if name.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn write(world: &World, name: &str, bytes: &[u8]) -> PathBuf {
    let path = world.path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn refused(world: &World, file: &Path, reason: &str) {
    let run = world.run(&["deploy", "--app", "my-app", file.to_str().unwrap()]);
    run.assert_code(1)
        .assert_contains(reason)
        .assert_contains(&file.display().to_string())
        .assert_contains("nothing was uploaded");
    let stats = world.fake.stats();
    assert_eq!(stats.sources_created, 0, "no source for a bad archive");
    assert_eq!(stats.uploads_ok + stats.uploads_failed, 0, "no upload");
    assert!(file.exists(), "the user's file is kept");
    assert!(world.job_records().is_empty(), "nothing left in the spool");
    // `check` agrees, without any account.
    let check = world.run(&["check", file.to_str().unwrap()]);
    check
        .assert_code(1)
        .assert_contains("refused")
        .assert_contains(reason);
}

#[test]
fn a_file_that_is_not_gzip_is_refused() {
    let world = World::new();
    let file = write(
        &world,
        "a.tar.gz",
        b"PK\x03\x04 this is a zip, not a tarball",
    );
    refused(&world, &file, "not a gzip file");
}

#[test]
fn a_truncated_archive_is_refused() {
    let world = World::new();
    let good = std::fs::read(world.archive("good.tar.gz")).unwrap();
    let file = write(&world, "cut.tar.gz", &good[..good.len() / 2]);
    refused(&world, &file, "truncated");
}

#[test]
fn gzip_of_something_that_is_not_tar_is_refused() {
    let world = World::new();
    let file = write(&world, "a.tar.gz", &gzip(&b"just some text\n".repeat(100)));
    refused(&world, &file, "not a tar archive");
}

#[test]
fn two_top_level_entries_are_refused() {
    let world = World::new();
    let tar = raw_tar(&[("app/", b""), ("app/a", b"x"), ("README.md", b"hi")]);
    let file = write(&world, "two.tar.gz", &gzip(&tar));
    refused(&world, &file, "two top-level entries: app/ and README.md");
}

#[test]
fn an_absolute_path_is_refused() {
    let world = World::new();
    let tar = raw_tar(&[("/etc/passwd", b"root")]);
    let file = write(&world, "abs.tar.gz", &gzip(&tar));
    refused(&world, &file, "absolute path");
}

#[test]
fn a_path_leaving_the_archive_is_refused() {
    let world = World::new();
    let tar = raw_tar(&[("app/", b""), ("app/../../evil", b"x")]);
    let file = write(&world, "dots.tar.gz", &gzip(&tar));
    refused(&world, &file, "leaves the archive");
}

#[test]
fn an_empty_file_is_refused() {
    let world = World::new();
    let file = write(&world, "empty.tar.gz", b"");
    refused(&world, &file, "empty");
}

#[test]
fn an_archive_without_entries_is_refused() {
    let world = World::new();
    let file = write(&world, "none.tar.gz", &gzip(&[0u8; 1024]));
    refused(&world, &file, "no entries");
}

#[test]
fn an_archive_over_the_size_limit_is_refused() {
    let world = World::new();
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(&world.config, format!("max_archive_size = 10000\n{text}")).unwrap();
    let big = vec![b'a'; 50_000];
    let tar = raw_tar(&[("app/", b""), ("app/big.txt", &big)]);
    let file = write(&world, "big.tar.gz", &gzip(&tar));
    let run = world.run(&["deploy", "--app", "my-app", file.to_str().unwrap()]);
    run.assert_code(1).assert_contains("exceeds the limit");
    assert_eq!(world.fake.stats().sources_created, 0);
}

#[test]
fn a_missing_file_is_a_usage_error_naming_it() {
    let world = World::new();
    let file = world.path("nope.tar.gz");
    world
        .run(&["deploy", "--app", "my-app", file.to_str().unwrap()])
        .assert_code(2)
        .assert_contains("nope.tar.gz");
    assert_eq!(world.fake.stats().requests, 0);
}

#[test]
fn check_accepts_a_good_archive_and_prints_its_summary() {
    let world = World::new();
    let file = world.archive("good.tar.gz");
    world
        .run(&["check", file.to_str().unwrap()])
        .assert_code(0)
        .assert_contains("ok:")
        .assert_contains("app/")
        .assert_contains("sha256");
}
