//! Tests of the fake Scalingo platform itself, over real HTTP with reqwest: if the fake lies,
//! every test of the client built on it lies too.

use std::io::Write as _;
use std::time::{Duration, Instant};

use base64::Engine as _;
use fake_scalingo::{Endpoint, FakeConfig, FakeScalingo, Fault};
use reqwest::StatusCode;
use serde_json::{Value, json};

const APP: &str = "my-app";
const DEADLINE: Duration = Duration::from_secs(5);

fn fast() -> FakeConfig {
    FakeConfig {
        step: Duration::from_millis(20),
        ..FakeConfig::default()
    }
}

fn client() -> reqwest::Client {
    fake_scalingo::http_client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A tar.gz as `git archive --prefix=<root>/` makes it: a pax global header, then one folder.
fn archive(root: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let comment = b"52 comment=0123456789abcdef0123456789abcdef01234567\n";
    let mut global = tar::Header::new_ustar();
    global.set_entry_type(tar::EntryType::XGlobalHeader);
    global.set_size(comment.len() as u64);
    global.set_mode(0o644);
    tar.append_data(&mut global, "pax_global_header", &comment[..])
        .unwrap();
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    dir.set_mode(0o755);
    tar.append_data(&mut dir, format!("{root}/"), std::io::empty())
        .unwrap();
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, format!("{root}/{name}"), *data)
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

fn good_archive() -> Vec<u8> {
    archive(
        "my-app",
        &[
            ("index.js", b"console.log('hi')\n"),
            ("Procfile", b"web: node index.js\n"),
        ],
    )
}

async fn exchange(server: &FakeScalingo, http: &reqwest::Client) -> String {
    let resp = http
        .post(format!("{}/v1/tokens/exchange", server.url()))
        .basic_auth("", Some(server.api_token()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    body["token"].as_str().unwrap().to_string()
}

async fn create_source(
    server: &FakeScalingo,
    http: &reqwest::Client,
    jwt: &str,
) -> (String, String) {
    let resp = http
        .post(format!("{}/v1/sources", server.url()))
        .bearer_auth(jwt)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    let source = &body["source"];
    (
        source["upload_url"].as_str().unwrap().to_string(),
        source["download_url"].as_str().unwrap().to_string(),
    )
}

/// PUT with a Content-Length (a body of known size), as the official CLI does.
async fn upload(http: &reqwest::Client, url: &str, bytes: Vec<u8>) -> reqwest::Response {
    http.put(url)
        .header("content-type", "application/x-gzip")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn post_deployment(
    server: &FakeScalingo,
    http: &reqwest::Client,
    jwt: &str,
    app: &str,
    body: Value,
) -> reqwest::Response {
    http.post(format!("{}/v1/apps/{app}/deployments", server.url()))
        .bearer_auth(jwt)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn deploy(
    server: &FakeScalingo,
    http: &reqwest::Client,
    jwt: &str,
    git_ref: &str,
    source_url: &str,
) -> Value {
    let resp = post_deployment(
        server,
        http,
        jwt,
        APP,
        json!({"deployment": {"git_ref": git_ref, "source_url": source_url}}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    body["deployment"].clone()
}

/// Uploads `bytes` to a new source and deploys it.
async fn upload_and_deploy(
    server: &FakeScalingo,
    http: &reqwest::Client,
    jwt: &str,
    git_ref: &str,
    bytes: Vec<u8>,
) -> Value {
    let (up, down) = create_source(server, http, jwt).await;
    assert_eq!(upload(http, &up, bytes).await.status(), StatusCode::OK);
    deploy(server, http, jwt, git_ref, &down).await
}

/// Polls the deployment through the API until it is finished.
async fn wait_finished(
    server: &FakeScalingo,
    http: &reqwest::Client,
    jwt: &str,
    id: &str,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let resp = http
            .get(format!("{}/v1/apps/{APP}/deployments/{id}", server.url()))
            .bearer_auth(jwt)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        let d = body["deployment"].clone();
        let status = d["status"].as_str().unwrap();
        if !matches!(status, "queued" | "building" | "pushing" | "starting") {
            return d;
        }
        assert!(Instant::now() < deadline, "deployment {id} still {status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn fetch_output(http: &reqwest::Client, jwt: &str, deployment: &Value) -> String {
    let resp = http
        .get(deployment["links"]["output"].as_str().unwrap())
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    resp.text().await.unwrap()
}

fn jwt_claims(jwt: &str) -> Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {jwt}");
    let decode = |p: &str| {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .expect("base64url without padding");
        serde_json::from_slice::<Value>(&raw).unwrap()
    };
    assert_eq!(decode(parts[0]), json!({"alg": "HS256", "typ": "JWT"}));
    decode(parts[1])
}

#[tokio::test]
async fn exchange_issues_a_jwt_whose_exp_is_iat_plus_lifetime() {
    let server = FakeScalingo::start(FakeConfig {
        jwt_lifetime: Duration::from_secs(120),
        ..fast()
    });
    let http = client();
    let first = jwt_claims(&exchange(&server, &http).await);
    let second = jwt_claims(&exchange(&server, &http).await);
    let iat = first["iat"].as_u64().unwrap();
    assert_eq!(first["exp"].as_u64().unwrap(), iat + 120);
    assert!(first["sub"].is_string());
    assert_ne!(first["jti"], second["jti"]);
    assert_eq!(server.stats().exchanges, 2);
}

#[tokio::test]
async fn exchange_refuses_bad_credentials() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let url = format!("{}/v1/tokens/exchange", server.url());
    for (user, password) in [
        ("", "tk-us-wrong"),
        ("someone", server.api_token().as_str()),
    ] {
        let resp = http
            .post(&url)
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body, json!({"error": "Invalid credentials"}));
    }
    let resp = http.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let stats = server.stats();
    assert_eq!((stats.exchanges, stats.exchange_failures), (0, 3));
}

#[tokio::test]
async fn api_calls_need_a_bearer_issued_here() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let url = format!("{}/v1/regions", server.url());
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjk5OTk5OTk5OTl9.c2ln";
    let resp = http.get(&url).bearer_auth(forged).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // The API token itself is not a bearer.
    let resp = http
        .get(&url)
        .bearer_auth(server.api_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let jwt = exchange(&server, &http).await;
    let resp = http.get(&url).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let regions = body["regions"].as_array().unwrap();
    assert!(
        regions
            .iter()
            .any(|r| r["name"] == "osc-fr1" && r["api"] == server.url())
    );
    assert_eq!(server.stats().unauthorized, 3);
}

#[tokio::test]
async fn upload_then_deploy_reaches_success_with_output() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let (up, down) = create_source(&server, &http, &jwt).await;
    assert_ne!(up, down);
    assert_eq!(up.split('?').next(), down.split('?').next());
    let bytes = good_archive();

    // Chunked (no Content-Length): refused.
    let chunks = vec![Ok::<_, std::io::Error>(bytes.clone())];
    let resp = http
        .put(&up)
        .header("content-type", "application/x-gzip")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::LENGTH_REQUIRED);
    // An Authorization header on a presigned URL: refused.
    let resp = http
        .put(&up)
        .bearer_auth(&jwt)
        .header("content-type", "application/x-gzip")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("Only one auth mechanism allowed")
    );
    // Wrong content type: refused.
    let resp = http
        .put(&up)
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // The download URL is not an upload URL.
    assert_eq!(
        upload(&http, &down, bytes.clone()).await.status(),
        StatusCode::FORBIDDEN
    );
    // Nothing uploaded yet.
    assert_eq!(
        http.get(&down).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    assert_eq!(
        upload(&http, &up, bytes.clone()).await.status(),
        StatusCode::OK
    );
    let fetched = http.get(&down).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert_eq!(
        http.get(&up).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    let created = deploy(&server, &http, &jwt, "job-1", &down).await;
    assert_eq!(created["status"], "queued");
    assert_eq!(created["type"], "archive");
    assert_eq!(created["git_ref"], "job-1");
    assert!(created["finished_at"].is_null());
    let app_id = created["app_id"].as_str().unwrap();
    assert_ne!(app_id, APP);
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        created["links"]["output"],
        format!("{}/v1/apps/{app_id}/deployments/{id}/output", server.url())
    );

    let done = wait_finished(&server, &http, &jwt, id).await;
    assert_eq!(done["status"], "success");
    assert!(done["finished_at"].is_string());
    let output = fetch_output(&http, &jwt, &done).await;
    assert!(
        output.contains("\x1b[1;34m-----> Fetching source code\x1b[0m"),
        "{output}"
    );
    assert!(output.contains("osc-fr1.scalingo.io"), "{output}");
    // The output is reachable by app name too.
    let by_name = format!("{}/v1/apps/{APP}/deployments/{id}/output", server.url());
    let resp = http.get(by_name).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let stats = server.stats();
    assert_eq!(stats.uploads_ok, 1);
    assert_eq!(stats.uploads_failed, 4);
    assert_eq!(stats.upload_bytes, bytes.len() as u64);
    assert_eq!(
        (stats.deployments_created, stats.deployments_finished),
        (1, 1)
    );
    let records = server.deployments(APP);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, "success");
    assert_eq!(records[0].source_url, down);
    assert_eq!(server.count_git_ref(APP, "job-1"), 1);

    // The API token travels only in the exchange's Basic auth.
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!(":{}", server.api_token()));
    for r in server.requests() {
        let auth = r.header("authorization").unwrap_or("");
        if r.path == "/v1/tokens/exchange" {
            assert_eq!(auth, format!("Basic {encoded}"));
        } else {
            assert!(!auth.contains(&encoded) && !auth.contains(&server.api_token()));
        }
    }
}

#[tokio::test]
async fn a_bad_archive_ends_in_build_error() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let not_gzip =
        upload_and_deploy(&server, &http, &jwt, "not-gzip", b"plain text".to_vec()).await;
    let two_roots = {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for name in ["a/x", "b/y"] {
            let mut h = tar::Header::new_ustar();
            h.set_size(1);
            tar.append_data(&mut h, name, &b"z"[..]).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    };
    let two_roots = upload_and_deploy(&server, &http, &jwt, "two-roots", two_roots).await;
    let mut truncated = good_archive();
    truncated.truncate(truncated.len() - 6);
    let truncated = upload_and_deploy(&server, &http, &jwt, "truncated", truncated).await;

    for (deployment, reason) in [
        (not_gzip, "gzip"),
        (two_roots, "single folder"),
        (truncated, ""),
    ] {
        let done = wait_finished(&server, &http, &jwt, deployment["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "build-error");
        let output = fetch_output(&http, &jwt, &done).await;
        assert!(output.lines().count() >= 40, "{output}");
        let tail: Vec<&str> = output.lines().rev().take(30).collect();
        let line = tail
            .iter()
            .find(|l| l.contains("Fail to fetch source code: "))
            .unwrap_or_else(|| panic!("no fetch failure in the last 30 lines: {output}"));
        assert!(line.contains(reason), "{line}");
    }
}

#[tokio::test]
async fn an_archive_over_the_limit_is_too_heavy() {
    let server = FakeScalingo::start(FakeConfig {
        max_archive_bytes: 16 * 1024,
        ..fast()
    });
    let http = client();
    let jwt = exchange(&server, &http).await;
    let big = archive("app", &[("zeros.bin", &[0u8; 32 * 1024])]);
    let d = upload_and_deploy(&server, &http, &jwt, "heavy", big).await;
    let done = wait_finished(&server, &http, &jwt, d["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "build-error");
    assert!(
        fetch_output(&http, &jwt, &done)
            .await
            .contains("The archive is too heavy")
    );
}

#[tokio::test]
async fn next_outcomes_set_the_terminal_status() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    server.set_next_outcome(APP, "crashed-error");
    server.set_next_outcome(APP, "weird-new-status");
    let first = upload_and_deploy(&server, &http, &jwt, "one", good_archive()).await;
    let second = upload_and_deploy(&server, &http, &jwt, "two", good_archive()).await;
    let third = upload_and_deploy(&server, &http, &jwt, "three", good_archive()).await;

    let done = wait_finished(&server, &http, &jwt, first["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "crashed-error");
    let output = fetch_output(&http, &jwt, &done).await;
    assert!(output.lines().count() >= 40);
    assert!(
        output
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("Application crashed at start")
    );
    let done = wait_finished(&server, &http, &jwt, second["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "weird-new-status");
    let done = wait_finished(&server, &http, &jwt, third["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success");
}

#[tokio::test]
async fn unknown_app_and_deployment_are_404_json() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let body = json!({"deployment": {"git_ref": "x", "source_url": "http://127.0.0.1:1/a.tar.gz"}});
    let resp = post_deployment(&server, &http, &jwt, "nope", body).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"resource": "app", "error": "not found"})
    );
    let resp = http
        .get(format!("{}/v1/apps/{APP}/deployments/0000", server.url()))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"resource": "deployment", "error": "not found"})
    );
    server.add_app("other-app");
    let resp = http
        .get(format!("{}/v1/apps/other-app", server.url()))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let app: Value = resp.json().await.unwrap();
    assert_eq!(app["app"]["name"], "other-app");
    assert!(
        app["app"]["links"]["deployments_stream"]
            .as_str()
            .unwrap()
            .starts_with("ws://")
    );
}

#[tokio::test]
async fn deployment_params_are_validated() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let url = "http://127.0.0.1:1/a.tar.gz";
    let cases = [
        (json!({"deployment": {"git_ref": "x"}}), "source_url"),
        (
            json!({"deployment": {"git_ref": "-rf", "source_url": url}}),
            "git_ref",
        ),
        (
            json!({"deployment": {"git_ref": "a/b", "source_url": url}}),
            "git_ref",
        ),
    ];
    for (body, field) in cases {
        let resp = post_deployment(&server, &http, &jwt, APP, body).await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let errors: Value = resp.json().await.unwrap();
        assert!(errors["errors"][field][0].is_string(), "{errors}");
    }
    // The 2017 field name still works.
    let body = json!({"deployment": {"git_ref": "old-name", "download_url": url}});
    let resp = post_deployment(&server, &http, &jwt, APP, body).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(server.count_git_ref(APP, "old-name"), 1);
}

#[tokio::test]
async fn faults_give_statuses_and_rate_limits_in_plain_text() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let url = format!("{}/v1/regions", server.url());
    server.fail_next(
        Endpoint::Regions,
        Fault::RateLimited {
            retry_after: Some("7".to_string()),
        },
    );
    server.fail_next(Endpoint::Regions, Fault::Status(503));
    let resp = http.get(&url).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(resp.text().await.unwrap(), "Retry later");
    let resp = http.get(&url).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
    let resp = http.get(&url).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    server.fail_next(Endpoint::Regions, Fault::ExpiredJwt);
    let resp = http.get(&url).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": "token expired"})
    );
    let stats = server.stats();
    assert_eq!((stats.rate_limited, stats.unauthorized), (1, 1));
}

#[tokio::test]
async fn close_connection_is_a_transport_error_not_a_status() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    server.fail_next(Endpoint::CreateSource, Fault::CloseConnection);
    let err = http
        .post(format!("{}/v1/sources", server.url()))
        .bearer_auth(&jwt)
        .json(&json!({}))
        .send()
        .await
        .expect_err("the connection was dropped");
    assert!(err.status().is_none() && !err.is_timeout(), "{err:?}");
    assert_eq!(server.stats().sources_created, 0);
    let dropped = server
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/sources")
        .unwrap();
    assert_eq!(dropped.status, 0);
    // The next request is served normally.
    create_source(&server, &http, &jwt).await;

    // An upload cut in the middle of its body.
    let (up, _) = create_source(&server, &http, &jwt).await;
    server.fail_next(Endpoint::Upload, Fault::CloseMidBody);
    let big = vec![7u8; 1 << 20];
    let err = http
        .put(&up)
        .header("content-type", "application/x-gzip")
        .body(big.clone())
        .send()
        .await
        .expect_err("the connection was dropped mid-body");
    assert!(err.status().is_none(), "{err:?}");
    let stats = server.stats();
    assert_eq!((stats.uploads_ok, stats.uploads_failed), (0, 1));
    assert_eq!(upload(&http, &up, big).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_upload_shorter_than_its_content_length_fails() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let (up, down) = create_source(&server, &http, &jwt).await;
    let target = up.strip_prefix("http://").unwrap();
    let (host, path) = target.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "PUT /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-gzip\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&[1u8; 400]).unwrap();
    drop(stream);
    assert!(
        server
            .wait_until_async(DEADLINE, |s| s.uploads_failed == 1)
            .await
    );
    assert_eq!(server.stats().upload_bytes, 0);
    assert_eq!(
        http.get(&down).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_post_that_times_out_may_still_create_the_deployment() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let (up, down) = create_source(&server, &http, &jwt).await;
    assert_eq!(
        upload(&http, &up, good_archive()).await.status(),
        StatusCode::OK
    );
    server.fail_next(
        Endpoint::CreateDeployment,
        Fault::ProcessThenDelay(Duration::from_secs(3)),
    );
    let err = http
        .post(format!("{}/v1/apps/{APP}/deployments", server.url()))
        .bearer_auth(&jwt)
        .timeout(Duration::from_millis(300))
        .json(&json!({"deployment": {"git_ref": "ambiguous", "source_url": down}}))
        .send()
        .await
        .expect_err("the client times out");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(server.count_git_ref(APP, "ambiguous"), 1);
    // A client that looks before posting again finds it.
    let resp = http
        .get(format!(
            "{}/v1/apps/{APP}/deployments?page=1&per_page=20",
            server.url()
        ))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let list: Value = resp.json().await.unwrap();
    assert_eq!(list["deployments"][0]["git_ref"], "ambiguous");
}

#[tokio::test]
async fn a_slow_answer_is_only_late() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    server.fail_next(Endpoint::Regions, Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    let resp = http
        .get(format!("{}/v1/regions", server.url()))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn expired_tokens_are_refused_until_a_new_exchange() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let url = format!("{}/v1/apps/{APP}", server.url());
    assert_eq!(
        http.get(&url)
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    server.expire_all_tokens();
    let resp = http.get(&url).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": "token expired"})
    );
    let fresh = exchange(&server, &http).await;
    assert_eq!(
        http.get(&url)
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_jwt_expires_by_the_server_clock() {
    let server = FakeScalingo::start(FakeConfig {
        jwt_lifetime: Duration::from_secs(1),
        ..fast()
    });
    let http = client();
    let jwt = exchange(&server, &http).await;
    let exp = jwt_claims(&jwt)["exp"].as_u64().unwrap();
    let url = format!("{}/v1/regions", server.url());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = http
            .get(&url)
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap()
            .status();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if status == StatusCode::UNAUTHORIZED {
            assert!(now >= exp);
            break;
        }
        assert!(Instant::now() < deadline, "the JWT never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn expired_sources_answer_403() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let (used_up, used_down) = create_source(&server, &http, &jwt).await;
    assert_eq!(
        upload(&http, &used_up, good_archive()).await.status(),
        StatusCode::OK
    );
    let (up, _) = create_source(&server, &http, &jwt).await;
    server.expire_all_sources();
    let resp = upload(&http, &up, good_archive()).await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(resp.text().await.unwrap().contains("Request has expired"));
    let resp = http.get(&used_down).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // Sources created afterwards are fine.
    let (up, _) = create_source(&server, &http, &jwt).await;
    assert_eq!(
        upload(&http, &up, good_archive()).await.status(),
        StatusCode::OK
    );
    // An expired source URL given to a deployment makes it fail while fetching.
    let d = deploy(&server, &http, &jwt, "late", &used_down).await;
    let done = wait_finished(&server, &http, &jwt, d["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "build-error");
    assert!(fetch_output(&http, &jwt, &done).await.contains("403"));
}

#[tokio::test]
async fn sources_expire_after_their_lifetime() {
    let server = FakeScalingo::start(FakeConfig {
        source_lifetime: Duration::from_millis(200),
        ..fast()
    });
    let http = client();
    let jwt = exchange(&server, &http).await;
    let (up, _) = create_source(&server, &http, &jwt).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        upload(&http, &up, good_archive()).await.status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn one_app_never_runs_two_deployments_at_once() {
    let server = FakeScalingo::start(FakeConfig {
        step: Duration::from_millis(40),
        ..fast()
    });
    let http = client();
    let jwt = exchange(&server, &http).await;
    let first = upload_and_deploy(&server, &http, &jwt, "first", good_archive()).await;
    let second = upload_and_deploy(&server, &http, &jwt, "second", good_archive()).await;
    let first_id = first["id"].as_str().unwrap();
    let second_id = second["id"].as_str().unwrap();
    assert!(server.wait_for_deployments(APP, DEADLINE, |d| d[0].status == "building"));
    // While the first builds, the second waits, with no output yet.
    let resp = http
        .get(format!(
            "{}/v1/apps/{APP}/deployments/{second_id}",
            server.url()
        ))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap()["deployment"]["status"],
        "queued"
    );
    let resp = http
        .get(second["links"]["output"].as_str().unwrap())
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    wait_finished(&server, &http, &jwt, first_id).await;
    wait_finished(&server, &http, &jwt, second_id).await;
    let records = server.deployments(APP);
    let first_done = records[0].finished_at.unwrap();
    let second_started = records[1].started_at.unwrap();
    assert!(second_started >= first_done, "{records:#?}");
}

#[tokio::test]
async fn the_list_is_newest_first_and_paginated() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    for n in 1..=5 {
        deploy(
            &server,
            &http,
            &jwt,
            &format!("r{n}"),
            "http://127.0.0.1:1/a.tar.gz",
        )
        .await;
    }
    let page = |n: u32| {
        let http = http.clone();
        let url = format!(
            "{}/v1/apps/{APP}/deployments?page={n}&per_page=2",
            server.url()
        );
        let jwt = jwt.clone();
        async move {
            let resp = http.get(url).bearer_auth(jwt).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.json::<Value>().await.unwrap()
        }
    };
    let refs = |v: &Value| -> Vec<String> {
        v["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["git_ref"].as_str().unwrap().to_string())
            .collect()
    };
    let first = page(1).await;
    assert_eq!(refs(&first), ["r5", "r4"]);
    let p = &first["meta"]["pagination"];
    assert_eq!(
        (&p["current_page"], &p["prev_page"], &p["next_page"]),
        (&json!(1), &Value::Null, &json!(2))
    );
    assert_eq!(
        (&p["total_pages"], &p["total_count"]),
        (&json!(3), &json!(5))
    );
    let last = page(3).await;
    assert_eq!(refs(&last), ["r1"]);
    assert_eq!(last["meta"]["pagination"]["next_page"], Value::Null);
    assert_eq!(last["meta"]["pagination"]["prev_page"], 2);
}

#[tokio::test]
async fn redirected_uploads_follow_a_307() {
    let server = FakeScalingo::start(FakeConfig {
        redirect_uploads: true,
        ..fast()
    });
    let http = client();
    let jwt = exchange(&server, &http).await;
    let (up, down) = create_source(&server, &http, &jwt).await;
    let no_redirect = fake_scalingo::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = upload(&no_redirect, &up, good_archive()).await;
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&server.url()) && location != up);
    // A client that follows redirects (the body can be replayed) ends at the storage.
    assert_eq!(
        upload(&http, &up, good_archive()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        http.get(&down).send().await.unwrap().status(),
        StatusCode::OK
    );
    let stats = server.stats();
    assert_eq!((stats.uploads_ok, stats.uploads_failed), (1, 0));
}

#[test]
fn starts_from_a_plain_test_and_stops_on_drop() {
    let server = FakeScalingo::start(FakeConfig::default());
    let addr = server.addr();
    assert_eq!(server.url(), format!("http://{addr}"));
    std::net::TcpStream::connect(addr).expect("the server listens");
    assert!(server.wait_until(DEADLINE, |s| s.requests == 0));
    drop(server);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the server is gone"
    );
}

#[tokio::test]
async fn a_client_gone_during_a_delay_never_reaches_the_platform() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let url = server.host_archive(&good_archive());
    server.fail_next(
        Endpoint::CreateDeployment,
        Fault::Delay(Duration::from_millis(800)),
    );
    let post = http
        .post(format!("{}/v1/apps/{APP}/deployments", server.url()))
        .bearer_auth(&jwt)
        .timeout(Duration::from_millis(300))
        .json(&json!({"deployment": {"git_ref": "gave-up", "source_url": url}}))
        .send();
    let watcher = async {
        let deadline = Instant::now() + DEADLINE;
        while server.requests_in_flight(Endpoint::CreateDeployment) == 0 {
            assert!(Instant::now() < deadline, "the POST never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let (result, ()) = tokio::join!(post, watcher);
    assert!(result.unwrap_err().is_timeout());
    let deadline = Instant::now() + DEADLINE;
    while server.requests_in_flight(Endpoint::CreateDeployment) > 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned POST is still held"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.count_git_ref(APP, "gave-up"), 0);
}

#[tokio::test]
async fn a_hosted_archive_deploys_without_a_source() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let url = server.host_archive(&good_archive());
    let d = deploy(&server, &http, &jwt, "hosted", &url).await;
    let done = wait_finished(&server, &http, &jwt, d["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "success");
    let stats = server.stats();
    assert_eq!(
        (stats.sources_created, stats.uploads_ok, stats.downloads),
        (0, 0, 1)
    );
}

#[tokio::test]
async fn the_app_endpoint_answers_as_its_archive_says_or_as_broken() {
    use fake_scalingo::app_server::Behaviour;
    let b = Behaviour::parse("status=500\nversion = v2\ndie_after=1.5\nstart_after=0.5\nnoise\n");
    assert_eq!(b.status, Some(500));
    assert_eq!(b.version.as_deref(), Some("v2"));
    assert_eq!(b.die_after, Some(Duration::from_millis(1500)));
    assert_eq!(b.start_after, Some(Duration::from_millis(500)));

    let fake = FakeScalingo::start(fast());
    fake.add_app(APP);
    let http = client();
    let get = |url: String| {
        let http = http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            let status = resp.status();
            (status, resp.text().await.unwrap())
        }
    };
    // No bearer needed (a public app URL); nothing deployed yet.
    let (status, body) = get(format!("{}/up", fake.app_url(APP))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    fake.break_app(APP, Some(502));
    let (status, body) = get(format!("{}/any/path", fake.app_url(APP))).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_GATEWAY, "broken from outside")
    );
    fake.break_app(APP, None);
    assert_eq!(fake.app_answer(APP).0, 404);
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after_and_counts_no_storage() {
    let server = FakeScalingo::start(FakeConfig {
        rate_limit: Some(fake_scalingo::RateLimit {
            requests: 3,
            window: Duration::from_secs(2),
        }),
        ..fast()
    });
    let http = client();
    let jwt = exchange(&server, &http).await;
    let url = format!("{}/v1/regions", server.url());
    for _ in 0..2 {
        let resp = http.get(&url).bearer_auth(&jwt).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = http.get(&url).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert_eq!(resp.text().await.unwrap(), "Retry later");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let resp = http.get(&url).bearer_auth(&jwt).send().await.unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "allowed again after Retry-After"
    );
    let stats = server.stats();
    assert_eq!(stats.rate_limited, 1);
    assert_eq!(stats.requests_to(Endpoint::Regions), 4);
    assert_eq!(stats.api_requests(), 5, "{:?}", stats.by_endpoint);
}

#[tokio::test]
async fn the_app_links_its_deployments_stream() {
    let server = FakeScalingo::start(fast());
    let http = client();
    let jwt = exchange(&server, &http).await;
    let resp = http
        .get(format!("{}/v1/apps/{APP}", server.url()))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    let stream = body["app"]["links"]["deployments_stream"].as_str().unwrap();
    assert!(stream.starts_with("ws://"), "{stream}");
    assert!(stream.ends_with("/deployments/stream"), "{stream}");
    // A dial without the Origin header the official client sends is refused.
    let plain = http
        .get(stream.replacen("ws://", "http://", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::FORBIDDEN);
    assert_eq!(server.stats().stream_refused, 1);
}

#[tokio::test]
async fn garbling_faults_answer_what_they_say() {
    let server = FakeScalingo::start(fast());
    let http = fake_scalingo::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let jwt = exchange(&server, &http).await;
    let post = || {
        http.post(format!("{}/v1/sources", server.url()))
            .bearer_auth(&jwt)
            .json(&json!({}))
            .send()
    };

    // HugeBody: the answer, then exactly that many spaces, without a length.
    server.fail_next(Endpoint::CreateSource, Fault::HugeBody(1 << 20));
    let resp = post().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.content_length(), None);
    let body = resp.bytes().await.unwrap();
    let json_len = body.iter().rposition(|&b| b != b' ').unwrap() + 1;
    assert_eq!(body.len() - json_len, 1 << 20);
    assert!(serde_json::from_slice::<Value>(&body).is_ok(), "still JSON");

    // NotUtf8: a 0xFF byte at the start of the id's value.
    server.fail_next(Endpoint::GetApp, Fault::NotUtf8);
    let body = http
        .get(format!("{}/v1/apps/{APP}", server.url()))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(std::str::from_utf8(&body).is_err());
    assert!(body.windows(7).any(|w| w == b"\"id\":\"\xff"), "{body:?}");

    // RedirectTo: a 307 to the given place, nothing made.
    let made = server.stats().sources_created;
    server.fail_next(
        Endpoint::CreateSource,
        Fault::RedirectTo("/elsewhere".into()),
    );
    let resp = post().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(resp.headers()["location"], "/elsewhere");
    assert_eq!(server.stats().sources_created, made);
}

/// Dials the app's stream as the official client does and sends the auth frame.
async fn stream_with_auth(
    server: &FakeScalingo,
    jwt: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let url = format!(
        "{}/v1/apps/{APP}/deployments/stream",
        server.url().replacen("http://", "ws://", 1)
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "http://scalingo-cli.local/1".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    let auth = json!({"type": "auth", "data": {"token": jwt}}).to_string();
    ws.send(tokio_tungstenite::tungstenite::Message::text(auth))
        .await
        .unwrap();
    ws
}

/// The next frame that is not a ping, or how the connection ended: `Err(true)` for a close
/// frame, `Err(false)` for an end without one.
async fn next_frame<S>(ws: &mut S) -> Result<Value, bool>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["type"] != "ping" {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(_))) => return Err(true),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(false),
        }
    }
}

#[tokio::test]
async fn the_stream_can_refuse_auth_by_a_plain_close() {
    let server = FakeScalingo::start(FakeConfig {
        stream_refuse_auth: true,
        ..fast()
    });
    let jwt = exchange(&server, &client()).await;
    let mut ws = stream_with_auth(&server, &jwt).await;
    assert_eq!(next_frame(&mut ws).await, Err(false), "no close frame");
    assert_eq!(server.stats().stream_auth_failures, 1);
    assert_eq!(server.stats().stream_connections, 0);
}

#[tokio::test]
async fn the_stream_can_replay_the_log_so_far_and_cut_connections() {
    let server = FakeScalingo::start(FakeConfig {
        stream_replay: true,
        stream_cut_every: Some(Duration::from_millis(300)),
        ..fast()
    });
    let http = client();
    let jwt = exchange(&server, &http).await;
    let d = upload_and_deploy(&server, &http, &jwt, "replay-1", good_archive()).await;
    let id = d["id"].as_str().unwrap();
    let done = wait_finished(&server, &http, &jwt, id).await;
    let output = fetch_output(&http, &jwt, &done).await;
    // A connection after the end still starts with the whole log of the newest deployment.
    let mut ws = stream_with_auth(&server, &jwt).await;
    let first = next_frame(&mut ws).await.unwrap();
    assert_eq!(first["type"], "log");
    assert_eq!(first["id"], id);
    assert_eq!(first["data"]["content"], output.as_str());
    // Then it is cut, without a close frame.
    let started = Instant::now();
    assert_eq!(next_frame(&mut ws).await, Err(false));
    assert!(started.elapsed() < DEADLINE);
}
