//! A watched source directory: notices relevant changes and says when a burst of them is over.
//!
//! [`TreeWatcher`] watches a source tree (through [`crate::source::watch`]: one watch per kept
//! directory, ignored paths are never changes) and hands out debounced [`Burst`]s. A burst ends
//! when the tree has been quiet for [`TreeConfig::quiet`] after its last change, or at the latest
//! [`TreeConfig::max_wait`] after its first, so a tree that never stops changing still deploys.
//! Changes that happen while nobody waits for a burst (the app is deploying) pile up into the
//! next one: a change during a deployment makes exactly one follow-up.
//!
//! [`Debounce`] is the decision alone, a pure state machine driven by explicit instants.
//!
//! The root itself may go away: removed, renamed away, or swapped for another directory by a
//! rename (of itself or of a parent), which the old directory's watch may never hear of. So
//! besides its events, the root's device and inode are compared on a timer. Once the root is
//! lost, the watcher looks for it on a timer ([`TreeState::NotWatched`] says why and when),
//! watches it again when it is back, and hands out a burst with [`Burst::overflow`] set: the
//! tree that came back may differ in anything. It gives up only after [`TreeConfig::give_up`].

mod debounce;
mod rewatch;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::archive::ignore::IgnoreRules;
use crate::live::{Board, WaitKind};
use crate::source::watch::{Changes, DirectoryWatches, RulesSource, WatchError};

pub use debounce::Debounce;
use rewatch::{Rewatch, run};

/// How long the tree must stay quiet after its last change before a burst ends, by default.
pub const DEFAULT_QUIET: Duration = Duration::from_secs(1);
/// How long after its first change a burst ends at the latest, by default.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);
/// Events reach the watcher a little after the change: a burst that became due while nobody
/// waited is handed out only this long (at most the quiet period) after [`TreeWatcher::next_burst`]
/// is called, so that changes made just before the call are in it rather than in another burst.
const CATCH_UP: Duration = Duration::from_millis(100);
/// How often a watched root is checked to still be the directory watched: a swap by rename
/// (of the root or of a parent) or a mount over it sends the old directory's watch nothing.
const ROOT_CHECK: Duration = Duration::from_secs(2);
/// How often a missing root is looked for (one `stat`).
const MISSING_CHECK: Duration = Duration::from_secs(1);
/// How often a root that is there but cannot be watched (a bad ignore rule, an inotify limit,
/// no permission) is tried again: each try reads its ignore files and walks it.
const RETRY_CHECK: Duration = Duration::from_secs(5);

/// A finished burst of relevant changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Burst {
    /// How many relevant paths changed: a size hint (the same path changed in separate event
    /// batches counts again), never 0 unless `overflow` is set.
    pub changed_paths: usize,
    /// Events were lost (an inotify overflow, a watcher error, a full internal queue): the
    /// whole tree may have changed, whatever `changed_paths` says.
    pub overflow: bool,
    /// When the first change of the burst was noticed.
    pub first: Instant,
    /// When the last change of the burst was noticed.
    pub last: Instant,
}

/// One watched source directory, as the daemon's configuration (or `dropdeploy watch`)
/// describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeConfig {
    /// The app the tree deploys to (for the log).
    pub app: String,
    /// The source directory. Relative paths are taken from the current directory at start.
    pub root: PathBuf,
    /// Extra gitignore patterns (`ignore = [...]`), on top of the ignore files in the tree.
    pub ignore: Vec<String>,
    /// Patterns kept even when ignored (`include = [...]`).
    pub include: Vec<String>,
    /// Absolute paths never watched nor deployed: the daemon's state directory and spool when
    /// they sit inside the tree (give them in the same form as `root`).
    pub always_ignore: Vec<PathBuf>,
    /// How long the tree must be quiet after its last change before a burst ends.
    pub quiet: Duration,
    /// How long after its first change a burst ends at the latest.
    pub max_wait: Duration,
    /// Poll at this interval instead of using inotify (NFS and other network filesystems).
    pub poll: Option<Duration>,
    /// How long a lost root (removed, or replaced by something that cannot be watched) is
    /// waited for before the watch stops for good; `None`: for ever (a service keeps waiting).
    pub give_up: Option<Duration>,
}

impl TreeConfig {
    /// A tree with no extra patterns, the default quiet period and maximum wait, and inotify.
    pub fn new(app: impl Into<String>, root: impl Into<PathBuf>) -> Self {
        TreeConfig {
            app: app.into(),
            root: root.into(),
            ignore: Vec::new(),
            include: Vec::new(),
            always_ignore: Vec::new(),
            quiet: DEFAULT_QUIET,
            max_wait: DEFAULT_MAX_WAIT,
            poll: None,
            give_up: None,
        }
    }
}

/// Whether a source directory is watched now ([`TreeWatcher::state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeState {
    /// Watched: changes make bursts.
    Watched,
    /// Not watched: the root was lost and is not back (or cannot be watched yet). It is looked
    /// for again at `next_check`.
    NotWatched {
        /// The root, as an absolute path.
        root: PathBuf,
        /// Why, in words: "removed, waiting for it to come back", or the error.
        cause: String,
        since: SystemTime,
        next_check: SystemTime,
    },
    /// The watch ended for good: the root was not back within [`TreeConfig::give_up`], or the
    /// watcher failed. `cause` names the source directory.
    Stopped { cause: String },
    /// Watched, but an inotify limit left some directories without a watch: they are listed on
    /// a timer instead (changes in them are seen within `next_check`, not at once).
    Partial {
        /// The root, as an absolute path.
        root: PathBuf,
        /// How many directories are without a watch.
        unwatched: usize,
        /// In words: how many, one of them, and the limit with how to raise it.
        cause: String,
        next_check: SystemTime,
    },
}

/// What the watcher task shares with its [`TreeWatcher`].
#[derive(Debug)]
struct Shared {
    debounce: Mutex<Debounce>,
    /// Rung after each recorded change, and when the task ends.
    wake: Notify,
    rules: Mutex<IgnoreRules>,
    watch_count: AtomicUsize,
    /// The task ended: nothing is watched any more.
    stopped: AtomicBool,
    state: watch::Sender<TreeState>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays consistent even if a holder panicked: every update is one assignment.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn record(&self, watches: &DirectoryWatches, changes: &Changes) {
        if changes.rules_rebuilt {
            *lock(&self.rules) = watches.rules().clone();
        }
        self.watch_count.store(watches.count(), Ordering::Release);
        if !changes.is_change() {
            return;
        }
        // Noticed now, after the batch was handled: a long walk does not end the burst early.
        let now = Instant::now();
        {
            let mut debounce = lock(&self.debounce);
            if changes.overflow {
                debounce.overflow(now);
            }
            debounce.change_named(now, &changes.named, changes.found);
        }
        self.wake.notify_one();
    }
}

/// Marks the watch as stopped when the task ends, however it ends.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.watch_count.store(0, Ordering::Release);
        self.0.state.send_if_modified(|state| {
            let ended = !matches!(state, TreeState::Stopped { .. });
            if ended {
                *state = TreeState::Stopped {
                    cause: "the source directory watcher ended".to_string(),
                };
            }
            ended
        });
        self.0.stopped.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }
}

/// Watches one source directory and hands out debounced bursts of relevant changes.
///
/// Dropping it ends the watch and its task.
pub struct TreeWatcher {
    app: String,
    /// The root, as an absolute path.
    root: PathBuf,
    shared: Arc<Shared>,
    catch_up: Duration,
    /// The wait of a [`TreeWatcher::next_burst`] call that was cancelled, so that a caller
    /// polling it again at once (in a `select!` loop) keeps its catch-up window instead of
    /// pushing a due burst back at every call.
    interrupted: Option<Interrupted>,
    task: JoinHandle<()>,
}

/// A cancelled wait for a burst.
#[derive(Debug, Clone, Copy)]
struct Interrupted {
    not_before: Instant,
    at: Instant,
}

/// Records the wait of a `next_burst` call if it is cancelled (dropped before it returns).
struct WaitGuard<'a> {
    slot: &'a mut Option<Interrupted>,
    not_before: Instant,
    done: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            *self.slot = Some(Interrupted {
                not_before: self.not_before,
                at: Instant::now(),
            });
        }
    }
}

impl std::fmt::Debug for TreeWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWatcher")
            .field("app", &self.app)
            .field("watches", &self.watch_count())
            .finish_non_exhaustive()
    }
}

impl TreeWatcher {
    /// Builds the ignore rules, walks the tree and watches every directory they keep, then
    /// watches for changes in a task of the current tokio runtime. Must be called inside a
    /// tokio runtime. It walks the tree before it returns, which blocks the calling thread for
    /// as long (milliseconds for a usual source tree; call it from `spawn_blocking` for a huge
    /// one).
    ///
    /// Fails, with a message naming the directory, when the root is missing, not a directory or
    /// unreadable, or when an ignore file has a bad pattern. An inotify limit does not fail it:
    /// the directories left without a watch are listed on a timer instead
    /// ([`TreeState::Partial`], and one warning saying which `sysctl` to raise). No burst is reported for what is already
    /// there: whether to deploy at start is the caller's decision.
    pub fn start(cfg: TreeConfig) -> Result<TreeWatcher, WatchError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(WatchError::NoRuntime { root: cfg.root });
        };
        let source = RulesSource {
            ignore: cfg.ignore,
            include: cfg.include,
            always_ignore: cfg.always_ignore,
        };
        let (watches, events) =
            DirectoryWatches::start(&cfg.app, &cfg.root, source.clone(), cfg.poll)?;
        let shared = Arc::new(Shared {
            debounce: Mutex::new(Debounce::new(cfg.quiet, cfg.max_wait)),
            wake: Notify::new(),
            rules: Mutex::new(watches.rules().clone()),
            watch_count: AtomicUsize::new(watches.count()),
            stopped: AtomicBool::new(false),
            state: watch::Sender::new(TreeState::Watched),
        });
        let root = watches.root().to_path_buf();
        let again = Rewatch {
            app: cfg.app.clone(),
            root: root.clone(),
            source,
            poll: cfg.poll,
            give_up: cfg.give_up,
        };
        let task = runtime.spawn(run(again, watches, events, shared.clone()));
        Ok(TreeWatcher {
            app: cfg.app,
            root,
            shared,
            catch_up: CATCH_UP.min(cfg.quiet),
            interrupted: None,
            task,
        })
    }

    /// Waits for the next burst of relevant changes to end, and returns it. Changes made while
    /// nobody waited are in it (if the burst was already due then, it comes shortly after the
    /// call). Cancel-safe: dropping the future loses nothing.
    ///
    /// A root that is removed or replaced is waited for and watched again (see [`TreeState`]).
    /// Returns `None` once the watch has stopped for good: the root was not back within
    /// [`TreeConfig::give_up`], or the watcher task failed ([`TreeState::Stopped`] says which).
    pub async fn next_burst(&mut self) -> Option<Burst> {
        let now = Instant::now();
        let not_before = match self.interrupted.take() {
            // Called again right after a cancelled call: the caller was waiting all along.
            Some(wait) if now.saturating_duration_since(wait.at) <= self.catch_up => {
                wait.not_before
            }
            _ => now + self.catch_up,
        };
        let mut guard = WaitGuard {
            slot: &mut self.interrupted,
            not_before,
            done: false,
        };
        let shared = &self.shared;
        let burst = loop {
            if shared.stopped.load(Ordering::Acquire) {
                break None;
            }
            let deadline = {
                let mut debounce = lock(&shared.debounce);
                let now = Instant::now();
                if now >= not_before
                    && let Some(burst) = debounce.fire_if_due(now)
                {
                    break Some(burst);
                }
                debounce.deadline().map(|deadline| deadline.max(not_before))
            };
            // A change recorded between the check and here leaves a permit: no wake-up is lost.
            match deadline {
                Some(deadline) => {
                    let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
                    tokio::select! {
                        () = shared.wake.notified() => {}
                        () = sleep => {}
                    }
                }
                None => shared.wake.notified().await,
            }
        };
        guard.done = true;
        burst
    }

    /// The ignore rules as they are now (rebuilt after each change to an ignore file), for the
    /// packer.
    pub fn rules(&self) -> IgnoreRules {
        lock(&self.shared.rules).clone()
    }

    /// How many directories are watched: inotify watches (one per kept directory), or polled
    /// directories in poll mode. 0 while the root is lost, and once the watch has stopped.
    pub fn watch_count(&self) -> usize {
        self.shared.watch_count.load(Ordering::Acquire)
    }

    /// The root, as an absolute path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the tree is watched now, and every change of it. The sender lives as long as
    /// this watcher or its task, whichever ends last.
    pub fn state(&self) -> watch::Receiver<TreeState> {
        self.shared.state.subscribe()
    }

    /// Shows every gap of the watch on `board`, as a [`WaitKind::Watch`] wait of the app on
    /// the root, and takes it off when the root is watched again or the watch ends.
    pub fn publish_gaps(&self, board: Arc<Board>) -> JoinHandle<()> {
        let (app, subject) = (self.app.clone(), self.root.display().to_string());
        let mut states = self.state();
        tokio::spawn(async move {
            loop {
                let state = states.borrow_and_update().clone();
                match state {
                    TreeState::NotWatched {
                        cause, next_check, ..
                    }
                    | TreeState::Partial {
                        cause, next_check, ..
                    } => {
                        let next = next_check
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .ok();
                        board.wait(&app, WaitKind::Watch, &subject, &cause, next);
                    }
                    TreeState::Watched | TreeState::Stopped { .. } => {
                        board.clear(&app, WaitKind::Watch, &subject);
                    }
                }
                if states.changed().await.is_err() {
                    board.clear(&app, WaitKind::Watch, &subject);
                    return;
                }
            }
        })
    }

    /// Ends the watch and its task (the same as dropping the watcher).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for TreeWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
