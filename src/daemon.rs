//! The daemon: wiring, recovery, signals, reload.
//!
//! Start-up order matters: the configuration is validated, half-made jobs are put back,
//! every unfinished job in the spool is handed to its lane (and finished ones get their
//! outcome recorded) *before* any new file is claimed. Then drop folders are watched and ready
//! files are claimed one at a time, in arrival order. SIGTERM/SIGINT stop the claiming, let
//! each job in flight reach its next persisted state within the grace period, and exit; SIGHUP
//! reloads the configuration, keeping the old one if the new one has errors.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::archive::inspect::Limits;
use crate::config::{AppConfig, Config, ConfigError, Env, Loaded, RetryConfig, TargetConfig};
use crate::deploy::local::LocalTarget;
use crate::deploy::scalingo::api::ScalingoClient;
use crate::deploy::scalingo::driver::{Event, Observer};
use crate::hooks::{Hooks, hook_for};
use crate::metrics::{Metrics, MetricsObserver};
use crate::outcome::{HistoryEntry, Outcomes};
use crate::queue::intake::{IntakeError, Transfer, enqueue_archive};
use crate::queue::lane::{Finisher, LaneContext, LaneSettings, Lanes};
use crate::queue::observe::LogObserver;
use crate::queue::spool::{Job, Spool};
use crate::service::{Notifier, WatchdogTimer, status_line};
use crate::shutdown::{self, ShutdownTrigger};
use crate::source::drop::{DropFolderConfig, DropWatcher, ReadyFile};
use crate::source::redeploy::{self, RedeployConfig, TreeEvent};
use crate::source::tree::{TreeConfig, TreeWatcher};

/// `done/` retention for a job whose app is no longer configured.
const DEFAULT_KEEP_DONE: usize = 20;
/// The longest wait between two tries of a claim that fails for an I/O reason.
const CLAIM_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// A drop file whose claim failed for an I/O reason (disk full, spool not writable, …).
struct ClaimRetry {
    /// Failed tries so far.
    tries: u32,
    /// When the last try failed.
    last: tokio::time::Instant,
    /// Asks the watcher to check the file again when the backoff is over.
    timer: tokio::task::JoinHandle<()>,
}

/// The wait after a claim's `tries`-th failure: 1 s, doubling, at most [`CLAIM_RETRY_MAX`].
fn claim_backoff(tries: u32) -> std::time::Duration {
    let doubled = std::time::Duration::from_secs(1u64 << tries.saturating_sub(1).min(6));
    doubled.min(CLAIM_RETRY_MAX)
}

/// Why the daemon could not start (or had to stop).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Something outside the daemon is in the way and retrying will not help: another
    /// daemon owns the state_dir, a folder it must write is not writable. Exit status 2.
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Startup(String),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: PathBuf, env: Env) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    let signals = Signals::install()?;
    let Loaded { config, warnings } = Config::load(&config_path, &env)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let client = scalingo_client(&config)?;
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        setup_error(
            "cannot create state_dir",
            &config.state_dir,
            &e,
            "state_dir",
        )
    })?;
    let state_lock = crate::lock::StateLock::acquire(&config.state_dir).map_err(|e| match e {
        crate::lock::LockError::Held { .. } => DaemonError::Setup(e.to_string()),
        crate::lock::LockError::Io { path, source } => {
            setup_error("cannot write in state_dir", &path, &source, "state_dir")
        }
    })?;
    let live = Arc::new(crate::live::Board::published(&config.state_dir));
    let spool = Spool::open(config.state_dir.join("spool")).map_err(|e| match e {
        crate::queue::spool::SpoolError::Io { path, source, .. } => {
            setup_error("cannot create the spool", &path, &source, "state_dir")
        }
        other => DaemonError::Startup(other.to_string()),
    })?;
    for restored in spool
        .clean_partial()
        .map_err(|e| DaemonError::Startup(e.to_string()))?
    {
        tracing::warn!(
            file = %restored.display(),
            "a file claimed when the daemon stopped was put back in its drop folder"
        );
    }
    check_apps(&config, &spool)?;
    recover_releases(&config).await;

    let (trigger, shutdown) = shutdown::channel();
    let metrics = Metrics::new();
    for app in &config.apps {
        metrics.register_app(&app.name);
    }
    let metrics_server = match config.metrics_listen {
        Some(addr) => {
            let (bound, task) = crate::metrics::serve(addr, metrics.clone(), trigger.subscribe())
                .await
                .map_err(|e| DaemonError::Startup(e.to_string()))?;
            tracing::info!(address = %bound, "serving /metrics and /healthz");
            Some(task)
        }
        None => None,
    };
    let hooks = Arc::new(Hooks::new().map_err(|e| DaemonError::Startup(e.to_string()))?);
    let after = Arc::new(AfterOutcome {
        metrics: metrics.clone(),
        hooks: hooks.clone(),
        config: std::sync::RwLock::new(config.clone()),
    });
    let outcomes = Arc::new(Outcomes::new(&config.state_dir, spool.clone()));
    let board = Arc::new(StatusBoard {
        inner: Arc::new(MetricsObserver::new(metrics.clone(), Arc::new(LogObserver))),
        notifier: notifier.clone(),
        metrics: metrics.clone(),
        apps: std::sync::atomic::AtomicUsize::new(config.apps.len()),
        active: std::sync::Mutex::new(std::collections::BTreeMap::new()),
    });
    let wiring = crate::deploy::Wiring {
        client,
        spool: spool.clone(),
        observer: board.clone(),
        shutdown: shutdown.clone(),
    };
    let ctx = LaneContext::new(
        spool.clone(),
        board.clone(),
        Arc::new(OutcomeFinisher {
            outcomes: outcomes.clone(),
            after: after.clone(),
            state_dir: config.state_dir.clone(),
        }),
        config.max_parallel,
        shutdown,
    );
    let (ready_tx, ready_rx) = mpsc::channel(1024);
    let mut daemon = Daemon {
        config_path,
        env,
        config,
        spool,
        wiring,
        outcomes,
        lanes: Lanes::new(ctx),
        watchers: HashMap::new(),
        trees: HashMap::new(),
        ready_tx,
        after,
        metrics_server,
        notifier,
        board,
        live,
        claim_retries: HashMap::new(),
        _state_lock: state_lock,
    };
    for app in daemon.config.apps.clone() {
        daemon.start_lane(&app);
    }
    daemon.recover().await;
    for app in daemon.config.apps.clone() {
        daemon
            .start_watcher(&app)
            .map_err(|e| DaemonError::Startup(e.to_string()))?;
    }
    tracing::info!(
        apps = daemon.config.apps.len(),
        state_dir = %daemon.config.state_dir.display(),
        "dropdeploy is running"
    );
    daemon.notifier.ready();
    daemon.board.publish();
    daemon.serve(ready_rx, trigger, signals).await
}

/// The signals the daemon handles, taken over before it says it is ready (a signal that came
/// earlier would otherwise kill it with the default action).
struct Signals {
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
    sighup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, DaemonError> {
        let sig = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| DaemonError::Startup(format!("cannot handle {name}: {e}")))
        };
        Ok(Signals {
            sigterm: sig(SignalKind::terminate(), "SIGTERM")?,
            sigint: sig(SignalKind::interrupt(), "SIGINT")?,
            sighup: sig(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// What follows every recorded outcome: the metrics, and the app's `on_outcome` hook.
/// Hooks are delivered at least once: a crash after the hook but before the job leaves the
/// spool runs it again at the next start.
struct AfterOutcome {
    metrics: Arc<Metrics>,
    hooks: Arc<Hooks>,
    /// The configuration in force (a reload replaces it), for the hooks.
    config: std::sync::RwLock<Config>,
}

impl AfterOutcome {
    fn done(&self, entry: &HistoryEntry) {
        self.metrics.record_outcome(entry);
        if let Ok(config) = self.config.read()
            && let Some(hook) = hook_for(&config, &entry.app)
        {
            self.hooks.notify(hook, entry);
        }
    }
}

struct OutcomeFinisher {
    outcomes: Arc<Outcomes>,
    after: Arc<AfterOutcome>,
    state_dir: PathBuf,
}

/// A watched tree's deployed digest is written before its job leaves the spool, so that no
/// crash between the two makes the same tree deploy again.
fn remember_tree(state_dir: &std::path::Path, job: &Job) {
    if let Err(e) = redeploy::remember_success(state_dir, job) {
        tracing::warn!(app = %job.app, job = %job.id, "cannot remember the deployed tree's digest: {e}");
    }
}

impl Finisher for OutcomeFinisher {
    fn finish(&self, job: &Job, keep_done: usize) {
        remember_tree(&self.state_dir, job);
        match self.outcomes.record(job, keep_done) {
            Ok(entry) => self.after.done(&entry),
            Err(e) => tracing::error!(
                app = %job.app,
                job = %job.id,
                "cannot record the outcome; the job stays in the spool and is recorded at the next start: {e}"
            ),
        }
    }
}

struct Daemon {
    config_path: PathBuf,
    env: Env,
    config: Config,
    spool: Spool,
    /// What every app's target is built with (a reload may change the client).
    wiring: crate::deploy::Wiring,
    outcomes: Arc<Outcomes>,
    lanes: Lanes,
    watchers: HashMap<String, (DropFolderConfig, DropWatcher)>,
    /// Watched source directories: the settings they started with, and their own stop.
    trees: HashMap<String, (TreeConfig, ShutdownTrigger)>,
    ready_tx: mpsc::Sender<ReadyFile>,
    after: Arc<AfterOutcome>,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    notifier: Notifier,
    board: Arc<StatusBoard>,
    /// What the daemon waits on, for `status`.
    live: Arc<crate::live::Board>,
    /// Drop files whose claim failed for an I/O reason, by path: tried again on a timer.
    claim_retries: HashMap<PathBuf, ClaimRetry>,
    /// Held while the daemon runs: one daemon per state_dir.
    _state_lock: crate::lock::StateLock,
}

/// Keeps what each app is doing, for systemd's STATUS= line ("2 apps; deploying my-app
/// (building); 1 pending"), and passes every event on to the log and the metrics.
struct StatusBoard {
    inner: Arc<dyn Observer>,
    notifier: Notifier,
    metrics: Arc<Metrics>,
    apps: std::sync::atomic::AtomicUsize,
    active: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl StatusBoard {
    fn publish(&self) {
        if !self.notifier.enabled() {
            return;
        }
        let active: Vec<(String, String)> = self
            .active
            .lock()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        self.notifier.status(&status_line(
            self.apps.load(std::sync::atomic::Ordering::Relaxed),
            &active,
            self.metrics.pending_total(),
        ));
    }
}

impl Observer for StatusBoard {
    fn lane(&self, app: &str, in_flight: usize, pending: usize) {
        self.inner.lane(app, in_flight, pending);
    }

    fn event(&self, job: &Job, event: &Event<'_>) {
        self.inner.event(job, event);
        let doing = match event {
            Event::Step(step) => Some(step.to_string()),
            Event::Status { status } => Some((*status).to_string()),
            Event::Finished => None,
            _ => return,
        };
        if let Ok(mut active) = self.active.lock() {
            match doing {
                Some(d) => active.insert(job.app.clone(), d),
                None => active.remove(&job.app),
            };
        }
        self.publish();
    }
}

/// Whether an I/O error means "not allowed to write there" (permissions or a read-only
/// mount): retrying will not help, so it is a configuration problem, not a crash.
fn access_problem(e: &std::io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::ACCESS.raw_os_error() => Some("permission denied"),
        Some(code) if code == rustix::io::Errno::PERM.raw_os_error() => {
            Some("operation not permitted")
        }
        Some(code) if code == rustix::io::Errno::ROFS.raw_os_error() => Some("read-only mount"),
        _ => None,
    }
}

/// The error for a path the daemon cannot use: a configuration error (exit status 2) naming
/// the path, who the daemon runs as, the folder's owner and mode, and what to change, when it
/// is a permission or mount problem; else a start-up failure.
fn setup_error(action: &str, path: &std::path::Path, e: &std::io::Error, key: &str) -> DaemonError {
    let Some(problem) = access_problem(e) else {
        return DaemonError::Startup(format!("{action} {}: {e}", path.display()));
    };
    // The nearest existing folder is the one whose permissions matter.
    let folder = path
        .ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(path)
        .to_path_buf();
    let owner = std::fs::metadata(&folder)
        .map(|m| {
            use std::os::unix::fs::PermissionsExt;
            format!(
                "; {} is owned by uid {} gid {} with mode {:o}",
                folder.display(),
                m.uid(),
                m.gid(),
                m.permissions().mode() & 0o7777
            )
        })
        .unwrap_or_default();
    let me = format!(
        "the daemon runs as uid {} gid {}",
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    let fix = if problem == "read-only mount" {
        format!(
            "the folder is on a read-only mount: under systemd, list it in ReadWritePaths= \
             (ProtectSystem=strict makes the rest read-only), or set {key} to a writable place"
        )
    } else {
        format!(
            "give that user write access (chown or chmod {}), or set {key} to a folder it can \
             write",
            folder.display()
        )
    };
    DaemonError::Setup(format!(
        "{action} {}: {problem} ({me}{owner}): {fix}",
        path.display()
    ))
}

/// Checks what the daemon needs of each app before it takes any work.
fn check_apps(config: &Config, spool: &Spool) -> Result<(), DaemonError> {
    let spool_dev = std::fs::metadata(spool.dir())
        .map_err(|e| DaemonError::Startup(format!("cannot read {}: {e}", spool.dir().display())))?
        .dev();
    for app in &config.apps {
        if let Some(dir) = &app.drop_dir {
            crate::source::drop::prepare(dir).map_err(|e| {
                use crate::source::drop::DropError;
                let action = format!("app {}: cannot use drop folder", app.name);
                match &e {
                    DropError::Create { dir, source } | DropError::Read { dir, source } => {
                        setup_error(&action, dir, source, "drop_dir")
                    }
                    DropError::CreateSubfolder { path, source, .. } => {
                        setup_error(&action, path, source, "drop_dir")
                    }
                    _ => DaemonError::Startup(format!("app {}: {e}", app.name)),
                }
            })?;
            let dev = std::fs::metadata(dir)
                .map_err(|e| {
                    DaemonError::Startup(format!(
                        "app {}: cannot read drop folder {}: {e}",
                        app.name,
                        dir.display()
                    ))
                })?
                .dev();
            if dev != spool_dev {
                return Err(DaemonError::Startup(format!(
                    "app {}: drop folder {} is on another filesystem than the spool {}; files are \
                     claimed by renaming them, so put state_dir on the same filesystem as the \
                     drop folders",
                    app.name,
                    dir.display(),
                    spool.dir().display()
                )));
            }
            // Same device is not enough: two mount points of one filesystem (bind mounts, or
            // systemd's ReadWritePaths=) still refuse a rename between them. Try one.
            probe_rename(dir, spool.dir()).map_err(|(place, e)| {
                if access_problem(&e).is_some() {
                    let (action, key) = match place {
                        Probe::DropFolder => (
                            format!("app {}: cannot write in drop folder", app.name),
                            "drop_dir",
                        ),
                        Probe::Spool => (
                            format!("app {}: cannot move a file into the spool", app.name),
                            "state_dir",
                        ),
                    };
                    let path = match place {
                        Probe::DropFolder => dir.as_path(),
                        Probe::Spool => spool.dir(),
                    };
                    return setup_error(&action, path, &e, key);
                }
                DaemonError::Startup(format!(
                    "app {}: a file cannot be renamed from the drop folder {} into the spool {} \
                     ({e}); files are claimed by renaming them, so put state_dir where a rename \
                     from the drop folders works (the same filesystem and mount point, e.g. \
                     state_dir = \"{}\")",
                    app.name,
                    dir.display(),
                    spool.dir().display(),
                    dir.parent().unwrap_or(dir).join(".dropdeploy").display()
                ))
            })?;
        }
    }
    Ok(())
}

/// Which side of the probe failed.
#[derive(Debug, Clone, Copy)]
enum Probe {
    DropFolder,
    Spool,
}

/// Renames a small dot-file (ignored by the watcher) from `from` into `to` and removes it.
fn probe_rename(
    from: &std::path::Path,
    to: &std::path::Path,
) -> Result<(), (Probe, std::io::Error)> {
    let name = format!(".dropdeploy-probe-{:08x}", fastrand::u32(..));
    let src = from.join(&name);
    let dst = to.join(&name);
    std::fs::write(&src, b"").map_err(|e| (Probe::DropFolder, e))?;
    let moved = std::fs::rename(&src, &dst).map_err(|e| (Probe::Spool, e));
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_file(&dst);
    moved
}

/// The Scalingo client, when an app deploys there (which then needs the token).
fn scalingo_client(config: &Config) -> Result<Option<Arc<ScalingoClient>>, DaemonError> {
    if !config
        .apps
        .iter()
        .any(|a| a.target == TargetConfig::Scalingo)
    {
        return Ok(None);
    }
    let token = config.scalingo.require_token()?.clone();
    ScalingoClient::new(&config.scalingo, token)
        .map(|c| Some(Arc::new(c)))
        .map_err(|e| DaemonError::Startup(e.to_string()))
}

/// Removes half-extracted releases of local-target apps left by a process that died.
async fn recover_releases(config: &Config) {
    for app in &config.apps {
        if let TargetConfig::Local(local) = &app.target {
            let target = LocalTarget::new(local);
            let name = app.name.clone();
            match tokio::task::spawn_blocking(move || target.recover(&name)).await {
                Ok(Ok(removed)) => {
                    for path in removed {
                        tracing::warn!(app = %app.name, path = %path.display(), "removed a half-made release");
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(app = %app.name, "cannot clean the releases: {}", e.reason)
                }
                Err(e) => tracing::error!(app = %app.name, "cannot clean the releases: {e}"),
            }
        }
    }
}

/// An app's lane settings, with its target built by the one factory.
fn lane_settings(config: &Config, app: &AppConfig, wiring: &crate::deploy::Wiring) -> LaneSettings {
    let pacing = crate::deploy::Pacing {
        retry: RetryConfig {
            budget: app.retry_budget.unwrap_or(config.retry.budget),
            ..config.retry.clone()
        },
        follow_interval: app
            .follow_interval
            .unwrap_or(config.scalingo.follow_interval),
        deploy_timeout: app.deploy_timeout.unwrap_or(config.scalingo.deploy_timeout),
    };
    LaneSettings {
        policy: app.queue,
        keep_done: app.keep_done,
        target: crate::deploy::build(&app.target, &pacing, wiring),
    }
}

impl Daemon {
    fn start_lane(&mut self, app: &AppConfig) {
        self.lanes
            .ensure(&app.name, lane_settings(&self.config, app, &self.wiring));
    }

    fn tree_config(&self, app: &AppConfig, root: &std::path::Path) -> TreeConfig {
        TreeConfig {
            app: app.name.clone(),
            root: root.to_path_buf(),
            ignore: app.ignore.clone(),
            include: app.include.clone(),
            // The daemon's own files never trigger a deploy nor get packed.
            always_ignore: vec![self.config.state_dir.clone()],
            quiet: app.quiet,
            max_wait: app.max_wait,
            poll: app.poll,
            // A service waits for a lost source directory for ever, visibly (`status`).
            give_up: None,
        }
    }

    /// Starts watching an app's source directory, and its redeploy loop.
    fn start_tree(&mut self, app: &AppConfig, root: &std::path::Path) -> Result<(), String> {
        let cfg = self.tree_config(app, root);
        let watcher = TreeWatcher::start(cfg.clone()).map_err(|e| e.to_string())?;
        watcher.publish_gaps(self.live.clone());
        let Some(lane) = self.lanes.sender(&app.name) else {
            return Err(format!("app {}: no lane", app.name));
        };
        // The loop stops with the daemon, or alone when its app is removed or changed.
        let (trigger, stop) = shutdown::channel();
        let redeploy_cfg = RedeployConfig {
            app: app.name.clone(),
            label: app.ref_label().to_string(),
            prefix: app.name.clone(),
            limits: Limits {
                max_uncompressed: self.config.max_archive_bytes,
            },
            deploy_on_start: app.deploy_on_start,
            state_dir: self.config.state_dir.clone(),
        };
        let spool = self.spool.clone();
        let name = app.name.clone();
        tracing::info!(
            app = %app.name,
            source_dir = %root.display(),
            watches = watcher.watch_count(),
            "watching source directory"
        );
        let deploy = move |job: Job| {
            let lane = lane.clone();
            async move {
                let done = lane.submit_watched(job)?;
                done.await.ok()
            }
        };
        tokio::spawn(async move {
            redeploy::run(redeploy_cfg, watcher, spool, deploy, stop, |event| {
                log_tree_event(&name, event)
            })
            .await;
        });
        self.trees.insert(app.name.clone(), (cfg, trigger));
        Ok(())
    }

    fn start_watcher(&mut self, app: &AppConfig) -> Result<(), String> {
        if let Some(root) = &app.source_dir {
            return self.start_tree(app, &root.clone());
        }
        let Some(dir) = &app.drop_dir else {
            return Ok(());
        };
        let cfg = DropFolderConfig {
            app: app.name.clone(),
            dir: dir.clone(),
            settle: app.settle,
        };
        let watcher =
            DropWatcher::start_with_board(cfg.clone(), self.ready_tx.clone(), self.live.clone())
                .map_err(|e| e.to_string())?;
        tracing::info!(app = %app.name, drop_dir = %dir.display(), "watching drop folder");
        self.watchers.insert(app.name.clone(), (cfg, watcher));
        Ok(())
    }

    /// Hands every unfinished job of a configured app to its lane, oldest first, and records
    /// the outcome of finished jobs whose outcome was not recorded yet.
    async fn recover(&mut self) {
        let spool = self.spool.clone();
        let jobs = match tokio::task::spawn_blocking(move || spool.jobs()).await {
            Ok(Ok(jobs)) => jobs,
            Ok(Err(e)) => {
                tracing::error!("cannot list the spool: {e}");
                return;
            }
            Err(e) => {
                tracing::error!("cannot list the spool: {e}");
                return;
            }
        };
        for job in jobs {
            let job = match job {
                Ok(job) => job,
                Err(e) => {
                    tracing::error!("{e}; left in place");
                    continue;
                }
            };
            if self.lanes.knows(&job.id) {
                continue;
            }
            if job.state.is_finished() {
                let keep = self
                    .config
                    .app(&job.app)
                    .map(|a| a.keep_done)
                    .unwrap_or(DEFAULT_KEEP_DONE);
                let outcomes = self.outcomes.clone();
                let id = job.id.clone();
                let state_dir = self.config.state_dir.clone();
                let done = tokio::task::spawn_blocking(move || {
                    remember_tree(&state_dir, &job);
                    outcomes.record(&job, keep)
                })
                .await;
                match done {
                    Ok(Ok(entry)) => self.after.done(&entry),
                    Ok(Err(e)) => tracing::error!(job = %id, "cannot record the outcome: {e}"),
                    Err(e) => tracing::error!(job = %id, "cannot record the outcome: {e}"),
                }
                continue;
            }
            // A watched tree's loop resumes its own jobs before it packs anything, so that the
            // same content is never in flight twice.
            if redeploy::tree_digest_of(&job).is_some()
                && self
                    .config
                    .app(&job.app)
                    .is_some_and(|a| a.source_dir.is_some())
            {
                continue;
            }
            tracing::info!(app = %job.app, job = %job.id, state = job.state.name(), "recovering job");
            if let Err(job) = self.lanes.submit(job) {
                tracing::warn!(
                    app = %job.app,
                    job = %job.id,
                    state = job.state.name(),
                    "job for an app that is not configured; left in the spool until the app is configured again"
                );
            }
        }
    }

    async fn serve(
        mut self,
        mut ready_rx: mpsc::Receiver<ReadyFile>,
        trigger: ShutdownTrigger,
        signals: Signals,
    ) -> Result<(), DaemonError> {
        let Signals {
            mut sigterm,
            mut sigint,
            mut sighup,
        } = signals;
        // The watchdog is pinged from this loop, which claims all new work: if it stalls,
        // the pings stop and systemd restarts the daemon.
        let mut watchdog = WatchdogTimer::new(&self.notifier);
        let reason = loop {
            tokio::select! {
                Some(ready) = ready_rx.recv() => self.claim(ready).await,
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
                _ = sighup.recv() => {
                    self.notifier.reloading();
                    self.reload().await;
                    self.notifier.reloaded();
                    self.board.apps.store(self.config.apps.len(), std::sync::atomic::Ordering::Relaxed);
                    self.board.publish();
                }
                _ = watchdog.tick() => self.notifier.watchdog(),
            }
        };
        self.notifier.stopping();
        let grace = self.config.shutdown_grace;
        tracing::info!(
            signal = reason,
            grace_ms = grace.as_millis() as u64,
            "stopping: no new claims; jobs in flight stop at their next persisted state"
        );
        for (_, (_, watcher)) in self.watchers.drain() {
            watcher.stop();
        }
        for (_, (_, tree)) in self.trees.drain() {
            tree.fire();
        }
        trigger.fire();
        let deadline = tokio::time::Instant::now() + grace;
        match tokio::time::timeout_at(deadline, self.lanes.join()).await {
            Ok(()) => {}
            Err(_) => tracing::warn!(
                "grace period over: steps still in flight were abandoned; their jobs resume at the next start"
            ),
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !self.after.hooks.drain(left).await {
            tracing::warn!("outcome hooks still running at exit were abandoned");
        }
        if let Some(server) = self.metrics_server.take() {
            server.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Claims a ready file: moves it into the spool, checks it, and hands the job to its lane;
    /// a bad archive goes to `failed/` with its reason.
    async fn claim(&mut self, ready: ReadyFile) {
        let Some(app) = self.config.app(&ready.app).cloned() else {
            self.claim_settled(&ready);
            return;
        };
        let spool = self.spool.clone();
        let limits = Limits {
            max_uncompressed: self.config.max_archive_bytes,
        };
        let path = ready.path.clone();
        let label = app.ref_label().to_string();
        let name = app.name.clone();
        let made = tokio::task::spawn_blocking(move || {
            enqueue_archive(&spool, &name, &path, Transfer::Move, &label, None, &limits)
        })
        .await;
        match made {
            Ok(Ok(job)) => {
                self.claim_settled(&ready);
                tracing::info!(
                    app = %app.name,
                    job = %job.id,
                    file = %ready.path.display(),
                    git_ref = %job.git_ref,
                    readiness = ?ready.readiness,
                    "claimed"
                );
                if let Err(job) = self.lanes.submit(job) {
                    tracing::error!(app = %job.app, job = %job.id, "no lane for the app; the job stays in the spool");
                }
            }
            Ok(Err(IntakeError::Rejected {
                file,
                rejection,
                kept: Some(kept),
            })) => {
                self.claim_settled(&ready);
                let outcomes = self.outcomes.clone();
                let app_name = app.name.clone();
                let shown = file.display().to_string();
                let done = tokio::task::spawn_blocking(move || {
                    outcomes.record_rejected(&app_name, &file, &kept, &rejection)
                })
                .await;
                match done {
                    Ok(Ok(entry)) => self.after.done(&entry),
                    Ok(Err(e)) => {
                        tracing::error!(app = %app.name, file = %shown, "cannot move the refused archive to failed/: {e}")
                    }
                    Err(e) => tracing::error!(app = %app.name, file = %shown, "{e}"),
                }
            }
            Ok(Err(IntakeError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(&ready.path)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
            {
                tracing::debug!(app = %app.name, file = %ready.path.display(), "the file left the drop folder before its claim");
                self.claim_settled(&ready);
            }
            // Nothing is lost (the file is still in the drop folder) but nothing may stay stuck.
            Ok(Err(IntakeError::Spool(crate::queue::spool::SpoolError::Io {
                action,
                source,
                ..
            }))) => {
                // The path is a fresh job directory each try: the cause names the spool instead,
                // so that it stays the same while the reason does.
                let cause = format!("{action} in {}: {source}", self.spool.dir().display());
                self.claim_failed(&ready, cause);
            }
            Ok(Err(e)) => self.claim_failed(&ready, e.to_string()),
            Err(e) => self.claim_failed(&ready, format!("the claim crashed: {e}")),
        }
    }

    /// A claim failed for an I/O reason: shows it on the live board, logs it once per cause,
    /// and asks the watcher to check the file again (and send it once complete) after a backoff.
    fn claim_failed(&mut self, ready: &ReadyFile, cause: String) {
        let now = tokio::time::Instant::now();
        // An entry that stopped failing long ago is of a file that left the folder meanwhile.
        self.claim_retries
            .retain(|_, r| now.duration_since(r.last) < CLAIM_RETRY_MAX * 3);
        let tries = self.claim_retries.get(&ready.path).map_or(0, |r| r.tries) + 1;
        let delay = claim_backoff(tries);
        let subject = ready.path.display().to_string();
        let retry_at = crate::queue::spool::now() + delay.as_secs();
        let new_cause = self.live.wait(
            &ready.app,
            crate::live::WaitKind::Claim,
            &subject,
            &cause,
            Some(retry_at),
        );
        if new_cause {
            tracing::warn!(
                app = %ready.app,
                file = %subject,
                "cannot claim: {cause}; the file stays in the drop folder and the claim is tried \
                 again in {}s, backing off to every {}s until it succeeds",
                delay.as_secs(),
                CLAIM_RETRY_MAX.as_secs()
            );
        } else {
            tracing::debug!(app = %ready.app, file = %subject, tries, "cannot claim yet: {cause}");
        }
        let Some((_, watcher)) = self.watchers.get(&ready.app) else {
            return;
        };
        let recheck = watcher.rechecker();
        let path = ready.path.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            recheck.file(path);
        });
        let retry = ClaimRetry {
            tries,
            last: now,
            timer,
        };
        if let Some(old) = self.claim_retries.insert(ready.path.clone(), retry) {
            old.timer.abort();
        }
    }

    /// The claim of a file ended (claimed, refused, gone): its retry and its wait end too.
    fn claim_settled(&mut self, ready: &ReadyFile) {
        let subject = ready.path.display().to_string();
        if let Some(retry) = self.claim_retries.remove(&ready.path) {
            retry.timer.abort();
            tracing::info!(app = %ready.app, file = %subject, failed_tries = retry.tries, "the claim no longer waits");
        }
        self.live
            .clear(&ready.app, crate::live::WaitKind::Claim, &subject);
    }

    /// Re-reads the configuration. A configuration with errors is refused whole; otherwise
    /// removed apps stop after their job in flight, added apps start, changed apps take their
    /// new settings.
    async fn reload(&mut self) {
        tracing::info!(config = %self.config_path.display(), "reloading the configuration (SIGHUP)");
        let loaded = match Config::load(&self.config_path, &self.env) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("reload refused, the running configuration is kept:\n{e}");
                return;
            }
        };
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let new = loaded.config;
        if let Err(e) = check_apps(&new, &self.spool) {
            tracing::error!("reload refused, the running configuration is kept: {e}");
            return;
        }
        match scalingo_client(&new) {
            Ok(client) => self.wiring.client = client,
            Err(e) => {
                tracing::error!("reload refused, the running configuration is kept: {e}");
                return;
            }
        }
        for app in &new.apps {
            self.after.metrics.register_app(&app.name);
        }
        if new.metrics_listen != self.config.metrics_listen {
            tracing::warn!("metrics_listen changed: it takes effect at the next restart");
        }
        if let Ok(mut shared) = self.after.config.write() {
            *shared = new.clone();
        }
        let old = std::mem::replace(&mut self.config, new);
        for app in &old.apps {
            if self.config.app(&app.name).is_none() {
                if let Some((_, watcher)) = self.watchers.remove(&app.name) {
                    watcher.stop();
                }
                if let Some((_, tree)) = self.trees.remove(&app.name) {
                    tree.fire();
                }
                self.lanes.retire(&app.name);
                self.live.clear_app(&app.name);
                tracing::info!(app = %app.name, "app removed: it stops after its job in flight");
            }
        }
        let mut added = false;
        for app in self.config.apps.clone() {
            self.start_lane(&app);
            let unchanged = match (&app.source_dir, &app.drop_dir) {
                (Some(root), _) => {
                    let wanted = self.tree_config(&app, root);
                    self.trees
                        .get(&app.name)
                        .is_some_and(|(cfg, _)| *cfg == wanted)
                }
                (None, Some(dir)) => self
                    .watchers
                    .get(&app.name)
                    .is_some_and(|(cfg, _)| &cfg.dir == dir && cfg.settle == app.settle),
                (None, None) => true,
            };
            if unchanged {
                continue;
            }
            let old_drop = self.watchers.remove(&app.name);
            let old_tree = self.trees.remove(&app.name);
            if old_drop.is_none() && old_tree.is_none() {
                added = true;
                tracing::info!(app = %app.name, "app added");
            }
            if let Some((_, watcher)) = old_drop {
                watcher.stop();
            }
            if let Some((_, tree)) = old_tree {
                tree.fire();
            }
            if let Err(e) = self.start_watcher(&app) {
                tracing::error!(app = %app.name, "cannot watch: {e}");
            }
        }
        if added {
            self.recover().await;
        }
        tracing::info!(apps = self.config.apps.len(), "configuration reloaded");
    }
}

/// One log line per step of a watched directory's redeploy loop.
fn log_tree_event(app: &str, event: &TreeEvent<'_>) {
    match event {
        TreeEvent::Changed(burst) => tracing::info!(
            app,
            changed = burst.changed_paths,
            overflow = burst.overflow,
            "source directory changed"
        ),
        TreeEvent::Unchanged => {
            tracing::info!(
                app,
                "unchanged: the tree is the one last deployed; nothing to do"
            )
        }
        TreeEvent::Packing => tracing::debug!(app, "packing"),
        TreeEvent::Packed { job, elapsed } => tracing::info!(
            app,
            job = %job.id,
            git_ref = %job.git_ref,
            elapsed_ms = elapsed.as_millis() as u64,
            "packed"
        ),
        TreeEvent::PackFailed { error } => tracing::warn!(
            app,
            "cannot pack the source directory: {error}; waiting for the next change"
        ),
        TreeEvent::Finished { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_claim_backs_off_from_one_second_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| claim_backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(claim_backoff(u32::MAX), CLAIM_RETRY_MAX);
    }
}
