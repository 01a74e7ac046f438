//! The API budget: every request a client makes to the platform (each lane's, each command's,
//! the token exchange, the stream's dial) takes a place in one sliding window of
//! `api_rate_limit` requests a minute, the platform's documented limit. A 429 pauses the whole
//! client, not only the call that met it: for its `Retry-After`, else a backoff. Polling, the
//! stream's fallback, stretches its interval so that all the deployments polled at once fit in
//! half the budget, leaving the rest to uploads, creations and checks.
//!
//! Every wait here is bounded (a window, or a pause of at most [`MAX_PAUSE`]) and shows on the
//! board of waits ([`crate::live`]) for each app that uses the client, so `status` says why
//! nothing moves. A job counts its calls' waits ([`BudgetWaits`]): waiting for the budget is
//! not failing, and does not use up the job's retry budget.
//!
//! In a fleet, the nodes that share a region and token share its limit too: a budget may have a
//! [`SharedWindow`] beside its own accounting (`crate::fleet::budget` keeps one in
//! PostgreSQL). A request then takes a place there as well, just before it takes its own, and a
//! 429 met by any node pauses them all. When the shared window cannot be reached, a request
//! waits (on the board) rather than risk the fleet's limit, for at most [`MAX_OUTAGE`]; then
//! the call fails as a transient error, which the job's retries pace.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::config::Secret;

// The runtime's clock, so that a test can pause it.
use tokio::time::Instant;

use crate::live::{Board, WaitKind};

/// The window of the platform's limit.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Added to each wait for a place, for the time a request takes to reach the platform: a
/// request sent exactly one window after another may be counted a little earlier there.
const MARGIN: Duration = Duration::from_millis(500);
/// The longest pause after a 429, whatever its `Retry-After` says.
pub const MAX_PAUSE: Duration = Duration::from_secs(5 * 60);
/// The first pause after a 429 without `Retry-After`; doubled for each one in a row.
const FIRST_PAUSE: Duration = Duration::from_secs(5);
/// The share of the budget that polling may use.
const POLL_SHARE: f64 = 0.5;
/// A wait for a place shorter than this is not shown on the board.
const SHOWN_AFTER: Duration = Duration::from_secs(1);
/// What the board calls the client's waits.
const SUBJECT: &str = "platform API";
/// The longest a request waits for a shared window that cannot be reached.
pub const MAX_OUTAGE: Duration = Duration::from_secs(5 * 60);

/// A future of a [`SharedWindow`].
pub type SharedFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A window of requests shared with other processes: the nodes of a fleet that use the same
/// region and token. Every call is bounded in time by the implementation.
pub trait SharedWindow: Send + Sync {
    /// Takes a place for one request now, of `limit` requests a minute, or says why not.
    fn take(&self, limit: u32) -> SharedFuture<'_, Place>;
    /// A 429: every process sharing the window waits `pause` (a longer pause already set
    /// stays). An error says why the others could not be told.
    fn pause(&self, pause: Duration) -> SharedFuture<'_, Result<(), String>>;
}

/// What a [`SharedWindow`] answers for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The place is taken: the request may go.
    Taken,
    /// The window holds the limit: a place is free in this long.
    Full(Duration),
    /// A 429 paused the fleet for this long yet.
    Paused(Duration),
    /// The window cannot be reached (the cause): ask again in this long.
    Unreachable(Duration, String),
}

/// Makes the [`SharedWindow`] of a budget: given the region's name (or the API URL when no
/// region is named) and the API token.
pub type SharedWindows = Arc<dyn Fn(&str, &Secret) -> Arc<dyn SharedWindow> + Send + Sync>;

/// The shared window could not be reached for [`MAX_OUTAGE`]: the request was not sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the fleet's API budget could not be reached for {}: {cause}", humantime::format_duration(*.waited))]
pub struct Unreachable {
    pub waited: Duration,
    pub cause: String,
}

tokio::task_local! {
    /// The waits of the job whose task this is (see [`BudgetWaits::scope`]).
    static WAITS: BudgetWaits;
}

/// The time one job's calls spent waiting for a place in the budget or for a 429's pause.
#[derive(Debug, Clone, Default)]
pub struct BudgetWaits(Arc<AtomicU64>);

impl BudgetWaits {
    /// The time waited so far.
    pub fn total(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    pub fn add(&self, waited: Duration) {
        let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::Relaxed);
    }

    /// Runs `work`, counting in `self` what its calls (on this task) wait for a budget.
    pub async fn scope<F: std::future::Future>(&self, work: F) -> F::Output {
        WAITS.scope(self.clone(), work).await
    }
}

/// One client's budget of API requests.
pub struct Budget {
    limit: u32,
    state: Mutex<Window>,
    board: OnceLock<Arc<Board>>,
    apps: Mutex<BTreeSet<String>>,
    pollers: AtomicUsize,
    /// The first pause after a 429 without Retry-After, and the longest.
    backoff: (Duration, Duration),
    /// The window shared with the fleet's other nodes, if any.
    shared: OnceLock<Arc<dyn SharedWindow>>,
    /// How long a request waits for an unreachable shared window.
    max_outage: Duration,
}

#[derive(Default)]
struct Window {
    /// When the requests of the last window were sent, oldest first.
    sent: VecDeque<Instant>,
    paused_until: Option<Instant>,
    /// 429s in a row, for the backoff without `Retry-After`.
    refusals: u32,
}

/// How long to wait before a place is free, given the requests of the window (`None`: now).
pub fn place_wait(sent: &VecDeque<Instant>, limit: u32, now: Instant) -> Option<Duration> {
    let in_window = sent
        .iter()
        .filter(|t| now.duration_since(**t) < WINDOW)
        .count();
    if in_window < limit.max(1) as usize {
        return None;
    }
    // The oldest of the last `limit` requests must leave the window first.
    let oldest = sent[sent.len() - limit.max(1) as usize];
    Some((oldest + WINDOW + MARGIN).saturating_duration_since(now))
}

/// The pause after a 429: its `Retry-After` when given, else `FIRST_PAUSE` doubled per 429 in a
/// row; at least a second, at most [`MAX_PAUSE`].
pub fn pause_for(retry_after: Option<Duration>, refusals: u32) -> Duration {
    pause_with(retry_after, refusals, FIRST_PAUSE, MAX_PAUSE)
}

/// [`pause_for`] with the backoff's first step and longest pause given.
fn pause_with(
    retry_after: Option<Duration>,
    refusals: u32,
    first: Duration,
    longest: Duration,
) -> Duration {
    let first = first.max(Duration::from_millis(1));
    let longest = longest.max(first);
    let backoff = first.saturating_mul(2u32.saturating_pow(refusals.min(10)));
    match retry_after {
        Some(d) => d.clamp(first.min(Duration::from_secs(1)), MAX_PAUSE.max(longest)),
        None => backoff.min(longest),
    }
}

/// The interval of one poller when `pollers` deployments are polled at once: `base`, or longer
/// so that together they use at most [`POLL_SHARE`] of `limit` requests a minute.
pub fn stretched_interval(base: Duration, pollers: usize, limit: u32) -> Duration {
    let per_minute = (f64::from(limit.max(1)) * POLL_SHARE).max(1.0);
    let fair = WINDOW.mul_f64(pollers.max(1) as f64 / per_minute);
    base.max(fair)
}

impl Budget {
    /// A budget of `limit` requests a minute (at least 1).
    pub fn new(limit: u32) -> Budget {
        Budget {
            limit: limit.max(1),
            state: Mutex::new(Window::default()),
            board: OnceLock::new(),
            apps: Mutex::new(BTreeSet::new()),
            pollers: AtomicUsize::new(0),
            backoff: (FIRST_PAUSE, MAX_PAUSE),
            shared: OnceLock::new(),
            max_outage: MAX_OUTAGE,
        }
    }

    /// Makes every request take a place in `window` too, and a 429 pause it (from now on;
    /// once: a second window is ignored).
    pub fn share(&self, window: Arc<dyn SharedWindow>) {
        let _ = self.shared.set(window);
    }

    /// Whether this budget has a shared window.
    pub fn is_shared(&self) -> bool {
        self.shared.get().is_some()
    }

    /// How long a request waits for an unreachable shared window ([`MAX_OUTAGE`]).
    pub fn with_max_outage(mut self, longest: Duration) -> Budget {
        self.max_outage = longest;
        self
    }

    /// The pause after a 429 without Retry-After: `first`, doubled per 429 in a row, at most
    /// `longest` (the configuration's `[retry]` `initial` and `max_delay`).
    pub fn with_backoff(mut self, first: Duration, longest: Duration) -> Budget {
        self.backoff = (first, longest);
        self
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The requests sent in the last window (a minute), and what is left of a pause after a
    /// 429, if one runs: what the status page shows against [`Budget::limit`]. Read-only.
    pub fn used(&self) -> (usize, Option<Duration>) {
        let Ok(w) = self.state.lock() else {
            return (0, None);
        };
        let now = Instant::now();
        let used = w
            .sent
            .iter()
            .filter(|t| now.duration_since(**t) < WINDOW)
            .count();
        let paused = w.paused_until.filter(|u| *u > now).map(|u| u - now);
        (used, paused)
    }

    /// Shows this budget's waits on `board` from now on (the daemon's, which `status` reads).
    pub fn publish_to(&self, board: Arc<Board>) {
        let _ = self.board.set(board);
    }

    /// The board this budget shows its waits on, if any.
    pub fn board(&self) -> Option<Arc<Board>> {
        self.board.get().cloned()
    }

    /// An app whose jobs use this client: its `status` shows the client's waits.
    pub fn track(&self, app: &str) {
        if let Ok(mut apps) = self.apps.lock() {
            apps.insert(app.to_string());
        }
    }

    /// Waits for a place in the window (and for a pause to end), then takes it; with a shared
    /// window, a place there too. The time waited counts in the current job's
    /// [`BudgetWaits`], if any. An error: the shared window could not be reached for
    /// [`MAX_OUTAGE`], and the request must not be sent.
    pub async fn acquire(&self) -> Result<(), Unreachable> {
        let started = Instant::now();
        let taken = self.take_place().await;
        let waited = started.elapsed();
        if !waited.is_zero() {
            let _ = WAITS.try_with(|w| w.add(waited));
        }
        taken
    }

    async fn take_place(&self) -> Result<(), Unreachable> {
        let mut shown = false;
        let mut outage: Option<Instant> = None;
        let taken = loop {
            let mut wait = self.local_place(false);
            if wait.is_none()
                && let Some(shared) = self.shared.get()
            {
                let place = shared.take(self.limit).await;
                if !matches!(place, Place::Unreachable(..)) {
                    outage = None;
                }
                wait = match place {
                    Place::Taken => None,
                    Place::Full(d) => Some(Wait::FleetFull(d)),
                    Place::Paused(d) => Some(Wait::Paused(d)),
                    Place::Unreachable(d, cause) => {
                        let since = *outage.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.max_outage {
                            break Err(Unreachable {
                                waited: since.elapsed(),
                                cause,
                            });
                        }
                        Some(Wait::Unreachable(d, cause))
                    }
                };
            }
            // The shared place is taken: the local one was free a moment ago. Should another
            // call of this client have taken it meanwhile, the shared place is lost (counted,
            // never sent: the safe side) and this call waits again.
            let wait = match wait {
                None => match self.local_place(true) {
                    None => break Ok(()),
                    Some(w) => w,
                },
                Some(w) => w,
            };
            if wait.shown() {
                self.show(Some((wait.cause(self.limit, self.max_outage), wait.time())));
                shown = true;
            }
            tokio::time::sleep(wait.time().min(MAX_PAUSE)).await;
        };
        if shown {
            self.show(None);
        }
        taken
    }

    /// What this client's own window says: `None` when a place is free (and taken, if
    /// `take`), else the wait.
    fn local_place(&self, take: bool) -> Option<Wait> {
        let Ok(mut w) = self.state.lock() else {
            return None;
        };
        let now = Instant::now();
        if let Some(until) = w.paused_until.filter(|u| *u > now) {
            return Some(Wait::Paused(until - now));
        }
        w.paused_until = None;
        while w.sent.len() > self.limit as usize {
            w.sent.pop_front();
        }
        match place_wait(&w.sent, self.limit, now) {
            None => {
                if take {
                    w.sent.push_back(now);
                }
                None
            }
            Some(d) => Some(Wait::Full(d)),
        }
    }

    /// A 429: every call of this client pauses, and with a shared window every node's (told
    /// within a bounded time; if the fleet cannot be told, this client pauses all the same).
    /// Returns the pause.
    pub async fn refused(&self, retry_after: Option<Duration>) -> Duration {
        let pause = self.refused_here(retry_after);
        if let Some(shared) = self.shared.get()
            && let Err(cause) = shared.pause(pause).await
        {
            tracing::warn!(
                %cause,
                "the other nodes could not be told of the 429: they keep to the fleet's window"
            );
        }
        pause
    }

    fn refused_here(&self, retry_after: Option<Duration>) -> Duration {
        let pause = {
            let Ok(mut w) = self.state.lock() else {
                return FIRST_PAUSE;
            };
            let pause = pause_with(retry_after, w.refusals, self.backoff.0, self.backoff.1);
            w.refusals = w.refusals.saturating_add(1);
            let until = Instant::now() + pause;
            w.paused_until = Some(w.paused_until.map_or(until, |u| u.max(until)));
            pause
        };
        tracing::warn!(
            pause_ms = pause.as_millis() as u64,
            "the platform's rate limit answered 429: every API call waits"
        );
        self.show(Some((
            "the platform answered 429 (rate limit); every call waits".to_string(),
            pause,
        )));
        pause
    }

    /// An answer that was not a 429: the backoff starts again from its first step.
    pub fn answered(&self) {
        if let Ok(mut w) = self.state.lock() {
            w.refusals = 0;
        }
    }

    /// The polling interval now: `base`, stretched for the deployments polled at once.
    pub fn poll_interval(&self, base: Duration) -> Duration {
        stretched_interval(base, self.pollers.load(Ordering::Relaxed), self.limit)
    }

    /// Counts one more deployment followed by polling while the guard lives.
    pub fn polling(self: &Arc<Self>) -> Poller {
        self.pollers.fetch_add(1, Ordering::Relaxed);
        Poller {
            budget: self.clone(),
        }
    }

    fn show(&self, wait: Option<(String, Duration)>) {
        let Some(board) = self.board.get() else {
            return;
        };
        let apps: Vec<String> = self
            .apps
            .lock()
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default();
        for app in apps {
            match &wait {
                Some((cause, left)) => {
                    let at = crate::queue::spool::now() + left.as_secs().max(1);
                    board.wait(&app, WaitKind::RateLimit, SUBJECT, cause, Some(at));
                }
                None => {
                    board.clear(&app, WaitKind::RateLimit, SUBJECT);
                }
            }
        }
    }
}

/// Why a request waits.
enum Wait {
    /// This client sent `limit` requests in the last window.
    Full(Duration),
    /// The fleet sent `limit` requests in the last window.
    FleetFull(Duration),
    /// A 429's pause (this client's or the fleet's).
    Paused(Duration),
    /// The shared window cannot be reached (the cause).
    Unreachable(Duration, String),
}

impl Wait {
    fn time(&self) -> Duration {
        match self {
            Wait::Full(d) | Wait::FleetFull(d) | Wait::Paused(d) | Wait::Unreachable(d, _) => *d,
        }
    }

    /// Whether the board shows it: a pause or an outage always, a full window when long.
    fn shown(&self) -> bool {
        match self {
            Wait::Full(d) | Wait::FleetFull(d) => *d >= SHOWN_AFTER,
            Wait::Paused(_) | Wait::Unreachable(..) => true,
        }
    }

    fn cause(&self, limit: u32, max_outage: Duration) -> String {
        match self {
            Wait::Full(_) => {
                format!("{limit} requests sent in the last minute, the budget (api_rate_limit)")
            }
            Wait::FleetFull(_) => format!(
                "{limit} requests sent in the last minute by the fleet's nodes together, the \
                 budget (api_rate_limit)"
            ),
            Wait::Paused(_) => {
                "the platform answered 429 (rate limit); every call waits".to_string()
            }
            Wait::Unreachable(_, cause) => format!(
                "the fleet's API budget cannot be reached ({cause}); every call waits, at most \
                 {} in all",
                humantime::format_duration(max_outage)
            ),
        }
    }
}

/// One deployment followed by polling (see [`Budget::polling`]).
pub struct Poller {
    budget: Arc<Budget>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.budget.pollers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_is_free_until_the_window_holds_the_limit() {
        let t0 = Instant::now();
        let mut sent = VecDeque::new();
        assert_eq!(place_wait(&sent, 2, t0), None);
        sent.push_back(t0);
        assert_eq!(place_wait(&sent, 2, t0), None);
        sent.push_back(t0 + Duration::from_secs(10));
        let now = t0 + Duration::from_secs(20);
        assert_eq!(
            place_wait(&sent, 2, now),
            Some(Duration::from_secs(40) + MARGIN)
        );
        assert_eq!(place_wait(&sent, 2, t0 + WINDOW), None);
    }

    #[test]
    fn a_429_pauses_for_its_retry_after_or_a_doubling_backoff() {
        assert_eq!(
            pause_for(Some(Duration::from_secs(12)), 0),
            Duration::from_secs(12)
        );
        assert_eq!(pause_for(None, 0), Duration::from_secs(5));
        assert_eq!(pause_for(None, 2), Duration::from_secs(20));
        assert_eq!(pause_for(None, 40), MAX_PAUSE);
        assert_eq!(pause_for(Some(Duration::from_secs(3600)), 0), MAX_PAUSE);
        assert_eq!(pause_for(Some(Duration::ZERO), 0), Duration::from_secs(1));
        // The configured retry policy's steps: [retry] initial 20 ms, max_delay 200 ms.
        let (first, longest) = (Duration::from_millis(20), Duration::from_millis(200));
        assert_eq!(pause_with(None, 0, first, longest), first);
        assert_eq!(
            pause_with(None, 2, first, longest),
            Duration::from_millis(80)
        );
        assert_eq!(pause_with(None, 9, first, longest), longest);
        assert_eq!(pause_with(Some(Duration::ZERO), 0, first, longest), first);
        assert_eq!(
            pause_with(Some(Duration::from_secs(7)), 0, first, longest),
            Duration::from_secs(7),
            "Retry-After wins over the policy"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_limit_a_call_waits_for_the_window_and_a_429_stops_every_call() {
        let budget = Budget::new(2);
        let start = tokio::time::Instant::now();
        budget.acquire().await.unwrap();
        budget.acquire().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        budget.acquire().await.unwrap();
        assert!(start.elapsed() >= WINDOW, "{:?}", start.elapsed());
        let start = tokio::time::Instant::now();
        budget.refused(Some(Duration::from_secs(30))).await;
        // Any call, whichever lane makes it, waits out the pause.
        let other = std::sync::Arc::new(budget);
        let lane = other.clone();
        tokio::spawn(async move { lane.acquire().await.unwrap() })
            .await
            .unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_counts_the_time_its_calls_waited_for_the_budget() {
        let budget = Budget::new(1);
        let waits = BudgetWaits::default();
        budget.acquire().await.unwrap();
        waits
            .scope(async {
                budget.acquire().await.unwrap();
                budget.refused(Some(Duration::from_secs(10))).await;
                budget.acquire().await.unwrap();
            })
            .await;
        // The window (a minute and a margin), then the pause.
        assert!(
            waits.total() >= WINDOW + Duration::from_secs(10),
            "{waits:?}"
        );
        // Outside the scope, another job's waits are not counted here.
        let before = waits.total();
        budget.acquire().await.unwrap();
        assert_eq!(waits.total(), before);
    }

    /// A shared window whose database is down.
    struct Down;

    impl SharedWindow for Down {
        fn take(&self, _limit: u32) -> SharedFuture<'_, Place> {
            Box::pin(async {
                Place::Unreachable(Duration::from_secs(10), "connection refused".into())
            })
        }

        fn pause(&self, _pause: Duration) -> SharedFuture<'_, Result<(), String>> {
            Box::pin(async { Err("connection refused".into()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_shared_window_holds_a_request_for_a_bounded_time() {
        let budget = Budget::new(10);
        let board = Arc::new(Board::in_memory());
        budget.publish_to(board.clone());
        budget.track("my-app");
        budget.share(Arc::new(Down));
        let start = tokio::time::Instant::now();
        let waits = BudgetWaits::default();
        let err = waits
            .scope(budget.acquire())
            .await
            .expect_err("not sent without the fleet's window");
        let waited = start.elapsed();
        assert!(waited >= MAX_OUTAGE, "{waited:?}");
        assert!(waited <= MAX_OUTAGE + Duration::from_secs(10), "{waited:?}");
        assert!(err.to_string().contains("connection refused"), "{err}");
        assert!(waits.total() >= MAX_OUTAGE, "{waits:?}");
        assert_eq!(budget.used().0, 0, "no place taken");
        assert!(board.snapshot().is_empty(), "the wait is cleared");
    }

    #[test]
    fn polling_stretches_to_fit_half_the_budget() {
        let base = Duration::from_secs(3);
        assert_eq!(stretched_interval(base, 1, 60), base);
        assert_eq!(stretched_interval(base, 4, 60), Duration::from_secs(8));
        assert_eq!(stretched_interval(base, 6, 60), Duration::from_secs(12));
        assert_eq!(stretched_interval(base, 1, 10), Duration::from_secs(12));
    }
}
