//! # dropdeploy
//!
//! A daemon and a one-shot CLI that deploy code archives to the Scalingo platform through its
//! HTTP API. Data flows one way: a *source* notices work, the *archive* is checked, a *job* is
//! written to the spool, the *queue* drives it through the *target*, and the outcome is recorded.
//!
//! - [`config`]: the TOML configuration, typed and validated, with the environment overriding
//!   the file as Scalingo's own CLI does (`SCALINGO_API_TOKEN`, `SCALINGO_API_URL`, …). Errors
//!   name the file, line and column. The API token is held in a [`config::Secret`] that never
//!   prints.
//! - [`archive`]: everything about the `.tar.gz` itself. [`archive::inspect`] streams an archive
//!   once, in constant memory, and either summarises it (root folder, entries, size, sha256) or
//!   says in plain words why the platform would reject it. [`archive::ignore`] decides which
//!   files of a source directory are deployed (gitignore semantics, the `ignore` crate), and
//!   [`archive::pack`] streams them into a deterministic tar.gz with a content digest.
//! - [`target`]: where archives go. [`target::scalingo`] is the Scalingo client: token exchange
//!   and bearer cache, sources, upload, deployments, build output. Its errors say whether they are
//!   transient or permanent; it never retries by itself.
//! - [`queue`]: durable jobs. [`queue::spool`] holds one directory per job with the archive and a
//!   `job.json` state record written atomically before each side effect; [`queue::intake`] turns
//!   an archive (copied, or moved when claimed from a drop folder) or a URL into a job;
//!   [`queue::retry`] holds the backoff policy and error classification; [`queue::runner`]
//!   drives one job from any persisted state to its end, and is the one place where retries
//!   happen; [`queue::lane`] runs each app's jobs one at a time, with the `latest`/`all` busy
//!   policy and a global cap on apps deploying at once.
//! - [`source`]: where work is noticed. [`source::drop`] watches a drop folder and reports each
//!   `.tar.gz` once it is complete (renamed in, or written, closed and settled); the daemon then
//!   claims it by renaming it into the spool. [`source::tree`] and [`source::watch`] watch a
//!   source directory (one watch per directory not ignored) and debounce its changes;
//!   [`source::redeploy`] packs it into a job after each burst and skips unchanged trees.
//! - [`outcome`]: what happens when a job is finished: the archive moves from the spool to
//!   `done/` or `failed/` in its drop folder (a `.reason.txt` beside a failed one), one JSON line
//!   is appended to `<state_dir>/history.jsonl`, one log event is written, `done/` is pruned,
//!   and the job leaves the spool; each step is safe to repeat after a crash. It also reads the
//!   history back for the `history` and `status` commands.
//! - [`daemon`]: `dropdeploy run`: start-up checks, recovery of the spool before any new claim,
//!   the claim loop, signals (SIGTERM/SIGINT stop, SIGHUP reloads).
//! - [`metrics`]: Prometheus metrics: deployments by outcome, retries by step, uploaded
//!   bytes, queue depth and the last success per app, kept in one shared [`metrics::Metrics`]
//!   and served on `GET /metrics` (with `GET /healthz`) at `metrics_listen`.
//!   [`metrics::MetricsObserver`] counts from the runner's events.
//! - [`hooks`]: `on_outcome` notifications after each recorded outcome: a webhook that gets the
//!   history entry as JSON (retried on transient errors) and/or a command run without a shell
//!   with `DROPDEPLOY_*` variables. Fire-and-forget: a hook never changes a job's outcome, and
//!   never sees the API token.
//! - [`process`]: the one way a command is run (the local target's `activate`, the hooks'
//!   command): in a process group of its own, with a timeout that kills the whole group, stdin
//!   bytes if any, and only the end of its output kept.
//! - [`redact`]: the one function that replaces anything shaped like a Scalingo API token
//!   (`tk-us-…`) or a bearer JWT with a fixed marker. It is applied where text leaves the
//!   process, whatever setting or answer the text came from: every log line (a wrapped log
//!   writer), every line the CLI prints, configuration errors, history lines, reason files and
//!   job records. So a token pasted into the wrong setting is never echoed.
//! - [`shutdown`]: the stop signal handed to every task, checked between steps.
//! - [`lock`]: one daemon per `state_dir` and one driver per job, with `flock(2)` locks the
//!   kernel releases when their holder dies.
//! - [`live`]: what the running daemon waits on (a file it cannot claim yet, a folder it
//!   cannot watch), with the cause and the next try, published for `dropdeploy status`.
//! - [`service`]: running under systemd. [`service::Notifier`] sends the daemon's readiness,
//!   status line, reloads, stop and watchdog pings over `$NOTIFY_SOCKET` (and does nothing
//!   without it); [`service::JournalFormat`] shapes log lines for the journal when stderr is
//!   connected to it. The unit file and its companions are in `systemd/`.
//! - [`cli`]: the command-line front end shared by the `dropdeploy` binary (kept thin in
//!   `src/main.rs`).

pub mod archive;
pub mod blocking;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deploy;
pub mod durable;
pub mod hooks;
pub mod human;
pub mod live;
pub mod lock;
pub mod metrics;
pub mod outcome;
pub mod process;
pub mod queue;
pub mod redact;
pub mod service;
pub mod shutdown;
pub mod source;
