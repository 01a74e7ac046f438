//! `dropdeploy status` in fleet mode (`[cluster]`): the fleet's state as its store holds it,
//! from any node: who holds each app's lane and until when, the nodes and when each was last
//! seen, the fleet's unfinished jobs, each app's last outcome; and, when the database cannot
//! be reached, that outage (with since when, as this node's daemon saw it).

use std::collections::HashMap;
use std::time::SystemTime;

use super::status::{last_line, pending_line, wait_line};
use super::{HistoryEntry, file_label, rfc3339_utc};
use crate::live::{LiveFile, WaitKind};
use crate::queue::spool::{Job, JobState};
use crate::queue::store::Holder;

/// A node of the fleet, as the store last heard of it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSeen {
    pub name: String,
    pub last_seen: SystemTime,
}

/// What the fleet's store says, read by the `status` command.
#[derive(Debug, Clone, Default)]
pub struct FleetState {
    pub holders: Vec<Holder>,
    pub nodes: Vec<NodeSeen>,
    /// The fleet's unfinished jobs, in arrival order.
    pub jobs: Vec<Job>,
    /// Each app's newest history entry.
    pub last: HashMap<String, HistoryEntry>,
}

/// The fleet's status, or why it cannot be read.
#[derive(Debug)]
pub struct FleetView<'a> {
    /// This node's name.
    pub node: &'a str,
    /// The configured apps, in order.
    pub apps: &'a [String],
    /// `Err`: the database cannot be reached (the cause).
    pub state: Result<FleetState, String>,
    /// This node's daemon's board, when it runs.
    pub live: Option<&'a LiveFile>,
    /// When the store's clock says it is now (leases are shown against it).
    pub now: SystemTime,
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ago(now: SystemTime, at: SystemTime) -> String {
    match now.duration_since(at) {
        Ok(d) => format!("{} ago", crate::human::duration(d)),
        Err(e) => format!("in {}", crate::human::duration(e.duration())),
    }
}

/// The text of `status` in fleet mode.
pub fn fleet_report(view: &FleetView<'_>) -> String {
    let mut out = format!("fleet: this node is {}\n", view.node);
    let outage = view
        .live
        .iter()
        .flat_map(|l| &l.waits)
        .find(|w| w.kind == WaitKind::Database);
    let state = match &view.state {
        Ok(state) => {
            out.push_str("database: reachable\n");
            if let Some(wait) = outage {
                // The command reached it, the daemon not yet (or not any more).
                out.push_str(&wait_line(wait));
            }
            state
        }
        Err(cause) => {
            out.push_str(&format!("database: UNREACHABLE: {cause}\n"));
            match outage {
                Some(wait) => out.push_str(&wait_line(wait)),
                None if view.live.is_some() => {
                    out.push_str("  this node's daemon has not seen the outage yet\n")
                }
                None => {}
            }
            out.push_str(
                "  the fleet's lanes, jobs and outcomes cannot be shown until it answers; \
                 jobs made on this node wait in its spool and are handed to the fleet then\n",
            );
            return out;
        }
    };
    out.push_str(&nodes_section(&state.nodes, view.now));
    let mut names: Vec<String> = view.apps.to_vec();
    for job in &state.jobs {
        if !names.contains(&job.app) {
            names.push(job.app.clone());
        }
    }
    for app in &names {
        out.push_str(&app_section(app, state, view));
    }
    out
}

fn nodes_section(nodes: &[NodeSeen], now: SystemTime) -> String {
    if nodes.is_empty() {
        return "nodes: none seen yet\n".to_string();
    }
    let mut out = "nodes:\n".to_string();
    for node in nodes {
        out.push_str(&format!(
            "  {}: last seen {} ({})\n",
            node.name,
            rfc3339_utc(unix(node.last_seen)),
            ago(now, node.last_seen)
        ));
    }
    out
}

fn lane_line(holder: Option<&Holder>, now: SystemTime) -> String {
    match holder {
        Some(h) if h.until > now => format!(
            "  lane:      held by {} until {} (token {})\n",
            h.node,
            rfc3339_utc(unix(h.until)),
            h.token
        ),
        Some(h) => format!(
            "  lane:      free (last held by {}, lease ended {})\n",
            h.node,
            rfc3339_utc(unix(h.until))
        ),
        None => "  lane:      free (never held)\n".to_string(),
    }
}

fn app_section(app: &str, state: &FleetState, view: &FleetView<'_>) -> String {
    let mut out = format!("{app}\n");
    let holder = state.holders.iter().find(|h| h.app == app);
    out.push_str(&lane_line(holder, view.now));
    let mine: Vec<&Job> = state.jobs.iter().filter(|j| j.app == app).collect();
    let in_flight: Vec<&&Job> = mine
        .iter()
        .filter(|j| !matches!(j.state, JobState::Queued) && !j.is_done())
        .collect();
    if in_flight.is_empty() {
        out.push_str("  in flight: none\n");
    }
    for job in in_flight {
        out.push_str(&format!(
            "  in flight: {} {} (job {}, since {})\n",
            job.state.name(),
            file_label(job),
            job.id,
            rfc3339_utc(job.started_at.unwrap_or(job.created_at))
        ));
    }
    out.push_str(&pending_line(&mine));
    let waits = view.live.iter().flat_map(|l| &l.waits);
    for wait in waits.filter(|w| w.app == app && w.kind != WaitKind::Attention) {
        out.push_str(&wait_line(wait));
    }
    out.push_str(&last_line(state.last.get(app)));
    out
}

/// `status --json` in fleet mode:
///
/// ```json
/// {"fleet": {"node": "web-1", "database": "reachable" or "unreachable",
///            "database_error": null or "…", "database_down_since": null or "…"},
///  "nodes": [{"node": "web-1", "last_seen": "…"}],
///  "apps": [{"app": "my-app", "lane": {"node": "web-2", "until": "…", "token": 3} or null,
///            "jobs": [{"job": "…", "state": "queued", "file": "…", "since": "…"}],
///            "last": {…} or null}]}
/// ```
pub fn fleet_json(view: &FleetView<'_>) -> serde_json::Value {
    use serde_json::json;
    let down_since = view
        .live
        .iter()
        .flat_map(|l| &l.waits)
        .find(|w| w.kind == WaitKind::Database)
        .map(|w| rfc3339_utc(w.since));
    let (database, error) = match &view.state {
        Ok(_) => ("reachable", None),
        Err(e) => ("unreachable", Some(e.clone())),
    };
    let fleet = json!({
        "node": view.node,
        "database": database,
        "database_error": error,
        "database_down_since": down_since,
    });
    let Ok(state) = &view.state else {
        return json!({ "fleet": fleet, "nodes": [], "apps": [] });
    };
    let nodes: Vec<_> = state
        .nodes
        .iter()
        .map(|n| json!({"node": n.name, "last_seen": rfc3339_utc(unix(n.last_seen))}))
        .collect();
    let mut names: Vec<String> = view.apps.to_vec();
    for job in &state.jobs {
        if !names.contains(&job.app) {
            names.push(job.app.clone());
        }
    }
    let apps: Vec<_> = names
        .iter()
        .map(|app| {
            let lane = state
                .holders
                .iter()
                .find(|h| &h.app == app && h.until > view.now)
                .map(|h| json!({"node": h.node, "until": rfc3339_utc(unix(h.until)), "token": h.token}));
            let jobs: Vec<_> = state
                .jobs
                .iter()
                .filter(|j| &j.app == app)
                .map(|j| {
                    json!({"job": j.id, "state": j.state.name(), "file": file_label(j),
                           "since": rfc3339_utc(j.started_at.unwrap_or(j.created_at))})
                })
                .collect();
            json!({"app": app, "lane": lane, "jobs": jobs, "last": state.last.get(app)})
        })
        .collect();
    json!({ "fleet": fleet, "nodes": nodes, "apps": apps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::Wait;
    use crate::queue::spool::Payload;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn outage() -> LiveFile {
        LiveFile {
            pid: 7,
            waits: vec![Wait {
                app: String::new(),
                kind: WaitKind::Database,
                subject: "the fleet's database".into(),
                cause: "node web-1 cannot reach the fleet's database".into(),
                since: 1_765_152_600,
                retry_at: None,
                retry_monotonic: None,
            }],
        }
    }

    #[test]
    fn the_lane_holder_the_nodes_and_the_fleets_jobs_are_shown() {
        let job = Job::new(
            "20261208001000-0123abcd".into(),
            "my-app",
            "my-app-x".into(),
            Payload::Url {
                url: "https://example.test/a.tar.gz".into(),
            },
            1_765_152_000,
        );
        let state = FleetState {
            holders: vec![Holder {
                app: "my-app".into(),
                node: "web-2".into(),
                token: 3,
                until: at(1_765_152_615),
            }],
            nodes: vec![NodeSeen {
                name: "web-2".into(),
                last_seen: at(1_765_152_598),
            }],
            jobs: vec![job],
            last: HashMap::new(),
        };
        let apps = ["my-app".to_string(), "other".to_string()];
        let view = FleetView {
            node: "web-1",
            apps: &apps,
            state: Ok(state),
            live: None,
            now: at(1_765_152_600),
        };
        let text = fleet_report(&view);
        assert!(text.contains("database: reachable"), "{text}");
        assert!(
            text.contains("lane:      held by web-2 until 2025-12-08T00:10:15Z (token 3)"),
            "{text}"
        );
        assert!(
            text.contains("web-2: last seen 2025-12-08T00:09:58Z (2 s ago)"),
            "{text}"
        );
        assert!(
            text.contains("pending:   1 (https://example.test/a.tar.gz)"),
            "{text}"
        );
        assert!(
            text.contains("other\n  lane:      free (never held)"),
            "{text}"
        );
        let json = fleet_json(&view);
        assert_eq!(json["apps"][0]["lane"]["node"], "web-2");
        assert_eq!(json["apps"][0]["jobs"][0]["state"], "queued");
        assert_eq!(json["apps"][1]["lane"], serde_json::Value::Null);
    }

    #[test]
    fn an_unreachable_database_is_said_with_since_when() {
        let live = outage();
        let view = FleetView {
            node: "web-1",
            apps: &[],
            state: Err("connection refused".into()),
            live: Some(&live),
            now: at(1_765_152_700),
        };
        let text = fleet_report(&view);
        assert!(
            text.contains("database: UNREACHABLE: connection refused"),
            "{text}"
        );
        assert!(
            text.contains("database unreachable: the fleet's database: node web-1 cannot reach")
                && text.contains("(since 2025-12-08T00:10:00Z)"),
            "{text}"
        );
        let json = fleet_json(&view);
        assert_eq!(json["fleet"]["database"], "unreachable");
        assert_eq!(json["fleet"]["database_down_since"], "2025-12-08T00:10:00Z");
    }
}
