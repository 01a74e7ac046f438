//! The client against the platform's documented answers: fixtures written from the shapes the
//! platform's documentation and official clients give (`tests/fixtures/platform/`), served
//! as they are over loopback HTTP and read by the client's own calls; the stream's frames
//! read by its own parser.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use dropdeploy::config::{ScalingoConfig, Secret};
use dropdeploy::deploy::scalingo::api::{ApiError, ScalingoClient};
use dropdeploy::deploy::scalingo::driver::strip_ansi;
use dropdeploy::deploy::scalingo::regions;
use dropdeploy::deploy::scalingo::stream::{StreamEvent, parse};

const TOKEN: &str = "tk-us-conformance-0123456789";

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/platform/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fixture answering a request, as the platform would: (status, content type, body).
fn answer(
    method: &str,
    path: &str,
    query: &str,
    authorization: &str,
) -> (u16, &'static str, String) {
    let json = "application/json; charset=utf-8";
    match (method, path) {
        ("POST", "/v1/tokens/exchange") => {
            use base64::Engine as _;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(":{TOKEN}"));
            if authorization == format!("Basic {basic}") {
                (200, json, fixture("tokens_exchange_200.json"))
            } else {
                (401, json, fixture("tokens_exchange_401.json"))
            }
        }
        _ if !authorization.starts_with("Bearer ") => (401, json, r#"{"error":"no token"}"#.into()),
        ("GET", "/v1/regions") => (200, json, fixture("regions_200.json")),
        ("POST", "/v1/sources") => (201, json, fixture("sources_201.json")),
        ("GET", "/v1/apps/my-app") => (200, json, fixture("app_200.json")),
        ("GET", "/v1/apps/bare-app") => (200, json, fixture("app_base_url_only.json")),
        ("GET", "/v1/apps/my-app/deployments/64b7d2f09c1e5a0012ab34cd") => {
            (200, json, fixture("deployment_200.json"))
        }
        ("GET", "/v1/apps/my-app/deployments/4711") => {
            (200, json, fixture("deployment_lenient.json"))
        }
        ("GET", "/v1/apps/my-app/deployments") if query.contains("page=2") => {
            (200, json, fixture("deployments_list_prev_page.json"))
        }
        ("GET", "/v1/apps/my-app/deployments") => {
            (200, json, fixture("deployments_list_previous_page.json"))
        }
        ("GET", p) if p.ends_with("/output") => (200, "text/plain", fixture("output.txt")),
        _ => (404, json, fixture("not_found_404.json")),
    }
}

/// Serves the fixtures on loopback (`{base}` in them is this server's URL); returns the URL.
async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shown = Arc::new(base.clone());
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let base = shown.clone();
        async move {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string()
            };
            let (status, kind, body) = answer(
                req.method().as_str(),
                req.uri().path(),
                req.uri().query().unwrap_or_default(),
                &header("authorization"),
            );
            let mut resp: Response = (
                StatusCode::from_u16(status).unwrap(),
                body.replace("{base}", &base),
            )
                .into_response();
            resp.headers_mut()
                .insert("content-type", kind.parse().unwrap());
            resp
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

fn client(base: &str, token: &str) -> Arc<ScalingoClient> {
    let config = ScalingoConfig {
        api_url: base.to_string(),
        auth_url: base.to_string(),
        region: None,
        api_url_explicit: true,
        ..ScalingoConfig::default()
    };
    Arc::new(ScalingoClient::new(&config, Secret::new(token)).unwrap())
}

#[tokio::test]
async fn the_token_exchange_sources_and_a_deployment_decode_as_documented() {
    let base = serve().await;
    let c = client(&base, TOKEN);
    // 200 {"token": JWT} (read for its exp), then 201 {"source": {…}}.
    let source = c.create_source().await.unwrap();
    assert_eq!(
        source.upload_url,
        format!("{base}/storage/src-7f3a?token=up-91c2")
    );
    assert!(source.download_url.ends_with("token=down-4be8"));
    // Every field, finished_at with +00:00.
    let d = c
        .get_deployment("my-app", "64b7d2f09c1e5a0012ab34cd")
        .await
        .unwrap();
    assert_eq!(d.id, "64b7d2f09c1e5a0012ab34cd");
    assert_eq!(d.status, "success");
    assert_eq!(d.git_ref.as_deref(), Some("my-app-20261207101500-3fa9c1d2"));
    assert_eq!(
        d.finished_at.as_deref(),
        Some("2026-12-07T10:17:48.002+00:00")
    );
    assert!(
        dropdeploy::deploy::scalingo::lenient::timestamp("2026-12-07T10:17:48.002+00:00").is_some()
    );
    // The output: text with ANSI codes, \r\n ends and a line rewritten with \r.
    let text = c.output(&d).await.unwrap().expect("an output");
    let lines: Vec<String> = text.lines().map(strip_ansi).collect();
    assert_eq!(
        lines,
        [
            "-----> Fetching source code",
            "       Downloading archive ... done",
            "-----> Installing dependencies",
            "       Progress 100%",
            " <-- https://my-app.osc-fr1.scalingo.io -->",
        ]
    );
}

#[tokio::test]
async fn a_refused_exchange_and_a_404_are_permanent_errors_with_their_message() {
    let base = serve().await;
    let refused = client(&base, "tk-us-wrong")
        .create_source()
        .await
        .unwrap_err();
    assert!(!refused.is_transient(), "{refused}");
    assert!(
        refused.to_string().contains("Invalid credentials"),
        "{refused}"
    );
    let c = client(&base, TOKEN);
    let missing = c.get_deployment("gone-app", "x").await.unwrap_err();
    assert!(
        matches!(missing, ApiError::Status { status: 404, .. }),
        "{missing}"
    );
    assert!(!missing.is_transient());
    assert!(missing.to_string().contains("app not found"), "{missing}");
}

#[tokio::test]
async fn ids_and_statuses_may_be_numbers_or_null_and_pages_have_either_spelling() {
    let base = serve().await;
    let c = client(&base, TOKEN);
    // A numeric id is read as its text (and checked against the one asked for).
    let odd = c.get_deployment("my-app", "4711").await.unwrap();
    assert_eq!(odd.id, "4711");
    assert_eq!(odd.status, "", "null: not finished, followed on");
    assert_eq!(odd.git_ref, None);
    // Documented spelling.
    let page = c.list_deployments("my-app", 2, 2).await.unwrap();
    assert_eq!((page.prev_page, page.next_page), (Some(1), Some(3)));
    assert_eq!(page.deployments.len(), 2);
    assert_eq!(page.deployments[0].status, "building");
    // Recorded spelling.
    let page = c.list_deployments("my-app", 3, 10).await.unwrap();
    assert_eq!((page.prev_page, page.next_page), (Some(2), None));
    assert_eq!(page.deployments[0].status, "crashed-error");
}

#[tokio::test]
async fn an_app_gives_its_url_or_base_url_and_its_stream_and_regions_their_default() {
    let base = serve().await;
    let c = client(&base, TOKEN);
    assert_eq!(
        c.app_url("my-app").await.unwrap().as_deref(),
        Some("https://www.my-app.example.com")
    );
    assert_eq!(
        c.app_url("bare-app").await.unwrap().as_deref(),
        Some("https://bare-app.osc-fr1.scalingo.io")
    );
    assert_eq!(
        c.deployments_stream_url("my-app").await.unwrap().as_deref(),
        Some("wss://deployments.osc-fr1.scalingo.com/apps/5f3c0a9e8d7b6c5a4f3e2d1c")
    );
    let listed = regions::list(&c).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(regions::default_of(&listed).unwrap().name, "osc-fr1");
    assert_eq!(
        regions::find(&listed, "osc-secnum-fr1").unwrap(),
        "https://api.osc-secnum-fr1.scalingo.com"
    );
}

#[test]
fn each_stream_frame_type_is_read() {
    let frames: Vec<Option<StreamEvent>> =
        fixture("stream_frames.jsonl").lines().map(parse).collect();
    assert_eq!(
        frames,
        [
            None, // ping
            Some(StreamEvent::New {
                id: "64b7d2f09c1e5a0012ab34ce".into()
            }),
            Some(StreamEvent::New {
                id: "64b7d2f09c1e5a0012ab34cf".into()
            }),
            Some(StreamEvent::Log {
                id: "64b7d2f09c1e5a0012ab34ce".into(),
                content: "\u{1b}[1;34m-----> Building\u{1b}[0m\n       step 1\n".into()
            }),
            Some(StreamEvent::Status {
                id: "64b7d2f09c1e5a0012ab34ce".into(),
                status: "pushing".into()
            }),
        ]
    );
}
