//! Recording a finished job (see the [module docs](super) for the steps and their order), and
//! an archive refused before it became a job. Every step of [`Outcomes::record`] can be
//! repeated: the entry and the archive's destination are persisted in `outcome.json` before
//! anything is written for them, and the history's length before the line is appended.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::history::{append_history, file_len, find_job_line};
use super::place::{place, prune_done};
use super::reason::reason_text;
use super::{
    HistoryEntry, Outcome, OutcomeError, Outcomes, exists, file_label, human_duration, io_err,
    rfc3339_utc,
};
use crate::archive::inspect::Rejection;
use crate::queue::check::Verdict;
use crate::queue::spool::{ARCHIVE_NAME, Failure, Job, JobState, Payload, Step, compact_utc};
use crate::redact::{redact, redact_owned};
use crate::source::drop::DropLayout;

/// The progress record of an outcome being recorded, inside the job directory.
const PROGRESS_NAME: &str = "outcome.json";

/// What `outcome.json` holds while an outcome is being recorded.
#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    /// The line to write, fixed when recording began (so a re-run writes the same one).
    entry: HistoryEntry,
    /// The history file's length just before the line was appended: when set, the line may be
    /// there, at or after this offset.
    #[serde(default)]
    history_from: Option<u64>,
}

/// One job's outcome being recorded: its progress record and the file that keeps it.
struct Recording {
    path: PathBuf,
    progress: Progress,
}

impl Recording {
    /// The progress record an earlier run left in `job_dir`, or a new one (persisted before it
    /// is returned) with the entry decided now.
    /// `given`: the entry decided elsewhere (the fleet's store, by the node that drove the
    /// job), used instead of one decided now.
    fn resume_or_start(
        job: &Job,
        job_dir: &Path,
        given: Option<HistoryEntry>,
    ) -> Result<Recording, OutcomeError> {
        let path = job_dir.join(PROGRESS_NAME);
        let progress = match load_progress(&path)? {
            Some(progress) => progress,
            None => {
                let progress = Progress {
                    entry: given.unwrap_or_else(|| entry_for(job, now_ms())),
                    history_from: None,
                };
                save_progress(&path, &progress)?;
                progress
            }
        };
        Ok(Recording { path, progress })
    }

    fn save(&self) -> Result<(), OutcomeError> {
        save_progress(&self.path, &self.progress)
    }
}

/// Where a job's archive went: its drop folder, and the file in `done/` or `failed/` (`None`
/// when an earlier run moved it without saying where).
struct Placed {
    layout: DropLayout,
    dest: Option<PathBuf>,
}

impl Outcomes {
    /// Records the outcome of a finished job: moves its archive to `done/` or `failed/` in its
    /// drop folder (a reason file beside a failed one), appends its history line, logs it,
    /// prunes `done/` to the newest `keep_done` archives, and removes the job from the spool
    /// (see the [module docs](super) for the order). Returns the history entry.
    ///
    /// For an archive job the archive is expected to have been claimed (renamed) from the
    /// folder of `Payload::Archive::original`; a URL job has no file to move.
    ///
    /// Idempotent: called again after a crash at any point (or after it returned), it neither
    /// loses nor duplicates the file, and writes no second history line; it returns the entry
    /// decided the first time. With `keep_done` = 0, `done/` is emptied, so `moved_to` names a
    /// file already deleted.
    ///
    /// Blocking (call from `spawn_blocking`). Errors leave the job in the spool, ready for
    /// another try; a failure to prune `done/` is only logged.
    pub fn record(&self, job: &Job, keep_done: usize) -> Result<HistoryEntry, OutcomeError> {
        self.record_with(job, None, keep_done)
    }

    /// Like [`Outcomes::record`], with the history entry decided elsewhere: in fleet mode, the
    /// node that claimed a file places it after another node drove its job, with the entry the
    /// fleet's store holds (its `moved_to` set here). The job is the store's finished record.
    /// Idempotent like `record`.
    pub fn record_given(
        &self,
        job: &Job,
        mut entry: HistoryEntry,
        keep_done: usize,
    ) -> Result<HistoryEntry, OutcomeError> {
        // Where the file goes is this node's to decide (the driver moved no file of ours).
        entry.moved_to = None;
        self.record_with(job, Some(entry), keep_done)
    }

    fn record_with(
        &self,
        job: &Job,
        given: Option<HistoryEntry>,
        keep_done: usize,
    ) -> Result<HistoryEntry, OutcomeError> {
        refuse_unfinished(job)?;
        let job_dir = self.spool.job_dir(&job.id);
        if !exists(&job_dir)? {
            // Recorded already (the spool directory goes last): return what was written.
            return self.recorded_before(job, job_dir);
        }
        let mut recording = Recording::resume_or_start(job, &job_dir, given)?;
        let outcome = recording.progress.entry.outcome;

        // 1. The archive leaves the spool.
        let placed = self.move_archive(job, &mut recording)?;
        crash_point("move")?;

        // 2. The reason beside a failed archive: written by `place` before the archive moved
        // in. Only an archive moved by an older version, which wrote it after, may lack it.
        if let Some(placed) = &placed {
            write_missing_reason(job, &recording.progress.entry, placed)?;
        }

        // 3. The history line, once.
        let entry = self.append_once(&job.id, &mut recording)?;
        crash_point("history")?;

        // 4. The log event.
        log_entry(&entry, failed_step(job).as_deref());

        // 5. Retention in done/.
        if !matches!(outcome, Outcome::Failed | Outcome::Unhealthy)
            && let Some(placed) = &placed
        {
            self.prune_after(placed, keep_done, &entry);
        }

        // 6. The spool forgets the job.
        self.spool.remove(&job.id)?;
        Ok(entry)
    }

    /// The history entry that recording `job`'s outcome writes, decided now and persisted in
    /// the job's directory, so that a later [`Outcomes::record`] writes this very entry (the
    /// fleet's store takes it first). Blocking.
    pub fn entry_for_finished(&self, job: &Job) -> Result<HistoryEntry, OutcomeError> {
        refuse_unfinished(job)?;
        let job_dir = self.spool.job_dir(&job.id);
        if !exists(&job_dir)? {
            return self.recorded_before(job, job_dir);
        }
        Ok(Recording::resume_or_start(job, &job_dir, None)?
            .progress
            .entry)
    }

    /// The entry an earlier run wrote for `job`, whose spool directory `job_dir` is gone.
    fn recorded_before(&self, job: &Job, job_dir: PathBuf) -> Result<HistoryEntry, OutcomeError> {
        let history = self.history_path();
        match find_job_line(&history, &job.id, 0)? {
            Some(entry) => Ok(entry),
            None => Err(OutcomeError::Gone {
                job: job.id.clone(),
                app: job.app.clone(),
                file: file_label(job),
                job_dir,
                history,
            }),
        }
    }

    /// Step 1: moves the job's archive from the spool into `done/` or `failed/` of its drop
    /// folder (for a failure, its reason file first), the destination persisted in the progress
    /// record before anything is written there. `None` for a job with no dropped archive: a URL
    /// job, an archive packed from a watched directory, or a copy of a file given to `deploy`
    /// (all the daemon's own) is not moved anywhere, and leaves with the spool directory.
    fn move_archive(
        &self,
        job: &Job,
        recording: &mut Recording,
    ) -> Result<Option<Placed>, OutcomeError> {
        let Payload::Archive {
            original,
            tree_digest: None,
            copied: false,
            ..
        } = &job.payload
        else {
            return Ok(None);
        };
        // A rollback's archive is a copy of a kept one: it leaves with the spool directory.
        if job.rollback().is_some() {
            return Ok(None);
        }
        let (layout, name) = DropLayout::of_dropped(original);
        let dest_dir = match recording.progress.entry.outcome {
            Outcome::Failed | Outcome::Unhealthy => layout.failed(),
            _ => layout.done(),
        };
        let src = self.spool.archive_path(&job.id);
        if !exists(&src)? {
            // Moved by an earlier run.
            let dest = recording
                .progress
                .entry
                .moved_to
                .as_ref()
                .map(PathBuf::from);
            return Ok(Some(Placed { layout, dest }));
        }
        let previous = recording
            .progress
            .entry
            .moved_to
            .as_ref()
            .map(PathBuf::from);
        // The reason is fixed by the entry (itself fixed in the progress record), so a re-run
        // writes the same text and recognises a reason file it wrote before.
        let entry = recording.progress.entry.clone();
        let failure = failure_of(job);
        let reason = |dest: &Path| {
            failure.as_ref().map(|failure| {
                redact_owned(reason_text(&entry, original, dest, layout.dir(), failure))
            })
        };
        let dest = place(
            &src,
            &dest_dir,
            &name,
            &reason,
            previous.as_deref(),
            |dest| {
                recording.progress.entry.moved_to = Some(dest.to_string_lossy().into_owned());
                recording.save()
            },
        )?;
        Ok(Some(Placed {
            layout,
            dest: Some(dest),
        }))
    }

    /// Step 3: appends the entry to the history, unless the line an earlier run appended is
    /// there (after the length it persisted); returns the entry as written.
    fn append_once(
        &self,
        job: &str,
        recording: &mut Recording,
    ) -> Result<HistoryEntry, OutcomeError> {
        let history = self.history_path();
        let already = match recording.progress.history_from {
            Some(from) => find_job_line(&history, job, from)?,
            None => None,
        };
        if let Some(entry) = already {
            return Ok(entry);
        }
        recording.progress.history_from = Some(file_len(&history)?);
        recording.save()?;
        append_history(&history, &recording.progress.entry)?;
        Ok(recording.progress.entry.clone())
    }

    /// Records an archive refused at claim time (inspection failed, so it never became a job):
    /// moves `kept` (where intake left it, in the spool's temporary directory) to
    /// `<drop_dir>/failed/<name>` (suffixed on collision), where `original` is the path it was
    /// dropped at; writes the reason file (step `inspect`, nothing was uploaded); appends a
    /// history line (outcome `failed`, step `inspect`, `job` the id the job would have had);
    /// logs a WARN event; and removes the temporary directory `kept.parent()` when it is a job
    /// directory being made in this spool (`.new-<id>`) and no longer holds an archive. Never
    /// deletes the archive. Blocking.
    pub fn record_rejected(
        &self,
        app: &str,
        original: &Path,
        kept: &Path,
        rejection: &Rejection,
    ) -> Result<HistoryEntry, OutcomeError> {
        let finished_ms = now_ms();
        let bytes = fs::metadata(kept)
            .map_err(io_err("cannot find the refused archive", kept))?
            .len();
        let temp_dir = kept.parent();
        let job = rejected_job_id(temp_dir, finished_ms);
        let (layout, name) = DropLayout::of_dropped(original);
        let mut entry = rejected_entry(app, job, &name, rejection, bytes, finished_ms);
        let failure = inspect_failure(rejection);
        let reason = |dest: &Path| {
            Some(redact_owned(reason_text(
                &entry,
                original,
                dest,
                layout.dir(),
                &failure,
            )))
        };
        let dest = place(kept, &layout.failed(), &name, &reason, None, |_| Ok(()))?;
        entry.moved_to = Some(dest.to_string_lossy().into_owned());
        append_history(&self.history_path(), &entry)?;
        log_entry(&entry, Some(&Step::Inspect.to_string()));
        if let Some(temp_dir) = temp_dir {
            self.remove_intake_dir(app, temp_dir);
        }
        Ok(entry)
    }

    /// Removes `temp_dir` if it is a job directory being made (`<spool>/.new-<id>/`) whose
    /// archive is gone: what is left there is intake's own bookkeeping (the claim note). A
    /// failure is only logged.
    fn remove_intake_dir(&self, app: &str, temp_dir: &Path) {
        let is_temp = temp_dir.parent() == Some(self.spool.dir())
            && temp_dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".new-"))
            && !temp_dir.join(ARCHIVE_NAME).exists();
        if !is_temp {
            return;
        }
        if let Err(error) = crate::durable::remove_tree(temp_dir)
            .and_then(|()| crate::durable::sync_dir(self.spool.dir()).map_err(|e| e.source))
        {
            tracing::warn!(
                app,
                "cannot remove the temporary directory {}: {error}",
                temp_dir.display()
            );
        }
    }
}

/// `record` takes finished jobs only.
fn refuse_unfinished(job: &Job) -> Result<(), OutcomeError> {
    if job.state.is_finished() {
        return Ok(());
    }
    Err(OutcomeError::NotFinished {
        job: job.id.clone(),
        app: job.app.clone(),
        file: file_label(job),
        state: job.state.name(),
    })
}

/// Step 2, for an archive moved by an older version: writes the reason file beside a failed
/// archive if it is not there.
fn write_missing_reason(
    job: &Job,
    entry: &HistoryEntry,
    placed: &Placed,
) -> Result<(), OutcomeError> {
    let (Some(failure), Some(dest)) = (failure_of(job), &placed.dest) else {
        return Ok(());
    };
    let failure = &failure;
    let path = DropLayout::reason_path(dest);
    if exists(&path)? {
        return Ok(());
    }
    let original = match &job.payload {
        Payload::Archive { original, .. } => original.as_path(),
        Payload::Url { .. } => Path::new(""),
    };
    let text = redact(&reason_text(
        entry,
        original,
        dest,
        placed.layout.dir(),
        failure,
    ))
    .into_owned();
    write_atomic(&path, text.as_bytes())
}

impl Outcomes {
    /// Step 5: keeps the newest `keep_done` archives in `done/`, the one just placed among
    /// them, and the archives of the last verified deployments whatever `keep_done` says (a
    /// rollback needs them). A failure is only logged.
    fn prune_after(&self, placed: &Placed, keep_done: usize, entry: &HistoryEntry) {
        let protected = crate::verify::store::Store::new(&self.state_dir).protected();
        if let Err(error) = prune_done(
            &placed.layout.done(),
            keep_done,
            placed.dest.as_deref(),
            &protected,
        ) {
            tracing::warn!(app = %entry.app, job = %entry.job, "cannot prune done/: {error}");
        }
    }
}

/// The failure a reason file describes: a failed job's, or an unhealthy one's check.
fn failure_of(job: &Job) -> Option<Failure> {
    match &job.state {
        JobState::Failed(failure) => Some(failure.clone()),
        JobState::Unhealthy {
            deployment_id,
            reason,
        } => {
            let probe = job.check.as_ref().and_then(|c| c.last.as_ref());
            Some(Failure {
                step: Step::Verify,
                reason: reason.clone(),
                status: Some("success".to_string()),
                deployment_id: deployment_id.clone(),
                log_tail: probe.map(|p| vec![p.describe()]).unwrap_or_default(),
                http_status: probe.and_then(|p| p.status),
                gave_up: false,
            })
        }
        _ => None,
    }
}

/// The step a failed job failed at, in words, for the log.
fn failed_step(job: &Job) -> Option<String> {
    failure_of(job).map(|failure| failure.step.to_string())
}

/// The id of a refused archive: that of the job directory intake was making for it
/// (`.new-<id>`), or a new one.
fn rejected_job_id(temp_dir: Option<&Path>, finished_ms: u64) -> String {
    temp_dir
        .and_then(Path::file_name)
        .and_then(OsStr::to_str)
        .and_then(|n| n.strip_prefix(".new-"))
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "{}-{:08x}",
                compact_utc(finished_ms / 1000),
                fastrand::u32(..)
            )
        })
}

/// The history entry of a refused archive dropped as `name` (`moved_to` not yet known).
fn rejected_entry(
    app: &str,
    job: String,
    name: &OsStr,
    rejection: &Rejection,
    bytes: u64,
    finished_ms: u64,
) -> HistoryEntry {
    HistoryEntry {
        time: rfc3339_utc(finished_ms / 1000),
        app: redact_owned(app.to_string()),
        job,
        file: redact_owned(name.to_string_lossy().into_owned()),
        git_ref: None,
        outcome: Outcome::Failed,
        status: None,
        deployment_id: None,
        step: Some(step_name(Step::Inspect)),
        reason: Some(redact_owned(rejection.reason.clone())),
        attempts: 0,
        duration_ms: 0,
        sha256: None,
        bytes: Some(bytes),
        moved_to: None,
        check: None,
    }
}

/// A refusal at inspection as a failure, for the reason file: nothing reached the platform.
fn inspect_failure(rejection: &Rejection) -> Failure {
    Failure {
        step: Step::Inspect,
        reason: rejection.reason.clone(),
        status: None,
        deployment_id: None,
        log_tail: Vec::new(),
        http_status: None,
        gave_up: false,
    }
}

#[cfg(test)]
thread_local! {
    /// Unit tests only: the step after which `record` stops as if the process had died.
    pub(super) static CRASH_AFTER: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Stops `record` after `point` in unit tests that ask for it; nothing otherwise.
pub(super) fn crash_point(point: &'static str) -> Result<(), OutcomeError> {
    #[cfg(test)]
    if CRASH_AFTER.with(|c| c.get()) == Some(point) {
        return Err(OutcomeError::Io {
            action: "simulated crash after",
            path: PathBuf::from(point),
            source: io::Error::other("crash"),
        });
    }
    let _ = point;
    Ok(())
}

/// The history entry for a finished job, decided now (`finished_ms`, Unix milliseconds).
fn entry_for(job: &Job, finished_ms: u64) -> HistoryEntry {
    let check = job.check.as_ref();
    let (outcome, status, deployment_id, step, reason) = verdict_of(job);
    let (sha256, bytes) = match &job.payload {
        Payload::Archive { summary, .. } => {
            (Some(summary.sha256.clone()), Some(summary.compressed_bytes))
        }
        Payload::Url { .. } => (None, None),
    };
    // The entry is written to the progress record, the history and the reason file: its texts
    // are redacted once here (paths such as `moved_to` are not, being needed to find the file).
    HistoryEntry {
        time: rfc3339_utc(finished_ms / 1000),
        app: redact_owned(job.app.clone()),
        job: job.id.clone(),
        file: redact_owned(file_label(job)),
        git_ref: Some(job.git_ref.clone()),
        outcome,
        status,
        deployment_id,
        step,
        reason: reason.map(redact_owned),
        attempts: attempts(job),
        duration_ms: finished_ms.saturating_sub(job.created_at.saturating_mul(1000)),
        sha256,
        bytes,
        moved_to: None,
        check: check.and_then(|c| c.last.clone()),
    }
}

/// The fields of a history entry that depend on how the job ended.
type EntryFields = (
    Outcome,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// What a finished job's history entry says of it: outcome, platform status, deployment id,
/// the step that failed and the reason.
fn verdict_of(job: &Job) -> EntryFields {
    let check = job.check.as_ref();
    let verdict = check.and_then(|c| c.verdict);
    match &job.state {
        JobState::Succeeded { deployment_id } if verdict == Some(Verdict::Verified) => {
            let (outcome, reason) = match job.rollback() {
                Some(of) => (
                    Outcome::RolledBack,
                    format!("rolled_back {}", of.describe()),
                ),
                None => (
                    Outcome::Verified,
                    check.and_then(|c| c.reason.clone()).unwrap_or_default(),
                ),
            };
            (
                outcome,
                Some("success".to_string()),
                Some(deployment_id.clone()),
                None,
                Some(reason),
            )
        }
        JobState::Unhealthy {
            deployment_id,
            reason,
        } => (
            Outcome::Unhealthy,
            Some("success".to_string()),
            deployment_id.clone(),
            Some(step_name(Step::Verify)),
            Some(match job.rollback() {
                Some(of) => format!("rollback {} unhealthy: {reason}", of.describe()),
                None => reason.clone(),
            }),
        ),
        JobState::Succeeded { deployment_id } => (
            Outcome::Succeeded,
            Some("success".to_string()),
            Some(deployment_id.clone()),
            None,
            check.and_then(|c| c.reason.clone()),
        ),
        JobState::Failed(failure) => (
            Outcome::Failed,
            failure.status.clone(),
            failure.deployment_id.clone(),
            Some(step_name(failure.step)),
            Some(failure.reason.clone()),
        ),
        JobState::Superseded { by } => (
            Outcome::Superseded,
            None,
            None,
            None,
            Some(format!(
                "superseded by job {by}, a newer archive for the same app"
            )),
        ),
        _ => (Outcome::Unknown, None, None, None, None),
    }
}

/// See [`HistoryEntry::attempts`].
pub(super) fn attempts(job: &Job) -> u32 {
    let retried = job.failed_attempts.saturating_add(job.aborted_retries);
    match &job.state {
        JobState::Failed(failure) if failure.gave_up => retried.max(1),
        JobState::Superseded { .. } => retried,
        _ => retried.saturating_add(1),
    }
}

/// A step's name as in `job.json` (`create_source`, …), for scripts.
pub(super) fn step_name(step: Step) -> String {
    match serde_json::to_value(step) {
        Ok(serde_json::Value::String(name)) => name,
        _ => step.to_string(),
    }
}

/// Logs one event for an entry: INFO for a success, WARN otherwise.
fn log_entry(entry: &HistoryEntry, step: Option<&str>) {
    let deployment = entry.deployment_id.as_deref();
    let status = entry.status.as_deref();
    let git_ref = entry.git_ref.as_deref().unwrap_or("-");
    let (app, job, file) = (&entry.app, &entry.job, &entry.file);
    let reason = entry.reason.as_deref().unwrap_or("");
    let (attempts, duration_ms) = (entry.attempts, entry.duration_ms);
    let moved_to = entry.moved_to.as_deref();
    match entry.outcome {
        Outcome::Succeeded | Outcome::Verified | Outcome::RolledBack => tracing::info!(
            app = %app, job = %job, file = %file, git_ref, deployment, status, attempts,
            duration_ms, moved_to,
            "deployed {file} to {app} (deployment {}, git_ref {git_ref}) in {}{}",
            deployment.unwrap_or("-"),
            human_duration(duration_ms),
            match entry.outcome {
                Outcome::Succeeded => String::new(),
                other => format!("; {other}: {reason}"),
            }
        ),
        Outcome::Failed | Outcome::Unhealthy => tracing::warn!(
            app = %app, job = %job, file = %file, git_ref, deployment, status, attempts,
            duration_ms, moved_to,
            "{} {file} to {app} at step {}: {reason}",
            if entry.outcome == Outcome::Unhealthy { "unhealthy after deploying" } else { "failed to deploy" },
            step.or(entry.step.as_deref()).unwrap_or("unknown")
        ),
        Outcome::Superseded | Outcome::Unknown => tracing::warn!(
            app = %app, job = %job, file = %file, git_ref, deployment, status, attempts,
            duration_ms, moved_to,
            "did not deploy {file} to {app}: {reason}"
        ),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutcomeError> {
    Ok(crate::durable::write(path, bytes)?)
}

fn load_progress(path: &Path) -> Result<Option<Progress>, OutcomeError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| OutcomeError::Json {
            action: "cannot read the outcome progress record",
            path: path.to_path_buf(),
            source,
        })
}

fn save_progress(path: &Path, progress: &Progress) -> Result<(), OutcomeError> {
    let bytes = serde_json::to_vec_pretty(progress).map_err(|source| OutcomeError::Json {
        action: "cannot write the outcome progress record",
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes)
}
