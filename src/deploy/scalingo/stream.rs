//! The deployments stream: one WebSocket per app with a deployment in flight, shared by that
//! app's jobs, as the platform's official client follows deployments.
//!
//! `GET /v1/apps/{app}` gives `links.deployments_stream`; the client dials it with the header
//! `Origin: http://scalingo-cli.local/1` and sends `{"type":"auth","data":{"token":"<JWT>"}}`.
//! The server sends `{"id":…,"type":…,"data":{…}}` frames: `ping`, `new`, `log`
//! (`data.content`) and `status` (`data.status`) for every deployment of the app. The stream
//! authenticates again with the new bearer when it is renewed, reconnects with backoff when it
//! breaks, and says whether it is connected ([`Link`]), so that a follower polls when it is not.
//! Nothing is replayed after a reconnection: followers check the deployment once then.
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

/// The `Origin` header the official client dials with.
pub const ORIGIN: &str = "http://scalingo-cli.local/1";
/// No frame at all (pings included) for this long: the connection is taken as dead.
const SILENCE: Duration = Duration::from_secs(90);
/// Longest wait between two tries to connect.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
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
    let id = v
        .get("id")
        .and_then(|i| i.as_str())
        .unwrap_or("")
        .to_string();
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
        "new" => {
            let id = data
                .and_then(|d| d.pointer("/deployment/id"))
                .and_then(|i| i.as_str())
                .map(str::to_string)
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

/// One app's stream, alive while a follower holds it.
pub struct AppStream {
    events: broadcast::Sender<StreamEvent>,
    link: watch::Receiver<Link>,
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
    events: broadcast::Receiver<StreamEvent>,
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

    /// The next event or change of the link. Never ends while the stream lives.
    pub async fn next(&mut self) -> Update {
        tokio::select! {
            event = self.events.recv() => match event {
                Ok(e) => Update::Event(e),
                Err(broadcast::error::RecvError::Lagged(_)) => Update::Missed,
                Err(broadcast::error::RecvError::Closed) => {
                    std::future::pending::<()>().await;
                    Update::Missed
                }
            },
            changed = self.link.changed() => match changed {
                Ok(()) => Update::Link(*self.link.borrow_and_update()),
                Err(_) => {
                    std::future::pending::<()>().await;
                    Update::Missed
                }
            },
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
                let task =
                    tokio::spawn(run(self.clone(), app.to_string(), events.clone(), link_tx));
                let stream = Arc::new(AppStream { events, link, task });
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
    /// After being connected: reconnect soon.
    Broken(String),
    /// Before: the dial or the auth failed.
    Failed(String),
    /// The platform refused the stream.
    Refused(String),
}

/// Connects, serves, reconnects with backoff, for as long as a follower holds the stream.
async fn run(
    client: Arc<ScalingoClient>,
    app: String,
    events: broadcast::Sender<StreamEvent>,
    link: watch::Sender<Link>,
) {
    let mut url: Option<String> = None;
    let mut failures = 0u32;
    let mut connections = 0u64;
    loop {
        let ended = session(&client, &app, &mut url, &events, &link, &mut connections).await;
        let delay = match &ended {
            Ended::Broken(why) => {
                tracing::debug!(app, "deployments stream broke: {why}; reconnecting");
                link.send_replace(Link::Down);
                failures = 0;
                Duration::from_millis(500)
            }
            Ended::Failed(why) => {
                tracing::debug!(app, "deployments stream unavailable: {why}");
                link.send_replace(Link::Down);
                failures += 1;
                MAX_BACKOFF.min(Duration::from_secs(1 << failures.min(5)))
            }
            Ended::Refused(why) => {
                tracing::info!(
                    app,
                    "deployments stream refused ({why}); following by polling"
                );
                link.send_replace(Link::Refused);
                url = None;
                REFUSED_BACKOFF
            }
        };
        tokio::time::sleep(delay).await;
    }
}

async fn session(
    client: &Arc<ScalingoClient>,
    app: &str,
    url: &mut Option<String>,
    events: &broadcast::Sender<StreamEvent>,
    link: &watch::Sender<Link>,
    connections: &mut u64,
) -> Ended {
    let (mut ws, mut bearer) = match connect(client, app, url).await {
        Ok(open) => open,
        Err(ended) => return ended,
    };
    *connections += 1;
    link.send_replace(Link::Up(*connections));
    let mut renew_at = renewal_deadline(client.auth.renewal_due().await);
    loop {
        let renewal = async {
            match renew_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = tokio::time::timeout(SILENCE, ws.next()) => match frame {
                Err(_) => return Ended::Broken(format!("no frame for {}", humantime::format_duration(SILENCE))),
                Ok(None) => return Ended::Broken("closed".into()),
                Ok(Some(Err(e))) => return Ended::Broken(e.to_string()),
                Ok(Some(Ok(Message::Text(text)))) => {
                    if let Some(event) = parse(&text) {
                        let _ = events.send(event);
                    }
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    if frame.as_ref().is_some_and(|f| u16::from(f.code) == 4001) {
                        // The stream refused the bearer: exchange again before reconnecting.
                        client.auth.invalidate(&bearer).await;
                    }
                    let why = frame.map(|f| format!("closed by the platform: {} {}", u16::from(f.code), f.reason)).unwrap_or_else(|| "closed by the platform".into());
                    return Ended::Broken(why);
                }
                Ok(Some(Ok(_))) => {}
            },
            _ = renewal => {
                match client.auth.bearer().await {
                    Ok(fresh) if fresh != bearer => {
                        if let Err(e) = ws.send(Message::text(auth_frame(fresh.expose()))).await {
                            return Ended::Broken(format!("sending the renewed auth frame: {e}"));
                        }
                        tracing::debug!(app, "deployments stream authenticated with the renewed bearer");
                        bearer = fresh;
                    }
                    Ok(_) => {}
                    Err(e) => return Ended::Broken(e.to_string()),
                }
                renew_at = renewal_deadline(client.auth.renewal_due().await);
            }
        }
    }
}

/// The app's stream URL (asked once, then kept), dialled and authenticated with the bearer.
async fn connect(
    client: &Arc<ScalingoClient>,
    app: &str,
    url: &mut Option<String>,
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
    client.budget.acquire().await;
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
            client.budget.refused(retry_after);
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
}
