//! Following a deployment to its end: over the app's deployments stream when it can be had
//! (one check when the stream (re)connects, one every [`STREAM_CHECK_EVERY`] follow intervals
//! in case an event was lost, and one to confirm the final status), else by polling, paced by the client's budget. Build output comes as it is
//! streamed (or, polling with `with_output`, fetched per poll) and goes to the observer as
//! [`Event::Output`]; the last lines are kept for a failure's reason.

use std::collections::VecDeque;

use super::*;
use crate::deploy::scalingo::stream::{
    ESTABLISHED_AFTER, Link, ShownLines, StreamEvent, Subscription, Update,
};
use crate::queue::clock::Since;

/// While the stream is up, the deployment is still checked every this many `follow_interval`s
/// (90 s by default): at most one request in a minute and a half, and a lost event delays the
/// job's end by no more.
const STREAM_CHECK_EVERY: u32 = 30;

impl Runner {
    pub(super) async fn follow(&self, job: &mut Job, clocks: &mut Clocks) -> Result<(), StepError> {
        let JobState::Deploying {
            deployment_id,
            platform_status,
            since,
        } = job.state.clone()
        else {
            return unreachable_state(&job.state);
        };
        self.observer.event(job, &Event::Step(Step::Follow));
        let budget = self.client.budget().clone();
        budget.track(&job.app);
        let since = self
            .follow_start(job, &deployment_id, platform_status, since, clocks)
            .await?;
        let mut stream = self.stream.then(|| self.client.stream(&job.app));
        let mut shutdown = self.shutdown.clone();
        // Without a stream, check at once; with one, when it connects (or at the poll timer).
        let mut f = Following {
            check: stream.is_none(),
            deployment_id,
            last_status: String::new(),
            lines: ShownLines::default(),
            tail: VecDeque::new(),
            connection: None,
            connected_check: false,
            last_check: tokio::time::Instant::now(),
            started: tokio::time::Instant::now(),
        };
        let mut poller = None;
        loop {
            if let Some(failure) = self.overdue(job, since) {
                return Err(StepError::Permanent(failure));
            }
            let link = stream.as_ref().map(Subscription::link);
            let streaming = matches!(link, Some(Link::Up(_)));
            if std::mem::take(&mut f.check) {
                f.last_check = tokio::time::Instant::now();
                f.connected_check = false;
                if let Some(end) = self.check_deployment(job, &mut f, streaming).await {
                    return end;
                }
            }
            // Polling counts in the budget's share for polls; streaming costs nothing.
            if streaming {
                poller = None;
            } else if poller.is_none() {
                poller = Some(budget.polling());
            }
            let left = self.deploy_timeout.saturating_sub(since.elapsed());
            // Counted from the last check, so that a stream's steady events (build lines,
            // pings) do not put it off.
            let poll = budget.poll_interval(self.follow_interval);
            let due = if streaming && !f.connected_check {
                // Events are hints: one lost (by the platform, or a slow connection's buffer)
                // must not leave the job waiting until `deploy_timeout`.
                f.last_check + self.follow_interval * STREAM_CHECK_EVERY
            } else if streaming {
                // (Re)connected: soon, at most one check in a few seconds (connections are
                // themselves paced by the stream's backoff).
                f.last_check + poll.min(ESTABLISHED_AFTER)
            } else {
                f.next_poll(stream.as_ref(), link, poll)
            };
            let wait = due
                .saturating_duration_since(tokio::time::Instant::now())
                .min(left);
            tokio::select! {
                update = next_update(&mut stream) => self.on_update(job, &mut f, update).await?,
                _ = tokio::time::sleep(wait) => f.check = true,
                // Stopping leaves the deployment running on the platform; the job stays
                // `deploying` and is followed again after the restart.
                _ = shutdown.requested() => return Ok(()),
            }
        }
    }

    /// Asks the platform for the deployment (polling, or once the stream says it ended or
    /// (re)connected). `Some`: following is over, with this result.
    async fn check_deployment(
        &self,
        job: &mut Job,
        f: &mut Following,
        streaming: bool,
    ) -> Option<Result<(), StepError>> {
        let deployment = match self.client.get_deployment(&job.app, &f.deployment_id).await {
            Ok(deployment) => deployment,
            Err(e) => return Some(Err(api_failure(Step::Follow, e))),
        };
        if !streaming {
            self.show_new_output(job, &deployment, f).await;
        }
        if deployment.status != f.last_status {
            if let Err(e) = self.record_status(job, &deployment.status).await {
                return Some(Err(e));
            }
            f.last_status = deployment.status.clone();
        }
        match phase(&deployment.status) {
            Phase::Running => None,
            Phase::Succeeded => {
                job.state = JobState::Succeeded {
                    deployment_id: f.deployment_id.clone(),
                };
                Some(self.spool.save_async(job).await.map_err(StepError::from))
            }
            Phase::Failed => Some(self.deployment_failed(job, deployment, &f.tail).await),
        }
    }

    /// What the stream said: build lines go to the observer (and the failure's tail), a
    /// running status is recorded, an end or a (re)connection asks for a check.
    async fn on_update(
        &self,
        job: &mut Job,
        f: &mut Following,
        update: Update,
    ) -> Result<(), StepError> {
        match update {
            Update::Event(StreamEvent::Log { id, content }) if id == f.deployment_id => {
                // A replay of the log so far on a new connection is skipped.
                let lines = f.lines.streamed(content.lines().map(strip_ansi));
                f.show(&*self.observer, job, &lines);
            }
            Update::Event(StreamEvent::Status { id, status }) if id == f.deployment_id => {
                if phase(&status) == Phase::Running {
                    if status != f.last_status {
                        self.record_status(job, &status).await?;
                        f.last_status = status;
                    }
                } else {
                    // Finished: confirmed once with a GET.
                    f.check = true;
                }
            }
            Update::Event(_) => {}
            // (Re)connected: what happened meanwhile was not streamed; check once (within a
            // polling interval of the last request). It may replay the log so far.
            Update::Link(Link::Up(n)) if f.connection != Some(n) => {
                f.connection = Some(n);
                f.connected_check = true;
                f.lines.connected();
            }
            Update::Link(_) => {}
            Update::Missed => f.check = true,
        }
        Ok(())
    }

    /// When the following started, for the time limit, on the monotonic clock (see
    /// [`Clocks`]). A record from before the limit existed has no start: it counts from now,
    /// and the job records it.
    async fn follow_start(
        &self,
        job: &mut Job,
        deployment_id: &str,
        platform_status: Option<String>,
        since: Option<Timestamp>,
        clocks: &mut Clocks,
    ) -> Result<Since, StepError> {
        if let Some(at) = since {
            return Ok(clocks.since(FOLLOWING, at));
        }
        let at = clocks.stamp(FOLLOWING);
        job.state = JobState::Deploying {
            deployment_id: deployment_id.to_string(),
            platform_status,
            since: Some(at),
        };
        self.spool.save_async(job).await?;
        Ok(clocks.since(FOLLOWING, at))
    }

    /// Hands the observer the deployment's output lines not shown yet (when output is wanted).
    async fn show_new_output(&self, job: &Job, deployment: &Deployment, f: &mut Following) {
        if !self.output {
            return;
        }
        let Ok(Some(text)) = self.client.output(deployment).await else {
            return;
        };
        let lines = f.lines.polled(text.lines().map(strip_ansi).collect());
        f.show(&*self.observer, job, &lines);
    }

    /// A new platform status: recorded in the job (if it is not there yet) and told to the
    /// observer.
    async fn record_status(&self, job: &mut Job, status: &str) -> Result<(), StepError> {
        if let JobState::Deploying {
            platform_status, ..
        } = &mut job.state
            && platform_status.as_deref() != Some(status)
        {
            *platform_status = Some(status.to_string());
            self.spool.save_async(job).await?;
        }
        self.observer.event(job, &Event::Status { status });
        Ok(())
    }

    /// The failure of a deployment followed for longer than the limit, if it is.
    fn overdue(&self, job: &Job, since: Since) -> Option<Failure> {
        let waited = since.elapsed();
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
                humantime::format_duration(Duration::from_secs(waited.as_secs())),
            ),
            status: Some(status.to_string()),
            deployment_id: Some(deployment_id.clone()),
            log_tail: Vec::new(),
            http_status: None,
            gave_up: true,
        })
    }

    /// A failure status: the job fails with the last lines of the build output, those the
    /// stream brought (`streamed`) when they are a whole tail, else fetched once.
    async fn deployment_failed(
        &self,
        job: &mut Job,
        deployment: Deployment,
        streamed: &VecDeque<String>,
    ) -> Result<(), StepError> {
        if deployment.status == "aborted" && self.retry.retry_aborted && job.aborted_retries == 0 {
            job.aborted_retries += 1;
            job.git_ref = format!("{}-r{}", job.git_ref, job.aborted_retries);
            job.state = JobState::Queued;
            self.spool.save_async(job).await?;
            return Ok(());
        }
        // Fewer lines than a tail: the stream may have started after the build did.
        let log_tail = if streamed.len() < LOG_TAIL_LINES {
            match self.client.output(&deployment).await {
                Ok(Some(text)) => tail_lines(&text, LOG_TAIL_LINES),
                Ok(None) => streamed.iter().cloned().collect(),
                Err(_) if !streamed.is_empty() => streamed.iter().cloned().collect(),
                Err(e) => vec![format!("(build output unavailable: {e})")],
            }
        } else {
            streamed.iter().cloned().collect()
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
        self.spool.save_async(job).await?;
        Ok(())
    }
}

/// The stream's next update, or never without a stream.
async fn next_update(stream: &mut Option<Subscription>) -> Update {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// What following one deployment keeps from one update to the next.
struct Following {
    deployment_id: String,
    /// Ask the platform for the deployment at the next turn.
    check: bool,
    /// The last status recorded in the job.
    last_status: String,
    /// Build output lines shown so far (each once, whatever the stream replays).
    lines: ShownLines,
    /// The last lines, for a failure's reason.
    tail: VecDeque<String>,
    /// The stream connection last seen up (a new one asks for a check).
    connection: Option<u64>,
    /// A check is due after a (re)connection, paced like a poll.
    connected_check: bool,
    /// When the platform was last asked (the next check is counted from here).
    last_check: tokio::time::Instant,
    /// When following started.
    started: tokio::time::Instant,
}

impl Following {
    /// When to ask the platform next while the stream is not up: at most one request, a
    /// check or the stream's dial, per polling interval, so that a stream
    /// that keeps failing never costs more than polling would; and while a connection is
    /// being made (dialled, not yet shown accepted nor failed), not before it is settled.
    fn next_poll(
        &self,
        stream: Option<&Subscription>,
        link: Option<Link>,
        poll: Duration,
    ) -> tokio::time::Instant {
        let mut due = self.last_check + poll;
        if let Some(s) = stream {
            let dialled = s.last_dial().unwrap_or(self.started);
            due = due.max(dialled + poll);
            if link == Some(Link::Down) {
                due = due.max(dialled + ESTABLISHED_AFTER);
            }
        }
        due
    }

    /// New build lines: to the observer, and the last ones kept for a failure's reason.
    fn show(&mut self, observer: &dyn Observer, job: &Job, lines: &[String]) {
        if lines.is_empty() {
            return;
        }
        for line in lines {
            if self.tail.len() == LOG_TAIL_LINES {
                self.tail.pop_front();
            }
            self.tail.push_back(line.clone());
        }
        observer.event(job, &Event::Output { lines });
    }
}
