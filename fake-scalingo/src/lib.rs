//! A fake Scalingo platform for tests: token exchange, regions, sources with presigned-like
//! storage URLs, archive deployments built in the background, build output, the deployments
//! stream (`stream.rs`, a WebSocket) and the rate limit (`ratelimit.rs`), served over real HTTP
//! on loopback.
//!
//! It models the platform's archive-deploy API as its public documentation, official Go client
//! and CLI describe it, picking the stricter behaviour where they disagree, and it can inject
//! faults (`fail_next`) that a real network and a real platform produce: 5xx, 429 in plain
//! text, dropped connections, slow answers, answers that come after the side effect, expired
//! tokens and expired upload URLs.
//!
//! It is independent of the `dropdeploy` library on purpose: it is a model of the platform,
//! not of the client.
//!
//! Everything (auth, API, storage) is served on one port. The server runs on its own thread
//! with its own tokio runtime, so it can be started from a plain `#[test]` as well as from
//! inside `#[tokio::test]`; dropping the `FakeScalingo` stops it and deletes its storage.
//!
//! Choices where the platform is unknown or lenient (the strict side, on purpose):
//! - storage answers are S3-like XML: 400 `InvalidArgument` for an Authorization header,
//!   411 `MissingContentLength` for a chunked or length-less PUT, 403 `SignatureDoesNotMatch`
//!   for a wrong token or a Content-Type other than `application/x-gzip`, 403 `AccessDenied`
//!   "Request has expired" for an expired source, 404 `NoSuchKey` before any upload;
//! - a `git_ref` must match `[A-Za-z0-9._-]{1,128}` and not start with `-` (else 422);
//! - the deployment list pages 10 deployments by default, 50 at most;
//! - the archive limit applies to the decompressed tar stream (headers and padding included).

pub mod app_server;

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{Notify, watch};

mod ratelimit;
mod regions;
mod stream;
pub mod timeline;

pub use ratelimit::RateLimit;
pub use timeline::Overlap;

/// How the fake platform is set up. `Default` gives a realistic platform with fast builds.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// The only API token the exchange accepts.
    pub api_token: String,
    /// Lifetime of an issued JWT (`exp - iat`, rounded up to whole seconds).
    pub jwt_lifetime: Duration,
    /// Lifetime of a source's upload and download URLs; the uploaded file goes with them.
    pub source_lifetime: Duration,
    /// Time spent in each of `queued`, `building`, `pushing`, `starting`.
    pub step: Duration,
    /// Apps that exist (by name).
    pub apps: Vec<String>,
    /// The upload URL first answers 307 to the real storage URL.
    pub redirect_uploads: bool,
    /// Largest accepted archive, uncompressed (the decompressed tar stream).
    pub max_archive_bytes: u64,
    /// One line per request on stderr. Defaults to `FAKE_SCALINGO_LOG=1` in the environment.
    pub log_requests: bool,
    /// Random faults on every request (a fault storm); `None` (the default): only scripted
    /// faults (`fail_next`).
    pub chaos: Option<Chaos>,
    /// Whether `GET /v1/apps/{app}/deployments/stream` serves the WebSocket (else 404, as for
    /// a client that cannot have it).
    pub stream: bool,
    /// Time between two `ping` events on the stream.
    pub stream_ping: Duration,
    /// The stream refuses every `auth` frame by ending the connection at once with no close
    /// frame: the documentation says only that on an authentication error "the websocket will
    /// be ended immediately" (the 4001 close of a valid-looking but expired token is this
    /// fake's own choice).
    pub stream_refuse_auth: bool,
    /// Each connection first gets the log so far of the app's running deployments (and of its
    /// newest one), one `log` frame each: "you'll start receiving existing logs and real time
    /// logs", says the documentation.
    pub stream_replay: bool,
    /// Each stream connection is cut (no close frame) this long after it authenticated.
    pub stream_cut_every: Option<Duration>,
    /// The platform's rate limit on API requests (`None`: unlimited).
    pub rate_limit: Option<RateLimit>,
    /// Regions served on a port of their own (see `GET /v1/regions`).
    pub extra_regions: Vec<String>,
}

/// A seeded fault storm: each request the client makes draws from one RNG (under the state
/// lock, so the sequence is reproducible for a given order of requests) and, with
/// `probability`, gets a fault picked among those that fit its endpoint. The token exchange
/// draws at a quarter of the rate; the platform's own fetch of a source (`Download`) never gets
/// one. A scripted `fail_next` fault wins over the draw.
#[derive(Debug, Clone)]
pub struct Chaos {
    pub seed: u64,
    /// Chance of a fault per request, 0.0 to 1.0.
    pub probability: f64,
    /// The `Delay` picked: slower than the client's timeout.
    pub delay_past_timeout: Duration,
    /// Only plain transient faults (500, 503, a dropped connection): no 429, delay, expired
    /// token or source, nor `aborted` outcome.
    pub transient_only: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            api_token: "tk-us-fake-0123456789abcdefghij".to_string(),
            jwt_lifetime: Duration::from_secs(3600),
            source_lifetime: Duration::from_secs(600),
            step: Duration::from_millis(50),
            apps: vec!["my-app".to_string()],
            redirect_uploads: false,
            max_archive_bytes: 314_572_800,
            log_requests: std::env::var("FAKE_SCALINGO_LOG").is_ok_and(|v| v == "1"),
            chaos: None,
            stream: true,
            stream_ping: Duration::from_secs(1),
            stream_refuse_auth: false,
            stream_replay: false,
            stream_cut_every: None,
            rate_limit: None,
            extra_regions: Vec::new(),
        }
    }
}

/// The endpoints a fault can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/tokens/exchange`
    Exchange,
    /// `GET /v1/regions`
    Regions,
    /// `POST /v1/sources`
    CreateSource,
    /// `PUT` on an upload URL (the redirecting hop and the storage itself)
    Upload,
    /// `GET` on a download URL (the builder's own fetch included)
    Download,
    /// `POST /v1/apps/{app}/deployments`
    CreateDeployment,
    /// `GET /v1/apps/{app}/deployments/{id}`
    GetDeployment,
    /// `GET /v1/apps/{app}/deployments`
    ListDeployments,
    /// `GET /v1/apps/{app}/deployments/{id}/output`
    Output,
    /// `GET /v1/apps/{app}`
    GetApp,
    /// `GET /v1/apps/{app}/deployments/stream` (the WebSocket's dial)
    Stream,
}

/// A fault injected into the next request to an endpoint (see `FakeScalingo::fail_next`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with a JSON `{"error": "<reason phrase>"}` body (429 gives the plain
    /// text body of `RateLimited` without `Retry-After`).
    Status(u16),
    /// 429, `text/plain` body `Retry later`, with a `Retry-After` header when `Some`.
    RateLimited { retry_after: Option<String> },
    /// Read the request head, then drop the TCP connection without any response.
    CloseConnection,
    /// Read part of the body (half of `Content-Length`, at most 64 KiB), then drop the TCP
    /// connection without any response. On other endpoints: same as `CloseConnection`.
    CloseMidBody,
    /// Sleep, then handle normally.
    Delay(Duration),
    /// Handle normally (side effects happen), then sleep before answering.
    ProcessThenDelay(Duration),
    /// 401 `{"error":"token expired"}` for this one request.
    ExpiredJwt,
    /// Upload/Download: answer as an expired presigned URL (403). CreateDeployment: the source
    /// named by `source_url` (when it is one of ours) expires just before the deployment is
    /// created, so its build fails fetching it. Other endpoints: no effect.
    ExpiredSource,
    /// Handle normally (side effects happen), then send the answer followed by this many bytes
    /// of spaces: still valid JSON, streamed without a length (never held whole by the fake).
    HugeBody(u64),
    /// Handle normally (side effects happen), then garble the answer: a byte that is not UTF-8
    /// (0xFF) put at the start of every JSON string value of a `status` or `id` key.
    NotUtf8,
    /// Handle normally (side effects happen), then answer with the `id` of every object
    /// replaced by `other-id` (as a confused proxy or cache would).
    OtherId,
    /// Answer `307 Temporary Redirect` to this URL (a path is taken on the fake itself),
    /// without handling the request.
    RedirectTo(String),
}

/// Counters, as a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tokens issued by the exchange.
    pub exchanges: u64,
    /// Exchange requests not answered 200 (bad credentials, faults, dropped connections).
    pub exchange_failures: u64,
    pub sources_created: u64,
    /// Upload requests answered 200.
    pub uploads_ok: u64,
    /// Upload requests that stored nothing (rejected, faulted, cut); the 307 hop is neither.
    pub uploads_failed: u64,
    /// Bytes stored by successful uploads.
    pub upload_bytes: u64,
    /// Download requests answered 200 (the builder's own fetches included).
    pub downloads: u64,
    pub deployments_created: u64,
    /// Deployments that reached a terminal status.
    pub deployments_finished: u64,
    /// Every request received, counted when its head arrives.
    pub requests: u64,
    /// Answers with status 401.
    pub unauthorized: u64,
    /// Answers with status 429.
    pub rate_limited: u64,
    /// Faults applied to requests: scripted (`fail_next`) and random (`FakeConfig::chaos`),
    /// terminal `aborted` statuses queued by the storm included.
    pub faults_injected: u64,
    /// Stream connections authenticated.
    pub stream_connections: u64,
    /// `auth` frames accepted (the first of each connection, and each renewal).
    pub stream_auths: u64,
    /// `auth` frames refused, or missing.
    pub stream_auth_failures: u64,
    /// Streams closed (4001) because the token they were authenticated with expired or was
    /// revoked.
    pub stream_expired: u64,
    /// Stream dials refused (stream disabled, no `Origin`).
    pub stream_refused: u64,
    /// Answered requests by endpoint (`Debug` name, e.g. `GetDeployment`).
    pub by_endpoint: std::collections::BTreeMap<String, u64>,
}

impl Stats {
    /// Requests to the API (storage transfers left out), as the rate limit counts them.
    pub fn api_requests(&self) -> u64 {
        self.by_endpoint
            .iter()
            .filter(|(e, _)| !matches!(e.as_str(), "Upload" | "Download"))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn requests_to(&self, endpoint: Endpoint) -> u64 {
        self.by_endpoint
            .get(&format!("{endpoint:?}"))
            .copied()
            .unwrap_or(0)
    }
}

/// One deployment as the platform keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentRecord {
    pub id: String,
    /// The app's name.
    pub app: String,
    pub app_id: String,
    pub git_ref: Option<String>,
    pub source_url: String,
    pub status: String,
    pub created_at: SystemTime,
    /// When it left `queued` (the app's lane was free and the queued step passed).
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// The build output so far (ANSI colours included).
    pub output: String,
}

impl DeploymentRecord {
    /// Whether the status is a terminal one (anything but the four running statuses).
    pub fn is_finished(&self) -> bool {
        !matches!(
            self.status.as_str(),
            "queued" | "building" | "pushing" | "starting"
        )
    }
}

/// One request as received, recorded when it was answered (or dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// Every header, lower-case names, values included (Authorization too).
    pub headers: Vec<(String, String)>,
    /// Body bytes the server read.
    pub body_len: u64,
    /// Status answered; 0 when the connection was dropped without an answer.
    pub status: u16,
    pub endpoint: Option<Endpoint>,
    /// When its head arrived.
    pub received: Instant,
    /// When it was answered (or dropped).
    pub answered: Instant,
}

impl RequestRecord {
    /// The first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running fake platform. Dropping it stops the server and deletes its storage.
pub struct FakeScalingo {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<()>>,
    _storage: tempfile::TempDir,
}

impl FakeScalingo {
    /// Starts on `127.0.0.1:0`. Panics if it cannot.
    pub fn start(cfg: FakeConfig) -> FakeScalingo {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), cfg)
            .expect("start the fake Scalingo server")
    }

    /// Starts on `addr`; the socket is bound when this returns.
    pub fn start_on(addr: SocketAddr, cfg: FakeConfig) -> io::Result<FakeScalingo> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let mut local = listener.local_addr()?;
        if local.ip().is_unspecified() {
            local.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let storage = tempfile::Builder::new()
            .prefix("fake-scalingo-")
            .tempdir()?;
        let http = http_client_builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(io::Error::other)?;
        let base_url = format!("http://{local}");
        let extra = regions::bind(&cfg.extra_regions)?;
        let region_urls = extra
            .iter()
            .map(|(n, u, _)| (n.clone(), u.clone()))
            .collect();
        let mut state = State {
            step: cfg.step,
            chaos_rng: cfg.chaos.as_ref().map(|c| fastrand::Rng::with_seed(c.seed)),
            ..State::default()
        };
        for name in &cfg.apps {
            state.add_app(name);
        }
        let shared = Arc::new(Shared {
            cfg,
            base_url,
            storage_dir: storage.path().to_path_buf(),
            http,
            state: Mutex::new(state),
            events: tokio::sync::broadcast::channel(4096).0,
            kick: watch::channel(0).0,
            region_urls,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fake-scalingo")
            .enable_all()
            .build()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let server_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-scalingo".to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    for (_, _, extra) in extra {
                        if let Ok(extra) = tokio::net::TcpListener::from_std(extra) {
                            let rx = shutdown_rx.clone();
                            tokio::spawn(accept_loop(server_shared.clone(), extra, rx));
                        }
                    }
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(server_shared, listener, shutdown_rx).await,
                        Err(e) => eprintln!("fake-scalingo: cannot listen: {e}"),
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(500));
            })?;
        Ok(FakeScalingo {
            shared,
            addr: local,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            _storage: storage,
        })
    }

    /// `http://127.0.0.1:PORT`: the auth URL, the API URL and the storage host at once.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn api_token(&self) -> String {
        self.shared.cfg.api_token.clone()
    }

    pub fn add_app(&self, name: &str) {
        self.shared.lock().add_app(name);
    }

    /// The id the platform gave an app (different from its name), if it exists.
    pub fn app_id(&self, name: &str) -> Option<String> {
        self.shared.lock().app(name).map(|a| a.id.clone())
    }

    /// Queues a fault for the endpoint; each request to it pops one (FIFO).
    pub fn fail_next(&self, endpoint: Endpoint, fault: Fault) {
        self.shared
            .lock()
            .faults
            .entry(endpoint)
            .or_default()
            .push_back(fault);
    }

    /// Queues the terminal status of the app's next deployment whose archive is good (FIFO,
    /// popped when the archive check passes). Without one, the status is `success`.
    pub fn set_next_outcome(&self, app: &str, status: &str) {
        self.shared
            .lock()
            .outcomes
            .entry(app.to_string())
            .or_default()
            .push_back(status.to_string());
    }

    /// Every JWT issued so far is rejected from now on (401 `token expired`).
    pub fn expire_all_tokens(&self) {
        let mut st = self.shared.lock();
        let revoked: Vec<String> = st.tokens.keys().cloned().collect();
        st.revoked.extend(revoked);
        st.tokens.clear();
    }

    /// Every source created so far is expired: its URLs answer 403 and its file is gone.
    pub fn expire_all_sources(&self) {
        let mut st = self.shared.lock();
        for source in st.sources.values_mut() {
            source.forced_expired = true;
        }
    }

    /// Breaks every open stream connection (no close frame), as a network cut would.
    pub fn drop_streams(&self) {
        self.shared.kick.send_modify(|n| *n += 1);
    }

    /// The API URL of a region served on its own port (`FakeConfig::extra_regions`).
    pub fn region_url(&self, name: &str) -> Option<String> {
        self.shared
            .region_urls
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u.clone())
    }

    pub fn set_step(&self, step: Duration) {
        self.shared.lock().step = step;
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// The app's deployments (by name or id), oldest first.
    pub fn deployments(&self, app: &str) -> Vec<DeploymentRecord> {
        self.shared
            .lock()
            .app(app)
            .map(|a| a.deployments.clone())
            .unwrap_or_default()
    }

    pub fn deployment(&self, app: &str, id: &str) -> Option<DeploymentRecord> {
        self.shared
            .lock()
            .app(app)
            .and_then(|a| a.deployments.iter().find(|d| d.id == id).cloned())
    }

    pub fn count_git_ref(&self, app: &str, git_ref: &str) -> usize {
        self.deployments(app)
            .iter()
            .filter(|d| d.git_ref.as_deref() == Some(git_ref))
            .count()
    }

    /// Requests to `endpoint` received and not yet answered (a `Delay` or `ProcessThenDelay`
    /// holds them); a request whose client went away stops counting when the server notices.
    pub fn requests_in_flight(&self, endpoint: Endpoint) -> usize {
        self.shared
            .lock()
            .in_flight
            .get(&endpoint)
            .copied()
            .unwrap_or(0)
    }

    /// Serves `bytes` at a new URL of this server (`GET`, no token, never expires), as a
    /// `source_url` that needs no source nor upload. Requests to it are `Endpoint::Download`.
    /// The address of the app itself (its health page is any path under it): it answers as
    /// its last successful deployment's archive says (see [`app_server`]).
    pub fn app_url(&self, app: &str) -> String {
        format!("{}/app/{app}", self.url())
    }

    /// Serves the local releases in `app_dir` (whose `current` link says which) at
    /// [`FakeScalingo::app_url`]`(name)`.
    pub fn serve_release(&self, name: &str, app_dir: &Path) {
        self.shared.lock().serving.serve_release(name, app_dir);
    }

    /// What the app answers now at [`FakeScalingo::app_url`]: (status, body).
    pub fn app_answer(&self, app: &str) -> (u16, String) {
        self.shared.lock().serving.answer(app)
    }

    /// Makes the app answer `status` whatever it runs (`None`: as its release says again).
    pub fn break_app(&self, app: &str, status: Option<u16>) {
        self.shared.lock().serving.set_broken(app, status);
    }

    pub fn host_archive(&self, bytes: &[u8]) -> String {
        let name = format!("{}.tar.gz", random_hex(16));
        let path = self.shared.storage_dir.join(format!("hosted-{name}"));
        std::fs::write(&path, bytes).expect("write a hosted archive");
        self.shared.lock().hosted.insert(name.clone(), path);
        format!("{}/files/{name}", self.shared.base_url)
    }

    /// The bytes uploaded for a deployment's `source_url` (a `/storage/<id>?token=…` URL of
    /// this server), or a hosted archive's; `None` if nothing is stored there.
    pub fn archive_at(&self, source_url: &str) -> Option<Vec<u8>> {
        let path = source_url.split('?').next()?;
        let st = self.shared.lock();
        let file = if let Some(id) = path.rsplit_once("/storage/").map(|(_, id)| id) {
            st.sources.get(id)?.file.clone()?
        } else {
            let name = path.rsplit_once("/files/")?.1;
            st.hosted.get(name)?.clone()
        };
        drop(st);
        std::fs::read(file).ok()
    }

    /// Every request answered (or dropped) so far, in that order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Polls `pred` on the stats until it holds or `timeout` passes (blocking this thread).
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `wait_until` for async tests: does not block the caller's runtime.
    pub async fn wait_until_async(&self, timeout: Duration, pred: impl Fn(&Stats) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls the app's deployments until `pred` holds or `timeout` passes (blocking).
    pub fn wait_for_deployments(
        &self,
        app: &str,
        timeout: Duration,
        pred: impl Fn(&[DeploymentRecord]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.deployments(app)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FakeScalingo {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State

struct Shared {
    cfg: FakeConfig,
    base_url: String,
    storage_dir: PathBuf,
    http: reqwest::Client,
    state: Mutex<State>,
    /// Every app's stream events, to every stream connection (each keeps its app's).
    events: tokio::sync::broadcast::Sender<stream::StreamMessage>,
    /// Bumped by `drop_streams`.
    kick: watch::Sender<u64>,
    /// Regions with a port of their own: name and API URL.
    region_urls: Vec<(String, String)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn step(&self) -> Duration {
        self.lock().step
    }
}

#[derive(Default)]
struct State {
    step: Duration,
    apps: Vec<App>,
    faults: HashMap<Endpoint, VecDeque<Fault>>,
    outcomes: HashMap<String, VecDeque<String>>,
    /// Valid JWTs and their `exp` (unix seconds).
    tokens: HashMap<String, u64>,
    /// JWTs revoked by `expire_all_tokens` (to tell "expired" from "never issued").
    revoked: HashSet<String>,
    sources: HashMap<String, Source>,
    /// Files served by `host_archive`, by name.
    hosted: HashMap<String, PathBuf>,
    in_flight: HashMap<Endpoint, usize>,
    /// The storm's RNG, when `FakeConfig::chaos` is set.
    chaos_rng: Option<fastrand::Rng>,
    stats: Stats,
    requests: Vec<RequestRecord>,
    /// What the apps answer on `/app/<name>/…` (see [`app_server`]).
    serving: app_server::Apps,
    /// Times of the API requests counted by the rate limit, oldest first.
    rate_window: VecDeque<Instant>,
}

impl State {
    fn add_app(&mut self, name: &str) {
        if self.app(name).is_some() {
            return;
        }
        self.apps.push(App {
            name: name.to_string(),
            id: format!("5f3c{}", random_hex(20)),
            created_at: SystemTime::now(),
            last_build: None,
            deployments: Vec::new(),
        });
    }

    /// By name or by id.
    fn app(&self, key: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == key || a.id == key)
    }

    fn app_mut(&mut self, key: &str) -> Option<&mut App> {
        self.apps.iter_mut().find(|a| a.name == key || a.id == key)
    }

    fn deployment_mut(&mut self, app: &str, id: &str) -> Option<&mut DeploymentRecord> {
        self.app_mut(app)?
            .deployments
            .iter_mut()
            .find(|d| d.id == id)
    }
}

struct App {
    name: String,
    id: String,
    created_at: SystemTime,
    /// Ends when the app's newest deployment has finished: each new deployment takes it and
    /// waits on it, so deployments run one at a time in the order they were created (a fair
    /// mutex would order them by when their tasks first ran, which a busy runtime can swap).
    last_build: Option<tokio::sync::oneshot::Receiver<()>>,
    deployments: Vec<DeploymentRecord>,
}

struct Source {
    upload_token: String,
    download_token: String,
    created: Instant,
    forced_expired: bool,
    /// Set once an upload completed.
    file: Option<PathBuf>,
}

impl Source {
    fn expired(&self, lifetime: Duration) -> bool {
        self.forced_expired || self.created.elapsed() >= lifetime
    }
}

// ---------------------------------------------------------------------------------------------
// Serving

type Body = BoxBody<Bytes, io::Error>;
type Resp = Response<Body>;
/// An early answer from a check (boxed: a response is large).
type Rejected = Box<Resp>;

async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // Usually EMFILE under load: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(shared.clone(), stream));
    }
}

/// Serves one connection until it ends or a handler asks for it to be dropped (the
/// `CloseConnection`/`CloseMidBody` faults): dropping the connection future closes the socket
/// without writing anything.
async fn serve_connection(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let kill = Arc::new(Notify::new());
    let handler_kill = kill.clone();
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let kill = handler_kill.clone();
        async move { Ok::<_, Infallible>(handle(shared, kill, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new());
    let conn = builder
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
    }
}

enum Route {
    Exchange,
    Regions,
    CreateSource,
    /// `hop`: the URL handed out (may redirect); otherwise the storage itself.
    StoragePut {
        id: String,
        hop: bool,
    },
    StorageGet {
        id: String,
    },
    Hosted {
        name: String,
    },
    CreateDeployment {
        app: String,
    },
    ListDeployments {
        app: String,
    },
    GetDeployment {
        app: String,
        id: String,
    },
    Output {
        app: String,
        id: String,
    },
    GetApp {
        app: String,
    },
    /// The app itself (see [`app_server`]).
    AppServe {
        app: String,
    },
    Stream {
        app: String,
    },
    /// `GET /_fake/stats`: the counters, for benchmarks (not part of the platform).
    FakeStats,
    MethodNotAllowed,
    NotFound,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Route {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let m = method.clone();
        let is = |want: Method, route: Route| {
            if m == want {
                route
            } else {
                Route::MethodNotAllowed
            }
        };
        let s = |x: &str| x.to_string();
        match segs.as_slice() {
            ["v1", "tokens", "exchange"] => is(Method::POST, Route::Exchange),
            ["v1", "regions"] => is(Method::GET, Route::Regions),
            ["v1", "sources"] => is(Method::POST, Route::CreateSource),
            ["storage" | "s3", id] if !id.is_empty() => {
                let hop = segs[0] == "storage";
                match m {
                    Method::PUT => Route::StoragePut { id: s(id), hop },
                    Method::GET => Route::StorageGet { id: s(id) },
                    _ => Route::MethodNotAllowed,
                }
            }
            ["files", name] if !name.is_empty() => is(Method::GET, Route::Hosted { name: s(name) }),
            ["app", app, ..] if !app.is_empty() => is(Method::GET, Route::AppServe { app: s(app) }),
            ["v1", "apps", app, "deployments"] if !app.is_empty() => match m {
                Method::POST => Route::CreateDeployment { app: s(app) },
                Method::GET => Route::ListDeployments { app: s(app) },
                _ => Route::MethodNotAllowed,
            },
            ["v1", "apps", app, "deployments", "stream"] if !app.is_empty() => {
                is(Method::GET, Route::Stream { app: s(app) })
            }
            ["v1", "apps", app, "deployments", id] if !app.is_empty() && !id.is_empty() => is(
                Method::GET,
                Route::GetDeployment {
                    app: s(app),
                    id: s(id),
                },
            ),
            ["v1", "apps", app, "deployments", id, "output"]
                if !app.is_empty() && !id.is_empty() =>
            {
                is(
                    Method::GET,
                    Route::Output {
                        app: s(app),
                        id: s(id),
                    },
                )
            }
            ["_fake", "stats"] => is(Method::GET, Route::FakeStats),
            ["v1", "apps", app] if !app.is_empty() => {
                is(Method::GET, Route::GetApp { app: s(app) })
            }
            _ => Route::NotFound,
        }
    }

    fn endpoint(&self) -> Option<Endpoint> {
        Some(match self {
            Route::Exchange => Endpoint::Exchange,
            Route::Regions => Endpoint::Regions,
            Route::CreateSource => Endpoint::CreateSource,
            Route::StoragePut { .. } => Endpoint::Upload,
            Route::StorageGet { .. } | Route::Hosted { .. } => Endpoint::Download,
            Route::CreateDeployment { .. } => Endpoint::CreateDeployment,
            Route::ListDeployments { .. } => Endpoint::ListDeployments,
            Route::GetDeployment { .. } => Endpoint::GetDeployment,
            Route::Output { .. } => Endpoint::Output,
            Route::GetApp { .. } => Endpoint::GetApp,
            Route::Stream { .. } => Endpoint::Stream,
            Route::AppServe { .. }
            | Route::FakeStats
            | Route::MethodNotAllowed
            | Route::NotFound => return None,
        })
    }
}

/// Per-request bookkeeping shared by the handlers.
struct Cx {
    shared: Arc<Shared>,
    parts: Parts,
    query: HashMap<String, String>,
    /// Body bytes read so far (shared with the request's `RequestGuard`).
    body_len: Arc<AtomicU64>,
    /// The connection's upgrade, for the stream's dial.
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl Cx {
    fn count(&self, n: usize) {
        self.body_len.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn received(&self) -> u64 {
        self.body_len.load(Ordering::Relaxed)
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `http://<Host>`: the base URL the client used (a region's own port, or the main one).
    fn base(&self) -> String {
        match self.header(header::HOST) {
            Some(host) => format!("http://{host}"),
            None => self.shared.base_url.clone(),
        }
    }

    /// Reads the whole body, up to `limit` bytes.
    async fn read_body(&mut self, body: &mut Incoming, limit: usize) -> Result<Vec<u8>, Resp> {
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| json_error(400, "incomplete request body"))?;
            if let Ok(data) = frame.into_data() {
                self.count(data.len());
                if buf.len() + data.len() > limit {
                    return Err(json_error(413, "request body too large"));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf)
    }

    /// Reads and discards the body (up to 2 GiB) so that an early answer reaches a client that
    /// is still sending, instead of a reset connection.
    async fn drain(&mut self, body: &mut Incoming) {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                self.count(data.len());
            }
            if self.received() > 2 << 30 {
                break;
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, kill: Arc<Notify>, mut req: Request<Incoming>) -> Resp {
    let route = Route::parse(req.method(), req.uri().path());
    let upgrade = matches!(route, Route::Stream { .. }).then(|| hyper::upgrade::on(&mut req));
    let (parts, mut body) = req.into_parts();
    let endpoint = route.endpoint();
    let record = RequestRecord {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len: 0,
        status: 0,
        endpoint,
        received: Instant::now(),
        answered: Instant::now(),
    };
    let fault = {
        let mut st = shared.lock();
        st.stats.requests += 1;
        if let Some(e) = endpoint {
            *st.in_flight.entry(e).or_default() += 1;
        }
        let scripted = endpoint.and_then(|e| st.faults.get_mut(&e).and_then(VecDeque::pop_front));
        let fault = match (scripted, endpoint) {
            (Some(f), _) => Some(f),
            (None, Some(e)) => chaos_fault(&shared.cfg, &mut st, e, &route),
            (None, None) => None,
        };
        if fault.is_some() {
            st.stats.faults_injected += 1;
        }
        fault
    };
    let body_len = Arc::new(AtomicU64::new(0));
    let mut guard = RequestGuard {
        shared: shared.clone(),
        endpoint,
        record: Some(record),
        body_len: body_len.clone(),
    };
    let query = parse_query(parts.uri.query());
    let mut cx = Cx {
        shared: shared.clone(),
        parts,
        query,
        body_len,
        upgrade,
    };
    if let Err(retry_after) = ratelimit::admit(&shared, endpoint) {
        cx.drain(&mut body).await;
        let resp = rate_limited(Some(&retry_after.to_string()));
        guard.finish(Some(&resp));
        return resp;
    }

    let mut delay_after = None;
    let resp = match fault {
        Some(f @ (Fault::CloseConnection | Fault::CloseMidBody)) => {
            if f == Fault::CloseMidBody && matches!(route, Route::StoragePut { .. }) {
                let declared = cx
                    .header(header::CONTENT_LENGTH)
                    .and_then(|v| v.parse::<u64>().ok());
                let target = declared.map_or(64 << 10, |n| (n / 2).clamp(1, 64 << 10));
                while cx.received() < target {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                cx.count(data.len());
                            }
                        }
                        _ => break,
                    }
                }
            }
            guard.finish(None);
            kill.notify_one();
            return std::future::pending().await;
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            dispatch(&mut cx, &route, &mut body, false).await
        }
        Some(Fault::ProcessThenDelay(d)) => {
            delay_after = Some(d);
            dispatch(&mut cx, &route, &mut body, false).await
        }
        Some(Fault::Status(429)) => {
            cx.drain(&mut body).await;
            rate_limited(None)
        }
        Some(Fault::Status(code)) => {
            cx.drain(&mut body).await;
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_error(code, status.canonical_reason().unwrap_or("error"))
        }
        Some(Fault::RateLimited { retry_after }) => {
            cx.drain(&mut body).await;
            rate_limited(retry_after.as_deref())
        }
        Some(Fault::ExpiredJwt) => {
            cx.drain(&mut body).await;
            json_error(401, "token expired")
        }
        Some(Fault::ExpiredSource) => match route {
            Route::StoragePut { .. } | Route::StorageGet { .. } | Route::Hosted { .. } => {
                cx.drain(&mut body).await;
                s3_expired()
            }
            _ => dispatch(&mut cx, &route, &mut body, true).await,
        },
        Some(Fault::HugeBody(extra)) => {
            let resp = dispatch(&mut cx, &route, &mut body, false).await;
            huge_body(resp, extra).await
        }
        Some(Fault::NotUtf8) => {
            let resp = dispatch(&mut cx, &route, &mut body, false).await;
            rewrite_body(resp, |v| garble_strings(v, &["\"status\":\"", "\"id\":\""])).await
        }
        Some(Fault::OtherId) => {
            let resp = dispatch(&mut cx, &route, &mut body, false).await;
            rewrite_body(resp, |v| replace_ids(v, "other-id")).await
        }
        Some(Fault::RedirectTo(location)) => {
            cx.drain(&mut body).await;
            let mut resp = text_resp(307, "text/plain; charset=utf-8", "redirected");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        None => dispatch(&mut cx, &route, &mut body, false).await,
    };
    guard.finish(Some(&resp));
    if let Some(d) = delay_after {
        tokio::time::sleep(d).await;
    }
    resp
}

/// The storm's draw for one request (`None`: no storm, or no fault this time). A terminal
/// `aborted` is queued on the app's outcomes (and counted) rather than returned.
fn chaos_fault(
    cfg: &FakeConfig,
    st: &mut State,
    endpoint: Endpoint,
    route: &Route,
) -> Option<Fault> {
    let chaos = cfg.chaos.as_ref()?;
    let rng = st.chaos_rng.as_mut()?;
    let probability = match endpoint {
        Endpoint::Download => return None,
        Endpoint::Exchange => chaos.probability / 4.0,
        _ => chaos.probability,
    };
    if rng.f64() >= probability {
        return None;
    }
    if chaos.transient_only {
        let menu = [
            Fault::Status(500),
            Fault::Status(503),
            Fault::CloseConnection,
        ];
        return Some(menu[rng.usize(..menu.len())].clone());
    }
    let delay = chaos.delay_past_timeout;
    let mut menu = vec![
        Fault::Status(500),
        Fault::Status(503),
        Fault::RateLimited { retry_after: None },
        Fault::RateLimited {
            retry_after: Some("1".to_string()),
        },
        Fault::CloseConnection,
        Fault::Delay(delay),
    ];
    match endpoint {
        Endpoint::Exchange => {}
        Endpoint::Upload => {
            menu.push(Fault::CloseMidBody);
            menu.push(Fault::ExpiredSource);
        }
        _ => menu.push(Fault::ExpiredJwt),
    }
    if endpoint == Endpoint::CreateDeployment {
        // The ambiguous answer: the deployment exists, the client times out.
        menu.push(Fault::ProcessThenDelay(delay));
    }
    let pick = rng.usize(..menu.len() + usize::from(endpoint == Endpoint::CreateDeployment));
    if pick == menu.len() {
        // This deployment (or the app's next good one) ends `aborted`.
        if let Route::CreateDeployment { app } = route {
            let name = st.app(app).map_or_else(|| app.clone(), |a| a.name.clone());
            st.outcomes
                .entry(name)
                .or_default()
                .push_back("aborted".to_string());
            st.stats.faults_injected += 1;
        }
        return None;
    }
    Some(menu.swap_remove(pick))
}

/// Records a request exactly once, with status 0 when no answer was given (the connection was
/// dropped, or hyper dropped the handler because the client went away), and counts it in
/// flight until its handler ends.
struct RequestGuard {
    shared: Arc<Shared>,
    endpoint: Option<Endpoint>,
    record: Option<RequestRecord>,
    body_len: Arc<AtomicU64>,
}

impl RequestGuard {
    fn finish(&mut self, resp: Option<&Resp>) {
        if let Some(mut record) = self.record.take() {
            record.body_len = self.body_len.load(Ordering::Relaxed);
            finish(&self.shared, record, resp);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.finish(None);
        if let Some(endpoint) = self.endpoint
            && let Some(n) = self.shared.lock().in_flight.get_mut(&endpoint)
        {
            *n = n.saturating_sub(1);
        }
    }
}

/// Records the request and updates the counters derived from its answer (`None`: dropped).
fn finish(shared: &Shared, mut record: RequestRecord, resp: Option<&Resp>) {
    record.status = resp.map_or(0, |r| r.status().as_u16());
    record.answered = Instant::now();
    if shared.cfg.log_requests {
        eprintln!(
            "fake-scalingo: {} {} -> {} ({} body bytes)",
            record.method,
            record.path,
            if record.status == 0 {
                "no answer".to_string()
            } else {
                record.status.to_string()
            },
            record.body_len
        );
    }
    let mut st = shared.lock();
    match record.status {
        401 => st.stats.unauthorized += 1,
        429 => st.stats.rate_limited += 1,
        _ => {}
    }
    if let Some(endpoint) = record.endpoint {
        *st.stats
            .by_endpoint
            .entry(format!("{endpoint:?}"))
            .or_default() += 1;
    }
    match (record.endpoint, record.status) {
        (Some(Endpoint::Exchange), s) if s != 200 => st.stats.exchange_failures += 1,
        (Some(Endpoint::Upload), 200) => st.stats.uploads_ok += 1,
        (Some(Endpoint::Upload), 307) => {}
        (Some(Endpoint::Upload), _) => st.stats.uploads_failed += 1,
        (Some(Endpoint::Download), 200) => st.stats.downloads += 1,
        _ => {}
    }
    st.requests.push(record);
}

async fn dispatch(cx: &mut Cx, route: &Route, body: &mut Incoming, expire_source: bool) -> Resp {
    let needs_bearer = !matches!(
        route,
        Route::Exchange
            | Route::StoragePut { .. }
            | Route::StorageGet { .. }
            | Route::Hosted { .. }
            | Route::AppServe { .. }
            | Route::Stream { .. }
            | Route::FakeStats
            | Route::NotFound
            | Route::MethodNotAllowed
    );
    if needs_bearer && let Err(resp) = check_bearer(cx) {
        cx.drain(body).await;
        return *resp;
    }
    match route {
        Route::Exchange => exchange(cx, body).await,
        Route::Regions => regions::regions(cx),
        Route::CreateSource => create_source(cx, body).await,
        Route::StoragePut { id, hop } => storage_put(cx, body, id, *hop).await,
        Route::StorageGet { id } => storage_get(cx, id).await,
        Route::Hosted { name } => {
            let file = cx.shared.lock().hosted.get(name).cloned();
            match file {
                Some(file) => serve_file(&file).await,
                None => s3_error(404, "NoSuchKey", "The specified key does not exist.", None),
            }
        }
        Route::CreateDeployment { app } => create_deployment(cx, body, app, expire_source).await,
        Route::ListDeployments { app } => list_deployments(cx, app),
        Route::GetDeployment { app, id } => get_deployment(cx, app, id),
        Route::Output { app, id } => output(cx, app, id),
        Route::GetApp { app } => get_app(cx, app),
        Route::AppServe { app } => {
            let (status, body) = cx.shared.lock().serving.answer(app);
            text_resp(status, "text/plain; charset=utf-8", body)
        }
        Route::Stream { app } => stream::accept(cx, app),
        Route::FakeStats => fake_stats(cx),
        Route::MethodNotAllowed => json_error(405, "method not allowed"),
        Route::NotFound => json_error(404, "not found"),
    }
}

// ---------------------------------------------------------------------------------------------
// Auth

fn check_bearer(cx: &Cx) -> Result<(), Rejected> {
    let Some(value) = cx.header(header::AUTHORIZATION) else {
        return Err(Box::new(json_error(
            401,
            "no authorization header, a bearer token is required",
        )));
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return Err(Box::new(json_error(
            401,
            "invalid authorization scheme, expected Bearer",
        )));
    };
    let token = token.trim();
    let st = cx.shared.lock();
    match st.tokens.get(token) {
        Some(&exp) if (exp as f64) > unix_now_f64() => Ok(()),
        Some(_) => Err(Box::new(json_error(401, "token expired"))),
        None if st.revoked.contains(token) => Err(Box::new(json_error(401, "token expired"))),
        None => Err(Box::new(json_error(401, "invalid token"))),
    }
}

async fn exchange(cx: &mut Cx, body: &mut Incoming) -> Resp {
    cx.drain(body).await;
    let password = cx
        .header(header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.strip_prefix(':').map(str::to_string));
    if password.as_deref() != Some(cx.shared.cfg.api_token.as_str()) {
        return json_error(401, "Invalid credentials");
    }
    let iat = unix_now();
    let exp = iat + cx.shared.cfg.jwt_lifetime.as_secs_f64().ceil() as u64;
    let jwt = make_jwt(iat, exp);
    let mut st = cx.shared.lock();
    st.tokens.insert(jwt.clone(), exp);
    st.stats.exchanges += 1;
    drop(st);
    json_resp(200, json!({ "token": jwt }))
}

fn make_jwt(iat: u64, exp: u64) -> String {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let payload = json!({
        "iss": "fake-scalingo",
        "sub": "us-fake-user-0001",
        "iat": iat,
        "exp": exp,
        "jti": random_hex(32),
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let signature = Sha256::digest(format!("{signing_input}.fake-secret").as_bytes());
    format!("{signing_input}.{}", b64(&signature))
}

/// `GET /_fake/stats`: the counters as JSON, for a benchmark run against the program, with the
/// timeline's figures (`timeline.rs`).
fn fake_stats(cx: &Cx) -> Resp {
    let (stats, timeline) = {
        let st = cx.shared.lock();
        (st.stats.clone(), timeline::summary(&st))
    };
    json_resp(
        200,
        json!({
            "timeline": timeline,
            "api_requests": stats.api_requests(),
            "by_endpoint": stats.by_endpoint,
            "rate_limited": stats.rate_limited,
            "deployments_created": stats.deployments_created,
            "deployments_finished": stats.deployments_finished,
            "stream_connections": stats.stream_connections,
            "stream_auths": stats.stream_auths,
            "stream_auth_failures": stats.stream_auth_failures,
            "faults_injected": stats.faults_injected,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Sources and storage

async fn create_source(cx: &mut Cx, body: &mut Incoming) -> Resp {
    if let Err(resp) = cx.read_body(body, 1 << 20).await {
        return resp;
    }
    let id = random_hex(24);
    let source = Source {
        upload_token: random_hex(32),
        download_token: random_hex(32),
        created: Instant::now(),
        forced_expired: false,
        file: None,
    };
    let base = &cx.shared.base_url;
    let upload_url = format!("{base}/storage/{id}?token={}", source.upload_token);
    let download_url = format!("{base}/storage/{id}?token={}", source.download_token);
    let mut st = cx.shared.lock();
    st.sources.insert(id, source);
    st.stats.sources_created += 1;
    drop(st);
    json_resp(
        201,
        json!({ "source": { "upload_url": upload_url, "download_url": download_url } }),
    )
}

enum Access {
    Upload,
    Download,
}

/// Checks a storage URL's token and expiry; deletes the file of an expired source.
fn check_source(cx: &Cx, id: &str, access: Access) -> Result<Option<PathBuf>, Rejected> {
    let token = cx.query.get("token").map(String::as_str).unwrap_or("");
    let mut st = cx.shared.lock();
    let Some(source) = st.sources.get_mut(id) else {
        return Err(Box::new(match access {
            Access::Upload => s3_error(403, "AccessDenied", "Access Denied", None),
            Access::Download => {
                s3_error(404, "NoSuchKey", "The specified key does not exist.", None)
            }
        }));
    };
    let expected = match access {
        Access::Upload => &source.upload_token,
        Access::Download => &source.download_token,
    };
    if token != expected {
        return Err(Box::new(s3_signature_mismatch(Some(
            "wrong token for this URL",
        ))));
    }
    if source.expired(cx.shared.cfg.source_lifetime) {
        if let Some(file) = source.file.take() {
            let _ = std::fs::remove_file(file);
        }
        return Err(Box::new(s3_expired()));
    }
    Ok(source.file.clone())
}

async fn storage_put(cx: &mut Cx, body: &mut Incoming, id: &str, hop: bool) -> Resp {
    if cx.parts.headers.contains_key(header::AUTHORIZATION) {
        cx.drain(body).await;
        return s3_error(
            400,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, \
             Signature query string parameter or the Authorization header should be specified",
            Some("Authorization header present on a presigned URL"),
        );
    }
    if hop && cx.shared.cfg.redirect_uploads {
        cx.drain(body).await;
        let location = format!(
            "{}/s3/{id}?{}",
            cx.shared.base_url,
            cx.parts.uri.query().unwrap_or("")
        );
        let mut resp = s3_error(
            307,
            "TemporaryRedirect",
            "Please re-send this request to the specified temporary endpoint.",
            None,
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return resp;
    }
    let chunked = cx
        .header(header::TRANSFER_ENCODING)
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let declared = cx
        .header(header::CONTENT_LENGTH)
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Some(declared) = declared.filter(|_| !chunked) else {
        cx.drain(body).await;
        return s3_error(
            411,
            "MissingContentLength",
            "You must provide the Content-Length HTTP header.",
            Some("chunked transfer encoding is not supported"),
        );
    };
    if let Err(resp) = check_source(cx, id, Access::Upload) {
        cx.drain(body).await;
        return *resp;
    }
    let content_type = cx.header(header::CONTENT_TYPE).unwrap_or("");
    if content_type != "application/x-gzip" {
        let why = format!("Content-Type must be application/x-gzip, got {content_type:?}");
        cx.drain(body).await;
        return s3_signature_mismatch(Some(&why));
    }

    let incomplete = || {
        s3_error(
            400,
            "IncompleteBody",
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
            None,
        )
    };
    // Removed on every way out, the handler being dropped included; renamed when complete.
    let part = PartFile(
        cx.shared
            .storage_dir
            .join(format!("{id}.{}.part", random_hex(8))),
    );
    let received = match receive_to_file(cx, body, &part.0).await {
        Ok(n) if n == declared => n,
        _ => return incomplete(),
    };
    let dest = cx.shared.storage_dir.join(format!("{id}.tar.gz"));
    if tokio::fs::rename(&part.0, &dest).await.is_err() {
        return s3_error(
            500,
            "InternalError",
            "We encountered an internal error.",
            None,
        );
    }
    let mut st = cx.shared.lock();
    if let Some(source) = st.sources.get_mut(id) {
        source.file = Some(dest);
    }
    st.stats.upload_bytes += received;
    drop(st);
    let mut resp = text_resp(200, "application/xml", "");
    let etag = format!("\"{}\"", random_hex(32));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

struct PartFile(PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn receive_to_file(cx: &mut Cx, body: &mut Incoming, path: &Path) -> io::Result<u64> {
    let file = tokio::fs::File::create(path).await?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        if let Ok(data) = frame.into_data() {
            received += data.len() as u64;
            cx.count(data.len());
            out.write_all(&data).await?;
        }
    }
    out.flush().await?;
    Ok(received)
}

async fn storage_get(cx: &mut Cx, id: &str) -> Resp {
    let file = match check_source(cx, id, Access::Download) {
        Ok(Some(file)) => file,
        Ok(None) => {
            return s3_error(404, "NoSuchKey", "The specified key does not exist.", None);
        }
        Err(resp) => return *resp,
    };
    serve_file(&file).await
}

/// Streams a file as `application/x-gzip` with its length.
async fn serve_file(file: &Path) -> Resp {
    let Ok(f) = tokio::fs::File::open(file).await else {
        return s3_error(404, "NoSuchKey", "The specified key does not exist.", None);
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream =
        tokio_util::io::ReaderStream::with_capacity(f, 256 << 10).map(|r| r.map(Frame::data));
    let mut resp = Response::new(http_body_util::BodyExt::boxed(StreamBody::new(stream)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-gzip"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

// ---------------------------------------------------------------------------------------------
// Apps and deployments

fn app_not_found() -> Resp {
    json_resp(404, json!({"resource": "app", "error": "not found"}))
}

fn deployment_not_found() -> Resp {
    json_resp(404, json!({"resource": "deployment", "error": "not found"}))
}

fn unprocessable(field: &str, message: &str) -> Resp {
    json_resp(422, json!({ "errors": { field: [message] } }))
}

fn valid_git_ref(git_ref: &str) -> bool {
    !git_ref.is_empty()
        && git_ref.len() <= 128
        && !git_ref.starts_with('-')
        && git_ref
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

async fn create_deployment(
    cx: &mut Cx,
    body: &mut Incoming,
    app: &str,
    expire_source: bool,
) -> Resp {
    let raw = match cx.read_body(body, 1 << 20).await {
        Ok(raw) => raw,
        Err(resp) => return resp,
    };
    if cx.shared.lock().app(app).is_none() {
        return app_not_found();
    }
    let Ok(doc) = serde_json::from_slice::<Value>(&raw) else {
        return json_error(400, "invalid JSON body");
    };
    let Some(deployment) = doc.get("deployment").filter(|d| d.is_object()) else {
        return json_error(400, "param is missing or the value is empty: deployment");
    };
    let source_url = deployment
        .get("source_url")
        .or_else(|| deployment.get("download_url"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if source_url.trim().is_empty() {
        return unprocessable("source_url", "can't be blank");
    }
    if !(source_url.starts_with("http://") || source_url.starts_with("https://")) {
        return unprocessable("source_url", "is invalid");
    }
    let git_ref = match deployment.get("git_ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if valid_git_ref(r) => Some(r.clone()),
        Some(_) => return unprocessable("git_ref", "is invalid"),
    };

    let base = cx.shared.base_url.clone();
    let shown_base = cx.base();
    let mut st = cx.shared.lock();
    if expire_source
        && let Some(id) = our_source_id(&base, source_url)
        && let Some(source) = st.sources.get_mut(&id)
    {
        source.forced_expired = true;
    }
    let Some(app) = st.app_mut(app) else {
        return app_not_found();
    };
    let record = DeploymentRecord {
        id: uuid_like(),
        app: app.name.clone(),
        app_id: app.id.clone(),
        git_ref,
        source_url: source_url.to_string(),
        status: "queued".to_string(),
        created_at: SystemTime::now(),
        started_at: None,
        finished_at: None,
        output: String::new(),
    };
    app.deployments.push(record.clone());
    let (done, next) = tokio::sync::oneshot::channel();
    let turn = app.last_build.replace(next);
    st.stats.deployments_created += 1;
    drop(st);
    tokio::spawn(run_deployment(
        cx.shared.clone(),
        turn,
        done,
        record.app.clone(),
        record.id.clone(),
    ));
    let shown = deployment_json(&shown_base, &record);
    stream::publish(
        &cx.shared,
        &record.app,
        &record.id,
        "new",
        json!({ "deployment": shown }),
    );
    json_resp(201, json!({ "deployment": shown }))
}

fn our_source_id(base: &str, url: &str) -> Option<String> {
    let rest = url
        .strip_prefix(base)?
        .strip_prefix("/storage/")
        .or_else(|| url.strip_prefix(base)?.strip_prefix("/s3/"))?;
    Some(rest.split('?').next()?.to_string())
}

fn deployment_json(base: &str, d: &DeploymentRecord) -> Value {
    json!({
        "id": d.id,
        "app_id": d.app_id,
        "created_at": rfc3339(d.created_at),
        "finished_at": d.finished_at.map(rfc3339),
        "status": d.status,
        "git_ref": d.git_ref,
        "type": "archive",
        "image_size": null,
        "stack_base_image": "scalingo-22",
        "pusher": {
            "id": "us-fake-user-0001",
            "username": "fake-user",
            "email": "fake-user@example.com"
        },
        "links": {
            "output": format!("{base}/v1/apps/{}/deployments/{}/output", d.app_id, d.id)
        }
    })
}

fn get_deployment(cx: &Cx, app: &str, id: &str) -> Resp {
    let st = cx.shared.lock();
    let Some(app) = st.app(app) else {
        return app_not_found();
    };
    match app.deployments.iter().find(|d| d.id == id) {
        Some(d) => json_resp(200, json!({ "deployment": deployment_json(&cx.base(), d) })),
        None => deployment_not_found(),
    }
}

/// Default and largest page size of the deployment list.
const DEFAULT_PER_PAGE: u64 = 10;
const MAX_PER_PAGE: u64 = 50;

fn list_deployments(cx: &Cx, app: &str) -> Resp {
    let number = |key: &str| cx.query.get(key).and_then(|v| v.parse::<u64>().ok());
    let page = number("page").unwrap_or(1).max(1);
    let per_page = number("per_page")
        .unwrap_or(DEFAULT_PER_PAGE)
        .clamp(1, MAX_PER_PAGE);
    let st = cx.shared.lock();
    let Some(app) = st.app(app) else {
        return app_not_found();
    };
    let total = app.deployments.len() as u64;
    let total_pages = total.div_ceil(per_page).max(1);
    let items: Vec<Value> = app
        .deployments
        .iter()
        .rev()
        .skip(((page - 1) * per_page) as usize)
        .take(per_page as usize)
        .map(|d| deployment_json(&cx.base(), d))
        .collect();
    json_resp(
        200,
        json!({
            "deployments": items,
            "meta": { "pagination": {
                "current_page": page,
                "prev_page": if page > 1 { Some(page - 1) } else { None },
                "next_page": if page < total_pages { Some(page + 1) } else { None },
                "total_pages": total_pages,
                "total_count": total,
                "per_page": per_page
            }}
        }),
    )
}

fn output(cx: &Cx, app: &str, id: &str) -> Resp {
    let st = cx.shared.lock();
    let Some(app) = st.app(app) else {
        return app_not_found();
    };
    match app.deployments.iter().find(|d| d.id == id) {
        None => deployment_not_found(),
        Some(d) if d.output.is_empty() => {
            json_resp(404, json!({"resource": "output", "error": "no output yet"}))
        }
        Some(d) => text_resp(200, "text/plain; charset=utf-8", d.output.clone()),
    }
}

fn get_app(cx: &Cx, app: &str) -> Resp {
    let st = cx.shared.lock();
    let Some(app) = st.app(app) else {
        return app_not_found();
    };
    let ws = cx.base().replacen("http://", "ws://", 1);
    json_resp(
        200,
        json!({ "app": {
            "id": app.id,
            "name": app.name,
            "created_at": rfc3339(app.created_at),
            "status": "running",
            "region": "osc-fr1",
            // Where the fake serves the app (see [`app_server`]), as the platform gives
            // `https://<app>.<region>.scalingo.io`.
            "url": format!("{}/app/{}", cx.base(), app.name),
            "links": {
                "deployments_stream": format!("{ws}/v1/apps/{}/deployments/stream", app.id)
            }
        }}),
    )
}

// ---------------------------------------------------------------------------------------------
// The builder

const BLUE: &str = "\x1b[1;34m";
const GREEN: &str = "\x1b[1;32m";
const RED: &str = "\x1b[1;31m";
const RESET: &str = "\x1b[0m";

/// Shortest output of a failed deployment, so that a client can show "the last 30 lines".
const MIN_FAILURE_LINES: usize = 40;

struct Build {
    shared: Arc<Shared>,
    app: String,
    id: String,
}

impl Build {
    fn update(&self, f: impl FnOnce(&mut DeploymentRecord)) {
        if let Some(d) = self.shared.lock().deployment_mut(&self.app, &self.id) {
            f(d);
        }
    }

    fn set_status(&self, status: &str) {
        self.update(|d| d.status = status.to_string());
        self.publish_status(status);
    }

    fn publish_status(&self, status: &str) {
        let data = json!({ "status": status });
        stream::publish(&self.shared, &self.app, &self.id, "status", data);
    }

    /// Appends to the output and publishes the lines under the state lock, so that a stream
    /// connection's replay (taken under it) and the events after it neither overlap nor leave
    /// a gap.
    fn log(&self, lines: &[String]) {
        let mut st = self.shared.lock();
        self.append_and_publish(&mut st, lines);
    }

    fn append_and_publish(&self, st: &mut State, lines: &[String]) {
        if let Some(d) = st.deployment_mut(&self.app, &self.id) {
            for line in lines {
                d.output.push_str(line);
                d.output.push('\n');
            }
        }
        if !lines.is_empty() {
            let content: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let data = json!({ "content": content });
            stream::publish(&self.shared, &self.app, &self.id, "log", data);
        }
    }

    async fn step(&self) {
        tokio::time::sleep(self.shared.step()).await;
    }

    /// Ends the build: the last lines (after padding, for a failure, so that the meaningful
    /// ones come last) go to the output and the stream, then the final status.
    fn finish(&self, status: &str, last_lines: &[String]) {
        let mut st = self.shared.lock();
        let mut lines = Vec::new();
        if let Some(d) = st.deployment_mut(&self.app, &self.id) {
            if status != "success" {
                let have = d.output.lines().count();
                let pad = MIN_FAILURE_LINES.saturating_sub(have + last_lines.len());
                lines.extend(std::iter::repeat_n("       ".to_string(), pad));
            }
            lines.extend(last_lines.iter().cloned());
        }
        self.append_and_publish(&mut st, &lines);
        if let Some(d) = st.deployment_mut(&self.app, &self.id) {
            d.status = status.to_string();
            d.finished_at = Some(SystemTime::now());
        }
        st.stats.deployments_finished += 1;
        drop(st);
        self.publish_status(status);
    }
}

async fn run_deployment(
    shared: Arc<Shared>,
    turn: Option<tokio::sync::oneshot::Receiver<()>>,
    done: tokio::sync::oneshot::Sender<()>,
    app: String,
    id: String,
) {
    if let Some(previous) = turn {
        // Sent, or dropped when the previous build ends either way.
        let _ = previous.await;
    }
    let _done = done;
    let build = Build { shared, app, id };
    build.step().await;

    let (source_url, git_ref) = {
        let st = build.shared.lock();
        match st
            .app(&build.app)
            .and_then(|a| a.deployments.iter().find(|d| d.id == build.id))
        {
            Some(d) => (d.source_url.clone(), d.git_ref.clone()),
            None => return,
        }
    };
    build.update(|d| {
        d.status = "building".to_string();
        d.started_at = Some(SystemTime::now());
    });
    build.publish_status("building");
    let mut preamble = vec![
        format!("{BLUE}-----> Build environment{RESET}"),
        format!("       Deployment {} of app {}", build.id, build.app),
        "       Type: archive deployment".to_string(),
        format!("       Git ref: {}", git_ref.as_deref().unwrap_or("(none)")),
        "       Stack: scalingo-22".to_string(),
        "       Environment:".to_string(),
        "         BUILDPACK_URL=(auto-detected)".to_string(),
        "         NODE_ENV=production".to_string(),
        format!("         SCALINGO_APP={}", build.app),
        format!("         SCALINGO_DEPLOYMENT_ID={}", build.id),
        "         SCALINGO_SOURCE_TYPE=archive".to_string(),
        "         STACK=scalingo-22".to_string(),
        format!("{BLUE}-----> Restoring build cache{RESET}"),
    ];
    for layer in 1..=24 {
        preamble.push(format!(
            "       Restoring cache layer {layer:02}/24 ... done"
        ));
    }
    preamble.push(format!("{BLUE}-----> Fetching source code{RESET}"));
    build.log(&preamble);

    let fetched = fetch_and_inspect(&build.shared, &source_url).await;
    build.step().await;
    let info = match fetched {
        Ok(info) => info,
        Err(reason) => {
            build.finish(
                "build-error",
                &[
                    "       Downloading the archive ... failed".to_string(),
                    format!("{RED} !     Fail to fetch source code: {reason}{RESET}"),
                    format!(
                        "{RED} !     The archive must be a gzip-compressed tarball whose root holds a single folder.{RESET}"
                    ),
                    format!("{RED} !     Build failed{RESET}"),
                ],
            );
            return;
        }
    };
    let mut compile = vec![
        format!(
            "       Fetched {} bytes, {} bytes uncompressed, {} entries under {}/",
            info.compressed, info.uncompressed, info.entries, info.root
        ),
        format!("{BLUE}-----> Detected fake app (buildpack fake-buildpack v1.0.0){RESET}"),
        format!("{BLUE}-----> Installing dependencies{RESET}"),
    ];
    for n in 1..=20 {
        compile.push(format!("       Installing package-{n:02}@1.{n}.0"));
    }
    compile.push(format!("{BLUE}-----> Build succeeded{RESET}"));
    build.log(&compile);

    let outcome = build
        .shared
        .lock()
        .outcomes
        .get_mut(&build.app)
        .and_then(VecDeque::pop_front)
        .unwrap_or_else(|| "success".to_string());
    match outcome.as_str() {
        "build-error" => {
            build.finish(
                "build-error",
                &[
                    format!("{RED} !     npm ERR! code ELIFECYCLE{RESET}"),
                    format!("{RED} !     Buildpack compile step failed (exit code 1){RESET}"),
                    format!("{RED} !     Build failed{RESET}"),
                ],
            );
            return;
        }
        "aborted" => {
            build.finish(
                "aborted",
                &[format!("{RED} !     Deployment aborted by user{RESET}")],
            );
            return;
        }
        _ => {}
    }

    build.set_status("pushing");
    build.log(&[
        format!("{BLUE}-----> Build complete, shipping your container...{RESET}"),
        "       Pushing image layer 1/3 ... done".to_string(),
        "       Pushing image layer 2/3 ... done".to_string(),
        "       Pushing image layer 3/3 ... done".to_string(),
    ]);
    build.step().await;

    build.set_status("starting");
    build.log(&[
        format!("{BLUE}-----> Starting containers{RESET}"),
        "       Waiting for your application to boot...".to_string(),
    ]);
    build.step().await;

    let app = build.app.clone();
    let last: Vec<String> = match outcome.as_str() {
        "success" => vec![format!(
            "{GREEN} <-- https://{app}.osc-fr1.scalingo.io -->{RESET}"
        )],
        "crashed-error" => vec![
            "       web-1: Error: Cannot find module 'express'".to_string(),
            "       web-1: exited with code 1".to_string(),
            format!("{RED} !     Application crashed at start{RESET}"),
        ],
        "timeout-error" => vec![
            "       web-1: still booting after 60s".to_string(),
            format!("{RED} !     Application did not bind $PORT within 60s{RESET}"),
        ],
        "hook-error" => vec![
            "       postdeploy: rake db:migrate".to_string(),
            "       postdeploy: exited with code 1".to_string(),
            format!("{RED} !     postdeploy hook failed{RESET}"),
        ],
        other => vec![format!(
            "{RED} !     Deployment ended with status {other}{RESET}"
        )],
    };
    if outcome == "success" {
        build
            .shared
            .lock()
            .serving
            .deployed(&app, info.behaviour.clone(), git_ref.clone());
    }
    build.finish(&outcome, &last);
}

struct ArchiveInfo {
    compressed: u64,
    uncompressed: u64,
    entries: u64,
    root: String,
    /// What the app does once deployed.
    behaviour: app_server::Behaviour,
}

/// Fetches the source over HTTP into the storage directory and checks it as the platform
/// does. The error is the reason shown after "Fail to fetch source code: ".
async fn fetch_and_inspect(shared: &Arc<Shared>, url: &str) -> Result<ArchiveInfo, String> {
    let resp = shared
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| describe_fetch_error(&e))?;
    if !resp.status().is_success() {
        return Err(format!(
            "download failed with HTTP status {}",
            resp.status()
        ));
    }
    let path = shared
        .storage_dir
        .join(format!("fetch-{}.tar.gz", random_hex(8)));
    let result = async {
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("cannot store the archive: {e}"))?;
        let mut resp = resp;
        let mut compressed = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("download interrupted: {}", describe_fetch_error(&e)))?
        {
            compressed += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot store the archive: {e}"))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("cannot store the archive: {e}"))?;
        drop(file);
        let max = shared.cfg.max_archive_bytes;
        let inspect_path = path.clone();
        let mut info = tokio::task::spawn_blocking(move || {
            inspect_archive(&inspect_path, max).map(|info| ArchiveInfo {
                behaviour: app_server::Behaviour::from_archive(&inspect_path),
                ..info
            })
        })
        .await
        .map_err(|e| format!("inspection crashed: {e}"))??;
        info.compressed = compressed;
        Ok(info)
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    result
}

fn describe_fetch_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "download timed out".to_string()
    } else if e.is_connect() {
        "cannot connect to the archive's host".to_string()
    } else {
        "download failed (connection error)".to_string()
    }
}

/// Counts bytes read and refuses to read past the limit.
struct Limited<R> {
    inner: R,
    count: u64,
    max: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.max {
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "too heavy"));
        }
        Ok(n)
    }
}

/// The platform's check: gzip valid to its end, a readable tar, exactly one top-level folder
/// and nothing else at the root, uncompressed (tar stream) size within `max`.
fn inspect_archive(path: &Path, max: u64) -> Result<ArchiveInfo, String> {
    let too_heavy = || format!("The archive is too heavy (more than {max} bytes uncompressed)");
    let classify = |e: io::Error, what: &str| {
        if e.kind() == io::ErrorKind::FileTooLarge {
            too_heavy()
        } else {
            format!("{what}: {e}")
        }
    };
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open the archive: {e}"))?;
    let gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
    let mut limited = Limited {
        inner: gz,
        count: 0,
        max,
    };
    let mut roots: HashSet<String> = HashSet::new();
    let mut entries = 0u64;
    {
        let mut archive = tar::Archive::new(&mut limited);
        let iter = archive
            .entries()
            .map_err(|e| classify(e, "invalid archive"))?;
        for entry in iter {
            let entry = entry.map_err(|e| classify(e, "invalid archive"))?;
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
                continue;
            }
            let entry_path = entry
                .path()
                .map_err(|e| classify(e, "invalid archive"))?
                .into_owned();
            let mut parts = Vec::new();
            for component in entry_path.components() {
                match component {
                    std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
                    std::path::Component::CurDir => {}
                    _ => {
                        return Err(format!(
                            "invalid archive: unsafe path {}",
                            entry_path.display()
                        ));
                    }
                }
            }
            let Some(first) = parts.first() else {
                continue;
            };
            if parts.len() == 1 && !kind.is_dir() {
                return Err(format!(
                    "the archive must contain a single folder at its root, found the file {first}"
                ));
            }
            roots.insert(first.clone());
            entries += 1;
        }
    }
    // Read to the end of the gzip stream so that its CRC and trailing data are checked.
    io::copy(&mut limited, &mut io::sink()).map_err(|e| classify(e, "invalid gzip data"))?;
    if roots.len() != 1 {
        return Err(format!(
            "the archive must contain a single folder at its root, found {}",
            roots.len()
        ));
    }
    Ok(ArchiveInfo {
        compressed: 0,
        uncompressed: limited.count,
        entries,
        root: roots.into_iter().next().unwrap_or_default(),
        behaviour: app_server::Behaviour::default(),
    })
}

// ---------------------------------------------------------------------------------------------
// Responses and small helpers

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn text_resp(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_resp(status: u16, value: Value) -> Resp {
    text_resp(status, "application/json; charset=utf-8", value.to_string())
}

/// `resp` with its body followed by `extra` spaces, streamed in 64 KiB chunks without a length.
async fn huge_body(resp: Resp, extra: u64) -> Resp {
    let (mut parts, body) = resp.into_parts();
    let head = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    let chunk = Bytes::from(vec![b' '; 64 << 10]);
    let spaces = futures_util::stream::unfold(extra, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let n = left.min(chunk.len() as u64);
                (chunk.slice(..n as usize), left - n)
            })
        }
    });
    let stream = futures_util::stream::once(async move { head })
        .chain(spaces)
        .map(|b| Ok::<_, io::Error>(Frame::data(b)));
    Response::from_parts(parts, BodyExt::boxed(StreamBody::new(stream)))
}

/// `resp` with its body rewritten by `f` (its length set again).
async fn rewrite_body(resp: Resp, f: impl FnOnce(Vec<u8>) -> Vec<u8>) -> Resp {
    let (mut parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let bytes = f(bytes.to_vec());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(bytes))
}

/// A 0xFF byte put right after every occurrence of one of `keys` (a key and its opening quote).
fn garble_strings(body: Vec<u8>, keys: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut i = 0;
    while i < body.len() {
        out.push(body[i]);
        i += 1;
        if keys.iter().any(|k| out.ends_with(k.as_bytes())) {
            out.push(0xFF);
        }
    }
    out
}

/// Every `"id"` of a JSON body replaced by `id` (a body that is not JSON is kept).
fn replace_ids(body: Vec<u8>, id: &str) -> Vec<u8> {
    fn walk(value: &mut Value, id: &str) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if key == "id" && v.is_string() {
                        *v = Value::String(id.to_string());
                    } else {
                        walk(v, id);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, id)),
            _ => {}
        }
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(mut value) => {
            walk(&mut value, id);
            value.to_string().into_bytes()
        }
        Err(_) => body,
    }
}

fn json_error(status: u16, message: &str) -> Resp {
    json_resp(status, json!({ "error": message }))
}

fn rate_limited(retry_after: Option<&str>) -> Resp {
    let mut resp = text_resp(429, "text/plain; charset=utf-8", "Retry later");
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// An S3-style XML error. `fake_reason` adds a non-S3 element explaining the fake's decision.
fn s3_error(status: u16, code: &str, message: &str, fake_reason: Option<&str>) -> Resp {
    let reason = fake_reason
        .map(|r| format!("<FakeReason>{}</FakeReason>", xml_escape(r)))
        .unwrap_or_default();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message>{reason}<RequestId>{}</RequestId></Error>",
        xml_escape(message),
        random_hex(16).to_uppercase()
    );
    text_resp(status, "application/xml", body)
}

fn s3_expired() -> Resp {
    s3_error(403, "AccessDenied", "Request has expired", None)
}

fn s3_signature_mismatch(fake_reason: Option<&str>) -> Resp {
    s3_error(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. \
         Check your key and signing method.",
        fake_reason,
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect()
}

fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
        .collect()
}

fn uuid_like() -> String {
    format!(
        "{}-{}-4{}-{}{}-{}",
        random_hex(8),
        random_hex(4),
        random_hex(3),
        ['8', '9', 'a', 'b'][fastrand::usize(0..4)],
        random_hex(3),
        random_hex(12)
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A reqwest client builder for talking to the fake (and for the fake's own fetches): no
/// proxy, and rustls' `ring` provider installed first, since reqwest is built without a
/// provider of its own (`rustls-no-provider`, as in dropdeploy).
pub fn http_client_builder() -> reqwest::ClientBuilder {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        // Err means a provider is already installed (dropdeploy's, in its tests): it is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy()
}

/// `2024-05-01T12:34:56.789Z`
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}
