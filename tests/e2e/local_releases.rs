//! The local release target end to end: the real daemon, real drop folders, releases on disk,
//! and no Scalingo account at all.

use std::path::Path;
use std::time::Duration;

use crate::support::{self, World, archives_in, site_archive, wait_for};

const LONG: Duration = Duration::from_secs(30);

fn drop_site(world: &World, drop: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(drop).unwrap();
    let made = site_archive(world.dir.path(), name, text);
    std::fs::rename(&made, drop.join(name)).unwrap();
}

fn current(app_dir: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(app_dir.join("current")).unwrap()
}

fn releases(app_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(app_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "current")
        .collect();
    names.sort();
    names
}

/// The daemon, with no Scalingo token at all: local apps need none.
fn start(world: &World, tag: &str) -> support::Proc {
    let stdout = std::fs::File::create(world.path(&format!("{tag}.stdout"))).unwrap();
    let stderr = std::fs::File::create(world.path(&format!("{tag}.stderr"))).unwrap();
    let child = world
        .command(&["run"])
        .env_remove("SCALINGO_API_TOKEN")
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let proc = support::Proc(child);
    let log = world.path(&format!("{tag}.stderr"));
    assert!(
        wait_for(LONG, || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("dropdeploy is running"))),
        "{}",
        world.log(tag)
    );
    proc
}

#[test]
fn a_drop_becomes_the_current_release() {
    let world = World::new();
    let (drop, app_dir) = world.add_local_app("site", "");
    let _daemon = start(&world, "d");
    drop_site(&world, &drop, "v1.tar.gz", "one");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded", "{history:?}");
    let release = current(&app_dir);
    assert_eq!(
        std::fs::read_to_string(release.join("index.html")).unwrap(),
        "one"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(release.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the executable bit is kept");
    assert_eq!(archives_in(&drop.join("done")), vec!["v1.tar.gz"]);
    assert_eq!(world.fake.stats().requests, 0, "no platform involved");
}

#[test]
fn a_second_drop_switches_current_and_keeps_the_first_release() {
    let world = World::new();
    let (drop, app_dir) = world.add_local_app("site", "");
    let _daemon = start(&world, "d");
    drop_site(&world, &drop, "v1.tar.gz", "one");
    world.wait_history(1, LONG);
    let first = current(&app_dir);
    drop_site(&world, &drop, "v2.tar.gz", "two");
    world.wait_history(2, LONG);
    let second = current(&app_dir);
    assert_ne!(first, second);
    assert_eq!(
        std::fs::read_to_string(second.join("index.html")).unwrap(),
        "two"
    );
    assert!(
        first.join("index.html").exists(),
        "the first release is kept"
    );
    assert_eq!(releases(&app_dir).len(), 2);
}

#[test]
fn a_failing_activate_puts_current_back_and_the_file_in_failed() {
    let world = World::new();
    let (drop, app_dir) = world.add_local_app(
        "site",
        r#"activate = ["sh", "-c", "if grep -q bad index.html; then echo 'smoke test said no'; exit 3; fi"]"#,
    );
    let _daemon = start(&world, "d");
    drop_site(&world, &drop, "good.tar.gz", "good");
    world.wait_history(1, LONG);
    let good = current(&app_dir);
    drop_site(&world, &drop, "bad.tar.gz", "bad");
    let history = world.wait_history(2, LONG);
    assert_eq!(history[1]["outcome"], "failed");
    assert_eq!(history[1]["step"], "activate");
    assert_eq!(
        current(&app_dir),
        good,
        "current is back on the previous release"
    );
    assert_eq!(archives_in(&drop.join("failed")), vec!["bad.tar.gz"]);
    let reason = std::fs::read_to_string(drop.join("failed/bad.tar.gz.reason.txt")).unwrap();
    assert!(reason.contains("smoke test said no"), "{reason}");
    assert!(reason.contains('3'), "{reason}");
}

#[test]
fn an_archive_leaving_its_folder_is_refused_and_nothing_is_written_under_releases() {
    let world = World::new();
    let (drop, app_dir) = world.add_local_app("site", "");
    let _daemon = start(&world, "d");
    // A symlink pointing outside the release.
    let path = world.path("evil.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, "app/passwd", "/etc/passwd")
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::rename(&path, drop.join("evil.tar.gz")).unwrap();
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "failed");
    assert!(
        history[0]["reason"].as_str().unwrap().contains("outside"),
        "{history:?}"
    );
    assert!(!app_dir.exists() || releases(&app_dir).is_empty());
    assert_eq!(archives_in(&drop.join("failed")), vec!["evil.tar.gz"]);
}

#[test]
fn old_releases_are_pruned_to_keep_releases() {
    let world = World::new();
    let (drop, app_dir) = world.add_local_app("site", "keep_releases = 2");
    let _daemon = start(&world, "d");
    for n in 1..=4 {
        drop_site(&world, &drop, &format!("v{n}.tar.gz"), &format!("v{n}"));
        world.wait_history(n, LONG);
    }
    let kept = releases(&app_dir);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(
        std::fs::read_to_string(current(&app_dir).join("index.html")).unwrap(),
        "v4"
    );
}

#[test]
fn killed_during_extraction_the_half_release_never_becomes_current() {
    let world = World::new();
    let (drop, app_dir) = world.add_local_app("site", "");
    // A big archive, so that extraction takes a while.
    let big = world.path("big.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&big).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        for n in 0..20_000 {
            let body = format!("file {n}\n");
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(
                &mut h,
                format!("app/d{}/f{n}.txt", n / 100),
                body.as_bytes(),
            )
            .unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }
    let mut daemon = start(&world, "first");
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::rename(&big, drop.join("big.tar.gz")).unwrap();
    let partial = || {
        std::fs::read_dir(&app_dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".partial-"))
        })
    };
    assert!(wait_for(LONG, partial), "extraction started");
    daemon.kill9();
    assert!(
        !app_dir.join("current").exists(),
        "never current while half made"
    );
    let _daemon = start(&world, "second");
    let history = world.wait_history(1, Duration::from_secs(60));
    assert_eq!(history[0]["outcome"], "succeeded");
    let release = current(&app_dir);
    assert_eq!(
        std::fs::read_to_string(release.join("d199/f19999.txt")).unwrap(),
        "file 19999\n"
    );
    assert!(!partial(), "no half release left");
}

/// `dropdeploy deploy`, with no Scalingo token at all, to an app configured for local releases.
fn deploy_locally(world: &World, archive: &Path) -> support::Run {
    let out = world
        .command(&["deploy", "--app", "site", archive.to_str().unwrap()])
        .env_remove("SCALINGO_API_TOKEN")
        .output()
        .unwrap();
    support::Run::from_output(out, &world.fake.api_token())
}

#[test]
fn deploy_goes_to_the_apps_local_releases_and_into_the_history() {
    let world = World::new();
    let (_drop, app_dir) = world.add_local_app("site", "");
    let archive = site_archive(world.dir.path(), "v1.tar.gz", "one");
    deploy_locally(&world, &archive).assert_code(0);
    assert_eq!(
        std::fs::read_to_string(current(&app_dir).join("index.html")).unwrap(),
        "one"
    );
    let history = world.history();
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0]["app"], "site");
    assert_eq!(history[0]["outcome"], "succeeded");
    // The given file stays where it was, with no done/ made beside it.
    assert!(archive.exists());
    assert!(!world.dir.path().join("done").exists());
    assert!(world.job_records().is_empty());
    assert_eq!(world.fake.stats().requests, 0, "no platform involved");

    // A failing activate: exit status 1, the previous release stays current, the history says
    // why.
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        text.replace(
            "target = \"local\"",
            "target = \"local\"\nactivate = [\"sh\", \"-c\", \"exit 7\"]",
        ),
    )
    .unwrap();
    let bad = site_archive(world.dir.path(), "v2.tar.gz", "two");
    deploy_locally(&world, &bad)
        .assert_code(1)
        .assert_contains("activate");
    assert_eq!(
        std::fs::read_to_string(current(&app_dir).join("index.html")).unwrap(),
        "one"
    );
    let history = world.history();
    assert_eq!(history.len(), 2, "{history:#?}");
    assert_eq!(history[1]["outcome"], "failed");
}

#[test]
fn watch_deploys_saves_to_the_apps_local_releases() {
    let world = World::new();
    let (_drop, app_dir) = world.add_local_app("site", "");
    let root = world.dir.path().join("site-src");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "v1").unwrap();
    let stdout = std::fs::File::create(world.path("watch.stdout")).unwrap();
    let stderr = std::fs::File::create(world.path("watch.stderr")).unwrap();
    let mut watch = support::Proc(
        world
            .command(&[
                "watch",
                "--app",
                "site",
                "--debounce",
                "200ms",
                root.to_str().unwrap(),
            ])
            .env_remove("SCALINGO_API_TOKEN")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let serving = |text: &str| {
        std::fs::read_to_string(app_dir.join("current/index.html")).is_ok_and(|t| t == text)
    };
    // Deployed at start (the tree was never deployed), then at each save.
    assert!(wait_for(LONG, || serving("v1")), "{}", world.log("watch"));
    std::fs::write(root.join("index.html"), "v2").unwrap();
    assert!(wait_for(LONG, || serving("v2")), "{}", world.log("watch"));
    assert!(wait_for(LONG, || world.history().len() == 2));
    watch.signal("INT");
    assert_eq!(watch.wait_exit(LONG).code(), Some(0));
    let history = world.history();
    assert!(
        history
            .iter()
            .all(|e| e["app"] == "site" && e["outcome"] == "succeeded"),
        "{history:#?}"
    );
    let out = std::fs::read_to_string(world.path("watch.stdout")).unwrap();
    assert!(out.contains("site: success in"), "{out}");
    assert_eq!(world.fake.stats().requests, 0, "no platform involved");
}
