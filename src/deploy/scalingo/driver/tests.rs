//! The state machine's decisions, the adoption rule, upload slots' age, log tails.
use super::*;
use crate::archive::inspect::Summary;

fn job(state: JobState, url: bool) -> Job {
    Job {
        id: "j".into(),
        app: "a".into(),
        git_ref: "a-1-deadbeef".into(),
        git_ref_given: false,
        payload: if url {
            Payload::Url {
                url: "https://x/a.tar.gz".into(),
            }
        } else {
            Payload::Archive {
                original: "/tmp/a.tar.gz".into(),
                summary: Summary {
                    root: "a".into(),
                    entries: 1,
                    files: 1,
                    uncompressed_bytes: 1,
                    compressed_bytes: 1,
                    sha256: "00".into(),
                },
                tree_digest: None,
                copied: false,
            }
        },
        created_at: 0,
        seq: None,
        started_at: None,
        failed_attempts: 0,
        aborted_retries: 0,
        source_renewals: 0,
        check: None,
        state,
    }
}

#[test]
fn each_state_leads_to_its_next_action() {
    assert_eq!(
        next_action(&job(JobState::Queued, false), false),
        Action::CreateSource
    );
    assert_eq!(
        next_action(&job(JobState::Queued, true), false),
        Action::RequestDeployment
    );
    let created = JobState::SourceCreated {
        upload_url: "u".into(),
        download_url: "d".into(),
        at: 5,
    };
    assert_eq!(source_at(&created), Some(5));
    assert_eq!(
        next_action(&job(created.clone(), false), false),
        Action::Upload
    );
    assert_eq!(
        next_action(&job(created, false), true),
        Action::CreateSource
    );
    let uploaded = JobState::Uploaded {
        download_url: "d".into(),
        source_at: 7,
    };
    assert_eq!(source_at(&uploaded), Some(7));
    assert_eq!(
        next_action(&job(uploaded.clone(), false), false),
        Action::RequestDeployment
    );
    assert_eq!(
        next_action(&job(uploaded, false), true),
        Action::CreateSource
    );
    let requested = JobState::DeployRequested {
        source_url: "d".into(),
        source_at: Some(9),
        requested_at: Some(9),
        preexisting: None,
    };
    assert_eq!(source_at(&requested), Some(9));
    assert_eq!(
        next_action(&job(requested, false), true),
        Action::FindOrPost
    );
    let deploying = JobState::Deploying {
        deployment_id: "x".into(),
        platform_status: None,
        since: None,
    };
    assert_eq!(next_action(&job(deploying, false), false), Action::Follow);
    let done = JobState::Succeeded {
        deployment_id: "x".into(),
    };
    assert_eq!(next_action(&job(done, false), false), Action::Done);
    let superseded = JobState::Superseded { by: "k".into() };
    assert_eq!(next_action(&job(superseded, true), false), Action::Done);
}

#[tokio::test(start_paused = true)]
async fn an_upload_slot_ages_on_the_monotonic_clock_not_the_wall_clock() {
    let mut clocks = Clocks::new();
    let mut j = job(JobState::Queued, false);
    // Made by this process: as old as the monotonic time that passed (the wall clock stands
    // still here, as if it had been stepped back meanwhile).
    j.state = JobState::SourceCreated {
        upload_url: "u".into(),
        download_url: "d".into(),
        at: clocks.stamp(SOURCE),
    };
    assert!(!source_stale(&j, &mut clocks));
    tokio::time::advance(SOURCE_STALE_AFTER).await;
    assert!(source_stale(&j, &mut clocks));
    // A record an hour ahead (the clock stepped back since): counted from now.
    let mut later = Clocks::new();
    j.state = JobState::Uploaded {
        download_url: "d".into(),
        source_at: now() + 3600,
    };
    assert!(!source_stale(&j, &mut later));
    tokio::time::advance(SOURCE_STALE_AFTER).await;
    assert!(source_stale(&j, &mut later));
    // Read from a record made before this process: as old as the wall clock says.
    let mut fresh = Clocks::new();
    j.state = JobState::Uploaded {
        download_url: "d".into(),
        source_at: now() - SOURCE_STALE_AFTER.as_secs() - 1,
    };
    assert!(source_stale(&j, &mut fresh));
}

fn listed(id: &str, created_at: &str) -> Deployment {
    Deployment {
        id: id.into(),
        status: "success".into(),
        git_ref: Some("v1".into()),
        created_at: Some(created_at.into()),
        ..Deployment::default()
    }
}

#[test]
fn a_jobs_own_git_ref_is_adopted_whatever_the_clocks_say() {
    let requested = JobState::DeployRequested {
        source_url: "d".into(),
        source_at: None,
        // This machine's clock is an hour ahead of the platform's.
        requested_at: Some(now() + 3600),
        preexisting: None,
    };
    let own = job(requested, true);
    assert!(adoptable(&own, &listed("d1", "2023-11-14T21:00:00Z")));
}

#[test]
fn a_given_git_ref_adopts_any_deployment_that_did_not_carry_it_before_the_post() {
    let mut given = job(
        JobState::DeployRequested {
            source_url: "d".into(),
            source_at: None,
            requested_at: Some(now() + 3600),
            preexisting: Some(vec!["old".into()]),
        },
        true,
    );
    given.git_ref_given = true;
    assert!(!adoptable(&given, &listed("old", "2099-01-01T00:00:00Z")));
    assert!(adoptable(&given, &listed("new", "2000-01-01T00:00:00Z")));
}

#[test]
fn a_record_without_the_list_falls_back_to_comparing_times() {
    let at = 1_700_000_000; // 2023-11-14T22:13:20Z
    assert!(created_before(Some("2023-11-14T21:00:00Z"), Some(at)));
    assert!(!created_before(Some("2023-11-14T22:12:00.123Z"), Some(at)));
    assert!(!created_before(Some("2023-11-14T23:00:00Z"), Some(at)));
    assert!(!created_before(None, Some(at)));
    assert!(!created_before(Some("2023-11-14T21:00:00Z"), None));
    assert!(!created_before(Some("yesterday"), Some(at)));
    let mut legacy = job(
        JobState::DeployRequested {
            source_url: "d".into(),
            source_at: None,
            requested_at: Some(at),
            preexisting: None,
        },
        true,
    );
    legacy.git_ref_given = true;
    assert!(!adoptable(&legacy, &listed("a", "2023-11-14T21:00:00Z")));
    assert!(adoptable(&legacy, &listed("b", "2023-11-14T22:13:00Z")));
}

#[test]
fn log_tail_keeps_the_last_lines_without_colours() {
    let text: String = (1..=40)
        .map(|i| format!("\u{1b}[1;34mline {i}\u{1b}[0m\r\n"))
        .collect();
    let tail = tail_lines(&text, 30);
    assert_eq!(tail.len(), 30);
    assert_eq!(tail[0], "line 11");
    assert_eq!(tail[29], "line 40");
    assert_eq!(tail_lines("a\nb", 30), vec!["a", "b"]);
}
