//! The deployments stream: `GET /v1/apps/{app}/deployments/stream`, a WebSocket that carries
//! every deployment event of one app, as the platform's official client reads it.
//!
//! The client dials with an `Origin` header (the CLI sends `http://scalingo-cli.local/1`; the
//! fake refuses a dial without one, the strict side), then sends a text frame
//! `{"type":"auth","data":{"token":"<JWT>"}}` within 5 s. The server then sends JSON frames
//! `{"id":"<deployment>","type":…,"data":{…}}`: `ping` (every `FakeConfig::stream_ping`),
//! `new` (`data.deployment`), `log` (`data.content`) and `status` (`data.status`). Another
//! `auth` frame replaces the connection's token; when the token it holds expires (or is revoked)
//! the server closes the connection (code 4001). Events sent while a client is not connected
//! are lost for it.
//!
//! Options for what the documentation allows and this fake does not do by default:
//! `FakeConfig::stream_refuse_auth` ends every connection at its `auth` frame with no close
//! frame; `stream_replay` sends the log so far on each connection (as one `log` frame per
//! deployment, its running ones and its newest); `stream_cut_every` cuts each connection (no
//! close frame) that long after its auth.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use hyper::header::{self, HeaderValue};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};

use super::{Cx, Resp, Shared, json_error, unix_now_f64};

/// How long a new connection has to send its `auth` frame.
const AUTH_DEADLINE: Duration = Duration::from_secs(5);

/// One event of an app's stream, as sent: the app's name and the JSON text.
pub(crate) type StreamMessage = (String, String);

/// Sends an event to every stream connection of `app` (by name).
pub(crate) fn publish(shared: &Shared, app: &str, id: &str, kind: &str, data: Value) {
    let frame = json!({ "id": id, "type": kind, "data": data }).to_string();
    // No receiver (no connection) is not an error: the event is lost, as on the platform.
    let _ = shared.events.send((app.to_string(), frame));
}

/// Answers the upgrade (101) and serves the connection on its own task.
pub(crate) fn accept(cx: &mut Cx, app: &str) -> Resp {
    let shared = cx.shared.clone();
    if !shared.cfg.stream {
        shared.lock().stats.stream_refused += 1;
        return json_error(404, "not found");
    }
    let name = match shared.lock().app(app) {
        Some(a) => a.name.clone(),
        None => return super::app_not_found(),
    };
    if cx.header(header::ORIGIN).is_none() {
        shared.lock().stats.stream_refused += 1;
        return json_error(403, "an Origin header is required");
    }
    let upgrade = cx
        .header(header::UPGRADE)
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = cx.header(header::SEC_WEBSOCKET_KEY).map(str::to_string);
    let (Some(key), true, Some(on_upgrade)) = (key, upgrade, cx.upgrade.take()) else {
        return json_error(400, "a WebSocket upgrade is required");
    };
    let accept_key = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let io = hyper_util::rt::TokioIo::new(upgraded);
            let ws =
                tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            serve(shared, ws, name).await;
        }
    });
    let mut resp = super::text_resp(101, "text/plain", "");
    let headers = resp.headers_mut();
    headers.remove(header::CONTENT_TYPE);
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept_key) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// The token of an `auth` frame, if `text` is one.
fn auth_token(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    if v.get("type")?.as_str()? != "auth" {
        return None;
    }
    Some(v.pointer("/data/token")?.as_str()?.to_string())
}

/// Whether a JWT is valid now (issued by this fake, not expired nor revoked).
fn valid(shared: &Shared, token: &str) -> bool {
    let st = shared.lock();
    st.tokens
        .get(token)
        .is_some_and(|&exp| (exp as f64) > unix_now_f64())
}

async fn close<S>(ws: &mut S, code: u16, reason: &str)
where
    S: futures_util::Sink<Message> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_string().into(),
    };
    let _ = ws.send(Message::Close(Some(frame))).await;
}

async fn serve<S>(shared: Arc<Shared>, mut ws: tokio_tungstenite::WebSocketStream<S>, app: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Subscribed before the auth: an event that comes while the client authenticates is kept.
    let mut events = shared.events.subscribe();
    let mut kick = shared.kick.subscribe();
    let first = tokio::time::timeout(AUTH_DEADLINE, ws.next()).await;
    let mut token = match first {
        // "The websocket will be ended immediately": no close frame, no code.
        Ok(Some(Ok(Message::Text(_)))) if shared.cfg.stream_refuse_auth => {
            shared.lock().stats.stream_auth_failures += 1;
            return;
        }
        Ok(Some(Ok(Message::Text(text)))) => match auth_token(&text) {
            Some(t) if valid(&shared, &t) => t,
            _ => {
                shared.lock().stats.stream_auth_failures += 1;
                return close(&mut ws, 4001, "invalid token").await;
            }
        },
        _ => {
            shared.lock().stats.stream_auth_failures += 1;
            return close(&mut ws, 4001, "authentication required").await;
        }
    };
    {
        let mut st = shared.lock();
        st.stats.stream_auths += 1;
        st.stats.stream_connections += 1;
    }
    if shared.cfg.stream_replay {
        let (replay, fresh) = replay(&shared, &app);
        events = fresh;
        for frame in replay {
            if ws.send(Message::text(frame)).await.is_err() {
                return;
            }
        }
    }
    let cut = async {
        match shared.cfg.stream_cut_every {
            Some(after) => tokio::time::sleep(after).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(cut);
    let mut ping = tokio::time::interval(shared.cfg.stream_ping);
    ping.tick().await;
    loop {
        tokio::select! {
            // `stream_cut_every`: the connection breaks without a close frame.
            _ = &mut cut => return,
            event = events.recv() => match event {
                Ok((for_app, frame)) if for_app == app => {
                    if ws.send(Message::text(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = ping.tick() => {
                if !valid(&shared, &token) {
                    shared.lock().stats.stream_expired += 1;
                    return close(&mut ws, 4001, "token expired").await;
                }
                let frame = json!({ "id": "", "type": "ping", "data": {} }).to_string();
                if ws.send(Message::text(frame)).await.is_err() {
                    return;
                }
            }
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Some(t) = auth_token(&text) {
                        if !valid(&shared, &t) {
                            shared.lock().stats.stream_auth_failures += 1;
                            return close(&mut ws, 4001, "invalid token").await;
                        }
                        token = t;
                        shared.lock().stats.stream_auths += 1;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            // `drop_streams`: the connection breaks without a close frame.
            _ = kick.changed() => return,
        }
    }
}

/// The log so far of the app's deployments that are running, and of its newest one, as `log`
/// frames, with a subscription to the events that follow. Both are taken under the state
/// lock, under which the builder appends and publishes: no line is in both, none in neither.
fn replay(
    shared: &Shared,
    app: &str,
) -> (Vec<String>, tokio::sync::broadcast::Receiver<StreamMessage>) {
    let st = shared.lock();
    let fresh = shared.events.subscribe();
    let Some(app) = st.app(app) else {
        return (Vec::new(), fresh);
    };
    let newest = app.deployments.len().saturating_sub(1);
    let frames = app
        .deployments
        .iter()
        .enumerate()
        .filter(|(i, d)| (*i == newest || !d.is_finished()) && !d.output.is_empty())
        .map(|(_, d)| {
            json!({ "id": d.id, "type": "log", "data": { "content": d.output } }).to_string()
        })
        .collect();
    (frames, fresh)
}
