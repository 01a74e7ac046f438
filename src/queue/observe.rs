//! What happens to jobs, for whoever shows it: the CLI's lines, the daemon's log, the metrics,
//! systemd's status line. Every target reports through the same [`Observer`], so that nothing
//! downstream needs to know which target ran a job.

use std::time::Duration;

use crate::queue::check::{Probe, Verdict};
use crate::queue::spool::{Job, Step};

/// What happens to a job, for whoever shows progress (the CLI's lines, the daemon's log).
#[derive(Debug)]
pub enum Event<'a> {
    /// The job was picked up in a state other than `queued`.
    Resumed { state: &'static str },
    /// A step starts.
    Step(Step),
    /// Bytes of the archive sent so far.
    Uploading { sent: u64, total: u64 },
    /// The upload finished.
    Uploaded { bytes: u64, elapsed: Duration },
    /// The platform accepted a new deployment.
    DeploymentCreated { id: &'a str },
    /// A deployment posted before (by an earlier run) was found and adopted.
    DeploymentAdopted { id: &'a str },
    /// The deployment's status changed.
    Status { status: &'a str },
    /// New lines of the build output (only with the Scalingo driver's `with_output`).
    Output { lines: &'a [String] },
    /// A transient error; the step is tried again after `delay`.
    Retrying {
        step: Step,
        error: &'a (dyn std::error::Error + Send + Sync),
        delay: Duration,
        failures: u32,
    },
    /// The health check waits before its next step (`warmup`).
    Checking { phase: &'static str, wait: Duration },
    /// A probe of the health check answered (or did not).
    Probed { probe: &'a Probe },
    /// The health check decided.
    Checked {
        verdict: Verdict,
        reason: &'a str,
        probe: Option<&'a Probe>,
    },
    /// An unhealthy deployment is being rolled back by the job `job`, to `to_ref`.
    RollingBack { job: &'a str, to_ref: &'a str },
    /// The rollback was unhealthy too: the app needs a person.
    NeedsAttention { reason: &'a str },
    /// The job waits before it starts: another process sharing the `state_dir` deploys the
    /// same app (`reason` says who). Told once per wait.
    Waiting { reason: &'a str },
    /// The job is finished (see its state).
    Finished,
}

/// Receives the runner's events.
pub trait Observer: Send + Sync {
    fn event(&self, job: &Job, event: &Event<'_>);

    /// An app's lane changed: `in_flight` jobs running (0 or 1), `pending` waiting.
    fn lane(&self, _app: &str, _in_flight: usize, _pending: usize) {}
}

/// An observer that writes events to the `tracing` log. Names and ids are written as they
/// are (`app=my-app`, Display); only free text that may hold spaces (a probe's excerpt) is
/// quoted.
pub struct LogObserver;

impl Observer for LogObserver {
    fn event(&self, job: &Job, event: &Event<'_>) {
        let (app, id) = (job.app.as_str(), job.id.as_str());
        match event {
            Event::Resumed { state } => {
                tracing::info!(app = %app, job = %id, %state, "resuming job")
            }
            Event::Step(step) => tracing::debug!(app = %app, job = %id, %step, "step"),
            Event::Uploading { .. } => {}
            Event::Uploaded { bytes, elapsed } => {
                tracing::info!(
                    app = %app,
                    job = %id,
                    bytes,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "uploaded"
                )
            }
            Event::DeploymentCreated { id: d } => {
                tracing::info!(app = %app, job = %id, deployment = %d, git_ref = %job.git_ref, "deployment created")
            }
            Event::DeploymentAdopted { id: d } => {
                tracing::info!(app = %app, job = %id, deployment = %d, git_ref = %job.git_ref, "deployment adopted")
            }
            Event::Status { status } => {
                tracing::info!(app = %app, job = %id, %status, "deployment status")
            }
            Event::Output { lines } => {
                for line in lines.iter() {
                    tracing::debug!(app = %app, job = %id, line = %line, "build output");
                }
            }
            Event::Retrying {
                step,
                error,
                delay,
                failures,
            } => tracing::warn!(
                app = %app,
                job = %id,
                %step,
                failures,
                delay_ms = delay.as_millis() as u64,
                "{error}; retrying"
            ),
            Event::Checking { phase, wait } => tracing::info!(
                app = %app,
                job = %id,
                %phase,
                wait_ms = wait.as_millis() as u64,
                "health check waits"
            ),
            Event::Probed { probe } => tracing::debug!(
                app = %app,
                job = %id,
                status = probe.status,
                latency_ms = probe.latency_ms,
                healthy = probe.healthy,
                "probe: {}",
                probe.describe()
            ),
            Event::Checked {
                verdict,
                reason,
                probe,
            } => {
                let (status, latency_ms) =
                    (probe.and_then(|p| p.status), probe.map(|p| p.latency_ms));
                let excerpt = probe.map(|p| p.excerpt.as_str()).unwrap_or("");
                match verdict {
                    Verdict::Unhealthy => tracing::warn!(
                        app = %app,
                        job = %id,
                        status,
                        latency_ms,
                        excerpt,
                        "unhealthy: {reason}"
                    ),
                    Verdict::Verified => tracing::info!(
                        app = %app,
                        job = %id,
                        status,
                        latency_ms,
                        excerpt,
                        "verified: {reason}"
                    ),
                    Verdict::Skipped => tracing::info!(app = %app, job = %id, "{reason}"),
                }
            }
            Event::RollingBack {
                job: rollback,
                to_ref,
            } => tracing::warn!(
                app = %app,
                job = %id,
                rollback_job = %rollback,
                to = %to_ref,
                "rolling back {} to {to_ref}",
                job.git_ref
            ),
            Event::NeedsAttention { reason } => {
                tracing::error!(app = %app, job = %id, "needs attention: {reason}")
            }
            Event::Waiting { reason } => tracing::warn!(app, job = id, "waiting: {reason}"),
            Event::Finished => {}
        }
    }
}
