//! The configuration: TOML in the shape of DESIGN.md, typed and validated.
//!
//! A config file is read in four passes; each problem is reported at `file:line:column`, and
//! a pass that finds any stops the load after reporting them all:
//!
//! 1. TOML syntax, parsed with spans; an inline API token (`token = "…"`) is refused here, before
//!    any other message, and no message ever repeats the token's value;
//! 2. key names: unknown keys are errors, listing the keys that the table accepts;
//! 3. value types, through `serde` into private raw structs that keep each value's span (this
//!    pass stops at the first wrong type);
//! 4. meaning: durations, URLs, app names, one source per app, and so on.
//!
//! Then, as in Scalingo's own CLI, the environment overrides the file (`SCALINGO_API_TOKEN`,
//! `SCALINGO_API_URL`, `SCALINGO_AUTH_URL`, `SCALINGO_REGION`), and the token is read from the
//! systemd credential `scalingo-token`, else the environment, else `token_file`. The
//! environment is passed in as an [`Env`] so that tests need not touch the process's own.
//!
//! Relative paths in a file (`state_dir`, `drop_dir`, `source_dir`, `token_file`) are relative to
//! the directory of that file, so that a config means the same thing from any working directory.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::hooks::{DEFAULT_HOOK_RETRIES, DEFAULT_HOOK_TIMEOUT, HookConfig};
use crate::redact::{redact, redact_owned};

/// The default ceiling on an archive's uncompressed size: the platform's 300 MB.
pub const DEFAULT_MAX_ARCHIVE_BYTES: u64 = 314_572_800;

/// Where the daemon looks for its config file when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/dropdeploy/dropdeploy.toml";

const DEFAULT_STATE_DIR: &str = "/var/lib/dropdeploy";
const DEFAULT_MAX_PARALLEL: usize = 4;
const DEFAULT_REGION: &str = "osc-fr1";
const DEFAULT_AUTH_URL: &str = "https://auth.scalingo.com";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_FOLLOW_INTERVAL: Duration = Duration::from_secs(3);
/// How long one deployment may run before the job stops following it: the platform caps a
/// build at 30 minutes and gives the app 60 s to start; the rest covers time spent `queued`
/// behind the account's other deployments. A lane blocked longer than this is stuck, not busy.
pub const DEFAULT_DEPLOY_TIMEOUT: Duration = Duration::from_secs(45 * 60);
const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(2);
const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(5 * 60);
const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(60 * 60);
const DEFAULT_QUIET: Duration = Duration::from_secs(1);
/// How long a file written in place must stay unchanged before it is taken.
const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
/// How many archives a drop folder's `done/` keeps.
const DEFAULT_KEEP_DONE: usize = 20;
/// How long a stopping daemon lets in-flight steps finish.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The environment variables read, as in Scalingo's CLI. The token's is public: commands
/// that dropdeploy runs (hooks, activate) never inherit it.
pub const ENV_TOKEN: &str = "SCALINGO_API_TOKEN";
const ENV_API_URL: &str = "SCALINGO_API_URL";
const ENV_AUTH_URL: &str = "SCALINGO_AUTH_URL";
const ENV_REGION: &str = "SCALINGO_REGION";
/// Set by systemd for a unit with `LoadCredential=`: the directory of the unit's credentials.
const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
const ENV_VARS: [&str; 5] = [
    ENV_TOKEN,
    ENV_API_URL,
    ENV_AUTH_URL,
    ENV_REGION,
    ENV_CREDENTIALS_DIRECTORY,
];
/// The systemd credential that holds the API token (`LoadCredential=scalingo-token:…`).
const TOKEN_CREDENTIAL: &str = "scalingo-token";

/// Key names that mean "the API token written inline", refused wherever they appear.
const INLINE_TOKEN_KEYS: [&str; 3] = ["token", "api_token", "scalingo_api_token"];

/// The longest `git_ref_label`: a git_ref becomes a Docker image tag (at most 128 characters),
/// and the job adds a 24-character suffix to the label.
const MAX_GIT_REF_LABEL: usize = 100;

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
    /// `quiet`: how long a source directory must stay unchanged before it is packed (default 1 s).
    pub quiet: Duration,
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
    /// `on_outcome`: this app's hook, replacing the global `[on_outcome]` for it.
    pub on_outcome: Option<HookConfig>,
}

impl AppConfig {
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
        let mut warnings = Vec::new();
        let (mut config, left) = build(raw, &base, &mut report);
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

/// The environment variables the configuration reads, captured once. Its `Debug` shows the
/// names only, never the values.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The variables of this process (only those the configuration reads).
    pub fn from_process() -> Self {
        Env::from_pairs(
            ENV_VARS
                .iter()
                .filter_map(|name| std::env::var(name).ok().map(|value| (*name, value))),
        )
    }

    /// A given set of variables, for tests and for callers that build their own.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The same variables with `name` set to `value` (a command-line flag standing for it).
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    /// A variable's value, trimmed; an unset or blank variable is `None` (as in Scalingo's CLI,
    /// an empty value does not override).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.vars.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

/// Why a configuration could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read: `cannot read config file X: No such file or directory`.
    #[error("cannot read config file {}: {}", redact(&.path.display().to_string()), io_reason(.io))]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        io: std::io::Error,
    },
    /// The file or the environment holds mistakes: one located [`Problem`] per line.
    #[error("{}", render_problems(.problems))]
    Invalid {
        /// Every problem found: those in the file in file order, then the environment's.
        problems: Vec<Problem>,
    },
    /// A command needs the API token and none was configured.
    #[error("no Scalingo API token: set SCALINGO_API_TOKEN or token_file in [scalingo] of {}",
        config_file_name(.file.as_deref()))]
    NoToken {
        /// The config file in use, if any.
        file: Option<PathBuf>,
    },
}

/// One mistake in the configuration, and where it is: `file:line:column: message`, or
/// `$VARIABLE: message` for the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file's path, or `$NAME` of an environment variable.
    pub origin: String,
    /// Where in the file, when the problem is in a file.
    pub position: Option<Position>,
    /// What is wrong, and what is expected instead.
    pub message: String,
}

/// A 1-based line and column (in characters) in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => {
                write!(f, "{}:{line}:{column}: {}", self.origin, self.message)
            }
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn config_file_name(file: Option<&Path>) -> String {
    file.map_or_else(
        || "a config file (--config FILE)".to_string(),
        |file| redact(&file.display().to_string()).into_owned(),
    )
}

/// An I/O error in plain words: "No such file or directory", without "(os error 2)".
fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

/// Collects located problems while a text is checked.
struct Report<'a> {
    text: &'a str,
    origin: String,
    problems: Vec<Problem>,
}

impl<'a> Report<'a> {
    fn new(text: &'a str, origin: &str) -> Self {
        Report {
            text,
            origin: origin.to_string(),
            problems: Vec::new(),
        }
    }

    /// A problem at a byte span of the text. Its message quotes values as given, so it is
    /// redacted: a token pasted into the wrong setting is not echoed.
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: redact_owned(self.origin.clone()),
            position: Some(position(self.text, span.start)),
            message: redact_owned(message.into()),
        });
    }

    /// A problem with an origin of its own (an environment variable), redacted as for `at`.
    fn env(&mut self, variable: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: format!("${variable}"),
            position: None,
            message: redact_owned(message.into()),
        });
    }

    /// The problems in file order (tables are not kept in file order), then the environment's.
    fn into_error(mut self) -> ConfigError {
        self.problems.sort_by_key(|p| match p.position {
            Some(Position { line, column }) => (0, line, column),
            None => (1, 0, 0),
        });
        ConfigError::Invalid {
            problems: self.problems,
        }
    }

    fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }
}

/// The 1-based line and column of a byte offset.
fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Passes 1 to 3: syntax, key names, types.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<String>>,
    max_parallel: Option<Spanned<i64>>,
    max_archive_size: Option<Spanned<i64>>,
    shutdown_grace: Option<Spanned<DurationText>>,
    metrics_listen: Option<Spanned<String>>,
    scalingo: Option<RawScalingo>,
    retry: Option<RawRetry>,
    on_outcome: Option<Spanned<RawHook>>,
    #[serde(default)]
    app: Vec<Spanned<RawApp>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScalingo {
    region: Option<Spanned<String>>,
    api_url: Option<Spanned<String>>,
    auth_url: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    timeout: Option<Spanned<DurationText>>,
    follow_interval: Option<Spanned<DurationText>>,
    deploy_timeout: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial: Option<Spanned<DurationText>>,
    max_delay: Option<Spanned<DurationText>>,
    budget: Option<Spanned<DurationText>>,
    retry_aborted: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Option<Spanned<String>>,
    drop_dir: Option<Spanned<String>>,
    source_dir: Option<Spanned<String>>,
    queue: Option<Spanned<String>>,
    quiet: Option<Spanned<DurationText>>,
    #[serde(default)]
    ignore: Vec<String>,
    git_ref_label: Option<Spanned<String>>,
    settle: Option<Spanned<DurationText>>,
    keep_done: Option<Spanned<i64>>,
    #[serde(default)]
    include: Vec<String>,
    max_wait: Option<Spanned<DurationText>>,
    poll: Option<Spanned<DurationText>>,
    deploy_on_start: Option<bool>,
    target: Option<Spanned<String>>,
    releases_dir: Option<Spanned<String>>,
    activate: Option<Spanned<Vec<String>>>,
    activate_timeout: Option<Spanned<DurationText>>,
    keep_releases: Option<Spanned<i64>>,
    follow_interval: Option<Spanned<DurationText>>,
    retry_budget: Option<Spanned<DurationText>>,
    deploy_timeout: Option<Spanned<DurationText>>,
    on_outcome: Option<Spanned<RawHook>>,
}

/// An `on_outcome` table, global or in an `[[app]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    webhook: Option<Spanned<String>>,
    command: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<DurationText>>,
    retries: Option<Spanned<i64>>,
}

/// A duration as written (`"30s"`); parsed in pass 4 so that every bad one is reported. A bare
/// number is refused here with a hint, since its unit would be a guess.
struct DurationText(String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string with a unit, e.g. "30s", "5m" or "1h""#)
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<DurationText, E> {
                Ok(DurationText(value.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<DurationText, E> {
                Err(E::custom(format!(
                    r#"a duration needs a unit and quotes: write "{value}s" for {value} seconds"#
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<DurationText, E> {
                Err(E::custom(format!(
                    r#"a duration needs a unit and quotes: write "{value}s" for {value} seconds"#
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The keys each table accepts, in the order of DESIGN.md.
const TOP_KEYS: &[&str] = &[
    "state_dir",
    "max_parallel",
    "max_archive_size",
    "shutdown_grace",
    "metrics_listen",
    "scalingo",
    "retry",
    "on_outcome",
    "app",
];
const SCALINGO_KEYS: &[&str] = &[
    "region",
    "api_url",
    "auth_url",
    "token_file",
    "timeout",
    "follow_interval",
    "deploy_timeout",
];
const RETRY_KEYS: &[&str] = &["initial", "max_delay", "budget", "retry_aborted"];
const APP_KEYS: &[&str] = &[
    "name",
    "drop_dir",
    "source_dir",
    "queue",
    "quiet",
    "ignore",
    "git_ref_label",
    "settle",
    "keep_done",
    "follow_interval",
    "retry_budget",
    "deploy_timeout",
    "include",
    "max_wait",
    "poll",
    "deploy_on_start",
    "target",
    "releases_dir",
    "activate",
    "activate_timeout",
    "keep_releases",
    "on_outcome",
];
const HOOK_KEYS: &[&str] = &["webhook", "command", "timeout", "retries"];

/// Passes 1 to 3. `None` when there were problems (already in `report`).
fn parse_raw(text: &str, report: &mut Report<'_>) -> Option<RawConfig> {
    let (table, syntax_errors) = DeTable::parse_recoverable(text);

    // The inline token wins over every other message, so that none of them can echo it.
    let mut tokens = Vec::new();
    find_inline_tokens(table.get_ref(), "", &mut tokens);
    if tokens.is_empty() && !syntax_errors.is_empty() {
        // A broken line may be missing from the recovered table: look at the raw lines too.
        tokens = scan_inline_tokens(text);
    }
    if !tokens.is_empty() {
        for (span, key, table) in tokens {
            report.at(span, inline_token_message(&key, &table));
        }
        return None;
    }

    if !syntax_errors.is_empty() {
        for error in &syntax_errors {
            let span = error.span().unwrap_or(0..0);
            report.at(span, format!("invalid TOML: {}", error.message()));
        }
        return None;
    }

    check_keys(table.get_ref(), report);
    if !report.problems.is_empty() {
        return None;
    }

    let root = table.get_ref().clone();
    match RawConfig::deserialize(toml::de::Deserializer::from(table)) {
        Ok(raw) => Some(raw),
        Err(error) => {
            let span = error.span().unwrap_or(0..0);
            let message = match key_at(&root, &span) {
                Some(key) => format!("{key}: {}", error.message()),
                None => error.message().to_string(),
            };
            report.at(span, message);
            None
        }
    }
}

fn inline_token_message(key: &str, table: &str) -> String {
    format!(
        "`{key}` {table}: do not put the API token in the config file; \
         put it in a file of its own, readable only by the daemon \
         (token_file = \"/etc/dropdeploy/token\" in [scalingo], \
         then chmod 600 /etc/dropdeploy/token), \
         or set the SCALINGO_API_TOKEN environment variable"
    )
}

/// Where a table is, for messages: "at the top level", "in [scalingo]", "in [[app]]".
fn table_label(path: &str) -> String {
    match path {
        "" => "at the top level".to_string(),
        "app" => "in [[app]]".to_string(),
        "app.on_outcome" => "in on_outcome of [[app]]".to_string(),
        _ => format!("in [{path}]"),
    }
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Every key, at any depth, that holds an inline token: (key span, key, table label).
fn find_inline_tokens(
    table: &DeTable<'_>,
    path: &str,
    found: &mut Vec<(Range<usize>, String, String)>,
) {
    for (key, value) in table.iter() {
        let name: &str = key.get_ref().as_ref();
        if INLINE_TOKEN_KEYS.contains(&name.to_ascii_lowercase().as_str()) {
            found.push((key.span(), name.to_string(), table_label(path)));
        }
        let inner = join_path(path, name);
        match value.get_ref() {
            DeValue::Table(t) => find_inline_tokens(t, &inner, found),
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let DeValue::Table(t) = item.get_ref() {
                        find_inline_tokens(t, &inner, found);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Lines that assign an inline token (`token = …`, `scalingo.token = …`, `"api_token" = …`),
/// found without a TOML parser, for files too broken to parse.
fn scan_inline_tokens(text: &str) -> Vec<(Range<usize>, String, String)> {
    let mut found = Vec::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        if let Some(eq) = line.find('=') {
            let lhs = &line[..eq];
            let last = lhs.rsplit('.').next().unwrap_or(lhs);
            let key = last.trim().trim_matches(|c| c == '"' || c == '\'');
            if INLINE_TOKEN_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                let indent = line.len() - line.trim_start().len();
                let start = line_start + indent;
                let table = if lhs.trim_start().starts_with("scalingo.") {
                    table_label("scalingo")
                } else {
                    "in the config file".to_string()
                };
                found.push((start..start + eq - indent, key.to_string(), table));
            }
        }
        line_start += line.len();
    }
    found
}

/// Pass 2: every unknown key, and `[app]` written where `[[app]]` was meant.
fn check_keys(root: &DeTable<'_>, report: &mut Report<'_>) {
    check_table_keys(root, "", TOP_KEYS, report);
    for (key, value) in root.iter() {
        let name: &str = key.get_ref().as_ref();
        match (name, value.get_ref()) {
            ("scalingo", DeValue::Table(t)) => {
                check_table_keys(t, "scalingo", SCALINGO_KEYS, report)
            }
            ("retry", DeValue::Table(t)) => check_table_keys(t, "retry", RETRY_KEYS, report),
            ("on_outcome", DeValue::Table(t)) => {
                check_table_keys(t, "on_outcome", HOOK_KEYS, report)
            }
            ("app", DeValue::Array(items)) => {
                for item in items.iter() {
                    if let DeValue::Table(t) = item.get_ref() {
                        check_table_keys(t, "app", APP_KEYS, report);
                        check_app_hook_keys(t, report);
                    }
                }
            }
            ("app", DeValue::Table(_)) => report.at(
                value.span(),
                "`app` must be an array of tables: write [[app]] (two brackets) above each app",
            ),
            _ => {}
        }
    }
}

/// Pass 2 for an app's `on_outcome = { … }`.
fn check_app_hook_keys(app: &DeTable<'_>, report: &mut Report<'_>) {
    for (key, value) in app.iter() {
        if key.get_ref().as_ref() as &str == "on_outcome"
            && let DeValue::Table(t) = value.get_ref()
        {
            check_table_keys(t, "app.on_outcome", HOOK_KEYS, report);
        }
    }
}

fn check_table_keys(table: &DeTable<'_>, path: &str, allowed: &[&str], report: &mut Report<'_>) {
    let unknown = table
        .iter()
        .map(|(key, _)| key)
        .filter(|key| !allowed.contains(&key.get_ref().as_ref()));
    for key in unknown {
        let expected: Vec<String> = allowed
            .iter()
            .map(|name| match (path, *name) {
                ("", "scalingo" | "retry" | "on_outcome") => format!("[{name}]"),
                ("", "app") => "[[app]]".to_string(),
                _ => name.to_string(),
            })
            .collect();
        report.at(
            key.span(),
            format!(
                "unknown key `{}` {}; expected one of {}",
                key.get_ref().as_ref() as &str,
                table_label(path),
                expected.join(", ")
            ),
        );
    }
}

/// The key whose value holds `span`, for type errors: "`timeout` in [scalingo]".
fn key_at(root: &DeTable<'_>, span: &Range<usize>) -> Option<String> {
    fn walk(
        table: &DeTable<'_>,
        path: &str,
        span: &Range<usize>,
        best: &mut Option<(usize, String)>,
    ) {
        for (key, value) in table.iter() {
            let name: &str = key.get_ref().as_ref();
            let inner = join_path(path, name);
            let vspan = value.span();
            if vspan.start <= span.start && span.end <= vspan.end {
                let size = vspan.end - vspan.start;
                if best.as_ref().is_none_or(|(best_size, _)| size < *best_size) {
                    *best = Some((size, format!("`{name}` {}", table_label(path))));
                }
            }
            match value.get_ref() {
                DeValue::Table(t) => walk(t, &inner, span, best),
                DeValue::Array(items) => {
                    for item in items.iter() {
                        if let DeValue::Table(t) = item.get_ref() {
                            walk(t, &inner, span, best);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut best = None;
    walk(root, "", span, &mut best);
    best.map(|(_, key)| key)
}

// ---------------------------------------------------------------------------------------------
// Pass 4: meaning.

/// The directory that relative paths in the file are relative to, made absolute so that a
/// later change of working directory does not change what they mean.
fn config_dir(origin: &Path) -> PathBuf {
    let parent = match origin.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}

fn resolve(base: &Path, value: &str) -> PathBuf {
    normalize(&base.join(value))
}

/// Removes `.` and `..` components lexically, so that paths in messages read as a person
/// would write them (`/srv/var/drop`, not `/srv/config/../var/drop`).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A path value: not empty, resolved against the config file's directory.
fn path_value(
    value: &Spanned<String>,
    key: &str,
    table: &str,
    base: &Path,
    report: &mut Report<'_>,
) -> Option<PathBuf> {
    if value.get_ref().trim().is_empty() {
        report.at(
            value.span(),
            format!("`{key}` {} is empty; give a path", table_label(table)),
        );
        return None;
    }
    Some(resolve(base, value.get_ref()))
}

fn duration_value(
    value: &Option<Spanned<DurationText>>,
    key: &str,
    table: &str,
    default: Duration,
    allow_zero: bool,
    report: &mut Report<'_>,
) -> Duration {
    let Some(value) = value else {
        return default;
    };
    let text = &value.get_ref().0;
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() && !allow_zero => {
            report.at(
                value.span(),
                format!(
                    "`{key}` {} must be longer than zero, found \"{text}\"",
                    table_label(table)
                ),
            );
            default
        }
        Ok(duration) => duration,
        Err(_) => {
            report.at(
                value.span(),
                format!(
                    "invalid duration \"{text}\" for `{key}` {}: expected a number and a unit, \
                     e.g. \"30s\", \"5m\" or \"1h\"",
                    table_label(table)
                ),
            );
            default
        }
    }
}

fn is_region_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn region_message(value: &str) -> String {
    format!(
        "invalid region \"{value}\": a region name is lowercase letters, digits and dashes, \
         e.g. osc-fr1 or osc-secnum-fr1"
    )
}

/// An http(s) URL without its trailing slashes, or why it is not one.
fn base_url(value: &str) -> Result<String, String> {
    let trimmed = value.trim_end_matches('/');
    let host = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"));
    match host {
        Some(host)
            if !host.is_empty()
                && !host.starts_with('/')
                && !trimmed.chars().any(char::is_whitespace) =>
        {
            Ok(trimmed.to_string())
        }
        _ => Err(format!(
            "\"{value}\" is not an http:// or https:// URL, e.g. https://api.osc-fr1.scalingo.com"
        )),
    }
}

fn is_app_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_git_ref_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_GIT_REF_LABEL
        && !label.starts_with(['-', '.'])
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A `token_file` as configured: its resolved path and the span of its value.
type TokenFile = (PathBuf, Range<usize>);

/// What the file said that the environment step still needs.
#[derive(Default)]
struct LeftForEnv {
    /// The token file, read only if the environment holds no token.
    token_file: Option<TokenFile>,
    /// Whether the file named a region (else the region is only a default).
    region_given: bool,
}

/// Pass 4: the typed configuration, with every problem of meaning in `report`, and the token
/// file to read unless the environment holds the token.
fn build(raw: RawConfig, base: &Path, report: &mut Report<'_>) -> (Config, LeftForEnv) {
    let mut config = Config::default();

    if let Some(state_dir) = &raw.state_dir
        && let Some(path) = path_value(state_dir, "state_dir", "", base, report)
    {
        config.state_dir = path;
    }
    if let Some(max_parallel) = &raw.max_parallel {
        match usize::try_from(*max_parallel.get_ref()) {
            Ok(n) if n >= 1 => config.max_parallel = n,
            _ => report.at(
                max_parallel.span(),
                format!(
                    "`max_parallel` must be at least 1 (how many apps may deploy at once), \
                     found {}",
                    max_parallel.get_ref()
                ),
            ),
        }
    }
    if let Some(size) = &raw.max_archive_size {
        match u64::try_from(*size.get_ref()) {
            Ok(n) if n >= 1 => config.max_archive_bytes = n,
            _ => report.at(
                size.span(),
                format!(
                    "`max_archive_size` must be a positive number of bytes, \
                     e.g. {DEFAULT_MAX_ARCHIVE_BYTES}, found {}",
                    size.get_ref()
                ),
            ),
        }
    }

    config.shutdown_grace = duration_value(
        &raw.shutdown_grace,
        "shutdown_grace",
        "",
        DEFAULT_SHUTDOWN_GRACE,
        true,
        report,
    );
    if let Some(listen) = &raw.metrics_listen {
        match listen.get_ref().trim().parse::<SocketAddr>() {
            Ok(addr) => config.metrics_listen = Some(addr),
            Err(_) => report.at(
                listen.span(),
                format!(
                    "`metrics_listen` must be an IP address and a port, e.g. \"127.0.0.1:9464\" \
                     or \"[::1]:9464\", found \"{}\"",
                    listen.get_ref()
                ),
            ),
        }
    }
    if let Some(hook) = &raw.on_outcome {
        config.on_outcome = build_hook(hook, "on_outcome", report);
    }

    let token_file = raw
        .scalingo
        .as_ref()
        .and_then(|scalingo| build_scalingo(scalingo, base, &mut config.scalingo, report));
    if let Some(retry) = &raw.retry {
        let r = &mut config.retry;
        r.initial = duration_value(&retry.initial, "initial", "retry", r.initial, false, report);
        r.max_delay = duration_value(
            &retry.max_delay,
            "max_delay",
            "retry",
            r.max_delay,
            false,
            report,
        );
        r.budget = duration_value(&retry.budget, "budget", "retry", r.budget, false, report);
        r.retry_aborted = retry.retry_aborted.unwrap_or(r.retry_aborted);
    }

    let mut seen_names: HashMap<String, usize> = HashMap::new();
    let mut seen_drop_dirs: HashMap<PathBuf, String> = HashMap::new();
    for app in &raw.app {
        if let Some(app) = build_app(app, base, report, &mut seen_names, &mut seen_drop_dirs) {
            config.apps.push(app);
        }
    }
    let region_given = raw.scalingo.as_ref().is_some_and(|s| s.region.is_some());
    let left = LeftForEnv {
        token_file,
        region_given,
    };
    (config, left)
}

fn build_scalingo(
    raw: &RawScalingo,
    base: &Path,
    s: &mut ScalingoConfig,
    report: &mut Report<'_>,
) -> Option<TokenFile> {
    if let Some(region) = &raw.region {
        if is_region_name(region.get_ref()) {
            s.region = Some(region.get_ref().clone());
            s.api_url = region_api_url(region.get_ref());
        } else {
            report.at(
                region.span(),
                format!(
                    "`region` in [scalingo]: {}",
                    region_message(region.get_ref())
                ),
            );
        }
    }
    // An explicit api_url wins over the region.
    if let Some(api_url) = &raw.api_url {
        match base_url(api_url.get_ref()) {
            Ok(url) => {
                s.api_url = url;
                if raw.region.is_none() {
                    s.region = None;
                }
            }
            Err(why) => report.at(api_url.span(), format!("`api_url` in [scalingo]: {why}")),
        }
    }
    if let Some(auth_url) = &raw.auth_url {
        match base_url(auth_url.get_ref()) {
            Ok(url) => s.auth_url = url,
            Err(why) => report.at(auth_url.span(), format!("`auth_url` in [scalingo]: {why}")),
        }
    }
    s.timeout = duration_value(
        &raw.timeout,
        "timeout",
        "scalingo",
        s.timeout,
        false,
        report,
    );
    s.follow_interval = duration_value(
        &raw.follow_interval,
        "follow_interval",
        "scalingo",
        s.follow_interval,
        false,
        report,
    );
    s.deploy_timeout = duration_value(
        &raw.deploy_timeout,
        "deploy_timeout",
        "scalingo",
        s.deploy_timeout,
        false,
        report,
    );
    let token_file = raw.token_file.as_ref()?;
    path_value(token_file, "token_file", "scalingo", base, report)
        .map(|path| (path, token_file.span()))
}

fn build_app(
    raw: &Spanned<RawApp>,
    base: &Path,
    report: &mut Report<'_>,
    seen_names: &mut HashMap<String, usize>,
    seen_drop_dirs: &mut HashMap<PathBuf, String>,
) -> Option<AppConfig> {
    let header = raw.span();
    let raw = raw.get_ref();
    let Some(name) = &raw.name else {
        report.at(
            header,
            "this [[app]] has no `name`; give the Scalingo app's name, e.g. name = \"my-app\"",
        );
        return None;
    };
    let mut ok = true;
    if !is_app_name(name.get_ref()) {
        report.at(
            name.span(),
            format!(
                "invalid app name \"{}\": a Scalingo app name is lowercase letters, digits and \
                 dashes, not starting with a dash",
                name.get_ref()
            ),
        );
        ok = false;
    }
    let here = position(report.text, name.span().start).line;
    if let Some(first) = seen_names.get(name.get_ref()) {
        report.at(
            name.span(),
            format!(
                "app `{}` is declared twice (first at line {first})",
                name.get_ref()
            ),
        );
        ok = false;
    } else {
        seen_names.insert(name.get_ref().clone(), here);
    }

    let drop_dir = raw
        .drop_dir
        .as_ref()
        .and_then(|dir| path_value(dir, "drop_dir", "app", base, report));
    let source_dir = raw
        .source_dir
        .as_ref()
        .and_then(|dir| path_value(dir, "source_dir", "app", base, report));
    match (&raw.drop_dir, &raw.source_dir) {
        (Some(drop), Some(source)) => {
            let later = if drop.span().start > source.span().start {
                drop.span()
            } else {
                source.span()
            };
            report.at(
                later,
                format!(
                    "app `{}` has both drop_dir and source_dir; an app takes its work from one of \
                     them: declare a second [[app]] for the other",
                    name.get_ref()
                ),
            );
            ok = false;
        }
        (None, None) => {
            report.at(
                header,
                format!(
                    "app `{}` has neither drop_dir nor source_dir; give one: drop_dir for a \
                     folder where archives are dropped, source_dir for a directory to pack and \
                     deploy",
                    name.get_ref()
                ),
            );
            ok = false;
        }
        _ => {}
    }
    if let (Some(dir), Some(raw_dir)) = (&drop_dir, &raw.drop_dir) {
        if let Some(other) = seen_drop_dirs.get(dir) {
            report.at(
                raw_dir.span(),
                format!(
                    "drop_dir {} is already the drop folder of app `{other}`; two apps cannot \
                     share one",
                    dir.display()
                ),
            );
            ok = false;
        } else {
            seen_drop_dirs.insert(dir.clone(), name.get_ref().clone());
        }
    }

    let queue = match raw.queue.as_ref().map(|q| (q.span(), q.get_ref().as_str())) {
        None | Some((_, "latest")) => QueuePolicy::Latest,
        Some((_, "all")) => QueuePolicy::All,
        Some((span, other)) => {
            report.at(
                span,
                format!("`queue` in [[app]] must be \"latest\" or \"all\", found \"{other}\""),
            );
            ok = false;
            QueuePolicy::Latest
        }
    };
    let quiet = duration_value(&raw.quiet, "quiet", "app", DEFAULT_QUIET, true, report);

    let git_ref_label = match &raw.git_ref_label {
        Some(label) if !is_git_ref_label(label.get_ref()) => {
            report.at(
                label.span(),
                format!(
                    "invalid git_ref_label \"{}\": use letters, digits, '.', '_' and '-', not \
                     starting with '-' or '.', at most {MAX_GIT_REF_LABEL} characters",
                    label.get_ref()
                ),
            );
            ok = false;
            None
        }
        Some(label) => Some(label.get_ref().clone()),
        None => None,
    };

    let settle = duration_value(&raw.settle, "settle", "app", DEFAULT_SETTLE, true, report);
    let keep_done = match &raw.keep_done {
        None => DEFAULT_KEEP_DONE,
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(n) => n,
            Err(_) => {
                report.at(
                    n.span(),
                    format!(
                        "`keep_done` in [[app]] must be 0 or more (how many deployed archives                          done/ keeps), found {}",
                        n.get_ref()
                    ),
                );
                ok = false;
                DEFAULT_KEEP_DONE
            }
        },
    };
    let follow_interval = raw.follow_interval.as_ref().map(|_| {
        duration_value(
            &raw.follow_interval,
            "follow_interval",
            "app",
            Duration::from_secs(3),
            false,
            report,
        )
    });
    let retry_budget = raw.retry_budget.as_ref().map(|_| {
        duration_value(
            &raw.retry_budget,
            "retry_budget",
            "app",
            Duration::from_secs(3600),
            false,
            report,
        )
    });
    let deploy_timeout = raw.deploy_timeout.as_ref().map(|_| {
        duration_value(
            &raw.deploy_timeout,
            "deploy_timeout",
            "app",
            DEFAULT_DEPLOY_TIMEOUT,
            false,
            report,
        )
    });

    let max_wait = duration_value(
        &raw.max_wait,
        "max_wait",
        "app",
        Duration::from_secs(10),
        false,
        report,
    );
    let poll = raw.poll.as_ref().map(|_| {
        duration_value(
            &raw.poll,
            "poll",
            "app",
            Duration::from_secs(2),
            false,
            report,
        )
    });

    let target = match raw
        .target
        .as_ref()
        .map(|t| (t.span(), t.get_ref().as_str()))
    {
        None | Some((_, "scalingo")) => {
            for (present, key) in [
                (raw.releases_dir.as_ref().map(|v| v.span()), "releases_dir"),
                (raw.activate.as_ref().map(|v| v.span()), "activate"),
                (
                    raw.keep_releases.as_ref().map(|v| v.span()),
                    "keep_releases",
                ),
                (
                    raw.activate_timeout.as_ref().map(|v| v.span()),
                    "activate_timeout",
                ),
            ] {
                if let Some(span) = present {
                    report.at(
                        span,
                        format!(
                            "`{key}` only applies to target = \"local\"; app `{}` deploys to \
                             Scalingo",
                            name.get_ref()
                        ),
                    );
                    ok = false;
                }
            }
            TargetConfig::Scalingo
        }
        Some((span, "local")) => {
            let releases_dir = match &raw.releases_dir {
                Some(dir) => path_value(dir, "releases_dir", "app", base, report),
                None => {
                    report.at(
                        span,
                        format!(
                            "app `{}` has target = \"local\" but no releases_dir; give the \
                             directory where its releases go, e.g. releases_dir = \
                             \"/srv/releases\"",
                            name.get_ref()
                        ),
                    );
                    None
                }
            };
            let activate = raw
                .activate
                .as_ref()
                .map(|a| a.get_ref().clone())
                .unwrap_or_default();
            if let Some(a) = &raw.activate
                && a.get_ref().first().is_some_and(|c| c.trim().is_empty())
            {
                report.at(a.span(), "`activate` starts with an empty program name");
                ok = false;
            }
            let activate_timeout = duration_value(
                &raw.activate_timeout,
                "activate_timeout",
                "app",
                Duration::from_secs(60),
                false,
                report,
            );
            let keep_releases = match &raw.keep_releases {
                None => 5,
                Some(n) => match usize::try_from(*n.get_ref()) {
                    Ok(n) if n >= 1 => n,
                    _ => {
                        report.at(
                            n.span(),
                            format!(
                                "`keep_releases` must be at least 1 (the current release), \
                                 found {}",
                                n.get_ref()
                            ),
                        );
                        ok = false;
                        5
                    }
                },
            };
            match releases_dir {
                Some(releases_dir) => TargetConfig::Local(LocalTargetConfig {
                    releases_dir,
                    activate,
                    activate_timeout,
                    keep_releases,
                }),
                None => {
                    ok = false;
                    TargetConfig::Scalingo
                }
            }
        }
        Some((span, other)) => {
            report.at(
                span,
                format!("`target` in [[app]] must be \"scalingo\" or \"local\", found \"{other}\""),
            );
            ok = false;
            TargetConfig::Scalingo
        }
    };

    let on_outcome = match &raw.on_outcome {
        Some(hook) => {
            let built = build_hook(hook, "app.on_outcome", report);
            ok &= built.is_some();
            built
        }
        None => None,
    };

    ok.then(|| AppConfig {
        name: name.get_ref().clone(),
        drop_dir,
        source_dir,
        queue,
        quiet,
        ignore: raw.ignore.clone(),
        git_ref_label,
        settle,
        keep_done,
        follow_interval,
        retry_budget,
        deploy_timeout,
        include: raw.include.clone(),
        max_wait,
        poll,
        deploy_on_start: raw.deploy_on_start.unwrap_or(true),
        target,
        on_outcome,
    })
}

/// An `on_outcome` table (`table` is `on_outcome` or `app.on_outcome`): a webhook, a command,
/// or both. `None` when it has problems (reported).
fn build_hook(raw: &Spanned<RawHook>, table: &str, report: &mut Report<'_>) -> Option<HookConfig> {
    let whole = raw.span();
    let raw = raw.get_ref();
    let label = table_label(table);
    let mut ok = true;
    let webhook = match &raw.webhook {
        Some(url) => match crate::hooks::check_webhook_url(url.get_ref()) {
            Ok(()) => Some(url.get_ref().clone()),
            Err(why) => {
                report.at(url.span(), format!("`webhook` {label}: {why}"));
                ok = false;
                None
            }
        },
        None => None,
    };
    let command = match &raw.command {
        Some(argv) if argv.get_ref().first().is_none_or(|p| p.trim().is_empty()) => {
            report.at(
                argv.span(),
                format!(
                    "`command` {label} has no program; give the program and its arguments, \
                     e.g. [\"/usr/local/bin/notify-deploy\", \"--quiet\"]"
                ),
            );
            ok = false;
            Vec::new()
        }
        Some(argv) => argv.get_ref().clone(),
        None => Vec::new(),
    };
    if raw.webhook.is_none() && raw.command.is_none() {
        let what = match table {
            "on_outcome" => "[on_outcome]",
            _ => "`on_outcome` in [[app]]",
        };
        report.at(
            whole,
            format!(
                "{what} has neither webhook nor command; give one or both, e.g. \
                 webhook = \"https://hooks.example.com/deploys\""
            ),
        );
        ok = false;
    }
    let timeout = duration_value(
        &raw.timeout,
        "timeout",
        table,
        DEFAULT_HOOK_TIMEOUT,
        false,
        report,
    );
    let retries = match &raw.retries {
        None => DEFAULT_HOOK_RETRIES,
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(n) if n >= 1 => n,
            _ => {
                report.at(
                    n.span(),
                    format!(
                        "`retries` {label} must be at least 1 (how many times the webhook is \
                         tried in all), found {}",
                        n.get_ref()
                    ),
                );
                ok = false;
                DEFAULT_HOOK_RETRIES
            }
        },
    };
    ok.then_some(HookConfig {
        webhook,
        command,
        timeout,
        retries,
    })
}

// ---------------------------------------------------------------------------------------------
// The environment, and the token.

/// Applies the environment over the file, then finds the token: the systemd credential
/// `$CREDENTIALS_DIRECTORY/scalingo-token` when that file exists, else `$SCALINGO_API_TOKEN`,
/// else the token file (a source that is not used is not read at all).
fn apply_env(
    config: &mut Config,
    left: LeftForEnv,
    env: &Env,
    report: &mut Report<'_>,
    warnings: &mut Vec<String>,
) {
    let s = &mut config.scalingo;
    let env_region = env.get(ENV_REGION);
    if let Some(region) = env_region {
        if is_region_name(region) {
            s.region = Some(region.to_string());
            s.api_url = region_api_url(region);
        } else {
            report.env(ENV_REGION, region_message(region));
        }
    }
    if let Some(api_url) = env.get(ENV_API_URL) {
        match base_url(api_url) {
            Ok(url) => {
                s.api_url = url;
                if env_region.is_none() && !left.region_given {
                    s.region = None;
                }
            }
            Err(why) => report.env(ENV_API_URL, why),
        }
    }
    if let Some(auth_url) = env.get(ENV_AUTH_URL) {
        match base_url(auth_url) {
            Ok(url) => s.auth_url = url,
            Err(why) => report.env(ENV_AUTH_URL, why),
        }
    }

    if let Some(dir) = env.get(ENV_CREDENTIALS_DIRECTORY) {
        let path = Path::new(dir).join(TOKEN_CREDENTIAL);
        if std::fs::symlink_metadata(&path).is_ok() {
            // systemd makes the credential private to the unit: no mode warning applies.
            match read_token_file(&path, &mut Vec::new()) {
                Ok(token) => {
                    s.token = Some(token);
                    s.token_origin = Some(format!("systemd credential {TOKEN_CREDENTIAL}"));
                }
                Err(why) => report.env(ENV_CREDENTIALS_DIRECTORY, why),
            }
            return;
        }
    }
    if let Some(token) = env.get(ENV_TOKEN) {
        s.token = Some(Secret::new(token));
        s.token_origin = Some(format!("${ENV_TOKEN}"));
        return;
    }
    let Some((path, span)) = left.token_file else {
        return;
    };
    match read_token_file(&path, warnings) {
        Ok(token) => {
            s.token = Some(token);
            s.token_origin = Some(path.display().to_string());
        }
        Err(why) => report.at(span, why),
    }
}

/// Reads a token file: the whole file, whitespace trimmed, not empty. A file that group or
/// others can read is used, with a warning.
fn read_token_file(path: &Path, warnings: &mut Vec<String>) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read token file {}: {}",
            path.display(),
            io_reason(&e)
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "token file {} is empty; write the Scalingo API token in it",
            path.display()
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warnings.push(format!(
                    "token file {} can be read by group or others (mode {mode:04o}); \
                     run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = warnings;
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/dropdeploy/dropdeploy.toml";

    fn no_env() -> Env {
        Env::from_pairs(Vec::<(String, String)>::new())
    }

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Config::from_str(text, Path::new(FILE), &no_env())
    }

    fn config(text: &str) -> Config {
        match parse(text) {
            Ok(loaded) => loaded.config,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(ConfigError::Invalid { problems }) => problems,
            Err(other) => panic!("expected Invalid, got {other}"),
            Ok(_) => panic!("expected an error for:\n{text}"),
        }
    }

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn an_empty_file_gives_every_default() {
        let c = config("");
        assert_eq!(c.file.as_deref(), Some(Path::new(FILE)));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/dropdeploy"));
        assert_eq!(c.max_parallel, 4);
        assert_eq!(c.max_archive_bytes, 314_572_800);
        assert_eq!(c.scalingo.region.as_deref(), Some("osc-fr1"));
        assert_eq!(c.scalingo.api_url, "https://api.osc-fr1.scalingo.com");
        assert_eq!(c.scalingo.auth_url, "https://auth.scalingo.com");
        assert_eq!(c.scalingo.timeout, Duration::from_secs(30));
        assert_eq!(c.scalingo.follow_interval, Duration::from_secs(3));
        assert!(c.scalingo.token.is_none());
        assert!(c.scalingo.token_origin.is_none());
        assert_eq!(c.retry.initial, Duration::from_secs(2));
        assert_eq!(c.retry.max_delay, Duration::from_secs(300));
        assert_eq!(c.retry.budget, Duration::from_secs(3600));
        assert!(!c.retry.retry_aborted);
        assert!(c.apps.is_empty());
    }

    #[test]
    fn no_file_gives_defaults_and_no_warnings() {
        let loaded = Config::from_env(&no_env()).unwrap();
        assert!(loaded.warnings.is_empty());
        assert!(loaded.config.file.is_none());
        assert_eq!(loaded.config.max_parallel, 4);
        assert_eq!(
            loaded.config.scalingo.api_url,
            "https://api.osc-fr1.scalingo.com"
        );
    }

    #[test]
    fn an_app_gets_the_app_defaults() {
        let c = config("[[app]]\nname = \"my-app\"\ndrop_dir = \"/srv/drop\"\n");
        let app = c.app("my-app").unwrap();
        assert_eq!(app.queue, QueuePolicy::Latest);
        assert_eq!(app.quiet, Duration::from_secs(1));
        assert!(app.ignore.is_empty());
        assert_eq!(app.git_ref_label, None);
        assert_eq!(app.ref_label(), "my-app");
        assert!(c.app("other").is_none());
    }

    #[test]
    fn every_key_is_read() {
        let c = config(
            r#"
state_dir = "/srv/state"
max_parallel = 2
max_archive_size = 1000

[scalingo]
region = "osc-secnum-fr1"
api_url = "http://127.0.0.1:8080/"
auth_url = "http://127.0.0.1:8081//"
timeout = "10s"
follow_interval = "500ms"

[retry]
initial = "1s"
max_delay = "2m"
budget = "3h"
retry_aborted = true

[[app]]
name = "prod-1"
drop_dir = "/srv/drop"
queue = "all"
git_ref_label = "Prod_1.x"

[[app]]
name = "staging"
source_dir = "/src/app"
quiet = "2s"
ignore = ["*.log", "tmp/"]
"#,
        );
        assert_eq!(c.state_dir, PathBuf::from("/srv/state"));
        assert_eq!(c.max_parallel, 2);
        assert_eq!(c.max_archive_bytes, 1000);
        assert_eq!(c.scalingo.region.as_deref(), Some("osc-secnum-fr1"));
        assert_eq!(c.scalingo.api_url, "http://127.0.0.1:8080");
        assert_eq!(c.scalingo.auth_url, "http://127.0.0.1:8081");
        assert_eq!(c.scalingo.timeout, Duration::from_secs(10));
        assert_eq!(c.scalingo.follow_interval, Duration::from_millis(500));
        assert_eq!(c.retry.initial, Duration::from_secs(1));
        assert_eq!(c.retry.max_delay, Duration::from_secs(120));
        assert_eq!(c.retry.budget, Duration::from_secs(3 * 3600));
        assert!(c.retry.retry_aborted);
        assert_eq!(c.apps.len(), 2);
        let prod = &c.apps[0];
        assert_eq!(prod.name, "prod-1");
        assert_eq!(prod.drop_dir, Some(PathBuf::from("/srv/drop")));
        assert_eq!(prod.source_dir, None);
        assert_eq!(prod.queue, QueuePolicy::All);
        assert_eq!(prod.ref_label(), "Prod_1.x");
        let staging = &c.apps[1];
        assert_eq!(staging.source_dir, Some(PathBuf::from("/src/app")));
        assert_eq!(staging.drop_dir, None);
        assert_eq!(staging.quiet, Duration::from_secs(2));
        assert_eq!(
            staging.ignore,
            vec!["*.log".to_string(), "tmp/".to_string()]
        );
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../config/dropdeploy.toml");
        let c = Config::from_str(text, Path::new(FILE), &no_env())
            .map(|loaded| loaded.config)
            .or_else(|e| match e {
                // The example's token file does not exist here; everything else must be valid.
                ConfigError::Invalid { problems }
                    if problems
                        .iter()
                        .all(|p| p.message.contains("cannot read token file")) =>
                {
                    Config::from_str(
                        text,
                        Path::new(FILE),
                        &Env::from_pairs([("SCALINGO_API_TOKEN", "tk-us-example")]),
                    )
                    .map(|loaded| loaded.config)
                }
                other => Err(other),
            })
            .unwrap();
        assert_eq!(c.apps.len(), 2);
        assert!(c.app("my-app").unwrap().drop_dir.is_some());
        assert!(c.app("my-staging").unwrap().source_dir.is_some());
        assert!(
            !text.contains("\ntoken ="),
            "the example must not hold an inline token"
        );
    }

    #[test]
    fn an_unknown_key_names_its_line_column_and_the_expected_keys() {
        let text = "max_parallel = 2\n\n[[app]]\nname = \"a\"\n    drop_dri = \"/x\"\n";
        let message = error(text);
        assert_eq!(
            message,
            "/etc/dropdeploy/dropdeploy.toml:5:5: unknown key `drop_dri` in [[app]]; expected one \
             of name, drop_dir, source_dir, queue, quiet, ignore, git_ref_label, settle, \
             keep_done, follow_interval, retry_budget, deploy_timeout, include, max_wait, poll, \
             deploy_on_start, target, releases_dir, activate, activate_timeout, keep_releases, on_outcome"
        );
    }

    #[test]
    fn unknown_keys_are_all_reported_each_on_its_line() {
        let text =
            "stat_dir = \"/x\"\n[scalingo]\nregoin = \"osc-fr1\"\n[retry]\nbudjet = \"1h\"\n";
        let message = error(text);
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 3, "{message}");
        let top = "unknown key `stat_dir` at the top level; expected one of state_dir, \
                   max_parallel, max_archive_size, shutdown_grace, metrics_listen, [scalingo], \
                   [retry], [on_outcome], [[app]]";
        assert_eq!(lines[0], format!("{FILE}:1:1: {top}"));
        assert!(
            lines[1].starts_with(&format!("{FILE}:3:1: unknown key `regoin` in [scalingo]")),
            "{message}"
        );
        assert!(
            lines[2].starts_with(&format!("{FILE}:5:1: unknown key `budjet` in [retry]")),
            "{message}"
        );
    }

    #[test]
    fn a_bad_duration_names_the_key_value_and_an_example() {
        let text = "[scalingo]\ntimeout = \"thirty\"\n";
        assert_eq!(
            error(text),
            format!(
                "{FILE}:2:11: invalid duration \"thirty\" for `timeout` in [scalingo]: expected a \
                 number and a unit, e.g. \"30s\", \"5m\" or \"1h\""
            )
        );
    }

    #[test]
    fn a_bare_number_as_duration_asks_for_a_unit() {
        let message = error("[retry]\ninitial = 2\n");
        assert!(
            message.starts_with(&format!("{FILE}:2:11: `initial` in [retry]: ")),
            "{message}"
        );
        assert!(message.contains("\"2s\""), "{message}");
    }

    #[test]
    fn bad_durations_are_all_reported() {
        let problems = problems(
            "[retry]\ninitial = \"0s\"\nbudget = \"soon\"\n[[app]]\nname = \"a\"\ndrop_dir = \"/d\"\nquiet = \"x\"\n",
        );
        let located: Vec<_> = problems.iter().map(|p| p.position).collect();
        assert_eq!(located, vec![at(2, 11), at(3, 10), at(7, 9)]);
        assert!(problems[0].message.contains("longer than zero"));
    }

    #[test]
    fn a_type_error_names_the_key() {
        let message = error("[scalingo]\nregion = 5\n");
        assert_eq!(
            message,
            format!(
                "{FILE}:2:10: `region` in [scalingo]: invalid type: integer `5`, expected a string"
            )
        );
    }

    #[test]
    fn a_syntax_error_is_located() {
        let message = error("max_parallel = 4\nstate_dir = \n");
        assert!(message.starts_with(&format!("{FILE}:2:")), "{message}");
        assert!(message.contains("invalid TOML"), "{message}");
    }

    #[test]
    fn app_written_as_a_single_table_is_explained() {
        let message = error("[app]\nname = \"a\"\n");
        assert!(
            message.starts_with(&format!("{FILE}:1:1: `app` must be an array of tables")),
            "{message}"
        );
    }

    const SECRET: &str = "tk-us-SuperSecretValue123";

    fn assert_refused_without_echo(text: &str, line: usize, column: usize) {
        let message = error(text);
        assert!(!message.contains(SECRET), "the token leaked: {message}");
        assert!(
            !message.contains("SuperSecret"),
            "the token leaked: {message}"
        );
        assert!(
            message.starts_with(&format!("{FILE}:{line}:{column}: ")),
            "{message}"
        );
        assert!(
            message.contains("do not put the API token in the config file"),
            "{message}"
        );
        assert!(
            message.contains("token_file = \"/etc/dropdeploy/token\""),
            "{message}"
        );
        assert!(message.contains("chmod 600"), "{message}");
        assert!(message.contains("SCALINGO_API_TOKEN"), "{message}");
        assert_eq!(
            message.lines().count(),
            1,
            "the token error wins alone: {message}"
        );
    }

    #[test]
    fn an_inline_token_is_refused_without_echoing_it() {
        assert_refused_without_echo(
            &format!("[scalingo]\nregion = \"osc-fr1\"\ntoken = \"{SECRET}\"\n"),
            3,
            1,
        );
        assert_refused_without_echo(&format!("token = \"{SECRET}\"\n"), 1, 1);
        assert_refused_without_echo(&format!("[scalingo]\n  api_token = '{SECRET}'\n"), 2, 3);
        assert_refused_without_echo(&format!("scalingo.token = \"{SECRET}\"\n"), 1, 10);
        assert!(
            error(&format!("[scalingo]\ntoken = \"{SECRET}\"\n")).contains("`token` in [scalingo]")
        );
    }

    #[test]
    fn an_inline_token_wins_over_other_errors() {
        // Unquoted: a syntax error on the token's own line; plus an unknown key and a bad type.
        assert_refused_without_echo(
            &format!("bogus = 1\n[scalingo]\ntoken = {SECRET}\nregion = 5\n"),
            3,
            1,
        );
        // Unterminated string.
        assert_refused_without_echo(
            &format!("[scalingo]\ntoken = \"{SECRET}\nregion = \"x\"\n"),
            2,
            1,
        );
        // A token given with a wrong type would show up in a type error.
        assert_refused_without_echo(&format!("[scalingo]\ntoken = [\"{SECRET}\"]\n"), 2, 1);
        // In an app.
        assert_refused_without_echo(
            &format!("[[app]]\nname = \"a\"\ntoken = \"{SECRET}\"\n"),
            3,
            1,
        );
    }

    #[test]
    fn the_lexical_scan_finds_a_token_in_a_file_too_broken_to_parse() {
        let text = format!("[scalingo\n  \"token\" = {SECRET}\n");
        let found = scan_inline_tokens(&text);
        assert_eq!(found.len(), 1);
        assert_eq!(
            position(&text, found[0].0.start),
            Position { line: 2, column: 3 }
        );
        assert_refused_without_echo(&text, 2, 3);
    }

    #[test]
    fn each_environment_variable_overrides_the_file() {
        let text = "[scalingo]\nregion = \"osc-fr1\"\nauth_url = \"https://auth.example\"\n";
        let load = |pairs: &[(&str, &str)]| {
            Config::from_str(
                text,
                Path::new(FILE),
                &Env::from_pairs(pairs.iter().copied()),
            )
            .unwrap()
            .config
            .scalingo
        };

        let s = load(&[("SCALINGO_API_TOKEN", " tk-us-env \n")]);
        assert_eq!(s.token.as_ref().map(Secret::expose), Some("tk-us-env"));
        assert_eq!(s.token_origin.as_deref(), Some("$SCALINGO_API_TOKEN"));

        let s = load(&[("SCALINGO_API_URL", "http://localhost:9000/")]);
        assert_eq!(s.api_url, "http://localhost:9000");
        assert_eq!(s.region.as_deref(), Some("osc-fr1"), "the file named it");
        let env = Env::from_pairs([("SCALINGO_API_URL", "http://localhost:9000")]);
        assert_eq!(Config::from_env(&env).unwrap().config.scalingo.region, None);

        let s = load(&[("SCALINGO_AUTH_URL", "http://localhost:9001")]);
        assert_eq!(s.auth_url, "http://localhost:9001");
        assert_eq!(load(&[]).auth_url, "https://auth.example");

        let s = load(&[("SCALINGO_REGION", "osc-secnum-fr1")]);
        assert_eq!(s.region.as_deref(), Some("osc-secnum-fr1"));
        assert_eq!(s.api_url, "https://api.osc-secnum-fr1.scalingo.com");

        // A blank variable does not override.
        let s = load(&[("SCALINGO_REGION", ""), ("SCALINGO_API_TOKEN", "  ")]);
        assert_eq!(s.api_url, "https://api.osc-fr1.scalingo.com");
        assert!(s.token.is_none());
    }

    #[test]
    fn the_environment_applies_without_a_file() {
        let env = Env::from_pairs([
            ("SCALINGO_API_TOKEN", "tk-us-x"),
            ("SCALINGO_REGION", "osc-secnum-fr1"),
            ("SCALINGO_AUTH_URL", "https://auth.test/"),
        ]);
        let s = Config::from_env(&env).unwrap().config.scalingo;
        assert_eq!(s.api_url, "https://api.osc-secnum-fr1.scalingo.com");
        assert_eq!(s.auth_url, "https://auth.test");
        assert_eq!(s.require_token().map(Secret::expose).ok(), Some("tk-us-x"));
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let env = Env::from_pairs([
            ("SCALINGO_REGION", "OSC FR1"),
            ("SCALINGO_API_URL", "api.example"),
        ]);
        let message = Config::from_env(&env).unwrap_err().to_string();
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 2, "{message}");
        assert!(
            lines[0].starts_with("$SCALINGO_REGION: invalid region \"OSC FR1\""),
            "{message}"
        );
        assert!(
            lines[1].starts_with(
                "$SCALINGO_API_URL: \"api.example\" is not an http:// or https:// URL"
            ),
            "{message}"
        );
    }

    #[test]
    fn regions_map_to_api_urls() {
        let api = |region: &str| {
            config(&format!("[scalingo]\nregion = \"{region}\"\n"))
                .scalingo
                .api_url
        };
        assert_eq!(api("osc-fr1"), "https://api.osc-fr1.scalingo.com");
        assert_eq!(
            api("osc-secnum-fr1"),
            "https://api.osc-secnum-fr1.scalingo.com"
        );
        assert_eq!(api("osc-new2"), "https://api.osc-new2.scalingo.com");
        let message = error("[scalingo]\nregion = \"Paris 1\"\n");
        assert!(
            message.starts_with(&format!(
                "{FILE}:2:10: `region` in [scalingo]: invalid region \"Paris 1\""
            )),
            "{message}"
        );
    }

    #[test]
    fn an_explicit_api_url_wins_over_the_region() {
        let c = config(
            "[scalingo]\napi_url = \"https://api.example.com/\"\nregion = \"osc-secnum-fr1\"\n",
        );
        assert_eq!(c.scalingo.api_url, "https://api.example.com");
        let c = config("[scalingo]\napi_url = \"https://api.example.com\"\n");
        assert_eq!(c.scalingo.region, None);
        // In the environment too, and the environment's region wins over the file's api_url.
        let text = "[scalingo]\napi_url = \"https://file.example\"\n";
        let with = |pairs: &[(&str, &str)]| {
            Config::from_str(
                text,
                Path::new(FILE),
                &Env::from_pairs(pairs.iter().copied()),
            )
            .unwrap()
            .config
            .scalingo
            .api_url
        };
        assert_eq!(
            with(&[("SCALINGO_REGION", "osc-fr1")]),
            "https://api.osc-fr1.scalingo.com"
        );
        assert_eq!(
            with(&[
                ("SCALINGO_REGION", "osc-fr1"),
                ("SCALINGO_API_URL", "http://env.example")
            ]),
            "http://env.example"
        );
    }

    #[test]
    fn an_api_url_must_be_http() {
        let message = error("[scalingo]\napi_url = \"ftp://x\"\n");
        let expected = "`api_url` in [scalingo]: \"ftp://x\" is not an http:// or https:// URL";
        assert!(
            message.starts_with(&format!("{FILE}:2:11: {expected}")),
            "{message}"
        );
        assert!(
            error("[scalingo]\nauth_url = \"https://\"\n").contains("`auth_url` in [scalingo]")
        );
    }

    fn token_file(content: &str, mode: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, content).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        #[cfg(not(unix))]
        let _ = mode;
        dir
    }

    fn load_with_token_file(dir: &Path, env: &Env) -> Result<Loaded, ConfigError> {
        let text = format!(
            "[scalingo]\ntoken_file = \"{}\"\n",
            dir.join("token").display()
        );
        Config::from_str(&text, Path::new(FILE), env)
    }

    #[test]
    fn a_private_token_file_is_read_and_trimmed() {
        let dir = token_file("  tk-us-file\n", 0o600);
        let loaded = load_with_token_file(dir.path(), &no_env()).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let s = loaded.config.scalingo;
        assert_eq!(s.token.as_ref().map(Secret::expose), Some("tk-us-file"));
        let path = dir.path().join("token").display().to_string();
        assert_eq!(s.token_origin.as_deref(), Some(path.as_str()));
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_can_read_gives_a_warning() {
        let dir = token_file("tk-us-file\n", 0o644);
        let loaded = load_with_token_file(dir.path(), &no_env()).unwrap();
        let path = dir.path().join("token").display().to_string();
        assert_eq!(
            loaded.warnings,
            vec![format!(
                "token file {path} can be read by group or others (mode 0644); run `chmod 600 {path}`"
            )]
        );
        assert!(!loaded.warnings[0].contains("tk-us-file"));
        assert_eq!(
            loaded.config.scalingo.token.as_ref().map(Secret::expose),
            Some("tk-us-file")
        );
    }

    #[test]
    fn the_environment_token_wins_over_the_token_file() {
        let dir = tempfile::tempdir().unwrap(); // no token file in it: it must not be read
        let env = Env::from_pairs([("SCALINGO_API_TOKEN", "tk-us-env")]);
        let s = load_with_token_file(dir.path(), &env)
            .unwrap()
            .config
            .scalingo;
        assert_eq!(s.token.as_ref().map(Secret::expose), Some("tk-us-env"));
        assert_eq!(s.token_origin.as_deref(), Some("$SCALINGO_API_TOKEN"));
    }

    #[test]
    fn a_missing_token_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let message = load_with_token_file(dir.path(), &no_env())
            .unwrap_err()
            .to_string();
        let path = dir.path().join("token");
        assert_eq!(
            message,
            format!(
                "{FILE}:2:14: cannot read token file {}: No such file or directory",
                path.display()
            )
        );
    }

    #[test]
    fn an_empty_token_file_is_an_error() {
        let dir = token_file(" \n", 0o600);
        let message = load_with_token_file(dir.path(), &no_env())
            .unwrap_err()
            .to_string();
        assert!(message.contains("is empty"), "{message}");
        assert!(
            message.contains(&dir.path().join("token").display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn no_token_is_an_error_only_when_one_is_required() {
        let c = config("");
        assert!(c.scalingo.token.is_none());
        assert_eq!(
            c.scalingo.require_token().unwrap_err().to_string(),
            format!(
                "no Scalingo API token: set SCALINGO_API_TOKEN or token_file in [scalingo] of {FILE}"
            )
        );
        let c = Config::from_env(&no_env()).unwrap().config;
        assert_eq!(
            c.scalingo.require_token().unwrap_err().to_string(),
            "no Scalingo API token: set SCALINGO_API_TOKEN or token_file in [scalingo] of a config file (--config FILE)"
        );
    }

    #[test]
    fn a_duplicate_app_name_points_at_the_second() {
        let text = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\n\n[[app]]\nname = \"a\"\ndrop_dir = \"/b\"\n";
        assert_eq!(
            error(text),
            format!("{FILE}:6:8: app `a` is declared twice (first at line 2)")
        );
    }

    #[test]
    fn an_app_takes_exactly_one_source() {
        let both = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\nsource_dir = \"/src\"\n";
        let message = error(both);
        assert!(
            message.starts_with(&format!(
                "{FILE}:4:14: app `a` has both drop_dir and source_dir"
            )),
            "{message}"
        );
        let neither = "max_parallel = 1\n[[app]]\nname = \"a\"\n";
        let message = error(neither);
        assert!(
            message.starts_with(&format!(
                "{FILE}:2:1: app `a` has neither drop_dir nor source_dir"
            )),
            "{message}"
        );
        let nameless = "[[app]]\ndrop_dir = \"/a\"\n";
        assert!(error(nameless).starts_with(&format!("{FILE}:1:1: this [[app]] has no `name`")));
    }

    #[test]
    fn two_apps_cannot_share_a_drop_dir() {
        let text =
            "[[app]]\nname = \"a\"\ndrop_dir = \"/d\"\n[[app]]\nname = \"b\"\ndrop_dir = \"/d\"\n";
        assert!(error(text).starts_with(&format!(
            "{FILE}:6:12: drop_dir /d is already the drop folder of app `a`"
        )));
    }

    #[test]
    fn semantic_errors_are_all_reported_with_positions() {
        let text = r#"max_parallel = 0
[scalingo]
region = "FR"
[[app]]
name = "My_App"
drop_dir = "/a"
queue = "sometimes"
git_ref_label = "-x"
"#;
        let problems = problems(text);
        let located: Vec<_> = problems.iter().map(|p| p.position).collect();
        assert_eq!(
            located,
            vec![at(1, 16), at(3, 10), at(5, 8), at(7, 9), at(8, 17)],
            "{problems:#?}"
        );
        assert!(
            problems[0]
                .message
                .contains("`max_parallel` must be at least 1")
        );
        assert!(problems[2].message.contains("invalid app name \"My_App\""));
        assert!(
            problems[3]
                .message
                .contains("must be \"latest\" or \"all\"")
        );
        assert!(problems[4].message.contains("invalid git_ref_label \"-x\""));
        let message = ConfigError::Invalid { problems }.to_string();
        assert_eq!(message.lines().count(), 5);
    }

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(
            resolve(Path::new("/srv/app/config"), "../var/./drop"),
            PathBuf::from("/srv/app/var/drop")
        );
        assert_eq!(
            resolve(Path::new("/etc"), "/abs/x"),
            PathBuf::from("/abs/x")
        );
    }

    #[test]
    fn git_ref_labels() {
        assert!(is_git_ref_label("my-app_2.0"));
        assert!(!is_git_ref_label("-x"));
        assert!(!is_git_ref_label(".x"));
        assert!(!is_git_ref_label("a/b"));
        assert!(!is_git_ref_label(""));
        assert!(!is_git_ref_label(&"a".repeat(MAX_GIT_REF_LABEL + 1)));
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let text = r#"state_dir = "state"
[scalingo]
token_file = "token"
[[app]]
name = "a"
drop_dir = "drops/a"
[[app]]
name = "b"
source_dir = "../src/b"
"#;
        let dir = token_file("tk-us-rel", 0o600);
        let origin = dir.path().join("dropdeploy.toml");
        let c = Config::from_str(text, &origin, &no_env()).unwrap().config;
        assert_eq!(c.state_dir, dir.path().join("state"));
        assert_eq!(
            c.app("a").unwrap().drop_dir,
            Some(dir.path().join("drops/a"))
        );
        assert_eq!(
            c.app("b").unwrap().source_dir,
            Some(dir.path().parent().unwrap().join("src/b"))
        );
        assert_eq!(
            c.scalingo.token.as_ref().map(Secret::expose),
            Some("tk-us-rel")
        );
        // Absolute paths stay as they are.
        assert_eq!(
            config("state_dir = \"/abs\"").state_dir,
            PathBuf::from("/abs")
        );
    }

    #[test]
    fn a_missing_config_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let message = Config::load(&path, &no_env()).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "cannot read config file {}: No such file or directory",
                path.display()
            )
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dropdeploy.toml");
        std::fs::write(&path, "max_parallel = 7\n").unwrap();
        let c = Config::load(&path, &no_env()).unwrap().config;
        assert_eq!(c.max_parallel, 7);
        assert_eq!(c.file, Some(path));
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("tk-us-hidden");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(secret.expose(), "tk-us-hidden");
        let env = Env::from_pairs([("SCALINGO_API_TOKEN", "tk-us-hidden")]);
        let loaded = Config::from_env(&env).unwrap();
        let debug = format!("{loaded:?} {env:?}");
        assert!(!debug.contains("tk-us-hidden"), "{debug}");
        assert!(debug.contains("SCALINGO_API_TOKEN"), "{debug}");
    }

    #[test]
    fn positions_count_characters_from_one() {
        let text = "a = \"é\"\nbé = 1";
        assert_eq!(position(text, 0), Position { line: 1, column: 1 });
        assert_eq!(
            position(text, text.find("= 1").unwrap()),
            Position { line: 2, column: 4 }
        );
        assert_eq!(
            position(text, text.len() + 10),
            Position { line: 2, column: 7 }
        );
    }

    /// A `$CREDENTIALS_DIRECTORY` as systemd makes it, holding `scalingo-token` when given.
    fn credentials(token: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        if let Some(token) = token {
            std::fs::write(dir.path().join("scalingo-token"), token).unwrap();
        }
        dir
    }

    #[test]
    fn the_systemd_credential_wins_over_the_environment_and_the_token_file() {
        let creds = credentials(Some("tk-us-credential\n"));
        let files = token_file("tk-us-file", 0o600);
        let env = Env::from_pairs([
            ("SCALINGO_API_TOKEN", "tk-us-env"),
            ("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap()),
        ]);
        let loaded = load_with_token_file(files.path(), &env).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let s = loaded.config.scalingo;
        assert_eq!(
            s.token.as_ref().map(Secret::expose),
            Some("tk-us-credential")
        );
        assert_eq!(
            s.token_origin.as_deref(),
            Some("systemd credential scalingo-token")
        );
        // Without a config file too.
        let s = Config::from_env(&env).unwrap().config.scalingo;
        assert_eq!(
            s.require_token().map(Secret::expose).ok(),
            Some("tk-us-credential")
        );
    }

    #[test]
    fn the_token_file_is_not_read_when_the_credential_exists() {
        let creds = credentials(Some("tk-us-credential"));
        let empty = tempfile::tempdir().unwrap(); // no token file: reading it would fail
        let env = Env::from_pairs([("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())]);
        let s = load_with_token_file(empty.path(), &env)
            .unwrap()
            .config
            .scalingo;
        assert_eq!(
            s.token.as_ref().map(Secret::expose),
            Some("tk-us-credential")
        );
    }

    #[test]
    fn without_the_credential_file_the_usual_order_applies() {
        // A credentials directory without scalingo-token (the unit loads other credentials).
        let creds = credentials(None);
        let dir = creds.path().to_str().unwrap();
        let env = Env::from_pairs([
            ("SCALINGO_API_TOKEN", "tk-us-env"),
            ("CREDENTIALS_DIRECTORY", dir),
        ]);
        let s = Config::from_env(&env).unwrap().config.scalingo;
        assert_eq!(s.token_origin.as_deref(), Some("$SCALINGO_API_TOKEN"));

        let files = token_file("tk-us-file", 0o600);
        let env = Env::from_pairs([("CREDENTIALS_DIRECTORY", dir)]);
        let s = load_with_token_file(files.path(), &env)
            .unwrap()
            .config
            .scalingo;
        assert_eq!(s.token.as_ref().map(Secret::expose), Some("tk-us-file"));

        let s = Config::from_env(&env).unwrap().config.scalingo;
        assert!(s.token.is_none());
    }

    #[test]
    fn an_empty_credential_is_an_error_naming_the_variable() {
        let creds = credentials(Some(" \n"));
        let env = Env::from_pairs([
            ("SCALINGO_API_TOKEN", "tk-us-env"),
            ("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap()),
        ]);
        let message = Config::from_env(&env).unwrap_err().to_string();
        let path = creds.path().join("scalingo-token");
        assert_eq!(
            message,
            format!(
                "$CREDENTIALS_DIRECTORY: token file {} is empty; write the Scalingo API token in it",
                path.display()
            )
        );
    }

    #[test]
    fn credentials_directory_is_read_from_the_process() {
        assert!(ENV_VARS.contains(&"CREDENTIALS_DIRECTORY"));
    }
}
