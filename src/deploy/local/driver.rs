//! The job driver of the local target: one job becomes one release on this machine.
//!
//! A local deploy has no remote side effect to guard, so its record stays `queued` until the
//! release is in place (or refused); a job interrupted halfway simply runs again, and the
//! target makes that safe (a half-extracted release is never `current`, and is redone).

use std::sync::Arc;

use crate::blocking::BlockingError;
use crate::deploy::local::{LocalFailure, LocalStep, LocalTarget};
use crate::deploy::scalingo::driver::{Event, LOG_TAIL_LINES, Observer};
use crate::queue::spool::{Failure, Job, JobState, Payload, Spool, SpoolError, Step, now};
use crate::shutdown::Shutdown;

/// Deploys jobs as local releases.
pub struct ReleaseRunner {
    target: Arc<LocalTarget>,
    spool: Spool,
    observer: Arc<dyn Observer>,
    shutdown: Shutdown,
}

impl ReleaseRunner {
    pub fn new(
        target: Arc<LocalTarget>,
        spool: Spool,
        observer: Arc<dyn Observer>,
        shutdown: Shutdown,
    ) -> Self {
        ReleaseRunner {
            target,
            spool,
            observer,
            shutdown,
        }
    }

    /// Extracts, switches `current`, activates, prunes; records the outcome in the job.
    pub async fn run(&self, job: &mut Job) -> Result<(), SpoolError> {
        let verifying = matches!(job.state, JobState::Verifying { .. });
        if job.state.is_finished() || verifying || self.shutdown.is_requested() {
            return Ok(());
        }
        if job.started_at.is_none() {
            job.started_at = Some(now());
            self.spool.save_async(job).await?;
        }
        if let Payload::Url { url } = &job.payload {
            job.state = JobState::Failed(failure(
                Step::Extract,
                format!(
                    "a URL ({}) cannot be deployed to a local target: drop the archive itself",
                    crate::deploy::scalingo::api::display_url(url)
                ),
                Vec::new(),
            ));
            self.spool.save_async(job).await?;
            return Ok(());
        }
        self.observer.event(job, &Event::Step(Step::Extract));
        let name = LocalTarget::release_name(job.created_at, &job.git_ref);
        let (target, app, git_ref, archive, release) = (
            self.target.clone(),
            job.app.clone(),
            job.git_ref.clone(),
            self.spool.archive_path(&job.id),
            name.clone(),
        );
        let result =
            crate::blocking::run(move || target.deploy(&app, &release, &git_ref, &archive)).await;
        job.state = match result {
            Ok(deployed) => {
                tracing::info!(
                    app = %job.app,
                    job = %job.id,
                    release = %deployed.release.display(),
                    pruned = deployed.pruned.len(),
                    "release is current"
                );
                JobState::Succeeded {
                    deployment_id: name,
                }
            }
            Err(BlockingError::Failed(LocalFailure {
                step,
                reason,
                output,
            })) => {
                let step = match step {
                    LocalStep::Extract => Step::Extract,
                    LocalStep::Switch => Step::Switch,
                    LocalStep::Activate | LocalStep::Prune => Step::Activate,
                };
                let mut f = failure(
                    step,
                    reason,
                    crate::deploy::scalingo::driver::tail_lines(&output, LOG_TAIL_LINES),
                );
                f.deployment_id = Some(name);
                JobState::Failed(f)
            }
            Err(BlockingError::Crashed(e)) => JobState::Failed(failure(
                Step::Extract,
                format!("the release task crashed: {e}"),
                Vec::new(),
            )),
        };
        self.spool.save_async(job).await?;
        self.observer.event(job, &Event::Finished);
        Ok(())
    }
}

fn failure(step: Step, reason: String, log_tail: Vec<String>) -> Failure {
    Failure {
        step,
        reason,
        status: None,
        deployment_id: None,
        log_tail,
        http_status: None,
        gave_up: false,
    }
}

impl crate::queue::lane::Target for ReleaseRunner {
    fn run<'a>(
        &'a self,
        job: &'a mut Job,
    ) -> crate::queue::lane::BoxFuture<'a, Result<(), SpoolError>> {
        Box::pin(ReleaseRunner::run(self, job))
    }
}
