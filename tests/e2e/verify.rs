//! Verified deploys against the fake platform: the app endpoint of `fake-scalingo` answers as
//! the archive deployed last says (its `fake-app.txt`), so each test makes the app healthy,
//! broken, dying or slow to start, and watches the check, the rollback and the history.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{World, archives_in, wait_for};

const LONG: Duration = Duration::from_secs(60);

/// A `.tar.gz` with `app/package.json`, `app/index.html` saying `name`, and `app/fake-app.txt`
/// holding `behaviour` (how the fake app answers once deployed).
fn app_archive(dir: &Path, name: &str, behaviour: &str) -> PathBuf {
    let path = dir.join(name);
    crate::support::tar_gz(
        &path,
        &[
            ("app/package.json", br#"{"name":"demo"}"#, 0o644),
            ("app/index.html", name.as_bytes(), 0o644),
            ("app/fake-app.txt", behaviour.as_bytes(), 0o644),
        ],
    );
    path
}

/// Drops an app archive into `drop` (written aside, renamed in).
fn drop_app(world: &World, drop: &Path, name: &str, behaviour: &str) {
    std::fs::create_dir_all(drop).unwrap();
    let made = app_archive(world.dir.path(), name, behaviour);
    std::fs::rename(made, drop.join(name)).unwrap();
}

/// A drop-folder app with a check on the fake's app endpoint; `verify` adds keys.
fn verified_app(world: &World, app: &str, verify: &str, extra: &str) -> PathBuf {
    let url = format!("{}/up", world.fake.app_url(app));
    world.add_drop_app(
        app,
        &format!(
            "verify = {{ url = \"{url}\", timeout = \"2s\", interval = \"100ms\", {verify} }}\n{extra}"
        ),
    )
}

fn outcomes(history: &[serde_json::Value]) -> Vec<String> {
    history
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or("").to_string())
        .collect()
}

fn rollback_deployments(world: &World, app: &str) -> usize {
    world
        .fake
        .deployments(app)
        .iter()
        .filter(|d| d.git_ref.as_deref().is_some_and(|r| r.contains("rollback")))
        .count()
}

fn kept_archives(world: &World, app: &str) -> Vec<String> {
    archives_in(&world.state.join("verified").join(app))
}

#[test]
fn a_healthy_deployment_is_verified_and_its_archive_kept() {
    let world = World::new();
    let drop = verified_app(
        &world,
        "app",
        "attempts = 3, warmup = \"0s\", soak = \"500ms\"",
        "",
    );
    let _daemon = world.start_daemon("d");
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    let history = world.wait_history(1, LONG);
    assert_eq!(outcomes(&history), ["verified"], "{history:#?}");
    assert_eq!(history[0]["check"]["status"], 200);
    assert!(history[0]["check"]["latency_ms"].is_u64());
    assert_eq!(history[0]["check"]["excerpt"], "ok v1");
    assert!(
        history[0]["reason"].as_str().unwrap().contains("soak"),
        "{history:#?}"
    );
    assert_eq!(kept_archives(&world, "app").len(), 1);
    assert_eq!(archives_in(&drop.join("done")), ["v1.tar.gz"]);
    assert!(world.log("d").contains("verified"), "{}", world.log("d"));
    world
        .run(&["config", "check"])
        .assert_code(0)
        .assert_contains("then checked: GET http://")
        .assert_contains("rolled back once");
}

#[test]
fn an_unhealthy_first_deployment_has_nothing_to_roll_back_to() {
    let world = World::new();
    let drop = verified_app(
        &world,
        "app",
        "attempts = 2, warmup = \"0s\", soak = \"0s\"",
        "",
    );
    let _daemon = world.start_daemon("d");
    drop_app(&world, &drop, "v1.tar.gz", "status=500\nbody=oops");
    let history = world.wait_history(1, LONG);
    assert_eq!(outcomes(&history), ["unhealthy"], "{history:#?}");
    let reason = history[0]["reason"].as_str().unwrap();
    assert!(reason.contains("HTTP 500"), "{reason}");
    assert!(reason.contains("no verified archive"), "{reason}");
    assert_eq!(history[0]["check"]["status"], 500);
    assert_eq!(history[0]["step"], "verify");
    assert_eq!(archives_in(&drop.join("failed")), ["v1.tar.gz"]);
    let why = std::fs::read_to_string(drop.join("failed/v1.tar.gz.reason.txt")).unwrap();
    assert!(why.contains("HTTP 500"), "{why}");
    assert_eq!(world.fake.deployments("app").len(), 1, "no rollback");
}

#[test]
fn an_unhealthy_deployment_rolls_back_to_the_last_verified_archive() {
    let world = World::new();
    let drop = verified_app(
        &world,
        "app",
        "attempts = 2, warmup = \"0s\", soak = \"300ms\"",
        "",
    );
    let _daemon = world.start_daemon("d");
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    world.wait_history(1, LONG);
    drop_app(&world, &drop, "v2.tar.gz", "version=v2\nstatus=500");
    let history = world.wait_history(3, LONG);
    assert_eq!(
        outcomes(&history),
        ["verified", "unhealthy", "rolled_back"],
        "{history:#?}"
    );
    let (v1_ref, v2_ref) = (
        history[0]["git_ref"].as_str().unwrap(),
        history[1]["git_ref"].as_str().unwrap(),
    );
    assert!(
        history[1]["reason"]
            .as_str()
            .unwrap()
            .contains("rolling back to"),
        "{history:#?}"
    );
    assert_eq!(
        history[2]["reason"].as_str().unwrap(),
        format!("rolled_back v2.tar.gz (git_ref {v2_ref}) → v1.tar.gz (git_ref {v1_ref})")
    );
    assert_eq!(world.fake.app_answer("app"), (200, "ok v1".to_string()));
    assert_eq!(world.fake.deployments("app").len(), 3);
    assert_eq!(rollback_deployments(&world, "app"), 1);
    assert_eq!(archives_in(&drop.join("failed")), ["v2.tar.gz"]);
}

#[test]
fn an_app_that_dies_during_the_soak_is_unhealthy_and_rolled_back() {
    let world = World::new();
    let drop = verified_app(
        &world,
        "app",
        "attempts = 3, warmup = \"0s\", soak = \"2s\"",
        "",
    );
    let _daemon = world.start_daemon("d");
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    world.wait_history(1, LONG);
    drop_app(&world, &drop, "v2.tar.gz", "version=v2\ndie_after=0.5");
    let history = world.wait_history(3, LONG);
    assert_eq!(
        outcomes(&history),
        ["verified", "unhealthy", "rolled_back"],
        "{history:#?}"
    );
    let reason = history[1]["reason"].as_str().unwrap();
    assert!(reason.contains("stopped answering well"), "{reason}");
    assert!(reason.contains("app crashed"), "{reason}");
    assert_eq!(world.fake.app_answer("app").1, "ok v1");
}

/// `GET /metrics` of the daemon on `port`.
fn metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn an_unhealthy_rollback_needs_attention_and_does_not_loop() {
    let world = World::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        format!("metrics_listen = \"127.0.0.1:{port}\"\n{text}"),
    )
    .unwrap();
    let hooked = world.path("hooked.jsonl");
    let hook = format!(
        "on_outcome = {{ command = [\"sh\", \"-c\", \"cat >> {}; echo >> {}\"], only = [\"unhealthy\"] }}",
        hooked.display(),
        hooked.display()
    );
    let drop = verified_app(
        &world,
        "app",
        "attempts = 2, warmup = \"0s\", soak = \"0s\"",
        &hook,
    );
    let mut daemon = world.start_daemon("d");
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    world.wait_history(1, LONG);
    // Something outside the archives breaks (a database down): the rollback cannot help.
    world.fake.break_app("app", Some(500));
    drop_app(&world, &drop, "v2.tar.gz", "version=v2");
    let history = world.wait_history(3, LONG);
    assert_eq!(
        outcomes(&history),
        ["verified", "unhealthy", "unhealthy"],
        "{history:#?}"
    );
    let reason = history[2]["reason"].as_str().unwrap();
    assert!(reason.contains("needs attention"), "{reason}");
    // No loop: nothing more is deployed for a while (a rollback would take well under this).
    assert!(!wait_for(Duration::from_secs(2), || world.history().len()
        > 3
        || world.fake.deployments("app").len() > 3));
    assert_eq!(rollback_deployments(&world, "app"), 1);
    let status = world.run(&["status"]);
    status.assert_code(0).assert_contains("needs attention");
    assert!(
        wait_for(LONG, || metrics(port)
            .contains("dropdeploy_needs_attention{app=\"app\"} 1")),
        "{}",
        metrics(port)
    );
    // The outcome hook heard of both unhealthy deployments.
    assert!(wait_for(LONG, || std::fs::read_to_string(&hooked)
        .unwrap_or_default()
        .matches("\"outcome\":\"unhealthy\"")
        .count()
        == 2));
    // A restart remembers it.
    daemon.signal("TERM");
    daemon.wait_exit(LONG);
    let _daemon = world.start_daemon("d2");
    assert!(
        wait_for(LONG, || metrics(port)
            .contains("dropdeploy_needs_attention{app=\"app\"} 1")),
        "{}",
        metrics(port)
    );
    world.run(&["status"]).assert_contains("needs attention");
    let json = world.run(&["status", "--json"]);
    assert!(json.stdout.contains("needs_attention"), "{}", json.stdout);

    world
        .run(&["resume", "app"])
        .assert_code(0)
        .assert_contains("no longer needs attention");
    let status = world.run(&["status"]);
    assert!(
        !status.stdout.contains("needs attention"),
        "{}",
        status.stdout
    );
    // A new drop deploys as usual (and, healthy again, is verified).
    world.fake.break_app("app", None);
    drop_app(&world, &drop, "v3.tar.gz", "version=v3");
    let history = world.wait_history(4, LONG);
    assert_eq!(history[3]["outcome"], "verified", "{history:#?}");
    assert!(metrics(port).contains("dropdeploy_needs_attention{app=\"app\"} 0"));
}

#[test]
fn a_newer_drop_cuts_a_check_short_and_the_verified_archive_stays_in_done() {
    let world = World::new();
    let drop = verified_app(
        &world,
        "app",
        "attempts = 600, warmup = \"0s\", soak = \"300ms\"",
        "keep_done = 1",
    );
    let _daemon = world.start_daemon("d");
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    world.wait_history(1, LONG);
    // v2 takes a minute to answer well: its check is still probing when v3 comes.
    drop_app(&world, &drop, "v2.tar.gz", "version=v2\nstart_after=60");
    assert!(
        wait_for(LONG, || world
            .job_records()
            .iter()
            .any(|r| r.contains("\"verifying\""))),
        "{}",
        world.log("d")
    );
    drop_app(&world, &drop, "v3.tar.gz", "version=v3");
    let history = world.wait_history(2, LONG);
    assert_eq!(history[1]["outcome"], "succeeded", "{history:#?}");
    assert!(
        history[1]["reason"].as_str().unwrap().contains("newer job"),
        "{history:#?}"
    );
    // Once v2's outcome is fully recorded (done/ pruned, the job gone from the spool):
    // keep_done = 1, yet the last verified archive (v1) is still in done/ beside v2.
    assert!(wait_for(LONG, || !world
        .job_records()
        .iter()
        .any(|r| r.contains("v2.tar.gz"))));
    assert_eq!(archives_in(&drop.join("done")), ["v1.tar.gz", "v2.tar.gz"]);
    let history = world.wait_history(3, LONG);
    assert_eq!(history[2]["outcome"], "verified", "{history:#?}");
    // v3 is now the last verified: v1 may go.
    let done = || archives_in(&drop.join("done"));
    assert!(wait_for(LONG, || done() == ["v3.tar.gz"]), "{:?}", done());
    assert_eq!(rollback_deployments(&world, "app"), 0);
}

#[test]
fn a_check_interrupted_by_sigkill_resumes_without_deploying_again() {
    let world = World::new();
    let drop = verified_app(
        &world,
        "app",
        "attempts = 3, warmup = \"4s\", soak = \"300ms\"",
        "",
    );
    let mut daemon = world.start_daemon("d1");
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    assert!(
        wait_for(LONG, || world
            .job_records()
            .iter()
            .any(|r| r.contains("\"verifying\""))),
        "{}",
        world.log("d1")
    );
    // The wait shows in `status`, with its reason and the time of the next step.
    assert!(
        wait_for(LONG, || {
            let out = world.run(&["status"]).stdout;
            out.contains("verifying: ") && out.contains("warmup before the first probe")
        }),
        "{}",
        world.run(&["status"]).stdout
    );
    daemon.kill9();
    let _daemon = world.start_daemon("d2");
    let history = world.wait_history(1, LONG);
    assert_eq!(outcomes(&history), ["verified"], "{history:#?}");
    assert_eq!(world.fake.deployments("app").len(), 1, "deployed once");
    assert!(wait_for(LONG, || world.job_records().is_empty()));
}

#[test]
fn a_rollback_interrupted_by_sigkill_resumes_and_deploys_once() {
    let world = World::new();
    let drop = verified_app(
        &world,
        "app",
        "attempts = 2, warmup = \"0s\", soak = \"1s\"",
        "",
    );
    let mut daemon = world.start_daemon("d1");
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    world.wait_history(1, LONG);
    drop_app(&world, &drop, "v2.tar.gz", "version=v2\nstatus=503");
    // The rollback job exists (recorded in the spool): kill the daemon there.
    assert!(
        wait_for(LONG, || world
            .job_records()
            .iter()
            .any(|r| r.contains("\"automatic\": true"))),
        "{}",
        world.log("d1")
    );
    daemon.kill9();
    let _daemon = world.start_daemon("d2");
    let history = world.wait_history(3, LONG);
    assert_eq!(
        outcomes(&history),
        ["verified", "unhealthy", "rolled_back"],
        "{history:#?}\n{}",
        world.log("d2")
    );
    assert!(!wait_for(Duration::from_secs(1), || world.history().len() > 3));
    assert_eq!(
        rollback_deployments(&world, "app"),
        1,
        "the rollback deployed once"
    );
    assert_eq!(world.fake.app_answer("app").1, "ok v1");
}

#[test]
fn a_local_release_that_fails_its_probe_gets_current_pointed_back() {
    let world = World::new();
    let url = format!("{}/up", world.fake.app_url("site"));
    let (drop, app_dir) = world.add_local_app(
        "site",
        &format!(
            "verify = {{ url = \"{url}\", attempts = 2, interval = \"100ms\", warmup = \"0s\", soak = \"200ms\" }}"
        ),
    );
    world.fake.serve_release("site", &app_dir);
    let _daemon = world.start_daemon("d");
    drop_app(&world, &drop, "v1.tar.gz", "version=one");
    world.wait_history(1, LONG);
    drop_app(&world, &drop, "v2.tar.gz", "version=two\nstatus=500");
    let history = world.wait_history(3, LONG);
    assert_eq!(
        outcomes(&history),
        ["verified", "unhealthy", "rolled_back"],
        "{history:#?}"
    );
    let current = std::fs::canonicalize(app_dir.join("current")).unwrap();
    assert_eq!(
        std::fs::read_to_string(current.join("index.html")).unwrap(),
        "v1.tar.gz"
    );
    assert_eq!(world.fake.app_answer("site"), (200, "ok one".to_string()));
}

#[test]
fn rollback_by_hand_brings_back_a_kept_archive_and_refuses_without_one() {
    let world = World::new();
    let drop = verified_app(
        &world,
        "app",
        "attempts = 2, warmup = \"0s\", soak = \"0s\"",
        "",
    );
    let refused = world.run(&["rollback", "app"]);
    refused
        .assert_code(1)
        .assert_contains("no verified archive is kept")
        .assert_contains("(none)");
    let mut daemon = world.start_daemon("d");
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    world.wait_history(1, LONG);
    drop_app(&world, &drop, "v2.tar.gz", "version=v2");
    let history = world.wait_history(2, LONG);
    daemon.signal("TERM");
    daemon.wait_exit(LONG);
    let v1_ref = history[0]["git_ref"].as_str().unwrap().to_string();
    let v2_ref = history[1]["git_ref"].as_str().unwrap().to_string();

    let unknown = world.run(&["rollback", "app", "--to", "nope"]);
    unknown
        .assert_code(1)
        .assert_contains(&v1_ref)
        .assert_contains(&v2_ref);

    let done = world.run(&["rollback", "app", "--to", &v1_ref]);
    done.assert_code(0)
        .assert_contains("migrations")
        .assert_contains("rolled_back");
    assert_eq!(world.fake.app_answer("app").1, "ok v1");
    let history = world.history();
    assert_eq!(history.len(), 3, "{history:#?}");
    assert_eq!(history[2]["outcome"], "rolled_back");
    assert_eq!(
        history[2]["reason"].as_str().unwrap(),
        format!("rolled_back v2.tar.gz (git_ref {v2_ref}) → v1.tar.gz (git_ref {v1_ref})")
    );
}

/// The time from an unhealthy verdict to the previous version serving again, against the fake
/// (its build steps take `step`, set to zero here: the platform's build time is excluded).
/// `cargo test --test e2e verify::rollback_time -- --ignored --nocapture`
#[test]
#[ignore]
fn rollback_time() {
    let world = World::new();
    world.fake.set_step(Duration::ZERO);
    let drop = verified_app(
        &world,
        "app",
        "attempts = 1, warmup = \"0s\", soak = \"0s\"",
        "",
    );
    let _daemon = world.start_daemon("d");
    let mut figures = Vec::new();
    for round in 0..5 {
        let good = format!("good{round}.tar.gz");
        drop_app(&world, &drop, &good, &format!("version=good{round}"));
        let n = world.history().len();
        world.wait_history(n + 1, LONG);
        drop_app(
            &world,
            &drop,
            &format!("bad{round}.tar.gz"),
            "version=bad\nstatus=500",
        );
        // The unhealthy version is live from its deployment's success: measure from the first
        // bad answer to the good one again.
        assert!(wait_for(LONG, || world.fake.app_answer("app").0 == 500));
        let start = Instant::now();
        assert!(wait_for(LONG, || world.fake.app_answer("app").1
            == format!("ok good{round}")));
        figures.push(start.elapsed());
        world.wait_history(n + 3, LONG);
    }
    figures.sort();
    println!(
        "rollback time (unhealthy version live -> previous version serving), 5 rounds: min {:?}, median {:?}, max {:?}",
        figures[0], figures[2], figures[4]
    );
}

#[test]
fn a_saved_tree_that_is_unhealthy_is_rolled_back_and_the_next_save_wins() {
    let world = World::new();
    let url = format!("{}/up", world.fake.app_url("tree"));
    let root = world.add_tree_app(
        "tree",
        &format!(
            "deploy_on_start = true\nverify = {{ url = \"{url}\", attempts = 2, interval = \"100ms\", warmup = \"0s\", soak = \"200ms\" }}"
        ),
    );
    std::fs::write(root.join("fake-app.txt"), "version=t1\n").unwrap();
    let _daemon = world.start_daemon("d");
    world.wait_history(1, LONG);
    std::fs::write(root.join("fake-app.txt"), "version=t2\nstatus=500\n").unwrap();
    let history = world.wait_history(3, LONG);
    assert_eq!(
        outcomes(&history),
        ["verified", "unhealthy", "rolled_back"],
        "{history:#?}"
    );
    assert_eq!(world.fake.app_answer("tree"), (200, "ok t1".to_string()));
    std::fs::write(root.join("fake-app.txt"), "version=t3\n").unwrap();
    let history = world.wait_history(4, LONG);
    assert_eq!(history[3]["outcome"], "verified", "{history:#?}");
    assert_eq!(world.fake.app_answer("tree").1, "ok t3");
}

#[test]
fn the_deploy_command_checks_too_and_sees_its_rollback_through() {
    let world = World::new();
    verified_app(
        &world,
        "app",
        "attempts = 2, warmup = \"0s\", soak = \"0s\"",
        "",
    );
    let good = app_archive(world.dir.path(), "v1.tar.gz", "version=v1");
    world
        .run(&["deploy", "--app", "app", good.to_str().unwrap()])
        .assert_code(0)
        .assert_contains("app: verified: healthy");
    let bad = app_archive(world.dir.path(), "v2.tar.gz", "version=v2\nstatus=500");
    world
        .run(&["deploy", "--app", "app", bad.to_str().unwrap()])
        .assert_code(1)
        .assert_contains("UNHEALTHY after deploying")
        .assert_contains("rolling back to");
    // The command waited for the rollback: it is recorded, and v1 serves again.
    let history = world.history();
    assert_eq!(
        outcomes(&history),
        ["verified", "unhealthy", "rolled_back"],
        "{history:#?}"
    );
    assert_eq!(world.fake.app_answer("app").1, "ok v1");
    assert!(world.job_records().is_empty());
}

#[test]
fn a_check_given_as_a_path_probes_it_on_the_apps_url_from_the_platform() {
    let world = World::new();
    let drop = world.add_drop_app(
        "app",
        "verify = { url = \"/up\", timeout = \"2s\", interval = \"100ms\", attempts = 2, warmup = \"0s\", soak = \"0s\" }\n",
    );
    let _daemon = world.start_daemon("d");
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    let history = world.wait_history(1, LONG);
    assert_eq!(outcomes(&history), ["verified"], "{history:#?}");
    assert_eq!(history[0]["check"]["status"], 200, "{history:#?}");
    // Only the fake's app endpoint answers 500 for this archive: the probe went there.
    drop_app(&world, &drop, "v2.tar.gz", "version=v2\nstatus=500");
    let history = world.wait_history(3, LONG);
    assert_eq!(
        outcomes(&history),
        ["verified", "unhealthy", "rolled_back"],
        "{history:#?}"
    );
    assert_eq!(history[1]["check"]["status"], 500, "{history:#?}");
}

// ---- issue 23: the words of an unhealthy deployment and of rollbacks -----------------------

#[test]
fn an_unhealthy_reason_says_the_check_failed_what_it_got_and_what_was_rolled_back_to() {
    let world = World::new();
    let drop = verified_app(
        &world,
        "app",
        "attempts = 2, warmup = \"0s\", soak = \"0s\"",
        "",
    );
    let _daemon = world.start_daemon("d");
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    let history = world.wait_history(1, LONG);
    let v1_ref = history[0]["git_ref"].as_str().unwrap().to_string();
    drop_app(
        &world,
        &drop,
        "v2.tar.gz",
        "version=v2\nstatus=500\nbody=oops",
    );
    world.wait_history(3, LONG);
    let why = std::fs::read_to_string(drop.join("failed/v2.tar.gz.reason.txt")).unwrap();
    assert!(!why.contains("did not build"), "{why}");
    assert!(!why.contains("build output"), "{why}");
    assert!(why.contains("the health check after it failed"), "{why}");
    assert!(why.contains("got:") && why.contains("HTTP 500"), "{why}");
    assert!(
        why.contains(&format!("rolled back to v1.tar.gz (git_ref {v1_ref})")),
        "{why}"
    );
    assert!(why.contains("NOT live"), "{why}");
}

#[test]
fn rollbacks_keep_the_users_names_and_every_name_of_a_kept_archive_works() {
    let world = World::new();
    verified_app(
        &world,
        "app",
        "attempts = 2, warmup = \"0s\", soak = \"0s\"",
        "",
    );
    let deploy = |name: &str, behaviour: &str, code: i32| {
        let file = app_archive(world.dir.path(), name, behaviour);
        world
            .run(&["deploy", "--app", "app", file.to_str().unwrap()])
            .assert_code(code);
    };
    deploy("v1.tar.gz", "version=v1", 0);
    deploy("v2.tar.gz", "version=v2\nstatus=500", 1);
    deploy("v3.tar.gz", "version=v3\nstatus=500", 1);
    let history = world.history();
    assert_eq!(
        outcomes(&history),
        [
            "verified",
            "unhealthy",
            "rolled_back",
            "unhealthy",
            "rolled_back"
        ],
        "{history:#?}"
    );
    let git_ref = |i: usize| history[i]["git_ref"].as_str().unwrap().to_string();
    let (v1, v2, v3) = (git_ref(0), git_ref(1), git_ref(3));
    assert_eq!(
        history[2]["reason"].as_str().unwrap(),
        format!("rolled_back v2.tar.gz (git_ref {v2}) → v1.tar.gz (git_ref {v1})")
    );
    assert_eq!(
        history[4]["reason"].as_str().unwrap(),
        format!("rolled_back v3.tar.gz (git_ref {v3}) → v1.tar.gz (git_ref {v1})")
    );
    for entry in &history {
        let file = entry["file"].as_str().unwrap();
        assert!(
            ["v1.tar.gz", "v2.tar.gz", "v3.tar.gz"].contains(&file),
            "{history:#?}"
        );
    }
    world
        .run(&["status"])
        .assert_contains("last:      rolled_back v1.tar.gz");
    // One content, kept once.
    assert_eq!(kept_archives(&world, "app").len(), 1);
    // After two rollbacks, v1's own git_ref and its file name still name it.
    world
        .run(&["rollback", "app", "--to", &v1])
        .assert_code(0)
        .assert_contains("rolled_back");
    world
        .run(&["rollback", "app", "--to", "v1.tar.gz"])
        .assert_code(0)
        .assert_contains("rolled_back");
    assert_eq!(kept_archives(&world, "app").len(), 1);
    assert_eq!(world.fake.app_answer("app").1, "ok v1");
}

#[test]
fn a_rollback_by_hand_that_is_healthy_clears_needs_attention_and_resume_refuses_unknown_apps() {
    let world = World::new();
    verified_app(
        &world,
        "app",
        "attempts = 2, warmup = \"0s\", soak = \"0s\"",
        "",
    );
    let good = app_archive(world.dir.path(), "v1.tar.gz", "version=v1");
    world
        .run(&["deploy", "--app", "app", good.to_str().unwrap()])
        .assert_code(0);
    world.fake.break_app("app", Some(500));
    let bad = app_archive(world.dir.path(), "v2.tar.gz", "version=v2");
    world
        .run(&["deploy", "--app", "app", bad.to_str().unwrap()])
        .assert_code(1);
    world.run(&["status"]).assert_contains("needs attention");
    world.fake.break_app("app", None);
    world.run(&["rollback", "app"]).assert_code(0);
    let status = world.run(&["status"]);
    assert!(
        !status.stdout.contains("needs attention"),
        "{}",
        status.stdout
    );
    world
        .run(&["resume", "nope"])
        .assert_code(2)
        .assert_contains("nope is not an app of the configuration");
}

#[test]
fn watch_says_an_unhealthy_save_is_not_live_and_the_soak_is_one_line() {
    let world = World::new();
    let url = format!("{}/up", world.fake.app_url("tree"));
    let root = world.add_tree_app(
        "tree",
        &format!(
            "verify = {{ url = \"{url}\", attempts = 2, interval = \"100ms\", warmup = \"0s\", soak = \"1s\" }}"
        ),
    );
    std::fs::write(root.join("fake-app.txt"), "version=t1\n").unwrap();
    let mut watch = crate::support::Proc(world.spawn(
        &[
            "watch",
            "--app",
            "tree",
            "--debounce",
            "200ms",
            "--interval",
            "50ms",
            root.to_str().unwrap(),
        ],
        "watch",
    ));
    let out = world.path("watch.stdout");
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    assert!(wait_for(LONG, || read().contains("verified")), "{}", read());
    // A 1 s soak probed every 100 ms: one probe line, not ten.
    let probes = read().matches("tree: probe:").count();
    assert_eq!(probes, 1, "{}", read());
    std::fs::write(root.join("fake-app.txt"), "version=t2\nstatus=500\n").unwrap();
    assert!(wait_for(LONG, || read().contains("NOT live")), "{}", read());
    let text = read();
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(last.contains("NOT live"), "{text}");
    assert!(last.contains("live now: tree (git_ref "), "{text}");
    assert_eq!(world.fake.app_answer("tree").1, "ok t1");
    watch.signal("INT");
    watch.wait_exit(LONG);
}
