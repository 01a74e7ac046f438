//! Following deployments as the platform's own client does: the deployments stream (shared,
//! re-authenticated, reconnected, polling when refused), the budget of API requests (a 429
//! pauses every lane), regions from the platform, and the error classes of the documentation.

use std::time::{Duration, Instant};

use crate::support::{Endpoint, FakeConfig, Fault, Run, World, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn slow(step_ms: u64) -> FakeConfig {
    FakeConfig {
        step: Duration::from_millis(step_ms),
        ..FakeConfig::default()
    }
}

/// `deploy` with a long polling interval: a deployment followed by polling shows it at once.
fn deploy(world: &World, interval: &str) -> Run {
    let archive = world.archive("release.tar.gz");
    world.run(&[
        "deploy",
        "--app",
        "my-app",
        "--interval",
        interval,
        archive.to_str().unwrap(),
    ])
}

#[test]
fn a_deployment_is_followed_over_the_stream_with_its_build_lines() {
    let world = World::with(slow(300));
    let run = deploy(&world, "10s");
    run.assert_code(0)
        .assert_contains("success: deployment")
        // Build lines as they came, through the printer.
        .assert_contains("  | -----> Build environment")
        .assert_contains("  | -----> Starting containers")
        .assert_contains("status pushing");
    let stats = world.fake.stats();
    assert_eq!(stats.stream_connections, 1, "{stats:?}");
    assert_eq!(stats.stream_auths, 1);
    // One check when the stream connected, one to confirm the end; no output downloads.
    assert!(
        stats.requests_to(Endpoint::GetDeployment) <= 2,
        "{:?}",
        stats.by_endpoint
    );
    assert_eq!(stats.requests_to(Endpoint::Output), 0);
    // The stream's dial carried the official client's Origin, and no bearer in its URL.
    let dial = world
        .fake
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Some(Endpoint::Stream))
        .expect("a dial");
    assert_eq!(dial.header("origin"), Some("http://scalingo-cli.local/1"));
    assert_eq!(dial.query, None);
}

#[test]
fn a_stream_cut_mid_deployment_reconnects_and_the_job_succeeds() {
    // A connection cut young waits a backoff (3 to 4.5 s) before the next: the build lasts
    // long enough for the reconnection to come before its last lines.
    let world = World::with(slow(3500));
    let archive = world.archive("release.tar.gz");
    let mut child = world.spawn(
        &[
            "deploy",
            "--app",
            "my-app",
            "--interval",
            "30s",
            archive.to_str().unwrap(),
        ],
        "cut",
    );
    assert!(
        wait_for(LONG, || {
            world.fake.stats().stream_connections == 1
                && world
                    .fake
                    .deployments("my-app")
                    .first()
                    .is_some_and(|d| d.status == "building")
        }),
        "streaming during the build"
    );
    world.fake.drop_streams();
    let status = crate::support::wait_exit(&mut child, LONG);
    let out = std::fs::read_to_string(world.path("cut.stderr")).unwrap();
    let stdout = std::fs::read_to_string(world.path("cut.stdout")).unwrap();
    assert!(status.success(), "{out}\n{stdout}");
    let stats = world.fake.stats();
    assert!(stats.stream_connections >= 2, "{stats:?}\n{out}");
    // Lines sent after the reconnection were shown (the last ones come at the end).
    assert!(out.contains("-----> Starting containers"), "{out}");
    assert!(stdout.contains("success: deployment"), "{stdout}");
}

#[test]
fn a_refused_stream_falls_back_to_polling() {
    let world = World::with(FakeConfig {
        stream: false,
        ..slow(100)
    });
    // The world's budget is large: polls every 50 ms (60 a minute would stretch them to 2 s).
    deploy(&world, "50ms")
        .assert_code(0)
        .assert_contains("success: deployment");
    let stats = world.fake.stats();
    assert!(stats.stream_refused >= 1, "{stats:?}");
    assert_eq!(stats.stream_connections, 0);
    assert!(stats.requests_to(Endpoint::GetDeployment) >= 3, "polled");
}

#[test]
fn the_stream_authenticates_again_when_the_bearer_is_renewed() {
    // A bearer is renewed 5 minutes before its `exp`: this one is due 3 s after its issue.
    let world = World::with(FakeConfig {
        jwt_lifetime: Duration::from_secs(5 * 60 + 3),
        ..slow(1500)
    });
    deploy(&world, "30s")
        .assert_code(0)
        .assert_contains("success: deployment");
    let stats = world.fake.stats();
    assert!(stats.exchanges >= 2, "{stats:?}");
    assert_eq!(stats.stream_connections, 1, "{stats:?}");
    assert!(stats.stream_auths >= 2, "{stats:?}");
    assert_eq!(stats.stream_auth_failures, 0);
}

#[test]
fn a_429_pauses_every_lane_and_shows_in_status() {
    let world = World::with(slow(500));
    let a = world.add_drop_app("app-a", "");
    let b = world.add_drop_app("app-b", "");
    let _daemon = world.start_daemon("d");
    world.fake.fail_next(
        Endpoint::GetDeployment,
        Fault::RateLimited {
            retry_after: Some("3".to_string()),
        },
    );
    world.drop_archive(&a, "a.tar.gz");
    world.drop_archive(&b, "b.tar.gz");
    let paused = wait_for(LONG, || {
        let out = world.run(&["status"]).stdout;
        out.contains("API calls paused")
    });
    assert!(paused, "status never showed the pause:\n{}", world.log("d"));
    let history = world.wait_history(2, LONG);
    assert!(
        history.iter().all(|h| h["outcome"] == "succeeded"),
        "{history:?}"
    );
    let requests = world.fake.requests();
    let refused = requests
        .iter()
        .find(|r| r.status == 429)
        .expect("the 429 was answered");
    let resumed_early: Vec<_> = requests
        .iter()
        .filter(|r| {
            r.endpoint.is_some_and(|e| e != Endpoint::Upload && e != Endpoint::Download)
                // Sent before the client read the 429: not part of the pause.
                && r.received > refused.answered + Duration::from_millis(100)
                && r.received < refused.answered + Duration::from_millis(2800)
        })
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        resumed_early.is_empty(),
        "calls during the pause: {resumed_early:?}"
    );
    assert!(world.log("d").contains("429"), "{}", world.log("d"));
}

#[test]
fn an_unknown_region_is_a_configuration_error_and_a_known_one_is_looked_up() {
    let world = World::new();
    let archive = world.archive("release.tar.gz");
    let run = |region: &str| {
        let mut cmd = world.command(&["deploy", "--app", "my-app", archive.to_str().unwrap()]);
        cmd.env_remove("SCALINGO_API_URL")
            .env("SCALINGO_REGION", region);
        Run::from_output(cmd.output().unwrap(), &world.fake.api_token())
    };
    let started = Instant::now();
    run("osc-nowhere1")
        .assert_code(2)
        .assert_contains("invalid region \"osc-nowhere1\"")
        .assert_contains("osc-fr1, osc-secnum-fr1");
    assert!(started.elapsed() < Duration::from_secs(10), "not retried");
    assert!(world.job_records().is_empty(), "no job was made");
    // `watch` says so before watching, too.
    let tree = world.path("tree");
    std::fs::create_dir_all(tree.join("app")).unwrap();
    let mut cmd = world.command(&["watch", "--app", "my-app", tree.to_str().unwrap()]);
    cmd.env_remove("SCALINGO_API_URL")
        .env("SCALINGO_REGION", "osc-nowhere1");
    Run::from_output(cmd.output().unwrap(), &world.fake.api_token())
        .assert_code(2)
        .assert_contains("invalid region \"osc-nowhere1\"");
    assert_eq!(world.fake.stats().sources_created, 0);
    // A region the platform lists: its `api` is where the deployment goes (the fake).
    let before = world.fake.stats().api_requests();
    run("osc-fr1")
        .assert_code(0)
        .assert_contains("success: deployment");
    let stats = world.fake.stats();
    assert_eq!(
        stats.requests_to(Endpoint::Regions),
        3,
        "one look-up per run (deploy, watch, deploy)"
    );
    // The look-up shares the deployment's token exchange: 8 requests in all.
    assert!(
        stats.api_requests() - before <= 8,
        "{:?}",
        stats.by_endpoint
    );
}

#[test]
fn apps_in_two_regions_deploy_through_each_region_api() {
    let world = World::with(FakeConfig {
        extra_regions: vec!["osc-secnum-fr1".to_string()],
        ..FakeConfig::default()
    });
    let a = world.add_drop_app("app-a", "");
    let b = world.add_drop_app("app-b", "region = \"osc-secnum-fr1\"");
    let _daemon = world.start_daemon("d");
    world.drop_archive(&a, "a.tar.gz");
    world.drop_archive(&b, "b.tar.gz");
    let history = world.wait_history(2, LONG);
    assert!(
        history.iter().all(|h| h["outcome"] == "succeeded"),
        "{history:?}"
    );
    let secnum = world.fake.region_url("osc-secnum-fr1").unwrap();
    let main = world.fake.url();
    let host_of = |app: &str| {
        world
            .fake
            .requests()
            .into_iter()
            .find(|r| r.endpoint == Some(Endpoint::CreateDeployment) && r.path.contains(app))
            .and_then(|r| r.header("host").map(str::to_string))
            .unwrap()
    };
    assert_eq!(format!("http://{}", host_of("app-b")), secnum);
    assert_eq!(format!("http://{}", host_of("app-a")), main);
}

#[test]
fn an_unknown_region_stops_the_daemon_with_status_2() {
    let world = World::new();
    world.add_drop_app("app-a", "region = \"osc-nowhere1\"");
    let run = world.run(&["run"]);
    run.assert_code(2)
        .assert_contains("invalid region \"osc-nowhere1\"")
        .assert_contains("osc-fr1, osc-secnum-fr1");
}

#[test]
fn a_409_ends_the_job_at_once() {
    let world = World::new();
    world
        .fake
        .fail_next(Endpoint::CreateDeployment, Fault::Status(409));
    deploy(&world, "1s")
        .assert_code(1)
        .assert_contains("HTTP 409");
    assert_eq!(
        world.fake.stats().requests_to(Endpoint::CreateDeployment),
        1,
        "not retried"
    );
}

#[test]
fn deployments_lists_the_recent_ones_newest_first() {
    let world = World::new();
    deploy(&world, "1s").assert_code(0);
    world.fake.set_next_outcome("my-app", "build-error");
    deploy(&world, "1s").assert_code(1);
    let run = world.run(&["deployments", "--app", "my-app"]);
    run.assert_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", run.stdout);
    assert!(lines[0].contains("GIT_REF") && lines[0].contains("DURATION"));
    let ds = world.fake.deployments("my-app");
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    // Newest first, with its id, git_ref and status.
    assert!(lines[1].starts_with(&ds[1].id), "{}", run.stdout);
    assert!(lines[1].contains("build-error"), "{}", run.stdout);
    assert!(lines[2].contains(ds[0].git_ref.as_deref().unwrap()));
    assert!(lines[2].contains("success"), "{}", run.stdout);
}

#[test]
fn logs_prints_a_deployment_output_and_follows_a_running_one() {
    let world = World::with(slow(800));
    deploy(&world, "1s").assert_code(0);
    let first = world.fake.deployments("my-app")[0].id.clone();
    let run = world.run(&["logs", "--app", "my-app", &first]);
    run.assert_code(0)
        .assert_contains("-----> Build environment")
        .assert_contains(&format!("Deployment {first} of app my-app"));
    assert!(!run.stdout.contains('\u{1b}'), "colours stripped");
    // A deployment still running: `--follow` shows what comes until it ends.
    let archive = world.archive("second.tar.gz");
    let mut second = world.spawn(
        &[
            "deploy",
            "--app",
            "my-app",
            "--no-follow",
            archive.to_str().unwrap(),
        ],
        "second",
    );
    crate::support::wait_exit(&mut second, LONG);
    let run = world.run(&["logs", "--app", "my-app", "--follow"]);
    run.assert_code(0)
        .assert_contains("-----> Starting containers")
        .assert_contains("ended: success");
    assert!(world.fake.stats().stream_connections >= 1);
}

/// The world's retry budget set to `budget` (the world's own is 30 s).
fn with_retry_budget(world: &World, budget: &str) {
    let text = std::fs::read_to_string(&world.config).unwrap();
    let text = text.replace("budget = \"30s\"", &format!("budget = \"{budget}\""));
    std::fs::write(&world.config, text).unwrap();
}

/// How many times each build line shows in a run's output (`  | ` lines), and in the build
/// output the platform kept, colours stripped.
fn printed_and_built(run_output: &str, built: &str) -> Vec<(String, usize, usize)> {
    let built: Vec<String> = built
        .lines()
        .map(dropdeploy::deploy::scalingo::driver::strip_ansi)
        .collect();
    let printed: Vec<&str> = run_output
        .lines()
        .filter_map(|l| l.strip_prefix("  | "))
        .collect();
    let mut counts: Vec<(String, usize, usize)> = Vec::new();
    for line in &printed {
        if counts.iter().all(|(l, _, _)| l != line) {
            let p = printed.iter().filter(|p| *p == line).count();
            let b = built.iter().filter(|b| b == line).count();
            counts.push((line.to_string(), p, b));
        }
    }
    counts
}

#[test]
fn a_stream_whose_auth_is_refused_by_a_plain_close_costs_no_more_than_polling() {
    let refused = World::with(FakeConfig {
        stream_refuse_auth: true,
        ..slow(1000)
    });
    deploy(&refused, "1s")
        .assert_code(0)
        .assert_contains("success: deployment");
    let stats = refused.fake.stats();
    assert!(stats.stream_auth_failures >= 1, "{stats:?}");
    assert_eq!(stats.stream_connections, 0, "never authenticated");
    // A connection that ends before the server showed it accepted the auth is an auth
    // refused: a spell of polling follows at once (not a dial every half second).
    assert_eq!(
        stats.requests_to(Endpoint::Stream),
        1,
        "{:?}",
        stats.by_endpoint
    );
    // The same deployment followed by polling only.
    let polled = World::with(FakeConfig {
        stream: false,
        ..slow(1000)
    });
    deploy(&polled, "1s").assert_code(0);
    let polling = polled.fake.stats().api_requests();
    assert!(
        stats.api_requests() <= polling + 2,
        "{} requests with a refusing stream, {polling} polling: {:?}",
        stats.api_requests(),
        stats.by_endpoint
    );
}

#[test]
fn a_stream_cut_and_replayed_shows_each_build_line_once() {
    let world = World::with(FakeConfig {
        stream_replay: true,
        // Cut after the connection counts as established (a frame, or 3 s without a close),
        // however slow the machine: the next one starts with the log so far.
        stream_cut_every: Some(Duration::from_millis(3500)),
        ..slow(2000)
    });
    let run = deploy(&world, "1s");
    run.assert_code(0).assert_contains("success: deployment");
    let stats = world.fake.stats();
    assert!(stats.stream_connections >= 2, "{stats:?}");
    let built = world.fake.deployments("my-app")[0].output.clone();
    let counts = printed_and_built(&run.stderr, &built);
    assert!(
        counts
            .iter()
            .any(|(l, p, _)| l == "-----> Build environment" && *p == 1),
        "{counts:?}\n{}",
        run.stderr
    );
    let repeated: Vec<_> = counts.iter().filter(|(_, p, b)| p > b).collect();
    assert!(
        repeated.is_empty(),
        "shown more often than built: {repeated:?}"
    );
    // Young connections are failures: a spell of polling follows, not a dial every 2 s.
    assert!(
        stats.requests_to(Endpoint::Stream) <= 3,
        "{:?}",
        stats.by_endpoint
    );
}

#[test]
fn logs_follow_shows_a_replayed_log_once() {
    let world = World::with(FakeConfig {
        stream_replay: true,
        ..slow(1500)
    });
    let archive = world.archive("release.tar.gz");
    let mut child = world.spawn(
        &[
            "deploy",
            "--app",
            "my-app",
            "--no-follow",
            archive.to_str().unwrap(),
        ],
        "started",
    );
    crate::support::wait_exit(&mut child, LONG);
    // Building, with output: the stream's connection starts with it again.
    assert!(wait_for(LONG, || {
        world
            .fake
            .deployments("my-app")
            .first()
            .is_some_and(|d| d.status == "building" && !d.output.is_empty())
    }));
    let run = world.run(&["logs", "--app", "my-app", "--follow"]);
    run.assert_code(0).assert_contains("ended: success");
    let shown = run.stdout.matches("-----> Build environment").count();
    assert_eq!(shown, 1, "{}", run.stdout);
    assert_eq!(run.stdout.matches("-----> Starting containers").count(), 1);
}

#[test]
fn time_paused_by_a_429_is_not_spent_from_the_retry_budget() {
    let world = World::new();
    with_retry_budget(&world, "3s");
    // The create waits out a 429 of 4 s (every call pauses), then fails once (503).
    world.fake.fail_next(
        Endpoint::CreateDeployment,
        Fault::RateLimited {
            retry_after: Some("4".to_string()),
        },
    );
    world
        .fake
        .fail_next(Endpoint::CreateDeployment, Fault::Status(503));
    deploy(&world, "1s")
        .assert_code(0)
        .assert_contains("success: deployment");
}

#[test]
fn a_job_that_gives_up_says_how_long_it_waited_for_the_budget() {
    let world = World::new();
    with_retry_budget(&world, "3s");
    world.fake.fail_next(
        Endpoint::CreateDeployment,
        Fault::RateLimited {
            retry_after: Some("4".to_string()),
        },
    );
    for _ in 0..200 {
        world
            .fake
            .fail_next(Endpoint::CreateDeployment, Fault::Status(503));
    }
    let run = deploy(&world, "1s");
    // 3: gave up on transient errors.
    run.assert_code(3)
        .assert_contains("of it waiting for the API budget (retry budget 3s)");
    // Failing, not waiting, used up the budget: more than one attempt.
    assert!(
        !run.all().contains("after 1 failed attempts"),
        "{}",
        run.all()
    );
}

#[test]
fn a_git_ref_starting_with_a_dot_is_refused_before_any_upload() {
    let world = World::new();
    let archive = world.archive("release.tar.gz");
    world
        .run(&[
            "deploy",
            "--app",
            "my-app",
            "--git-ref",
            ".hidden",
            archive.to_str().unwrap(),
        ])
        .assert_code(2)
        .assert_contains("image tag")
        .assert_contains("not starting with '-' or '.'");
    assert_eq!(world.fake.stats().sources_created, 0);
}
