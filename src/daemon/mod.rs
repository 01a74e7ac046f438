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

mod apps;
mod claims;
mod fleet;
mod fleet_place;
mod intake;
mod intake_tls;
mod leftovers;
mod observe;
mod page;
mod pipeline;
mod preflight;
mod publish;
mod startup;

pub use pipeline::{OneShot, OneShotParts, Overrides};
pub use preflight::check_environment;

use claims::ClaimRetry;
use observe::{AfterOutcome, OutcomeFinisher, StatusBoard, remember_tree};
use pipeline::{Parts, Pipeline};
use startup::{check_apps, scalingo_client};

/// `done/` retention for a job whose app is no longer configured.
const DEFAULT_KEEP_DONE: usize = 20;
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

/// What the daemon is told from outside: stop (with the reason shown in the log, such as the
/// signal's name) and reload. The binary turns signals into these at its edge
/// ([`crate::cli`]); tests send them directly, running the real daemon in-process.
pub struct Control {
    stop: mpsc::UnboundedReceiver<&'static str>,
    reload: mpsc::UnboundedReceiver<()>,
}

/// The sending side of a [`Control`]. Dropping it stops the daemon.
#[derive(Clone)]
pub struct ControlHandle {
    stop: mpsc::UnboundedSender<&'static str>,
    reload: mpsc::UnboundedSender<()>,
}

impl ControlHandle {
    /// Stop: no new claims, jobs in flight stop at their next recorded state.
    pub fn stop(&self, reason: &'static str) {
        let _ = self.stop.send(reason);
    }

    /// Read the configuration again.
    pub fn reload(&self) {
        let _ = self.reload.send(());
    }
}

/// A control channel for [`run`].
pub fn control() -> (ControlHandle, Control) {
    let (stop_tx, stop) = mpsc::unbounded_channel();
    let (reload_tx, reload) = mpsc::unbounded_channel();
    (
        ControlHandle {
            stop: stop_tx,
            reload: reload_tx,
        },
        Control { stop, reload },
    )
}

/// Runs the daemon until `control` says stop (or its handle is dropped). The one place where
/// the pipeline is put together: source → spool → lanes → targets → outcomes.
pub async fn run(config_path: PathBuf, env: Env, control: Control) -> Result<(), DaemonError> {
    let Loaded { config, warnings } = Config::load(&config_path, &env)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // What `config check` finds, refused here with the same words (exit status 2).
    let problems = check_environment(&config);
    if let Some(first) = problems.first() {
        return Err(DaemonError::Setup(match problems.len() {
            1 => first.clone(),
            n => format!(
                "{first} (and {} more: `dropdeploy config check` lists them)",
                n - 1
            ),
        }));
    }
    let client = scalingo_client(&config)?;
    let mut state = startup::open_state(&config).await?;
    let mut control = control;
    let opened = match &config.cluster {
        Some(cluster) => {
            let notifier = Notifier::from_env();
            match fleet::connect(cluster, &mut control.stop, &notifier).await? {
                Some(opened) => Some(opened),
                None => return Ok(()),
            }
        }
        None => None,
    };
    if let Some(opened) = &opened {
        state.spool = state.spool.clone().with_store(opened.store.clone());
    }
    if let (Some(client), Some(cluster), Some(_)) = (&client, &config.cluster, &opened) {
        fleet::share_budget(client, cluster).await?;
    }
    if let Some(client) = &client {
        client.budget().publish_to(state.live.clone());
    }
    startup::check_regions(client.as_ref(), &config).await?;
    let (trigger, shutdown) = shutdown::channel();
    let (ready_tx, ready_rx) = mpsc::channel(1024);
    let mut daemon = Daemon::assemble(
        config_path,
        env,
        config,
        client,
        state,
        &trigger,
        shutdown,
        ready_tx,
    )
    .await?;
    if opened.is_some() {
        daemon.pipeline.lanes.gate();
    }
    for app in daemon.config.apps.clone() {
        daemon.start_lane(&app);
    }
    match opened {
        // Fleet mode: the store decides which jobs this node drives, not its spool.
        Some(opened) => {
            let store = opened.store.clone();
            daemon.start_keeper(opened);
            daemon.start_fleet(store).await;
        }
        None => daemon.recover().await,
    }
    daemon.deliver_left_hooks().await;
    for app in daemon.config.apps.clone() {
        daemon
            .start_watcher(&app)
            .map_err(|e| DaemonError::Setup(format!("app {}: {e}", app.name)))?;
    }
    tracing::info!(
        apps = daemon.config.apps.len(),
        state_dir = %daemon.config.state_dir.display(),
        "dropdeploy is running"
    );
    daemon.notifier.ready();
    daemon.board.publish();
    daemon.serve(ready_rx, trigger, control).await
}

struct Daemon {
    config_path: PathBuf,
    env: Env,
    config: Config,
    /// Spool, lanes, targets, outcomes.
    pipeline: Pipeline,
    watchers: HashMap<String, (DropFolderConfig, DropWatcher)>,
    /// Watched source directories: the settings they started with, and their own stop.
    trees: HashMap<String, (TreeConfig, ShutdownTrigger)>,
    ready_tx: mpsc::Sender<ReadyFile>,
    metrics_server: Option<tokio::task::JoinHandle<()>>,
    notifier: Notifier,
    board: Arc<StatusBoard>,
    /// What the daemon waits on, for `status`.
    live: Arc<crate::live::Board>,
    /// Drop files whose claim failed for an I/O reason, by path: tried again on a timer.
    claim_retries: HashMap<PathBuf, ClaimRetry>,
    /// The status page on the metrics listener, if there is one.
    page: Option<Arc<crate::page::Page>>,
    /// The actions the page asks for.
    page_actions: Option<mpsc::Receiver<crate::page::ActionRequest>>,
    /// The HTTP intake (`[intake] listen`), its server, and the jobs it makes.
    intake: Option<Arc<intake::Intake>>,
    intake_server: Option<tokio::task::JoinHandle<()>>,
    intake_jobs: Option<mpsc::Receiver<Job>>,
    /// Fleet mode: the lease keeper and the fleet's store.
    fleet: Option<fleet::Fleet>,
    /// Fleet mode: hands the jobs made here to the fleet's store (`publish.rs`).
    publisher: Option<Arc<publish::Publisher>>,
    /// Held while the daemon runs: one daemon per state_dir.
    _state_lock: crate::lock::StateLock,
}

impl Daemon {
    /// Wires the parts: metrics (and their server), hooks, outcomes, the status board, the
    /// targets' wiring and the lanes.
    #[allow(clippy::too_many_arguments)]
    async fn assemble(
        config_path: PathBuf,
        env: Env,
        config: Config,
        client: Option<Arc<ScalingoClient>>,
        state: startup::State,
        trigger: &ShutdownTrigger,
        shutdown: shutdown::Shutdown,
        ready_tx: mpsc::Sender<ReadyFile>,
    ) -> Result<Daemon, DaemonError> {
        let notifier = Notifier::from_env();
        let metrics = Metrics::new();
        for app in &config.apps {
            metrics.register_app(&app.name);
        }
        let feed = Arc::new(crate::page::Feed::new());
        let wired = page::wire(
            &config,
            &env,
            client.as_ref(),
            &state,
            feed.clone(),
            trigger.subscribe(),
        )
        .await?;
        let (page, page_actions) = match wired {
            Some(w) => (Some(w.page), Some(w.actions)),
            None => (None, None),
        };
        let metrics_server = match config.metrics_listen {
            Some(addr) => {
                let routes = page.clone().map(crate::page::routes).unwrap_or_default();
                let (bound, task) =
                    crate::metrics::serve_with(addr, metrics.clone(), routes, trigger.subscribe())
                        .await
                        .map_err(|e| DaemonError::Setup(e.to_string()))?;
                tracing::info!(address = %bound, "serving the status page on /, /metrics and /healthz");
                Some(task)
            }
            None => None,
        };
        let (intake, intake_server, intake_jobs) =
            wire_intake(&config, &env, &state, trigger.subscribe()).await?;
        let hooks = Arc::new(Hooks::new().map_err(|e| DaemonError::Startup(e.to_string()))?);
        let after = Arc::new(AfterOutcome::new(
            metrics.clone(),
            hooks,
            &config,
            &config.state_dir,
        ));
        let startup::State { lock, live, spool } = state;
        let board = Arc::new(StatusBoard {
            inner: Arc::new(crate::page::FeedObserver::new(
                feed,
                Arc::new(MetricsObserver::new(metrics.clone(), Arc::new(LogObserver))),
            )),
            notifier: notifier.clone(),
            metrics,
            apps: std::sync::atomic::AtomicUsize::new(config.apps.len()),
            active: std::sync::Mutex::new(std::collections::BTreeMap::new()),
        });
        let pipeline = Pipeline::new(Parts {
            state_dir: config.state_dir.clone(),
            spool,
            client,
            observer: board.clone(),
            after,
            max_parallel: config.max_parallel,
            shutdown,
            overrides: pipeline::Overrides::default(),
            board: live.clone(),
        });
        Ok(Daemon {
            config_path,
            env,
            config,
            pipeline,
            watchers: HashMap::new(),
            trees: HashMap::new(),
            ready_tx,
            metrics_server,
            notifier,
            board,
            live,
            claim_retries: HashMap::new(),
            page,
            page_actions,
            intake,
            intake_server,
            intake_jobs,
            fleet: None,
            publisher: None,
            _state_lock: lock,
        })
    }

    async fn serve(
        mut self,
        mut ready_rx: mpsc::Receiver<ReadyFile>,
        trigger: ShutdownTrigger,
        mut control: Control,
    ) -> Result<(), DaemonError> {
        // The watchdog is pinged from this loop, which claims all new work: if it stalls,
        // the pings stop and systemd restarts the daemon.
        let mut watchdog = WatchdogTimer::new(&self.notifier);
        let reason = loop {
            tokio::select! {
                Some(ready) = ready_rx.recv() => self.claim(ready).await,
                reason = control.stop.recv() => break reason.unwrap_or("the control handle was dropped"),
                Some(()) = control.reload.recv() => {
                    self.notifier.reloading();
                    self.reload().await;
                    self.notifier.reloaded();
                    self.board.apps.store(self.config.apps.len(), std::sync::atomic::Ordering::Relaxed);
                    self.board.publish();
                    self.page_reloaded();
                    if let Some(fleet) = &self.fleet {
                        fleet.set_apps(self.config.apps.iter().map(|a| a.name.clone()).collect());
                    }
                }
                Some(msg) = fleet::next(&mut self.fleet) => self.on_keeper(msg),
                Some(request) = page::next_action(&mut self.page_actions) => self.act(request).await,
                Some(job) = next_upload(&mut self.intake_jobs) => {
                    if let Err(job) = self.pipeline.lanes.submit(job) {
                        tracing::error!(app = %job.app, job = %job.id, "no lane for the app; the job stays in the spool");
                    }
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
        match tokio::time::timeout_at(deadline, self.pipeline.lanes.join()).await {
            Ok(()) => {}
            Err(_) => tracing::warn!(
                "grace period over: steps still in flight were abandoned; their jobs resume at the next start"
            ),
        }
        if let Some(fleet) = &mut self.fleet {
            fleet.release(fleet::RELEASE_WITHIN).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !self.pipeline.after.hooks.drain(left).await {
            tracing::warn!("outcome hooks still running at exit were abandoned");
        }
        if let Some(server) = self.metrics_server.take() {
            server.abort();
        }
        if let Some(server) = self.intake_server.take() {
            server.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }
}

type IntakeWiring = (
    Option<Arc<intake::Intake>>,
    Option<tokio::task::JoinHandle<()>>,
    Option<mpsc::Receiver<Job>>,
);

/// The HTTP intake, when `[intake] listen` is set: its tokens read (off the runtime), its
/// folders made, its listener bound. A failure is a setup error naming the cause.
async fn wire_intake(
    config: &Config,
    env: &Env,
    state: &startup::State,
    shutdown: shutdown::Shutdown,
) -> Result<IntakeWiring, DaemonError> {
    let Some(addr) = config.intake.listen else {
        return Ok((None, None, None));
    };
    let file = config.intake.token_file.clone();
    let from_env = env
        .get(crate::config::ENV_INTAKE_TOKEN)
        .map(crate::config::Secret::new);
    let tokens = crate::blocking::run(move || crate::page::Tokens::load(file.as_deref(), from_env))
        .await
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    if !tokens.any() {
        tracing::warn!(
            "the HTTP intake has no token ([intake] token_file, or DROPDEPLOY_INTAKE_TOKEN): it refuses every request"
        );
    }
    let dir = config.state_dir.clone();
    crate::blocking::run(move || intake::prepare(&dir))
        .await
        .map_err(|e| {
            DaemonError::Setup(format!("cannot prepare the HTTP intake's folders: {e}"))
        })?;
    let tls = match config.intake.tls.clone() {
        Some((cert, key)) => Some(
            crate::blocking::run(move || intake_tls::load(&cert, &key))
                .await
                .map_err(|e| DaemonError::Setup(e.to_string()))?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (tx, rx) = mpsc::channel(64);
    let shared = intake::Intake::new(config, tokens, state.spool.clone(), tx);
    let (bound, task) = intake::serve(addr, tls, shared.clone(), shutdown)
        .await
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    tracing::info!(address = %bound, scheme, "serving the HTTP intake on /v1/");
    Ok((Some(shared), Some(task), Some(rx)))
}

/// The next job the HTTP intake made, or never without one.
async fn next_upload(jobs: &mut Option<mpsc::Receiver<Job>>) -> Option<Job> {
    match jobs {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
