//! The fleet's API budget in PostgreSQL: the nodes that use one region and token share one
//! window of `api_rate_limit` requests a minute, and a 429 met by any of them pauses them all.
//!
//! One row per region and SHA-256 of the token (`dropdeploy_budget`, migration 0002; the token
//! itself is never stored). Each take is one statement on the database's clock (`now()`): it
//! drops the times older than the window, and adds this request's if the window holds fewer than
//! the limit and no pause runs; a random number written with the place tells the taker that
//! the place is its own. The window slides, as the platform's limit does: a fixed window would
//! let twice the limit through across its edge.
//!
//! Every statement is bounded ([`STATEMENT_TIMEOUT`]); a database that cannot be reached is
//! [`Place::Unreachable`], asked again after a backoff, and the request waits (see
//! `deploy::scalingo::budget`): never more requests than the fleet's limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::config::Secret;
use crate::deploy::scalingo::budget::{Place, SharedFuture, SharedWindow, SharedWindows, WINDOW};

/// The migration that makes the budget's table.
pub const MIGRATION: &str = include_str!("migrations/0002_budget.sql");
/// The longest one statement (with its connection) may take.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Added to the window, as the local budget adds it to each wait: a request that took its
/// place exactly a window after another may reach the platform a little earlier.
const MARGIN: Duration = Duration::from_millis(500);
/// The first wait before asking an unreachable database again; doubled up to the longest.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LONGEST_RETRY: Duration = Duration::from_secs(10);
/// The shortest wait for a full window: the database's clock rounds.
const SHORTEST_WAIT: Duration = Duration::from_millis(10);

/// Takes a place: $1 region, $2 token digest, $3 this take's number, $4 the limit, $5 the
/// window in seconds. Answers whether the place is this take's, the pause left (seconds), and
/// when the oldest of the last `limit` places leaves the window (seconds from now).
const TAKE: &str = "
INSERT INTO dropdeploy_budget AS b (region, token_sha256, sent, taker)
VALUES ($1, $2, ARRAY[now()], $3)
ON CONFLICT (region, token_sha256) DO UPDATE SET
    sent = CASE
        WHEN (b.paused_until IS NULL OR b.paused_until <= now())
            AND cardinality(ARRAY(SELECT t FROM unnest(b.sent) t
                WHERE t > now() - make_interval(secs => $5))) < $4
        THEN ARRAY(SELECT t FROM unnest(b.sent) t
                WHERE t > now() - make_interval(secs => $5) ORDER BY t) || now()
        ELSE ARRAY(SELECT t FROM unnest(b.sent) t
                WHERE t > now() - make_interval(secs => $5) ORDER BY t)
    END,
    taker = CASE
        WHEN (b.paused_until IS NULL OR b.paused_until <= now())
            AND cardinality(ARRAY(SELECT t FROM unnest(b.sent) t
                WHERE t > now() - make_interval(secs => $5))) < $4
        THEN $3
        ELSE b.taker
    END
RETURNING
    taker = $3,
    extract(epoch FROM greatest(paused_until - now(), interval '0'))::float8,
    CASE WHEN cardinality(sent) >= $4
        THEN extract(epoch FROM sent[cardinality(sent) - $4 + 1]
            + make_interval(secs => $5) - now())::float8
        ELSE 0::float8
    END";

/// Pauses the fleet: $1 region, $2 token digest, $3 the pause in seconds. A longer pause
/// already set stays.
const PAUSE: &str = "
INSERT INTO dropdeploy_budget AS b (region, token_sha256, paused_until)
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT (region, token_sha256) DO UPDATE SET
    paused_until = greatest(b.paused_until, EXCLUDED.paused_until)";

/// Where a [`PgWindow`] gets its connection to the fleet's database. The client's connection
/// must be driven elsewhere (a task or a runtime of its own): a take only sends statements.
pub trait Connect: Send + Sync {
    /// A connected client, or why there is none (never the database URL: it may hold a
    /// password).
    fn client(&self) -> SharedFuture<'_, Result<Arc<tokio_postgres::Client>, String>>;
}

/// One client, connected once: its closed connection is an outage for good (a caller that
/// reconnects gives its own [`Connect`]).
impl Connect for Arc<tokio_postgres::Client> {
    fn client(&self) -> SharedFuture<'_, Result<Arc<tokio_postgres::Client>, String>> {
        Box::pin(async move {
            if self.is_closed() {
                Err("the connection to the database is closed".to_string())
            } else {
                Ok(self.clone())
            }
        })
    }
}

/// The shared window of one region and token, in PostgreSQL.
pub struct PgWindow {
    connect: Arc<dyn Connect>,
    region: String,
    /// The token's SHA-256, in hexadecimal.
    digest: String,
    /// Failed statements in a row, for the backoff.
    failures: AtomicU32,
}

impl PgWindow {
    /// The window of `region` (or of the API URL, when the client names no region) and
    /// `token`, reached through `connect`.
    pub fn new(connect: Arc<dyn Connect>, region: &str, token: &Secret) -> Arc<PgWindow> {
        Arc::new(PgWindow {
            connect,
            region: region.to_string(),
            digest: token_digest(token),
            failures: AtomicU32::new(0),
        })
    }

    /// What `ScalingoClient::share_budget` takes: the window of each region the client uses.
    pub fn windows(connect: Arc<dyn Connect>) -> SharedWindows {
        Arc::new(move |region: &str, token: &Secret| PgWindow::new(connect.clone(), region, token))
    }

    async fn take_now(&self, limit: u32) -> Place {
        let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        let nonce = fastrand::i64(..);
        let span = (WINDOW + MARGIN).as_secs_f64();
        let answer = self
            .bounded(async {
                let client = self.connect.client().await?;
                let row = client
                    .query_one(TAKE, &[&self.region, &self.digest, &nonce, &limit, &span])
                    .await
                    .map_err(|e| e.to_string())?;
                let read =
                    |row: &tokio_postgres::Row| -> Result<(bool, f64, f64), tokio_postgres::Error> {
                        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
                    };
                read(&row).map_err(|e| e.to_string())
            })
            .await;
        match answer {
            Err(cause) => Place::Unreachable(self.retry_after_failure(), cause),
            Ok((true, _, _)) => Place::Taken,
            Ok((false, paused, _)) if paused > 0.0 => Place::Paused(seconds(paused)),
            Ok((false, _, full)) => Place::Full(seconds(full).max(SHORTEST_WAIT)),
        }
    }

    async fn pause_now(&self, pause: Duration) -> Result<(), String> {
        let seconds = pause.as_secs_f64();
        self.bounded(async {
            let client = self.connect.client().await?;
            client
                .execute(PAUSE, &[&self.region, &self.digest, &seconds])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// Runs `work` within [`STATEMENT_TIMEOUT`], counting failures for the backoff.
    async fn bounded<T>(&self, work: impl Future<Output = Result<T, String>>) -> Result<T, String> {
        let answer = match tokio::time::timeout(STATEMENT_TIMEOUT, work).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "no answer from the database within {}",
                humantime::format_duration(STATEMENT_TIMEOUT)
            )),
        };
        if answer.is_ok() {
            self.failures.store(0, Ordering::Relaxed);
        }
        answer.map_err(|cause| format!("the fleet's database: {cause}"))
    }

    /// The wait before asking again after a failure: doubled per failure in a row.
    fn retry_after_failure(&self) -> Duration {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed);
        FIRST_RETRY
            .saturating_mul(2u32.saturating_pow(failures.min(10)))
            .min(LONGEST_RETRY)
    }
}

impl SharedWindow for PgWindow {
    fn take(&self, limit: u32) -> SharedFuture<'_, Place> {
        Box::pin(self.take_now(limit))
    }

    fn pause(&self, pause: Duration) -> SharedFuture<'_, Result<(), String>> {
        Box::pin(self.pause_now(pause))
    }
}

/// The token's SHA-256 in hexadecimal: the row's key, never the token.
pub fn token_digest(token: &Secret) -> String {
    hex::encode(Sha256::digest(token.expose().as_bytes()))
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::ZERO)
}
