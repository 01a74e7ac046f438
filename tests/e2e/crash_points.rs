//! The crash-point sweep: a drop (verified), an unhealthy drop and its rollback, with the
//! daemon killed (SIGKILL, by itself: `DROPDEPLOY_CRASH_AFTER=K`) right after its K-th durable
//! step (rename, link, unlink, mkdir, rmdir, fsync), for every K, and restarted each time.
//! Whatever K: one deployment per job, one history line per job, every dropped file in `done/`
//! or `failed/`, nothing left behind in the spool or the folders. Also the single crashes of
//! issue 21 (items 5, 6 and 10): a job's spool directory removed, a claimed file whose drop
//! folder is missing, the syncs of the drop folder.

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{FakeConfig, Proc, World, archives_in, tar_gz, wait_for};

const CRASH_AFTER: &str = "DROPDEPLOY_CRASH_AFTER";
const LONG: Duration = Duration::from_secs(60);

/// A world with one drop-folder app (checked when `verified`), as fast as the fake and the
/// check allow.
fn world_with(verified: bool) -> (World, PathBuf) {
    let world = World::with(FakeConfig {
        step: Duration::from_millis(5),
        ..FakeConfig::default()
    });
    let url = format!("{}/up", world.fake.app_url("app"));
    let verify = if verified {
        format!(
            "verify = {{ url = \"{url}\", timeout = \"2s\", interval = \"50ms\", attempts = 2, \
             warmup = \"0s\", soak = \"100ms\" }}\n"
        )
    } else {
        String::new()
    };
    // A file found at start (put back after a crash) waits `settle`: short here.
    let drop = world.dir.path().join("drop").join("app");
    world.append_config(&format!(
        "\n[[app]]\nname = \"app\"\ndrop_dir = \"{}\"\nsettle = \"20ms\"\n{verify}\n",
        drop.display()
    ));
    world.fake.add_app("app");
    (world, drop)
}

fn world() -> (World, PathBuf) {
    world_with(true)
}

/// Drops `name`, whose app answers as `behaviour` says (see the fake's `fake-app.txt`).
fn drop_app(world: &World, drop: &Path, name: &str, behaviour: &str) {
    std::fs::create_dir_all(drop).unwrap();
    let made = world.path(name);
    tar_gz(
        &made,
        &[
            ("app/package.json", br#"{"name":"demo"}"#, 0o644),
            ("app/fake-app.txt", behaviour.as_bytes(), 0o644),
        ],
    );
    std::fs::rename(made, drop.join(name)).unwrap();
}

/// The daemon of a sweep run: restarted (without a crash point) whenever it died.
struct Runner<'w> {
    world: &'w World,
    proc: Option<Proc>,
    /// Processes started so far (their logs are `run-<n>.stderr`).
    starts: usize,
    crashes: usize,
    /// `DROPDEPLOY_CRASH_ON` for the first process.
    aim: Option<&'static str>,
}

impl<'w> Runner<'w> {
    fn new(world: &'w World) -> Self {
        Runner {
            world,
            proc: None,
            starts: 0,
            crashes: 0,
            aim: None,
        }
    }

    /// Starts the daemon, with the crash point `k` if given, and waits until it runs or died.
    fn start(&mut self, k: Option<u64>) {
        self.starts += 1;
        let tag = format!("run-{}", self.starts);
        let stdout = std::fs::File::create(self.world.path(&format!("{tag}.stdout"))).unwrap();
        let stderr = std::fs::File::create(self.world.path(&format!("{tag}.stderr"))).unwrap();
        let mut cmd = self.world.command(&["run"]);
        cmd.env_remove(CRASH_AFTER).stdout(stdout).stderr(stderr);
        cmd.env_remove("DROPDEPLOY_CRASH_ON");
        if let Some(k) = k {
            cmd.env(CRASH_AFTER, k.to_string());
            if let Some(aim) = self.aim {
                cmd.env("DROPDEPLOY_CRASH_ON", aim);
            }
        }
        let mut proc = Proc(cmd.spawn().unwrap());
        let up = wait_for(LONG, || {
            self.world.log(&tag).contains("dropdeploy is running")
                || proc.0.try_wait().unwrap().is_some()
        });
        assert!(up, "daemon did not start:\n{}", self.world.log(&tag));
        self.proc = Some(proc);
    }

    /// Whether the daemon died (killed by its crash point); if so, starts it again (no crash
    /// point) and says so. Any other end is a failure.
    fn restart_if_dead(&mut self) -> bool {
        let Some(proc) = self.proc.as_mut() else {
            return false;
        };
        let Some(status) = proc.0.try_wait().unwrap() else {
            return false;
        };
        self.check_killed(status);
        self.crashes += 1;
        self.start(None);
        true
    }

    fn check_killed(&self, status: std::process::ExitStatus) {
        let tag = format!("run-{}", self.starts);
        assert_eq!(
            status.signal(),
            Some(9),
            "the daemon ended otherwise than by its crash point ({status}):\n{}",
            self.world.log(&tag)
        );
    }

    /// Waits for `n` history lines, restarting the daemon whenever it died.
    fn wait_history(&mut self, n: usize) {
        let deadline = Instant::now() + LONG;
        while self.world.history().len() < n {
            if !self.restart_if_dead() {
                assert!(
                    Instant::now() < deadline,
                    "history has {} of {n} lines: {:#?}\n{}",
                    self.world.history().len(),
                    self.world.history(),
                    self.world.log(&format!("run-{}", self.starts))
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Stops the daemon (SIGTERM). If it died on the way (its crash point), starts it again
    /// and stops that one: what a crash left must be cleaned by the next start.
    fn stop(&mut self) {
        loop {
            let Some(mut proc) = self.proc.take() else {
                return;
            };
            if proc.0.try_wait().unwrap().is_none() {
                proc.signal("TERM");
            }
            let status = proc.wait_exit(LONG);
            if status.success() {
                return;
            }
            self.check_killed(status);
            self.crashes += 1;
            self.start(None);
        }
    }
}

/// Runs the scenario once with the crash point `k` (`Some(0)`: count only). Returns the number
/// of crash points the first process said (its whole life when it did not crash).
fn run_once(k: Option<u64>) -> (u64, usize) {
    let (world, drop) = world();
    let mut runner = Runner::new(&world);
    runner.start(k);
    drop_app(&world, &drop, "v1.tar.gz", "version=v1");
    runner.wait_history(1);
    drop_app(&world, &drop, "v2.tar.gz", "version=v2\nstatus=500");
    runner.wait_history(3);
    runner.stop();
    let steps = world
        .log("run-1")
        .lines()
        .filter(|l| l.starts_with("crash point "))
        .count() as u64;
    check_invariants(&world, &drop, k);
    (steps, runner.crashes)
}

/// The promises, whatever K was.
fn check_invariants(world: &World, drop: &Path, k: Option<u64>) {
    let history = world.history();
    let outcomes: Vec<&str> = history
        .iter()
        .map(|e| e["outcome"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        outcomes,
        ["verified", "unhealthy", "rolled_back"],
        "K = {k:?}: one history line per job: {history:#?}"
    );
    let jobs: BTreeSet<&str> = history.iter().filter_map(|e| e["job"].as_str()).collect();
    assert_eq!(jobs.len(), 3, "K = {k:?}: {history:#?}");
    let deployments = world.fake.deployments("app");
    let refs: BTreeSet<String> = deployments
        .iter()
        .filter_map(|d| d.git_ref.clone())
        .collect();
    assert_eq!(
        deployments.len(),
        3,
        "K = {k:?}: one deployment per job: {:#?}",
        deployments.iter().map(|d| &d.git_ref).collect::<Vec<_>>()
    );
    let history_refs: BTreeSet<String> = history
        .iter()
        .filter_map(|e| e["git_ref"].as_str().map(str::to_string))
        .collect();
    assert_eq!(refs, history_refs, "K = {k:?}");
    assert_eq!(archives_in(&drop.join("done")), ["v1.tar.gz"], "K = {k:?}");
    assert_eq!(
        archives_in(&drop.join("failed")),
        ["v2.tar.gz"],
        "K = {k:?}"
    );
    assert!(
        drop.join("failed/v2.tar.gz.reason.txt").is_file(),
        "K = {k:?}"
    );
    assert_eq!(archives_in(drop), Vec::<String>::new(), "K = {k:?}");
    let spool = spool_entries(&world.state.join("spool"));
    assert!(spool.is_empty(), "K = {k:?}: the spool holds {spool:?}");
    let litter = litter(world.dir.path());
    assert!(litter.is_empty(), "K = {k:?}: left behind: {litter:#?}");
}

/// Temporary files and probes anywhere under `dir` (the live board's own excepted: it is
/// rewritten without fsync, not a durable step).
fn litter(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let temporary = (name.starts_with('.') && name.ends_with(".tmp"))
                || name.contains("dropdeploy-probe")
                || name.contains(".recovered-");
            if temporary && name != ".live.json.tmp" {
                found.push(path);
            }
        }
    }
    found
}

/// What a sweep found.
#[derive(Default)]
struct Swept {
    /// K and what broke.
    failures: Vec<(u64, String)>,
    /// Runs that kept every promise.
    clean: usize,
    /// Runs whose daemon was killed by its crash point (at least once).
    crashed: usize,
}

/// Runs `ks` on `threads` threads (each run waits more than it works: six keep two cores
/// busy).
fn sweep(ks: Vec<u64>, threads: usize) -> Swept {
    let queue = std::sync::Mutex::new(ks);
    let failures = std::sync::Mutex::new(Vec::new());
    let clean = std::sync::atomic::AtomicUsize::new(0);
    let crashed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let Some(k) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    match std::panic::catch_unwind(|| run_once(Some(k))) {
                        Ok((_, crashes)) => {
                            clean.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if crashes > 0 {
                                crashed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                        Err(panic) => {
                            let text = panic
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            failures.lock().unwrap().push((k, text));
                        }
                    }
                }
            });
        }
    });
    Swept {
        failures: failures.into_inner().unwrap(),
        clean: clean.into_inner(),
        crashed: crashed.into_inner(),
    }
}

#[test]
fn a_crash_after_any_durable_step_loses_nothing_and_duplicates_nothing() {
    let started = Instant::now();
    let (n, crashes) = run_once(Some(0));
    assert_eq!(crashes, 0, "counting crashes nothing");
    assert!(
        n > 20,
        "the scenario takes durable steps through one place: {n}"
    );
    let ks: Vec<u64> = (1..=n).rev().collect();
    let Swept {
        mut failures,
        clean,
        crashed,
    } = sweep(ks, 6);
    failures.sort_by_key(|f| f.0);
    eprintln!(
        "crash-point sweep: N = {n} durable steps; K = 1..={n}: {crashed} runs crashed at \
         their K-th step, {clean} clean runs, {} failed ({:.0?})",
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {n} crash points broke a promise:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|(k, m)| format!("K = {k}: {m}"))
            .collect::<Vec<_>>()
            .join("\n\n")
    );
}

/// The durable steps a daemon said (`crash point N: <step> <path>`), in order.
fn steps_said(log: &str) -> Vec<(u64, String, String)> {
    log.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("crash point ")?;
            let (n, rest) = rest.split_once(": ")?;
            let (what, path) = rest.split_once(' ')?;
            Some((n.parse().ok()?, what.to_string(), path.to_string()))
        })
        .collect()
}

/// Issue 21, item 5: a crash at each step of removing a finished job's spool directory
/// (`DROPDEPLOY_CRASH_ON=.gone-` aims at them: the rename to a dot-name, each file, the
/// folder) records the outcome once and leaves nothing behind. Before the fix,
/// `remove_dir_all` could delete `outcome.json` before `job.json`, and the restart recorded the
/// job a second time.
#[test]
fn a_crash_while_a_finished_job_is_removed_records_its_outcome_once() {
    let mut crashed = 0;
    for k in 1..=10 {
        let (world, drop) = world_with(false);
        let mut runner = Runner::new(&world);
        runner.aim = Some("/spool/.gone-");
        runner.start(Some(k));
        world.drop_archive(&drop, "a.tar.gz");
        runner.wait_history(1);
        runner.stop();
        let history = world.history();
        assert_eq!(history.len(), 1, "K = {k}: one history line: {history:#?}");
        assert_eq!(world.fake.deployments("app").len(), 1, "K = {k}");
        assert_eq!(archives_in(&drop.join("done")), ["a.tar.gz"], "K = {k}");
        let spool = spool_entries(&world.state.join("spool"));
        assert!(spool.is_empty(), "K = {k}: the spool holds {spool:?}");
        assert_eq!(litter(world.dir.path()), Vec::<PathBuf>::new(), "K = {k}");
        if runner.crashes == 0 {
            break;
        }
        crashed += 1;
    }
    // The rename, three files (record, outcome note, claim note), the folder.
    assert!(
        crashed >= 5,
        "the daemon was killed at {crashed} steps of the removal, not at each"
    );
}

/// Issue 21, item 5: what a crash left before this version (a spool directory holding only
/// its claim note, an empty one, a half-removed one, the start-up's rename probes, a reason
/// file being written in `failed/`) is removed at the next start; real files stay.
#[test]
fn the_start_removes_what_a_crash_left() {
    let (world, drop) = world_with(false);
    let spool = world.state.join("spool");
    let claim_only = spool.join("20260101000000-0badf00d");
    let empty = spool.join("20260101000001-0badf00e");
    let half_removed = spool.join(".gone-20260101000002-0badf00f");
    for dir in [&claim_only, &empty, &half_removed] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(
        claim_only.join("claim.json"),
        br#"{"app":"app","original":"/x"}"#,
    )
    .unwrap();
    std::fs::write(half_removed.join("outcome.json"), b"{}").unwrap();
    std::fs::write(spool.join(".dropdeploy-probe-0000abcd"), b"").unwrap();
    std::fs::create_dir_all(drop.join("failed")).unwrap();
    std::fs::create_dir_all(drop.join("done")).unwrap();
    std::fs::write(drop.join(".dropdeploy-probe-1234abcd"), b"").unwrap();
    let temp_reason = drop.join("failed/.x.tar.gz.reason.txt.0badf00d.tmp");
    std::fs::write(&temp_reason, b"half a reason").unwrap();
    let durable_temp = drop.join("failed/.y.tar.gz.reason.txt.tmp");
    std::fs::write(&durable_temp, b"half a reason").unwrap();
    // Real files stay.
    std::fs::write(drop.join("failed/x.tar.gz"), b"refused").unwrap();
    std::fs::write(drop.join("failed/x.tar.gz.reason.txt"), b"why").unwrap();
    std::fs::write(drop.join("done/.keep.tmp"), b"the user's").unwrap();

    let mut daemon = world.start_daemon("d");
    let spool_left = spool_entries(&spool);
    assert!(spool_left.is_empty(), "the spool holds {spool_left:?}");
    assert!(!drop.join(".dropdeploy-probe-1234abcd").exists());
    assert!(!temp_reason.exists() && !durable_temp.exists());
    assert!(drop.join("failed/x.tar.gz").exists());
    assert!(drop.join("failed/x.tar.gz.reason.txt").exists());
    assert!(drop.join("done/.keep.tmp").exists());
    assert!(world.history().is_empty(), "{:#?}", world.history());
    daemon.signal("TERM");
    assert!(daemon.wait_exit(LONG).success(), "{}", world.log("d"));
}

/// Writes a half-made job in the spool, as a daemon killed while inspecting a claimed file
/// leaves it: the claim note (app, where the file was dropped) and the file.
fn half_claimed(world: &World, original: &Path) -> PathBuf {
    let dir = world.state.join("spool/.new-20260101000000-0badf00d");
    std::fs::create_dir_all(&dir).unwrap();
    let claim = serde_json::json!({ "app": "app", "original": original });
    std::fs::write(dir.join("claim.json"), claim.to_string()).unwrap();
    let made = world.archive("claimed.tar.gz");
    std::fs::rename(made, dir.join("archive.tar.gz")).unwrap();
    dir
}

/// Issue 21, item 6: the drop folder of a half-claimed file was moved away while the daemon
/// was down. Before the fix the start failed (`cannot put back …: No such file or directory`,
/// exit 1, every app down); now the folder is made (as at every start), the file goes back and
/// is deployed.
#[test]
fn a_half_claimed_file_goes_back_to_its_drop_folder_made_again_at_start() {
    let (world, drop) = world_with(false);
    half_claimed(&world, &drop.join("v1.tar.gz"));
    assert!(!drop.exists());
    let _daemon = world.start_daemon("d");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded", "{history:#?}");
    assert_eq!(history[0]["file"], "v1.tar.gz");
    assert_eq!(archives_in(&drop.join("done")), ["v1.tar.gz"]);
    assert!(world.log("d").contains("was put back in its drop folder"));
}

/// Issue 21, item 6: a half-claimed file whose folder is no app's drop folder any more and is
/// missing (its mount not back yet): the daemon starts all the same, keeps the file in the
/// spool, says so (a warning naming the file and the folder, and in `status`), and puts it
/// back once the folder is there.
#[test]
fn a_half_claimed_file_whose_folder_is_missing_is_kept_said_and_put_back_later() {
    let (world, _drop) = world_with(false);
    let elsewhere = world.path("mount/old-drop");
    let original = elsewhere.join("v1.tar.gz");
    let kept = half_claimed(&world, &original);
    let _daemon = world.start_daemon("d");
    let log = world.log("d");
    let warning = log
        .lines()
        .find(|l| l.contains("cannot go back"))
        .unwrap_or_else(|| panic!("a warning says the file cannot go back:\n{log}"));
    assert!(
        warning.contains(&original.display().to_string()),
        "{warning}"
    );
    assert!(
        warning.contains(&elsewhere.display().to_string()),
        "{warning}"
    );
    assert!(
        kept.join("archive.tar.gz").exists(),
        "the file is kept in the spool"
    );
    let status = world.run(&["status"]);
    status
        .assert_code(0)
        .assert_contains(&original.display().to_string())
        .assert_contains("kept in the spool");
    // The folder is back: the file goes back within the retry interval.
    std::fs::create_dir_all(&elsewhere).unwrap();
    assert!(
        wait_for(LONG, || original.exists()),
        "the file went back:\n{}",
        world.log("d")
    );
    assert!(
        wait_for(LONG, || !kept.exists()),
        "the half-made directory goes"
    );
    assert!(wait_for(LONG, || !world
        .run(&["status"])
        .all()
        .contains("kept in the spool")));
}

/// Issue 21, item 10: the drop folder is fsynced after `done/` and `failed/` are made in it
/// and after a claim renames a file out of it (seen in the daemon's own list of durable
/// steps, `DROPDEPLOY_CRASH_AFTER=0`).
#[test]
fn the_drop_folder_is_synced_after_making_done_and_after_a_claim() {
    let (world, drop) = world_with(false);
    let mut runner = Runner::new(&world);
    runner.start(Some(0));
    world.drop_archive(&drop, "a.tar.gz");
    runner.wait_history(1);
    runner.stop();
    let steps = steps_said(&world.log("run-1"));
    let drop_text = drop.display().to_string();
    let synced_after = |i: usize| {
        steps[i + 1..]
            .iter()
            .take(3)
            .any(|(_, what, path)| what == "fsync" && *path == drop_text)
    };
    for sub in ["done", "failed"] {
        let made = steps
            .iter()
            .position(|(_, what, path)| what == "mkdir" && *path == format!("{drop_text}/{sub}"))
            .unwrap_or_else(|| panic!("{sub}/ is made at start: {steps:#?}"));
        assert!(
            synced_after(made),
            "the drop folder is synced after mkdir {sub}/: {steps:#?}"
        );
    }
    let claimed = steps
        .iter()
        .position(|(_, what, path)| {
            what == "rename" && path.contains("/spool/.new-") && path.ends_with("/archive.tar.gz")
        })
        .unwrap_or_else(|| panic!("the claim is a rename into the spool: {steps:#?}"));
    assert!(
        synced_after(claimed),
        "the drop folder is synced after the claim: {steps:#?}"
    );
}

/// What the spool holds besides its arrival counter (`.sequence`, kept for good).
fn spool_entries(spool: &std::path::Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| name != ".sequence")
        .collect()
}
