//! Verified deploys: a health check after each deployment, and the rollback of an unhealthy
//! one to the app's last verified archive.
//!
//! [`VerifiedTarget`] wraps an app's target (so the lanes still see one [`Target`]). Once the
//! target says the deployment succeeded, the job becomes `verifying`: it waits `warmup`,
//! probes `url` until an answer is healthy or `attempts` probes failed, then keeps probing
//! through `soak`. Every step is written in the job's record ([`crate::queue::check::Check`])
//! before the wait that follows it, so a restart resumes the check where it was. The verdict:
//! - `verified`: the job's archive is kept in [`store::Store`], the app's rollback point;
//! - `unhealthy`: a rollback job, deploying the last verified archive again, is recorded in
//!   the job (its id first, then the job itself) and runs next in the lane; a rollback that is
//!   unhealthy too makes no other rollback: the app *needs attention* until a new job or
//!   `dropdeploy resume`;
//! - `skipped`: a newer job waits in the lane, and it wins.
//!
//! `probe.rs` holds one probe and the check's pure decisions, `rollback.rs` makes rollback
//! jobs, `store.rs` keeps verified archives and attention flags.

pub mod probe;
pub mod rollback;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::VerifyConfig;
use crate::live::{Board, WaitKind};
use crate::queue::check::{Check, Verdict};
use crate::queue::clock::Clocks;
use crate::queue::lane::{BoxFuture, Target};
use crate::queue::observe::{Event, Observer};
use crate::queue::spool::{Job, JobState, Spool, SpoolError, Step, now};
use crate::shutdown::Shutdown;

use probe::Next;
use store::{Attention, Store};

/// What a verified target needs besides the app's check.
#[derive(Clone)]
pub struct Wiring {
    pub spool: Spool,
    pub store: Store,
    pub observer: Arc<dyn Observer>,
    pub board: Arc<Board>,
    pub shutdown: Shutdown,
    pub http: reqwest::Client,
}

impl Wiring {
    /// The HTTP client probes use: no redirects followed (a redirect is an answer), no
    /// proxy from the environment.
    pub fn probe_client() -> Result<reqwest::Client, String> {
        crate::http::client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the HTTP client for health checks: {e}"))
    }
}

/// An app's target with its health check and rollback.
pub struct VerifiedTarget {
    inner: Arc<dyn Target>,
    /// `None`: the app has no check (any more); a check begun before ends `skipped`.
    cfg: Option<VerifyConfig>,
    wiring: Wiring,
    /// How many jobs wait in the lane behind the one in flight.
    waiting: watch::Sender<usize>,
    /// Where a check given as a path goes: the app's URL, from the platform.
    base: Option<AppBase>,
}

/// The app whose URL (`GET /v1/apps/:app`, `app.url`) is the base of a check given as a path.
#[derive(Clone)]
pub struct AppBase {
    pub client: Arc<crate::deploy::scalingo::api::ScalingoClient>,
    pub app: String,
    /// The URL once learnt (an app's URL does not change while the daemon runs).
    known: Arc<tokio::sync::Mutex<Option<String>>>,
}

impl AppBase {
    pub fn new(client: Arc<crate::deploy::scalingo::api::ScalingoClient>, app: &str) -> AppBase {
        AppBase {
            client,
            app: app.to_string(),
            known: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// `path` on the app's URL.
    async fn join(&self, path: &str) -> Result<String, String> {
        let mut known = self.known.lock().await;
        if known.is_none() {
            let url = self
                .client
                .app_url(&self.app)
                .await
                .map_err(|e| format!("cannot learn the app's URL: {e}"))?
                .ok_or_else(|| "the platform gives no URL for the app".to_string())?;
            *known = Some(url);
        }
        let base = known.as_deref().unwrap_or_default().trim_end_matches('/');
        Ok(format!("{base}{path}"))
    }
}

/// The names of a check's times in its [`Clocks`].
const CHECK_STARTED: &str = "check";
const HEALTHY: &str = "healthy";

/// What the board says while a check waits for its next probe.
fn wait_cause(check: Option<&Check>, cfg: &VerifyConfig, clocks: &mut Clocks) -> String {
    match check.and_then(|c| c.healthy_at) {
        Some(at) => format!(
            "soak: healthy for {} s of {} s",
            clocks.elapsed(HEALTHY, at).as_secs(),
            cfg.soak.as_secs()
        ),
        None => format!(
            "{} of {} attempts failed, last: {}",
            check.map_or(0, |c| c.failures),
            cfg.attempts,
            check
                .and_then(|c| c.last.as_ref())
                .map(|p| p.describe())
                .unwrap_or_default()
        ),
    }
}

/// How a wait ended.
enum Wake {
    Elapsed,
    Shutdown,
    Newer,
}

impl VerifiedTarget {
    pub fn new(
        inner: Arc<dyn Target>,
        cfg: Option<VerifyConfig>,
        wiring: Wiring,
    ) -> VerifiedTarget {
        VerifiedTarget {
            inner,
            cfg,
            wiring,
            waiting: watch::channel(0).0,
            base: None,
        }
    }

    /// Where a check given as a path goes (an app on the platform).
    pub fn with_base(mut self, base: Option<AppBase>) -> Self {
        self.base = base;
        self
    }

    /// The URL a probe asks: the configured one, or the path on the app's URL.
    async fn probe_url(&self, cfg: &VerifyConfig) -> Result<String, String> {
        if !cfg.url.starts_with('/') {
            return Ok(cfg.url.clone());
        }
        match &self.base {
            Some(base) => base.join(&cfg.url).await,
            None => Err("a check given as a path needs an app on the platform".to_string()),
        }
    }

    /// Wraps `inner` with the app's check, if it has one. An app without a check is wrapped
    /// too, so that a check left unfinished when the check was removed from the
    /// configuration ends (`skipped`) instead of waiting for ever.
    pub fn wrap(
        inner: Arc<dyn Target>,
        cfg: Option<&VerifyConfig>,
        wiring: &Wiring,
        base: Option<AppBase>,
    ) -> Arc<dyn Target> {
        Arc::new(VerifiedTarget::new(inner, cfg.cloned(), wiring.clone()).with_base(base))
    }

    async fn drive(&self, job: &mut Job) -> Result<(), SpoolError> {
        let Some(cfg) = &self.cfg else {
            if !matches!(job.state, JobState::Verifying { .. }) && !job.awaits_check() {
                self.inner.run(job).await?;
            }
            if matches!(job.state, JobState::Verifying { .. }) || job.awaits_check() {
                let reason = "the app has no check any more".to_string();
                return self.conclude(job, Verdict::Skipped, reason).await;
            }
            return Ok(());
        };
        let spool = &self.wiring.spool;
        let mut clocks = Clocks::new();
        if job.check.is_none() {
            job.check = Some(Check::pending());
            spool.save_async(job).await?;
        }
        if matches!(job.state, JobState::Queued) && job.rollback().is_none() {
            self.clear_attention(&job.app);
        }
        if !matches!(job.state, JobState::Verifying { .. }) && !job.awaits_check() {
            self.inner.run(job).await?;
        }
        if let JobState::Succeeded { deployment_id } = &job.state
            && job.awaits_check()
        {
            job.state = JobState::Verifying {
                deployment_id: Some(deployment_id.clone()),
            };
            if let Some(check) = job.check.as_mut()
                && check.started_at.is_none()
            {
                check.started_at = Some(clocks.stamp(CHECK_STARTED));
            }
            spool.save_async(job).await?;
        }
        if !matches!(job.state, JobState::Verifying { .. }) {
            return Ok(());
        }
        let decided = job
            .check
            .as_ref()
            .and_then(|c| c.verdict.zip(c.reason.clone()));
        let (verdict, reason) = match decided {
            Some(decided) => decided,
            None => match self.check(job, cfg, &mut clocks).await? {
                Some(decided) => decided,
                None => return Ok(()),
            },
        };
        self.conclude(job, verdict, reason).await
    }

    /// Runs the check from where the record says it is; `None` when the daemon stops first.
    /// Its waits are measured on the monotonic clock (`clocks`), and the board's next try is
    /// the wall clock now plus the wait.
    async fn check(
        &self,
        job: &mut Job,
        cfg: &VerifyConfig,
        clocks: &mut Clocks,
    ) -> Result<Option<(Verdict, String)>, SpoolError> {
        let (app, id) = (job.app.clone(), job.id.clone());
        let board = &self.wiring.board;
        self.wiring.observer.event(job, &Event::Step(Step::Verify));
        let decided = loop {
            let check = job.check.get_or_insert_with(Check::pending);
            let started = match check.started_at {
                Some(at) => clocks.elapsed(CHECK_STARTED, at),
                None => Duration::ZERO,
            };
            match probe::next(check, cfg, started) {
                Next::Warmup(left) => {
                    board.wait(
                        &app,
                        WaitKind::Verify,
                        &id,
                        "warmup before the first probe",
                        Some(now() + left.as_secs()),
                    );
                    self.wiring.observer.event(
                        job,
                        &Event::Checking {
                            phase: "warmup",
                            wait: left,
                        },
                    );
                    match self.pause(left).await {
                        Wake::Elapsed => continue,
                        Wake::Shutdown => break None,
                        Wake::Newer => break Some(newer_wins()),
                    }
                }
                Next::Probe { .. } => {
                    let answer = match self.probe_url(cfg).await {
                        Ok(url) => probe::probe(&self.wiring.http, cfg, &url).await,
                        Err(why) => crate::queue::check::Probe::unanswered(why),
                    };
                    self.wiring
                        .observer
                        .event(job, &Event::Probed { probe: &answer });
                    let check = job.check.get_or_insert_with(Check::pending);
                    let (at, healthy_for) = match check.healthy_at {
                        Some(at) => (now(), Some(clocks.elapsed(HEALTHY, at))),
                        None => (clocks.stamp(HEALTHY), None),
                    };
                    let decided = probe::record(check, cfg, answer, at, healthy_for);
                    self.wiring.spool.save_async(job).await?;
                    if let Some(decided) = decided {
                        break Some(decided);
                    }
                    let cause = wait_cause(job.check.as_ref(), cfg, clocks);
                    board.wait(
                        &app,
                        WaitKind::Verify,
                        &id,
                        &cause,
                        Some(now() + cfg.interval.as_secs()),
                    );
                    match self.pause(cfg.interval).await {
                        Wake::Elapsed => continue,
                        Wake::Shutdown => break None,
                        Wake::Newer => break Some(newer_wins()),
                    }
                }
            }
        };
        if decided.is_some() {
            board.clear(&app, WaitKind::Verify, &id);
        }
        Ok(decided)
    }

    /// Waits `d`, unless the daemon stops or a newer job comes first.
    async fn pause(&self, d: Duration) -> Wake {
        let mut shutdown = self.wiring.shutdown.clone();
        let mut waiting = self.waiting.subscribe();
        if *waiting.borrow_and_update() > 0 {
            return Wake::Newer;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Wake::Elapsed,
            _ = shutdown.requested() => Wake::Shutdown,
            _ = waiting.wait_for(|n| *n > 0) => Wake::Newer,
        }
    }

    /// Writes the verdict and acts on it: keeps a verified archive, or starts a rollback.
    async fn conclude(
        &self,
        job: &mut Job,
        verdict: Verdict,
        mut reason: String,
    ) -> Result<(), SpoolError> {
        let deployment_id = match &job.state {
            JobState::Verifying { deployment_id } => deployment_id.clone(),
            JobState::Succeeded { deployment_id } => Some(deployment_id.clone()),
            _ => None,
        };
        if let Some(check) = job.check.as_mut() {
            check.verdict = Some(verdict);
            check.reason = Some(reason.clone());
        }
        self.wiring.spool.save_async(job).await?;
        self.wiring.board.clear(&job.app, WaitKind::Verify, &job.id);
        match verdict {
            Verdict::Verified => {
                self.keep(job).await;
                // Healthy again (a rollback by hand, say): the app no longer needs attention.
                self.clear_attention(&job.app);
                job.state = JobState::Succeeded {
                    deployment_id: deployment_id.unwrap_or_default(),
                };
            }
            Verdict::Skipped => {
                job.state = JobState::Succeeded {
                    deployment_id: deployment_id.unwrap_or_default(),
                };
            }
            Verdict::Unhealthy => {
                if let Some(more) = self.after_unhealthy(job).await? {
                    reason = format!("{reason}; {more}");
                }
                job.state = JobState::Unhealthy {
                    deployment_id,
                    reason: reason.clone(),
                };
            }
        }
        self.wiring.spool.save_async(job).await?;
        let probe = job.check.as_ref().and_then(|c| c.last.clone());
        self.wiring.observer.event(
            job,
            &Event::Checked {
                verdict,
                reason: &reason,
                probe: probe.as_ref(),
            },
        );
        Ok(())
    }

    /// Keeps a verified job's archive as the app's rollback point. A failure is only logged:
    /// the deployment is verified either way.
    async fn keep(&self, job: &Job) {
        let (store, spool, job) = (
            self.wiring.store.clone(),
            self.wiring.spool.clone(),
            job.clone(),
        );
        let kept = crate::blocking::run(move || {
            let archive = spool.archive_path(&job.id);
            store.keep(&job, &archive).map_err(|e| e.to_string())
        })
        .await;
        match kept {
            Ok(true) => {}
            Ok(false) => tracing::info!("a URL job has no archive to keep for a rollback"),
            Err(e) => tracing::warn!("cannot keep the verified archive for a rollback: {e:?}"),
        }
    }

    /// After an unhealthy verdict: the rollback (made once, its id recorded first), or why
    /// none. Returns what to add to the reason.
    async fn after_unhealthy(&self, job: &mut Job) -> Result<Option<String>, SpoolError> {
        if let Some(rollback) = job.rollback().cloned() {
            let reason = format!(
                "the rollback to {} is unhealthy too: {} needs attention (drop a new archive, or run `dropdeploy resume {}`)",
                rollback.target(),
                job.app,
                job.app
            );
            let attention = Attention {
                app: job.app.clone(),
                job: job.id.clone(),
                reason: reason.clone(),
                since: now(),
            };
            if let Err(e) = self.wiring.store.set_attention(&attention) {
                tracing::error!(app = %job.app, "cannot record that the app needs attention: {e}");
            }
            self.wiring
                .board
                .wait(&job.app, WaitKind::Attention, &job.app, &reason, None);
            self.wiring
                .observer
                .event(job, &Event::NeedsAttention { reason: &reason });
            return Ok(Some(format!(
                "no other rollback is tried: {} needs attention (drop a new archive, or run `dropdeploy resume {}`)",
                job.app, job.app
            )));
        }
        if self.cfg.as_ref().is_some_and(|c| !c.rollback) {
            return Ok(Some("rollback is off for this app".to_string()));
        }
        if *self.waiting.borrow() > 0 && job.check.as_ref().is_none_or(|c| c.follow_up.is_none()) {
            return Ok(Some(
                "no rollback: a newer job waits and runs next".to_string(),
            ));
        }
        let store = self.wiring.store.clone();
        let app = job.app.clone();
        let last = crate::blocking::run(move || store.last(&app).map_err(|e| e.to_string())).await;
        let kept = match last {
            Ok(Some(kept)) => kept,
            Ok(None) => {
                return Ok(Some(
                    "no verified archive is kept for this app: nothing to roll back to".to_string(),
                ));
            }
            Err(e) => return Ok(Some(format!("cannot read the verified archives: {e:?}"))),
        };
        let made =
            rollback::start(&self.wiring.spool, &self.wiring.store, job, &kept, true).await?;
        self.wiring.observer.event(
            job,
            &Event::RollingBack {
                job: &made.id,
                to_ref: &kept.git_ref,
            },
        );
        Ok(Some(format!(
            "rolling back to {} (job {})",
            crate::queue::check::named(&kept.file, &kept.git_ref),
            made.id
        )))
    }

    fn clear_attention(&self, app: &str) {
        match self.wiring.store.clear_attention(app) {
            Ok(true) => tracing::info!(app, "a new job: the app no longer needs attention"),
            Ok(false) => {}
            Err(e) => tracing::warn!(app, "cannot clear the attention flag: {e}"),
        }
        self.wiring.board.clear_kind(app, WaitKind::Attention);
    }
}

fn newer_wins() -> (Verdict, String) {
    (
        Verdict::Skipped,
        "check cut short: a newer job for the app waits, and it wins".to_string(),
    )
}

impl Target for VerifiedTarget {
    fn run<'a>(&'a self, job: &'a mut Job) -> BoxFuture<'a, Result<(), SpoolError>> {
        Box::pin(self.drive(job))
    }

    fn lane_waiting(&self, pending: usize) {
        self.waiting.send_replace(pending);
        self.inner.lane_waiting(pending);
    }
}

#[cfg(test)]
mod tests;
