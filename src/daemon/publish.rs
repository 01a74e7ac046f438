//! Fleet mode: every job made on this node (a claimed drop, an HTTP upload, a packed tree)
//! becomes the fleet's by [`Store::add`] once it is committed in the local spool. Only then
//! is it acknowledged (the upload's 202, the claim's end). If the store cannot take it (the
//! database is down), the job stays in the local spool, is shown on the board as a wait with
//! its reason, and is tried again on a timer (from the fleet's poll) until it is taken: never
//! lost, and never twice (`add` changes nothing for a job id it has). The local job directory
//! stays until the job's outcome is placed here (`fleet_place.rs`): it holds the dropped file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::live::{Board, WaitKind};
use crate::queue::spool::{ARCHIVE_NAME, Job, Payload, Spool};
use crate::queue::store::{Store, StoreError};

/// The longest wait between two tries of a job the store could not take.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// A job committed locally that the fleet's store has not taken yet.
#[derive(Debug, Clone)]
struct Unpublished {
    app: String,
    tries: u32,
    next: tokio::time::Instant,
}

/// Hands the jobs made on this node to the fleet's store. Shared by the claims, the HTTP
/// intake, the watched trees and the fleet's poll.
#[derive(Debug)]
pub(crate) struct Publisher {
    store: Arc<dyn Store>,
    spool: Spool,
    live: Arc<Board>,
    waiting: Mutex<BTreeMap<String, Unpublished>>,
}

/// The wait after the `tries`-th failure: 1 s, doubling, at most [`RETRY_MAX`].
fn backoff(tries: u32) -> Duration {
    Duration::from_secs(1u64 << tries.saturating_sub(1).min(5)).min(RETRY_MAX)
}

/// The archive the store gets with a job: the spool's copy, for an archive job.
fn archive_of(spool: &Spool, job: &Job) -> Option<PathBuf> {
    match job.payload {
        Payload::Archive { .. } => Some(spool.job_dir(&job.id).join(ARCHIVE_NAME)),
        Payload::Url { .. } => None,
    }
}

impl Publisher {
    pub(crate) fn new(store: Arc<dyn Store>, spool: Spool, live: Arc<Board>) -> Arc<Publisher> {
        Arc::new(Publisher {
            store,
            spool,
            live,
            waiting: Mutex::new(BTreeMap::new()),
        })
    }

    /// The fleet's store.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Makes a job committed in the local spool the fleet's, with this node as its origin.
    /// Off the runtime. On failure the job stays in the spool, waits on the board with the
    /// reason, and is tried again by [`Publisher::retry_due`]; the error says why.
    pub(crate) async fn publish(&self, job: Job) -> Result<Job, StoreError> {
        let (id, app) = (job.id.clone(), job.app.clone());
        let archive = archive_of(&self.spool, &job);
        let store = self.store.clone();
        let added = crate::blocking::run(move || {
            let mut job = job;
            // The fleet's arrival number comes from the store, not this node's spool.
            job.seq = None;
            store.add(&mut job, archive.as_deref()).map(|()| job)
        })
        .await;
        match added {
            Ok(job) => {
                self.published(&id, &app);
                Ok(job)
            }
            Err(crate::blocking::BlockingError::Failed(e)) => {
                self.failed(&id, &app, &e.to_string());
                Err(e)
            }
            Err(crate::blocking::BlockingError::Crashed(e)) => {
                let e = StoreError::Unavailable(format!("the publishing task crashed: {e}"));
                self.failed(&id, &app, &e.to_string());
                Err(e)
            }
        }
    }

    /// Whether `id` still waits to be published (the HTTP intake answers a retried upload of
    /// such a job only once it is published).
    pub(crate) fn is_waiting(&self, id: &str) -> bool {
        self.waiting.lock().is_ok_and(|w| w.contains_key(id))
    }

    /// Tries `id` again now if it waits to be published. `Ok` when the store has it.
    pub(crate) async fn publish_waiting(&self, id: &str) -> Result<(), StoreError> {
        if !self.is_waiting(id) {
            return Ok(());
        }
        let job = self.load_local(id).await?;
        self.publish(job).await.map(|_| ())
    }

    async fn load_local(&self, id: &str) -> Result<Job, StoreError> {
        let (spool, wanted) = (self.spool.clone(), id.to_string());
        crate::blocking::run(move || spool.load(&wanted))
            .await
            .map_err(|e| StoreError::Record {
                id: id.to_string(),
                reason: e.to_string(),
            })
    }

    /// Tries again every job whose backoff is over (called on the fleet's poll).
    pub(crate) async fn retry_due(&self) {
        let now = tokio::time::Instant::now();
        let due: Vec<String> = match self.waiting.lock() {
            Ok(w) => w
                .iter()
                .filter(|(_, u)| u.next <= now)
                .map(|(id, _)| id.clone())
                .collect(),
            Err(_) => return,
        };
        for id in due {
            match self.load_local(&id).await {
                Ok(job) => {
                    let _ = self.publish(job).await;
                }
                Err(e) => {
                    // The job left the spool (removed by hand): nothing is left to publish.
                    tracing::warn!(job = %id, "cannot publish the job: {e}; it is no longer tried");
                    self.forget(&id);
                }
            }
        }
    }

    /// At start: every unfinished job of the local spool that the store does not know (a
    /// publication a stop or an outage interrupted) is published, or waits to be.
    pub(crate) async fn adopt_unpublished(&self) {
        let (spool, store) = (self.spool.clone(), self.store.clone());
        let missing = crate::blocking::run(move || {
            let mut missing = Vec::new();
            for job in spool.jobs()?.into_iter().flatten() {
                if job.is_done() {
                    continue;
                }
                match store.load(&job.id) {
                    Ok(_) => {}
                    Err(StoreError::Missing(_)) => missing.push((job, None)),
                    Err(e) => missing.push((job, Some(e.to_string()))),
                }
            }
            Ok::<_, crate::queue::spool::SpoolError>(missing)
        })
        .await;
        let missing = match missing {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("cannot list the spool for jobs to publish: {e}");
                return;
            }
        };
        for (job, unreachable) in missing {
            match unreachable {
                None => {
                    tracing::info!(app = %job.app, job = %job.id, "publishing a job made before the last stop");
                    let _ = self.publish(job).await;
                }
                Some(cause) => self.failed(&job.id, &job.app, &cause),
            }
        }
    }

    fn published(&self, id: &str, app: &str) {
        let was = self.waiting.lock().ok().and_then(|mut w| w.remove(id));
        if let Some(was) = was {
            tracing::info!(
                app,
                job = id,
                failed_tries = was.tries,
                "published to the fleet's store"
            );
        }
        self.live.clear(app, WaitKind::Publish, id);
    }

    fn forget(&self, id: &str) {
        let was = self.waiting.lock().ok().and_then(|mut w| w.remove(id));
        if let Some(was) = was {
            self.live.clear(&was.app, WaitKind::Publish, id);
        }
    }

    fn failed(&self, id: &str, app: &str, cause: &str) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        let tries = waiting.get(id).map_or(0, |u| u.tries) + 1;
        let delay = backoff(tries);
        waiting.insert(
            id.to_string(),
            Unpublished {
                app: app.to_string(),
                tries,
                next: tokio::time::Instant::now() + delay,
            },
        );
        drop(waiting);
        let retry_at = crate::queue::spool::now() + delay.as_secs();
        let new_cause = self
            .live
            .wait(app, WaitKind::Publish, id, cause, Some(retry_at));
        if new_cause {
            tracing::warn!(
                app,
                job = id,
                "cannot hand the job to the fleet's store: {cause}; it stays in this node's \
                 spool and is tried again in {}s (backing off to every {}s)",
                delay.as_secs(),
                RETRY_MAX.as_secs()
            );
        }
    }
}

/// A watched tree's job in fleet mode: published, then followed in the store until it is
/// finished (by whichever node drives it). `None` when this node stops first.
pub(super) async fn until_finished(
    publisher: Arc<Publisher>,
    job: Job,
    poll: Duration,
    mut stop: crate::shutdown::Shutdown,
) -> Option<crate::queue::spool::JobState> {
    let id = job.id.clone();
    // A failure leaves the job waiting to be published: the fleet's poll tries again.
    let _ = publisher.publish(job).await;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.requested() => return None,
        }
        if publisher.is_waiting(&id) {
            continue;
        }
        let (store, wanted) = (publisher.store.clone(), id.clone());
        if let Ok(job) = crate::blocking::run(move || store.load(&wanted)).await
            && job.is_done()
        {
            return Some(job.state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_publication_backs_off_from_one_second_to_thirty() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
