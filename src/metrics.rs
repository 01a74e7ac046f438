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
//! [`serve`] answers `GET /metrics` and `GET /healthz` on the `metrics_listen` address (and
//! [`serve_with`] the status page's routes, [`crate::page`], on the same listener);
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
    /// Fleet mode: this node's name, and since when (Unix seconds) its database has been
    /// unreachable (`None` while it answers).
    database: Option<(String, Option<u64>)>,
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

    /// Fleet mode: whether node `node` reaches the fleet's database, or since when (Unix
    /// seconds) it does not (`dropdeploy_database_up`, `dropdeploy_database_down_since_seconds`).
    pub fn set_database(&self, node: &str, down_since: Option<u64>) {
        self.lock().database = Some((node.to_string(), down_since));
    }

    /// Fleet mode: since when (Unix seconds) the database has been unreachable, if it is.
    pub fn database_down_since(&self) -> Option<u64> {
        self.lock().database.as_ref().and_then(|(_, since)| *since)
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
        s.render_database(&mut out);
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
    fn render_database(&self, out: &mut String) {
        let Some((node, down_since)) = &self.database else {
            return;
        };
        let labels = [("node", node.as_str())];
        family(
            out,
            "dropdeploy_database_up",
            "gauge",
            "Fleet mode: whether this node reaches the fleet's database (1) or not (0).",
        );
        sample(
            out,
            "dropdeploy_database_up",
            &labels,
            u64::from(down_since.is_none()),
        );
        if let Some(since) = down_since {
            family(
                out,
                "dropdeploy_database_down_since_seconds",
                "gauge",
                "Fleet mode: since when (Unix time) this node cannot reach the fleet's database.",
            );
            sample(
                out,
                "dropdeploy_database_down_since_seconds",
                &labels,
                *since,
            );
        }
    }

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
/// `GET /healthz` (`ok`) on `addr` until `shutdown` fires; any other path is a 404 (with
/// [`serve_with`], the routes given, such as the status page's, are served too).
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
    serve_with(addr, metrics, Router::new(), shutdown).await
}

/// [`serve`], with more routes on the same listener (the status page's).
pub async fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    more: Router,
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
        .with_state(metrics)
        .merge(more);
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
mod tests;
