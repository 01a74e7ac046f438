//! Prometheus metrics: a few counters, gauges and duration histograms about deployments, and
//! the small HTTP server that exposes them.
//!
//! [`Metrics`] is shared by the whole daemon as an `Arc<Metrics>`; every update takes a short
//! lock on a map, so any task (or blocking thread) may update it. [`Metrics::render`] writes the
//! Prometheus text exposition format 0.0.4 by hand: the handful of series below, and three
//! histograms with fixed buckets ([`Histogram`]), do not need a metrics framework.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `dropdeploy_up` | gauge | (always 1) |
//! | `dropdeploy_deployments_total` | counter | `app`, `outcome` (`succeeded`, `failed`, `superseded`; with a health check `verified`, `unhealthy`, `rolled_back`) |
//! | `dropdeploy_needs_attention` | gauge | `app` (1 while a rollback was unhealthy too) |
//! | `dropdeploy_retries_total` | counter | `app`, `step` (`create_source`, `upload`, …) |
//! | `dropdeploy_upload_bytes_total` | counter | `app` |
//! | `dropdeploy_queue_depth` | gauge | `app`, `state` (`in_flight`, `pending`) |
//! | `dropdeploy_last_success_timestamp_seconds` | gauge | `app` |
//! | `dropdeploy_deployment_duration_seconds` | histogram | `app`, `outcome` |
//! | `dropdeploy_upload_duration_seconds` | histogram | `app` |
//! | `dropdeploy_build_duration_seconds` | histogram | `app` |
//!
//! A deployment's duration is its history line's `duration_ms`: from the job's creation (the
//! archive claimed) to its outcome, waits in the lane included; an archive refused before it
//! became a job has none. An upload's is the one complete upload's. A build's runs from the
//! platform's deployment created (or adopted, after a restart: from then on) to its end, as
//! seen by this process; the local target has none. p95 of the last day, per app:
//! `histogram_quantile(0.95, sum by (le, app) (rate(dropdeploy_deployment_duration_seconds_bucket[1d])))`.
//!
//! [`serve`] answers `GET /metrics` and `GET /healthz` on the `metrics_listen` address;
//! [`MetricsObserver`] counts retries and uploaded bytes, and times uploads and builds, from
//! the runner's events and passes every event on to another [`Observer`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::deploy::scalingo::driver::{Event, Observer};
use crate::outcome::{HistoryEntry, Outcome};
use crate::queue::spool::{Job, Step};
use crate::shutdown::Shutdown;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE_TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The outcomes a configured app's `dropdeploy_deployments_total` starts with, at 0.
const OUTCOMES: [&str; 3] = ["succeeded", "failed", "superseded"];

/// Bucket bounds of `dropdeploy_deployment_duration_seconds`, in seconds: a quick local
/// release to an hour-long queue and build.
const DEPLOYMENT_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];
/// Bucket bounds of `dropdeploy_upload_duration_seconds`: a small archive on a fast link to
/// a large one on a slow link.
const UPLOAD_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Bucket bounds of `dropdeploy_build_duration_seconds`: platform builds take minutes.
const BUILD_BUCKETS: &[f64] = &[
    5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 3600.0,
];

/// One histogram series: how many observations fell at or below each bound, their sum and
/// their count, rendered as Prometheus' cumulative `_bucket{le=…}`, `_sum` and `_count`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// The buckets' upper bounds, ascending; `+Inf` is implied.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds`, for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending, `+Inf` implied).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Counts one observation of `seconds`, in the first bucket whose bound is ≥ it.
    pub fn observe(&mut self, seconds: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
    }

    /// How many observations there were.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The series' sample lines: `name_bucket{labels…,le="…"}` for every bound and `+Inf`
    /// (cumulative), then `name_sum` and `name_count`.
    fn render(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        let mut below = 0;
        let les = self
            .bounds
            .iter()
            .map(|b| b.to_string())
            .chain(std::iter::once("+Inf".to_string()));
        for (le, n) in les.zip(&self.counts) {
            below += n;
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            sample(out, &bucket, &with_le, below);
        }
        sample_text(out, &format!("{name}_sum"), labels, &self.sum.to_string());
        sample(out, &format!("{name}_count"), labels, below);
    }
}

/// The daemon's counters and gauges. Cheap to update from any task or thread; read with
/// [`Metrics::render`]. Counters only grow for the life of the process (an app removed on
/// reload keeps its series).
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<Series>,
}

/// Every series, keyed by label values; `BTreeMap`s so that the output is in a stable order.
#[derive(Debug, Default)]
struct Series {
    deployments: BTreeMap<(String, String), u64>,
    retries: BTreeMap<(String, String), u64>,
    upload_bytes: BTreeMap<String, u64>,
    /// (in flight, pending)
    queue_depth: BTreeMap<String, (usize, usize)>,
    last_success: BTreeMap<String, u64>,
    needs_attention: BTreeMap<String, bool>,
    deployment_duration: BTreeMap<(String, String), Histogram>,
    upload_duration: BTreeMap<String, Histogram>,
    build_duration: BTreeMap<String, Histogram>,
}

impl Metrics {
    /// An empty registry, to be shared.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Makes an app's series exist at 0 (deployments of each outcome, upload bytes, queue
    /// depth), so that `rate()` and alerts see them before the first deployment. Optional;
    /// harmless to call again (e.g. on reload).
    pub fn register_app(&self, app: &str) {
        let mut s = self.lock();
        for outcome in OUTCOMES {
            s.deployments
                .entry((app.to_string(), outcome.to_string()))
                .or_insert(0);
        }
        s.upload_bytes.entry(app.to_string()).or_insert(0);
        s.queue_depth.entry(app.to_string()).or_insert((0, 0));
        for outcome in OUTCOMES {
            s.deployment_duration
                .entry((app.to_string(), outcome.to_string()))
                .or_insert_with(|| Histogram::new(DEPLOYMENT_BUCKETS));
        }
        s.upload_duration
            .entry(app.to_string())
            .or_insert_with(|| Histogram::new(UPLOAD_BUCKETS));
        s.build_duration
            .entry(app.to_string())
            .or_insert_with(|| Histogram::new(BUILD_BUCKETS));
    }

    /// A job of `app` finished with `outcome` (`succeeded`, `failed` or `superseded`) at
    /// `finished_at_unix` (seconds since the epoch). A success also sets the app's
    /// `dropdeploy_last_success_timestamp_seconds` (never moving it backwards).
    pub fn deployment_finished(&self, app: &str, outcome: &str, finished_at_unix: u64) {
        let mut s = self.lock();
        *s.deployments
            .entry((app.to_string(), outcome.to_string()))
            .or_insert(0) += 1;
        let live = [Outcome::Succeeded, Outcome::Verified, Outcome::RolledBack];
        if live.iter().any(|o| o.name() == outcome) {
            let last = s.last_success.entry(app.to_string()).or_insert(0);
            *last = (*last).max(finished_at_unix);
        }
    }

    /// [`Metrics::deployment_finished`] for a history entry (an outcome just recorded), timed
    /// now, and its `duration_ms` in `dropdeploy_deployment_duration_seconds` (unless it is an
    /// archive refused before it became a job: no `git_ref`, no duration). An entry whose
    /// outcome is unknown is not counted.
    pub fn record_outcome(&self, entry: &HistoryEntry) {
        if entry.outcome == Outcome::Unknown {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.deployment_finished(&entry.app, entry.outcome.name(), now);
        if entry.git_ref.is_some() {
            self.deployment_duration(
                &entry.app,
                entry.outcome.name(),
                Duration::from_millis(entry.duration_ms),
            );
        }
    }

    /// A job of `app` ended with `outcome` after `took` (from its creation to its outcome).
    pub fn deployment_duration(&self, app: &str, outcome: &str, took: Duration) {
        self.lock()
            .deployment_duration
            .entry((app.to_string(), outcome.to_string()))
            .or_insert_with(|| Histogram::new(DEPLOYMENT_BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// One complete upload of an archive of `app` took `took`.
    pub fn upload_duration(&self, app: &str, took: Duration) {
        self.lock()
            .upload_duration
            .entry(app.to_string())
            .or_insert_with(|| Histogram::new(UPLOAD_BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// A deployment of `app` on the platform took `took`, from its creation to its end.
    pub fn build_duration(&self, app: &str, took: Duration) {
        self.lock()
            .build_duration
            .entry(app.to_string())
            .or_insert_with(|| Histogram::new(BUILD_BUCKETS))
            .observe(took.as_secs_f64());
    }

    /// A step of a job of `app` failed transiently and will be tried again. `step` is the
    /// step's name as in the history (`create_source`, `upload`, …).
    pub fn retry(&self, app: &str, step: &str) {
        *self
            .lock()
            .retries
            .entry((app.to_string(), step.to_string()))
            .or_insert(0) += 1;
    }

    /// `bytes` of an archive of `app` were uploaded (one complete upload).
    pub fn upload_bytes(&self, app: &str, bytes: u64) {
        let mut s = self.lock();
        let total = s.upload_bytes.entry(app.to_string()).or_insert(0);
        *total = total.saturating_add(bytes);
    }

    /// The app's lane now has `in_flight` jobs running (0 or 1) and `pending` waiting.
    pub fn set_queue_depth(&self, app: &str, in_flight: usize, pending: usize) {
        self.lock()
            .queue_depth
            .insert(app.to_string(), (in_flight, pending));
    }

    /// Jobs waiting behind the ones in flight, over all apps (for the service status line).
    /// Whether `app` needs attention (its rollback was unhealthy too).
    pub fn set_needs_attention(&self, app: &str, needs: bool) {
        self.lock().needs_attention.insert(app.to_string(), needs);
    }

    pub fn pending_total(&self) -> usize {
        self.lock()
            .queue_depth
            .values()
            .map(|(_, pending)| pending)
            .sum()
    }

    /// Every metric in the Prometheus text exposition format 0.0.4, each family with its
    /// `# HELP` and `# TYPE` lines.
    pub fn render(&self) -> String {
        let s = self.lock();
        let mut out = String::with_capacity(1024);
        family(
            &mut out,
            "dropdeploy_up",
            "gauge",
            "Whether dropdeploy is running (always 1).",
        );
        out.push_str("dropdeploy_up 1\n");
        s.render_deployments(&mut out);
        s.render_retries(&mut out);
        s.render_upload_bytes(&mut out);
        s.render_queue_depth(&mut out);
        s.render_last_success(&mut out);
        s.render_attention(&mut out);
        s.render_durations(&mut out);
        out
    }

    fn lock(&self) -> MutexGuard<'_, Series> {
        // A panic while holding the lock leaves numbers that are still worth showing.
        self.series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One writer per family, each appending its `# HELP`/`# TYPE` lines and its samples.
impl Series {
    fn render_deployments(&self, out: &mut String) {
        family(
            out,
            "dropdeploy_deployments_total",
            "counter",
            "Jobs finished, by app and outcome (succeeded, failed, superseded).",
        );
        for ((app, outcome), n) in &self.deployments {
            sample(
                out,
                "dropdeploy_deployments_total",
                &[("app", app), ("outcome", outcome)],
                *n,
            );
        }
    }

    fn render_retries(&self, out: &mut String) {
        family(
            out,
            "dropdeploy_retries_total",
            "counter",
            "Transient failures retried, by app and step.",
        );
        for ((app, step), n) in &self.retries {
            sample(
                out,
                "dropdeploy_retries_total",
                &[("app", app), ("step", step)],
                *n,
            );
        }
    }

    fn render_upload_bytes(&self, out: &mut String) {
        family(
            out,
            "dropdeploy_upload_bytes_total",
            "counter",
            "Bytes of archives uploaded (complete uploads), by app.",
        );
        for (app, n) in &self.upload_bytes {
            sample(out, "dropdeploy_upload_bytes_total", &[("app", app)], *n);
        }
    }

    fn render_queue_depth(&self, out: &mut String) {
        family(
            out,
            "dropdeploy_queue_depth",
            "gauge",
            "Jobs in an app's lane: in_flight (running, 0 or 1) and pending (waiting).",
        );
        for (app, (in_flight, pending)) in &self.queue_depth {
            for (state, n) in [("in_flight", in_flight), ("pending", pending)] {
                sample(
                    out,
                    "dropdeploy_queue_depth",
                    &[("app", app), ("state", state)],
                    *n as u64,
                );
            }
        }
    }

    fn render_last_success(&self, out: &mut String) {
        family(
            out,
            "dropdeploy_last_success_timestamp_seconds",
            "gauge",
            "When the app's last successful deployment finished, in seconds since the epoch.",
        );
        for (app, at) in &self.last_success {
            sample(
                out,
                "dropdeploy_last_success_timestamp_seconds",
                &[("app", app)],
                *at,
            );
        }
    }
}

impl Series {
    fn render_attention(&self, out: &mut String) {
        family(
            out,
            "dropdeploy_needs_attention",
            "gauge",
            "1 while an app's rollback was unhealthy too (until a new job or `dropdeploy resume`).",
        );
        for (app, needs) in &self.needs_attention {
            sample(
                out,
                "dropdeploy_needs_attention",
                &[("app", app)],
                u64::from(*needs),
            );
        }
    }

    fn render_durations(&self, out: &mut String) {
        family(
            out,
            "dropdeploy_deployment_duration_seconds",
            "histogram",
            "From a job's creation (its archive claimed) to its outcome, by app and outcome.",
        );
        for ((app, outcome), histogram) in &self.deployment_duration {
            histogram.render(
                out,
                "dropdeploy_deployment_duration_seconds",
                &[("app", app), ("outcome", outcome)],
            );
        }
        family(
            out,
            "dropdeploy_upload_duration_seconds",
            "histogram",
            "How long complete uploads of archives took, by app.",
        );
        for (app, histogram) in &self.upload_duration {
            histogram.render(out, "dropdeploy_upload_duration_seconds", &[("app", app)]);
        }
        family(
            out,
            "dropdeploy_build_duration_seconds",
            "histogram",
            "From a platform deployment created (or adopted) to its end, by app.",
        );
        for (app, histogram) in &self.build_duration {
            histogram.render(out, "dropdeploy_build_duration_seconds", &[("app", app)]);
        }
    }
}

/// The `# HELP` and `# TYPE` lines of a family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample line: `name{label="value",…} number`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    sample_text(out, name, labels, &value.to_string());
}

/// One sample line whose value is already written as the text format wants it.
fn sample_text(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label_value(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the text format wants it: `\`, `"` and line feeds escaped.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text: `\` and line feeds escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A step's name as in the history and the metrics' `step` label (`create_source`, …).
pub fn step_label(step: Step) -> String {
    match serde_json::to_value(step) {
        Ok(serde_json::Value::String(name)) => name,
        _ => step.to_string().replace(' ', "_"),
    }
}

/// An [`Observer`] that counts retries and uploaded bytes in [`Metrics`], times uploads and
/// builds, then hands every event to `inner` (the daemon's
/// [`LogObserver`](crate::queue::observe::LogObserver)).
pub struct MetricsObserver {
    metrics: Arc<Metrics>,
    inner: Arc<dyn Observer>,
    /// The builds under way, by job id.
    builds: Mutex<HashMap<String, Build>>,
}

/// A platform deployment being followed.
struct Build {
    /// When it was created or adopted.
    since: Instant,
    /// When its status last changed: the end of a deployment replaced by another one.
    last_status: Option<Instant>,
}

impl MetricsObserver {
    /// Counts into `metrics`, forwards to `inner`.
    pub fn new(metrics: Arc<Metrics>, inner: Arc<dyn Observer>) -> MetricsObserver {
        MetricsObserver {
            metrics,
            inner,
            builds: Mutex::new(HashMap::new()),
        }
    }

    /// Times the builds from the events about them: one starts at its deployment's creation
    /// or adoption, and ends with its job, or at its last status when another deployment
    /// replaces it (an `aborted` one posted again).
    fn follow_build(&self, job: &Job, event: &Event<'_>) {
        let now = Instant::now();
        let Ok(mut builds) = self.builds.lock() else {
            return;
        };
        let ended = match event {
            Event::DeploymentCreated { .. } | Event::DeploymentAdopted { .. } => builds
                .insert(
                    job.id.clone(),
                    Build {
                        since: now,
                        last_status: None,
                    },
                )
                .map(|b| {
                    b.last_status
                        .unwrap_or(now)
                        .saturating_duration_since(b.since)
                }),
            Event::Status { .. } => {
                if let Some(build) = builds.get_mut(&job.id) {
                    build.last_status = Some(now);
                }
                None
            }
            Event::Finished => builds
                .remove(&job.id)
                .map(|b| now.saturating_duration_since(b.since)),
            _ => None,
        };
        drop(builds);
        if let Some(took) = ended {
            self.metrics.build_duration(&job.app, took);
        }
    }
}

impl Observer for MetricsObserver {
    fn event(&self, job: &Job, event: &Event<'_>) {
        match event {
            Event::Retrying { step, .. } => self.metrics.retry(&job.app, &step_label(*step)),
            Event::Uploaded { bytes, elapsed } => {
                self.metrics.upload_bytes(&job.app, *bytes);
                self.metrics.upload_duration(&job.app, *elapsed);
            }
            Event::NeedsAttention { .. } => self.metrics.set_needs_attention(&job.app, true),
            Event::Step(step) if *step != Step::Verify && job.rollback().is_none() => {
                self.metrics.set_needs_attention(&job.app, false);
                self.follow_build(job, event);
            }
            _ => self.follow_build(job, event),
        }
        self.inner.event(job, event);
    }

    fn lane(&self, app: &str, in_flight: usize, pending: usize) {
        self.metrics.set_queue_depth(app, in_flight, pending);
        self.inner.lane(app, in_flight, pending);
    }
}

/// Serves `GET /metrics` ([`Metrics::render`], `text/plain; version=0.0.4`) and
/// `GET /healthz` (`ok`) on `addr` until `shutdown` fires; any other path is a 404.
///
/// Binds before returning, so that a bad or busy address is a start-up error naming it.
/// Returns the bound address (the real port when `addr` has port 0) and the server's task,
/// which ends once `shutdown` fired and the open connections have closed (abort it if a
/// client holds one open past the daemon's grace period).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), std::io::Error> {
    let named = |e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve metrics on {addr} (metrics_listen): {e}"),
        )
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(named)?;
    let bound = listener.local_addr().map_err(named)?;
    let router = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    let task = tokio::spawn(async move {
        let mut shutdown = shutdown;
        let stopped = async move { shutdown.requested().await };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(address = %bound, "the metrics server stopped: {e}");
        }
    });
    tracing::info!(address = %bound, "serving metrics on /metrics");
    Ok((bound, task))
}

async fn metrics_page(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT_0_0_4)], metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn an_empty_registry_still_says_up_and_describes_every_family() {
        let text = Metrics::new().render();
        assert!(text.contains("\ndropdeploy_up 1\n"), "{text}");
        for (name, kind) in [
            ("dropdeploy_up", "gauge"),
            ("dropdeploy_deployments_total", "counter"),
            ("dropdeploy_retries_total", "counter"),
            ("dropdeploy_upload_bytes_total", "counter"),
            ("dropdeploy_queue_depth", "gauge"),
            ("dropdeploy_last_success_timestamp_seconds", "gauge"),
            ("dropdeploy_deployment_duration_seconds", "histogram"),
            ("dropdeploy_upload_duration_seconds", "histogram"),
            ("dropdeploy_build_duration_seconds", "histogram"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn deployments_are_counted_by_app_and_outcome() {
        let m = Metrics::new();
        m.deployment_finished("my-app", "succeeded", 100);
        m.deployment_finished("my-app", "succeeded", 90);
        m.deployment_finished("my-app", "failed", 120);
        m.deployment_finished("other", "superseded", 130);
        let text = m.render();
        let l = lines(&text);
        assert!(l.contains(&r#"dropdeploy_deployments_total{app="my-app",outcome="succeeded"} 2"#));
        assert!(l.contains(&r#"dropdeploy_deployments_total{app="my-app",outcome="failed"} 1"#));
        assert!(l.contains(&r#"dropdeploy_deployments_total{app="other",outcome="superseded"} 1"#));
        // The last success never moves back, and only successes set it.
        assert!(l.contains(&r#"dropdeploy_last_success_timestamp_seconds{app="my-app"} 100"#));
        assert!(!text.contains(r#"dropdeploy_last_success_timestamp_seconds{app="other"}"#));
    }

    #[test]
    fn retries_bytes_and_queue_depth() {
        let m = Metrics::new();
        m.retry("a", "upload");
        m.retry("a", "upload");
        m.retry("a", "create_source");
        m.upload_bytes("a", 1000);
        m.upload_bytes("a", 24);
        m.set_queue_depth("a", 1, 0);
        m.set_queue_depth("a", 1, 3);
        let text = m.render();
        let l = lines(&text);
        assert!(l.contains(&r#"dropdeploy_retries_total{app="a",step="upload"} 2"#));
        assert!(l.contains(&r#"dropdeploy_retries_total{app="a",step="create_source"} 1"#));
        assert!(l.contains(&r#"dropdeploy_upload_bytes_total{app="a"} 1024"#));
        assert!(l.contains(&r#"dropdeploy_queue_depth{app="a",state="in_flight"} 1"#));
        assert!(l.contains(&r#"dropdeploy_queue_depth{app="a",state="pending"} 3"#));
    }

    #[test]
    fn registered_apps_start_at_zero_and_keep_their_counts() {
        let m = Metrics::new();
        m.deployment_finished("a", "failed", 1);
        m.register_app("a");
        m.register_app("a");
        let text = m.render();
        let l = lines(&text);
        assert!(l.contains(&r#"dropdeploy_deployments_total{app="a",outcome="succeeded"} 0"#));
        assert!(l.contains(&r#"dropdeploy_deployments_total{app="a",outcome="failed"} 1"#));
        assert!(l.contains(&r#"dropdeploy_deployments_total{app="a",outcome="superseded"} 0"#));
        assert!(l.contains(&r#"dropdeploy_upload_bytes_total{app="a"} 0"#));
        assert!(l.contains(&r#"dropdeploy_queue_depth{app="a",state="pending"} 0"#));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("line\nbreak"), r"line\nbreak");
        assert_eq!(escape_label_value("été"), "été");
        let m = Metrics::new();
        m.retry("x\"y", "a\\b\nc");
        let text = m.render();
        assert!(
            text.contains(r#"dropdeploy_retries_total{app="x\"y",step="a\\b\nc"} 1"#),
            "{text}"
        );
        // Every sample stays on one line.
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.starts_with("dropdeploy_"))
        );
    }

    #[test]
    fn history_entries_are_counted_by_their_outcome() {
        let m = Metrics::new();
        let entry = HistoryEntry {
            app: "a".into(),
            outcome: Outcome::Succeeded,
            ..HistoryEntry::default()
        };
        m.record_outcome(&entry);
        m.record_outcome(&HistoryEntry::default()); // unknown: not counted
        let text = m.render();
        assert!(text.contains(r#"dropdeploy_deployments_total{app="a",outcome="succeeded"} 1"#));
        assert!(!text.contains("outcome=\"unknown\""));
        assert!(text.contains(r#"dropdeploy_last_success_timestamp_seconds{app="a"} "#));
    }

    #[test]
    fn the_observer_counts_retries_and_uploads_and_forwards_everything() {
        use crate::deploy::scalingo::api::ApiError;
        use crate::queue::spool::{JobState, Payload};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        struct Count(AtomicUsize);
        impl Observer for Count {
            fn event(&self, _: &Job, _: &Event<'_>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let inner = Arc::new(Count(AtomicUsize::new(0)));
        let m = Metrics::new();
        let observer = MetricsObserver::new(m.clone(), inner.clone());
        let job = Job {
            id: "j1".into(),
            app: "my-app".into(),
            git_ref: "my-app-1".into(),
            payload: Payload::Url {
                url: "https://x.example/a.tar.gz".into(),
            },
            created_at: 0,
            started_at: None,
            failed_attempts: 0,
            aborted_retries: 0,
            source_renewals: 0,
            check: None,
            state: JobState::Queued,
        };
        let error = ApiError::Timeout {
            what: "upload",
            url: "https://storage.example".into(),
            waited: Duration::from_secs(1),
            limit: Duration::from_secs(1),
        };
        observer.event(
            &job,
            &Event::Retrying {
                step: Step::Upload,
                error: &error,
                delay: Duration::from_secs(1),
                failures: 1,
            },
        );
        observer.event(
            &job,
            &Event::Uploaded {
                bytes: 4096,
                elapsed: Duration::from_millis(5),
            },
        );
        observer.event(&job, &Event::Finished);
        assert_eq!(inner.0.load(Ordering::SeqCst), 3);
        let text = m.render();
        assert!(text.contains(r#"dropdeploy_retries_total{app="my-app",step="upload"} 1"#));
        assert!(text.contains(r#"dropdeploy_upload_bytes_total{app="my-app"} 4096"#));
    }

    /// Every histogram series in `text`: its `_bucket` values in order, with their `le`.
    /// Checks that they are cumulative and end with `+Inf` equal to `_count`.
    fn histograms(text: &str) -> BTreeMap<String, Vec<(String, u64)>> {
        let mut series: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for line in text.lines().filter(|l| l.contains("_bucket{")) {
            let (name_labels, value) = line.rsplit_once(' ').unwrap();
            let (head, le) = name_labels.rsplit_once(",le=\"").unwrap();
            let le = le.trim_end_matches("\"}").to_string();
            series
                .entry(head.replace("_bucket", ""))
                .or_default()
                .push((le, value.parse().unwrap()));
        }
        for (head, buckets) in &series {
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{head}: not cumulative: {buckets:?}"
            );
            let (last_le, last) = buckets.last().unwrap();
            assert_eq!(last_le, "+Inf", "{head}");
            let (name, labels) = head.split_once('{').unwrap();
            let count = format!("{name}_count{{{labels}}} {last}");
            let count = count.replace("{}", "");
            assert!(
                text.lines().any(|l| l == count),
                "{head}: no `{count}` in\n{text}"
            );
        }
        series
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_a_sum_and_a_count() {
        let m = Metrics::new();
        for ms in [500, 3000, 3000, 4_000_000] {
            m.deployment_duration("my-app", "succeeded", Duration::from_millis(ms));
        }
        let text = m.render();
        let l = lines(&text);
        let name = "dropdeploy_deployment_duration_seconds";
        assert!(l.contains(&"# TYPE dropdeploy_deployment_duration_seconds histogram"));
        let expected = [
            ("1", 1),
            ("5", 3),
            ("15", 3),
            ("30", 3),
            ("60", 3),
            ("120", 3),
            ("300", 3),
            ("600", 3),
            ("1200", 3),
            ("1800", 3),
            ("3600", 3),
            ("+Inf", 4),
        ];
        for (le, n) in expected {
            let line =
                format!(r#"{name}_bucket{{app="my-app",outcome="succeeded",le="{le}"}} {n}"#);
            assert!(l.contains(&line.as_str()), "{line} in\n{text}");
        }
        assert!(l.contains(&r#"dropdeploy_deployment_duration_seconds_sum{app="my-app",outcome="succeeded"} 4006.5"#));
        assert!(l.contains(
            &r#"dropdeploy_deployment_duration_seconds_count{app="my-app",outcome="succeeded"} 4"#
        ));
        // The bucket lines come in ascending order of `le`, then `_sum`, then `_count`.
        let at = |needle: &str| text.find(needle).unwrap();
        assert!(at(r#"le="1"}"#) < at(r#"le="5"}"#));
        assert!(at(r#"le="3600"}"#) < at(r#"le="+Inf"}"#));
        assert!(at(r#"le="+Inf"}"#) < at(&format!("{name}_sum")));
        assert!(at(&format!("{name}_sum")) < at(&format!("{name}_count")));
        assert_eq!(histograms(&text).len(), 1);
    }

    #[test]
    fn a_value_on_a_bound_counts_in_its_bucket() {
        let mut h = Histogram::new(UPLOAD_BUCKETS);
        h.observe(0.1);
        h.observe(0.1000001);
        h.observe(1e9);
        let mut out = String::new();
        h.render(&mut out, "x", &[]);
        let l = lines(&out);
        assert!(l.contains(&r#"x_bucket{le="0.1"} 1"#), "{out}");
        assert!(l.contains(&r#"x_bucket{le="0.5"} 2"#), "{out}");
        assert!(l.contains(&r#"x_bucket{le="600"} 2"#), "{out}");
        assert!(l.contains(&r#"x_bucket{le="+Inf"} 3"#), "{out}");
        assert!(l.contains(&"x_count 3"), "{out}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn outcomes_are_timed_by_their_duration_and_refused_archives_not() {
        let m = Metrics::new();
        m.register_app("a");
        m.record_outcome(&HistoryEntry {
            app: "a".into(),
            git_ref: Some("a-1".into()),
            outcome: Outcome::Failed,
            duration_ms: 90_000,
            ..HistoryEntry::default()
        });
        m.record_outcome(&HistoryEntry {
            app: "a".into(),
            outcome: Outcome::Failed,
            ..HistoryEntry::default()
        });
        let text = m.render();
        let l = lines(&text);
        let failed = r#"dropdeploy_deployment_duration_seconds_bucket{app="a",outcome="failed","#;
        assert!(
            l.contains(&format!(r#"{failed}le="60"}} 0"#).as_str()),
            "{text}"
        );
        assert!(
            l.contains(&format!(r#"{failed}le="120"}} 1"#).as_str()),
            "{text}"
        );
        assert!(l.contains(
            &r#"dropdeploy_deployment_duration_seconds_count{app="a",outcome="failed"} 1"#
        ));
        assert!(l.contains(
            &r#"dropdeploy_deployment_duration_seconds_sum{app="a",outcome="failed"} 90"#
        ));
        assert!(text.contains(r#"dropdeploy_deployments_total{app="a",outcome="failed"} 2"#));
        // A registered app's histograms exist at 0, for each outcome.
        assert!(l.contains(
            &r#"dropdeploy_deployment_duration_seconds_count{app="a",outcome="succeeded"} 0"#
        ));
        assert!(l.contains(&r#"dropdeploy_upload_duration_seconds_count{app="a"} 0"#));
        assert!(l.contains(&r#"dropdeploy_build_duration_seconds_bucket{app="a",le="+Inf"} 0"#));
        assert_eq!(histograms(&text).len(), 5);
    }

    fn job(id: &str) -> Job {
        use crate::queue::spool::{JobState, Payload};
        Job {
            id: id.into(),
            app: "my-app".into(),
            git_ref: "my-app-1".into(),
            payload: Payload::Url {
                url: "https://x.example/a.tar.gz".into(),
            },
            created_at: 0,
            started_at: None,
            failed_attempts: 0,
            aborted_retries: 0,
            source_renewals: 0,
            check: None,
            state: JobState::Queued,
        }
    }

    #[test]
    fn the_observer_times_uploads_and_builds() {
        struct Quiet;
        impl Observer for Quiet {
            fn event(&self, _: &Job, _: &Event<'_>) {}
        }
        let m = Metrics::new();
        let observer = MetricsObserver::new(m.clone(), Arc::new(Quiet));
        let (one, two) = (job("j1"), job("j2"));
        observer.event(
            &one,
            &Event::Uploaded {
                bytes: 10,
                elapsed: Duration::from_millis(700),
            },
        );
        // j1: one deployment followed to its end.
        observer.event(&one, &Event::DeploymentCreated { id: "d-1" });
        observer.event(&one, &Event::Status { status: "building" });
        observer.event(&one, &Event::Status { status: "success" });
        observer.event(&one, &Event::Finished);
        // j2: adopted after a restart, aborted, posted again, then finished.
        observer.event(&two, &Event::DeploymentAdopted { id: "d-2" });
        observer.event(&two, &Event::Status { status: "aborted" });
        observer.event(&two, &Event::DeploymentCreated { id: "d-3" });
        observer.event(&two, &Event::Finished);
        // A job that ends without a deployment is no build.
        observer.event(&job("j3"), &Event::Finished);

        let text = m.render();
        let l = lines(&text);
        assert!(
            l.contains(&r#"dropdeploy_upload_duration_seconds_bucket{app="my-app",le="0.5"} 0"#)
        );
        assert!(l.contains(&r#"dropdeploy_upload_duration_seconds_bucket{app="my-app",le="1"} 1"#));
        assert!(l.contains(&r#"dropdeploy_upload_duration_seconds_sum{app="my-app"} 0.7"#));
        assert!(
            l.contains(&r#"dropdeploy_build_duration_seconds_count{app="my-app"} 3"#),
            "{text}"
        );
        assert!(
            observer.builds.lock().unwrap().is_empty(),
            "no build left behind"
        );
        assert_eq!(histograms(&text).len(), 2);
    }

    #[test]
    fn step_labels_are_the_history_names() {
        assert_eq!(step_label(Step::CreateSource), "create_source");
        assert_eq!(step_label(Step::Upload), "upload");
        assert_eq!(step_label(Step::Follow), "follow");
    }
}
