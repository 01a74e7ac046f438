//! Outcome notifications: after a job's outcome is recorded, tell someone else.
//!
//! An `on_outcome` hook ([`HookConfig`]) is configured for every app (a top-level
//! `[on_outcome]` table) or for one app (`on_outcome = { … }` in its `[[app]]`, which replaces
//! the global one for that app; see [`hook_for`]). It has a webhook, a command, or both:
//!
//! - **webhook**: the [`HistoryEntry`] is POSTed as JSON (`Content-Type: application/json`,
//!   `User-Agent: dropdeploy/<version>`). A 2xx answer is a success. Connect errors, timeouts
//!   and the statuses [`classify_status`] calls transient (408, 425, 429, 5xx) are tried again,
//!   up to `retries` attempts in all, with the project's one retry policy
//!   ([`crate::queue::retry::next_delay`]): full jitter below a ceiling of 0.5 s, 1 s, 2 s, …
//!   ≤ 60 s, but never sooner than a 429's or 503's `Retry-After`, and no more than 10 min of
//!   waiting in all. Other answers (and redirects, which are not followed) are failures at
//!   once. The URL's query string, fragment and user info may hold a secret: they never
//!   appear in a message.
//! - **command**: an argv, run without a shell, with the entry's JSON on its stdin, the
//!   `DROPDEPLOY_*` variables below, and the daemon's environment minus `SCALINGO_API_TOKEN`,
//!   in the daemon's working directory and a process group of its own. After `timeout` the
//!   group is killed (the command and anything it started). Its output is logged at DEBUG; a failing exit status at
//!   WARN with the last lines of its output.
//!
//! A hook with `only = ["failed", …]` runs for those outcomes only (both its webhook and its
//! command); without `only` it runs for every outcome.
//!
//! [`Hooks::notify`] is fire-and-forget: it spawns the work and returns at once. A hook never
//! changes a job's outcome; its failures are logged at WARN with the app, the job and the
//! cause. The API token is never sent anywhere: the entry holds none, no header carries it,
//! and the command's environment has it removed.
//!
//! | variable | value |
//! |---|---|
//! | `DROPDEPLOY_APP` | the app |
//! | `DROPDEPLOY_JOB` | the job id |
//! | `DROPDEPLOY_OUTCOME` | `succeeded`, `failed` or `superseded` |
//! | `DROPDEPLOY_STATUS` | the deployment's final status (`success`, `build-error`, …) or empty |
//! | `DROPDEPLOY_DEPLOYMENT_ID` | the platform's deployment id, or empty |
//! | `DROPDEPLOY_FILE` | the original file's name (a URL job: the URL) |
//! | `DROPDEPLOY_GIT_REF` | the git_ref, or empty |
//! | `DROPDEPLOY_REASON` | why it failed or was superseded, or empty |

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::{Duration, Instant, SystemTime};

use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;

use crate::blocking::BlockingError;
use crate::config::Config;
use crate::config::RetryConfig;
pub use crate::config::{
    DEFAULT_HOOK_RETRIES, DEFAULT_HOOK_TIMEOUT, HOOK_OUTCOMES, HookConfig, redact_url,
};
use crate::outcome::HistoryEntry;
use crate::process::{self, Ending, Finished, RunError};
use crate::queue::retry::{Class, classify_status, next_delay, parse_retry_after};

/// The ceiling of the wait before the second webhook attempt; it doubles after each further
/// failure. The wait itself is drawn below it (full jitter).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The highest ceiling of one wait between two webhook attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The most a delivery waits between its attempts, in all (a long `Retry-After` included).
const RETRY_BUDGET: Duration = Duration::from_secs(600);
/// Environment variables a command never inherits.
const HIDDEN_ENV: &[&str] = &[crate::config::ENV_TOKEN];
/// How much of each of a command's output streams is kept (its end).
const OUTPUT_TAIL_BYTES: usize = 64 * 1024;
/// How many lines of a failing command's output go into its WARN event.
const WARN_LINES: usize = 10;

/// The hook for `app`'s outcomes: the app's own `on_outcome` if it has one, else the global
/// `[on_outcome]`, else none. An app not in the config gets the global one.
pub fn hook_for<'a>(config: &'a Config, app: &str) -> Option<&'a HookConfig> {
    config
        .app(app)
        .and_then(|a| a.on_outcome.as_ref())
        .or(config.on_outcome.as_ref())
}

/// Why [`Hooks`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    /// The HTTP client for webhooks could not be built (e.g. no TLS backend).
    #[error("cannot set up the HTTP client for on_outcome webhooks: {0}")]
    Client(#[source] reqwest::Error),
}

/// Runs `on_outcome` hooks in the background. One per daemon; share it behind an `Arc`.
pub struct Hooks {
    client: reqwest::Client,
    /// The runtime to spawn on when `notify` is called outside one.
    runtime: Option<Handle>,
    tasks: TaskTracker,
    /// The environment commands inherit, when not this process's own (tests).
    inherited_env: Option<Vec<(OsString, OsString)>>,
}

impl Hooks {
    /// Hooks with their own HTTP client (no redirects followed, `User-Agent:
    /// dropdeploy/<version>`). Remembers the current Tokio runtime, if any, so that
    /// [`Hooks::notify`] also works from a thread outside it.
    pub fn new() -> Result<Hooks, HooksError> {
        let client = crate::http::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(HooksError::Client)?;
        Ok(Hooks {
            client,
            runtime: Handle::try_current().ok(),
            tasks: TaskTracker::new(),
            inherited_env: None,
        })
    }

    /// Commands inherit `vars` instead of this process's environment (`SCALINGO_API_TOKEN`
    /// is still removed from it). For tests, which should not change their own process's
    /// environment, and for embedders that run hooks in a controlled environment.
    pub fn with_inherited_env<I, K, V>(mut self, vars: I) -> Hooks
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.inherited_env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Sends the notifications of `hook` for one finished job (`entry`, as written to the
    /// history) and returns at once: the webhook and the command run in spawned tasks. Does
    /// nothing when the hook's `only` leaves the entry's outcome out. Never
    /// fails the job and never panics; failures are logged at WARN with the app, the job and
    /// the cause.
    ///
    /// Callable from async code or from a blocking thread (a `Finisher` under
    /// `spawn_blocking`); outside any Tokio runtime it uses the one `Hooks::new` was called
    /// in, if any, and otherwise logs that it cannot run.
    pub fn notify(&self, hook: &HookConfig, entry: &HistoryEntry) {
        if !hook.wants(entry.outcome.name()) {
            return;
        }
        let (app, job) = (entry.app.clone(), entry.job.clone());
        let Some(runtime) = Handle::try_current().ok().or_else(|| self.runtime.clone()) else {
            tracing::warn!(
                app,
                job,
                "cannot run the on_outcome hook: no async runtime to run it on"
            );
            return;
        };
        let body = match serde_json::to_vec(entry) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(
                    app,
                    job,
                    "cannot run the on_outcome hook: cannot encode the outcome: {e}"
                );
                return;
            }
        };
        if let Some(url) = &hook.webhook {
            let delivery = Webhook {
                client: self.client.clone(),
                url: url.clone(),
                body: body.clone(),
                timeout: hook.timeout,
                attempts: hook.retries.max(1),
                app: app.clone(),
                job: job.clone(),
            };
            self.tasks.spawn_on(delivery.deliver(), &runtime);
        }
        if !hook.command.is_empty() {
            let inherited = match &self.inherited_env {
                Some(vars) => vars.clone(),
                None => std::env::vars_os().collect(),
            };
            let run = CommandRun {
                argv: hook.command.clone(),
                env: command_env(inherited, entry),
                stdin: body,
                timeout: hook.timeout,
                app,
                job,
            };
            self.tasks.spawn_on(run.run(), &runtime);
        }
    }

    /// Waits up to `within` for the notifications under way to end (a stopping daemon calls
    /// this within its grace period). True when none is left. `notify` still works after.
    pub async fn drain(&self, within: Duration) -> bool {
        self.tasks.close();
        let done = tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok();
        self.tasks.reopen();
        done
    }
}

/// The environment of a hook command: `inherited` minus `SCALINGO_API_TOKEN` (and any
/// `DROPDEPLOY_*` of its own), plus the entry's `DROPDEPLOY_*` variables. Sorted by name.
pub(crate) fn command_env<I>(inherited: I, entry: &HistoryEntry) -> Vec<(OsString, OsString)>
where
    I: IntoIterator<Item = (OsString, OsString)>,
{
    let mut env: BTreeMap<OsString, OsString> = inherited
        .into_iter()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            !HIDDEN_ENV.contains(&name.as_ref()) && !name.starts_with("DROPDEPLOY_")
        })
        .collect();
    let text = |value: Option<&String>| value.map(String::as_str).unwrap_or("").replace('\0', "");
    for (name, value) in [
        ("DROPDEPLOY_APP", text(Some(&entry.app))),
        ("DROPDEPLOY_JOB", text(Some(&entry.job))),
        ("DROPDEPLOY_OUTCOME", entry.outcome.name().to_string()),
        ("DROPDEPLOY_STATUS", text(entry.status.as_ref())),
        (
            "DROPDEPLOY_DEPLOYMENT_ID",
            text(entry.deployment_id.as_ref()),
        ),
        ("DROPDEPLOY_FILE", text(Some(&entry.file))),
        ("DROPDEPLOY_GIT_REF", text(entry.git_ref.as_ref())),
        ("DROPDEPLOY_REASON", text(entry.reason.as_ref())),
    ] {
        env.insert(name.into(), value.into());
    }
    env.into_iter().collect()
}

/// What an answer to a webhook attempt means.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Delivered,
    /// Worth another attempt, not before the wait the server asked for, if any.
    Retry {
        asked: Option<Duration>,
    },
    /// Another attempt would get the same answer.
    GiveUp,
}

/// Judges an answer: its status, and for a 429 or 503 its `Retry-After` header (`now` is
/// the time an HTTP date in it is measured from).
fn judge_status(status: u16, retry_after: Option<&str>, now: SystemTime) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        _ => match classify_status(status) {
            Class::Transient => Verdict::Retry {
                asked: match status {
                    429 | 503 => retry_after.and_then(|v| parse_retry_after(v, now)),
                    _ => None,
                },
            },
            Class::Permanent => Verdict::GiveUp,
        },
    }
}

/// The project's retry policy with the webhooks' steps: ceilings of 0.5 s, 1 s, 2 s, … ≤ 60 s.
fn hook_policy() -> RetryConfig {
    RetryConfig {
        initial: FIRST_BACKOFF,
        max_delay: MAX_BACKOFF,
        budget: RETRY_BUDGET,
        retry_aborted: false,
    }
}

/// The wait after the `failures`-th failed attempt in a row (1-based): drawn below the
/// ceiling with `unit` in `[0, 1)`, at least what the server `asked` for, and at most the
/// `left` of the budget.
fn hook_delay(failures: u32, asked: Option<Duration>, unit: f64, left: Duration) -> Duration {
    next_delay(&hook_policy(), failures.saturating_sub(1), asked, unit).min(left)
}

/// One webhook delivery, with its attempts.
struct Webhook {
    client: reqwest::Client,
    url: String,
    body: Vec<u8>,
    timeout: Duration,
    attempts: u32,
    app: String,
    job: String,
}

impl Webhook {
    async fn deliver(self) {
        let shown = redact_url(&self.url);
        let (app, job) = (self.app.as_str(), self.job.as_str());
        let mut waited = Duration::ZERO;
        for attempt in 1..=self.attempts {
            let sent = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(self.timeout)
                .body(self.body.clone())
                .send()
                .await;
            let (verdict, cause) = match sent {
                Ok(answer) => {
                    let status = answer.status();
                    let retry_after = answer
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok());
                    (
                        judge_status(status.as_u16(), retry_after, SystemTime::now()),
                        format!("HTTP {status}"),
                    )
                }
                Err(e) if e.is_builder() => (Verdict::GiveUp, self.describe(e)),
                Err(e) => (Verdict::Retry { asked: None }, self.describe(e)),
            };
            let left = RETRY_BUDGET.saturating_sub(waited);
            match verdict {
                Verdict::Delivered => {
                    tracing::debug!(app, job, webhook = %shown, attempt, "on_outcome webhook delivered");
                    return;
                }
                Verdict::Retry { asked } if attempt < self.attempts && !left.is_zero() => {
                    let delay = hook_delay(attempt, asked, fastrand::f64(), left);
                    tracing::debug!(
                        app,
                        job,
                        webhook = %shown,
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        "on_outcome webhook: {cause}; trying again"
                    );
                    let slept = Instant::now();
                    tokio::time::sleep(delay).await;
                    waited = waited.saturating_add(slept.elapsed());
                }
                _ => {
                    tracing::warn!(
                        app,
                        job,
                        webhook = %shown,
                        attempts = attempt,
                        "on_outcome webhook failed: {cause}"
                    );
                    return;
                }
            }
        }
    }

    /// A transport error in words, with its causes, and without the URL's secrets.
    fn describe(&self, error: reqwest::Error) -> String {
        let error = error.without_url();
        let mut text = if error.is_timeout() {
            format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )
        } else {
            error.to_string()
        };
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            let line = cause.to_string();
            if !text.contains(&line) {
                text.push_str(": ");
                text.push_str(&line);
            }
            source = cause.source();
        }
        // A cause could still quote the URL: take its secret parts out.
        if let Ok(parsed) = reqwest::Url::parse(&self.url) {
            for secret in [parsed.query(), parsed.fragment(), parsed.password()]
                .into_iter()
                .flatten()
                .filter(|s| !s.is_empty())
            {
                text = text.replace(secret, "[redacted]");
            }
        }
        text
    }
}

/// One run of a hook command.
struct CommandRun {
    argv: Vec<String>,
    env: Vec<(OsString, OsString)>,
    stdin: Vec<u8>,
    timeout: Duration,
    app: String,
    job: String,
}

impl CommandRun {
    async fn run(self) {
        let (app, job) = (self.app.as_str(), self.job.as_str());
        let Some((program, args)) = self.argv.split_first() else {
            return;
        };
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        // Dropped with this task (a runtime shutting down): the command's group goes too.
        let (_abandon, abandoned) = process::Abandon::new();
        let options = process::Options {
            timeout: self.timeout,
            stdin: Some(self.stdin),
            capture: process::Capture::Separate,
            tail_bytes: OUTPUT_TAIL_BYTES,
            output_wait: process::OutputWait::WithinTimeout,
            abandoned: Some(abandoned),
        };
        let after = humantime::format_duration(self.timeout);
        match crate::blocking::run(move || process::run(command, options)).await {
            Ok(Finished {
                ending: Ending::Exited(status),
                output_held: false,
                stdout,
                stderr,
            }) => log_ended(app, job, program, status, &stdout, &stderr),
            // It ended, and left a background process holding its output open: the whole
            // group went at the timeout.
            Ok(Finished {
                ending: Ending::Exited(status),
                ..
            }) => tracing::warn!(
                app,
                job,
                command = %program,
                "on_outcome command ended ({status}) but a process it started still held \
                 its output after {after}; killed it"
            ),
            Ok(Finished {
                ending: Ending::TimedOut,
                ..
            }) => tracing::warn!(
                app,
                job,
                command = %program,
                "on_outcome command killed: still running after {after}"
            ),
            Err(BlockingError::Failed(RunError::Start(e))) => {
                tracing::warn!(app, job, command = %program, "cannot start the on_outcome command: {e}");
            }
            Err(e) => {
                tracing::warn!(app, job, command = %program, "cannot wait for the on_outcome command: {e}");
            }
        }
    }
}

/// A command that ended in time: its output at DEBUG, and a failing status at WARN with the
/// last lines of its stderr (or of its stdout, when stderr is empty).
fn log_ended(
    app: &str,
    job: &str,
    program: &str,
    status: std::process::ExitStatus,
    stdout: &process::OutputTail,
    stderr: &process::OutputTail,
) {
    let out = String::from_utf8_lossy(stdout.bytes());
    let err = String::from_utf8_lossy(stderr.bytes());
    tracing::debug!(
        app,
        job,
        command = %program,
        %status,
        stdout = %out.trim_end(),
        stderr = %err.trim_end(),
        "on_outcome command ended"
    );
    if !status.success() {
        let shown = if err.trim().is_empty() { &out } else { &err };
        tracing::warn!(
            app,
            job,
            command = %program,
            "on_outcome command failed ({status}); its last lines:\n{}",
            last_lines(shown, WARN_LINES)
        );
    }
}

/// The last `n` non-empty lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;

    fn entry() -> HistoryEntry {
        HistoryEntry {
            time: "2026-11-25T17:42:58Z".into(),
            app: "my-app".into(),
            job: "j-42".into(),
            file: "build.tar.gz".into(),
            git_ref: Some("my-app-20261125174258-deadbeef".into()),
            outcome: Outcome::Failed,
            status: Some("build-error".into()),
            deployment_id: Some("d-1".into()),
            step: Some("follow".into()),
            reason: Some("the build failed".into()),
            attempts: 1,
            ..HistoryEntry::default()
        }
    }

    fn env_map(env: &[(OsString, OsString)]) -> BTreeMap<String, String> {
        env.iter()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.to_string_lossy().into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn the_command_env_has_the_outcome_and_never_the_token() {
        let inherited = [
            ("PATH", "/usr/bin"),
            ("SCALINGO_API_TOKEN", "tk-us-secret"),
            ("DROPDEPLOY_APP", "spoofed"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = env_map(&command_env(inherited, &entry()));
        assert_eq!(env.get("PATH").map(String::as_str), Some("/usr/bin"));
        assert_eq!(env.get("HOME").map(String::as_str), Some("/root"));
        assert!(!env.contains_key("SCALINGO_API_TOKEN"));
        assert!(!env.values().any(|v| v.contains("tk-us-secret")));
        let expected = [
            ("DROPDEPLOY_APP", "my-app"),
            ("DROPDEPLOY_JOB", "j-42"),
            ("DROPDEPLOY_OUTCOME", "failed"),
            ("DROPDEPLOY_STATUS", "build-error"),
            ("DROPDEPLOY_DEPLOYMENT_ID", "d-1"),
            ("DROPDEPLOY_FILE", "build.tar.gz"),
            ("DROPDEPLOY_GIT_REF", "my-app-20261125174258-deadbeef"),
            ("DROPDEPLOY_REASON", "the build failed"),
        ];
        for (name, value) in expected {
            assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
        }
    }

    #[test]
    fn absent_values_are_empty_variables() {
        let bare = HistoryEntry {
            app: "a".into(),
            job: "j".into(),
            outcome: Outcome::Succeeded,
            ..HistoryEntry::default()
        };
        let env = env_map(&command_env(Vec::new(), &bare));
        for name in [
            "DROPDEPLOY_STATUS",
            "DROPDEPLOY_DEPLOYMENT_ID",
            "DROPDEPLOY_GIT_REF",
            "DROPDEPLOY_REASON",
            "DROPDEPLOY_FILE",
        ] {
            assert_eq!(env.get(name).map(String::as_str), Some(""), "{name}");
        }
        assert_eq!(env["DROPDEPLOY_OUTCOME"], "succeeded");
        assert_eq!(env.len(), 8);
    }

    #[test]
    fn the_stdin_is_the_history_line() {
        let body = serde_json::to_vec(&entry()).unwrap();
        let back: HistoryEntry = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, entry());
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["outcome"], "failed");
        assert_eq!(value["deployment_id"], "d-1");
    }

    #[test]
    fn urls_lose_their_secrets_in_messages() {
        assert_eq!(
            redact_url("https://hooks.example.com/x?token=s3cret#frag"),
            "https://hooks.example.com/x"
        );
        assert_eq!(
            redact_url("https://user:pw@hooks.example.com/x"),
            "https://redacted@hooks.example.com/x"
        );
        assert_eq!(redact_url("not a url?token=s3cret"), "not a url");
        assert_eq!(redact_url("ftp:/a:b@c?d"), "ftp://redacted@c/");
        assert_eq!(redact_url("weird://u:p@host?q"), "weird://redacted@host");
    }

    #[test]
    fn answers_are_judged_by_the_shared_classification() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(judge_status(200, None, now), Verdict::Delivered);
        assert_eq!(judge_status(204, Some("5"), now), Verdict::Delivered);
        for retry in [408, 425, 429, 500, 502, 503] {
            assert_eq!(
                judge_status(retry, None, now),
                Verdict::Retry { asked: None },
                "{retry}"
            );
        }
        for give_up in [301, 400, 401, 404, 409, 410] {
            assert_eq!(
                judge_status(give_up, Some("1"), now),
                Verdict::GiveUp,
                "{give_up}"
            );
        }
    }

    #[test]
    fn a_429_or_503_retry_after_is_heard_and_no_other() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let asked = |secs| Verdict::Retry {
            asked: Some(Duration::from_secs(secs)),
        };
        assert_eq!(judge_status(429, Some("1"), now), asked(1));
        assert_eq!(judge_status(503, Some(" 30 "), now), asked(30));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(judge_status(503, Some(&date), now), asked(90));
        let unreadable = Verdict::Retry { asked: None };
        assert_eq!(judge_status(429, Some("soon"), now), unreadable);
        assert_eq!(judge_status(500, Some("30"), now), unreadable);
    }

    #[test]
    fn waits_are_jittered_below_a_doubling_ceiling() {
        let lots = Duration::from_secs(3600);
        // The ceiling after the n-th failure: 0.5 s, 1 s, 2 s, …, 60 s.
        for (failures, ceiling) in [
            (1, 500),
            (2, 1000),
            (3, 2000),
            (10, 60_000),
            (u32::MAX, 60_000),
        ] {
            let ceiling = Duration::from_millis(ceiling);
            assert_eq!(hook_delay(failures, None, 0.0, lots), Duration::ZERO);
            assert_eq!(hook_delay(failures, None, 0.5, lots), ceiling / 2);
            assert!(
                hook_delay(failures, None, 0.999, lots) < ceiling,
                "{failures}"
            );
        }
        for _ in 0..200 {
            let delay = hook_delay(3, None, fastrand::f64(), lots);
            assert!(delay < Duration::from_secs(2), "{delay:?}");
        }
    }

    #[test]
    fn waits_honour_retry_after_within_the_budget() {
        let lots = Duration::from_secs(3600);
        let asked = Some(Duration::from_secs(1));
        assert_eq!(hook_delay(1, asked, 0.0, lots), Duration::from_secs(1));
        assert_eq!(hook_delay(1, asked, 0.999, lots), Duration::from_secs(1));
        let long = Some(Duration::from_secs(7200));
        assert_eq!(
            hook_delay(1, long, 0.5, lots),
            lots,
            "never past the budget left"
        );
    }

    #[test]
    fn only_names_are_the_outcomes() {
        for outcome in [Outcome::Succeeded, Outcome::Failed, Outcome::Superseded] {
            assert!(HOOK_OUTCOMES.contains(&outcome.name()), "{outcome:?}");
        }
        let failures_only = HookConfig {
            only: vec!["failed".into()],
            ..HookConfig::default()
        };
        assert!(failures_only.wants("failed"));
        assert!(!failures_only.wants("succeeded"));
        assert!(HookConfig::default().wants("superseded"));
    }

    const FILE: &str = "/etc/dropdeploy/dropdeploy.toml";

    fn load(text: &str) -> Result<Config, String> {
        let env = crate::config::Env::from_pairs([("SCALINGO_API_TOKEN", "tk-us-x")]);
        Config::from_str(text, std::path::Path::new(FILE), &env)
            .map(|loaded| loaded.config)
            .map_err(|e| e.to_string())
    }

    fn error(text: &str) -> String {
        match load(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(message) => message,
        }
    }

    #[test]
    fn config_on_outcome_global_and_per_app() {
        let text = r#"
metrics_listen = "127.0.0.1:9464"

[on_outcome]
webhook = "https://hooks.example.com/deploys?token=abc"
timeout = "5s"
retries = 5

[[app]]
name = "a"
drop_dir = "/a"

[[app]]
name = "b"
drop_dir = "/b"
on_outcome = { command = ["/usr/local/bin/notify", "--quiet"] }
"#;
        let c = load(text).unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        let global = HookConfig {
            webhook: Some("https://hooks.example.com/deploys?token=abc".into()),
            command: Vec::new(),
            timeout: Duration::from_secs(5),
            retries: 5,
            only: Vec::new(),
        };
        assert_eq!(c.on_outcome.as_ref(), Some(&global));
        assert_eq!(hook_for(&c, "a"), Some(&global));
        assert_eq!(hook_for(&c, "not-configured"), Some(&global));
        let own = HookConfig {
            command: vec!["/usr/local/bin/notify".into(), "--quiet".into()],
            ..HookConfig::default()
        };
        assert_eq!(
            hook_for(&c, "b"),
            Some(&own),
            "the app's own replaces the global"
        );
        assert_eq!(own.timeout, DEFAULT_HOOK_TIMEOUT);
        assert_eq!(own.retries, DEFAULT_HOOK_RETRIES);

        let c = load("[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\n").unwrap();
        assert_eq!(c.metrics_listen, None);
        assert_eq!(hook_for(&c, "a"), None);
    }

    #[test]
    fn config_bad_metrics_listen_is_located() {
        let message = error("max_parallel = 2\nmetrics_listen = \"localhost:9464\"\n");
        assert!(
            message.starts_with(&format!(
                "{FILE}:2:18: `metrics_listen` must be an IP address and a port"
            )),
            "{message}"
        );
        assert!(error("metrics_listen = \"127.0.0.1\"").contains("found \"127.0.0.1\""));
    }

    #[test]
    fn config_a_webhook_must_be_http() {
        let message = error("[on_outcome]\nwebhook = \"ftp://x.example/?key=s3cret\"\n");
        assert!(
            message.starts_with(&format!(
                "{FILE}:2:11: `webhook` in [on_outcome]: \"ftp://x.example/\" is not an http:// \
                 or https:// URL"
            )),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
        let text =
            "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\non_outcome = { webhook = \"nope\" }\n";
        let message = error(text);
        assert!(
            message.starts_with(&format!(
                "{FILE}:4:26: `webhook` in on_outcome of [[app]]: \"nope\" is not"
            )),
            "{message}"
        );
    }

    #[test]
    fn config_a_hook_needs_a_webhook_or_a_command() {
        let message = error("max_parallel = 1\n[on_outcome]\ntimeout = \"5s\"\n");
        assert!(
            message.contains("[on_outcome] has neither webhook nor command"),
            "{message}"
        );
        assert!(message.starts_with(&format!("{FILE}:")), "{message}");
        let text = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\non_outcome = { retries = 2 }\n";
        let message = error(text);
        assert!(
            message.starts_with(&format!(
                "{FILE}:4:14: `on_outcome` in [[app]] has neither webhook nor command"
            )),
            "{message}"
        );
        let message = error("[on_outcome]\ncommand = []\n");
        assert!(
            message.starts_with(&format!(
                "{FILE}:2:11: `command` in [on_outcome] has no program"
            )),
            "{message}"
        );
    }

    #[test]
    fn config_hook_values_and_keys_are_checked() {
        let text = "[on_outcome]\nwebhook = \"https://h.example\"\nretries = 0\ntimeout = \"0s\"\n";
        let message = error(text);
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 2, "{message}");
        assert!(
            lines[0].starts_with(&format!(
                "{FILE}:3:11: `retries` in [on_outcome] must be at least 1"
            )),
            "{message}"
        );
        assert!(
            lines[1].starts_with(&format!(
                "{FILE}:4:11: `timeout` in [on_outcome] must be longer than zero"
            )),
            "{message}"
        );
        let message = error("[on_outcome]\nwebhok = \"https://h.example\"\n");
        assert_eq!(
            message,
            format!(
                "{FILE}:2:1: unknown key `webhok` in [on_outcome]; expected one of webhook, \
                 command, timeout, retries, only"
            )
        );
        let text = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\non_outcome = { url = \"x\" }\n";
        assert!(
            error(text).starts_with(&format!(
                "{FILE}:4:16: unknown key `url` in on_outcome of [[app]]"
            )),
            "{}",
            error(text)
        );
    }

    #[test]
    fn config_only_keeps_the_outcomes_named() {
        let text = r#"
[on_outcome]
webhook = "https://hooks.example.com/deploys"
only = ["failed", "superseded", "failed"]

[[app]]
name = "a"
drop_dir = "/a"
on_outcome = { command = ["/bin/true"], only = ["succeeded"] }
"#;
        let c = load(text).unwrap();
        let global = c.on_outcome.as_ref().unwrap();
        assert_eq!(global.only, ["failed", "superseded"]);
        assert!(global.wants("failed") && !global.wants("succeeded"));
        assert_eq!(hook_for(&c, "a").unwrap().only, ["succeeded"]);
    }

    #[test]
    fn config_an_unknown_only_value_is_located_with_the_valid_ones() {
        let message = error(
            "[on_outcome]\nwebhook = \"https://h.example\"\nonly = [\"failed\", \"error\"]\n",
        );
        assert_eq!(
            message,
            format!(
                "{FILE}:3:19: `only` in [on_outcome]: \"error\" is not an outcome; expected \
                 one of succeeded, failed, superseded, verified, unhealthy, rolled_back"
            )
        );
        let text = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\non_outcome = { command = [\"/bin/true\"], only = [\"Failed\"] }\n";
        let message = error(text);
        assert!(
            message.starts_with(&format!(
                "{FILE}:4:49: `only` in on_outcome of [[app]]: \"Failed\" is not an outcome"
            )),
            "{message}"
        );
        let message = error("[on_outcome]\ncommand = [\"/bin/true\"]\nonly = []\n");
        assert!(
            message.starts_with(&format!("{FILE}:3:8: `only` in [on_outcome] is empty")),
            "{message}"
        );
        assert!(
            message.contains("succeeded, failed, superseded"),
            "{message}"
        );
    }

    #[test]
    fn last_lines_skip_blank_ones() {
        assert_eq!(last_lines("a\nb\n\nc\n", 2), "b\nc");
        assert_eq!(last_lines("", 3), "");
    }
}
