//! The wall clock is not the platform's, and it jumps: the binary runs under libfaketime
//! (`LD_PRELOAD`, the offset read from a file the test rewrites), with the monotonic clock left
//! alone (`DONT_FAKE_MONOTONIC=1`), so a jump of the wall clock must not disturb a duration,
//! an order or the recognition of a deployment. The fake platform keeps the real time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Endpoint, FakeConfig, Fault, Proc, World, wait_for};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const LONG: Duration = Duration::from_secs(60);

/// The wall clock of the binaries a test starts: an offset (`+10m`, `-1h`) in a file.
struct FakeClock(PathBuf);

impl FakeClock {
    fn new(world: &World, offset: &str) -> FakeClock {
        assert!(
            Path::new(LIBFAKETIME).exists(),
            "libfaketime is needed (scripts/test installs it: apt-get install faketime)"
        );
        let clock = FakeClock(world.path("faketime"));
        clock.set(offset);
        clock
    }

    /// Moves the wall clock of every process started with [`FakeClock::apply`], at once.
    fn set(&self, offset: &str) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset}\n")).unwrap();
        std::fs::rename(tmp, &self.0).unwrap();
    }

    fn apply(&self, cmd: &mut Command) {
        cmd.env("LD_PRELOAD", LIBFAKETIME)
            .env("FAKETIME_TIMESTAMP_FILE", &self.0)
            .env("FAKETIME_NO_CACHE", "1")
            .env("DONT_FAKE_MONOTONIC", "1")
            .env_remove("FAKETIME");
    }
}

/// `dropdeploy ARGS` under the fake clock, to its end.
fn run_faked(world: &World, clock: &FakeClock, args: &[&str]) -> crate::support::Run {
    let mut cmd = world.command(args);
    clock.apply(&mut cmd);
    crate::support::Run::from_output(cmd.output().unwrap(), &world.fake.api_token())
}

/// `dropdeploy ARGS` under the fake clock, in the background (output in `<tag>.stdout` and
/// `<tag>.stderr`).
fn spawn_faked(world: &World, clock: &FakeClock, args: &[&str], tag: &str) -> Proc {
    let mut cmd = world.command(args);
    clock.apply(&mut cmd);
    let stdout = std::fs::File::create(world.path(&format!("{tag}.stdout"))).unwrap();
    let stderr = std::fs::File::create(world.path(&format!("{tag}.stderr"))).unwrap();
    Proc(
        cmd.stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap(),
    )
}

/// `dropdeploy run` under the fake clock, once it watches its folders.
fn start_daemon_faked(world: &World, clock: &FakeClock, tag: &str) -> Proc {
    let daemon = spawn_faked(world, clock, &["run"], tag);
    let up = wait_for(LONG, || world.log(tag).contains("dropdeploy is running"));
    assert!(up, "daemon did not start:\n{}", world.log(tag));
    daemon
}

/// A platform whose bearer tokens outlive any clock jump of the tests (so that the jump is
/// about durations, not about tokens that look expired).
fn platform(step: Duration) -> World {
    World::with(FakeConfig {
        step,
        jwt_lifetime: Duration::from_secs(6 * 3600),
        ..FakeConfig::default()
    })
}

/// The create's answer is lost after the platform made the deployment (it answers after the
/// client's 2 s limit), while this machine's clock is `offset` from the platform's: `deploy`
/// must find the deployment and adopt it, not post a second one.
fn ambiguous_create(world: &World, offset: &str, extra: &[&str]) -> crate::support::Run {
    let clock = FakeClock::new(world, offset);
    world.fake.fail_next(
        Endpoint::CreateDeployment,
        Fault::ProcessThenDelay(Duration::from_secs(4)),
    );
    let archive = world.archive("a.tar.gz");
    let mut args = vec!["deploy", "--app", "my-app"];
    args.extend_from_slice(extra);
    args.push(archive.to_str().unwrap());
    run_faked(world, &clock, &args)
}

#[test]
fn a_clock_ten_minutes_ahead_does_not_deploy_twice_after_a_lost_create_answer() {
    let world = platform(Duration::from_millis(50));
    let run = ambiguous_create(&world, "+10m", &[]);
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 1, "one deployment: {deployments:#?}");
    run.assert_code(0).assert_contains("already posted");
}

#[test]
fn a_given_git_ref_adopts_its_new_deployment_whatever_the_clock_and_never_an_older_one() {
    for offset in ["+10m", "-10m"] {
        let world = platform(Duration::from_millis(50));
        // An earlier deployment with the same git_ref, by an earlier `deploy --git-ref v1`.
        let first = world.archive("first.tar.gz");
        world
            .run(&[
                "deploy",
                "--app",
                "my-app",
                "--git-ref",
                "v1",
                first.to_str().unwrap(),
            ])
            .assert_code(0);
        let old = world.fake.deployments("my-app")[0].id.clone();
        let run = ambiguous_create(&world, offset, &["--git-ref", "v1"]);
        run.assert_code(0);
        let deployments = world.fake.deployments("my-app");
        assert_eq!(
            deployments.len(),
            2,
            "clock {offset}: one new deployment: {deployments:#?}"
        );
        let new = deployments.iter().find(|d| d.id != old).unwrap();
        run.assert_contains(&format!("deployment {}", new.id));
    }
}

/// File names of the history lines, in order.
fn files(world: &World) -> Vec<String> {
    world
        .history()
        .iter()
        .map(|h| h["file"].as_str().unwrap_or("").to_string())
        .collect()
}

fn spool_jobs(world: &World) -> usize {
    world.job_records().len()
}

/// a1 builds when the clock steps back an hour and a2..=a`last` arrive, one after the other;
/// then a restart. Returns the world once `history` lines are written, having checked that
/// the app never had two deployments at once.
fn restart_after_the_clock_stepped_back(policy: &str, last: usize, history: usize) -> World {
    let world = platform(Duration::from_millis(700));
    let drop = world.add_drop_app("my-app", &format!("queue = \"{policy}\""));
    let clock = FakeClock::new(&world, "+0");
    let mut daemon = start_daemon_faked(&world, &clock, "first");
    world.drop_archive(&drop, "a1.tar.gz");
    assert!(world.fake.wait_until(LONG, |s| s.deployments_created == 1));
    clock.set("-1h");
    for n in 2..=last {
        world.drop_archive(&drop, &format!("a{n}.tar.gz"));
        assert!(wait_for(LONG, || spool_jobs(&world) == n), "a{n} queued");
    }
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(20));
    assert!(world.history().is_empty(), "{:#?}", world.history());
    let _daemon = start_daemon_faked(&world, &clock, "second");
    world.wait_history(history, Duration::from_secs(120));
    // One deployment at a time: each starts after the one before finished.
    let deployments = world.fake.deployments("my-app");
    for pair in deployments.windows(2) {
        let finished = pair[0].finished_at.unwrap();
        assert!(
            pair[1].created_at >= finished,
            "two deployments at once: {pair:#?}\n{}",
            world.log("second")
        );
    }
    world
}

#[test]
fn after_a_restart_jobs_run_in_arrival_order_even_when_the_clock_stepped_back() {
    let world = restart_after_the_clock_stepped_back("all", 6, 6);
    let expected: Vec<String> = (1..=6).map(|n| format!("a{n}.tar.gz")).collect();
    assert_eq!(files(&world), expected, "{}", world.log("second"));
    assert_eq!(world.fake.deployments("my-app").len(), 6);
}

#[test]
fn with_queue_latest_a_job_under_way_at_a_restart_ends_before_the_newer_one_starts() {
    let world = restart_after_the_clock_stepped_back("latest", 2, 2);
    assert_eq!(
        files(&world),
        ["a1.tar.gz", "a2.tar.gz"],
        "{}",
        world.log("second")
    );
    assert_eq!(world.fake.deployments("my-app").len(), 2);
}

#[test]
fn a_clock_jumping_an_hour_ahead_while_building_does_not_fail_the_job() {
    // Four steps of 2 s: the deployment builds for 8 s, and the jump comes in the middle.
    let world = platform(Duration::from_secs(2));
    let clock = FakeClock::new(&world, "+0");
    let archive = world.archive("a.tar.gz");
    let mut deploy = spawn_faked(
        &world,
        &clock,
        &["deploy", "--app", "my-app", archive.to_str().unwrap()],
        "deploy",
    );
    assert!(world.fake.wait_until(LONG, |s| s.deployments_created == 1));
    clock.set("+1h");
    let status = deploy.wait_exit(LONG);
    let out = std::fs::read_to_string(world.path("deploy.stdout")).unwrap_or_default();
    let err = world.log("deploy");
    assert!(status.success(), "{out}\n{err}");
    assert!(
        !format!("{out}{err}").contains("deploy_timeout"),
        "{out}\n{err}"
    );
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn a_clock_jumping_an_hour_ahead_during_a_retried_call_does_not_spend_the_retry_budget() {
    let world = platform(Duration::from_millis(50));
    let clock = FakeClock::new(&world, "+0");
    // The first upload slot asked for is answered after the client's 2 s limit: a transient
    // error, retried within the budget (30 s in the tests' configuration).
    world
        .fake
        .fail_next(Endpoint::CreateSource, Fault::Delay(Duration::from_secs(4)));
    let archive = world.archive("a.tar.gz");
    let mut deploy = spawn_faked(
        &world,
        &clock,
        &["deploy", "--app", "my-app", archive.to_str().unwrap()],
        "deploy",
    );
    assert!(wait_for(LONG, || world
        .fake
        .requests_in_flight(Endpoint::CreateSource)
        > 0));
    clock.set("+1h");
    let status = deploy.wait_exit(LONG);
    let out = std::fs::read_to_string(world.path("deploy.stdout")).unwrap_or_default();
    let err = world.log("deploy");
    assert!(status.success(), "{out}\n{err}");
    assert!(!format!("{out}{err}").contains("gave up"), "{out}\n{err}");
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn a_clock_stepping_back_an_hour_during_the_warmup_does_not_make_the_check_wait_an_hour() {
    let world = platform(Duration::from_millis(50));
    let url = format!("{}/up", world.fake.app_url("app"));
    let drop = world.add_drop_app(
        "app",
        &format!(
            "verify = {{ url = \"{url}\", timeout = \"2s\", interval = \"100ms\", attempts = 3, \
             warmup = \"4s\", soak = \"0s\" }}"
        ),
    );
    let clock = FakeClock::new(&world, "+0");
    let _daemon = start_daemon_faked(&world, &clock, "d");
    world.drop_archive(&drop, "v1.tar.gz");
    let warming = wait_for(LONG, || {
        std::fs::read_to_string(world.state.join("live.json"))
            .is_ok_and(|t| t.contains("warmup before the first probe"))
    });
    assert!(
        warming,
        "the check waits for its warmup:\n{}",
        world.log("d")
    );
    clock.set("-1h");
    // The warmup ends 4 s after it began, by the monotonic clock; not an hour later.
    let history = world.wait_history(1, Duration::from_secs(30));
    assert_eq!(history[0]["outcome"], "verified", "{history:#?}");
}

#[test]
fn status_shows_the_checks_next_try_right_after_the_clock_stepped_back() {
    let world = platform(Duration::from_millis(50));
    let url = format!("{}/up", world.fake.app_url("app"));
    let drop = world.add_drop_app(
        "app",
        &format!(
            "verify = {{ url = \"{url}\", timeout = \"2s\", interval = \"100ms\", attempts = 3, \
             warmup = \"60s\", soak = \"0s\" }}"
        ),
    );
    let clock = FakeClock::new(&world, "+0");
    let _daemon = start_daemon_faked(&world, &clock, "d");
    world.drop_archive(&drop, "v1.tar.gz");
    let warming = wait_for(LONG, || {
        std::fs::read_to_string(world.state.join("live.json"))
            .is_ok_and(|t| t.contains("warmup before the first probe"))
    });
    assert!(
        warming,
        "the check waits for its warmup:\n{}",
        world.log("d")
    );
    clock.set("-1h");
    // `status` on the same (stepped) clock: the next probe is due within the minute of warmup.
    let run = run_faked(&world, &clock, &["status", "--json"]);
    run.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let waits = status["apps"][0]["waits"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let next = waits
        .iter()
        .find(|w| w["kind"] == "verify")
        .and_then(|w| w["retry_at"].as_str())
        .unwrap_or_else(|| panic!("a verify wait with a next try: {status:#}"));
    let next = humantime::parse_rfc3339(next).unwrap();
    let faked_now = std::time::SystemTime::now() - Duration::from_secs(3600);
    let ahead = next.duration_since(faked_now).unwrap_or_default();
    assert!(
        next + Duration::from_secs(5) >= faked_now && ahead <= Duration::from_secs(65),
        "next try {next:?} is {ahead:?} after now on the daemon's clock: {status:#}"
    );
}

#[test]
fn a_clock_jumping_an_hour_ahead_does_not_make_the_bearer_look_expired() {
    // Bearer tokens live an hour, as on the platform; the deployment builds for 8 s.
    let world = World::with(FakeConfig {
        step: Duration::from_secs(2),
        ..FakeConfig::default()
    });
    let clock = FakeClock::new(&world, "+0");
    let archive = world.archive("a.tar.gz");
    let mut deploy = spawn_faked(
        &world,
        &clock,
        &["deploy", "--app", "my-app", archive.to_str().unwrap()],
        "deploy",
    );
    assert!(world.fake.wait_until(LONG, |s| s.deployments_created == 1));
    let before = world.fake.stats().exchanges;
    clock.set("+1h");
    let status = deploy.wait_exit(LONG);
    assert!(status.success(), "{}", world.log("deploy"));
    let after = world.fake.stats().exchanges;
    // The bearer exchanged before the jump is still good for 55 minutes by the platform.
    assert_eq!(after, before, "exchanged again {} times", after - before);
}
