//! The drop folder watcher against a real filesystem and real inotify events: what it takes,
//! when, and what it leaves alone. (The daemon's claims of what it reports: `e2e::drop_claims`.)

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant, SystemTime};

use dropdeploy::source::drop::{
    DropError, DropFolderConfig, DropWatcher, Readiness, ReadyFile, prepare,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long an expected file may take to arrive before the test fails.
const ARRIVAL: Duration = Duration::from_secs(5);

fn start(dir: &Path, settle: Duration) -> (DropWatcher, mpsc::Receiver<ReadyFile>) {
    capture_logs();
    let (tx, rx) = mpsc::channel(16);
    let cfg = DropFolderConfig {
        app: "my-app".to_string(),
        dir: dir.to_path_buf(),
        settle,
    };
    let watcher = DropWatcher::start(cfg, tx).expect("the watcher starts");
    (watcher, rx)
}

async fn next(rx: &mut mpsc::Receiver<ReadyFile>) -> ReadyFile {
    timeout(ARRIVAL, rx.recv())
        .await
        .expect("no ready file arrived in time")
        .expect("the watcher stopped")
}

/// Waits `wait` and fails if anything arrives meanwhile.
async fn nothing_for(rx: &mut mpsc::Receiver<ReadyFile>, wait: Duration) {
    if let Ok(got) = timeout(wait, rx.recv()).await {
        panic!("expected nothing, got {got:?}");
    }
}

fn drop_folder() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("drop");
    fs::create_dir(&dir).expect("mkdir drop");
    (tmp, dir)
}

/// Writes a file outside the drop folder (same filesystem) and renames it in.
fn rename_in(tmp: &Path, dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let staging = tmp.join("staging");
    fs::create_dir_all(&staging).expect("mkdir staging");
    let staged = staging.join(name);
    fs::write(&staged, body).expect("write staged file");
    let target = dir.join(name);
    fs::rename(&staged, &target).expect("rename into the drop folder");
    target
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects every test's log lines in one buffer (tests tell theirs apart by their temp paths).
fn capture_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    });
}

fn warnings_about(path: &Path) -> usize {
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let needle = path.display().to_string();
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|line| line.contains("WARN") && line.contains(&needle))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_renamed_in_is_ready_at_once_even_with_a_long_settle() {
    let (tmp, dir) = drop_folder();
    let (_watcher, mut rx) = start(&dir, Duration::from_secs(30));
    let began = Instant::now();
    let path = rename_in(tmp.path(), &dir, "app.tar.gz", b"0123456789");

    let ready = next(&mut rx).await;
    assert_eq!(ready.path, path);
    assert_eq!(ready.readiness, Readiness::RenamedIn);
    assert_eq!(ready.size, 10);
    assert_eq!(ready.app, "my-app");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "took {:?}",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_in_place_is_ready_only_after_it_is_closed_and_settled() {
    let (_tmp, dir) = drop_folder();
    let settle = Duration::from_millis(300);
    let (_watcher, mut rx) = start(&dir, settle);
    let path = dir.join("slow.tar.gz");

    // A writer that keeps the file open for 1.6 s, writing a chunk every 200 ms.
    let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel();
    let writer_path = path.clone();
    std::thread::spawn(move || {
        let mut file = fs::File::create(&writer_path).expect("create");
        for _ in 0..8 {
            file.write_all(&[7u8; 1000]).expect("write");
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(file);
        let _ = closed_tx.send(Instant::now());
    });

    let closed_at = tokio::select! {
        got = rx.recv() => panic!("ready before the writer closed the file: {got:?}"),
        closed = &mut closed_rx => closed.expect("the writer finished"),
    };
    let ready = next(&mut rx).await;
    let waited = closed_at.elapsed();
    assert_eq!(ready.path, path);
    assert_eq!(ready.readiness, Readiness::Settled);
    assert_eq!(ready.size, 8000);
    assert!(waited >= settle, "ready {waited:?} after the close");
    nothing_for(&mut rx, settle * 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_pausing_longer_than_settle_without_closing_is_not_taken() {
    let (_tmp, dir) = drop_folder();
    let settle = Duration::from_millis(300);
    let (_watcher, mut rx) = start(&dir, settle);
    let path = dir.join("paused.tar.gz");

    let mut file = fs::File::create(&path).expect("create");
    file.write_all(&[1u8; 500]).expect("write");
    // Size and mtime stay still for far longer than settle, but the file is still open.
    nothing_for(&mut rx, settle * 4).await;
    file.write_all(&[2u8; 500]).expect("write");
    nothing_for(&mut rx, settle * 4).await;
    drop(file);

    let ready = next(&mut rx).await;
    assert_eq!(ready.path, path);
    assert_eq!(ready.readiness, Readiness::Settled);
    assert_eq!(ready.size, 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_file_renamed_to_its_real_name_is_taken_once_under_that_name() {
    let (_tmp, dir) = drop_folder();
    let settle = Duration::from_millis(300);
    let (_watcher, mut rx) = start(&dir, settle);
    let partial = dir.join("x.tar.gz.partial");
    fs::write(&partial, b"partial data, then complete").expect("write partial");
    tokio::time::sleep(settle * 2).await;
    let complete = dir.join("x.tar.gz");
    fs::rename(&partial, &complete).expect("rename");

    let ready = next(&mut rx).await;
    assert_eq!(ready.path, complete);
    assert_eq!(ready.readiness, Readiness::RenamedIn);
    nothing_for(&mut rx, settle * 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hidden_temporary_and_other_names_are_ignored() {
    let (tmp, dir) = drop_folder();
    let settle = Duration::from_millis(200);
    let (_watcher, mut rx) = start(&dir, settle);
    for name in [
        ".hidden.tar.gz",
        ".syncthing.app.tar.gz.tmp",
        "app.tar.gz.tmp",
        "app.tar.gz.part",
        "app.tar.gz.crdownload",
        "~x.tar.gz",
        "x.tar.gz~",
        "notes.txt",
    ] {
        fs::write(dir.join(name), b"data").expect("write");
    }
    rename_in(tmp.path(), &dir, ".renamed.tar.gz", b"data");

    // Nothing can be awaited here: a bounded wait well past the settle time is the assertion.
    nothing_for(&mut rx, settle * 8).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn a_symlink_a_fifo_and_a_directory_are_left_alone_with_one_warning_each() {
    use std::os::unix::fs::FileTypeExt;

    let (_tmp, dir) = drop_folder();
    let fifo = dir.join("p.tar.gz");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");
    let settle = Duration::from_millis(200);
    let (watcher, mut rx) = start(&dir, settle);

    let link = dir.join("evil.tar.gz");
    std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
    let subdir = dir.join("d.tar.gz");
    fs::create_dir(&subdir).expect("mkdir d.tar.gz");
    // More events and a full listing on the same paths: still one warning per path.
    fs::write(subdir.join("inside"), b"x").expect("write inside d.tar.gz");
    let mode = fs::metadata(&subdir).expect("stat").permissions();
    fs::set_permissions(&subdir, mode).expect("chmod d.tar.gz");
    tokio::time::sleep(settle).await;
    watcher.rescan();

    nothing_for(&mut rx, settle * 8).await;
    assert_eq!(
        fs::read_link(&link).expect("still a symlink"),
        PathBuf::from("/etc/passwd")
    );
    assert!(
        fs::symlink_metadata(&fifo)
            .expect("stat")
            .file_type()
            .is_fifo()
    );
    assert!(fs::symlink_metadata(&subdir).expect("stat").is_dir());
    assert_eq!(warnings_about(&link), 1, "warnings about the symlink");
    assert_eq!(warnings_about(&fifo), 1, "warnings about the fifo");
    assert_eq!(warnings_about(&subdir), 1, "warnings about the directory");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_old_file_present_before_start_is_found_at_once() {
    let (_tmp, dir) = drop_folder();
    let path = dir.join("old.tar.gz");
    let file = fs::File::create(&path).expect("create");
    file.set_len(42).expect("set_len");
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
    drop(file);

    let began = Instant::now();
    let (_watcher, mut rx) = start(&dir, Duration::from_secs(30));
    let ready = next(&mut rx).await;
    assert_eq!(ready.path, path);
    assert_eq!(ready.readiness, Readiness::FoundAtStart);
    assert_eq!(ready.size, 42);
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "took {:?}",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_file_present_before_start_is_found_after_settle() {
    let (_tmp, dir) = drop_folder();
    let path = dir.join("fresh.tar.gz");
    fs::write(&path, b"fresh").expect("write");

    let settle = Duration::from_millis(500);
    let began = Instant::now();
    let (_watcher, mut rx) = start(&dir, settle);
    let ready = next(&mut rx).await;
    assert_eq!(ready.path, path);
    assert_eq!(ready.readiness, Readiness::FoundAtStart);
    assert!(began.elapsed() >= settle, "took only {:?}", began.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn files_in_done_and_failed_are_never_taken() {
    let (tmp, dir) = drop_folder();
    prepare(&dir).expect("prepare");
    fs::write(dir.join("done/before.tar.gz"), b"x").expect("write");
    fs::write(dir.join("failed/before.tar.gz"), b"x").expect("write");
    let settle = Duration::from_millis(200);
    let (_watcher, mut rx) = start(&dir, settle);

    fs::write(dir.join("done/after.tar.gz"), b"x").expect("write");
    fs::write(dir.join("failed/after.tar.gz"), b"x").expect("write");
    rename_in(tmp.path(), &dir.join("done"), "moved.tar.gz", b"x");
    rename_in(tmp.path(), &dir.join("failed"), "moved.tar.gz", b"x");

    nothing_for(&mut rx, settle * 8).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_drop_folder_is_created_with_done_and_failed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("not/there/yet");
    let (_watcher, mut rx) = start(&dir, Duration::from_secs(30));

    assert!(dir.is_dir());
    assert!(dir.join("done").is_dir());
    assert!(dir.join("failed").is_dir());
    let path = rename_in(tmp.path(), &dir, "app.tgz", b"x");
    assert_eq!(next(&mut rx).await.path, path);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drop_folder_that_cannot_be_created_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("a-file");
    fs::write(&file, b"not a directory").expect("write");
    let dir = file.join("drop");

    let err = prepare(&dir).expect_err("prepare fails");
    assert!(matches!(err, DropError::Create { .. }), "{err:?}");
    let (tx, _rx) = mpsc::channel(1);
    let cfg = DropFolderConfig {
        app: "my-app".to_string(),
        dir: dir.clone(),
        settle: Duration::from_secs(1),
    };
    let err = DropWatcher::start(cfg, tx).expect_err("start fails");
    let message = err.to_string();
    assert!(message.contains(&dir.display().to_string()), "{message}");
    assert!(message.contains("Not a directory"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_name_dropped_twice_is_taken_twice() {
    let (tmp, dir) = drop_folder();
    let spool = tmp.path().join("spool");
    fs::create_dir(&spool).expect("mkdir spool");
    let (_watcher, mut rx) = start(&dir, Duration::from_secs(30));

    for round in 0..2 {
        let path = rename_in(tmp.path(), &dir, "app.tar.gz", b"release");
        let ready = next(&mut rx).await;
        assert_eq!(ready.path, path, "round {round}");
        assert_eq!(ready.readiness, Readiness::RenamedIn);
        // Claim it, as the daemon does.
        fs::rename(&path, spool.join(format!("claimed-{round}.tar.gz"))).expect("claim");
    }
    nothing_for(&mut rx, Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requested_rescan_sends_again_what_is_still_there() {
    let (tmp, dir) = drop_folder();
    let settle = Duration::from_millis(300);
    let (watcher, mut rx) = start(&dir, settle);
    let path = rename_in(tmp.path(), &dir, "app.tar.gz", b"release");
    assert_eq!(next(&mut rx).await.readiness, Readiness::RenamedIn);
    nothing_for(&mut rx, settle * 2).await;

    watcher.rescan();
    let again = next(&mut rx).await;
    assert_eq!(again.path, path);
    assert_eq!(again.readiness, Readiness::FoundAtStart);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_files_overflowing_the_event_queue_is_taken_each_exactly_once() {
    let (tmp, dir) = drop_folder();
    let settle = Duration::from_millis(200);
    let (_watcher, mut rx) = start(&dir, settle);
    // Fill the ready channel (16) and leave one more ready file waiting: the watcher is now
    // stuck sending it, and cannot read events.
    let blockers = 17;
    for i in 0..blockers {
        rename_in(tmp.path(), &dir, &format!("first-{i}.tar.gz"), b"x");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Each file written in place makes three events (create, modify, close): 6000 events
    // overflow the watcher's event queue (4096), so it must list the folder to find the rest.
    let count = 2000;
    for i in 0..count {
        fs::write(dir.join(format!("app-{i}.tar.gz")), b"x").expect("write");
    }

    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    while seen.len() < blockers + count {
        let ready = next(&mut rx).await;
        *seen.entry(ready.path).or_default() += 1;
    }
    nothing_for(&mut rx, settle * 4).await;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_drop_folder_is_created_and_watched_again() {
    let (tmp, dir) = drop_folder();
    let (_watcher, mut rx) = start(&dir, Duration::from_millis(300));
    fs::remove_dir_all(&dir).expect("remove the drop folder");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("failed").is_dir() {
        assert!(
            Instant::now() < deadline,
            "the drop folder was not created again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The new watch is set up right after the folder is made; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let path = rename_in(tmp.path(), &dir, "app.tar.gz", b"x");
    assert_eq!(next(&mut rx).await.path, path);
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_watcher_ends_its_task() {
    let (_tmp, dir) = drop_folder();
    let (watcher, mut rx) = start(&dir, Duration::from_secs(30));
    watcher.stop();
    let ended = timeout(ARRIVAL, rx.recv())
        .await
        .expect("the task ended in time");
    assert!(ended.is_none(), "got {ended:?}");
}

/// Waits up to `within` for the next ready file.
async fn next_within(rx: &mut mpsc::Receiver<ReadyFile>, within: Duration) -> ReadyFile {
    timeout(within, rx.recv())
        .await
        .expect("no ready file arrived in time")
        .expect("the watcher stopped")
}

/// Points the symbolic link `link` at `target` in one rename, as `ln -sfn` users expect.
fn point(link: &Path, target: &Path) {
    let staged = link.with_extension("new-link");
    let _ = fs::remove_file(&staged);
    std::os::unix::fs::symlink(target, &staged).expect("make the new link");
    fs::rename(&staged, link).expect("swap the link in");
}

/// Issue 21: a drop folder that is a symbolic link to a directory was refused at start with
/// "Not a directory"; it is followed.
#[tokio::test(flavor = "multi_thread")]
async fn a_drop_folder_that_is_a_symlink_to_a_directory_is_followed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let real = tmp.path().join("real");
    fs::create_dir(&real).unwrap();
    let dir = tmp.path().join("drop");
    std::os::unix::fs::symlink(&real, &dir).unwrap();
    let (_watcher, mut rx) = start(&dir, Duration::from_millis(300));
    assert!(real.join("done").is_dir() && real.join("failed").is_dir());
    let path = rename_in(tmp.path(), &dir, "app.tar.gz", b"x");
    let ready = next(&mut rx).await;
    assert_eq!(ready.path, path);
    assert_eq!(ready.readiness, Readiness::RenamedIn);
}

/// Issue 21: a drop folder swapped for a symbolic link while watched had its files never
/// taken; and a link pointed at another directory leaves the old one watched. Both are
/// followed within seconds, and files already in the new directory are taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_drop_folder_swapped_for_a_symlink_and_repointed_is_watched_where_it_leads() {
    let (tmp, dir) = drop_folder();
    let (_watcher, mut rx) = start(&dir, Duration::from_millis(200));
    let first = tmp.path().join("first");
    fs::create_dir(&first).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&first, &dir).unwrap();
    // Taken through the link once it is watched again (after the 2 s grace of a removal).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !first.join("failed").is_dir() {
        assert!(
            Instant::now() < deadline,
            "the link's target was not prepared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = rename_in(tmp.path(), &dir, "one.tar.gz", b"1");
    assert_eq!(
        next_within(&mut rx, Duration::from_secs(20)).await.path,
        path
    );

    // Pointed elsewhere: a file already there, and one renamed in later, are both taken.
    let second = tmp.path().join("second");
    fs::create_dir(&second).unwrap();
    fs::write(second.join("two.tar.gz"), b"2").unwrap();
    point(&dir, &second);
    let ready = next_within(&mut rx, Duration::from_secs(20)).await;
    assert_eq!(ready.path, dir.join("two.tar.gz"));
    let path = rename_in(tmp.path(), &dir, "three.tar.gz", b"3");
    let ready = next_within(&mut rx, Duration::from_secs(20)).await;
    assert_eq!(ready.path, path);
    assert!(second.join("done").is_dir(), "the new folder was prepared");
}
