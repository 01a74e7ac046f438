//! One deployment of an app at a time, whatever happens around it: reloads that remove and
//! add the app back, and a one-shot `deploy` beside the daemon (same `state_dir`).

use std::time::Duration;

use fake_scalingo::DeploymentRecord;

use crate::support::{FakeConfig, World, wait_for};

const LONG: Duration = Duration::from_secs(60);
/// How long the tests watch for something that must not happen, where no event says that it
/// will not: the bugs they guard against showed within a second.
const WATCH: Duration = Duration::from_secs(3);

/// A world whose deployments take four `step`s, with a second app `other` so that the
/// configuration keeps an app when `my-app` is removed. Returns the world, the configuration
/// without `my-app` and my-app's drop folder.
fn slow_world(step: Duration) -> (World, String, std::path::PathBuf) {
    let world = World::with(FakeConfig {
        step,
        ..FakeConfig::default()
    });
    world.add_drop_app("other", "");
    let without = std::fs::read_to_string(&world.config).unwrap();
    let drop = world.add_drop_app("my-app", "");
    (world, without, drop)
}

/// Writes `text` as the configuration, sends SIGHUP, and waits for the `n`-th reload to end.
fn reload(world: &World, daemon: &crate::support::Proc, text: &str, n: usize) {
    std::fs::write(&world.config, text).unwrap();
    daemon.signal("HUP");
    let done = wait_for(LONG, || {
        world.log("d").matches("configuration reloaded").count() >= n
    });
    assert!(done, "reload {n} did not end:\n{}", world.log("d"));
}

/// The first pair of the app's deployments that were on the platform at the same time.
fn overlapping(deployments: &[DeploymentRecord]) -> Option<(String, String)> {
    for (i, a) in deployments.iter().enumerate() {
        for b in &deployments[i + 1..] {
            let a_end = a.finished_at.unwrap_or_else(std::time::SystemTime::now);
            let b_end = b.finished_at.unwrap_or_else(std::time::SystemTime::now);
            if a.created_at < b_end && b.created_at < a_end {
                return Some((a.id.clone(), b.id.clone()));
            }
        }
    }
    None
}

#[test]
fn a_removed_apps_waiting_job_stays_in_the_spool_until_the_app_is_back() {
    let (world, without, drop) = slow_world(Duration::from_millis(600));
    let full = std::fs::read_to_string(&world.config).unwrap();
    let daemon = world.start_daemon("d");
    world.drop_archive(&drop, "in-flight.tar.gz");
    assert!(
        world
            .fake
            .wait_for_deployments("my-app", LONG, |d| d.len() == 1)
    );
    world.drop_archive(&drop, "waiting.tar.gz");
    assert!(
        wait_for(LONG, || world.job_records().len() == 2),
        "the second drop is claimed"
    );
    reload(&world, &daemon, &without, 1);
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["file"], "in-flight.tar.gz", "{history:#?}");
    assert_eq!(history[0]["outcome"], "succeeded");
    let deployed_again = world
        .fake
        .wait_for_deployments("my-app", WATCH, |d| d.len() > 1);
    assert!(
        !deployed_again,
        "the waiting job was deployed after its app was removed:\n{}",
        world.log("d")
    );
    let records = world.job_records();
    assert_eq!(records.len(), 1, "it waits in the spool");
    assert!(
        records[0].contains("\"state\": \"queued\""),
        "{}",
        records[0]
    );
    // The app is back: its waiting job is deployed.
    reload(&world, &daemon, &full, 2);
    let history = world.wait_history(2, LONG);
    assert_eq!(history[1]["file"], "waiting.tar.gz", "{history:#?}");
    assert_eq!(history[1]["outcome"], "succeeded");
    assert_eq!(overlapping(&world.fake.deployments("my-app")), None);
}

#[test]
fn an_app_removed_and_added_back_never_has_two_deployments_at_once() {
    let (world, without, drop) = slow_world(Duration::from_millis(600));
    let full = std::fs::read_to_string(&world.config).unwrap();
    let daemon = world.start_daemon("d");
    world.drop_archive(&drop, "first.tar.gz");
    assert!(
        world
            .fake
            .wait_for_deployments("my-app", LONG, |d| d.len() == 1)
    );
    reload(&world, &daemon, &without, 1);
    reload(&world, &daemon, &full, 2);
    world.drop_archive(&drop, "second.tar.gz");
    let history = world.wait_history(2, LONG);
    assert!(
        history.iter().all(|h| h["outcome"] == "succeeded"),
        "{history:#?}"
    );
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 2);
    assert_eq!(
        overlapping(&deployments),
        None,
        "the re-added app's lane started while the retired one still deployed:\n{}",
        world.log("d")
    );
}

#[test]
fn a_deploy_beside_the_daemon_waits_for_the_daemons_deployment_of_the_same_app() {
    let (world, _, drop) = slow_world(Duration::from_millis(600));
    let _daemon = world.start_daemon("d");
    world.drop_archive(&drop, "dropped.tar.gz");
    assert!(
        world
            .fake
            .wait_for_deployments("my-app", LONG, |d| d.len() == 1)
    );
    let other = world.archive("other.tar.gz");
    let run = world.run(&["deploy", "--app", "my-app", other.to_str().unwrap()]);
    run.assert_code(0);
    world.wait_history(2, LONG);
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 2);
    assert_eq!(
        overlapping(&deployments),
        None,
        "the daemon and `deploy` deployed my-app at the same time:\n{}",
        run.stderr
    );
    // It said why it waited.
    run.assert_contains("my-app: waiting: the dropdeploy daemon (pid ")
        .assert_contains("is deploying my-app (job ");
}

#[test]
fn the_daemon_waits_for_a_deploy_of_the_same_app_and_status_says_why() {
    let (world, _, drop) = slow_world(Duration::from_millis(1500));
    let _daemon = world.start_daemon("d");
    let given = world.archive("given.tar.gz");
    let mut deploy = crate::support::Proc(world.spawn(
        &["deploy", "--app", "my-app", given.to_str().unwrap()],
        "deploy",
    ));
    assert!(
        world
            .fake
            .wait_for_deployments("my-app", LONG, |d| d.len() == 1)
    );
    world.drop_archive(&drop, "dropped.tar.gz");
    let mut shown = String::new();
    let waits = wait_for(LONG, || {
        shown = world.run(&["status"]).stdout;
        shown.contains("waiting for another process: my-app: another dropdeploy process (pid ")
    });
    assert!(waits, "status does not show the wait:\n{shown}");
    assert!(deploy.wait_exit(LONG).success(), "{}", world.log("deploy"));
    world.wait_history(2, LONG);
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 2);
    assert_eq!(overlapping(&deployments), None, "{}", world.log("d"));
}

/// The history's files and outcomes, in order.
fn files_in_history(world: &World) -> Vec<(String, String)> {
    world
        .history()
        .iter()
        .map(|h| {
            (
                h["file"].as_str().unwrap_or("").to_string(),
                h["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn after_a_restart_a_job_under_way_ends_before_a_queued_one_listed_first_starts() {
    let world = World::with(FakeConfig {
        step: Duration::from_millis(2500),
        ..FakeConfig::default()
    });
    let drop = world.add_drop_app("my-app", "");
    // The first daemon's clock is half an hour ahead: the job it makes (x) is listed after
    // one made later at the right time (y), as two jobs of the same second can be.
    let mut first = crate::support::Proc(
        world
            .command(&["run"])
            .env(
                "LD_PRELOAD",
                "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            )
            .env("FAKETIME", "+30m")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(world.path("first.stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for(LONG, || world
        .log("first")
        .contains("dropdeploy is running")));
    world.drop_archive(&drop, "x.tar.gz");
    assert!(
        world
            .fake
            .wait_for_deployments("my-app", LONG, |d| d.len() == 1)
    );
    first.signal("TERM");
    assert!(first.wait_exit(LONG).success(), "{}", world.log("first"));
    // The second daemon resumes x; y is dropped and waits behind it; then a stop again.
    let mut second = world.start_daemon("second");
    world.drop_archive(&drop, "y.tar.gz");
    assert!(wait_for(LONG, || world.job_records().len() == 2));
    second.signal("TERM");
    assert!(second.wait_exit(LONG).success(), "{}", world.log("second"));
    assert!(world.history().is_empty(), "{:?}", world.history());
    let _third = world.start_daemon("third");
    world.wait_history(2, LONG);
    assert_eq!(
        files_in_history(&world),
        [
            ("x.tar.gz".to_string(), "succeeded".to_string()),
            ("y.tar.gz".to_string(), "succeeded".to_string())
        ],
        "x, under way on the platform, ends first; y, the last dropped, is deployed last:\n{}",
        world.log("third")
    );
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 2);
    assert_eq!(overlapping(&deployments), None, "{}", world.log("third"));
}
