//! The configuration: TOML typed and validated, in the shape of `config/dropdeploy.toml`.
//!
//! A config file is read in four passes; each problem is reported at `file:line:column`, and
//! every problem of a file is reported in one go (only broken TOML syntax or an inline token
//! stops before the other passes):
//!
//! 1. TOML syntax, parsed with spans; an inline API token (`token = "…"`) is refused here, before
//!    any other message, and no message ever repeats the token's value;
//! 2. key names: unknown keys are errors ("did you mean" the nearest accepted key, else the
//!    list of keys that the table accepts), then left out;
//! 3. value types, through `serde` into private raw structs that keep each value's span; a
//!    value of the wrong type is reported in plain words and left out, and the rest read again;
//! 4. meaning: durations, sizes, URLs, app names, one source per app, and so on.
//!
//! Then, as in Scalingo's own CLI, the environment overrides the file (`SCALINGO_API_TOKEN`,
//! `SCALINGO_API_URL`, `SCALINGO_AUTH_URL`, `SCALINGO_REGION`), and the token is read from the
//! systemd credential `scalingo-token`, else the environment, else `token_file`. The
//! environment is passed in as an [`Env`] so that tests need not touch the process's own.
//!
//! Relative paths in a file (`state_dir`, `drop_dir`, `source_dir`, `token_file`) are relative to
//! the directory of that file, so that a config means the same thing from any working directory.
//!
//! The code follows the passes: `raw.rs` (passes 1 to 3), `build.rs` with `app.rs` and
//! `on_outcome.rs` (pass 4), `env.rs` (the environment and the token), and `report.rs` (the
//! located problems they all report into).

mod app;
mod build;
mod cluster;
mod env;
mod on_outcome;
mod raw;
mod report;
#[cfg(test)]
mod tests;
mod verify;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::redact::redact_owned;

pub use app::is_app_name;
pub use cluster::{DEFAULT_LEASE, DEFAULT_POLL, ENV_DATABASE_URL, MIN_LEASE};
pub use env::{ENV_INTAKE_TOKEN, ENV_TOKEN, Env};
pub use on_outcome::{
    DEFAULT_HOOK_RETRIES, DEFAULT_HOOK_TIMEOUT, HOOK_OUTCOMES, HookConfig, redact_url,
};
pub use report::{ConfigError, Position, Problem};
pub use verify::VerifyConfig;

use build::{build, config_dir};
use env::{LeftForEnv, apply_env};
use raw::parse_raw;
use report::Report;

/// The default ceiling on an archive's uncompressed size: the platform's, 314.6 MB.
pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 314_572_800;

/// Where the daemon looks for its config file when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dropdeploy/dropdeploy.toml";

const DEFAULT_STATE_DIR: &str = "/var/lib/dropdeploy";
const DEFAULT_MAX_PARALLEL: usize = 4;
const DEFAULT_REGION: &str = "osc-fr1";
const DEFAULT_AUTH_URL: &str = "https://auth.scalingo.com";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_FOLLOW_INTERVAL: Duration = Duration::from_secs(3);
/// The platform's documented rate limit: 60 API requests a minute.
const DEFAULT_API_RATE_LIMIT: u32 = 60;
/// How long one deployment may run before the job stops following it: the platform caps a
/// build at 30 minutes and gives the app 60 s to start; the rest covers time spent `queued`
/// behind the account's other deployments. A lane blocked longer than this is stuck, not busy.
pub const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(45 * 60);
const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(2);
const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(5 * 60);
const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(60 * 60);
const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(1);
/// `max_wait`: a source directory that never stops changing is packed this long after the
/// first change of a burst.
const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);
/// How long a file written in place must stay unchanged before it is taken.
const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
/// How many archives a drop folder's `done/` keeps.
const DEFAULT_KEEP_DONE: usize = 20;
/// How long a stopping daemon lets in-flight steps finish.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A secret string (the API token). Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The whole configuration after the file was read, the environment applied and defaults filled.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// `state_dir`: where `spool/` and `history.jsonl` live (default `/var/lib/dropdeploy`).
    pub state_dir: PathBuf,
    /// `max_parallel`: how many apps may deploy at once (default 4, at least 1).
    pub max_parallel: usize,
    /// `max_archive_size` in the file: the ceiling on an archive's uncompressed size, in bytes
    /// (default [`DEFAULT_MAX_ARCHIVE_BYTES`]).
    pub max_archive_bytes: u64,
    /// `[scalingo]`: where and how to reach the platform.
    pub scalingo: ScalingoConfig,
    /// `[retry]`: the backoff policy for transient failures.
    pub retry: RetryConfig,
    /// `[[app]]` tables, in file order; names are unique.
    pub apps: Vec<AppConfig>,
    /// `shutdown_grace`: how long a stopping daemon lets in-flight steps reach their next
    /// persisted state (default 30 s).
    pub shutdown_grace: Duration,
    /// `metrics_listen`: where the Prometheus `/metrics` endpoint listens, e.g.
    /// `127.0.0.1:9464` (none by default).
    pub metrics_listen: Option<SocketAddr>,
    /// `[on_outcome]`: the hook run after every job's outcome, unless its app has its own.
    pub on_outcome: Option<HookConfig>,
    /// `[intake]`: who may act through the daemon's HTTP listener.
    pub intake: IntakeConfig,
    /// `[cluster]` (or `$DROPDEPLOY_DATABASE_URL`): fleet mode, the job store in the fleet's
    /// PostgreSQL. `None`: one node, the local spool is the store.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: several nodes share one PostgreSQL; a node drives an app's jobs only while
/// it holds the app's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The database's URL: `$DROPDEPLOY_DATABASE_URL`, else `database_url`, else the content
    /// of `database_url_file`. Always set in a loaded configuration (a `[cluster]` without
    /// one is refused); a secret, since it may hold a password.
    pub database_url: Option<Secret>,
    /// `node`: this node's name in the fleet (default: the host name).
    pub node: String,
    /// `lease`: how long a lane's lease lasts unless renewed (default 15 s, at least 3 s);
    /// it is renewed every third of it.
    pub lease: Duration,
    /// `poll`: how often the node tries to take leases and looks for new jobs and outcomes
    /// to place, NOTIFY aside (default 2 s).
    pub poll: Duration,
}

/// `[intake]`: the tokens that allow actions through the daemon's HTTP listener (the status
/// page's resume and rollback). Without any (no `token_file`, no `DROPDEPLOY_INTAKE_TOKEN`)
/// the page is read-only.
#[derive(Debug, Clone)]
pub struct IntakeConfig {
    /// `token_file`: a file holding one token per line (blank lines and `#` comments
    /// skipped), read when the daemon starts.
    pub token_file: Option<PathBuf>,
    /// `listen`: where the HTTP intake (`PUT /v1/apps/{app}/archives/{name}`) listens, e.g.
    /// `127.0.0.1:8473`. Plain HTTP without `tls_cert`/`tls_key`: on an address other than
    /// loopback only with
    /// `insecure_plain_http = true`, unless TLS is set.
    pub listen: Option<std::net::SocketAddr>,
    /// `tls_cert` and `tls_key`: PEM files (the certificate chain, leaf first, and its private
    /// key); with them the intake speaks HTTPS only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `read_timeout`: the longest wait for the next bytes of an upload (default 30 s); a
    /// client that stalls longer is dropped and nothing of its upload is kept.
    pub read_timeout: std::time::Duration,
}

/// `[intake] read_timeout` by default.
pub const DEFAULT_INTAKE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for IntakeConfig {
    fn default() -> Self {
        IntakeConfig {
            token_file: None,
            listen: None,
            tls: None,
            read_timeout: DEFAULT_INTAKE_READ_TIMEOUT,
        }
    }
}

/// `[scalingo]`: the API endpoints, the token and the time limits of API calls.
#[derive(Debug, Clone)]
pub struct ScalingoConfig {
    /// Resolved API base URL without trailing slash, e.g. `https://api.osc-fr1.scalingo.com`.
    pub api_url: String,
    /// Resolved auth base URL without trailing slash, default `https://auth.scalingo.com`.
    pub auth_url: String,
    /// The region name, when one was given (or the default `osc-fr1` when no `api_url` was).
    pub region: Option<String>,
    /// Whether `api_url` was given (`api_url` in the file, `SCALINGO_API_URL`), rather than
    /// made from the region: a region's API URL is looked up from the platform
    /// (`GET {auth_url}/v1/regions`) by the client, not taken from this pattern.
    pub api_url_explicit: bool,
    /// `api_rate_limit`: the API requests a minute that all of the process's calls share, per
    /// region (default 60, the platform's limit).
    pub api_rate_limit: u32,
    /// The pause of the whole client after a 429 without Retry-After, doubled per 429 in a
    /// row, and its longest: `[retry]`'s `initial` and `max_delay` (not a key of its own).
    pub rate_limit_backoff: (Duration, Duration),
    /// The API token, when one was found; `None` is not an error at load time.
    pub token: Option<Secret>,
    /// Where the token came from, for messages: `systemd credential scalingo-token`,
    /// `$SCALINGO_API_TOKEN` or the token file path.
    pub token_origin: Option<String>,
    /// `timeout`: every API call's time limit (default 30 s).
    pub timeout: Duration,
    /// `follow_interval`: how often a running deployment is polled (default 3 s).
    pub follow_interval: Duration,
    /// `deploy_timeout`: how long a deployment may run on the platform before the job gives up
    /// following it and fails (default 45 min; see [`DEFAULT_DEPLOY_TIMEOUT`]).
    pub deploy_timeout: Duration,
    /// The config file these settings came from, if any, so that [`Self::require_token`] can say
    /// where a token would go.
    pub config_file: Option<PathBuf>,
}

impl ScalingoConfig {
    /// The API token, or an error saying where to put one. Commands that talk to the platform
    /// call this; the others run without a token.
    pub fn require_token(&self) -> Result<&Secret, ConfigError> {
        self.token.as_ref().ok_or_else(|| ConfigError::NoToken {
            file: self.config_file.clone(),
        })
    }
}

impl Default for ScalingoConfig {
    /// The platform's defaults: region `osc-fr1`, no token.
    fn default() -> Self {
        ScalingoConfig {
            api_url: region_api_url(DEFAULT_REGION),
            auth_url: DEFAULT_AUTH_URL.to_string(),
            region: Some(DEFAULT_REGION.to_string()),
            api_url_explicit: false,
            api_rate_limit: DEFAULT_API_RATE_LIMIT,
            rate_limit_backoff: (DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAX_DELAY),
            token: None,
            token_origin: None,
            timeout: DEFAULT_TIMEOUT,
            follow_interval: DEFAULT_FOLLOW_INTERVAL,
            deploy_timeout: DEFAULT_DEPLOY_TIMEOUT,
            config_file: None,
        }
    }
}

/// `[retry]`: exponential backoff with full jitter, bounded by a time budget per job.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// `initial`: the first backoff step (default 2 s).
    pub initial: Duration,
    /// `max_delay`: the cap of one wait (default 5 min).
    pub max_delay: Duration,
    /// `budget`: a job gives up after retrying this long (default 1 h).
    pub budget: Duration,
    /// `retry_aborted`: a deployment that ends `aborted` is retried once.
    pub retry_aborted: bool,
}

impl Default for RetryConfig {
    /// 2 s, 5 min, 1 h, and `aborted` is not retried.
    fn default() -> Self {
        RetryConfig {
            initial: DEFAULT_RETRY_INITIAL,
            max_delay: DEFAULT_RETRY_MAX_DELAY,
            budget: DEFAULT_RETRY_BUDGET,
            retry_aborted: false,
        }
    }
}

/// Where an app's archives go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetConfig {
    /// The Scalingo platform (default).
    Scalingo,
    /// Releases on this machine, Capistrano-style.
    Local(LocalTargetConfig),
}

/// `target = "local"`: each archive is extracted into
/// `<releases_dir>/<app>/<YYYYmmddTHHMMSSZ>-<git_ref>/` and `<releases_dir>/<app>/current`
/// is switched to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTargetConfig {
    /// `releases_dir`: where releases go (required with `target = "local"`).
    pub releases_dir: PathBuf,
    /// `activate`: a command run after the switch (no shell), e.g. `["systemctl", "reload", "x"]`.
    pub activate: Vec<String>,
    /// `activate_timeout`: how long `activate` may run (default 60 s).
    pub activate_timeout: Duration,
    /// `keep_releases`: how many releases are kept (default 5, at least 1).
    pub keep_releases: usize,
}

/// `queue`: what an app's lane does with new work while a deployment runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueuePolicy {
    /// `"latest"` (the default): one pending slot; newer work replaces what waited there.
    #[default]
    Latest,
    /// `"all"`: every job is deployed, in order.
    All,
}

/// One `[[app]]` table: a Scalingo app and where its work comes from (exactly one of
/// `drop_dir` and `source_dir`).
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// `name`: the Scalingo app (lowercase letters, digits and dashes).
    pub name: String,
    /// `drop_dir`: a drop folder where ready-made `.tar.gz` archives land.
    pub drop_dir: Option<PathBuf>,
    /// `source_dir`: a watched source directory, packed and deployed when it changes.
    pub source_dir: Option<PathBuf>,
    /// `queue`: the busy policy (default `latest`).
    pub queue: QueuePolicy,
    /// `debounce` (formerly `quiet`): how long a source directory must stay unchanged before
    /// it is packed (default 1 s).
    pub debounce: Duration,
    /// `ignore`: gitignore-style patterns left out when packing a source directory.
    pub ignore: Vec<String>,
    /// `git_ref_label`: the first part of each job's git_ref (default: the app name).
    pub git_ref_label: Option<String>,
    /// `settle`: how long a file written in place in the drop folder must stay unchanged
    /// after it was closed before it is taken (default 2 s). A file renamed in is taken at once.
    pub settle: Duration,
    /// `keep_done`: how many deployed archives `done/` keeps (default 20); `failed/` keeps all.
    pub keep_done: usize,
    /// `follow_interval`: this app's polling interval (default: `[scalingo]`'s).
    pub follow_interval: Option<Duration>,
    /// `retry_budget`: this app's retry budget (default: `[retry]`'s `budget`).
    pub retry_budget: Option<Duration>,
    /// `deploy_timeout`: this app's limit on one deployment (default: `[scalingo]`'s).
    pub deploy_timeout: Option<Duration>,
    /// `include`: gitignore-style patterns packed even when ignored (source directories).
    pub include: Vec<String>,
    /// `max_wait`: a source directory that never stops changing is packed this long after
    /// the first change of a burst (default 10 s).
    pub max_wait: Duration,
    /// `poll`: watch the source directory by polling at this interval instead of inotify
    /// (for NFS and similar).
    pub poll: Option<Duration>,
    /// `deploy_on_start`: deploy the source directory when the daemon starts, if it differs
    /// from the last successful deploy (default true).
    pub deploy_on_start: bool,
    /// `target`: where this app's archives go (default Scalingo).
    pub target: TargetConfig,
    /// `region`: this app's Scalingo region, when it is not `[scalingo]`'s (one daemon can
    /// deploy to several regions; each region gets its own client and budget).
    pub region: Option<String>,
    /// `on_outcome`: this app's hook, replacing the global `[on_outcome]` for it.
    pub on_outcome: Option<HookConfig>,
    /// `verify`: the health check after each deployment, and the rollback of an unhealthy one.
    pub verify: Option<VerifyConfig>,
}

impl AppConfig {
    /// An app that is not in the configuration, as the one-shot commands (`deploy`, `watch`)
    /// see it: deployed to Scalingo, every setting at its default, no source of its own.
    pub fn unconfigured(name: &str) -> AppConfig {
        AppConfig {
            name: name.to_string(),
            drop_dir: None,
            source_dir: None,
            queue: QueuePolicy::default(),
            debounce: DEFAULT_DEBOUNCE,
            ignore: Vec::new(),
            git_ref_label: None,
            settle: DEFAULT_SETTLE,
            keep_done: DEFAULT_KEEP_DONE,
            follow_interval: None,
            retry_budget: None,
            deploy_timeout: None,
            include: Vec::new(),
            max_wait: DEFAULT_MAX_WAIT,
            poll: None,
            deploy_on_start: true,
            target: TargetConfig::Scalingo,
            on_outcome: None,
            verify: None,
            region: None,
        }
    }

    /// The label that starts each job's git_ref: `git_ref_label`, else the app name.
    pub fn ref_label(&self) -> &str {
        self.git_ref_label.as_deref().unwrap_or(&self.name)
    }
}

impl Default for Config {
    /// The built-in defaults, no apps, no token, the environment not consulted.
    fn default() -> Self {
        Config {
            file: None,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            max_parallel: DEFAULT_MAX_PARALLEL,
            max_archive_bytes: DEFAULT_MAX_ARCHIVE_BYTES,
            scalingo: ScalingoConfig::default(),
            retry: RetryConfig::default(),
            apps: Vec::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            metrics_listen: None,
            on_outcome: None,
            intake: IntakeConfig::default(),
            cluster: None,
        }
    }
}

/// A configuration that loaded, with the warnings the caller should log (e.g. a token file that
/// others can read). Nothing here prints by itself.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Human-readable warnings, one sentence each.
    pub warnings: Vec<String>,
}

impl Config {
    /// No file: defaults + environment (the `deploy` and `check` commands work with no config
    /// file).
    pub fn from_env(env: &Env) -> Result<Loaded, ConfigError> {
        let mut report = Report::new("", "");
        let mut config = Config::default();
        let mut warnings = Vec::new();
        let left = LeftForEnv::default();
        apply_env(&mut config, left, env, &mut report, &mut warnings);
        report.finish().map(|()| Loaded {
            config,
            warnings: warnings.into_iter().map(redact_owned).collect(),
        })
    }

    /// Read and validate a file, then apply the environment.
    pub fn load(path: &Path, env: &Env) -> Result<Loaded, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|io| ConfigError::Read {
            path: path.to_path_buf(),
            io,
        })?;
        Config::from_str(&text, path, env)
    }

    /// Validate `text` as if read from the file `origin` (named in messages; relative paths in
    /// the text are relative to its directory), then apply the environment.
    pub fn from_str(text: &str, origin: &Path, env: &Env) -> Result<Loaded, ConfigError> {
        let mut report = Report::new(text, &origin.display().to_string());
        let Some(raw) = parse_raw(text, &mut report) else {
            return Err(report.into_error());
        };
        let base = config_dir(origin);
        let (mut config, left) = build(raw, &base, &mut report);
        let mut warnings = report.take_warnings();
        config.file = Some(origin.to_path_buf());
        config.scalingo.config_file = Some(origin.to_path_buf());
        apply_env(&mut config, left, env, &mut report, &mut warnings);
        report.finish().map(|()| Loaded {
            config,
            warnings: warnings.into_iter().map(redact_owned).collect(),
        })
    }

    /// The `[[app]]` of this name, if any.
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|app| app.name == name)
    }
}

/// The API URL of a Scalingo region: `osc-fr1` → `https://api.osc-fr1.scalingo.com`.
///
/// Every known region (`osc-fr1`, `osc-secnum-fr1`) follows this pattern, and so will new ones;
/// a region whose API lives elsewhere is configured with `api_url`.
pub fn region_api_url(region: &str) -> String {
    format!("https://api.{region}.scalingo.com")
}
