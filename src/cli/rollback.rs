//! `dropdeploy rollback APP [--to GIT_REF|JOB]` and `dropdeploy resume APP`: bringing back a
//! kept, verified archive by hand, and clearing an app's `needs attention` flag.

use super::*;
use crate::config::RetryConfig;
use crate::verify::rollback::{make, new_id};
use crate::verify::store::{Kept, Store};

/// The kept archives, one per line, for messages.
fn list(kept: &[Kept]) -> String {
    if kept.is_empty() {
        return "  (none)".to_string();
    }
    kept.iter()
        .map(|k| {
            format!(
                "  {} (job {}, {}, verified {})",
                k.git_ref,
                k.job,
                k.file,
                crate::outcome::rfc3339_utc(k.verified_at)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The archive `to` names (a git_ref or a job id), else the last verified one.
fn choose<'a>(kept: &'a [Kept], to: Option<&str>) -> Option<&'a Kept> {
    match to {
        None => kept.first(),
        Some(to) => kept.iter().find(|k| k.git_ref == to || k.job == to),
    }
}

pub(super) async fn rollback(cli: &Cli, app: &str, to: Option<&str>) -> u8 {
    let config = match load_config(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            return EXIT_USAGE;
        }
    };
    let Some(app_cfg) = config.app(app).cloned() else {
        eprintln!("dropdeploy: {app} is not an app of the configuration");
        return EXIT_USAGE;
    };
    let state_dir = config.state_dir.clone();
    let store = Store::new(&state_dir);
    let kept = match store.kept(app) {
        Ok(kept) => kept,
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return EXIT_FAILED;
        }
    };
    let Some(chosen) = choose(&kept, to).cloned() else {
        let wanted = to.map(|t| format!(" named {t}")).unwrap_or_default();
        eprintln!(
            "dropdeploy: {app}: no verified archive{wanted} is kept, nothing to roll back to; kept verified archives:\n{}",
            list(&kept)
        );
        return EXIT_FAILED;
    };
    eprintln!(
        "dropdeploy: {app}: rolling back to {} ({}): the archive is deployed again (a new build); database migrations made since are NOT undone",
        chosen.git_ref, chosen.file
    );
    let spool = match Spool::open(state_dir.join("spool")) {
        Ok(spool) => spool,
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            return EXIT_FAILED;
        }
    };
    let history = state_dir.join(crate::outcome::HISTORY_NAME);
    let current = crate::outcome::read_history(&history, Some(app), Some(1))
        .ok()
        .and_then(|mut e| e.pop());
    let of = crate::queue::check::RollbackOf {
        from_job: current.as_ref().map(|e| e.job.clone()).unwrap_or_default(),
        from_ref: current
            .and_then(|e| e.git_ref)
            .unwrap_or_else(|| "-".to_string()),
        to_job: chosen.job.clone(),
        to_ref: chosen.git_ref.clone(),
        automatic: false,
    };
    let id = new_id();
    let made = {
        let (spool, store) = (spool.clone(), store.clone());
        crate::blocking::run(move || make(&spool, &store, &id, &chosen, of)).await
    };
    let mut job = match made {
        Ok(job) => job,
        Err(e) => {
            eprintln!("dropdeploy: {app}: cannot make the rollback job: {e:?}");
            return EXIT_FAILED;
        }
    };
    let printer = Arc::new(Printer::on_stderr(cli.progress_bar()));
    let target = match rollback_target(&config, &app_cfg, &spool, printer.clone()) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return EXIT_USAGE;
        }
    };
    let _lock = crate::lock::JobLock::try_acquire(&spool.job_dir(&job.id));
    if let Err(e) = target.run(&mut job).await {
        eprintln!("dropdeploy: {app}: job {} cannot be recorded: {e}", job.id);
        return EXIT_FAILED;
    }
    printer.finish();
    let outcomes = crate::outcome::Outcomes::new(&state_dir, spool);
    let keep = app_cfg.keep_done;
    let recorded = tokio::task::spawn_blocking(move || outcomes.record(&job, keep)).await;
    match recorded {
        Ok(Ok(entry)) => {
            println!(
                "{app}: {} ({})",
                entry.outcome,
                entry.reason.as_deref().unwrap_or("-")
            );
            if entry.outcome.is_success() {
                EXIT_OK
            } else {
                EXIT_FAILED
            }
        }
        Ok(Err(e)) => {
            eprintln!("dropdeploy: {app}: cannot record the outcome: {e}");
            EXIT_FAILED
        }
        Err(e) => {
            eprintln!("dropdeploy: {app}: cannot record the outcome: {e}");
            EXIT_FAILED
        }
    }
}

/// The app's target, with its check when it has one, as the daemon builds it.
fn rollback_target(
    config: &Config,
    app: &crate::config::AppConfig,
    spool: &Spool,
    printer: Arc<Printer>,
) -> Result<Arc<dyn crate::queue::lane::Target>, String> {
    let client = match app.target {
        crate::config::TargetConfig::Scalingo => {
            let token = config
                .scalingo
                .require_token()
                .map_err(|e| e.to_string())?
                .clone();
            let client = crate::deploy::scalingo::api::ScalingoClient::new(&config.scalingo, token)
                .map_err(|e| e.to_string())?;
            Some(Arc::new(client))
        }
        crate::config::TargetConfig::Local(_) => None,
    };
    let shutdown = crate::shutdown::Shutdown::never();
    let wiring = crate::deploy::Wiring {
        client,
        spool: spool.clone(),
        observer: printer.clone(),
        shutdown: shutdown.clone(),
    };
    let pacing = crate::deploy::Pacing {
        retry: RetryConfig {
            budget: app.retry_budget.unwrap_or(config.retry.budget),
            ..config.retry.clone()
        },
        follow_interval: app
            .follow_interval
            .unwrap_or(config.scalingo.follow_interval),
        deploy_timeout: app.deploy_timeout.unwrap_or(config.scalingo.deploy_timeout),
    };
    let target = crate::deploy::build(&app.target, &pacing, &wiring)?;
    let verify = crate::verify::Wiring {
        spool: spool.clone(),
        store: Store::new(&config.state_dir),
        observer: printer,
        board: Arc::new(crate::live::Board::in_memory()),
        shutdown,
        http: crate::verify::Wiring::probe_client()?,
    };
    Ok(crate::verify::VerifiedTarget::wrap(
        target,
        app.verify.as_ref(),
        &verify,
    ))
}

/// `dropdeploy resume APP`: the app no longer needs attention.
pub(super) fn resume(cli: &Cli, app: &str) -> u8 {
    let config = match load_config(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            return EXIT_USAGE;
        }
    };
    match Store::new(&config.state_dir).clear_attention(app) {
        Ok(true) => {
            println!("{app}: no longer needs attention; its next drop or save deploys as usual");
            EXIT_OK
        }
        Ok(false) => {
            println!("{app}: did not need attention");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            EXIT_FAILED
        }
    }
}
