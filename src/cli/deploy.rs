//! `dropdeploy deploy`: one archive (or URL), from any recorded state to its end.

use super::*;

pub(super) async fn deploy(cli: &Cli) -> u8 {
    let Command::Deploy {
        app,
        region,
        git_ref,
        no_follow,
        state_dir,
        interval,
        json,
        archive,
    } = &cli.command
    else {
        return EXIT_USAGE;
    };
    let fail = |msg: String| {
        eprintln!("dropdeploy: {app}: {msg}");
        EXIT_USAGE
    };
    if let Err(e) = super::platform::check_app_name(app) {
        return fail(e);
    }
    if let Some(r) = git_ref
        && !valid_git_ref(r)
    {
        return fail(format!(
            "--git-ref {r:?} is not accepted by the platform: a git_ref becomes part of an image tag, so use only letters, digits, '.', '_' and '-', at most 128 of them, not starting with '-' or '.'"
        ));
    }
    let setup =
        match OneShotSetup::set_up(cli, app, &region_env(region.as_deref()), state_dir.as_ref()) {
            Ok(x) => x,
            Err(e) => return fail(e),
        };
    let (config, spool) = (&setup.config, &setup.spool);
    if super::fleet::in_fleet_mode(config) {
        // Deploying here would drive the app outside the fleet's lease on its lane.
        return super::fleet::not_in_fleet_mode(
            "deploy",
            "Hand the archive to the fleet instead: `dropdeploy push --to <a node's intake> \
             --app APP FILE --wait`, or drop it into a node's drop folder.",
        );
    }
    if let Err(e) = super::platform::check_region(config, app).await {
        return fail(e);
    }
    // A missing file is said by the copy below, before anything is sent.
    let readable = archive.starts_with("http://")
        || archive.starts_with("https://")
        || std::path::Path::new(archive).is_file();
    if readable && let Err((code, e)) = super::platform::check_app(&setup, app).await {
        // Where `deploy` says how a job ended: stdout, unless it is for --json.
        if *json {
            eprintln!("dropdeploy: {app}: {e}");
        } else {
            println!("dropdeploy: {app}: {e}");
        }
        return code;
    }
    let label = config
        .app(app)
        .and_then(|a| a.git_ref_label.clone())
        .unwrap_or_else(|| app.clone());
    let limits = Limits {
        max_uncompressed: config.max_archive_bytes,
    };

    let before = on_interrupt(app, None);
    let is_url = archive.starts_with("http://") || archive.starts_with("https://");
    let job = if is_url {
        match find_unfinished(spool, app, &PayloadKey::Url(archive), None) {
            Some(job) => job,
            None => match enqueue_url(spool, app, archive, &label, git_ref.as_deref()) {
                Ok(job) => job,
                Err(e) => return fail(e.to_string()),
            },
        }
    } else {
        match archive_job(
            spool,
            app,
            archive,
            &label,
            git_ref.as_deref(),
            limits,
            *json,
        )
        .await
        {
            Ok(job) => job,
            Err(code) => return code,
        }
    };
    before.abort();
    let interrupted = on_interrupt(app, Some(job.id.clone()));
    let follow = Follow {
        no_follow: *no_follow,
        interval: *interval,
        json: *json,
        progress_bar: cli.progress_bar(),
    };
    let code = run_job(&setup, job, follow).await;
    interrupted.abort();
    code
}

/// Ctrl-C ends the process with exit status 130, saying how to go on: the job (once made)
/// stays in the spool at its last recorded state, and the same command resumes it.
pub(super) fn on_interrupt(app: &str, job: Option<String>) -> tokio::task::JoinHandle<()> {
    let app = app.to_string();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut interrupt) = signal(SignalKind::interrupt()) else {
            return;
        };
        if interrupt.recv().await.is_none() {
            return;
        }
        match &job {
            Some(id) => eprintln!(
                "\ndropdeploy: {app}: interrupted; job {id} stays in the spool where it stopped: \
                 run the same command again to resume (or `dropdeploy jobs resume {id}`; \
                 `dropdeploy jobs discard {id}` gives it up)"
            ),
            None => eprintln!(
                "\ndropdeploy: {app}: interrupted before the job was made; nothing was uploaded"
            ),
        }
        std::process::exit(130);
    })
}

/// How `deploy` follows a job and says how it ended.
pub(super) struct Follow {
    /// Return once the deployment is created.
    pub(super) no_follow: bool,
    /// Time between two polls of the deployment's status (default: the config's).
    pub(super) interval: Option<std::time::Duration>,
    /// The result as one JSON line on stdout, the human lines on stderr.
    pub(super) json: bool,
    /// A progress bar for the upload (a terminal, and not `-q`).
    pub(super) progress_bar: bool,
}

/// The job for an archive file: copied into the spool and checked, or the unfinished job of
/// the same archive for this app (an earlier run interrupted), which is then resumed. `Err`:
/// the exit status, the reason printed.
async fn archive_job(
    spool: &Spool,
    app: &str,
    archive: &str,
    label: &str,
    git_ref: Option<&str>,
    limits: Limits,
    json: bool,
) -> Result<Job, u8> {
    let fail = |msg: String| {
        eprintln!("dropdeploy: {app}: {msg}");
        EXIT_USAGE
    };
    let (spool2, file) = (spool.clone(), PathBuf::from(archive));
    let (app2, label2, git_ref2) = (
        app.to_string(),
        label.to_string(),
        git_ref.map(str::to_string),
    );
    let made = crate::blocking::run(move || {
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
        Ok(job) => job,
        Err(crate::blocking::BlockingError::Failed(IntakeError::Rejected {
            file,
            rejection,
            ..
        })) => {
            eprintln!(
                "dropdeploy: {app}: refused {} at step {}: {rejection}; nothing was uploaded",
                file.display(),
                Step::Inspect
            );
            if json {
                let result = serde_json::json!({
                    "app": app,
                    "job": null,
                    "git_ref": null,
                    "deployment_id": null,
                    "outcome": "failed",
                    "status": null,
                    "step": Step::Inspect.to_string(),
                    "duration_ms": 0,
                    "reason": rejection.to_string(),
                });
                println!("{result}");
            }
            return Err(EXIT_FAILED);
        }
        Err(e) => return Err(fail(e.to_string())),
    };
    let sha = match &new_job.payload {
        crate::queue::spool::Payload::Archive { summary, .. } => summary.sha256.clone(),
        crate::queue::spool::Payload::Url { .. } => String::new(),
    };
    // The same archive interrupted earlier for this app: resume that job instead.
    match find_unfinished(spool, app, &PayloadKey::Sha256(&sha), Some(&new_job.id)) {
        Some(old) => {
            spool.remove(&new_job.id).map_err(|e| fail(e.to_string()))?;
            Ok(old)
        }
        None => Ok(new_job),
    }
}

/// Drives the job through the app's pipeline (its lane, its target, its outcome recorded in
/// the history like the daemon's), then says how it ended. Returns the exit status.
pub(super) async fn run_job(setup: &OneShotSetup, job: Job, follow: Follow) -> u8 {
    let Follow {
        no_follow,
        interval,
        json,
        progress_bar,
    } = follow;
    let (app, spool) = (job.app.clone(), &setup.spool);
    if let Err(code) = not_driven_elsewhere(spool, &job) {
        return code;
    }
    // The record may have moved on while another process held it (the lane reads it again).
    let recorded = spool.load(&job.id).unwrap_or_else(|_| job.clone());
    let printer = Arc::new(Printer::on_stderr(progress_bar));
    if matches!(recorded.state, JobState::Queued) && recorded.started_at.is_none() {
        printer.line(&format!("{app}: {}", describe(&job)));
    }
    // Ctrl-C ends the process: the job stays in the spool, and the same command resumes it.
    let overrides = crate::daemon::Overrides {
        follow_interval: interval,
        follow: !no_follow,
        output: false,
    };
    let mut pipeline = match setup.open(
        &app,
        printer.clone(),
        crate::shutdown::Shutdown::never(),
        overrides,
    ) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return EXIT_USAGE;
        }
    };
    let started = Instant::now();
    let finished = match pipeline.submit(job.clone()) {
        Ok(done) => done.await.ok(),
        Err(_) => None,
    };
    // An unhealthy deployment made its rollback: the command sees it through.
    if matches!(finished, Some(JobState::Unhealthy { .. })) {
        pipeline.drain().await;
    } else {
        pipeline.close().await;
    }
    printer.finish();
    let took = started.elapsed();
    // Finished: its outcome is recorded (history, hook) and the spool forgot it. Else the
    // record says where it stopped.
    let job = match finished {
        Some(state) => Job { state, ..job },
        None => match spool.load(&job.id) {
            Ok(job) => job,
            Err(e) => {
                eprintln!("dropdeploy: {app}: job {} cannot be read: {e}", job.id);
                return EXIT_USAGE;
            }
        },
    };
    // The same words as the history's table for the same duration.
    let code = report(&job, &crate::human::duration(took), json);
    if json {
        println!("{}", json_result(&job, no_follow, took));
    }
    // A deployment not followed is the platform's business now: the job leaves the spool.
    if no_follow
        && !job.state.is_finished()
        && let Err(e) = spool.remove(&job.id)
    {
        eprintln!("dropdeploy: {app}: {e}");
    }
    code
}

/// A job that another process (the daemon) drives is its business: say so (and return the
/// exit status) rather than wait for it.
fn not_driven_elsewhere(spool: &Spool, job: &Job) -> Result<(), u8> {
    let app = &job.app;
    match crate::lock::JobLock::try_acquire(&spool.job_dir(&job.id)) {
        Ok(Some(_lock)) => Ok(()),
        Ok(None) => {
            eprintln!(
                "dropdeploy: {app}: job {} (the same archive) is being deployed by another \
                 dropdeploy process; not deploying it twice (see `dropdeploy status`)",
                job.id
            );
            Err(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("dropdeploy: {app}: cannot lock job {}: {e}", job.id);
            Err(EXIT_USAGE)
        }
    }
}

/// The last line of `deploy --json`: how the job ended, for scripts.
///
/// `outcome` is `succeeded`, `failed` or `superseded` as in the history, `created` for a
/// deployment not followed (`--no-follow`), else `stopped`; `status` is the platform's
/// status when known.
fn json_result(job: &Job, no_follow: bool, took: std::time::Duration) -> serde_json::Value {
    let (outcome, deployment_id, status, step, reason) = match &job.state {
        JobState::Succeeded { deployment_id } => (
            "succeeded",
            Some(deployment_id.clone()),
            Some("success".to_string()),
            None,
            None,
        ),
        JobState::Failed(f) => (
            "failed",
            f.deployment_id.clone(),
            f.status.clone(),
            Some(f.step.to_string()),
            Some(f.reason.clone()),
        ),
        JobState::Superseded { by } => (
            "superseded",
            None,
            None,
            None,
            Some(format!("superseded by job {by}")),
        ),
        JobState::Deploying {
            deployment_id,
            platform_status,
            ..
        } => (
            if no_follow { "created" } else { "stopped" },
            Some(deployment_id.clone()),
            platform_status.clone(),
            None,
            None,
        ),
        other => (
            "stopped",
            None,
            None,
            None,
            Some(format!("stopped in state {}", other.name())),
        ),
    };
    serde_json::json!({
        "app": job.app,
        "job": job.id,
        "git_ref": job.git_ref,
        "deployment_id": deployment_id,
        "outcome": outcome,
        "status": status,
        "step": step,
        "duration_ms": u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        "reason": reason,
    })
}

/// Prints how the job ended (on stdout, or on stderr when stdout is for `--json`) and returns
/// the exit status.
fn report(job: &Job, elapsed: &str, json: bool) -> u8 {
    let say = |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    // Under `-q`, a success says nothing: the exit status says it.
    let info = |line: &str| {
        if !super::quiet() {
            say(line)
        }
    };
    let app = &job.app;
    match &job.state {
        JobState::Succeeded { deployment_id } => {
            info(&format!(
                "{app}: {}: deployment {deployment_id} (git_ref {}) in {elapsed}",
                super::paint("success", super::Paint::Good),
                job.git_ref
            ));
            EXIT_OK
        }
        JobState::Deploying { deployment_id, .. } => {
            info(&format!(
                "{app}: deployment {deployment_id} created (git_ref {}); not following it",
                job.git_ref
            ));
            EXIT_OK
        }
        JobState::Failed(failure) => {
            let what = match &job.payload {
                crate::queue::spool::Payload::Archive { original, .. } => {
                    original.display().to_string()
                }
                crate::queue::spool::Payload::Url { url } => url.clone(),
            };
            say(&format!(
                "{app}: {} deploying {what} at step {}: {}",
                super::paint("FAILED", super::Paint::Bad),
                failure.step,
                failure.reason
            ));
            if !failure.log_tail.is_empty() {
                say(&format!(
                    "--- last {} lines of the build output ---",
                    failure.log_tail.len()
                ));
                for line in &failure.log_tail {
                    say(line);
                }
                say("---");
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
            say(&format!("{app}: superseded by job {by}"));
            EXIT_FAILED
        }
        JobState::Unhealthy { reason, .. } => {
            say(&format!(
                "{app}: {} after deploying (git_ref {}): {reason}",
                super::paint("UNHEALTHY", super::Paint::Bad),
                job.git_ref
            ));
            EXIT_FAILED
        }
        other => {
            say(&format!("{app}: stopped in state {}", other.name()));
            EXIT_FAILED
        }
    }
}

pub(super) fn describe(job: &Job) -> String {
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
