//! The deployments stream: one WebSocket per app with a deployment in flight, shared by that
//! app's jobs, as the platform's official client follows deployments.
//!
//! `GET /v1/apps/{app}` gives `links.deployments_stream`; the client dials it with the header
//! `Origin: http://scalingo-cli.local/1` and sends `{"type":"auth","data":{"token":"<JWT>"}}`.
//! The server sends `{"id":…,"type":…,"data":{…}}` frames: `ping`, `new`, `log`
//! (`data.content`) and `status` (`data.status`) for every deployment of the app. The stream
//! authenticates again with the new bearer when it is renewed, reconnects with backoff when it
//! breaks, and says whether it is connected ([`Link`]), so that a follower polls when it is not.
//!
//! The documentation allows more than a happy stream, and it costs no more than polling:
//! - an auth refused may be a plain close (no close frame, no code): a connection counts as
//!   established only once the server has shown it accepted the auth (a first frame after it,
//!   or [`ESTABLISHED_AFTER`] without a close);
//! - a connection that ends younger than [`YOUNG`] is a failure: the next try waits a
//!   doubling, jittered backoff, and after [`FAILURES_BEFORE_POLLING`] in a row the followers
//!   poll for a spell ([`Link::Refused`]) before the stream is tried again; one that ends
//!   before it was established (the auth refused) starts a spell at once;
//! - each connection may start with the log so far ("existing logs and real time logs"):
//!   [`ShownLines`] skips what a replay repeats.
//!
//! A connection is announced to followers in the stream of events itself
//! ([`Update::Link`] with [`Link::Up`]), so that they see it before its first event.
//!
//! TLS for `wss://` is rustls on the process's provider (ring, see [`crate::http`]) with the
//! system's roots, as for every HTTP call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::api::ScalingoClient;
use super::lenient::text_of;

/// The `Origin` header the official client dials with.
pub const ORIGIN: &str = "http://scalingo-cli.local/1";
/// No frame at all (pings included) for this long: the connection is taken as dead.
const SILENCE: Duration = Duration::from_secs(90);
/// Longest wait between two tries to connect.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The first wait after a failed connection (jittered up to half as much again): as long
/// as the default polling interval, so that two dials never cost more than polls would.
const FIRST_BACKOFF: Duration = Duration::from_secs(3);
/// A connection is established once a frame came after the auth, or after this long without
/// a close.
pub const ESTABLISHED_AFTER: Duration = Duration::from_secs(3);
/// An established connection that ends sooner than this is a failure, not a break.
pub const YOUNG: Duration = Duration::from_secs(10);
/// After this many failed connections in a row, followers poll for a spell.
pub const FAILURES_BEFORE_POLLING: u32 = 2;
/// The first spell of polling; doubled for each failure after it, at most [`MAX_SPELL`].
const POLLING_SPELL: Duration = Duration::from_secs(60);
const MAX_SPELL: Duration = Duration::from_secs(10 * 60);
/// Wait after the platform refused the stream (an HTTP error to the dial): followers poll.
const REFUSED_BACKOFF: Duration = Duration::from_secs(60);

/// One event of the stream, about one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A new deployment of the app.
    New { id: String },
    /// Build output (one or more lines).
    Log { id: String, content: String },
    /// The deployment's status changed.
    Status { id: String, status: String },
}

/// Reads one frame; `None` for pings, unknown types and frames this client cannot read.
pub fn parse(text: &str) -> Option<StreamEvent> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    // An id may come as a string, a number or null.
    let id = v.get("id").and_then(text_of).unwrap_or_default();
    let data = v.get("data");
    let field = |name: &str| {
        data.and_then(|d| d.as_object()).and_then(|d| {
            // The Go client decodes case-insensitively (its field is tagged `Status`).
            d.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_string)
        })
    };
    match v.get("type")?.as_str()? {
        "log" => Some(StreamEvent::Log {
            id,
            content: field("content")?,
        }),
        "status" => Some(StreamEvent::Status {
            id,
            status: field("status")?,
        }),
        // `data.deployment` is an id in the documentation's example, an object for the CLI.
        "new" => {
            let id = match data.and_then(|d| d.get("deployment")) {
                Some(serde_json::Value::Object(d)) => d.get("id").and_then(text_of),
                Some(other) => text_of(other),
                None => None,
            }
            .filter(|i| !i.is_empty())
            .unwrap_or(id);
            Some(StreamEvent::New { id })
        }
        _ => None,
    }
}

/// Whether the app's stream is connected now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not yet, or again after a break: followers poll meanwhile.
    Down,
    /// Connected and authenticated; the number counts connections, so that a follower sees a
    /// reconnection (and checks what it may have missed).
    Up(u64),
    /// The platform refused it (or gives no stream URL): followers poll; tried again later.
    Refused,
}

/// The streams of one client's apps.
#[derive(Default)]
pub struct StreamHub {
    apps: Mutex<HashMap<String, Weak<AppStream>>>,
}

/// What goes to followers, in order: a new connection, then its events.
#[derive(Debug, Clone)]
enum Item {
    Connected(u64),
    Event(StreamEvent),
}

/// When the stream last dialled (each dial is an API request).
type LastDial = Arc<Mutex<Option<tokio::time::Instant>>>;

/// One app's stream, alive while a follower holds it.
pub struct AppStream {
    events: broadcast::Sender<Item>,
    link: watch::Receiver<Link>,
    last_dial: LastDial,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AppStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A follower's view of its app's stream.
pub struct Subscription {
    stream: Arc<AppStream>,
    events: broadcast::Receiver<Item>,
    link: watch::Receiver<Link>,
}

/// What a follower learns next.
#[derive(Debug)]
pub enum Update {
    Event(StreamEvent),
    /// The link changed (see [`Subscription::link`]).
    Link(Link),
    /// Events were dropped (the follower was too slow): check the deployment.
    Missed,
}

impl Subscription {
    pub fn link(&self) -> Link {
        *self.link.borrow()
    }

    /// When the stream last dialled (an API request, as a poll is), if it did.
    pub fn last_dial(&self) -> Option<tokio::time::Instant> {
        match self.stream.last_dial.lock() {
            Ok(at) => *at,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// The next event or change of the link. Never ends while the stream lives. A connection
    /// ([`Link::Up`]) comes in order with the events, before its first one.
    pub async fn next(&mut self) -> Update {
        loop {
            tokio::select! {
                biased;
                event = self.events.recv() => return match event {
                    Ok(Item::Event(e)) => Update::Event(e),
                    Ok(Item::Connected(n)) => Update::Link(Link::Up(n)),
                    Err(broadcast::error::RecvError::Lagged(_)) => Update::Missed,
                    Err(broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await;
                        Update::Missed
                    }
                },
                changed = self.link.changed() => match changed {
                    // Announced among the events instead.
                    Ok(()) if matches!(*self.link.borrow_and_update(), Link::Up(_)) => {}
                    Ok(()) => return Update::Link(*self.link.borrow()),
                    Err(_) => {
                        std::future::pending::<()>().await;
                        return Update::Missed;
                    }
                },
            }
        }
    }

    /// Keeps the stream alive (a second subscription to the same app).
    pub fn resubscribe(&self) -> Subscription {
        Subscription {
            stream: self.stream.clone(),
            events: self.stream.events.subscribe(),
            link: self.stream.link.clone(),
        }
    }
}

impl ScalingoClient {
    /// The app's stream, connecting it if no follower holds it yet.
    pub fn stream(self: &Arc<Self>, app: &str) -> Subscription {
        let mut apps = match self.streams.apps.lock() {
            Ok(apps) => apps,
            Err(poisoned) => poisoned.into_inner(),
        };
        apps.retain(|_, s| s.strong_count() > 0);
        let stream = match apps.get(app).and_then(Weak::upgrade) {
            Some(stream) => stream,
            None => {
                let (events, _) = broadcast::channel(1024);
                let (link_tx, link) = watch::channel(Link::Down);
                let last_dial = LastDial::default();
                let to = Followers {
                    events: events.clone(),
                    link: link_tx,
                    last_dial: last_dial.clone(),
                };
                let task = tokio::spawn(run(self.clone(), app.to_string(), to));
                let stream = Arc::new(AppStream {
                    events,
                    link,
                    last_dial,
                    task,
                });
                apps.insert(app.to_string(), Arc::downgrade(&stream));
                stream
            }
        };
        Subscription {
            events: stream.events.subscribe(),
            link: stream.link.clone(),
            stream,
        }
    }
}

/// Why one connection ended.
#[derive(Debug)]
enum Ended {
    /// After being established for at least [`YOUNG`]: reconnect soon.
    Broken(String),
    /// Before being established, or young: the dial, the auth or the server failed.
    Failed(String),
    /// Ended right after the auth frame, before any frame: the auth refused ("the websocket
    /// will be ended immediately"). Followers poll for a spell at once.
    AuthRefused(String),
    /// The platform refused the stream.
    Refused(String),
}

/// Where the stream task tells its followers what happens.
struct Followers {
    events: broadcast::Sender<Item>,
    link: watch::Sender<Link>,
    last_dial: LastDial,
}

/// `d`, or up to half as much again: spreads the apps' reconnections.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 + fastrand::f64() / 2.0)
}

/// The wait before the next try after `failures` failed connections in a row (at least 1),
/// and whether followers poll meanwhile (a spell of polling).
pub fn retry_wait(failures: u32, unit: f64) -> (Duration, bool) {
    let unit = 1.0 + unit.clamp(0.0, 1.0) / 2.0;
    if failures >= FAILURES_BEFORE_POLLING {
        let extra = failures - FAILURES_BEFORE_POLLING;
        let spell = POLLING_SPELL
            .saturating_mul(1 << extra.min(4))
            .min(MAX_SPELL);
        return (spell.mul_f64(unit), true);
    }
    let backoff = FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(5))
        .min(MAX_BACKOFF);
    (backoff.mul_f64(unit), false)
}

/// Connects, serves, reconnects with backoff, for as long as a follower holds the stream.
async fn run(client: Arc<ScalingoClient>, app: String, to: Followers) {
    let mut url: Option<String> = None;
    let mut failures = 0u32;
    let mut connections = 0u64;
    loop {
        let ended = session(&client, &app, &mut url, &to, &mut connections).await;
        let delay = match &ended {
            Ended::Broken(why) => {
                tracing::debug!(app, "deployments stream broke: {why}; reconnecting");
                to.link.send_replace(Link::Down);
                failures = 0;
                jittered(Duration::from_millis(500))
            }
            Ended::Failed(why) | Ended::AuthRefused(why) => {
                failures += 1;
                if matches!(ended, Ended::AuthRefused(_)) {
                    failures = failures.max(FAILURES_BEFORE_POLLING);
                }
                let (wait, spell) = retry_wait(failures, fastrand::f64());
                if spell {
                    tracing::info!(
                        app,
                        "deployments stream failed {failures} times in a row ({why}); following \
                         by polling, the stream tried again in {}",
                        humantime::format_duration(Duration::from_secs(wait.as_secs()))
                    );
                    to.link.send_replace(Link::Refused);
                } else {
                    tracing::debug!(app, "deployments stream unavailable: {why}");
                    to.link.send_replace(Link::Down);
                }
                wait
            }
            Ended::Refused(why) => {
                tracing::info!(
                    app,
                    "deployments stream refused ({why}); following by polling"
                );
                to.link.send_replace(Link::Refused);
                url = None;
                REFUSED_BACKOFF
            }
        };
        tokio::time::sleep(delay).await;
    }
}

/// One connection, from its dial to its end.
async fn session(
    client: &Arc<ScalingoClient>,
    app: &str,
    url: &mut Option<String>,
    to: &Followers,
    connections: &mut u64,
) -> Ended {
    let (mut ws, mut bearer) = match connect(client, app, url, &to.last_dial).await {
        Ok(open) => open,
        Err(ended) => return ended,
    };
    let opened = tokio::time::Instant::now();
    let mut established: Option<tokio::time::Instant> = None;
    let mut last_frame = opened;
    let establish = |connections: &mut u64| {
        *connections += 1;
        to.link.send_replace(Link::Up(*connections));
        let _ = to.events.send(Item::Connected(*connections));
        tokio::time::Instant::now()
    };
    let mut renew_at = renewal_deadline(client.auth.renewal_due().await);
    let why = loop {
        let renewal = async {
            match renew_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // No close for a while after the auth: taken as accepted.
            _ = tokio::time::sleep_until(opened + ESTABLISHED_AFTER), if established.is_none() => {
                established = Some(establish(connections));
            }
            frame = tokio::time::timeout_at(last_frame + SILENCE, ws.next()) => {
                let frame = match frame {
                    Err(_) => break format!("no frame for {}", humantime::format_duration(SILENCE)),
                    Ok(None) => break "closed".to_string(),
                    Ok(Some(Err(e))) => break e.to_string(),
                    Ok(Some(Ok(frame))) => frame,
                };
                last_frame = tokio::time::Instant::now();
                if let Message::Close(frame) = frame {
                    if frame.as_ref().is_some_and(|f| u16::from(f.code) == 4001) {
                        // The stream refused the bearer: exchange again before reconnecting.
                        client.auth.invalidate(&bearer).await;
                    }
                    break frame
                        .map(|f| format!("closed by the platform: {} {}", u16::from(f.code), f.reason))
                        .unwrap_or_else(|| "closed by the platform".into());
                }
                // A frame after the auth: the server accepted it.
                if established.is_none() {
                    established = Some(establish(connections));
                }
                if let Message::Text(text) = frame
                    && let Some(event) = parse(&text)
                {
                    let _ = to.events.send(Item::Event(event));
                }
            },
            _ = renewal => {
                match client.auth.bearer().await {
                    Ok(fresh) if fresh != bearer => {
                        if let Err(e) = ws.send(Message::text(auth_frame(fresh.expose()))).await {
                            break format!("sending the renewed auth frame: {e}");
                        }
                        tracing::debug!(app, "deployments stream authenticated with the renewed bearer");
                        bearer = fresh;
                    }
                    Ok(_) => {}
                    Err(e) => break e.to_string(),
                }
                renew_at = renewal_deadline(client.auth.renewal_due().await);
            }
        }
    };
    match established {
        None => Ended::AuthRefused(format!(
            "ended before it showed the auth was accepted ({why})"
        )),
        Some(at) if at.elapsed() < YOUNG => Ended::Failed(format!(
            "ended {} after it was established ({why})",
            humantime::format_duration(Duration::from_millis(at.elapsed().as_millis() as u64))
        )),
        Some(_) => Ended::Broken(why),
    }
}

/// The app's stream URL (asked once, then kept), dialled and authenticated with the bearer.
async fn connect(
    client: &Arc<ScalingoClient>,
    app: &str,
    url: &mut Option<String>,
    last_dial: &LastDial,
) -> Result<(Socket, crate::config::Secret), Ended> {
    let stream_url = match url.clone() {
        Some(u) => u,
        None => match client.deployments_stream_url(app).await {
            Ok(Some(u)) => {
                *url = Some(u.clone());
                u
            }
            Ok(None) => {
                return Err(Ended::Refused(
                    "the app gives no deployments_stream link".into(),
                ));
            }
            Err(e) if e.is_transient() => return Err(Ended::Failed(e.to_string())),
            Err(e) => return Err(Ended::Refused(e.to_string())),
        },
    };
    let bearer = client
        .auth
        .bearer()
        .await
        .map_err(|e| Ended::Failed(e.to_string()))?;
    client
        .budget
        .acquire()
        .await
        .map_err(|e| Ended::Failed(e.to_string()))?;
    if let Ok(mut at) = last_dial.lock() {
        *at = Some(tokio::time::Instant::now());
    }
    let mut ws = match dial(&stream_url, client.timeout).await {
        Ok(ws) => ws,
        Err(Dial::Refused(why)) => return Err(Ended::Refused(why)),
        Err(Dial::Unauthorized) => {
            // The bearer was refused: exchange again before the next try.
            client.auth.invalidate(&bearer).await;
            return Err(Ended::Failed("HTTP 401 to the dial".to_string()));
        }
        Err(Dial::RateLimited(retry_after)) => {
            // Like any call's 429: the whole client pauses.
            client.budget.refused(retry_after).await;
            return Err(Ended::Failed("HTTP 429 (rate limit)".to_string()));
        }
        Err(Dial::Failed(why)) => return Err(Ended::Failed(why)),
    };
    if let Err(e) = ws.send(Message::text(auth_frame(bearer.expose()))).await {
        return Err(Ended::Failed(format!("sending the auth frame: {e}")));
    }
    Ok((ws, bearer))
}

/// When to authenticate again: a second after the bearer's renewal is due (a deadline, so
/// that the frames that keep coming do not push it back).
fn renewal_deadline(due: Option<SystemTime>) -> Option<tokio::time::Instant> {
    let left = due?
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(tokio::time::Instant::now() + left + Duration::from_secs(1))
}

fn auth_frame(token: &str) -> String {
    serde_json::json!({ "type": "auth", "data": { "token": token } }).to_string()
}

enum Dial {
    Refused(String),
    Failed(String),
    /// 429, with its `Retry-After`.
    RateLimited(Option<Duration>),
    /// 401: the bearer.
    Unauthorized,
}

/// Anything a WebSocket can run over: a TCP stream, or TLS over one.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Socket = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Dials `url` (`ws://` or `wss://`) with the official client's `Origin`, within `limit`.
async fn dial(url: &str, limit: Duration) -> Result<Socket, Dial> {
    let shown = || crate::deploy::scalingo::api::display_url(url);
    let parsed =
        reqwest::Url::parse(url).map_err(|e| Dial::Refused(format!("{}: {e}", shown())))?;
    let tls = match parsed.scheme() {
        "wss" => true,
        "ws" => false,
        other => {
            return Err(Dial::Refused(format!(
                "{}: unsupported scheme {other}",
                shown()
            )));
        }
    };
    let host = parsed.host_str().unwrap_or_default().to_string();
    let port = parsed
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let mut request = url
        .into_client_request()
        .map_err(|e| Dial::Refused(format!("{}: {e}", shown())))?;
    let headers = request.headers_mut();
    headers.insert("Origin", reqwest::header::HeaderValue::from_static(ORIGIN));
    headers.insert(
        "User-Agent",
        reqwest::header::HeaderValue::from_static(crate::http::USER_AGENT),
    );
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| Dial::Failed(format!("{}: {e}", shown())))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if tls {
            Box::new(
                tls_connect(&host, tcp)
                    .await
                    .map_err(|e| Dial::Failed(format!("{}: {e}", shown())))?,
            )
        } else {
            Box::new(tcp)
        };
        match tokio_tungstenite::client_async(request, io).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status();
                let refused = format!("{}: HTTP {status}", shown());
                if status.as_u16() == 401 {
                    return Err(Dial::Unauthorized);
                }
                if status.as_u16() == 429 {
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| crate::queue::retry::parse_retry_after(v, SystemTime::now()));
                    return Err(Dial::RateLimited(retry_after));
                }
                if status.is_server_error() {
                    Err(Dial::Failed(refused))
                } else {
                    Err(Dial::Refused(refused))
                }
            }
            Err(e) => Err(Dial::Failed(format!("{}: {e}", shown()))),
        }
    };
    match tokio::time::timeout(limit, connect).await {
        Ok(result) => result,
        Err(_) => Err(Dial::Failed(format!(
            "{}: no answer within {}",
            shown(),
            humantime::format_duration(limit)
        ))),
    }
}

async fn tls_connect(
    host: &str,
    tcp: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_platform_verifier::ConfigVerifierExt as _;
    crate::http::install_crypto_provider();
    let config = rustls::ClientConfig::with_platform_verifier().map_err(std::io::Error::other)?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The build lines of one deployment shown so far, so that each is shown once across
/// reconnections: a connection may start with the log so far (a replay), which is skipped
/// line by line while it repeats what was shown, in order from the first line. A line that
/// differs ends the replay; lines held while matching are shown then after all (they were
/// new), so a line that the build itself repeats still shows each time it comes.
#[derive(Debug, Default)]
pub struct ShownLines {
    /// A hash of each line shown, in order.
    seen: Vec<u64>,
    /// While a new connection may be replaying: how far it matched, and the lines held.
    replay: Option<(usize, Vec<String>)>,
}

fn line_hash(line: &str) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    line.hash(&mut h);
    h.finish()
}

impl ShownLines {
    /// How many lines were shown.
    pub fn count(&self) -> usize {
        self.seen.len()
    }

    /// A new connection: what it sends first may be the log so far again.
    pub fn connected(&mut self) {
        self.replay = (!self.seen.is_empty()).then(|| (0, Vec::new()));
    }

    /// Lines that came over the stream; returns those to show.
    pub fn streamed(&mut self, lines: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut show = Vec::new();
        for line in lines {
            if let Some((at, held)) = &mut self.replay {
                if self.seen.get(*at) == Some(&line_hash(&line)) {
                    held.push(line);
                    *at += 1;
                    if *at == self.seen.len() {
                        // The whole log so far came again: a replay, skipped.
                        self.replay = None;
                    }
                    continue;
                }
                // Not a replay after all: what was held is new.
                let (_, held) = self.replay.take().unwrap_or_default();
                for h in held {
                    self.seen.push(line_hash(&h));
                    show.push(h);
                }
            }
            self.seen.push(line_hash(&line));
            show.push(line);
        }
        show
    }

    /// The whole output so far (a poll): returns the lines not shown yet.
    pub fn polled(&mut self, all: Vec<String>) -> Vec<String> {
        self.replay = None;
        let new: Vec<String> = all.into_iter().skip(self.seen.len()).collect();
        self.seen.extend(new.iter().map(|l| line_hash(l)));
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_as_the_official_client_reads_them() {
        assert_eq!(
            parse(r#"{"id":"d1","type":"log","data":{"content":"-----> Building\n"}}"#),
            Some(StreamEvent::Log {
                id: "d1".into(),
                content: "-----> Building\n".into()
            })
        );
        assert_eq!(
            parse(r#"{"id":"d1","type":"status","data":{"Status":"pushing"}}"#),
            Some(StreamEvent::Status {
                id: "d1".into(),
                status: "pushing".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"new","data":{"deployment":{"id":"d2","status":"queued"}}}"#),
            Some(StreamEvent::New { id: "d2".into() })
        );
        assert_eq!(parse(r#"{"id":"","type":"ping","data":{}}"#), None);
        assert_eq!(parse("not json"), None);
        assert_eq!(parse(r#"{"id":"d1","type":"status","data":{}}"#), None);
    }

    #[test]
    fn the_auth_frame_carries_the_bearer() {
        let v: serde_json::Value = serde_json::from_str(&auth_frame("jwt")).unwrap();
        assert_eq!(v["type"], "auth");
        assert_eq!(v["data"]["token"], "jwt");
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn a_replay_of_the_log_so_far_is_shown_once_and_new_lines_after_it() {
        let mut shown = ShownLines::default();
        assert_eq!(shown.streamed(lines("a\nb\n")), lines("a\nb"));
        shown.connected();
        // The log so far again, then a new line, in one frame.
        assert_eq!(shown.streamed(lines("a\nb\nc\n")), lines("c"));
        shown.connected();
        // A replay cut in two frames, then a new line.
        assert!(shown.streamed(lines("a\nb\n")).is_empty());
        assert_eq!(shown.streamed(lines("c\nd\n")), lines("d"));
        assert_eq!(shown.count(), 4);
    }

    #[test]
    fn a_line_the_build_repeats_is_shown_each_time() {
        let mut shown = ShownLines::default();
        assert_eq!(shown.streamed(lines("x\ny\n")), lines("x\ny"));
        // No replay on this connection: its first line equals the log's first one, the next
        // does not: both are new.
        shown.connected();
        assert_eq!(shown.streamed(lines("x\n")), Vec::<String>::new());
        assert_eq!(shown.streamed(lines("z\n")), lines("x\nz"));
        // Without a reconnection, repeated lines are shown as they come.
        assert_eq!(shown.streamed(lines("z\nz\n")), lines("z\nz"));
        // A poll shows only what is beyond the lines shown.
        assert_eq!(shown.polled(lines("x\ny\nx\nz\nz\nz\nw")), lines("w"));
    }

    #[test]
    fn failures_grow_a_jittered_backoff_then_a_spell_of_polling() {
        let (first, spell) = retry_wait(1, 0.0);
        assert_eq!((first, spell), (FIRST_BACKOFF, false));
        assert_eq!(retry_wait(1, 1.0).0, FIRST_BACKOFF * 3 / 2, "jittered");
        assert_eq!(
            retry_wait(FAILURES_BEFORE_POLLING, 0.0),
            (POLLING_SPELL, true)
        );
        assert_eq!(
            retry_wait(FAILURES_BEFORE_POLLING + 1, 0.0),
            (POLLING_SPELL * 2, true)
        );
        assert_eq!(retry_wait(40, 0.0), (MAX_SPELL, true));
    }
}
