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

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::archive::ignore::IgnoreRules;
use crate::live::{Board, WaitKind};
use crate::source::watch::{
    Changes, DirectoryWatches, EventStream, RulesSource, WatchError, root_identity,
};

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

/// When a burst of changes is over: `quiet` after its last change, or `max_wait` after its
/// first, whichever comes first. Pure: the caller says what time it is.
#[derive(Debug, Clone)]
pub struct Debounce {
    quiet: Duration,
    max_wait: Duration,
    /// The burst in progress, if any.
    pending: Option<Burst>,
    /// Paths already counted in the pending burst, so that a file written in several
    /// batches of events counts once (bounded: past the cap, paths are counted as they come).
    seen: std::collections::HashSet<PathBuf>,
}

/// How many distinct paths a burst remembers for its count.
const MAX_SEEN: usize = 100_000;

impl Debounce {
    /// A debounce with nothing pending.
    pub fn new(quiet: Duration, max_wait: Duration) -> Self {
        Debounce {
            quiet,
            max_wait,
            pending: None,
            seen: std::collections::HashSet::new(),
        }
    }

    /// A relevant change at `now` naming `named` paths (each counted once per burst) plus
    /// `found` entries discovered in new directories.
    pub fn change_named(&mut self, now: Instant, named: &[PathBuf], found: usize) {
        let mut new = found;
        for path in named {
            if self.seen.len() >= MAX_SEEN || self.seen.insert(path.clone()) {
                new += 1;
            }
        }
        self.change(now, new);
    }

    /// A relevant change of `paths` paths happened at `now`; starts a burst if none is pending.
    /// An instant earlier than the last one recorded does not move the burst back.
    pub fn change(&mut self, now: Instant, paths: usize) {
        match &mut self.pending {
            Some(burst) => {
                burst.changed_paths = burst.changed_paths.saturating_add(paths);
                burst.last = burst.last.max(now);
            }
            None => {
                self.pending = Some(Burst {
                    changed_paths: paths,
                    overflow: false,
                    first: now,
                    last: now,
                })
            }
        }
    }

    /// Events were lost at `now`: the whole tree may have changed. A change like any other,
    /// and the burst says so ([`Burst::overflow`]).
    pub fn overflow(&mut self, now: Instant) {
        self.change(now, 0);
        if let Some(burst) = &mut self.pending {
            burst.overflow = true;
        }
    }

    /// When the pending burst ends if nothing else happens: the earlier of `quiet` after its
    /// last change and `max_wait` after its first. `None` when nothing is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|burst| (burst.last + self.quiet).min(burst.first + self.max_wait))
    }

    /// Whether a burst is in progress (a change was recorded and has not been fired).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Drops the pending burst, if any: what it was about is covered by a later one.
    pub fn discard(&mut self) {
        self.seen.clear();
        self.pending = None;
    }

    /// The pending burst if its deadline is at or before `now`; the debounce is then empty
    /// again. `None` (and nothing changes) otherwise.
    pub fn fire_if_due(&mut self, now: Instant) -> Option<Burst> {
        if self.deadline().is_some_and(|deadline| deadline <= now) {
            self.seen.clear();
            self.pending.take()
        } else {
            None
        }
    }
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
    /// unreadable, when an ignore file has a bad pattern, or when an inotify limit is reached
    /// (the message says which `sysctl` to raise). No burst is reported for what is already
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

/// What the watcher task needs to watch the root again.
struct Rewatch {
    app: String,
    /// The root, as an absolute path.
    root: PathBuf,
    source: RulesSource,
    poll: Option<Duration>,
    give_up: Option<Duration>,
}

/// Why the watches of a root ended.
enum Lost {
    /// The root was removed, renamed away or replaced: look for it again.
    Root(&'static str),
    /// The watcher itself failed: nothing to look for.
    Failed(String),
}

/// The task behind a [`TreeWatcher`]: watches the tree until its root is lost, waits for the
/// root to come back, watches it again, and so on.
async fn run(
    again: Rewatch,
    mut watches: DirectoryWatches,
    mut events: EventStream,
    shared: Arc<Shared>,
) {
    let _stopped = StopOnDrop(shared.clone());
    loop {
        let how = match watch_until_lost(&again.app, watches, events, &shared).await {
            Lost::Root(how) => how,
            Lost::Failed(cause) => {
                tracing::error!(app = %again.app, root = %again.root.display(), "{cause}; the source directory is not watched any more");
                shared.state.send_replace(TreeState::Stopped {
                    cause: format!("source directory {}: {cause}", again.root.display()),
                });
                return;
            }
        };
        shared.watch_count.store(0, Ordering::Release);
        // What was pending is about a tree that is gone; the burst after the return covers it.
        lock(&shared.debounce).discard();
        let Some((back, stream)) = wait_for_root(&again, &shared, how).await else {
            return;
        };
        (watches, events) = (back, stream);
        // Whatever happened while it was not watched: everything may have changed.
        let everything = Changes {
            overflow: true,
            rules_rebuilt: true,
            ..Changes::default()
        };
        shared.state.send_replace(TreeState::Watched);
        shared.record(&watches, &everything);
    }
}

/// Hands each batch of events to a blocking thread (walks, listings and watch calls block) and
/// records what changed; checks on a timer that the root is still the directory watched.
/// Returns when the root is lost (the watches are dropped then) or the watcher fails.
async fn watch_until_lost(
    app: &str,
    mut watches: DirectoryWatches,
    mut events: EventStream,
    shared: &Shared,
) -> Lost {
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + ROOT_CHECK, ROOT_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = events.next_batch() => {
                let Some(batch) = batch else {
                    return Lost::Failed("the file watcher stopped".to_string());
                };
                let handled = tokio::task::spawn_blocking(move || {
                    let changes = watches.apply(batch);
                    (watches, changes)
                })
                .await;
                let changes = match handled {
                    Ok((back, changes)) => {
                        watches = back;
                        changes
                    }
                    Err(e) => return Lost::Failed(format!("the source directory watcher failed: {e}")),
                };
                if changes.root_lost {
                    return Lost::Root("removed or renamed away");
                }
                shared.record(&watches, &changes);
            }
            _ = check.tick() => {
                let (root, watched) = (watches.root().to_path_buf(), watches.identity());
                let same = tokio::task::spawn_blocking(move || {
                    root_identity(&root).is_ok_and(|now| now == watched)
                })
                .await;
                // A failed check task says nothing about the root: look again next time.
                if same.is_ok_and(|same| !same) {
                    tracing::debug!(app = %app, root = %watches.root().display(), "the source directory's path leads to another directory now");
                    return Lost::Root("replaced");
                }
            }
        }
    }
}

/// Looks for a lost root at once, then on a timer, until it can be watched again; publishes
/// the gap meanwhile. `None` (and [`TreeState::Stopped`]) once [`Rewatch::give_up`] has passed.
async fn wait_for_root(
    again: &Rewatch,
    shared: &Shared,
    how: &str,
) -> Option<(DirectoryWatches, EventStream)> {
    let started = Instant::now();
    let since = SystemTime::now();
    let mut shown: Option<String> = None;
    loop {
        let (app, root, source, poll) = (
            again.app.clone(),
            again.root.clone(),
            again.source.clone(),
            again.poll,
        );
        let attempt =
            tokio::task::spawn_blocking(move || DirectoryWatches::start(&app, &root, source, poll))
                .await;
        let (reason, cause, pause) = match attempt {
            Ok(Ok(watched)) => {
                if shown.is_some() {
                    tracing::info!(app = %again.app, root = %again.root.display(), "the source directory is back; watching it again");
                } else {
                    tracing::info!(app = %again.app, root = %again.root.display(), "the source directory was {how}; watching the one there now");
                }
                return Some(watched);
            }
            Ok(Err(WatchError::NotFound { .. })) => (
                "removed".to_string(),
                "removed, waiting for it to come back".to_string(),
                MISSING_CHECK,
            ),
            Ok(Err(WatchError::NotADirectory { .. })) => (
                "replaced by something that is not a directory".to_string(),
                "replaced by something that is not a directory, waiting for a directory"
                    .to_string(),
                MISSING_CHECK,
            ),
            Ok(Err(e)) => (e.to_string(), format!("{e}; trying again"), RETRY_CHECK),
            Err(e) => {
                let e = format!("the source directory watcher failed: {e}");
                (e.clone(), format!("{e}; trying again"), RETRY_CHECK)
            }
        };
        let waited = started.elapsed();
        let pause = match again.give_up {
            Some(bound) if waited >= bound => {
                let cause = format!(
                    "source directory {}: {reason}, and not back within {}; not watched any more",
                    again.root.display(),
                    humantime::format_duration(bound)
                );
                tracing::error!(app = %again.app, "{cause}");
                shared.state.send_replace(TreeState::Stopped { cause });
                return None;
            }
            Some(bound) => pause.min(bound - waited),
            None => pause,
        };
        if shown.as_ref() != Some(&cause) {
            tracing::error!(
                app = %again.app,
                root = %again.root.display(),
                "the source directory is not watched: {cause} (checked every {})",
                humantime::format_duration(pause)
            );
            shown = Some(cause.clone());
        }
        shared.state.send_replace(TreeState::NotWatched {
            root: again.root.clone(),
            cause,
            since,
            next_check: SystemTime::now() + pause,
        });
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_secs(1);
    const MAX_WAIT: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_pending_means_no_deadline() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET, MAX_WAIT);
        assert_eq!(d.deadline(), None);
        assert!(!d.is_pending());
        assert_eq!(d.fire_if_due(t0 + Duration::from_secs(3600)), None);
    }

    #[test]
    fn a_burst_ends_after_the_quiet_period() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET, MAX_WAIT);
        d.change(t0, 1);
        assert_eq!(d.deadline(), Some(t0 + QUIET));
        assert_eq!(d.fire_if_due(t0 + ms(999)), None);
        let burst = d.fire_if_due(t0 + QUIET).expect("due");
        assert_eq!(
            burst,
            Burst {
                changed_paths: 1,
                overflow: false,
                first: t0,
                last: t0,
            }
        );
    }

    #[test]
    fn each_change_restarts_the_quiet_period_and_adds_its_paths() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET, MAX_WAIT);
        d.change(t0, 2);
        d.change(t0 + ms(800), 3);
        assert_eq!(d.fire_if_due(t0 + QUIET), None);
        assert_eq!(d.deadline(), Some(t0 + ms(1800)));
        d.change(t0 + ms(1500), 5);
        assert_eq!(d.fire_if_due(t0 + ms(2400)), None);
        let burst = d.fire_if_due(t0 + ms(2500)).expect("due");
        assert_eq!(burst.changed_paths, 10);
        assert_eq!(burst.first, t0);
        assert_eq!(burst.last, t0 + ms(1500));
    }

    #[test]
    fn a_tree_that_never_stops_changing_fires_at_max_wait() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET, MAX_WAIT);
        let mut fired = Vec::new();
        // A change every 100 ms for 25 s, checked every 10 ms.
        for tick in 0..2500u64 {
            let now = t0 + ms(tick * 10);
            if tick % 10 == 0 {
                d.change(now, 1);
            }
            if let Some(burst) = d.fire_if_due(now) {
                fired.push((now, burst));
            }
        }
        assert_eq!(fired.len(), 2, "{fired:?}");
        assert_eq!(fired[0].0, t0 + MAX_WAIT);
        assert_eq!(fired[0].1.first, t0);
        assert_eq!(fired[0].1.changed_paths, 101);
        // The next burst starts with the first change after the fire.
        assert_eq!(fired[1].1.first, t0 + MAX_WAIT + ms(100));
        assert_eq!(fired[1].0, t0 + MAX_WAIT * 2 + ms(100));
    }

    #[test]
    fn firing_resets() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET, MAX_WAIT);
        d.overflow(t0);
        d.change(t0, 4);
        let burst = d.fire_if_due(t0 + QUIET).expect("due");
        assert!(burst.overflow);
        assert_eq!(burst.changed_paths, 4);
        assert!(!d.is_pending());
        assert_eq!(d.deadline(), None);
        assert_eq!(d.fire_if_due(t0 + QUIET * 5), None);
        let t1 = t0 + QUIET * 5;
        d.change(t1, 1);
        let burst = d.fire_if_due(t1 + QUIET).expect("due");
        assert_eq!((burst.changed_paths, burst.overflow), (1, false));
        assert_eq!(burst.first, t1);
    }

    #[test]
    fn a_change_stamped_in_the_past_does_not_move_the_burst_back() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET, MAX_WAIT);
        d.change(t0 + ms(500), 1);
        d.change(t0, 1);
        assert_eq!(d.deadline(), Some(t0 + ms(1500)));
    }

    #[test]
    fn an_overflow_alone_is_a_burst() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET, MAX_WAIT);
        d.overflow(t0);
        let burst = d.fire_if_due(t0 + QUIET).expect("due");
        assert!(burst.overflow);
        assert_eq!(burst.changed_paths, 0);
    }

    #[test]
    fn a_discarded_burst_never_fires_and_its_paths_count_again() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET, MAX_WAIT);
        d.change_named(t0, &[PathBuf::from("/src/a")], 0);
        d.discard();
        assert!(!d.is_pending());
        assert_eq!(d.fire_if_due(t0 + QUIET * 5), None);
        d.change_named(t0, &[PathBuf::from("/src/a")], 0);
        assert_eq!(d.fire_if_due(t0 + QUIET).map(|b| b.changed_paths), Some(1));
    }

    #[test]
    fn a_burst_already_due_fires_at_once() {
        let t0 = Instant::now();
        let mut d = Debounce::new(QUIET, MAX_WAIT);
        d.change(t0, 1);
        assert!(d.fire_if_due(t0 + Duration::from_secs(60)).is_some());
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error() {
        let err = TreeWatcher::start(TreeConfig::new("my-app", "/nonexistent/src"))
            .expect_err("no runtime");
        assert!(matches!(err, WatchError::NoRuntime { .. }), "{err:?}");
    }
}
