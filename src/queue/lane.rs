//! Lanes: one per app, so that an app never runs two deployments at once.
//!
//! A lane runs one job at a time. Work that arrives while it is busy waits: with
//! `queue = "latest"` in a single pending slot, where a newer archive replaces a waiting one
//! (which ends `superseded`, its file kept); with `queue = "all"` in arrival order. A global
//! semaphore caps how many lanes deploy at once (`max_parallel`). Finished jobs are handed to
//! the [`Finisher`], which records their outcome.
//!
//! A job already under way (recovered after a restart: past `queued`, or started before) runs
//! before any queued job of its app, and is never superseded. Before it drives a job, a lane
//! holds the app's lock in the `state_dir` (so that another process sharing it, a one-shot
//! `deploy` or the daemon, never deploys the same app at the same time) and the job's lock
//! ([`hold`]). A removed app's lane is retired: it finishes its job in flight and starts
//! nothing more; if the app comes back, the same lane takes it up again.
//!
//! In fleet mode a node drives an app only while it holds the app's lease: the lanes are
//! *gated* ([`Lanes::gate`]), and take an app's jobs only once it is opened ([`Lanes::open`]).
//! When the lease is lost, [`Lanes::drop_app`] stops the app at once: its job in flight is
//! aborted (every step is recorded before its side effect, so whoever takes the lane next
//! resumes it from its record), its waiting jobs are forgotten, and the lane can take work
//! again. A job whose record the shared store refuses (its lease ended, or the store is
//! unreachable) makes its lane drop what waits the same way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::QueuePolicy;
use crate::live::Board;
use crate::queue::observe::Observer;
use crate::queue::spool::{Job, JobState, Spool, SpoolError};
use crate::shutdown::Shutdown;

mod hold;

use hold::{Supersede, hold, supersede};

/// A boxed future that [`Target`] returns (no async-trait crate needed).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a lane's jobs go. The lanes know no concrete target: each lane is handed a ready one,
/// built from the app's configuration by [`crate::deploy::build`].
pub trait Target: Send + Sync {
    /// Drives `job` from its recorded state until it is finished, or until the shutdown the
    /// target was built with fires (the job then stays unfinished, to resume after a restart).
    /// Every step is recorded in the spool; only a failure to record is returned as an error.
    fn run<'a>(&'a self, job: &'a mut Job) -> BoxFuture<'a, Result<(), SpoolError>>;

    /// Told how many jobs wait behind the one in flight, whenever that changes: a target
    /// that only waits (a health check) stops early for newer work.
    fn lane_waiting(&self, _pending: usize) {}
}

/// How a lane runs its app's jobs; may change on reload.
#[derive(Clone)]
pub struct LaneSettings {
    pub policy: QueuePolicy,
    pub keep_done: usize,
    /// Where the jobs go; `Err` says why the app has no target now (its jobs wait in the
    /// spool).
    pub target: Result<Arc<dyn Target>, String>,
}

/// Records the outcome of a finished job (moves its file, appends the history). Called from a
/// blocking thread.
pub trait Finisher: Send + Sync {
    fn finish(&self, job: &Job, keep_done: usize);
}

/// What every lane shares.
pub struct LaneContext {
    spool: Spool,
    observer: Arc<dyn Observer>,
    finisher: Arc<dyn Finisher>,
    permits: Arc<Semaphore>,
    shutdown: Shutdown,
    /// The `state_dir`: the apps' locks are in its `locks/` (see [`crate::lock::AppLock`]).
    state_dir: std::path::PathBuf,
    /// Where a lane shows that it waits for another process.
    board: Arc<Board>,
}

/// What a [`LaneContext`] is made of.
pub struct LaneParts {
    pub spool: Spool,
    pub observer: Arc<dyn Observer>,
    pub finisher: Arc<dyn Finisher>,
    pub max_parallel: usize,
    pub shutdown: Shutdown,
    /// The `state_dir` that the spool is in, shared with any other process using it.
    pub state_dir: std::path::PathBuf,
    pub board: Arc<Board>,
}

impl LaneContext {
    pub fn new(parts: LaneParts) -> Arc<Self> {
        let LaneParts {
            spool,
            observer,
            finisher,
            max_parallel,
            shutdown,
            state_dir,
            board,
        } = parts;
        Arc::new(LaneContext {
            spool,
            observer,
            finisher,
            permits: Arc::new(Semaphore::new(max_parallel.max(1))),
            shutdown,
            state_dir,
            board,
        })
    }
}

/// Told the final state of a job, if the submitter asked (dropped unanswered when the daemon
/// stops before the job finishes).
type Done = Option<oneshot::Sender<JobState>>;

enum LaneMsg {
    Submit(Box<Job>, Done),
    /// New settings; a retired lane takes up its app again.
    Settings(LaneSettings),
    /// The app was removed: finish the job in flight, start nothing more.
    Retire,
    /// This node may no longer drive the app: abort the job in flight, forget what waits;
    /// told once that is done.
    Drop(oneshot::Sender<()>),
}

/// A running lane.
struct Lane {
    tx: mpsc::UnboundedSender<LaneMsg>,
    task: JoinHandle<()>,
    /// Its app was removed (see [`Lanes::retire`]).
    retired: bool,
}

/// The jobs handed to the lanes (by id, with their app), so that a job is never submitted
/// twice. Shared with whoever hands jobs in from another task ([`Lanes::known_jobs`]).
#[derive(Clone, Default)]
pub struct KnownJobs(Arc<Mutex<HashMap<String, String>>>);

impl KnownJobs {
    /// Whether the job is in a lane's hands.
    pub fn contains(&self, id: &str) -> bool {
        self.0.lock().is_ok_and(|k| k.contains_key(id))
    }

    /// The ids of one app's jobs in the lanes' hands.
    pub fn of_app(&self, app: &str) -> HashSet<String> {
        self.0
            .lock()
            .map(|k| {
                k.iter()
                    .filter(|(_, a)| *a == app)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Marks a job as in a lane's hands; false if it was already.
    fn insert(&self, job: &Job) -> bool {
        self.0
            .lock()
            .is_ok_and(|mut k| k.insert(job.id.clone(), job.app.clone()).is_none())
    }

    fn remove(&self, id: &str) {
        if let Ok(mut k) = self.0.lock() {
            k.remove(id);
        }
    }

    fn remove_app(&self, app: &str) {
        if let Ok(mut k) = self.0.lock() {
            k.retain(|_, a| a != app);
        }
    }
}

/// All lanes, by app name.
pub struct Lanes {
    ctx: Arc<LaneContext>,
    lanes: HashMap<String, Lane>,
    /// Job ids handed to a lane, so that a job is never submitted twice.
    known: KnownJobs,
    /// Fleet mode: only the apps in the set (those whose lease this node holds) take jobs.
    gate: Option<HashSet<String>>,
}

impl Lanes {
    pub fn new(ctx: Arc<LaneContext>) -> Self {
        Lanes {
            ctx,
            lanes: HashMap::new(),
            known: KnownJobs::default(),
            gate: None,
        }
    }

    /// Fleet mode: from now on an app's lane takes jobs only once [`Lanes::open`] opened it
    /// (a job submitted for a closed app is left where it is: the store hands it to whoever
    /// holds the app's lease).
    pub fn gate(&mut self) {
        self.gate.get_or_insert_with(HashSet::new);
    }

    /// Fleet mode: this node holds the app's lease, its lane takes its jobs.
    pub fn open(&mut self, app: &str) {
        if let Some(gate) = &mut self.gate {
            gate.insert(app.to_string());
        }
    }

    /// Whether the app's lane takes jobs now (always, outside fleet mode).
    pub fn is_open(&self, app: &str) -> bool {
        self.gate.as_ref().is_none_or(|gate| gate.contains(app))
    }

    /// The jobs in the lanes' hands, for a task that hands jobs in from elsewhere.
    pub fn known_jobs(&self) -> KnownJobs {
        self.known.clone()
    }

    /// Stops driving the app at once (fleet mode: its lease was lost): closes it (see
    /// [`Lanes::gate`]), forgets its jobs (a later [`Lanes::submit`] takes them again), and
    /// has its lane abort the job in flight and drop what waits. The lane stays, ready for
    /// the app's jobs when it is opened again. The returned channel says when the job in
    /// flight has stopped.
    pub fn drop_app(&mut self, app: &str) -> oneshot::Receiver<()> {
        if let Some(gate) = &mut self.gate {
            gate.remove(app);
        }
        self.known.remove_app(app);
        let (tx, rx) = oneshot::channel();
        if let Some(lane) = self.lanes.get(app) {
            let _ = lane.tx.send(LaneMsg::Drop(tx));
        }
        rx
    }

    pub fn context(&self) -> &Arc<LaneContext> {
        &self.ctx
    }

    /// Starts the app's lane, or updates its settings if it runs already (a retired lane
    /// takes up its app again: a lane still finishing its job in flight is the app's lane, so
    /// that one app never has two).
    pub fn ensure(&mut self, app: &str, settings: LaneSettings) {
        if let Some(lane) = self.lanes.get_mut(app)
            && !lane.task.is_finished()
            && lane.tx.send(LaneMsg::Settings(settings.clone())).is_ok()
        {
            lane.retired = false;
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(lane_task(
            app.to_string(),
            settings,
            rx,
            self.ctx.clone(),
            self.known.clone(),
        ));
        self.lanes.insert(
            app.to_string(),
            Lane {
                tx,
                task,
                retired: false,
            },
        );
    }

    /// Whether the job was already handed to a lane.
    pub fn knows(&self, job_id: &str) -> bool {
        self.known.contains(job_id)
    }

    /// Hands a job to its app's lane. Returns the job back if the app has no lane.
    pub fn submit(&mut self, job: Job) -> Result<(), Box<Job>> {
        self.submit_with(job, None)
    }

    /// Like [`Lanes::submit`], and tells the job's final state on the returned channel.
    pub fn submit_watched(&mut self, job: Job) -> Result<oneshot::Receiver<JobState>, Box<Job>> {
        let (tx, rx) = oneshot::channel();
        self.submit_with(job, Some(tx)).map(|()| rx)
    }

    fn submit_with(&mut self, job: Job, done: Done) -> Result<(), Box<Job>> {
        if self.knows(&job.id) {
            return Ok(());
        }
        let Some(lane) = self.lanes.get(&job.app).filter(|lane| !lane.retired) else {
            return Err(Box::new(job));
        };
        if !self.is_open(&job.app) {
            // Fleet mode: another node drives the app; the store hands it the job.
            tracing::debug!(app = %job.app, job = %job.id, "this node does not hold the app's lane: the job is left to the lane's holder");
            return Ok(());
        }
        self.known.insert(&job);
        lane.tx
            .send(LaneMsg::Submit(Box::new(job), done))
            .map_err(|e| match e.0 {
                LaneMsg::Submit(job, _) => job,
                _ => unreachable!("a submit was sent"),
            })
    }

    /// A handle that submits to the app's lane from another task (a watched directory's
    /// redeploy loop).
    pub fn sender(&self, app: &str) -> Option<LaneSender> {
        self.lanes
            .get(app)
            .filter(|l| !l.retired)
            .map(|lane| LaneSender {
                tx: lane.tx.clone(),
                known: self.known.clone(),
            })
    }

    /// Stops the app's lane from taking work: it finishes the job in flight and starts
    /// nothing more. Jobs still waiting stay in the spool, unfinished, and in the lane, for
    /// when the app is configured again ([`Lanes::ensure`] takes the same lane up again).
    pub fn retire(&mut self, app: &str) {
        if let Some(lane) = self.lanes.get_mut(app) {
            lane.retired = true;
            let _ = lane.tx.send(LaneMsg::Retire);
        }
    }

    /// The apps with a lane that is not retired.
    pub fn apps(&self) -> Vec<String> {
        self.lanes
            .iter()
            .filter(|(_, lane)| !lane.retired)
            .map(|(app, _)| app.clone())
            .collect()
    }

    /// Waits for every lane to end (after the shutdown fired, or after all were retired).
    pub async fn join(self) {
        for (_, lane) in self.lanes {
            drop(lane.tx);
            let _ = lane.task.await;
        }
    }
}

/// Submits jobs to one app's lane from outside the daemon's main loop.
#[derive(Clone)]
pub struct LaneSender {
    tx: mpsc::UnboundedSender<LaneMsg>,
    known: KnownJobs,
}

impl LaneSender {
    /// Hands a job to the lane and returns a channel that tells its final state; `None` when
    /// the lane has ended (the app was removed, or the daemon stops).
    pub fn submit_watched(&self, job: Job) -> Option<oneshot::Receiver<JobState>> {
        let (done, rx) = oneshot::channel();
        self.known.insert(&job);
        self.tx
            .send(LaneMsg::Submit(Box::new(job), Some(done)))
            .ok()
            .map(|()| rx)
    }
}

/// One app's lane: a job in flight, and what waits behind it.
async fn lane_task(
    app: String,
    mut settings: LaneSettings,
    mut rx: mpsc::UnboundedReceiver<LaneMsg>,
    ctx: Arc<LaneContext>,
    known: KnownJobs,
) {
    let mut pending: VecDeque<(Job, Done)> = VecDeque::new();
    let mut current: Option<JoinHandle<RunEnd>> = None;
    let mut open = true;
    // A retired lane starts nothing: its waiting jobs stay in the spool (and here, for when
    // the app comes back).
    let mut retired = false;
    let mut shutdown = ctx.shutdown.clone();
    loop {
        if !shutdown.is_requested()
            && !retired
            && current.is_none()
            && let Some((job, done)) = take_next(&mut pending)
        {
            current = Some(tokio::spawn(run_job(
                job,
                done,
                settings.clone(),
                ctx.clone(),
                known.clone(),
            )));
        }
        ctx.observer
            .lane(&app, usize::from(current.is_some()), pending.len());
        if let Ok(target) = &settings.target {
            // A retired lane's waiting jobs do not run next: no reason to cut a check short.
            target.lane_waiting(if retired { 0 } else { pending.len() });
        }
        if current.is_none() && (!open || shutdown.is_requested()) {
            // Waiting jobs stay in the spool, unfinished: the next start resumes them.
            return;
        }
        tokio::select! {
            msg = rx.recv(), if open => match msg {
                Some(LaneMsg::Submit(job, done)) => {
                    accept(&app, *job, done, &mut pending, &ctx, &settings, &known).await;
                }
                Some(LaneMsg::Settings(s)) => {
                    settings = s;
                    retired = false;
                }
                Some(LaneMsg::Retire) => retired = true,
                Some(LaneMsg::Drop(told)) => {
                    drop_all(&app, current.take(), &mut pending, &known).await;
                    let _ = told.send(());
                }
                None => open = false,
            },
            end = async { match current.as_mut() { Some(c) => c.await.unwrap_or(RunEnd::Stopped), None => RunEnd::Stopped } }, if current.is_some() => {
                current = None;
                match end {
                    RunEnd::Next(next) => {
                        follow_up(&app, *next, &mut pending, &ctx, &settings, &known).await;
                    }
                    RunEnd::Refused => drop_all(&app, None, &mut pending, &known).await,
                    RunEnd::Stopped => {}
                }
            }
            _ = shutdown.requested(), if !shutdown.is_requested() => {}
        }
    }
}

/// Whether a job is already under way: past `queued`, or started before (a restart came in
/// between). Such a job runs before any queued one, and is never superseded.
pub fn under_way(job: &Job) -> bool {
    !matches!(job.state, JobState::Queued) || job.started_at.is_some()
}

/// The job to run next: the first one already under way, else the first in line.
fn take_next(pending: &mut VecDeque<(Job, Done)>) -> Option<(Job, Done)> {
    let at = pending
        .iter()
        .position(|(job, _)| under_way(job))
        .unwrap_or(0);
    pending.remove(at)
}

/// Puts a new job in line. With the `latest` policy, jobs that wait and never started are
/// superseded by it; a job already under way (recovered after a restart) is never superseded,
/// nor a job that another process drives (see [`supersede`]).
async fn accept(
    app: &str,
    job: Job,
    done: Done,
    pending: &mut VecDeque<(Job, Done)>,
    ctx: &Arc<LaneContext>,
    settings: &LaneSettings,
    known: &KnownJobs,
) {
    // Handed in again (a watched tree's loop resuming its jobs when its app comes back): it
    // keeps its place, and the newer submitter hears of its end.
    if let Some(slot) = pending.iter_mut().find(|(waiting, _)| waiting.id == job.id) {
        if done.is_some() {
            slot.1 = done;
        }
        return;
    }
    // A job recovered under way supersedes nothing: what waits arrived after it.
    if settings.policy == QueuePolicy::Latest && !under_way(&job) {
        let (waiting, kept): (Vec<_>, Vec<_>) = pending
            .drain(..)
            .partition(|(waiting, _)| !under_way(waiting));
        pending.extend(kept);
        for (old, old_done) in waiting {
            let id = old.id.clone();
            match supersede(ctx, old, &job.id, settings.keep_done).await {
                Supersede::Done(state) => {
                    tracing::info!(app, job = %id, by = %job.id, "superseded by a newer archive before it started");
                    forget(known, &id);
                    if let Some(tx) = old_done {
                        let _ = tx.send(state);
                    }
                }
                Supersede::Kept(old) => pending.push_back((*old, old_done)),
                Supersede::Gone => forget(known, &id),
            }
        }
    }
    pending.push_back((job, done));
}

/// Stops driving the app's jobs: aborts the one in flight (its steps are recorded before
/// their side effects: it resumes from its record wherever its lane is taken next) and
/// forgets those that wait (their submitters hear nothing: the job did not end here).
async fn drop_all(
    app: &str,
    current: Option<JoinHandle<RunEnd>>,
    pending: &mut VecDeque<(Job, Done)>,
    known: &KnownJobs,
) {
    if let Some(current) = current {
        current.abort();
        let _ = current.await;
    }
    let dropped = pending.len();
    for (job, _) in pending.drain(..) {
        forget(known, &job.id);
    }
    tracing::info!(app, dropped, "this node stopped driving the app's jobs");
}

/// How a job's run in its lane ended.
enum RunEnd {
    /// Finished, and made this job to run next (a rollback).
    Next(Box<Job>),
    /// Finished, or stopped (the shutdown, a lock, no target): nothing more to do here.
    Stopped,
    /// The shared store refused its record (the lease ended, or the store is unreachable):
    /// this node stops driving the app's jobs.
    Refused,
}

/// The job is no longer in a lane's hands.
fn forget(known: &KnownJobs, id: &str) {
    known.remove(id);
}

/// A job made by the one that just finished (a rollback) runs next, unless newer work waits:
/// then the newer work wins and the follow-up ends superseded by it.
async fn follow_up(
    app: &str,
    next: Job,
    pending: &mut VecDeque<(Job, Done)>,
    ctx: &Arc<LaneContext>,
    settings: &LaneSettings,
    known: &KnownJobs,
) {
    if !known.insert(&next) {
        return;
    }
    let Some(newer) = pending.back().map(|(j, _)| j.id.clone()) else {
        pending.push_back((next, None));
        return;
    };
    if under_way(&next) {
        pending.push_back((next, None));
        return;
    }
    let id = next.id.clone();
    match supersede(ctx, next, &newer, settings.keep_done).await {
        Supersede::Done(_) => {
            tracing::info!(app, job = %id, by = %newer, "a newer job waits; it runs instead");
            forget(known, &id);
        }
        Supersede::Kept(next) => pending.push_back((*next, None)),
        Supersede::Gone => forget(known, &id),
    }
}

/// Runs one job to its end (or to the shutdown), then records its outcome. Returns the job it
/// made to run next in the lane, if it made one (see [`Job::check`]).
async fn run_job(
    mut job: Job,
    done: Done,
    settings: LaneSettings,
    ctx: Arc<LaneContext>,
    known: KnownJobs,
) -> RunEnd {
    let mut shutdown = ctx.shutdown.clone();
    // Another process sharing the state_dir (a one-shot `deploy`, the daemon) may be deploying
    // this app, or driving this job: wait for it. `None`: the daemon stops first, or the job
    // cannot be locked; it stays in the spool.
    let Some(_held) = hold(&ctx, &job, &mut shutdown).await else {
        return RunEnd::Stopped;
    };
    let permit = tokio::select! {
        permit = ctx.permits.clone().acquire_owned() => permit.ok(),
        _ = shutdown.requested() => None,
    };
    let Some(permit) = permit else {
        return RunEnd::Stopped;
    };
    let (spool, id) = (ctx.spool.clone(), job.id.clone());
    match crate::blocking::run(move || spool.load(&id)).await {
        Ok(fresh) => job = fresh,
        Err(e) => {
            tracing::warn!(app = %job.app, job = %job.id, "the job is gone from the spool (finished by another process?): {e}");
            return RunEnd::Stopped;
        }
    }
    let target = match &settings.target {
        Ok(target) => target.clone(),
        Err(why) => {
            tracing::error!(app = %job.app, job = %job.id, "{why}; the job stays in the spool");
            return RunEnd::Stopped;
        }
    };
    if let Err(e) = target.run(&mut job).await {
        if let SpoolError::Store(_) = e {
            tracing::warn!(app = %job.app, job = %job.id, "the job store refused the job's record; this node stops driving the app: {e}");
            forget(&known, &job.id);
            return RunEnd::Refused;
        }
        tracing::error!(
            app = %job.app,
            job = %job.id,
            "the job record cannot be written, the job is left in the spool: {e}"
        );
        return RunEnd::Stopped;
    }
    drop(permit);
    if job.is_done() {
        let next = job.check.as_ref().and_then(|c| c.follow_up.clone());
        let finisher = ctx.finisher.clone();
        let id = job.id.clone();
        let keep = settings.keep_done;
        let state = job.state.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || finisher.finish(&job, keep)).await {
            tracing::error!(job = %id, "recording the outcome failed: {e}");
        }
        if let Some(tx) = done {
            let _ = tx.send(state);
        }
        forget(&known, &id);
        let spool = ctx.spool.clone();
        let next = match next {
            Some(next) => tokio::task::spawn_blocking(move || spool.load(&next))
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        return next.map_or(RunEnd::Stopped, |next| RunEnd::Next(Box::new(next)));
    }
    RunEnd::Stopped
}

#[cfg(test)]
mod tests;
