//! Fleet mode, lanes as leases: two daemons on one PostgreSQL and the fake API. A job is
//! deployed once whichever node drives it; the lane's holder killed (SIGKILL) mid-follow is
//! replaced within the lease and a few seconds, and the new holder adopts the deployment by its
//! git_ref; a holder paused (SIGSTOP) past its lease writes nothing more when it wakes; and a
//! database whose schema is newer than the binary stops `run` with exit status 2.
//! The harness is `fleet_support.rs` (shared with the bigger scenarios).

use std::time::{Duration, Instant};

use dropdeploy::queue::store::Store;

use crate::fleet_support::Fleet;
use crate::support::{FakeConfig, wait_for};

const APP: &str = "web";
/// The shortest lease the configuration takes, so that takeovers are quick.
const LEASE: &str = "3s";
const LEASE_SECS: u64 = 3;
const POLL: &str = "300ms";

/// A platform whose builds take a while: each of queued, building, pushing, starting lasts
/// `step`.
fn slow(step: Duration) -> FakeConfig {
    FakeConfig {
        step,
        ..FakeConfig::default()
    }
}

#[test]
fn a_job_is_deployed_once_by_the_fleet_whichever_node_drives_it() {
    let fleet = Fleet::new(FakeConfig::default());
    let a = fleet.node("node-a", &[APP], LEASE, POLL);
    let b = fleet.node("node-b", &[APP], LEASE, POLL);
    let _a = fleet.start(&a);
    let _b = fleet.start(&b);
    let job = fleet.add_job(APP);
    let entry = fleet.wait_finished(APP, &job.id, Duration::from_secs(60));
    assert_eq!(entry["outcome"], "succeeded", "{entry}");
    // Nothing more happens: one deployment, by one node.
    std::thread::sleep(Duration::from_secs(LEASE_SECS));
    assert_eq!(fleet.fake.count_git_ref(APP, &job.git_ref), 1);
    let drivers: Vec<&str> = [(&a, "node-a"), (&b, "node-b")]
        .into_iter()
        .filter(|(n, _)| fleet.log(n).contains(&format!("job={}", job.id)))
        .map(|(_, name)| name)
        .collect();
    assert_eq!(drivers.len(), 1, "driven by {drivers:?}");
    assert!(fleet.store("ci").jobs(Some(APP)).unwrap().is_empty());
}

/// Starts `first`, waits until it holds the app's lane, then starts `second`.
fn holder_then_standby(
    fleet: &Fleet,
    first: &crate::fleet_support::Node,
    second: &crate::fleet_support::Node,
) -> (crate::support::Proc, crate::support::Proc) {
    let holder = fleet.start(first);
    assert!(
        fleet.wait_log(
            first,
            "this node took the app's lane",
            Duration::from_secs(30)
        ),
        "{}",
        fleet.log(first)
    );
    let standby = fleet.start(second);
    (holder, standby)
}

/// Waits until the fake shows the job's deployment running (posted, not finished).
fn wait_deploying(fleet: &Fleet, git_ref: &str) {
    let posted = wait_for(Duration::from_secs(60), || {
        fleet
            .fake
            .deployments(APP)
            .iter()
            .any(|d| d.git_ref.as_deref() == Some(git_ref) && !d.is_finished())
    });
    assert!(posted, "the deployment was not posted");
}

#[test]
fn the_lane_holder_killed_mid_follow_is_replaced_within_the_lease_and_the_deployment_adopted() {
    let fleet = Fleet::new(slow(Duration::from_secs(3)));
    let a = fleet.node("node-a", &[APP], LEASE, POLL);
    let b = fleet.node("node-b", &[APP], LEASE, POLL);
    let (mut holder, _standby) = holder_then_standby(&fleet, &a, &b);
    let job = fleet.add_job(APP);
    wait_deploying(&fleet, &job.git_ref);
    holder.kill9();
    let killed = Instant::now();
    let taken = fleet.wait_log(
        &b,
        "this node took the app's lane",
        Duration::from_secs(LEASE_SECS + 15),
    );
    let takeover = killed.elapsed();
    assert!(taken, "node-b never took the lane:\n{}", fleet.log(&b));
    eprintln!("takeover after SIGKILL: {} ms", takeover.as_millis());
    assert!(
        takeover < Duration::from_secs(LEASE_SECS + 10),
        "took {takeover:?}"
    );
    let entry = fleet.wait_finished(APP, &job.id, Duration::from_secs(90));
    assert_eq!(entry["outcome"], "succeeded", "{entry}");
    assert_eq!(
        fleet.fake.count_git_ref(APP, &job.git_ref),
        1,
        "the new holder posted again instead of adopting"
    );
    assert!(fleet.log(&b).contains(&format!("job={}", job.id)));
}

#[test]
fn a_holder_paused_past_its_lease_writes_nothing_when_it_wakes() {
    let fleet = Fleet::new(slow(Duration::from_secs(2)));
    let a = fleet.node("node-a", &[APP], LEASE, POLL);
    let b = fleet.node("node-b", &[APP], LEASE, POLL);
    let (holder, _standby) = holder_then_standby(&fleet, &a, &b);
    let job = fleet.add_job(APP);
    wait_deploying(&fleet, &job.git_ref);
    holder.signal("STOP");
    let stopped = Instant::now();
    assert!(
        fleet.wait_log(&b, "this node took the app's lane", Duration::from_secs(30)),
        "node-b never took the lane:\n{}",
        fleet.log(&b)
    );
    eprintln!(
        "takeover after SIGSTOP: {} ms",
        stopped.elapsed().as_millis()
    );
    let entry = fleet.wait_finished(APP, &job.id, Duration::from_secs(90));
    assert_eq!(entry["outcome"], "succeeded", "{entry}");
    let store = fleet.store("ci");
    let finished = store.load(&job.id).unwrap();
    let requests = fleet.fake.requests().len();
    holder.signal("CONT");
    assert!(
        fleet.wait_log(&a, "lost the app's lease", Duration::from_secs(30)),
        "node-a did not notice it lost the lane:\n{}",
        fleet.log(&a)
    );
    // It stays a standby: the record is the one node-b finished, and no deployment was posted.
    std::thread::sleep(Duration::from_secs(LEASE_SECS));
    assert_eq!(store.load(&job.id).unwrap(), finished);
    assert_eq!(fleet.fake.count_git_ref(APP, &job.git_ref), 1);
    let posts_after = fleet.fake.requests()[requests..]
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts_after, 0, "a POST after node-a woke");
    let a_log = fleet.log(&a);
    assert!(
        !a_log.contains("job finished"),
        "node-a recorded an outcome:\n{a_log}"
    );
    // Not even its own working copy moved on: every save goes to the store first, and the
    // store refused them.
    let local = fleet
        .dir
        .path()
        .join("node-a/state/spool")
        .join(&job.id)
        .join("job.json");
    let local = std::fs::read_to_string(&local).unwrap_or_default();
    assert!(
        !local.contains("\"succeeded\""),
        "node-a wrote its record after it lost the lane:\n{local}"
    );
}

#[test]
fn a_newer_schema_in_the_database_makes_run_exit_2_naming_both_versions() {
    let fleet = Fleet::new(FakeConfig::default());
    let a = fleet.node("node-a", &[APP], LEASE, POLL);
    // The schema as this binary makes it, then one version more, as a newer binary would.
    drop(fleet.store("ci"));
    let newer = dropdeploy::fleet::SCHEMA_VERSION + 1;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(fleet.pg.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .execute(
                "INSERT INTO dropdeploy_schema (version, name, applied_at) VALUES ($1, 'future', now())",
                &[&newer],
            )
            .await
            .unwrap();
    });
    let out = fleet.command(&a, &["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let known = dropdeploy::fleet::SCHEMA_VERSION;
    assert!(
        stderr.contains(&format!(
            "the database's schema is version {newer}, this dropdeploy knows up to {known}"
        )),
        "{stderr}"
    );
}
