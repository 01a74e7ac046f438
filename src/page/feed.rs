//! What the page knows of the jobs under way, from the runner's events: each app's job in
//! flight (its step, platform status, check phase, probe answers and last build lines) and its
//! lane's counts. Every change is also sent to the page's live subscribers
//! (server-sent events). Everything kept here has gone through [`crate::redact`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::json;
use tokio::sync::broadcast;

use crate::queue::observe::{Event, Observer};
use crate::queue::spool::{Job, Step, Timestamp, now};
use crate::redact::redact;

/// Build output lines kept per job in flight (the page shows them all).
pub const KEPT_LINES: usize = 200;
/// Probe answers kept per job in flight.
const KEPT_PROBES: usize = 10;
/// Live messages buffered per subscriber; one that falls further behind reloads the page.
const CHANNEL: usize = 1024;

/// One app, now.
#[derive(Debug, Clone, Default)]
pub struct AppNow {
    /// Jobs running in the lane (0 or 1) and waiting, as the lane last said.
    pub in_flight: usize,
    pub pending: usize,
    /// The job under way, if one is.
    pub job: Option<JobNow>,
}

/// The job under way in an app's lane.
#[derive(Debug, Clone)]
pub struct JobNow {
    pub id: String,
    pub file: String,
    pub git_ref: String,
    /// Since when this process has seen it run.
    pub since: Timestamp,
    pub step: Option<Step>,
    /// The platform's status of its deployment (`building`, …).
    pub platform_status: Option<String>,
    pub deployment_id: Option<String>,
    /// The health check's phase (`warmup`, `probing`, `soak`), while it checks.
    pub phase: Option<String>,
    /// The last probe answers, oldest first.
    pub probes: VecDeque<String>,
    /// The last build output lines, oldest first.
    pub lines: VecDeque<String>,
    /// Build output lines seen in all (the index of the next one).
    pub lines_total: u64,
    /// Upload progress: bytes sent of the total.
    pub upload: Option<(u64, u64)>,
    /// The last transient error, retried.
    pub retrying: Option<String>,
    /// Whether the job brings back an earlier archive.
    pub rollback: bool,
}

impl JobNow {
    fn of(job: &Job) -> JobNow {
        JobNow {
            id: job.id.clone(),
            file: redact(&file_label(job)).into_owned(),
            git_ref: job.git_ref.clone(),
            since: now(),
            step: None,
            platform_status: None,
            deployment_id: None,
            phase: None,
            probes: VecDeque::new(),
            lines: VecDeque::new(),
            lines_total: 0,
            upload: None,
            retrying: None,
            rollback: job.rollback().is_some(),
        }
    }
}

/// What a person calls a job's file: the dropped file's name, or the URL.
pub fn file_label(job: &Job) -> String {
    crate::queue::check::file_name_of(job)
}

/// The apps' jobs under way, and the channel of live messages. Shared behind an `Arc`.
pub struct Feed {
    apps: Mutex<BTreeMap<String, AppNow>>,
    live: broadcast::Sender<Arc<LiveMessage>>,
}

/// One live message: an SSE event name and its JSON data.
#[derive(Debug)]
pub struct LiveMessage {
    pub event: &'static str,
    pub data: String,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

impl Feed {
    pub fn new() -> Feed {
        let (live, _) = broadcast::channel(CHANNEL);
        Feed {
            apps: Mutex::new(BTreeMap::new()),
            live,
        }
    }

    /// Each app's state now, by name.
    pub fn snapshot(&self) -> BTreeMap<String, AppNow> {
        self.lock().clone()
    }

    /// The live messages from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveMessage>> {
        self.live.subscribe()
    }

    /// Tells the page's subscribers that `app` changed (they load the page again).
    pub fn changed(&self, app: &str) {
        self.send("state", json!({ "app": app }).to_string());
    }

    fn send(&self, event: &'static str, data: String) {
        // No subscriber is not an error.
        let _ = self.live.send(Arc::new(LiveMessage { event, data }));
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, AppNow>> {
        // What was kept before a panic is still worth showing.
        self.apps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps what `event` says about `job`; returns the live message to send, if any.
    fn keep(&self, job: &Job, event: &Event<'_>) -> Option<(&'static str, String)> {
        let mut apps = self.lock();
        let app = apps.entry(job.app.clone()).or_default();
        // The target's part is over; a health check may follow. The job leaves the page when
        // its lane says nothing runs.
        if matches!(event, Event::Finished) {
            return Some(("state", json!({ "app": job.app }).to_string()));
        }
        let now_job = match &mut app.job {
            Some(j) if j.id == job.id => j,
            slot => slot.insert(JobNow::of(job)),
        };
        now_job.git_ref.clone_from(&job.git_ref);
        match event {
            Event::Output { lines } => {
                let first = now_job.lines_total;
                let lines: Vec<String> = lines.iter().map(|l| redact(l).into_owned()).collect();
                for line in &lines {
                    if now_job.lines.len() == KEPT_LINES {
                        now_job.lines.pop_front();
                    }
                    now_job.lines.push_back(line.clone());
                }
                now_job.lines_total += lines.len() as u64;
                let data = json!({ "app": job.app, "job": job.id, "first": first, "lines": lines });
                return Some(("line", data.to_string()));
            }
            Event::Uploading { sent, total } => {
                now_job.upload = Some((*sent, *total));
                return None;
            }
            _ => keep_state(now_job, event),
        }
        Some(("state", json!({ "app": job.app }).to_string()))
    }
}

/// What an event other than build output or upload progress changes in the job.
fn keep_state(job: &mut JobNow, event: &Event<'_>) {
    match event {
        Event::Step(step) => {
            job.step = Some(*step);
            job.retrying = None;
            if *step != Step::Verify {
                job.phase = None;
            }
        }
        Event::DeploymentCreated { id } | Event::DeploymentAdopted { id } => {
            job.deployment_id = Some((*id).to_string());
            job.platform_status = None;
        }
        Event::Status { status } => job.platform_status = Some(redact(status).into_owned()),
        Event::Uploaded { .. } => job.upload = None,
        Event::Retrying { error, .. } => {
            job.retrying = Some(redact(&error.to_string()).into_owned());
        }
        Event::Checking { phase, .. } => {
            job.step = Some(Step::Verify);
            job.phase = Some((*phase).to_string());
        }
        Event::Probed { probe } => {
            if job.probes.len() == KEPT_PROBES {
                job.probes.pop_front();
            }
            let mark = if probe.healthy {
                "healthy"
            } else {
                "unhealthy"
            };
            let text = format!("{mark}: {}", probe.describe());
            job.probes.push_back(redact(&text).into_owned());
        }
        Event::Checked { reason, .. } => {
            job.phase = Some(redact(reason).into_owned());
        }
        _ => {}
    }
}

/// An [`Observer`] that keeps what the page shows in a [`Feed`], then hands every event to
/// `inner` (the metrics, then the log).
pub struct FeedObserver {
    feed: Arc<Feed>,
    inner: Arc<dyn Observer>,
}

impl FeedObserver {
    pub fn new(feed: Arc<Feed>, inner: Arc<dyn Observer>) -> FeedObserver {
        FeedObserver { feed, inner }
    }
}

impl Observer for FeedObserver {
    fn event(&self, job: &Job, event: &Event<'_>) {
        if let Some((name, data)) = self.feed.keep(job, event) {
            self.feed.send(name, data);
        }
        self.inner.event(job, event);
    }

    fn lane(&self, app: &str, in_flight: usize, pending: usize) {
        let changed = {
            let mut apps = self.feed.lock();
            let now = apps.entry(app.to_string()).or_default();
            let changed = (now.in_flight, now.pending) != (in_flight, pending);
            (now.in_flight, now.pending) = (in_flight, pending);
            if in_flight == 0 {
                now.job = None;
            }
            changed
        };
        if changed {
            self.feed.changed(app);
        }
        self.inner.lane(app, in_flight, pending);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::observe::LogObserver;
    use crate::queue::spool::Payload;

    fn job() -> Job {
        Job::new(
            "j1".into(),
            "app",
            "app-1".into(),
            Payload::Url {
                url: "https://x/tk-us-abcdefghijklmnopqrstuvwxyz0123456789abcdefghij".into(),
            },
            1,
        )
    }

    #[test]
    fn build_lines_are_kept_redacted_bounded_and_sent_live() {
        let feed = Arc::new(Feed::new());
        let mut live = feed.subscribe();
        let observer = FeedObserver::new(feed.clone(), Arc::new(LogObserver));
        let job = job();
        observer.event(&job, &Event::Step(Step::Follow));
        let lines: Vec<String> = (0..KEPT_LINES + 5).map(|n| format!("line {n}")).collect();
        observer.event(&job, &Event::Output { lines: &lines });
        let token = vec!["token tk-us-abcdefghijklmnopqrstuvwxyz0123456789abcdefghij".to_string()];
        observer.event(&job, &Event::Output { lines: &token });
        let now = feed.snapshot().remove("app").unwrap().job.unwrap();
        assert_eq!(now.lines.len(), KEPT_LINES);
        assert_eq!(now.lines_total, KEPT_LINES as u64 + 6);
        assert!(!now.file.contains("tk-us-abcdefghij"), "{}", now.file);
        let last = now.lines.back().unwrap();
        assert!(!last.contains("tk-us-abcdefghij"), "{last}");
        assert_eq!(live.try_recv().unwrap().event, "state");
        let first = live.try_recv().unwrap();
        assert_eq!(first.event, "line");
        assert!(first.data.contains("\"first\":0"), "{}", first.data);
        let second = live.try_recv().unwrap();
        assert!(!second.data.contains("tk-us-abcdefghij"), "{}", second.data);
        // A check may follow the target's end: the job stays until the lane is idle.
        observer.event(&job, &Event::Finished);
        observer.event(
            &job,
            &Event::Checking {
                phase: "probing",
                wait: std::time::Duration::ZERO,
            },
        );
        assert_eq!(
            feed.snapshot()["app"]
                .job
                .as_ref()
                .unwrap()
                .phase
                .as_deref(),
            Some("probing")
        );
        observer.lane("app", 0, 0);
        assert!(feed.snapshot()["app"].job.is_none());
    }
}
