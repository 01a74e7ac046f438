//! What a new user meets in the first hour (issue 23): `config check` finds what `run` refuses,
//! every command that reads state takes `--state-dir`, interrupted jobs and `jobs`, the words of
//! an unhealthy deployment and of rollbacks, the app checked before the upload.

use std::path::Path;
use std::time::Duration;

use crate::support::{Run, World, archives_in, wait_for};

/// `run` in the foreground with a bound: it must refuse at start, not run.
fn run_refused(world: &World) -> Run {
    let mut child = world.spawn(&["run"], "run");
    let status = crate::support::wait_exit(&mut child, Duration::from_secs(30));
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(world.path("run.stdout")).unwrap_or_default(),
        stderr: world.log("run"),
    }
}

#[test]
fn config_check_finds_what_run_refuses_and_both_exit_2_with_the_same_words() {
    let world = World::new();
    let missing = world.path("no-such-src");
    world.append_config(&format!(
        "\n[[app]]\nname = \"my-staging\"\nsource_dir = \"{}\"\n\n[[app]]\nname = \"my-app\"\ndrop_dir = \"/proc/nope/x\"\n",
        missing.display()
    ));
    let source = format!(
        "app my-staging: source directory {} does not exist",
        missing.display()
    );
    let drop = "app my-app: cannot use drop folder /proc/nope/x: No such file or directory";
    let check = world.run(&["config", "check"]);
    check
        .assert_code(2)
        .assert_contains(&source)
        .assert_contains(drop);
    assert!(!check.all().contains(": valid\n"), "{}", check.all());
    run_refused(&world)
        .assert_code(2)
        .assert_contains(&source)
        .assert_contains("1 more");
    // Once the source directory exists, the drop folder is what is left, said the same way.
    std::fs::create_dir_all(&missing).unwrap();
    world
        .run(&["config", "check"])
        .assert_code(2)
        .assert_contains(drop);
    run_refused(&world).assert_code(2).assert_contains(drop);
    assert!(!Path::new("/proc/nope").exists());
}

#[test]
fn watch_and_run_agree_on_a_missing_source_directory() {
    let world = World::new();
    let missing = world.path("gone");
    world.append_config(&format!(
        "\n[[app]]\nname = \"my-app\"\nsource_dir = \"{}\"\n",
        missing.display()
    ));
    let said = format!("source directory {} does not exist", missing.display());
    world
        .run(&["watch", "--app", "my-app", missing.to_str().unwrap()])
        .assert_code(2)
        .assert_contains(&said);
    run_refused(&world).assert_code(2).assert_contains(&said);
}

#[test]
fn a_state_dir_that_cannot_be_made_is_refused_by_check_and_run_alike() {
    let world = World::new();
    let text = std::fs::read_to_string(&world.config).unwrap();
    let state = world.state.display().to_string();
    std::fs::write(&world.config, text.replace(&state, "/proc/nope/state")).unwrap();
    world.add_drop_app("my-app", "");
    let said = "cannot create state_dir /proc/nope/state";
    world
        .run(&["config", "check"])
        .assert_code(2)
        .assert_contains(said);
    run_refused(&world).assert_code(2).assert_contains(said);
}

#[test]
fn the_packaged_configuration_deploys_nothing_until_edited() {
    let world = World::new();
    let packaged = include_str!("../../config/dropdeploy.toml");
    // Installed as is, pointed at this test's folders and token.
    let text = packaged
        .replace(
            "state_dir = \"/srv/deploy/.dropdeploy\"",
            &format!("state_dir = \"{}\"", world.state.display()),
        )
        .replace("token_file = \"/etc/dropdeploy/token\"", "");
    let file = world.path("packaged.toml");
    std::fs::write(&file, text).unwrap();
    world
        .run(&["config", "check", file.to_str().unwrap()])
        .assert_code(0)
        .assert_contains("no [[app]]: the daemon would watch nothing");
    assert!(!packaged.contains("\n[[app]]"), "a live example app");
}

// ---- item 2: every command that reads state takes --state-dir / DROPDEPLOY_STATE_DIR --------

#[test]
fn status_history_and_jobs_read_the_state_dir_deploy_wrote() {
    let world = World::new();
    world.fake.add_app("my-app");
    let elsewhere = world.path("elsewhere");
    let archive = world.archive("a.tar.gz");
    world
        .command(&["deploy", "--app", "my-app", archive.to_str().unwrap()])
        .env("DROPDEPLOY_STATE_DIR", &elsewhere)
        .output()
        .unwrap();
    assert!(elsewhere.join("history.jsonl").is_file());
    let with_env = |args: &[&str]| {
        let out = world
            .command(args)
            .env("DROPDEPLOY_STATE_DIR", &elsewhere)
            .output()
            .unwrap();
        Run::from_output(out, &world.fake.api_token())
    };
    with_env(&["history"])
        .assert_code(0)
        .assert_contains("a.tar.gz");
    with_env(&["status"])
        .assert_code(0)
        .assert_contains("last:      succeeded a.tar.gz");
    with_env(&["jobs", "list"])
        .assert_code(0)
        .assert_contains("no jobs in");
    let flag = elsewhere.to_str().unwrap();
    world
        .run(&["history", "--state-dir", flag])
        .assert_code(0)
        .assert_contains("a.tar.gz");
    world
        .run(&["status", "--state-dir", flag])
        .assert_code(0)
        .assert_contains("succeeded a.tar.gz");
    // Without them, the config's state_dir, which holds nothing.
    world
        .run(&["history"])
        .assert_code(0)
        .assert_contains("no finished jobs");
}

// ---- item 3: interrupted one-shot jobs ------------------------------------------------------

/// A `deploy` stopped by Ctrl-C while its upload hangs: returns its output.
fn interrupted_deploy(world: &World, archive: &Path) -> Run {
    world.fake.fail_next(
        crate::support::Endpoint::Upload,
        crate::support::Fault::Delay(Duration::from_secs(60)),
    );
    let args = ["deploy", "--app", "my-app", archive.to_str().unwrap()];
    let mut child = world.spawn(&args, "deploy");
    let uploading = wait_for(Duration::from_secs(30), || {
        world
            .job_records()
            .iter()
            .any(|r| r.contains("\"source_created\""))
            && world
                .fake
                .requests_in_flight(crate::support::Endpoint::Upload)
                > 0
    });
    assert!(uploading, "the upload started:\n{}", world.log("deploy"));
    crate::support::signal(&child, "INT");
    let status = crate::support::wait_exit(&mut child, Duration::from_secs(20));
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(world.path("deploy.stdout")).unwrap_or_default(),
        stderr: world.log("deploy"),
    }
}

fn only_job_id(world: &World) -> String {
    let records = world.job_records();
    assert_eq!(records.len(), 1, "{records:?}");
    let job: serde_json::Value = serde_json::from_str(&records[0]).unwrap();
    job["id"].as_str().unwrap().to_string()
}

#[test]
fn an_interrupted_deploy_says_how_to_resume_and_status_says_interrupted() {
    let world = World::new();
    world.fake.add_app("my-app");
    let archive = world.archive("big3.tar.gz");
    interrupted_deploy(&world, &archive)
        .assert_code(130)
        .assert_contains("run the same command again to resume");
    let id = only_job_id(&world);
    let status = world.run(&["status"]);
    status
        .assert_code(0)
        .assert_contains("daemon: not running")
        .assert_contains(&format!(
            "INTERRUPTED: source_created big3.tar.gz (job {id}"
        ))
        .assert_contains(&format!("dropdeploy jobs resume {id}"))
        .assert_contains("the same `dropdeploy deploy` command resumes it");
    assert!(!status.stdout.contains("in flight: source_created"));
    let json = world.run(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(doc["apps"][0]["in_flight"][0]["interrupted"], true, "{doc}");
    world
        .run(&["jobs", "list"])
        .assert_code(0)
        .assert_contains(&id)
        .assert_contains("source_created")
        .assert_contains("nothing: INTERRUPTED");
    // `jobs resume` takes it to its end: one deployment, the spool empty.
    world
        .run(&["jobs", "resume", &id])
        .assert_code(0)
        .assert_contains("success");
    assert_eq!(world.fake.deployments("my-app").len(), 1);
    assert!(world.job_records().is_empty());
    world
        .run(&["jobs", "resume", &id])
        .assert_code(2)
        .assert_contains(&format!("no job {id}"));
}

#[test]
fn discarding_an_interrupted_job_that_posted_says_what_runs_on_the_platform() {
    let world = World::with(crate::support::FakeConfig {
        step: Duration::from_secs(120),
        ..Default::default()
    });
    world.fake.add_app("my-app");
    let archive = world.archive("a.tar.gz");
    let args = ["deploy", "--app", "my-app", archive.to_str().unwrap()];
    let mut child = world.spawn(&args, "deploy");
    let deploying = wait_for(Duration::from_secs(30), || {
        world
            .job_records()
            .iter()
            .any(|r| r.contains("\"deploying\""))
    });
    assert!(deploying, "{}", world.log("deploy"));
    crate::support::signal(&child, "INT");
    crate::support::wait_exit(&mut child, Duration::from_secs(20));
    let id = only_job_id(&world);
    let deployment = world.fake.deployments("my-app")[0].id.clone();
    world
        .run(&["jobs", "discard", &id])
        .assert_code(0)
        .assert_contains(&format!(
            "deployment {deployment} was already posted and goes on on the platform"
        ));
    assert!(world.job_records().is_empty());
    let history = world.history();
    assert_eq!(history.last().unwrap()["outcome"], "failed");
    assert!(
        history.last().unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("discarded by hand"),
        "{history:?}"
    );
    // The archive given to `deploy` stays where it was.
    assert!(archive.is_file());
}

#[test]
fn discarding_a_dropped_files_job_puts_the_file_in_failed_with_its_reason() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    world.fake.fail_next(
        crate::support::Endpoint::Upload,
        crate::support::Fault::Delay(Duration::from_secs(60)),
    );
    let mut daemon = world.start_daemon("daemon");
    world.drop_archive(&drop, "v1.tar.gz");
    assert!(wait_for(Duration::from_secs(30), || {
        world
            .job_records()
            .iter()
            .any(|r| r.contains("\"source_created\""))
    }));
    // Discarding under a running daemon is refused: it drives its jobs.
    let id = only_job_id(&world);
    world
        .run(&["jobs", "discard", &id])
        .assert_code(2)
        .assert_contains("stop it");
    daemon.kill9();
    world
        .run(&["status"])
        .assert_contains("INTERRUPTED: source_created v1.tar.gz")
        .assert_contains("`dropdeploy run` resumes it at its start");
    world
        .run(&["jobs", "discard", &id])
        .assert_code(0)
        .assert_contains("nothing was posted to the platform")
        .assert_contains("failed/v1.tar.gz");
    assert_eq!(archives_in(&drop.join("failed")), vec!["v1.tar.gz"]);
    let reason = std::fs::read_dir(drop.join("failed"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains("reason"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap_or_default();
    assert!(reason.contains("discarded by hand"), "{reason}");
    assert!(world.job_records().is_empty());
}

// ---- item 10: the app checked before the upload ----------------------------------------------

#[test]
fn an_app_name_the_config_refuses_is_refused_before_anything_is_sent() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    world
        .run(&["deploy", "--app", "My_App", archive.to_str().unwrap()])
        .assert_code(2)
        .assert_contains("\"My_App\" is not a Scalingo app name")
        .assert_contains("nothing was uploaded");
    assert_eq!(world.fake.stats().requests, 0);
    assert!(world.job_records().is_empty());
}

#[test]
fn an_app_the_platform_does_not_have_is_refused_before_the_upload() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    world
        .run(&["deploy", "--app", "no-such-app", archive.to_str().unwrap()])
        .assert_code(1)
        .assert_contains("the platform has no app named no-such-app")
        .assert_contains("404")
        .assert_contains("nothing was uploaded");
    let stats = world.fake.stats();
    assert_eq!(stats.sources_created, 0, "{stats:?}");
    assert_eq!(stats.uploads_ok + stats.uploads_failed, 0, "{stats:?}");
    assert_eq!(stats.deployments_created, 0, "{stats:?}");
    assert!(world.job_records().is_empty());
}
