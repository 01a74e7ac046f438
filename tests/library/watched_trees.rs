//! A watched source directory, on a real filesystem with real inotify: which changes make a
//! burst, how many, and which directories cost a watch.
//!
//! Watch counts are checked against the kernel, not only against the watcher's own
//! bookkeeping: see [`kernel_watches`].

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use dropdeploy::source::tree::{Burst, TreeConfig, TreeState, TreeWatcher};
use dropdeploy::source::watch::WatchError;

/// How long a burst may take to come when one is expected (generous: CI machines are slow).
const EXPECT: Duration = Duration::from_secs(5);

fn write(path: &Path, content: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent");
    }
    fs::write(path, content).expect("write");
}

fn config(root: &Path, quiet_ms: u64) -> TreeConfig {
    TreeConfig {
        quiet: Duration::from_millis(quiet_ms),
        ..TreeConfig::new("my-app", root)
    }
}

/// Waits for the next burst; fails the test if none comes in time.
async fn burst(watcher: &mut TreeWatcher) -> Burst {
    match tokio::time::timeout(EXPECT, watcher.next_burst()).await {
        Ok(Some(burst)) => burst,
        Ok(None) => panic!("the watcher stopped"),
        Err(_) => panic!("no burst within {EXPECT:?}"),
    }
}

/// Fails the test if a burst comes within `within`.
async fn no_burst(watcher: &mut TreeWatcher, within: Duration) {
    if let Ok(burst) = tokio::time::timeout(within, watcher.next_burst()).await {
        panic!("unexpected burst: {burst:?}");
    }
}

/// Waits until the watcher's state matches; fails the test if it does not in time.
async fn state_becomes(
    watcher: &TreeWatcher,
    what: &str,
    check: impl Fn(&TreeState) -> bool,
) -> TreeState {
    let mut states = watcher.state();
    let found = match tokio::time::timeout(EXPECT, states.wait_for(|s| check(s))).await {
        Ok(Ok(state)) => Some(state.clone()),
        Ok(Err(_)) => panic!("the watcher is gone before: {what}"),
        Err(_) => None,
    };
    found.unwrap_or_else(|| panic!("never {what}: {:?}", *states.borrow()))
}

fn not_watched(state: &TreeState) -> bool {
    matches!(state, TreeState::NotWatched { .. })
}

/// Makes a tree at `at`: `lib/`, `lib/deep/` and one file in each.
fn make_tree(at: &Path, text: &str) {
    write(&at.join("index.js"), text);
    write(&at.join("lib/util.js"), text);
    write(&at.join("lib/deep/more.js"), text);
}

/// Waits until `check` holds (the watcher updates its watches a moment after the events).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + EXPECT;
    while !check() {
        assert!(Instant::now() < deadline, "never true: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many inotify watches the kernel holds for the watcher of `root`.
///
/// Method: every watcher owns one inotify instance, a file descriptor whose `/proc/self/fd/<fd>`
/// link reads `anon_inode:inotify`; `/proc/self/fdinfo/<fd>` lists one line per watch, starting
/// with `inotify wd:` and naming the watched inode (`ino:<hex>`). Other tests of this process
/// run at the same time with instances of their own, so the instance counted is the one that
/// watches `root`'s inode (a fresh temporary directory, watched by this test's watcher only).
fn kernel_watches(root: &Path) -> usize {
    let root_ino = format!(" ino:{:x} ", fs::metadata(root).expect("root").ino());
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        let is_inotify = fs::read_link(entry.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify");
        if !is_inotify {
            continue;
        }
        let info_path = Path::new("/proc/self/fdinfo").join(entry.file_name());
        let Ok(info) = fs::read_to_string(info_path) else {
            continue; // closed meanwhile
        };
        let watches: Vec<&str> = info
            .lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .collect();
        if watches.iter().any(|l| l.contains(&root_ino)) {
            found.push(watches.len());
        }
    }
    assert!(found.len() <= 1, "several inotify instances watch {root:?}");
    found.first().copied().unwrap_or(0)
}

/// The watcher's count and the kernel's agree and equal `expected`.
async fn assert_watches(watcher: &TreeWatcher, root: &Path, expected: usize) {
    eventually(&format!("{expected} watches"), || {
        watcher.watch_count() == expected && kernel_watches(root) == expected
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_one_file_makes_one_burst() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(&root.join("src/main.rs"), "fn main() {}\n");
    let mut watcher = TreeWatcher::start(config(root, 200)).expect("start");

    write(&root.join("src/main.rs"), "fn main() { println!(); }\n");
    let burst = burst(&mut watcher).await;
    assert!(burst.changed_paths >= 1 && !burst.overflow, "{burst:?}");
    no_burst(&mut watcher, Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn touching_a_file_makes_a_burst() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(&root.join("index.html"), "<p>hi</p>\n");
    let mut watcher = TreeWatcher::start(config(root, 200)).expect("start");

    // What `touch` does: open for writing, set the times, close.
    let file = fs::OpenOptions::new()
        .append(true)
        .open(root.join("index.html"))
        .expect("open");
    file.set_modified(SystemTime::now()).expect("set mtime");
    drop(file);
    burst(&mut watcher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_files_at_once_make_one_burst() {
    // On tmpfs when there is one: the files then really land at once (on a slow disk, making
    // them takes seconds), enough to overflow the event queues now and then.
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let root = tmp.path().to_path_buf();
    let mut watcher = TreeWatcher::start(TreeConfig {
        // Not the subject here: a slow machine must not split the burst at the maximum wait.
        max_wait: Duration::from_secs(60),
        ..config(&root, 300)
    })
    .expect("start");

    let made = root.clone();
    tokio::task::spawn_blocking(move || {
        for d in 0..100 {
            let dir = made.join(format!("d{d:03}"));
            fs::create_dir(&dir).expect("mkdir");
            for f in 0..100 {
                fs::write(dir.join(format!("f{f:03}.txt")), "x").expect("write");
            }
        }
    })
    .await
    .expect("make files");

    let first = burst(&mut watcher).await;
    assert!(
        first.overflow || first.changed_paths >= 10_000,
        "every file counted, or an overflow: {first:?}"
    );
    no_burst(&mut watcher, Duration::from_secs(1)).await;
    assert_watches(&watcher, &root, 101).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_editors_atomic_save_makes_one_burst() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(&root.join("app.py"), "print(1)\n");
    let mut watcher = TreeWatcher::start(config(root, 200)).expect("start");

    // The swap file while editing, then: write a temporary file, rename it over the original.
    write(&root.join(".app.py.swp"), "swap");
    write(&root.join(".app.py.tmp~"), "print(2)\n");
    fs::rename(root.join(".app.py.tmp~"), root.join("app.py")).expect("rename");
    fs::remove_file(root.join(".app.py.swp")).expect("rm swap");

    let burst = burst(&mut watcher).await;
    assert!(burst.changed_paths >= 1, "{burst:?}");
    no_burst(&mut watcher, Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_directory_tree_is_watched_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let mut watcher = TreeWatcher::start(config(root, 200)).expect("start");
    assert_watches(&watcher, root, 1).await;

    // `mkdir -p a/b/c && touch a/b/c/f`: the file lands before any watch on a/b/c can exist.
    fs::create_dir_all(root.join("a/b/c")).expect("mkdir -p");
    write(&root.join("a/b/c/f"), "");
    let first = burst(&mut watcher).await;
    assert!(
        first.changed_paths >= 4,
        "a, a/b, a/b/c, a/b/c/f: {first:?}"
    );
    assert_watches(&watcher, root, 4).await;

    write(&root.join("a/b/c/f2"), "2");
    burst(&mut watcher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_and_renamed_directories_are_followed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fs::create_dir_all(root.join("old/inner")).expect("mkdir");
    fs::create_dir_all(root.join("gone/inner")).expect("mkdir");
    let mut watcher = TreeWatcher::start(config(root, 200)).expect("start");
    assert_watches(&watcher, root, 5).await;

    fs::remove_dir_all(root.join("gone")).expect("rm -r");
    burst(&mut watcher).await;
    assert_watches(&watcher, root, 3).await;

    fs::rename(root.join("old"), root.join("new")).expect("mv");
    burst(&mut watcher).await;
    assert_watches(&watcher, root, 3).await;
    write(&root.join("new/inner/file"), "x");
    burst(&mut watcher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ignored_directories_cost_no_watch_and_make_no_burst() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(&root.join(".gitignore"), "node_modules/\n");
    write(&root.join("src/lib/index.js"), "");
    write(&root.join("node_modules/left-pad/lib/index.js"), "");
    write(&root.join("node_modules/is-even/index.js"), "");
    let mut watcher = TreeWatcher::start(config(root, 200)).expect("start");
    // The root, src, src/lib.
    assert_watches(&watcher, root, 3).await;

    write(&root.join("node_modules/left-pad/lib/index.js"), "changed");
    write(&root.join("node_modules/new-pkg/index.js"), "new");
    fs::remove_dir_all(root.join("node_modules/is-even")).expect("rm -r");
    no_burst(&mut watcher, Duration::from_millis(800)).await;
    assert_watches(&watcher, root, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ignoring_a_directory_drops_its_watch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(&root.join("main.c"), "");
    write(&root.join("build/out/main.o"), "");
    let mut watcher = TreeWatcher::start(config(root, 200)).expect("start");
    assert_watches(&watcher, root, 3).await;

    write(&root.join(".gitignore"), "build/\n");
    burst(&mut watcher).await;
    assert_watches(&watcher, root, 1).await;
    assert!(watcher.rules().is_ignored(&root.join("build"), true));

    write(&root.join("build/out/main.o"), "rebuilt");
    write(&root.join("build/new.o"), "");
    no_burst(&mut watcher, Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_directorys_own_ignore_file_applies_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let mut watcher = TreeWatcher::start(config(root, 200)).expect("start");

    fs::create_dir_all(root.join("pkg/dist")).expect("mkdir -p");
    write(&root.join("pkg/.gitignore"), "dist/\n");
    write(&root.join("pkg/dist/bundle.js"), "");
    burst(&mut watcher).await;
    // The root and pkg: pkg/dist is ignored by pkg/.gitignore.
    assert_watches(&watcher, root, 2).await;

    write(&root.join("pkg/dist/bundle.js"), "rebuilt");
    no_burst(&mut watcher, Duration::from_millis(700)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_during_a_deployment_make_one_follow_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let mut watcher = TreeWatcher::start(config(root, 300)).expect("start");

    // Nobody awaits a burst meanwhile: the app is deploying.
    write(&root.join("a.txt"), "a");
    tokio::time::sleep(Duration::from_secs(1)).await;
    write(&root.join("b.txt"), "b");
    write(&root.join("c.txt"), "c");

    let burst = burst(&mut watcher).await;
    assert!(
        burst.changed_paths >= 3,
        "a, b and c in one burst: {burst:?}"
    );
    no_burst(&mut watcher, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_polling_in_a_select_loop_gets_its_burst() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let mut watcher = TreeWatcher::start(config(root, 200)).expect("start");

    write(&root.join("a.txt"), "a");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Already due; a ticker cancels the wait every 20 ms, shorter than the catch-up.
    let deadline = Instant::now() + EXPECT;
    loop {
        assert!(Instant::now() < deadline, "the burst never came");
        tokio::select! {
            burst = watcher.next_burst() => {
                assert!(burst.is_some());
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_makes_no_burst() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(&root.join("src/data.json"), "{}");
    let mut watcher = TreeWatcher::start(config(root, 200)).expect("start");

    let mut content = String::new();
    fs::File::open(root.join("src/data.json"))
        .expect("open")
        .read_to_string(&mut content)
        .expect("read");
    assert_eq!(content, "{}");
    let listed = fs::read_dir(root.join("src")).expect("ls").count();
    assert_eq!(listed, 1);
    no_burst(&mut watcher, Duration::from_millis(800)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemons_own_state_dir_makes_no_burst() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let state = root.join(".dropdeploy-state");
    fs::create_dir_all(state.join("spool")).expect("mkdir state");
    let mut watcher = TreeWatcher::start(TreeConfig {
        always_ignore: vec![state.clone()],
        ..config(root, 200)
    })
    .expect("start");
    assert_watches(&watcher, root, 1).await;

    write(&state.join("spool/x"), "archive bytes");
    write(&state.join("spool/job-1/job.json"), "{}");
    write(&state.join("history.jsonl"), "{}\n");
    no_burst(&mut watcher, Duration::from_millis(800)).await;
    assert_watches(&watcher, root, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_sees_a_change() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(&root.join(".gitignore"), "node_modules/\n");
    write(&root.join("src/app.rb"), "");
    write(&root.join("node_modules/x/index.js"), "");
    let mut watcher = TreeWatcher::start(TreeConfig {
        poll: Some(Duration::from_millis(200)),
        ..config(root, 200)
    })
    .expect("start");
    // Polled directories: the root and src.
    assert_eq!(watcher.watch_count(), 2);
    assert_eq!(kernel_watches(root), 0, "no inotify watch when polling");

    write(&root.join("src/new.rb"), "puts 1");
    let burst = burst(&mut watcher).await;
    assert!(burst.changed_paths >= 1, "{burst:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_source_directory_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("no-such-dir");
    let err = TreeWatcher::start(config(&missing, 200)).expect_err("missing root");
    assert!(matches!(err, WatchError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_root_shows_the_gap_and_is_watched_again_when_it_is_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("src");
    make_tree(&root, "v1");
    let mut watcher = TreeWatcher::start(config(&root, 200)).expect("start");
    assert_watches(&watcher, &root, 3).await;

    fs::remove_dir_all(&root).expect("rm -r");
    let gap = state_becomes(&watcher, "not watched", not_watched).await;
    let TreeState::NotWatched {
        root: shown,
        cause,
        since,
        next_check,
    } = gap
    else {
        unreachable!()
    };
    assert_eq!(shown, root);
    assert_eq!(cause, "removed, waiting for it to come back");
    assert!(
        next_check > since,
        "a next check is planned: {since:?} {next_check:?}"
    );
    assert_eq!(watcher.watch_count(), 0);

    // Made again, in place, file after file (a `git clone`, an `rsync`).
    fs::create_dir(&root).expect("mkdir");
    make_tree(&root, "v2");
    let came = burst(&mut watcher).await;
    assert!(came.overflow, "everything may have changed: {came:?}");
    state_becomes(&watcher, "watched", |s| *s == TreeState::Watched).await;
    assert_watches(&watcher, &root, 3).await;

    write(&root.join("lib/deep/new.js"), "new");
    let came = burst(&mut watcher).await;
    assert!(!came.overflow && came.changed_paths >= 1, "{came:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_swapped_by_rename_is_watched_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("src");
    let next = tmp.path().join("src.next");
    let old = tmp.path().join("src.old");
    make_tree(&root, "v1");
    make_tree(&next, "v2");
    fs::create_dir(next.join("extra")).expect("mkdir");
    let mut watcher = TreeWatcher::start(config(&root, 200)).expect("start");
    assert_watches(&watcher, &root, 3).await;

    // What a deploy script does: `mv src src.old && mv src.next src`.
    fs::rename(&root, &old).expect("mv away");
    fs::rename(&next, &root).expect("mv in");
    let came = burst(&mut watcher).await;
    assert!(came.overflow, "{came:?}");
    // The new tree's 4 directories; none of the old one's any more.
    assert_watches(&watcher, &root, 4).await;
    assert_eq!(kernel_watches(&old), 0, "the old tree is not watched");

    write(&old.join("lib/stale.js"), "old tree");
    no_burst(&mut watcher, Duration::from_millis(700)).await;
    write(&root.join("extra/new.js"), "new tree");
    burst(&mut watcher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_exchanged_atomically_is_watched_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("src");
    let next = tmp.path().join("src.next");
    make_tree(&root, "v1");
    make_tree(&next, "v2");
    fs::create_dir(next.join("extra")).expect("mkdir");
    let mut watcher = TreeWatcher::start(config(&root, 200)).expect("start");
    assert_watches(&watcher, &root, 3).await;

    // renameat2(RENAME_EXCHANGE), as `mv --exchange`: the path never stops existing.
    let cwd = rustix::fs::CWD;
    rustix::fs::renameat_with(cwd, &next, cwd, &root, rustix::fs::RenameFlags::EXCHANGE)
        .expect("exchange");
    let came = burst(&mut watcher).await;
    assert!(came.overflow, "{came:?}");
    assert_watches(&watcher, &root, 4).await;
    assert_eq!(kernel_watches(&next), 0, "the old tree is not watched");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_whose_parent_is_swapped_is_found_by_the_timer() {
    // The root's own directory is not moved: its watch hears nothing. Only comparing the
    // path's device and inode with the watched ones finds the new root.
    let tmp = tempfile::tempdir().expect("tempdir");
    let parent = tmp.path().join("current");
    let root = parent.join("src");
    let next = tmp.path().join("next");
    make_tree(&root, "v1");
    make_tree(&next.join("src"), "v2");
    fs::create_dir(next.join("src/extra")).expect("mkdir");
    let mut watcher = TreeWatcher::start(config(&root, 200)).expect("start");
    assert_watches(&watcher, &root, 3).await;

    fs::rename(&parent, tmp.path().join("previous")).expect("mv away");
    fs::rename(&next, &parent).expect("mv in");
    let came = burst(&mut watcher).await;
    assert!(came.overflow, "{came:?}");
    assert_watches(&watcher, &root, 4).await;
    write(&root.join("extra/new.js"), "new tree");
    burst(&mut watcher).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_not_back_within_the_bound_stops_the_watch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("src");
    make_tree(&root, "v1");
    let mut watcher = TreeWatcher::start(TreeConfig {
        give_up: Some(Duration::from_millis(500)),
        ..config(&root, 200)
    })
    .expect("start");
    fs::remove_dir_all(&root).expect("rm -r");
    let ended = tokio::time::timeout(EXPECT, watcher.next_burst())
        .await
        .expect("the watch ends in time");
    assert_eq!(ended, None);
    let TreeState::Stopped { cause } = watcher.state().borrow().clone() else {
        panic!("not stopped: {:?}", *watcher.state().borrow());
    };
    assert!(cause.contains(&root.display().to_string()), "{cause}");
    assert!(
        cause.contains("removed, and not back within 500ms"),
        "{cause}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_survives_a_removed_and_recreated_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("src");
    let next = tmp.path().join("src.next");
    make_tree(&root, "v1");
    let mut watcher = TreeWatcher::start(TreeConfig {
        poll: Some(Duration::from_millis(100)),
        ..config(&root, 200)
    })
    .expect("start");
    assert_eq!(watcher.watch_count(), 3);

    fs::remove_dir_all(&root).expect("rm -r");
    state_becomes(&watcher, "not watched", not_watched).await;
    make_tree(&next, "v2");
    fs::rename(&next, &root).expect("mv in");
    let came = burst(&mut watcher).await;
    assert!(came.overflow, "{came:?}");
    eventually("3 polled directories", || watcher.watch_count() == 3).await;
    write(&root.join("lib/deep/new.js"), "new");
    let came = burst(&mut watcher).await;
    assert!(!came.overflow, "{came:?}");
}
