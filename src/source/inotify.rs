//! A directory watcher on inotify that asks the kernel for changes only.
//!
//! notify 8's inotify backend also subscribes every watch to `IN_OPEN` (and reports
//! `IN_CLOSE_NOWRITE`), which no stable release lets a caller turn off. So every file *opened*
//! in a watched tree — by `grep -r`, an editor's indexer, a build reading its sources, or the
//! daemon's own pack of the tree — woke the watcher thread, which built an event per open for
//! the handler to throw away: a `grep -r` over a 100,000-file tree cost the idle daemon 0.6 s
//! of CPU, and a pack of the tree competed with its own watcher for the cores.
//!
//! [`DirWatcher`] implements [`notify::Watcher`] (so the rest of the code does not change) for
//! non-recursive directory watches, with the mask `IN_ATTRIB | IN_CREATE | IN_DELETE |
//! IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF`
//! (plus `IN_DONT_FOLLOW | IN_ONLYDIR`), and reports them as notify's own backend does:
//! - `IN_CREATE` → `Create(Folder | File)`, `IN_DELETE` → `Remove(Folder | File)`;
//! - `IN_MOVED_FROM` → `Modify(Name(From))`, `IN_MOVED_TO` → `Modify(Name(To))` (the two
//!   halves of a rename are not paired: the callers treat them as a removal and an arrival);
//! - `IN_MODIFY` → `Modify(Data(Any))`, `IN_CLOSE_WRITE` → `Access(Close(Write))`,
//!   `IN_ATTRIB` → `Modify(Metadata(Any))`;
//! - `IN_DELETE_SELF` → `Remove(Folder)` and `IN_MOVE_SELF` → `Modify(Name(From))` on the
//!   watched directory itself;
//! - `IN_Q_OVERFLOW` → `Other` with the `Rescan` flag (events were lost), and so does an
//!   `IN_IGNORED` that neither an unwatch nor a deletion explains (an unmount).
//!
//! One thread per watcher waits in `poll(2)` on the inotify descriptor and an eventfd that
//! dropping the watcher signals: nothing runs while nothing changes.
//!
//! A test and diagnostic knob: with `DROPDEPLOY_INOTIFY_MAX_WATCHES=N` in its environment, the
//! process behaves as if the kernel's `fs.inotify.max_user_watches` were reached once it holds
//! `N` watches (a watch past that fails with `ENOSPC`), without touching the machine's sysctl.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use notify::event::{
    AccessKind, AccessMode, CreateKind, DataChange, Flag, MetadataKind, ModifyKind, RemoveKind,
    RenameMode,
};
use notify::{Config, Event, EventHandler, EventKind, RecursiveMode, Watcher, WatcherKind};
use rustix::event::{EventfdFlags, PollFd, PollFlags};

/// What is asked of the kernel for each watched directory.
fn mask() -> WatchMask {
    WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::ONLYDIR
}

/// The environment variable of the test and diagnostic cap on watches (see the module docs).
pub const MAX_WATCHES_ENV: &str = "DROPDEPLOY_INOTIFY_MAX_WATCHES";

/// The watches this process holds, over all its watchers (for [`MAX_WATCHES_ENV`]).
static HELD: AtomicUsize = AtomicUsize::new(0);

/// The cap set by [`MAX_WATCHES_ENV`], read once.
fn cap() -> Option<usize> {
    static CAP: OnceLock<Option<usize>> = OnceLock::new();
    *CAP.get_or_init(|| std::env::var(MAX_WATCHES_ENV).ok()?.trim().parse().ok())
}

/// Watch descriptors and the directories they stand for.
#[derive(Default)]
struct Paths {
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    /// Watches whose directory was deleted: their `IN_IGNORED` says nothing new.
    deleted: HashSet<WatchDescriptor>,
}

/// Non-recursive inotify watches on directories, without open and read events; see the
/// [module docs](self).
pub struct DirWatcher {
    watches: Watches,
    paths: Arc<Mutex<Paths>>,
    /// Written to stop the reading thread.
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl DirWatcher {
    fn paths(&self) -> std::sync::MutexGuard<'_, Paths> {
        self.paths.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches the directory `path` leads to, following a symbolic link at `path` itself (a
    /// drop folder may be one); events still name `path`. The link's own replacement is not
    /// seen here: the caller compares what `path` leads to on a timer.
    pub fn watch_through_link(&mut self, path: &Path) -> notify::Result<()> {
        self.add(path, mask() & !WatchMask::DONT_FOLLOW)
    }

    fn add(&mut self, path: &Path, mask: WatchMask) -> notify::Result<()> {
        let mut watches = self.watches.clone();
        let mut paths = self.paths();
        if cap().is_some_and(|cap| HELD.load(Ordering::Acquire) >= cap)
            && !paths.by_path.contains_key(path)
        {
            return Err(
                notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path(path.to_path_buf())
            );
        }
        // Under the lock: the reading thread resolves the new descriptor only after this.
        let wd = watches.add(path, mask).map_err(|e| {
            let error = if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
                notify::Error::new(notify::ErrorKind::MaxFilesWatch)
            } else if e.kind() == io::ErrorKind::NotFound {
                notify::Error::new(notify::ErrorKind::PathNotFound)
            } else {
                notify::Error::io(e)
            };
            error.add_path(path.to_path_buf())
        })?;
        match paths.by_wd.insert(wd.clone(), path.to_path_buf()) {
            // The same directory under another name (a bind mount, a renamed folder).
            Some(old) => {
                paths.by_path.remove(&old);
            }
            None => {
                HELD.fetch_add(1, Ordering::AcqRel);
            }
        }
        paths.by_path.insert(path.to_path_buf(), wd);
        Ok(())
    }
}

impl Watcher for DirWatcher {
    fn new<F: EventHandler>(mut handler: F, _config: Config) -> notify::Result<Self> {
        let inotify = Inotify::init().map_err(notify::Error::io)?;
        let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| notify::Error::io(e.into()))?;
        let watches = inotify.watches();
        let paths = Arc::new(Mutex::new(Paths::default()));
        let thread_paths = paths.clone();
        let thread_wake = wake.try_clone().map_err(notify::Error::io)?;
        let thread = std::thread::Builder::new()
            .name("dir-watcher".into())
            .spawn(move || read_loop(inotify, &thread_wake, &thread_paths, &mut handler))
            .map_err(notify::Error::io)?;
        Ok(DirWatcher {
            watches,
            paths,
            wake,
            thread: Some(thread),
        })
    }

    /// Watches the directory `path` itself (its entries, not its subdirectories): `recursive`
    /// is not supported and counts as non-recursive.
    fn watch(&mut self, path: &Path, _recursive: RecursiveMode) -> notify::Result<()> {
        self.add(path, mask())
    }

    fn unwatch(&mut self, path: &Path) -> notify::Result<()> {
        let mut watches = self.watches.clone();
        let mut paths = self.paths();
        let Some(wd) = paths.by_path.remove(path) else {
            return Err(notify::Error::watch_not_found().add_path(path.to_path_buf()));
        };
        if paths.by_wd.remove(&wd).is_some() {
            HELD.fetch_sub(1, Ordering::AcqRel);
        }
        paths.deleted.remove(&wd);
        // EINVAL: the kernel already dropped it (the directory is gone).
        match watches.remove(wd) {
            Err(e) if e.raw_os_error() != Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                Err(notify::Error::io(e).add_path(path.to_path_buf()))
            }
            _ => Ok(()),
        }
    }

    fn kind() -> WatcherKind {
        WatcherKind::Inotify
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        // Nonblocking eventfd: a write only fails if the counter is full, i.e. already woken.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let held = self.paths().by_wd.len();
        HELD.fetch_sub(held, Ordering::AcqRel);
    }
}

/// The reading thread: waits for inotify events or the wake-up, and hands events on.
fn read_loop(
    mut inotify: Inotify,
    wake: &OwnedFd,
    paths: &Mutex<Paths>,
    handler: &mut impl EventHandler,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let (ready, woken) = {
            let mut fds = [
                PollFd::new(&inotify, PollFlags::IN),
                PollFd::new(wake, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => (!fds[0].revents().is_empty(), !fds[1].revents().is_empty()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    handler.handle_event(Err(notify::Error::io(e.into())));
                    return;
                }
            }
        };
        if woken {
            return;
        }
        if !ready {
            continue;
        }
        loop {
            match inotify.read_events(&mut buffer) {
                Ok(events) => {
                    let mut any = false;
                    let mut out = Vec::new();
                    {
                        let mut paths = paths.lock().unwrap_or_else(PoisonError::into_inner);
                        for event in events {
                            any = true;
                            translate(&event, &mut paths, &mut out);
                        }
                    }
                    for event in out {
                        handler.handle_event(Ok(event));
                    }
                    if !any {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    handler.handle_event(Err(notify::Error::io(e)));
                    break;
                }
            }
        }
    }
}

/// notify events for one inotify event (see the module docs for the mapping).
fn translate(event: &inotify::Event<&std::ffi::OsStr>, paths: &mut Paths, out: &mut Vec<Event>) {
    let mask = event.mask;
    if mask.contains(EventMask::Q_OVERFLOW) {
        out.push(Event::new(EventKind::Other).set_flag(Flag::Rescan));
        return;
    }
    if mask.contains(EventMask::IGNORED) {
        // The kernel dropped the watch (directory removed, or unwatched).
        let deleted = paths.deleted.remove(&event.wd);
        if let Some(path) = paths.by_wd.remove(&event.wd) {
            HELD.fetch_sub(1, Ordering::AcqRel);
            if paths.by_path.get(&path) == Some(&event.wd) {
                paths.by_path.remove(&path);
            }
            // Still ours and not deleted: dropped by the kernel alone (its filesystem was
            // unmounted). What is watched is no longer known: walk again.
            if !deleted {
                out.push(Event::new(EventKind::Other).set_flag(Flag::Rescan));
            }
        }
        return;
    }
    if mask.contains(EventMask::DELETE_SELF) {
        paths.deleted.insert(event.wd.clone());
    }
    let Some(dir) = paths.by_wd.get(&event.wd) else {
        return;
    };
    let path = match event.name {
        Some(name) => dir.join(name),
        None => dir.clone(),
    };
    let is_dir = mask.contains(EventMask::ISDIR);
    let mut push = |kind: EventKind| out.push(Event::new(kind).add_path(path.clone()));
    if mask.contains(EventMask::MOVED_FROM) {
        push(EventKind::Modify(ModifyKind::Name(RenameMode::From)));
    }
    if mask.contains(EventMask::MOVED_TO) {
        push(EventKind::Modify(ModifyKind::Name(RenameMode::To)));
    }
    if mask.contains(EventMask::MOVE_SELF) {
        push(EventKind::Modify(ModifyKind::Name(RenameMode::From)));
    }
    if mask.contains(EventMask::CREATE) {
        push(EventKind::Create(if is_dir {
            CreateKind::Folder
        } else {
            CreateKind::File
        }));
    }
    if mask.contains(EventMask::DELETE) {
        push(EventKind::Remove(if is_dir {
            RemoveKind::Folder
        } else {
            RemoveKind::File
        }));
    }
    if mask.contains(EventMask::DELETE_SELF) {
        push(EventKind::Remove(RemoveKind::Folder));
    }
    if mask.contains(EventMask::MODIFY) {
        push(EventKind::Modify(ModifyKind::Data(DataChange::Any)));
    }
    if mask.contains(EventMask::CLOSE_WRITE) {
        push(EventKind::Access(AccessKind::Close(AccessMode::Write)));
    }
    if mask.contains(EventMask::ATTRIB) {
        push(EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    fn watcher() -> (DirWatcher, mpsc::Receiver<notify::Result<Event>>) {
        let (tx, rx) = mpsc::channel();
        let watcher = DirWatcher::new(tx, Config::default()).unwrap();
        (watcher, rx)
    }

    /// Events until `until` matches one (or a 10 s deadline), then whatever else arrives in
    /// the next 200 ms.
    fn collect(
        rx: &mpsc::Receiver<notify::Result<Event>>,
        until: impl Fn(&Event) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(event) = rx.recv_timeout(Duration::from_millis(50)) {
                let event = event.unwrap();
                let done = until(&event);
                seen.push(event);
                if done {
                    break;
                }
            }
        }
        while let Ok(event) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(event.unwrap());
        }
        seen
    }

    #[test]
    fn reports_changes_but_not_opens_or_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, "one").unwrap();
        let (mut watcher, rx) = watcher();
        watcher
            .watch(dir.path(), RecursiveMode::NonRecursive)
            .unwrap();
        // Reads first: they must give nothing. Then a marker change.
        for _ in 0..100 {
            assert_eq!(std::fs::read_to_string(&file).unwrap(), "one");
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let seen = collect(&rx, |e| e.kind == EventKind::Create(CreateKind::Folder));
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].paths, [dir.path().join("sub")]);

        std::fs::write(&file, "two").unwrap();
        let seen = collect(&rx, |e| {
            e.kind == EventKind::Access(AccessKind::Close(AccessMode::Write))
        });
        let kinds: Vec<_> = seen.iter().map(|e| e.kind).collect();
        assert!(
            kinds.contains(&EventKind::Modify(ModifyKind::Data(DataChange::Any))),
            "{kinds:?}"
        );
        assert!(seen.iter().all(|e| e.paths == [file.clone()]), "{seen:?}");
        assert!(!kinds.iter().any(|k| matches!(
            k,
            EventKind::Access(AccessKind::Open(_) | AccessKind::Close(AccessMode::Read))
        )));
    }

    #[test]
    fn renames_removals_and_the_directory_itself() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("w");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a"), "").unwrap();
        let (mut watcher, rx) = watcher();
        watcher.watch(&dir, RecursiveMode::NonRecursive).unwrap();

        std::fs::rename(dir.join("a"), dir.join("b")).unwrap();
        let seen = collect(&rx, |e| {
            e.kind == EventKind::Modify(ModifyKind::Name(RenameMode::To))
        });
        let got: Vec<_> = seen.iter().map(|e| (e.kind, e.paths.clone())).collect();
        assert_eq!(
            got,
            [
                (
                    EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                    vec![dir.join("a")]
                ),
                (
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                    vec![dir.join("b")]
                ),
            ]
        );

        std::fs::remove_file(dir.join("b")).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        let seen = collect(&rx, |e| {
            e.kind == EventKind::Remove(RemoveKind::Folder) && e.paths == [dir.clone()]
        });
        assert!(
            seen.iter().any(
                |e| e.kind == EventKind::Remove(RemoveKind::File) && e.paths == [dir.join("b")]
            ),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(
                |e| e.kind == EventKind::Remove(RemoveKind::Folder) && e.paths == [dir.clone()]
            ),
            "{seen:?}"
        );
        // The kernel dropped the watch: unwatching it now says so, and nothing is left mapped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !watcher.paths().by_wd.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(watcher.paths().by_wd.is_empty());
        assert!(watcher.unwatch(&dir).is_err());
    }

    #[test]
    fn errors_say_what_went_wrong_and_unwatch_stops_events() {
        let dir = tempfile::tempdir().unwrap();
        let (mut watcher, rx) = watcher();
        let missing = dir.path().join("missing");
        let error = watcher
            .watch(&missing, RecursiveMode::NonRecursive)
            .unwrap_err();
        assert!(
            matches!(error.kind, notify::ErrorKind::PathNotFound),
            "{error:?}"
        );
        assert_eq!(error.paths, [missing]);
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(watcher.watch(&file, RecursiveMode::NonRecursive).is_err());

        watcher
            .watch(dir.path(), RecursiveMode::NonRecursive)
            .unwrap();
        watcher.unwatch(dir.path()).unwrap();
        std::fs::write(dir.path().join("g"), "x").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        // Dropping stops the thread (join returns).
        drop(watcher);
    }
}
