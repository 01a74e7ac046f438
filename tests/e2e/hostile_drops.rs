//! `dropdeploy run` survives anything dropped on it: broken archives go to `failed/` with a
//! reason and are never uploaded, things that are not regular files are left alone with one
//! warning, odd but good names deploy, and after each case a good archive still deploys.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{self, World, archives_in, good_archive, wait_for};

const LONG: Duration = Duration::from_secs(30);

/// Gzip-compresses `data` in memory.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A tar of `(path, body)` entries whose names are written raw into the header, so that
/// `..` and absolute paths (which the tar crate refuses to write) can be made.
fn raw_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, body) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Puts `bytes` into the drop folder under `name` the careful way (written aside, renamed in).
fn drop_bytes(world: &World, drop: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(drop).unwrap();
    let aside = world.path(&format!("aside-{name}"));
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, drop.join(name)).unwrap();
}

/// No source was created and nothing was uploaded.
fn assert_no_upload(world: &World) {
    let stats = world.fake.stats();
    assert_eq!(stats.sources_created, 0, "a source was created: {stats:?}");
    assert_eq!(
        stats.uploads_ok + stats.uploads_failed,
        0,
        "uploaded: {stats:?}"
    );
    assert_eq!(stats.upload_bytes, 0, "uploaded bytes: {stats:?}");
}

/// The daemon still works: a good archive dropped now is deployed (history line `n`).
fn assert_still_deploys(world: &World, drop: &Path, n: usize) {
    world.drop_archive(drop, "after.tar.gz");
    let history = world.wait_history(n, LONG);
    let last = &history[n - 1];
    assert_eq!(last["file"], "after.tar.gz", "{history:#?}");
    assert_eq!(last["outcome"], "succeeded", "{history:#?}");
    assert!(archives_in(&drop.join("done")).contains(&"after.tar.gz".to_string()));
}

/// Drops `bytes` as `name`, expects it refused with a reason containing each of `needles`,
/// no upload, and the daemon deploying a good archive afterwards. Returns the reason text.
fn refused(name: &str, bytes: &[u8], needles: &[&str]) -> String {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    drop_bytes(&world, &drop, name, bytes);
    let reason = assert_refused(&world, &drop, name, needles);
    assert_still_deploys(&world, &drop, 2);
    reason
}

fn assert_refused(world: &World, drop: &Path, name: &str, needles: &[&str]) -> String {
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "failed", "{history:#?}");
    assert_eq!(history[0]["file"], name, "{history:#?}");
    assert!(
        wait_for(LONG, || drop.join("failed").join(name).is_file()),
        "{name} is in failed/: {:?}\n{}",
        archives_in(&drop.join("failed")),
        world.log("d")
    );
    let reason_path = drop.join("failed").join(format!("{name}.reason.txt"));
    assert!(
        wait_for(LONG, || reason_path.is_file()),
        "no {reason_path:?}"
    );
    let reason = std::fs::read_to_string(&reason_path).unwrap();
    for needle in needles {
        assert!(
            reason.to_lowercase().contains(&needle.to_lowercase()),
            "the reason lacks {needle:?}:\n{reason}"
        );
    }
    assert!(!drop.join(name).exists(), "left in the drop folder");
    assert_no_upload(world);
    reason
}

#[test]
fn a_truncated_gzip_is_refused() {
    let world = World::new();
    let good = std::fs::read(world.archive("src.tar.gz")).unwrap();
    refused("cut.tar.gz", &good[..good.len() / 2], &["truncated"]);
}

#[test]
fn a_file_that_is_not_gzip_is_refused() {
    // A zip file named .tar.gz.
    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend_from_slice(&[0u8; 200]);
    refused("zip.tar.gz", &zip, &["not a gzip file"]);
}

#[test]
fn gzip_of_something_that_is_not_tar_is_refused() {
    let text = "just some text, not a tar archive\n".repeat(100);
    refused("text.tar.gz", &gzip(text.as_bytes()), &["tar"]);
}

#[test]
fn a_tar_with_dot_dot_paths_is_refused() {
    let tar = raw_tar(&[
        ("app/index.js", b"ok\n"),
        ("app/../../evil.sh", b"rm -rf /\n"),
    ]);
    refused("dotdot.tar.gz", &gzip(&tar), &[".."]);
}

#[test]
fn a_tar_with_absolute_paths_is_refused() {
    let tar = raw_tar(&[("/etc/cron.d/evil", b"* * * * * root true\n")]);
    refused("absolute.tar.gz", &gzip(&tar), &["absolute"]);
}

#[test]
fn a_tar_with_two_top_level_entries_is_refused() {
    let tar = raw_tar(&[("one/a.txt", b"a\n"), ("two/b.txt", b"b\n")]);
    refused("two-roots.tar.gz", &gzip(&tar), &["top-level"]);
}

#[test]
fn an_empty_archive_is_refused() {
    refused("empty.tar.gz", &gzip(&[0u8; 1024]), &["empty"]);
}

#[test]
fn a_zero_byte_file_is_refused() {
    refused("zero.tar.gz", b"", &["empty"]);
}

/// The peak resident set size of a process, in bytes (`VmHWM` in `/proc/<pid>/status`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/<pid>/status");
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[test]
fn a_gzip_bomb_is_refused_in_bounded_memory() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    // 400 MB of zeros: past the default limit of 314,572,800 bytes, under 2 MB on disk.
    let bomb = world.path("bomb.tar.gz");
    support::zeros_archive(&bomb, 400_000_000);
    let compressed = std::fs::metadata(&bomb).unwrap().len();
    assert!(compressed < 2_000_000, "{compressed} bytes");
    let daemon = world.start_daemon("d");
    let pid = daemon.0.id();
    let before = peak_rss(pid);
    std::fs::create_dir_all(&drop).unwrap();
    let dropped = Instant::now();
    std::fs::rename(&bomb, drop.join("bomb.tar.gz")).unwrap();
    let history = world.wait_history(1, Duration::from_secs(120));
    let took = dropped.elapsed();
    let peak = peak_rss(pid);
    eprintln!(
        "gzip bomb: {compressed} bytes compressed, refused in {took:?}; daemon VmHWM {} kB \
         before, {} kB after",
        before / 1024,
        peak / 1024
    );
    assert_eq!(history[0]["outcome"], "failed", "{history:#?}");
    assert_refused(&world, &drop, "bomb.tar.gz", &["exceeds the limit"]);
    assert!(peak < 200 * 1024 * 1024, "peak RSS {} kB", peak / 1024);
    assert_still_deploys(&world, &drop, 2);
}

/// Waits for a warning naming `name`, then checks that a good archive still deploys and that
/// the warning was given exactly once, with no upload of the thing itself.
fn left_alone(world: &World, drop: &Path, name: &str, what: &str) {
    let named = |w: &World| {
        w.log("d")
            .lines()
            .filter(|l| l.contains(name))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_for(LONG, || !named(world).is_empty()),
        "no warning about {name}:\n{}",
        world.log("d")
    );
    assert_still_deploys(world, drop, 1);
    // A moment more for any repeated warning (a rescan, a settle check).
    std::thread::sleep(Duration::from_millis(800));
    let lines = named(world);
    assert_eq!(lines.len(), 1, "one line names {name}: {lines:#?}");
    assert!(lines[0].contains(what), "{}", lines[0]);
    assert_eq!(world.history().len(), 1, "{:#?}", world.history());
    assert_eq!(
        world.fake.stats().sources_created,
        1,
        "only the good archive"
    );
    assert!(archives_in(&drop.join("failed")).is_empty());
}

#[test]
fn a_symlink_to_etc_passwd_is_left_alone() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let passwd_meta = std::fs::metadata("/etc/passwd").unwrap();
    let link = drop.join("passwd.tar.gz");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    left_alone(&world, &drop, "passwd.tar.gz", "symbolic link");
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(meta.file_type().is_symlink(), "the link is still there");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/etc/passwd"));
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd);
    let after = std::fs::metadata("/etc/passwd").unwrap();
    assert_eq!(after.modified().unwrap(), passwd_meta.modified().unwrap());
}

#[test]
fn a_fifo_is_left_alone_and_does_not_block_the_daemon() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    let fifo = drop.join("pipe.tar.gz");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    left_alone(&world, &drop, "pipe.tar.gz", "fifo");
    let meta = std::fs::symlink_metadata(&fifo).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
}

#[test]
fn a_directory_named_like_an_archive_is_left_alone() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    let dir = drop.join("x.tar.gz");
    std::fs::create_dir_all(dir.join("inside")).unwrap();
    std::fs::write(dir.join("inside/file.txt"), b"hello").unwrap();
    left_alone(&world, &drop, "x.tar.gz", "director");
    assert!(dir.join("inside/file.txt").is_file());
}

#[test]
fn an_unreadable_file_is_refused_with_its_reason() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let file = world.archive("locked.tar.gz");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&file).is_ok() {
        eprintln!(
            "skipped: a file of mode 000 can still be read here (running as root or with \
             CAP_DAC_OVERRIDE), so the daemon cannot be shown one it cannot read"
        );
        return;
    }
    let _daemon = world.start_daemon("d");
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::rename(&file, drop.join("locked.tar.gz")).unwrap();
    assert_refused(&world, &drop, "locked.tar.gz", &["permission denied"]);
    assert_still_deploys(&world, &drop, 2);
}

/// Drops a good archive under a raw name, expects it deployed and kept in `done/` under that
/// exact name, with a valid history line.
fn odd_name_deploys(name: &OsStr) {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    let made = good_archive(world.dir.path(), "odd-source.tar.gz", "app");
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::rename(&made, drop.join(name)).unwrap();
    // world.history() parses each line as JSON: a name that broke the line would fail here.
    assert!(
        wait_for(LONG, || !world.history().is_empty()),
        "{name:?} was not deployed:\n{}",
        world.log("d")
    );
    let history = world.history();
    assert_eq!(history[0]["outcome"], "succeeded", "{history:#?}");
    assert!(history[0]["file"].is_string(), "{history:#?}");
    if let Some(text) = name.to_str() {
        assert_eq!(history[0]["file"], text, "{history:#?}");
    }
    let raw = std::fs::read_to_string(world.state.join("history.jsonl")).unwrap();
    assert_eq!(raw.lines().count(), 1, "one line per outcome: {raw:?}");
    let done: PathBuf = drop.join("done").join(name);
    assert!(
        wait_for(LONG, || done.is_file()),
        "{done:?} is in done/: {:?}",
        std::fs::read_dir(drop.join("done"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect::<Vec<OsString>>()
    );
    assert_eq!(world.fake.deployments("my-app").len(), 1);
    assert_still_deploys(&world, &drop, 2);
}

#[test]
fn a_name_with_spaces_deploys() {
    odd_name_deploys(OsStr::new("my release 1.tar.gz"));
}

#[test]
fn a_name_with_a_newline_deploys() {
    odd_name_deploys(OsStr::new("line\nbreak.tar.gz"));
}

#[test]
fn a_name_that_is_not_utf8_deploys() {
    odd_name_deploys(OsStr::from_bytes(b"caf\xe9-\xff.tar.gz"));
}

#[test]
fn an_archive_of_fifty_thousand_entries_deploys() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let path = world.path("many.tar.gz");
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for i in 0..50_000u32 {
        let body = format!("{i}\n");
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(
            &mut h,
            format!("app/d{}/f{i}.txt", i / 1000),
            body.as_bytes(),
        )
        .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
    let _daemon = world.start_daemon("d");
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::rename(&path, drop.join("many.tar.gz")).unwrap();
    let history = world.wait_history(1, Duration::from_secs(60));
    assert_eq!(history[0]["outcome"], "succeeded", "{history:#?}");
    assert_eq!(archives_in(&drop.join("done")), vec!["many.tar.gz"]);
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}
