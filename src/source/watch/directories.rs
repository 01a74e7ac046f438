//! The directory-watch bookkeeping: which directories of a source tree are watched, kept in
//! line with the tree and its ignore rules as events come in.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use notify::{PollWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::events::{Batch, Changes, EVENT_QUEUE, EventStream, Seen, read_event};
use super::{RulesSource, WatchError, forward_events, inotify_limit, is_not_found, watch_error};
use crate::archive::ignore::IgnoreRules;

/// The paths counted in one batch.
#[derive(Debug, Default)]
struct Tally {
    /// Paths named by events (the same path written many times counts once).
    named: HashSet<PathBuf>,
    /// Entries found in new directories.
    found: usize,
    rules_changed: bool,
    root_lost: bool,
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
    pub(super) watched: BTreeSet<PathBuf>,
    /// The directories the rules keep that an inotify limit left without a watch: they are
    /// listed on a timer instead ([`Self::poll_unwatched`]), and watched once a watch is had.
    unwatched: BTreeSet<PathBuf>,
    /// What each unwatched directory held when last listed (a hash of its entries).
    fingerprints: HashMap<PathBuf, u64>,
    /// The inotify limit that left directories unwatched, as said in the one warning (until
    /// every directory is watched again).
    limit: Option<String>,
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
            unwatched: BTreeSet::new(),
            fingerprints: HashMap::new(),
            limit: None,
            identity,
        };
        // The root first: a directory made while the rest is walked is then seen by its event.
        let root = watches.root.clone();
        if let Err(e) = watches.watch(&root) {
            let error = watch_error(&watches.root, &root, &e);
            if !matches!(error, WatchError::InotifyLimit { .. }) {
                return Err(error);
            }
            watches.note_limit(&root, &error);
        }
        watches.watch_kept()?;
        watches.fingerprint_unwatched();
        tracing::debug!(
            app = %watches.app,
            root = %watches.root.display(),
            watches = watches.watched.len(),
            polling = watches.polling,
            "source directory watched"
        );
        Ok((watches, EventStream { events, overflow }))
    }

    /// Watches every directory the rules keep, at start. A directory that vanished meanwhile is
    /// skipped, one that cannot be watched is skipped with a warning; one an inotify limit
    /// refuses is listed on a timer instead (one warning for them all).
    fn watch_kept(&mut self) -> Result<(), WatchError> {
        let dirs = self.rules.directories().map_err(|e| WatchError::Rules {
            root: self.root.clone(),
            source: e,
        })?;
        for dir in dirs {
            let dir = self.absolute(dir);
            if self.watched.contains(&dir) {
                continue;
            }
            match self.watch(&dir) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    let error = watch_error(&self.root, &dir, &e);
                    if matches!(error, WatchError::InotifyLimit { .. }) {
                        self.note_limit(&dir, &error);
                    } else {
                        tracing::warn!(app = %self.app, "{error}; changes in it are not seen");
                    }
                }
            }
        }
        Ok(())
    }

    /// Records a directory an inotify limit left without a watch; the first one since every
    /// directory was last watched is the one warning.
    fn note_limit(&mut self, dir: &Path, error: &WatchError) {
        self.unwatched.insert(dir.to_path_buf());
        if self.limit.is_none() {
            tracing::warn!(
                app = %self.app,
                "{error}; it and the other directories left without a watch are listed every {} \
                 s instead, until watches can be had (`status` shows how many)",
                UNWATCHED_CHECK.as_secs()
            );
            self.limit = Some(error.to_string());
        }
    }

    /// How many directories the rules keep are without a watch (an inotify limit), one of
    /// them, and the limit's message.
    pub(crate) fn unwatched(&self) -> Option<(usize, &Path, &str)> {
        let first = self.unwatched.iter().next()?;
        Some((
            self.unwatched.len(),
            first,
            self.limit.as_deref().unwrap_or("inotify limit reached"),
        ))
    }

    /// Lists every unwatched directory and remembers what it holds (no change reported).
    fn fingerprint_unwatched(&mut self) {
        let dirs: Vec<PathBuf> = self.unwatched.iter().cloned().collect();
        for dir in dirs {
            let print = fingerprint(&dir, &self.rules);
            self.fingerprints.insert(dir, print);
        }
    }

    /// The timer's turn for the directories an inotify limit left without a watch: each is
    /// watched if a watch can be had now (and counts as changed: what happened meanwhile is
    /// unknown), else listed, and counts as changed when what it holds changed since the last
    /// listing (a new directory in it is watched, or listed from then on). Blocking.
    pub(crate) fn poll_unwatched(&mut self) -> Changes {
        let mut tally = Tally::default();
        let mut limited = false;
        let dirs: Vec<PathBuf> = self.unwatched.iter().cloned().collect();
        for dir in dirs {
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                self.unwatched.remove(&dir);
                self.fingerprints.remove(&dir);
                tally.named.insert(dir);
                continue;
            }
            if !limited {
                match self.watch(&dir) {
                    Ok(()) => {
                        tally.named.insert(dir);
                        continue;
                    }
                    Err(e) if inotify_limit(&e).is_some() => limited = true,
                    Err(e) => {
                        tracing::debug!(app = %self.app, dir = %dir.display(), "still not watched: {e}")
                    }
                }
            }
            let print = fingerprint(&dir, &self.rules);
            if self.fingerprints.insert(dir.clone(), print) != Some(print) {
                self.changed_unwatched(&dir, &mut tally);
            }
        }
        if self.unwatched.is_empty() && self.limit.take().is_some() {
            tracing::info!(app = %self.app, root = %self.root.display(), "every directory of the source directory is watched again");
        }
        if tally.rules_changed && self.rebuild_rules() {
            self.reconcile(false, &mut tally);
        }
        Changes {
            paths: tally.named.len().saturating_add(tally.found),
            named: tally.named.iter().cloned().collect(),
            found: tally.found,
            overflow: false,
            rules_rebuilt: tally.rules_changed,
            root_lost: false,
        }
    }

    /// An unwatched directory holds something else now: it counts as changed, an ignore file in
    /// it may have changed, and a directory new in it is taken in as a new tree.
    fn changed_unwatched(&mut self, dir: &Path, tally: &mut Tally) {
        tally.named.insert(dir.to_path_buf());
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir && IgnoreRules::is_ignore_file(&path) {
                tally.rules_changed = true;
            } else if is_dir
                && !self.watched.contains(&path)
                && !self.unwatched.contains(&path)
                && !self.rules.is_ignored(&path, true)
            {
                self.watch_new_tree(&path, tally);
            }
        }
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
        let stale: Vec<PathBuf> = (self.watched.difference(&wanted))
            .chain(self.unwatched.difference(&wanted))
            .cloned()
            .collect();
        for dir in stale {
            self.unwatch(&dir);
        }
        for dir in wanted {
            // A directory listed instead of watched waits for the timer's next try.
            if self.unwatched.contains(&dir) {
                continue;
            }
            if again || !self.watched.contains(&dir) {
                self.watch_or_log(&dir, tally);
            }
        }
    }

    /// Watches one directory. Does not fail: a directory that vanished is skipped, an error is
    /// logged, and one an inotify limit refuses is listed on a timer instead (one warning, see
    /// [`Self::note_limit`]). Returns whether it is watched (or listed).
    fn watch_or_log(&mut self, dir: &Path, _tally: &mut Tally) -> bool {
        match self.watch(dir) {
            Ok(()) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => {
                let error = watch_error(&self.root, dir, &e);
                if matches!(error, WatchError::InotifyLimit { .. }) {
                    self.note_limit(dir, &error);
                    self.fingerprints
                        .insert(dir.to_path_buf(), fingerprint(dir, &self.rules));
                    return true;
                }
                tracing::warn!(app = %self.app, "{error}; changes in it are not seen");
                false
            }
        }
    }

    fn watch(&mut self, dir: &Path) -> notify::Result<()> {
        self.watcher.watch(dir, RecursiveMode::NonRecursive)?;
        self.watched.insert(dir.to_path_buf());
        self.unwatched.remove(dir);
        self.fingerprints.remove(dir);
        Ok(())
    }

    /// Drops one watch. inotify has usually dropped it already (the directory was deleted or
    /// renamed away): an error here says nothing new.
    fn unwatch(&mut self, dir: &Path) {
        self.unwatched.remove(dir);
        self.fingerprints.remove(dir);
        self.watched.remove(dir);
        if let Err(e) = self.watcher.unwatch(dir) {
            tracing::trace!(app = %self.app, dir = %dir.display(), "unwatch: {e}");
        }
    }

    /// Drops the watches of a directory that left, and of everything below it.
    fn forget(&mut self, dir: &Path) {
        let below: Vec<PathBuf> = (self.watched.range(dir.to_path_buf()..))
            .take_while(|p| p.starts_with(dir))
            .chain(
                self.unwatched
                    .range(dir.to_path_buf()..)
                    .take_while(|p| p.starts_with(dir)),
            )
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

/// How often the directories an inotify limit left without a watch are listed (and a watch
/// tried again for them).
pub(crate) const UNWATCHED_CHECK: Duration = Duration::from_secs(5);

/// A hash of what `dir` holds (each kept entry's name, type, size, times and inode): it
/// changes when anything in it is made, removed, renamed or written. Blocking.
fn fingerprint(dir: &Path, rules: &IgnoreRules) -> u64 {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut seen: Vec<(std::ffi::OsString, [i64; 7])> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !IgnoreRules::is_ignore_file(&path) && rules.is_ignored(&path, meta.is_dir()) {
            continue;
        }
        seen.push((
            entry.file_name(),
            [
                i64::from(meta.mode()),
                meta.size() as i64,
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec(),
                meta.ino() as i64,
            ],
        ));
    }
    seen.sort();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seen.hash(&mut hasher);
    hasher.finish()
}

/// Checks that the root is a directory that can be listed; returns its device and inode.
pub(super) fn check_root(root: &Path) -> Result<RootIdentity, WatchError> {
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
