//! The client's pure parts: error bodies, URLs in messages, classes, time-outs, chunks.
use super::upload::{UPLOAD_CHUNK, file_chunks};
use super::*;

#[test]
fn the_client_builds_over_rustls_on_ring_and_takes_https_urls() {
    let config = ScalingoConfig::default();
    assert!(config.api_url.starts_with("https://"), "{}", config.api_url);
    let client = ScalingoClient::new(&config, Secret::new("tk-us-test")).expect("client");
    let provider = rustls::crypto::CryptoProvider::get_default().expect("a provider");
    // ring's random source is the unit struct `Ring` (aws-lc-rs's is `AwsLcRs`).
    assert_eq!(format!("{:?}", provider.secure_random), "Ring");
    let request = client
        .http
        .get(format!("{}/v1/apps", config.api_url))
        .build()
        .expect("an https URL is accepted");
    assert_eq!(request.url().scheme(), "https");
}

#[tokio::test]
async fn file_chunks_give_the_whole_file_in_full_chunks() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    for len in [0, 1, UPLOAD_CHUNK, UPLOAD_CHUNK + 1, 3 * UPLOAD_CHUNK + 5] {
        let path = dir.path().join(format!("f{len}"));
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let chunks: Vec<bytes::Bytes> = file_chunks(std::fs::File::open(&path).unwrap(), &path)
            .map(|c| c.unwrap())
            .collect()
            .await;
        // Every chunk but the last is full, none is empty, and together they are the file.
        assert!(chunks.iter().all(|c| !c.is_empty()), "len {len}");
        let full = chunks.len().saturating_sub(1);
        assert!(chunks[..full].iter().all(|c| c.len() == UPLOAD_CHUNK));
        assert_eq!(chunks.concat(), data, "len {len}");
    }
}

#[test]
fn error_bodies_are_read_as_people_need_them() {
    assert_eq!(
        error_message(404, r#"{"resource":"app","error":"not found"}"#),
        "app not found"
    );
    assert_eq!(
        error_message(401, r#"{"error":"Invalid credentials"}"#),
        "Invalid credentials"
    );
    assert_eq!(
        error_message(422, r#"{"errors":{"source_url":["can't be blank"]}}"#),
        "source_url can't be blank"
    );
    assert_eq!(error_message(429, "Retry later\n"), "Retry later");
    assert_eq!(error_message(503, ""), "Service Unavailable");
    assert!(error_message(500, &"x".repeat(5000)).chars().count() <= MAX_ERROR_BODY + 1);
}

#[test]
fn urls_in_messages_lose_their_query() {
    assert_eq!(
        display_url("https://s3.example/x?token=secret"),
        "https://s3.example/x?…"
    );
    assert_eq!(
        display_url("https://api/v1/sources"),
        "https://api/v1/sources"
    );
}

#[test]
fn transient_and_permanent_errors() {
    let status = |s| ApiError::Status {
        what: "t",
        url: String::new(),
        status: s,
        message: String::new(),
        retry_after: None,
    };
    assert!(status(503).is_transient());
    assert!(status(429).is_transient());
    assert!(!status(404).is_transient());
    assert!(!status(401).is_transient());
    let timeout = ApiError::Timeout {
        what: "t",
        url: String::new(),
        waited: Duration::from_secs(1),
        limit: Duration::from_secs(1),
    };
    assert!(timeout.is_transient());
    let fresh = ApiError::FreshBearerRefused {
        what: "t",
        url: String::new(),
        message: String::new(),
    };
    assert!(fresh.is_transient(), "only the exchange's 401 is permanent");
    assert_eq!(fresh.status(), Some(401));
}

#[test]
fn a_timeout_names_the_time_waited_and_the_limit_when_different() {
    let timeout = |waited_ms, limit_ms| {
        ApiError::Timeout {
            what: "upload",
            url: "http://s/x?…".into(),
            waited: Duration::from_millis(waited_ms),
            limit: Duration::from_millis(limit_ms),
        }
        .to_string()
    };
    assert_eq!(
        timeout(2_004, 2_000),
        "upload: no answer from http://s/x?… after 2.0 s"
    );
    assert_eq!(
        timeout(15_030, 600_000),
        "upload: no answer from http://s/x?… after 15.0 s (time limit 10m)"
    );
}

#[test]
fn a_deployment_missing_fields_decodes_with_empty_ones() {
    #[derive(Deserialize)]
    struct Wrapped {
        deployment: Deployment,
    }
    let w: Wrapped = serde_json::from_str(r#"{"deployment":{"id":"d1"}}"#).unwrap();
    assert_eq!(w.deployment.id, "d1");
    assert_eq!(w.deployment.status, "");
    assert_eq!(
        super::super::follow::phase(&w.deployment.status),
        super::super::follow::Phase::Running,
        "followed on, not a finished failure"
    );
    let w: Wrapped = serde_json::from_str(r#"{"deployment":{"status":"success"}}"#).unwrap();
    assert_eq!(
        (w.deployment.id.as_str(), w.deployment.status.as_str()),
        ("", "success")
    );
    let w: Wrapped =
        serde_json::from_str(r#"{"deployment":{"id":"d","status":"building","links":{}}}"#)
            .unwrap();
    assert_eq!(w.deployment.links, Some(DeploymentLinks { output: None }));
}

/// A client of the fake platform, and the fake.
fn client_of_fake() -> (fake_scalingo::FakeScalingo, ScalingoClient) {
    let fake = fake_scalingo::FakeScalingo::start(fake_scalingo::FakeConfig::default());
    let config = ScalingoConfig {
        api_url: fake.url(),
        auth_url: fake.url(),
        region: None,
        api_url_explicit: true,
        timeout: Duration::from_secs(60),
        ..ScalingoConfig::default()
    };
    let client = ScalingoClient::new(&config, Secret::new(fake.api_token())).expect("client");
    (fake, client)
}

/// A deployment made on the fake (through the client), and its id.
async fn one_deployment(fake: &fake_scalingo::FakeScalingo, client: &ScalingoClient) -> String {
    let url = fake.host_archive(b"not an archive, never built before the test ends");
    client
        .create_deployment("my-app", "ref-1", &url)
        .await
        .expect("created")
        .id
}

#[tokio::test]
async fn an_answer_larger_than_the_bound_is_refused_naming_its_size() {
    use fake_scalingo::{Endpoint, Fault};
    let (fake, client) = client_of_fake();
    let id = one_deployment(&fake, &client).await;
    // 64 MiB of spaces after the JSON: valid JSON, read whole before the bound.
    fake.fail_next(Endpoint::GetDeployment, Fault::HugeBody(64 << 20));
    let err = client
        .get_deployment("my-app", &id)
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("too large") && text.contains("8.4 MB") && text.contains("get deployment"),
        "{text}"
    );
    assert!(
        err.is_transient(),
        "a garbled answer may be whole next time"
    );
    // The next answer is whole again.
    assert_eq!(client.get_deployment("my-app", &id).await.unwrap().id, id);
}

#[tokio::test]
async fn a_deployment_answer_that_is_not_utf8_is_transient_not_a_failed_status() {
    use fake_scalingo::{Endpoint, Fault};
    let (fake, client) = client_of_fake();
    let id = one_deployment(&fake, &client).await;
    fake.fail_next(Endpoint::GetDeployment, Fault::NotUtf8);
    let err = client
        .get_deployment("my-app", &id)
        .await
        .expect_err("a garbled answer is no status");
    assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("not UTF-8"), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn an_answer_about_another_deployment_is_transient() {
    use fake_scalingo::{Endpoint, Fault};
    let (fake, client) = client_of_fake();
    let id = one_deployment(&fake, &client).await;
    fake.fail_next(Endpoint::GetDeployment, Fault::OtherId);
    let err = client
        .get_deployment("my-app", &id)
        .await
        .expect_err("not the one asked for");
    let text = err.to_string();
    assert!(text.contains("other-id") && text.contains(&id), "{text}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn an_error_after_a_redirect_names_the_target() {
    use fake_scalingo::{Endpoint, Fault};
    let (fake, client) = client_of_fake();
    client.create_source().await.expect("a first source");
    fake.fail_next(
        Endpoint::CreateSource,
        Fault::RedirectTo("/v1/elsewhere".into()),
    );
    let err = client.create_source().await.expect_err("the target is 404");
    let text = err.to_string();
    assert!(text.contains("/v1/elsewhere"), "{text}");
    assert!(!text.contains("/v1/sources"), "{text}");

    // A target that does not answer at all: the connection error names it too.
    let gone = "http://127.0.0.1:9/nowhere";
    fake.fail_next(Endpoint::CreateSource, Fault::RedirectTo(gone.into()));
    let err = client.create_source().await.expect_err("nobody there");
    let text = err.to_string();
    assert!(text.contains(gone), "{text}");
}
