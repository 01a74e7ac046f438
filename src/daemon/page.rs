//! The status page's side of the daemon: the page made from the daemon's parts (its feed of
//! events, spool, board of waits, API budgets, `[intake]` tokens), and the actions it asks
//! for, carried out in the daemon's main loop through the same code as `dropdeploy resume`
//! and `dropdeploy rollback`; a discarded job ends through the lane like any finished job.

use super::*;
use crate::page::{Action, ActionRequest, BudgetSource, Page, PageParts, Tokens};
use crate::queue::spool::JobState;
use crate::verify::rollback::{make, new_id};
use crate::verify::store::Store;

/// Actions waiting for the main loop.
const ACTIONS: usize = 16;

/// The page and the receiving end of its actions.
pub(super) struct PageWiring {
    pub(super) page: Arc<Page>,
    pub(super) actions: mpsc::Receiver<ActionRequest>,
}

/// The page, when the daemon has a listener (`metrics_listen`). Reads the `[intake]` token
/// file (off the runtime); an unreadable or empty one is a setup error naming it.
pub(super) async fn wire(
    config: &Config,
    env: &Env,
    client: Option<&Arc<ScalingoClient>>,
    state: &startup::State,
    feed: Arc<crate::page::Feed>,
    shutdown: shutdown::Shutdown,
) -> Result<Option<PageWiring>, DaemonError> {
    if config.metrics_listen.is_none() {
        return Ok(None);
    }
    let file = config.intake.token_file.clone();
    let from_env = env
        .get(crate::config::ENV_INTAKE_TOKEN)
        .map(crate::config::Secret::new);
    let tokens = crate::blocking::run(move || Tokens::load(file.as_deref(), from_env))
        .await
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    let (tx, actions) = mpsc::channel(ACTIONS);
    let page = Page::new(PageParts {
        feed,
        state_dir: config.state_dir.clone(),
        spool: state.spool.clone(),
        apps: app_names(config),
        budgets: budgets(config, client),
        board: state.live.clone(),
        tokens,
        actions: tx,
        shutdown,
    });
    Ok(Some(PageWiring { page, actions }))
}

fn app_names(config: &Config) -> Vec<String> {
    config.apps.iter().map(|a| a.name.clone()).collect()
}

/// The client's budget, and each region's that an app uses.
fn budgets(config: &Config, client: Option<&Arc<ScalingoClient>>) -> Vec<BudgetSource> {
    let Some(client) = client else {
        return Vec::new();
    };
    let mut out = vec![BudgetSource {
        label: "platform API".to_string(),
        budget: client.budget().clone(),
    }];
    for region in config.apps.iter().filter_map(|a| a.region.as_ref()) {
        let budget = client.in_region(region).budget().clone();
        if !out.iter().any(|b| Arc::ptr_eq(&b.budget, &budget)) {
            out.push(BudgetSource {
                label: format!("platform API ({region})"),
                budget,
            });
        }
    }
    out
}

/// The next action the page asks for, or never without a page.
pub(super) async fn next_action(
    actions: &mut Option<mpsc::Receiver<ActionRequest>>,
) -> Option<ActionRequest> {
    match actions {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// After a reload: the page shows the apps configured now.
    pub(super) fn page_reloaded(&self) {
        if let Some(intake) = &self.intake {
            intake.set_apps(&self.config);
        }
        if let Some(page) = &self.page {
            page.set_apps(
                app_names(&self.config),
                budgets(&self.config, self.pipeline.wiring.client.as_ref()),
            );
        }
    }

    /// Carries out an action of the page and answers it.
    pub(super) async fn act(&mut self, request: ActionRequest) {
        let ActionRequest { action, reply } = request;
        let result = match &action {
            Action::Resume { app } => self.resume(app).await,
            Action::Rollback { app, to } => self.roll_back(app, to.as_deref()).await,
            Action::Discard { app, job } => {
                let spool = self.pipeline.spool.clone();
                let (app, job) = (app.clone(), job.clone());
                crate::blocking::run(move || discard(&spool, &app, &job))
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        match &result {
            Ok(done) => tracing::info!(?action, "{done}"),
            Err(why) => tracing::warn!(?action, "refused: {why}"),
        }
        let _ = reply.send(result);
    }

    /// As `dropdeploy resume APP`, and the daemon's own signs of it too (the board, the
    /// metric, the systemd status line).
    async fn resume(&mut self, app: &str) -> Result<String, String> {
        let store = Store::new(&self.config.state_dir);
        let name = app.to_string();
        let cleared = crate::blocking::run(move || store.clear_attention(&name))
            .await
            .map_err(|e| format!("{app}: {e}"))?;
        self.live.clear_kind(app, crate::live::WaitKind::Attention);
        self.pipeline.after.metrics.set_needs_attention(app, false);
        if let Ok(mut active) = self.board.active.lock()
            && active
                .get(app)
                .is_some_and(|d| d == crate::service::NEEDS_ATTENTION)
        {
            active.remove(app);
        }
        self.board.publish();
        if let Some(page) = &self.page {
            page.feed.changed(app);
        }
        Ok(if cleared {
            format!("{app} no longer needs attention; its next drop or save deploys as usual")
        } else {
            format!("{app} did not need attention")
        })
    }

    /// As `dropdeploy rollback APP --to TO`: a rollback job made from the kept archive, run by
    /// the app's lane (and checked, and recorded) like any job.
    async fn roll_back(&mut self, app: &str, to: Option<&str>) -> Result<String, String> {
        let store = Store::new(&self.config.state_dir);
        let kept = {
            let (store, name) = (store.clone(), app.to_string());
            crate::blocking::run(move || store.kept(&name))
                .await
                .map_err(|e| format!("{app}: {e}"))?
        };
        let chosen = crate::verify::rollback::choose(&kept, to).cloned();
        let Some(chosen) = chosen else {
            return Err(format!(
                "{app}: no verified archive{} is kept, nothing to roll back to",
                to.map(|t| format!(" named {t}")).unwrap_or_default()
            ));
        };
        let (state_dir, name) = (self.config.state_dir.clone(), app.to_string());
        let live = crate::blocking::run(move || {
            Ok::<_, std::io::Error>(crate::outcome::live_now(&state_dir, &name))
        })
        .await
        .ok()
        .flatten();
        let of = crate::verify::rollback::by_hand(&chosen, live);
        let id = new_id();
        let job = {
            let (spool, kept) = (self.pipeline.spool.clone(), chosen.clone());
            let id = id.clone();
            crate::blocking::run(move || make(&spool, &store, &id, &kept, of))
                .await
                .map_err(|e| format!("{app}: cannot make the rollback job: {e}"))?
        };
        self.pipeline.lanes.submit(job).map_err(|_| {
            format!("{app} has no lane now; the rollback job {id} waits in the spool")
        })?;
        Ok(format!(
            "{app}: rolling back to {} ({}) as job {id}: the archive is deployed again (a new \
             build); database migrations made since are not undone",
            chosen.git_ref, chosen.file
        ))
    }
}

/// Ends a job that waits and never started: its record says `failed`, with a reason, while
/// its lock is held (so that no lane starts it meanwhile). The lane, at its turn, finds it
/// finished and records its outcome as for any job: its file in `failed/`, the reason beside
/// it, a history line. Blocking.
fn discard(spool: &Spool, app: &str, id: &str) -> Result<String, String> {
    let plain = !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let mut job = match spool.load(id) {
        Ok(job) if plain && job.app == app => job,
        _ => return Err(format!("{app} has no job {id} in the spool")),
    };
    let file = crate::page::file_label(&job);
    let Some(_lock) = crate::lock::JobLock::try_acquire(&spool.job_dir(id))
        .map_err(|e| format!("{app}: cannot lock job {id}: {e}"))?
    else {
        return Err(format!(
            "{app}: job {id} ({file}) has started; it cannot be discarded"
        ));
    };
    // Read again under the lock: the lane may have started it just before.
    job = spool.load(id).map_err(|e| format!("{app}: {e}"))?;
    if !matches!(job.state, JobState::Queued) || job.started_at.is_some() {
        return Err(format!(
            "{app}: job {id} ({file}) has started; it cannot be discarded"
        ));
    }
    job.state = JobState::Failed(crate::queue::spool::Failure {
        step: crate::queue::spool::Step::Inspect,
        reason: "discarded from the status page before it started; nothing was sent to the \
                 platform"
            .to_string(),
        status: None,
        deployment_id: None,
        log_tail: Vec::new(),
        http_status: None,
        gave_up: false,
    });
    spool.save(&job).map_err(|e| format!("{app}: {e}"))?;
    Ok(format!(
        "{app}: job {id} ({file}) is discarded; its file goes to failed/ when the lane reaches it"
    ))
}
