//! The redeploy loop of a watched source directory: wait for a burst of changes, pack the
//! tree as it is *now* into a job, hand the job on, wait for its end, and start over.
//!
//! Changes that arrive while a job runs pile up in the [`TreeWatcher`] and make exactly one
//! follow-up, packed when it starts (so it deploys the newest tree). A tree whose content
//! digest equals the last successful deploy's is skipped ("unchanged"); that digest is kept in
//! `<state_dir>/trees/<app>.json`, so a restart does not redeploy an unchanged tree. At start
//! the digest is computed alone (reading is cheaper than compressing, and the tree is most
//! likely unchanged); after a change it comes out of the pack itself, which is then thrown
//! away if the tree turns out unchanged (a touch, an edit undone), so a real change pays for
//! one pass over the tree, not two.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::archive::ignore::IgnoreRules;
use crate::archive::inspect::Limits;
use crate::archive::pack::{PackOptions, tree_digest};
use crate::blocking::BlockingError;
use crate::queue::intake::{IntakeError, enqueue_packed};
use crate::queue::spool::{Job, JobState, Payload, Spool};
use crate::shutdown::Shutdown;
use crate::source::tree::{Burst, TreeWatcher};

/// What the loop needs besides the watcher.
#[derive(Debug, Clone)]
pub struct RedeployConfig {
    pub app: String,
    /// The first part of each git_ref.
    pub label: String,
    /// The archive's single top-level folder.
    pub prefix: String,
    pub limits: Limits,
    /// Deploy at start if the tree differs from the last successful deploy.
    pub deploy_on_start: bool,
    /// Where `trees/<app>.json` is kept.
    pub state_dir: PathBuf,
}

/// What happens in the loop, for the log or the developer's terminal.
#[derive(Debug)]
pub enum TreeEvent<'a> {
    /// A burst of changes ended.
    Changed(&'a Burst),
    /// The tree's content is the one last deployed: nothing to do.
    Unchanged,
    /// Packing starts.
    Packing,
    /// A job was made.
    Packed { job: &'a Job, elapsed: Duration },
    /// The tree could not be packed, or the pack was refused; the loop waits for the next
    /// change.
    PackFailed { error: &'a IntakeError },
    /// The job ended (or was superseded).
    Finished {
        job_id: &'a str,
        state: &'a JobState,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct LastDeploy {
    digest: String,
    job: String,
}

fn last_path(state_dir: &Path, app: &str) -> PathBuf {
    state_dir.join("trees").join(format!("{app}.json"))
}

/// The digest of the last successful deploy of `app`'s tree, if one is known.
pub fn last_deployed_digest(state_dir: &Path, app: &str) -> Option<String> {
    let bytes = std::fs::read(last_path(state_dir, app)).ok()?;
    serde_json::from_slice::<LastDeploy>(&bytes)
        .ok()
        .map(|l| l.digest)
}

/// Remembers a finished job's tree as the one deployed, if it was packed from a tree and
/// succeeded. Called before the job leaves the spool (by whoever records its outcome), so a
/// crash at any point never forgets a deployed tree and redeploys it.
pub fn remember_success(state_dir: &Path, job: &Job) -> std::io::Result<()> {
    match (&job.state, tree_digest_of(job)) {
        (JobState::Succeeded { .. }, Some(digest)) => {
            remember(state_dir, &job.app, digest, &job.id)
        }
        _ => Ok(()),
    }
}

/// The content digest of a job packed from a watched tree.
pub fn tree_digest_of(job: &Job) -> Option<&str> {
    match &job.payload {
        Payload::Archive { tree_digest, .. } => tree_digest.as_deref(),
        Payload::Url { .. } => None,
    }
}

/// The jobs packed from `app`'s tree that are not finished (a stop or a crash interrupted
/// them), oldest first. The loop resumes them before anything else, and their content counts
/// as deployed-or-deploying: the same tree is never packed into a second job meanwhile.
pub fn unfinished_jobs(spool: &Spool, app: &str) -> Vec<Job> {
    let Ok(jobs) = spool.jobs() else {
        return Vec::new();
    };
    jobs.into_iter()
        .flatten()
        .filter(|job| job.app == app && !job.is_done() && tree_digest_of(job).is_some())
        .collect()
}

fn remember(state_dir: &Path, app: &str, digest: &str, job: &str) -> std::io::Result<()> {
    let path = last_path(state_dir, app);
    if let Some(dir) = path.parent() {
        crate::durable::create_dir_all(dir)?;
    }
    let bytes = serde_json::to_vec(&LastDeploy {
        digest: digest.to_string(),
        job: job.to_string(),
    })
    .map_err(std::io::Error::other)?;
    crate::durable::write(&path, &bytes)
        .map_err(|e| std::io::Error::new(e.source.kind(), e.to_string()))
}

/// Runs the loop until the watcher stops or `shutdown` fires. `deploy` hands a job on and
/// resolves to its final state (`None` if it will not finish now, e.g. the daemon stops).
pub async fn run<D, F>(
    cfg: RedeployConfig,
    mut watcher: TreeWatcher,
    spool: Spool,
    mut deploy: D,
    mut shutdown: Shutdown,
    on: impl Fn(&TreeEvent<'_>),
) where
    D: FnMut(Job) -> F,
    F: Future<Output = Option<JobState>>,
{
    let mut last = last_deployed_digest(&cfg.state_dir, &cfg.app);
    let (spool2, app2) = (spool.clone(), cfg.app.clone());
    let recovered = tokio::task::spawn_blocking(move || unfinished_jobs(&spool2, &app2))
        .await
        .unwrap_or_default();
    for job in recovered {
        // In flight counts as deployed: whatever its end, this content is not packed again
        // until the tree changes.
        last = tree_digest_of(&job).map(str::to_string).or(last);
        if drive(&cfg, &mut deploy, &on, job).await.is_none() {
            return;
        }
    }
    let mut due = cfg.deploy_on_start;
    let mut starting = due;
    loop {
        if !due {
            tokio::select! {
                burst = watcher.next_burst() => match burst {
                    Some(burst) => on(&TreeEvent::Changed(&burst)),
                    None => return,
                },
                _ = shutdown.requested() => return,
            }
        }
        due = false;
        if shutdown.is_requested() {
            return;
        }
        let rules = watcher.rules();
        if std::mem::take(&mut starting)
            && !differs_from_last(&cfg, &rules, last.as_deref(), &on).await
        {
            continue;
        }
        let Some(job) = pack_job(&cfg, &spool, rules, last.clone(), &on).await else {
            continue;
        };
        let digest = tree_digest_of(&job).map(str::to_string);
        match drive(&cfg, &mut deploy, &on, job).await {
            None => return,
            Some(JobState::Succeeded { .. }) => last = digest,
            Some(_) => {}
        }
    }
}

/// The start check. At start the tree is most likely the one last deployed: reading it is
/// cheaper than compressing it, so look before packing. After a change, the loop packs at once
/// (the packer computes the same digest and throws the archive away if it is unchanged after
/// all). Returns whether the tree is to be packed; says why not through `on` or the log.
async fn differs_from_last(
    cfg: &RedeployConfig,
    rules: &IgnoreRules,
    last: Option<&str>,
    on: &impl Fn(&TreeEvent<'_>),
) -> bool {
    let check = rules.clone();
    match crate::blocking::run(move || tree_digest(&check)).await {
        Ok(digest) if last == Some(digest.as_str()) => {
            on(&TreeEvent::Unchanged);
            false
        }
        Ok(_) => true,
        Err(BlockingError::Failed(source)) => {
            let error = IntakeError::Pack {
                root: rules.root().to_path_buf(),
                source,
            };
            on(&TreeEvent::PackFailed { error: &error });
            false
        }
        Err(BlockingError::Crashed(e)) => {
            tracing::error!(app = %cfg.app, "digest task failed: {e}");
            false
        }
    }
}

/// Packs the tree as it is now into a job in the spool. `None` when there is nothing to
/// deploy: the tree is the one `last` deployed, or it could not be packed (said through `on`
/// or the log).
async fn pack_job(
    cfg: &RedeployConfig,
    spool: &Spool,
    rules: IgnoreRules,
    last: Option<String>,
    on: &impl Fn(&TreeEvent<'_>),
) -> Option<Job> {
    on(&TreeEvent::Packing);
    let started = Instant::now();
    let (spool2, cfg2) = (spool.clone(), cfg.clone());
    let made = crate::blocking::run(move || {
        let opts = PackOptions::new(cfg2.prefix.clone());
        enqueue_packed(
            &spool2,
            &cfg2.app,
            &rules,
            &opts,
            &cfg2.label,
            &cfg2.limits,
            last.as_deref(),
        )
    })
    .await;
    let job = match made {
        Ok(Some(job)) => job,
        Ok(None) => {
            on(&TreeEvent::Unchanged);
            return None;
        }
        Err(BlockingError::Failed(error)) => {
            on(&TreeEvent::PackFailed { error: &error });
            return None;
        }
        Err(BlockingError::Crashed(e)) => {
            tracing::error!(app = %cfg.app, "pack task failed: {e}");
            return None;
        }
    };
    on(&TreeEvent::Packed {
        job: &job,
        elapsed: started.elapsed(),
    });
    Some(job)
}

/// Hands a job on, waits for its end, and remembers its tree if it was deployed. `None`: it
/// will not finish now (the daemon stops).
async fn drive<D, F>(
    cfg: &RedeployConfig,
    deploy: &mut D,
    on: &impl Fn(&TreeEvent<'_>),
    job: Job,
) -> Option<JobState>
where
    D: FnMut(Job) -> F,
    F: Future<Output = Option<JobState>>,
{
    let digest = tree_digest_of(&job).map(str::to_string);
    let id = job.id.clone();
    let state = deploy(job).await?;
    on(&TreeEvent::Finished {
        job_id: &id,
        state: &state,
    });
    if let (JobState::Succeeded { .. }, Some(digest)) = (&state, digest)
        && let Err(e) = remember(&cfg.state_dir, &cfg.app, &digest, &id)
    {
        tracing::warn!(app = %cfg.app, "cannot remember the deployed tree's digest: {e}");
    }
    Some(state)
}
