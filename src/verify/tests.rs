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
