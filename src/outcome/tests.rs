//! Unit tests of the outcome: collision names, the history's reading and writing, placing,
//! pruning, and `record` stopped by a crash at each step and run again.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::time::SystemTime;

use super::history::{RevLines, append_history};
use super::place::{claim_reason, place, prune_done, suffixed};
use super::record::{CRASH_AFTER, attempts, step_name};
use super::*;
use crate::queue::spool::Payload;
use crate::queue::spool::{ARCHIVE_NAME, Failure, JobState, Step};
use crate::source::drop::DropLayout;

#[test]
fn times_are_rfc3339_utc() {
    assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339_utc(253_402_300_800), "10000-01-01T00:00:00Z");
}

#[test]
fn collision_suffixes_keep_the_extension() {
    let s = |name: &str, n| suffixed(OsStr::new(name), n).into_string().unwrap();
    assert_eq!(s("app.tar.gz", 0), "app.tar.gz");
    assert_eq!(s("app.tar.gz", 1), "app.1.tar.gz");
    assert_eq!(s("app.TAR.GZ", 2), "app.2.TAR.GZ");
    assert_eq!(s("v1.2.tgz", 3), "v1.2.3.tgz");
    assert_eq!(s("bundle.zip", 1), "bundle.1.zip");
    assert_eq!(s("README", 1), "README.1");
    assert_eq!(s(".tar.gz", 1), ".tar.1.gz");
    assert_eq!(s(".hidden", 1), ".hidden.1");
}

#[test]
fn durations_read_like_a_person_would_say_them() {
    assert_eq!(human_duration(420), "420 ms");
    assert_eq!(human_duration(4_250), "4.2 s");
    assert_eq!(human_duration(48_000), "48 s");
    assert_eq!(human_duration(125_000), "2 min 05 s");
    assert_eq!(human_duration(3_720_000), "1 h 02 min");
}

#[test]
fn lines_are_read_backwards_across_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    fs::write(
        &path,
        "first line\n\nsecond\nthird one, longer than a chunk\n",
    )
    .unwrap();
    let mut lines = RevLines::open(&path, 4).unwrap().unwrap();
    let mut got = Vec::new();
    while let Some(line) = lines.next_line().unwrap() {
        got.push(String::from_utf8(line).unwrap());
    }
    assert_eq!(
        got,
        [
            "",
            "third one, longer than a chunk",
            "second",
            "",
            "first line"
        ]
    );
    assert!(
        RevLines::open(&dir.path().join("none"), 4)
            .unwrap()
            .is_none()
    );
}

#[test]
fn old_and_damaged_lines_are_tolerated_or_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(HISTORY_NAME);
    fs::write(
        &path,
        concat!(
            "{\"app\":\"a\",\"job\":\"1\",\"outcome\":\"succeeded\",\"extra\":[1]}\n",
            "not json\n",
            "{\"app\":\"a\",\"job\":\"2\",\"outcome\":\"exploded\"}\n",
            "\n",
            "{\"app\":\"b\",\"job\":\"3\",\"outcome\":\"failed\",\"attempts\":2}\n",
        ),
    )
    .unwrap();
    let read = read_history_counted(&path, None, None).unwrap();
    assert_eq!(read.skipped, 1);
    let jobs: Vec<&str> = read.entries.iter().map(|e| e.job.as_str()).collect();
    assert_eq!(jobs, ["1", "2", "3"]);
    assert_eq!(read.entries[0].outcome, Outcome::Succeeded);
    assert_eq!(read.entries[1].outcome, Outcome::Unknown);
    assert_eq!(read.entries[2].attempts, 2);
    assert_eq!(read.entries[2].moved_to, None);
}

#[test]
fn an_unterminated_last_line_is_closed_before_appending() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(HISTORY_NAME);
    fs::write(&path, "{\"app\":\"a\",\"job\":\"cut").unwrap();
    let entry = HistoryEntry {
        app: "a".into(),
        job: "2".into(),
        ..HistoryEntry::default()
    };
    append_history(&path, &entry).unwrap();
    let read = read_history_counted(&path, None, None).unwrap();
    assert_eq!(read.skipped, 1);
    assert_eq!(read.entries, [entry]);
}

#[test]
fn pruning_keeps_the_newest_archives_and_nothing_else_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path();
    let base = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for (i, name) in ["a.tar.gz", "b.tgz", "c.tar.gz", "d.tar.gz"]
        .iter()
        .enumerate()
    {
        let file = File::create(done.join(name)).unwrap();
        file.set_modified(base + std::time::Duration::from_secs(i as u64))
            .unwrap();
    }
    fs::write(done.join("notes.txt"), "keep me").unwrap();
    fs::write(done.join(".x.tar.gz.tmp"), "keep me").unwrap();
    // "a" was just placed: it counts as the newest whatever its time.
    let deleted = prune_done(done, 2, Some(&done.join("a.tar.gz")), &[]).unwrap();
    assert_eq!(deleted, [done.join("b.tgz"), done.join("c.tar.gz")]);
    for kept in ["a.tar.gz", "d.tar.gz", "notes.txt", ".x.tar.gz.tmp"] {
        assert!(done.join(kept).exists(), "{kept}");
    }
}

#[test]
fn placing_never_overwrites_and_finishes_a_half_done_move() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    fs::create_dir(&spool).unwrap();
    let src = spool.join("archive.tar.gz");
    fs::write(&src, "new").unwrap();
    let failed = dir.path().join("failed");
    fs::create_dir(&failed).unwrap();
    fs::write(failed.join("app.tar.gz"), "old").unwrap();
    fs::write(failed.join("app.1.tar.gz.reason.txt"), "stale").unwrap();
    let mut seen = Vec::new();
    let why = |d: &Path| Some(format!("why {}", d.display()));
    let dest = place(&src, &failed, OsStr::new("app.tar.gz"), &why, None, |d| {
        seen.push(d.to_path_buf());
        Ok(())
    })
    .unwrap();
    assert_eq!(dest, failed.join("app.2.tar.gz"));
    // app.1 was tried (persisted first), then found taken by its reason file.
    assert_eq!(seen, vec![failed.join("app.1.tar.gz"), dest.clone()]);
    assert_eq!(
        fs::read_to_string(failed.join("app.tar.gz")).unwrap(),
        "old"
    );
    assert_eq!(
        fs::read_to_string(failed.join("app.1.tar.gz.reason.txt")).unwrap(),
        "stale"
    );
    assert_eq!(fs::read_to_string(&dest).unwrap(), "new");
    assert_eq!(
        fs::read_to_string(DropLayout::reason_path(&dest)).unwrap(),
        format!("why {}", dest.display())
    );
    assert!(!src.exists());

    // Crash after the link, before the spool's name was removed.
    fs::hard_link(&dest, &src).unwrap();
    let again = place(
        &src,
        &failed,
        OsStr::new("app.tar.gz"),
        &why,
        Some(&dest),
        |_| Ok(()),
    )
    .unwrap();
    assert_eq!(again, dest);
    assert!(!src.exists());
    assert!(!failed.join("app.3.tar.gz").exists());
}

#[test]
fn a_name_taken_after_its_reason_was_written_loses_that_reason() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("archive.tar.gz");
    fs::write(&src, "new").unwrap();
    let failed = dir.path().join("failed");
    fs::create_dir(&failed).unwrap();
    let why = |d: &Path| Some(format!("why {}", d.display()));
    // An earlier run chose app.tar.gz and wrote its reason; then a person dropped a file
    // of that name into failed/ before the archive moved in.
    let chosen = failed.join("app.tar.gz");
    assert!(
        claim_reason(
            &DropLayout::reason_path(&chosen),
            &format!("why {}", chosen.display())
        )
        .unwrap()
    );
    fs::write(&chosen, "someone else's").unwrap();
    let dest = place(
        &src,
        &failed,
        OsStr::new("app.tar.gz"),
        &why,
        Some(&chosen),
        |_| Ok(()),
    )
    .unwrap();
    assert_eq!(dest, failed.join("app.1.tar.gz"));
    assert!(
        !DropLayout::reason_path(&chosen).exists(),
        "no reason describes the other file"
    );
    assert!(DropLayout::reason_path(&dest).exists());
}

#[test]
fn attempts_count_the_final_try_once() {
    let mut job = Job {
        id: "j".into(),
        app: "a".into(),
        git_ref: "r".into(),
        git_ref_given: false,
        payload: Payload::Url { url: "u".into() },
        created_at: 0,
        seq: None,
        started_at: Some(0),
        failed_attempts: 2,
        aborted_retries: 1,
        source_renewals: 0,
        check: None,
        state: JobState::Succeeded {
            deployment_id: "d".into(),
        },
    };
    assert_eq!(attempts(&job), 4);
    let failure = Failure {
        step: Step::Upload,
        reason: "r".into(),
        status: None,
        deployment_id: None,
        log_tail: Vec::new(),
        http_status: None,
        gave_up: true,
    };
    job.state = JobState::Failed(failure.clone());
    assert_eq!(attempts(&job), 3);
    job.state = JobState::Failed(Failure {
        gave_up: false,
        ..failure
    });
    assert_eq!(attempts(&job), 4);
    job.failed_attempts = 0;
    job.aborted_retries = 0;
    job.state = JobState::Superseded { by: "k".into() };
    assert_eq!(attempts(&job), 0);
}

/// A drop folder and a spool holding one finished job for `drop/app.tar.gz`.
fn finished_job(state: JobState) -> (tempfile::TempDir, Outcomes, Job) {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path().join("state/spool")).unwrap();
    fs::create_dir(dir.path().join("drop")).unwrap();
    let (id, tmp) = spool.new_job_dir().unwrap();
    fs::write(tmp.join(ARCHIVE_NAME), b"archive bytes").unwrap();
    let mut job = Job {
        id,
        app: "my-app".into(),
        git_ref: "my-app-20261125174258-deadbeef".into(),
        git_ref_given: false,
        payload: Payload::Archive {
            original: dir.path().join("drop/app.tar.gz"),
            summary: crate::archive::inspect::Summary {
                root: "app".into(),
                entries: 1,
                files: 1,
                uncompressed_bytes: 1024,
                compressed_bytes: 13,
                sha256: "ab".repeat(32),
            },
            tree_digest: None,
            copied: false,
        },
        created_at: crate::queue::spool::now(),
        seq: None,
        started_at: None,
        failed_attempts: 0,
        aborted_retries: 0,
        source_renewals: 0,
        check: None,
        state,
    };
    spool.commit_new(&tmp, &mut job).unwrap();
    let outcomes = Outcomes::new(&dir.path().join("state"), spool);
    (dir, outcomes, job)
}

fn crash_after<T>(point: &'static str, f: impl FnOnce() -> T) -> T {
    CRASH_AFTER.with(|c| c.set(Some(point)));
    let result = f();
    CRASH_AFTER.with(|c| c.set(None));
    result
}

fn history_lines(outcomes: &Outcomes) -> Vec<String> {
    fs::read_to_string(outcomes.history_path())
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_crash_after_the_move_neither_moves_again_nor_loses_the_line() {
    let failure = Failure {
        step: Step::Follow,
        reason: "deployment 7 ended with status build-error".into(),
        status: Some("build-error".into()),
        deployment_id: Some("7".into()),
        log_tail: vec!["npm ERR! missing script: start".into()],
        http_status: None,
        gave_up: false,
    };
    let (dir, outcomes, job) = finished_job(JobState::Failed(failure));
    let failed = dir.path().join("drop/failed");
    let err = crash_after("move", || outcomes.record(&job, 5)).unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    assert!(failed.join("app.tar.gz").exists());
    assert!(history_lines(&outcomes).is_empty());

    let entry = outcomes.record(&job, 5).unwrap();
    assert_eq!(history_lines(&outcomes).len(), 1);
    let names: Vec<_> = fs::read_dir(&failed)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(failed.join("app.tar.gz.reason.txt").exists());
    assert_eq!(
        entry.moved_to.as_deref(),
        Some(&*failed.join("app.tar.gz").to_string_lossy())
    );
    assert!(!outcomes.spool.job_dir(&job.id).exists());
}

#[test]
fn a_crash_between_the_reason_and_the_move_finishes_under_the_same_name() {
    let failure = Failure {
        step: Step::Upload,
        reason: "upload: HTTP 500".into(),
        status: None,
        deployment_id: None,
        log_tail: Vec::new(),
        http_status: Some(500),
        gave_up: false,
    };
    let (dir, outcomes, job) = finished_job(JobState::Failed(failure));
    let failed = dir.path().join("drop/failed");
    let err = crash_after("reason", || outcomes.record(&job, 5)).unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    // The reason is there, complete; the archive is not yet.
    let reason = fs::read_to_string(failed.join("app.tar.gz.reason.txt")).unwrap();
    assert!(reason.contains("upload: HTTP 500"), "{reason}");
    assert!(!failed.join("app.tar.gz").exists());

    let entry = outcomes.record(&job, 5).unwrap();
    let mut names: Vec<_> = fs::read_dir(&failed)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["app.tar.gz", "app.tar.gz.reason.txt"]);
    assert_eq!(
        fs::read_to_string(failed.join("app.tar.gz.reason.txt")).unwrap(),
        reason,
        "the same reason, not a second one"
    );
    assert_eq!(
        entry.moved_to.as_deref(),
        Some(&*failed.join("app.tar.gz").to_string_lossy())
    );
    assert_eq!(history_lines(&outcomes).len(), 1);
}

#[test]
fn a_crash_after_the_history_line_writes_no_second_one() {
    let (dir, outcomes, job) = finished_job(JobState::Succeeded {
        deployment_id: "42".into(),
    });
    let first = crash_after("history", || outcomes.record(&job, 5)).unwrap_err();
    assert!(first.to_string().contains("simulated crash"), "{first}");
    assert_eq!(history_lines(&outcomes).len(), 1);
    assert!(outcomes.spool.job_dir(&job.id).exists());
    // Another job's line lands in between, as on a restart recovering several jobs.
    append_history(
        &outcomes.history_path(),
        &HistoryEntry {
            app: "other".into(),
            job: "other-job".into(),
            ..HistoryEntry::default()
        },
    )
    .unwrap();

    let entry = outcomes.record(&job, 5).unwrap();
    let lines = history_lines(&outcomes);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.contains(&job.id)).count(), 1);
    assert_eq!(entry.deployment_id.as_deref(), Some("42"));
    assert!(dir.path().join("drop/done/app.tar.gz").exists());
    assert!(!dir.path().join("drop/done/app.1.tar.gz").exists());
    assert!(!outcomes.spool.job_dir(&job.id).exists());
    // And once more, after it all went through: the same entry back, nothing written.
    assert_eq!(outcomes.record(&job, 5).unwrap(), entry);
    assert_eq!(history_lines(&outcomes).len(), 2);
}

#[test]
fn an_unfinished_job_is_refused() {
    let (_dir, outcomes, job) = finished_job(JobState::Queued);
    let err = outcomes.record(&job, 5).unwrap_err().to_string();
    assert!(
        err.contains("app.tar.gz") && err.contains("still queued"),
        "{err}"
    );
    assert!(outcomes.spool.archive_path(&job.id).exists());
}

#[test]
fn step_names_are_the_record_names() {
    assert_eq!(step_name(Step::CreateSource), "create_source");
    assert_eq!(step_name(Step::Follow), "follow");
}

#[test]
fn the_origin_places_a_file_with_the_entry_the_fleet_holds() {
    // Locally the job is as it came in (queued); another node drove it to its end.
    let (dir, outcomes, local) = finished_job(JobState::Queued);
    let mut driven = local.clone();
    driven.state = JobState::Succeeded {
        deployment_id: "99".into(),
    };
    let given = HistoryEntry {
        time: "2026-12-08T00:00:00Z".into(),
        app: "my-app".into(),
        job: local.id.clone(),
        file: "app.tar.gz".into(),
        git_ref: Some(local.git_ref.clone()),
        outcome: Outcome::Succeeded,
        deployment_id: Some("99".into()),
        // The driver's view: no file of ours was moved there.
        moved_to: Some("/on/another/node/done/app.tar.gz".into()),
        ..HistoryEntry::default()
    };
    let err = crash_after("history", || {
        outcomes.record_given(&driven, given.clone(), 5)
    })
    .unwrap_err();
    assert!(err.to_string().contains("simulated crash"), "{err}");
    let entry = outcomes.record_given(&driven, given.clone(), 5).unwrap();
    let done = dir.path().join("drop/done/app.tar.gz");
    assert!(done.exists());
    assert_eq!(
        entry.time, given.time,
        "the fleet's entry, not one made here"
    );
    assert_eq!(entry.deployment_id.as_deref(), Some("99"));
    assert_eq!(entry.moved_to.as_deref(), Some(&*done.to_string_lossy()));
    assert_eq!(history_lines(&outcomes).len(), 1);
    assert!(!outcomes.spool.job_dir(&local.id).exists());
    // Placed already: the same entry back, nothing written or moved.
    assert_eq!(outcomes.record_given(&driven, given, 5).unwrap(), entry);
    assert_eq!(history_lines(&outcomes).len(), 1);
}
