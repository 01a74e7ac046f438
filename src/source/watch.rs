//! The file watch behind a watched source directory: which directories are watched, and which
//! filesystem events are relevant changes. [`crate::source::tree`] turns the changes found here
//! into debounced bursts.
//!
//! [`DirectoryWatches`] keeps one *non-recursive* watch on each directory of the tree that the
//! ignore rules keep, so an ignored `node_modules/` or `target/` costs no watch. It follows the
//! tree as it changes: a new directory is watched with everything below it (and what is already
//! there counts as changed, so a `mkdir -p a/b/c && touch a/b/c/f` is not missed), a removed or
//! renamed-away directory loses its watches, and a change to an ignore file rebuilds the rules
//! and adds or drops watches to match. Filesystem events are hints: an overflow, a watcher error
//! or a full internal queue means "the whole tree may have changed" and the tree is walked again.
//!
//! Linux (inotify) is the target, through [`DirWatcher`](crate::source::inotify::DirWatcher),
//! which asks the kernel for changes only (a `grep -r` or a pack of the tree, which open every
//! file, wake nothing). With a poll interval, notify's `PollWatcher` is used instead (for NFS
//! and other filesystems without inotify), on the same directories.
//!
//! The helpers that make notify's callback non-blocking and that explain inotify limits are
//! shared with the drop folder ([`crate::source::drop`]).

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, PollWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::archive::ignore::{IgnoreError, IgnoreRules};

/// Room for this many filesystem events between notify's thread and the watcher task; past that
/// the events are dropped and the tree is walked again instead.
const EVENT_QUEUE: usize = 4096;
/// At most this many events are handled together.
const BATCH: usize = 1024;

// Linux errno values (the same on every Linux architecture) that mean an inotify limit.
pub(crate) const ENOSPC: i32 = 28;
pub(crate) const EMFILE: i32 = 24;

/// An inotify limit that the kernel enforced, and how to raise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InotifyLimit {
    /// The sysctl that sets the limit: `fs.inotify.max_user_watches` (`ENOSPC` when adding a
    /// watch) or `fs.inotify.max_user_instances` (`EMFILE` when creating a watcher).
    pub setting: &'static str,
    /// A value that is usually enough.
    pub suggested: u32,
    /// What the OS said.
    pub os: String,
}

/// Which inotify limit a notify error means, if any.
pub(crate) fn inotify_limit(e: &notify::Error) -> Option<InotifyLimit> {
    let watches = |os: String| InotifyLimit {
        setting: "fs.inotify.max_user_watches",
        suggested: 524_288,
        os,
    };
    match &e.kind {
        // notify reports ENOSPC from inotify_add_watch as this kind.
        notify::ErrorKind::MaxFilesWatch => {
            Some(watches("No space left on device (ENOSPC)".to_string()))
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(ENOSPC) => {
            Some(watches(io.to_string()))
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(EMFILE) => Some(InotifyLimit {
            setting: "fs.inotify.max_user_instances",
            suggested: 512,
            os: io.to_string(),
        }),
        _ => None,
    }
}

/// A notify event handler that never blocks notify's thread: it only tries to queue the event,
/// and raises `overflow` when the queue is full (the receiver then treats events as lost).
/// Opens and reads are dropped here: they are frequent and never a change.
pub(crate) fn forward_events(
    events: mpsc::Sender<notify::Result<Event>>,
    overflow: Arc<AtomicBool>,
) -> impl FnMut(notify::Result<Event>) + Send + 'static {
    move |res: notify::Result<Event>| {
        if let Ok(event) = &res
            && matches!(
                event.kind,
                EventKind::Access(
                    AccessKind::Open(_)
                        | AccessKind::Read
                        | AccessKind::Close(AccessMode::Read)
                        | AccessKind::Any
                        | AccessKind::Other
                )
            )
            && !event.need_rescan()
        {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(res) {
            overflow.store(true, Ordering::Release);
        }
    }
}

/// Why a source directory could not be watched. Every message names the source directory.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The source directory does not exist.
    #[error("source directory {} does not exist", root.display())]
    NotFound { root: PathBuf },
    /// The source directory's path is taken by something that is not a directory.
    #[error("source directory {} exists but is not a directory", root.display())]
    NotADirectory { root: PathBuf },
    /// The source directory exists but cannot be read or listed.
    #[error("cannot read source directory {}: {source}", root.display())]
    Read { root: PathBuf, source: io::Error },
    /// The ignore rules could not be read (the error names the file and line).
    #[error("cannot read the ignore rules of source directory {}: {source}", root.display())]
    Rules { root: PathBuf, source: IgnoreError },
    /// The kernel refused another inotify watch (`ENOSPC`) or instance (`EMFILE`).
    #[error(
        "cannot watch {} (source directory {}): {os}: the inotify limit {setting} is reached; \
         raise it with `sysctl -w {setting}={suggested}` (and in /etc/sysctl.d/ to keep it), \
         ignore more directories, or watch by polling",
        dir.display(),
        root.display()
    )]
    InotifyLimit {
        root: PathBuf,
        /// The directory whose watch was refused.
        dir: PathBuf,
        /// The sysctl that sets the limit: `fs.inotify.max_user_watches` or
        /// `fs.inotify.max_user_instances`.
        setting: &'static str,
        /// A value that is usually enough.
        suggested: u32,
        /// What the OS said.
        os: String,
    },
    /// A watch could not be set up for another reason.
    #[error("cannot watch {} (source directory {}): {reason}", dir.display(), root.display())]
    Watch {
        root: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    /// [`crate::source::tree::TreeWatcher::start`] was called outside a tokio runtime.
    #[error("cannot watch source directory {}: not inside a tokio runtime", root.display())]
    NoRuntime { root: PathBuf },
}

fn watch_error(root: &Path, dir: &Path, e: &notify::Error) -> WatchError {
    if let Some(limit) = inotify_limit(e) {
        return WatchError::InotifyLimit {
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
            setting: limit.setting,
            suggested: limit.suggested,
            os: limit.os,
        };
    }
    let reason = match &e.kind {
        notify::ErrorKind::Io(io) => io.to_string(),
        notify::ErrorKind::PathNotFound => "the directory does not exist".to_string(),
        _ => e.to_string(),
    };
    WatchError::Watch {
        root: root.to_path_buf(),
        dir: dir.to_path_buf(),
        reason,
    }
}

/// Whether a notify error says that the path is gone (it vanished between a listing and its
/// watch, or a polled directory was removed).
fn is_not_found(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

/// What builds the ignore rules: the values of the app's configuration, kept to rebuild the
/// rules when an ignore file changes.
#[derive(Debug, Clone)]
pub(crate) struct RulesSource {
    pub ignore: Vec<String>,
    pub include: Vec<String>,
    pub always_ignore: Vec<PathBuf>,
}

impl RulesSource {
    fn build(&self, root: &Path) -> Result<IgnoreRules, IgnoreError> {
        IgnoreRules::new(root, &self.ignore, &self.include, &self.always_ignore)
    }
}

/// What one event says about one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// It appeared: created, or renamed into its directory. `Some(true)` when the event says it
    /// is a directory, `None` when the event does not say.
    Appeared(Option<bool>),
    /// It left: deleted, or renamed away.
    Left(Option<bool>),
    /// Its content or metadata changed (a write, a close after writing, a `touch`, a `chmod`).
    Changed(Option<bool>),
    /// It was renamed, in a direction the event does not say: look whether it is there.
    Renamed,
}

/// What one notify event says.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    paths: Vec<(PathBuf, Seen)>,
    /// Events were lost: walk the whole tree again.
    rescan: bool,
}

/// Reads one event. Opens, reads and closes without writing are not changes. A close after
/// writing is (a `touch` of an existing file shows as a metadata change and a close after
/// writing; the packer's digest later says whether the content really changed).
fn read_event(event: &Event) -> Reading {
    let seen = match event.kind {
        EventKind::Create(CreateKind::Folder) => Some(Seen::Appeared(Some(true))),
        EventKind::Create(CreateKind::File) => Some(Seen::Appeared(Some(false))),
        EventKind::Create(_) => Some(Seen::Appeared(None)),
        EventKind::Remove(RemoveKind::Folder) => Some(Seen::Left(Some(true))),
        EventKind::Remove(RemoveKind::File) => Some(Seen::Left(Some(false))),
        EventKind::Remove(_) => Some(Seen::Left(None)),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Some(Seen::Left(None)),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Seen::Appeared(None)),
        // notify's inotify backend also reports each half of a pair on its own (just above).
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
        EventKind::Modify(ModifyKind::Name(_)) => Some(Seen::Renamed),
        // Only files can be written to.
        EventKind::Modify(ModifyKind::Data(_)) => Some(Seen::Changed(Some(false))),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Seen::Changed(Some(false))),
        EventKind::Modify(_) => Some(Seen::Changed(None)),
        EventKind::Access(_) => None,
        // Unknown events (other backends) are taken as changes; an overflow carries no path.
        EventKind::Any | EventKind::Other => Some(Seen::Changed(None)),
    };
    Reading {
        paths: match seen {
            Some(seen) => event.paths.iter().map(|p| (p.clone(), seen)).collect(),
            None => Vec::new(),
        },
        rescan: event.need_rescan(),
    }
}

/// Events handed over by notify, in order.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    events: Vec<notify::Result<Event>>,
    /// The queue was full and events were dropped: the whole tree may have changed.
    lost: bool,
}

/// The receiving end of the events of a [`DirectoryWatches`].
#[derive(Debug)]
pub(crate) struct EventStream {
    events: mpsc::Receiver<notify::Result<Event>>,
    overflow: Arc<AtomicBool>,
}

impl EventStream {
    /// Waits for events and returns what is queued (up to a batch). `None` when the watcher is
    /// gone. Cancel-safe.
    pub(crate) async fn next_batch(&mut self) -> Option<Batch> {
        let first = self.events.recv().await?;
        let mut batch = Batch {
            events: vec![first],
            lost: false,
        };
        while batch.events.len() < BATCH {
            match self.events.try_recv() {
                Ok(res) => batch.events.push(res),
                Err(_) => break,
            }
        }
        if self.overflow.swap(false, Ordering::AcqRel) {
            // What is still queued is older than what was lost; the walk that follows sees the
            // tree as it is now. At most one queue's worth, so a steady stream cannot keep this
            // going.
            for _ in 0..EVENT_QUEUE {
                if self.events.try_recv().is_err() {
                    break;
                }
            }
            batch.lost = true;
        }
        Some(batch)
    }
}

/// What a batch of events changed in the tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Changes {
    /// How many relevant paths changed: distinct paths named by events, plus what was found in
    /// new directories. A size hint, not an exact count.
    pub paths: usize,
    /// The distinct paths named by events in this batch.
    pub named: Vec<PathBuf>,
    /// Entries found in new directories.
    pub found: usize,
    /// Events were lost (an overflow, a watcher error, a full queue): the whole tree may have
    /// changed. It was walked again and its watches set up anew.
    pub overflow: bool,
    /// The ignore rules were rebuilt (an ignore file changed, or after an overflow).
    pub rules_rebuilt: bool,
    /// The root itself was deleted, renamed away or replaced: nothing is watched any more
    /// ([`crate::source::tree`] looks for it and watches it again).
    pub root_lost: bool,
}

impl Changes {
    /// Whether anything relevant changed.
    pub(crate) fn is_change(&self) -> bool {
        self.paths > 0 || self.overflow
    }
}

/// The paths counted in one batch.
#[derive(Debug, Default)]
struct Tally {
    /// Paths named by events (the same path written many times counts once).
    named: HashSet<PathBuf>,
    /// Entries found in new directories.
    found: usize,
    rules_changed: bool,
    root_lost: bool,
    /// An inotify limit was logged in this batch (logged once per batch).
    limit_logged: bool,
}

/// The watches over one source tree: a notify watcher and the set of directories it watches.
///
/// Its methods block (they list directories and wait for notify's thread): call them from a
/// blocking thread.
pub(crate) struct DirectoryWatches {
    app: String,
    root: PathBuf,
    source: RulesSource,
    rules: IgnoreRules,
    watcher: Box<dyn Watcher + Send>,
    polling: bool,
    /// The directories watched. Ordered, so a directory and everything below it are together.
    watched: BTreeSet<PathBuf>,
    /// The root's device and inode when it was watched: the path may later lead elsewhere.
    identity: RootIdentity,
}

/// A directory's device and inode numbers: what the root's path must still lead to.
pub(crate) type RootIdentity = (u64, u64);

/// The device and inode the path leads to now (symbolic links followed, as for the watch).
/// Blocking: one `stat`.
pub(crate) fn root_identity(root: &Path) -> io::Result<RootIdentity> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(root)?;
    Ok((meta.dev(), meta.ino()))
}

impl std::fmt::Debug for DirectoryWatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryWatches")
            .field("root", &self.root)
            .field("polling", &self.polling)
            .field("watched", &self.watched.len())
            .finish_non_exhaustive()
    }
}

impl DirectoryWatches {
    /// Checks the root, builds the rules, and watches every directory they keep (with notify's
    /// `PollWatcher` at `poll` intervals when given, else inotify). Blocking.
    ///
    /// Fails when the root is missing, not a directory or unreadable, when the rules cannot be
    /// read, when an inotify limit is hit, or when the root cannot be watched. A subdirectory
    /// that vanishes meanwhile is skipped; one that cannot be watched for another reason (no
    /// permission) is skipped with a warning.
    pub(crate) fn start(
        app: &str,
        root: &Path,
        source: RulesSource,
        poll: Option<Duration>,
    ) -> Result<(DirectoryWatches, EventStream), WatchError> {
        let root = std::path::absolute(root).map_err(|source| WatchError::Read {
            root: root.to_path_buf(),
            source,
        })?;
        // Taken before the watch: a swap in between then shows as a mismatch (one rewatch too
        // many) rather than as a match on a directory that is not the one watched.
        let identity = check_root(&root)?;
        let rules = source.build(&root).map_err(|e| WatchError::Rules {
            root: root.clone(),
            source: e,
        })?;
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let handler = forward_events(events_tx, overflow.clone());
        // Symbolic links are not followed: the packer does not follow them either.
        let config = notify::Config::default().with_follow_symlinks(false);
        let watcher: Box<dyn Watcher + Send> = match poll {
            Some(interval) => Box::new(
                PollWatcher::new(handler, config.with_poll_interval(interval))
                    .map_err(|e| watch_error(&root, &root, &e))?,
            ),
            None => Box::new(
                crate::source::inotify::DirWatcher::new(handler, config)
                    .map_err(|e| watch_error(&root, &root, &e))?,
            ),
        };
        let mut watches = DirectoryWatches {
            app: app.to_string(),
            root,
            source,
            rules,
            watcher,
            polling: poll.is_some(),
            watched: BTreeSet::new(),
            identity,
        };
        // The root first: a directory made while the rest is walked is then seen by its event.
        let root = watches.root.clone();
        watches
            .watch(&root)
            .map_err(|e| watch_error(&watches.root, &root, &e))?;
        let dirs = watches.rules.directories().map_err(|e| WatchError::Rules {
            root: root.clone(),
            source: e,
        })?;
        for dir in dirs {
            let dir = watches.absolute(dir);
            if watches.watched.contains(&dir) {
                continue;
            }
            match watches.watch(&dir) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    let error = watch_error(&watches.root, &dir, &e);
                    if matches!(error, WatchError::InotifyLimit { .. }) {
                        return Err(error);
                    }
                    tracing::warn!(app = %watches.app, "{error}; changes in it are not seen");
                }
            }
        }
        tracing::debug!(
            app = %watches.app,
            root = %watches.root.display(),
            watches = watches.watched.len(),
            polling = watches.polling,
            "source directory watched"
        );
        Ok((watches, EventStream { events, overflow }))
    }

    /// The rules as they are now.
    pub(crate) fn rules(&self) -> &IgnoreRules {
        &self.rules
    }

    /// The root, as an absolute path.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The device and inode of the root when it was watched.
    pub(crate) fn identity(&self) -> RootIdentity {
        self.identity
    }

    /// How many directories are watched (inotify watches, or polled directories).
    pub(crate) fn count(&self) -> usize {
        self.watched.len()
    }

    /// Applies a batch of events: follows new, removed and renamed directories, rebuilds the
    /// rules after an ignore-file change, walks the tree again after lost events, and says what
    /// changed. Blocking.
    pub(crate) fn apply(&mut self, batch: Batch) -> Changes {
        let mut tally = Tally::default();
        let mut rescan = batch.lost;
        if batch.lost {
            tracing::debug!(app = %self.app, "file event queue full; walking the tree again");
        }
        for res in batch.events {
            match res {
                Ok(event) => {
                    let reading = read_event(&event);
                    if reading.rescan {
                        tracing::debug!(app = %self.app, "the kernel dropped file events; walking the tree again");
                    }
                    rescan |= reading.rescan;
                    for (path, seen) in reading.paths {
                        self.observe(path, seen, &mut tally);
                    }
                }
                // A polled directory that was removed: its parent reports the removal.
                Err(e) if self.polling && is_not_found(&e) => {
                    if e.paths.iter().any(|p| p == &self.root) {
                        tally.root_lost = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(app = %self.app, root = %self.root.display(), "file watch error: {e}; walking the tree again");
                    rescan = true;
                }
            }
        }
        if !tally.root_lost && rescan && !self.root_is_the_same() {
            tally.root_lost = true;
        }
        let mut changes = Changes {
            paths: tally.named.len().saturating_add(tally.found),
            named: tally.named.iter().cloned().collect(),
            found: tally.found,
            overflow: rescan,
            rules_rebuilt: false,
            root_lost: tally.root_lost,
        };
        if changes.root_lost {
            self.forget(&self.root.clone());
            return changes;
        }
        if rescan {
            // An ignore file may have changed among the lost events.
            changes.rules_rebuilt = self.rebuild_rules();
            self.reconcile(true, &mut tally);
        } else if tally.rules_changed && self.rebuild_rules() {
            changes.rules_rebuilt = true;
            self.reconcile(false, &mut tally);
        }
        changes
    }

    /// Takes in what one event says about one path.
    fn observe(&mut self, path: PathBuf, seen: Seen, tally: &mut Tally) {
        if path == self.root {
            // The root's own times and mode are not part of what is deployed.
            match seen {
                Seen::Left(_) => tally.root_lost = true,
                Seen::Renamed => tally.root_lost |= !self.root_is_the_same(),
                Seen::Appeared(_) | Seen::Changed(_) => {}
            }
            return;
        }
        if !path.starts_with(&self.root) {
            return;
        }
        let seen = match seen {
            Seen::Renamed => match fs::symlink_metadata(&path) {
                Ok(meta) => Seen::Appeared(Some(meta.is_dir())),
                Err(_) => Seen::Left(None),
            },
            other => other,
        };
        let ignore_file = IgnoreRules::is_ignore_file(&path);
        match seen {
            Seen::Left(is_dir) => {
                let was_watched = self.watched.contains(&path);
                if was_watched {
                    self.forget(&path);
                }
                let is_dir = is_dir.unwrap_or(was_watched);
                if ignore_file && !is_dir {
                    tally.rules_changed = true;
                    tally.named.insert(path);
                } else if !self.rules.is_ignored(&path, is_dir) {
                    tally.named.insert(path);
                }
            }
            Seen::Appeared(is_dir) | Seen::Changed(is_dir) => {
                let is_dir = match is_dir {
                    Some(is_dir) => is_dir,
                    None if self.watched.contains(&path) => true,
                    None => fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()),
                };
                if ignore_file && !is_dir {
                    tally.rules_changed = true;
                    tally.named.insert(path);
                    return;
                }
                if self.rules.is_ignored(&path, is_dir) {
                    return;
                }
                if is_dir && !self.watched.contains(&path) {
                    // New, or one whose creation was not seen.
                    self.watch_new_tree(&path, tally);
                    tally.named.insert(path);
                } else if !is_dir || matches!(seen, Seen::Appeared(_)) {
                    tally.named.insert(path);
                }
                // A directory's own times move whenever an entry comes or goes (an ignored one
                // too, when polling); the entries that matter are reported themselves.
            }
            Seen::Renamed => {}
        }
    }

    /// Watches a new directory and everything kept below it, watch first and listing second,
    /// so that nothing made meanwhile is missed; what is found counts as changed.
    fn watch_new_tree(&mut self, dir: &Path, tally: &mut Tally) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if self.watched.contains(&dir) || !self.watch_or_log(&dir, tally) {
                continue;
            }
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::debug!(app = %self.app, dir = %dir.display(), "cannot list a new directory: {e}");
                    continue;
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(file_type) = entry.file_type() else {
                    continue;
                };
                let is_dir = file_type.is_dir();
                if !is_dir && IgnoreRules::is_ignore_file(&path) {
                    tally.rules_changed = true;
                } else if self.rules.is_ignored(&path, is_dir) {
                    continue;
                }
                tally.found = tally.found.saturating_add(1);
                if is_dir {
                    stack.push(path);
                }
            }
        }
    }

    /// Rebuilds the rules from the ignore files as they are now. A bad rule keeps the old
    /// rules (logged); returns whether the rules were replaced.
    fn rebuild_rules(&mut self) -> bool {
        match self.source.build(&self.root) {
            Ok(rules) => {
                self.rules = rules;
                true
            }
            Err(e) => {
                tracing::warn!(app = %self.app, root = %self.root.display(), "the ignore rules are kept as they were: {e}");
                false
            }
        }
    }

    /// Brings the watches in line with the directories the rules keep now: drops the watches of
    /// directories that are ignored or gone, and adds the missing ones (all of them again when
    /// `again`: after lost events, a directory may have been replaced under the same name).
    fn reconcile(&mut self, again: bool, tally: &mut Tally) {
        let dirs = match self.rules.directories() {
            Ok(dirs) => dirs,
            Err(e) => {
                tracing::warn!(app = %self.app, root = %self.root.display(), "cannot walk the source directory: {e}");
                return;
            }
        };
        let wanted: BTreeSet<PathBuf> = dirs.into_iter().map(|d| self.absolute(d)).collect();
        let stale: Vec<PathBuf> = self.watched.difference(&wanted).cloned().collect();
        for dir in stale {
            self.unwatch(&dir);
        }
        for dir in wanted {
            if again || !self.watched.contains(&dir) {
                self.watch_or_log(&dir, tally);
            }
        }
    }

    /// Watches one directory. Does not fail: a directory that vanished is skipped, an error is
    /// logged (an inotify limit at ERROR, once per batch). Returns whether it is watched.
    fn watch_or_log(&mut self, dir: &Path, tally: &mut Tally) -> bool {
        match self.watch(dir) {
            Ok(()) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => {
                let error = watch_error(&self.root, dir, &e);
                if !matches!(error, WatchError::InotifyLimit { .. }) {
                    tracing::warn!(app = %self.app, "{error}; changes in it are not seen");
                } else if !tally.limit_logged {
                    tally.limit_logged = true;
                    tracing::error!(app = %self.app, "{error}; changes in it are not seen");
                }
                false
            }
        }
    }

    fn watch(&mut self, dir: &Path) -> notify::Result<()> {
        self.watcher.watch(dir, RecursiveMode::NonRecursive)?;
        self.watched.insert(dir.to_path_buf());
        Ok(())
    }

    /// Drops one watch. inotify has usually dropped it already (the directory was deleted or
    /// renamed away): an error here says nothing new.
    fn unwatch(&mut self, dir: &Path) {
        self.watched.remove(dir);
        if let Err(e) = self.watcher.unwatch(dir) {
            tracing::trace!(app = %self.app, dir = %dir.display(), "unwatch: {e}");
        }
    }

    /// Drops the watches of a directory that left, and of everything below it.
    fn forget(&mut self, dir: &Path) {
        let below: Vec<PathBuf> = self
            .watched
            .range(dir.to_path_buf()..)
            .take_while(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for path in below {
            self.unwatch(&path);
        }
    }

    fn absolute(&self, dir: PathBuf) -> PathBuf {
        if dir.is_absolute() {
            dir
        } else {
            self.root.join(dir)
        }
    }

    /// Whether the root's path still leads to the directory watched (not removed, not
    /// replaced by another one: the watches would then be on a directory nobody deploys).
    fn root_is_the_same(&self) -> bool {
        root_identity(&self.root).is_ok_and(|now| now == self.identity)
    }
}

/// Checks that the root is a directory that can be listed; returns its device and inode.
fn check_root(root: &Path) -> Result<RootIdentity, WatchError> {
    use std::os::unix::fs::MetadataExt;
    let identity = match fs::metadata(root) {
        Ok(meta) if meta.is_dir() => (meta.dev(), meta.ino()),
        Ok(_) => {
            return Err(WatchError::NotADirectory {
                root: root.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(WatchError::NotFound {
                root: root.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(WatchError::Read {
                root: root.to_path_buf(),
                source,
            });
        }
    };
    fs::read_dir(root).map_err(|source| WatchError::Read {
        root: root.to_path_buf(),
        source,
    })?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{DataChange, MetadataKind};

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
}
