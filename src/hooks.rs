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

mod pending;

pub use pending::{PENDING_DIR, Pending, PendingNote};

/// The ceiling of the wait before the second webhook attempt; it doubles after each further
/// failure. The wait itself is drawn below it (full jitter).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The highest ceiling of one wait between two webhook attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The most a delivery waits between its attempts, in all (a long `Retry-After` included).
const RETRY_BUDGET: Duration = Duration::from_secs(600);
/// Environment variables a command never inherits.
const HIDDEN_ENV: &[&str] = &[
    crate::config::ENV_TOKEN,
    crate::config::ENV_INTAKE_TOKEN,
    crate::config::ENV_DATABASE_URL,
];
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
        self.deliver(Some(hook), entry, None);
    }

    /// Like [`Hooks::notify`], for the app's hook if it has one, and then removes `note` (the
    /// job's [`PendingNote`]) once the delivery has ended, delivered or given up (at once when
    /// there is nothing to deliver). A delivery abandoned at exit keeps its note: the next
    /// start delivers it again.
    pub fn deliver(
        &self,
        hook: Option<&HookConfig>,
        entry: &HistoryEntry,
        note: Option<PendingNote>,
    ) {
        let (app, job) = (entry.app.clone(), entry.job.clone());
        let Some(runtime) = Handle::try_current().ok().or_else(|| self.runtime.clone()) else {
            tracing::warn!(
                app,
                job,
                "cannot run the on_outcome hook: no async runtime to run it on"
            );
            return;
        };
        let (webhook, command) = match hook.filter(|h| h.wants(entry.outcome.name())) {
            Some(hook) => self.work(hook, entry),
            None => (None, None),
        };
        let delivery = async move {
            let webhook = async {
                if let Some(webhook) = webhook {
                    webhook.deliver().await;
                }
            };
            let command = async {
                if let Some(command) = command {
                    command.run().await;
                }
            };
            tokio::join!(webhook, command);
            if let Some(note) = note {
                let _ = tokio::task::spawn_blocking(move || note.done()).await;
            }
        };
        self.tasks.spawn_on(delivery, &runtime);
    }

    /// The webhook delivery and the command run of `hook` for `entry`.
    fn work(
        &self,
        hook: &HookConfig,
        entry: &HistoryEntry,
    ) -> (Option<Webhook>, Option<CommandRun>) {
        let (app, job) = (entry.app.clone(), entry.job.clone());
        let body = match serde_json::to_vec(entry) {
            Ok(body) => body,
            Err(e) => {
                tracing::warn!(
                    app,
                    job,
                    "cannot run the on_outcome hook: cannot encode the outcome: {e}"
                );
                return (None, None);
            }
        };
        let webhook = hook.webhook.as_ref().map(|url| Webhook {
            client: self.client.clone(),
            url: url.clone(),
            body: body.clone(),
            timeout: hook.timeout,
            attempts: hook.retries.max(1),
            app: app.clone(),
            job: job.clone(),
        });
        let command = (!hook.command.is_empty()).then(|| {
            let inherited = match &self.inherited_env {
                Some(vars) => vars.clone(),
                None => std::env::vars_os().collect(),
            };
            CommandRun {
                argv: hook.command.clone(),
                env: command_env(inherited, entry),
                stdin: body,
                timeout: hook.timeout,
                app,
                job,
            }
        });
        (webhook, command)
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
mod tests;
