//! What happens when a job is finished: the archive leaves the spool, the history gets a line,
//! the log gets an event, and the spool forgets the job.
//!
//! [`Outcomes::record`] takes a finished job (succeeded, failed or superseded) through these
//! steps, in this order:
//! 1. the archive moves from the spool back to its drop folder, into `done/` (succeeded,
//!    superseded) or `failed/` (failed), under its original name or, if that is taken,
//!    `name.1.tar.gz`, `name.2.tar.gz`, … (an existing file is never overwritten);
//! 2. for a failure, `failed/<final name>.reason.txt` says what went wrong and what to do. It
//!    is written (complete, atomically) before the archive moves in, once its name is chosen:
//!    whoever sees a failed archive can read its reason;
//! 3. one JSON line ([`HistoryEntry`]) is appended to `<state_dir>/history.jsonl`;
//! 4. one tracing event is logged (INFO for a success, WARN otherwise);
//! 5. `done/` is pruned to the newest `keep_done` archives (`failed/` is never pruned);
//! 6. the job's spool directory is removed.
//!
//! Every step can be repeated: before the first side effect, the entry to be written (with the
//! destination of the archive) is persisted as `outcome.json` in the job directory, and the
//! history file's length is persisted before the line is appended. A process killed anywhere in
//! between and calling `record` again on the same job finishes the work without losing the
//! file, moving it twice or writing a second history line.
//!
//! [`Outcomes::record_rejected`] does the same for an archive refused at claim time, before it
//! ever became a job. [`read_history`], [`format_history_table`] and [`status_report`] serve the
//! `history` and `status` commands without talking to the daemon.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::archive::inspect::Rejection;
use crate::queue::spool::{
    ARCHIVE_NAME, Failure, Job, JobState, Payload, Spool, SpoolError, Step, Timestamp, compact_utc,
};
use crate::redact::{redact, redact_owned, redact_vec};

/// The history file's name inside the state directory.
pub const HISTORY_NAME: &str = "history.jsonl";
/// The folder, inside a drop folder, where deployed (and superseded) archives go.
pub const DONE_DIR: &str = "done";
/// The folder, inside a drop folder, where failed and refused archives go, with their reasons.
pub const FAILED_DIR: &str = "failed";
/// Appended to an archive's name in `failed/` to name its reason file.
pub const REASON_SUFFIX: &str = ".reason.txt";
/// The progress record of an outcome being recorded, inside the job directory.
const PROGRESS_NAME: &str = "outcome.json";
/// How many `name.N.ext` candidates are tried before giving up on a collision.
const MAX_SUFFIX: u32 = 10_000;
/// How long a reason is in the history table before it is cut.
const TABLE_REASON_CHARS: usize = 60;

/// How a job ended, as written in the history's `outcome` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The deployment ended with status `success`.
    Succeeded,
    /// The job ended without a successful deployment, or the archive was refused.
    Failed,
    /// A newer archive for the same app replaced this one before it started.
    Superseded,
    /// A value this version does not know (a line written by a newer version), or none.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Outcome {
    /// The name written in the history: `succeeded`, `failed`, `superseded` (or `unknown`).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Superseded => "superseded",
            Outcome::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One line of `history.jsonl`: a finished job (or a refused archive), as users and scripts see
/// it. The field names are a public interface: keep them.
///
/// Every field is always written (absent values as `null`). Reading tolerates lines written by
/// other versions: unknown fields are ignored, missing ones take their empty value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HistoryEntry {
    /// When the outcome was decided (the job finished), RFC 3339 in UTC, e.g.
    /// `2026-11-25T17:42:58Z`.
    pub time: String,
    /// The Scalingo app.
    pub app: String,
    /// The job id; for an archive refused before it became a job, the id it would have had.
    pub job: String,
    /// The original file's name (without its folder); for a URL job, the URL.
    pub file: String,
    /// The git_ref given to the platform; `null` for a refused archive.
    pub git_ref: Option<String>,
    /// `succeeded`, `failed` or `superseded`.
    pub outcome: Outcome,
    /// The deployment's final status on the platform (`success`, `build-error`, …), or `null`
    /// when no deployment reached an end.
    pub status: Option<String>,
    /// The platform's deployment id, when a deployment was created.
    pub deployment_id: Option<String>,
    /// For a failure, the step it happened at: `inspect`, `create_source`, `upload`,
    /// `create_deployment` or `follow`.
    pub step: Option<String>,
    /// For a failure, the cause in words; for a superseded job, which job replaced it.
    pub reason: Option<String>,
    /// How many times dropdeploy tried to carry the job through: every try that ended in an
    /// error and was retried, every deployment posted again after it was `aborted`, plus the
    /// final try (already among the former when the job gave up on transient errors). 0 for an
    /// archive refused at inspection, and for a job superseded before it started.
    pub attempts: u32,
    /// From the job's creation (the archive claimed) to `time`, in milliseconds; 0 for a
    /// refused archive.
    pub duration_ms: u64,
    /// SHA-256 of the archive (lowercase hex), `null` for a URL job or a refused archive.
    pub sha256: Option<String>,
    /// The archive's size in bytes, `null` for a URL job.
    pub bytes: Option<u64>,
    /// Where the archive was moved (`<drop_dir>/done/…` or `<drop_dir>/failed/…`), `null` when
    /// there was no file. `done/` is pruned later, so the file may have gone since.
    pub moved_to: Option<String>,
}

/// Errors while recording an outcome or reading the history: each names the file and what was
/// being done to it.
#[derive(Debug, thiserror::Error)]
pub enum OutcomeError {
    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A JSON file (history line, progress record) could not be written or read.
    #[error("{action} {}: {source}", path.display())]
    Json {
        action: &'static str,
        path: PathBuf,
        source: serde_json::Error,
    },
    /// `record` was given a job that is not finished.
    #[error(
        "cannot record the outcome of job {job} ({file}) for {app}: it is still {state}, not finished"
    )]
    NotFinished {
        job: String,
        app: String,
        file: String,
        state: &'static str,
    },
    /// Every `name.N.ext` up to a limit is taken in the destination folder.
    #[error("cannot move {} into {}: {name} and {tried} suffixed names are all taken", from.display(), dir.display())]
    NoFreeName {
        from: PathBuf,
        dir: PathBuf,
        name: String,
        tried: u32,
    },
    /// The job's spool directory is gone, yet the history has no line for it.
    #[error(
        "cannot record the outcome of job {job} ({file}) for {app}: its spool directory {} is gone and {} has no line for it",
        job_dir.display(), history.display()
    )]
    Gone {
        job: String,
        app: String,
        file: String,
        job_dir: PathBuf,
        history: PathBuf,
    },
    /// The spool could not be listed or a job directory removed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl From<crate::durable::DurableError> for OutcomeError {
    fn from(e: crate::durable::DurableError) -> Self {
        OutcomeError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OutcomeError {
    let path = path.to_path_buf();
    move |source| OutcomeError::Io {
        action,
        path,
        source,
    }
}

/// Records finished jobs: owns the history file (`<state_dir>/history.jsonl`) and removes
/// finished jobs from the spool. Cheap to clone; all methods are blocking (call them from
/// `spawn_blocking`) and may be called from several threads at once for different jobs.
#[derive(Debug, Clone)]
pub struct Outcomes {
    state_dir: PathBuf,
    spool: Spool,
}

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

impl Outcomes {
    /// Outcomes recorded under `state_dir`, for jobs of `spool`. Touches nothing on disk.
    pub fn new(state_dir: &Path, spool: Spool) -> Self {
        Outcomes {
            state_dir: state_dir.to_path_buf(),
            spool,
        }
    }

    /// `<state_dir>/history.jsonl`.
    pub fn history_path(&self) -> PathBuf {
        self.state_dir.join(HISTORY_NAME)
    }

    /// Records the outcome of a finished job: moves its archive to `done/` or `failed/` in its
    /// drop folder (a reason file beside a failed one), appends its history line, logs it,
    /// prunes `done/` to the newest `keep_done` archives, and removes the job from the spool
    /// (see the [module docs](self) for the order). Returns the history entry.
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
        if !job.state.is_finished() {
            return Err(OutcomeError::NotFinished {
                job: job.id.clone(),
                app: job.app.clone(),
                file: file_label(job),
                state: job.state.name(),
            });
        }
        let history = self.history_path();
        let job_dir = self.spool.job_dir(&job.id);
        if !exists(&job_dir)? {
            // Recorded already (the spool directory goes last): return what was written.
            return match find_job_line(&history, &job.id, 0)? {
                Some(entry) => Ok(entry),
                None => Err(OutcomeError::Gone {
                    job: job.id.clone(),
                    app: job.app.clone(),
                    file: file_label(job),
                    job_dir,
                    history,
                }),
            };
        }

        let progress_path = job_dir.join(PROGRESS_NAME);
        let mut progress = match load_progress(&progress_path)? {
            Some(progress) => progress,
            None => {
                let progress = Progress {
                    entry: entry_for(job, now_ms()),
                    history_from: None,
                };
                save_progress(&progress_path, &progress)?;
                progress
            }
        };
        let outcome = progress.entry.outcome;

        // 1. The archive leaves the spool.
        let mut placed: Option<PathBuf> = None;
        let mut drop_dir = None;
        // An archive packed from a watched directory is the daemon's own: it is not moved
        // anywhere, and leaves with the spool directory.
        if let Payload::Archive {
            original,
            tree_digest: None,
            ..
        } = &job.payload
        {
            let (dir, name) = drop_place(original);
            let dest_dir = dir.join(match outcome {
                Outcome::Failed => FAILED_DIR,
                _ => DONE_DIR,
            });
            let src = self.spool.archive_path(&job.id);
            if exists(&src)? {
                let previous = progress.entry.moved_to.as_ref().map(PathBuf::from);
                // The reason is fixed by the entry (itself fixed in the progress record), so a
                // re-run writes the same text and recognises a reason file it wrote before.
                let entry = progress.entry.clone();
                let reason = |dest: &Path| match &job.state {
                    JobState::Failed(failure) => Some(redact_owned(reason_text(
                        &entry, original, dest, &dir, failure,
                    ))),
                    _ => None,
                };
                let dest = place(
                    &src,
                    &dest_dir,
                    &name,
                    &reason,
                    previous.as_deref(),
                    |dest| {
                        progress.entry.moved_to = Some(dest.to_string_lossy().into_owned());
                        save_progress(&progress_path, &progress)
                    },
                )?;
                placed = Some(dest);
            } else {
                // Moved by an earlier run.
                placed = progress.entry.moved_to.as_ref().map(PathBuf::from);
            }
            drop_dir = Some(dir);
        }

        crash_point("move")?;

        // 2. The reason beside a failed archive: written by `place` before the archive moved
        // in. Only an archive moved by an older version, which wrote it after, may lack it.
        if let (JobState::Failed(failure), Some(dest), Some(dir)) = (&job.state, &placed, &drop_dir)
            && !exists(&reason_path(dest))?
        {
            let original = match &job.payload {
                Payload::Archive { original, .. } => original.as_path(),
                Payload::Url { .. } => Path::new(""),
            };
            let text =
                redact(&reason_text(&progress.entry, original, dest, dir, failure)).into_owned();
            write_atomic(&reason_path(dest), text.as_bytes())?;
        }

        // 3. The history line, once.
        let already = match progress.history_from {
            Some(from) => find_job_line(&history, &job.id, from)?,
            None => None,
        };
        let entry = match already {
            Some(entry) => entry,
            None => {
                progress.history_from = Some(file_len(&history)?);
                save_progress(&progress_path, &progress)?;
                append_history(&history, &progress.entry)?;
                progress.entry.clone()
            }
        };

        crash_point("history")?;

        // 4. The log event.
        let step = match &job.state {
            JobState::Failed(failure) => Some(failure.step.to_string()),
            _ => None,
        };
        log_entry(&entry, step.as_deref());

        // 5. Retention in done/.
        if outcome != Outcome::Failed
            && let Some(dir) = &drop_dir
        {
            let done = dir.join(DONE_DIR);
            if let Err(error) = prune_done(&done, keep_done, placed.as_deref()) {
                tracing::warn!(app = %entry.app, job = %entry.job, "cannot prune done/: {error}");
            }
        }

        // 6. The spool forgets the job.
        self.spool.remove(&job.id)?;
        Ok(entry)
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
        let job = temp_dir
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
            });
        let (drop_dir, name) = drop_place(original);
        let mut entry = HistoryEntry {
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
        };
        let failure = Failure {
            step: Step::Inspect,
            reason: rejection.reason.clone(),
            status: None,
            deployment_id: None,
            log_tail: Vec::new(),
            http_status: None,
            gave_up: false,
        };
        let reason = |dest: &Path| {
            Some(redact_owned(reason_text(
                &entry, original, dest, &drop_dir, &failure,
            )))
        };
        let dest = place(
            kept,
            &drop_dir.join(FAILED_DIR),
            &name,
            &reason,
            None,
            |_| Ok(()),
        )?;
        entry.moved_to = Some(dest.to_string_lossy().into_owned());
        append_history(&self.history_path(), &entry)?;
        log_entry(&entry, Some(&Step::Inspect.to_string()));
        // Only a job directory being made (`<spool>/.new-<id>/`), its archive gone: what is
        // left there is intake's own bookkeeping (the claim note).
        let is_temp = |dir: &Path| {
            dir.parent() == Some(self.spool.dir())
                && dir
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".new-"))
                && !dir.join(ARCHIVE_NAME).exists()
        };
        if let Some(temp_dir) = temp_dir
            && is_temp(temp_dir)
            && let Err(error) = fs::remove_dir_all(temp_dir)
                .and_then(|()| crate::durable::sync_dir(self.spool.dir()).map_err(|e| e.source))
        {
            tracing::warn!(
                app,
                "cannot remove the temporary directory {}: {error}",
                temp_dir.display()
            );
        }
        Ok(entry)
    }
}

/// What [`read_history_counted`] found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryRead {
    /// The entries, oldest first.
    pub entries: Vec<HistoryEntry>,
    /// Lines that were read but are not history entries (damaged or foreign), skipped.
    pub skipped: usize,
}

/// The history at `path`, oldest first: only `app`'s entries if given, and only the last
/// `limit` (matching) entries if given. A missing file is an empty history. Lines that are not
/// history entries are skipped, and their count logged as a warning (see
/// [`read_history_counted`] to get it). Reads from the end, so a small `limit` stays cheap on a
/// long history.
pub fn read_history(
    path: &Path,
    app: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<HistoryEntry>, OutcomeError> {
    let read = read_history_counted(path, app, limit)?;
    if read.skipped > 0 {
        tracing::warn!(
            "skipped {} unreadable line(s) in {}",
            read.skipped,
            path.display()
        );
    }
    Ok(read.entries)
}

/// [`read_history`], also saying how many unreadable lines were skipped (among those read: with
/// a `limit`, reading stops once enough entries were found).
pub fn read_history_counted(
    path: &Path,
    app: Option<&str>,
    limit: Option<usize>,
) -> Result<HistoryRead, OutcomeError> {
    let mut read = HistoryRead::default();
    if limit == Some(0) {
        return Ok(read);
    }
    let Some(mut lines) = RevLines::open(path, REV_CHUNK)? else {
        return Ok(read);
    };
    while let Some(line) = lines
        .next_line()
        .map_err(io_err("cannot read the history file", path))?
    {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(entry) = serde_json::from_slice::<HistoryEntry>(&line) else {
            read.skipped += 1;
            continue;
        };
        if app.is_some_and(|app| entry.app != app) {
            continue;
        }
        read.entries.push(entry);
        if limit.is_some_and(|limit| read.entries.len() >= limit) {
            break;
        }
    }
    read.entries.reverse();
    Ok(read)
}

/// The history as an aligned table, one line per entry in the given order, under a header:
/// `TIME APP OUTCOME STATUS DEPLOYMENT FILE DURATION REASON`. Absent values show as `-`; the
/// reason is cut to one short line. Every line ends with `\n`; no entries gives the header alone.
pub fn format_history_table(entries: &[HistoryEntry]) -> String {
    let header = [
        "TIME",
        "APP",
        "OUTCOME",
        "STATUS",
        "DEPLOYMENT",
        "FILE",
        "DURATION",
        "REASON",
    ];
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|e| {
            [
                dash(&e.time),
                dash(&e.app),
                e.outcome.to_string(),
                dash(e.status.as_deref().unwrap_or("")),
                dash(e.deployment_id.as_deref().unwrap_or("")),
                dash(&e.file),
                human_duration(e.duration_ms),
                dash(&shorten(
                    e.reason.as_deref().unwrap_or(""),
                    TABLE_REASON_CHARS,
                )),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The text of `dropdeploy status`: for each app, the job in flight (state, file, id, since
/// when), the pending jobs (count and files), and the last recorded outcome (outcome, file,
/// time), read from the spool and the history without talking to the daemon.
///
/// `apps` are the configured app names, shown in that order; apps found only in the spool
/// follow, marked as not configured. A job is in flight when it is neither `queued` nor
/// finished, pending when `queued`; a finished job still in the spool (its outcome not yet
/// recorded) is shown as such. A missing spool directory or history file counts as empty;
/// unreadable job records are listed at the end.
///
/// `live` is the running daemon's board ([`crate::live::read`]): each app's waits (a file it
/// cannot claim yet, a folder it cannot watch) are shown with their cause and next try; `None`
/// when no daemon runs.
pub fn status_report(
    spool: &Spool,
    history: &Path,
    apps: &[String],
    live: Option<&crate::live::LiveFile>,
) -> Result<String, OutcomeError> {
    let mut jobs = Vec::new();
    let mut unreadable = Vec::new();
    if exists(spool.dir())? {
        for job in spool.jobs()? {
            match job {
                Ok(job) => jobs.push(job),
                Err(error) => unreadable.push(error.to_string()),
            }
        }
    }
    let mut names: Vec<String> = apps.to_vec();
    let mut extra: Vec<String> = jobs
        .iter()
        .map(|j| j.app.clone())
        .filter(|a| !apps.contains(a))
        .collect();
    extra.sort();
    extra.dedup();
    names.extend(extra.iter().cloned());

    let last = last_outcomes(history, &names)?;
    let mut out = String::new();
    if names.is_empty() {
        out.push_str("no apps configured, and no jobs in the spool\n");
    }
    for app in &names {
        out.push_str(app);
        if extra.contains(app) {
            out.push_str(" (not in the configuration)");
        }
        out.push('\n');
        let mine: Vec<&Job> = jobs.iter().filter(|j| &j.app == app).collect();
        let in_flight: Vec<&&Job> = mine
            .iter()
            .filter(|j| !matches!(j.state, JobState::Queued) && !j.state.is_finished())
            .collect();
        let pending: Vec<&&Job> = mine
            .iter()
            .filter(|j| matches!(j.state, JobState::Queued))
            .collect();
        let unrecorded: Vec<&&Job> = mine.iter().filter(|j| j.state.is_finished()).collect();
        if in_flight.is_empty() {
            out.push_str("  in flight: none\n");
        }
        for job in in_flight {
            let platform = match &job.state {
                JobState::Deploying {
                    deployment_id,
                    platform_status,
                    ..
                } => format!(
                    ", deployment {deployment_id}, platform status {}",
                    platform_status.as_deref().unwrap_or("not seen yet")
                ),
                _ => String::new(),
            };
            out.push_str(&format!(
                "  in flight: {} {} (job {}{platform}, since {})\n",
                job.state.name(),
                file_label(job),
                job.id,
                rfc3339_utc(job.started_at.unwrap_or(job.created_at))
            ));
        }
        if pending.is_empty() {
            out.push_str("  pending:   none\n");
        } else {
            let files: Vec<String> = pending.iter().map(|j| file_label(j)).collect();
            out.push_str(&format!(
                "  pending:   {} ({})\n",
                pending.len(),
                files.join(", ")
            ));
        }
        if !unrecorded.is_empty() {
            let files: Vec<String> = unrecorded
                .iter()
                .map(|j| format!("{} {}", j.state.name(), file_label(j)))
                .collect();
            out.push_str(&format!(
                "  finished, not yet recorded: {} ({})\n",
                unrecorded.len(),
                files.join(", ")
            ));
        }
        for wait in live.iter().flat_map(|l| &l.waits).filter(|w| &w.app == app) {
            let next = wait
                .retry_at
                .map(|t| format!(", next try {}", rfc3339_utc(t)))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {}: {}: {} (since {}{next})\n",
                wait.kind.label(),
                wait.subject,
                wait.cause,
                rfc3339_utc(wait.since)
            ));
        }
        match last.get(app) {
            None => out.push_str("  last:      none recorded\n"),
            Some(e) => {
                let mut detail = Vec::new();
                if let Some(id) = &e.deployment_id {
                    detail.push(format!("deployment {id}"));
                }
                if let Some(status) = &e.status {
                    detail.push(format!("status {status}"));
                }
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", detail.join(", "))
                };
                out.push_str(&format!(
                    "  last:      {} {} at {}{detail}\n",
                    e.outcome, e.file, e.time
                ));
            }
        }
    }
    for error in unreadable {
        out.push_str(&format!("warning: {error}\n"));
    }
    Ok(out)
}

/// A Unix timestamp as RFC 3339 in UTC, e.g. `2026-11-25T17:42:58Z`.
pub fn rfc3339_utc(ts: Timestamp) -> String {
    let compact = compact_utc(ts);
    // `YYYY…mmddHHMMSS`: the year is whatever precedes the last ten digits.
    let (year, rest) = compact.split_at(compact.len() - 10);
    format!(
        "{year}-{}-{}T{}:{}:{}Z",
        &rest[0..2],
        &rest[2..4],
        &rest[4..6],
        &rest[6..8],
        &rest[8..10]
    )
}

/// The last entry of each of `apps` in the history, reading from the end until all are found.
fn last_outcomes(
    history: &Path,
    apps: &[String],
) -> Result<HashMap<String, HistoryEntry>, OutcomeError> {
    let mut found = HashMap::new();
    let Some(mut lines) = RevLines::open(history, REV_CHUNK)? else {
        return Ok(found);
    };
    while found.len() < apps.len()
        && let Some(line) = lines
            .next_line()
            .map_err(io_err("cannot read the history file", history))?
    {
        if let Ok(entry) = serde_json::from_slice::<HistoryEntry>(&line)
            && apps.contains(&entry.app)
            && !found.contains_key(&entry.app)
        {
            found.insert(entry.app.clone(), entry);
        }
    }
    Ok(found)
}

#[cfg(test)]
thread_local! {
    /// Unit tests only: the step after which `record` stops as if the process had died.
    static CRASH_AFTER: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Stops `record` after `point` in unit tests that ask for it; nothing otherwise.
fn crash_point(point: &'static str) -> Result<(), OutcomeError> {
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
    let (outcome, status, deployment_id, step, reason) = match &job.state {
        JobState::Succeeded { deployment_id } => (
            Outcome::Succeeded,
            Some("success".to_string()),
            Some(deployment_id.clone()),
            None,
            None,
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
    };
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
    }
}

/// See [`HistoryEntry::attempts`].
fn attempts(job: &Job) -> u32 {
    let retried = job.failed_attempts.saturating_add(job.aborted_retries);
    match &job.state {
        JobState::Failed(failure) if failure.gave_up => retried.max(1),
        JobState::Superseded { .. } => retried,
        _ => retried.saturating_add(1),
    }
}

/// A step's name as in `job.json` (`create_source`, …), for scripts.
fn step_name(step: Step) -> String {
    match serde_json::to_value(step) {
        Ok(serde_json::Value::String(name)) => name,
        _ => step.to_string(),
    }
}

/// What a person calls a job's file: the dropped file's name, or the URL.
fn file_label(job: &Job) -> String {
    match &job.payload {
        Payload::Archive { original, .. } => original
            .file_name()
            .unwrap_or(original.as_os_str())
            .to_string_lossy()
            .into_owned(),
        Payload::Url { url } => url.clone(),
    }
}

/// The drop folder and file name an archive came from.
fn drop_place(original: &Path) -> (PathBuf, OsString) {
    let dir = match original.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = original
        .file_name()
        .map(OsStr::to_os_string)
        .unwrap_or_else(|| OsString::from("archive.tar.gz"));
    (dir, name)
}

/// `name` with a collision suffix before its extension: `app.tar.gz` → `app.2.tar.gz`
/// (`.tar.gz` and `.tgz` kept whole); `n` = 0 is the name itself.
fn suffixed(name: &OsStr, n: u32) -> OsString {
    if n == 0 {
        return name.to_os_string();
    }
    let Some(text) = name.to_str() else {
        let mut name = name.to_os_string();
        name.push(format!(".{n}"));
        return name;
    };
    let lower = text.to_ascii_lowercase();
    let split = [".tar.gz", ".tgz"]
        .iter()
        .find(|ext| lower.ends_with(*ext) && lower.len() > ext.len())
        .map(|ext| text.len() - ext.len())
        .or_else(|| text.rfind('.').filter(|&i| i > 0));
    match split {
        Some(i) => OsString::from(format!("{}.{n}{}", &text[..i], &text[i..])),
        None => OsString::from(format!("{text}.{n}")),
    }
}

/// `<archive>.reason.txt`.
fn reason_path(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_os_string();
    name.push(REASON_SUFFIX);
    PathBuf::from(name)
}

/// Moves `src` into `dir` under `name`, or the first free suffixed name, never replacing a file.
/// When `reason` gives a text for a destination (a failed archive), that reason file is written
/// first, exclusively and complete, and only then the archive moved in: the archive's arrival
/// means its reason is there, and a name whose reason file holds another text counts as taken.
/// `before` is called with each destination before anything is written for it, to persist it.
/// `previous` (the destination an earlier run chose) is tried first; if it already is `src`
/// (linked, the spool's name not yet removed), only the spool's name goes.
fn place(
    src: &Path,
    dir: &Path,
    name: &OsStr,
    reason: &dyn Fn(&Path) -> Option<String>,
    previous: Option<&Path>,
    mut before: impl FnMut(&Path) -> Result<(), OutcomeError>,
) -> Result<PathBuf, OutcomeError> {
    let src_dir = src.parent().unwrap_or(Path::new("."));
    if let Some(previous) = previous
        && same_file(src, previous)
    {
        fs::remove_file(src).map_err(io_err("cannot remove the spool's copy", src))?;
        sync_dir(src_dir)?;
        return Ok(previous.to_path_buf());
    }
    ensure_dir(dir)?;
    let candidates = previous
        .filter(|p| p.parent() == Some(dir))
        .map(Path::to_path_buf)
        .into_iter()
        .chain((0..=MAX_SUFFIX).map(|n| dir.join(suffixed(name, n))));
    for dest in candidates {
        let text = reason(&dest);
        if exists(&dest)? {
            // Taken by another archive: a reason written for it by an earlier run goes.
            release_reason(&dest, text.as_deref())?;
            continue;
        }
        before(&dest)?;
        if let Some(text) = &text
            && !claim_reason(&reason_path(&dest), text)?
        {
            continue;
        }
        crash_point("reason")?;
        // A hard link fails on an existing name where rename would silently replace it, so two
        // outcomes landing on one name at once cannot overwrite each other.
        match fs::hard_link(src, &dest) {
            Ok(()) => {
                sync_dir(dir)?;
                fs::remove_file(src).map_err(io_err("cannot remove the spool's copy", src))?;
                sync_dir(src_dir)?;
                return Ok(dest);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                release_reason(&dest, text.as_deref())?;
                continue;
            }
            Err(_) => {
                // No hard links on this filesystem: rename, the name having just been free.
                if exists(&dest)? {
                    release_reason(&dest, text.as_deref())?;
                    continue;
                }
                fs::rename(src, &dest).map_err(io_err("cannot move the archive to", &dest))?;
                sync_dir(dir)?;
                sync_dir(src_dir)?;
                return Ok(dest);
            }
        }
    }
    Err(OutcomeError::NoFreeName {
        from: src.to_path_buf(),
        dir: dir.to_path_buf(),
        name: name.to_string_lossy().into_owned(),
        tried: MAX_SUFFIX,
    })
}

/// Makes `path` hold `text` unless it holds something else: true when it now holds `text`
/// (written now, or by an earlier run of the same outcome), false when another archive's reason
/// is there. The text appears whole or not at all: a complete, synced temporary file is
/// hard-linked to the name, which fails on an existing name instead of replacing it.
fn claim_reason(path: &Path, text: &str) -> Result<bool, OutcomeError> {
    let holds_text = |path: &Path| -> Result<Option<bool>, OutcomeError> {
        match fs::read(path) {
            Ok(bytes) => Ok(Some(bytes == text.as_bytes())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot read", path)(e)),
        }
    };
    if let Some(ours) = holds_text(path)? {
        return Ok(ours);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or(OsStr::new("reason")));
    tmp_name.push(format!(".{:08x}.tmp", fastrand::u32(..)));
    let tmp = dir.join(tmp_name);
    let mut file = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
    file.write_all(text.as_bytes())
        .map_err(io_err("cannot write", &tmp))?;
    file.sync_all().map_err(io_err("cannot sync", &tmp))?;
    drop(file);
    let claimed = match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            holds_text(path).map(|ours| ours.unwrap_or(false))
        }
        // No hard links on this filesystem: rename, the name having just been free.
        Err(_) => match holds_text(path) {
            Ok(Some(ours)) => Ok(ours),
            Ok(None) => fs::rename(&tmp, path)
                .map(|()| true)
                .map_err(io_err("cannot rename into", path)),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = fs::remove_file(&tmp)
        && e.kind() != io::ErrorKind::NotFound
    {
        return Err(io_err("cannot remove", &tmp)(e));
    }
    sync_dir(dir)?;
    claimed
}

/// Removes the reason file of `archive` if it holds `text` (ours, for a name that turned out
/// taken), so that it never describes another archive.
fn release_reason(archive: &Path, text: Option<&str>) -> Result<(), OutcomeError> {
    let Some(text) = text else {
        return Ok(());
    };
    let path = reason_path(archive);
    match fs::read(&path) {
        Ok(bytes) if bytes == text.as_bytes() => {
            fs::remove_file(&path).map_err(io_err("cannot remove", &path))?;
            sync_dir(path.parent().unwrap_or(Path::new(".")))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

/// Keeps the newest `keep` archives (`*.tar.gz`, `*.tgz`, regular files not starting with `.`)
/// in `done`, by modification time, `newest` (the archive just placed) counted as the newest
/// whatever its time; deletes the others, oldest first. Anything else is left alone.
fn prune_done(
    done: &Path,
    keep: usize,
    newest: Option<&Path>,
) -> Result<Vec<PathBuf>, OutcomeError> {
    let entries = match fs::read_dir(done) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("cannot list", done)(e)),
    };
    let mut archives = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("cannot list", done))?;
        let name = entry.file_name();
        let lower = name.to_string_lossy().to_ascii_lowercase();
        if lower.starts_with('.') || !(lower.ends_with(".tar.gz") || lower.ends_with(".tgz")) {
            continue;
        }
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err("cannot stat", &path))?;
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        let is_newest = newest == Some(path.as_path());
        archives.push((is_newest, mtime, name, path));
    }
    // Newest first; equal times by name, for a stable choice.
    archives.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    let mut deleted = Vec::new();
    for (_, _, _, path) in archives.into_iter().skip(keep).rev() {
        match fs::remove_file(&path) {
            Ok(()) => deleted.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot delete the old archive", &path)(e)),
        }
    }
    if !deleted.is_empty() {
        sync_dir(done)?;
    }
    Ok(deleted)
}

/// The reason file's text: what failed, with every identifier a person may need, what to do,
/// and the end of the build output.
fn reason_text(
    entry: &HistoryEntry,
    original: &Path,
    now_at: &Path,
    drop_dir: &Path,
    failure: &Failure,
) -> String {
    let mut t = String::new();
    let inspect = failure.step == Step::Inspect;
    if inspect {
        t.push_str(&format!(
            "dropdeploy refused this archive for {} before uploading it: nothing was uploaded.\n\n",
            entry.app
        ));
    } else {
        t.push_str(&format!(
            "dropdeploy could not deploy this archive to {}.\n\n",
            entry.app
        ));
    }
    let line = |t: &mut String, label: &str, value: &str| {
        t.push_str(&format!("  {label:<12} {value}\n"));
    };
    t.push_str("What went wrong\n");
    line(&mut t, "step:", &failure.step.to_string());
    line(&mut t, "cause:", &failure.reason);
    line(&mut t, "app:", &entry.app);
    line(&mut t, "file:", &original.display().to_string());
    line(&mut t, "now at:", &now_at.display().to_string());
    line(&mut t, "job:", &entry.job);
    line(
        &mut t,
        "git_ref:",
        entry.git_ref.as_deref().unwrap_or("none"),
    );
    line(
        &mut t,
        "deployment:",
        failure
            .deployment_id
            .as_deref()
            .unwrap_or("none (the platform never started one)"),
    );
    line(
        &mut t,
        "status:",
        failure.status.as_deref().unwrap_or("none"),
    );
    if let Some(code) = failure.http_status {
        line(&mut t, "http status:", &code.to_string());
    }
    line(&mut t, "when:", &entry.time);
    line(&mut t, "attempts:", &entry.attempts.to_string());
    if failure.gave_up {
        line(&mut t, "gave up:", "yes, the retry budget ran out");
    }
    if let Some(sha) = &entry.sha256 {
        line(&mut t, "sha256:", sha);
    }
    t.push_str("\nWhat to do\n");
    t.push_str(&format!("  {}\n", advice(entry, failure, drop_dir)));
    if failure.log_tail.is_empty() {
        if failure.deployment_id.is_some() {
            t.push_str("\nNo build output could be fetched.\n");
        }
    } else {
        t.push_str("\nLast lines of the build output\n");
        for l in &failure.log_tail {
            t.push_str(&format!("  | {l}\n"));
        }
    }
    t
}

/// One paragraph telling a person what to do about a failure.
fn advice(entry: &HistoryEntry, failure: &Failure, drop_dir: &Path) -> String {
    let app = &entry.app;
    let drop = drop_dir.display();
    let again = format!("then move this file back into {drop} to deploy it again");
    if failure.step == Step::Inspect {
        return format!(
            "Fix the archive (a gzip-compressed tar holding one top-level folder, with no \
             absolute or `..` paths and no device files) and drop the corrected archive into \
             {drop}."
        );
    }
    if failure.gave_up {
        return format!(
            "The platform or the network kept failing with errors that usually pass \
             (timeouts, 5xx, 429) until the retry budget ran out; the archive itself may be \
             fine. Once the platform answers again, {again}."
        );
    }
    match failure.http_status {
        Some(code @ (401 | 403)) => {
            return format!(
                "The Scalingo API refused the token (HTTP {code}): check `token_file` or \
                 SCALINGO_API_TOKEN, and that the token's account may deploy {app}; {again}."
            );
        }
        Some(402) => {
            return format!(
                "The platform refused for billing reasons (HTTP 402): check the account's \
                 payment details on the dashboard; {again}."
            );
        }
        Some(404) => {
            return format!(
                "The platform does not know the app {app} (HTTP 404): check `name` in the \
                 [[app]] section and the region or `api_url` in [scalingo]; {again}."
            );
        }
        _ => {}
    }
    if let Some(status) = &failure.status {
        let logs = match &failure.deployment_id {
            Some(id) => format!(" (the full log: `scalingo --app {app} deployment-logs {id}`)"),
            None => String::new(),
        };
        return format!(
            "The deployment ran and ended with status {status}: the code did not build or did \
             not start. Read the build output below{logs}, fix the code, and drop a new archive \
             into {drop}."
        );
    }
    format!("Fix the cause above, {again}.")
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
        Outcome::Succeeded => tracing::info!(
            app = %app, job = %job, file = %file, git_ref, deployment, status, attempts,
            duration_ms, moved_to,
            "deployed {file} to {app} (deployment {}, git_ref {git_ref}) in {}",
            deployment.unwrap_or("-"),
            human_duration(duration_ms)
        ),
        Outcome::Failed => tracing::warn!(
            app = %app, job = %job, file = %file, git_ref, deployment, status, attempts,
            duration_ms, moved_to,
            "failed to deploy {file} to {app} at step {}: {reason}",
            step.or(entry.step.as_deref()).unwrap_or("unknown")
        ),
        Outcome::Superseded | Outcome::Unknown => tracing::warn!(
            app = %app, job = %job, file = %file, git_ref, deployment, status, attempts,
            duration_ms, moved_to,
            "did not deploy {file} to {app}: {reason}"
        ),
    }
}

fn human_duration(ms: u64) -> String {
    crate::human::duration(std::time::Duration::from_millis(ms))
}

/// One line of at most `max` characters, `…` marking a cut.
fn shorten(text: &str, max: usize) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn exists(path: &Path) -> Result<bool, OutcomeError> {
    path.try_exists().map_err(io_err("cannot look at", path))
}

fn file_len(path: &Path) -> Result<u64, OutcomeError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err("cannot stat the history file", path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), OutcomeError> {
    Ok(crate::durable::sync_dir(dir)?)
}

/// Creates `dir` if needed, making its entry in the parent durable.
fn ensure_dir(dir: &Path) -> Result<(), OutcomeError> {
    if exists(dir)? {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
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

/// Appends `entry` as one line, in one write, and fsyncs. A last line left without its newline
/// (a write cut short) is closed first, so the new line never glues onto it.
fn append_history(path: &Path, entry: &HistoryEntry) -> Result<(), OutcomeError> {
    let line = serde_json::to_vec(entry).map_err(|source| OutcomeError::Json {
        action: "cannot write a history line to",
        path: path.to_path_buf(),
        source,
    })?;
    let mut line = redact_vec(line);
    line.push(b'\n');
    let created = !exists(path)?;
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err("cannot open the history file", path))?;
    let len = file
        .metadata()
        .map_err(io_err("cannot stat the history file", path))?
        .len();
    if len > 0 {
        let mut last = [0u8];
        file.seek(SeekFrom::Start(len - 1))
            .and_then(|_| file.read_exact(&mut last))
            .map_err(io_err("cannot read the history file", path))?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }
    // One write_all on an O_APPEND file: one write(2) for a line this size, so lines appended
    // at once by several threads never interleave.
    file.write_all(&line)
        .map_err(io_err("cannot append to the history file", path))?;
    file.sync_all()
        .map_err(io_err("cannot sync the history file", path))?;
    if created && let Some(dir) = path.parent() {
        sync_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?;
    }
    Ok(())
}

/// The entry for `job` in the history at or after byte `from` (from the start if the file is
/// now shorter than that: it was rotated).
fn find_job_line(path: &Path, job: &str, from: u64) -> Result<Option<HistoryEntry>, OutcomeError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot open the history file", path)(e)),
    };
    let len = file
        .metadata()
        .map_err(io_err("cannot stat the history file", path))?
        .len();
    let start = if from <= len { from } else { 0 };
    file.seek(SeekFrom::Start(start))
        .map_err(io_err("cannot read the history file", path))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let needle = job.as_bytes();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(io_err("cannot read the history file", path))?;
        if n == 0 {
            return Ok(None);
        }
        if !line.windows(needle.len().max(1)).any(|w| w == needle) {
            continue;
        }
        if let Ok(entry) = serde_json::from_slice::<HistoryEntry>(&line)
            && entry.job == job
        {
            return Ok(Some(entry));
        }
    }
}

/// How much of the history is read at a time from its end.
const REV_CHUNK: usize = 64 * 1024;

/// A file's lines, last first (each without its `\n`; a trailing `\n` yields an empty line).
struct RevLines {
    file: File,
    /// Where the part not yet read begins.
    pos: u64,
    /// Bytes read but not yet returned: from `pos` to the start of the last returned line.
    buf: Vec<u8>,
    chunk: usize,
    done: bool,
}

impl RevLines {
    /// `None` if the file does not exist.
    fn open(path: &Path, chunk: usize) -> Result<Option<RevLines>, OutcomeError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot open the history file", path)(e)),
        };
        let pos = file
            .metadata()
            .map_err(io_err("cannot stat the history file", path))?
            .len();
        Ok(Some(RevLines {
            file,
            pos,
            buf: Vec::new(),
            chunk: chunk.max(1),
            done: false,
        }))
    }

    fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf.iter().rposition(|&b| b == b'\n') {
                let line = self.buf.split_off(i + 1);
                self.buf.truncate(i);
                return Ok(Some(line));
            }
            if self.pos == 0 {
                if self.done {
                    return Ok(None);
                }
                self.done = true;
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            let n = (self.chunk as u64).min(self.pos);
            self.pos -= n;
            let mut chunk = vec![0; n as usize];
            self.file.seek(SeekFrom::Start(self.pos))?;
            self.file.read_exact(&mut chunk)?;
            chunk.extend_from_slice(&self.buf);
            self.buf = chunk;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(253_402_300_800), "10000-01-01T00:00:00Z");
    }

    #[test]
    fn collision_suffixes_keep_the_extension() {
        let s = |name: &str, n| suffixed(OsStr::new(name), n).into_string().unwrap();
        assert_eq!(s("app.tar.gz", 0), "app.tar.gz");
        assert_eq!(s("app.tar.gz", 1), "app.1.tar.gz");
        assert_eq!(s("app.TAR.GZ", 2), "app.2.TAR.GZ");
        assert_eq!(s("v1.2.tgz", 3), "v1.2.3.tgz");
        assert_eq!(s("bundle.zip", 1), "bundle.1.zip");
        assert_eq!(s("README", 1), "README.1");
        assert_eq!(s(".tar.gz", 1), ".tar.1.gz");
        assert_eq!(s(".hidden", 1), ".hidden.1");
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(human_duration(420), "420 ms");
        assert_eq!(human_duration(4_250), "4.2 s");
        assert_eq!(human_duration(48_000), "48 s");
        assert_eq!(human_duration(125_000), "2 min 05 s");
        assert_eq!(human_duration(3_720_000), "1 h 02 min");
    }

    #[test]
    fn reasons_are_cut_to_one_short_line() {
        assert_eq!(shorten("a\n  b", 10), "a b");
        assert_eq!(shorten("abcdefghijkl", 5), "abcd…");
    }

    #[test]
    fn lines_are_read_backwards_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h");
        fs::write(
            &path,
            "first line\n\nsecond\nthird one, longer than a chunk\n",
        )
        .unwrap();
        let mut lines = RevLines::open(&path, 4).unwrap().unwrap();
        let mut got = Vec::new();
        while let Some(line) = lines.next_line().unwrap() {
            got.push(String::from_utf8(line).unwrap());
        }
        assert_eq!(
            got,
            [
                "",
                "third one, longer than a chunk",
                "second",
                "",
                "first line"
            ]
        );
        assert!(
            RevLines::open(&dir.path().join("none"), 4)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn old_and_damaged_lines_are_tolerated_or_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_NAME);
        fs::write(
            &path,
            concat!(
                "{\"app\":\"a\",\"job\":\"1\",\"outcome\":\"succeeded\",\"extra\":[1]}\n",
                "not json\n",
                "{\"app\":\"a\",\"job\":\"2\",\"outcome\":\"exploded\"}\n",
                "\n",
                "{\"app\":\"b\",\"job\":\"3\",\"outcome\":\"failed\",\"attempts\":2}\n",
            ),
        )
        .unwrap();
        let read = read_history_counted(&path, None, None).unwrap();
        assert_eq!(read.skipped, 1);
        let jobs: Vec<&str> = read.entries.iter().map(|e| e.job.as_str()).collect();
        assert_eq!(jobs, ["1", "2", "3"]);
        assert_eq!(read.entries[0].outcome, Outcome::Succeeded);
        assert_eq!(read.entries[1].outcome, Outcome::Unknown);
        assert_eq!(read.entries[2].attempts, 2);
        assert_eq!(read.entries[2].moved_to, None);
    }

    #[test]
    fn an_unterminated_last_line_is_closed_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_NAME);
        fs::write(&path, "{\"app\":\"a\",\"job\":\"cut").unwrap();
        let entry = HistoryEntry {
            app: "a".into(),
            job: "2".into(),
            ..HistoryEntry::default()
        };
        append_history(&path, &entry).unwrap();
        let read = read_history_counted(&path, None, None).unwrap();
        assert_eq!(read.skipped, 1);
        assert_eq!(read.entries, [entry]);
    }

    #[test]
    fn pruning_keeps_the_newest_archives_and_nothing_else_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path();
        let base = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        for (i, name) in ["a.tar.gz", "b.tgz", "c.tar.gz", "d.tar.gz"]
            .iter()
            .enumerate()
        {
            let file = File::create(done.join(name)).unwrap();
            file.set_modified(base + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        fs::write(done.join("notes.txt"), "keep me").unwrap();
        fs::write(done.join(".x.tar.gz.tmp"), "keep me").unwrap();
        // "a" was just placed: it counts as the newest whatever its time.
        let deleted = prune_done(done, 2, Some(&done.join("a.tar.gz"))).unwrap();
        assert_eq!(deleted, [done.join("b.tgz"), done.join("c.tar.gz")]);
        for kept in ["a.tar.gz", "d.tar.gz", "notes.txt", ".x.tar.gz.tmp"] {
            assert!(done.join(kept).exists(), "{kept}");
        }
    }

    #[test]
    fn placing_never_overwrites_and_finishes_a_half_done_move() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        fs::create_dir(&spool).unwrap();
        let src = spool.join("archive.tar.gz");
        fs::write(&src, "new").unwrap();
        let failed = dir.path().join("failed");
        fs::create_dir(&failed).unwrap();
        fs::write(failed.join("app.tar.gz"), "old").unwrap();
        fs::write(failed.join("app.1.tar.gz.reason.txt"), "stale").unwrap();
        let mut seen = Vec::new();
        let why = |d: &Path| Some(format!("why {}", d.display()));
        let dest = place(&src, &failed, OsStr::new("app.tar.gz"), &why, None, |d| {
            seen.push(d.to_path_buf());
            Ok(())
        })
        .unwrap();
        assert_eq!(dest, failed.join("app.2.tar.gz"));
        // app.1 was tried (persisted first), then found taken by its reason file.
        assert_eq!(seen, vec![failed.join("app.1.tar.gz"), dest.clone()]);
        assert_eq!(
            fs::read_to_string(failed.join("app.tar.gz")).unwrap(),
            "old"
        );
        assert_eq!(
            fs::read_to_string(failed.join("app.1.tar.gz.reason.txt")).unwrap(),
            "stale"
        );
        assert_eq!(fs::read_to_string(&dest).unwrap(), "new");
        assert_eq!(
            fs::read_to_string(reason_path(&dest)).unwrap(),
            format!("why {}", dest.display())
        );
        assert!(!src.exists());

        // Crash after the link, before the spool's name was removed.
        fs::hard_link(&dest, &src).unwrap();
        let again = place(
            &src,
            &failed,
            OsStr::new("app.tar.gz"),
            &why,
            Some(&dest),
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(again, dest);
        assert!(!src.exists());
        assert!(!failed.join("app.3.tar.gz").exists());
    }

    #[test]
    fn a_name_taken_after_its_reason_was_written_loses_that_reason() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("archive.tar.gz");
        fs::write(&src, "new").unwrap();
        let failed = dir.path().join("failed");
        fs::create_dir(&failed).unwrap();
        let why = |d: &Path| Some(format!("why {}", d.display()));
        // An earlier run chose app.tar.gz and wrote its reason; then a person dropped a file
        // of that name into failed/ before the archive moved in.
        let chosen = failed.join("app.tar.gz");
        assert!(claim_reason(&reason_path(&chosen), &format!("why {}", chosen.display())).unwrap());
        fs::write(&chosen, "someone else's").unwrap();
        let dest = place(
            &src,
            &failed,
            OsStr::new("app.tar.gz"),
            &why,
            Some(&chosen),
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(dest, failed.join("app.1.tar.gz"));
        assert!(
            !reason_path(&chosen).exists(),
            "no reason describes the other file"
        );
        assert!(reason_path(&dest).exists());
    }

    #[test]
    fn attempts_count_the_final_try_once() {
        let mut job = Job {
            id: "j".into(),
            app: "a".into(),
            git_ref: "r".into(),
            payload: Payload::Url { url: "u".into() },
            created_at: 0,
            started_at: Some(0),
            failed_attempts: 2,
            aborted_retries: 1,
            source_renewals: 0,
            state: JobState::Succeeded {
                deployment_id: "d".into(),
            },
        };
        assert_eq!(attempts(&job), 4);
        let failure = Failure {
            step: Step::Upload,
            reason: "r".into(),
            status: None,
            deployment_id: None,
            log_tail: Vec::new(),
            http_status: None,
            gave_up: true,
        };
        job.state = JobState::Failed(failure.clone());
        assert_eq!(attempts(&job), 3);
        job.state = JobState::Failed(Failure {
            gave_up: false,
            ..failure
        });
        assert_eq!(attempts(&job), 4);
        job.failed_attempts = 0;
        job.aborted_retries = 0;
        job.state = JobState::Superseded { by: "k".into() };
        assert_eq!(attempts(&job), 0);
    }

    /// A drop folder and a spool holding one finished job for `drop/app.tar.gz`.
    fn finished_job(state: JobState) -> (tempfile::TempDir, Outcomes, Job) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("state/spool")).unwrap();
        fs::create_dir(dir.path().join("drop")).unwrap();
        let (id, tmp) = spool.new_job_dir().unwrap();
        fs::write(tmp.join(ARCHIVE_NAME), b"archive bytes").unwrap();
        let job = Job {
            id,
            app: "my-app".into(),
            git_ref: "my-app-20261125174258-deadbeef".into(),
            payload: Payload::Archive {
                original: dir.path().join("drop/app.tar.gz"),
                summary: crate::archive::inspect::Summary {
                    root: "app".into(),
                    entries: 1,
                    files: 1,
                    uncompressed_bytes: 1024,
                    compressed_bytes: 13,
                    sha256: "ab".repeat(32),
                },
                tree_digest: None,
            },
            created_at: crate::queue::spool::now(),
            started_at: None,
            failed_attempts: 0,
            aborted_retries: 0,
            source_renewals: 0,
            state,
        };
        spool.commit_new(&tmp, &job).unwrap();
        let outcomes = Outcomes::new(&dir.path().join("state"), spool);
        (dir, outcomes, job)
    }

    fn crash_after<T>(point: &'static str, f: impl FnOnce() -> T) -> T {
        CRASH_AFTER.with(|c| c.set(Some(point)));
        let result = f();
        CRASH_AFTER.with(|c| c.set(None));
        result
    }

    fn history_lines(outcomes: &Outcomes) -> Vec<String> {
        fs::read_to_string(outcomes.history_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_crash_after_the_move_neither_moves_again_nor_loses_the_line() {
        let failure = Failure {
            step: Step::Follow,
            reason: "deployment 7 ended with status build-error".into(),
            status: Some("build-error".into()),
            deployment_id: Some("7".into()),
            log_tail: vec!["npm ERR! missing script: start".into()],
            http_status: None,
            gave_up: false,
        };
        let (dir, outcomes, job) = finished_job(JobState::Failed(failure));
        let failed = dir.path().join("drop/failed");
        let err = crash_after("move", || outcomes.record(&job, 5)).unwrap_err();
        assert!(err.to_string().contains("simulated crash"), "{err}");
        assert!(failed.join("app.tar.gz").exists());
        assert!(history_lines(&outcomes).is_empty());

        let entry = outcomes.record(&job, 5).unwrap();
        assert_eq!(history_lines(&outcomes).len(), 1);
        let names: Vec<_> = fs::read_dir(&failed)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(failed.join("app.tar.gz.reason.txt").exists());
        assert_eq!(
            entry.moved_to.as_deref(),
            Some(&*failed.join("app.tar.gz").to_string_lossy())
        );
        assert!(!outcomes.spool.job_dir(&job.id).exists());
    }

    #[test]
    fn a_crash_between_the_reason_and_the_move_finishes_under_the_same_name() {
        let failure = Failure {
            step: Step::Upload,
            reason: "upload: HTTP 500".into(),
            status: None,
            deployment_id: None,
            log_tail: Vec::new(),
            http_status: Some(500),
            gave_up: false,
        };
        let (dir, outcomes, job) = finished_job(JobState::Failed(failure));
        let failed = dir.path().join("drop/failed");
        let err = crash_after("reason", || outcomes.record(&job, 5)).unwrap_err();
        assert!(err.to_string().contains("simulated crash"), "{err}");
        // The reason is there, complete; the archive is not yet.
        let reason = fs::read_to_string(failed.join("app.tar.gz.reason.txt")).unwrap();
        assert!(reason.contains("upload: HTTP 500"), "{reason}");
        assert!(!failed.join("app.tar.gz").exists());

        let entry = outcomes.record(&job, 5).unwrap();
        let mut names: Vec<_> = fs::read_dir(&failed)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["app.tar.gz", "app.tar.gz.reason.txt"]);
        assert_eq!(
            fs::read_to_string(failed.join("app.tar.gz.reason.txt")).unwrap(),
            reason,
            "the same reason, not a second one"
        );
        assert_eq!(
            entry.moved_to.as_deref(),
            Some(&*failed.join("app.tar.gz").to_string_lossy())
        );
        assert_eq!(history_lines(&outcomes).len(), 1);
    }

    #[test]
    fn a_crash_after_the_history_line_writes_no_second_one() {
        let (dir, outcomes, job) = finished_job(JobState::Succeeded {
            deployment_id: "42".into(),
        });
        let first = crash_after("history", || outcomes.record(&job, 5)).unwrap_err();
        assert!(first.to_string().contains("simulated crash"), "{first}");
        assert_eq!(history_lines(&outcomes).len(), 1);
        assert!(outcomes.spool.job_dir(&job.id).exists());
        // Another job's line lands in between, as on a restart recovering several jobs.
        append_history(
            &outcomes.history_path(),
            &HistoryEntry {
                app: "other".into(),
                job: "other-job".into(),
                ..HistoryEntry::default()
            },
        )
        .unwrap();

        let entry = outcomes.record(&job, 5).unwrap();
        let lines = history_lines(&outcomes);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines.iter().filter(|l| l.contains(&job.id)).count(), 1);
        assert_eq!(entry.deployment_id.as_deref(), Some("42"));
        assert!(dir.path().join("drop/done/app.tar.gz").exists());
        assert!(!dir.path().join("drop/done/app.1.tar.gz").exists());
        assert!(!outcomes.spool.job_dir(&job.id).exists());
        // And once more, after it all went through: the same entry back, nothing written.
        assert_eq!(outcomes.record(&job, 5).unwrap(), entry);
        assert_eq!(history_lines(&outcomes).len(), 2);
    }

    #[test]
    fn an_unfinished_job_is_refused() {
        let (_dir, outcomes, job) = finished_job(JobState::Queued);
        let err = outcomes.record(&job, 5).unwrap_err().to_string();
        assert!(
            err.contains("app.tar.gz") && err.contains("still queued"),
            "{err}"
        );
        assert!(outcomes.spool.archive_path(&job.id).exists());
    }

    #[test]
    fn step_names_are_the_record_names() {
        assert_eq!(step_name(Step::CreateSource), "create_source");
        assert_eq!(step_name(Step::Follow), "follow");
    }
}
