//! `inspect` against archives made by the real GNU tools (`/usr/bin/tar`, `/usr/bin/gzip`),
//! the way users make them: `tar -C parent -czf app.tar.gz app`.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use dropdeploy::archive::inspect::{InspectError, Limits, RejectionKind, Summary, inspect};
use sha2::{Digest, Sha256};

/// Runs GNU tar in `dir` and returns the path of the archive it wrote.
fn gnu_tar(dir: &Path, args: &[&str]) -> PathBuf {
    let out = dir.join("out.tar.gz");
    let status = Command::new("/usr/bin/tar")
        .current_dir(dir)
        .arg("-czf")
        .arg(&out)
        .args(args)
        .status()
        .expect("run /usr/bin/tar");
    assert!(status.success(), "tar {args:?} failed: {status}");
    out
}

/// Lists an archive with GNU tar, one line per member.
fn gnu_list(archive: &Path) -> Vec<String> {
    let output = Command::new("/usr/bin/tar")
        .arg("-tzf")
        .arg(archive)
        .output()
        .expect("run /usr/bin/tar");
    assert!(output.status.success(), "tar -tzf failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `parent/app` with files, folders, a symlink, an empty folder and a name over 100 bytes.
fn app_folder(parent: &Path) {
    let app = parent.join("app");
    fs::create_dir_all(app.join("sub")).unwrap();
    fs::create_dir_all(app.join("empty")).unwrap();
    fs::write(app.join("index.js"), "console.log('hi')\n").unwrap();
    // Incompressible, so a cut in the middle of the archive lands inside deflate data.
    let noise: Vec<u8> = (0..300_000u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(app.join("sub").join("noise.bin"), noise).unwrap();
    fs::write(app.join(format!("{}.txt", "long".repeat(30))), "x").unwrap();
    symlink("../index.js", app.join("sub").join("link")).unwrap();
}

fn accepted(archive: &Path) -> Summary {
    match inspect(archive, &Limits::default()) {
        Ok(summary) => summary,
        Err(error) => panic!("{} refused: {error}", archive.display()),
    }
}

#[test]
fn a_gnu_tar_of_one_folder_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    app_folder(dir.path());
    let archive = gnu_tar(dir.path(), &["app"]);

    let summary = accepted(&archive);
    let bytes = fs::read(&archive).unwrap();
    assert_eq!(summary.root, "app");
    assert_eq!(summary.entries, gnu_list(&archive).len() as u64);
    assert_eq!(summary.entries, 7);
    assert_eq!(summary.files, 3);
    assert_eq!(summary.compressed_bytes, bytes.len() as u64);
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(&bytes)));
    // GNU tar pads the stream to 10 kB records.
    assert_eq!(summary.uncompressed_bytes % 10240, 0);
}

#[test]
fn a_gnu_tar_with_dot_slash_names_or_pax_headers_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    app_folder(dir.path());
    let dotted = gnu_tar(dir.path(), &["./app"]);
    assert!(gnu_list(&dotted)[0].starts_with("./app"));
    assert_eq!(accepted(&dotted).root, "app");

    let pax = gnu_tar(dir.path(), &["--format=posix", "app"]);
    let summary = accepted(&pax);
    assert_eq!((summary.root.as_str(), summary.entries), ("app", 7));
}

#[test]
fn a_gnu_tar_of_two_top_level_items_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    app_folder(dir.path());
    fs::write(dir.path().join("README.md"), "# app\n").unwrap();
    let archive = gnu_tar(dir.path(), &["app", "README.md"]);

    match inspect(&archive, &Limits::default()) {
        Err(InspectError::Rejected(rejection)) => {
            assert_eq!(rejection.kind, RejectionKind::NoSingleRoot);
            assert_eq!(
                rejection.reason,
                "two top-level entries: app/ and README.md"
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_truncated_archive_is_refused_and_gzip_agrees() {
    let dir = tempfile::tempdir().unwrap();
    app_folder(dir.path());
    let archive = gnu_tar(dir.path(), &["app"]);
    let bytes = fs::read(&archive).unwrap();
    let truncated = dir.path().join("truncated.tar.gz");
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();

    let gzip = Command::new("/usr/bin/gzip")
        .arg("-t")
        .arg(&truncated)
        .output()
        .expect("run /usr/bin/gzip");
    assert!(!gzip.status.success(), "gzip -t accepted a truncated file");

    match inspect(&truncated, &Limits::default()) {
        Err(InspectError::Rejected(rejection)) => {
            assert_eq!(rejection.kind, RejectionKind::TruncatedGzip);
            assert!(
                rejection.reason.starts_with("truncated gzip stream after "),
                "{}",
                rejection.reason
            );
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}
