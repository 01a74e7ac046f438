//! What every command needs first: the configuration, the token, a spool; and the daemon run with signals turned into its control channel.

use super::*;

/// What `deploy` and `watch` need before they start: the configuration and a spool (in the
/// config's state_dir with a config file, else in the user's state directory). The API token
/// is checked here, before any work, when the app deploys to Scalingo.
pub(super) struct OneShotSetup {
    pub(super) config: Config,
    pub(super) state_dir: PathBuf,
    pub(super) spool: Spool,
    /// The Scalingo client for the app's commands (`None` for a local target): the look at the
    /// app before the upload and the deployment share its token exchange.
    pub(super) client: Option<Arc<crate::deploy::scalingo::api::ScalingoClient>>,
}

impl OneShotSetup {
    pub(super) fn set_up(
        cli: &Cli,
        app: &str,
        env: &Env,
        state_dir: Option<&PathBuf>,
    ) -> Result<OneShotSetup, String> {
        let config = load_config_with(cli, env)?;
        let local = config
            .app(app)
            .is_some_and(|a| matches!(a.target, crate::config::TargetConfig::Local(_)));
        let client = if local {
            None
        } else {
            let token = config
                .scalingo
                .require_token()
                .map_err(|e| e.to_string())?
                .clone();
            let client = crate::deploy::scalingo::api::ScalingoClient::new(&config.scalingo, token)
                .map_err(|e| e.to_string())?;
            Some(Arc::new(client))
        };
        let state_dir = state_dir.cloned().unwrap_or_else(|| match &cli.config {
            Some(_) => config.state_dir.clone(),
            None => default_user_state_dir(),
        });
        let spool = Spool::open(state_dir.join("spool")).map_err(|e| e.to_string())?;
        Ok(OneShotSetup {
            config,
            state_dir,
            spool,
            client,
        })
    }

    /// The app's pipeline (lane, target, outcomes) for a command in the foreground, its events
    /// told to `observer`.
    pub(super) fn open(
        &self,
        app: &str,
        observer: Arc<dyn Observer>,
        shutdown: crate::shutdown::Shutdown,
        overrides: crate::daemon::Overrides,
    ) -> Result<crate::daemon::OneShot, String> {
        crate::daemon::OneShot::open(crate::daemon::OneShotParts {
            config: self.config.clone(),
            app: app.to_string(),
            state_dir: self.state_dir.clone(),
            spool: self.spool.clone(),
            observer,
            shutdown,
            overrides,
            client: self.client.clone(),
        })
        .map_err(|e| e.to_string())
    }
}

/// The process's environment, with `--region` (or SCALINGO_REGION, which clap read for the flag)
/// as the region: for the commands that make a Scalingo client from the command line.
pub(super) fn region_env(region: Option<&str>) -> Env {
    let env = Env::from_process();
    match region {
        Some(region) => env.with("SCALINGO_REGION", region),
        None => env,
    }
}

pub(super) fn load_config(cli: &Cli) -> Result<Config, String> {
    load_config_with(cli, &Env::from_process())
}

pub(super) fn load_config_with(cli: &Cli, env: &Env) -> Result<Config, String> {
    let loaded = match &cli.config {
        Some(path) => Config::load(path, env),
        None => Config::from_env(env),
    };
    let Loaded { config, warnings } = loaded.map_err(|e| e.to_string())?;
    for warning in warnings {
        tracing::warn!("{warning}");
        eprintln!("dropdeploy: warning: {warning}");
    }
    Ok(config)
}

pub(super) fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH))
}

/// SIGTERM and SIGINT stop the daemon, SIGHUP reloads it: the signals are taken over here, at
/// the edge, before the daemon says it is ready (one that came earlier would kill it), and
/// handed to it as a [`crate::daemon::Control`].
pub(super) fn signal_control() -> std::io::Result<crate::daemon::Control> {
    use tokio::signal::unix::{SignalKind, signal};
    let (handle, control) = crate::daemon::control();
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigterm.recv() => handle.stop("SIGTERM"),
                _ = sigint.recv() => handle.stop("SIGINT"),
                _ = sighup.recv() => handle.reload(),
            }
        }
    });
    Ok(control)
}

pub(super) async fn run_daemon(cli: &Cli) -> u8 {
    let control = match signal_control() {
        Ok(control) => control,
        Err(e) => {
            eprintln!("dropdeploy: cannot handle signals: {e}");
            return EXIT_FAILED;
        }
    };
    match crate::daemon::run(config_path(cli), Env::from_process(), control).await {
        Ok(()) => EXIT_OK,
        Err(e @ (crate::daemon::DaemonError::Config(_) | crate::daemon::DaemonError::Setup(_))) => {
            eprintln!("dropdeploy: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            EXIT_FAILED
        }
    }
}

/// The default place for the one-shot command's jobs, for a user without a config file.
pub(super) fn default_user_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("dropdeploy");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/dropdeploy");
    }
    std::env::temp_dir().join("dropdeploy")
}
