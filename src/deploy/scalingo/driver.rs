//! The job runner: drives one job from whatever state its record holds to a finished state.
//!
//! Each call to the state machine performs one action and persists the state that follows
//! it; [`next_action`] decides that action from the record alone, so a job resumes the same
//! way after a restart as after a retry. This is the one place where errors are retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::RetryConfig;
use crate::deploy::scalingo::api::{ApiError, Deployment, ScalingoClient};
use crate::deploy::scalingo::follow::{Phase, explain, phase};
pub use crate::queue::observe::{Event, LogObserver, Observer};
use crate::queue::retry::next_delay;
use crate::queue::spool::{
    Failure, Job, JobState, Payload, SOURCE_STALE_AFTER, Spool, SpoolError, Step, Timestamp, now,
};
use crate::shutdown::Shutdown;

/// Lines of build output kept with a failure.
pub const LOG_TAIL_LINES: usize = 30;
/// How many of the app's most recent deployments are searched for a job's `git_ref`.
const ADOPT_SEARCH: u32 = 50;
/// How many times an upload slot refused by the storage (403) is replaced before giving up.
const MAX_SOURCE_RENEWALS: u32 = 3;

/// What the runner does next for a job, decided from its record alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask for a new upload slot.
    CreateSource,
    /// Send the archive to the slot.
    Upload,
    /// Persist `deploy_requested`, then post the deployment.
    RequestDeployment,
    /// After a restart or an ambiguous failure: adopt a deployment carrying the job's
    /// `git_ref` if the platform has one, else post again.
    FindOrPost,
    /// Poll the deployment until it finishes.
    Follow,
    /// Nothing: the job is finished.
    Done,
}

/// The state machine's next step. `now` decides whether an upload slot is stale.
pub fn next_action(job: &Job, now: Timestamp) -> Action {
    let stale = |at: Timestamp| now.saturating_sub(at) >= SOURCE_STALE_AFTER.as_secs();
    match &job.state {
        JobState::Queued => match job.payload {
            Payload::Url { .. } => Action::RequestDeployment,
            Payload::Archive { .. } => Action::CreateSource,
        },
        JobState::SourceCreated { at, .. } if stale(*at) => Action::CreateSource,
        JobState::SourceCreated { .. } => Action::Upload,
        JobState::Uploaded { source_at, .. } if stale(*source_at) => Action::CreateSource,
        JobState::Uploaded { .. } => Action::RequestDeployment,
        JobState::DeployRequested { .. } => Action::FindOrPost,
        JobState::Deploying { .. } => Action::Follow,
        // A check is the verifier's business, not the platform's.
        JobState::Succeeded { .. }
        | JobState::Failed(_)
        | JobState::Superseded { .. }
        | JobState::Verifying { .. }
        | JobState::Unhealthy { .. } => Action::Done,
    }
}

/// How one action failed.
#[derive(Debug)]
enum StepError {
    /// May succeed later: retried with backoff within the budget.
    Transient(Step, ApiError),
    /// Ends the job.
    Permanent(Failure),
    /// The record could not be written: the job cannot go on safely.
    Spool(SpoolError),
}

impl From<SpoolError> for StepError {
    fn from(e: SpoolError) -> Self {
        StepError::Spool(e)
    }
}

fn api_failure(step: Step, error: ApiError) -> StepError {
    if error.is_transient() {
        StepError::Transient(step, error)
    } else {
        StepError::Permanent(Failure {
            step,
            reason: crate::redact::redact_owned(error.to_string()),
            status: None,
            deployment_id: None,
            log_tail: Vec::new(),
            http_status: error.status(),
            gave_up: false,
        })
    }
}

/// Drives jobs through the Scalingo API, persisting each step in the spool.
pub struct Runner {
    client: Arc<ScalingoClient>,
    spool: Spool,
    retry: RetryConfig,
    follow_interval: Duration,
    observer: Arc<dyn Observer>,
    follow: bool,
    shutdown: Shutdown,
    output: bool,
    deploy_timeout: Duration,
}

impl Runner {
    pub fn new(
        client: Arc<ScalingoClient>,
        spool: Spool,
        retry: RetryConfig,
        follow_interval: Duration,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Runner {
            client,
            spool,
            retry,
            follow_interval,
            observer,
            follow: true,
            shutdown: Shutdown::never(),
            output: false,
            deploy_timeout: crate::config::DEFAULT_DEPLOY_TIMEOUT,
        }
    }

    /// Give up following a deployment that has not finished `limit` after it was created
    /// (or adopted): the job fails, naming the last platform status and the time waited.
    pub fn with_deploy_timeout(mut self, limit: Duration) -> Self {
        self.deploy_timeout = limit;
        self
    }

    /// While following, also fetch the build output and report its new lines as they come
    /// (one more request per poll).
    pub fn with_output(mut self) -> Self {
        self.output = true;
        self
    }

    /// Stop between steps (and during waits) once `shutdown` fires, leaving the job in its
    /// last persisted state for the next start to resume.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Stop once the deployment is created instead of following it to its end (the job then
    /// stays `deploying` in the spool).
    pub fn without_follow(mut self) -> Self {
        self.follow = false;
        self
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Runs a job until it is finished, retrying transient errors with backoff and full jitter
    /// (honouring `Retry-After`) until the retry budget, counted from the job's first start,
    /// runs out. Only a failure to persist the record is returned as an error. When the
    /// shutdown fires, returns between two steps with the job unfinished.
    pub async fn run(&self, job: &mut Job) -> Result<(), SpoolError> {
        let mut shutdown = self.shutdown.clone();
        if job.started_at.is_none() {
            job.started_at = Some(now());
            self.spool.save(job)?;
        } else if !matches!(job.state, JobState::Queued) && !job.state.is_finished() {
            self.observer.event(
                job,
                &Event::Resumed {
                    state: job.state.name(),
                },
            );
        }
        let mut streak = 0u32;
        // A job being verified is past the platform's part: never spin on it.
        while !job.state.is_finished() && !matches!(job.state, JobState::Verifying { .. }) {
            if !self.follow && matches!(job.state, JobState::Deploying { .. }) {
                return Ok(());
            }
            if shutdown.is_requested() {
                return Ok(());
            }
            match self.advance(job).await {
                Ok(()) => streak = 0,
                Err(StepError::Spool(e)) => return Err(e),
                Err(StepError::Permanent(failure)) => {
                    job.state = JobState::Failed(failure);
                    self.spool.save(job)?;
                }
                Err(StepError::Transient(step, error)) => {
                    job.failed_attempts += 1;
                    let started = job.started_at.unwrap_or_else(now);
                    let spent = Duration::from_secs(now().saturating_sub(started));
                    let left = self.retry.budget.saturating_sub(spent);
                    if left.is_zero() {
                        job.state = JobState::Failed(Failure {
                            step,
                            reason: crate::redact::redact_owned(format!(
                                "gave up after {} failed attempts over {} (retry budget {}); last error: {error}",
                                job.failed_attempts,
                                humantime::format_duration(spent),
                                humantime::format_duration(self.retry.budget),
                            )),
                            status: None,
                            deployment_id: deployment_id_of(&job.state),
                            log_tail: Vec::new(),
                            http_status: error.status(),
                            gave_up: true,
                        });
                        self.spool.save(job)?;
                        continue;
                    }
                    let delay =
                        next_delay(&self.retry, streak, error.retry_after(), fastrand::f64())
                            .min(left);
                    self.spool.save(job)?;
                    self.observer.event(
                        job,
                        &Event::Retrying {
                            step,
                            error: &error,
                            delay,
                            failures: streak + 1,
                        },
                    );
                    if !shutdown.sleep(delay).await {
                        return Ok(());
                    }
                    streak += 1;
                }
            }
        }
        self.observer.event(job, &Event::Finished);
        Ok(())
    }

    /// Performs one action and persists the state that follows it.
    async fn advance(&self, job: &mut Job) -> Result<(), StepError> {
        match next_action(job, now()) {
            Action::Done => Ok(()),
            Action::CreateSource => {
                self.observer.event(job, &Event::Step(Step::CreateSource));
                let source = self
                    .client
                    .create_source()
                    .await
                    .map_err(|e| api_failure(Step::CreateSource, e))?;
                job.state = JobState::SourceCreated {
                    upload_url: source.upload_url,
                    download_url: source.download_url,
                    at: now(),
                };
                self.spool.save(job)?;
                Ok(())
            }
            Action::Upload => self.upload(job).await,
            Action::RequestDeployment => {
                let (source_url, source_at) = match (&job.state, &job.payload) {
                    (
                        JobState::Uploaded {
                            download_url,
                            source_at,
                        },
                        _,
                    ) => (download_url.clone(), Some(*source_at)),
                    (_, Payload::Url { url }) => (url.clone(), None),
                    (state, _) => unreachable_state(state)?,
                };
                job.state = JobState::DeployRequested {
                    source_url,
                    source_at,
                    requested_at: Some(now()),
                };
                self.spool.save(job)?;
                self.post_deployment(job).await
            }
            Action::FindOrPost => {
                self.observer
                    .event(job, &Event::Step(Step::CreateDeployment));
                if let Some(found) = self.find_by_git_ref(job).await? {
                    self.observer
                        .event(job, &Event::DeploymentAdopted { id: &found.id });
                    job.state = JobState::Deploying {
                        deployment_id: found.id,
                        platform_status: Some(found.status),
                        since: Some(now()),
                    };
                    self.spool.save(job)?;
                    return Ok(());
                }
                if let JobState::DeployRequested {
                    source_at: Some(at),
                    ..
                } = job.state
                    && now().saturating_sub(at) >= SOURCE_STALE_AFTER.as_secs()
                {
                    // Never posted, and the upload has expired since: upload again.
                    job.state = JobState::Queued;
                    self.spool.save(job)?;
                    return Ok(());
                }
                self.post_deployment(job).await
            }
            Action::Follow => self.follow(job).await,
        }
    }

    async fn upload(&self, job: &mut Job) -> Result<(), StepError> {
        let JobState::SourceCreated {
            upload_url,
            download_url,
            at,
        } = job.state.clone()
        else {
            return unreachable_state(&job.state);
        };
        self.observer.event(job, &Event::Step(Step::Upload));
        let archive = self.spool.archive_path(&job.id);
        let total = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        let observer = self.observer.clone();
        let snapshot = job.clone();
        let started = Instant::now();
        let result = self
            .client
            .upload(&upload_url, &archive, move |sent| {
                observer.event(&snapshot, &Event::Uploading { sent, total });
            })
            .await;
        match result {
            Ok(()) => {
                self.observer.event(
                    job,
                    &Event::Uploaded {
                        bytes: total,
                        elapsed: started.elapsed(),
                    },
                );
                job.state = JobState::Uploaded {
                    download_url,
                    source_at: at,
                };
                self.spool.save(job)?;
                Ok(())
            }
            // The storage refuses the slot (expired or revoked): make a new one, a few times.
            Err(error @ ApiError::Status { status: 403, .. })
                if job.source_renewals < MAX_SOURCE_RENEWALS =>
            {
                job.source_renewals += 1;
                job.state = JobState::Queued;
                self.spool.save(job)?;
                Err(StepError::Transient(Step::Upload, error))
            }
            Err(e) => Err(api_failure(Step::Upload, e)),
        }
    }

    async fn post_deployment(&self, job: &mut Job) -> Result<(), StepError> {
        let JobState::DeployRequested { source_url, .. } = job.state.clone() else {
            return unreachable_state(&job.state);
        };
        self.observer
            .event(job, &Event::Step(Step::CreateDeployment));
        let deployment = self
            .client
            .create_deployment(&job.app, &job.git_ref, &source_url)
            .await
            .map_err(|e| api_failure(Step::CreateDeployment, e))?;
        self.observer
            .event(job, &Event::DeploymentCreated { id: &deployment.id });
        job.state = JobState::Deploying {
            deployment_id: deployment.id,
            platform_status: Some(deployment.status),
            since: Some(now()),
        };
        self.spool.save(job)?;
        Ok(())
    }

    async fn find_by_git_ref(&self, job: &Job) -> Result<Option<Deployment>, StepError> {
        let page = self
            .client
            .list_deployments(&job.app, 1, ADOPT_SEARCH)
            .await
            .map_err(|e| api_failure(Step::CreateDeployment, e))?;
        let requested_at = match job.state {
            JobState::DeployRequested { requested_at, .. } => requested_at,
            _ => None,
        };
        Ok(page.deployments.into_iter().find(|d| {
            d.git_ref.as_deref() == Some(job.git_ref.as_str())
                && !created_before(d.created_at.as_deref(), requested_at)
        }))
    }

    async fn follow(&self, job: &mut Job) -> Result<(), StepError> {
        let JobState::Deploying {
            deployment_id,
            platform_status,
            since,
        } = job.state.clone()
        else {
            return unreachable_state(&job.state);
        };
        self.observer.event(job, &Event::Step(Step::Follow));
        let since = self.follow_start(job, &deployment_id, platform_status, since)?;
        let mut last_status = String::new();
        let mut shutdown = self.shutdown.clone();
        let mut shown_lines = 0usize;
        loop {
            if let Some(failure) = self.overdue(job, since) {
                return Err(StepError::Permanent(failure));
            }
            let deployment = self
                .client
                .get_deployment(&job.app, &deployment_id)
                .await
                .map_err(|e| api_failure(Step::Follow, e))?;
            self.show_new_output(job, &deployment, &mut shown_lines)
                .await;
            if deployment.status != last_status {
                self.record_status(job, &deployment)?;
                last_status = deployment.status.clone();
            }
            match phase(&deployment.status) {
                // Stopping leaves the deployment running on the platform; the job stays
                // `deploying` and is followed again after the restart.
                Phase::Running => {
                    let waited = Duration::from_secs(now().saturating_sub(since));
                    let left = self.deploy_timeout.saturating_sub(waited);
                    if !shutdown.sleep(self.follow_interval.min(left)).await {
                        return Ok(());
                    }
                }
                Phase::Succeeded => {
                    job.state = JobState::Succeeded { deployment_id };
                    self.spool.save(job)?;
                    return Ok(());
                }
                Phase::Failed => return self.deployment_failed(job, deployment).await,
            }
        }
    }

    /// When the following started, for the time limit. A record from before the limit existed
    /// has no start: it counts from now, and the job records it.
    fn follow_start(
        &self,
        job: &mut Job,
        deployment_id: &str,
        platform_status: Option<String>,
        since: Option<Timestamp>,
    ) -> Result<Timestamp, StepError> {
        if let Some(at) = since {
            return Ok(at);
        }
        let at = now();
        job.state = JobState::Deploying {
            deployment_id: deployment_id.to_string(),
            platform_status,
            since: Some(at),
        };
        self.spool.save(job)?;
        Ok(at)
    }

    /// Hands the observer the deployment's output lines not shown yet (when output is wanted);
    /// `shown_lines` counts the lines already shown.
    async fn show_new_output(&self, job: &Job, deployment: &Deployment, shown_lines: &mut usize) {
        if !self.output {
            return;
        }
        let Ok(Some(text)) = self.client.output(deployment).await else {
            return;
        };
        let lines: Vec<String> = text.lines().map(strip_ansi).collect();
        if lines.len() > *shown_lines {
            self.observer.event(
                job,
                &Event::Output {
                    lines: &lines[*shown_lines..],
                },
            );
            *shown_lines = lines.len();
        }
    }

    /// A new platform status: recorded in the job (if it is not there yet) and told to the
    /// observer.
    fn record_status(&self, job: &mut Job, deployment: &Deployment) -> Result<(), StepError> {
        if let JobState::Deploying {
            platform_status, ..
        } = &mut job.state
            && platform_status.as_deref() != Some(deployment.status.as_str())
        {
            *platform_status = Some(deployment.status.clone());
            self.spool.save(job)?;
        }
        self.observer.event(
            job,
            &Event::Status {
                status: &deployment.status,
            },
        );
        Ok(())
    }

    /// The failure of a deployment followed for longer than the limit, if it is.
    fn overdue(&self, job: &Job, since: Timestamp) -> Option<Failure> {
        let waited = Duration::from_secs(now().saturating_sub(since));
        if waited < self.deploy_timeout {
            return None;
        }
        let JobState::Deploying {
            deployment_id,
            platform_status,
            ..
        } = &job.state
        else {
            return None;
        };
        let status = platform_status.as_deref().unwrap_or("unknown");
        Some(Failure {
            step: Step::Follow,
            reason: format!(
                "deployment {deployment_id} did not finish within deploy_timeout ({}): still \
                 `{status}` after {}; stopped waiting for it (the platform may still finish it)",
                humantime::format_duration(self.deploy_timeout),
                humantime::format_duration(waited),
            ),
            status: Some(status.to_string()),
            deployment_id: Some(deployment_id.clone()),
            log_tail: Vec::new(),
            http_status: None,
            gave_up: true,
        })
    }

    async fn deployment_failed(
        &self,
        job: &mut Job,
        deployment: Deployment,
    ) -> Result<(), StepError> {
        if deployment.status == "aborted" && self.retry.retry_aborted && job.aborted_retries == 0 {
            job.aborted_retries += 1;
            job.git_ref = format!("{}-r{}", job.git_ref, job.aborted_retries);
            job.state = JobState::Queued;
            self.spool.save(job)?;
            return Ok(());
        }
        let log_tail = match self.client.output(&deployment).await {
            Ok(Some(text)) => tail_lines(&text, LOG_TAIL_LINES),
            Ok(None) => Vec::new(),
            Err(e) => vec![format!("(build output unavailable: {e})")],
        };
        job.state = JobState::Failed(Failure {
            step: Step::Follow,
            reason: format!(
                "deployment {} ended with status {}: {}",
                deployment.id,
                deployment.status,
                explain(&deployment.status)
            ),
            status: Some(deployment.status),
            deployment_id: Some(deployment.id),
            log_tail,
            http_status: None,
            gave_up: false,
        });
        self.spool.save(job)?;
        Ok(())
    }
}

/// Clocks differ between this machine and the platform: a deployment counts as made before
/// the request only when it is older by more than this.
const CLOCK_SKEW: u64 = 300;

/// Whether a deployment's `created_at` (RFC 3339) is clearly before the job asked for one, so
/// it belongs to an earlier job that used the same (user-chosen) git_ref. Unknown: no.
fn created_before(created_at: Option<&str>, requested_at: Option<Timestamp>) -> bool {
    let (Some(created), Some(requested)) = (created_at, requested_at) else {
        return false;
    };
    let Ok(created) = humantime::parse_rfc3339_weak(created) else {
        return false;
    };
    let created = created
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    created + CLOCK_SKEW < requested
}

fn deployment_id_of(state: &JobState) -> Option<String> {
    match state {
        JobState::Deploying { deployment_id, .. } | JobState::Succeeded { deployment_id } => {
            Some(deployment_id.clone())
        }
        JobState::Failed(f) => f.deployment_id.clone(),
        _ => None,
    }
}

fn unreachable_state<T>(state: &JobState) -> Result<T, StepError> {
    Err(StepError::Permanent(Failure {
        step: Step::CreateDeployment,
        reason: format!("internal error: unexpected job state {}", state.name()),
        status: None,
        deployment_id: None,
        log_tail: Vec::new(),
        http_status: None,
        gave_up: false,
    }))
}

/// The last `n` lines of a build log, without ANSI colour codes.
pub fn tail_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| strip_ansi(l))
        .collect()
}

/// Removes ANSI escape sequences (colours, cursor moves) from a line of build output.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        if c != '\r' {
            out.push(c);
        }
    }
    out
}

impl crate::queue::lane::Target for Runner {
    fn run<'a>(
        &'a self,
        job: &'a mut Job,
    ) -> crate::queue::lane::BoxFuture<'a, Result<(), SpoolError>> {
        Box::pin(Runner::run(self, job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::inspect::Summary;

    fn job(state: JobState, url: bool) -> Job {
        Job {
            id: "j".into(),
            app: "a".into(),
            git_ref: "a-1-deadbeef".into(),
            payload: if url {
                Payload::Url {
                    url: "https://x/a.tar.gz".into(),
                }
            } else {
                Payload::Archive {
                    original: "/tmp/a.tar.gz".into(),
                    summary: Summary {
                        root: "a".into(),
                        entries: 1,
                        files: 1,
                        uncompressed_bytes: 1,
                        compressed_bytes: 1,
                        sha256: "00".into(),
                    },
                    tree_digest: None,
                    copied: false,
                }
            },
            created_at: 0,
            started_at: None,
            failed_attempts: 0,
            aborted_retries: 0,
            source_renewals: 0,
            check: None,
            state,
        }
    }

    #[test]
    fn each_state_leads_to_its_next_action() {
        let t = 10_000;
        assert_eq!(
            next_action(&job(JobState::Queued, false), t),
            Action::CreateSource
        );
        assert_eq!(
            next_action(&job(JobState::Queued, true), t),
            Action::RequestDeployment
        );
        let created = |at| JobState::SourceCreated {
            upload_url: "u".into(),
            download_url: "d".into(),
            at,
        };
        assert_eq!(next_action(&job(created(t - 60), false), t), Action::Upload);
        assert_eq!(
            next_action(&job(created(t - 600), false), t),
            Action::CreateSource
        );
        let uploaded = |source_at| JobState::Uploaded {
            download_url: "d".into(),
            source_at,
        };
        assert_eq!(
            next_action(&job(uploaded(t - 60), false), t),
            Action::RequestDeployment
        );
        assert_eq!(
            next_action(&job(uploaded(t - 540), false), t),
            Action::CreateSource
        );
        let requested = JobState::DeployRequested {
            source_url: "d".into(),
            source_at: Some(t),
            requested_at: Some(t),
        };
        assert_eq!(next_action(&job(requested, false), t), Action::FindOrPost);
        let deploying = JobState::Deploying {
            deployment_id: "x".into(),
            platform_status: None,
            since: None,
        };
        assert_eq!(next_action(&job(deploying, false), t), Action::Follow);
        let done = JobState::Succeeded {
            deployment_id: "x".into(),
        };
        assert_eq!(next_action(&job(done, false), t), Action::Done);
        let superseded = JobState::Superseded { by: "k".into() };
        assert_eq!(next_action(&job(superseded, true), t), Action::Done);
    }

    #[test]
    fn only_a_deployment_made_after_the_request_can_be_adopted() {
        let at = 1_700_000_000; // 2023-11-14T22:13:20Z
        assert!(created_before(Some("2023-11-14T21:00:00Z"), Some(at)));
        assert!(!created_before(Some("2023-11-14T22:12:00.123Z"), Some(at)));
        assert!(!created_before(Some("2023-11-14T23:00:00Z"), Some(at)));
        assert!(!created_before(None, Some(at)));
        assert!(!created_before(Some("2023-11-14T21:00:00Z"), None));
        assert!(!created_before(Some("yesterday"), Some(at)));
    }

    #[test]
    fn log_tail_keeps_the_last_lines_without_colours() {
        let text: String = (1..=40)
            .map(|i| format!("\u{1b}[1;34mline {i}\u{1b}[0m\r\n"))
            .collect();
        let tail = tail_lines(&text, 30);
        assert_eq!(tail.len(), 30);
        assert_eq!(tail[0], "line 11");
        assert_eq!(tail[29], "line 40");
        assert_eq!(tail_lines("a\nb", 30), vec!["a", "b"]);
    }
}
