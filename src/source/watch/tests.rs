use std::collections::BTreeSet;
use std::fs;

use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind,
    RenameMode,
};

use super::directories::check_root;
use super::events::{Batch, Seen, read_event};
use super::*;

fn event(kind: EventKind, paths: &[&str]) -> Event {
    paths
        .iter()
        .fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
}

fn seen(kind: EventKind) -> Vec<Seen> {
    read_event(&event(kind, &["/src/a"]))
        .paths
        .into_iter()
        .map(|(_, seen)| seen)
        .collect()
}

#[test]
fn writes_creations_removals_and_renames_are_changes() {
    let cases = [
        (
            EventKind::Create(CreateKind::Folder),
            Seen::Appeared(Some(true)),
        ),
        (
            EventKind::Create(CreateKind::File),
            Seen::Appeared(Some(false)),
        ),
        (
            EventKind::Remove(RemoveKind::Folder),
            Seen::Left(Some(true)),
        ),
        (EventKind::Remove(RemoveKind::File), Seen::Left(Some(false))),
        (
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            Seen::Left(None),
        ),
        (
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            Seen::Appeared(None),
        ),
        (
            EventKind::Modify(ModifyKind::Name(RenameMode::Any)),
            Seen::Renamed,
        ),
        (
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            Seen::Changed(Some(false)),
        ),
        (
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            Seen::Changed(Some(false)),
        ),
        // A touch, a chmod.
        (
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            Seen::Changed(None),
        ),
    ];
    for (kind, expected) in cases {
        assert_eq!(seen(kind), vec![expected], "{kind:?}");
    }
}

#[test]
fn reading_is_not_a_change() {
    for kind in [
        EventKind::Access(AccessKind::Open(AccessMode::Any)),
        EventKind::Access(AccessKind::Read),
        EventKind::Access(AccessKind::Close(AccessMode::Read)),
        EventKind::Access(AccessKind::Any),
    ] {
        assert!(seen(kind).is_empty(), "{kind:?}");
    }
}

#[test]
fn a_rename_pair_is_left_to_its_halves() {
    let both = event(
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
        &["/src/.a.swp", "/src/a"],
    );
    assert!(read_event(&both).paths.is_empty());
}

#[test]
fn an_overflow_asks_for_a_rescan() {
    let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
    let reading = read_event(&overflow);
    assert!(reading.rescan);
    assert!(reading.paths.is_empty());
}

#[test]
fn inotify_limits_say_which_sysctl_to_raise() {
    let root = Path::new("/home/me/src/my-app");
    let dir = root.join("lib");
    let watches = watch_error(
        root,
        &dir,
        &notify::Error::new(notify::ErrorKind::MaxFilesWatch),
    );
    let message = watches.to_string();
    assert!(message.contains("/home/me/src/my-app/lib"), "{message}");
    assert!(
        message.contains("sysctl -w fs.inotify.max_user_watches=524288"),
        "{message}"
    );

    let emfile = notify::Error::io(io::Error::from_raw_os_error(EMFILE));
    let message = watch_error(root, root, &emfile).to_string();
    assert!(
        message.contains("sysctl -w fs.inotify.max_user_instances=512"),
        "{message}"
    );
    assert!(message.contains("os error 24"), "{message}");

    let other = notify::Error::io(io::Error::from_raw_os_error(13));
    let message = watch_error(root, &dir, &other).to_string();
    assert!(
        message.contains("/home/me/src/my-app/lib") && !message.contains("sysctl"),
        "{message}"
    );
}

#[test]
fn a_missing_path_is_recognised() {
    assert!(is_not_found(&notify::Error::path_not_found()));
    assert!(is_not_found(&notify::Error::io(io::Error::from(
        io::ErrorKind::NotFound
    ))));
    assert!(!is_not_found(&notify::Error::new(
        notify::ErrorKind::MaxFilesWatch
    )));
}

#[test]
fn a_missing_root_is_named() {
    let err = check_root(Path::new("/nonexistent/dropdeploy/src")).expect_err("missing");
    assert!(matches!(err, WatchError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/dropdeploy/src"));
}

fn no_rules() -> RulesSource {
    RulesSource {
        ignore: Vec::new(),
        include: Vec::new(),
        always_ignore: Vec::new(),
    }
}

fn lost(events: Vec<notify::Result<Event>>) -> Batch {
    Batch { events, lost: true }
}

#[test]
fn lost_events_walk_the_tree_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fs::create_dir(root.join("a")).expect("mkdir");
    let (mut watches, _events) =
        DirectoryWatches::start("my-app", root, no_rules(), None).expect("start");
    assert_eq!(watches.count(), 2);

    // Made while events are lost: only the walk can find them.
    fs::create_dir_all(root.join("b/c")).expect("mkdir");
    fs::remove_dir(root.join("a")).expect("rmdir");
    let changes = watches.apply(lost(Vec::new()));
    assert!(changes.overflow && changes.is_change(), "{changes:?}");
    assert!(!changes.root_lost);
    assert_eq!(
        watches.watched,
        BTreeSet::from([root.to_path_buf(), root.join("b"), root.join("b/c")])
    );
}

#[test]
fn a_watcher_error_is_taken_as_lost_events() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let (mut watches, _events) =
        DirectoryWatches::start("my-app", root, no_rules(), None).expect("start");
    fs::create_dir(root.join("late")).expect("mkdir");
    let error = notify::Error::io(io::Error::other("read failed"));
    let changes = watches.apply(Batch {
        events: vec![Err(error)],
        lost: false,
    });
    assert!(changes.overflow, "{changes:?}");
    assert_eq!(watches.count(), 2);
}

#[test]
fn a_root_that_left_ends_the_watch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("src");
    fs::create_dir_all(root.join("a")).expect("mkdir");
    let (mut watches, _events) =
        DirectoryWatches::start("my-app", &root, no_rules(), None).expect("start");
    fs::rename(&root, tmp.path().join("elsewhere")).expect("mv");
    let moved = event(
        EventKind::Modify(ModifyKind::Name(RenameMode::From)),
        &[root.to_str().expect("utf-8")],
    );
    let changes = watches.apply(Batch {
        events: vec![Ok(moved)],
        lost: false,
    });
    assert!(changes.root_lost, "{changes:?}");
    assert_eq!(watches.count(), 0);
    // After lost events too.
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut watches, _events) =
        DirectoryWatches::start("my-app", tmp.path(), no_rules(), None).expect("start");
    let gone = tmp.path().to_path_buf();
    drop(tmp);
    assert!(watches.apply(lost(Vec::new())).root_lost);
    assert!(!gone.exists());
}

#[test]
fn forwarding_never_blocks_and_flags_a_full_queue() {
    let (tx, mut rx) = mpsc::channel(1);
    let overflow = Arc::new(AtomicBool::new(false));
    let mut handler = forward_events(tx, overflow.clone());
    let write = || {
        event(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &["/a"],
        )
    };
    handler(Ok(event(
        EventKind::Access(AccessKind::Open(AccessMode::Any)),
        &["/a"],
    )));
    assert!(rx.try_recv().is_err(), "opens are dropped");
    handler(Ok(write()));
    handler(Ok(write()));
    assert!(overflow.load(Ordering::Acquire));
    assert!(rx.try_recv().is_ok());
}
