//! The daemon's metrics endpoint and outcome hooks, end to end over loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{self, World, wait_for};

const LONG: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn top_level(world: &World, line: &str) {
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(&world.config, format!("{line}\n{text}")).unwrap();
}

/// A webhook receiver: answers 200 and keeps each request body.
fn receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            kept.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let mut stream = stream;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, bodies)
}

#[test]
fn metrics_show_a_finished_deployment() {
    let world = World::new();
    let port = free_port();
    top_level(&world, &format!("metrics_listen = \"127.0.0.1:{port}\""));
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    assert_eq!(
        http_get(port, "/healthz").map(|r| r.ends_with("ok")),
        Some(true)
    );
    world.drop_archive(&drop, "a.tar.gz");
    world.wait_history(1, LONG);
    // The metrics follow the history line.
    let line = r#"dropdeploy_deployments_total{app="my-app",outcome="succeeded"} 1"#;
    assert!(wait_for(LONG, || http_get(port, "/metrics")
        .is_some_and(|m| m.contains(line))));
    let metrics = http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains(r#"dropdeploy_upload_bytes_total{app="my-app"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"dropdeploy_last_success_timestamp_seconds{app="my-app"}"#),
        "{metrics}"
    );
    support::assert_no_secret(&metrics, &world.fake.api_token());
}

/// The `_bucket` values of one histogram series (`head` is the name and labels before `le`),
/// in the order they are written.
fn buckets(metrics: &str, head: &str) -> Vec<(String, u64)> {
    let prefix = format!("{head},le=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, value) = rest.split_once("\"} ")?;
            Some((le.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_time_a_deployment_its_upload_and_its_build() {
    let world = World::new();
    let port = free_port();
    top_level(&world, &format!("metrics_listen = \"127.0.0.1:{port}\""));
    let drop = world.add_drop_app("my-app", "");
    let _daemon = world.start_daemon("d");
    world.drop_archive(&drop, "a.tar.gz");
    world.wait_history(1, LONG);
    let done =
        r#"dropdeploy_deployment_duration_seconds_count{app="my-app",outcome="succeeded"} 1"#;
    assert!(wait_for(LONG, || http_get(port, "/metrics")
        .is_some_and(|m| m.contains(done))));
    let metrics = http_get(port, "/metrics").unwrap();
    for name in [
        "dropdeploy_deployment_duration_seconds",
        "dropdeploy_upload_duration_seconds",
        "dropdeploy_build_duration_seconds",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} histogram\r\n"))
                || metrics.contains(&format!("# TYPE {name} histogram\n")),
            "{metrics}"
        );
    }
    for (head, name, labels) in [
        (
            r#"dropdeploy_deployment_duration_seconds_bucket{app="my-app",outcome="succeeded""#,
            "dropdeploy_deployment_duration_seconds",
            r#"{app="my-app",outcome="succeeded"}"#,
        ),
        (
            r#"dropdeploy_upload_duration_seconds_bucket{app="my-app""#,
            "dropdeploy_upload_duration_seconds",
            r#"{app="my-app"}"#,
        ),
        (
            r#"dropdeploy_build_duration_seconds_bucket{app="my-app""#,
            "dropdeploy_build_duration_seconds",
            r#"{app="my-app"}"#,
        ),
    ] {
        let series = buckets(&metrics, head);
        assert!(series.len() > 5, "{head}: {series:?}\n{metrics}");
        assert!(
            series.windows(2).all(|w| w[0].1 <= w[1].1),
            "{head}: buckets are cumulative: {series:?}"
        );
        assert_eq!(
            series.last(),
            Some(&("+Inf".to_string(), 1)),
            "{head}: one deployment, one upload, one build"
        );
        assert!(
            metrics.contains(&format!("{name}_count{labels} 1")),
            "{metrics}"
        );
        assert!(
            metrics.contains(&format!("{name}_sum{labels} ")),
            "{metrics}"
        );
    }
}

#[test]
fn a_webhook_receives_the_outcome() {
    let world = World::new();
    let (port, bodies) = receiver();
    let drop = world.add_drop_app("my-app", "");
    world.append_config(&format!(
        "\n[on_outcome]\nwebhook = \"http://127.0.0.1:{port}/hook?key=s3cr3t\"\n"
    ));
    let _daemon = world.start_daemon("d");
    world.drop_archive(&drop, "a.tar.gz");
    world.wait_history(1, LONG);
    assert!(wait_for(LONG, || !bodies.lock().unwrap().is_empty()));
    let body = bodies.lock().unwrap()[0].clone();
    let entry: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(entry["app"], "my-app");
    assert_eq!(entry["outcome"], "succeeded");
    assert_eq!(entry["file"], "a.tar.gz");
    support::assert_no_secret(&body, &world.fake.api_token());
    assert!(
        !world.log("d").contains("s3cr3t"),
        "the webhook's query is not logged"
    );
}

#[test]
fn a_dead_webhook_does_not_fail_the_deployment() {
    let world = World::new();
    let port = free_port();
    let drop = world.add_drop_app(
        "my-app",
        &format!("on_outcome = {{ webhook = \"http://127.0.0.1:{port}/nobody\", retries = 2 }}"),
    );
    let _daemon = world.start_daemon("d");
    world.drop_archive(&drop, "a.tar.gz");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded");
    assert!(wait_for(LONG, || world.log("d").contains("nobody")
        || world.log("d").to_lowercase().contains("webhook")));
    // And the daemon still takes work.
    world.drop_archive(&drop, "b.tar.gz");
    let history = world.wait_history(2, LONG);
    assert_eq!(history[1]["outcome"], "succeeded");
}

/// Bodies a receiver answered.
type Bodies = Arc<Mutex<Vec<String>>>;

/// A webhook receiver that reads the first request and never answers it (the daemon is killed
/// meanwhile); it answers every later one 200. Returns its port, the number of requests seen,
/// and the bodies answered.
fn receiver_hanging_first() -> (u16, Arc<Mutex<usize>>, Bodies) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, answered) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(Vec::new())));
    let (seen2, answered2) = (seen.clone(), answered.clone());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let first = {
                let mut seen = seen2.lock().unwrap();
                *seen += 1;
                *seen == 1
            };
            if first {
                held.push(stream);
                continue;
            }
            answered2
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let mut stream = stream;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, seen, answered)
}

#[test]
fn a_hook_under_way_when_the_daemon_is_killed_is_delivered_at_the_next_start() {
    let world = World::new();
    let (port, seen, answered) = receiver_hanging_first();
    let drop = world.add_drop_app("my-app", "");
    world.append_config(&format!(
        "\n[on_outcome]\nwebhook = \"http://127.0.0.1:{port}/hook\"\ntimeout = \"60s\"\n"
    ));
    let mut daemon = world.start_daemon("first");
    world.drop_archive(&drop, "a.tar.gz");
    let history = world.wait_history(1, LONG);
    let job = history[0]["job"].as_str().unwrap().to_string();
    // The outcome is recorded, the job has left the spool, the hook is being delivered.
    assert!(wait_for(LONG, || *seen.lock().unwrap() == 1));
    assert!(wait_for(LONG, || world.job_records().is_empty()));
    daemon.kill9();
    let _daemon = world.start_daemon("second");
    let delivered = wait_for(LONG, || {
        answered
            .lock()
            .unwrap()
            .iter()
            .any(|body| body.contains(&job))
    });
    assert!(
        delivered,
        "the hook was lost with the daemon that was delivering it:\n{}",
        world.log("second")
    );
    assert_eq!(world.history().len(), 1, "the outcome is recorded once");
    // Delivered: nothing is delivered again at the start after.
    assert!(wait_for(LONG, || {
        std::fs::read_dir(world.state.join("hooks")).is_ok_and(|mut d| d.next().is_none())
    }));
}
