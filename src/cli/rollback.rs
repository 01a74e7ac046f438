//! `dropdeploy rollback APP [--to GIT_REF|JOB]` and `dropdeploy resume APP`: bringing back a
//! kept, verified archive by hand, and clearing an app's `needs attention` flag.

use super::*;
use crate::verify::rollback::{make, new_id};
use crate::verify::store::{Kept, Store};

/// The kept archives, one per line, for messages.
fn list(kept: &[Kept]) -> String {
    if kept.is_empty() {
        return "  (none)".to_string();
    }
    kept.iter()
        .map(|k| {
            let aka = if k.aliases.is_empty() {
                String::new()
            } else {
                format!("; also known as {}", k.aliases.join(", "))
            };
            format!(
                "  {} (git_ref {}, job {}, verified {}{aka})",
                k.file,
                k.git_ref,
                k.job,
                crate::outcome::rfc3339_utc(k.verified_at)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) async fn rollback(
    cli: &Cli,
    app: &str,
    to: Option<&str>,
    state_dir: Option<&PathBuf>,
) -> u8 {
    let setup = match OneShotSetup::set_up(cli, app, &Env::from_process(), state_dir) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            return EXIT_USAGE;
        }
    };
    if setup.config.app(app).is_none() {
        eprintln!("dropdeploy: {app} is not an app of the configuration");
        return EXIT_USAGE;
    }
    if super::fleet::in_fleet_mode(&setup.config) {
        return super::fleet::not_in_fleet_mode(
            "rollback",
            "Roll back by pushing the archive to deploy again (`dropdeploy push`, or a drop \
             folder): the node holding the lane deploys it.",
        );
    }
    let store = Store::new(&setup.state_dir);
    let kept = match store.kept(app) {
        Ok(kept) => kept,
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return EXIT_FAILED;
        }
    };
    let Some(chosen) = crate::verify::rollback::choose(&kept, to).cloned() else {
        let wanted = to.map(|t| format!(" named {t}")).unwrap_or_default();
        eprintln!(
            "dropdeploy: {app}: no verified archive{wanted} is kept, nothing to roll back to; kept verified archives:\n{}",
            list(&kept)
        );
        return EXIT_FAILED;
    };
    esay!(
        "dropdeploy: {app}: rolling back to {}: the archive is deployed again (a new build); database migrations made since are NOT undone",
        crate::queue::check::named(&chosen.file, &chosen.git_ref)
    );
    let history = setup.state_dir.join(crate::outcome::HISTORY_NAME);
    let live = crate::outcome::live_now(&setup.state_dir, app);
    let of = crate::verify::rollback::by_hand(&chosen, live);
    let id = new_id();
    let made = {
        let (spool, store) = (setup.spool.clone(), store.clone());
        crate::blocking::run(move || make(&spool, &store, &id, &chosen, of)).await
    };
    let job = match made {
        Ok(job) => job,
        Err(e) => {
            eprintln!("dropdeploy: {app}: cannot make the rollback job: {e:?}");
            return EXIT_FAILED;
        }
    };
    run_and_report(cli, &setup, job, &history).await
}

/// Drives the rollback job through the app's own pipeline (its target with its check, its
/// lane, its outcome recording) and says how it ended, from its history line.
async fn run_and_report(
    cli: &Cli,
    setup: &OneShotSetup,
    job: Job,
    history: &std::path::Path,
) -> u8 {
    let app = job.app.clone();
    let printer = Arc::new(Printer::on_stderr(cli.progress_bar()));
    let mut pipeline = match setup.open(
        &app,
        printer.clone(),
        crate::shutdown::Shutdown::never(),
        crate::daemon::Overrides::default(),
    ) {
        Ok(pipeline) => pipeline,
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return EXIT_USAGE;
        }
    };
    let id = job.id.clone();
    let finished = match pipeline.submit(job) {
        Ok(done) => done.await.ok(),
        Err(_) => None,
    };
    pipeline.close().await;
    printer.finish();
    if finished.is_none() {
        eprintln!(
            "dropdeploy: {app}: the rollback job {id} stopped before its end; it stays in the spool"
        );
        return EXIT_FAILED;
    }
    let entry = crate::outcome::read_history(history, Some(&app), Some(10))
        .ok()
        .and_then(|entries| entries.into_iter().rev().find(|e| e.job == id));
    match entry {
        Some(entry) => {
            let line = format!(
                "{app}: {} ({})",
                entry.outcome,
                entry.reason.as_deref().unwrap_or("-")
            );
            if entry.outcome.is_success() {
                say!("{line}");
                EXIT_OK
            } else {
                println!("{line}");
                EXIT_FAILED
            }
        }
        None => {
            eprintln!("dropdeploy: {app}: the rollback job {id} has no history line");
            EXIT_FAILED
        }
    }
}

/// `dropdeploy resume APP`: the app no longer needs attention. An app that is neither
/// configured nor flagged is an error (a typo must not read as "done").
pub(super) fn resume(cli: &Cli, app: &str, state_dir: Option<&PathBuf>) -> u8 {
    let config = match load_config(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            return EXIT_USAGE;
        }
    };
    let state_dir = state_dir.cloned().unwrap_or_else(|| match &cli.config {
        Some(_) => config.state_dir.clone(),
        None => default_user_state_dir(),
    });
    if super::fleet::in_fleet_mode(&config) {
        return super::fleet::not_in_fleet_mode(
            "resume",
            "The app's next job (a drop, a push) deploys as usual on the node holding its lane.",
        );
    }
    let store = Store::new(&state_dir);
    if config.app(app).is_none() && store.attention(app).is_none() {
        eprintln!(
            "dropdeploy: {app} is not an app of the configuration{} and does not need attention",
            cli.config
                .as_ref()
                .map(|c| format!(" ({})", c.display()))
                .unwrap_or_default()
        );
        return EXIT_USAGE;
    }
    match store.clear_attention(app) {
        Ok(true) => {
            say!("{app}: no longer needs attention; its next drop or save deploys as usual");
            EXIT_OK
        }
        Ok(false) => {
            say!("{app}: did not need attention");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            EXIT_FAILED
        }
    }
}
