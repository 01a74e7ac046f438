//! The daemon (`dropdeploy run` against the fake API) claiming what the drop folder watcher
//! reports: a file held open across a restart, a hard link, claims that fail and are retried.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::support;

const LONG: Duration = Duration::from_secs(30);

/// `dropdeploy status` while the daemon runs.
fn status(world: &support::World) -> String {
    world.run(&["status"]).assert_code(0).stdout.clone()
}

/// Waits until `status` shows a line with all of `needles`; returns that line.
fn wait_status_line(world: &support::World, needles: &[&str], log_tag: &str) -> String {
    let mut found = String::new();
    let ok = support::wait_for(LONG, || {
        let text = status(world);
        match text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            Some(line) => {
                found = line.to_string();
                true
            }
            None => false,
        }
    });
    assert!(
        ok,
        "status never showed {needles:?}:\n{}\n--- log\n{}",
        status(world),
        world.log(log_tag)
    );
    found
}

#[test]
fn a_file_held_open_for_writing_across_a_restart_is_claimed_only_once_closed_and_settled() {
    let world = support::World::new();
    let drop = world.add_drop_app("my-app", "");
    fs::create_dir_all(&drop).unwrap();
    let bytes = fs::read(world.archive("slow.tar.gz")).unwrap();
    let path = drop.join("slow.tar.gz");
    let mut writer = fs::File::create(&path).unwrap();
    writer.write_all(&bytes[..bytes.len() / 2]).unwrap();
    // A writer paused for long: the half-written file looks old and still.
    let old = SystemTime::now() - Duration::from_secs(3600);
    writer.set_modified(old).unwrap();

    let mut first = world.start_daemon("first");
    let line = wait_status_line(&world, &["waiting for a writer", "slow.tar.gz"], "first");
    assert!(line.contains("open for writing"), "{line}");
    first.kill9();

    let _second = world.start_daemon("second");
    wait_status_line(&world, &["waiting for a writer", "slow.tar.gz"], "second");
    assert!(world.history().is_empty(), "{:#?}", world.history());
    assert!(
        path.exists(),
        "the half-written file is still in the drop folder"
    );
    writer.write_all(&bytes[bytes.len() / 2..]).unwrap();
    writer.set_modified(old).unwrap();
    std::mem::drop(writer);

    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded", "{history:#?}");
    assert_eq!(history[0]["file"], "slow.tar.gz");
    assert_eq!(
        support::archives_in(&drop.join("done")),
        vec!["slow.tar.gz"]
    );
    assert!(support::archives_in(&drop.join("failed")).is_empty());
    assert_eq!(world.fake.deployments("my-app").len(), 1);
    assert!(!status(&world).contains("waiting for a writer"));
}

#[test]
fn a_hard_link_made_into_the_drop_folder_is_claimed_and_deployed() {
    let world = support::World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    let original = world.archive("linked.tar.gz");
    fs::hard_link(&original, drop.join("linked.tar.gz")).unwrap();

    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded", "{history:#?}");
    assert_eq!(history[0]["file"], "linked.tar.gz");
    assert_eq!(
        support::archives_in(&drop.join("done")),
        vec!["linked.tar.gz"]
    );
    assert!(support::archives_in(&drop).is_empty());
    assert!(original.exists(), "the other link is left alone");
}

/// Runs `cmd` with `args`; false if it cannot run or fails.
fn run_ok(cmd: &str, args: &[&Path]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes a directory immutable (`chattr +i`) until dropped: nothing can be created in it,
/// even by root.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Option<Immutable> {
        run_ok("chattr", &[Path::new("+i"), dir]).then(|| Immutable(dir.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        run_ok("chattr", &[Path::new("-i"), &self.0]);
    }
}

/// The `retry_at` of the claim wait in `live.json`, if there is one.
fn claim_retry_at(world: &support::World) -> Option<u64> {
    let text = fs::read_to_string(world.state.join("live.json")).ok()?;
    let live: serde_json::Value = serde_json::from_str(&text).ok()?;
    live["waits"]
        .as_array()?
        .iter()
        .find(|w| w["kind"] == "claim")
        .and_then(|w| w["retry_at"].as_u64())
}

#[test]
fn a_claim_that_fails_for_an_io_reason_is_retried_and_shown_until_it_succeeds() {
    let world = support::World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    let spool = world.state.join("spool");
    let Some(immutable) = Immutable::set(&spool) else {
        println!(
            "skipped: `chattr +i` is not possible here (needs root and a filesystem with the immutable flag)"
        );
        return;
    };
    world.drop_archive(&drop, "blocked.tar.gz");

    let line = wait_status_line(&world, &["waiting to claim", "blocked.tar.gz"], "d");
    assert!(line.contains("Operation not permitted"), "{line}");
    assert!(line.contains("next try"), "{line}");
    // A second failed try (its next try moves on) is not logged again.
    let first = claim_retry_at(&world).expect("a claim wait in live.json");
    assert!(
        support::wait_for(LONG, || claim_retry_at(&world).is_some_and(|at| at > first)),
        "the claim was not tried again:\n{}",
        world.log("d")
    );
    assert!(
        drop.join("blocked.tar.gz").exists(),
        "the file stays where it was dropped"
    );
    std::mem::drop(immutable);

    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded", "{history:#?}");
    assert_eq!(history[0]["file"], "blocked.tar.gz");
    assert!(!status(&world).contains("waiting to claim"));
    let log = world.log("d");
    let warnings = log.lines().filter(|l| l.contains("cannot claim")).count();
    assert_eq!(warnings, 1, "one warning per cause:\n{log}");
}

/// A tmpfs mounted on a directory until dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        run_ok("umount", &[Path::new("-l"), &self.0]);
    }
}

#[test]
fn a_claim_that_fails_on_a_full_disk_is_retried_once_space_is_freed() {
    let mut world = support::World::new();
    let mnt = world.path("small");
    fs::create_dir(&mnt).unwrap();
    let mounted = run_ok(
        "mount",
        &[
            Path::new("-t"),
            Path::new("tmpfs"),
            Path::new("-o"),
            Path::new("size=8m"),
            Path::new("tmpfs"),
            &mnt,
        ],
    );
    if !mounted {
        println!("skipped: cannot mount a tmpfs (needs root with CAP_SYS_ADMIN)");
        return;
    }
    let _tmpfs = Tmpfs(mnt.clone());
    // The state and the drop folder on the small filesystem (a claim is a rename).
    let state = mnt.join("state");
    let config = fs::read_to_string(&world.config).unwrap().replace(
        &format!("state_dir = \"{}\"", world.state.display()),
        &format!("state_dir = \"{}\"", state.display()),
    );
    fs::write(&world.config, config).unwrap();
    world.state = state;
    let drop = mnt.join("drop");
    world.append_config(&format!(
        "\n[[app]]\nname = \"my-app\"\ndrop_dir = \"{}\"\nsettle = \"300ms\"\n",
        drop.display()
    ));
    world.fake.add_app("my-app");
    let _daemon = world.start_daemon("d");
    let staged = mnt.join("full.tar.gz");
    fs::copy(world.archive("full.tar.gz"), &staged).unwrap();

    let filler_path = mnt.join("filler");
    let mut filler = fs::File::create(&filler_path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while filler.write_all(&chunk).is_ok() {}
    std::mem::drop(filler);
    fs::rename(&staged, drop.join("full.tar.gz")).unwrap();

    let log_says_full = support::wait_for(LONG, || {
        world
            .log("d")
            .lines()
            .any(|l| l.contains("cannot claim") && l.contains("No space left on device"))
    });
    assert!(log_says_full, "{}", world.log("d"));
    assert!(
        drop.join("full.tar.gz").exists(),
        "the file stays where it was dropped"
    );
    fs::remove_file(&filler_path).unwrap();

    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded", "{history:#?}");
    assert_eq!(history[0]["file"], "full.tar.gz");
    assert!(!status(&world).contains("waiting to claim"));
}

/// Issue 21: a drop folder that an inotify limit leaves without a watch stopped the whole
/// daemon at start. It is listed on a timer instead, and `status` says so. The daemon's own cap
/// on watches (a test knob) stands for the kernel's limit.
#[test]
fn a_drop_folder_without_an_inotify_watch_is_listed_instead() {
    let world = support::World::new();
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon_with_env("d", &[("DROPDEPLOY_INOTIFY_MAX_WATCHES", "0")]);
    let line = wait_status_line(&world, &["not watched:", "no inotify watch"], "d");
    assert!(line.contains(&drop.display().to_string()), "{line}");
    world.drop_archive(&drop, "a.tar.gz");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded");
    let log = world.log("d");
    let said = log
        .lines()
        .filter(|l| l.contains("the inotify limit"))
        .count();
    assert_eq!(said, 1, "{log}");
}
