//! The command line: argument parsing, logging set-up, and the one-shot commands. The
//! `dropdeploy` binary is `cli::main()` and nothing else.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::{ArgAction, CommandFactory, Parser, Subcommand, ValueEnum};

use tracing_subscriber::EnvFilter;

use crate::archive::inspect::{InspectError, Limits, inspect};
use crate::config::{Config, Env, Loaded};
use crate::deploy::scalingo::driver::{Event, Observer};
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
/// A line of information on stdout (a step, a summary, a success): not printed under `-q`,
/// which keeps errors, refusals and what the command exists to print (a listing, `--json`).
macro_rules! say {
    ($($arg:tt)*) => {
        if !$crate::cli::quiet() {
            println!($($arg)*)
        }
    };
}
/// The same on stderr, where stdout is the command's result (`pack -o -`, `deploy --json`).
macro_rules! esay {
    ($($arg:tt)*) => {
        if !$crate::cli::quiet() {
            eprintln!($($arg)*)
        }
    };
}

static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static COLOUR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How an outcome word reads: green for a success, red for a failure.
#[derive(Clone, Copy)]
pub(crate) enum Paint {
    Good,
    Bad,
}

/// `text` in its colour when the human output is coloured (`--color`), else as it is.
pub(crate) fn paint(text: &str, how: Paint) -> String {
    if !COLOUR.load(std::sync::atomic::Ordering::Relaxed) {
        return text.to_string();
    }
    let code = match how {
        Paint::Good => "32",
        Paint::Bad => "1;31",
    };
    format!("\u{1b}[{code}m{text}\u{1b}[0m")
}

/// Whether `-q` was given: errors only.
pub(crate) fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

mod archives;
mod deploy;
mod fleet;
mod jobs;
mod look;
mod manual;
mod platform;
mod printer;
mod push;
mod rollback;
mod setup;
mod watch;

use archives::{check, pack};
use deploy::deploy;
pub use look::describe_config;
use look::{config_check, history, status};
use printer::Printer;
use rollback::{resume, rollback};
use setup::{
    OneShotSetup, config_path, default_user_state_dir, load_config, region_env, run_daemon,
};
use watch::watch;

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

/// The heading of the flags every command takes.
const GLOBAL: &str = "Global options";

/// dropdeploy: deploy code archives to Scalingo.
#[derive(Debug, Parser)]
#[command(
    name = "dropdeploy",
    version,
    about = "Deploy code archives to the Scalingo platform: check, upload, deploy, follow.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Configuration file (TOML). `run` and `config check` read /etc/dropdeploy/dropdeploy.toml
    /// without it; the other commands then use defaults and the environment.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "DROPDEPLOY_CONFIG",
        help_heading = GLOBAL
    )]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value = "text",
        help_heading = GLOBAL
    )]
    pub log_format: LogFormat,
    /// Colours in the logs and the progress lines: `auto` on a terminal unless NO_COLOR is
    /// set (to anything but empty), `always` even then, `never`.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "WHEN",
        default_value = "auto",
        help_heading = GLOBAL
    )]
    pub color: ColorWhen,
    /// More log lines: -v info, -vv debug, -vvv trace (RUST_LOG, when set, wins).
    #[arg(
        short,
        long,
        global = true,
        action = ArgAction::Count,
        conflicts_with = "quiet",
        help_heading = GLOBAL
    )]
    pub verbose: u8,
    /// Errors only: no progress bar, no step or success lines, error-level logs (RUST_LOG, when
    /// set, wins for the logs). What a command exists to print (a listing, --json) stays.
    #[arg(short = 'q', long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
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

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List the jobs in the spool: id, app, state, file, since when, and what drives each
    /// (a process, the daemon in turn, or nothing: interrupted).
    List,
    /// Take a job to its end in the foreground, as the `deploy` that made it would.
    Resume {
        /// The job's id (from `jobs list` or `status`).
        id: String,
    },
    /// Give a job up: it ends as failed ("discarded by hand"), recorded in the history; a
    /// dropped file goes to failed/ with its reason. Says what was already posted to the
    /// platform (a deployment goes on there).
    Discard {
        /// The job's id (from `jobs list` or `status`).
        id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// When the logs are coloured (`--color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: deploy what lands in each app's drop folder, or each save in its source
    /// directory.
    ///
    /// Reads the configuration file (--config). SIGTERM or SIGINT stop it cleanly (jobs in
    /// flight stop at their next persisted state and resume at the next start); SIGHUP reloads
    /// the configuration.
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
        /// Where the jobs, the history and the kept archives are (as for `deploy`).
        #[arg(long, value_name = "DIR", env = "DROPDEPLOY_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Show each app's lane (in flight, pending, last outcome) from the spool and the
    /// history, without talking to the daemon.
    Status {
        /// One JSON document: the daemon's pid (or null) and each app's in-flight jobs,
        /// pending jobs, waits and last outcome.
        #[arg(long)]
        json: bool,
        /// Where the jobs, the history and the kept archives are (as for `deploy`).
        #[arg(long, value_name = "DIR", env = "DROPDEPLOY_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Deploy an app's last verified archive again (or the one --to names), and check it.
    ///
    /// Needs the app's `verify` check to have kept a verified archive; the rollback is a new
    /// upload and a full build. Database migrations made since are not undone.
    Rollback {
        /// The app (as --app).
        #[arg(value_name = "APP")]
        app_arg: Option<String>,
        /// The app.
        #[arg(long, short, env = "SCALINGO_APP", required_unless_present = "app_arg")]
        app: Option<String>,
        /// The kept archive to bring back: any git_ref, job id or file name it was verified
        /// under (default: the last verified).
        #[arg(long)]
        to: Option<String>,
        /// Where the jobs, the history and the kept archives are (as for `deploy`).
        #[arg(long, value_name = "DIR", env = "DROPDEPLOY_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Clear an app's `needs attention` state (after a rollback that was unhealthy too).
    Resume {
        /// The app (as --app).
        #[arg(value_name = "APP")]
        app_arg: Option<String>,
        /// The app.
        #[arg(long, short, env = "SCALINGO_APP", required_unless_present = "app_arg")]
        app: Option<String>,
        /// Where the jobs, the history and the kept archives are (as for `deploy`).
        #[arg(long, value_name = "DIR", env = "DROPDEPLOY_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Deploy one archive (a .tar.gz file, or an http(s) URL the platform downloads itself).
    ///
    /// The archive is checked first, then uploaded, then deployed, and the deployment is
    /// followed to its end. Running the same command again after an interruption resumes the
    /// same job: it never deploys the same archive twice.
    /// Send an archive to a daemon's HTTP intake (`[intake] listen`), as CI does: the daemon
    /// checks it and deploys it in the app's turn. The token comes from
    /// DROPDEPLOY_INTAKE_TOKEN. Sending the same archive again (a retry after a time-out)
    /// answers the same job: it is never deployed twice.
    #[command(after_help = EXIT_CODES)]
    Push {
        /// The daemon's intake, e.g. http://127.0.0.1:8473.
        #[arg(long, value_name = "URL")]
        to: String,
        /// The app, as named in the daemon's configuration.
        #[arg(long, short)]
        app: String,
        /// Follow the job to its outcome and exit like `deploy` (0 deployed, 1 failed, 3 gave
        /// up); without it, exit once the daemon has the job.
        #[arg(long)]
        wait: bool,
        /// The archive (.tar.gz or .tgz).
        file: PathBuf,
    },
    #[command(after_help = EXIT_CODES)]
    Deploy {
        /// The Scalingo app.
        #[arg(long, short, env = "SCALINGO_APP")]
        app: String,
        /// The region (overrides the config file).
        #[arg(long, env = "SCALINGO_REGION")]
        region: Option<String>,
        /// The git_ref given to the deployment ([A-Za-z0-9._-], not starting with '-' or '.');
        /// default: <label>-<YYYYmmddHHMMSS>-<8 hex>, where <label> is the app's git_ref_label
        /// (else its name), the time is the job's creation in UTC, and the 8 hex digits are the
        /// job id's random part (two jobs never share a git_ref, even for the same archive).
        #[arg(long, value_name = "GIT_REF")]
        git_ref: Option<String>,
        /// Return once the deployment is created, without following it.
        #[arg(long)]
        no_follow: bool,
        /// Where jobs are kept while they run (default: the config's state_dir with a config
        /// file, else $XDG_STATE_HOME/dropdeploy or ~/.local/state/dropdeploy).
        #[arg(long, value_name = "DIR", env = "DROPDEPLOY_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Time between two polls of the deployment's status, e.g. `3s` (overrides
        /// follow_interval), when the deployments stream cannot be had.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        interval: Option<std::time::Duration>,
        /// Print the result as one JSON line on stdout, every human line going to stderr. Its
        /// fields: app, job (the job id), git_ref, deployment_id, outcome (succeeded, failed,
        /// superseded, created with --no-follow, or stopped), status (the platform's), step
        /// (where a failure happened), duration_ms and reason (null when none applies).
        #[arg(long)]
        json: bool,
        /// The archive file, or an http(s) URL.
        archive: String,
    },
    /// Pack a directory into a .tar.gz the way the daemon does for a watched directory.
    ///
    /// One top-level folder, entries sorted, owner 0/0, modes and symlinks kept; .gitignore,
    /// .ignore and .deployignore files apply, plus built-in defaults (.git/, editor swap files,
    /// files being written: *.tmp, *.part, *.partial, *.crdownload). Two packs of the same tree
    /// are byte for byte identical. Prints the archive's sha256 and the tree digest (names,
    /// modes and contents, what `watch` compares), which is not the file's hash.
    Pack {
        /// The directory to pack.
        dir: PathBuf,
        /// The archive to write, `-` for stdout (default: <the directory's name>.tar.gz in
        /// the current directory).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
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
        #[arg(long, short, env = "SCALINGO_APP")]
        app: String,
        /// The region (overrides the config file).
        #[arg(long, env = "SCALINGO_REGION")]
        region: Option<String>,
        /// How long the tree must stay unchanged after the last change before it is packed
        /// (the `debounce` key of a config file). Formerly `--quiet`, which is no longer
        /// accepted here: `-q/--quiet` is the global flag for less output.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
        debounce: std::time::Duration,
        /// Longest wait after the first change of a burst, for trees that never stop changing.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
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
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        poll: Option<std::time::Duration>,
        /// How long a removed source directory is waited for before watch gives up.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        give_up_after: std::time::Duration,
        /// Time between two polls of the deployment's status, when the deployments stream
        /// cannot be had.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
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
    /// The jobs in the spool: list them, resume or discard one that nothing drives.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
        /// Where the jobs are (as for `deploy`).
        #[arg(long, value_name = "DIR", env = "DROPDEPLOY_STATE_DIR", global = true)]
        state_dir: Option<PathBuf>,
    },
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
    /// Print a shell completion script on stdout.
    ///
    /// For example: `dropdeploy completions bash >
    /// ~/.local/share/bash-completion/completions/dropdeploy`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// List an app's recent deployments: id, git_ref, status, age, duration (newest first).
    Deployments {
        /// The Scalingo app.
        #[arg(long, short, env = "SCALINGO_APP")]
        app: String,
        /// The region (overrides the config file).
        #[arg(long, env = "SCALINGO_REGION")]
        region: Option<String>,
        /// How many (at most 50).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Print a deployment's build output (the latest deployment's by default), as the
    /// platform's CLI does (`logs` is an alias; the app's runtime logs are not shown here).
    #[command(name = "deployment-logs", visible_alias = "logs")]
    DeploymentLogs {
        /// The Scalingo app.
        #[arg(long, short, env = "SCALINGO_APP")]
        app: String,
        /// The region (overrides the config file).
        #[arg(long, env = "SCALINGO_REGION")]
        region: Option<String>,
        /// Stream the output as it comes, until the deployment ends (over the deployments
        /// stream, or by polling when it cannot be had), as `deployment-follow` does; the exit
        /// status is then 1 if the deployment failed.
        #[arg(long, short)]
        follow: bool,
        /// The deployment's id (default: the most recent).
        deployment: Option<String>,
    },
    /// Stream a deployment's build output until it ends (`deployment-logs --follow`); exit
    /// status 1 if the deployment failed.
    #[command(name = "deployment-follow")]
    DeploymentFollow {
        /// The Scalingo app.
        #[arg(long, short, env = "SCALINGO_APP")]
        app: String,
        /// The region (overrides the config file).
        #[arg(long, env = "SCALINGO_REGION")]
        region: Option<String>,
        /// The deployment's id (default: the most recent).
        deployment: Option<String>,
    },
    /// Print the man page (roff) on stdout, made from the same definition as --help.
    #[command(hide = true)]
    Manpage,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    let default_level = match cli.command {
        Command::Run => "info",
        _ => "warn",
    };
    let journal = crate::service::stderr_is_journal();
    let mut filter = log_filter(
        std::env::var("RUST_LOG").ok().as_deref(),
        default_level,
        cli.verbose,
        cli.quiet,
    );
    // `deploy` and `watch` print each outcome as a line of their own: the outcome's log event
    // (a warning for a failure) would say it twice. `-v` and RUST_LOG still show it.
    if matches!(cli.command, Command::Deploy { .. } | Command::Watch { .. })
        && cli.verbose == 0
        && std::env::var_os("RUST_LOG").is_none_or(|v| v.is_empty())
        && let Ok(directive) = "dropdeploy::outcome=error".parse()
    {
        filter = filter.add_directive(directive);
    }
    let colour = use_colour(
        cli.color,
        std::env::var_os("NO_COLOR").as_deref(),
        !journal && std::io::stderr().is_terminal(),
    );
    init_logging(cli.log_format, filter, colour, journal);
    // The human lines (outcomes) go to stdout or stderr: `auto` colours them when both are
    // terminals.
    let human = use_colour(
        cli.color,
        std::env::var_os("NO_COLOR").as_deref(),
        !journal && std::io::stderr().is_terminal() && std::io::stdout().is_terminal(),
    );
    COLOUR.store(human, std::sync::atomic::Ordering::Relaxed);
    let code = match &cli.command {
        Command::Run => run_async(run_daemon(&cli)),
        Command::History {
            app,
            limit,
            json,
            state_dir,
        } => history(&cli, state_dir.as_ref(), app.as_deref(), *limit, *json),
        Command::Status { json, state_dir } => status(&cli, state_dir.as_ref(), *json),
        Command::Pack {
            dir,
            output,
            prefix,
            ignore,
            include,
        } => pack(dir, output.as_deref(), prefix.as_deref(), ignore, include),
        Command::Watch { .. } => run_async(watch(&cli)),
        Command::Config(ConfigCommand::Check { file }) => {
            config_check(file.clone().unwrap_or_else(|| config_path(&cli)))
        }
        Command::Check { max_size, files } => check(&cli, *max_size, files),
        Command::Jobs { command, state_dir } => {
            run_async(jobs::jobs(&cli, command, state_dir.as_ref()))
        }
        Command::Deploy { .. } => run_async(deploy(&cli)),
        Command::Push {
            to,
            app,
            wait,
            file,
        } => run_async(push::push(to, app, file, *wait)),
        Command::Rollback {
            app_arg,
            app,
            to,
            state_dir,
        } => {
            let app = app_arg
                .as_ref()
                .or(app.as_ref())
                .cloned()
                .unwrap_or_default();
            run_async(rollback(&cli, &app, to.as_deref(), state_dir.as_ref()))
        }
        Command::Resume {
            app_arg,
            app,
            state_dir,
        } => resume(
            &cli,
            app_arg.as_ref().or(app.as_ref()).map_or("", |a| a),
            state_dir.as_ref(),
        ),
        Command::Deployments { app, region, limit } => {
            run_async(platform::deployments(&cli, app, region.as_deref(), *limit))
        }
        Command::DeploymentFollow {
            app,
            region,
            deployment,
        } => run_async(platform::logs(
            &cli,
            app,
            region.as_deref(),
            deployment.as_deref(),
            true,
        )),
        Command::DeploymentLogs {
            app,
            region,
            follow,
            deployment,
        } => run_async(platform::logs(
            &cli,
            app,
            region.as_deref(),
            deployment.as_deref(),
            *follow,
        )),
        Command::Completions { shell } => completions(*shell),
        Command::Manpage => manpage(),
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

impl Cli {
    /// Whether the upload shows a progress bar: on a terminal, unless `-q`.
    fn progress_bar(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }
}

/// What the logs show: `RUST_LOG` when set (and valid), else `-q` (errors only), else the
/// command's default raised by `-v` (info), `-vv` (debug), `-vvv` (trace). Up to debug,
/// only dropdeploy's own lines are raised, not those of the libraries under it.
fn log_filter(rust_log: Option<&str>, default_level: &str, verbose: u8, quiet: bool) -> EnvFilter {
    if let Some(spec) = rust_log.filter(|s| !s.is_empty())
        && let Ok(filter) = EnvFilter::try_new(spec)
    {
        return filter;
    }
    EnvFilter::new(filter_spec(default_level, verbose, quiet))
}

fn filter_spec(default_level: &str, verbose: u8, quiet: bool) -> String {
    let asked = match verbose {
        _ if quiet => return "error".to_string(),
        0 => return default_level.to_string(),
        1 => "info",
        2 => "debug",
        _ => return "trace".to_string(),
    };
    let rank = |level: &str| {
        ["error", "warn", "info", "debug", "trace"]
            .iter()
            .position(|l| *l == level)
    };
    if rank(asked) <= rank(default_level) {
        return default_level.to_string();
    }
    format!("{default_level},dropdeploy={asked}")
}

/// A duration flag (`--interval 3s`), with the hint the docs give rather than the parser's
/// list of unit names.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|_| {
        format!("expected a number and a unit, e.g. 3s, 500ms, 5m or 1h, found {text:?}")
    })
}

/// Colour for `--color`: `always` and `never` as said; `auto` on a terminal unless `NO_COLOR`
/// is set to something (no-color.org: an empty value does not count).
fn use_colour(when: ColorWhen, no_color: Option<&std::ffi::OsStr>, terminal: bool) -> bool {
    match when {
        ColorWhen::Always => true,
        ColorWhen::Never => false,
        ColorWhen::Auto => terminal && no_color.is_none_or(|v| v.is_empty()),
    }
}

/// `dropdeploy completions <shell>`: the script on stdout.
fn completions(shell: clap_complete::Shell) -> u8 {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "dropdeploy", &mut std::io::stdout());
    EXIT_OK
}

/// `dropdeploy manpage`: the man page (section 1) on stdout: every command and flag.
fn manpage() -> u8 {
    use std::io::Write;
    let written =
        manual::page().and_then(|page| std::io::stdout().lock().write_all(page.as_bytes()));
    match written {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("dropdeploy: cannot write the man page: {e}");
            EXIT_FAILED
        }
    }
}

/// Logs go to stderr, filtered by `filter` (see [`log_filter`]), coloured when `colour`. When
/// stderr is the journal (a systemd service), text lines carry a syslog priority and no
/// timestamp, since journald adds its own; `--log-format json` is unchanged.
fn init_logging(format: LogFormat, filter: EnvFilter, colour: bool, journal: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Every format (text, JSON, journal) writes through the redaction.
        .with_writer(crate::redact::RedactingMakeWriter::new(std::io::stderr))
        .with_ansi(colour);
    match format {
        LogFormat::Text if journal => builder
            .event_format(crate::service::JournalFormat::new())
            .init(),
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn verbosity_raises_the_default_and_quiet_keeps_errors() {
        assert_eq!(filter_spec("warn", 0, false), "warn");
        assert_eq!(filter_spec("warn", 1, false), "warn,dropdeploy=info");
        assert_eq!(filter_spec("warn", 2, false), "warn,dropdeploy=debug");
        assert_eq!(filter_spec("warn", 3, false), "trace");
        assert_eq!(filter_spec("info", 1, false), "info");
        assert_eq!(filter_spec("info", 2, false), "info,dropdeploy=debug");
        assert_eq!(filter_spec("info", 0, true), "error");
    }

    #[test]
    fn rust_log_wins_when_set_and_valid() {
        let shown = |f: EnvFilter| f.to_string();
        assert_eq!(shown(log_filter(Some("debug"), "warn", 0, true)), "debug");
        assert_eq!(shown(log_filter(Some(""), "warn", 0, true)), "error");
        assert_eq!(shown(log_filter(None, "info", 0, false)), "info");
    }

    #[test]
    fn no_color_turns_auto_off_unless_empty_and_always_wins() {
        let set = Some(std::ffi::OsStr::new("1"));
        let empty = Some(std::ffi::OsStr::new(""));
        assert!(use_colour(ColorWhen::Auto, None, true));
        assert!(use_colour(ColorWhen::Auto, empty, true));
        assert!(!use_colour(ColorWhen::Auto, set, true));
        assert!(!use_colour(ColorWhen::Auto, None, false));
        assert!(use_colour(ColorWhen::Always, set, false));
        assert!(!use_colour(ColorWhen::Never, None, true));
    }

    #[test]
    fn deploy_accepts_a_region() {
        let cli = Cli::try_parse_from([
            "dropdeploy",
            "deploy",
            "--region",
            "osc-secnum-fr1",
            "-a",
            "x",
            "f.tar.gz",
        ]);
        let Ok(Cli {
            command: Command::Deploy { app, region, .. },
            ..
        }) = cli
        else {
            panic!("deploy --region is refused: {cli:?}");
        };
        assert_eq!(app, "x");
        assert_eq!(region.as_deref(), Some("osc-secnum-fr1"));
    }
}
