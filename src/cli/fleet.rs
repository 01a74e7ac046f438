//! `status`, `history` and `jobs` in fleet mode (`[cluster]`): the fleet's state as its
//! store holds it, from any node. The database URL is never printed. What cannot work through
//! the store yet says so instead of acting on this node's spool only.

use super::*;
use crate::outcome::{FleetState, FleetView, HistoryEntry, NodeSeen};
use crate::queue::store::{Store, StoreError};

/// The fleet's state for `status`. Blocking.
pub(super) fn read_state(
    store: &dyn Store,
    nodes: Result<Vec<NodeSeen>, StoreError>,
    apps: &[String],
) -> Result<FleetState, String> {
    let holders = store.holders().map_err(|e| e.to_string())?;
    let jobs = store.jobs(None).map_err(|e| e.to_string())?;
    let nodes = nodes.map_err(|e| e.to_string())?;
    let mut names: Vec<String> = apps.to_vec();
    for app in jobs
        .iter()
        .map(|j| &j.app)
        .chain(holders.iter().map(|h| &h.app))
    {
        if !names.contains(app) {
            names.push(app.clone());
        }
    }
    let mut last = std::collections::HashMap::new();
    for app in &names {
        let newest = store.history(Some(app), 1).map_err(|e| e.to_string())?;
        if let Some(entry) = newest.into_iter().next_back().and_then(entry_of) {
            last.insert(app.clone(), entry);
        }
    }
    Ok(FleetState {
        holders,
        nodes,
        jobs,
        last,
    })
}

fn entry_of(finished: crate::queue::store::Finished) -> Option<HistoryEntry> {
    serde_json::from_value(finished.entry).ok()
}

/// Prints `status` for the fleet. Exit 0 when the database answered, 1 when it did not (the
/// outage is shown).
pub(super) fn print_status(view: &FleetView<'_>, json: bool) -> u8 {
    if json {
        println!("{}", crate::outcome::fleet_json(view));
    } else {
        print!("{}", crate::outcome::fleet_report(view));
    }
    if view.state.is_ok() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// `history` for the fleet: the newest `limit` outcomes of every node's jobs. Blocking.
pub(super) fn print_history(store: &dyn Store, app: Option<&str>, limit: usize, json: bool) -> u8 {
    let finished = match store.history(app, limit) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("dropdeploy: cannot read the fleet's history: {e}");
            return EXIT_FAILED;
        }
    };
    if json {
        for f in &finished {
            println!("{}", f.entry);
        }
        return EXIT_OK;
    }
    let entries: Vec<HistoryEntry> = finished.into_iter().filter_map(entry_of).collect();
    if entries.is_empty() {
        println!("no finished jobs in the fleet's history");
    } else {
        print!("{}", crate::outcome::format_history_table(&entries));
    }
    EXIT_OK
}

/// `jobs list` for the fleet: the unfinished jobs of every node, with the lane holder that
/// drives each app. Blocking.
pub(super) fn print_jobs(store: &dyn Store) -> u8 {
    let (jobs, holders) = match store.jobs(None).and_then(|j| Ok((j, store.holders()?))) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("dropdeploy: cannot read the fleet's jobs: {e}");
            return EXIT_FAILED;
        }
    };
    if jobs.is_empty() {
        println!("no unfinished jobs in the fleet");
        return EXIT_OK;
    }
    let now = std::time::SystemTime::now();
    let mut rows = vec![[
        "JOB".to_string(),
        "APP".to_string(),
        "STATE".to_string(),
        "FILE".to_string(),
        "SINCE".to_string(),
        "DRIVEN BY".to_string(),
    ]];
    for job in &jobs {
        let driver = holders
            .iter()
            .find(|h| h.app == job.app && h.until > now)
            .map_or_else(
                || "no node yet (the lane is free)".to_string(),
                |h| format!("node {}", h.node),
            );
        rows.push([
            job.id.clone(),
            job.app.clone(),
            job.state.name().to_string(),
            crate::queue::check::file_name_of(job),
            crate::outcome::rfc3339_utc(job.started_at.unwrap_or(job.created_at)),
            driver,
        ]);
    }
    print!("{}", table(&rows));
    EXIT_OK
}

fn table(rows: &[[String; 6]]) -> String {
    let mut widths = [0usize; 6];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// What a command that cannot work through the fleet's store yet says, instead of acting on
/// this node's spool only. Exit status 2.
pub(super) fn not_in_fleet_mode(command: &str, instead: &str) -> u8 {
    eprintln!(
        "dropdeploy: `{command}` does not work in fleet mode yet ([cluster] is configured): \
         the fleet's jobs are driven by the node holding each app's lane, and this command \
         would act on this node's spool only. {instead}"
    );
    EXIT_USAGE
}

/// Whether the configuration has a `[cluster]` (fleet mode).
pub(super) fn in_fleet_mode(config: &Config) -> bool {
    cluster_node(config).is_some()
}

/// This node's name in the fleet, in fleet mode.
fn cluster_node(config: &Config) -> Option<String> {
    config.cluster.as_ref().map(|c| c.node.clone())
}

/// The fleet's store (the database URL is never part of an error).
fn open_store(config: &Config) -> Result<Arc<dyn FleetRead>, String> {
    let Some(cluster) = &config.cluster else {
        return Err("no [cluster] in the configuration".to_string());
    };
    let Some(url) = &cluster.database_url else {
        return Err("[cluster] has no database URL".to_string());
    };
    let store = crate::fleet::PgStore::new(url, &cluster.node)
        .map_err(|e| format!("the fleet's database: {e}"))?;
    Ok(Arc::new(store))
}

impl FleetRead for crate::fleet::PgStore {
    fn nodes_seen(&self) -> Result<Vec<NodeSeen>, StoreError> {
        Ok(self
            .nodes()?
            .into_iter()
            .map(|n| NodeSeen {
                name: n.node,
                last_seen: n.seen_at,
            })
            .collect())
    }

    fn as_store(&self) -> &dyn Store {
        self
    }
}

/// What the commands read of the fleet's store beyond the [`Store`] trait.
trait FleetRead: Store {
    /// The nodes and when each was last seen.
    fn nodes_seen(&self) -> Result<Vec<NodeSeen>, StoreError>;
    fn as_store(&self) -> &dyn Store;
}

/// `jobs` in fleet mode: `list` from the store; `resume` and `discard` refused (they would act
/// on this node's spool only). `None` outside fleet mode.
pub(super) fn jobs_command(config: &Config, command: &JobsCommand) -> Option<u8> {
    if !in_fleet_mode(config) {
        return None;
    }
    Some(match command {
        JobsCommand::List => with_store(config, |store, _| print_jobs(store)),
        JobsCommand::Resume { .. } => not_in_fleet_mode(
            "jobs resume",
            "An unfinished job resumes on its own on whichever node holds its app's lane \
             (`dropdeploy status` names it).",
        ),
        JobsCommand::Discard { .. } => not_in_fleet_mode(
            "jobs discard",
            "Stop the job's node or wait for its end; `dropdeploy jobs list` shows who drives it.",
        ),
    })
}

/// `history` in fleet mode. `None` outside fleet mode.
pub(super) fn history_command(
    config: &Config,
    app: Option<&str>,
    limit: usize,
    json: bool,
) -> Option<u8> {
    if !in_fleet_mode(config) {
        return None;
    }
    Some(with_store(config, |store, _| {
        print_history(store, app, limit, json)
    }))
}

/// `status` in fleet mode. `None` outside fleet mode.
pub(super) fn status_command(
    config: &Config,
    state_dir: &std::path::Path,
    json: bool,
) -> Option<u8> {
    let node = cluster_node(config)?;
    let apps: Vec<String> = config.apps.iter().map(|a| a.name.clone()).collect();
    let live = crate::live::read(state_dir)
        .filter(|_| crate::lock::StateLock::holder(state_dir).is_some());
    let state = match open_store(config) {
        Ok(store) => {
            let nodes = store.nodes_seen();
            read_state(store.as_store(), nodes, &apps)
        }
        Err(e) => Err(e),
    };
    let view = FleetView {
        node: &node,
        apps: &apps,
        state,
        live: live.as_ref(),
        now: std::time::SystemTime::now(),
    };
    Some(print_status(&view, json))
}

/// Runs `work` with the fleet's store, or says why it cannot be reached (exit 1).
fn with_store(config: &Config, work: impl FnOnce(&dyn Store, &Config) -> u8) -> u8 {
    match open_store(config) {
        Ok(store) => work(store.as_store(), config),
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            EXIT_FAILED
        }
    }
}
