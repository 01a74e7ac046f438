//! The state machine's decisions, adoption by time, log tails.
use super::*;
use crate::archive::inspect::Summary;

fn job(state: JobState, url: bool) -> Job {
    Job {
        id: "j".into(),
        app: "a".into(),
        git_ref: "a-1-deadbeef".into(),
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
    let t = 10_000;
    assert_eq!(
        next_action(&job(JobState::Queued, false), t),
        Action::CreateSource
    );
    assert_eq!(
        next_action(&job(JobState::Queued, true), t),
        Action::RequestDeployment
    );
    let created = |at| JobState::SourceCreated {
        upload_url: "u".into(),
        download_url: "d".into(),
        at,
    };
    assert_eq!(next_action(&job(created(t - 60), false), t), Action::Upload);
    assert_eq!(
        next_action(&job(created(t - 600), false), t),
        Action::CreateSource
    );
    let uploaded = |source_at| JobState::Uploaded {
        download_url: "d".into(),
        source_at,
    };
    assert_eq!(
        next_action(&job(uploaded(t - 60), false), t),
        Action::RequestDeployment
    );
    assert_eq!(
        next_action(&job(uploaded(t - 540), false), t),
        Action::CreateSource
    );
    let requested = JobState::DeployRequested {
        source_url: "d".into(),
        source_at: Some(t),
        requested_at: Some(t),
    };
    assert_eq!(next_action(&job(requested, false), t), Action::FindOrPost);
    let deploying = JobState::Deploying {
        deployment_id: "x".into(),
        platform_status: None,
        since: None,
    };
    assert_eq!(next_action(&job(deploying, false), t), Action::Follow);
    let done = JobState::Succeeded {
        deployment_id: "x".into(),
    };
    assert_eq!(next_action(&job(done, false), t), Action::Done);
    let superseded = JobState::Superseded { by: "k".into() };
    assert_eq!(next_action(&job(superseded, true), t), Action::Done);
}

#[test]
fn only_a_deployment_made_after_the_request_can_be_adopted() {
    let at = 1_700_000_000; // 2023-11-14T22:13:20Z
    assert!(created_before(Some("2023-11-14T21:00:00Z"), Some(at)));
    assert!(!created_before(Some("2023-11-14T22:12:00.123Z"), Some(at)));
    assert!(!created_before(Some("2023-11-14T23:00:00Z"), Some(at)));
    assert!(!created_before(None, Some(at)));
    assert!(!created_before(Some("2023-11-14T21:00:00Z"), None));
    assert!(!created_before(Some("yesterday"), Some(at)));
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
