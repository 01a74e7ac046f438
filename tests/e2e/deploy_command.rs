//! `dropdeploy deploy` and `dropdeploy check` end to end: the real binary against the fake
//! Scalingo API over loopback, with real files and real archives.

use std::time::Duration;

use crate::support::{self, Endpoint, FakeConfig, Fault, World, wait_for};

fn deploy(world: &World, app: &str, archive: &std::path::Path) -> support::Run {
    world.run(&["deploy", "--app", app, archive.to_str().unwrap()])
}

#[test]
fn a_deploy_succeeds_end_to_end() {
    let world = World::new();
    let archive = world.archive("release.tar.gz");
    let run = deploy(&world, "my-app", &archive);
    run.assert_code(0)
        .assert_contains("status building")
        .assert_contains("success: deployment");
    let stats = world.fake.stats();
    assert_eq!(stats.sources_created, 1);
    assert_eq!(stats.uploads_ok, 1);
    assert_eq!(
        stats.upload_bytes,
        std::fs::metadata(&archive).unwrap().len()
    );
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 1);
    assert_eq!(deployments[0].status, "success");
    let git_ref = deployments[0].git_ref.clone().unwrap_or_default();
    assert!(git_ref.starts_with("my-app-"), "{git_ref}");
    run.assert_contains(&git_ref);
    // The user's file stays, with no done/ folder made beside it; the spool is empty again.
    assert!(archive.exists());
    assert!(!archive.parent().unwrap().join("done").exists());
    assert!(world.job_records().is_empty());
    // The outcome is in the history, as for the daemon's jobs.
    let history = world.history();
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0]["app"], "my-app");
    assert_eq!(history[0]["outcome"], "succeeded");
    assert_eq!(history[0]["git_ref"], git_ref.as_str());
    assert_eq!(history[0]["deployment_id"], deployments[0].id.as_str());
}

#[test]
fn the_upload_has_a_length_no_chunking_and_no_authorization() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    deploy(&world, "my-app", &archive).assert_code(0);
    let uploads: Vec<_> = world
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(uploads.len(), 1);
    let header = |name: &str| {
        uploads[0]
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/x-gzip")
    );
    assert_eq!(
        header("content-length"),
        Some(std::fs::metadata(&archive).unwrap().len().to_string())
    );
    assert_eq!(header("authorization"), None);
    assert_eq!(header("transfer-encoding"), None);
}

#[test]
fn uploads_follow_redirects() {
    let world = World::with(FakeConfig {
        redirect_uploads: true,
        ..FakeConfig::default()
    });
    deploy(&world, "my-app", &world.archive("a.tar.gz")).assert_code(0);
    assert_eq!(world.fake.stats().uploads_ok, 1);
}

fn failing_status(status: &str) {
    let world = World::new();
    world.fake.set_next_outcome("my-app", status);
    let run = deploy(&world, "my-app", &world.archive("a.tar.gz"));
    run.assert_code(1)
        .assert_contains(&format!("ended with status {status}"))
        .assert_contains("lines of the build output");
    // The log tail is the end of the build output, without its colour codes.
    let tail_start = run.stdout.find("lines of the build output").unwrap();
    let tail = &run.stdout[tail_start..];
    assert!(tail.lines().count() >= 30, "{tail}");
    assert!(!run.stdout.contains('\u{1b}'), "{}", run.stdout);
    assert_eq!(world.fake.deployments("my-app").len(), 1, "not retried");
}

#[test]
fn build_error_fails_with_the_log_tail() {
    failing_status("build-error");
}

#[test]
fn crashed_error_fails_with_the_log_tail() {
    failing_status("crashed-error");
}

#[test]
fn timeout_error_fails_with_the_log_tail() {
    failing_status("timeout-error");
}

#[test]
fn hook_error_fails_with_the_log_tail() {
    failing_status("hook-error");
}

#[test]
fn aborted_fails_with_the_log_tail() {
    failing_status("aborted");
}

#[test]
fn an_unknown_status_counts_as_a_failure() {
    failing_status("exploded-in-a-new-way");
}

#[test]
fn aborted_is_retried_once_when_configured() {
    let world = World::new();
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        text.replace("[retry]\n", "[retry]\nretry_aborted = true\n"),
    )
    .unwrap();
    world.fake.set_next_outcome("my-app", "aborted");
    deploy(&world, "my-app", &world.archive("a.tar.gz"))
        .assert_code(0)
        .assert_contains("status aborted");
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 2);
    let refs: Vec<_> = deployments.iter().map(|d| d.git_ref.clone()).collect();
    assert_ne!(refs[0], refs[1], "each deployment has its own git_ref");
}

#[test]
fn an_unknown_app_fails_at_once_with_the_404() {
    let world = World::new();
    let run = deploy(&world, "no-such-app", &world.archive("a.tar.gz"));
    // Found by the look at the app, before any upload (issue 23).
    run.assert_code(1)
        .assert_contains("get app")
        .assert_contains("404")
        .assert_contains("app not found");
    let asked = world
        .fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/v1/apps/no-such-app")
        .count();
    assert_eq!(asked, 1, "a 404 is not retried");
    assert_eq!(world.fake.stats().sources_created, 0);
}

#[test]
fn a_bad_token_fails_at_once_with_a_clear_message() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    let out = world
        .command(&["deploy", "--app", "my-app", archive.to_str().unwrap()])
        .env("SCALINGO_API_TOKEN", "tk-us-wrong-token-value-123456")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("API token was refused"), "{text}");
    assert!(!text.contains("wrong-token-value"), "{text}");
    let stats = world.fake.stats();
    assert_eq!(stats.exchanges + stats.exchange_failures, 1, "not retried");
    assert_eq!(stats.sources_created, 0);
}

#[test]
fn a_missing_token_is_a_configuration_error() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    let out = world
        .command(&["deploy", "--app", "my-app", archive.to_str().unwrap()])
        .env_remove("SCALINGO_API_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("SCALINGO_API_TOKEN"), "{err}");
    assert_eq!(world.fake.stats().requests, 0);
}

#[test]
fn rate_limits_are_waited_out() {
    let world = World::new();
    world.fake.fail_next(
        Endpoint::CreateSource,
        Fault::RateLimited {
            retry_after: Some("1".into()),
        },
    );
    world.fake.fail_next(
        Endpoint::CreateDeployment,
        Fault::RateLimited { retry_after: None },
    );
    let started = std::time::Instant::now();
    deploy(&world, "my-app", &world.archive("a.tar.gz"))
        .assert_code(0)
        .assert_contains("429");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(world.fake.stats().rate_limited, 2);
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn three_503s_then_success() {
    let world = World::new();
    for endpoint in [
        Endpoint::CreateSource,
        Endpoint::CreateSource,
        Endpoint::GetDeployment,
    ] {
        world.fake.fail_next(endpoint, Fault::Status(503));
    }
    deploy(&world, "my-app", &world.archive("a.tar.gz"))
        .assert_code(0)
        .assert_contains("503");
    assert_eq!(world.fake.stats().sources_created, 1);
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn a_garbled_deployment_answer_is_asked_again_not_taken_as_a_failure() {
    // Issue 21: a GET answer with a byte that is not UTF-8 in its status was read as the
    // status "\u{fffd}queued", an unknown one, so the job failed for good while the platform
    // went on to deploy it. Another deployment's answer is no answer either.
    for fault in [Fault::NotUtf8, Fault::OtherId] {
        let world = World::new();
        world.fake.fail_next(Endpoint::GetDeployment, fault.clone());
        deploy(&world, "my-app", &world.archive("a.tar.gz"))
            .assert_code(0)
            .assert_contains("success: deployment");
        let deployments = world.fake.deployments("my-app");
        assert_eq!(deployments.len(), 1, "{fault:?}");
        assert_eq!(deployments[0].status, "success", "{fault:?}");
        let history = world.history();
        assert_eq!(history.len(), 1, "{fault:?}: {history:?}");
        assert_eq!(history[0]["outcome"], "succeeded", "{fault:?}: {history:?}");
    }
}

#[test]
fn a_huge_deployment_answer_is_refused_and_asked_again() {
    let world = World::new();
    world
        .fake
        .fail_next(Endpoint::GetDeployment, Fault::HugeBody(256 << 20));
    deploy(&world, "my-app", &world.archive("a.tar.gz"))
        .assert_code(0)
        .assert_contains("too large")
        .assert_contains("success: deployment");
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn a_connection_cut_mid_upload_is_retried() {
    let world = World::new();
    world.fake.fail_next(Endpoint::Upload, Fault::CloseMidBody);
    deploy(&world, "my-app", &world.archive("a.tar.gz")).assert_code(0);
    let stats = world.fake.stats();
    assert_eq!(stats.uploads_ok, 1);
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn a_connection_closed_without_answer_is_retried() {
    let world = World::new();
    world
        .fake
        .fail_next(Endpoint::CreateSource, Fault::CloseConnection);
    deploy(&world, "my-app", &world.archive("a.tar.gz")).assert_code(0);
    assert_eq!(world.fake.stats().sources_created, 1);
}

#[test]
fn an_expired_source_is_replaced() {
    let world = World::new();
    world.fake.fail_next(Endpoint::Upload, Fault::ExpiredSource);
    deploy(&world, "my-app", &world.archive("a.tar.gz")).assert_code(0);
    let stats = world.fake.stats();
    assert_eq!(stats.sources_created, 2);
    assert_eq!(stats.uploads_ok, 1);
}

#[test]
fn a_deployment_post_that_times_out_is_not_posted_twice() {
    let world = World::new();
    // The platform creates the deployment but answers after the client's 2 s limit.
    world.fake.fail_next(
        Endpoint::CreateDeployment,
        Fault::ProcessThenDelay(Duration::from_secs(4)),
    );
    let run = deploy(&world, "my-app", &world.archive("a.tar.gz"));
    run.assert_code(0).assert_contains("already posted");
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 1);
    let git_ref = deployments[0].git_ref.clone().unwrap();
    assert_eq!(world.fake.count_git_ref("my-app", &git_ref), 1);
}

fn killed_after_deploy_requested(fault: Fault) {
    let world = World::new();
    world.fake.fail_next(Endpoint::CreateDeployment, fault);
    let archive = world.archive("a.tar.gz");
    let args = ["deploy", "--app", "my-app", archive.to_str().unwrap()];
    let mut child = world.spawn(&args, "first");
    let requested = wait_for(Duration::from_secs(20), || {
        world
            .job_records()
            .iter()
            .any(|r| r.contains("\"deploy_requested\""))
    });
    assert!(requested, "the job reached deploy_requested");
    // The POST is in flight (the fake holds it); kill the process there.
    assert!(wait_for(Duration::from_secs(5), || {
        world.fake.requests_in_flight(Endpoint::CreateDeployment) > 0
    }));
    child.kill().unwrap();
    child.wait().unwrap();
    let run = world.run(&args);
    run.assert_code(0).assert_contains("resuming job");
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 1, "exactly one deployment");
    let git_ref = deployments[0].git_ref.clone().unwrap();
    assert_eq!(world.fake.count_git_ref("my-app", &git_ref), 1);
    assert!(world.job_records().is_empty());
}

#[test]
fn killed_after_the_platform_created_the_deployment_resumes_without_posting_again() {
    killed_after_deploy_requested(Fault::ProcessThenDelay(Duration::from_secs(30)));
}

#[test]
fn killed_before_the_platform_created_the_deployment_posts_once_after_restart() {
    killed_after_deploy_requested(Fault::Delay(Duration::from_secs(30)));
}

#[test]
fn an_expired_bearer_is_exchanged_again() {
    let world = World::new();
    world
        .fake
        .fail_next(Endpoint::CreateDeployment, Fault::ExpiredJwt);
    deploy(&world, "my-app", &world.archive("a.tar.gz")).assert_code(0);
    let stats = world.fake.stats();
    assert_eq!(stats.exchanges, 2);
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn tokens_revoked_mid_job_are_exchanged_again() {
    let world = World::with(FakeConfig {
        step: Duration::from_millis(300),
        ..FakeConfig::default()
    });
    let archive = world.archive("a.tar.gz");
    let mut child = world.spawn(
        &["deploy", "--app", "my-app", archive.to_str().unwrap()],
        "run",
    );
    assert!(
        world
            .fake
            .wait_until(Duration::from_secs(20), |s| s.deployments_created == 1)
    );
    world.fake.expire_all_tokens();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let stats = world.fake.stats();
    assert!(stats.exchanges >= 2, "{stats:?}");
    // The revocation reached the client: as a 401 answer, as its deployments stream closed
    // for the expired token, or as the stream's auth refused (whichever came first).
    assert!(
        stats.unauthorized + stats.stream_expired + stats.stream_auth_failures >= 1,
        "{stats:?}"
    );
}

#[test]
fn no_follow_returns_once_the_deployment_exists() {
    let world = World::with(FakeConfig {
        step: Duration::from_secs(5),
        ..FakeConfig::default()
    });
    let archive = world.archive("a.tar.gz");
    world
        .run(&[
            "deploy",
            "--no-follow",
            "--app",
            "my-app",
            archive.to_str().unwrap(),
        ])
        .assert_code(0)
        .assert_contains("not following");
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 1);
    assert_ne!(deployments[0].status, "success");
}

#[test]
fn a_chosen_git_ref_is_used_and_a_bad_one_refused() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    world
        .run(&[
            "deploy",
            "--app",
            "my-app",
            "--git-ref",
            "v1.2.3",
            archive.to_str().unwrap(),
        ])
        .assert_code(0);
    assert_eq!(world.fake.count_git_ref("my-app", "v1.2.3"), 1);
    world
        .run(&[
            "deploy",
            "--app",
            "my-app",
            "--git-ref=-bad ref",
            archive.to_str().unwrap(),
        ])
        .assert_code(2)
        .assert_contains("--git-ref");
}

#[test]
fn a_url_is_deployed_without_upload() {
    let world = World::new();
    let url = world
        .fake
        .host_archive(&std::fs::read(world.archive("a.tar.gz")).unwrap());
    world
        .run(&["deploy", "--app", "my-app", &url])
        .assert_code(0)
        .assert_contains("success");
    let stats = world.fake.stats();
    assert_eq!(stats.sources_created, 0);
    assert_eq!(stats.uploads_ok, 0);
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments[0].source_url, url);
}

#[test]
fn deploy_works_with_no_config_file() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dropdeploy"))
        .args(["deploy", "--app", "my-app", "--interval", "20ms"])
        .arg(&archive)
        .env_remove("DROPDEPLOY_CONFIG")
        .env("DROPDEPLOY_STATE_DIR", world.path("state"))
        .env("SCALINGO_API_URL", world.fake.url())
        .env("SCALINGO_AUTH_URL", world.fake.url())
        .env("SCALINGO_API_TOKEN", world.fake.api_token())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn a_bearer_close_to_expiry_is_exchanged_before_use() {
    // Tokens living 4 minutes are always inside the 5-minute refresh margin.
    let world = World::with(FakeConfig {
        jwt_lifetime: Duration::from_secs(240),
        ..FakeConfig::default()
    });
    deploy(&world, "my-app", &world.archive("a.tar.gz")).assert_code(0);
    let stats = world.fake.stats();
    assert!(stats.exchanges >= 4, "exchanged {} times", stats.exchanges);
    assert_eq!(stats.unauthorized, 0, "never sent an expiring token");
}

#[test]
fn transient_errors_past_the_budget_give_up_with_exit_3() {
    let world = World::new();
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        text.replace("budget = \"30s\"", "budget = \"1s\""),
    )
    .unwrap();
    for _ in 0..500 {
        world
            .fake
            .fail_next(Endpoint::CreateSource, Fault::Status(503));
    }
    deploy(&world, "my-app", &world.archive("a.tar.gz"))
        .assert_code(3)
        .assert_contains("gave up after")
        .assert_contains("503");
    assert_eq!(world.fake.stats().sources_created, 0);
}

#[test]
fn a_401_right_after_a_fresh_exchange_is_retried_not_a_failure() {
    let world = World::new();
    // The first request, with a bearer just exchanged, and the one after a re-exchange.
    for _ in 0..2 {
        world
            .fake
            .fail_next(Endpoint::CreateSource, Fault::ExpiredJwt);
    }
    deploy(&world, "my-app", &world.archive("a.tar.gz"))
        .assert_code(0)
        .assert_contains("freshly exchanged bearer token")
        .assert_contains("success: deployment");
    let stats = world.fake.stats();
    assert_eq!(stats.unauthorized, 2);
    // One exchange per bearer refused, plus the first.
    assert_eq!(stats.exchanges, 3);
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn a_refused_exchange_fails_at_once_and_is_not_retried() {
    let world = World::new();
    let run = world
        .command(&["deploy", "--app", "my-app"])
        .arg(world.archive("a.tar.gz"))
        .env("SCALINGO_API_TOKEN", "tk-us-not-the-right-one-0123456789")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("the API token was refused"), "{stdout}");
    let stats = world.fake.stats();
    assert_eq!(stats.exchange_failures, 1, "one exchange, not a loop");
    assert_eq!(stats.sources_created, 0);
}

#[test]
fn an_api_that_keeps_refusing_fresh_bearers_gives_up_within_the_budget() {
    let world = World::new();
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        text.replace("budget = \"30s\"", "budget = \"1s\""),
    )
    .unwrap();
    for _ in 0..500 {
        world
            .fake
            .fail_next(Endpoint::CreateSource, Fault::ExpiredJwt);
    }
    deploy(&world, "my-app", &world.archive("a.tar.gz"))
        .assert_code(3)
        .assert_contains("gave up after")
        .assert_contains("freshly exchanged bearer token");
    let stats = world.fake.stats();
    // Each try re-exchanges once: bounded by the tries, which the budget bounds.
    assert_eq!(stats.exchanges, stats.unauthorized);
    assert!(stats.unauthorized < 500, "{stats:?}");
    assert_eq!(stats.sources_created, 0);
}

/// A gzip-compressed tar of `size` random bytes (incompressible): `app/noise`.
fn noise_archive(world: &World, name: &str, size: usize) -> std::path::PathBuf {
    let path = world.path(name);
    let file = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let body: Vec<u8> = (0..size).map(|_| fastrand::u8(..)).collect();
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "app/noise", &body[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    path
}

/// The seconds in `… no answer from … after 5.0 s …` of the first such line.
fn waited_seconds(text: &str, what: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.contains(&format!("{what}: no answer from")))
        .unwrap_or_else(|| panic!("no {what} time-out in:\n{text}"));
    let after = line.split(" after ").nth(1).unwrap();
    after.split(" s").next().unwrap().parse().unwrap()
}

#[test]
fn an_upload_time_out_names_the_time_waited() {
    let world = World::new();
    // 200 KiB at the slowest tolerated rate (64 KiB/s) adds 3 s to the 2 s time-out.
    let archive = noise_archive(&world, "big.tar.gz", 200 * 1024);
    world
        .fake
        .fail_next(Endpoint::Upload, Fault::Delay(Duration::from_secs(60)));
    let started = std::time::Instant::now();
    let run = deploy(&world, "my-app", &archive);
    let elapsed = started.elapsed().as_secs_f64();
    run.assert_code(0);
    let waited = waited_seconds(&run.all(), "upload");
    assert!(
        (5.0..=elapsed).contains(&waited),
        "waited {waited} s: the 5 s limit, within the {elapsed:.1} s run\n{}",
        run.all()
    );
    assert_eq!(world.fake.stats().uploads_ok, 1);
}

#[test]
fn a_token_exchange_time_out_names_the_time_waited() {
    let world = World::new();
    world
        .fake
        .fail_next(Endpoint::Exchange, Fault::Delay(Duration::from_secs(60)));
    let run = deploy(&world, "my-app", &world.archive("a.tar.gz"));
    run.assert_code(0);
    // The client's 2 s time-out, not the "0s" the exchange used to report.
    let waited = waited_seconds(&run.all(), "token exchange");
    assert!(
        (2.0..3.0).contains(&waited),
        "waited {waited} s\n{}",
        run.all()
    );
}

#[test]
fn steps_go_to_stderr_and_the_result_to_stdout() {
    // Steps long enough for `building` to be seen once the stream shows it is connected.
    let world = World::with(FakeConfig {
        step: Duration::from_millis(700),
        ..FakeConfig::default()
    });
    let run = deploy(&world, "my-app", &world.archive("a.tar.gz"));
    run.assert_code(0);
    assert!(run.stderr.contains("status building"), "{}", run.stderr);
    assert!(run.stderr.contains("uploading"), "{}", run.stderr);
    assert!(!run.stdout.contains("status building"), "{}", run.stdout);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(run.stdout.contains("success: deployment"), "{}", run.stdout);
}

#[test]
fn deploy_json_ends_with_one_json_line_on_stdout() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    let run = world.run(&[
        "deploy",
        "--json",
        "--app",
        "my-app",
        archive.to_str().unwrap(),
    ]);
    run.assert_code(0);
    assert_eq!(
        run.stdout.lines().count(),
        1,
        "only the result: {}",
        run.stdout
    );
    let last = run.stdout.lines().last().unwrap();
    let result: serde_json::Value = serde_json::from_str(last).unwrap();
    let deployments = world.fake.deployments("my-app");
    assert_eq!(result["outcome"], "succeeded");
    assert_eq!(result["app"], "my-app");
    assert_eq!(result["status"], "success");
    assert_eq!(result["deployment_id"], deployments[0].id.as_str());
    assert_eq!(
        result["git_ref"].as_str(),
        deployments[0].git_ref.as_deref()
    );
    assert!(result["job"].as_str().is_some_and(|j| !j.is_empty()));
    assert!(result["duration_ms"].is_u64());
    assert!(result["reason"].is_null());
    // The human result line moved to stderr with the steps.
    assert!(run.stderr.contains("success: deployment"), "{}", run.stderr);
}

#[test]
fn deploy_json_says_why_a_deployment_failed() {
    let world = World::new();
    world.fake.set_next_outcome("my-app", "build-error");
    let archive = world.archive("a.tar.gz");
    let run = world.run(&[
        "deploy",
        "--json",
        "--app",
        "my-app",
        archive.to_str().unwrap(),
    ]);
    run.assert_code(1);
    let result: serde_json::Value =
        serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["outcome"], "failed");
    assert_eq!(result["status"], "build-error");
    assert!(result["deployment_id"].is_string(), "{result}");
    assert!(
        result["reason"]
            .as_str()
            .is_some_and(|r| r.contains("build-error"))
    );
    // The build output's tail is for people: on stderr.
    assert!(
        run.stderr.contains("lines of the build output"),
        "{}",
        run.stderr
    );
}

#[test]
fn status_json_has_the_daemon_each_app_and_its_last_outcome() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    world.add_drop_app("other", "");
    let mut daemon = world.start_daemon("daemon");
    world.drop_archive(&drop, "a.tar.gz");
    world.wait_history(1, Duration::from_secs(30));
    let run = world.run(&["status", "--json"]);
    run.assert_code(0);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(doc["daemon_pid"], daemon.0.id(), "{doc}");
    let apps = doc["apps"].as_array().unwrap();
    let names: Vec<&str> = apps.iter().map(|a| a["app"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["my-app", "other"]);
    for app in apps {
        assert!(app["in_flight"].as_array().unwrap().is_empty(), "{app}");
        assert!(app["pending"].as_array().unwrap().is_empty(), "{app}");
        assert!(app["waits"].is_array(), "{app}");
    }
    let last = &apps[0]["last"];
    assert_eq!(last["outcome"], "succeeded", "{doc}");
    assert_eq!(last["file"], "a.tar.gz", "{doc}");
    assert!(last["deployment_id"].is_string(), "{doc}");
    assert!(apps[1]["last"].is_null(), "{doc}");
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(30));
    let run = world.run(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(doc["daemon_pid"].is_null(), "{doc}");
}
