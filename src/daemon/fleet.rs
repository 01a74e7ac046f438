//! Fleet mode (`[cluster]`): driving apps under leases.
//!
//! The fleet's PostgreSQL is the authority; this node's spool is its working copy of the
//! jobs whose lanes it holds. The **lease keeper** ([`keeper`], a task of its own) tries to
//! take every configured app's lease each `poll` and on a NOTIFY hint; once it holds one it
//! *materializes* the app's unfinished jobs (the archive fetched from the store unless this
//! node has it, `job.json` = the store's record, which wins over any local copy) and hands
//! them to the main loop, which opens the app's lane and submits them in arrival order. It
//! renews each lease every `lease`/3; a lease that renewal says is gone, or that was not
//! renewed within `lease` by the monotonic clock (a node paused past it), is lost: the main
//! loop drops the app from its lane at once ([`crate::queue::lane::Lanes::drop_app`]). A
//! save that the store refuses (`Fenced`) stops the app's lane by itself. At shutdown the
//! keeper keeps renewing until the lanes have stopped, then releases its leases.
//!
//! The driver's side of outcomes is [`FleetFinisher`]: the store takes the history entry
//! (fenced) before anything local changes; the node that took the job in (its origin) moves
//! the file as always, another only removes its working copy.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::*;
use crate::blocking::BlockingError;
use crate::config::ClusterConfig;
use crate::fleet::{MigrateError, PgStore};
use crate::queue::lane::KnownJobs;
use crate::queue::spool::{ARCHIVE_NAME, Payload};
use crate::queue::store::{Lease, Store};

/// Written in a job directory that this node materialized from the store (its archive
/// fetched, or the directory made for it): the node did not take the job in, so it moves no
/// file when the job ends.
pub(super) const MATERIALIZED_NAME: &str = "materialized";

/// The first wait before connecting again to a database that cannot be reached at start,
/// doubled up to [`RECONNECT_MAX`].
const RECONNECT_FIRST: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How long a stopping daemon spends releasing its leases (they run out by themselves).
pub(super) const RELEASE_WITHIN: Duration = Duration::from_secs(5);

/// What the keeper tells the main loop.
pub(super) enum KeeperMsg {
    /// This node holds the app's lease: open its lane and submit these jobs (in order).
    Take { app: String, jobs: Vec<Job> },
    /// The app's lease is lost: stop driving it now.
    Lost { app: String },
}

/// The keeper as the daemon sees it.
pub(super) struct Fleet {
    rx: mpsc::Receiver<KeeperMsg>,
    apps: watch::Sender<Vec<String>>,
    release: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// The configured apps changed (a reload): leases are taken for these from now on, and
    /// those of apps no longer configured are released.
    pub(super) fn set_apps(&self, apps: Vec<String>) {
        let _ = self.apps.send(apps);
    }

    /// After the lanes stopped: the keeper releases every lease it holds and ends (within
    /// `within`).
    pub(super) async fn release(&mut self, within: Duration) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take()
            && tokio::time::timeout(within, task).await.is_err()
        {
            tracing::warn!(
                "the leases could not all be released in time; they run out by themselves"
            );
        }
    }
}

/// The keeper's next message, or never without a keeper.
pub(super) async fn next(fleet: &mut Option<Fleet>) -> Option<KeeperMsg> {
    match fleet {
        Some(fleet) => fleet.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What the keeper is started with.
pub(super) struct KeeperParts {
    pub(super) store: Arc<dyn Store>,
    pub(super) spool: Spool,
    pub(super) known: KnownJobs,
    pub(super) apps: Vec<String>,
    /// NOTIFY hints (app names), when the store gives them.
    pub(super) hints: Option<mpsc::Receiver<String>>,
    pub(super) cluster: ClusterConfig,
    pub(super) shutdown: shutdown::Shutdown,
}

/// Starts the keeper task.
pub(super) fn start(parts: KeeperParts) -> Fleet {
    let (tx, rx) = mpsc::channel(64);
    let (apps_tx, apps_rx) = watch::channel(parts.apps.clone());
    let (release_tx, release_rx) = oneshot::channel();
    let keeper = Keeper {
        store: parts.store,
        spool: parts.spool,
        known: parts.known,
        lease: parts.cluster.lease,
        held: HashMap::new(),
        tx,
        told: HashMap::new(),
    };
    let task = tokio::spawn(keeper.run(
        apps_rx,
        parts.hints,
        parts.cluster.poll,
        parts.shutdown,
        release_rx,
    ));
    Fleet {
        rx,
        apps: apps_tx,
        release: Some(release_tx),
        task: Some(task),
    }
}

struct Keeper {
    store: Arc<dyn Store>,
    spool: Spool,
    known: KnownJobs,
    lease: Duration,
    /// The leases this node holds, by app.
    held: HashMap<String, Lease>,
    tx: mpsc::Sender<KeeperMsg>,
    /// The last store error logged per app, so that an outage is said once, not every poll.
    told: HashMap<String, String>,
}

impl Keeper {
    async fn run(
        mut self,
        mut apps: watch::Receiver<Vec<String>>,
        mut hints: Option<mpsc::Receiver<String>>,
        poll: Duration,
        mut shutdown: shutdown::Shutdown,
        mut release: oneshot::Receiver<()>,
    ) {
        let mut poll = tokio::time::interval(poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = false;
        loop {
            tokio::select! {
                biased;
                _ = &mut release => break,
                _ = shutdown.requested(), if !stopping => stopping = true,
                _ = renew.tick() => self.renew_all().await,
                _ = poll.tick() => {
                    self.renew_all().await;
                    if !stopping {
                        let configured = apps.borrow_and_update().clone();
                        self.poll(&configured).await;
                    }
                }
                Some(app) = next_hint(&mut hints) => {
                    let configured = apps.borrow().clone();
                    if !stopping && configured.contains(&app) {
                        self.poll_app(&app).await;
                    }
                }
            }
        }
        self.release_all().await;
    }

    /// Renews every lease held; a lost one is dropped from its lane.
    async fn renew_all(&mut self) {
        let apps: Vec<String> = self.held.keys().cloned().collect();
        for app in apps {
            let Some(lease) = self.held.get(&app).cloned() else {
                continue;
            };
            // Paused past the lease (SIGSTOP, a frozen VM): gone, whatever the store says.
            if lease.renewed.elapsed() >= self.lease {
                self.lost(&app, "it was not renewed in time").await;
                continue;
            }
            let (store, duration, renewed) = (self.store.clone(), self.lease, lease.renewed);
            match crate::blocking::run(move || store.renew(&lease, duration)).await {
                Ok(Some(renewed)) => {
                    self.held.insert(app, renewed);
                }
                Ok(None) => self.lost(&app, "another node took it").await,
                Err(e) => {
                    let left = self.lease.saturating_sub(renewed.elapsed());
                    tracing::warn!(app = %app, "cannot renew the app's lease ({} left): {e}", crate::human::duration(left));
                }
            }
        }
    }

    async fn lost(&mut self, app: &str, why: &str) {
        self.held.remove(app);
        tracing::warn!(
            app,
            "this node lost the app's lease ({why}): it stops driving the app's jobs"
        );
        let _ = self
            .tx
            .send(KeeperMsg::Lost {
                app: app.to_string(),
            })
            .await;
    }

    /// Each `poll`: leases of apps no longer configured are released; every configured app's
    /// lease is tried; the held apps' new jobs are taken.
    async fn poll(&mut self, configured: &[String]) {
        let removed: Vec<String> = self
            .held
            .keys()
            .filter(|app| !configured.contains(app))
            .cloned()
            .collect();
        for app in removed {
            if let Some(lease) = self.held.remove(&app) {
                let _ = self.tx.send(KeeperMsg::Lost { app: app.clone() }).await;
                self.release(lease).await;
            }
        }
        for app in configured {
            self.poll_app(app).await;
        }
    }

    /// One app: its lease tried if not held (and on success every unfinished job taken),
    /// else the jobs that are new since.
    async fn poll_app(&mut self, app: &str) {
        if self.held.contains_key(app) {
            let before = self.known.of_app(app);
            let jobs = self.unfinished(app).await;
            let new: Vec<Job> = jobs
                .into_iter()
                .filter(|job| !before.contains(&job.id) && !self.known.contains(&job.id))
                .collect();
            if !new.is_empty() {
                self.take(app, new).await;
            }
            return;
        }
        let (store, a, duration) = (self.store.clone(), app.to_string(), self.lease);
        match crate::blocking::run(move || store.acquire(&a, duration)).await {
            Ok(Some(lease)) => {
                tracing::info!(app, token = lease.token, "this node took the app's lane");
                self.told.remove(app);
                self.held.insert(app.to_string(), lease);
                let jobs = self.unfinished(app).await;
                self.take(app, jobs).await;
            }
            Ok(None) => {}
            Err(e) => self.say(app, format!("cannot try the app's lease: {e}")),
        }
    }

    /// The app's unfinished jobs in the store, in arrival order.
    async fn unfinished(&mut self, app: &str) -> Vec<Job> {
        let (store, a) = (self.store.clone(), app.to_string());
        match crate::blocking::run(move || store.jobs(Some(&a))).await {
            Ok(mut jobs) => {
                jobs.sort_by_key(|job| job.seq);
                jobs
            }
            Err(e) => {
                self.say(app, format!("cannot list the app's jobs in the store: {e}"));
                Vec::new()
            }
        }
    }

    /// Materializes the jobs in this node's spool, then hands them to the main loop.
    async fn take(&mut self, app: &str, jobs: Vec<Job>) {
        let (store, spool) = (self.store.clone(), self.spool.clone());
        let made = crate::blocking::run(move || {
            let mut ready = Vec::new();
            for job in jobs {
                match materialize(store.as_ref(), &spool, &job) {
                    Ok(()) => ready.push(job),
                    Err(e) => {
                        tracing::error!(app = %job.app, job = %job.id, "cannot take the job up from the store: {e}; tried again at the next poll")
                    }
                }
            }
            Ok::<_, std::convert::Infallible>(ready)
        })
        .await;
        let jobs = match made {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(app, "cannot take the app's jobs up from the store: {e}");
                Vec::new()
            }
        };
        let app = app.to_string();
        let _ = self.tx.send(KeeperMsg::Take { app, jobs }).await;
    }

    async fn release(&self, lease: Lease) {
        let store = self.store.clone();
        let app = lease.app.clone();
        match crate::blocking::run(move || store.release(&lease)).await {
            Ok(()) => tracing::info!(app = %app, "released the app's lane"),
            Err(e) => {
                tracing::warn!(app = %app, "cannot release the app's lease (it runs out by itself): {e}")
            }
        }
    }

    async fn release_all(&mut self) {
        for (_, lease) in std::mem::take(&mut self.held) {
            self.release(lease).await;
        }
    }

    /// Logs a store problem of an app once per cause.
    fn say(&mut self, app: &str, message: String) {
        if self.told.get(app) != Some(&message) {
            tracing::warn!(app, "{message}");
            self.told.insert(app.to_string(), message);
        }
    }
}

async fn next_hint(hints: &mut Option<mpsc::Receiver<String>>) -> Option<String> {
    match hints {
        Some(rx) => match rx.recv().await {
            Some(app) => Some(app),
            None => {
                *hints = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Makes the store's job this node's working copy: its directory (marked as materialized when
/// this node made it), its archive (fetched, checked, renamed in) unless already here, and its
/// record as the store has it, which wins over any local copy. Blocking.
pub(super) fn materialize(store: &dyn Store, spool: &Spool, job: &Job) -> Result<(), String> {
    let dir = spool.job_dir(&job.id);
    let io =
        |action: &str, path: &Path, e: std::io::Error| format!("{action} {}: {e}", path.display());
    if !dir.exists() {
        crate::durable::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
        mark_materialized(&dir)?;
    }
    let archive = dir.join(ARCHIVE_NAME);
    if matches!(job.payload, Payload::Archive { .. }) && !archive.exists() {
        mark_materialized(&dir)?;
        let part = dir.join(".archive.tar.gz.part");
        let _ = std::fs::remove_file(&part);
        store
            .fetch_archive(&job.id, &part)
            .map_err(|e| format!("cannot fetch the archive: {e}"))?;
        crate::durable::rename(&part, &archive).map_err(|e| io("cannot move", &part, e))?;
    }
    spool.save_local(job).map_err(|e| e.to_string())
}

fn mark_materialized(dir: &Path) -> Result<(), String> {
    let path = dir.join(MATERIALIZED_NAME);
    if path.exists() {
        return Ok(());
    }
    crate::durable::write(&path, b"taken up from the fleet's store\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The driver's side of a finished job in fleet mode: the store takes its history entry first
/// (fenced: a node that lost the lane records nothing), then the job leaves this node's spool:
/// through the usual outcome recording (file to `done/` or `failed/`, history) when this node
/// took the job in, else by removing the working copy only (the origin places its file).
/// Metrics and hooks run here, on the driving node.
pub(super) struct FleetFinisher {
    pub(super) local: OutcomeFinisher,
    pub(super) store: Arc<dyn Store>,
    pub(super) spool: Spool,
}

impl Finisher for FleetFinisher {
    fn finish(&self, job: &Job, keep_done: usize) {
        let outcomes = &self.local.outcomes;
        let entry = match outcomes.entry_for_finished(job) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(app = %job.app, job = %job.id, "cannot record the outcome: {e}");
                return;
            }
        };
        let value = match serde_json::to_value(&entry) {
            Ok(value) => value,
            Err(e) => {
                tracing::error!(app = %job.app, job = %job.id, "cannot record the outcome: {e}");
                return;
            }
        };
        if let Err(e) = self.store.finish(job, &value) {
            tracing::warn!(app = %job.app, job = %job.id, "the job store did not take the outcome; the job is left for the lane's holder: {e}");
            return;
        }
        let origin = !self.spool.job_dir(&job.id).join(MATERIALIZED_NAME).exists();
        if origin {
            self.local.finish(job, keep_done);
            return;
        }
        let note = self.local.after.note_for(job);
        tracing::info!(
            app = %job.app,
            job = %job.id,
            outcome = ?entry.outcome,
            "job finished; the node that took it in places its file"
        );
        if let Err(e) = self.spool.remove(&job.id) {
            tracing::warn!(app = %job.app, job = %job.id, "cannot remove the job's working copy: {e}");
        }
        self.local.after.done(&entry, note);
    }
}

/// What the daemon gets from the store it opened.
pub(super) struct Opened {
    pub(super) store: Arc<PgStore>,
    pub(super) hints: Option<mpsc::Receiver<String>>,
}

/// Connects to the fleet's database and applies the migrations, trying again with backoff
/// (0.2 s doubling to 10 s) while it cannot be reached, until `stop` says stop (then `None`).
/// A schema newer than this binary knows is a setup error (exit status 2).
pub(super) async fn connect(
    cluster: &ClusterConfig,
    stop: &mut mpsc::UnboundedReceiver<&'static str>,
    notifier: &Notifier,
) -> Result<Option<Opened>, DaemonError> {
    let Some(url) = cluster.database_url.clone() else {
        return Err(DaemonError::Setup(
            "[cluster] has no database URL".to_string(),
        ));
    };
    let node = cluster.node.clone();
    let store = crate::blocking::run(move || PgStore::new(&url, &node))
        .await
        .map_err(|e| DaemonError::Setup(format!("the fleet's database: {e}")))?;
    let store = Arc::new(store);
    let mut wait = RECONNECT_FIRST;
    let mut told = None;
    loop {
        let s = store.clone();
        let why = match crate::blocking::run(move || s.migrate()).await {
            Ok(applied) => {
                if told.is_some() {
                    tracing::info!("the fleet's database can be reached again");
                }
                if !applied.is_empty() {
                    tracing::info!(versions = ?applied, "applied the fleet's schema migrations");
                }
                let hints = Some(store.listen());
                return Ok(Some(Opened { store, hints }));
            }
            Err(BlockingError::Failed(
                e @ (MigrateError::TooNew { .. } | MigrateError::Url(_)),
            )) => {
                return Err(DaemonError::Setup(format!("the fleet's database: {e}")));
            }
            Err(e) => e.to_string(),
        };
        if told.as_deref() != Some(why.as_str()) {
            tracing::warn!("the fleet's database cannot be reached; trying again: {why}");
            notifier.status(&format!("waiting for the fleet's database: {why}"));
            told = Some(why);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            reason = stop.recv() => {
                tracing::info!(signal = reason.unwrap_or("the control handle was dropped"), "stopped while waiting for the fleet's database");
                return Ok(None);
            }
        }
        wait = (wait * 2).min(RECONNECT_MAX);
    }
}

impl Daemon {
    /// Starts the lease keeper over the opened store (fleet mode).
    pub(super) fn start_keeper(&mut self, opened: Opened) {
        let Some(cluster) = self.config.cluster.clone() else {
            return;
        };
        tracing::info!(node = %cluster.node, lease_ms = cluster.lease.as_millis() as u64, "fleet mode: apps are driven under leases");
        self.fleet = Some(start(KeeperParts {
            store: opened.store,
            spool: self.pipeline.spool.clone(),
            known: self.pipeline.lanes.known_jobs(),
            apps: self.config.apps.iter().map(|a| a.name.clone()).collect(),
            hints: opened.hints,
            cluster,
            shutdown: self.pipeline.wiring.shutdown.clone(),
        }));
    }

    /// What the keeper says, done on the lanes.
    pub(super) fn on_keeper(&mut self, msg: KeeperMsg) {
        let lanes = &mut self.pipeline.lanes;
        match msg {
            KeeperMsg::Take { app, jobs } => {
                lanes.open(&app);
                for job in jobs {
                    if lanes.knows(&job.id) {
                        continue;
                    }
                    tracing::info!(app = %job.app, job = %job.id, state = %job.state.name(), "driving the job under the app's lease");
                    if let Err(job) = lanes.submit(job) {
                        tracing::warn!(app = %job.app, job = %job.id, "no lane for the app; the job stays in the store");
                    }
                }
            }
            KeeperMsg::Lost { app } => {
                drop(lanes.drop_app(&app));
            }
        }
    }
}

/// The fleet's API budget's connection to the database (`[cluster]`): one client, made again
/// once it is lost, its connection task on the daemon's runtime.
struct BudgetConnect {
    pg: crate::fleet::pg::Pg,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl crate::fleet::budget::Connect for BudgetConnect {
    fn client(
        &self,
    ) -> crate::deploy::scalingo::budget::SharedFuture<
        '_,
        Result<Arc<tokio_postgres::Client>, String>,
    > {
        Box::pin(async move {
            let mut slot = self.client.lock().await;
            if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
                return Ok(client.clone());
            }
            let client = Arc::new(self.pg.pool().connect().await?);
            *slot = Some(client.clone());
            Ok(client)
        })
    }
}

/// Fleet mode: the Scalingo client's budget of requests a minute is the fleet's, one window
/// per region and token in the database, shared by every node.
pub(super) async fn share_budget(
    client: &ScalingoClient,
    cluster: &ClusterConfig,
) -> Result<(), DaemonError> {
    let Some(url) = cluster.database_url.clone() else {
        return Ok(());
    };
    let pg = crate::blocking::run(move || crate::fleet::pg::Pg::new(&url))
        .await
        .map_err(|e| DaemonError::Setup(format!("the fleet's database: {e}")))?;
    let connect: Arc<dyn crate::fleet::budget::Connect> = Arc::new(BudgetConnect {
        pg,
        client: tokio::sync::Mutex::new(None),
    });
    client.share_budget(crate::fleet::budget::PgWindow::windows(connect));
    tracing::info!("the API budget is the fleet's: shared with the other nodes in the database");
    Ok(())
}
