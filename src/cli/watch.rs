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
    if let Err(e) = super::platform::check_app_name(app) {
        return fail(e);
    }
    let WatchSetup {
        setup,
        root,
        watcher,
    } = match set_up(cli) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    if let Err(e) = super::platform::check_region(&setup.config, app).await {
        return fail(e);
    }
    if let Err((code, e)) = super::platform::check_app(&setup, app).await {
        eprintln!("dropdeploy: {app}: {e}");
        return code;
    }
    // Taken over before saying "watching", so that an early Ctrl-C stops cleanly too.
    let shutdown = match ctrl_c() {
        Ok(shutdown) => shutdown,
        Err(e) => return fail(format!("cannot handle Ctrl-C: {e}")),
    };
    let printer = Arc::new(Printer::new(cli.progress_bar()));
    // The daemon's lane, target (Scalingo or local releases) and outcome recording.
    let overrides = crate::daemon::Overrides {
        follow_interval: *interval,
        follow: true,
        output: true,
    };
    let pipeline = match setup.open(app, printer.clone(), shutdown.clone(), overrides) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let Some(lane) = pipeline.sender() else {
        return fail("the app's lane did not start".to_string());
    };
    let count = watcher.watch_count();
    say!(
        "{app}: watching {} ({count} director{}); Ctrl-C to stop",
        root.display(),
        if count == 1 { "y" } else { "ies" }
    );
    let states = watcher.state();
    tokio::spawn(say_gaps(app.clone(), watcher.state()));
    let interrupted = shutdown.clone();
    let cfg = redeploy_config(pipeline.app(), &setup, !no_deploy_on_start);
    let deploy = move |job: Job| {
        let (lane, printer) = (lane.clone(), printer.clone());
        async move {
            let started = Instant::now();
            let finished = lane.submit_watched(job.clone())?.await.ok();
            printer.finish();
            if let Some(state) = &finished {
                print_outcome(&job.app, state, started.elapsed());
            }
            finished
        }
    };
    let name = app.clone();
    redeploy::run(
        cfg,
        watcher,
        setup.spool.clone(),
        deploy,
        shutdown,
        |event| print_tree_event(&name, event),
    )
    .await;
    pipeline.close().await;
    say_stopped(app, &interrupted, &states)
}

/// The loop's settings for the app: its ref label and `deploy_on_start` from the
/// configuration if it is configured there (else its name, and the flag).
fn redeploy_config(
    app: &crate::config::AppConfig,
    setup: &OneShotSetup,
    deploy_on_start: bool,
) -> crate::source::redeploy::RedeployConfig {
    crate::source::redeploy::RedeployConfig {
        app: app.name.clone(),
        label: app.ref_label().to_string(),
        prefix: app.name.clone(),
        limits: Limits {
            max_uncompressed: setup.config.max_archive_bytes,
        },
        deploy_on_start,
        state_dir: setup.state_dir.clone(),
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
        say!("{app}: stopped");
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

/// What the loop needs, made from the command line: the configuration and spool, and the
/// watched tree.
struct WatchSetup {
    setup: OneShotSetup,
    root: PathBuf,
    watcher: crate::source::tree::TreeWatcher,
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
    let setup = OneShotSetup::set_up(cli, app, &region_env(region.as_deref()), state_dir.as_ref())?;
    let root = match std::path::absolute(dir) {
        Ok(r) => r,
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let tree = TreeConfig {
        app: app.clone(),
        root: root.clone(),
        ignore: ignore.clone(),
        include: include.clone(),
        always_ignore: vec![setup.state_dir.clone()],
        quiet: *debounce,
        max_wait: *max_wait,
        poll: *poll,
        give_up: Some(*give_up_after),
    };
    let watcher = match TreeWatcher::start(tree) {
        Ok(w) => w,
        Err(e) => return Err(e.to_string()),
    };
    Ok(WatchSetup {
        setup,
        root,
        watcher,
    })
}

/// One line per step of the loop.
fn print_tree_event(name: &str, event: &crate::source::redeploy::TreeEvent<'_>) {
    use crate::source::redeploy::TreeEvent;
    match event {
        TreeEvent::Changed(burst) if burst.overflow => {
            say!("{name}: many files changed")
        }
        TreeEvent::Changed(burst) => say!(
            "{name}: {} file{} changed",
            burst.changed_paths,
            if burst.changed_paths == 1 { "" } else { "s" }
        ),
        TreeEvent::Unchanged => say!("{name}: unchanged since the last deploy; nothing to do"),
        TreeEvent::Packing => say!("{name}: packing"),
        TreeEvent::Packed { job, elapsed } => say!(
            "{name}: packed {} in {}",
            crate::queue::intake::summary(job)
                .map(|s| crate::human::bytes(s.compressed_bytes))
                .unwrap_or_default(),
            crate::human::duration(*elapsed)
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
            TreeState::Partial { root, cause, .. } if said.as_ref() != Some(&cause) => {
                println!("{app}: {} is partly watched: {cause}", root.display());
                said = Some(cause);
            }
            TreeState::Watched if said.take().is_some() => {
                say!("{app}: the source directory is back; watching it again");
            }
            _ => {}
        }
    }
}

/// The one line that ends a deployment in the developer's terminal.
pub(super) fn print_outcome(app: &str, state: &JobState, elapsed: std::time::Duration) {
    match state {
        JobState::Succeeded { deployment_id } => say!(
            "{app}: {} in {} (deployment {deployment_id})",
            super::paint("success", super::Paint::Good),
            crate::human::duration(elapsed)
        ),
        JobState::Failed(f) => {
            println!(
                "{app}: {} at step {}: {}",
                super::paint("FAILED", super::Paint::Bad),
                f.step,
                f.reason
            );
        }
        JobState::Unhealthy { reason, .. } => {
            println!("{app}: UNHEALTHY after deploying: {reason}");
        }
        other => println!("{app}: {}", other.name()),
    }
}
