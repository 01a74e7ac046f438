//! `dropdeploy jobs list|resume ID|discard ID`: the jobs in the spool, what drives each, and
//! what to do with one that nothing drives (a `deploy` interrupted, a daemon stopped).

use super::*;
use crate::outcome::Driver;

/// The spool of `state_dir`, its daemon (if one runs) and the jobs, oldest first.
struct Spooled {
    config: Config,
    state_dir: PathBuf,
    spool: Spool,
    daemon: Option<u32>,
}

fn open(cli: &Cli, flag: Option<&PathBuf>) -> Result<Spooled, u8> {
    let (config, state_dir) = super::look::state_dir_for_reading(cli, flag)?;
    let spool = Spool::open(state_dir.join("spool")).map_err(|e| {
        eprintln!("dropdeploy: {e}");
        EXIT_FAILED
    })?;
    let daemon = crate::lock::StateLock::holder(&state_dir);
    Ok(Spooled {
        config,
        state_dir,
        spool,
        daemon,
    })
}

pub(super) async fn jobs(cli: &Cli, command: &JobsCommand, flag: Option<&PathBuf>) -> u8 {
    let spooled = match open(cli, flag) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(code) = super::fleet::jobs_command(&spooled.config, command) {
        return code;
    }
    match command {
        JobsCommand::List => list(&spooled),
        JobsCommand::Resume { id } => resume(cli, &spooled, id).await,
        JobsCommand::Discard { id } => {
            let (spooled, id) = (Arc::new(spooled), id.clone());
            let shared = spooled.clone();
            match crate::blocking::run(move || {
                Ok::<u8, std::convert::Infallible>(discard(&shared, &id))
            })
            .await
            {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("dropdeploy: {e}");
                    EXIT_FAILED
                }
            }
        }
    }
}

/// `jobs list`: one line per job, with what drives it.
fn list(s: &Spooled) -> u8 {
    let jobs = match s.spool.jobs() {
        Ok(jobs) => jobs,
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            return EXIT_FAILED;
        }
    };
    if jobs.is_empty() {
        println!("no jobs in {}", s.spool.dir().display());
        return EXIT_OK;
    }
    let mut rows = vec![[
        "JOB".to_string(),
        "APP".to_string(),
        "STATE".to_string(),
        "FILE".to_string(),
        "SINCE".to_string(),
        "DRIVEN BY".to_string(),
    ]];
    for job in jobs {
        let job = match job {
            Ok(job) => job,
            Err(e) => {
                eprintln!("dropdeploy: warning: {e}");
                continue;
            }
        };
        let driver = match Driver::of(&s.spool, &job, s.daemon) {
            Driver::Process => "a dropdeploy process".to_string(),
            Driver::Daemon(pid) => format!("the daemon (pid {pid}), in turn"),
            Driver::Nobody => "nothing: INTERRUPTED".to_string(),
        };
        rows.push([
            job.id.clone(),
            job.app.clone(),
            job.state.name().to_string(),
            label(&job),
            crate::outcome::rfc3339_utc(job.started_at.unwrap_or(job.created_at)),
            driver,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    EXIT_OK
}

/// The file (or URL) a job deploys, for one line.
fn label(job: &Job) -> String {
    match &job.payload {
        crate::queue::spool::Payload::Archive { original, .. } => original
            .file_name()
            .unwrap_or(original.as_os_str())
            .to_string_lossy()
            .into_owned(),
        crate::queue::spool::Payload::Url { url } => {
            crate::deploy::scalingo::api::display_url(url).to_string()
        }
    }
}

fn load(s: &Spooled, id: &str) -> Result<Job, u8> {
    if !s.spool.job_dir(id).is_dir() {
        eprintln!(
            "dropdeploy: no job {id} in {}; `dropdeploy jobs list` shows the jobs there",
            s.spool.dir().display()
        );
        return Err(EXIT_USAGE);
    }
    s.spool.load(id).map_err(|e| {
        eprintln!("dropdeploy: {e}");
        EXIT_FAILED
    })
}

/// `jobs resume ID`: the job driven to its end in the foreground, as `deploy` would.
async fn resume(cli: &Cli, s: &Spooled, id: &str) -> u8 {
    let job = match load(s, id) {
        Ok(job) => job,
        Err(code) => return code,
    };
    let app = job.app.clone();
    let setup = match OneShotSetup::set_up(cli, &app, &region_env(None), Some(&s.state_dir)) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return EXIT_USAGE;
        }
    };
    eprintln!(
        "dropdeploy: {app}: resuming job {id} ({} {})",
        job.state.name(),
        label(&job)
    );
    let follow = super::deploy::Follow {
        no_follow: false,
        interval: None,
        json: false,
        progress_bar: cli.progress_bar(),
    };
    let interrupted = super::deploy::on_interrupt(&app, Some(id.to_string()));
    let code = super::deploy::run_job(&setup, job, follow).await;
    interrupted.abort();
    code
}

/// What giving up a job leaves on the platform, in words.
fn left_on_platform(job: &Job) -> String {
    match &job.state {
        JobState::Deploying {
            deployment_id,
            platform_status,
            ..
        } => format!(
            "deployment {deployment_id} was already posted and goes on on the platform (last seen \
             {}): discarding only stops following it (`dropdeploy logs --app {app} \
             {deployment_id}` shows it)",
            platform_status.as_deref().unwrap_or("not seen yet"),
            app = job.app
        ),
        JobState::DeployRequested { .. } => format!(
            "a deployment may already have been posted (git_ref {}): if the platform made it, it \
             goes on there (`dropdeploy deployments --app {}` lists it)",
            job.git_ref, job.app
        ),
        JobState::Verifying { deployment_id } => format!(
            "deployment {} succeeded and is live on the platform; only its health check is dropped",
            deployment_id.as_deref().unwrap_or("-")
        ),
        _ => "nothing was posted to the platform".to_string(),
    }
}

/// The step a job had reached, for its failure.
fn step_of(state: &JobState) -> Step {
    match state {
        JobState::Queued => Step::Inspect,
        JobState::SourceCreated { .. } => Step::Upload,
        JobState::Uploaded { .. } | JobState::DeployRequested { .. } => Step::CreateDeployment,
        JobState::Verifying { .. } => Step::Verify,
        _ => Step::Follow,
    }
}

/// `jobs discard ID`: the job ends as failed, "discarded by hand", recorded like any outcome
/// (a dropped file goes to `failed/` with its reason; nothing is lost). Blocking.
fn discard(s: &Spooled, id: &str) -> u8 {
    let job = match load(s, id) {
        Ok(job) => job,
        Err(code) => return code,
    };
    let app = job.app.clone();
    if let Some(pid) = s.daemon {
        eprintln!(
            "dropdeploy: {app}: the daemon (pid {pid}) runs on {} and drives its jobs; stop it \
             before discarding one",
            s.state_dir.display()
        );
        return EXIT_USAGE;
    }
    let _lock = match crate::lock::JobLock::try_acquire(&s.spool.job_dir(id)) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            eprintln!(
                "dropdeploy: {app}: job {id} is being driven by another dropdeploy process; \
                 stop it first (Ctrl-C), then discard"
            );
            return EXIT_USAGE;
        }
        Err(e) => {
            eprintln!("dropdeploy: {app}: cannot lock job {id}: {e}");
            return EXIT_FAILED;
        }
    };
    let left = left_on_platform(&job);
    let job = if job.is_done() {
        job
    } else {
        let deployment_id = match &job.state {
            JobState::Deploying { deployment_id, .. } => Some(deployment_id.clone()),
            JobState::Verifying { deployment_id } => deployment_id.clone(),
            _ => None,
        };
        let failure = crate::queue::spool::Failure {
            step: step_of(&job.state),
            reason: format!(
                "discarded by hand (`dropdeploy jobs discard`) in state {}: {left}",
                job.state.name()
            ),
            status: None,
            deployment_id,
            log_tail: Vec::new(),
            http_status: None,
            gave_up: false,
        };
        let job = Job {
            state: JobState::Failed(failure),
            ..job
        };
        if let Err(e) = s.spool.save(&job) {
            eprintln!("dropdeploy: {app}: {e}");
            return EXIT_FAILED;
        }
        job
    };
    let keep_done = s.config.app(&app).map_or(20, |a| a.keep_done);
    let outcomes = crate::outcome::Outcomes::new(&s.state_dir, s.spool.clone());
    match outcomes.record(&job, keep_done) {
        Ok(entry) => {
            let moved = entry
                .moved_to
                .as_ref()
                .map(|p| format!("; the archive is in {p}"))
                .unwrap_or_default();
            println!("{app}: job {id} discarded: {left}{moved}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("dropdeploy: {app}: job {id}: cannot record its end: {e}");
            EXIT_FAILED
        }
    }
}
