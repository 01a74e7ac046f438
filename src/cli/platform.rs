//! The commands that read the platform as its own CLI does: `deployments` (an app's recent
//! deployments), `deployment-logs` (a deployment's build output, alias `logs`) and
//! `deployment-follow` (the same streamed to the deployment's end), and the
//! region check that `deploy` makes before it takes a job.

use std::time::{Duration, SystemTime};

use super::*;
use crate::deploy::scalingo::api::{ApiError, Deployment, ScalingoClient};
use crate::deploy::scalingo::driver::strip_ansi;
use crate::deploy::scalingo::follow::{Phase, phase};
use crate::deploy::scalingo::stream::{Link, ShownLines, StreamEvent, Update};

/// Before any job exists: the app's region (its own, else `[scalingo]`'s when no API URL was
/// given) must be one the platform lists. Only a permanent answer is an error; a platform that
/// cannot be asked now is not, nor a missing token (said later, where it is needed).
pub(super) async fn check_region(config: &Config, app: &str) -> Result<(), String> {
    let Some(token) = config.scalingo.token.clone() else {
        return Ok(());
    };
    let own = config.app(app).and_then(|a| a.region.clone());
    if own.is_none() && (config.scalingo.api_url_explicit || config.scalingo.region.is_none()) {
        return Ok(());
    }
    let client = Arc::new(ScalingoClient::new(&config.scalingo, token).map_err(|e| e.to_string())?);
    let client = match &own {
        Some(region) => client.in_region(region),
        None => client,
    };
    match client.resolve().await {
        Err(e) if !e.is_transient() => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// `--app` must be a name the configuration would accept, before anything is read or sent.
pub(super) fn check_app_name(app: &str) -> Result<(), String> {
    if crate::config::is_app_name(app) {
        return Ok(());
    }
    Err(format!(
        "--app \"{app}\" is not a Scalingo app name (lowercase letters, digits and dashes, not \
         starting with a dash); nothing was uploaded"
    ))
}

/// Before the archive is uploaded: the app must exist on the platform (one `GET
/// /v1/apps/:app`, whose answer the deployments stream then uses). A 404 is exit status 1, a
/// refused token 2, both said before any upload; a platform that cannot be asked now is not an
/// error (the job retries on its own). Apps with a local target are not asked.
pub(super) async fn check_app(setup: &OneShotSetup, app: &str) -> Result<(), (u8, String)> {
    let Some(client) = &setup.client else {
        return Ok(());
    };
    let client = match setup.config.app(app).and_then(|a| a.region.clone()) {
        Some(region) => client.in_region(&region),
        None => client.clone(),
    };
    match client.check_app(app).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_transient() => {
            eprintln!("dropdeploy: {app}: cannot look at the app now ({e}); going on");
            Ok(())
        }
        Err(e) if e.status() == Some(404) => Err((
            EXIT_FAILED,
            format!(
                "the platform has no app named {app} ({e}); check --app and the region \
                 (--region, SCALINGO_REGION); nothing was uploaded"
            ),
        )),
        Err(e) if e.status() == Some(401) => Err((EXIT_USAGE, e.to_string())),
        Err(e) => Err((EXIT_FAILED, format!("{e}; nothing was uploaded"))),
    }
}

/// A client for the app, from the command line (`--region`, the environment, the config).
async fn client_for(
    cli: &Cli,
    app: &str,
    region: Option<&str>,
) -> Result<(Config, Arc<ScalingoClient>), String> {
    let config = load_config_with(cli, &region_env(region))?;
    let token = config
        .scalingo
        .require_token()
        .map_err(|e| e.to_string())?
        .clone();
    check_region(&config, app).await?;
    let client = Arc::new(ScalingoClient::new(&config.scalingo, token).map_err(|e| e.to_string())?);
    let client = match config.app(app).and_then(|a| a.region.clone()) {
        Some(region) => client.in_region(&region),
        None => client,
    };
    Ok((config, client))
}

use super::setup::load_config_with;

fn exit_for(e: &ApiError) -> u8 {
    if e.is_transient() {
        EXIT_GAVE_UP
    } else {
        EXIT_FAILED
    }
}

/// `dropdeploy deployments --app A`: id, git_ref, status, age and duration of the most recent
/// deployments, newest first.
pub(super) async fn deployments(cli: &Cli, app: &str, region: Option<&str>, limit: u32) -> u8 {
    let (_, client) = match client_for(cli, app, region).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return EXIT_USAGE;
        }
    };
    let page = match client.list_deployments(app, 1, limit.clamp(1, 50)).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return exit_for(&e);
        }
    };
    let now = SystemTime::now();
    println!(
        "{:<38} {:<40} {:<14} {:>9} {:>9}",
        "ID", "GIT_REF", "STATUS", "AGE", "DURATION"
    );
    for d in &page.deployments {
        let (age, took) = times(d, now);
        println!(
            "{:<38} {:<40} {:<14} {:>9} {:>9}",
            d.id,
            d.git_ref.as_deref().unwrap_or("-"),
            if d.status.is_empty() { "-" } else { &d.status },
            age,
            took
        );
    }
    EXIT_OK
}

/// A deployment's age (since `created_at`) and duration (to `finished_at`, or `running`).
fn times(d: &Deployment, now: SystemTime) -> (String, String) {
    let parse = |t: Option<&str>| t.and_then(crate::deploy::scalingo::lenient::timestamp);
    let created = parse(d.created_at.as_deref());
    let finished = parse(d.finished_at.as_deref());
    let short = |span: Duration| crate::human::duration(Duration::from_secs(span.as_secs()));
    let age = created
        .and_then(|c| now.duration_since(c).ok())
        .map(short)
        .unwrap_or_else(|| "-".to_string());
    let took = match (created, finished) {
        (Some(c), Some(f)) => f
            .duration_since(c)
            .map(short)
            .unwrap_or_else(|_| "-".into()),
        (_, None) if phase(&d.status) == Phase::Running => "running".to_string(),
        _ => "-".to_string(),
    };
    (age, took)
}

/// `dropdeploy logs --app A [DEPLOYMENT] [--follow]`: the build output of a deployment (the
/// latest by default); `--follow` streams what comes until the deployment ends.
pub(super) async fn logs(
    cli: &Cli,
    app: &str,
    region: Option<&str>,
    deployment: Option<&str>,
    follow: bool,
) -> u8 {
    let (config, client) = match client_for(cli, app, region).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return EXIT_USAGE;
        }
    };
    let d = match find_deployment(&client, app, deployment).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return exit_for(&e);
        }
    };
    let running = phase(&d.status) == Phase::Running;
    // Subscribed before the output is read, so that nothing said meanwhile is lost.
    let mut stream = (follow && running).then(|| client.stream(app));
    if let Some(s) = stream.as_mut() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !matches!(s.link(), Link::Up(_) | Link::Refused) {
            if tokio::time::timeout_at(deadline, s.next()).await.is_err() {
                break;
            }
        }
    }
    let mut shown = ShownLines::default();
    match client.output(&d).await {
        Ok(Some(text)) => print_lines(&shown.polled(text.lines().map(strip_ansi).collect())),
        Ok(None) => {}
        Err(e) => {
            eprintln!("dropdeploy: {app}: {e}");
            return exit_for(&e);
        }
    }
    // The connection may start with the log so far, printed above: skipped.
    shown.connected();
    let Some(stream) = stream else {
        // Followed but already over: the exit status still says how it ended.
        return if follow { ended(&d.status) } else { EXIT_OK };
    };
    // Bounded like a followed deployment: the platform ends every deployment well before.
    let limit = config.scalingo.deploy_timeout;
    let followed = follow_output(&client, app, &d, stream, shown, &config);
    match tokio::time::timeout(limit, followed).await {
        Ok(code) => code,
        Err(_) => {
            eprintln!(
                "dropdeploy: {app}: deployment {} still running after {}; stopped following it",
                d.id,
                humantime::format_duration(limit)
            );
            EXIT_FAILED
        }
    }
}

/// The deployment named, or the app's newest.
async fn find_deployment(
    client: &ScalingoClient,
    app: &str,
    deployment: Option<&str>,
) -> Result<Deployment, ApiError> {
    match deployment {
        Some(id) => client.get_deployment(app, id).await,
        None => client
            .list_deployments(app, 1, 1)
            .await?
            .deployments
            .into_iter()
            .next()
            .ok_or(ApiError::Decode {
                what: "list deployments",
                detail: format!("app {app} has no deployment yet"),
            }),
    }
}

/// Prints the running deployment's new build lines until it ends: from the stream while it
/// is up, else by polling its output (paced by the budget). `shown`: the lines already
/// printed; each line is printed once, whatever the stream replays.
async fn follow_output(
    client: &ScalingoClient,
    app: &str,
    d: &Deployment,
    mut stream: crate::deploy::scalingo::stream::Subscription,
    mut shown: ShownLines,
    config: &Config,
) -> u8 {
    let budget = client.budget().clone();
    loop {
        if matches!(stream.link(), Link::Up(_)) {
            match stream.next().await {
                Update::Event(StreamEvent::Log { id, content }) if id == d.id => {
                    print_lines(&shown.streamed(content.lines().map(strip_ansi)))
                }
                Update::Link(Link::Up(_)) => shown.connected(),
                Update::Event(StreamEvent::Status { id, status })
                    if id == d.id && phase(&status) != Phase::Running =>
                {
                    eprintln!("{app}: deployment {} ended: {status}", d.id);
                    return ended(&status);
                }
                _ => {}
            }
            continue;
        }
        // No stream: poll the output, paced by the budget.
        let _poller = budget.polling();
        tokio::time::sleep(budget.poll_interval(config.scalingo.follow_interval)).await;
        let now = match client.get_deployment(app, &d.id).await {
            Ok(now) => now,
            Err(e) => {
                eprintln!("dropdeploy: {app}: {e}");
                return exit_for(&e);
            }
        };
        if let Ok(Some(text)) = client.output(&now).await {
            print_lines(&shown.polled(text.lines().map(strip_ansi).collect()));
        }
        if phase(&now.status) != Phase::Running {
            eprintln!("{app}: deployment {} ended: {}", d.id, now.status);
            return ended(&now.status);
        }
    }
}

/// The exit status of a followed deployment that ended with `status`: 0 for a success only.
fn ended(status: &str) -> u8 {
    match phase(status) {
        Phase::Succeeded => EXIT_OK,
        _ => EXIT_FAILED,
    }
}

fn print_lines(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
}
