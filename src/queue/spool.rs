//! The spool: one directory per job, holding the archive and a `job.json` record.
//!
//! The record is the job's state machine. Every transition is written with
//! write-temp, fsync, rename, fsync-directory *before* the side effect it guards, so a process
//! killed at any moment restarts from a state that is true or, at worst, one step behind (and
//! the steps are written so that repeating one is safe: a new source, a new upload, a look in
//! the deployment list before posting again).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::archive::inspect::Summary;

mod sequence;
pub use sequence::SEQUENCE_NAME;

/// The archive file's name inside a job directory.
pub const ARCHIVE_NAME: &str = "archive.tar.gz";
/// The record's name inside a job directory.
pub const RECORD_NAME: &str = "job.json";
/// Written in a job directory being made, before a dropped file is moved into it: says where
/// the file came from, so a crash before the record exists can put the file back.
pub const CLAIM_NAME: &str = "claim.json";

/// The content of [`CLAIM_NAME`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claim {
    pub app: String,
    #[serde(with = "os_path")]
    pub original: PathBuf,
}

/// Paths in records: a JSON string when the path is UTF-8, else `{"bytes": [...]}`, so that a
/// file whose name is not UTF-8 (legal on Linux) is recorded exactly.
mod os_path {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Bytes { bytes: Vec<u8> },
    }

    pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        match path.to_str() {
            Some(text) => Repr::Text(text.to_string()),
            None => Repr::Bytes {
                bytes: path.as_os_str().as_bytes().to_vec(),
            },
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::Text(text) => PathBuf::from(text),
            Repr::Bytes { bytes } => PathBuf::from(OsString::from_vec(bytes)),
        })
    }
}

/// An upload slot older than this is not trusted any more (the platform drops it at 10 min).
pub const SOURCE_STALE_AFTER: Duration = Duration::from_secs(9 * 60);

/// Seconds since the Unix epoch: the record's clock (readable in the JSON, and ordered).
pub type Timestamp = u64;

/// Now, as a [`Timestamp`].
pub fn now() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a job deploys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// An archive in the job directory, checked before it was queued.
    Archive {
        /// Where it came from (the dropped or given file, or the watched directory it was
        /// packed from), for messages and outcomes.
        #[serde(with = "os_path")]
        original: PathBuf,
        summary: Summary,
        /// Set when the archive was packed from the watched directory `original`: the digest
        /// of the tree's content, so an unchanged tree is not deployed again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tree_digest: Option<String>,
        /// Set when the archive is a copy of a file given on the command line (`deploy`): that
        /// file stays where it is, so the copy is not placed in a `done/` or `failed/` folder
        /// beside it; it leaves with the spool directory.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        copied: bool,
    },
    /// An archive the platform fetches itself: no upload.
    Url { url: String },
}

/// Where a job stands. Each state is persisted before the action it leads to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Nothing done yet.
    Queued,
    /// An upload slot exists; the archive may or may not have been sent.
    SourceCreated {
        upload_url: String,
        download_url: String,
        at: Timestamp,
    },
    /// The archive was accepted by the storage.
    Uploaded {
        download_url: String,
        /// When the source was created (it expires 10 minutes later).
        source_at: Timestamp,
    },
    /// A deployment is about to be (or was) requested: on resume, look for `git_ref` in the
    /// app's deployments before posting again.
    DeployRequested {
        source_url: String,
        /// When the uploaded source was created; `None` for a URL given by the user.
        #[serde(default)]
        source_at: Option<Timestamp>,
        /// When the deployment was first requested (for `status`, and for records made
        /// before `preexisting` existed: see the driver's adoption rule).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_at: Option<Timestamp>,
        /// For a git_ref given by the user: the platform's deployments that already carried it
        /// before this job posted (listed first), which are never this job's. `None` for the
        /// job's own git_ref (it carries the job's nonce: no other deployment has it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        preexisting: Option<Vec<String>>,
    },
    /// The platform accepted the deployment; follow it.
    Deploying {
        deployment_id: String,
        /// The platform's status when last seen (`building`, …), for `status`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform_status: Option<String>,
        /// When the deployment was created or adopted: the follow limit counts from here.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Timestamp>,
    },
    /// Finished: `success`.
    Succeeded { deployment_id: String },
    /// Finished: failed for good.
    Failed(Failure),
    /// Finished: a newer archive for the same app replaced this one before it started.
    Superseded { by: String },
    /// The deployment succeeded; its health check runs (see [`Job::check`]).
    Verifying {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment_id: Option<String>,
    },
    /// Finished: the deployment succeeded but its health check failed.
    Unhealthy {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deployment_id: Option<String>,
        reason: String,
    },
}

impl JobState {
    /// The state's name as written in `job.json`.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::SourceCreated { .. } => "source_created",
            JobState::Uploaded { .. } => "uploaded",
            JobState::DeployRequested { .. } => "deploy_requested",
            JobState::Deploying { .. } => "deploying",
            JobState::Succeeded { .. } => "succeeded",
            JobState::Failed(_) => "failed",
            JobState::Superseded { .. } => "superseded",
            JobState::Verifying { .. } => "verifying",
            JobState::Unhealthy { .. } => "unhealthy",
        }
    }

    /// Succeeded, failed, superseded or unhealthy: the target has nothing more to do (a
    /// success may still await its check: see [`Job::is_done`]).
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded { .. }
                | JobState::Failed(_)
                | JobState::Superseded { .. }
                | JobState::Unhealthy { .. }
        )
    }
}

/// The step a job was at when something happened to it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Inspect,
    CreateSource,
    Upload,
    CreateDeployment,
    Follow,
    /// Local target: unpacking the archive into a release directory.
    Extract,
    /// Local target: pointing `current` at the new release.
    Switch,
    /// Local target: running the `activate` command.
    Activate,
    /// The health check after the deployment.
    Verify,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Inspect => "inspect",
            Step::CreateSource => "create source",
            Step::Upload => "upload",
            Step::CreateDeployment => "create deployment",
            Step::Follow => "follow deployment",
            Step::Extract => "extract release",
            Step::Switch => "switch current",
            Step::Activate => "activate release",
            Step::Verify => "verify",
        })
    }
}

/// Why a job failed, for the history, the log and the `.reason.txt` file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub step: Step,
    /// The cause, in words.
    pub reason: String,
    /// The deployment's final status, when it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// The last lines of the build output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// The HTTP status of the API answer that ended the job, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// True when the job stopped because transient errors outlasted the retry budget.
    #[serde(default)]
    pub gave_up: bool,
}

/// A job record, the content of `job.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub app: String,
    /// Unique per job (and per retried deployment): how a posted deployment is recognised.
    pub git_ref: String,
    /// The git_ref was given by the user (`deploy --git-ref`), so it does not carry the job's
    /// nonce and other deployments may share it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub git_ref_given: bool,
    pub payload: Payload,
    pub created_at: Timestamp,
    /// Arrival order in the spool, given when the record is committed
    /// ([`Spool::commit_new`]): jobs are listed, and resumed after a restart, in this order.
    /// `None` in records made before it existed (listed first, by creation time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When the job first started running: the retry budget counts from here.
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// Attempts that ended in an error, over the job's life.
    #[serde(default)]
    pub failed_attempts: u32,
    /// How many times an `aborted` deployment was posted again.
    #[serde(default)]
    pub aborted_retries: u32,
    /// How many upload slots the storage refused and were replaced.
    #[serde(default)]
    pub source_renewals: u32,
    pub state: JobState,
    /// The health check and rollback, when the app has a check (or the job is a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<crate::queue::check::Check>,
}

impl Job {
    /// A new job, `queued`, with no attempt made yet.
    pub fn new(
        id: String,
        app: &str,
        git_ref: String,
        payload: Payload,
        created_at: Timestamp,
    ) -> Job {
        Job {
            id,
            app: app.to_string(),
            git_ref,
            git_ref_given: false,
            payload,
            created_at,
            seq: None,
            started_at: None,
            failed_attempts: 0,
            aborted_retries: 0,
            source_renewals: 0,
            state: JobState::Queued,
            check: None,
        }
    }

    /// Finished for good: finished, and not a success whose check has not decided yet.
    pub fn is_done(&self) -> bool {
        self.state.is_finished() && !self.awaits_check()
    }

    /// A success whose check has not given its verdict (a restart came in between).
    pub fn awaits_check(&self) -> bool {
        matches!(self.state, JobState::Succeeded { .. })
            && self.check.as_ref().is_some_and(|c| c.verdict.is_none())
    }

    /// The earlier archive this job brings back, if it is a rollback.
    pub fn rollback(&self) -> Option<&crate::queue::check::RollbackOf> {
        self.check.as_ref().and_then(|c| c.rollback.as_ref())
    }
}

/// Errors of the spool: always about one file.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("job record {} is unreadable: {source}", path.display())]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The shared store refused or could not take the record (fleet mode): `Fenced` (this
    /// node lost the app's lane) and `Unavailable` (the database is down) leave the job for
    /// whoever holds its lane next.
    #[error("{0}")]
    Store(#[from] crate::queue::store::StoreError),
}

impl SpoolError {
    /// Whether the store said this node no longer holds the job's app's lane: the node must
    /// stop driving that app.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            SpoolError::Store(crate::queue::store::StoreError::Fenced { .. })
        )
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError {
    let path = path.to_path_buf();
    move |source| SpoolError::Io {
        action,
        path,
        source,
    }
}

/// The spool directory: `<state_dir>/spool/<job-id>/`.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    sequence: sequence::Sequence,
    /// The fleet's store (fleet mode): every [`Spool::save`] goes there first, fenced by the
    /// app's lease.
    store: Option<std::sync::Arc<dyn crate::queue::store::Store>>,
}

impl Spool {
    /// Opens (creating it if needed) the spool directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        crate::durable::create_dir_all(&dir).map_err(io("cannot create spool directory", &dir))?;
        Ok(Spool {
            dir,
            sequence: sequence::Sequence::default(),
            store: None,
        })
    }

    /// This spool as the working copy of a shared store (fleet mode): [`Spool::save`] writes
    /// to `store` first, and writes the local record only once the store took it. A store
    /// that is not shared (the local one) changes nothing.
    pub fn with_store(mut self, store: std::sync::Arc<dyn crate::queue::store::Store>) -> Spool {
        self.store = store.shared().then_some(store);
        self
    }

    /// The shared store behind this spool, in fleet mode.
    pub fn shared_store(&self) -> Option<&std::sync::Arc<dyn crate::queue::store::Store>> {
        self.store.as_ref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A job's directory.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// The archive of a job.
    pub fn archive_path(&self, id: &str) -> PathBuf {
        self.job_dir(id).join(ARCHIVE_NAME)
    }

    /// Makes a new, empty job directory with a fresh id (`<YYYYmmddHHMMSS>-<random>`), whose
    /// name starts with `.` until its record is written, so a half-made job is never resumed.
    pub fn new_job_dir(&self) -> Result<(String, PathBuf), SpoolError> {
        for _ in 0..16 {
            let id = format!("{}-{:08x}", compact_utc(now()), fastrand::u32(..));
            let tmp = self.dir.join(format!(".new-{id}"));
            match crate::durable::create_dir(&tmp) {
                // Made durable before a dropped file is moved into it.
                Ok(()) => return sync_dir(&self.dir).map(|()| (id, tmp)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("cannot create job directory", &tmp)(e)),
            }
        }
        Err(SpoolError::Io {
            action: "cannot find a free job id in",
            path: self.dir.clone(),
            source: std::io::Error::other("16 collisions"),
        })
    }

    /// Gives a new job its arrival number ([`Job::seq`]), writes its record into the directory
    /// made by [`Spool::new_job_dir`] and moves the directory to its final name: from here on
    /// the job exists.
    pub fn commit_new(&self, tmp_dir: &Path, job: &mut Job) -> Result<(), SpoolError> {
        if job.seq.is_none() {
            job.seq = Some(self.sequence.next(&self.dir)?);
        }
        write_record(tmp_dir, job)?;
        let dir = self.job_dir(&job.id);
        crate::durable::rename(tmp_dir, &dir).map_err(io("cannot move job directory to", &dir))?;
        sync_dir(&self.dir)
    }

    /// Persists a job's record (temp file, fsync, rename, fsync directory). In fleet mode the
    /// shared store takes it first, fenced by the app's lease ([`Spool::with_store`]): this is
    /// the one place where every write of a job's state is fenced, and a refused write
    /// (`Fenced`, `Unavailable`) leaves the local record as it was.
    pub fn save(&self, job: &Job) -> Result<(), SpoolError> {
        if let Some(store) = &self.store {
            store.save(job)?;
        }
        write_record(&self.job_dir(&job.id), job)
    }

    /// Writes a job's record in this spool only, whatever the store: for a record that comes
    /// *from* the fleet's store (a job this node takes up under a lease), never for a change
    /// of a job's state (that is [`Spool::save`]). The job's directory must exist.
    pub fn save_local(&self, job: &Job) -> Result<(), SpoolError> {
        write_record(&self.job_dir(&job.id), job)
    }

    /// [`Spool::save`] on a blocking thread (it fsyncs twice), for async code: the record is
    /// written from a copy of `job`.
    pub async fn save_async(&self, job: &Job) -> Result<(), SpoolError> {
        let (spool, copy) = (self.clone(), job.clone());
        match crate::blocking::run(move || spool.save(&copy)).await {
            Ok(()) => Ok(()),
            Err(crate::blocking::BlockingError::Failed(e)) => Err(e),
            Err(crate::blocking::BlockingError::Crashed(e)) => Err(SpoolError::Io {
                action: "cannot write the record of",
                path: self.job_dir(&job.id),
                source: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Reads one job's record.
    pub fn load(&self, id: &str) -> Result<Job, SpoolError> {
        let path = self.job_dir(id).join(RECORD_NAME);
        let text = fs::read(&path).map_err(io("cannot read", &path))?;
        serde_json::from_slice(&text).map_err(|source| SpoolError::Record { path, source })
    }

    /// Every job record in the spool, in arrival order ([`Job::seq`]; records without one
    /// first, by creation time, then id). Unreadable records are returned as errors beside the
    /// good ones (first), so one bad file never hides the others.
    pub fn jobs(&self) -> Result<Vec<Result<Job, SpoolError>>, SpoolError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("cannot list", &self.dir))? {
            let entry = entry.map_err(io("cannot list", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !entry.path().join(RECORD_NAME).exists() {
                continue;
            }
            ids.push(name.to_string());
        }
        let mut jobs: Vec<(String, Result<Job, SpoolError>)> = ids
            .into_iter()
            .map(|id| {
                let job = self.load(&id);
                (id, job)
            })
            .collect();
        jobs.sort_by(|(a_id, a), (b_id, b)| arrival(a).cmp(&arrival(b)).then(a_id.cmp(b_id)));
        Ok(jobs.into_iter().map(|(_, job)| job).collect())
    }

    /// Removes a finished job's directory, safely at every step: it is first renamed to a
    /// dot-name (`.gone-<id>`, never listed as a job) and that made durable, then deleted; a
    /// crash in between leaves a `.gone-` directory that [`Spool::clean_leftovers`] removes
    /// at the next start, never a job record without its outcome note.
    pub fn remove(&self, id: &str) -> Result<(), SpoolError> {
        let dir = self.job_dir(id);
        let gone = self.dir.join(format!("{GONE_PREFIX}{id}"));
        match crate::durable::rename(&dir, &gone) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("cannot remove", &dir)(e)),
        }
        sync_dir(&self.dir)?;
        crate::durable::remove_tree(&gone).map_err(io("cannot remove", &gone))?;
        sync_dir(&self.dir)
    }

    /// Removes what a crash can leave in the spool, besides half-made jobs (see
    /// [`Spool::clean_partial`]): the `.gone-` directories of finished jobs being removed,
    /// directories without a record (left by an older version's removal: their outcome was
    /// recorded), the start-up's rename probes, and temporary files. Returns what it removed.
    /// Call it only while no job is being made or removed (at start, under the state lock).
    pub fn clean_leftovers(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let mut removed = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("cannot list", &self.dir))? {
            let entry = entry.map_err(io("cannot list", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let litter = if is_dir {
                name.starts_with(GONE_PREFIX)
                    || (!name.starts_with('.') && !path.join(RECORD_NAME).exists())
            } else {
                is_temporary(&name)
            };
            if !litter {
                continue;
            }
            let gone = if is_dir {
                crate::durable::remove_tree(&path)
            } else {
                crate::durable::remove_file(&path)
            };
            gone.map_err(io("cannot remove", &path))?;
            removed.push(path);
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Writes the claim note into a job directory being made (see [`CLAIM_NAME`]).
    pub fn write_claim(&self, tmp_dir: &Path, claim: &Claim) -> Result<(), SpoolError> {
        let path = tmp_dir.join(CLAIM_NAME);
        let bytes = serde_json::to_vec(claim).map_err(|source| SpoolError::Record {
            path: path.clone(),
            source,
        })?;
        Ok(crate::durable::write(&path, &bytes)?)
    }

    /// Cleans up after a process that died while making a job: a dropped file that had been
    /// moved in goes back where it came from (beside it, with a `.recovered-N` suffix, if that
    /// name was taken since); then the half-made directory is removed. One file that cannot go
    /// back (its drop folder is missing: moved away, or its mount not back yet) stops nothing:
    /// it stays in its half-made directory, listed in [`Partial::kept`], for the caller to say
    /// so and try again later ([`Spool::put_back`]).
    pub fn clean_partial(&self) -> Result<Partial, SpoolError> {
        let mut partial = Partial::default();
        for entry in fs::read_dir(&self.dir).map_err(io("cannot list", &self.dir))? {
            let entry = entry.map_err(io("cannot list", &self.dir))?;
            if !entry.file_name().to_string_lossy().starts_with(".new-") {
                continue;
            }
            let dir = entry.path();
            match self.put_back(&dir) {
                Ok(restored) => partial.restored.extend(restored),
                Err(error) => {
                    let claim = read_claim(&dir);
                    partial.kept.push(KeptClaim {
                        app: claim.as_ref().map(|c| c.app.clone()),
                        original: claim.map(|c| c.original),
                        dir,
                        error: error.to_string(),
                    })
                }
            }
        }
        Ok(partial)
    }

    /// Undoes one job directory being made (`tmp_dir`, see [`Spool::new_job_dir`]): a dropped
    /// file that was moved in goes back where it came from (beside it, with a `.recovered-N`
    /// suffix, if that name was taken since), then the directory is removed. Returns where the
    /// file went back, if one did.
    pub fn put_back(&self, tmp_dir: &Path) -> Result<Option<PathBuf>, SpoolError> {
        let archive = tmp_dir.join(ARCHIVE_NAME);
        let mut restored = None;
        if archive.exists() {
            // A copy (the one-shot command) has no claim: the user still has the file.
            if let Some(claim) = read_claim(tmp_dir) {
                let target = free_name(&claim.original, "recovered");
                crate::durable::rename(&archive, &target)
                    .map_err(io("cannot put back", &target))?;
                if let Some(parent) = target.parent() {
                    sync_dir(parent)?;
                }
                restored = Some(target);
            }
        }
        crate::durable::remove_tree(tmp_dir).map_err(io("cannot remove", tmp_dir))?;
        sync_dir(&self.dir)?;
        Ok(restored)
    }
}

/// A record's place in the listing: unreadable ones, then those without an arrival number (by
/// creation time), then by arrival number.
fn arrival(job: &Result<Job, SpoolError>) -> (u8, u64, Timestamp) {
    match job {
        Err(_) => (0, 0, 0),
        Ok(Job {
            seq: None,
            created_at,
            ..
        }) => (1, 0, *created_at),
        Ok(Job { seq: Some(seq), .. }) => (2, *seq, 0),
    }
}

/// The prefix of a finished job's directory being removed (see [`Spool::remove`]).
const GONE_PREFIX: &str = ".gone-";

/// Whether a file name in the spool is one of the daemon's own temporary files: a durable
/// write's `.<name>.tmp`, or a start-up rename probe.
fn is_temporary(name: &str) -> bool {
    (name.starts_with('.') && name.ends_with(".tmp")) || name.starts_with(".dropdeploy-probe-")
}

/// The claim note of a job directory being made, if it has a readable one.
fn read_claim(tmp_dir: &Path) -> Option<Claim> {
    fs::read(tmp_dir.join(CLAIM_NAME))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// What [`Spool::clean_partial`] did.
#[derive(Debug, Default)]
pub struct Partial {
    /// Files put back in their drop folders.
    pub restored: Vec<PathBuf>,
    /// Files that could not go back, still in the spool.
    pub kept: Vec<KeptClaim>,
}

/// A claimed file that could not be put back, kept in its half-made job directory.
#[derive(Debug, Clone)]
pub struct KeptClaim {
    /// The half-made job directory holding it (`<spool>/.new-<id>/`).
    pub dir: PathBuf,
    /// The app that claimed it, when the claim note says.
    pub app: Option<String>,
    /// Where it was dropped, when the claim note says.
    pub original: Option<PathBuf>,
    /// Why it could not go back.
    pub error: String,
}

fn write_record(dir: &Path, job: &Job) -> Result<(), SpoolError> {
    let path = dir.join(RECORD_NAME);
    let bytes = serde_json::to_vec_pretty(job).map_err(|source| SpoolError::Record {
        path: path.clone(),
        source,
    })?;
    // A token pasted where a name or URL goes (and so into an error message) is not recorded.
    let bytes = crate::redact::redact_vec(bytes);
    Ok(crate::durable::write(&path, &bytes)?)
}

impl From<crate::durable::DurableError> for SpoolError {
    fn from(e: crate::durable::DurableError) -> Self {
        SpoolError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    }
}

/// `path` if nothing is there, else the first free `<stem>.<tag>-N<ext>` beside it, keeping a
/// `.tar.gz` or `.tgz` ending intact.
pub fn free_name(path: &Path, tag: &str) -> PathBuf {
    if fs::symlink_metadata(path).is_err() {
        return path.to_path_buf();
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, ext) = split_archive_name(&name);
    let dir = path.parent().unwrap_or(Path::new("."));
    (1u32..)
        .map(|n| dir.join(format!("{stem}.{tag}-{n}{ext}")))
        .find(|candidate| fs::symlink_metadata(candidate).is_err())
        .unwrap_or_else(|| path.to_path_buf())
}

/// Splits `app.tar.gz` into (`app`, `.tar.gz`), `app.tgz` into (`app`, `.tgz`).
pub fn split_archive_name(name: &str) -> (&str, &str) {
    for ext in [".tar.gz", ".tgz"] {
        if let Some(stem) = name.strip_suffix(ext)
            && !stem.is_empty()
        {
            return (stem, &name[stem.len()..]);
        }
    }
    match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    }
}

/// fsync a directory, so that a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    Ok(crate::durable::sync_dir(dir)?)
}

/// `YYYYmmddHHMMSS` in UTC, for ids and git refs.
pub fn compact_utc(ts: Timestamp) -> String {
    let days = ts / 86_400;
    let secs = ts % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> Job {
        Job {
            id: id.into(),
            app: "my-app".into(),
            git_ref: "my-app-20260101000000-deadbeef".into(),
            git_ref_given: false,
            payload: Payload::Url {
                url: "https://example.com/a.tar.gz".into(),
            },
            created_at: 1,
            seq: None,
            started_at: None,
            failed_attempts: 0,
            aborted_retries: 0,
            source_renewals: 0,
            state: JobState::Queued,
            check: None,
        }
    }

    /// A shared store that only answers `save`: held or fenced.
    #[derive(Debug, Default)]
    struct Fence {
        fenced: std::sync::atomic::AtomicBool,
        saved: std::sync::Mutex<Vec<String>>,
    }

    impl crate::queue::store::Store for Fence {
        fn node(&self) -> &str {
            "a"
        }
        fn shared(&self) -> bool {
            true
        }
        fn add(&self, _: &mut Job, _: Option<&Path>) -> Result<(), StoreError> {
            unreachable!()
        }
        fn save(&self, job: &Job) -> Result<(), StoreError> {
            if self.fenced.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Fenced {
                    app: job.app.clone(),
                    node: "a".into(),
                });
            }
            self.saved
                .lock()
                .unwrap()
                .push(job.state.name().to_string());
            Ok(())
        }
        fn finish(&self, _: &Job, _: &serde_json::Value) -> Result<(), StoreError> {
            unreachable!()
        }
        fn load(&self, _: &str) -> Result<Job, StoreError> {
            unreachable!()
        }
        fn jobs(&self, _: Option<&str>) -> Result<Vec<Job>, StoreError> {
            unreachable!()
        }
        fn fetch_archive(&self, _: &str, _: &Path) -> Result<(), StoreError> {
            unreachable!()
        }
        fn history(
            &self,
            _: Option<&str>,
            _: usize,
        ) -> Result<Vec<crate::queue::store::Finished>, StoreError> {
            unreachable!()
        }
        fn acquire(
            &self,
            _: &str,
            _: Duration,
        ) -> Result<Option<crate::queue::store::Lease>, StoreError> {
            unreachable!()
        }
        fn renew(
            &self,
            _: &crate::queue::store::Lease,
            _: Duration,
        ) -> Result<Option<crate::queue::store::Lease>, StoreError> {
            unreachable!()
        }
        fn release(&self, _: &crate::queue::store::Lease) -> Result<(), StoreError> {
            unreachable!()
        }
        fn holders(&self) -> Result<Vec<crate::queue::store::Holder>, StoreError> {
            unreachable!()
        }
        fn lease_of(&self, _: &str) -> Option<crate::queue::store::Lease> {
            None
        }
    }

    use crate::queue::store::StoreError;

    #[test]
    fn a_shared_store_takes_each_save_first_and_a_fenced_save_writes_nothing_locally() {
        let dir = tempfile::tempdir().unwrap();
        let fence = std::sync::Arc::new(Fence::default());
        let spool = Spool::open(dir.path().join("spool"))
            .unwrap()
            .with_store(fence.clone());
        let (id, tmp) = spool.new_job_dir().unwrap();
        let mut j = job(&id);
        spool.commit_new(&tmp, &mut j).unwrap();
        assert!(
            fence.saved.lock().unwrap().is_empty(),
            "commit_new is local"
        );
        j.state = JobState::Deploying {
            deployment_id: "d1".into(),
            platform_status: None,
            since: None,
        };
        spool.save(&j).unwrap();
        assert_eq!(*fence.saved.lock().unwrap(), ["deploying"]);

        fence
            .fenced
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut later = j.clone();
        later.state = JobState::Succeeded {
            deployment_id: "d1".into(),
        };
        let error = spool.save(&later).unwrap_err();
        assert!(error.is_fenced(), "{error}");
        assert!(error.to_string().contains("no longer holds"), "{error}");
        assert_eq!(spool.load(&id).unwrap(), j, "the local record is unchanged");
    }

    #[test]
    fn dates_are_formatted_in_utc() {
        assert_eq!(compact_utc(0), "19700101000000");
        assert_eq!(compact_utc(1_700_000_000), "20231114221320");
        assert_eq!(compact_utc(951_782_400), "20000229000000");
    }

    #[test]
    fn a_record_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let (id, tmp) = spool.new_job_dir().unwrap();
        let mut j = job(&id);
        spool.commit_new(&tmp, &mut j).unwrap();
        assert!(!tmp.exists());
        j.state = JobState::Deploying {
            deployment_id: "d1".into(),
            platform_status: None,
            since: None,
        };
        spool.save(&j).unwrap();
        assert_eq!(spool.load(&id).unwrap(), j);
        assert!(!spool.job_dir(&id).join(".job.json.tmp").exists());
        let text = fs::read_to_string(spool.job_dir(&id).join(RECORD_NAME)).unwrap();
        assert!(text.contains("\"state\": \"deploying\""), "{text}");
    }

    #[test]
    fn a_claimed_file_in_a_half_made_job_goes_back_to_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let drop = dir.path().join("drop");
        fs::create_dir(&drop).unwrap();
        let original = drop.join("app.tar.gz");
        let (_, tmp) = spool.new_job_dir().unwrap();
        spool
            .write_claim(
                &tmp,
                &Claim {
                    app: "a".into(),
                    original: original.clone(),
                },
            )
            .unwrap();
        fs::write(tmp.join(ARCHIVE_NAME), b"bytes").unwrap();
        // Meanwhile someone dropped another file with the same name.
        fs::write(&original, b"newer").unwrap();
        let restored = spool.clean_partial().unwrap().restored;
        assert_eq!(restored, vec![drop.join("app.recovered-1.tar.gz")]);
        assert_eq!(fs::read(&restored[0]).unwrap(), b"bytes");
        assert_eq!(fs::read(&original).unwrap(), b"newer");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_path_that_is_not_utf8_round_trips_through_a_record() {
        use std::os::unix::ffi::OsStrExt;
        let original = PathBuf::from(std::ffi::OsStr::from_bytes(b"/drop/caf\xe9-\xff.tar.gz"));
        let claim = Claim {
            app: "a".into(),
            original: original.clone(),
        };
        let text = serde_json::to_string(&claim).unwrap();
        assert!(text.contains("bytes"), "{text}");
        assert_eq!(serde_json::from_str::<Claim>(&text).unwrap(), claim);
        let plain = Claim {
            app: "a".into(),
            original: "/drop/a.tar.gz".into(),
        };
        let text = serde_json::to_string(&plain).unwrap();
        assert!(text.contains(r#""original":"/drop/a.tar.gz""#), "{text}");
        assert_eq!(serde_json::from_str::<Claim>(&text).unwrap(), plain);
    }

    #[test]
    fn archive_names_keep_their_double_extension() {
        assert_eq!(split_archive_name("app.tar.gz"), ("app", ".tar.gz"));
        assert_eq!(split_archive_name("v1.2.tgz"), ("v1.2", ".tgz"));
        assert_eq!(split_archive_name("README"), ("README", ""));
    }

    #[test]
    fn half_made_jobs_are_not_listed_and_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (id, tmp) = spool.new_job_dir().unwrap();
        spool.commit_new(&tmp, &mut job(&id)).unwrap();
        let (_, half) = spool.new_job_dir().unwrap();
        let listed = spool.jobs().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].as_ref().unwrap().id, id);
        spool.clean_partial().unwrap();
        assert!(!half.exists());
        assert!(spool.job_dir(&id).exists());
    }

    #[test]
    fn jobs_are_listed_in_arrival_order_not_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        // Made within one second: their ids differ only by their random part.
        let mut made = Vec::new();
        for _ in 0..20 {
            let (id, tmp) = spool.new_job_dir().unwrap();
            let mut j = job(&id);
            spool.commit_new(&tmp, &mut j).unwrap();
            made.push((id, j.seq.unwrap()));
        }
        let listed: Vec<String> = spool
            .jobs()
            .unwrap()
            .into_iter()
            .map(|j| j.unwrap().id)
            .collect();
        let ids: Vec<String> = made.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(listed, ids);
        assert!(made.windows(2).all(|w| w[0].1 < w[1].1), "{made:?}");
        // A record from before the numbers comes first; a lost counter is rebuilt from the
        // records, never giving a number twice.
        let mut old = job("00000000000000-old");
        old.created_at = 5;
        fs::create_dir(spool.job_dir(&old.id)).unwrap();
        spool.save(&old).unwrap();
        fs::remove_file(dir.path().join(SEQUENCE_NAME)).unwrap();
        let again = Spool::open(dir.path()).unwrap();
        let (id, tmp) = again.new_job_dir().unwrap();
        let mut last = job(&id);
        again.commit_new(&tmp, &mut last).unwrap();
        assert_eq!(last.seq, Some(made.last().unwrap().1 + 1));
        let listed = again.jobs().unwrap();
        assert_eq!(listed[0].as_ref().unwrap().id, old.id);
        assert_eq!(listed[21].as_ref().unwrap().id, id);
    }

    #[test]
    fn a_corrupt_record_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        fs::create_dir(dir.path().join("x")).unwrap();
        fs::write(dir.path().join("x").join(RECORD_NAME), b"{nope").unwrap();
        let listed = spool.jobs().unwrap();
        let err = listed[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("x/job.json"), "{err}");
    }
}
