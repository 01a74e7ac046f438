//! The task behind a [`TreeWatcher`](super::TreeWatcher): it watches the tree until the root is
//! lost, then looks for the root on a timer and watches it again when it is back.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::{MISSING_CHECK, RETRY_CHECK, ROOT_CHECK, Shared, StopOnDrop, TreeState, lock};
use crate::blocking::BlockingError;
use crate::source::watch::{
    Changes, DirectoryWatches, EventStream, RulesSource, UNWATCHED_CHECK, WatchError, root_identity,
};

/// What the watcher task needs to watch the root again.
pub(super) struct Rewatch {
    pub(super) app: String,
    /// The root, as an absolute path.
    pub(super) root: PathBuf,
    pub(super) source: RulesSource,
    pub(super) poll: Option<Duration>,
    pub(super) give_up: Option<Duration>,
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
pub(super) async fn run(
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
    let mut unwatched = tokio::time::interval_at(
        tokio::time::Instant::now() + UNWATCHED_CHECK,
        UNWATCHED_CHECK,
    );
    unwatched.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        publish_unwatched(&watches, shared);
        let partial = watches.unwatched().is_some();
        tokio::select! {
            _ = unwatched.tick(), if partial => {
                let polled = tokio::task::spawn_blocking(move || {
                    let changes = watches.poll_unwatched();
                    (watches, changes)
                })
                .await;
                match polled {
                    Ok((back, changes)) => {
                        watches = back;
                        shared.record(&watches, &changes);
                    }
                    Err(e) => return Lost::Failed(format!("the source directory watcher failed: {e}")),
                }
            }
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

/// Shows the directories an inotify limit left without a watch in the tree's state (so on the
/// board and in `status`), or that there are none any more.
fn publish_unwatched(watches: &DirectoryWatches, shared: &Shared) {
    let partial = watches.unwatched().map(|(count, example, limit)| {
        let cause = format!(
            "{count} director{} without an inotify watch (e.g. {}), listed every {} s instead: \
             {limit}",
            if count == 1 { "y" } else { "ies" },
            example.display(),
            UNWATCHED_CHECK.as_secs()
        );
        (count, cause)
    });
    shared
        .state
        .send_if_modified(|state| match (&*state, partial) {
            (TreeState::Watched, Some((unwatched, cause))) => {
                *state = TreeState::Partial {
                    root: watches.root().to_path_buf(),
                    unwatched,
                    cause,
                    next_check: SystemTime::now() + UNWATCHED_CHECK,
                };
                true
            }
            (TreeState::Partial { unwatched: was, .. }, Some((unwatched, cause))) => {
                let changed = *was != unwatched;
                if changed {
                    *state = TreeState::Partial {
                        root: watches.root().to_path_buf(),
                        unwatched,
                        cause,
                        next_check: SystemTime::now() + UNWATCHED_CHECK,
                    };
                }
                changed
            }
            (TreeState::Partial { .. }, None) => {
                *state = TreeState::Watched;
                true
            }
            _ => false,
        });
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
            crate::blocking::run(move || DirectoryWatches::start(&app, &root, source, poll)).await;
        let (reason, cause, pause) = match attempt {
            Ok(watched) => {
                if shown.is_some() {
                    tracing::info!(app = %again.app, root = %again.root.display(), "the source directory is back; watching it again");
                } else {
                    tracing::info!(app = %again.app, root = %again.root.display(), "the source directory was {how}; watching the one there now");
                }
                return Some(watched);
            }
            Err(e) => not_watched_because(e),
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

/// Why a lost root cannot be watched yet: the reason (for the message when the wait gives up),
/// the cause shown meanwhile (with what happens next), and how long to wait before looking
/// again.
fn not_watched_because(e: BlockingError<WatchError>) -> (String, String, Duration) {
    match e {
        BlockingError::Failed(WatchError::NotFound { .. }) => (
            "removed".to_string(),
            "removed, waiting for it to come back".to_string(),
            MISSING_CHECK,
        ),
        BlockingError::Failed(WatchError::NotADirectory { .. }) => (
            "replaced by something that is not a directory".to_string(),
            "replaced by something that is not a directory, waiting for a directory".to_string(),
            MISSING_CHECK,
        ),
        BlockingError::Failed(e) => (e.to_string(), format!("{e}; trying again"), RETRY_CHECK),
        BlockingError::Crashed(e) => {
            let e = format!("the source directory watcher failed: {e}");
            (e.clone(), format!("{e}; trying again"), RETRY_CHECK)
        }
    }
}
