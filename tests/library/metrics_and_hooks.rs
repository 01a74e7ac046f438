//! Metrics and outcome hooks over real loopback sockets: Prometheus scrapes `/metrics`, a
//! webhook receiver gets the outcome (again after transient errors), a dead webhook costs the
//! job nothing, and a hook command gets the outcome on stdin and in its environment, never the
//! API token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;

use dropdeploy::hooks::{HookConfig, Hooks};
use dropdeploy::metrics::{Metrics, serve};
use dropdeploy::outcome::{HistoryEntry, Outcome};
use dropdeploy::shutdown;

/// How long anything in these tests may take before it counts as never.
const DEADLINE: Duration = Duration::from_secs(15);

fn entry() -> HistoryEntry {
    HistoryEntry {
        time: "2026-11-25T17:42:58Z".into(),
        app: "my-app".into(),
        job: "20261125-174258-ab12".into(),
        file: "build.tar.gz".into(),
        git_ref: Some("my-app-20261125174258-deadbeef".into()),
        outcome: Outcome::Succeeded,
        status: Some("success".into()),
        deployment_id: Some("dep-1".into()),
        attempts: 1,
        duration_ms: 1234,
        bytes: Some(4096),
        ..HistoryEntry::default()
    }
}

/// Polls `done` until it holds or the deadline passes.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// A file's content once it is complete (ends with a line feed).
async fn read_when_written(path: &Path) -> String {
    let mut text = String::new();
    let written = eventually(|| {
        text = std::fs::read_to_string(path).unwrap_or_default();
        text.ends_with('\n')
    })
    .await;
    assert!(written, "{} was never written", path.display());
    text
}

#[tokio::test]
async fn prometheus_scrapes_the_deployments_and_healthz_says_ok() {
    let (trigger, stop) = shutdown::channel();
    let metrics = Metrics::new();
    let (addr, server) = serve("127.0.0.1:0".parse().unwrap(), metrics.clone(), stop)
        .await
        .unwrap();
    assert_ne!(addr.port(), 0);
    metrics.deployment_finished("my-app", "succeeded", 1_764_092_578);

    let client = dropdeploy::http::client_builder().build().unwrap();
    let page = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let content_type = page.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = page.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.contains(&r#"dropdeploy_deployments_total{app="my-app",outcome="succeeded"} 1"#),
        "{text}"
    );
    assert!(lines.contains(&"dropdeploy_up 1"), "{text}");
    assert!(
        lines.contains(&r#"dropdeploy_last_success_timestamp_seconds{app="my-app"} 1764092578"#),
        "{text}"
    );

    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");
    let missing = client
        .get(format!("http://{addr}/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    drop(client);
    trigger.fire();
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the metrics server stops when the shutdown fires")
        .unwrap();
}

#[tokio::test]
async fn a_busy_metrics_address_is_a_startup_error_naming_it() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let error = serve(addr, Metrics::new(), shutdown::Shutdown::never())
        .await
        .expect_err("the address is taken");
    let message = error.to_string();
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("metrics_listen"), "{message}");
}

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    content_type: String,
    user_agent: String,
    query: String,
    body: Vec<u8>,
}

struct Receiver {
    hits: Mutex<Vec<Hit>>,
    /// The answers to the first requests in turn (status, `Retry-After`); then 200.
    script: Vec<(StatusCode, Option<&'static str>)>,
}

/// A webhook receiver on 127.0.0.1 that answers 503 to the first `fail_first` requests: its
/// URL (with a secret-looking query) and what it got.
async fn receiver(fail_first: usize) -> (String, Arc<Receiver>) {
    scripted(vec![(StatusCode::SERVICE_UNAVAILABLE, None); fail_first]).await
}

/// A webhook receiver on 127.0.0.1 that answers its first requests from `script`, then 200.
async fn scripted(script: Vec<(StatusCode, Option<&'static str>)>) -> (String, Arc<Receiver>) {
    async fn hook(
        State(receiver): State<Arc<Receiver>>,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> (StatusCode, HeaderMap) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let mut hits = receiver.hits.lock().unwrap();
        hits.push(Hit {
            at: Instant::now(),
            content_type: header("content-type"),
            user_agent: header("user-agent"),
            query: uri.query().unwrap_or("").to_string(),
            body: body.to_vec(),
        });
        let (status, retry_after) = receiver
            .script
            .get(hits.len() - 1)
            .copied()
            .unwrap_or((StatusCode::OK, None));
        let mut answer = HeaderMap::new();
        if let Some(value) = retry_after {
            answer.insert("retry-after", value.parse().unwrap());
        }
        (status, answer)
    }
    let state = Arc::new(Receiver {
        hits: Mutex::new(Vec::new()),
        script,
    });
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook?token=s3cret"), state)
}

fn webhook(url: &str) -> HookConfig {
    HookConfig {
        webhook: Some(url.to_string()),
        ..HookConfig::default()
    }
}

#[tokio::test]
async fn a_webhook_gets_the_outcome_once() {
    let (url, receiver) = receiver(0).await;
    let hooks = Hooks::new().unwrap();
    hooks.notify(&webhook(&url), &entry());
    assert!(eventually(|| !receiver.hits.lock().unwrap().is_empty()).await);
    assert!(hooks.drain(DEADLINE).await);

    let hits = receiver.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 1, "{hits:?}");
    let hit = &hits[0];
    assert_eq!(hit.content_type, "application/json");
    assert_eq!(
        hit.user_agent,
        format!("dropdeploy/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(hit.query, "token=s3cret", "the URL is used as given");
    let got: HistoryEntry = serde_json::from_slice(&hit.body).unwrap();
    assert_eq!(got, entry());
}

#[tokio::test]
async fn a_webhook_answering_503_twice_gets_it_on_the_third_try() {
    let (url, receiver) = receiver(2).await;
    let hooks = Hooks::new().unwrap();
    hooks.notify(&webhook(&url), &entry());
    assert!(eventually(|| receiver.hits.lock().unwrap().len() >= 3).await);
    assert!(hooks.drain(DEADLINE).await);

    let hits = receiver.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 3, "no fourth try after a 200: {hits:?}");
    for hit in &hits {
        assert_eq!(
            serde_json::from_slice::<HistoryEntry>(&hit.body).unwrap(),
            entry()
        );
    }
    // The waits are jittered (drawn below 0.5 s, then 1 s): only their order is certain.
    assert!(hits.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test]
async fn a_webhook_answering_429_with_retry_after_is_tried_again_no_sooner() {
    let (url, receiver) = scripted(vec![(StatusCode::TOO_MANY_REQUESTS, Some("1"))]).await;
    let hooks = Hooks::new().unwrap();
    hooks.notify(&webhook(&url), &entry());
    assert!(eventually(|| receiver.hits.lock().unwrap().len() >= 2).await);
    assert!(hooks.drain(DEADLINE).await);

    let hits = receiver.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 2, "delivered on the second try: {hits:?}");
    let waited = hits[1].at.duration_since(hits[0].at);
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
}

#[tokio::test]
async fn a_webhook_answering_503_with_retry_after_is_tried_again_no_sooner() {
    let (url, receiver) = scripted(vec![(StatusCode::SERVICE_UNAVAILABLE, Some("1"))]).await;
    let hooks = Hooks::new().unwrap();
    hooks.notify(&webhook(&url), &entry());
    assert!(eventually(|| receiver.hits.lock().unwrap().len() >= 2).await);
    assert!(hooks.drain(DEADLINE).await);

    let hits = receiver.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(hits[1].at.duration_since(hits[0].at) >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_webhook_answering_400_is_not_tried_again() {
    let (url, receiver) = scripted(vec![(StatusCode::BAD_REQUEST, None)]).await;
    let hooks = Hooks::new().unwrap();
    let hook = HookConfig {
        retries: 5,
        ..webhook(&url)
    };
    hooks.notify(&hook, &entry());
    assert!(eventually(|| !receiver.hits.lock().unwrap().is_empty()).await);
    assert!(hooks.drain(DEADLINE).await);
    assert_eq!(receiver.hits.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_hook_with_only_failed_hears_of_failures_and_not_of_successes() {
    let (url, receiver) = receiver(0).await;
    let hooks = Hooks::new().unwrap();
    let hook = HookConfig {
        only: vec!["failed".into()],
        ..webhook(&url)
    };
    let failed = HistoryEntry {
        job: "20261125-174300-cd34".into(),
        outcome: Outcome::Failed,
        status: Some("build-error".into()),
        reason: Some("the build failed".into()),
        ..entry()
    };
    hooks.notify(&hook, &entry());
    hooks.notify(&hook, &failed);
    assert!(eventually(|| !receiver.hits.lock().unwrap().is_empty()).await);
    assert!(hooks.drain(DEADLINE).await);

    let hits = receiver.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 1, "only the failure: {hits:?}");
    let got: HistoryEntry = serde_json::from_slice(&hits[0].body).unwrap();
    assert_eq!(got, failed);
}

#[tokio::test]
async fn a_dead_webhook_costs_the_job_nothing() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let hooks = Hooks::new().unwrap();
    let hook = HookConfig {
        webhook: Some(format!("http://127.0.0.1:{port}/hook?token=s3cret")),
        retries: 2,
        timeout: Duration::from_secs(2),
        ..HookConfig::default()
    };
    let started = Instant::now();
    hooks.notify(&hook, &entry());
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "notify returns at once: {:?}",
        started.elapsed()
    );
    // Both attempts fail (connection refused); a WARN is logged and nothing panics.
    assert!(hooks.drain(DEADLINE).await);
}

/// A hook command running `script` under `sh`, with `$1` the directory `dir`.
fn command(script: &str, dir: &Path) -> HookConfig {
    HookConfig {
        command: vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            "sh".into(),
            dir.display().to_string(),
        ],
        ..HookConfig::default()
    }
}

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

#[tokio::test]
async fn a_command_gets_the_outcome_on_stdin_and_in_its_environment() {
    let (_keep, dir) = temp();
    let hooks = Hooks::new().unwrap();
    let hook = command(
        r#"cd "$1" && cat > out.json && echo "$DROPDEPLOY_APP $DROPDEPLOY_OUTCOME" > env.txt"#,
        &dir,
    );
    hooks.notify(&hook, &entry());
    let env = read_when_written(&dir.join("env.txt")).await;
    assert_eq!(env, "my-app succeeded\n");
    let out = std::fs::read(dir.join("out.json")).unwrap();
    assert_eq!(
        serde_json::from_slice::<HistoryEntry>(&out).unwrap(),
        entry()
    );
    assert!(hooks.drain(DEADLINE).await);
}

#[tokio::test]
async fn a_command_never_sees_the_api_token() {
    let (_keep, dir) = temp();
    // The environment the command would inherit holds the token: it must be taken out.
    let inherited = [
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("SCALINGO_API_TOKEN", "tk-us-secret".to_string()),
        ("KEEP_ME", "yes".to_string()),
    ];
    let hooks = Hooks::new().unwrap().with_inherited_env(inherited);
    let hook = command(
        r#"env > "$1/env.tmp" && mv "$1/env.tmp" "$1/env.txt""#,
        &dir,
    );
    hooks.notify(&hook, &entry());
    let env = read_when_written(&dir.join("env.txt")).await;
    let lines: Vec<&str> = env.lines().collect();
    assert!(lines.contains(&"KEEP_ME=yes"), "{env}");
    assert!(lines.contains(&"DROPDEPLOY_APP=my-app"), "{env}");
    assert!(
        lines.contains(&"DROPDEPLOY_JOB=20261125-174258-ab12"),
        "{env}"
    );
    assert!(lines.contains(&"DROPDEPLOY_DEPLOYMENT_ID=dep-1"), "{env}");
    assert!(lines.contains(&"DROPDEPLOY_REASON="), "{env}");
    assert!(!env.contains("SCALINGO_API_TOKEN"), "{env}");
    assert!(!env.contains("tk-us-secret"), "{env}");
    assert!(hooks.drain(DEADLINE).await);
}

/// Whether a process runs. A zombie (killed, not yet reaped by whoever adopted it) is gone.
fn alive(pid: &str) -> bool {
    let stat = Path::new("/proc").join(pid).join("stat");
    if Path::new("/proc/self/stat").exists() {
        // The state follows the command name in parentheses: `123 (sleep) S …`.
        return std::fs::read_to_string(stat).is_ok_and(|text| {
            let state = text.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        });
    }
    std::process::Command::new("kill")
        .args(["-0", pid])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_what_it_started() {
    let (_keep, dir) = temp();
    let hooks = Hooks::new().unwrap();
    let hook = HookConfig {
        timeout: Duration::from_millis(300),
        ..command(
            r#"sleep 30 & echo $! > "$1/bg.pid"; sleep 30; touch "$1/late""#,
            &dir,
        )
    };
    let started = Instant::now();
    hooks.notify(&hook, &entry());
    assert!(hooks.drain(DEADLINE).await);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let background = read_when_written(&dir.join("bg.pid")).await;
    assert!(
        eventually(|| !alive(background.trim())).await,
        "the background sleep was killed"
    );
    assert!(!dir.join("late").exists());
}

#[tokio::test]
async fn a_command_that_leaves_a_process_holding_its_output_is_cleaned_up() {
    let (_keep, dir) = temp();
    let hooks = Hooks::new().unwrap();
    let hook = HookConfig {
        timeout: Duration::from_millis(300),
        ..command(r#"sleep 30 & echo $! > "$1/bg.pid""#, &dir)
    };
    hooks.notify(&hook, &entry());
    assert!(hooks.drain(DEADLINE).await);
    let background = read_when_written(&dir.join("bg.pid")).await;
    assert!(eventually(|| !alive(background.trim())).await);
}

#[tokio::test]
async fn a_failing_or_missing_command_costs_the_job_nothing() {
    let (_keep, dir) = temp();
    let hooks = Hooks::new().unwrap();
    hooks.notify(&command("echo broken >&2; exit 3", &dir), &entry());
    let missing = HookConfig {
        command: vec![dir.join("no-such-program").display().to_string()],
        ..HookConfig::default()
    };
    hooks.notify(&missing, &entry());
    assert!(hooks.drain(DEADLINE).await);
}

#[test]
fn notify_works_from_a_blocking_thread_and_from_outside_the_runtime() {
    // The daemon's Finisher runs under spawn_blocking: notify must find the runtime there, and
    // on a thread of its own it uses the runtime the hooks were made in.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_keep, dir) = temp();
    let hooks = Arc::new(runtime.block_on(async { Hooks::new().unwrap() }));
    let blocking = command(r#"echo "$DROPDEPLOY_OUTCOME" > "$1/blocking.txt""#, &dir);
    let (h, e) = (hooks.clone(), entry());
    runtime
        .block_on(runtime.spawn_blocking(move || h.notify(&blocking, &e)))
        .unwrap();
    let outside = command(r#"echo "$DROPDEPLOY_APP" > "$1/outside.txt""#, &dir);
    let (h, e) = (hooks.clone(), entry());
    std::thread::spawn(move || h.notify(&outside, &e))
        .join()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(
            read_when_written(&dir.join("blocking.txt")).await,
            "succeeded\n"
        );
        assert_eq!(
            read_when_written(&dir.join("outside.txt")).await,
            "my-app\n"
        );
        assert!(hooks.drain(DEADLINE).await);
    });
}
