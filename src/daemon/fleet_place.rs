//! Fleet mode, on the node where a job came in (its origin): once the fleet has finished the
//! job (whichever node drove it), the dropped file moves to `done/` or `failed/` here (its
//! reason file first), with the history entry the store holds; a packed tree's digest is
//! remembered; the local history gets its line; the local job directory goes; and the store
//! is told the job is placed. Every step is safe to repeat after a crash (the steps are
//! [`Outcomes::record_given`]'s, and `mark_placed` comes last). A node that was down
//! meanwhile does it when it is back: the deployment went on elsewhere.
//!
//! The same poll (every `[cluster] poll`, and on a NOTIFY hint) tries again the jobs that
//! wait to be published ([`Publisher::retry_due`]) and shows whether the fleet's database is
//! reachable: on the board (`status`), in the metrics and in the systemd status line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::publish::Publisher;
use crate::fleet::PgStore;
use crate::live::{Board, WaitKind};
use crate::outcome::{HistoryEntry, OutcomeError, Outcomes};
use crate::queue::spool::Spool;
use crate::queue::spool::{Job, Payload};
use crate::queue::store::{Store, StoreError};

/// What placing needs of the fleet's store beyond the [`Store`] trait.
pub(crate) trait FleetOutcomes: Send + Sync {
    /// The finished jobs this node originated whose file it has not placed yet: each job's
    /// record and the history entry its driver recorded.
    fn unplaced(&self) -> Result<Vec<(Job, serde_json::Value)>, StoreError>;
    /// The job's file is placed (done/ or failed/, history line written here).
    fn mark_placed(&self, id: &str) -> Result<(), StoreError>;
    /// Since when the database has been unreachable, `None` while it answers.
    fn down_since(&self) -> Option<SystemTime>;
    /// This node is alive (`status` shows when each node was last seen).
    fn heartbeat(&self) -> Result<(), StoreError>;
}

impl FleetOutcomes for PgStore {
    fn unplaced(&self) -> Result<Vec<(Job, serde_json::Value)>, StoreError> {
        let node = Store::node(self).to_string();
        Ok(PgStore::unplaced(self, &node)?
            .into_iter()
            .map(|u| (u.job, u.entry))
            .collect())
    }

    fn mark_placed(&self, id: &str) -> Result<(), StoreError> {
        PgStore::mark_placed(self, id)
    }

    fn down_since(&self) -> Option<SystemTime> {
        PgStore::down_since(self)
    }

    fn heartbeat(&self) -> Result<(), StoreError> {
        let node = Store::node(self).to_string();
        let info =
            serde_json::json!({ "pid": std::process::id(), "version": env!("CARGO_PKG_VERSION") });
        PgStore::heartbeat(self, &node, &info)
    }
}

/// The `keep_done` of each configured app (updated on reload).
pub(crate) type KeepDone = Arc<RwLock<HashMap<String, usize>>>;

/// What a placement pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Jobs placed (or found placed by an earlier pass) and marked so in the store.
    pub(crate) placed: Vec<String>,
    /// Jobs left for the next pass: their local directory is busy, or a step failed.
    pub(crate) left: Vec<String>,
}

/// One pass: places every finished job this node originated. Blocking.
pub(crate) fn place_finished(
    fleet: &dyn FleetOutcomes,
    outcomes: &Outcomes,
    spool: &Spool,
    state_dir: &std::path::Path,
    keep_done: &dyn Fn(&str) -> usize,
) -> Result<Placed, StoreError> {
    let mut done = Placed::default();
    for (job, entry) in fleet.unplaced()? {
        let id = job.id.clone();
        match place_one(outcomes, spool, state_dir, keep_done, job, entry) {
            Ok(Some(_)) => match fleet.mark_placed(&id) {
                Ok(()) => done.placed.push(id),
                Err(e) => {
                    tracing::warn!(job = %id, "placed, but the store cannot be told yet: {e}");
                    done.left.push(id);
                }
            },
            Ok(None) => done.left.push(id),
            Err(e) => {
                tracing::warn!(job = %id, "cannot place the finished job's file yet: {e}");
                done.left.push(id);
            }
        }
    }
    Ok(done)
}

/// This node's working copies of jobs that have no dropped file to place (an upload, a packed
/// tree, a URL) and that the fleet has finished: they leave the local spool (a tree's digest
/// remembered first). A job whose directory is locked (driven here) is left alone. Blocking.
pub(crate) fn sweep_finished(store: &dyn Store, spool: &Spool, state_dir: &std::path::Path) {
    let Ok(jobs) = spool.jobs() else {
        return;
    };
    for job in jobs.into_iter().flatten() {
        let dropped = matches!(
            &job.payload,
            Payload::Archive {
                copied: false,
                tree_digest: None,
                ..
            }
        );
        if dropped {
            continue;
        }
        let Ok(Some(_lock)) = crate::lock::JobLock::try_acquire(&spool.job_dir(&job.id)) else {
            continue;
        };
        let Ok(fleets) = store.load(&job.id) else {
            continue;
        };
        if !fleets.is_done() {
            continue;
        }
        if let Err(e) = crate::source::redeploy::remember_success(state_dir, &fleets) {
            tracing::warn!(app = %job.app, job = %job.id, "cannot remember the deployed tree's digest: {e}");
            continue;
        }
        match spool.remove(&job.id) {
            Ok(()) => {
                tracing::debug!(app = %job.app, job = %job.id, "the fleet finished the job: its local copy is removed")
            }
            Err(e) => {
                tracing::warn!(app = %job.app, job = %job.id, "cannot remove the local copy of a finished job: {e}")
            }
        }
    }
}

/// Why one job could not be placed.
#[derive(Debug, thiserror::Error)]
enum PlaceError {
    #[error(transparent)]
    Outcome(#[from] OutcomeError),
    #[error("the store's history entry is unreadable: {0}")]
    Entry(serde_json::Error),
    #[error("cannot lock {}: {source}", dir.display())]
    Lock {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Places one job. `Ok(None)`: its local directory is busy (this node's lane records it
/// itself), try again later.
fn place_one(
    outcomes: &Outcomes,
    spool: &Spool,
    state_dir: &std::path::Path,
    keep_done: &dyn Fn(&str) -> usize,
    job: Job,
    entry: serde_json::Value,
) -> Result<Option<HistoryEntry>, PlaceError> {
    let dir = spool.job_dir(&job.id);
    let _lock = match crate::lock::JobLock::try_acquire(&dir) {
        Ok(Some(lock)) => Some(lock),
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(PlaceError::Lock { dir, source }),
    };
    let entry: HistoryEntry = serde_json::from_value(entry).map_err(PlaceError::Entry)?;
    if let Err(e) = crate::source::redeploy::remember_success(state_dir, &job) {
        tracing::warn!(app = %job.app, job = %job.id, "cannot remember the deployed tree's digest: {e}");
    }
    match outcomes.record_given(&job, entry.clone(), keep_done(&job.app)) {
        Ok(entry) => Ok(Some(entry)),
        Err(OutcomeError::Gone { .. }) => {
            // Nothing of it is left here (a state_dir wiped meanwhile): nothing to place.
            tracing::warn!(app = %job.app, job = %job.id, "the finished job has no directory on this node any more; nothing to place");
            Ok(Some(entry))
        }
        Err(e) => Err(e.into()),
    }
}

/// The fleet's poll on this node: placement, publication retries, the database's health.
pub(crate) struct FleetPoll {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) fleet: Arc<dyn FleetOutcomes>,
    pub(crate) publisher: Arc<Publisher>,
    pub(crate) outcomes: Arc<Outcomes>,
    pub(crate) spool: Spool,
    pub(crate) state_dir: PathBuf,
    pub(crate) keep_done: KeepDone,
    pub(crate) live: Arc<Board>,
    pub(crate) health: Arc<dyn Fn(Option<SystemTime>) + Send + Sync>,
    pub(crate) poll: Duration,
}

/// The subject of the database's wait on the board (app `""`: the node's own).
pub(crate) const DATABASE_SUBJECT: &str = "the fleet's database";

impl FleetPoll {
    /// Runs until `shutdown`: a pass every `poll`, and on every hint.
    pub(crate) async fn run(
        self,
        mut hints: Option<mpsc::Receiver<String>>,
        mut shutdown: crate::shutdown::Shutdown,
    ) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(_) = next_hint(&mut hints) => {}
                _ = shutdown.requested() => return,
            }
            self.pass().await;
        }
    }

    /// One pass.
    pub(crate) async fn pass(&self) {
        let fleet = self.fleet.clone();
        // The heartbeat is also the health probe: a call that fails sets `down_since`.
        let _ = crate::blocking::run(move || fleet.heartbeat()).await;
        let down = self.fleet.down_since();
        self.show_health(down);
        self.publisher.retry_due().await;
        let (store, fleet, outcomes, spool, state_dir, keep) = (
            self.store.clone(),
            self.fleet.clone(),
            self.outcomes.clone(),
            self.spool.clone(),
            self.state_dir.clone(),
            self.keep_done.clone(),
        );
        let placed = crate::blocking::run(move || {
            let keep_done = |app: &str| {
                keep.read()
                    .ok()
                    .and_then(|k| k.get(app).copied())
                    .unwrap_or(super::DEFAULT_KEEP_DONE)
            };
            let placed = place_finished(&*fleet, &outcomes, &spool, &state_dir, &keep_done);
            sweep_finished(&*store, &spool, &state_dir);
            placed
        })
        .await;
        match placed {
            Ok(p) if !p.placed.is_empty() => {
                tracing::info!(jobs = ?p.placed, "placed the files of jobs the fleet finished");
            }
            Ok(_) => {}
            Err(crate::blocking::BlockingError::Failed(StoreError::Unavailable(_))) => {}
            Err(e) => tracing::warn!("cannot look for finished jobs to place: {e}"),
        }
    }

    fn show_health(&self, down: Option<SystemTime>) {
        let node = self.store.node();
        match down {
            Some(since) => {
                let cause = format!(
                    "node {node} cannot reach the fleet's database since {}; jobs made here \
                     wait in the local spool, nothing is posted that cannot be recorded",
                    crate::outcome::rfc3339_utc(unix(since))
                );
                if self
                    .live
                    .wait("", WaitKind::Database, DATABASE_SUBJECT, &cause, None)
                {
                    tracing::warn!("{cause}");
                }
            }
            None => {
                if self.live.clear("", WaitKind::Database, DATABASE_SUBJECT) {
                    tracing::info!(node, "the fleet's database answers again");
                }
            }
        }
        (self.health)(down);
    }
}

/// The fleet's poll when `[cluster]` does not say.
const DEFAULT_POLL: Duration = Duration::from_secs(2);

impl super::Daemon {
    /// How often the fleet is looked at (`[cluster] poll`).
    pub(super) fn fleet_poll(&self) -> Duration {
        self.config
            .cluster
            .as_ref()
            .map_or(DEFAULT_POLL, |c| c.poll)
    }

    /// Fleet mode, before any job is recovered or claimed: jobs made here are published to
    /// `store` (claims, the HTTP intake, watched trees), and the fleet's poll starts
    /// (placement, publication retries, the database's health). Then the jobs a stop left
    /// unpublished are published.
    pub(super) async fn start_fleet(&mut self, pg: Arc<PgStore>) {
        let hints = Some(pg.listen());
        let shutdown = self.pipeline.wiring.shutdown.clone();
        let (store, fleet): (Arc<dyn Store>, Arc<dyn FleetOutcomes>) = (pg.clone(), pg);
        let publisher = Publisher::new(
            store.clone(),
            self.pipeline.spool.clone(),
            self.live.clone(),
        );
        if let Some(intake) = &self.intake {
            intake.set_publisher(publisher.clone());
        }
        self.publisher = Some(publisher.clone());
        let keep_done: HashMap<String, usize> = self
            .config
            .apps
            .iter()
            .map(|a| (a.name.clone(), a.keep_done))
            .collect();
        let (metrics, board, node) = (
            self.board.metrics.clone(),
            self.board.clone(),
            store.node().to_string(),
        );
        metrics.set_database(&node, None);
        let health = move |down: Option<SystemTime>| {
            let since = down.map(unix);
            if metrics.database_down_since() != since {
                metrics.set_database(&node, since);
                board.publish();
            }
        };
        let poll = FleetPoll {
            store,
            fleet,
            publisher: publisher.clone(),
            outcomes: self.pipeline.outcomes.clone(),
            spool: self.pipeline.spool.clone(),
            state_dir: self.config.state_dir.clone(),
            keep_done: Arc::new(RwLock::new(keep_done)),
            live: self.live.clone(),
            health: Arc::new(health),
            poll: self.fleet_poll(),
        };
        tokio::spawn(poll.run(hints, shutdown));
        publisher.adopt_unpublished().await;
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn next_hint(hints: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match hints {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
