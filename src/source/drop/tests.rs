use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind, RenameMode,
};
use notify::{Event, EventKind};
use tokio::sync::mpsc;

use super::complete::{
    Pending, Seen, Settling, Verdict, Writers, check_interval, is_old, probe_writers,
};
use super::events::{Hint, read_event};
use super::watcher::watch_error;
use super::{DropError, DropFolderConfig, DropWatcher, Readiness, is_candidate_name};
use crate::source::watch::EMFILE;

fn candidate(name: &str) -> bool {
    is_candidate_name(OsStr::new(name))
}

#[test]
fn archives_are_candidates() {
    assert!(candidate("app.tar.gz"));
    assert!(candidate("app-1.2.3.tgz"));
    assert!(candidate("APP.TAR.GZ"));
    assert!(candidate("x.tar.gz"));
}

#[test]
fn other_names_are_not_candidates() {
    for name in [
        "notes.txt",
        "app.tar",
        "app.gz",
        "app.zip",
        ".tar.gz",
        ".tgz",
        "tar.gz",
        "",
        "done",
        "failed",
    ] {
        assert!(!candidate(name), "{name:?}");
    }
}

#[test]
fn hidden_and_temporary_names_are_not_candidates() {
    for name in [
        ".app.tar.gz",
        ".syncthing.app.tar.gz.tmp",
        ".app.tar.gz.AbC123",
        "app.tar.gz.part",
        "app.tar.gz.partial",
        "app.tar.gz.tmp",
        "app.tar.gz.crdownload",
        "~app.tar.gz",
        "app.tar.gz~",
        "APP.TAR.GZ.PART",
    ] {
        assert!(!candidate(name), "{name:?}");
    }
}

#[cfg(unix)]
#[test]
fn names_that_are_not_utf8_are_judged_on_their_bytes() {
    use std::os::unix::ffi::OsStrExt;
    assert!(is_candidate_name(OsStr::from_bytes(b"caf\xe9.tar.gz")));
    assert!(!is_candidate_name(OsStr::from_bytes(b".caf\xe9.tar.gz")));
}

const SETTLE: Duration = Duration::from_secs(2);
const NOBODY: Writers = Writers::None;
const OPEN: Writers = Writers::Open;
const UNKNOWN: Writers = Writers::Unknown;

fn seen(size: u64, secs: u64) -> Seen {
    Seen {
        size,
        mtime: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
        ctime: (secs as i64, 0),
        id: (1, 42),
    }
}

fn ready(how: Readiness) -> Verdict {
    Verdict::Ready(how)
}

fn waits(pending: Pending) -> Verdict {
    Verdict::Wait(pending)
}

#[test]
fn without_the_kernels_word_a_written_file_waits_for_its_close() {
    let t0 = Instant::now();
    let mut s = Settling::written(seen(10, 100), t0);
    let later = t0 + Duration::from_secs(60);
    assert_eq!(
        s.check(seen(10, 100), UNKNOWN, later, SETTLE),
        waits(Pending::AwaitingClose)
    );
}

#[test]
fn a_closed_file_is_ready_after_settle_without_change() {
    for writers in [NOBODY, UNKNOWN] {
        let t0 = Instant::now();
        let mut s = Settling::written(seen(10, 100), t0);
        let t1 = t0 + Duration::from_secs(1);
        s.on_close(t1);
        assert_eq!(
            s.check(seen(10, 100), writers, t1 + SETTLE / 2, SETTLE),
            waits(Pending::Settling)
        );
        assert_eq!(
            s.check(seen(10, 100), writers, t1 + SETTLE, SETTLE),
            ready(Readiness::Settled)
        );
    }
}

#[test]
fn a_change_of_size_mtime_ctime_or_inode_restarts_the_settle_time() {
    let t0 = Instant::now();
    let base = seen(20, 100);
    let changes = [
        seen(21, 100),
        seen(20, 101),
        Seen {
            ctime: (100, 5),
            ..base
        },
        Seen {
            id: (1, 43),
            ..base
        },
    ];
    for changed in changes {
        let mut s = Settling::found(base, t0, false);
        let t1 = t0 + SETTLE;
        assert_eq!(
            s.check(changed, NOBODY, t1, SETTLE),
            waits(Pending::Settling),
            "{changed:?}"
        );
        assert_eq!(
            s.check(changed, NOBODY, t1 + SETTLE / 2, SETTLE),
            waits(Pending::Settling)
        );
        assert_eq!(
            s.check(changed, NOBODY, t1 + SETTLE, SETTLE),
            ready(Readiness::FoundAtStart)
        );
    }
}

#[test]
fn a_file_open_for_writing_is_never_ready_whatever_its_age() {
    let t0 = Instant::now();
    let mut s = Settling::found(seen(10, 100), t0, true);
    for n in 1..20 {
        assert_eq!(
            s.check(seen(10, 100), OPEN, t0 + SETTLE * n, SETTLE),
            waits(Pending::WriterOpen)
        );
    }
    // Closed at last: unchanged for the settle time from the last time it was seen open.
    let last_open = t0 + SETTLE * 19;
    assert_eq!(
        s.check(seen(10, 100), NOBODY, last_open + SETTLE / 2, SETTLE),
        waits(Pending::Settling)
    );
    assert_eq!(
        s.check(seen(10, 100), NOBODY, last_open + SETTLE, SETTLE),
        ready(Readiness::FoundAtStart)
    );
}

#[test]
fn a_file_renamed_in_is_ready_at_once_unless_a_writer_has_it_open() {
    let t0 = Instant::now();
    for writers in [NOBODY, UNKNOWN] {
        let mut s = Settling::renamed(seen(10, 100), t0);
        assert_eq!(
            s.check(seen(10, 100), writers, t0, SETTLE),
            ready(Readiness::RenamedIn)
        );
    }
    let mut s = Settling::renamed(seen(10, 100), t0);
    assert_eq!(
        s.check(seen(10, 100), OPEN, t0, SETTLE),
        waits(Pending::WriterOpen)
    );
    // Written after its rename: no longer complete by its rename.
    assert_eq!(
        s.check(seen(20, 101), OPEN, t0 + SETTLE, SETTLE),
        waits(Pending::WriterOpen)
    );
    let last_open = t0 + SETTLE;
    assert_eq!(
        s.check(seen(20, 101), NOBODY, last_open + SETTLE / 2, SETTLE),
        waits(Pending::Settling)
    );
    assert_eq!(
        s.check(seen(20, 101), NOBODY, last_open + SETTLE, SETTLE),
        ready(Readiness::Settled)
    );
}

#[test]
fn when_the_kernel_says_nobody_writes_no_close_event_is_needed() {
    let t0 = Instant::now();
    let mut s = Settling::written(seen(10, 100), t0);
    assert_eq!(
        s.check(seen(10, 100), NOBODY, t0 + SETTLE, SETTLE),
        ready(Readiness::Settled)
    );
}

#[test]
fn a_created_file_such_as_a_hard_link_needs_no_close_event() {
    for writers in [NOBODY, UNKNOWN] {
        let t0 = Instant::now();
        let mut s = Settling::created(seen(10, 100), t0);
        assert_eq!(
            s.check(seen(10, 100), writers, t0 + SETTLE / 2, SETTLE),
            waits(Pending::Settling)
        );
        assert_eq!(
            s.check(seen(10, 100), writers, t0 + SETTLE, SETTLE),
            ready(Readiness::Settled)
        );
    }
}

#[test]
fn a_write_after_close_asks_for_a_new_close_when_writers_are_unknown() {
    let t0 = Instant::now();
    let mut s = Settling::written(seen(10, 100), t0);
    s.on_close(t0);
    s.on_write(t0 + Duration::from_secs(1));
    assert_eq!(
        s.check(seen(10, 100), UNKNOWN, t0 + SETTLE * 10, SETTLE),
        waits(Pending::AwaitingClose)
    );
    s.on_close(t0 + SETTLE * 10);
    assert_eq!(
        s.check(seen(10, 100), UNKNOWN, t0 + SETTLE * 11, SETTLE),
        ready(Readiness::Settled)
    );
}

#[test]
fn an_old_file_found_with_no_writer_is_ready_after_one_unchanged_check() {
    let t0 = Instant::now();
    let mut s = Settling::found(seen(10, 100), t0, true);
    assert_eq!(
        s.check(
            seen(10, 100),
            NOBODY,
            t0 + Duration::from_millis(250),
            SETTLE
        ),
        ready(Readiness::FoundAtStart)
    );
}

#[test]
fn an_old_file_found_needs_the_full_settle_time_when_writers_are_unknown() {
    let t0 = Instant::now();
    let mut s = Settling::found(seen(10, 100), t0, true);
    assert_eq!(
        s.check(
            seen(10, 100),
            UNKNOWN,
            t0 + Duration::from_millis(250),
            SETTLE
        ),
        waits(Pending::Settling)
    );
    assert_eq!(
        s.check(seen(10, 100), UNKNOWN, t0 + SETTLE, SETTLE),
        ready(Readiness::FoundAtStart)
    );
}

#[test]
fn an_old_file_found_that_changes_waits_for_settle() {
    let t0 = Instant::now();
    let mut s = Settling::found(seen(10, 100), t0, true);
    let t1 = t0 + Duration::from_millis(250);
    assert_eq!(
        s.check(seen(11, 100), NOBODY, t1, SETTLE),
        waits(Pending::Settling)
    );
    assert_eq!(
        s.check(seen(11, 100), NOBODY, t1 + SETTLE / 2, SETTLE),
        waits(Pending::Settling)
    );
    assert_eq!(
        s.check(seen(11, 100), NOBODY, t1 + SETTLE, SETTLE),
        ready(Readiness::FoundAtStart)
    );
}

#[test]
fn a_found_file_that_is_written_to_is_settled_not_found() {
    let t0 = Instant::now();
    let mut s = Settling::found(seen(10, 100), t0, true);
    s.on_write(t0);
    assert_eq!(
        s.check(seen(10, 100), UNKNOWN, t0 + SETTLE * 5, SETTLE),
        waits(Pending::AwaitingClose)
    );
    s.on_close(t0 + SETTLE * 5);
    assert_eq!(
        s.check(seen(10, 100), UNKNOWN, t0 + SETTLE * 6, SETTLE),
        ready(Readiness::Settled)
    );
}

#[test]
fn after_lost_events_no_close_is_awaited() {
    let t0 = Instant::now();
    let mut s = Settling::written(seen(10, 100), t0);
    s.forget_close();
    assert_eq!(
        s.check(seen(10, 100), UNKNOWN, t0 + SETTLE, SETTLE),
        ready(Readiness::Settled)
    );
}

#[test]
fn the_kernel_tells_a_file_open_for_writing_from_a_closed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.tar.gz");
    let file = fs::File::create(&path).expect("create");
    match probe_writers(&path) {
        Ok(writers) => assert_eq!(writers, Writers::Open),
        Err(e) => {
            println!("skipped: no read lease here ({e})");
            return;
        }
    }
    let reader = fs::File::open(&path).expect("open for reading");
    drop(file);
    assert_eq!(probe_writers(&path).expect("probe"), Writers::None);
    drop(reader);
    // The lease was released: a writer opens the file at once.
    let began = Instant::now();
    let again = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("reopen");
    assert!(began.elapsed() < Duration::from_secs(1));
    assert_eq!(probe_writers(&path).expect("probe"), Writers::Open);
    drop(again);
}

#[test]
fn age_is_measured_on_the_mtime() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
    let at = |secs| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
    assert!(is_old(at(990), now, SETTLE));
    assert!(is_old(at(998), now, SETTLE));
    assert!(!is_old(at(999), now, SETTLE));
    assert!(!is_old(at(2000), now, SETTLE), "an mtime in the future");
    assert!(!is_old(None, now, SETTLE));
}

#[test]
fn the_check_interval_is_a_quarter_of_settle_at_most_250ms() {
    assert_eq!(
        check_interval(Duration::from_secs(2)),
        Duration::from_millis(250)
    );
    assert_eq!(
        check_interval(Duration::from_millis(400)),
        Duration::from_millis(100)
    );
    assert_eq!(check_interval(Duration::ZERO), Duration::from_millis(10));
}

fn event(kind: EventKind, paths: &[&str]) -> Event {
    paths
        .iter()
        .fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
}

fn hints(event: &Event) -> Vec<(PathBuf, Hint)> {
    read_event(event, Path::new("/drop")).hints
}

#[test]
fn events_become_hints_for_candidates_in_the_folder() {
    let p = PathBuf::from("/drop/a.tar.gz");
    let cases = [
        (EventKind::Create(CreateKind::File), Hint::Created),
        (
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            Hint::Written,
        ),
        (
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            Hint::Closed,
        ),
        (
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            Hint::RenamedIn,
        ),
        (
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            Hint::Gone,
        ),
        (EventKind::Remove(RemoveKind::File), Hint::Gone),
    ];
    for (kind, hint) in cases {
        assert_eq!(
            hints(&event(kind, &["/drop/a.tar.gz"])),
            vec![(p.clone(), hint)]
        );
    }
    let opened = event(
        EventKind::Access(AccessKind::Open(AccessMode::Any)),
        &["/drop/a.tar.gz"],
    );
    assert!(hints(&opened).is_empty());
}

#[test]
fn a_rename_pair_is_a_departure_and_an_arrival() {
    let both = event(
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
        &["/drop/a.tar.gz.partial", "/drop/a.tar.gz"],
    );
    assert_eq!(
        hints(&both),
        vec![(PathBuf::from("/drop/a.tar.gz"), Hint::RenamedIn)]
    );
    let out = event(
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
        &["/drop/a.tar.gz", "/elsewhere/a.tar.gz"],
    );
    assert_eq!(
        hints(&out),
        vec![(PathBuf::from("/drop/a.tar.gz"), Hint::Gone)]
    );
}

#[test]
fn subfolders_other_folders_and_other_names_are_left_out() {
    for path in [
        "/drop/done/a.tar.gz",
        "/drop/failed/a.tar.gz",
        "/other/a.tar.gz",
        "/drop/a.txt",
        "/drop/.a.tar.gz",
    ] {
        let e = event(EventKind::Create(CreateKind::File), &[path]);
        assert!(hints(&e).is_empty(), "{path}");
    }
}

#[test]
fn the_folder_itself_going_away_is_noticed() {
    let removed = event(EventKind::Remove(RemoveKind::Folder), &["/drop"]);
    assert!(read_event(&removed, Path::new("/drop")).folder_lost);
    let moved = event(
        EventKind::Modify(ModifyKind::Name(RenameMode::From)),
        &["/drop"],
    );
    assert!(read_event(&moved, Path::new("/drop")).folder_lost);
    let touched = event(
        EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
        &["/drop"],
    );
    assert!(!read_event(&touched, Path::new("/drop")).folder_lost);
}

#[test]
fn inotify_limits_say_which_sysctl_to_raise() {
    let dir = Path::new("/srv/deploy/my-app");
    let watches = watch_error(dir, notify::Error::new(notify::ErrorKind::MaxFilesWatch));
    let message = watches.to_string();
    assert!(message.contains("/srv/deploy/my-app"), "{message}");
    assert!(
        message.contains("sysctl -w fs.inotify.max_user_watches="),
        "{message}"
    );

    let emfile = notify::Error::io(io::Error::from_raw_os_error(EMFILE));
    let message = watch_error(dir, emfile).to_string();
    assert!(message.contains("/srv/deploy/my-app"), "{message}");
    assert!(
        message.contains("sysctl -w fs.inotify.max_user_instances="),
        "{message}"
    );
    assert!(message.contains("os error 24"), "{message}");

    let other = notify::Error::io(io::Error::from_raw_os_error(13));
    let message = watch_error(dir, other).to_string();
    assert!(
        message.contains("/srv/deploy/my-app") && !message.contains("sysctl"),
        "{message}"
    );
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    let (tx, _rx) = mpsc::channel(1);
    let cfg = DropFolderConfig {
        app: "my-app".to_string(),
        dir: PathBuf::from("/nonexistent/drop"),
        settle: SETTLE,
    };
    let err = DropWatcher::start(cfg, tx).expect_err("no runtime");
    assert!(matches!(err, DropError::NoRuntime { .. }), "{err:?}");
}

#[test]
fn an_overflow_asks_for_a_rescan() {
    let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
    let reading = read_event(&overflow, Path::new("/drop"));
    assert!(reading.rescan);
    assert!(reading.hints.is_empty());
}
