//! The status page: `GET /` on the daemon's HTTP listener (`metrics_listen`), one page that
//! answers at a glance what is live where, what is happening now, and what needs a person.
//!
//! It is rendered on the server ([`render`]) from what the daemon knows: the history (what is
//! live, the last outcomes), the spool (the next waiting job), the [`Feed`] that a
//! [`FeedObserver`] in the daemon's observer chain fills from the runner's events (the job in
//! flight, its step, platform status, check phase, probe answers and build lines), the board of
//! waits ([`crate::live`]), the attention flags and kept archives
//! ([`crate::verify::store`]), and the API budget. Without JavaScript it reloads itself every
//! few seconds; with it (`/page.js`), build lines arrive as server-sent events (`/events`) and
//! the rest is reloaded when something changes.
//!
//! Every asset is in the binary; every text shown is escaped and has gone through
//! [`crate::redact`]; the answers carry a strict Content-Security-Policy (no inline script or
//! style). Actions (resume, rollback) are POSTs that need a token of `[intake]`
//! ([`tokens`]); without one configured the page is read-only and actions answer 403. They
//! are carried out by the daemon ([`ActionRequest`]), through the same code as the commands.

mod feed;
mod render;
mod server;
mod tokens;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use crate::deploy::scalingo::budget::Budget;
use crate::live::{Board, Wait};
use crate::outcome::{HISTORY_NAME, HistoryEntry, read_history};
use crate::queue::spool::{JobState, Spool, Timestamp, now};
use crate::shutdown::Shutdown;
use crate::verify::store::{Attention, Kept, Store};

pub use feed::{AppNow, Feed, FeedObserver, JobNow, LiveMessage, file_label};
pub use render::{escape, render};
pub use server::routes;
pub use tokens::Tokens;

/// Outcomes shown per app, and for all apps.
const PER_APP: usize = 8;
const ALL_APPS: usize = 30;

/// What the page may ask the daemon to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Clear the app's `needs attention` (as `dropdeploy resume APP`).
    Resume { app: String },
    /// Deploy a kept, verified archive again (as `dropdeploy rollback APP --to GIT_REF|JOB`;
    /// the last verified one when `to` is `None`).
    Rollback { app: String, to: Option<String> },
    /// End a job that waits and never started: `failed`, its file in `failed/` with a
    /// reason saying it was discarded, nothing sent to the platform.
    Discard { app: String, job: String },
}

/// An action for the daemon, and where it answers (what was done, or why not).
pub struct ActionRequest {
    pub action: Action,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// One API budget (a client: one per region and token).
pub struct BudgetSource {
    /// What the page calls it (`platform API`, or with its region).
    pub label: String,
    pub budget: Arc<Budget>,
}

/// Everything the page is made from. Shared by the server's handlers.
pub struct Page {
    pub feed: Arc<Feed>,
    state_dir: PathBuf,
    spool: Spool,
    apps: RwLock<Vec<String>>,
    budgets: RwLock<Vec<BudgetSource>>,
    board: Arc<Board>,
    tokens: Tokens,
    actions: mpsc::Sender<ActionRequest>,
    shutdown: Shutdown,
}

/// What a [`Page`] is made with.
pub struct PageParts {
    pub feed: Arc<Feed>,
    pub state_dir: PathBuf,
    pub spool: Spool,
    /// The configured apps, in the configuration's order.
    pub apps: Vec<String>,
    pub budgets: Vec<BudgetSource>,
    pub board: Arc<Board>,
    pub tokens: Tokens,
    /// Where actions go (the daemon's main loop).
    pub actions: mpsc::Sender<ActionRequest>,
    /// Ends the live streams when the daemon stops.
    pub shutdown: Shutdown,
}

impl Page {
    pub fn new(parts: PageParts) -> Arc<Page> {
        Arc::new(Page {
            feed: parts.feed,
            state_dir: parts.state_dir,
            spool: parts.spool,
            apps: RwLock::new(parts.apps),
            budgets: RwLock::new(parts.budgets),
            board: parts.board,
            tokens: parts.tokens,
            actions: parts.actions,
            shutdown: parts.shutdown,
        })
    }

    /// The configured apps changed (a reload).
    pub fn set_apps(&self, apps: Vec<String>, budgets: Vec<BudgetSource>) {
        if let Ok(mut a) = self.apps.write() {
            *a = apps;
        }
        if let Ok(mut b) = self.budgets.write() {
            *b = budgets;
        }
        self.feed.changed("");
    }

    /// Whether actions are possible (a token is configured).
    pub fn can_act(&self) -> bool {
        self.tokens.any()
    }

    /// Reads what the page shows. Blocking (the history, the spool, the store).
    pub fn view(&self) -> View {
        let apps = self.apps.read().map(|a| a.clone()).unwrap_or_default();
        let history = self.state_dir.join(HISTORY_NAME);
        let store = Store::new(&self.state_dir);
        let feed = self.feed.snapshot();
        let waits = self.board.snapshot();
        let queued = self.queued();
        let mut names = apps.clone();
        names.extend(feed.keys().filter(|a| !apps.contains(a)).cloned());
        let views = names
            .iter()
            .map(|name| {
                let last =
                    read_history(&history, Some(name), Some(PER_APP * 3)).unwrap_or_default();
                let now = feed.get(name).cloned().unwrap_or_default();
                let in_flight = now.job.as_ref().map(|j| j.id.as_str());
                AppView {
                    name: name.clone(),
                    configured: apps.contains(name),
                    live: last.iter().rev().find(|e| went_live(e)).cloned(),
                    last: last.iter().rev().take(PER_APP).cloned().collect(),
                    next: queued
                        .iter()
                        .filter(|q| &q.app == name && Some(q.job.as_str()) != in_flight)
                        .cloned()
                        .collect(),
                    attention: store.attention(name),
                    kept: if self.can_act() {
                        store.kept(name).unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    now,
                }
            })
            .collect();
        View {
            apps: views,
            history: read_history(&history, None, Some(ALL_APPS))
                .unwrap_or_default()
                .into_iter()
                .rev()
                .collect(),
            waits,
            budgets: self.budget_views(),
            can_act: self.can_act(),
            now: now(),
        }
    }

    /// The jobs waiting in the spool, oldest first.
    fn queued(&self) -> Vec<Queued> {
        let mut queued: Vec<Queued> = self
            .spool
            .jobs()
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .filter(|j| matches!(j.state, JobState::Queued))
            .map(|j| Queued {
                app: j.app.clone(),
                job: j.id.clone(),
                file: crate::redact::redact(&file_label(&j)).into_owned(),
                since: j.created_at,
            })
            .collect();
        queued.sort_by(|a, b| (a.since, &a.job).cmp(&(b.since, &b.job)));
        queued
    }

    fn budget_views(&self) -> Vec<BudgetView> {
        let Ok(budgets) = self.budgets.read() else {
            return Vec::new();
        };
        budgets
            .iter()
            .map(|b| {
                let (used, paused) = b.budget.used();
                BudgetView {
                    label: b.label.clone(),
                    used,
                    limit: b.budget.limit(),
                    paused_secs: paused.map(|p| p.as_secs().max(1)),
                }
            })
            .collect()
    }
}

/// Whether the entry's deployment went live: succeeded (checked or not), or unhealthy (it
/// runs, and fails its check).
fn went_live(entry: &HistoryEntry) -> bool {
    entry.outcome.is_success() || entry.outcome == crate::outcome::Outcome::Unhealthy
}

/// What the page shows, read at one moment.
pub struct View {
    pub apps: Vec<AppView>,
    /// The last outcomes of all apps, newest first.
    pub history: Vec<HistoryEntry>,
    pub waits: Vec<Wait>,
    pub budgets: Vec<BudgetView>,
    pub can_act: bool,
    pub now: Timestamp,
}

/// One app on the page.
pub struct AppView {
    pub name: String,
    /// Whether it is in the configuration (else it only has jobs left in the spool).
    pub configured: bool,
    /// The last deployment that went live (checked, not checked, or unhealthy).
    pub live: Option<HistoryEntry>,
    /// Its last outcomes, newest first.
    pub last: Vec<HistoryEntry>,
    /// What its lane does now.
    pub now: AppNow,
    /// The jobs waiting, oldest (next) first.
    pub next: Vec<Queued>,
    pub attention: Option<Attention>,
    /// The kept verified archives (read only when actions are possible).
    pub kept: Vec<Kept>,
}

/// A job waiting in the spool.
#[derive(Debug, Clone)]
pub struct Queued {
    pub app: String,
    pub job: String,
    pub file: String,
    pub since: Timestamp,
}

/// One API budget's use.
pub struct BudgetView {
    pub label: String,
    /// Requests sent in the last minute.
    pub used: usize,
    pub limit: u32,
    /// Seconds left of a pause after a 429.
    pub paused_secs: Option<u64>,
}
