//! The HTTP intake (`[intake] listen`): CI uploads an archive with `PUT
//! /v1/apps/{app}/archives/{name}` and follows its job with `GET /v1/jobs/{id}`.
//!
//! An upload is streamed to a file under `state_dir/intake/uploads/` (never held in memory),
//! its SHA-256 computed on the way, then enqueued through the same intake as `deploy` (copied
//! into a new job directory and inspected there) and handed to the app's lane by the daemon's
//! main loop. The answer, `202 {"job", "git_ref", "status_url"}`, comes once the job record is
//! durable. A retry of the same upload (its `Idempotency-Key`, or the same app, SHA-256 and
//! name within [`SAME_UPLOAD`]) answers the same job: the keys are small files under
//! `state_dir/intake/keys/`. A token is never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;

use crate::archive::inspect::Limits;
use crate::page::Tokens;
use crate::queue::intake::{IntakeError, Transfer, enqueue_archive};
use crate::queue::spool::{Job, JobState, Spool};

/// A second upload of the same bytes under the same name for the same app, within this long,
/// is taken for a retry of the first.
const SAME_UPLOAD: u64 = 600;
/// Jobs listed by `GET /v1/apps/{app}/jobs` without `limit`.
const DEFAULT_LIST: usize = 20;

/// What the intake's routes share.
pub(super) struct Intake {
    tokens: Tokens,
    spool: Spool,
    state_dir: PathBuf,
    /// The configured apps and their git_ref labels.
    apps: RwLock<HashMap<String, String>>,
    limits: Limits,
    /// The longest wait for the next piece of an upload's body (`read_timeout`).
    read_timeout: Duration,
    /// Jobs made here, for the main loop to hand to their lanes.
    submit: mpsc::Sender<Job>,
    /// One upload at a time per app decides "new job or retry", so that two retries racing
    /// make one job (the keys name the app, so apps need not wait for each other).
    deciding: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Fleet mode: a job is answered for once the fleet's store has it (not handed to a lane
    /// here: the node holding the app's lane drives it).
    publisher: std::sync::OnceLock<Arc<super::publish::Publisher>>,
}

/// What an idempotency key file remembers.
#[derive(Serialize, Deserialize)]
struct Remembered {
    job: String,
    git_ref: String,
    at: u64,
}

impl Intake {
    pub(super) fn new(
        config: &crate::config::Config,
        tokens: Tokens,
        spool: Spool,
        submit: mpsc::Sender<Job>,
    ) -> Arc<Intake> {
        let intake = Intake {
            tokens,
            spool,
            state_dir: config.state_dir.clone(),
            apps: RwLock::new(HashMap::new()),
            limits: Limits {
                max_uncompressed: config.max_archive_bytes,
            },
            read_timeout: config.intake.read_timeout,
            submit,
            deciding: std::sync::Mutex::new(HashMap::new()),
            publisher: std::sync::OnceLock::new(),
        };
        intake.set_apps(config);
        Arc::new(intake)
    }

    /// After a reload: the apps configured now.
    pub(super) fn set_apps(&self, config: &crate::config::Config) {
        let apps = config
            .apps
            .iter()
            .map(|a| (a.name.clone(), a.ref_label().to_string()))
            .collect();
        if let Ok(mut known) = self.apps.write() {
            *known = apps;
        }
    }

    /// Fleet mode: jobs are published to the fleet's store before they are answered for.
    pub(super) fn set_publisher(&self, publisher: Arc<super::publish::Publisher>) {
        let _ = self.publisher.set(publisher);
    }

    /// The answer for a job made (or recalled) here: 202 once it is durable for whoever
    /// drives it (in fleet mode: once the fleet's store has it; else 503, and the job waits
    /// in this node's spool to be published, so that the client's retry gets the same job).
    async fn answer(&self, job: &str, git_ref: &str) -> Response {
        if let Some(publisher) = self.publisher.get()
            && let Err(e) = publisher.publish_waiting(job).await
        {
            return unavailable(job, &e);
        }
        accepted(job, git_ref)
    }

    fn uploads(&self) -> PathBuf {
        self.state_dir.join("intake").join("uploads")
    }

    fn key_path(&self, parts: &[&str]) -> PathBuf {
        let mut hash = Sha256::new();
        for part in parts {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let name = format!("{}.json", hex::encode(hash.finalize()));
        self.state_dir.join("intake").join("keys").join(name)
    }
}

/// How long an `Idempotency-Key` is remembered (kept files are pruned at start past it).
const KEYS_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Makes the intake's folders, removes uploads a previous run left half-received, and forgets
/// keys older than [`KEYS_KEPT`]. Blocking.
pub(super) fn prepare(state_dir: &Path) -> std::io::Result<()> {
    let intake = state_dir.join("intake");
    let uploads = intake.join("uploads");
    if uploads.exists() {
        crate::durable::remove_tree(&uploads)?;
    }
    crate::durable::create_dir_all(&uploads)?;
    let keys = intake.join("keys");
    crate::durable::create_dir_all(&keys)?;
    for entry in std::fs::read_dir(&keys)?.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age > KEYS_KEPT);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The intake's routes.
pub(super) fn routes(intake: Arc<Intake>) -> Router {
    Router::new()
        .route("/v1/apps/{app}/archives/{name}", put(upload))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/apps/{app}/jobs", get(jobs))
        .with_state(intake)
}

/// Serves the intake on `addr` until `shutdown`, over TLS when `tls` is given.
pub(super) async fn serve(
    addr: std::net::SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    intake: Arc<Intake>,
    mut shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let named = |e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve the HTTP intake on {addr} (listen in [intake]): {e}"),
        )
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(named)?;
    let bound = listener.local_addr().map_err(named)?;
    let router = routes(intake);
    let task = tokio::spawn(async move {
        let stopped = async move { shutdown.requested().await };
        let served = match tls {
            Some(config) => {
                let listener = super::intake_tls::TlsListener {
                    tcp: listener,
                    acceptor: tokio_rustls::TlsAcceptor::from(config),
                };
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            }
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stopped)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::error!(address = %bound, "the HTTP intake stopped: {e}");
        }
    });
    Ok((bound, task))
}

fn say(status: StatusCode, message: &str) -> Response {
    send_json(status, &json!({ "error": message }))
}

fn send_json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string());
    (status, [(CONTENT_TYPE, "application/json")], body).into_response()
}

/// A 401 unless the request carries one of the `[intake]` tokens. The token is never logged.
fn refused(intake: &Intake, headers: &HeaderMap) -> Option<Response> {
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if intake.tokens.any() && intake.tokens.allows(given.trim()) {
        return None;
    }
    let mut refused = say(
        StatusCode::UNAUTHORIZED,
        "this needs a valid intake token: Authorization: Bearer <token>",
    );
    refused.headers_mut().insert(
        WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    Some(refused)
}

/// A plain archive name: no folder, no `..`, ending in `.tar.gz` or `.tgz`.
fn valid_name(name: &str) -> bool {
    !name.contains(['/', '\\', '\0'])
        && !name.contains("..")
        && !name.starts_with('.')
        && (name.ends_with(".tar.gz") || name.ends_with(".tgz"))
        && name.len() > 4
}

/// The fleet's store cannot take the job now: 503 with the reason; the same upload retried
/// answers the same job once it can.
fn unavailable(job: &str, error: &crate::queue::store::StoreError) -> Response {
    let mut answer = send_json(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({
            "error": format!(
                "job {job} is kept on this node but the fleet's store cannot take it yet \
                 ({error}); send the same upload again later: it answers this job"
            ),
            "job": job,
        }),
    );
    answer.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("5"),
    );
    answer
}

fn accepted(job: &str, git_ref: &str) -> Response {
    send_json(
        StatusCode::ACCEPTED,
        &json!({
            "job": job,
            "git_ref": git_ref,
            "status_url": format!("/v1/jobs/{job}"),
        }),
    )
}

/// A remembered upload, if `path` holds one younger than `max_age` seconds (any age: `None`).
async fn recall(path: PathBuf, max_age: Option<u64>) -> Option<Remembered> {
    let read = crate::blocking::run(move || std::fs::read(&path))
        .await
        .ok()?;
    let remembered: Remembered = serde_json::from_slice(&read).ok()?;
    let young = max_age.is_none_or(|age| crate::queue::spool::now() < remembered.at + age);
    young.then_some(remembered)
}

async fn remember(paths: Vec<PathBuf>, job: &Job) -> Result<(), String> {
    let remembered = Remembered {
        job: job.id.clone(),
        git_ref: job.git_ref.clone(),
        at: crate::queue::spool::now(),
    };
    let bytes = serde_json::to_vec(&remembered).map_err(|e| e.to_string())?;
    crate::blocking::run(move || {
        for path in &paths {
            crate::durable::replace(path, &bytes)?;
        }
        Ok::<_, crate::durable::DurableError>(())
    })
    .await
    .map_err(|e| e.to_string())
}

async fn upload(
    State(intake): State<Arc<Intake>>,
    UrlPath((app, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = refused(&intake, &headers) {
        return refused;
    }
    let label = intake.apps.read().ok().and_then(|a| a.get(&app).cloned());
    let Some(label) = label else {
        return say(
            StatusCode::NOT_FOUND,
            &format!("{app} is not an app of the configuration"),
        );
    };
    if !valid_name(&name) {
        return say(
            StatusCode::BAD_REQUEST,
            &format!(
                "{name}: an archive's name is a plain file name (no `/`, no `..`) ending in \
                 .tar.gz or .tgz"
            ),
        );
    }
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(length) = length else {
        return say(
            StatusCode::LENGTH_REQUIRED,
            "Content-Length is required: the archive's size is checked before it is received",
        );
    };
    let max = intake.limits.max_compressed();
    if length > max {
        return say(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "{name} is {length} bytes; at most {max} are accepted for {app} \
                 (max_archive_size)"
            ),
        );
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let key_path = key.as_ref().map(|k| intake.key_path(&["key", &app, k]));
    if let Some(path) = &key_path
        && let Some(known) = recall(path.clone(), None).await
    {
        return intake.answer(&known.job, &known.git_ref).await;
    }
    let (dir, file, sha256) = match receive(&intake, &name, length, body).await {
        Ok(received) => received,
        Err(why) => {
            tracing::warn!(app, file = name, "upload not received: {why}");
            return say(StatusCode::BAD_REQUEST, &why);
        }
    };
    let answer = decide(&intake, &app, &name, &label, &file, &sha256, key_path).await;
    let _ = crate::blocking::run(move || crate::durable::remove_tree(&dir)).await;
    answer
}

/// Under the app's lock: the same job again for a retry, else a new job, remembered, then handed
/// to its lane.
async fn decide(
    intake: &Arc<Intake>,
    app: &str,
    name: &str,
    label: &str,
    file: &Path,
    sha256: &str,
    key_path: Option<PathBuf>,
) -> Response {
    let lock = match intake.deciding.lock() {
        Ok(mut locks) => locks.entry(app.to_string()).or_default().clone(),
        Err(_) => {
            return say(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the intake's lock is broken",
            );
        }
    };
    let _deciding = lock.lock().await;
    if let Some(path) = &key_path
        && let Some(known) = recall(path.clone(), None).await
    {
        return intake.answer(&known.job, &known.git_ref).await;
    }
    let same = intake.key_path(&["content", app, sha256, name]);
    if let Some(known) = recall(same.clone(), Some(SAME_UPLOAD)).await {
        tracing::info!(
            app,
            file = name,
            job = known.job,
            "the same upload again: same job"
        );
        return intake.answer(&known.job, &known.git_ref).await;
    }
    let made = {
        let (spool, app, file, label) = (
            intake.spool.clone(),
            app.to_string(),
            file.to_path_buf(),
            label.to_string(),
        );
        let limits = intake.limits;
        tokio::task::spawn_blocking(move || {
            enqueue_archive(&spool, &app, &file, Transfer::Take, &label, None, &limits)
        })
        .await
    };
    let job = match made {
        Ok(Ok(job)) => job,
        Ok(Err(IntakeError::Rejected { rejection, .. })) => {
            tracing::warn!(app, file = name, "upload refused: {rejection}");
            return say(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("{name}: {rejection}"),
            );
        }
        Ok(Err(e)) => return say(StatusCode::INTERNAL_SERVER_ERROR, &format!("{app}: {e}")),
        Err(e) => return say(StatusCode::INTERNAL_SERVER_ERROR, &format!("{app}: {e}")),
    };
    let mut keys = vec![same];
    keys.extend(key_path);
    if let Err(e) = remember(keys, &job).await {
        tracing::warn!(app, job = %job.id, "cannot remember the upload for retries: {e}");
    }
    tracing::info!(app, job = %job.id, file = name, git_ref = %job.git_ref, "received over HTTP");
    let (id, git_ref) = (job.id.clone(), job.git_ref.clone());
    if let Some(publisher) = intake.publisher.get() {
        return match publisher.publish(job).await {
            Ok(_) => accepted(&id, &git_ref),
            Err(e) => unavailable(&id, &e),
        };
    }
    if intake.submit.send(job).await.is_err() {
        tracing::warn!(app, job = %id, "the daemon is stopping; the job waits in the spool");
    }
    accepted(&id, &git_ref)
}

/// Streams the body into `uploads/<random>/<name>`, hashing it, and syncs it. On any error
/// (short body, longer body, a stall past `read_timeout`, I/O) nothing is left behind.
async fn receive(
    intake: &Intake,
    name: &str,
    length: u64,
    body: Body,
) -> Result<(PathBuf, PathBuf, String), String> {
    let dir = intake.uploads().join(format!("{:016x}", fastrand::u64(..)));
    let file = dir.join(name);
    let got = write_body(&dir, &file, length, intake.read_timeout, body).await;
    if got.is_err() {
        let dir = dir.clone();
        let _ = crate::blocking::run(move || crate::durable::remove_tree(&dir)).await;
    }
    got.map(|sha| (dir, file, sha))
}

async fn write_body(
    dir: &Path,
    file: &Path,
    length: u64,
    read_timeout: Duration,
    body: Body,
) -> Result<String, String> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let mut out = tokio::fs::File::create(file)
        .await
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let mut hash = Sha256::new();
    let mut seen = 0u64;
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::time::timeout(read_timeout, stream.next())
            .await
            .map_err(|_| {
                format!(
                    "the client sent nothing for {} (read_timeout in [intake])",
                    humantime::format_duration(read_timeout)
                )
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| format!("the upload broke off: {e}"))?;
        seen += chunk.len() as u64;
        if seen > length {
            return Err(format!(
                "the body is longer than its Content-Length {length}"
            ));
        }
        hash.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    }
    if seen != length {
        return Err(format!(
            "the upload ended after {seen} of its {length} bytes"
        ));
    }
    out.sync_all()
        .await
        .map_err(|e| format!("cannot sync {}: {e}", file.display()))?;
    Ok(hex::encode(hash.finalize()))
}

/// A job as `GET /v1/jobs/{id}` shows it.
#[derive(Serialize)]
struct JobView {
    job: String,
    app: String,
    git_ref: Option<String>,
    /// The spool's state (`queued`, `deploying`, …), or `finished`.
    state: String,
    step: Option<String>,
    deployment_id: Option<String>,
    /// Once recorded: `succeeded`, `failed`, `verified`, …
    outcome: Option<String>,
    reason: Option<String>,
    /// Failed after retrying transient errors for the whole retry budget.
    gave_up: bool,
}

fn from_spool(job: &Job) -> JobView {
    let state = serde_json::to_value(&job.state).unwrap_or_default();
    let deployment_id = find_key(&state, "deployment_id");
    let (step, reason, gave_up) = match &job.state {
        JobState::Failed(f) => (
            serde_json::to_value(f.step)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string)),
            Some(f.reason.clone()),
            f.gave_up,
        ),
        other => (Some(other.name().to_string()), None, false),
    };
    JobView {
        job: job.id.clone(),
        app: job.app.clone(),
        git_ref: Some(job.git_ref.clone()),
        state: job.state.name().to_string(),
        step,
        deployment_id,
        outcome: None,
        reason,
        gave_up,
    }
}

fn find_key(value: &serde_json::Value, key: &str) -> Option<String> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        _ => None,
    }
}

fn from_history(entry: crate::outcome::HistoryEntry) -> JobView {
    let outcome = entry.outcome.name().to_string();
    let gave_up = outcome == "failed"
        && entry
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("gave up"));
    JobView {
        job: entry.job,
        app: entry.app,
        git_ref: entry.git_ref,
        state: "finished".to_string(),
        step: entry.step,
        deployment_id: entry.deployment_id,
        outcome: Some(outcome),
        reason: entry.reason,
        gave_up,
    }
}

/// The jobs of `app` (all apps: `None`): recorded outcomes first, then those in the spool.
/// Blocking.
fn views(spool: &Spool, state_dir: &Path, app: Option<&str>, limit: Option<usize>) -> Vec<JobView> {
    let history = state_dir.join(crate::outcome::HISTORY_NAME);
    let mut out: Vec<JobView> = crate::outcome::read_history(&history, app, limit)
        .unwrap_or_default()
        .into_iter()
        .map(from_history)
        .collect();
    let recorded: std::collections::HashSet<String> = out.iter().map(|v| v.job.clone()).collect();
    for job in spool.jobs().unwrap_or_default().into_iter().flatten() {
        if app.is_none_or(|a| a == job.app) && !recorded.contains(&job.id) {
            out.push(from_spool(&job));
        }
    }
    out
}

/// Fleet mode: one job as the fleet's store has it (any node's). Blocking.
fn fleet_view(
    store: &dyn crate::queue::store::Store,
    id: &str,
) -> Result<Option<JobView>, crate::queue::store::StoreError> {
    let job = match store.load(id) {
        Ok(job) => job,
        Err(crate::queue::store::StoreError::Missing(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !job.is_done() {
        return Ok(Some(from_spool(&job)));
    }
    let entry = store
        .history(Some(&job.app), FLEET_HISTORY_SEARCH)?
        .into_iter()
        .rev()
        .find(|f| f.job == id)
        .and_then(|f| serde_json::from_value::<crate::outcome::HistoryEntry>(f.entry).ok());
    Ok(Some(entry.map_or_else(|| from_spool(&job), from_history)))
}

/// How far back in the fleet's history a finished job is looked for.
const FLEET_HISTORY_SEARCH: usize = 10_000;

/// Fleet mode: the newest `limit` jobs of `app`, unfinished ones first. Blocking.
fn fleet_views(
    store: &dyn crate::queue::store::Store,
    app: &str,
    limit: usize,
) -> Result<Vec<JobView>, crate::queue::store::StoreError> {
    let mut out: Vec<JobView> = store
        .jobs(Some(app))?
        .iter()
        .rev()
        .map(from_spool)
        .collect();
    let finished = store.history(Some(app), limit)?;
    out.extend(finished.into_iter().rev().filter_map(|f| {
        serde_json::from_value::<crate::outcome::HistoryEntry>(f.entry)
            .ok()
            .map(from_history)
    }));
    out.truncate(limit);
    Ok(out)
}

async fn job(
    State(intake): State<Arc<Intake>>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refused(&intake, &headers) {
        return refused;
    }
    let plain = !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if let Some(publisher) = intake.publisher.get() {
        let (store, wanted) = (publisher.store().clone(), id.clone());
        let found = crate::blocking::run(move || fleet_view(&*store, &wanted)).await;
        return match found {
            Ok(Some(view)) => send_json(StatusCode::OK, &view),
            Ok(None) => say(StatusCode::NOT_FOUND, &format!("no job {id}")),
            Err(e) => say(StatusCode::SERVICE_UNAVAILABLE, &format!("job {id}: {e}")),
        };
    }
    let (spool, state_dir, wanted) = (intake.spool.clone(), intake.state_dir.clone(), id.clone());
    let found = crate::blocking::run(move || {
        if plain && let Ok(job) = spool.load(&wanted) {
            return Ok::<_, std::convert::Infallible>(Some(from_spool(&job)));
        }
        let history = state_dir.join(crate::outcome::HISTORY_NAME);
        let entries = crate::outcome::read_history(&history, None, None).unwrap_or_default();
        Ok(entries
            .into_iter()
            .rev()
            .find(|e| e.job == wanted)
            .map(from_history))
    })
    .await
    .ok()
    .flatten();
    match found {
        Some(view) => send_json(StatusCode::OK, &view),
        None => say(StatusCode::NOT_FOUND, &format!("no job {id}")),
    }
}

async fn jobs(
    State(intake): State<Arc<Intake>>,
    UrlPath(app): UrlPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refused(&intake, &headers) {
        return refused;
    }
    if !intake.apps.read().is_ok_and(|a| a.contains_key(&app)) {
        return say(
            StatusCode::NOT_FOUND,
            &format!("{app} is not an app of the configuration"),
        );
    }
    let limit = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("limit="))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(DEFAULT_LIST)
        .clamp(1, 1000);
    if let Some(publisher) = intake.publisher.get() {
        let store = publisher.store().clone();
        let listed = crate::blocking::run(move || fleet_views(&*store, &app, limit)).await;
        return match listed {
            Ok(list) => send_json(StatusCode::OK, &json!({ "jobs": list })),
            Err(e) => say(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
    }
    let (spool, state_dir) = (intake.spool.clone(), intake.state_dir.clone());
    let mut list = crate::blocking::run(move || {
        Ok::<_, std::convert::Infallible>(views(&spool, &state_dir, Some(&app), Some(limit)))
    })
    .await
    .unwrap_or_default();
    list.reverse();
    list.truncate(limit);
    send_json(StatusCode::OK, &json!({ "jobs": list }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_are_plain_tarballs() {
        for good in ["app.tar.gz", "v1.2-app.tgz"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "a/b.tar.gz",
            "..tar.gz",
            "x..y.tar.gz",
            "app.zip",
            ".tgz",
            "a\\b.tgz",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
