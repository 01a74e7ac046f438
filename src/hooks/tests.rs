use super::*;
use crate::outcome::Outcome;

fn entry() -> HistoryEntry {
    HistoryEntry {
        time: "2026-11-25T17:42:58Z".into(),
        app: "my-app".into(),
        job: "j-42".into(),
        file: "build.tar.gz".into(),
        git_ref: Some("my-app-20261125174258-deadbeef".into()),
        outcome: Outcome::Failed,
        status: Some("build-error".into()),
        deployment_id: Some("d-1".into()),
        step: Some("follow".into()),
        reason: Some("the build failed".into()),
        attempts: 1,
        ..HistoryEntry::default()
    }
}

fn env_map(env: &[(OsString, OsString)]) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect()
}

#[test]
fn the_command_env_has_the_outcome_and_never_the_token() {
    let inherited = [
        ("PATH", "/usr/bin"),
        ("SCALINGO_API_TOKEN", "tk-us-secret"),
        ("DROPDEPLOY_APP", "spoofed"),
        ("HOME", "/root"),
    ]
    .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let env = env_map(&command_env(inherited, &entry()));
    assert_eq!(env.get("PATH").map(String::as_str), Some("/usr/bin"));
    assert_eq!(env.get("HOME").map(String::as_str), Some("/root"));
    assert!(!env.contains_key("SCALINGO_API_TOKEN"));
    assert!(!env.values().any(|v| v.contains("tk-us-secret")));
    let expected = [
        ("DROPDEPLOY_APP", "my-app"),
        ("DROPDEPLOY_JOB", "j-42"),
        ("DROPDEPLOY_OUTCOME", "failed"),
        ("DROPDEPLOY_STATUS", "build-error"),
        ("DROPDEPLOY_DEPLOYMENT_ID", "d-1"),
        ("DROPDEPLOY_FILE", "build.tar.gz"),
        ("DROPDEPLOY_GIT_REF", "my-app-20261125174258-deadbeef"),
        ("DROPDEPLOY_REASON", "the build failed"),
    ];
    for (name, value) in expected {
        assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
    }
}

#[test]
fn absent_values_are_empty_variables() {
    let bare = HistoryEntry {
        app: "a".into(),
        job: "j".into(),
        outcome: Outcome::Succeeded,
        ..HistoryEntry::default()
    };
    let env = env_map(&command_env(Vec::new(), &bare));
    for name in [
        "DROPDEPLOY_STATUS",
        "DROPDEPLOY_DEPLOYMENT_ID",
        "DROPDEPLOY_GIT_REF",
        "DROPDEPLOY_REASON",
        "DROPDEPLOY_FILE",
    ] {
        assert_eq!(env.get(name).map(String::as_str), Some(""), "{name}");
    }
    assert_eq!(env["DROPDEPLOY_OUTCOME"], "succeeded");
    assert_eq!(env.len(), 8);
}

#[test]
fn the_stdin_is_the_history_line() {
    let body = serde_json::to_vec(&entry()).unwrap();
    let back: HistoryEntry = serde_json::from_slice(&body).unwrap();
    assert_eq!(back, entry());
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["outcome"], "failed");
    assert_eq!(value["deployment_id"], "d-1");
}

#[test]
fn urls_lose_their_secrets_in_messages() {
    assert_eq!(
        redact_url("https://hooks.example.com/x?token=s3cret#frag"),
        "https://hooks.example.com/x"
    );
    assert_eq!(
        redact_url("https://user:pw@hooks.example.com/x"),
        "https://redacted@hooks.example.com/x"
    );
    assert_eq!(redact_url("not a url?token=s3cret"), "not a url");
    assert_eq!(redact_url("ftp:/a:b@c?d"), "ftp://redacted@c/");
    assert_eq!(redact_url("weird://u:p@host?q"), "weird://redacted@host");
}

#[test]
fn answers_are_judged_by_the_shared_classification() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(judge_status(200, None, now), Verdict::Delivered);
    assert_eq!(judge_status(204, Some("5"), now), Verdict::Delivered);
    for retry in [408, 425, 429, 500, 502, 503] {
        assert_eq!(
            judge_status(retry, None, now),
            Verdict::Retry { asked: None },
            "{retry}"
        );
    }
    for give_up in [301, 400, 401, 404, 409, 410] {
        assert_eq!(
            judge_status(give_up, Some("1"), now),
            Verdict::GiveUp,
            "{give_up}"
        );
    }
}

#[test]
fn a_429_or_503_retry_after_is_heard_and_no_other() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let asked = |secs| Verdict::Retry {
        asked: Some(Duration::from_secs(secs)),
    };
    assert_eq!(judge_status(429, Some("1"), now), asked(1));
    assert_eq!(judge_status(503, Some(" 30 "), now), asked(30));
    let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(judge_status(503, Some(&date), now), asked(90));
    let unreadable = Verdict::Retry { asked: None };
    assert_eq!(judge_status(429, Some("soon"), now), unreadable);
    assert_eq!(judge_status(500, Some("30"), now), unreadable);
}

#[test]
fn waits_are_jittered_below_a_doubling_ceiling() {
    let lots = Duration::from_secs(3600);
    // The ceiling after the n-th failure: 0.5 s, 1 s, 2 s, …, 60 s.
    for (failures, ceiling) in [
        (1, 500),
        (2, 1000),
        (3, 2000),
        (10, 60_000),
        (u32::MAX, 60_000),
    ] {
        let ceiling = Duration::from_millis(ceiling);
        assert_eq!(hook_delay(failures, None, 0.0, lots), Duration::ZERO);
        assert_eq!(hook_delay(failures, None, 0.5, lots), ceiling / 2);
        assert!(
            hook_delay(failures, None, 0.999, lots) < ceiling,
            "{failures}"
        );
    }
    for _ in 0..200 {
        let delay = hook_delay(3, None, fastrand::f64(), lots);
        assert!(delay < Duration::from_secs(2), "{delay:?}");
    }
}

#[test]
fn waits_honour_retry_after_within_the_budget() {
    let lots = Duration::from_secs(3600);
    let asked = Some(Duration::from_secs(1));
    assert_eq!(hook_delay(1, asked, 0.0, lots), Duration::from_secs(1));
    assert_eq!(hook_delay(1, asked, 0.999, lots), Duration::from_secs(1));
    let long = Some(Duration::from_secs(7200));
    assert_eq!(
        hook_delay(1, long, 0.5, lots),
        lots,
        "never past the budget left"
    );
}

#[test]
fn only_names_are_the_outcomes() {
    for outcome in [Outcome::Succeeded, Outcome::Failed, Outcome::Superseded] {
        assert!(HOOK_OUTCOMES.contains(&outcome.name()), "{outcome:?}");
    }
    let failures_only = HookConfig {
        only: vec!["failed".into()],
        ..HookConfig::default()
    };
    assert!(failures_only.wants("failed"));
    assert!(!failures_only.wants("succeeded"));
    assert!(HookConfig::default().wants("superseded"));
}

const FILE: &str = "/etc/dropdeploy/dropdeploy.toml";

fn load(text: &str) -> Result<Config, String> {
    let env = crate::config::Env::from_pairs([("SCALINGO_API_TOKEN", "tk-us-x")]);
    Config::from_str(text, std::path::Path::new(FILE), &env)
        .map(|loaded| loaded.config)
        .map_err(|e| e.to_string())
}

fn error(text: &str) -> String {
    match load(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(message) => message,
    }
}

#[test]
fn config_on_outcome_global_and_per_app() {
    let text = r#"
metrics_listen = "127.0.0.1:9464"

[on_outcome]
webhook = "https://hooks.example.com/deploys?token=abc"
timeout = "5s"
retries = 5

[[app]]
name = "a"
drop_dir = "/a"

[[app]]
name = "b"
drop_dir = "/b"
on_outcome = { command = ["/usr/local/bin/notify", "--quiet"] }
"#;
    let c = load(text).unwrap();
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    let global = HookConfig {
        webhook: Some("https://hooks.example.com/deploys?token=abc".into()),
        command: Vec::new(),
        timeout: Duration::from_secs(5),
        retries: 5,
        only: Vec::new(),
    };
    assert_eq!(c.on_outcome.as_ref(), Some(&global));
    assert_eq!(hook_for(&c, "a"), Some(&global));
    assert_eq!(hook_for(&c, "not-configured"), Some(&global));
    let own = HookConfig {
        command: vec!["/usr/local/bin/notify".into(), "--quiet".into()],
        ..HookConfig::default()
    };
    assert_eq!(
        hook_for(&c, "b"),
        Some(&own),
        "the app's own replaces the global"
    );
    assert_eq!(own.timeout, DEFAULT_HOOK_TIMEOUT);
    assert_eq!(own.retries, DEFAULT_HOOK_RETRIES);

    let c = load("[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\n").unwrap();
    assert_eq!(c.metrics_listen, None);
    assert_eq!(hook_for(&c, "a"), None);
}

#[test]
fn config_bad_metrics_listen_is_located() {
    let message = error("max_parallel = 2\nmetrics_listen = \"localhost:9464\"\n");
    assert!(
        message.starts_with(&format!(
            "{FILE}:2:18: `metrics_listen` must be an IP address and a port"
        )),
        "{message}"
    );
    assert!(error("metrics_listen = \"127.0.0.1\"").contains("found \"127.0.0.1\""));
}

#[test]
fn config_a_webhook_must_be_http() {
    let message = error("[on_outcome]\nwebhook = \"ftp://x.example/?key=s3cret\"\n");
    assert!(
        message.starts_with(&format!(
            "{FILE}:2:11: `webhook` in [on_outcome]: \"ftp://x.example/\" is not an http:// \
             or https:// URL"
        )),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    let text = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\non_outcome = { webhook = \"nope\" }\n";
    let message = error(text);
    assert!(
        message.starts_with(&format!(
            "{FILE}:4:26: `webhook` in on_outcome of [[app]]: \"nope\" is not"
        )),
        "{message}"
    );
}

#[test]
fn config_a_hook_needs_a_webhook_or_a_command() {
    let message = error("max_parallel = 1\n[on_outcome]\ntimeout = \"5s\"\n");
    assert!(
        message.contains("[on_outcome] has neither webhook nor command"),
        "{message}"
    );
    assert!(message.starts_with(&format!("{FILE}:")), "{message}");
    let text = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\non_outcome = { retries = 2 }\n";
    let message = error(text);
    assert!(
        message.starts_with(&format!(
            "{FILE}:4:14: `on_outcome` in [[app]] has neither webhook nor command"
        )),
        "{message}"
    );
    let message = error("[on_outcome]\ncommand = []\n");
    assert!(
        message.starts_with(&format!(
            "{FILE}:2:11: `command` in [on_outcome] has no program"
        )),
        "{message}"
    );
}

#[test]
fn config_hook_values_and_keys_are_checked() {
    let text = "[on_outcome]\nwebhook = \"https://h.example\"\nretries = 0\ntimeout = \"0s\"\n";
    let message = error(text);
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 2, "{message}");
    assert!(
        lines[0].starts_with(&format!(
            "{FILE}:3:11: `retries` in [on_outcome] must be at least 1"
        )),
        "{message}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{FILE}:4:11: `timeout` in [on_outcome] must be longer than zero"
        )),
        "{message}"
    );
    let message = error("[on_outcome]\nwebhok = \"https://h.example\"\n");
    assert_eq!(
        message,
        format!("{FILE}:2:1: unknown key `webhok` in [on_outcome]; did you mean `webhook`?")
    );
    let text = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\non_outcome = { url = \"x\" }\n";
    // Every problem in one pass: the unknown key, and the hook left with neither target.
    assert!(
        error(text).contains(&format!(
            "{FILE}:4:16: unknown key `url` in on_outcome of [[app]]"
        )),
        "{}",
        error(text)
    );
}

#[test]
fn config_only_keeps_the_outcomes_named() {
    let text = r#"
[on_outcome]
webhook = "https://hooks.example.com/deploys"
only = ["failed", "superseded", "failed"]

[[app]]
name = "a"
drop_dir = "/a"
on_outcome = { command = ["/bin/true"], only = ["succeeded"] }
"#;
    let c = load(text).unwrap();
    let global = c.on_outcome.as_ref().unwrap();
    assert_eq!(global.only, ["failed", "superseded"]);
    assert!(global.wants("failed") && !global.wants("succeeded"));
    assert_eq!(hook_for(&c, "a").unwrap().only, ["succeeded"]);
}

#[test]
fn config_an_unknown_only_value_is_located_with_the_valid_ones() {
    let message =
        error("[on_outcome]\nwebhook = \"https://h.example\"\nonly = [\"failed\", \"error\"]\n");
    assert_eq!(
        message,
        format!(
            "{FILE}:3:19: `only` in [on_outcome]: \"error\" is not an outcome; expected \
             one of succeeded, failed, superseded, verified, unhealthy, rolled_back"
        )
    );
    let text = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\non_outcome = { command = [\"/bin/true\"], only = [\"Failed\"] }\n";
    let message = error(text);
    assert!(
        message.starts_with(&format!(
            "{FILE}:4:49: `only` in on_outcome of [[app]]: \"Failed\" is not an outcome"
        )),
        "{message}"
    );
    let message = error("[on_outcome]\ncommand = [\"/bin/true\"]\nonly = []\n");
    assert!(
        message.starts_with(&format!("{FILE}:3:8: `only` in [on_outcome] is empty")),
        "{message}"
    );
    assert!(
        message.contains("succeeded, failed, superseded"),
        "{message}"
    );
}

#[test]
fn last_lines_skip_blank_ones() {
    assert_eq!(last_lines("a\nb\n\nc\n", 2), "b\nc");
    assert_eq!(last_lines("", 3), "");
}
