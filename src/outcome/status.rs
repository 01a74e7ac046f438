//! `dropdeploy status`: each app's jobs in the spool, its waits on the running daemon's board,
//! and its last recorded outcome, read from disk without talking to the daemon.

use std::collections::HashMap;
use std::path::Path;

use super::history::last_outcomes;
use super::{HistoryEntry, OutcomeError, exists, file_label, rfc3339_utc};
use crate::live::{LiveFile, Wait, WaitKind};
use crate::queue::spool::{Job, JobState, Spool};

/// The text of `dropdeploy status`: for each app, the job in flight (state, file, id, since
/// when), the pending jobs (count and files), and the last recorded outcome (outcome, file,
/// time), read from the spool and the history without talking to the daemon.
///
/// `apps` are the configured app names, shown in that order; apps found only in the spool
/// follow, marked as not configured. A job is in flight when it is neither `queued` nor
/// finished (shown as INTERRUPTED, with how to go on, when nothing drives it: see [`Driver`]),
/// pending when `queued`; a finished job still in the spool (its outcome not yet
/// recorded) is shown as such. A missing spool directory or history file counts as empty;
/// unreadable job records are listed at the end.
///
/// `live` is the running daemon's board ([`crate::live::read`]): each app's waits (a file it
/// cannot claim yet, a folder it cannot watch) are shown with their cause and next try; `None`
/// when no daemon runs.
pub fn status_report(
    spool: &Spool,
    history: &Path,
    apps: &[String],
    live: Option<&LiveFile>,
) -> Result<String, OutcomeError> {
    let Seen {
        jobs,
        unreadable,
        unconfigured,
        names,
        last,
        store,
    } = Seen::read(spool, history, apps)?;
    let daemon = crate::lock::StateLock::holder(history.parent().unwrap_or(Path::new(".")));
    let mut out = String::new();
    if names.is_empty() {
        out.push_str("no apps configured, and no jobs in the spool\n");
    }
    for app in &names {
        out.push_str(&app_section(
            spool,
            daemon,
            app,
            unconfigured.contains(app),
            &jobs,
            live,
            &last,
        ));
        if let Some(attention) = store.attention(app) {
            out.push_str(&format!(
                "  needs attention: {} (since {})\n",
                attention.reason,
                rfc3339_utc(attention.since)
            ));
        }
    }
    for error in unreadable {
        out.push_str(&format!("warning: {error}\n"));
    }
    Ok(out)
}

/// `dropdeploy status --json`: the same facts as [`status_report`], as one JSON document for
/// scripts:
///
/// ```json
/// {"daemon_pid": 4242,
///  "apps": [{"app": "my-app", "configured": true,
///            "in_flight": [{"state": "deploying", "file": "a.tar.gz", "job": "…",
///                           "deployment_id": "…", "platform_status": "building",
///                           "since": "2026-11-25T17:42:58Z", "interrupted": false}],
///            "pending": [{"job": "…", "file": "b.tar.gz", "since": "…"}],
///            "unrecorded": [{"job": "…", "state": "succeeded", "file": "…"}],
///            "waits": [{"kind": "claim", "subject": "…", "cause": "…", "since": "…",
///                       "retry_at": null}],
///            "needs_attention": "why" or null,
///            "last": {"time": "…", "outcome": "succeeded", …} or null}],
///  "unreadable": ["…"]}
/// ```
///
/// `daemon_pid` is the running daemon's, or `null`; `interrupted` says that nothing drives the
/// job (see [`Driver`]); `last` is the app's last history line as stored. Times are RFC 3339 in UTC.
pub fn status_json(
    spool: &Spool,
    history: &Path,
    apps: &[String],
    live: Option<&LiveFile>,
    daemon_pid: Option<u32>,
) -> Result<serde_json::Value, OutcomeError> {
    use serde_json::json;
    let Seen {
        jobs,
        unreadable,
        unconfigured,
        names,
        last,
        store,
    } = Seen::read(spool, history, apps)?;
    let sections: Vec<serde_json::Value> = names
        .iter()
        .map(|app| {
            let mine: Vec<&Job> = jobs.iter().filter(|j| &j.app == app).collect();
            let in_flight: Vec<_> = mine
                .iter()
                .filter(|j| !matches!(j.state, JobState::Queued) && !j.is_done())
                .map(|job| in_flight_json(job, Driver::of(spool, job, daemon_pid)))
                .collect();
            let pending: Vec<_> = mine
                .iter()
                .filter(|j| matches!(j.state, JobState::Queued))
                .map(|job| {
                    json!({
                        "job": job.id,
                        "file": file_label(job),
                        "since": rfc3339_utc(job.created_at),
                    })
                })
                .collect();
            let unrecorded: Vec<_> = mine
                .iter()
                .filter(|j| j.is_done())
                .map(|job| json!({"job": job.id, "state": job.state.name(), "file": file_label(job)}))
                .collect();
            let waits: Vec<_> = live
                .iter()
                .flat_map(|l| &l.waits)
                .filter(|w| &w.app == app && w.kind != WaitKind::Attention)
                .map(|wait| {
                    json!({
                        "kind": wait.kind,
                        "subject": wait.subject,
                        "cause": wait.cause,
                        "since": rfc3339_utc(wait.since),
                        "retry_at": wait.next_try().map(rfc3339_utc),
                    })
                })
                .collect();
            json!({
                "app": app,
                "configured": !unconfigured.contains(app),
                "in_flight": in_flight,
                "pending": pending,
                "unrecorded": unrecorded,
                "waits": waits,
                "needs_attention": store.attention(app).map(|a| a.reason),
                "last": last.get(app),
            })
        })
        .collect();
    Ok(json!({
        "daemon_pid": daemon_pid,
        "apps": sections,
        "unreadable": unreadable,
    }))
}

/// What drives a job in the spool, for `status` and `jobs list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// A process holds the job's lock: the daemon's lane, or a `deploy` in a terminal.
    Process,
    /// No process holds it, but a daemon runs on the state_dir: its lane takes it in turn.
    Daemon(u32),
    /// Nothing: no daemon runs and no process holds it (a `deploy` interrupted, a daemon
    /// stopped). It stays as it is until it is resumed or discarded.
    Nobody,
}

impl Driver {
    /// Who drives `job` of `spool` now, with `daemon` the pid of the daemon holding the
    /// state_dir (if one does). The job's lock is read from `/proc/locks`, never taken.
    pub fn of(spool: &Spool, job: &Job, daemon: Option<u32>) -> Driver {
        match (
            crate::lock::JobLock::is_held(&spool.job_dir(&job.id)),
            daemon,
        ) {
            (Some(true), _) => Driver::Process,
            (_, Some(pid)) => Driver::Daemon(pid),
            (Some(false), None) => Driver::Nobody,
            // Cannot be told: not said to be interrupted.
            (None, None) => Driver::Process,
        }
    }
}

/// The line that says how to go on with a job nothing drives: a job of the daemon's (a
/// dropped file, a saved tree) resumes at its next start; one of `deploy` when the same command
/// runs again; any of them with `jobs resume`, or is given up with `jobs discard`.
pub fn interrupted_hint(job: &Job) -> String {
    let daemons = matches!(
        &job.payload,
        crate::queue::spool::Payload::Archive { copied: false, .. }
    ) && job.rollback().is_none();
    let again = if daemons {
        "no daemon runs: `dropdeploy run` resumes it at its start"
    } else {
        "no daemon runs, no `deploy` holds it: the same `dropdeploy deploy` command resumes it"
    };
    format!(
        "nothing drives it ({again}); `dropdeploy jobs resume {id}` takes it to its end now, \
         `dropdeploy jobs discard {id}` gives it up",
        id = job.id
    )
}

/// The apps' attention flags, in the state directory that holds `history`.
fn attention_store(history: &Path) -> crate::verify::store::Store {
    crate::verify::store::Store::new(history.parent().unwrap_or(Path::new(".")))
}

/// A job under way, for `status --json`.
fn in_flight_json(job: &Job, driver: Driver) -> serde_json::Value {
    let (deployment_id, platform_status) = match &job.state {
        JobState::Deploying {
            deployment_id,
            platform_status,
            ..
        } => (Some(deployment_id.clone()), platform_status.clone()),
        _ => (None, None),
    };
    serde_json::json!({
        "state": job.state.name(),
        "file": file_label(job),
        "job": job.id,
        "deployment_id": deployment_id,
        "platform_status": platform_status,
        "since": rfc3339_utc(job.started_at.unwrap_or(job.created_at)),
        "interrupted": driver == Driver::Nobody,
    })
}

/// How many of the last history lines name the apps shown when no configuration names any.
const RECENT_HISTORY: usize = 200;

/// What `status` shows, read once for its text and its JSON.
struct Seen {
    jobs: Vec<Job>,
    unreadable: Vec<String>,
    /// Apps with jobs in the spool that the configuration no longer has.
    unconfigured: Vec<String>,
    /// The configured apps, then the unconfigured ones.
    names: Vec<String>,
    last: std::collections::HashMap<String, HistoryEntry>,
    store: crate::verify::store::Store,
}

impl Seen {
    fn read(spool: &Spool, history: &Path, apps: &[String]) -> Result<Seen, OutcomeError> {
        let (jobs, unreadable) = read_jobs(spool)?;
        let unconfigured = unconfigured_apps(apps, &jobs);
        let mut names: Vec<String> = apps.to_vec();
        names.extend(unconfigured.iter().cloned());
        // Without a configuration that names apps (`deploy` and `watch` need none), the apps
        // of the recent history are shown too.
        if apps.is_empty() {
            let recent = super::read_history(history, None, Some(RECENT_HISTORY))?;
            for entry in recent.into_iter().rev() {
                if !names.contains(&entry.app) {
                    names.push(entry.app);
                }
            }
        }
        let last = last_outcomes(history, &names)?;
        Ok(Seen {
            jobs,
            unreadable,
            unconfigured,
            names,
            last,
            store: attention_store(history),
        })
    }
}

/// The jobs in the spool (none if it does not exist), and why the unreadable ones are.
fn read_jobs(spool: &Spool) -> Result<(Vec<Job>, Vec<String>), OutcomeError> {
    let mut jobs = Vec::new();
    let mut unreadable = Vec::new();
    if exists(spool.dir())? {
        for job in spool.jobs()? {
            match job {
                Ok(job) => jobs.push(job),
                Err(error) => unreadable.push(error.to_string()),
            }
        }
    }
    Ok((jobs, unreadable))
}

/// The apps that have jobs in the spool but are not among `apps`, sorted, each once.
fn unconfigured_apps(apps: &[String], jobs: &[Job]) -> Vec<String> {
    let mut unconfigured: Vec<String> = jobs
        .iter()
        .map(|j| j.app.clone())
        .filter(|a| !apps.contains(a))
        .collect();
    unconfigured.sort();
    unconfigured.dedup();
    unconfigured
}

/// One app's part of the report: its name, then one line per kind of job, wait and outcome.
fn app_section(
    spool: &Spool,
    daemon: Option<u32>,
    app: &str,
    unconfigured: bool,
    jobs: &[Job],
    live: Option<&LiveFile>,
    last: &HashMap<String, HistoryEntry>,
) -> String {
    let mut out = app.to_string();
    if unconfigured {
        out.push_str(" (not in the configuration)");
    }
    out.push('\n');
    let mine: Vec<&Job> = jobs.iter().filter(|j| j.app == app).collect();
    out.push_str(&in_flight_lines(spool, daemon, &mine));
    out.push_str(&pending_line(&mine));
    out.push_str(&unrecorded_line(&mine));
    // Whether an app needs attention is read from its flag (which `resume` clears), not the board.
    let waits = live.iter().flat_map(|l| &l.waits);
    for wait in waits.filter(|w| w.app == app && w.kind != WaitKind::Attention) {
        out.push_str(&wait_line(wait));
    }
    out.push_str(&last_line(last.get(app)));
    out
}

/// The jobs neither queued nor finished, each with its state, file, id, deployment and start.
fn in_flight_lines(spool: &Spool, daemon: Option<u32>, jobs: &[&Job]) -> String {
    let in_flight: Vec<&&Job> = jobs
        .iter()
        .filter(|j| !matches!(j.state, JobState::Queued) && !j.is_done())
        .collect();
    if in_flight.is_empty() {
        return "  in flight: none\n".to_string();
    }
    let mut out = String::new();
    for job in in_flight {
        let platform = match &job.state {
            JobState::Deploying {
                deployment_id,
                platform_status,
                ..
            } => format!(
                ", deployment {deployment_id}, platform status {}",
                platform_status.as_deref().unwrap_or("not seen yet")
            ),
            _ => String::new(),
        };
        let interrupted = Driver::of(spool, job, daemon) == Driver::Nobody;
        out.push_str(&format!(
            "  {}: {} {} (job {}{platform}, since {})\n",
            if interrupted {
                "INTERRUPTED"
            } else {
                "in flight"
            },
            job.state.name(),
            file_label(job),
            job.id,
            rfc3339_utc(job.started_at.unwrap_or(job.created_at))
        ));
        if interrupted {
            out.push_str(&format!("    {}\n", interrupted_hint(job)));
        }
    }
    out
}

/// How many jobs are queued, and their files.
pub(super) fn pending_line(jobs: &[&Job]) -> String {
    let pending: Vec<&&Job> = jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Queued))
        .collect();
    if pending.is_empty() {
        return "  pending:   none\n".to_string();
    }
    let files: Vec<String> = pending.iter().map(|j| file_label(j)).collect();
    format!("  pending:   {} ({})\n", pending.len(), files.join(", "))
}

/// The finished jobs whose outcome is not recorded yet, if any.
fn unrecorded_line(jobs: &[&Job]) -> String {
    let unrecorded: Vec<&&Job> = jobs.iter().filter(|j| j.is_done()).collect();
    if unrecorded.is_empty() {
        return String::new();
    }
    let files: Vec<String> = unrecorded
        .iter()
        .map(|j| format!("{} {}", j.state.name(), file_label(j)))
        .collect();
    format!(
        "  finished, not yet recorded: {} ({})\n",
        unrecorded.len(),
        files.join(", ")
    )
}

/// What the daemon waits on, with its cause and next try.
pub(super) fn wait_line(wait: &Wait) -> String {
    let next = wait
        .next_try()
        .map(|t| format!(", next try {}", rfc3339_utc(t)))
        .unwrap_or_default();
    format!(
        "  {}: {}: {} (since {}{next})\n",
        wait.kind.label(),
        wait.subject,
        wait.cause,
        rfc3339_utc(wait.since)
    )
}

/// The last recorded outcome, with its deployment and status when known.
pub(super) fn last_line(last: Option<&HistoryEntry>) -> String {
    let Some(e) = last else {
        return "  last:      none recorded\n".to_string();
    };
    let mut detail = Vec::new();
    if let Some(id) = &e.deployment_id {
        detail.push(format!("deployment {id}"));
    }
    if let Some(status) = &e.status {
        detail.push(format!("status {status}"));
    }
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({})", detail.join(", "))
    };
    format!(
        "  last:      {} {} at {}{detail}\n",
        e.outcome, e.file, e.time
    )
}
