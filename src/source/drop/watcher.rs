//! The watcher task: one event loop per drop folder that turns events, timers, rescans and
//! rechecks into checks of its candidates, and makes the folder again if it vanishes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use notify::{Event, Watcher};
use tokio::sync::{Notify, mpsc};

use super::complete::check_interval;
use super::events::read_event;
use super::folder::{Folder, ReceiverGone};
use super::scan::Rescan;
use super::{DropError, prepare};
use crate::source::inotify::DirWatcher;
use crate::source::watch::{forward_events, inotify_limit};

/// Room for this many filesystem events between notify's thread and the watcher task; past that
/// the events are dropped and the folder is rescanned instead.
pub(super) const EVENT_QUEUE: usize = 4096;
/// How long a drop folder that vanished while watched may stay missing before it is created again
/// (someone replacing it with `rm -rf dir && mv new dir` gets there first).
const RECREATE_GRACE: Duration = Duration::from_secs(2);
/// How often a vanished drop folder that cannot be created or watched is tried again.
const RECREATE_RETRY: Duration = Duration::from_secs(5);
/// How often each drop folder is listed even when no event came: the safety net for a file
/// whose events never come (events are hints), so a rescan and a timer reach the same answer.
pub(super) const RESCAN_EVERY: Duration = Duration::from_secs(30);
/// How often the drop folder's path is checked to lead to the directory watched: a symbolic
/// link pointed elsewhere (or a folder swapped by a rename of a parent) sends the old
/// directory's watch nothing.
const PATH_CHECK: Duration = Duration::from_secs(2);

/// How often a drop folder that an inotify limit left without a watch is listed (and a watch
/// tried again).
pub(super) const LIMITED_RETRY: Duration = Duration::from_secs(2);

/// A directory's device and inode: what the drop folder's path must still lead to.
pub(super) type Identity = (u64, u64);

/// What `dir` leads to now (symbolic links followed, as for the watch). Blocking: one `stat`.
pub(super) fn identity(dir: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Starts a non-recursive notify watch on `dir` (the directory it leads to, when it is a
/// symbolic link) whose callback never blocks: it only tries to queue the event, and raises
/// `overflow` when the queue is full. Opens and reads are dropped: they say nothing about
/// completeness.
pub(super) fn start_watch(
    dir: &Path,
    events: mpsc::Sender<notify::Result<Event>>,
    overflow: Arc<AtomicBool>,
) -> Result<DirWatcher, DropError> {
    let handler = forward_events(events, overflow);
    let mut watcher =
        DirWatcher::new(handler, notify::Config::default()).map_err(|e| watch_error(dir, e))?;
    watcher
        .watch_through_link(dir)
        .map_err(|e| watch_error(dir, e))?;
    Ok(watcher)
}

pub(super) fn watch_error(dir: &Path, e: notify::Error) -> DropError {
    if let Some(limit) = inotify_limit(&e) {
        return DropError::InotifyLimit {
            dir: dir.to_path_buf(),
            setting: limit.setting,
            suggested: limit.suggested,
            os: limit.os,
        };
    }
    match &e.kind {
        notify::ErrorKind::Io(io) => DropError::Watch {
            dir: dir.to_path_buf(),
            reason: io.to_string(),
        },
        notify::ErrorKind::PathNotFound => DropError::Watch {
            dir: dir.to_path_buf(),
            reason: "the folder does not exist".to_string(),
        },
        _ => DropError::Watch {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        },
    }
}

/// The event loop's deadlines.
struct Deadlines {
    /// The next check of the candidates; `None` while there are none.
    next_check: Option<Instant>,
    /// When to make and watch the vanished folder again; `None` while it is watched.
    recreate_at: Option<Instant>,
    /// The last try to watch it again failed: the next failure is logged at DEBUG only.
    recreate_failed: bool,
    /// The next periodic rescan.
    next_rescan: Instant,
    /// The next check that the folder's path leads to the directory watched.
    next_path_check: Instant,
}

/// What one turn of the event loop leaves to do about the folder as a whole.
#[derive(Debug, Default, Clone, Copy)]
struct Turn {
    /// Events were lost (overflow, watcher error, the folder watched again).
    events_lost: bool,
    /// [`DropWatcher::rescan`](super::DropWatcher::rescan) was called.
    requested: bool,
    /// The periodic rescan is due.
    periodic: bool,
    /// The folder itself was deleted or renamed away.
    folder_lost: bool,
    /// The folder's path leads to another directory now (a symbolic link pointed elsewhere).
    swapped: bool,
}

impl Turn {
    /// The rescans to make, in order; the periodic one only when no other is made.
    fn rescans(self) -> impl Iterator<Item = Rescan> {
        [
            self.events_lost.then_some(Rescan::EventsLost),
            self.requested.then_some(Rescan::Requested),
            (self.periodic && !self.events_lost && !self.requested).then_some(Rescan::Periodic),
        ]
        .into_iter()
        .flatten()
    }
}

/// The task behind a [`DropWatcher`](super::DropWatcher).
pub(super) struct WatchTask {
    pub(super) folder: Folder,
    pub(super) events: mpsc::Receiver<notify::Result<Event>>,
    /// Kept to make a new watch if the folder vanishes and comes back.
    pub(super) events_tx: mpsc::Sender<notify::Result<Event>>,
    pub(super) overflow: Arc<AtomicBool>,
    pub(super) rescan: Arc<Notify>,
    /// Files whose claim failed, to be checked and sent again.
    pub(super) rechecks: mpsc::UnboundedReceiver<PathBuf>,
    /// `None` while the folder is missing.
    pub(super) watcher: Option<DirWatcher>,
    /// What the folder's path led to when it was watched.
    pub(super) identity: Option<Identity>,
    /// While an inotify limit leaves the folder without a watch: the limit's message. The
    /// folder is then listed every [`LIMITED_RETRY`] instead, and a watch tried again.
    pub(super) limited: Option<String>,
}

impl WatchTask {
    pub(super) async fn run(mut self) {
        if self.run_until_receiver_gone().await.is_err() {
            tracing::debug!(app = %self.folder.app, "drop folder watcher stops: nobody receives ready files");
        }
    }

    async fn run_until_receiver_gone(&mut self) -> Result<(), ReceiverGone> {
        let interval = check_interval(self.folder.settle);
        let mut deadlines = Deadlines {
            next_check: None,
            recreate_at: None,
            recreate_failed: false,
            next_rescan: Instant::now() + RESCAN_EVERY,
            next_path_check: Instant::now() + PATH_CHECK,
        };
        if let Some(limit) = &self.limited {
            self.folder
                .show_unwatched(Some(&unwatched_cause(limit)), LIMITED_RETRY);
            deadlines.recreate_at = Some(Instant::now() + LIMITED_RETRY);
        }
        if !self.folder.scan(Rescan::EventsLost).await {
            self.lose_folder(&mut deadlines.recreate_at);
        }
        loop {
            deadlines.next_check = match deadlines.next_check {
                _ if self.folder.candidates.is_empty() => None,
                None => Some(Instant::now() + interval),
                some => some,
            };
            let mut turn = self.next_turn(&mut deadlines).await?;
            if self.overflow.swap(false, Ordering::AcqRel) {
                tracing::debug!(app = %self.folder.app, "file event queue full; listing the folder again");
                self.discard_queued_events();
                turn.events_lost = true;
            }
            if self.watcher.is_none() && self.limited.is_none() {
                continue;
            }
            if turn.folder_lost {
                self.lose_folder(&mut deadlines.recreate_at);
                continue;
            }
            if turn.swapped {
                turn.events_lost = self.follow_swap(&mut deadlines);
                if self.watcher.is_none() {
                    continue;
                }
            }
            for why in turn.rescans() {
                if !self.folder.scan(why).await {
                    self.lose_folder(&mut deadlines.recreate_at);
                    break;
                }
            }
        }
    }

    /// Waits for the first of an event, a requested rescan, a recheck or a deadline, and
    /// handles it; what is left to do about the folder as a whole comes back in the [`Turn`].
    async fn next_turn(&mut self, deadlines: &mut Deadlines) -> Result<Turn, ReceiverGone> {
        let mut turn = Turn::default();
        tokio::select! {
            Some(res) = self.events.recv() => self.on_event(res, deadlines, &mut turn),
            () = self.rescan.notified() => turn.requested = true,
            Some(path) = self.rechecks.recv() => {
                if self.watcher.is_some() {
                    self.folder.recheck(path);
                    deadlines.next_check = Some(Instant::now());
                }
            }
            () = sleep_until(Some(deadlines.next_rescan)) => {
                deadlines.next_rescan = Instant::now() + RESCAN_EVERY;
                turn.periodic = true;
            }
            () = sleep_until(deadlines.next_check), if deadlines.next_check.is_some() => {
                deadlines.next_check = None;
                self.folder.check_candidates().await?;
            }
            () = sleep_until(deadlines.recreate_at), if deadlines.recreate_at.is_some() => {
                deadlines.recreate_at = None;
                turn.events_lost = self.try_watch_again(deadlines);
            }
            () = sleep_until(Some(deadlines.next_path_check)), if self.watcher.is_some() => {
                deadlines.next_path_check = Instant::now() + PATH_CHECK;
                turn.swapped = self.leads_elsewhere().await;
            }
        }
        Ok(turn)
    }

    /// Whether the folder's path leads to a directory other than the one watched now (a
    /// missing one is left to the watch's own events and the rescans).
    async fn leads_elsewhere(&self) -> bool {
        let dir = self.folder.dir.clone();
        let now = crate::blocking::run(move || Ok::<_, std::io::Error>(identity(&dir))).await;
        matches!(now, Ok(Some(now)) if Some(now) != self.identity)
    }

    /// The folder's path leads to another directory (a symbolic link pointed elsewhere): what
    /// was known of the old one is forgotten and the new one is watched at once. True when it
    /// is watched (its files are then listed as after lost events).
    fn follow_swap(&mut self, deadlines: &mut Deadlines) -> bool {
        tracing::info!(
            app = %self.folder.app,
            drop_dir = %self.folder.dir.display(),
            "the drop folder's path leads to another directory now; watching that one"
        );
        self.forget_all();
        self.watcher = None;
        self.try_watch_again(deadlines)
    }

    /// Forgets every file known in the folder (it is another folder now, or none).
    fn forget_all(&mut self) {
        let known: Vec<PathBuf> = (self.folder.candidates.keys())
            .chain(self.folder.sent.iter())
            .cloned()
            .collect();
        for path in known {
            self.folder.forget(&path);
        }
        self.folder.warned.clear();
    }

    /// Applies one event's hints to the candidates (one renamed in is checked at once) and
    /// notes whether events were lost or the folder itself went away.
    fn on_event(&mut self, res: notify::Result<Event>, deadlines: &mut Deadlines, turn: &mut Turn) {
        match res {
            Ok(event) => {
                let reading = read_event(&event, &self.folder.dir);
                for (path, hint) in reading.hints {
                    if self.folder.apply(path, hint) {
                        deadlines.next_check = Some(Instant::now());
                    }
                }
                turn.events_lost = reading.rescan;
                turn.folder_lost = reading.folder_lost;
            }
            Err(e) => {
                tracing::warn!(app = %self.folder.app, drop_dir = %self.folder.dir.display(), "file watch error: {e}; listing the folder again");
                turn.events_lost = true;
            }
        }
    }

    /// Makes the vanished folder and watches it again. True when it is watched again (events
    /// were lost meanwhile); otherwise the next try is set [`RECREATE_RETRY`] from now, and only
    /// the first failure in a row is logged at ERROR.
    fn try_watch_again(&mut self, deadlines: &mut Deadlines) -> bool {
        match self.watch_again() {
            Ok(()) => {
                tracing::info!(app = %self.folder.app, drop_dir = %self.folder.dir.display(), "drop folder watched again");
                if self.limited.take().is_some() {
                    self.folder.show_unwatched(None, LIMITED_RETRY);
                }
                deadlines.recreate_failed = false;
                true
            }
            // Listed on a timer meanwhile: true, so that this turn lists it.
            Err(e @ DropError::InotifyLimit { .. }) => {
                if self.limited.is_none() {
                    tracing::warn!(app = %self.folder.app, "{e}; the drop folder is listed every {} s instead, until a watch can be had", LIMITED_RETRY.as_secs());
                    self.folder
                        .show_unwatched(Some(&unwatched_cause(&e.to_string())), LIMITED_RETRY);
                    self.limited = Some(e.to_string());
                }
                deadlines.recreate_at = Some(Instant::now() + LIMITED_RETRY);
                true
            }
            Err(e) => {
                if deadlines.recreate_failed {
                    tracing::debug!(app = %self.folder.app, "{e}");
                } else {
                    tracing::error!(app = %self.folder.app, "{e}; trying again every {}s", RECREATE_RETRY.as_secs());
                }
                deadlines.recreate_failed = true;
                deadlines.recreate_at = Some(Instant::now() + RECREATE_RETRY);
                false
            }
        }
    }

    /// After an overflow, the events still queued are older than the ones lost: a write among
    /// them whose close was lost would make its file wait for a close forever. The listing that
    /// follows sees the folder as it is now, so they are dropped (at most one queue's worth, so
    /// that a steady stream of new events cannot keep this going).
    fn discard_queued_events(&mut self) {
        for _ in 0..EVENT_QUEUE {
            if self.events.try_recv().is_err() {
                break;
            }
        }
    }

    /// The folder was deleted or renamed away: its watch is worthless, so drop it and make the
    /// folder again after a grace period.
    fn lose_folder(&mut self, recreate_at: &mut Option<Instant>) {
        tracing::error!(
            app = %self.folder.app,
            drop_dir = %self.folder.dir.display(),
            "the drop folder was removed or renamed; it will be created and watched again in {}s",
            RECREATE_GRACE.as_secs()
        );
        self.watcher = None;
        self.forget_all();
        *recreate_at = Some(Instant::now() + RECREATE_GRACE);
    }

    fn watch_again(&mut self) -> Result<(), DropError> {
        prepare(&self.folder.dir)?;
        // Taken before the watch: a swap in between shows as a mismatch (one rewatch too many).
        self.identity = identity(&self.folder.dir);
        let watcher = start_watch(
            &self.folder.dir,
            self.events_tx.clone(),
            self.overflow.clone(),
        )?;
        self.watcher = Some(watcher);
        Ok(())
    }
}

/// What the board says of a drop folder an inotify limit left without a watch.
pub(super) fn unwatched_cause(limit: &str) -> String {
    format!(
        "no inotify watch, listed every {} s instead: {limit}",
        LIMITED_RETRY.as_secs()
    )
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}
