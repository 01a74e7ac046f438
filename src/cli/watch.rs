//! `dropdeploy watch`: the developer's hot-redeploy loop in the foreground.

use super::*;

pub(super) async fn watch(cli: &Cli) -> u8 {
    use crate::source::redeploy;
    let Command::Watch {
        app,
        no_deploy_on_start,
        interval,
        ..
    } = &cli.command
    else {
        return EXIT_USAGE;
    };
    let fail = |msg: String| {
        eprintln!("dropdeploy: {app}: {msg}");
        EXIT_USAGE
    };
    let WatchSetup {
        config,
        state_dir,
        spool,
        root,
        watcher,
        client,
    } = match set_up(cli) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    if let Err(e) = client.resolve().await
        && !e.is_transient()
    {
        return fail(e.to_string());
    }
    // Taken over before saying "watching", so that an early Ctrl-C stops cleanly too.
    let shutdown = match ctrl_c() {
        Ok(shutdown) => shutdown,
        Err(e) => return fail(format!("cannot handle Ctrl-C: {e}")),
    };
    println!(
        "{app}: watching {} ({} directories); Ctrl-C to stop",
        root.display(),
        watcher.watch_count()
    );
    let states = watcher.state();
    tokio::spawn(say_gaps(app.clone(), watcher.state()));
    let interrupted = shutdown.clone();
    let printer = Arc::new(Printer::new(cli.progress_bar()));
    let runner = foreground_runner(
        &config,
        client,
        &spool,
        *interval,
        printer.clone(),
        &shutdown,
    );
    let cfg = redeploy_config(&config, app, !no_deploy_on_start, state_dir);
    let deploy = {
        let (runner, spool, printer) = (runner.clone(), spool.clone(), printer.clone());
        move |job: Job| drive(runner.clone(), spool.clone(), printer.clone(), job)
    };
    let name = app.clone();
    redeploy::run(cfg, watcher, spool, deploy, shutdown, |event| {
        print_tree_event(&name, event)
    })
    .await;
    say_stopped(app, &interrupted, &states)
}

/// The runner that drives the loop's jobs in the foreground, telling `printer` each step and
/// stopping at `shutdown`.
fn foreground_runner(
    config: &Config,
    client: Arc<ScalingoClient>,
    spool: &Spool,
    interval: Option<std::time::Duration>,
    printer: Arc<Printer>,
    shutdown: &crate::shutdown::Shutdown,
) -> Arc<Runner> {
    Arc::new(
        Runner::new(
            client,
            spool.clone(),
            config.retry.clone(),
            interval.unwrap_or(config.scalingo.follow_interval),
            printer,
        )
        .with_deploy_timeout(config.scalingo.deploy_timeout)
        .with_shutdown(shutdown.clone())
        .with_output(),
    )
}

/// The loop's settings for `app`: its ref label from the configuration if it is configured
/// there, else its name.
fn redeploy_config(
    config: &Config,
    app: &str,
    deploy_on_start: bool,
    state_dir: PathBuf,
) -> crate::source::redeploy::RedeployConfig {
    crate::source::redeploy::RedeployConfig {
        app: app.to_string(),
        label: config
            .app(app)
            .map(|a| a.ref_label().to_string())
            .unwrap_or_else(|| app.to_string()),
        prefix: app.to_string(),
        limits: Limits {
            max_uncompressed: config.max_archive_bytes,
        },
        deploy_on_start,
        state_dir,
    }
}

/// Says why the loop ended, and the exit code: success after Ctrl-C, failure when it ended by
/// itself.
fn say_stopped(
    app: &str,
    interrupted: &crate::shutdown::Shutdown,
    states: &tokio::sync::watch::Receiver<crate::source::tree::TreeState>,
) -> u8 {
    use crate::source::tree::TreeState;
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

/// A stop that fires at the first Ctrl-C.
fn ctrl_c() -> std::io::Result<crate::shutdown::Shutdown> {
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (trigger, shutdown) = crate::shutdown::channel();
    tokio::spawn(async move {
        let _ = interrupt.recv().await;
        trigger.fire();
    });
    Ok(shutdown)
}

/// What the loop needs, made from the command line: the configuration, a spool, the watched
/// tree and the platform client.
struct WatchSetup {
    config: Config,
    state_dir: PathBuf,
    spool: Spool,
    root: PathBuf,
    watcher: crate::source::tree::TreeWatcher,
    client: Arc<ScalingoClient>,
}

fn set_up(cli: &Cli) -> Result<WatchSetup, String> {
    use crate::source::tree::{TreeConfig, TreeWatcher};
    let Command::Watch {
        app,
        region,
        debounce,
        max_wait,
        ignore,
        include,
        poll,
        give_up_after,
        state_dir,
        dir,
        ..
    } = &cli.command
    else {
        return Err("not the watch command".to_string());
    };
    let OneShot {
        config,
        token,
        state_dir,
        spool,
    } = OneShot::set_up(cli, &region_env(region.as_deref()), state_dir.as_ref())?;
    let root = match std::path::absolute(dir) {
        Ok(r) => r,
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let tree = TreeConfig {
        app: app.clone(),
        root: root.clone(),
        ignore: ignore.clone(),
        include: include.clone(),
        always_ignore: vec![state_dir.clone()],
        quiet: *debounce,
        max_wait: *max_wait,
        poll: *poll,
        give_up: Some(*give_up_after),
    };
    let watcher = match TreeWatcher::start(tree) {
        Ok(w) => w,
        Err(e) => return Err(e.to_string()),
    };
    let client = match ScalingoClient::new(&config.scalingo, token) {
        Ok(c) => Arc::new(c),
        Err(e) => return Err(e.to_string()),
    };
    Ok(WatchSetup {
        config,
        state_dir,
        spool,
        root,
        watcher,
        client,
    })
}

/// Drives one packed job to its end in the foreground, and says how it ended. `None`: it will
/// not finish now (Ctrl-C, another process drives it, or its record cannot be written).
async fn drive(
    runner: Arc<Runner>,
    spool: Spool,
    printer: Arc<Printer>,
    mut job: Job,
) -> Option<JobState> {
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

/// One line per step of the loop.
fn print_tree_event(name: &str, event: &crate::source::redeploy::TreeEvent<'_>) {
    use crate::source::redeploy::TreeEvent;
    match event {
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
    }
}

/// Tells the developer when the source directory stops being watched and when it is back.
pub(super) async fn say_gaps(
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
pub(super) fn print_outcome(job: &Job, elapsed: std::time::Duration) {
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
