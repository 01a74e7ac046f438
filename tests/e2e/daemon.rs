//! `dropdeploy run`: the real daemon binary, real drop folders and inotify, the fake API.

use std::io::Write;
use std::time::Duration;

use crate::support::{self, Endpoint, FakeConfig, Fault, World, archives_in, wait_for};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn a_dropped_archive_is_deployed_and_moved_to_done() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    world.drop_archive(&drop, "release-1.tar.gz");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded");
    assert_eq!(history[0]["app"], "my-app");
    assert_eq!(history[0]["file"], "release-1.tar.gz");
    assert!(history[0]["deployment_id"].is_string());
    assert_eq!(archives_in(&drop.join("done")), vec!["release-1.tar.gz"]);
    assert!(archives_in(&drop).is_empty());
    assert_eq!(world.fake.deployments("my-app").len(), 1);
    // The history line comes before the spool directory is removed.
    assert!(
        wait_for(LONG, || world.job_records().is_empty()),
        "the spool is empty again"
    );
}

#[test]
fn a_slow_writer_in_place_is_deployed_once_complete() {
    let world = World::new();
    let folder = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    let bytes = std::fs::read(world.archive("src.tar.gz")).unwrap();
    let target = folder.join("slow.tar.gz");
    let mut file = std::fs::File::create(&target).unwrap();
    // Six chunks over three seconds, the file kept open: never taken half-written.
    let chunk = bytes.len().div_ceil(6);
    for part in bytes.chunks(chunk) {
        file.write_all(part).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(world.fake.stats().sources_created, 0, "taken while open");
    }
    drop(file);
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded", "{history:?}");
    assert_eq!(world.fake.stats().upload_bytes, bytes.len() as u64);
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn a_renamed_in_archive_does_not_wait_for_settle() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        text.replace("settle = \"300ms\"", "settle = \"10m\""),
    )
    .unwrap();
    let _daemon = world.start_daemon("d");
    world.drop_archive(&drop, "quick.tar.gz");
    // Ten minutes of settle would fail this wait: a rename is taken at once.
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded");
}

#[test]
fn partial_files_wait_until_renamed() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    std::fs::create_dir_all(&drop).unwrap();
    let partial = drop.join("x.tar.gz.partial");
    std::fs::rename(world.archive("x.tar.gz"), &partial).unwrap();
    // Well past settle (300 ms): a .partial is never taken.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(partial.exists());
    assert_eq!(world.fake.stats().requests, 0);
    std::fs::rename(&partial, drop.join("x.tar.gz")).unwrap();
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["file"], "x.tar.gz");
}

#[test]
fn files_present_at_start_are_deployed() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    world.drop_archive(&drop, "waiting.tar.gz");
    let _daemon = world.start_daemon("d");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["file"], "waiting.tar.gz");
    assert_eq!(history[0]["outcome"], "succeeded");
}

#[test]
fn a_bad_archive_goes_to_failed_with_its_reason_and_the_daemon_goes_on() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    std::fs::write(world.path("bad.tar.gz"), b"this is not gzip").unwrap();
    std::fs::rename(world.path("bad.tar.gz"), drop.join("bad.tar.gz")).unwrap();
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "failed");
    assert_eq!(archives_in(&drop.join("failed")), vec!["bad.tar.gz"]);
    let reason = std::fs::read_to_string(drop.join("failed/bad.tar.gz.reason.txt")).unwrap();
    assert!(reason.contains("not a gzip file"), "{reason}");
    assert!(reason.contains("my-app"), "{reason}");
    assert_eq!(
        world.fake.stats().sources_created,
        0,
        "no upload for a bad archive"
    );
    // Still running: a good archive after it is deployed.
    world.drop_archive(&drop, "good.tar.gz");
    let history = world.wait_history(2, LONG);
    assert_eq!(history[1]["outcome"], "succeeded");
}

fn five_drops_while_busy(policy: &str) -> (World, std::path::PathBuf) {
    let world = World::with(FakeConfig {
        step: Duration::from_millis(400),
        ..FakeConfig::default()
    });
    let drop = world.add_drop_app("my-app", &format!("queue = \"{policy}\""));
    let _daemon = world.start_daemon("d");
    world.drop_archive(&drop, "r1.tar.gz");
    assert!(world.fake.wait_until(LONG, |s| s.deployments_created == 1));
    for n in 2..=5 {
        world.drop_archive(&drop, &format!("r{n}.tar.gz"));
    }
    world.wait_history(5, Duration::from_secs(60));
    (world, drop)
}

#[test]
fn with_queue_latest_only_the_newest_waiting_archive_is_deployed() {
    let (world, drop) = five_drops_while_busy("latest");
    let history = world.history();
    let deployed: Vec<_> = history
        .iter()
        .filter(|h| h["outcome"] == "succeeded")
        .map(|h| h["file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deployed, vec!["r1.tar.gz", "r5.tar.gz"]);
    let superseded: Vec<_> = history
        .iter()
        .filter(|h| h["outcome"] == "superseded")
        .map(|h| h["file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(superseded, vec!["r2.tar.gz", "r3.tar.gz", "r4.tar.gz"]);
    assert_eq!(world.fake.deployments("my-app").len(), 2);
    // Superseded files are kept, in done/.
    assert_eq!(archives_in(&drop.join("done")).len(), 5);
}

#[test]
fn with_queue_all_every_archive_is_deployed_in_order() {
    let (world, _drop) = five_drops_while_busy("all");
    let files: Vec<_> = world
        .history()
        .iter()
        .map(|h| {
            (
                h["file"].as_str().unwrap().to_string(),
                h["outcome"].clone(),
            )
        })
        .collect();
    let expected: Vec<_> = (1..=5)
        .map(|n| (format!("r{n}.tar.gz"), serde_json::json!("succeeded")))
        .collect();
    assert_eq!(files, expected);
    let refs: Vec<_> = world
        .fake
        .deployments("my-app")
        .iter()
        .map(|d| d.git_ref.clone().unwrap())
        .collect();
    let history_refs: Vec<_> = world
        .history()
        .iter()
        .map(|h| h["git_ref"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(refs, history_refs, "deployed in arrival order");
}

#[test]
fn two_apps_deploy_at_the_same_time() {
    let world = World::with(FakeConfig {
        step: Duration::from_millis(400),
        ..FakeConfig::default()
    });
    let a = world.add_drop_app("app-a", "");
    let b = world.add_drop_app("app-b", "");
    let _daemon = world.start_daemon("d");
    world.drop_archive(&a, "a.tar.gz");
    world.drop_archive(&b, "b.tar.gz");
    world.wait_history(2, LONG);
    let da = &world.fake.deployments("app-a")[0];
    let db = &world.fake.deployments("app-b")[0];
    let (a0, a1) = (da.created_at, da.finished_at.unwrap());
    let (b0, b1) = (db.created_at, db.finished_at.unwrap());
    assert!(a0 < b1 && b0 < a1, "the two deployments overlapped in time");
}

#[test]
fn sigterm_during_an_upload_exits_cleanly_and_the_job_finishes_after_restart() {
    let world = World::new();
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        text.replace("shutdown_grace = \"5s\"", "shutdown_grace = \"1s\""),
    )
    .unwrap();
    let drop = world.add_drop_app("my-app", "");
    world
        .fake
        .fail_next(Endpoint::Upload, Fault::Delay(Duration::from_secs(60)));
    let mut daemon = world.start_daemon("first");
    world.drop_archive(&drop, "up.tar.gz");
    assert!(wait_for(LONG, || world
        .fake
        .requests_in_flight(Endpoint::Upload)
        > 0));
    let started = std::time::Instant::now();
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", world.log("first"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "within the grace period"
    );
    assert!(world.history().is_empty());
    assert_eq!(world.job_records().len(), 1, "the job waits in the spool");
    let _daemon = world.start_daemon("second");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded");
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn sighup_adds_an_app() {
    let world = World::new();
    let a = world.add_drop_app("app-a", "");
    let daemon = world.start_daemon("d");
    let b = world.add_drop_app("app-b", "");
    daemon.signal("HUP");
    assert!(wait_for(LONG, || world
        .log("d")
        .contains("configuration reloaded")));
    world.drop_archive(&b, "b.tar.gz");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["app"], "app-b");
    world.drop_archive(&a, "a.tar.gz");
    let history = world.wait_history(2, LONG);
    assert_eq!(history[1]["app"], "app-a");
}

#[test]
fn a_config_error_on_sighup_keeps_the_running_config() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let daemon = world.start_daemon("d");
    world.append_config("\n[[app]]\nname = \"broken\"\ndrop_dri = \"/x\"\n");
    daemon.signal("HUP");
    assert!(wait_for(LONG, || world.log("d").contains("reload refused")));
    assert!(world.log("d").contains("drop_dri"), "{}", world.log("d"));
    world.drop_archive(&drop, "still.tar.gz");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded");
}

#[test]
fn sigkill_at_each_job_state_loses_nothing_and_deploys_each_archive_once() {
    let world = World::with(FakeConfig {
        step: Duration::from_millis(200),
        ..FakeConfig::default()
    });
    let a = world.add_drop_app("app-a", "queue = \"all\"");
    let b = world.add_drop_app("app-b", "queue = \"all\"");
    // Slow steps, so that each state lasts long enough to be caught.
    for _ in 0..20 {
        world
            .fake
            .fail_next(Endpoint::Upload, Fault::Delay(Duration::from_millis(300)));
        world.fake.fail_next(
            Endpoint::CreateDeployment,
            Fault::ProcessThenDelay(Duration::from_millis(300)),
        );
    }
    for n in 0..3 {
        world.drop_archive(&a, &format!("a{n}.tar.gz"));
        world.drop_archive(&b, &format!("b{n}.tar.gz"));
    }
    let mut caught = std::collections::HashSet::new();
    for (round, state) in [
        "queued",
        "source_created",
        "deploy_requested",
        "deploying",
        "source_created",
        "deploy_requested",
        "deploying",
    ]
    .iter()
    .enumerate()
    {
        if world.history().len() == 6 {
            break;
        }
        let mut daemon = world.start_daemon(&format!("round{round}"));
        let needle = format!("\"state\": \"{state}\"");
        let seen = wait_for(Duration::from_secs(10), || {
            world.job_records().iter().any(|r| r.contains(&needle))
        });
        daemon.kill9();
        if seen {
            caught.insert(*state);
        }
    }
    assert_eq!(
        caught.len(),
        4,
        "the daemon was killed in each state at least once: {caught:?}"
    );
    let _daemon = world.start_daemon("last");
    let history = world.wait_history(6, Duration::from_secs(60));
    assert_eq!(
        history.len(),
        6,
        "one history line per archive: {history:#?}"
    );
    assert!(
        history.iter().all(|h| h["outcome"] == "succeeded"),
        "{history:#?}"
    );
    let mut ids: Vec<_> = history.iter().map(|h| h["job"].to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6);
    // No file lost: every archive in done/, none left behind.
    assert_eq!(archives_in(&a.join("done")).len(), 3);
    assert_eq!(archives_in(&b.join("done")).len(), 3);
    assert!(archives_in(&a).is_empty() && archives_in(&b).is_empty());
    // Exactly one deployment per git_ref.
    for app in ["app-a", "app-b"] {
        let deployments = world.fake.deployments(app);
        assert_eq!(deployments.len(), 3, "{app}: {deployments:#?}");
        for d in &deployments {
            let git_ref = d.git_ref.clone().unwrap();
            assert_eq!(world.fake.count_git_ref(app, &git_ref), 1);
        }
    }
}

#[test]
fn a_drop_folder_on_another_filesystem_than_the_spool_is_refused_at_start() {
    let world = World::new();
    let shm = std::path::Path::new("/dev/shm");
    use std::os::unix::fs::MetadataExt;
    let (Ok(shm_meta), Ok(tmp_meta)) =
        (std::fs::metadata(shm), std::fs::metadata(world.dir.path()))
    else {
        eprintln!("skipped: no /dev/shm to stand for another filesystem");
        return;
    };
    if shm_meta.dev() == tmp_meta.dev() {
        eprintln!("skipped: /dev/shm is on the same filesystem as the test directory");
        return;
    }
    let elsewhere = tempfile::tempdir_in(shm).unwrap();
    world.append_config(&format!(
        "\n[[app]]\nname = \"my-app\"\ndrop_dir = \"{}\"\n",
        elsewhere.path().display()
    ));
    let run = world.run(&["run"]);
    run.assert_code(2)
        .assert_contains("another filesystem")
        .assert_contains(&elsewhere.path().display().to_string());
    // `config check` finds it too, in the same words.
    world
        .run(&["config", "check"])
        .assert_code(2)
        .assert_contains("another filesystem")
        .assert_contains(&elsewhere.path().display().to_string());
}

#[test]
fn a_recovered_job_whose_archive_is_missing_fails_with_that_reason() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    world
        .fake
        .fail_next(Endpoint::Upload, Fault::Delay(Duration::from_secs(60)));
    let mut daemon = world.start_daemon("first");
    world.drop_archive(&drop, "gone.tar.gz");
    assert!(wait_for(LONG, || world
        .fake
        .requests_in_flight(Endpoint::Upload)
        > 0));
    daemon.kill9();
    // Someone removes the archive from the spool while the daemon is down.
    let mut removed = 0;
    for entry in std::fs::read_dir(world.state.join("spool"))
        .unwrap()
        .flatten()
    {
        if std::fs::remove_file(entry.path().join("archive.tar.gz")).is_ok() {
            removed += 1;
        }
    }
    assert_eq!(removed, 1);
    let _daemon = world.start_daemon("second");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "failed");
    assert_eq!(history[0]["step"], "upload");
    let reason = history[0]["reason"].as_str().unwrap();
    assert!(reason.contains("archive.tar.gz"), "{reason}");
    assert!(reason.contains("No such file"), "{reason}");
    // The daemon goes on.
    world.drop_archive(&drop, "next.tar.gz");
    let history = world.wait_history(2, LONG);
    assert_eq!(history[1]["outcome"], "succeeded");
}

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_2_naming_the_first() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let first = world.start_daemon("first");
    let run = world.run(&["run"]);
    run.assert_code(2)
        .assert_contains("another dropdeploy daemon")
        .assert_contains(&format!("pid {}", first.0.id()))
        .assert_contains(&world.state.display().to_string());
    // The first one still owns the spool and deploys.
    world.drop_archive(&drop, "after.tar.gz");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded");
    assert_eq!(world.fake.deployments("my-app").len(), 1);
    let status = world.run(&["status"]);
    status
        .assert_code(0)
        .assert_contains(&format!("daemon: running (pid {})", first.0.id()));
}

#[test]
fn a_one_shot_deploy_never_drives_a_job_the_daemon_drives() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    // The daemon's deployment stays in its first step for the whole test.
    world.fake.set_step(Duration::from_secs(3600));
    let _daemon = world.start_daemon("d");
    let bytes = std::fs::read(world.archive("same.tar.gz")).unwrap();
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::write(world.path("same.partial"), &bytes).unwrap();
    std::fs::rename(world.path("same.partial"), drop.join("same.tar.gz")).unwrap();
    assert!(wait_for(LONG, || world
        .job_records()
        .iter()
        .any(|r| r.contains("\"state\": \"deploying\""))));
    // The same bytes given to `deploy` with the daemon's state_dir: the unfinished job for the
    // same archive is found, and it belongs to the daemon.
    let copy = world.path("copy.tar.gz");
    std::fs::write(&copy, &bytes).unwrap();
    let run = world.run(&["deploy", "--app", "my-app", copy.to_str().unwrap()]);
    run.assert_code(2)
        .assert_contains("being deployed by another dropdeploy process");
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn the_same_bytes_dropped_twice_at_once_make_two_deployments_each_with_its_own_git_ref() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "queue = \"all\"");
    // Each deployment is created, but its answer comes after the client's time-out: both jobs
    // must find their own deployment by git_ref, never the other's.
    for _ in 0..2 {
        world.fake.fail_next(
            Endpoint::CreateDeployment,
            Fault::ProcessThenDelay(Duration::from_secs(3)),
        );
    }
    let bytes = std::fs::read(world.archive("same.tar.gz")).unwrap();
    std::fs::create_dir_all(&drop).unwrap();
    for name in ["one.tar.gz", "two.tar.gz"] {
        std::fs::write(world.path(name), &bytes).unwrap();
    }
    let _daemon = world.start_daemon("d");
    for name in ["one.tar.gz", "two.tar.gz"] {
        std::fs::rename(world.path(name), drop.join(name)).unwrap();
    }
    let history = world.wait_history(2, Duration::from_secs(60));
    assert!(
        history.iter().all(|h| h["outcome"] == "succeeded"),
        "{history:#?}"
    );
    assert_ne!(history[0]["git_ref"], history[1]["git_ref"]);
    assert_ne!(history[0]["deployment_id"], history[1]["deployment_id"]);
    let deployments = world.fake.deployments("my-app");
    assert_eq!(deployments.len(), 2, "{deployments:#?}");
    for d in &deployments {
        let git_ref = d.git_ref.clone().unwrap();
        assert_eq!(world.fake.count_git_ref("my-app", &git_ref), 1);
    }
}

#[test]
fn a_deployment_that_never_finishes_fails_after_deploy_timeout_and_frees_the_lane() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "deploy_timeout = \"3s\"");
    world.fake.set_step(Duration::from_secs(3600));
    let _daemon = world.start_daemon("d");
    world.drop_archive(&drop, "stuck.tar.gz");
    assert!(wait_for(LONG, || world
        .job_records()
        .iter()
        .any(|r| r.contains("\"state\": \"deploying\""))));
    // While it runs, `status` names the deployment and the platform's status.
    let deployment = world.fake.deployments("my-app")[0].id.clone();
    let status = world.run(&["status"]);
    status
        .assert_code(0)
        .assert_contains(&format!("deployment {deployment}, platform status "));
    world.fake.set_step(Duration::from_millis(20));
    world.drop_archive(&drop, "next.tar.gz");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "failed", "{history:#?}");
    assert_eq!(history[0]["file"], "stuck.tar.gz");
    assert_eq!(history[0]["step"], "follow");
    let reason = history[0]["reason"].as_str().unwrap();
    assert!(reason.contains("deploy_timeout (3s)"), "{reason}");
    assert!(reason.contains(&deployment), "{reason}");
    assert!(
        reason.contains("still `queued`") || reason.contains("still `building`"),
        "{reason}"
    );
    assert!(
        reason.contains("after 3s") || reason.contains("after 4s"),
        "{reason}"
    );
    // The lane is free: the next archive gets its own deployment.
    assert!(wait_for(LONG, || world.fake.deployments("my-app").len() == 2));
}

#[test]
fn a_watched_tree_killed_mid_deployment_is_resumed_and_not_packed_again() {
    let world = World::with(FakeConfig {
        step: Duration::from_millis(400),
        ..FakeConfig::default()
    });
    world.add_tree_app("web", "deploy_on_start = true");
    let mut daemon = world.start_daemon("first");
    assert!(wait_for(LONG, || world
        .job_records()
        .iter()
        .any(|r| r.contains("\"state\": \"deploying\""))));
    daemon.kill9();
    let _daemon = world.start_daemon("second");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded", "{history:#?}");
    // The restarted loop resumed the job in flight, then found the tree deployed.
    assert!(wait_for(LONG, || world.log("second").contains("unchanged")));
    assert_eq!(world.fake.deployments("web").len(), 1);
    assert_eq!(world.history().len(), 1);
}

/// `dropdeploy run` as an unprivileged user (root is never refused a write), when the tests
/// run as root; as the tests' own user otherwise.
fn run_unprivileged(world: &World) -> support::Run {
    use std::os::unix::fs::PermissionsExt;
    for path in [world.dir.path(), world.config.as_path()] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let cmd = world.command(&["run"]);
    let mut wrapped = std::process::Command::new("setpriv");
    if rustix::process::getuid().is_root() {
        wrapped.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        wrapped.arg(cmd.get_program()).args(cmd.get_args());
    } else {
        wrapped = std::process::Command::new(cmd.get_program());
        wrapped.args(cmd.get_args());
    }
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    let out = wrapped.stdin(std::process::Stdio::null()).output().unwrap();
    support::Run::from_output(out, &world.fake.api_token())
}

#[test]
fn a_state_dir_the_daemon_cannot_write_is_a_configuration_error() {
    use std::os::unix::fs::PermissionsExt;
    let world = World::new();
    world.add_local_app("site", "");
    std::fs::create_dir_all(&world.state).unwrap();
    std::fs::set_permissions(&world.state, std::fs::Permissions::from_mode(0o555)).unwrap();
    let run = run_unprivileged(&world);
    run.assert_code(2)
        .assert_contains(&world.state.display().to_string())
        .assert_contains("permission denied")
        .assert_contains("the daemon runs as uid")
        .assert_contains("chown or chmod");
    assert!(!run.all().contains("another filesystem"), "{}", run.all());
}

#[test]
fn a_state_dir_on_a_read_only_mount_is_a_configuration_error() {
    let world = World::new();
    world.add_local_app("site", "");
    std::fs::create_dir_all(&world.state).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&world.state)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot mount a read-only tmpfs here (needs root with CAP_SYS_ADMIN)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(world.state.clone());
    let run = world.run(&["run"]);
    run.assert_code(2)
        .assert_contains(&world.state.display().to_string())
        .assert_contains("read-only mount")
        .assert_contains("ReadWritePaths=");
}
