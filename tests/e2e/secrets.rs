//! The API token never leaks: not in logs at debug level, not on stdout, not in the history,
//! not in a `.reason.txt`, not in any file under the state directory, not in an error message;
//! and the bearer JWTs the platform issued stay out of the logs too.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use base64::Engine as _;

use crate::support::{FakeConfig, Proc, World, archives_in, wait_for};

const LONG: Duration = Duration::from_secs(30);
const TOKEN: &str = "tk-us-SECRET-canary-7f3a9c5e1d2b4a6f8091";
const WRONG_TOKEN: &str = "tk-us-WRONG-canary-0b1c2d3e4f5a6978abcd";

/// Every way a token could show in a text: whole, its last 12 characters, and inside the Basic
/// credentials of the token exchange (`:token` in base64).
fn forms(token: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        token.to_string(),
        token[token.len() - 12..].to_string(),
        b64.encode(format!(":{token}")),
    ]
}

/// Fails the test if any of `secrets` is in `text`, naming `what` the text is.
fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} holds a secret ({secret:?}):\n{text}"
        );
    }
}

/// Every regular file under `dir`, recursively, without following symlinks.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            walk(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

/// Checks every file under `dir` for the secrets; returns how many files were read.
fn assert_tree_clean(dir: &Path, secrets: &[String]) -> usize {
    let mut files = Vec::new();
    walk(dir, &mut files);
    for file in &files {
        let bytes = std::fs::read(file).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert_clean(&file.display().to_string(), &text, secrets);
    }
    files.len()
}

/// `dropdeploy run` at debug level, output in `<tag>.stdout` / `<tag>.stderr`; waits until it
/// runs.
fn start_debug_daemon(world: &World, tag: &str, token: &str) -> Proc {
    let stdout = std::fs::File::create(world.path(&format!("{tag}.stdout"))).unwrap();
    let stderr = std::fs::File::create(world.path(&format!("{tag}.stderr"))).unwrap();
    let child: Child = world
        .command(&["run"])
        .env("RUST_LOG", "debug")
        .env("SCALINGO_API_TOKEN", token)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let daemon = Proc(child);
    let log = world.path(&format!("{tag}.stderr"));
    let up = wait_for(LONG, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("dropdeploy is running"))
    });
    assert!(up, "daemon did not start:\n{}", read(&log));
    daemon
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// `dropdeploy deploy` at debug level; returns (exit code, stdout, stderr).
fn debug_deploy(world: &World, archive: &Path, token: &str) -> (Option<i32>, String, String) {
    let out = world
        .command(&["deploy", "--app", "my-app"])
        .arg(archive)
        .env("RUST_LOG", "debug")
        .env("SCALINGO_API_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_token_and_the_bearer_tokens_never_leak() {
    let world = World::with(FakeConfig {
        api_token: TOKEN.into(),
        step: Duration::from_millis(150),
        ..FakeConfig::default()
    });
    let mut secrets = forms(TOKEN);
    secrets.extend(forms(WRONG_TOKEN));
    let drop = world.add_drop_app("my-app", "");
    let mut outputs: Vec<(String, String)> = Vec::new();

    // The daemon: one success, one build error, both at debug level.
    let mut daemon = start_debug_daemon(&world, "d", TOKEN);
    world.drop_archive(&drop, "good.tar.gz");
    // Mid-deploy, the job record and everything else in the spool.
    assert!(world.fake.wait_until(LONG, |s| s.deployments_created == 1));
    let mid_files = assert_tree_clean(&world.state, &secrets);
    for record in world.job_records() {
        assert_clean("a job record", &record, &secrets);
    }
    world.wait_history(1, LONG);
    world.fake.set_next_outcome("my-app", "build-error");
    world.drop_archive(&drop, "broken-build.tar.gz");
    let history = world.wait_history(2, LONG);
    assert_eq!(history[0]["outcome"], "succeeded", "{history:#?}");
    assert_eq!(history[1]["outcome"], "failed", "{history:#?}");
    assert_eq!(
        archives_in(&drop.join("failed")),
        vec!["broken-build.tar.gz"]
    );
    let reason = read(&drop.join("failed/broken-build.tar.gz.reason.txt"));
    assert!(reason.contains("build-error"), "{reason}");
    assert_clean("the reason file", &reason, &secrets);
    daemon.signal("TERM");
    daemon.wait_exit(LONG);

    // The one-shot command: a success, a build error, then a wrong token (401).
    let (code, stdout, stderr) = debug_deploy(&world, &world.archive("one.tar.gz"), TOKEN);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    outputs.push(("deploy: stdout".into(), stdout));
    outputs.push(("deploy: stderr".into(), stderr));
    world.fake.set_next_outcome("my-app", "build-error");
    let (code, stdout, stderr) = debug_deploy(&world, &world.archive("two.tar.gz"), TOKEN);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("build-error") || stdout.contains("build-error"));
    outputs.push(("failed deploy: stdout".into(), stdout));
    outputs.push(("failed deploy: stderr".into(), stderr));
    let unauthorized_before = world.fake.stats().unauthorized;
    let (code, stdout, stderr) = debug_deploy(&world, &world.archive("three.tar.gz"), WRONG_TOKEN);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(world.fake.stats().unauthorized > unauthorized_before);
    outputs.push(("refused deploy: stdout".into(), stdout));
    outputs.push(("refused deploy: stderr".into(), stderr));

    // The daemon given the wrong token: whatever it says and records, no token in it.
    let wrong = start_debug_daemon(&world, "w", WRONG_TOKEN);
    world.drop_archive(&drop, "refused.tar.gz");
    world.wait_history(3, LONG);
    std::mem::drop(wrong);

    for tag in ["d", "w"] {
        for stream in ["stdout", "stderr"] {
            let name = format!("{tag}.{stream}");
            outputs.push((name.clone(), read(&world.path(&name))));
        }
    }
    let debug_lines: usize = outputs
        .iter()
        .map(|(_, text)| text.lines().filter(|l| l.contains("DEBUG")).count())
        .sum();
    assert!(debug_lines > 0, "debug level was on");
    for (what, text) in &outputs {
        assert_clean(what, text, &secrets);
    }

    // The bearer JWTs the platform issued stay out of every output too.
    let mut jwts: Vec<String> = world
        .fake
        .requests()
        .iter()
        .filter_map(|r| r.header("authorization")?.strip_prefix("Bearer "))
        .map(str::to_string)
        .collect();
    jwts.sort();
    jwts.dedup();
    assert!(!jwts.is_empty(), "the fake saw bearer tokens");
    let mut jwt_forms = jwts.clone();
    // The signature part alone (after the last '.') is as secret as the whole.
    jwt_forms.extend(
        jwts.iter()
            .filter_map(|j| Some(j.rsplit_once('.')?.1.to_string())),
    );
    jwt_forms.retain(|s| s.len() >= 12);
    for (what, text) in &outputs {
        assert_clean(what, text, &jwt_forms);
    }

    // The history, every reason file, every file under the state dir and the drop folder.
    let history = read(&world.state.join("history.jsonl"));
    assert!(history.lines().count() >= 3);
    assert_clean("history.jsonl", &history, &secrets);
    let files = assert_tree_clean(world.dir.path(), &secrets);
    eprintln!(
        "checked {} outputs ({debug_lines} debug lines), {} JWTs, {mid_files} files mid-deploy, \
         {files} files at the end",
        outputs.len(),
        jwts.len()
    );
}

/// Adds `line` to the `[scalingo]` table of the world's config.
fn set_in_scalingo(world: &World, line: &str) {
    let text = std::fs::read_to_string(&world.config).unwrap();
    assert!(text.contains("[scalingo]\n"));
    std::fs::write(
        &world.config,
        text.replace("[scalingo]\n", &format!("[scalingo]\n{line}\n")),
    )
    .unwrap();
}

/// Runs the binary with `args` (the world's environment, plus `env`); returns (exit code,
/// stdout + stderr).
fn run_with(world: &World, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = world.command(args);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn a_token_pasted_as_the_token_file_is_not_echoed() {
    let world = World::new();
    set_in_scalingo(&world, &format!("token_file = \"{TOKEN}\""));
    let secrets = forms(TOKEN);
    // No token in the environment: the file is read, and cannot be.
    for args in [
        &["config", "check"][..],
        &["run"],
        &["deploy", "--app", "my-app", "x.tar.gz"],
    ] {
        for format in ["text", "json"] {
            let mut args = args.to_vec();
            args.extend(["--log-format", format]);
            let mut cmd = world.command(&args);
            cmd.env_remove("SCALINGO_API_TOKEN")
                .env("RUST_LOG", "debug");
            let out = cmd.output().unwrap();
            let text = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
            assert_clean(&format!("{args:?}"), &text, &secrets);
            assert!(
                text.contains("cannot read token file") && text.contains("tk-us-[redacted]"),
                "{args:?}: the message still says which setting: {text}"
            );
        }
    }
}

#[test]
fn a_token_as_app_name_or_region_is_not_echoed() {
    let secrets = forms(TOKEN);
    // In the file: the messages name the setting.
    for (line, setting) in [
        (
            format!("\n[[app]]\nname = \"{TOKEN}\"\ndrop_dir = \"d\"\n"),
            "app name",
        ),
        (format!("region = \"{TOKEN}\""), "`region`"),
    ] {
        let world = World::new();
        if line.contains("[[app]]") {
            world.append_config(&line);
        } else {
            set_in_scalingo(&world, &line);
        }
        for args in [&["config", "check"][..], &["run"], &["status"]] {
            let (code, out) = run_with(&world, args, &[("RUST_LOG", "debug")]);
            assert_eq!(code, Some(2), "{args:?}: {out}");
            assert_clean(&format!("{setting}: {args:?}"), &out, &secrets);
            assert!(
                out.contains(setting) && out.contains("tk-us-[redacted]"),
                "{args:?}: the message names {setting}: {out}"
            );
        }
    }
    // In the environment.
    let world = World::new();
    let (code, out) = run_with(&world, &["run"], &[("SCALINGO_REGION", TOKEN)]);
    assert_eq!(code, Some(2), "{out}");
    assert_clean("$SCALINGO_REGION", &out, &secrets);
    assert!(
        out.contains("$SCALINGO_REGION: invalid region \"tk-us-[redacted]\""),
        "{out}"
    );

    // On the command line: not an app name, and the refusal says so.
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    let (code, out) = run_with(
        &world,
        &["deploy", "--app", TOKEN, archive.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
    );
    // Refused as a name before anything is sent (issue 23), without echoing it.
    assert_eq!(code, Some(2), "{out}");
    assert_clean("deploy --app <token>", &out, &secrets);
    assert!(out.contains("is not a Scalingo app name"), "{out}");
    assert_tree_clean(world.dir.path(), &secrets);
}

#[test]
fn a_token_in_the_api_url_is_not_echoed_on_any_retry() {
    // A port where nothing listens: every try fails to connect and is retried.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let world = World::new();
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        text.replace("budget = \"30s\"", "budget = \"1s\""),
    )
    .unwrap();
    let drop = world.add_drop_app("my-app", "");
    let api_url = format!("http://127.0.0.1:{port}/{TOKEN}");
    let secrets = forms(TOKEN);

    // The one-shot command, at debug level, in both log formats.
    for format in ["text", "json"] {
        let archive = world.archive(&format!("{format}.tar.gz"));
        let (code, out) = run_with(
            &world,
            &[
                "deploy",
                "--log-format",
                format,
                "--app",
                "my-app",
                archive.to_str().unwrap(),
            ],
            &[("SCALINGO_API_URL", &api_url), ("RUST_LOG", "debug")],
        );
        assert_eq!(code, Some(3), "{out}");
        assert_clean(&format!("deploy ({format})"), &out, &secrets);
        let retries = out.matches("retry").count();
        assert!(retries >= 2, "retried, each time without the token: {out}");
        assert!(
            out.contains(&format!(
                "http://127.0.0.1:{port}/tk-us-[redacted]/v1/sources"
            )),
            "the message still names the URL: {out}"
        );
    }

    // The daemon: its log, the history and the reason file.
    let mut cmd = world.command(&["run"]);
    cmd.env("SCALINGO_API_URL", &api_url)
        .env("RUST_LOG", "debug");
    let log = world.path("d.stderr");
    let daemon = Proc(
        cmd.stdout(std::fs::File::create(world.path("d.stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // The two one-shot deploys are in the history already, like the daemon's jobs.
    let before = world.history();
    assert_eq!(before.len(), 2, "{before:#?}");
    assert!(
        before.iter().all(|e| e["outcome"] == "failed"),
        "{before:#?}"
    );
    world.drop_archive(&drop, "dropped.tar.gz");
    let history = world.wait_history(3, LONG);
    assert_eq!(history[2]["outcome"], "failed", "{history:#?}");
    std::mem::drop(daemon);
    let reason = read(&drop.join("failed/dropped.tar.gz.reason.txt"));
    assert!(reason.contains("tk-us-[redacted]/v1/sources"), "{reason}");
    assert_clean("the reason file", &reason, &secrets);
    assert_clean("the daemon's log", &read(&log), &secrets);
    assert!(read(&log).contains("retrying"), "{}", read(&log));
    assert_clean(
        "history.jsonl",
        &read(&world.state.join("history.jsonl")),
        &secrets,
    );
    assert_tree_clean(world.dir.path(), &secrets);
}
