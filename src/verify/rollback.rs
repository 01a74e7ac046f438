//! Rollback jobs: a new job that deploys a kept, verified archive again (a new upload and a
//! new build for Scalingo, a new release for a local target), with its own git_ref, so the
//! usual guarantees hold (each step recorded first, one deployment per job).

use std::fs;
use std::path::Path;

use crate::queue::check::{Check, RollbackOf};
use crate::queue::intake::make_git_ref;
use crate::queue::spool::{
    ARCHIVE_NAME, Job, Payload, RECORD_NAME, Spool, SpoolError, compact_utc, now,
};

use super::store::{Kept, Store};

/// The kept archive `to` names (any git_ref, job id or file name it was verified under), else
/// the last verified one.
pub fn choose<'a>(kept: &'a [Kept], to: Option<&str>) -> Option<&'a Kept> {
    match to {
        None => kept.first(),
        Some(to) => kept.iter().find(|k| k.answers_to(to)),
    }
}

/// What is live before a rollback by hand: the job, file name and git_ref of the app's last
/// outcome, when it has one.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub job: String,
    pub file: String,
    pub git_ref: Option<String>,
}

/// A rollback asked for by a person (`dropdeploy rollback`, the status page) from `live` to
/// the kept archive `chosen`.
pub fn by_hand(chosen: &Kept, live: Option<Live>) -> RollbackOf {
    let live = live.unwrap_or_default();
    RollbackOf {
        from_job: live.job,
        from_file: live.file,
        from_ref: live.git_ref.unwrap_or_else(|| "-".to_string()),
        to_job: chosen.job.clone(),
        to_ref: chosen.git_ref.clone(),
        to_file: chosen.file.clone(),
        automatic: false,
    }
}

/// A fresh job id, in the spool's format.
pub fn new_id() -> String {
    format!("{}-{:08x}", compact_utc(now()), fastrand::u32(..))
}

/// The id of a rollback made by job `parent`: named after it, for whoever reads the spool (a
/// restart resumes jobs in arrival order, `Job::seq`: the parent, older, finishes first, else
/// it would count as newer work and cut the rollback's check).
pub fn child_id(parent: &str) -> String {
    format!("{parent}.r{:08x}", fastrand::u32(..))
}

/// Starts the automatic rollback of `job` to `kept`: the rollback job's id is recorded in
/// `job` first, then the job is made (or found, when an earlier run made it). Returns it.
pub async fn start(
    spool: &Spool,
    store: &Store,
    job: &mut Job,
    kept: &Kept,
    automatic: bool,
) -> Result<Job, SpoolError> {
    let check = job.check.get_or_insert_with(Check::pending);
    let id = match &check.follow_up {
        Some(id) => id.clone(),
        None => {
            let id = child_id(&job.id);
            check.follow_up = Some(id.clone());
            spool.save_async(job).await?;
            id
        }
    };
    let of = RollbackOf {
        from_job: job.id.clone(),
        from_ref: job.git_ref.clone(),
        to_job: kept.job.clone(),
        to_ref: kept.git_ref.clone(),
        automatic,
        from_file: crate::queue::check::file_name_of(job),
        to_file: kept.file.clone(),
    };
    let (spool, store, kept) = (spool.clone(), store.clone(), kept.clone());
    match crate::blocking::run(move || make(&spool, &store, &id, &kept, of)).await {
        Ok(job) => Ok(job),
        Err(crate::blocking::BlockingError::Failed(e)) => Err(e),
        Err(crate::blocking::BlockingError::Crashed(e)) => Err(SpoolError::Io {
            action: "cannot make the rollback job in",
            path: Default::default(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Makes the rollback job `id` deploying `kept` (or returns it if it exists). Blocking.
pub fn make(
    spool: &Spool,
    store: &Store,
    id: &str,
    kept: &Kept,
    of: RollbackOf,
) -> Result<Job, SpoolError> {
    if spool.job_dir(id).join(RECORD_NAME).exists() {
        // Made by an earlier run, which may have stopped before the fleet had it.
        return share(spool, spool.load(id)?);
    }
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| SpoolError::Io {
            action,
            path,
            source,
        }
    };
    let tmp = spool.dir().join(format!(".new-{id}"));
    if tmp.exists() {
        crate::durable::remove_tree(&tmp).map_err(io("cannot remove", &tmp))?;
    }
    crate::durable::create_dir(&tmp).map_err(io("cannot create job directory", &tmp))?;
    let source = store.archive_path(kept);
    let archive = tmp.join(ARCHIVE_NAME);
    if crate::durable::hard_link(&source, &archive).is_err() {
        fs::copy(&source, &archive).map_err(io("cannot copy the kept archive to", &archive))?;
        crate::durable::sync_path(&archive).map_err(io("cannot sync", &archive))?;
    }
    let created_at = now();
    let nonce = format!("{:08x}", fastrand::u32(..));
    let git_ref = make_git_ref(&format!("{}-rollback", kept.app), created_at, &nonce);
    let mut job = Job::new(
        id.to_string(),
        &kept.app,
        git_ref,
        Payload::Archive {
            // The name the user knows it by, for the history and `status`; the bytes are the
            // kept archive's, linked into the job directory above.
            original: if kept.file.is_empty() {
                source
            } else {
                std::path::PathBuf::from(&kept.file)
            },
            summary: kept.summary.clone(),
            tree_digest: None,
            // The kept file stays where it is: the copy leaves with the spool directory.
            copied: true,
        },
        created_at,
    );
    job.check = Some(Check {
        rollback: Some(of),
        ..Check::pending()
    });
    spool.commit_new(&tmp, &mut job)?;
    share(spool, job)
}

/// In fleet mode, makes a rollback job the fleet's as well (its archive and record, with the
/// fleet's arrival number), before anything of it is driven: every later save of its record
/// is fenced by the store, which must know it. Adding a job twice changes nothing, so a
/// rollback made again after a crash is shared once. Blocking.
fn share(spool: &Spool, mut job: Job) -> Result<Job, SpoolError> {
    let Some(store) = spool.shared_store() else {
        return Ok(job);
    };
    let archive = spool.archive_path(&job.id);
    let before = job.seq;
    store.add(&mut job, Some(&archive))?;
    if job.seq != before {
        spool.save_local(&job)?;
    }
    Ok(job)
}
