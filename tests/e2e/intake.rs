//! The HTTP intake (`[intake] listen`): `dropdeploy push` and raw HTTP against the real daemon
//! and the fake API. A push deploys once, a retry answers the same job, every refusal has its
//! status, a broken upload leaves nothing behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Endpoint, Fault, Proc, Run, World, wait_for};

const LONG: Duration = Duration::from_secs(60);
/// The intake token of these tests.
const TOKEN: &str = "intake-test-token-5c1e9d";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A world with one app (`my-app`) and the intake on a free port, its daemon started.
fn intake_world(extra: &str) -> (World, u16, Proc) {
    let world = World::new();
    world.add_drop_app("my-app", "");
    let port = free_port();
    world.append_config(&format!(
        "\n[intake]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n"
    ));
    let daemon = world.start_daemon_with_env("daemon", &[("DROPDEPLOY_INTAKE_TOKEN", TOKEN)]);
    (world, port, daemon)
}

/// One raw HTTP/1.1 exchange: the head and `body` sent, the whole answer read.
fn exchange(port: u16, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

/// `PUT /v1/apps/{app}/archives/{name}` with `body`, a Content-Length, and `more` headers.
fn put(port: u16, app: &str, name: &str, body: &[u8], more: &str) -> (u16, String) {
    let head = format!(
        "PUT /v1/apps/{app}/archives/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Length: {}\r\n{more}\r\n",
        body.len()
    );
    exchange(port, &head, body)
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}\r\n")
}

fn get(port: u16, path: &str) -> Value {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{}\r\n",
        bearer()
    );
    let (status, body) = exchange(port, &head, b"");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn push(world: &World, port: u16, file: &Path, wait: bool) -> Run {
    let to = format!("http://127.0.0.1:{port}");
    let mut args = vec!["push", "--to", &to, "--app", "my-app"];
    if wait {
        args.push("--wait");
    }
    let file = file.to_str().unwrap();
    args.push(file);
    let out = world
        .command(&args)
        .env("DROPDEPLOY_INTAKE_TOKEN", TOKEN)
        .output()
        .unwrap();
    Run::from_output(out, &world.fake.api_token())
}

/// The job id a push printed.
fn pushed_job(run: &Run) -> String {
    run.stdout
        .split("as job ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no job in {}", run.all()))
        .to_string()
}

/// Nothing in the spool and no upload half-kept.
fn nothing_left(world: &World) {
    assert!(world.job_records().is_empty(), "{:?}", world.job_records());
    let uploads = world.state.join("intake").join("uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", uploads.display());
}

#[test]
fn a_push_deploys_once_and_its_retries_answer_the_same_job() {
    let (world, port, _daemon) = intake_world("");
    let archive = world.archive("site.tar.gz");
    let first = push(&world, port, &archive, false);
    first.assert_code(0);
    let job = pushed_job(&first);
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["job"], job.as_str());
    assert_eq!(history[0]["outcome"], "succeeded");
    // CI retries after a time-out: another push of the same bytes under the same name.
    let again = push(&world, port, &archive, false);
    again.assert_code(0);
    assert_eq!(pushed_job(&again), job);
    // A raw retry without a key: the same.
    let bytes = std::fs::read(&archive).unwrap();
    let (status, body) = put(port, "my-app", "site.tar.gz", &bytes, &bearer());
    assert_eq!(status, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["job"], job.as_str());
    assert_eq!(answer["status_url"], format!("/v1/jobs/{job}"));
    assert_eq!(answer["git_ref"], history[0]["git_ref"]);
    // The same Idempotency-Key answers its job, whatever the body.
    let other = std::fs::read(world.archive("other.tar.gz")).unwrap();
    let keyed = format!("{}Idempotency-Key: ci-run-42\r\n", bearer());
    let (status, body) = put(port, "my-app", "other.tar.gz", &other, &keyed);
    assert_eq!(status, 202, "{body}");
    let keyed_job: Value = serde_json::from_str(&body).unwrap();
    assert_ne!(keyed_job["job"], job.as_str());
    let (status, body) = put(port, "my-app", "other.tar.gz", &bytes, &keyed);
    assert_eq!(status, 202, "{body}");
    let retried: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(retried["job"], keyed_job["job"]);
    let history = world.wait_history(2, LONG);
    assert_eq!(history.len(), 2, "{history:#?}");
    assert_eq!(world.fake.stats().deployments_created, 2);
    // The job as the API shows it, from the history.
    let view = get(port, &format!("/v1/jobs/{job}"));
    assert_eq!(view["outcome"], "succeeded");
    assert_eq!(view["app"], "my-app");
    assert!(view["deployment_id"].is_string(), "{view}");
    let list = get(port, "/v1/apps/my-app/jobs?limit=1");
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
    assert!(!world.log("daemon").contains(TOKEN));
}

#[test]
fn each_refusal_has_its_status_and_enqueues_nothing() {
    let (world, port, _daemon) = intake_world("");
    let good = std::fs::read(world.archive("a.tar.gz")).unwrap();
    // 401: no token, a wrong one.
    assert_eq!(put(port, "my-app", "a.tar.gz", &good, "").0, 401);
    let wrong = "Authorization: Bearer not-the-token-8d2f\r\n";
    assert_eq!(put(port, "my-app", "a.tar.gz", &good, wrong).0, 401);
    // 404: an app the configuration does not have.
    let (status, body) = put(port, "nope", "a.tar.gz", &good, &bearer());
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nope"), "{body}");
    // 400: a name with a folder, with `..`, or not a tarball.
    for name in ["sub%2Fa.tar.gz", "..a.tar.gz", "a.zip", "a.tar"] {
        let (status, body) = put(port, "my-app", name, &good, &bearer());
        assert_eq!(status, 400, "{name}: {body}");
    }
    // 411: no Content-Length (a chunked body).
    let head = format!(
        "PUT /v1/apps/my-app/archives/a.tar.gz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n{}\r\n",
        bearer()
    );
    let (status, body) = exchange(port, &head, b"5\r\nhello\r\n0\r\n\r\n");
    assert_eq!(status, 411, "{body}");
    // 413: more than max_archive_size's compressed bound, refused before any byte is read.
    let head = format!(
        "PUT /v1/apps/my-app/archives/a.tar.gz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Length: {}\r\n{}\r\n",
        2u64 << 30,
        bearer()
    );
    let (status, body) = exchange(port, &head, b"");
    assert_eq!(status, 413, "{body}");
    // 422: what the inspection refuses, with its reason.
    let (status, body) = put(port, "my-app", "b.tar.gz", b"not a gzip at all", &bearer());
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("b.tar.gz") && body.contains("gzip"), "{body}");
    nothing_left(&world);
    assert!(world.history().is_empty());
    assert_eq!(world.fake.stats().sources_created, 0);
    assert!(!world.log("daemon").contains(TOKEN));
}

#[test]
fn a_truncated_upload_leaves_nothing_behind() {
    let (world, port, _daemon) = intake_world("");
    let good = std::fs::read(world.archive("a.tar.gz")).unwrap();
    let head = format!(
        "PUT /v1/apps/my-app/archives/a.tar.gz HTTP/1.1\r\nHost: x\r\n\
         Content-Length: {}\r\n{}\r\n",
        good.len() + 1000,
        bearer()
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&good).unwrap();
    s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(s);
    let noticed = wait_for(LONG, || world.log("daemon").contains("upload not received"));
    assert!(noticed, "{}", world.log("daemon"));
    nothing_left(&world);
    assert!(world.history().is_empty());
    // The intake still works.
    push(&world, port, &world.archive("b.tar.gz"), true).assert_code(0);
}

#[test]
fn push_wait_exits_like_deploy() {
    let (world, port, mut daemon) = intake_world("");
    push(&world, port, &world.archive("ok.tar.gz"), true)
        .assert_code(0)
        .assert_contains("succeeded");
    world.fake.set_next_outcome("my-app", "build-error");
    push(&world, port, &world.archive("bad.tar.gz"), true)
        .assert_code(1)
        .assert_contains("failed");
    // Gave up: transient errors for the whole retry budget.
    daemon.signal("TERM");
    daemon.wait_exit(LONG);
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        text.replace("budget = \"30s\"", "budget = \"1s\""),
    )
    .unwrap();
    let _daemon = world.start_daemon_with_env("again", &[("DROPDEPLOY_INTAKE_TOKEN", TOKEN)]);
    for _ in 0..500 {
        world
            .fake
            .fail_next(Endpoint::CreateSource, Fault::Status(503));
    }
    push(&world, port, &world.archive("flaky.tar.gz"), true)
        .assert_code(3)
        .assert_contains("gave up");
}

#[test]
fn plain_http_off_loopback_is_refused_unless_said() {
    let world = World::new();
    world.add_drop_app("my-app", "");
    world.append_config("\n[intake]\nlisten = \"0.0.0.0:8473\"\n");
    world
        .run(&["config", "check"])
        .assert_code(2)
        .assert_contains("insecure_plain_http");
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(&world.config, format!("{text}insecure_plain_http = true\n")).unwrap();
    world.run(&["config", "check"]).assert_code(0);
}

#[test]
fn with_a_certificate_the_intake_speaks_https_only() {
    let tls = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/tls");
    let world = World::new();
    world.add_drop_app("my-app", "");
    let port = free_port();
    // TLS: any address may be used without insecure_plain_http (config check says so).
    world.append_config(&format!(
        "\n[intake]\nlisten = \"0.0.0.0:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        tls.join("server.pem").display(),
        tls.join("server.key").display()
    ));
    world.run(&["config", "check"]).assert_code(0);
    let _daemon = world.start_daemon_with_env("daemon", &[("DROPDEPLOY_INTAKE_TOKEN", TOKEN)]);
    // Plain HTTP on the TLS port: no answer.
    let (status, _) = put(port, "my-app", "a.tar.gz", b"x", &bearer());
    assert_eq!(status, 0);
    let to = format!("https://127.0.0.1:{port}");
    let archive = world.archive("tls.tar.gz");
    let out = world
        .command(&[
            "push",
            "--to",
            &to,
            "--app",
            "my-app",
            "--wait",
            archive.to_str().unwrap(),
        ])
        .env("DROPDEPLOY_INTAKE_TOKEN", TOKEN)
        .env("SSL_CERT_FILE", tls.join("ca.pem"))
        .output()
        .unwrap();
    Run::from_output(out, &world.fake.api_token())
        .assert_code(0)
        .assert_contains("succeeded");
    assert_eq!(world.history().len(), 1);
}

#[test]
fn a_stalled_upload_is_dropped_after_read_timeout_and_leaves_nothing() {
    let (world, port, _daemon) = intake_world("read_timeout = \"1s\"");
    let good = std::fs::read(world.archive("a.tar.gz")).unwrap();
    let head = format!(
        "PUT /v1/apps/my-app/archives/a.tar.gz HTTP/1.1\r\nHost: x\r\n\
         Content-Length: {}\r\n{}\r\n",
        good.len(),
        bearer()
    );
    // Half the body, then nothing: the connection stays open.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&good[..good.len() / 2]).unwrap();
    let noticed = wait_for(LONG, || {
        world.log("daemon").contains("read_timeout in [intake]")
    });
    assert!(noticed, "{}", world.log("daemon"));
    nothing_left(&world);
    drop(s);
    assert!(world.history().is_empty());
}

#[test]
fn config_check_finds_an_unusable_certificate() {
    let world = World::new();
    world.add_drop_app("my-app", "");
    let cert = world.path("intake.pem");
    std::fs::write(&cert, "not a certificate\n").unwrap();
    world.append_config(&format!(
        "\n[intake]\nlisten = \"127.0.0.1:8473\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        world.path("missing.key").display()
    ));
    world
        .run(&["config", "check"])
        .assert_code(2)
        .assert_contains("intake.pem");
}
