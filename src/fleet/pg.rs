//! The connection to the fleet's PostgreSQL: tokio-postgres on a small runtime of its own, so
//! that the store's sync methods can be called from blocking threads (and never run database
//! I/O on a worker of the daemon's runtime).
//!
//! A few connections are kept (an upload of a big archive holds one for its transaction while
//! a lease is renewed on another). When the server cannot be reached, the next attempt waits a
//! backoff (0.2 s doubling to 10 s); meanwhile every call fails at once with
//! [`StoreError::Unavailable`]. The URL may hold a password: it is kept in a
//! [`Secret`], and no message here quotes it.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::{Client, Config, NoTls};

use super::tls::MakeRustls;
use crate::config::Secret;
use crate::queue::store::StoreError;

/// The first wait after a failed connection; doubled up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The bound of one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The bound of one database operation (a statement, or one chunk of an archive).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept.
const IDLE_MAX: usize = 4;

/// The runtime, and the pool its tasks use.
pub struct Pg {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").finish_non_exhaustive()
    }
}

/// The connections (no URL in it: the parsed configuration only).
pub struct Pool {
    config: Config,
    tls: Option<MakeRustls>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    idle: Vec<Client>,
    /// Since when calls fail to reach the server.
    down_since: Option<SystemTime>,
    /// The reason of the last failure, for messages.
    last_error: String,
    /// No connection attempt before this.
    next_try: Option<Instant>,
    backoff: Duration,
}

/// A connection taken from the pool; given back with [`Pg::put_back`].
pub struct Conn(pub Client);

impl Pg {
    /// Parses the URL (no connection yet) and starts the runtime.
    pub fn new(url: &Secret) -> Result<Pg, String> {
        let (config, tls) = parse_url(url.expose())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dropdeploy-pg")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the database runtime: {e}"))?;
        Ok(Pg {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            pool: Arc::new(Pool {
                config,
                tls,
                state: Mutex::new(State {
                    backoff: BACKOFF_MIN,
                    ..State::default()
                }),
            }),
        })
    }

    /// The pool, for the futures given to [`Pg::run`].
    pub fn pool(&self) -> Arc<Pool> {
        self.pool.clone()
    }

    /// The runtime's handle (for tasks such as LISTEN).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `future` on the database runtime and waits for it, from any thread (a blocking
    /// thread, or a plain one; never call it on a runtime worker).
    pub fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Pool>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let future = f(self.pool.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the database task ended without an answer".into(),
            ))
        })
    }

    /// Since when the database has been unreachable (`None` when the last call reached it).
    pub fn down_since(&self) -> Option<SystemTime> {
        lock(&self.pool.state).down_since
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Pool {
    /// A connection: an idle one, or a new one unless the backoff says not yet.
    pub async fn get(&self) -> Result<Conn, StoreError> {
        {
            let mut state = lock(&self.state);
            while let Some(client) = state.idle.pop() {
                if !client.is_closed() {
                    return Ok(Conn(client));
                }
            }
            if let Some(next) = state.next_try
                && Instant::now() < next
            {
                return Err(unavailable(&state));
            }
        }
        match self.connect().await {
            Ok(client) => Ok(Conn(client)),
            Err(reason) => {
                let mut state = lock(&self.state);
                self.mark_down(&mut state, reason);
                Err(unavailable(&state))
            }
        }
    }

    /// A new connection (its connection task spawned on the runtime).
    pub async fn connect(&self) -> Result<Client, String> {
        let attempt = async {
            match &self.tls {
                Some(tls) => {
                    let (client, connection) = self.config.connect(tls.clone()).await?;
                    tokio::spawn(connection);
                    Ok::<_, tokio_postgres::Error>(client)
                }
                None => {
                    let (client, connection) = self.config.connect(NoTls).await?;
                    tokio::spawn(connection);
                    Ok(client)
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
        }
    }

    /// The configuration, for connections of their own (LISTEN).
    pub fn config(&self) -> (&Config, Option<&MakeRustls>) {
        (&self.config, self.tls.as_ref())
    }

    /// Gives a connection back after a call: kept if it worked, dropped (and the database
    /// marked down when it was not reached) if not.
    pub fn put_back<T>(
        &self,
        conn: Conn,
        result: Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let mut state = lock(&self.state);
        match result {
            Ok(value) => {
                self.mark_up(&mut state);
                if state.idle.len() < IDLE_MAX && !conn.0.is_closed() {
                    state.idle.push(conn.0);
                }
                Ok(value)
            }
            Err(e) if e.as_db_error().is_some() && !conn.0.is_closed() => {
                // The server answered: it is up, the statement was refused.
                self.mark_up(&mut state);
                state.idle.push(conn.0);
                Err(StoreError::Unavailable(format!(
                    "the database refused a statement: {}",
                    describe(&e)
                )))
            }
            Err(e) => {
                self.mark_down(&mut state, describe(&e));
                Err(unavailable(&state))
            }
        }
    }

    /// [`Pool::put_back`] for a call bounded by [`OPERATION_TIMEOUT`] (`tokio::time::timeout`).
    pub fn settle<T>(
        &self,
        conn: Conn,
        result: Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        match result {
            Ok(result) => self.put_back(conn, result),
            Err(_) => Err(self.timed_out(conn)),
        }
    }

    /// A call that timed out: its connection is dropped and the database marked down.
    pub fn timed_out(&self, conn: Conn) -> StoreError {
        drop(conn);
        let mut state = lock(&self.state);
        self.mark_down(
            &mut state,
            format!("no answer within {OPERATION_TIMEOUT:?}"),
        );
        unavailable(&state)
    }

    fn mark_up(&self, state: &mut State) {
        state.down_since = None;
        state.next_try = None;
        state.backoff = BACKOFF_MIN;
    }

    fn mark_down(&self, state: &mut State, reason: String) {
        if state.down_since.is_none() {
            tracing::warn!("the fleet's database is unreachable: {reason}");
        }
        state.down_since.get_or_insert_with(SystemTime::now);
        state.last_error = reason;
        // Connections made before the outage are likely dead too (a restarted server).
        state.idle.clear();
        state.next_try = Some(Instant::now() + state.backoff);
        state.backoff = (state.backoff * 2).min(BACKOFF_MAX);
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unavailable(state: &State) -> StoreError {
    let since = state
        .down_since
        .map(|t| format!(" (since {})", humantime::format_rfc3339_seconds(t)))
        .unwrap_or_default();
    StoreError::Unavailable(format!(
        "the fleet's database cannot be reached{since}: {}",
        state.last_error
    ))
}

/// An error of tokio-postgres in words, with its cause (the URL is never part of it).
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    }
}

/// The connection configuration and the TLS to use: TLS when the URL says `sslmode=require`,
/// `verify-ca` or `verify-full` (always verifying the certificate and the name, against the
/// system's roots and the CA certificates of `sslrootcert=<file>` if given), none otherwise.
pub fn parse_url(url: &str) -> Result<(Config, Option<MakeRustls>), String> {
    let mut wants_tls = false;
    let mut root_certs: Option<PathBuf> = None;
    let rewritten: String = match url.split_once('?') {
        None => url.to_owned(),
        Some((base, query)) => {
            let mut params = Vec::new();
            for param in query.split('&') {
                match param.split_once('=') {
                    Some(("sslmode", "require" | "verify-ca" | "verify-full")) => {
                        wants_tls = true;
                        params.push("sslmode=require");
                    }
                    Some(("sslrootcert", file)) => {
                        root_certs = Some(PathBuf::from(percent_decode(file)?));
                    }
                    _ => params.push(param),
                }
            }
            if params.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", params.join("&"))
            }
        }
    };
    let mut config = Config::from_str(&rewritten)
        // tokio-postgres' parse errors name the option, never its value.
        .map_err(|e| format!("the database URL is not valid: {e}"))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    if config.get_application_name().is_none() {
        config.application_name("dropdeploy");
    }
    if wants_tls {
        Ok((config, Some(MakeRustls::new(root_certs.as_deref())?)))
    } else {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        Ok((config, None))
    }
}

/// `%XX` escapes of a URL parameter decoded.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("the database URL has a bad %-escape in sslrootcert")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the database URL's sslrootcert is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_decides_tls() {
        crate::http::install_crypto_provider();
        let (_, tls) = parse_url("postgres://u:pw@db.internal/x?sslmode=verify-full").unwrap();
        assert!(tls.is_some());
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/tls/ca.pem");
        let (_, tls) = parse_url(&format!(
            "postgres://db.internal/x?sslrootcert={}&sslmode=verify-full",
            ca.replace('/', "%2F")
        ))
        .unwrap();
        assert!(tls.is_some());
        let (_, tls) = parse_url("postgres://u:pw@db.internal/x?sslmode=require").unwrap();
        assert!(tls.is_some());
        let (config, tls) = parse_url("postgres://u:pw@127.0.0.1:5/x").unwrap();
        assert!(tls.is_none());
        assert_eq!(config.get_dbname(), Some("x"));
    }

    #[test]
    fn a_missing_sslrootcert_is_named() {
        crate::http::install_crypto_provider();
        let err = parse_url("postgres://h/x?sslmode=require&sslrootcert=/nonexistent/ca.pem")
            .unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn a_bad_url_is_refused_without_quoting_it() {
        let err = parse_url("postgres://u:s3cret@h/x?sslmode=bogus").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
