//! The Scalingo archive-deploy API: sources, upload, deployments and their build output.
//!
//! Every call has a time limit and makes exactly one attempt (plus one token re-exchange on a
//! 401). Whether to try again is decided by the caller from [`ApiError::is_transient`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::RETRY_AFTER;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::auth::Authenticator;
use super::budget::{Budget, SharedWindows};
use super::stream::StreamHub;
use crate::config::{ScalingoConfig, Secret};
use crate::queue::retry::{Class, classify_status, parse_retry_after};

/// How many 429s in a row one call waits out (each pausing the whole client) before it reports
/// the error to its caller's retry loop.
const MAX_RATE_LIMITED_TRIES: u32 = 4;
/// Redirects followed by one API call.
const MAX_REDIRECTS: usize = 5;
/// How much of an error body is kept in a message.
const MAX_ERROR_BODY: usize = 600;
/// The most of an error body that is read (the rest is not waited for).
const ERROR_BODY_READ: usize = 64 * 1024;
/// The longest JSON answer read: a page of deployments is a few dozen kB. A longer one is
/// [`ApiError::TooLarge`], found without holding more than this in memory.
pub const MAX_ANSWER: usize = 8 * 1024 * 1024;
/// The longest build output read.
pub const MAX_OUTPUT: usize = 32 * 1024 * 1024;

/// An API failure, saying what was attempted and whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No answer: the connection failed or broke before a response came.
    #[error("{what}: cannot reach {url}: {detail}")]
    Connect {
        what: &'static str,
        url: String,
        detail: String,
    },
    /// No answer within the time limit.
    #[error("{what}: no answer from {url} {}", waited_text(*.waited, *.limit))]
    Timeout {
        what: &'static str,
        url: String,
        /// The time actually waited, measured from the request's start.
        waited: Duration,
        /// The time limit set on the request.
        limit: Duration,
    },
    /// The API refused a bearer token that the token exchange had just issued (HTTP 401 twice
    /// in a row, with a re-exchange in between). The exchange is the authority on the API
    /// token, and it accepted it: this is counted as a transient failure, not a refused token.
    #[error("{what}: HTTP 401 from {url} with a freshly exchanged bearer token: {message}")]
    FreshBearerRefused {
        what: &'static str,
        url: String,
        message: String,
    },
    /// The server answered with an error status.
    #[error("{what}: HTTP {status} from {url}: {message}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        /// The body, shortened: a JSON `error`/`errors` message or plain text (429 is text).
        message: String,
        retry_after: Option<Duration>,
    },
    /// The fleet's shared API budget could not be reached for long: the request was not sent.
    #[error("{what}: not sent: {source}")]
    Budget {
        what: &'static str,
        source: super::budget::Unreachable,
    },
    /// The server answered success with a body this client cannot read.
    #[error("{what}: unexpected response: {detail}")]
    Decode { what: &'static str, detail: String },
    /// The answer was longer than this client reads ([`MAX_ANSWER`]); the rest was not read.
    #[error("{what}: the answer from {url} is too large: {}", too_large_text(*.declared, *.limit))]
    TooLarge {
        what: &'static str,
        url: String,
        /// The most that is read.
        limit: u64,
        /// The length the server announced (`Content-Length`), when it did.
        declared: Option<u64>,
    },
    /// The region is not one the platform lists (`GET {auth}/v1/regions`).
    #[error(
        "invalid region \"{region}\": the platform's regions are {} (set --region, \
         SCALINGO_REGION or `region` in the configuration)",
        known.join(", ")
    )]
    UnknownRegion { region: String, known: Vec<String> },
    /// The archive could not be read from disk for the upload.
    #[error("{what}: cannot read {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ApiError {
    /// Transient errors (connection, timeout, 408, 425, 429, 5xx) may succeed if tried again.
    pub fn class(&self) -> Class {
        match self {
            ApiError::Connect { .. } | ApiError::Timeout { .. } => Class::Transient,
            ApiError::Budget { .. } => Class::Transient,
            // Only a refused exchange proves the API token bad; see the variant's docs.
            ApiError::FreshBearerRefused { .. } => Class::Transient,
            ApiError::Status { status, .. } => classify_status(*status),
            // A garbled or oversized success answer usually means a proxy or a half-written
            // body: the platform's next answer may be whole.
            ApiError::Decode { .. } | ApiError::TooLarge { .. } => Class::Transient,
            ApiError::File { .. } | ApiError::UnknownRegion { .. } => Class::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.class() == Class::Transient
    }

    /// The server's `Retry-After`, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            ApiError::FreshBearerRefused { .. } => Some(401),
            _ => None,
        }
    }
}

/// `after 2.0 s`, and the limit when the time waited differs from it (at a tenth of a second):
/// a connect time-out or a broken connection can end a wait before the request's limit.
fn waited_text(waited: Duration, limit: Duration) -> String {
    let waited = format!("{:.1}", waited.as_secs_f64());
    if waited == format!("{:.1}", limit.as_secs_f64()) {
        format!("after {waited} s")
    } else {
        format!(
            "after {waited} s (time limit {})",
            humantime::format_duration(limit)
        )
    }
}

/// A URL as it may appear in a message: without its query string, which for upload and
/// download URLs holds a credential, and redacted (a token pasted into `api_url`).
pub fn display_url(url: &str) -> String {
    let shown = match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    };
    crate::redact::redact_owned(shown)
}

/// Turns a reqwest error (no response) into an [`ApiError`], never showing a URL's query. A
/// time-out names the time waited since `started` and the request's `limit`.
pub(crate) fn http_error(
    what: &'static str,
    url: &str,
    err: reqwest::Error,
    started: Instant,
    limit: Duration,
) -> ApiError {
    // After a redirect, the URL that failed is the target's, not the one asked.
    let url = display_url(err.url().map_or(url, reqwest::Url::as_str));
    if err.is_timeout() {
        return ApiError::Timeout {
            what,
            url,
            waited: started.elapsed(),
            limit,
        };
    }
    let err = err.without_url();
    let mut detail = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        let text = s.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = s.source();
    }
    ApiError::Connect { what, url, detail }
}

/// Reads an error response into [`ApiError::Status`]: JSON `error`/`errors` when present,
/// else the text itself, shortened (64 KiB read at most), naming the URL that answered.
pub(crate) async fn read_error_response(
    what: &'static str,
    response: reqwest::Response,
) -> ApiError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    // After a redirect, the answer is the target's: name it.
    let answered = display_url(response.url().as_str());
    let body = read_some(response, ERROR_BODY_READ).await;
    let body = String::from_utf8_lossy(&body);
    ApiError::Status {
        what,
        url: answered,
        status,
        message: error_message(status, &body),
        retry_after,
    }
}

/// The readable part of an error body.
fn error_message(status: u16, body: &str) -> String {
    let text = match serde_json::from_str::<serde_json::Value>(body) {
        Ok(json) => {
            if let Some(e) = json.get("error").and_then(|e| e.as_str()) {
                match json.get("resource").and_then(|r| r.as_str()) {
                    Some(resource) => format!("{resource} {e}"),
                    None => e.to_string(),
                }
            } else if let Some(errors) = json.get("errors").and_then(|e| e.as_object()) {
                errors
                    .iter()
                    .map(|(field, msgs)| {
                        let msgs = match msgs.as_array() {
                            Some(list) => list
                                .iter()
                                .filter_map(|m| m.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            None => msgs.to_string(),
                        };
                        format!("{field} {msgs}")
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            } else {
                json.to_string()
            }
        }
        Err(_) => body.trim().to_string(),
    };
    let text = if text.is_empty() {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no message")
            .to_string()
    } else {
        text
    };
    shorten(&text, MAX_ERROR_BODY)
}

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A temporary upload slot (valid about 10 minutes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Source {
    pub upload_url: String,
    pub download_url: String,
}

/// A deployment as the API describes it. Unknown fields are ignored and missing ones are empty,
/// as the platform's Go client decodes it: a field this client does not get is not a garbled
/// answer to retry for an hour (an empty `status` is followed as not finished, see
/// [`super::follow::phase`]; an empty `id` makes the job look its deployment up by `git_ref`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Deployment {
    #[serde(default, deserialize_with = "super::lenient::string")]
    pub id: String,
    #[serde(default, deserialize_with = "super::lenient::string")]
    pub status: String,
    #[serde(default, deserialize_with = "super::lenient::optional_string")]
    pub git_ref: Option<String>,
    #[serde(default, deserialize_with = "super::lenient::optional_string")]
    pub app_id: Option<String>,
    #[serde(default, deserialize_with = "super::lenient::optional_string")]
    pub created_at: Option<String>,
    #[serde(default, deserialize_with = "super::lenient::optional_string")]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub links: Option<DeploymentLinks>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeploymentLinks {
    #[serde(default)]
    pub output: Option<String>,
}

/// One page of an app's deployments, newest first.
#[derive(Debug, Clone)]
pub struct DeploymentPage {
    pub deployments: Vec<Deployment>,
    pub next_page: Option<u32>,
    /// `meta.pagination.prev_page` as documented, or `previous_page` as answered.
    pub prev_page: Option<u32>,
}

/// The Scalingo API client of one region and token, with its own budget of requests
/// ([`Budget`]) and its apps' deployment streams ([`StreamHub`]).
pub struct ScalingoClient {
    /// Follows no redirect by itself (see `send_following` and the upload).
    http: reqwest::Client,
    /// The API base URL, once known: given (`api_url`), or looked up from the region.
    api_url: tokio::sync::OnceCell<String>,
    /// The region to look up, when no API URL was given.
    region: Option<String>,
    pub(super) timeout: Duration,
    pub(super) auth: Authenticator,
    pub(super) budget: Arc<Budget>,
    pub(super) streams: StreamHub,
    /// What made this client, for the clients of other regions ([`Self::in_region`]).
    config: ScalingoConfig,
    token: Secret,
    siblings: std::sync::Mutex<std::collections::HashMap<String, Arc<ScalingoClient>>>,
    /// The fleet's shared windows, given to this client's budget and its siblings'.
    shared_windows: std::sync::OnceLock<SharedWindows>,
    /// The answer of `GET /v1/apps/:app` that [`Self::check_app`] got, for the next look at
    /// the app (the stream's), so that checking the app before an upload costs no request.
    shown: std::sync::Mutex<Option<(String, serde_json::Value)>>,
}

impl ScalingoClient {
    /// A client for the account in `config`. Its API URL is `api_url` when one was given
    /// (`api_url_explicit`), else the region's, looked up at the first call (or
    /// [`Self::resolve`]).
    pub fn new(config: &ScalingoConfig, token: Secret) -> Result<Self, ApiError> {
        let build = |redirects: reqwest::redirect::Policy| {
            crate::http::client_builder()
                .connect_timeout(config.timeout.min(Duration::from_secs(15)))
                .redirect(redirects)
                .build()
                .map_err(|e| ApiError::Connect {
                    what: "HTTP client set-up",
                    url: config.api_url.clone(),
                    detail: e.to_string(),
                })
        };
        // The token exchange lets the HTTP client follow its redirects.
        let exchange_http = build(reqwest::redirect::Policy::limited(MAX_REDIRECTS))?;
        // Uploads stream their body from disk, which cannot be replayed automatically: their
        // redirects are followed by hand, reopening the file. API calls follow theirs by hand
        // too, so that an error names the URL that failed (`send_following`).
        let http = build(reqwest::redirect::Policy::none())?;
        let (first, longest) = config.rate_limit_backoff;
        let budget = Arc::new(Budget::new(config.api_rate_limit).with_backoff(first, longest));
        let api_url = tokio::sync::OnceCell::new();
        let region = match (&config.region, config.api_url_explicit) {
            (Some(region), false) => Some(region.clone()),
            _ => {
                let _ = api_url.set(config.api_url.clone());
                None
            }
        };
        Ok(ScalingoClient {
            auth: Authenticator::new(
                exchange_http,
                config.auth_url.clone(),
                token.clone(),
                config.timeout,
                budget.clone(),
            ),
            http,
            api_url,
            region,
            timeout: config.timeout,
            budget,
            streams: StreamHub::default(),
            config: config.clone(),
            token,
            siblings: Default::default(),
            shared_windows: Default::default(),
            shown: Default::default(),
        })
    }

    /// The client of another region, with the same token and its own budget (one client per
    /// region and token, made once). This client itself when it is that region's.
    pub fn in_region(self: &Arc<Self>, region: &str) -> Arc<ScalingoClient> {
        if self.region.as_deref() == Some(region) {
            return self.clone();
        }
        let Ok(mut siblings) = self.siblings.lock() else {
            return self.clone();
        };
        if let Some(client) = siblings.get(region) {
            return client.clone();
        }
        let config = ScalingoConfig {
            region: Some(region.to_string()),
            api_url: crate::config::region_api_url(region),
            api_url_explicit: false,
            ..self.config.clone()
        };
        match ScalingoClient::new(&config, self.token.clone()) {
            Ok(client) => {
                let client = Arc::new(client);
                if let Some(board) = self.budget.board() {
                    client.budget.publish_to(board);
                }
                if let Some(windows) = self.shared_windows.get() {
                    client.share_budget(windows.clone());
                }
                siblings.insert(region.to_string(), client.clone());
                client
            }
            // The builder already succeeded once with the same settings.
            Err(_) => self.clone(),
        }
    }

    /// The API base URL: the one given, or the region's from `GET {auth}/v1/regions` (cached).
    /// An unknown region is [`ApiError::UnknownRegion`].
    pub async fn resolve(&self) -> Result<String, ApiError> {
        self.api_url
            .get_or_try_init(|| async {
                match &self.region {
                    Some(region) => super::regions::api_of(self, region).await,
                    None => Ok(self.config.api_url.clone()),
                }
            })
            .await
            .cloned()
    }

    /// Whether this client is the one `config` and `token` would make (a reload keeps it).
    pub fn serves(&self, config: &ScalingoConfig, token: &Secret) -> bool {
        let c = &self.config;
        &self.token == token
            && c.api_url == config.api_url
            && c.auth_url == config.auth_url
            && c.region == config.region
            && c.api_url_explicit == config.api_url_explicit
            && c.api_rate_limit == config.api_rate_limit
            && c.timeout == config.timeout
    }

    /// Makes this client's budget, and its siblings' in other regions, share their windows
    /// with the fleet's other nodes: one window per region (the API URL when the client names
    /// no region) and token, made by `windows`. Once: later calls change nothing.
    pub fn share_budget(&self, windows: SharedWindows) {
        if self.shared_windows.set(windows.clone()).is_err() {
            return;
        }
        let key = self
            .config
            .region
            .clone()
            .unwrap_or_else(|| self.config.api_url.clone());
        self.budget.share(windows(&key, &self.token));
        let siblings: Vec<Arc<ScalingoClient>> = match self.siblings.lock() {
            Ok(s) => s.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        for sibling in siblings {
            sibling.share_budget(windows.clone());
        }
    }

    /// The budget of requests this client's calls share.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// The auth base URL (for `GET /v1/regions`).
    pub(super) fn auth_url(&self) -> &str {
        &self.config.auth_url
    }

    async fn call<T: DeserializeOwned>(
        &self,
        what: &'static str,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ApiError> {
        let body = self.call_bytes(what, method, url, body, MAX_ANSWER).await?;
        decode_json(what, &body)
    }

    /// One authenticated request; on a 401 the token is exchanged again and the request made
    /// once more. Returns the body of a 2xx answer, `limit` bytes at most (see [`read_body`]).
    ///
    /// A second 401 is [`ApiError::FreshBearerRefused`], transient: the exchange has just
    /// accepted the API token, so only its own 401 is permanent. One re-exchange per call
    /// keeps this bounded: the caller's retry budget and backoff pace any further tries.
    ///
    /// Every attempt takes a place in the client's [`Budget`]; a 429 pauses the whole client
    /// and the call waits it out, up to [`MAX_RATE_LIMITED_TRIES`] times.
    pub(super) async fn call_bytes(
        &self,
        what: &'static str,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
        limit: usize,
    ) -> Result<Vec<u8>, ApiError> {
        let mut reauthenticated = false;
        let mut rate_limited = 0u32;
        loop {
            let bearer = self.auth.bearer().await?;
            self.budget
                .acquire()
                .await
                .map_err(|source| ApiError::Budget { what, source })?;
            let started = Instant::now();
            let response = self
                .send_following(what, method.clone(), url, body, &bearer, started)
                .await?;
            let status = response.status();
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let err = read_error_response(what, response).await;
                self.budget.refused(err.retry_after()).await;
                rate_limited += 1;
                if rate_limited < MAX_RATE_LIMITED_TRIES {
                    continue;
                }
                return Err(err);
            }
            self.budget.answered();
            if status == reqwest::StatusCode::UNAUTHORIZED {
                // Whatever happens next, this bearer is not to be used again.
                self.auth.invalidate(&bearer).await;
                if !reauthenticated {
                    reauthenticated = true;
                    continue;
                }
                return Err(match read_error_response(what, response).await {
                    ApiError::Status { url, message, .. } => {
                        ApiError::FreshBearerRefused { what, url, message }
                    }
                    other => other,
                });
            }
            if !status.is_success() {
                return Err(read_error_response(what, response).await);
            }
            return read_body(what, response, limit, started, self.timeout).await;
        }
    }

    /// `POST /v1/sources`: a new upload slot. Accepts the wrapped (`{"source":{…}}`) and the
    /// older unwrapped shape.
    pub async fn create_source(&self) -> Result<Source, ApiError> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Wrapped { source: Source },
            Bare(Source),
        }
        let url = format!("{}/v1/sources", self.resolve().await?);
        let shape: Shape = self
            .call(
                "create source",
                reqwest::Method::POST,
                &url,
                Some(&serde_json::json!({})),
            )
            .await?;
        Ok(match shape {
            Shape::Wrapped { source } | Shape::Bare(source) => source,
        })
    }

    /// `POST /v1/apps/{app}/deployments` from an archive URL. 200 and 201 are both success.
    pub async fn create_deployment(
        &self,
        app: &str,
        git_ref: &str,
        source_url: &str,
    ) -> Result<Deployment, ApiError> {
        #[derive(Deserialize)]
        struct Wrapped {
            deployment: Deployment,
        }
        let url = format!("{}/v1/apps/{app}/deployments", self.resolve().await?);
        let body = serde_json::json!({
            "deployment": { "git_ref": git_ref, "source_url": source_url }
        });
        let what = "create deployment";
        let w: Wrapped = self
            .call(what, reqwest::Method::POST, &url, Some(&body))
            .await?;
        // An answer about another deployment says nothing of this one (transient: the retry
        // looks the deployment up by its git_ref, it never posts blindly again).
        if let Some(answered) = &w.deployment.git_ref
            && !answered.is_empty()
            && answered != git_ref
        {
            return Err(ApiError::Decode {
                what,
                detail: format!(
                    "the answer is about a deployment of git_ref {}, not {git_ref}",
                    shorten(answered, 80)
                ),
            });
        }
        Ok(w.deployment)
    }

    /// `GET /v1/apps/{app}/deployments/{id}`.
    pub async fn get_deployment(&self, app: &str, id: &str) -> Result<Deployment, ApiError> {
        #[derive(Deserialize)]
        struct Wrapped {
            deployment: Deployment,
        }
        let url = format!("{}/v1/apps/{app}/deployments/{id}", self.resolve().await?);
        let what = "get deployment";
        let w: Wrapped = self.call(what, reqwest::Method::GET, &url, None).await?;
        // An answer about another deployment (a confused proxy or cache) says nothing of this
        // one: asked again, the platform answers for the right one.
        if !w.deployment.id.is_empty() && w.deployment.id != id {
            return Err(ApiError::Decode {
                what,
                detail: format!(
                    "the answer is about deployment {}, not {id}",
                    shorten(&w.deployment.id, 80)
                ),
            });
        }
        Ok(w.deployment)
    }

    /// `GET /v1/apps/{app}/deployments?page=N&per_page=M`, newest first.
    pub async fn list_deployments(
        &self,
        app: &str,
        page: u32,
        per_page: u32,
    ) -> Result<DeploymentPage, ApiError> {
        #[derive(Deserialize)]
        struct Listed {
            deployments: Vec<Deployment>,
            #[serde(default)]
            meta: Option<serde_json::Value>,
        }
        let url = format!(
            "{}/v1/apps/{app}/deployments?page={page}&per_page={per_page}",
            self.resolve().await?
        );
        let listed: Listed = self
            .call("list deployments", reqwest::Method::GET, &url, None)
            .await?;
        let pagination = |key: &str| {
            let field = listed.meta.as_ref()?.get("pagination")?.get(key);
            super::lenient::page_number(field)
        };
        Ok(DeploymentPage {
            next_page: pagination("next_page"),
            prev_page: pagination("prev_page").or_else(|| pagination("previous_page")),
            deployments: listed.deployments,
        })
    }

    /// `GET /v1/apps/{app}`: the app's deployments stream URL (`links.deployments_stream`).
    pub async fn deployments_stream_url(&self, app: &str) -> Result<Option<String>, ApiError> {
        self.app_field(app, "/app/links/deployments_stream").await
    }

    /// The app's own URL (`app.url`, e.g. `https://my-app.osc-fr1.scalingo.io`), the base of a
    /// health check given as a path.
    /// Without `url`, the one the platform generated (`app.base_url`).
    pub async fn app_url(&self, app: &str) -> Result<Option<String>, ApiError> {
        let shown = self.get_app(app).await?;
        Ok(app_text(&shown, "/app/url").or_else(|| app_text(&shown, "/app/base_url")))
    }

    /// One text field of `GET /v1/apps/:app` (a JSON pointer); `None` when absent or empty.
    async fn app_field(&self, app: &str, pointer: &str) -> Result<Option<String>, ApiError> {
        Ok(app_text(&self.get_app(app).await?, pointer))
    }

    /// `GET /v1/apps/:app`: whether the app exists (and the token may see it), before any
    /// upload. The answer serves the next look at the app (the deployments stream's).
    pub async fn check_app(&self, app: &str) -> Result<(), ApiError> {
        let url = format!("{}/v1/apps/{app}", self.resolve().await?);
        let shown: serde_json::Value = self
            .call("get app", reqwest::Method::GET, &url, None)
            .await?;
        if let Ok(mut kept) = self.shown.lock() {
            *kept = Some((app.to_string(), shown));
        }
        Ok(())
    }

    /// `GET /v1/apps/:app`, as JSON. The answer [`Self::check_app`] got is used once, instead
    /// of asking again.
    pub async fn get_app(&self, app: &str) -> Result<serde_json::Value, ApiError> {
        let primed = self
            .shown
            .lock()
            .ok()
            .and_then(|mut kept| kept.take_if(|(name, _)| name == app))
            .map(|(_, shown)| shown);
        if let Some(shown) = primed {
            return Ok(shown);
        }
        let url = format!("{}/v1/apps/{app}", self.resolve().await?);
        self.call("get app", reqwest::Method::GET, &url, None).await
    }

    /// The build output of a deployment (`links.output`), or `None` while there is none (404).
    pub async fn output(&self, deployment: &Deployment) -> Result<Option<String>, ApiError> {
        let Some(url) = deployment.links.as_ref().and_then(|l| l.output.clone()) else {
            return Ok(None);
        };
        match self
            .call_bytes(
                "fetch build output",
                reqwest::Method::GET,
                &url,
                None,
                MAX_OUTPUT,
            )
            .await
        {
            Ok(text) => Ok(Some(String::from_utf8_lossy(&text).into_owned())),
            Err(ApiError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

mod answer;
/// A non-empty text field of an app's answer (a JSON pointer).
pub fn app_text(shown: &serde_json::Value, pointer: &str) -> Option<String> {
    shown
        .pointer(pointer)
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

mod upload;

pub(crate) use answer::{decode_json, read_body};
use answer::{read_some, too_large_text};

#[cfg(test)]
mod tests;
