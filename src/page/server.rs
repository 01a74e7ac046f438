//! The page's routes, merged into the daemon's HTTP listener: `GET /` (the page),
//! `GET /page.css` and `GET /page.js` (embedded), `GET /events` (server-sent events: build
//! lines as they come, and `state` when something else changed), and `POST /actions/resume`,
//! `POST /actions/rollback`, `POST /actions/discard` (with an `[intake]` token: a form field `token`, or
//! `Authorization: Bearer …`). Every answer carries a strict Content-Security-Policy.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderMap, HeaderName,
    HeaderValue, REFERRER_POLICY, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use tokio::sync::broadcast::error::RecvError;

use super::tokens::form_fields;
use super::{Action, ActionRequest, Page, escape, render};

/// Scripts, styles, images, connections and form posts from this origin only; nothing inline,
/// no plugins, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                       img-src 'self'; connect-src 'self'; form-action 'self'; \
                       base-uri 'none'; object-src 'none'; frame-ancestors 'none'";

const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

/// How long an action may take to be carried out (a rollback only has to be made and handed
/// to the lane; it is deployed afterwards).
const ACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The page's routes, to merge into the listener's router.
pub fn routes(page: Arc<Page>) -> Router {
    Router::new()
        .route("/", get(index))
        .route(
            "/page.css",
            get(|| asset("text/css; charset=utf-8", PAGE_CSS)),
        )
        .route(
            "/page.js",
            get(|| asset("text/javascript; charset=utf-8", PAGE_JS)),
        )
        .route("/events", get(events))
        .route("/actions/resume", post(resume))
        .route("/actions/rollback", post(rollback))
        .route("/actions/discard", post(discard))
        .with_state(page)
}

/// The headers of every answer of the page.
fn guarded(content_type: &'static str) -> [(HeaderName, &'static str); 6] {
    [
        (CONTENT_TYPE, content_type),
        (CONTENT_SECURITY_POLICY, CSP),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (X_FRAME_OPTIONS, "DENY"),
        (REFERRER_POLICY, "no-referrer"),
        (CACHE_CONTROL, "no-store"),
    ]
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (guarded(content_type), body).into_response()
}

async fn index(State(page): State<Arc<Page>>) -> Response {
    let read = {
        let page = page.clone();
        crate::blocking::run(move || Ok::<_, Infallible>(render(&page.view()))).await
    };
    match read {
        Ok(html) => (guarded("text/html; charset=utf-8"), html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            guarded("text/plain; charset=utf-8"),
            format!("cannot read the daemon's state: {e}"),
        )
            .into_response(),
    }
}

async fn events(State(page): State<Arc<Page>>) -> Response {
    let rx = page.feed.subscribe();
    let shutdown = page.shutdown.clone();
    let hello = futures_util::stream::once(async {
        Ok::<_, Infallible>(SseEvent::default().event("hello").data("{}"))
    });
    let live = futures_util::stream::unfold((rx, shutdown), |(mut rx, mut shutdown)| async move {
        let event = tokio::select! {
            _ = shutdown.requested() => return None,
            message = rx.recv() => match message {
                Ok(m) => SseEvent::default().event(m.event).data(&m.data),
                // Fallen behind: the page loads itself again.
                Err(RecvError::Lagged(_)) => SseEvent::default().event("state").data("{}"),
                Err(RecvError::Closed) => return None,
            },
        };
        Some((Ok::<_, Infallible>(event), (rx, shutdown)))
    });
    let sse = Sse::new(hello.chain(live)).keep_alive(KeepAlive::default());
    (guarded("text/event-stream"), sse).into_response()
}

async fn resume(State(page): State<Arc<Page>>, headers: HeaderMap, body: Bytes) -> Response {
    act(&page, &headers, &body, |app, _| Action::Resume { app }).await
}

async fn rollback(State(page): State<Arc<Page>>, headers: HeaderMap, body: Bytes) -> Response {
    act(&page, &headers, &body, |app, fields| Action::Rollback {
        app,
        to: field(fields, "to").filter(|t| !t.is_empty()),
    })
    .await
}

async fn discard(State(page): State<Arc<Page>>, headers: HeaderMap, body: Bytes) -> Response {
    act(&page, &headers, &body, |app, fields| Action::Discard {
        app,
        job: field(fields, "job").unwrap_or_default(),
    })
    .await
}

fn field(fields: &[(String, String)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Checks the token, then has the daemon carry out the action and says how it went.
async fn act(
    page: &Page,
    headers: &HeaderMap,
    body: &[u8],
    make: impl FnOnce(String, &[(String, String)]) -> Action,
) -> Response {
    if !page.tokens.any() {
        return answer(
            StatusCode::FORBIDDEN,
            "The page is read-only: no intake token is configured ([intake] token_file, or \
             DROPDEPLOY_INTAKE_TOKEN).",
        );
    }
    let fields = form_fields(body);
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let given = bearer
        .or_else(|| field(&fields, "token"))
        .unwrap_or_default();
    if !page.tokens.allows(given.trim()) {
        let mut refused = answer(
            StatusCode::UNAUTHORIZED,
            "Refused: this action needs a valid intake token.",
        );
        refused
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return refused;
    }
    let Some(app) = field(&fields, "app").filter(|a| !a.is_empty()) else {
        return answer(
            StatusCode::BAD_REQUEST,
            "Which app? The field `app` is missing.",
        );
    };
    let known = page.apps.read().is_ok_and(|apps| apps.contains(&app));
    if !known {
        return answer(
            StatusCode::NOT_FOUND,
            &format!("{app} is not an app of the configuration."),
        );
    }
    let action = make(app, &fields);
    tracing::info!(?action, "the status page asks for an action");
    let (reply, answered) = tokio::sync::oneshot::channel();
    if page
        .actions
        .send(ActionRequest { action, reply })
        .await
        .is_err()
    {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "The daemon is stopping.");
    }
    match tokio::time::timeout(ACTION_TIMEOUT, answered).await {
        Ok(Ok(Ok(done))) => answer(StatusCode::OK, &done),
        Ok(Ok(Err(why))) => answer(StatusCode::CONFLICT, &why),
        Ok(Err(_)) => answer(StatusCode::SERVICE_UNAVAILABLE, "The daemon is stopping."),
        Err(_) => answer(
            StatusCode::GATEWAY_TIMEOUT,
            "The daemon did not answer in time; see its log.",
        ),
    }
}

/// A short page saying how an action went, that goes back to the status page.
fn answer(status: StatusCode, message: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"3;url=/\"><title>dropdeploy</title>\
         <link rel=\"stylesheet\" href=\"/page.css\"></head><body><main>\
         <p class=\"said\">{}</p><p><a href=\"/\">Back to the status page</a></p></main>\
         </body></html>\n",
        escape(message)
    );
    (status, guarded("text/html; charset=utf-8"), html).into_response()
}
