//! The store of verified archives and attention flags, on real files.

use std::path::Path;

use super::store::{Attention, KEEP_VERIFIED, Store};
use crate::archive::inspect::Summary;
use crate::queue::spool::{Job, Payload};

fn job(id: &str, archive: &Path, sha: &str) -> Job {
    let bytes = std::fs::metadata(archive).unwrap().len();
    Job::new(
        id.to_string(),
        "app",
        format!("app-{id}"),
        Payload::Archive {
            original: format!("/drop/{id}.tar.gz").into(),
            summary: Summary {
                root: "app".into(),
                entries: 1,
                files: 1,
                uncompressed_bytes: 10,
                compressed_bytes: bytes,
                sha256: sha.to_string(),
            },
            tree_digest: None,
            copied: false,
        },
        1,
    )
}

#[test]
fn verified_archives_are_kept_newest_first_and_only_the_last_few() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    assert!(store.last("app").unwrap().is_none());
    for n in 0..KEEP_VERIFIED + 2 {
        let archive = dir.path().join(format!("a{n}"));
        std::fs::write(&archive, format!("bytes {n}")).unwrap();
        assert!(
            store
                .keep(
                    &job(&format!("j{n}"), &archive, &format!("sha{n}")),
                    &archive
                )
                .unwrap()
        );
        // Keeping again is harmless.
        store
            .keep(
                &job(&format!("j{n}"), &archive, &format!("sha{n}")),
                &archive,
            )
            .unwrap();
    }
    let kept = store.kept("app").unwrap();
    let jobs: Vec<&str> = kept.iter().map(|k| k.job.as_str()).collect();
    assert_eq!(jobs, ["j4", "j3", "j2"]);
    assert_eq!(
        std::fs::read_to_string(store.archive_path(&kept[0])).unwrap(),
        "bytes 4"
    );
    assert!(!dir.path().join("verified/app/j0.tar.gz").exists());
    // The same content verified again (a rollback) is listed once, as the newest.
    let again = dir.path().join("again");
    std::fs::write(&again, "bytes 3").unwrap();
    store.keep(&job("j5", &again, "sha3"), &again).unwrap();
    let jobs: Vec<String> = store
        .kept("app")
        .unwrap()
        .into_iter()
        .map(|k| k.job)
        .collect();
    assert_eq!(jobs, ["j5", "j4", "j2"]);
    // Under every name it was verified under.
    let newest = store.last("app").unwrap().unwrap();
    for name in ["j3", "app-j3", "j3.tar.gz", "j5", "app-j5", "j5.tar.gz"] {
        assert!(newest.answers_to(name), "{name}: {newest:?}");
    }
}

#[test]
fn a_rollback_keeps_the_name_of_what_it_brought_back_and_no_second_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let v1 = dir.path().join("v1");
    std::fs::write(&v1, "bytes v1").unwrap();
    store.keep(&job("j1", &v1, "sha1"), &v1).unwrap();
    let v2 = dir.path().join("v2");
    std::fs::write(&v2, "bytes v2").unwrap();
    store.keep(&job("j2", &v2, "sha2"), &v2).unwrap();
    for n in 0..2 {
        let mut rollback = job(&format!("j1.r{n}"), &v1, "sha1");
        rollback.check = Some(crate::queue::check::Check {
            rollback: Some(crate::queue::check::RollbackOf {
                from_job: "j2".into(),
                from_ref: "app-j2".into(),
                to_job: "j1".into(),
                to_ref: "app-j1".into(),
                automatic: true,
                from_file: "j2.tar.gz".into(),
                to_file: "j1.tar.gz".into(),
            }),
            ..Default::default()
        });
        store.keep(&rollback, &v1).unwrap();
    }
    let kept = store.kept("app").unwrap();
    let names: Vec<(&str, &str, &str)> = kept
        .iter()
        .map(|k| (k.job.as_str(), k.git_ref.as_str(), k.file.as_str()))
        .collect();
    assert_eq!(
        names,
        [("j1", "app-j1", "j1.tar.gz"), ("j2", "app-j2", "j2.tar.gz")]
    );
    assert!(kept[0].answers_to("j1.r0") && kept[0].answers_to("app-j1.r1"));
    let files = std::fs::read_dir(dir.path().join("verified/app"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tar.gz"))
        })
        .count();
    assert_eq!(files, 2, "one copy of each content");
}

#[test]
fn a_url_job_has_nothing_to_keep() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let url = Job::new(
        "u".into(),
        "app",
        "r".into(),
        Payload::Url {
            url: "https://x/a".into(),
        },
        1,
    );
    assert!(!store.keep(&url, Path::new("/nonexistent")).unwrap());
    assert!(store.kept("app").unwrap().is_empty());
}

#[test]
fn the_last_verified_archive_is_recognised_as_a_link_or_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(&dir.path().join("state"));
    let archive = dir.path().join("v1.tar.gz");
    std::fs::write(&archive, b"the archive").unwrap();
    // sha256 of "the archive"
    let sha = {
        use sha2::Digest as _;
        sha2::Sha256::digest(b"the archive")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    store.keep(&job("j1", &archive, &sha), &archive).unwrap();
    let protected = store.protected();
    assert_eq!(protected.len(), 1);
    assert!(protected[0].matches(&archive), "a hard link");
    let copy = dir.path().join("copy.tar.gz");
    std::fs::write(&copy, b"the archive").unwrap();
    assert!(protected[0].matches(&copy), "same size and sha256");
    let other = dir.path().join("other.tar.gz");
    std::fs::write(&other, b"the ARCHIVE").unwrap();
    assert!(!protected[0].matches(&other), "same size, other bytes");
}

#[test]
fn attention_is_set_read_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    assert!(store.attention("app").is_none());
    let flag = Attention {
        app: "app".into(),
        job: "j".into(),
        reason: "the rollback is unhealthy too".into(),
        since: 5,
    };
    store.set_attention(&flag).unwrap();
    assert_eq!(store.attention("app"), Some(flag.clone()));
    assert_eq!(store.all_attention(), vec![flag]);
    assert!(store.clear_attention("app").unwrap());
    assert!(!store.clear_attention("app").unwrap());
    assert!(store.attention("app").is_none());
}

mod target {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::store::Store;
    use super::super::{VerifiedTarget, Wiring};
    use crate::config::VerifyConfig;
    use crate::queue::check::{Check, Verdict};
    use crate::queue::lane::{BoxFuture, Target};
    use crate::queue::observe::{Event, Observer};
    use crate::queue::spool::{Job, JobState, Spool, SpoolError};

    /// Answers every request with `status` and a short body, over loopback; returns its URL.
    async fn app(status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/up", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        url
    }

    /// Counts the runs it is asked for, and makes them succeed.
    struct Counted(AtomicUsize, Spool);

    impl Target for Counted {
        fn run<'a>(&'a self, job: &'a mut Job) -> BoxFuture<'a, Result<(), SpoolError>> {
            Box::pin(async move {
                self.0.fetch_add(1, Ordering::SeqCst);
                job.state = JobState::Succeeded {
                    deployment_id: "d-1".into(),
                };
                self.1.save(job)
            })
        }
    }

    struct Quiet;

    impl Observer for Quiet {
        fn event(&self, _: &Job, _: &Event<'_>) {}
    }

    struct Bench {
        dir: tempfile::TempDir,
        spool: Spool,
        store: Store,
        inner: Arc<Counted>,
    }

    fn bench() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let store = Store::new(dir.path());
        let inner = Arc::new(Counted(AtomicUsize::new(0), spool.clone()));
        Bench {
            dir,
            spool,
            store,
            inner,
        }
    }

    impl Bench {
        fn target(&self, url: String) -> VerifiedTarget {
            let cfg = VerifyConfig {
                url,
                expect: 200,
                contains: Some("hello".into()),
                timeout: Duration::from_secs(2),
                attempts: 2,
                interval: Duration::from_millis(10),
                warmup: Duration::ZERO,
                soak: Duration::ZERO,
                rollback: true,
            };
            let wiring = Wiring {
                spool: self.spool.clone(),
                store: self.store.clone(),
                observer: Arc::new(Quiet),
                board: Arc::new(crate::live::Board::in_memory()),
                shutdown: crate::shutdown::Shutdown::never(),
                http: Wiring::probe_client().unwrap(),
            };
            VerifiedTarget::new(self.inner.clone(), Some(cfg), wiring)
        }

        /// A job with a real archive in the spool.
        fn job(&self) -> Job {
            let file = self.dir.path().join("v1.tar.gz");
            std::fs::write(&file, b"not really gzip").unwrap();
            let (id, tmp) = self.spool.new_job_dir().unwrap();
            std::fs::copy(&file, tmp.join(crate::queue::spool::ARCHIVE_NAME)).unwrap();
            let mut job = super::job(&id, &file, "sha-v1");
            job.id = id;
            self.spool.commit_new(&tmp, &mut job).unwrap();
            job
        }
    }

    #[tokio::test]
    async fn a_success_whose_check_was_cut_by_a_crash_is_checked_without_deploying_again() {
        let b = bench();
        let target = b.target(app(200).await);
        let mut job = b.job();
        // As a crash leaves it: the platform said `success`, the check had not started.
        job.state = JobState::Succeeded {
            deployment_id: "d-1".into(),
        };
        job.check = Some(Check::pending());
        b.spool.save(&job).unwrap();
        assert!(!job.is_done());
        target.run(&mut job).await.unwrap();
        assert_eq!(b.inner.0.load(Ordering::SeqCst), 0, "not deployed again");
        assert!(job.is_done());
        let check = job.check.as_ref().unwrap();
        assert_eq!(check.verdict, Some(Verdict::Verified));
        assert_eq!(check.last.as_ref().unwrap().excerpt, "hello");
        assert_eq!(b.store.last("app").unwrap().unwrap().job, job.id);
    }

    #[tokio::test]
    async fn an_unhealthy_job_makes_one_rollback_however_often_it_is_resumed() {
        let b = bench();
        // A verified archive to roll back to.
        let mut first = b.job();
        b.target(app(200).await).run(&mut first).await.unwrap();
        assert_eq!(
            first.check.as_ref().unwrap().verdict,
            Some(Verdict::Verified)
        );
        let broken = b.target(app(500).await);
        let mut second = b.job();
        broken.run(&mut second).await.unwrap();
        let JobState::Unhealthy { reason, .. } = &second.state else {
            panic!("{:?}", second.state);
        };
        assert!(reason.contains("HTTP 500"), "{reason}");
        let follow_up = second.check.as_ref().unwrap().follow_up.clone().unwrap();
        let rollback = b.spool.load(&follow_up).unwrap();
        assert_eq!(rollback.rollback().unwrap().to_job, first.id);
        assert!(rollback.rollback().unwrap().automatic);
        // Resumed from its record (state `verifying`, the verdict and the rollback's id
        // written) as a crash before the rollback job was made leaves it, then once more
        // after: the same rollback job, made once.
        b.spool.remove(&follow_up).unwrap();
        for _ in 0..2 {
            let mut again = second.clone();
            again.state = JobState::Verifying {
                deployment_id: Some("d-1".into()),
            };
            broken.run(&mut again).await.unwrap();
            assert_eq!(
                again.check.as_ref().unwrap().follow_up,
                Some(follow_up.clone())
            );
            assert!(matches!(again.state, JobState::Unhealthy { .. }));
        }
        let rollbacks = b
            .spool
            .jobs()
            .unwrap()
            .into_iter()
            .flatten()
            .filter(|j| j.rollback().is_some())
            .count();
        assert_eq!(rollbacks, 1);
        assert_eq!(
            b.inner.0.load(Ordering::SeqCst),
            2,
            "two deployments, no more"
        );
    }
}
