//! What follows the lanes' events and outcomes: the systemd status line, the metrics, the
//! hooks, and a watched tree's remembered digest.

use super::*;

/// What follows every recorded outcome: the metrics, and the app's `on_outcome` hook.
/// Hooks are delivered at least once: a crash after the hook but before the job leaves the
/// spool runs it again at the next start.
pub(super) struct AfterOutcome {
    pub(super) metrics: Arc<Metrics>,
    pub(super) hooks: Arc<Hooks>,
    /// The configuration in force (a reload replaces it), for the hooks.
    pub(super) config: std::sync::RwLock<Config>,
}

impl AfterOutcome {
    pub(super) fn done(&self, entry: &HistoryEntry) {
        self.metrics.record_outcome(entry);
        if let Ok(config) = self.config.read()
            && let Some(hook) = hook_for(&config, &entry.app)
        {
            self.hooks.notify(hook, entry);
        }
    }
}

pub(super) struct OutcomeFinisher {
    pub(super) outcomes: Arc<Outcomes>,
    pub(super) after: Arc<AfterOutcome>,
    pub(super) state_dir: PathBuf,
}

/// A watched tree's deployed digest is written before its job leaves the spool, so that no
/// crash between the two makes the same tree deploy again.
pub(super) fn remember_tree(state_dir: &std::path::Path, job: &Job) {
    if let Err(e) = redeploy::remember_success(state_dir, job) {
        tracing::warn!(app = %job.app, job = %job.id, "cannot remember the deployed tree's digest: {e}");
    }
}

impl Finisher for OutcomeFinisher {
    fn finish(&self, job: &Job, keep_done: usize) {
        remember_tree(&self.state_dir, job);
        match self.outcomes.record(job, keep_done) {
            Ok(entry) => self.after.done(&entry),
            Err(e) => tracing::error!(
                app = %job.app,
                job = %job.id,
                "cannot record the outcome; the job stays in the spool and is recorded at the next start: {e}"
            ),
        }
    }
}

/// Keeps what each app is doing, for systemd's STATUS= line ("2 apps; deploying my-app
/// (building); 1 pending"), and passes every event on to the log and the metrics.
pub(super) struct StatusBoard {
    pub(super) inner: Arc<dyn Observer>,
    pub(super) notifier: Notifier,
    pub(super) metrics: Arc<Metrics>,
    pub(super) apps: std::sync::atomic::AtomicUsize,
    pub(super) active: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl StatusBoard {
    pub(super) fn publish(&self) {
        if !self.notifier.enabled() {
            return;
        }
        let active: Vec<(String, String)> = self
            .active
            .lock()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        self.notifier.status(&status_line(
            self.apps.load(std::sync::atomic::Ordering::Relaxed),
            &active,
            self.metrics.pending_total(),
        ));
    }
}

impl Observer for StatusBoard {
    fn lane(&self, app: &str, in_flight: usize, pending: usize) {
        self.inner.lane(app, in_flight, pending);
    }

    fn event(&self, job: &Job, event: &Event<'_>) {
        self.inner.event(job, event);
        let doing = match event {
            Event::Step(step) => Some(step.to_string()),
            Event::Status { status } => Some((*status).to_string()),
            Event::Checking { phase, .. } => Some(format!("verify ({phase})")),
            Event::RollingBack { to_ref, .. } => Some(format!("rolling back to {to_ref}")),
            Event::NeedsAttention { .. } => Some(crate::service::NEEDS_ATTENTION.to_string()),
            Event::Checked { .. } | Event::Finished => None,
            _ => return,
        };
        if let Ok(mut active) = self.active.lock() {
            match doing {
                Some(d) => active.insert(job.app.clone(), d),
                // An app that needs attention says so until its next job starts.
                None if active
                    .get(&job.app)
                    .is_some_and(|d| d == crate::service::NEEDS_ATTENTION) =>
                {
                    None
                }
                None => active.remove(&job.app),
            };
        }
        self.publish();
    }
}
