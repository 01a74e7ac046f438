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
//!
//! The parts: `record` takes a job through these steps, `place` puts an archive in `done/` or
//! `failed/` (its reason first, never over another file), `reason` says what a reason file says,
//! `history` appends and reads `history.jsonl`, and `status` builds the `status` text. The
//! drop folder's layout (`done/`, `failed/`, reason file names) is the drop folder's own:
//! [`DropLayout`](crate::source::drop::DropLayout).

mod fleet_status;
mod history;
mod place;
mod reason;
mod record;
mod status;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::queue::spool::{Job, Spool, SpoolError, Timestamp, compact_utc};

pub use fleet_status::{FleetState, FleetView, NodeSeen, fleet_json, fleet_report};
pub use history::{
    HistoryRead, format_history_table, live_now, read_history, read_history_counted,
};
pub use status::{Driver, interrupted_hint, status_json, status_report};

/// The history file's name inside the state directory.
pub const HISTORY_NAME: &str = "history.jsonl";

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
    /// The deployment succeeded and its health check passed.
    Verified,
    /// The deployment succeeded but its health check failed.
    Unhealthy,
    /// A rollback deployed an earlier verified archive again, and it passed its check.
    RolledBack,
    /// A value this version does not know (a line written by a newer version), or none.
    #[default]
    #[serde(other)]
    Unknown,
}

impl Outcome {
    /// The name written in the history: `succeeded`, `failed`, `superseded`, `verified`,
    /// `unhealthy`, `rolled_back` (or `unknown`).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Superseded => "superseded",
            Outcome::Verified => "verified",
            Outcome::Unhealthy => "unhealthy",
            Outcome::RolledBack => "rolled_back",
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
    /// `succeeded`, `failed`, `superseded`, or with a health check `verified`, `unhealthy`,
    /// `rolled_back`.
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
    /// The health check's deciding probe (`status`, `latency_ms`, `excerpt`, `error`,
    /// `healthy`); the one field left out, rather than `null`, when no check ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::queue::check::Probe>,
}

impl Outcome {
    /// Whether the deployment went live (succeeded, verified or rolled back).
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::Succeeded | Outcome::Verified | Outcome::RolledBack
        )
    }
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

    /// The history line recorded for `job`, if there is one. Blocking.
    pub fn entry_of(&self, job: &str) -> Result<Option<HistoryEntry>, OutcomeError> {
        history::find_job_line(&self.history_path(), job, 0)
    }
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

/// What a person calls a job's file: the dropped file's name, or the URL.
fn file_label(job: &Job) -> String {
    crate::queue::check::file_name_of(job)
}

fn human_duration(ms: u64) -> String {
    crate::human::duration(std::time::Duration::from_millis(ms))
}

fn exists(path: &Path) -> Result<bool, OutcomeError> {
    path.try_exists().map_err(io_err("cannot look at", path))
}

fn sync_dir(dir: &Path) -> Result<(), OutcomeError> {
    Ok(crate::durable::sync_dir(dir)?)
}
