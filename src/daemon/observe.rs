//! What follows the lanes' events and outcomes: the systemd status line, the metrics, the
//! hooks, and a watched tree's remembered digest.

use super::*;

/// What follows every recorded outcome: the metrics, and the app's `on_outcome` hook.
/// Hooks are delivered at least once: a note naming the job is written before its outcome is
/// recorded and removed once its hook is delivered ([`crate::hooks::Pending`]), so a crash
/// anywhere in between delivers it at the next start ([`AfterOutcome::deliver_left`]).
pub(super) struct AfterOutcome {
    pub(super) metrics: Arc<Metrics>,
    pub(super) hooks: Arc<Hooks>,
    /// The configuration in force (a reload replaces it), for the hooks.
    pub(super) config: std::sync::RwLock<Config>,
    /// The notes of hooks not yet delivered.
    pub(super) pending: crate::hooks::Pending,
}

impl AfterOutcome {
    /// `state_dir`: where the notes of hooks not yet delivered are kept.
    pub(super) fn new(
        metrics: Arc<Metrics>,
        hooks: Arc<Hooks>,
        config: &Config,
        state_dir: &std::path::Path,
    ) -> AfterOutcome {
        AfterOutcome {
            metrics,
            hooks,
            pending: crate::hooks::Pending::new(state_dir),
            config: std::sync::RwLock::new(config.clone()),
        }
    }

    /// The note of a job whose outcome is about to be recorded, when its app has a hook.
    /// Blocking.
    pub(super) fn note_for(&self, job: &Job) -> Option<crate::hooks::PendingNote> {
        let hooked = self
            .config
            .read()
            .is_ok_and(|config| hook_for(&config, &job.app).is_some());
        if !hooked {
            return None;
        }
        match self.pending.note(&job.id, &job.app) {
            Ok(note) => Some(note),
            Err(e) => {
                tracing::warn!(app = %job.app, job = %job.id, "cannot write the hook's note (a crash before the hook is delivered would lose it): {e}");
                None
            }
        }
    }

    /// Metrics and the hook for a recorded outcome; `note` goes once the hook is delivered.
    pub(super) fn done(&self, entry: &HistoryEntry, note: Option<crate::hooks::PendingNote>) {
        self.metrics.record_outcome(entry);
        match self.config.read() {
            Ok(config) => self
                .hooks
                .deliver(hook_for(&config, &entry.app), entry, note),
            Err(_) => drop(note),
        }
    }

    /// Delivers the hooks that a process which died left undelivered: the notes of jobs that
    /// have left the spool, from their history lines. A job still in the spool has its
    /// outcome recorded (and its hook delivered) by the recovery. Blocking.
    pub(super) fn deliver_left(&self, outcomes: &Outcomes, spool: &Spool) {
        for note in self.pending.left() {
            if spool.job_dir(&note.job).exists() {
                continue;
            }
            match outcomes.entry_of(&note.job) {
                Ok(Some(entry)) => {
                    tracing::info!(app = %note.app, job = %note.job, "delivering the outcome hook left undelivered by a process that stopped");
                    self.hooks.deliver(
                        self.config
                            .read()
                            .ok()
                            .and_then(|c| hook_for(&c, &entry.app).cloned())
                            .as_ref(),
                        &entry,
                        Some(note),
                    );
                }
                Ok(None) => {
                    tracing::warn!(app = %note.app, job = %note.job, "a hook note names a job with no history line; removed");
                    note.done();
                }
                Err(e) => {
                    tracing::warn!(app = %note.app, job = %note.job, "cannot read the history for a hook note: {e}")
                }
            }
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
        let note = self.after.note_for(job);
        match self.outcomes.record(job, keep_done) {
            Ok(entry) => self.after.done(&entry, note),
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
        let line = status_line(
            self.apps.load(std::sync::atomic::Ordering::Relaxed),
            &active,
            self.metrics.pending_total(),
        );
        let line = crate::service::with_database(line, self.metrics.database_down_since());
        self.notifier.status(&line);
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
