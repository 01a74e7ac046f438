//! The job runner: drives one job from whatever state its record holds to a finished state.
//!
//! Each call to the state machine performs one action and persists the state that follows
//! it; [`next_action`] decides that action from the record alone, so a job resumes the same
//! way after a restart as after a retry. This is the one place where errors are retried.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::RetryConfig;
use crate::deploy::scalingo::api::{ApiError, Deployment, ScalingoClient};
use crate::deploy::scalingo::budget::BudgetWaits;
use crate::deploy::scalingo::follow::{Phase, explain, phase};
use crate::queue::clock::Clocks;
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

/// The state machine's next step. `stale`: the job's upload slot (if it has one) is older
/// than [`SOURCE_STALE_AFTER`] (see [`source_at`]).
pub fn next_action(job: &Job, stale: bool) -> Action {
    match &job.state {
        JobState::Queued => match job.payload {
            Payload::Url { .. } => Action::RequestDeployment,
            Payload::Archive { .. } => Action::CreateSource,
        },
        JobState::SourceCreated { .. } | JobState::Uploaded { .. } if stale => Action::CreateSource,
        JobState::SourceCreated { .. } => Action::Upload,
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

/// When the job's upload slot was made, if its record holds one.
pub fn source_at(state: &JobState) -> Option<Timestamp> {
    match state {
        JobState::SourceCreated { at, .. } => Some(*at),
        JobState::Uploaded { source_at, .. } => Some(*source_at),
        JobState::DeployRequested { source_at, .. } => *source_at,
        _ => None,
    }
}

/// Whether the job's upload slot is older than [`SOURCE_STALE_AFTER`], on the monotonic clock.
fn source_stale(job: &Job, clocks: &mut Clocks) -> bool {
    source_at(&job.state).is_some_and(|at| clocks.elapsed(SOURCE, at) >= SOURCE_STALE_AFTER)
}

/// The names of the record's times in a run's [`Clocks`].
const STARTED: &str = "started";
const SOURCE: &str = "source";
pub(super) const FOLLOWING: &str = "following";

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
    /// Follow over the app's deployments stream when it can be had (else poll).
    stream: bool,
}

mod following;

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
            stream: true,
        }
    }

    /// Follow deployments by polling only, never over the stream.
    pub fn without_stream(mut self) -> Self {
        self.stream = false;
        self
    }

    /// Give up following a deployment that has not finished `limit` after it was created
    /// (or adopted): the job fails, naming the last platform status and the time waited.
    pub fn with_deploy_timeout(mut self, limit: Duration) -> Self {
        self.deploy_timeout = limit;
        self
    }

    /// While following by polling, also fetch the build output and report its new lines as
    /// they come (one more request per poll). Over the stream, output comes anyway.
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
    /// shutdown fires, returns between two steps with the job unfinished. Every duration (the
    /// budget, an upload slot's age, `deploy_timeout`) is measured on the monotonic clock
    /// from the times the record holds ([`Clocks`]).
    pub async fn run(&self, job: &mut Job) -> Result<(), SpoolError> {
        // Waiting for the API budget (its window, a 429's pause) is not failing: it is counted
        // apart and left out of the retry budget. `status` shows the wait meanwhile.
        self.client.budget().track(&job.app);
        let waits = BudgetWaits::default();
        waits.scope(self.run_counted(job, &waits)).await
    }

    async fn run_counted(&self, job: &mut Job, waits: &BudgetWaits) -> Result<(), SpoolError> {
        let mut shutdown = self.shutdown.clone();
        let mut clocks = Clocks::new();
        if job.started_at.is_none() {
            job.started_at = Some(clocks.stamp(STARTED));
            self.spool.save_async(job).await?;
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
            match self.advance(job, &mut clocks).await {
                Ok(()) => streak = 0,
                Err(StepError::Spool(e)) => return Err(e),
                Err(StepError::Permanent(failure)) => {
                    job.state = JobState::Failed(failure);
                    self.spool.save_async(job).await?;
                }
                Err(StepError::Transient(step, error)) => {
                    // A 429 that outlasted the call's own pauses: a wait, not a failure.
                    let rate_limited = error.status() == Some(429);
                    if !rate_limited {
                        job.failed_attempts += 1;
                    }
                    let spent = match job.started_at {
                        Some(started) => clocks.elapsed(STARTED, started),
                        None => Duration::ZERO,
                    };
                    // Each wait for the budget is bounded (a window, a few pauses per call),
                    // and the retry delays between failed calls still count: this ends.
                    let left = self
                        .retry
                        .budget
                        .saturating_sub(spent.saturating_sub(waits.total()));
                    if left.is_zero() {
                        job.state = JobState::Failed(Failure {
                            step,
                            reason: crate::redact::redact_owned(format!(
                                "gave up after {} failed attempts over {}{} (retry budget {}); last error: {error}",
                                job.failed_attempts,
                                humantime::format_duration(spent),
                                budget_share(waits.total()),
                                humantime::format_duration(self.retry.budget),
                            )),
                            status: None,
                            deployment_id: deployment_id_of(&job.state),
                            log_tail: Vec::new(),
                            http_status: error.status(),
                            gave_up: true,
                        });
                        self.spool.save_async(job).await?;
                        continue;
                    }
                    let delay =
                        next_delay(&self.retry, streak, error.retry_after(), fastrand::f64())
                            .min(left);
                    self.spool.save_async(job).await?;
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
                    if rate_limited {
                        // The platform's own pause is a wait; a longer backoff is not.
                        waits.add(delay.min(error.retry_after().unwrap_or_default()));
                    }
                    streak += 1;
                }
            }
        }
        self.observer.event(job, &Event::Finished);
        Ok(())
    }

    /// Performs one action and persists the state that follows it.
    async fn advance(&self, job: &mut Job, clocks: &mut Clocks) -> Result<(), StepError> {
        let stale = source_stale(job, clocks);
        match next_action(job, stale) {
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
                    at: clocks.stamp(SOURCE),
                };
                self.spool.save_async(job).await?;
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
                // A git_ref given by the user may be on deployments already: say which.
                let preexisting = match job.git_ref_given {
                    true => Some(self.with_git_ref(job).await?),
                    false => None,
                };
                job.state = JobState::DeployRequested {
                    source_url,
                    source_at,
                    requested_at: Some(now()),
                    preexisting,
                };
                self.spool.save_async(job).await?;
                self.post_deployment(job, clocks).await
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
                        since: Some(clocks.stamp(FOLLOWING)),
                    };
                    self.spool.save_async(job).await?;
                    return Ok(());
                }
                if stale {
                    // Never posted, and the upload has expired since: upload again.
                    job.state = JobState::Queued;
                    self.spool.save_async(job).await?;
                    return Ok(());
                }
                self.post_deployment(job, clocks).await
            }
            Action::Follow => self.follow(job, clocks).await,
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
                self.spool.save_async(job).await?;
                Ok(())
            }
            // The storage refuses the slot (expired or revoked): make a new one, a few times.
            Err(error @ ApiError::Status { status: 403, .. })
                if job.source_renewals < MAX_SOURCE_RENEWALS =>
            {
                job.source_renewals += 1;
                job.state = JobState::Queued;
                self.spool.save_async(job).await?;
                Err(StepError::Transient(Step::Upload, error))
            }
            Err(e) => Err(api_failure(Step::Upload, e)),
        }
    }

    async fn post_deployment(&self, job: &mut Job, clocks: &mut Clocks) -> Result<(), StepError> {
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
        if deployment.id.is_empty() {
            // Created, but which one? The retry looks it up by the job's git_ref.
            return Err(StepError::Transient(
                Step::CreateDeployment,
                ApiError::Decode {
                    what: "create deployment",
                    detail: "the answer names no deployment id".to_string(),
                },
            ));
        }
        self.observer
            .event(job, &Event::DeploymentCreated { id: &deployment.id });
        job.state = JobState::Deploying {
            deployment_id: deployment.id,
            platform_status: Some(deployment.status),
            since: Some(clocks.stamp(FOLLOWING)),
        };
        self.spool.save_async(job).await?;
        Ok(())
    }

    /// The app's recent deployments carrying the job's git_ref.
    async fn listed_with_git_ref(&self, job: &Job) -> Result<Vec<Deployment>, StepError> {
        let page = self
            .client
            .list_deployments(&job.app, 1, ADOPT_SEARCH)
            .await
            .map_err(|e| api_failure(Step::CreateDeployment, e))?;
        let mut found = page.deployments;
        found.retain(|d| d.git_ref.as_deref() == Some(job.git_ref.as_str()));
        Ok(found)
    }

    /// The ids of the deployments carrying the job's (user-given) git_ref before it posts.
    async fn with_git_ref(&self, job: &Job) -> Result<Vec<String>, StepError> {
        let found = self.listed_with_git_ref(job).await?;
        Ok(found.into_iter().map(|d| d.id).collect())
    }

    /// The deployment this job made, if the platform has one (see [`adoptable`]).
    async fn find_by_git_ref(&self, job: &Job) -> Result<Option<Deployment>, StepError> {
        let found = self.listed_with_git_ref(job).await?;
        Ok(found.into_iter().find(|d| adoptable(job, d)))
    }
}

/// Whether `d`, which carries the job's git_ref, is the deployment the job asked for. No clock
/// decides it: the job's own git_ref carries its nonce, so any deployment with it is the job's;
/// a git_ref given by the user may be older than the job, so the deployments that carried it
/// before the job posted (listed then, `preexisting`) are not the job's, and any other is.
/// Only a record written before that list existed falls back to comparing times, with a
/// margin for clocks that differ.
pub fn adoptable(job: &Job, d: &Deployment) -> bool {
    if !job.git_ref_given {
        return true;
    }
    match &job.state {
        JobState::DeployRequested {
            preexisting: Some(before),
            ..
        } => !before.contains(&d.id),
        JobState::DeployRequested { requested_at, .. } => {
            !created_before(d.created_at.as_deref(), *requested_at)
        }
        _ => true,
    }
}

/// `, 40s of it waiting for the API budget`, when some was.
fn budget_share(waited: Duration) -> String {
    let waited = Duration::from_secs(waited.as_secs());
    if waited.is_zero() {
        return String::new();
    }
    format!(
        ", {} of it waiting for the API budget",
        humantime::format_duration(waited)
    )
}

/// Clocks differ between this machine and the platform: a deployment counts as made before
/// the request only when it is older by more than this (records without `preexisting` only).
const CLOCK_SKEW: u64 = 300;

/// Whether a deployment's `created_at` (RFC 3339) is clearly before the job asked for one, so
/// it belongs to an earlier job that used the same (user-chosen) git_ref. Unknown: no.
fn created_before(created_at: Option<&str>, requested_at: Option<Timestamp>) -> bool {
    let (Some(created), Some(requested)) = (created_at, requested_at) else {
        return false;
    };
    let Some(created) = crate::deploy::scalingo::lenient::timestamp(created) else {
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
        if c == '\r' {
            // A line rewritten in place (a progress meter): what shows is its last state.
            if chars.peek().is_some() {
                out.clear();
            }
            continue;
        }
        out.push(c);
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
mod tests;
