//! The store boundary: the same cases over `LocalStore` (a state_dir) and `PgStore` (a real
//! throw-away PostgreSQL from `testpg`), then the cases only the fleet's store has.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dropdeploy::archive::inspect::Summary;
use dropdeploy::config::Secret;
use dropdeploy::fleet::{MigrateError, PgStore, SCHEMA_VERSION};
use dropdeploy::queue::spool::{Job, Payload};
use dropdeploy::queue::store::{LocalStore, Store, StoreError};
use sha2::Digest;

/// Two nodes ("a" and "b") on one store, and what keeps it alive.
struct Fixture {
    a: Box<dyn Store>,
    b: Box<dyn Store>,
    dir: tempfile::TempDir,
    _backend: Box<dyn Any>,
}

fn local() -> Fixture {
    let state = tempfile::tempdir().unwrap();
    Fixture {
        a: Box::new(LocalStore::open(state.path(), "a").unwrap()),
        b: Box::new(LocalStore::open(state.path(), "b").unwrap()),
        dir: tempfile::tempdir().unwrap(),
        _backend: Box::new(state),
    }
}

fn pg() -> Fixture {
    let cluster = testpg::Cluster::start();
    let url = Secret::new(cluster.url());
    Fixture {
        a: Box::new(PgStore::connect(&url, "a").unwrap()),
        b: Box::new(PgStore::connect(&url, "b").unwrap()),
        dir: tempfile::tempdir().unwrap(),
        _backend: Box::new(cluster),
    }
}

/// Each case over both stores: `<case>::local` and `<case>::pg`.
macro_rules! both {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn local() {
                super::$case(&super::local());
            }
            #[test]
            fn pg() {
                super::$case(&super::pg());
            }
        }
    )*};
}

both!(
    add_lists_in_arrival_order_across_apps,
    add_is_idempotent,
    save_then_load,
    save_without_the_lease_is_fenced,
    a_lease_ends_and_moves_on_with_a_greater_token,
    finish_records_once_and_the_job_leaves,
    fetch_archive_round_trips_a_multi_mib_archive,
    release_lets_another_node_take_the_lane_at_once,
);

/// An archive file of `len` random bytes in `dir`, and its SHA-256.
fn archive(dir: &Path, name: &str, len: usize) -> (PathBuf, String) {
    let bytes: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..))
        .take(len)
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, hex::encode(sha2::Sha256::digest(&bytes)))
}

fn job(id: &str, app: &str, sha256: &str, original: &Path) -> Job {
    Job::new(
        id.into(),
        app,
        format!("ref-{id}"),
        Payload::Archive {
            original: original.to_path_buf(),
            summary: Summary {
                root: "app".into(),
                entries: 1,
                files: 1,
                uncompressed_bytes: 10,
                compressed_bytes: 10,
                sha256: sha256.into(),
            },
            tree_digest: None,
            copied: false,
        },
        1_700_000_000,
    )
}

/// A job added by node `a` with a small archive.
fn added(f: &Fixture, id: &str, app: &str) -> Job {
    add_to(&*f.a, f.dir.path(), id, app)
}

/// A job added to `store` with a small archive (made in `dir`), as if dropped in `dir/drop`.
fn add_to(store: &dyn Store, dir: &Path, id: &str, app: &str) -> Job {
    let (path, sha) = archive(dir, &format!("{id}.tar.gz"), 1000);
    let mut job = job(
        id,
        app,
        &sha,
        &dir.join("drop").join(format!("{id}.tar.gz")),
    );
    store.add(&mut job, Some(&path)).unwrap();
    job
}

/// Two fleet nodes ("a", "b") on a throw-away database, and a folder for files.
struct Fleet {
    a: PgStore,
    b: PgStore,
    dir: tempfile::TempDir,
    cluster: testpg::Cluster,
}

fn fleet() -> Fleet {
    let cluster = testpg::Cluster::start();
    let url = Secret::new(cluster.url());
    Fleet {
        a: PgStore::connect(&url, "a").unwrap(),
        b: PgStore::connect(&url, "b").unwrap(),
        dir: tempfile::tempdir().unwrap(),
        cluster,
    }
}

fn ids(jobs: &[Job]) -> Vec<&str> {
    jobs.iter().map(|j| j.id.as_str()).collect()
}

fn entry(job: &Job) -> serde_json::Value {
    serde_json::json!({"job": job.id, "app": job.app, "outcome": "succeeded", "attempts": 1})
}

fn add_lists_in_arrival_order_across_apps(f: &Fixture) {
    let one = added(f, "j1", "app-x");
    let two = added(f, "j2", "app-y");
    let three = added(f, "j3", "app-x");
    assert_eq!(ids(&f.b.jobs(None).unwrap()), ["j1", "j2", "j3"]);
    assert_eq!(ids(&f.b.jobs(Some("app-x")).unwrap()), ["j1", "j3"]);
    assert!(
        one.seq < two.seq && two.seq < three.seq,
        "{:?}",
        [one.seq, two.seq, three.seq]
    );
}

fn add_is_idempotent(f: &Fixture) {
    let first = added(f, "j1", "app-x");
    let mut again = first.clone();
    again.seq = None;
    let (path, _) = archive(f.dir.path(), "again.tar.gz", 10);
    f.b.add(&mut again, Some(&path)).unwrap();
    assert_eq!(again.seq, first.seq);
    assert_eq!(ids(&f.a.jobs(None).unwrap()), ["j1"]);
}

fn save_then_load(f: &Fixture) {
    let mut job = added(f, "j1", "app-x");
    assert!(
        f.a.acquire("app-x", Duration::from_secs(60))
            .unwrap()
            .is_some()
    );
    job.failed_attempts = 3;
    job.started_at = Some(1_700_000_100);
    f.a.save(&job).unwrap();
    assert_eq!(f.b.load("j1").unwrap(), job);
    assert!(matches!(f.b.load("nope"), Err(StoreError::Missing(_))));
}

fn save_without_the_lease_is_fenced(f: &Fixture) {
    let mut job = added(f, "j1", "app-x");
    job.failed_attempts = 1;
    assert!(matches!(f.a.save(&job), Err(StoreError::Fenced { .. })));
    assert!(
        f.a.acquire("app-x", Duration::from_secs(60))
            .unwrap()
            .is_some()
    );
    assert!(matches!(f.b.save(&job), Err(StoreError::Fenced { .. })));
    assert_eq!(
        f.a.load("j1").unwrap().failed_attempts,
        0,
        "a fenced save writes nothing"
    );
}

fn a_lease_ends_and_moves_on_with_a_greater_token(f: &Fixture) {
    let mut job = added(f, "j1", "app-x");
    let lease = Duration::from_secs(1);
    let held =
        f.a.acquire("app-x", lease)
            .unwrap()
            .expect("a takes the free lane");
    assert_eq!(f.a.lease_of("app-x"), Some(held.clone()));
    assert!(
        f.b.acquire("app-x", lease).unwrap().is_none(),
        "b is refused while a holds it"
    );
    // Until the lease ends, a may write; once it has ended, b takes the lane.
    let deadline = Instant::now() + Duration::from_secs(30);
    let taken = loop {
        let _ = f.a.save(&job);
        if let Some(taken) = f.b.acquire("app-x", Duration::from_secs(60)).unwrap() {
            break taken;
        }
        assert!(Instant::now() < deadline, "b never took the lane");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(taken.token > held.token, "{} > {}", taken.token, held.token);
    job.failed_attempts = 7;
    assert!(matches!(f.a.save(&job), Err(StoreError::Fenced { .. })));
    assert!(matches!(
        f.a.finish(&job, &entry(&job)),
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(f.a.renew(&held, lease).unwrap(), None);
    f.b.save(&job).unwrap();
    assert_eq!(f.a.load("j1").unwrap().failed_attempts, 7);
}

fn finish_records_once_and_the_job_leaves(f: &Fixture) {
    let job = added(f, "j1", "app-x");
    let other = added(f, "j2", "app-x");
    f.b.acquire("app-x", Duration::from_secs(60))
        .unwrap()
        .unwrap();
    f.b.finish(&job, &entry(&job)).unwrap();
    let history = f.a.history(None, 10).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].job.as_str(), history[0].app.as_str()),
        ("j1", "app-x")
    );
    assert_eq!(history[0].entry, entry(&job));
    assert_eq!(ids(&f.a.jobs(None).unwrap()), ["j2"]);
    f.b.finish(&job, &entry(&job)).unwrap();
    assert_eq!(f.a.history(Some("app-x"), 10).unwrap().len(), 1);
    f.b.finish(&other, &entry(&other)).unwrap();
    let last = f.a.history(None, 1).unwrap();
    assert_eq!(ids_of(&last), ["j2"], "the newest last, at most limit");
    assert!(f.a.history(Some("app-y"), 10).unwrap().is_empty());
}

fn ids_of(finished: &[dropdeploy::queue::store::Finished]) -> Vec<&str> {
    finished.iter().map(|f| f.job.as_str()).collect()
}

fn fetch_archive_round_trips_a_multi_mib_archive(f: &Fixture) {
    let (path, sha) = archive(f.dir.path(), "big.tar.gz", 3 * 1024 * 1024 + 12345);
    let mut big = job("big", "app-x", &sha, &path);
    f.a.add(&mut big, Some(&path)).unwrap();
    let copy = f.dir.path().join("copy.tar.gz");
    f.b.fetch_archive("big", &copy).unwrap();
    assert!(std::fs::read(&copy).unwrap() == std::fs::read(&path).unwrap());
    // A file already at the target is neither overwritten nor removed.
    let there = f.dir.path().join("there.tar.gz");
    std::fs::write(&there, b"mine").unwrap();
    assert!(f.b.fetch_archive("big", &there).is_err());
    assert_eq!(std::fs::read(&there).unwrap(), b"mine");
}

fn release_lets_another_node_take_the_lane_at_once(f: &Fixture) {
    let held =
        f.a.acquire("app-x", Duration::from_secs(600))
            .unwrap()
            .unwrap();
    f.a.release(&held).unwrap();
    assert_eq!(f.a.lease_of("app-x"), None);
    let taken = f.b.acquire("app-x", Duration::from_secs(600)).unwrap();
    assert!(taken.expect("b takes the released lane").token > held.token);
}

// ---- PostgreSQL only ----

/// Runs statements on the cluster's database over a connection of the test's own.
fn sql(url: &str, statements: &str) {
    let (url, statements) = (url.to_owned(), statements.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client.batch_execute(&statements).await.unwrap();
        })
    })
    .join()
    .unwrap();
}

#[test]
fn migrations_twice_change_nothing() {
    let cluster = testpg::Cluster::start();
    let url = Secret::new(cluster.url());
    let store = PgStore::connect(&url, "a").unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.migrate().unwrap(), Vec::<i32>::new());
    let other = PgStore::new(&url, "b").unwrap();
    assert_eq!(other.migrate().unwrap(), Vec::<i32>::new());
    assert_eq!(other.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_fresh_database_gets_every_migration() {
    let cluster = testpg::Cluster::start();
    let store = PgStore::new(&Secret::new(cluster.url()), "a").unwrap();
    assert_eq!(store.schema_version().unwrap(), 0);
    let all: Vec<i32> = dropdeploy::fleet::MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(store.migrate().unwrap(), all);
}

#[test]
fn a_schema_ahead_of_this_binary_is_refused() {
    let cluster = testpg::Cluster::start();
    let url = Secret::new(cluster.url());
    drop(PgStore::connect(&url, "a").unwrap());
    let ahead = SCHEMA_VERSION + 1;
    sql(
        cluster.url(),
        &format!("INSERT INTO dropdeploy_schema (version, name) VALUES ({ahead}, 'future')"),
    );
    let err = PgStore::connect(&url, "a").unwrap_err();
    assert!(
        matches!(err, MigrateError::TooNew { found, known } if found == ahead && known == SCHEMA_VERSION),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!("version {ahead}"))
            && message.contains(&format!("up to {SCHEMA_VERSION}")),
        "{message}"
    );
}

#[test]
fn two_nodes_racing_for_a_lane_one_wins() {
    let cluster = testpg::Cluster::start();
    let url = Secret::new(cluster.url());
    let a = Arc::new(PgStore::connect(&url, "a").unwrap());
    let b = Arc::new(PgStore::connect(&url, "b").unwrap());
    for round in 0..50 {
        let app = format!("race-{round}");
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .map(|store| {
                let (app, barrier) = (app.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    store.acquire(&app, Duration::from_secs(60)).unwrap()
                })
            })
            .collect();
        let won: Vec<_> = racers
            .into_iter()
            .filter_map(|racer| racer.join().unwrap())
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {won:?}");
        let holders = a.holders().unwrap();
        let holder = holders.iter().find(|h| h.app == app).unwrap();
        assert_eq!(
            (holder.node.as_str(), holder.token),
            (won[0].node.as_str(), won[0].token)
        );
    }
}

#[test]
fn the_origin_node_finds_its_finished_files_to_place() {
    let f = fleet();
    let dropped = add_to(&f.a, f.dir.path(), "j1", "app-x");
    let mut url_job = Job::new(
        "u1".into(),
        "app-x",
        "ref-u1".into(),
        Payload::Url {
            url: "https://example.com/a.tar.gz".into(),
        },
        1_700_000_000,
    );
    f.a.add(&mut url_job, None).unwrap();
    let pending = add_to(&f.a, f.dir.path(), "j2", "app-x");
    f.b.acquire("app-x", Duration::from_secs(60))
        .unwrap()
        .unwrap();
    f.b.finish(&dropped, &entry(&dropped)).unwrap();
    f.b.finish(&url_job, &entry(&url_job)).unwrap();
    let (a, b) = (&f.a, &f.b);
    let unplaced = a.unplaced("a").unwrap();
    assert_eq!(unplaced.len(), 1, "{unplaced:?}");
    assert_eq!(unplaced[0].job.id, "j1");
    assert_eq!(unplaced[0].entry, entry(&dropped));
    assert_eq!(
        Path::new(&unplaced[0].origin_path),
        f.dir.path().join("drop").join("j1.tar.gz")
    );
    assert!(b.unplaced("b").unwrap().is_empty(), "b claimed nothing");
    a.mark_placed("j1").unwrap();
    assert!(a.unplaced("a").unwrap().is_empty());
    assert!(matches!(a.mark_placed("nope"), Err(StoreError::Missing(_))));
    assert_eq!(ids(&a.jobs(None).unwrap()), [pending.id.as_str()]);
}

#[test]
fn a_damaged_chunk_is_refused() {
    let f = fleet();
    let (path, sha) = archive(f.dir.path(), "big.tar.gz", 2 * 1024 * 1024 + 7);
    let mut big = job("big", "app-x", &sha, &path);
    f.a.add(&mut big, Some(&path)).unwrap();
    sql(
        f.cluster.url(),
        "UPDATE chunks SET data = overlay(data placing '\\x00ff'::bytea from 100)
         WHERE sha256 = (SELECT chunk FROM archive_chunks WHERE idx = 1)",
    );
    let copy = f.dir.path().join("copy.tar.gz");
    let err = f.b.fetch_archive("big", &copy).unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    assert!(!copy.exists(), "nothing is left behind");
}

#[test]
fn the_store_is_unavailable_while_the_server_is_down_and_back_after() {
    let mut cluster = testpg::Cluster::start_local();
    let store = PgStore::connect(&Secret::new(cluster.url()), "a").unwrap();
    assert!(store.jobs(None).unwrap().is_empty());
    assert_eq!(store.down_since(), None);
    cluster.stop();
    for _ in 0..3 {
        match store.jobs(None) {
            Err(StoreError::Unavailable(reason)) => {
                assert!(!reason.contains(cluster.url()), "{reason}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(store.down_since().is_some());
    assert!(matches!(
        store.acquire("app-x", Duration::from_secs(5)),
        Err(StoreError::Unavailable(_))
    ));
    cluster.start_again();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.jobs(None).is_err() {
        assert!(Instant::now() < deadline, "the store never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(store.down_since(), None);
    assert!(
        store
            .acquire("app-x", Duration::from_secs(5))
            .unwrap()
            .is_some()
    );
}

#[test]
fn listen_hears_added_and_finished_apps_and_survives_a_restart() {
    let mut cluster = testpg::Cluster::start_local();
    let url = Secret::new(cluster.url());
    let store = PgStore::connect(&url, "a").unwrap();
    let mut hints = store.listen();
    let mut n = 0;
    let mut heard = |store: &PgStore, app: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        // LISTEN starts on its own connection: add jobs until one is heard.
        loop {
            n += 1;
            let mut job = Job::new(
                format!("h{n}"),
                app,
                format!("ref-{n}"),
                Payload::Url {
                    url: "https://example.com/a.tar.gz".into(),
                },
                1_700_000_000,
            );
            let _ = store.add(&mut job, None);
            let wait = Instant::now() + Duration::from_millis(500);
            while Instant::now() < wait {
                if let Ok(hint) = hints.try_recv()
                    && hint == app
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(Instant::now() < deadline, "no hint for {app}");
        }
    };
    heard(&store, "app-one");
    cluster.restart();
    heard(&store, "app-two");
}

#[test]
fn an_unreadable_record_does_not_hide_the_others() {
    let f = fleet();
    add_to(&f.a, f.dir.path(), "j1", "app-x");
    add_to(&f.a, f.dir.path(), "j2", "app-x");
    sql(
        f.cluster.url(),
        "UPDATE jobs SET record = '{\"not\": \"a job\"}' WHERE id = 'j1'",
    );
    assert_eq!(ids(&f.b.jobs(None).unwrap()), ["j2"]);
    assert!(matches!(f.b.load("j1"), Err(StoreError::Record { .. })));
}

#[test]
fn heartbeats_list_the_nodes() {
    let f = fleet();
    let (a, b) = (&f.a, &f.b);
    a.heartbeat("a", &serde_json::json!({"version": "1"}))
        .unwrap();
    b.heartbeat("b", &serde_json::json!({"version": "2"}))
        .unwrap();
    a.heartbeat("a", &serde_json::json!({"version": "3"}))
        .unwrap();
    let nodes = b.nodes().unwrap();
    let names: Vec<_> = nodes
        .iter()
        .map(|n| (n.node.as_str(), n.info["version"].as_str()))
        .collect();
    assert_eq!(names, [("a", Some("3")), ("b", Some("2"))]);
    assert!(nodes.iter().all(|n| n.seen_ago < Duration::from_secs(3600)));
}

#[test]
fn the_database_fences_a_write_the_node_believes_it_may_make() {
    // The node's own clock says its lease is fresh (60 s), but by the database's clock the
    // lease has ended, or the lane has changed hands: the write is refused all the same.
    let f = fleet();
    let mut job = add_to(&f.a, f.dir.path(), "j1", "app-x");
    let held =
        f.a.acquire("app-x", Duration::from_secs(60))
            .unwrap()
            .unwrap();
    job.failed_attempts = 1;
    f.a.save(&job).unwrap();
    sql(
        f.cluster.url(),
        "UPDATE lanes SET expires_at = now() - interval '1 second'",
    );
    job.failed_attempts = 2;
    assert!(matches!(f.a.save(&job), Err(StoreError::Fenced { .. })));
    assert!(matches!(
        f.a.finish(&job, &entry(&job)),
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(
        f.a.lease_of("app-x"),
        None,
        "a fenced node forgets the lease"
    );
    assert_eq!(f.a.renew(&held, Duration::from_secs(60)).unwrap(), None);
    // Taken over behind its back while its lease looks fresh: the token no longer matches.
    let again =
        f.a.acquire("app-x", Duration::from_secs(60))
            .unwrap()
            .unwrap();
    assert!(again.token > held.token);
    sql(
        f.cluster.url(),
        "UPDATE lanes SET node = 'b', token = token + 1",
    );
    assert!(matches!(f.a.save(&job), Err(StoreError::Fenced { .. })));
    assert_eq!(f.b.load("j1").unwrap().failed_attempts, 1);
    assert!(f.b.history(None, 10).unwrap().is_empty());
}

#[test]
fn tls_to_the_database_verifies_its_certificate() {
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/tls");
    let cluster =
        testpg::Cluster::start_local_tls(&tls.join("server.pem"), &tls.join("server.key"));
    // sslmode=require makes the connection fail unless TLS was negotiated.
    let trusted = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        cluster.url(),
        tls.join("ca.pem").display()
    );
    let store = PgStore::connect(&Secret::new(trusted), "a").unwrap();
    store.health().unwrap();
    assert!(
        store
            .acquire("app-x", Duration::from_secs(5))
            .unwrap()
            .is_some()
    );
    // The test CA is not among the system's roots: without sslrootcert, no connection.
    let untrusted = format!("{}?sslmode=require", cluster.url());
    let store = PgStore::new(&Secret::new(untrusted), "a").unwrap();
    match store.health() {
        Err(StoreError::Unavailable(reason)) => {
            assert!(reason.contains("certificate"), "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
