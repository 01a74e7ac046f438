//! # dropdeploy
//!
//! A daemon and a one-shot CLI that deploy code archives (`.tar.gz`) to the Scalingo platform
//! through its HTTP API, or to releases on this machine. Data flows one way: a *source* notices
//! work, the *archive* is checked, a *job* is written to the spool, an app's *lane* drives it
//! through its *target*, and the *outcome* is recorded. A module never reaches back up that
//! flow: it returns a value or sends a message on. The modules below are listed from the bottom
//! of the flow up.
//!
//! ## Foundations
//!
//! [`redact`] is the one function that replaces anything shaped like a Scalingo API token
//! (`tk-us-…`) or a bearer JWT with a fixed marker. It is applied where text leaves the
//! process, whatever setting or answer the text came from: every log line (a wrapped log
//! writer), every line the CLI prints, configuration errors, history lines, reason files and
//! job records. So a token pasted into the wrong setting is never echoed.
//!
//! [`human`] writes sizes and durations as people read them, the same in every message, line
//! and table. [`durable`] writes files that survive a crash whole (temporary file, fsync,
//! rename, fsync of the folder). [`blocking`] runs blocking work (fsync, tar, gzip, directory
//! walks) on tokio's blocking threads, with one error for the work failing or panicking.
//! [`http`] builds every HTTP client: reqwest over rustls, with `ring` installed as the crypto
//! provider first and certificates checked against the system's roots.
//!
//! [`shutdown`] is the stop signal handed to every task, checked between steps. [`lock`] keeps
//! one daemon per `state_dir` and one driver per job, with `flock(2)` locks the kernel releases
//! when their holder dies. [`process`] is the one way a command is run (the local target's
//! `activate`, the hooks' command): in a process group of its own, with a timeout that kills
//! the whole group, stdin bytes if any, and only the end of its output kept.
//!
//! ## Configuration
//!
//! [`config`] is the TOML configuration, typed and validated in passes (syntax, key names,
//! types, meaning), each problem reported at its file, line and column. As in Scalingo's own
//! CLI the environment, passed in as a [`config::Env`], overrides the file
//! (`SCALINGO_API_TOKEN`, `SCALINGO_API_URL`, …). The API token is held in a
//! [`config::Secret`] that never prints.
//!
//! ## Archives
//!
//! [`archive`] is everything about the `.tar.gz` itself. [`archive::inspect`] streams an
//! archive once, in constant memory, and either summarises it (root folder, entries, size,
//! sha256) or says in plain words why the platform would reject it; [`archive::paths`] is the
//! one path and link policy that both the check and the local extractor apply. For a watched
//! source directory, [`archive::ignore`] decides which files are deployed (gitignore semantics,
//! the `ignore` crate) and [`archive::pack`] streams them into a deterministic tar.gz with a
//! content digest, compressed in parallel by [`archive::pgzip`].
//!
//! ## Jobs and lanes
//!
//! [`queue`] is durable jobs and the lanes that run them. [`queue::spool`] holds one directory
//! per job with the archive and a `job.json` state record written atomically before each side
//! effect; [`queue::intake`] turns an archive (copied, or moved when claimed from a drop folder)
//! or a URL into a job; [`queue::retry`] holds the backoff policy and error classification;
//! [`queue::observe`] defines the [`Observer`](queue::observe::Observer) every target reports
//! its [`Event`](queue::observe::Event)s through (the CLI's lines, the daemon's log, the
//! metrics). [`queue::lane`] runs each app's jobs one at a time, with the `latest`/`all` busy
//! policy and a global cap on apps deploying at once; a lane knows no concrete target, only
//! the [`Target`](queue::lane::Target) trait.
//!
//! [`live`] is what the running daemon waits on (a file it cannot claim yet, a folder it cannot
//! watch), with the cause and the next try, published for `dropdeploy status`.
//!
//! ## Sources
//!
//! [`source`] is where work is noticed. [`source::drop`] watches a drop folder and reports each
//! `.tar.gz` once it is complete (renamed in, or written, closed and settled); the daemon then
//! claims it by renaming it into the spool. [`source::tree`] and [`source::watch`] watch a
//! source directory (one watch per directory not ignored, through [`source::inotify`] or by
//! polling) and debounce its changes; [`source::redeploy`] packs it into a job after each burst
//! and skips unchanged trees.
//!
//! ## Targets
//!
//! [`deploy`] is where a job goes. [`deploy::scalingo`] is the platform: its client
//! ([`deploy::scalingo::api`], with the token exchange and bearer cache of
//! [`deploy::scalingo::auth`]) makes one attempt per call and says whether an error is
//! transient; its [`driver`](deploy::scalingo::driver) ([`Runner`](deploy::scalingo::driver::Runner))
//! drives one job from any recorded state to its end (source, upload, deployment, following its
//! status) and is the one place where those retries happen. [`deploy::local`] extracts
//! Capistrano-style releases on this machine and switches `current`; its
//! [`driver`](deploy::local::driver) ([`ReleaseRunner`](deploy::local::driver::ReleaseRunner))
//! turns a job into a release. [`deploy::build`] is the one factory that turns an app's
//! configuration into a ready target: a new target is a new module and a new arm there.
//!
//! [`verify`] wraps an app's target with its health check (warmup, probes, soak, each step
//! recorded in the job) and rolls an unhealthy deployment back to the app's last verified
//! archive, which it keeps in the state directory.
//!
//! ## Outcomes
//!
//! [`outcome`] is what happens when a job is finished: the archive moves from the spool to
//! `done/` or `failed/` in its drop folder (a `.reason.txt` beside a failed one), one JSON line
//! is appended to `<state_dir>/history.jsonl`, one log event is written, `done/` is pruned, and
//! the job leaves the spool; each step is safe to repeat after a crash. It also reads the
//! history back for the `history` and `status` commands.
//!
//! ## Observers
//!
//! [`metrics`] keeps Prometheus metrics (deployments by outcome, retries by step, uploaded
//! bytes, queue depth and the last success per app) in one shared [`metrics::Metrics`] and
//! serves them on `GET /metrics` (with `GET /healthz`) at `metrics_listen`;
//! [`metrics::MetricsObserver`] counts from the targets' events.
//!
//! [`page`] is the status page on the same listener (`GET /`): what is live per app, the job
//! in flight with its build output as it comes (server-sent events from
//! [`page::FeedObserver`]), the last outcomes, the waits and the API budget; actions (resume,
//! rollback) only with an `[intake]` token.
//!
//! [`hooks`] sends the `on_outcome` notifications after each recorded outcome: a webhook that
//! gets the history entry as JSON (retried on transient errors) and/or a command run without a
//! shell with `DROPDEPLOY_*` variables. Fire-and-forget: a hook never changes a job's outcome,
//! and never sees the API token.
//!
//! [`service`] is running under systemd. [`service::Notifier`] sends the daemon's readiness,
//! status line, reloads, stop and watchdog pings over `$NOTIFY_SOCKET` (and does nothing
//! without it); [`service::JournalFormat`] shapes log lines for the journal when stderr is
//! connected to it. The unit file and its companions are in `systemd/`.
//!
//! ## Composition
//!
//! [`daemon`] is `dropdeploy run`, and the one place where the pipeline is put together:
//! [`daemon::run`]`(config_path, env, control)` checks the configuration, recovers the spool
//! before any new claim, starts a lane and a watcher per app, claims ready files, and reloads.
//! It knows no signals: it is told to stop or reload through a [`daemon::Control`] (made with
//! [`daemon::control`]), so tests run the real daemon in-process.
//!
//! [`cli`] is the command-line front end: argument parsing, logging set-up, the one-shot
//! commands (`deploy`, `watch`, `check`, `status`, …), and the edge where SIGTERM, SIGINT and
//! SIGHUP are turned into the daemon's [`daemon::Control`]. The `dropdeploy` binary
//! (`src/main.rs`) is a call to [`cli::main`] and nothing else.

pub mod archive;
pub mod blocking;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deploy;
pub mod durable;
pub mod fleet;
pub mod hooks;
pub mod http;
pub mod human;
pub mod live;
pub mod lock;
pub mod metrics;
pub mod outcome;
pub mod page;
pub mod process;
pub mod queue;
pub mod redact;
pub mod service;
pub mod shutdown;
pub mod source;
pub mod verify;
