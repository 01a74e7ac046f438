//! A finished job leaves the spool for good: its archive lands in `done/` or `failed/` beside
//! the drop folder (never overwriting anything), a failure gets a reason a person can act on,
//! the history gets exactly one line, and `history` / `status` read it all back.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use dropdeploy::archive::inspect::{Limits, Summary};
use dropdeploy::outcome::{
    HistoryEntry, Outcome, Outcomes, format_history_table, read_history, status_report,
};
use dropdeploy::queue::intake::{IntakeError, Transfer, enqueue_archive};
use dropdeploy::queue::spool::{ARCHIVE_NAME, Failure, Job, JobState, Payload, Spool, Step, now};

/// A state directory with its spool, and a drop folder, under one temporary directory.
struct World {
    _dir: tempfile::TempDir,
    state: PathBuf,
    drop: PathBuf,
    spool: Spool,
    outcomes: Outcomes,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let drop = dir.path().join("drop");
        fs::create_dir_all(&drop).unwrap();
        let spool = Spool::open(state.join("spool")).unwrap();
        let outcomes = Outcomes::new(&state, spool.clone());
        World {
            _dir: dir,
            state,
            drop,
            spool,
            outcomes,
        }
    }

    /// A job for `<drop>/<name>`, claimed into the spool as the daemon does, in `state`. The
    /// archive's mtime is `mtime` seconds after a fixed instant, when given.
    fn job(&self, app: &str, name: &str, state: JobState, mtime: Option<u64>) -> Job {
        let (id, tmp) = self.spool.new_job_dir().unwrap();
        let archive = tmp.join(ARCHIVE_NAME);
        fs::write(&archive, format!("the bytes of {name}")).unwrap();
        if let Some(secs) = mtime {
            File::options()
                .write(true)
                .open(&archive)
                .unwrap()
                .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000 + secs))
                .unwrap();
        }
        let mut job = Job {
            git_ref: format!("{app}-20251125174258-{}", &id[id.len() - 8..]),
            git_ref_given: false,
            id,
            app: app.to_string(),
            payload: Payload::Archive {
                original: self.drop.join(name),
                summary: Summary {
                    root: "app".into(),
                    entries: 3,
                    files: 2,
                    uncompressed_bytes: 10_240,
                    compressed_bytes: 2_048,
                    sha256: "0123456789abcdef".repeat(4),
                },
                tree_digest: None,
                copied: false,
            },
            created_at: now() - 48,
            seq: None,
            started_at: Some(now() - 47),
            failed_attempts: 0,
            aborted_retries: 0,
            source_renewals: 0,
            check: None,
            state,
        };
        self.spool.commit_new(&tmp, &mut job).unwrap();
        job
    }

    fn history(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.state.join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn names_in(&self, folder: &str) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.drop.join(folder)) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

fn succeeded(id: &str) -> JobState {
    JobState::Succeeded {
        deployment_id: id.into(),
    }
}

fn build_error() -> Failure {
    Failure {
        step: Step::Follow,
        reason: "deployment 5f3a ended with status build-error: the code did not build".into(),
        status: Some("build-error".into()),
        deployment_id: Some("5f3a".into()),
        log_tail: vec![
            "-----> Installing dependencies".into(),
            "npm ERR! missing script: build".into(),
        ],
        http_status: None,
        gave_up: false,
    }
}

fn file_name(job: &Job) -> String {
    match &job.payload {
        Payload::Archive { original, .. } => {
            original.file_name().unwrap().to_string_lossy().into_owned()
        }
        Payload::Url { url } => url.clone(),
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap()
}

#[test]
fn a_success_moves_the_archive_to_done_and_writes_one_history_line() {
    let w = World::new();
    let mut job = w.job("my-app", "app.tar.gz", succeeded("d-123"), None);
    job.failed_attempts = 1;
    w.spool.save(&job).unwrap();

    let entry = w.outcomes.record(&job, 20).unwrap();

    let done = w.drop.join("done/app.tar.gz");
    assert_eq!(read(&done), "the bytes of app.tar.gz");
    assert!(!w.spool.job_dir(&job.id).exists());
    assert!(!w.drop.join("app.tar.gz").exists());
    assert_eq!(w.names_in("failed"), Vec::<String>::new());
    let history = w.history();
    assert_eq!(history.len(), 1);
    let line = &history[0];
    assert_eq!(line["app"], "my-app");
    assert_eq!(line["job"], job.id.as_str());
    assert_eq!(line["file"], "app.tar.gz");
    assert_eq!(line["git_ref"], job.git_ref.as_str());
    assert_eq!(line["outcome"], "succeeded");
    assert_eq!(line["status"], "success");
    assert_eq!(line["deployment_id"], "d-123");
    assert_eq!(line["step"], serde_json::Value::Null);
    assert_eq!(line["reason"], serde_json::Value::Null);
    assert_eq!(line["attempts"], 2);
    assert_eq!(line["sha256"], "0123456789abcdef".repeat(4).as_str());
    assert_eq!(line["bytes"], 2048);
    assert_eq!(line["moved_to"], done.to_str().unwrap());
    let duration = line["duration_ms"].as_u64().unwrap();
    assert!((48_000..60_000).contains(&duration), "{duration}");
    let time = line["time"].as_str().unwrap();
    assert!(
        time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    assert_eq!(serde_json::to_value(&entry).unwrap(), *line);
}

#[test]
fn a_failure_moves_the_archive_to_failed_with_a_reason_a_person_can_act_on() {
    let w = World::new();
    let job = w.job(
        "my-app",
        "app.tar.gz",
        JobState::Failed(build_error()),
        None,
    );

    let entry = w.outcomes.record(&job, 20).unwrap();

    assert_eq!(
        w.names_in("failed"),
        ["app.tar.gz", "app.tar.gz.reason.txt"]
    );
    assert_eq!(w.names_in("done"), Vec::<String>::new());
    let reason = read(&w.drop.join("failed/app.tar.gz.reason.txt"));
    for needed in [
        "my-app",
        &job.id,
        &job.git_ref,
        "app.tar.gz",
        "follow deployment",
        "deployment 5f3a ended with status build-error",
        "5f3a",
        "build-error",
        "npm ERR! missing script: build",
        "scalingo --app my-app deployment-logs 5f3a",
        &entry.time,
    ] {
        assert!(reason.contains(needed), "{needed:?} missing in:\n{reason}");
    }
    let line = &w.history()[0];
    assert_eq!(line["outcome"], "failed");
    assert_eq!(line["step"], "follow");
    assert_eq!(line["status"], "build-error");
    assert_eq!(line["deployment_id"], "5f3a");
    assert_eq!(line["attempts"], 1);
    assert!(!w.spool.job_dir(&job.id).exists());
}

#[test]
fn a_superseded_job_goes_to_done_as_superseded() {
    let w = World::new();
    let job = w.job(
        "my-app",
        "old.tar.gz",
        JobState::Superseded {
            by: "20251125174300-0000beef".into(),
        },
        None,
    );

    let entry = w.outcomes.record(&job, 20).unwrap();

    assert_eq!(w.names_in("done"), ["old.tar.gz"]);
    assert_eq!(entry.outcome, Outcome::Superseded);
    assert_eq!(entry.attempts, 0);
    let line = &w.history()[0];
    assert_eq!(line["outcome"], "superseded");
    assert!(
        line["reason"]
            .as_str()
            .unwrap()
            .contains("20251125174300-0000beef")
    );
}

#[test]
fn a_name_already_taken_gets_a_suffix_and_nothing_is_overwritten() {
    let w = World::new();
    fs::create_dir_all(w.drop.join("done")).unwrap();
    fs::write(w.drop.join("done/app.tar.gz"), "older deploy").unwrap();
    fs::write(w.drop.join("done/app.1.tar.gz"), "even older").unwrap();

    let job = w.job("my-app", "app.tar.gz", succeeded("d1"), None);
    let entry = w.outcomes.record(&job, 20).unwrap();

    let expected = w.drop.join("done/app.2.tar.gz");
    assert_eq!(entry.moved_to.as_deref(), expected.to_str());
    assert_eq!(read(&expected), "the bytes of app.tar.gz");
    assert_eq!(read(&w.drop.join("done/app.tar.gz")), "older deploy");
    assert_eq!(read(&w.drop.join("done/app.1.tar.gz")), "even older");

    let job = w.job("my-app", "app.tgz", JobState::Failed(build_error()), None);
    fs::create_dir_all(w.drop.join("failed")).unwrap();
    fs::write(w.drop.join("failed/app.tgz"), "an older failure").unwrap();
    w.outcomes.record(&job, 20).unwrap();
    assert_eq!(
        w.names_in("failed"),
        ["app.1.tgz", "app.1.tgz.reason.txt", "app.tgz"]
    );
    assert_eq!(read(&w.drop.join("failed/app.tgz")), "an older failure");
}

#[test]
fn a_run_stopped_before_the_history_line_is_finished_by_the_next_run() {
    let w = World::new();
    let job = w.job("my-app", "app.tar.gz", succeeded("d1"), None);
    // The history cannot be opened for appending: the first run stops after the move.
    fs::create_dir_all(w.state.join("history.jsonl")).unwrap();
    let err = w.outcomes.record(&job, 20).unwrap_err().to_string();
    assert!(err.contains("history.jsonl"), "{err}");
    assert_eq!(w.names_in("done"), ["app.tar.gz"]);
    assert!(
        w.spool.job_dir(&job.id).exists(),
        "the job stays until recorded"
    );

    fs::remove_dir(w.state.join("history.jsonl")).unwrap();
    let entry = w.outcomes.record(&job, 20).unwrap();
    assert_eq!(w.names_in("done"), ["app.tar.gz"], "moved once, not twice");
    assert_eq!(w.history().len(), 1);
    assert_eq!(
        entry.moved_to.as_deref(),
        w.drop.join("done/app.tar.gz").to_str()
    );
    assert!(!w.spool.job_dir(&job.id).exists());

    // Called once more after it all went through: the same entry, no second line.
    assert_eq!(w.outcomes.record(&job, 20).unwrap(), entry);
    assert_eq!(w.history().len(), 1);
}

#[test]
fn done_keeps_the_newest_archives_and_failed_keeps_everything() {
    let w = World::new();
    fs::create_dir_all(w.drop.join("failed")).unwrap();
    fs::write(w.drop.join("failed/old.tar.gz"), "kept forever").unwrap();
    fs::create_dir_all(w.drop.join("done")).unwrap();
    fs::write(w.drop.join("done/NOTES.txt"), "not an archive").unwrap();

    for (i, name) in ["a.tar.gz", "b.tar.gz", "c.tar.gz", "d.tar.gz"]
        .iter()
        .enumerate()
    {
        let job = w.job("my-app", name, succeeded("d"), Some(i as u64 * 60));
        w.outcomes.record(&job, 2).unwrap();
    }

    assert_eq!(w.names_in("done"), ["NOTES.txt", "c.tar.gz", "d.tar.gz"]);
    assert_eq!(w.names_in("failed"), ["old.tar.gz"]);
    assert_eq!(w.history().len(), 4);
}

#[test]
fn an_archive_refused_at_claim_goes_to_failed_with_its_reason() {
    let w = World::new();
    let dropped = w.drop.join("notes.tar.gz");
    fs::write(&dropped, "this is not gzip").unwrap();
    let refused = enqueue_archive(
        &w.spool,
        "my-app",
        &dropped,
        Transfer::Move,
        "my-app",
        None,
        &Limits::default(),
    );
    let Err(IntakeError::Rejected {
        file,
        rejection,
        kept: Some(kept),
    }) = refused
    else {
        panic!("expected a rejection, got {refused:?}");
    };

    let entry = w
        .outcomes
        .record_rejected("my-app", &file, &kept, &rejection)
        .unwrap();

    assert_eq!(
        w.names_in("failed"),
        ["notes.tar.gz", "notes.tar.gz.reason.txt"]
    );
    assert_eq!(
        read(&w.drop.join("failed/notes.tar.gz")),
        "this is not gzip"
    );
    let reason = read(&w.drop.join("failed/notes.tar.gz.reason.txt"));
    for needed in [
        "my-app",
        "inspect",
        rejection.reason.as_str(),
        "nothing was uploaded",
    ] {
        assert!(reason.contains(needed), "{needed:?} missing in:\n{reason}");
    }
    assert!(!kept.exists());
    assert!(!kept.parent().unwrap().exists(), "the temp dir is removed");
    assert!(w.spool.dir().exists());
    let line = &w.history()[0];
    assert_eq!(line["outcome"], "failed");
    assert_eq!(line["step"], "inspect");
    assert_eq!(line["file"], "notes.tar.gz");
    assert_eq!(line["reason"], rejection.reason.as_str());
    assert_eq!(line["git_ref"], serde_json::Value::Null);
    assert_eq!(line["bytes"], 16);
    assert!(!entry.job.is_empty());
}

fn entry(app: &str, job: &str, outcome: Outcome) -> HistoryEntry {
    HistoryEntry {
        time: "2025-11-25T17:40:00Z".into(),
        app: app.into(),
        job: job.into(),
        file: format!("{job}.tar.gz"),
        git_ref: Some(format!("{app}-{job}")),
        outcome,
        ..HistoryEntry::default()
    }
}

fn write_history(path: &Path, entries: &[HistoryEntry]) {
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e).unwrap());
        text.push('\n');
    }
    fs::write(path, text).unwrap();
}

#[test]
fn history_is_read_newest_last_by_app_and_limit() {
    let w = World::new();
    let path = w.state.join("history.jsonl");
    assert!(read_history(&path, None, None).unwrap().is_empty());
    write_history(
        &path,
        &[
            entry("a", "1", Outcome::Succeeded),
            entry("b", "2", Outcome::Failed),
            entry("a", "3", Outcome::Failed),
            entry("b", "4", Outcome::Succeeded),
            entry("a", "5", Outcome::Superseded),
        ],
    );
    let jobs = |app, limit| -> Vec<String> {
        read_history(&path, app, limit)
            .unwrap()
            .into_iter()
            .map(|e| e.job)
            .collect()
    };
    assert_eq!(jobs(None, None), ["1", "2", "3", "4", "5"]);
    assert_eq!(jobs(Some("a"), None), ["1", "3", "5"]);
    assert_eq!(jobs(Some("a"), Some(2)), ["3", "5"]);
    assert_eq!(jobs(None, Some(1)), ["5"]);
    assert_eq!(jobs(Some("nobody"), Some(3)), Vec::<String>::new());
}

#[test]
fn the_history_table_is_aligned_with_dashes_for_nothing() {
    let ok = HistoryEntry {
        time: "2025-11-25T17:42:58Z".into(),
        app: "my-app".into(),
        job: "j1".into(),
        file: "app.tar.gz".into(),
        outcome: Outcome::Succeeded,
        status: Some("success".into()),
        deployment_id: Some("d-123".into()),
        duration_ms: 48_000,
        ..HistoryEntry::default()
    };
    let bad = HistoryEntry {
        time: "2025-11-25T18:00:00Z".into(),
        app: "staging".into(),
        job: "j2".into(),
        file: "broken-build.tar.gz".into(),
        outcome: Outcome::Failed,
        status: Some("build-error".into()),
        deployment_id: None,
        step: Some("follow".into()),
        reason: Some(
            "deployment 9 ended with status build-error: the code did not build, see the log \
             for the details of what went wrong"
                .into(),
        ),
        duration_ms: 125_000,
        ..HistoryEntry::default()
    };
    let table = format_history_table(&[ok, bad]);
    let expected = "\
TIME                  APP      OUTCOME    STATUS       DEPLOYMENT  FILE                 DURATION    REASON
2025-11-25T17:42:58Z  my-app   succeeded  success      d-123       app.tar.gz           48 s        -
2025-11-25T18:00:00Z  staging  failed     build-error  -           broken-build.tar.gz  2 min 05 s  deployment 9 ended with status build-error: the code did no…
";
    assert_eq!(table, expected, "\n{table}");
    assert_eq!(
        format_history_table(&[]),
        "TIME  APP  OUTCOME  STATUS  DEPLOYMENT  FILE  DURATION  REASON\n"
    );
}

#[test]
fn status_shows_each_lane_from_the_spool_and_the_history() {
    let w = World::new();
    let mut running = w.job(
        "my-app",
        "live.tar.gz",
        JobState::Deploying {
            deployment_id: "d9".into(),
            platform_status: Some("building".into()),
            since: None,
        },
        None,
    );
    running.started_at = Some(1_764_092_578);
    w.spool.save(&running).unwrap();
    let pending = [
        w.job("my-app", "next.tar.gz", JobState::Queued, None),
        w.job("my-app", "after.tar.gz", JobState::Queued, None),
    ];
    // Pending jobs are listed in spool order: by arrival (even within one second).
    let pending: Vec<String> = pending.iter().map(file_name).collect();
    let stray = w.job("stray-app", "x.tar.gz", JobState::Queued, None);
    let mut last = entry("my-app", "old", Outcome::Succeeded);
    last.time = "2025-11-25T17:00:00Z".into();
    last.deployment_id = Some("d8".into());
    last.status = Some("success".into());
    let history = w.state.join("history.jsonl");
    write_history(&history, &[last, entry("other", "zzz", Outcome::Failed)]);

    let apps = ["my-app".to_string(), "quiet-app".to_string()];
    // Nothing drives the job in flight: no daemon, and no process holds its lock.
    let alone = status_report(&w.spool, &history, &apps, None).unwrap();
    assert!(
        alone.contains(&format!(
            "  INTERRUPTED: deploying live.tar.gz (job {}",
            running.id
        )) && alone.contains(&format!("dropdeploy jobs resume {}", running.id)),
        "{alone}"
    );
    // A process drives it (it holds the job's lock).
    let _driven = dropdeploy::lock::JobLock::try_acquire(&w.spool.job_dir(&running.id))
        .unwrap()
        .unwrap();
    let report = status_report(&w.spool, &history, &apps, None).unwrap();

    let expected = format!(
        "\
my-app
  in flight: deploying live.tar.gz (job {}, deployment d9, platform status building, since 2025-11-25T17:42:58Z)
  pending:   2 ({})
  last:      succeeded old.tar.gz at 2025-11-25T17:00:00Z (deployment d8, status success)
quiet-app
  in flight: none
  pending:   none
  last:      none recorded
stray-app (not in the configuration)
  in flight: none
  pending:   1 (x.tar.gz)
  last:      none recorded
",
        running.id,
        pending.join(", ")
    );
    assert_eq!(report, expected, "\n{report}");
    assert!(report.contains(&stray.app));
}

#[test]
fn status_without_a_spool_or_history_is_all_empty() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("spool")).unwrap();
    fs::remove_dir(spool.dir()).unwrap();
    let report = status_report(
        &spool,
        &dir.path().join("history.jsonl"),
        &["a".into()],
        None,
    )
    .unwrap();
    assert_eq!(
        report,
        "a\n  in flight: none\n  pending:   none\n  last:      none recorded\n"
    );
}

#[test]
fn a_failed_archive_never_shows_in_failed_before_its_reason() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let w = Arc::new(World::new());
    let failed = w.drop.join("failed");
    // Every job has the same name: the later ones get suffixes, chosen while others land.
    let jobs: Vec<Job> = (0..16)
        .map(|_| {
            w.job(
                "my-app",
                "app.tar.gz",
                JobState::Failed(build_error()),
                None,
            )
        })
        .collect();

    // A script watching failed/: whenever it sees an archive, its reason must be there.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (failed, stop) = (failed.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut sightings, mut missing) = (0usize, std::collections::BTreeSet::new());
            while !stop.load(Ordering::Relaxed) {
                let Ok(entries) = fs::read_dir(&failed) else {
                    std::thread::yield_now();
                    continue;
                };
                for name in entries.flatten().map(|e| e.file_name()) {
                    let name = name.to_string_lossy().into_owned();
                    if !name.ends_with(".tar.gz") {
                        continue;
                    }
                    sightings += 1;
                    if !failed.join(format!("{name}.reason.txt")).exists() {
                        missing.insert(name);
                    }
                }
            }
            (sightings, missing)
        })
    };
    // Two recorders at once, as two lanes finishing together.
    let (first, second) = jobs.split_at(jobs.len() / 2);
    std::thread::scope(|s| {
        for half in [first, second] {
            let w = w.clone();
            s.spawn(move || {
                for job in half {
                    w.outcomes.record(job, 20).unwrap();
                }
            });
        }
    });
    stop.store(true, Ordering::Relaxed);
    let (sightings, missing) = watcher.join().unwrap();
    assert!(sightings > 0, "the watcher saw the archives arrive");
    assert!(
        missing.is_empty(),
        "archives seen before their reason: {missing:?}"
    );

    // Each archive has one reason, which names it.
    let names = w.names_in("failed");
    let archives: Vec<&String> = names.iter().filter(|n| n.ends_with(".tar.gz")).collect();
    assert_eq!(archives.len(), jobs.len(), "{names:?}");
    assert_eq!(names.len(), 2 * jobs.len(), "nothing else: {names:?}");
    for archive in archives {
        let reason = read(&failed.join(format!("{archive}.reason.txt")));
        let now_at = format!("now at:      {}", failed.join(archive).display());
        assert!(reason.contains(&now_at), "{now_at:?} not in:\n{reason}");
    }
    assert_eq!(w.history().len(), jobs.len());
}
