//! The command line: argument parsing, logging set-up, and the one-shot commands. The
//! `dropdeploy` binary is `cli::main()` and nothing else.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use crate::archive::inspect::{InspectError, Limits, inspect};
use crate::config::{Config, Env, Loaded};
use crate::deploy::scalingo::api::ScalingoClient;
use crate::deploy::scalingo::driver::{Event, Observer, Runner};
use crate::queue::intake::{
    IntakeError, PayloadKey, Transfer, enqueue_archive, enqueue_url, find_unfinished, valid_git_ref,
};
use crate::queue::spool::{Job, JobState, Spool, Step};

// Every line this module prints goes through the redaction, so a token pasted into any setting
// or argument never reaches the terminal: these shadow the standard macros in this file.
macro_rules! eprintln {
    ($($arg:tt)*) => {
        ::std::eprintln!("{}", $crate::redact::redact(&format!($($arg)*)))
    };
}
macro_rules! println {
    ($($arg:tt)*) => {
        ::std::println!("{}", $crate::redact::redact(&format!($($arg)*)))
    };
}
macro_rules! print {
    ($($arg:tt)*) => {
        ::std::print!("{}", $crate::redact::redact(&format!($($arg)*)))
    };
}

/// Exit status: the deployment succeeded (or the archive is fine).
pub const EXIT_OK: u8 = 0;
/// Exit status: the deployment failed or was refused (bad archive, failure status, a
/// permanent API error such as an unknown app).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: usage or configuration error (bad flags, config file, missing or refused token).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: gave up after retrying transient errors for the whole retry budget.
pub const EXIT_GAVE_UP: u8 = 3;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  the deployment failed or was refused (bad archive, failure status, unknown app, …)
  2  usage or configuration error (flags, config file, missing or refused API token)
  3  gave up after retrying transient errors for the whole retry budget";

/// dropdeploy: deploy code archives to Scalingo.
#[derive(Debug, Parser)]
#[command(
    name = "dropdeploy",
    version,
    about = "Deploy code archives to the Scalingo platform: check, upload, deploy, follow.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Configuration file (TOML). Without it, defaults and the environment are used.
    #[arg(long, global = true, value_name = "FILE", env = "DROPDEPLOY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a configuration file: print every problem with its line and column, or what
    /// each app will do. Exit status 0 when valid, 2 when not.
    Check {
        /// The file (default: --config, then /etc/dropdeploy/dropdeploy.toml).
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: watch each app's drop folder and deploy what lands there.
    ///
    /// Reads --config (default /etc/dropdeploy/dropdeploy.toml). SIGTERM or SIGINT stop it
    /// cleanly (jobs in flight stop at their next persisted state and resume at the next
    /// start); SIGHUP reloads the configuration.
    Run,
    /// Show finished jobs from the history (state_dir/history.jsonl), oldest first.
    History {
        /// Only this app.
        #[arg(long, short)]
        app: Option<String>,
        /// At most this many, the most recent.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// One JSON object per line, as stored.
        #[arg(long)]
        json: bool,
    },
    /// Show each app's lane (in flight, pending, last outcome) from the spool and the
    /// history, without talking to the daemon.
    Status,
    /// Deploy one archive (a .tar.gz file, or an http(s) URL the platform downloads itself).
    ///
    /// The archive is checked first, then uploaded, then deployed, and the deployment is
    /// followed to its end. Running the same command again after an interruption resumes the
    /// same job: it never deploys the same archive twice.
    #[command(after_help = EXIT_CODES)]
    Deploy {
        /// The Scalingo app.
        #[arg(long, short)]
        app: String,
        /// The git_ref given to the deployment ([A-Za-z0-9._-], not starting with '-');
        /// default: <app>-<YYYYmmddHHMMSS>-<first 8 hex of the archive's sha256>.
        #[arg(long)]
        git_ref: Option<String>,
        /// Return once the deployment is created, without following it.
        #[arg(long)]
        no_follow: bool,
        /// Where jobs are kept while they run (default: the config's state_dir with a config
        /// file, else $XDG_STATE_HOME/dropdeploy or ~/.local/state/dropdeploy).
        #[arg(long, value_name = "DIR", env = "DROPDEPLOY_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Time between two polls of the deployment's status, e.g. `3s` (overrides follow_interval).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        interval: Option<std::time::Duration>,
        /// The archive file, or an http(s) URL.
        archive: String,
    },
    /// Pack a directory into a .tar.gz the way the daemon does for a watched directory.
    ///
    /// One top-level folder, entries sorted, owner 0/0, modes and symlinks kept; .gitignore,
    /// .ignore and .deployignore files apply, plus built-in defaults (.git/, editor swap files).
    /// Two packs of the same tree are byte for byte identical.
    Pack {
        /// The directory to pack.
        dir: PathBuf,
        /// The archive to write.
        #[arg(long, short)]
        output: PathBuf,
        /// The top-level folder in the archive (default: the directory's name).
        #[arg(long)]
        prefix: Option<String>,
        /// More gitignore-style patterns to leave out.
        #[arg(long, value_name = "PATTERN")]
        ignore: Vec<String>,
        /// Gitignore-style patterns to pack even when ignored.
        #[arg(long, value_name = "PATTERN")]
        include: Vec<String>,
    },
    /// Watch a source directory and redeploy it on every change: the developer's loop.
    ///
    /// No config file needed: the token comes from SCALINGO_API_TOKEN and the region from
    /// --region or SCALINGO_REGION. Ctrl-C stops cleanly (exit status 0). A source directory
    /// that is removed or replaced is watched again when it is back; if it is not back within
    /// --give-up-after, watch stops with exit status 1.
    Watch {
        /// The Scalingo app.
        #[arg(long, short)]
        app: String,
        /// The region (overrides SCALINGO_REGION and the config file).
        #[arg(long)]
        region: Option<String>,
        /// Quiet time after the last change before packing.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        quiet: std::time::Duration,
        /// Longest wait after the first change of a burst, for trees that never stop changing.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        max_wait: std::time::Duration,
        /// More gitignore-style patterns to leave out.
        #[arg(long, value_name = "PATTERN")]
        ignore: Vec<String>,
        /// Gitignore-style patterns to pack even when ignored.
        #[arg(long, value_name = "PATTERN")]
        include: Vec<String>,
        /// Do not deploy at start; wait for the first change.
        #[arg(long)]
        no_deploy_on_start: bool,
        /// Watch by polling at this interval instead of inotify (NFS and similar).
        #[arg(long, value_parser = humantime::parse_duration)]
        poll: Option<std::time::Duration>,
        /// How long a removed source directory is waited for before watch gives up.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
        give_up_after: std::time::Duration,
        /// Time between two polls of the deployment's status.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        interval: Option<std::time::Duration>,
        /// Where jobs are kept while they run (as for `deploy`).
        #[arg(long, value_name = "DIR", env = "DROPDEPLOY_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// The source directory.
        dir: PathBuf,
    },
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check archives as the platform would, without uploading anything.
    #[command(
        after_help = "Exit status: 0 when every archive is fine, 1 when one is refused, 2 on usage errors."
    )]
    Check {
        /// Largest uncompressed size accepted, in bytes (default: max_archive_size, 314572800).
        #[arg(long, value_name = "BYTES")]
        max_size: Option<u64>,
        /// Archives to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, default_level);
    let code = match &cli.command {
        Command::Run => run_async(run_daemon(&cli)),
        Command::History { app, limit, json } => history(&cli, app.as_deref(), *limit, *json),
        Command::Status => status(&cli),
        Command::Pack {
            dir,
            output,
            prefix,
            ignore,
            include,
        } => pack(dir, output, prefix.as_deref(), ignore, include),
        Command::Watch { .. } => run_async(watch(&cli)),
        Command::Config(ConfigCommand::Check { file }) => {
            config_check(file.clone().unwrap_or_else(|| config_path(&cli)))
        }
        Command::Check { max_size, files } => check(&cli, *max_size, files),
        Command::Deploy { .. } => run_async(deploy(&cli)),
    };
    ExitCode::from(code)
}

fn run_async(fut: impl std::future::Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("dropdeploy: cannot start the async runtime: {e}");
            EXIT_USAGE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` chooses what (default: `default_level`), colours only on a
/// terminal. When stderr is the journal (a systemd service), text lines carry a syslog
/// priority and no timestamp, since journald adds its own; `--log-format json` is unchanged.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let journal = crate::service::stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Every format (text, JSON, journal) writes through the redaction.
        .with_writer(crate::redact::RedactingMakeWriter::new(std::io::stderr))
        .with_ansi(!journal && std::io::stderr().is_terminal());
    match format {
        LogFormat::Text if journal => builder
            .event_format(crate::service::JournalFormat::new())
            .init(),
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// What `deploy` and `watch` need before they start: the configuration, the token, and a
/// spool (in the config's state_dir with a config file, else in the user's state directory).
struct OneShot {
    config: Config,
    token: crate::config::Secret,
    state_dir: PathBuf,
    spool: Spool,
}

impl OneShot {
    fn set_up(cli: &Cli, env: &Env, state_dir: Option<&PathBuf>) -> Result<OneShot, String> {
        let config = load_config_with(cli, env)?;
        let token = config
            .scalingo
            .require_token()
            .map_err(|e| e.to_string())?
            .clone();
        let state_dir = state_dir.cloned().unwrap_or_else(|| match &cli.config {
            Some(_) => config.state_dir.clone(),
            None => default_user_state_dir(),
        });
        let spool = Spool::open(state_dir.join("spool")).map_err(|e| e.to_string())?;
        Ok(OneShot {
            config,
            token,
            state_dir,
            spool,
        })
    }
}

fn load_config(cli: &Cli) -> Result<Config, String> {
    load_config_with(cli, &Env::from_process())
}

fn load_config_with(cli: &Cli, env: &Env) -> Result<Config, String> {
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

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH))
}

/// SIGTERM and SIGINT stop the daemon, SIGHUP reloads it: the signals are taken over here, at
/// the edge, before the daemon says it is ready (one that came earlier would kill it), and
/// handed to it as a [`crate::daemon::Control`].
fn signal_control() -> std::io::Result<crate::daemon::Control> {
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

async fn run_daemon(cli: &Cli) -> u8 {
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

/// The state directory of `history` and `status`: the config's.
fn state_dir_for_reading(cli: &Cli) -> Result<(Config, PathBuf), u8> {
    let env = Env::from_process();
    let path = config_path(cli);
    match Config::load(&path, &env) {
        Ok(Loaded { config, .. }) => {
            let dir = config.state_dir.clone();
            Ok((config, dir))
        }
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            Err(EXIT_USAGE)
        }
    }
}

fn history(cli: &Cli, app: Option<&str>, limit: usize, json: bool) -> u8 {
    let (_, state_dir) = match state_dir_for_reading(cli) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let path = state_dir.join("history.jsonl");
    match crate::outcome::read_history(&path, app, Some(limit)) {
        Ok(entries) => {
            if json {
                for e in &entries {
                    match serde_json::to_string(e) {
                        Ok(line) => println!("{line}"),
                        Err(err) => eprintln!("dropdeploy: {err}"),
                    }
                }
            } else if entries.is_empty() {
                println!("no finished jobs in {}", path.display());
            } else {
                print!("{}", crate::outcome::format_history_table(&entries));
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            EXIT_FAILED
        }
    }
}

fn status(cli: &Cli) -> u8 {
    let (config, state_dir) = match state_dir_for_reading(cli) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let spool = match Spool::open(state_dir.join("spool")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            return EXIT_FAILED;
        }
    };
    let apps: Vec<String> = config.apps.iter().map(|a| a.name.clone()).collect();
    let live = crate::live::read(&state_dir);
    match crate::outcome::status_report(
        &spool,
        &state_dir.join("history.jsonl"),
        &apps,
        live.as_ref(),
    ) {
        Ok(text) => {
            match crate::lock::StateLock::holder(&state_dir) {
                Some(pid) => println!("daemon: running (pid {pid})"),
                None => println!("daemon: not running"),
            }
            print!("{text}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            EXIT_FAILED
        }
    }
}

fn pack(
    dir: &std::path::Path,
    output: &std::path::Path,
    prefix: Option<&str>,
    ignore: &[String],
    include: &[String],
) -> u8 {
    use crate::archive::ignore::IgnoreRules;
    use crate::archive::pack::{PackOptions, pack};
    let prefix = prefix.map(str::to_string).unwrap_or_else(|| {
        std::path::absolute(dir)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "app".to_string())
    });
    // The output file never packs itself when written inside the tree.
    let always = std::path::absolute(output)
        .map(|o| vec![o])
        .unwrap_or_default();
    let rules = match IgnoreRules::new(dir, ignore, include, &always) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dropdeploy: pack {}: {e}", dir.display());
            return EXIT_USAGE;
        }
    };
    let started = Instant::now();
    let opts = PackOptions {
        prefix,
        ..PackOptions::default()
    };
    match pack(&rules, output, &opts) {
        Ok(summary) => {
            for (path, why) in &summary.skipped {
                eprintln!("dropdeploy: skipped {}: {why}", path.display());
            }
            println!(
                "packed {} into {}: {} entries ({} files), {} → {} in {:.2} s, digest {}",
                dir.display(),
                output.display(),
                summary.entries,
                summary.files,
                crate::human::bytes(summary.bytes_in),
                crate::human::bytes(summary.bytes_out),
                started.elapsed().as_secs_f64(),
                summary.digest
            );
            let limit = crate::config::DEFAULT_MAX_ARCHIVE_BYTES;
            if summary.uncompressed_bytes > limit {
                eprintln!(
                    "dropdeploy: note: {} uncompressed is over the platform's limit of {}: \
                     Scalingo would refuse this archive",
                    crate::human::bytes(summary.uncompressed_bytes),
                    crate::human::bytes(limit)
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("dropdeploy: pack {}: {e}", dir.display());
            EXIT_FAILED
        }
    }
}

async fn watch(cli: &Cli) -> u8 {
    use crate::source::redeploy::{self, RedeployConfig, TreeEvent};
    use crate::source::tree::{TreeConfig, TreeState, TreeWatcher};
    let Command::Watch {
        app,
        region,
        quiet,
        max_wait,
        ignore,
        include,
        no_deploy_on_start,
        poll,
        give_up_after,
        interval,
        state_dir,
        dir,
    } = &cli.command
    else {
        return EXIT_USAGE;
    };
    let fail = |msg: String| {
        eprintln!("dropdeploy: {app}: {msg}");
        EXIT_USAGE
    };
    let mut env = Env::from_process();
    if let Some(region) = region {
        env = env.with("SCALINGO_REGION", region);
    }
    let OneShot {
        config,
        token,
        state_dir,
        spool,
    } = match OneShot::set_up(cli, &env, state_dir.as_ref()) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let root = match std::path::absolute(dir) {
        Ok(r) => r,
        Err(e) => return fail(format!("{}: {e}", dir.display())),
    };
    let tree = TreeConfig {
        app: app.clone(),
        root: root.clone(),
        ignore: ignore.clone(),
        include: include.clone(),
        always_ignore: vec![state_dir.clone()],
        quiet: *quiet,
        max_wait: *max_wait,
        poll: *poll,
        give_up: Some(*give_up_after),
    };
    let watcher = match TreeWatcher::start(tree) {
        Ok(w) => w,
        Err(e) => return fail(e.to_string()),
    };
    let client = match ScalingoClient::new(&config.scalingo, token) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(e.to_string()),
    };
    // Taken over before saying "watching", so that an early Ctrl-C stops cleanly too.
    let mut interrupt =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
            Ok(s) => s,
            Err(e) => return fail(format!("cannot handle Ctrl-C: {e}")),
        };
    println!(
        "{app}: watching {} ({} directories); Ctrl-C to stop",
        root.display(),
        watcher.watch_count()
    );
    let (trigger, shutdown) = crate::shutdown::channel();
    tokio::spawn(async move {
        let _ = interrupt.recv().await;
        trigger.fire();
    });
    let states = watcher.state();
    tokio::spawn(say_gaps(app.clone(), watcher.state()));
    let interrupted = shutdown.clone();
    let printer = Arc::new(Printer::new(std::io::stderr().is_terminal()));
    let runner = Arc::new(
        Runner::new(
            client,
            spool.clone(),
            config.retry.clone(),
            interval.unwrap_or(config.scalingo.follow_interval),
            printer.clone(),
        )
        .with_deploy_timeout(config.scalingo.deploy_timeout)
        .with_shutdown(shutdown.clone())
        .with_output(),
    );
    let cfg = RedeployConfig {
        app: app.clone(),
        label: config
            .app(app)
            .map(|a| a.ref_label().to_string())
            .unwrap_or_else(|| app.clone()),
        prefix: app.clone(),
        limits: Limits {
            max_uncompressed: config.max_archive_bytes,
        },
        deploy_on_start: !no_deploy_on_start,
        state_dir: state_dir.clone(),
    };
    let deploy = {
        let (runner, spool, printer) = (runner.clone(), spool.clone(), printer.clone());
        move |mut job: Job| {
            let (runner, spool, printer) = (runner.clone(), spool.clone(), printer.clone());
            async move {
                let started = Instant::now();
                let _lock = match crate::lock::JobLock::try_acquire(&spool.job_dir(&job.id)) {
                    Ok(Some(lock)) => lock,
                    Ok(None) => {
                        eprintln!(
                            "dropdeploy: {}: job {} is being deployed by another dropdeploy \
                             process sharing this state directory; stopping",
                            job.app, job.id
                        );
                        return None;
                    }
                    Err(e) => {
                        eprintln!("dropdeploy: {}: cannot lock job {}: {e}", job.app, job.id);
                        return None;
                    }
                };
                if let Err(e) = runner.run(&mut job).await {
                    eprintln!(
                        "dropdeploy: {}: job {} cannot be recorded: {e}",
                        job.app, job.id
                    );
                    return None;
                }
                printer.finish();
                if !job.state.is_finished() {
                    return None;
                }
                print_outcome(&job, started.elapsed());
                if let Err(e) = spool.remove(&job.id) {
                    eprintln!("dropdeploy: {}: {e}", job.app);
                }
                Some(job.state.clone())
            }
        }
    };
    let name = app.clone();
    redeploy::run(cfg, watcher, spool, deploy, shutdown, |event| match event {
        TreeEvent::Changed(burst) if burst.overflow => {
            println!("{name}: many files changed")
        }
        TreeEvent::Changed(burst) => println!(
            "{name}: {} file{} changed",
            burst.changed_paths,
            if burst.changed_paths == 1 { "" } else { "s" }
        ),
        TreeEvent::Unchanged => println!("{name}: unchanged since the last deploy; nothing to do"),
        TreeEvent::Packing => println!("{name}: packing"),
        TreeEvent::Packed { job, elapsed } => println!(
            "{name}: packed {} in {:.1} s",
            crate::queue::intake::summary(job)
                .map(|s| crate::human::bytes(s.compressed_bytes))
                .unwrap_or_default(),
            elapsed.as_secs_f64()
        ),
        TreeEvent::PackFailed { error } => {
            println!("{name}: cannot pack: {error}; waiting for the next change")
        }
        TreeEvent::Finished { .. } => {}
    })
    .await;
    if interrupted.is_requested() {
        println!("{app}: stopped");
        return EXIT_OK;
    }
    // The loop ended by itself: the watch stopped for good, or a job could not be recorded
    // (already said).
    if let TreeState::Stopped { cause } = &*states.borrow() {
        eprintln!("dropdeploy: {app}: {cause}");
    }
    println!("{app}: stopped");
    EXIT_FAILED
}

/// Tells the developer when the source directory stops being watched and when it is back.
async fn say_gaps(
    app: String,
    mut states: tokio::sync::watch::Receiver<crate::source::tree::TreeState>,
) {
    use crate::source::tree::TreeState;
    // Said once per cause, not at every check.
    let mut said: Option<String> = None;
    while states.changed().await.is_ok() {
        let state = states.borrow_and_update().clone();
        match state {
            TreeState::NotWatched { root, cause, .. } if said.as_ref() != Some(&cause) => {
                println!("{app}: {} is not watched: {cause}", root.display());
                said = Some(cause);
            }
            TreeState::Watched if said.take().is_some() => {
                println!("{app}: the source directory is back; watching it again");
            }
            _ => {}
        }
    }
}

/// The one line that ends a deployment in the developer's terminal.
fn print_outcome(job: &Job, elapsed: std::time::Duration) {
    let app = &job.app;
    match &job.state {
        JobState::Succeeded { deployment_id } => println!(
            "{app}: success in {} (deployment {deployment_id})",
            humantime::format_duration(std::time::Duration::from_secs(elapsed.as_secs()))
        ),
        JobState::Failed(f) => {
            println!("{app}: FAILED at step {}: {}", f.step, f.reason);
        }
        other => println!("{app}: {}", other.name()),
    }
}

fn config_check(path: PathBuf) -> u8 {
    let loaded = match Config::load(&path, &Env::from_process()) {
        Ok(l) => l,
        Err(e) => {
            println!("{e}");
            return EXIT_USAGE;
        }
    };
    print!("{}", describe_config(&path, &loaded));
    EXIT_OK
}

/// What a valid configuration will do, in a few lines a person can check.
pub fn describe_config(path: &std::path::Path, loaded: &Loaded) -> String {
    use crate::config::TargetConfig;
    use std::fmt::Write;
    let c = &loaded.config;
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid", path.display());
    for w in &loaded.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let _ = writeln!(
        out,
        "state_dir {} (spool/, history.jsonl); at most {} apps deploying at once",
        c.state_dir.display(),
        c.max_parallel
    );
    let scalingo_apps = c
        .apps
        .iter()
        .filter(|a| a.target == TargetConfig::Scalingo)
        .count();
    if scalingo_apps > 0 {
        let token = match (&c.scalingo.token, &c.scalingo.token_origin) {
            (Some(_), Some(origin)) => format!("token from {origin}"),
            (Some(_), None) => "token set".to_string(),
            (None, _) => "NO TOKEN: set SCALINGO_API_TOKEN or token_file".to_string(),
        };
        let _ = writeln!(out, "Scalingo API {} ({token})", c.scalingo.api_url);
    }
    if c.apps.is_empty() {
        let _ = writeln!(out, "no [[app]]: the daemon would watch nothing");
    }
    for app in &c.apps {
        let from = match (&app.drop_dir, &app.source_dir) {
            (Some(dir), _) => format!(
                "archives dropped in {} (settle {}, keep {} in done/)",
                dir.display(),
                humantime::format_duration(app.settle),
                app.keep_done
            ),
            (None, Some(dir)) => format!(
                "source directory {} packed after {} quiet (max wait {}){}",
                dir.display(),
                humantime::format_duration(app.quiet),
                humantime::format_duration(app.max_wait),
                if app.deploy_on_start {
                    ", deployed at start if changed"
                } else {
                    ""
                }
            ),
            (None, None) => "nothing".to_string(),
        };
        let to = match &app.target {
            TargetConfig::Scalingo => format!("Scalingo app {}", app.name),
            TargetConfig::Local(l) => format!(
                "local releases in {} (keep {}{})",
                l.releases_dir.join(&app.name).display(),
                l.keep_releases,
                if l.activate.is_empty() {
                    String::new()
                } else {
                    format!(", then run {:?}", l.activate)
                }
            ),
        };
        let policy = match app.queue {
            crate::config::QueuePolicy::Latest => "latest",
            crate::config::QueuePolicy::All => "all",
        };
        let _ = writeln!(out, "app {}: {from} → {to}; queue {policy}", app.name);
    }
    out
}

fn check(cli: &Cli, max_size: Option<u64>, files: &[PathBuf]) -> u8 {
    let max_uncompressed = match max_size {
        Some(bytes) => bytes,
        None => match load_config(cli) {
            Ok(config) => config.max_archive_bytes,
            Err(e) => {
                eprintln!("dropdeploy: {e}");
                return EXIT_USAGE;
            }
        },
    };
    let limits = Limits { max_uncompressed };
    let mut code = EXIT_OK;
    for file in files {
        match inspect(file, &limits) {
            Ok(summary) => println!("ok: {}: {summary}", file.display()),
            Err(InspectError::Rejected(rejection)) => {
                println!("refused: {}: {rejection}", file.display());
                code = code.max(EXIT_FAILED);
            }
            Err(e @ InspectError::Io { .. }) => {
                eprintln!("dropdeploy: check: {e}");
                code = EXIT_USAGE;
            }
        }
    }
    code
}

/// The default place for the one-shot command's jobs, for a user without a config file.
fn default_user_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("dropdeploy");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/dropdeploy");
    }
    std::env::temp_dir().join("dropdeploy")
}

async fn deploy(cli: &Cli) -> u8 {
    let Command::Deploy {
        app,
        git_ref,
        no_follow,
        state_dir,
        interval,
        archive,
    } = &cli.command
    else {
        return EXIT_USAGE;
    };
    let fail = |msg: String| {
        eprintln!("dropdeploy: {app}: {msg}");
        EXIT_USAGE
    };
    if let Some(r) = git_ref
        && !valid_git_ref(r)
    {
        return fail(format!(
            "--git-ref {r:?} is not accepted by the platform: use only letters, digits, '.', '_' and '-', not starting with '-'"
        ));
    }
    let OneShot {
        config,
        token,
        spool,
        ..
    } = match OneShot::set_up(cli, &Env::from_process(), state_dir.as_ref()) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let label = config
        .app(app)
        .and_then(|a| a.git_ref_label.clone())
        .unwrap_or_else(|| app.clone());
    let limits = Limits {
        max_uncompressed: config.max_archive_bytes,
    };

    let is_url = archive.starts_with("http://") || archive.starts_with("https://");
    let job = if is_url {
        match find_unfinished(&spool, app, &PayloadKey::Url(archive), None) {
            Some(job) => job,
            None => match enqueue_url(&spool, app, archive, &label, git_ref.as_deref()) {
                Ok(job) => job,
                Err(e) => return fail(e.to_string()),
            },
        }
    } else {
        let file = PathBuf::from(archive);
        let spool2 = spool.clone();
        let (app2, label2, git_ref2) = (app.clone(), label.clone(), git_ref.clone());
        let made = tokio::task::spawn_blocking(move || {
            enqueue_archive(
                &spool2,
                &app2,
                &file,
                Transfer::Copy,
                &label2,
                git_ref2.as_deref(),
                &limits,
            )
        })
        .await;
        let new_job = match made {
            Ok(Ok(job)) => job,
            Ok(Err(IntakeError::Rejected {
                file, rejection, ..
            })) => {
                eprintln!(
                    "dropdeploy: {app}: refused {} at step {}: {rejection}; nothing was uploaded",
                    file.display(),
                    Step::Inspect
                );
                return EXIT_FAILED;
            }
            Ok(Err(e)) => return fail(e.to_string()),
            Err(e) => return fail(format!("archive check crashed: {e}")),
        };
        let sha = match &new_job.payload {
            crate::queue::spool::Payload::Archive { summary, .. } => summary.sha256.clone(),
            crate::queue::spool::Payload::Url { .. } => String::new(),
        };
        // The same archive interrupted earlier for this app: resume that job instead.
        match find_unfinished(&spool, app, &PayloadKey::Sha256(&sha), Some(&new_job.id)) {
            Some(old) => {
                if let Err(e) = spool.remove(&new_job.id) {
                    return fail(e.to_string());
                }
                old
            }
            None => new_job,
        }
    };
    run_job(config, token, spool, job, *no_follow, *interval).await
}

async fn run_job(
    config: Config,
    token: crate::config::Secret,
    spool: Spool,
    mut job: Job,
    no_follow: bool,
    interval: Option<std::time::Duration>,
) -> u8 {
    let app = job.app.clone();
    let _lock = match crate::lock::JobLock::try_acquire(&spool.job_dir(&job.id)) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            eprintln!(
                "dropdeploy: {app}: job {} (the same archive) is being deployed by another \
                 dropdeploy process; not deploying it twice (see `dropdeploy status`)",
                job.id
            );
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("dropdeploy: {app}: cannot lock job {}: {e}", job.id);
            return EXIT_USAGE;
        }
    };
    // The record may have moved on while another process held it.
    if let Ok(fresh) = spool.load(&job.id) {
        job = fresh;
    }
    let client = match ScalingoClient::new(&config.scalingo, token) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return EXIT_USAGE;
        }
    };
    let printer = Arc::new(Printer::new(std::io::stderr().is_terminal()));
    if matches!(job.state, JobState::Queued) && job.started_at.is_none() {
        printer.line(&format!("{app}: {}", describe(&job)));
    }
    let mut runner = Runner::new(
        client,
        spool.clone(),
        config.retry.clone(),
        interval.unwrap_or(config.scalingo.follow_interval),
        printer.clone(),
    )
    .with_deploy_timeout(
        config
            .app(&app)
            .and_then(|a| a.deploy_timeout)
            .unwrap_or(config.scalingo.deploy_timeout),
    );
    if no_follow {
        runner = runner.without_follow();
    }
    let started = Instant::now();
    if let Err(e) = runner.run(&mut job).await {
        eprintln!("dropdeploy: {app}: job {} cannot be recorded: {e}", job.id);
        return EXIT_USAGE;
    }
    printer.finish();
    let elapsed =
        humantime::format_duration(std::time::Duration::from_secs(started.elapsed().as_secs()));
    let code = match &job.state {
        JobState::Succeeded { deployment_id } => {
            println!(
                "{app}: success: deployment {deployment_id} (git_ref {}) in {elapsed}",
                job.git_ref
            );
            EXIT_OK
        }
        JobState::Deploying { deployment_id, .. } => {
            println!(
                "{app}: deployment {deployment_id} created (git_ref {}); not following it",
                job.git_ref
            );
            EXIT_OK
        }
        JobState::Failed(failure) => {
            let what = match &job.payload {
                crate::queue::spool::Payload::Archive { original, .. } => {
                    original.display().to_string()
                }
                crate::queue::spool::Payload::Url { url } => url.clone(),
            };
            println!(
                "{app}: FAILED deploying {what} at step {}: {}",
                failure.step, failure.reason
            );
            if !failure.log_tail.is_empty() {
                println!(
                    "--- last {} lines of the build output ---",
                    failure.log_tail.len()
                );
                for line in &failure.log_tail {
                    println!("{line}");
                }
                println!("---");
            }
            if failure.gave_up {
                EXIT_GAVE_UP
            } else if failure.http_status == Some(401) {
                EXIT_USAGE
            } else {
                EXIT_FAILED
            }
        }
        JobState::Superseded { by } => {
            println!("{app}: superseded by job {by}");
            EXIT_FAILED
        }
        other => {
            println!("{app}: stopped in state {}", other.name());
            EXIT_FAILED
        }
    };
    if (job.state.is_finished() || no_follow)
        && let Err(e) = spool.remove(&job.id)
    {
        eprintln!("dropdeploy: {app}: {e}");
    }
    code
}

fn describe(job: &Job) -> String {
    match &job.payload {
        crate::queue::spool::Payload::Archive {
            original, summary, ..
        } => format!(
            "checked {}: {summary}\n{}: job {}, git_ref {}",
            original.display(),
            job.app,
            job.id,
            job.git_ref
        ),
        crate::queue::spool::Payload::Url { url } => format!(
            "deploying {} (downloaded by the platform)\n{}: job {}, git_ref {}",
            crate::deploy::scalingo::api::display_url(url),
            job.app,
            job.id,
            job.git_ref
        ),
    }
}

/// Prints the runner's events for a person: one line per step and status, and a progress bar
/// for the upload when stderr is a terminal.
struct Printer {
    bar: Mutex<Option<indicatif::ProgressBar>>,
    terminal: bool,
}

impl Printer {
    fn new(terminal: bool) -> Self {
        Printer {
            bar: Mutex::new(None),
            terminal,
        }
    }

    fn line(&self, text: &str) {
        match self.bar.lock().ok().and_then(|b| b.clone()) {
            Some(bar) => bar.println(crate::redact::redact(text)),
            None => println!("{text}"),
        }
    }

    fn finish(&self) {
        if let Ok(mut bar) = self.bar.lock()
            && let Some(bar) = bar.take()
        {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Printer {
    fn event(&self, job: &Job, event: &Event<'_>) {
        let app = &job.app;
        match event {
            Event::Resumed { state } => {
                self.line(&format!(
                    "{app}: resuming job {} (git_ref {}) from state {state}",
                    job.id, job.git_ref
                ));
            }
            Event::Step(Step::Upload) => {
                let total = crate::queue::intake::summary(job)
                    .map(|s| s.compressed_bytes)
                    .unwrap_or(0);
                self.line(&format!("{app}: uploading {}", crate::human::bytes(total)));
                if self.terminal
                    && let Ok(mut bar) = self.bar.lock()
                {
                    let pb = indicatif::ProgressBar::new(total);
                    if let Ok(style) = indicatif::ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    ) {
                        pb.set_style(style);
                    }
                    *bar = Some(pb);
                }
            }
            Event::Step(Step::CreateSource) => self.line(&format!("{app}: creating source")),
            Event::Step(_) => {}
            Event::Uploading { sent, .. } => {
                if let Ok(bar) = self.bar.lock()
                    && let Some(bar) = bar.as_ref()
                {
                    bar.set_position(*sent);
                }
            }
            Event::Uploaded { bytes, elapsed } => {
                self.finish();
                let secs = elapsed.as_secs_f64();
                let rate = if secs > 0.0 {
                    format!(
                        " ({}/s)",
                        crate::human::bytes((*bytes as f64 / secs) as u64)
                    )
                } else {
                    String::new()
                };
                self.line(&format!(
                    "{app}: uploaded {} in {secs:.2} s{rate}",
                    crate::human::bytes(*bytes)
                ));
            }
            Event::DeploymentCreated { id } => {
                self.line(&format!(
                    "{app}: deployment {id} created (git_ref {})",
                    job.git_ref
                ));
            }
            Event::DeploymentAdopted { id } => {
                self.line(&format!(
                    "{app}: found deployment {id} already posted for git_ref {}; following it",
                    job.git_ref
                ));
            }
            Event::Status { status } => self.line(&format!("{app}: status {status}")),
            Event::Output { lines } => {
                for line in lines.iter() {
                    self.line(&format!("  | {line}"));
                }
            }
            Event::Retrying {
                step,
                error,
                delay,
                failures,
            } => {
                self.finish();
                self.line(&format!(
                    "{app}: {step} failed ({error}); retry {failures} in {:.1} s",
                    delay.as_secs_f64()
                ));
            }
            Event::Finished => self.finish(),
        }
    }
}
