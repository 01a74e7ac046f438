//! The pipeline that every command runs: spool → lanes → targets → outcomes.
//!
//! The daemon puts its sources (drop folders, watched trees), its metrics server and systemd
//! around it; the one-shot commands (`deploy`, `watch`) put theirs ([`OneShot`]). Either way a
//! job goes through the same lane (busy policy, `max_parallel`, the job's lock), the target
//! that [`crate::deploy::build`] makes from the app's configuration (Scalingo or local
//! releases), and the same outcome recording (history, `done/`/`failed/`, hooks).

use std::time::Duration;

use tokio::sync::oneshot;

use super::*;
use crate::config::Secret;
use crate::queue::lane::LaneSender;
use crate::queue::spool::JobState;

/// How the one-shot commands' flags change the way an app's jobs are driven.
#[derive(Debug, Clone)]
pub struct Overrides {
    /// `--interval`: time between two polls of a deployment (default: the configuration's).
    pub follow_interval: Option<Duration>,
    /// `false` for `deploy --no-follow`: a job stops once its deployment is created.
    pub follow: bool,
    /// Fetch the build output as it grows (`watch` prints it).
    pub output: bool,
}

impl Default for Overrides {
    /// The daemon's way: follow every deployment to its end, no build output.
    fn default() -> Self {
        Overrides {
            follow_interval: None,
            follow: true,
            output: false,
        }
    }
}

/// Spool, lanes, targets and outcomes, wired together.
pub(super) struct Pipeline {
    pub(super) spool: Spool,
    /// What every app's target is built with (a reload may change the client).
    pub(super) wiring: crate::deploy::Wiring,
    pub(super) outcomes: Arc<Outcomes>,
    pub(super) lanes: Lanes,
    pub(super) after: Arc<AfterOutcome>,
    state_dir: PathBuf,
    overrides: Overrides,
    /// Where health checks and `needs attention` show their waits.
    board: Arc<crate::live::Board>,
}

/// What a [`Pipeline`] is made of.
pub(super) struct Parts {
    /// Where the history and watched trees' digests are kept.
    pub(super) state_dir: PathBuf,
    pub(super) spool: Spool,
    /// The Scalingo client; `None` when no app deploys there.
    pub(super) client: Option<Arc<ScalingoClient>>,
    /// Who is told every job's events (the log and metrics, or a person's terminal).
    pub(super) observer: Arc<dyn Observer>,
    /// What follows a recorded outcome (metrics, hooks).
    pub(super) after: Arc<AfterOutcome>,
    pub(super) max_parallel: usize,
    /// Stops the lanes: each job in flight stops at its next recorded state.
    pub(super) shutdown: shutdown::Shutdown,
    pub(super) overrides: Overrides,
    /// The board of waits (the daemon's, published for `status`; in memory for a command).
    pub(super) board: Arc<crate::live::Board>,
}

impl Pipeline {
    pub(super) fn new(parts: Parts) -> Pipeline {
        let Parts {
            state_dir,
            spool,
            client,
            observer,
            after,
            max_parallel,
            shutdown,
            overrides,
            board,
        } = parts;
        let outcomes = Arc::new(Outcomes::new(&state_dir, spool.clone()));
        let wiring = crate::deploy::Wiring {
            client,
            spool: spool.clone(),
            observer: observer.clone(),
            shutdown: shutdown.clone(),
        };
        let local = OutcomeFinisher {
            outcomes: outcomes.clone(),
            after: after.clone(),
            state_dir: state_dir.clone(),
        };
        // Fleet mode: the store takes each outcome first.
        let finisher: Arc<dyn Finisher> = match spool.shared_store() {
            Some(store) => Arc::new(super::fleet::FleetFinisher {
                local,
                store: store.clone(),
                spool: spool.clone(),
            }),
            None => Arc::new(local),
        };
        let ctx = LaneContext::new(crate::queue::lane::LaneParts {
            spool: spool.clone(),
            observer,
            finisher,
            max_parallel,
            shutdown,
            state_dir: state_dir.clone(),
            board: board.clone(),
        });
        Pipeline {
            spool,
            wiring,
            outcomes,
            lanes: Lanes::new(ctx),
            after,
            state_dir,
            overrides,
            board,
        }
    }

    /// Starts the app's lane, or gives it its new settings. Every app's target is wrapped
    /// with its health check ([`crate::verify::VerifiedTarget`]; none when it has no
    /// `verify`).
    pub(super) fn start_lane(&mut self, config: &Config, app: &AppConfig) {
        let mut settings = lane_settings(config, app, &self.wiring, &self.overrides);
        settings.target = settings.target.and_then(|target| {
            let wiring = self.verify_wiring()?;
            Ok(crate::verify::VerifiedTarget::wrap(
                target,
                app.verify.as_ref(),
                &wiring,
                self.app_base(app),
            ))
        });
        self.lanes.ensure(&app.name, settings);
    }

    /// The app on the platform whose URL is the base of a check given as a path (its region's
    /// client); `None` for local releases.
    fn app_base(&self, app: &AppConfig) -> Option<crate::verify::AppBase> {
        if app.target != TargetConfig::Scalingo {
            return None;
        }
        let client = self.wiring.client.as_ref()?;
        let client = match &app.region {
            Some(region) => client.in_region(region),
            None => client.clone(),
        };
        Some(crate::verify::AppBase::new(client, &app.name))
    }

    /// What an app's health check and rollback are built with.
    fn verify_wiring(&self) -> Result<crate::verify::Wiring, String> {
        Ok(crate::verify::Wiring {
            spool: self.spool.clone(),
            store: crate::verify::store::Store::new(&self.state_dir),
            observer: self.wiring.observer.clone(),
            board: self.board.clone(),
            shutdown: self.wiring.shutdown.clone(),
            http: crate::verify::Wiring::probe_client()?,
        })
    }

    /// Records the outcome of a job that finished earlier (found in the spool at start-up),
    /// then what follows it (metrics, hook).
    pub(super) async fn record_finished(&self, job: Job, keep_done: usize) {
        let outcomes = self.outcomes.clone();
        let id = job.id.clone();
        let state_dir = self.state_dir.clone();
        let after = self.after.clone();
        let done = crate::blocking::run(move || {
            remember_tree(&state_dir, &job);
            let note = after.note_for(&job);
            outcomes.record(&job, keep_done).map(|entry| (entry, note))
        })
        .await;
        match done {
            Ok((entry, note)) => self.after.done(&entry, note),
            Err(e) => tracing::error!(job = %id, "cannot record the outcome: {e}"),
        }
    }
}

/// An app's lane settings, with its target built by the one factory.
pub(super) fn lane_settings(
    config: &Config,
    app: &AppConfig,
    wiring: &crate::deploy::Wiring,
    overrides: &Overrides,
) -> LaneSettings {
    let pacing = crate::deploy::Pacing {
        retry: RetryConfig {
            budget: app.retry_budget.unwrap_or(config.retry.budget),
            ..config.retry.clone()
        },
        follow_interval: overrides
            .follow_interval
            .or(app.follow_interval)
            .unwrap_or(config.scalingo.follow_interval),
        deploy_timeout: app.deploy_timeout.unwrap_or(config.scalingo.deploy_timeout),
        follow: overrides.follow,
        output: overrides.output,
        region: app.region.clone(),
    };
    LaneSettings {
        policy: app.queue,
        keep_done: app.keep_done,
        target: crate::deploy::build(&app.target, &pacing, wiring),
    }
}

/// The pipeline for one app, for a command that runs in the foreground (`deploy`, `watch`):
/// the daemon's lane, target and outcome recording, with the command's own observer (its
/// lines in the terminal) and without drop folders, metrics server or systemd.
pub struct OneShot {
    pipeline: Pipeline,
    app: AppConfig,
    trigger: Arc<ShutdownTrigger>,
    grace: Duration,
}

/// What a [`OneShot`] is opened with.
pub struct OneShotParts {
    /// The configuration: the app's settings when it is configured there, the defaults else.
    pub config: Config,
    pub app: String,
    /// The command's state directory (its spool, history and trees' digests).
    pub state_dir: PathBuf,
    pub spool: Spool,
    pub observer: Arc<dyn Observer>,
    /// Stops the app's lane (Ctrl-C in `watch`): the job in flight stops at its next recorded
    /// state, to resume at the next run.
    pub shutdown: shutdown::Shutdown,
    pub overrides: Overrides,
    /// The Scalingo client the command already made (its token exchange and look at the app
    /// shared); `None`: one is made here when the app deploys to Scalingo.
    pub client: Option<Arc<ScalingoClient>>,
}

impl OneShot {
    /// Wires the app's lane. Errors (for exit status 2) when the app deploys to Scalingo and
    /// no API token is configured, or the client cannot be made.
    pub fn open(parts: OneShotParts) -> Result<OneShot, DaemonError> {
        let OneShotParts {
            config,
            app,
            state_dir,
            spool,
            observer,
            shutdown,
            overrides,
            client: given,
        } = parts;
        let app = config
            .app(&app)
            .cloned()
            .unwrap_or_else(|| AppConfig::unconfigured(&app));
        let client = match app.target {
            TargetConfig::Scalingo if given.is_some() => given,
            TargetConfig::Scalingo => {
                let token: Secret = config.scalingo.require_token()?.clone();
                let client = ScalingoClient::new(&config.scalingo, token)
                    .map_err(|e| DaemonError::Setup(e.to_string()))?;
                Some(Arc::new(client))
            }
            TargetConfig::Local(_) => None,
        };
        let hooks = Arc::new(Hooks::new().map_err(|e| DaemonError::Startup(e.to_string()))?);
        let metrics = Metrics::new();
        metrics.register_app(&app.name);
        let after = Arc::new(AfterOutcome::new(metrics, hooks, &config, &state_dir));
        // The lane stops with the command's stop, or when the command is done with it.
        let (trigger, stop) = shutdown::channel();
        let trigger = Arc::new(trigger);
        tokio::spawn({
            let (trigger, mut shutdown) = (trigger.clone(), shutdown);
            async move {
                shutdown.requested().await;
                trigger.fire();
            }
        });
        let mut pipeline = Pipeline::new(Parts {
            state_dir,
            spool,
            client,
            observer,
            after,
            max_parallel: 1,
            shutdown: stop,
            overrides,
            board: Arc::new(crate::live::Board::in_memory()),
        });
        pipeline.start_lane(&config, &app);
        Ok(OneShot {
            pipeline,
            app,
            trigger,
            grace: config.shutdown_grace,
        })
    }

    /// The app's settings (from the configuration, or the defaults).
    pub fn app(&self) -> &AppConfig {
        &self.app
    }

    /// Hands a job to the app's lane; the channel tells its final state once its outcome is
    /// recorded. It closes without an answer when the job stops unfinished (a stop, a
    /// deployment not followed, a record that cannot be written; the job stays in the spool).
    pub fn submit(&mut self, job: Job) -> Result<oneshot::Receiver<JobState>, Box<Job>> {
        self.pipeline.lanes.submit_watched(job)
    }

    /// Submits to the app's lane from another task (a watched tree's redeploy loop).
    pub fn sender(&self) -> Option<LaneSender> {
        self.pipeline.lanes.sender(&self.app.name)
    }

    /// Lets the lane run what waits in it to its end (the rollback that an unhealthy
    /// deployment made: it is bounded like any job, by `deploy_timeout` and its check), then
    /// stops it and waits for the outcome hooks within `shutdown_grace`. A stop of the command
    /// (Ctrl-C) still stops the lane at its next recorded state.
    pub async fn drain(self) {
        let OneShot {
            pipeline,
            trigger,
            grace,
            ..
        } = self;
        let Pipeline { lanes, after, .. } = pipeline;
        // Closing the lane's inbox without a stop: it ends once nothing waits.
        lanes.join().await;
        trigger.fire();
        if !after.hooks.drain(grace).await {
            tracing::warn!("outcome hooks still running at exit were abandoned");
        }
    }

    /// Stops the lane (a job in flight stops at its next recorded state) and waits for it, and
    /// for the outcome hooks still running, within the configured `shutdown_grace`.
    pub async fn close(self) {
        self.trigger.fire();
        let deadline = tokio::time::Instant::now() + self.grace;
        if tokio::time::timeout_at(deadline, self.pipeline.lanes.join())
            .await
            .is_err()
        {
            tracing::warn!("grace period over: a step still in flight was abandoned");
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !self.pipeline.after.hooks.drain(left).await {
            tracing::warn!("outcome hooks still running at exit were abandoned");
        }
    }
}
