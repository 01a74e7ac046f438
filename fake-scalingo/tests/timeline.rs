//! The fake's timeline helpers (`fake_scalingo::timeline`): overlapping deployments and
//! request counts per minute, which the fleet's scenario relies on.

use std::time::{Duration, Instant, UNIX_EPOCH};

use fake_scalingo::DeploymentRecord;
use fake_scalingo::timeline::{max_in_window, overlaps, per_minute};

fn deployment(id: &str, created: u64, finished: Option<u64>) -> DeploymentRecord {
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    DeploymentRecord {
        id: id.to_string(),
        app: "a".to_string(),
        app_id: "1".to_string(),
        git_ref: None,
        source_url: String::new(),
        status: if finished.is_some() {
            "success"
        } else {
            "building"
        }
        .to_string(),
        created_at: at(created),
        started_at: Some(at(created)),
        finished_at: finished.map(at),
        output: String::new(),
    }
}

#[test]
fn deployments_one_after_the_other_do_not_overlap() {
    let ds = [
        deployment("1", 10, Some(20)),
        deployment("2", 20, Some(30)),
        deployment("3", 31, None),
    ];
    assert!(overlaps("a", &ds).is_empty());
}

#[test]
fn a_deployment_created_while_another_runs_overlaps_it() {
    let ds = [
        deployment("2", 15, Some(30)),
        deployment("1", 10, Some(20)),
        deployment("3", 40, None),
        deployment("4", 50, Some(60)),
    ];
    let found = overlaps("a", &ds);
    let pairs: Vec<(&str, &str)> = found
        .iter()
        .map(|o| (o.earlier.id.as_str(), o.later.id.as_str()))
        .collect();
    assert_eq!(pairs, [("1", "2"), ("3", "4")]);
}

#[test]
fn minutes_and_windows_count_requests() {
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    let minutes = per_minute([at(59), at(60), at(61), at(125)]);
    assert_eq!(
        minutes.into_iter().collect::<Vec<_>>(),
        [(0, 1), (1, 2), (2, 1)]
    );
    let t0 = Instant::now();
    let ts: Vec<Instant> = [0, 10, 50, 59, 61, 62]
        .iter()
        .map(|s| t0 + Duration::from_secs(*s))
        .collect();
    assert_eq!(max_in_window(&ts, Duration::from_secs(60)), 5);
    assert_eq!(max_in_window(&[], Duration::from_secs(60)), 0);
}
