//! The local target on real directories and real archives: releases, the `current` switch,
//! activation and rollback, refused archives, recovery after a crash, pruning.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dropdeploy::config::LocalTargetConfig;
use dropdeploy::deploy::local::{LocalStep, LocalTarget};
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

const APP: &str = "web";

/// A temporary directory holding `releases/` (the target's) and `outside/` (which nothing may
/// ever touch), plus the archives a test builds.
struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("releases")).unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/keep.txt"), b"untouched").unwrap();
        Bench { dir }
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn target(&self, activate: &[&str], timeout: Duration, keep: usize) -> LocalTarget {
        LocalTarget::new(&LocalTargetConfig {
            releases_dir: self.dir.path().join("releases"),
            activate: activate.iter().map(|s| s.to_string()).collect(),
            activate_timeout: timeout,
            keep_releases: keep,
        })
    }

    /// A plain target: no activate command, keeps 5 releases.
    fn plain(&self) -> LocalTarget {
        self.target(&[], Duration::from_secs(10), 5)
    }

    /// Writes a gzipped tar whose entries are added by `fill`.
    fn archive(
        &self,
        name: &str,
        fill: impl FnOnce(&mut tar::Builder<GzEncoder<fs::File>>),
    ) -> PathBuf {
        let path = self.dir.path().join(name);
        let file = fs::File::create(&path).unwrap();
        let mut builder = tar::Builder::new(GzEncoder::new(file, Compression::fast()));
        fill(&mut builder);
        builder.into_inner().unwrap().finish().unwrap();
        path
    }

    /// `app/` with `bin/run` (0755), `README` (0644) and `version` holding `version`.
    fn site(&self, version: &str) -> PathBuf {
        self.archive(&format!("site-{version}.tar.gz"), |b| {
            dir(b, "app/");
            dir(b, "app/bin/");
            file(b, "app/bin/run", 0o755, b"#!/bin/sh\necho run\n");
            file(b, "app/README", 0o644, b"read me\n");
            file(b, "app/version", 0o644, version.as_bytes());
        })
    }

    /// Everything under the bench directory except the archives, as sorted relative paths.
    fn tree(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                let rel = path.strip_prefix(self.dir.path()).unwrap();
                if rel.to_string_lossy().ends_with(".tar.gz") {
                    continue;
                }
                found.push(rel.to_string_lossy().into_owned());
                if entry.file_type().unwrap().is_dir() {
                    stack.push(path);
                }
            }
        }
        found.sort();
        found
    }
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(1_700_000_000);
    header
}

fn dir(b: &mut tar::Builder<GzEncoder<fs::File>>, path: &str) {
    let mut h = header(EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, path, &[][..]).unwrap();
}

fn file(b: &mut tar::Builder<GzEncoder<fs::File>>, path: &str, mode: u32, data: &[u8]) {
    let mut h = header(EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data).unwrap();
}

/// An entry whose name and link target are written into the header as they are, so that
/// paths the `tar` crate would refuse to build (`..`, absolute) can be made.
fn raw(
    b: &mut tar::Builder<GzEncoder<fs::File>>,
    name: &str,
    kind: EntryType,
    link: &str,
    data: &[u8],
) {
    let mut h = header(kind, 0o644, data.len() as u64);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn name(n: u64) -> String {
    LocalTarget::release_name(1_767_225_600 + n * 60, &format!("web-r{n}"))
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_deploy_extracts_the_release_and_points_current_to_it() {
    let bench = Bench::new();
    let target = bench.plain();
    let archive = bench.site("1");
    let deployed = target.deploy(APP, &name(1), "web-r1", &archive).unwrap();

    let release = target.app_dir(APP).join(name(1));
    assert_eq!(deployed.release, release);
    assert_eq!(deployed.previous, None);
    assert_eq!(deployed.activate_output, "");
    assert!(deployed.pruned.is_empty());
    // The top folder `app/` is stripped.
    assert_eq!(fs::read(release.join("version")).unwrap(), b"1");
    assert!(!release.join("app").exists());
    assert_eq!(mode(&release.join("bin/run")), 0o755);
    assert_eq!(mode(&release.join("README")), 0o644);
    let mtime = fs::metadata(release.join("README"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        mtime,
        std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    );

    let link = target.app_dir(APP).join("current");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // Relative, so the releases directory can move.
    assert_eq!(fs::read_link(&link).unwrap(), Path::new(&name(1)));
    assert_eq!(target.current(APP), Some(release));
    let mut entries: Vec<String> = fs::read_dir(target.app_dir(APP))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, vec![name(1), "current".to_string()]);
}

#[test]
fn a_second_deploy_switches_current_and_keeps_the_first_release() {
    let bench = Bench::new();
    let target = bench.plain();
    target
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();
    let deployed = target
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap();

    let app_dir = target.app_dir(APP);
    assert_eq!(deployed.previous, Some(app_dir.join(name(1))));
    assert_eq!(target.current(APP), Some(app_dir.join(name(2))));
    assert_eq!(fs::read(app_dir.join("current/version")).unwrap(), b"2");
    assert_eq!(
        fs::read(app_dir.join(name(1)).join("version")).unwrap(),
        b"1"
    );
}

#[test]
fn a_failing_activate_rolls_current_back_and_reports_its_output() {
    let bench = Bench::new();
    bench
        .plain()
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();
    let target = bench.target(
        &["sh", "-c", "echo boom; exit 3"],
        Duration::from_secs(10),
        5,
    );
    let failure = target
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap_err();

    assert_eq!(failure.step, LocalStep::Activate);
    assert!(failure.output.contains("boom"), "{failure:?}");
    assert!(
        failure.reason.contains("exited with status 3"),
        "{}",
        failure.reason
    );
    assert!(
        failure.reason.contains("sh -c 'echo boom; exit 3'"),
        "{}",
        failure.reason
    );
    assert!(failure.reason.contains(APP), "{}", failure.reason);
    let app_dir = target.app_dir(APP);
    assert_eq!(target.current(APP), Some(app_dir.join(name(1))));
    // The failed release stays, complete, for inspection.
    assert_eq!(
        fs::read(app_dir.join(name(2)).join("version")).unwrap(),
        b"2"
    );
    assert!(!app_dir.join("current.tmp").exists());
}

#[test]
fn a_failing_first_activate_leaves_no_current() {
    let bench = Bench::new();
    let target = bench.target(&["false"], Duration::from_secs(10), 5);
    let failure = target
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap_err();
    assert_eq!(failure.step, LocalStep::Activate);
    assert!(
        failure.reason.contains("exited with status 1"),
        "{}",
        failure.reason
    );
    assert_eq!(target.current(APP), None);
    assert!(fs::symlink_metadata(target.app_dir(APP).join("current")).is_err());
}

#[test]
fn an_activate_program_that_does_not_exist_is_named() {
    let bench = Bench::new();
    bench
        .plain()
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();
    let target = bench.target(&["no-such-program-dropdeploy"], Duration::from_secs(10), 5);
    let failure = target
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap_err();
    assert_eq!(failure.step, LocalStep::Activate);
    assert!(
        failure
            .reason
            .contains("`no-such-program-dropdeploy` could not start"),
        "{}",
        failure.reason
    );
    assert!(
        failure.reason.contains("No such file or directory"),
        "{}",
        failure.reason
    );
    assert_eq!(target.current(APP), Some(target.app_dir(APP).join(name(1))));
}

#[test]
fn activate_runs_in_the_release_with_the_deploy_in_its_environment() {
    let bench = Bench::new();
    let script = "echo \"$DROPDEPLOY_APP $DROPDEPLOY_GIT_REF $DROPDEPLOY_RELEASE\"; \
                  cat version; pwd > marker; echo to-stderr >&2";
    let target = bench.target(&["sh", "-c", script], Duration::from_secs(10), 5);
    let deployed = target
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();

    let release = fs::canonicalize(&deployed.release).unwrap();
    let release_abs = std::path::absolute(&deployed.release).unwrap();
    let output = &deployed.activate_output;
    assert!(
        output.contains(&format!("{APP} web-r1 {}", release_abs.display())),
        "{output}"
    );
    assert!(output.contains("to-stderr"), "{output}");
    let pwd = fs::read_to_string(release.join("marker")).unwrap();
    assert_eq!(fs::canonicalize(pwd.trim()).unwrap(), release);
}

/// The token must never reach a hook. Setting it with `std::env::set_var` here would race with
/// the other tests of this binary, so the test runs itself again, alone, in a child process
/// whose environment holds the token, and checks there what `env` printed as the hook.
#[test]
fn activate_never_sees_the_api_token() {
    const CHILD: &str = "DROPDEPLOY_TEST_TOKEN_CHILD";
    const SECRET: &str = "tk-us-not-for-hooks-4242";
    if std::env::var_os(CHILD).is_some() {
        assert_eq!(std::env::var("SCALINGO_API_TOKEN").as_deref(), Ok(SECRET));
        let bench = Bench::new();
        let target = bench.target(&["env"], Duration::from_secs(10), 5);
        let deployed = target
            .deploy(APP, &name(1), "web-r1", &bench.site("1"))
            .unwrap();
        assert!(
            deployed.activate_output.contains("DROPDEPLOY_APP=web"),
            "{}",
            deployed.activate_output
        );
        assert!(!deployed.activate_output.contains(SECRET));
        assert!(!deployed.activate_output.contains("SCALINGO_API_TOKEN"));
        println!("token check ran in the child");
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "local_target::activate_never_sees_the_api_token",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("SCALINGO_API_TOKEN", SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("token check ran in the child"),
        "{stdout}\n{stderr}"
    );
}

#[test]
fn an_activate_that_hangs_is_killed_with_its_process_group_and_rolled_back() {
    let bench = Bench::new();
    bench
        .plain()
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();
    // The background `sleep` holds the output pipe: only a group kill ends it in time.
    let script = "sleep 30 & echo $! > \"$DROPDEPLOY_RELEASE/../bg.pid\"; sleep 30";
    let target = bench.target(&["sh", "-c", script], Duration::from_millis(300), 5);
    let started = Instant::now();
    let failure = target
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap_err();
    let elapsed = started.elapsed();

    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert_eq!(failure.step, LocalStep::Activate);
    assert!(
        failure.reason.contains("timed out after 300 ms"),
        "{}",
        failure.reason
    );
    assert_eq!(target.current(APP), Some(target.app_dir(APP).join(name(1))));

    let pid = fs::read_to_string(target.app_dir(APP).join("bg.pid")).unwrap();
    let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie waiting for init to reap it.
    while proc.exists() && !fs::read_to_string(proc.join("stat")).is_ok_and(|s| s.contains(") Z")) {
        assert!(
            Instant::now() < deadline,
            "the background sleep survived the timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_plain_sleep_times_out_in_time() {
    let bench = Bench::new();
    let target = bench.target(&["sleep", "30"], Duration::from_millis(300), 5);
    let started = Instant::now();
    let failure = target
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(failure.step, LocalStep::Activate);
    assert!(
        failure.reason.contains("`sleep 30` timed out"),
        "{}",
        failure.reason
    );
    assert_eq!(target.current(APP), None);
}

/// Deploys a bad archive over an app that has one good release, and checks it was refused at
/// Extract with `fragment` in the reason, leaving every file as it was.
fn assert_refused(fill: impl FnOnce(&mut tar::Builder<GzEncoder<fs::File>>), fragment: &str) {
    let bench = Bench::new();
    let target = bench.plain();
    target
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();
    let before = bench.tree();
    let archive = bench.archive("bad.tar.gz", fill);

    let failure = target
        .deploy(APP, &name(2), "web-r2", &archive)
        .unwrap_err();
    assert_eq!(failure.step, LocalStep::Extract, "{failure:?}");
    assert!(failure.reason.contains(fragment), "{}", failure.reason);
    assert!(failure.reason.contains("bad.tar.gz"), "{}", failure.reason);
    assert!(failure.reason.contains(APP), "{}", failure.reason);
    assert_eq!(bench.tree(), before);
    assert_eq!(
        fs::read(bench.outside().join("keep.txt")).unwrap(),
        b"untouched"
    );
    assert_eq!(target.current(APP), Some(target.app_dir(APP).join(name(1))));
}

#[test]
fn a_path_climbing_out_is_refused() {
    assert_refused(
        |b| {
            dir(b, "app/");
            file(b, "app/ok", 0o644, b"fine");
            raw(b, "app/../../evil", EntryType::Regular, "", b"evil");
        },
        "leaves the archive",
    );
}

#[test]
fn an_absolute_path_is_refused() {
    assert_refused(
        |b| {
            dir(b, "app/");
            raw(b, "/tmp/dropdeploy-evil", EntryType::Regular, "", b"evil");
        },
        "absolute path",
    );
}

#[test]
fn an_absolute_symlink_is_refused() {
    assert_refused(
        |b| {
            dir(b, "app/");
            raw(b, "app/l", EntryType::Symlink, "/etc/passwd", b"");
        },
        "points to the absolute path /etc/passwd",
    );
}

#[test]
fn a_relative_symlink_leaving_the_release_is_refused() {
    assert_refused(
        |b| {
            dir(b, "app/");
            raw(b, "app/l", EntryType::Symlink, "../../x", b"");
        },
        "points outside the app/ folder",
    );
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let outside = Bench::new();
    // A link to a folder outside (refused itself), then a file through it: nothing may land
    // there. The outside folder is a temporary one, so a bug could never touch /etc.
    let target_dir = outside.outside();
    assert_refused(
        |b| {
            dir(b, "app/");
            raw(
                b,
                "app/l",
                EntryType::Symlink,
                target_dir.to_str().unwrap(),
                b"",
            );
            raw(b, "app/l/passwd", EntryType::Regular, "", b"owned");
        },
        "points to the absolute path",
    );
    assert!(!outside.outside().join("passwd").exists());
    // A link that stays inside, then a file through it: refused all the same.
    assert_refused(
        |b| {
            dir(b, "app/");
            dir(b, "app/d/");
            raw(b, "app/l", EntryType::Symlink, "d", b"");
            raw(b, "app/l/passwd", EntryType::Regular, "", b"owned");
        },
        "would be written through the symlink app/l",
    );
}

#[test]
fn a_hard_link_to_a_file_outside_is_refused() {
    assert_refused(
        |b| {
            dir(b, "app/");
            raw(b, "app/h", EntryType::Link, "/etc/passwd", b"");
        },
        "hard link app/h points to the absolute path /etc/passwd",
    );
}

#[test]
fn a_refused_first_archive_leaves_no_app_directory() {
    let bench = Bench::new();
    let target = bench.plain();
    let before = bench.tree();
    let archive = bench.archive("bad.tar.gz", |b| {
        dir(b, "app/");
        raw(b, "app/pipe", EntryType::Fifo, "", b"");
    });
    let failure = target
        .deploy(APP, &name(1), "web-r1", &archive)
        .unwrap_err();
    assert_eq!(failure.step, LocalStep::Extract);
    assert!(
        failure.reason.contains("fifo app/pipe"),
        "{}",
        failure.reason
    );
    assert_eq!(bench.tree(), before);
}

#[test]
fn recover_removes_half_extracted_releases_and_a_stray_link_only() {
    let bench = Bench::new();
    let target = bench.plain();
    target
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();
    target
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap();
    let app_dir = target.app_dir(APP);
    let partial = app_dir.join(format!(".partial-{}", name(3)));
    fs::create_dir_all(partial.join("deep/er")).unwrap();
    fs::write(partial.join("deep/er/file"), b"half").unwrap();
    std::os::unix::fs::symlink(name(1), app_dir.join("current.tmp")).unwrap();
    // Notes of a deploy in flight: the current release's is needed to roll back, another's not.
    fs::write(app_dir.join(format!(".previous-{}", name(2))), name(1)).unwrap();
    fs::write(app_dir.join(format!(".previous-{}", name(1))), b"").unwrap();

    let removed = target.recover(APP).unwrap();
    assert_eq!(
        removed,
        vec![
            partial.clone(),
            app_dir.join(format!(".previous-{}", name(1))),
            app_dir.join("current.tmp"),
        ]
    );
    assert!(app_dir.join(format!(".previous-{}", name(2))).exists());
    assert!(!partial.exists());
    assert!(fs::symlink_metadata(app_dir.join("current.tmp")).is_err());
    assert_eq!(target.current(APP), Some(app_dir.join(name(2))));
    assert!(app_dir.join(name(1)).join("version").exists());
    assert!(app_dir.join(name(2)).join("version").exists());
    // Nothing left to do the second time, and no app directory is no error.
    assert!(target.recover(APP).unwrap().is_empty());
    assert!(target.recover("other").unwrap().is_empty());
}

#[test]
fn a_deploy_killed_during_extraction_is_redone_and_never_current() {
    let bench = Bench::new();
    let target = bench.plain();
    target
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();
    let app_dir = target.app_dir(APP);
    // What `kill -9` in the middle of extracting release 2 leaves behind.
    let partial = app_dir.join(format!(".partial-{}", name(2)));
    fs::create_dir_all(partial.join("bin")).unwrap();
    fs::write(partial.join("version"), b"half-written").unwrap();
    fs::write(partial.join("stale-only-in-partial"), b"x").unwrap();
    assert_eq!(target.current(APP), Some(app_dir.join(name(1))));

    let deployed = target
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap();
    assert_eq!(deployed.release, app_dir.join(name(2)));
    assert_eq!(target.current(APP), Some(app_dir.join(name(2))));
    assert_eq!(fs::read(app_dir.join("current/version")).unwrap(), b"2");
    assert!(!app_dir.join("current/stale-only-in-partial").exists());
    assert!(!partial.exists());
}

#[test]
fn a_deploy_resumed_after_the_switch_keeps_the_release_and_can_still_roll_back() {
    let bench = Bench::new();
    bench
        .plain()
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();
    // First attempt: switched, then activation failed and rolled back.
    let failing = bench.target(&["sh", "-c", "exit 7"], Duration::from_secs(10), 5);
    failing
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap_err();
    let app_dir = failing.app_dir(APP);
    assert_eq!(failing.current(APP), Some(app_dir.join(name(1))));

    // A retry of the same release, activation fixed, redoes the release and switches.
    let fixed = bench.target(&["true"], Duration::from_secs(10), 5);
    let deployed = fixed
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap();
    assert_eq!(deployed.previous, Some(app_dir.join(name(1))));
    assert_eq!(fixed.current(APP), Some(app_dir.join(name(2))));

    // Deployed again while already current (as after a crash past the switch): kept as is.
    fs::write(app_dir.join(name(2)).join("touched"), b"kept").unwrap();
    let again = fixed
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap();
    assert_eq!(again.release, app_dir.join(name(2)));
    assert!(app_dir.join(name(2)).join("touched").exists());
}

#[test]
fn only_the_newest_releases_are_kept() {
    let bench = Bench::new();
    let target = bench.target(&[], Duration::from_secs(10), 2);
    let app_dir = target.app_dir(APP);
    let mut pruned = Vec::new();
    for n in 1..=4 {
        let deployed = target
            .deploy(APP, &name(n), "ref", &bench.site(&n.to_string()))
            .unwrap();
        pruned.extend(deployed.pruned);
    }
    assert_eq!(pruned, vec![app_dir.join(name(1)), app_dir.join(name(2))]);
    assert!(!app_dir.join(name(1)).exists());
    assert!(!app_dir.join(name(2)).exists());
    assert!(app_dir.join(name(3)).exists());
    assert_eq!(target.current(APP), Some(app_dir.join(name(4))));
}

#[test]
fn the_current_release_is_never_pruned_even_when_old() {
    let bench = Bench::new();
    let keep_three = bench.target(&[], Duration::from_secs(10), 3);
    for n in [2, 3, 4] {
        keep_three
            .deploy(APP, &name(n), "ref", &bench.site(&n.to_string()))
            .unwrap();
    }
    let target = bench.target(&[], Duration::from_secs(10), 2);
    let app_dir = target.app_dir(APP);
    // A job created before the others finishes last: its release is current but the oldest.
    let deployed = target
        .deploy(APP, &name(1), "ref", &bench.site("1"))
        .unwrap();
    assert_eq!(target.current(APP), Some(app_dir.join(name(1))));
    // It takes one of the two places; the newest other release takes the second.
    assert_eq!(
        deployed.pruned,
        vec![app_dir.join(name(3)), app_dir.join(name(2))]
    );
    assert!(app_dir.join(name(1)).exists());
    assert!(app_dir.join(name(4)).exists());
}

#[test]
fn a_release_name_that_is_not_one_is_refused() {
    let bench = Bench::new();
    let target = bench.plain();
    for bad in ["../escape", "current", ".partial-x", "plain"] {
        let failure = target
            .deploy(APP, bad, "ref", &bench.site("1"))
            .unwrap_err();
        assert_eq!(failure.step, LocalStep::Extract);
        assert!(failure.reason.contains(bad), "{}", failure.reason);
    }
    let failure = target
        .deploy("../x", &name(1), "ref", &bench.site("1"))
        .unwrap_err();
    assert!(failure.reason.contains("../x"), "{}", failure.reason);
}

#[test]
fn a_deploy_resumed_past_the_switch_still_rolls_back_to_the_release_before() {
    let bench = Bench::new();
    let plain = bench.plain();
    plain
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();
    plain
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap();
    let app_dir = plain.app_dir(APP);
    // What a run killed during activation leaves: release 2 current, its note naming 1.
    fs::write(app_dir.join(format!(".previous-{}", name(2))), name(1)).unwrap();

    let failing = bench.target(&["sh", "-c", "exit 4"], Duration::from_secs(10), 5);
    let failure = failing
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap_err();
    assert_eq!(failure.step, LocalStep::Activate);
    assert_eq!(failing.current(APP), Some(app_dir.join(name(1))));
    assert!(!app_dir.join(format!(".previous-{}", name(2))).exists());
}

#[test]
fn a_release_activated_before_stays_current_when_activating_it_again_fails() {
    let bench = Bench::new();
    let plain = bench.plain();
    plain
        .deploy(APP, &name(1), "web-r1", &bench.site("1"))
        .unwrap();
    plain
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap();

    let failing = bench.target(&["sh", "-c", "exit 4"], Duration::from_secs(10), 5);
    let failure = failing
        .deploy(APP, &name(2), "web-r2", &bench.site("2"))
        .unwrap_err();
    assert_eq!(failure.step, LocalStep::Activate);
    assert!(
        failure.reason.contains("current left on this release"),
        "{}",
        failure.reason
    );
    assert_eq!(failing.current(APP), Some(plain.app_dir(APP).join(name(2))));
}

#[test]
fn releases_made_in_the_same_second_are_pruned_to_keep_releases() {
    let bench = Bench::new();
    let target = bench.target(&[], Duration::from_secs(10), 2);
    let app_dir = target.app_dir(APP);
    // Same creation second; the git_refs end in a hash, so names do not sort by deploy order.
    for git_ref in ["web-ffff", "web-0000", "web-8888", "web-1111"] {
        let release = LocalTarget::release_name(1_767_225_600, git_ref);
        target
            .deploy(APP, &release, git_ref, &bench.site(git_ref))
            .unwrap();
    }
    let mut kept: Vec<String> = fs::read_dir(&app_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "current")
        .collect();
    kept.sort();
    let last = LocalTarget::release_name(1_767_225_600, "web-1111");
    assert_eq!(target.current(APP), Some(app_dir.join(&last)));
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(kept.contains(&last), "{kept:?}");
}
