use super::app::{MAX_GIT_REF_LABEL, is_git_ref_label};
use super::build::resolve;
use super::env::ENV_VARS;
use super::raw::scan_inline_tokens;
use super::report::position;
use super::*;

const FILE: &str = "/etc/dropdeploy/dropdeploy.toml";

fn no_env() -> Env {
    Env::from_pairs(Vec::<(String, String)>::new())
}

fn parse(text: &str) -> Result<Loaded, ConfigError> {
    Config::from_str(text, Path::new(FILE), &no_env())
}

fn config(text: &str) -> Config {
    match parse(text) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Err(ConfigError::Invalid { problems }) => problems,
        Err(other) => panic!("expected Invalid, got {other}"),
        Ok(_) => panic!("expected an error for:\n{text}"),
    }
}

fn at(line: usize, column: usize) -> Option<Position> {
    Some(Position { line, column })
}

#[test]
fn an_empty_file_gives_every_default() {
    let c = config("");
    assert_eq!(c.file.as_deref(), Some(Path::new(FILE)));
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/dropdeploy"));
    assert_eq!(c.max_parallel, 4);
    assert_eq!(c.max_archive_bytes, 314_572_800);
    assert_eq!(c.scalingo.region.as_deref(), Some("osc-fr1"));
    assert_eq!(c.scalingo.api_url, "https://api.osc-fr1.scalingo.com");
    assert_eq!(c.scalingo.auth_url, "https://auth.scalingo.com");
    assert_eq!(c.scalingo.timeout, Duration::from_secs(30));
    assert_eq!(c.scalingo.follow_interval, Duration::from_secs(3));
    assert!(c.scalingo.token.is_none());
    assert!(c.scalingo.token_origin.is_none());
    assert_eq!(c.retry.initial, Duration::from_secs(2));
    assert_eq!(c.retry.max_delay, Duration::from_secs(300));
    assert_eq!(c.retry.budget, Duration::from_secs(3600));
    assert!(!c.retry.retry_aborted);
    assert!(c.apps.is_empty());
}

#[test]
fn no_file_gives_defaults_and_no_warnings() {
    let loaded = Config::from_env(&no_env()).unwrap();
    assert!(loaded.warnings.is_empty());
    assert!(loaded.config.file.is_none());
    assert_eq!(loaded.config.max_parallel, 4);
    assert_eq!(
        loaded.config.scalingo.api_url,
        "https://api.osc-fr1.scalingo.com"
    );
}

#[test]
fn an_app_gets_the_app_defaults() {
    let c = config("[[app]]\nname = \"my-app\"\ndrop_dir = \"/srv/drop\"\n");
    let app = c.app("my-app").unwrap();
    assert_eq!(app.queue, QueuePolicy::Latest);
    assert_eq!(app.debounce, Duration::from_secs(1));
    assert!(app.ignore.is_empty());
    assert_eq!(app.git_ref_label, None);
    assert_eq!(app.ref_label(), "my-app");
    assert!(c.app("other").is_none());
}

#[test]
fn every_key_is_read() {
    let c = config(
        r#"
state_dir = "/srv/state"
max_parallel = 2
max_archive_size = 1000

[scalingo]
region = "osc-secnum-fr1"
api_url = "http://127.0.0.1:8080/"
auth_url = "http://127.0.0.1:8081//"
timeout = "10s"
follow_interval = "500ms"

[retry]
initial = "1s"
max_delay = "2m"
budget = "3h"
retry_aborted = true

[[app]]
name = "prod-1"
drop_dir = "/srv/drop"
queue = "all"
git_ref_label = "Prod_1.x"

[[app]]
name = "staging"
source_dir = "/src/app"
debounce = "2s"
ignore = ["*.log", "tmp/"]
"#,
    );
    assert_eq!(c.state_dir, PathBuf::from("/srv/state"));
    assert_eq!(c.max_parallel, 2);
    assert_eq!(c.max_archive_bytes, 1000);
    assert_eq!(c.scalingo.region.as_deref(), Some("osc-secnum-fr1"));
    assert_eq!(c.scalingo.api_url, "http://127.0.0.1:8080");
    assert_eq!(c.scalingo.auth_url, "http://127.0.0.1:8081");
    assert_eq!(c.scalingo.timeout, Duration::from_secs(10));
    assert_eq!(c.scalingo.follow_interval, Duration::from_millis(500));
    assert_eq!(c.retry.initial, Duration::from_secs(1));
    assert_eq!(c.retry.max_delay, Duration::from_secs(120));
    assert_eq!(c.retry.budget, Duration::from_secs(3 * 3600));
    assert!(c.retry.retry_aborted);
    assert_eq!(c.apps.len(), 2);
    let prod = &c.apps[0];
    assert_eq!(prod.name, "prod-1");
    assert_eq!(prod.drop_dir, Some(PathBuf::from("/srv/drop")));
    assert_eq!(prod.source_dir, None);
    assert_eq!(prod.queue, QueuePolicy::All);
    assert_eq!(prod.ref_label(), "Prod_1.x");
    let staging = &c.apps[1];
    assert_eq!(staging.source_dir, Some(PathBuf::from("/src/app")));
    assert_eq!(staging.drop_dir, None);
    assert_eq!(staging.debounce, Duration::from_secs(2));
    assert_eq!(
        staging.ignore,
        vec!["*.log".to_string(), "tmp/".to_string()]
    );
}

#[test]
fn the_example_config_parses() {
    let packaged = include_str!("../../config/dropdeploy.toml");
    // As installed it deploys nothing: the example apps are commented out.
    let token = Env::from_pairs([("SCALINGO_API_TOKEN", "tk-us-example")]);
    let as_installed = Config::from_str(packaged, Path::new(FILE), &token).unwrap();
    assert!(
        as_installed.config.apps.is_empty(),
        "the packaged file has live apps"
    );
    // Its examples, uncommented as it says (`#` with no space after it), are valid.
    let uncommented: Vec<&str> = packaged
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_lowercase()) => rest,
            _ => l,
        })
        .collect();
    let text = &uncommented.join("\n");
    let c = Config::from_str(text, Path::new(FILE), &no_env())
        .map(|loaded| loaded.config)
        .or_else(|e| match e {
            // The example's token file does not exist here; everything else must be valid.
            ConfigError::Invalid { problems }
                if problems
                    .iter()
                    .all(|p| p.message.contains("cannot read token file")) =>
            {
                Config::from_str(
                    text,
                    Path::new(FILE),
                    &Env::from_pairs([("SCALINGO_API_TOKEN", "tk-us-example")]),
                )
                .map(|loaded| loaded.config)
            }
            other => Err(other),
        })
        .unwrap();
    assert_eq!(c.apps.len(), 2);
    assert!(c.app("my-app").unwrap().drop_dir.is_some());
    assert!(c.app("my-staging").unwrap().source_dir.is_some());
    assert!(
        !packaged.contains("\ntoken ="),
        "the example must not hold an inline token"
    );
}

#[test]
fn an_unknown_key_names_its_line_column_and_the_expected_keys() {
    let text = "max_parallel = 2\n\n[[app]]\nname = \"a\"\n    drop_dri = \"/x\"\n";
    let message = error(text);
    assert_eq!(
        message,
        "/etc/dropdeploy/dropdeploy.toml:5:5: unknown key `drop_dri` in [[app]]; did you mean \
         `drop_dir`?"
    );
    // Far from every key: the list of them.
    let text = "max_parallel = 2\n\n[[app]]\nname = \"a\"\ndrop_dir = \"/x\"\nzzz = 1\n";
    assert_eq!(
        error(text),
        "/etc/dropdeploy/dropdeploy.toml:6:1: unknown key `zzz` in [[app]]; expected one \
         of name, drop_dir, source_dir, queue, debounce, ignore, git_ref_label, settle, \
         keep_done, follow_interval, retry_budget, deploy_timeout, include, max_wait, poll, \
         deploy_on_start, target, releases_dir, activate, activate_timeout, keep_releases, \
         on_outcome, verify, region"
    );
}

#[test]
fn unknown_keys_are_all_reported_each_on_its_line() {
    let text = "stat_dir = \"/x\"\n[scalingo]\nregoin = \"osc-fr1\"\n[retry]\nbudjet = \"1h\"\n";
    let message = error(text);
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 3, "{message}");
    let top = "unknown key `stat_dir` at the top level; did you mean `state_dir`?";
    assert_eq!(lines[0], format!("{FILE}:1:1: {top}"));
    assert!(
        lines[1].starts_with(&format!("{FILE}:3:1: unknown key `regoin` in [scalingo]")),
        "{message}"
    );
    assert!(
        lines[2].starts_with(&format!("{FILE}:5:1: unknown key `budjet` in [retry]")),
        "{message}"
    );
}

#[test]
fn a_bad_duration_names_the_key_value_and_an_example() {
    let text = "[scalingo]\ntimeout = \"thirty\"\n";
    assert_eq!(
        error(text),
        format!(
            "{FILE}:2:11: invalid duration \"thirty\" for `timeout` in [scalingo]: expected a \
             number and a unit, e.g. \"30s\", \"5m\" or \"1h\""
        )
    );
}

#[test]
fn a_bare_number_as_duration_asks_for_a_unit() {
    let message = error("[retry]\ninitial = 2\n");
    assert!(
        message.starts_with(&format!("{FILE}:2:11: `initial` in [retry]: ")),
        "{message}"
    );
    assert!(message.contains("\"2s\""), "{message}");
}

#[test]
fn bad_durations_are_all_reported() {
    let problems = problems(
        "[retry]\ninitial = \"0s\"\nbudget = \"soon\"\n[[app]]\nname = \"a\"\ndrop_dir = \"/d\"\ndebounce = \"x\"\n",
    );
    let located: Vec<_> = problems.iter().map(|p| p.position).collect();
    assert_eq!(located, vec![at(2, 11), at(3, 10), at(7, 12)]);
    assert!(problems[0].message.contains("longer than zero"));
}

#[test]
fn a_type_error_names_the_key() {
    let message = error("[scalingo]\nregion = 5\n");
    assert_eq!(
        message,
        format!(
            "{FILE}:2:10: `region` in [scalingo]: expected a string in quotes, found the number 5"
        )
    );
}

#[test]
fn a_syntax_error_is_located() {
    let message = error("max_parallel = 4\nstate_dir = \n");
    assert!(message.starts_with(&format!("{FILE}:2:")), "{message}");
    assert!(message.contains("invalid TOML"), "{message}");
}

#[test]
fn app_written_as_a_single_table_is_explained() {
    let message = error("[app]\nname = \"a\"\n");
    assert!(
        message.starts_with(&format!("{FILE}:1:1: `app` must be an array of tables")),
        "{message}"
    );
}

const SECRET: &str = "tk-us-SuperSecretValue123";

fn assert_refused_without_echo(text: &str, line: usize, column: usize) {
    let message = error(text);
    assert!(!message.contains(SECRET), "the token leaked: {message}");
    assert!(
        !message.contains("SuperSecret"),
        "the token leaked: {message}"
    );
    assert!(
        message.starts_with(&format!("{FILE}:{line}:{column}: ")),
        "{message}"
    );
    assert!(
        message.contains("do not put the API token in the config file"),
        "{message}"
    );
    assert!(
        message.contains("token_file = \"/etc/dropdeploy/token\""),
        "{message}"
    );
    assert!(message.contains("chmod 600"), "{message}");
    assert!(message.contains("SCALINGO_API_TOKEN"), "{message}");
    assert_eq!(
        message.lines().count(),
        1,
        "the token error wins alone: {message}"
    );
}

#[test]
fn an_inline_token_is_refused_without_echoing_it() {
    assert_refused_without_echo(
        &format!("[scalingo]\nregion = \"osc-fr1\"\ntoken = \"{SECRET}\"\n"),
        3,
        1,
    );
    assert_refused_without_echo(&format!("token = \"{SECRET}\"\n"), 1, 1);
    assert_refused_without_echo(&format!("[scalingo]\n  api_token = '{SECRET}'\n"), 2, 3);
    assert_refused_without_echo(&format!("scalingo.token = \"{SECRET}\"\n"), 1, 10);
    assert!(
        error(&format!("[scalingo]\ntoken = \"{SECRET}\"\n")).contains("`token` in [scalingo]")
    );
}

#[test]
fn an_inline_token_wins_over_other_errors() {
    // Unquoted: a syntax error on the token's own line; plus an unknown key and a bad type.
    assert_refused_without_echo(
        &format!("bogus = 1\n[scalingo]\ntoken = {SECRET}\nregion = 5\n"),
        3,
        1,
    );
    // Unterminated string.
    assert_refused_without_echo(
        &format!("[scalingo]\ntoken = \"{SECRET}\nregion = \"x\"\n"),
        2,
        1,
    );
    // A token given with a wrong type would show up in a type error.
    assert_refused_without_echo(&format!("[scalingo]\ntoken = [\"{SECRET}\"]\n"), 2, 1);
    // In an app.
    assert_refused_without_echo(
        &format!("[[app]]\nname = \"a\"\ntoken = \"{SECRET}\"\n"),
        3,
        1,
    );
}

#[test]
fn the_lexical_scan_finds_a_token_in_a_file_too_broken_to_parse() {
    let text = format!("[scalingo\n  \"token\" = {SECRET}\n");
    let found = scan_inline_tokens(&text);
    assert_eq!(found.len(), 1);
    assert_eq!(
        position(&text, found[0].0.start),
        Position { line: 2, column: 3 }
    );
    assert_refused_without_echo(&text, 2, 3);
}

#[test]
fn each_environment_variable_overrides_the_file() {
    let text = "[scalingo]\nregion = \"osc-fr1\"\nauth_url = \"https://auth.example\"\n";
    let load = |pairs: &[(&str, &str)]| {
        Config::from_str(
            text,
            Path::new(FILE),
            &Env::from_pairs(pairs.iter().copied()),
        )
        .unwrap()
        .config
        .scalingo
    };

    let s = load(&[("SCALINGO_API_TOKEN", " tk-us-env \n")]);
    assert_eq!(s.token.as_ref().map(Secret::expose), Some("tk-us-env"));
    assert_eq!(s.token_origin.as_deref(), Some("$SCALINGO_API_TOKEN"));

    let s = load(&[("SCALINGO_API_URL", "http://localhost:9000/")]);
    assert_eq!(s.api_url, "http://localhost:9000");
    assert_eq!(s.region.as_deref(), Some("osc-fr1"), "the file named it");
    let env = Env::from_pairs([("SCALINGO_API_URL", "http://localhost:9000")]);
    assert_eq!(Config::from_env(&env).unwrap().config.scalingo.region, None);

    // Documented as a bare host (`https://$SCALINGO_API_URL/v1`): https.
    let s = load(&[("SCALINGO_API_URL", "api.osc-fr1.scalingo.com")]);
    assert_eq!(s.api_url, "https://api.osc-fr1.scalingo.com");
    let s = load(&[("SCALINGO_AUTH_URL", "auth.scalingo.com/")]);
    assert_eq!(s.auth_url, "https://auth.scalingo.com");

    let s = load(&[("SCALINGO_AUTH_URL", "http://localhost:9001")]);
    assert_eq!(s.auth_url, "http://localhost:9001");
    assert_eq!(load(&[]).auth_url, "https://auth.example");

    let s = load(&[("SCALINGO_REGION", "osc-secnum-fr1")]);
    assert_eq!(s.region.as_deref(), Some("osc-secnum-fr1"));
    assert_eq!(s.api_url, "https://api.osc-secnum-fr1.scalingo.com");

    // A blank variable does not override.
    let s = load(&[("SCALINGO_REGION", ""), ("SCALINGO_API_TOKEN", "  ")]);
    assert_eq!(s.api_url, "https://api.osc-fr1.scalingo.com");
    assert!(s.token.is_none());
}

#[test]
fn the_environment_applies_without_a_file() {
    let env = Env::from_pairs([
        ("SCALINGO_API_TOKEN", "tk-us-x"),
        ("SCALINGO_REGION", "osc-secnum-fr1"),
        ("SCALINGO_AUTH_URL", "https://auth.test/"),
    ]);
    let s = Config::from_env(&env).unwrap().config.scalingo;
    assert_eq!(s.api_url, "https://api.osc-secnum-fr1.scalingo.com");
    assert_eq!(s.auth_url, "https://auth.test");
    assert_eq!(s.require_token().map(Secret::expose).ok(), Some("tk-us-x"));
}

#[test]
fn bad_environment_values_name_the_variable() {
    let env = Env::from_pairs([
        ("SCALINGO_REGION", "OSC FR1"),
        ("SCALINGO_API_URL", "ftp://api.example"),
    ]);
    let message = Config::from_env(&env).unwrap_err().to_string();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 2, "{message}");
    assert!(
        lines[0].starts_with("$SCALINGO_REGION: invalid region \"OSC FR1\""),
        "{message}"
    );
    assert!(
        lines[1].starts_with(
            "$SCALINGO_API_URL: \"ftp://api.example\" is not an http:// or https:// URL"
        ),
        "{message}"
    );
}

#[test]
fn regions_map_to_api_urls() {
    let api = |region: &str| {
        config(&format!("[scalingo]\nregion = \"{region}\"\n"))
            .scalingo
            .api_url
    };
    assert_eq!(api("osc-fr1"), "https://api.osc-fr1.scalingo.com");
    assert_eq!(
        api("osc-secnum-fr1"),
        "https://api.osc-secnum-fr1.scalingo.com"
    );
    assert_eq!(api("osc-new2"), "https://api.osc-new2.scalingo.com");
    let message = error("[scalingo]\nregion = \"Paris 1\"\n");
    assert!(
        message.starts_with(&format!(
            "{FILE}:2:10: `region` in [scalingo]: invalid region \"Paris 1\""
        )),
        "{message}"
    );
}

#[test]
fn an_explicit_api_url_wins_over_the_region() {
    let c =
        config("[scalingo]\napi_url = \"https://api.example.com/\"\nregion = \"osc-secnum-fr1\"\n");
    assert_eq!(c.scalingo.api_url, "https://api.example.com");
    let c = config("[scalingo]\napi_url = \"https://api.example.com\"\n");
    assert_eq!(c.scalingo.region, None);
    // In the environment too, and the environment's region wins over the file's api_url.
    let text = "[scalingo]\napi_url = \"https://file.example\"\n";
    let with = |pairs: &[(&str, &str)]| {
        Config::from_str(
            text,
            Path::new(FILE),
            &Env::from_pairs(pairs.iter().copied()),
        )
        .unwrap()
        .config
        .scalingo
        .api_url
    };
    assert_eq!(
        with(&[("SCALINGO_REGION", "osc-fr1")]),
        "https://api.osc-fr1.scalingo.com"
    );
    assert_eq!(
        with(&[
            ("SCALINGO_REGION", "osc-fr1"),
            ("SCALINGO_API_URL", "http://env.example")
        ]),
        "http://env.example"
    );
}

#[test]
fn an_api_url_must_be_http() {
    let message = error("[scalingo]\napi_url = \"ftp://x\"\n");
    let expected = "`api_url` in [scalingo]: \"ftp://x\" is not an http:// or https:// URL";
    assert!(
        message.starts_with(&format!("{FILE}:2:11: {expected}")),
        "{message}"
    );
    assert!(error("[scalingo]\nauth_url = \"https://\"\n").contains("`auth_url` in [scalingo]"));
}

fn token_file(content: &str, mode: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, content).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = mode;
    dir
}

fn load_with_token_file(dir: &Path, env: &Env) -> Result<Loaded, ConfigError> {
    let text = format!(
        "[scalingo]\ntoken_file = \"{}\"\n",
        dir.join("token").display()
    );
    Config::from_str(&text, Path::new(FILE), env)
}

#[test]
fn a_private_token_file_is_read_and_trimmed() {
    let dir = token_file("  tk-us-file\n", 0o600);
    let loaded = load_with_token_file(dir.path(), &no_env()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let s = loaded.config.scalingo;
    assert_eq!(s.token.as_ref().map(Secret::expose), Some("tk-us-file"));
    let path = dir.path().join("token").display().to_string();
    assert_eq!(s.token_origin.as_deref(), Some(path.as_str()));
}

#[cfg(unix)]
#[test]
fn a_token_file_others_can_read_gives_a_warning() {
    let dir = token_file("tk-us-file\n", 0o644);
    let loaded = load_with_token_file(dir.path(), &no_env()).unwrap();
    let path = dir.path().join("token").display().to_string();
    assert_eq!(
        loaded.warnings,
        vec![format!(
            "token file {path} can be read by group or others (mode 0644); run `chmod 600 {path}`"
        )]
    );
    assert!(!loaded.warnings[0].contains("tk-us-file"));
    assert_eq!(
        loaded.config.scalingo.token.as_ref().map(Secret::expose),
        Some("tk-us-file")
    );
}

#[test]
fn the_environment_token_wins_over_the_token_file() {
    let dir = tempfile::tempdir().unwrap(); // no token file in it: it must not be read
    let env = Env::from_pairs([("SCALINGO_API_TOKEN", "tk-us-env")]);
    let s = load_with_token_file(dir.path(), &env)
        .unwrap()
        .config
        .scalingo;
    assert_eq!(s.token.as_ref().map(Secret::expose), Some("tk-us-env"));
    assert_eq!(s.token_origin.as_deref(), Some("$SCALINGO_API_TOKEN"));
}

#[test]
fn a_missing_token_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let message = load_with_token_file(dir.path(), &no_env())
        .unwrap_err()
        .to_string();
    let path = dir.path().join("token");
    assert_eq!(
        message,
        format!(
            "{FILE}:2:14: cannot read token file {}: No such file or directory",
            path.display()
        )
    );
}

#[test]
fn an_empty_token_file_is_an_error() {
    let dir = token_file(" \n", 0o600);
    let message = load_with_token_file(dir.path(), &no_env())
        .unwrap_err()
        .to_string();
    assert!(message.contains("is empty"), "{message}");
    assert!(
        message.contains(&dir.path().join("token").display().to_string()),
        "{message}"
    );
}

#[test]
fn no_token_is_an_error_only_when_one_is_required() {
    let c = config("");
    assert!(c.scalingo.token.is_none());
    assert_eq!(
        c.scalingo.require_token().unwrap_err().to_string(),
        format!(
            "no Scalingo API token: set SCALINGO_API_TOKEN or token_file in [scalingo] of {FILE}"
        )
    );
    let c = Config::from_env(&no_env()).unwrap().config;
    assert_eq!(
        c.scalingo.require_token().unwrap_err().to_string(),
        "no Scalingo API token: set SCALINGO_API_TOKEN or token_file in [scalingo] of a config file (--config FILE)"
    );
}

#[test]
fn a_duplicate_app_name_points_at_the_second() {
    let text =
        "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\n\n[[app]]\nname = \"a\"\ndrop_dir = \"/b\"\n";
    assert_eq!(
        error(text),
        format!("{FILE}:6:8: app `a` is declared twice (first at line 2)")
    );
}

#[test]
fn an_app_takes_exactly_one_source() {
    let both = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\nsource_dir = \"/src\"\n";
    let message = error(both);
    assert!(
        message.starts_with(&format!(
            "{FILE}:4:14: app `a` has both drop_dir and source_dir"
        )),
        "{message}"
    );
    let neither = "max_parallel = 1\n[[app]]\nname = \"a\"\n";
    let message = error(neither);
    assert!(
        message.starts_with(&format!(
            "{FILE}:2:1: app `a` has neither drop_dir nor source_dir"
        )),
        "{message}"
    );
    let nameless = "[[app]]\ndrop_dir = \"/a\"\n";
    assert!(error(nameless).starts_with(&format!("{FILE}:1:1: this [[app]] has no `name`")));
}

#[test]
fn two_apps_cannot_share_a_drop_dir() {
    let text =
        "[[app]]\nname = \"a\"\ndrop_dir = \"/d\"\n[[app]]\nname = \"b\"\ndrop_dir = \"/d\"\n";
    assert!(error(text).starts_with(&format!(
        "{FILE}:6:12: drop_dir /d is already the drop folder of app `a`"
    )));
}

#[test]
fn semantic_errors_are_all_reported_with_positions() {
    let text = r#"max_parallel = 0
[scalingo]
region = "FR"
[[app]]
name = "My_App"
drop_dir = "/a"
queue = "sometimes"
git_ref_label = "-x"
"#;
    let problems = problems(text);
    let located: Vec<_> = problems.iter().map(|p| p.position).collect();
    assert_eq!(
        located,
        vec![at(1, 16), at(3, 10), at(5, 8), at(7, 9), at(8, 17)],
        "{problems:#?}"
    );
    assert!(
        problems[0]
            .message
            .contains("`max_parallel` must be at least 1")
    );
    assert!(problems[2].message.contains("invalid app name \"My_App\""));
    assert!(
        problems[3]
            .message
            .contains("must be \"latest\" or \"all\"")
    );
    assert!(problems[4].message.contains("invalid git_ref_label \"-x\""));
    let message = ConfigError::Invalid { problems }.to_string();
    assert_eq!(message.lines().count(), 5);
}

#[test]
fn relative_paths_are_normalized() {
    assert_eq!(
        resolve(Path::new("/srv/app/config"), "../var/./drop"),
        PathBuf::from("/srv/app/var/drop")
    );
    assert_eq!(
        resolve(Path::new("/etc"), "/abs/x"),
        PathBuf::from("/abs/x")
    );
}

#[test]
fn git_ref_labels() {
    assert!(is_git_ref_label("my-app_2.0"));
    assert!(!is_git_ref_label("-x"));
    assert!(!is_git_ref_label(".x"));
    assert!(!is_git_ref_label("a/b"));
    assert!(!is_git_ref_label(""));
    assert!(!is_git_ref_label(&"a".repeat(MAX_GIT_REF_LABEL + 1)));
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let text = r#"state_dir = "state"
[scalingo]
token_file = "token"
[[app]]
name = "a"
drop_dir = "drops/a"
[[app]]
name = "b"
source_dir = "../src/b"
"#;
    let dir = token_file("tk-us-rel", 0o600);
    let origin = dir.path().join("dropdeploy.toml");
    let c = Config::from_str(text, &origin, &no_env()).unwrap().config;
    assert_eq!(c.state_dir, dir.path().join("state"));
    assert_eq!(
        c.app("a").unwrap().drop_dir,
        Some(dir.path().join("drops/a"))
    );
    assert_eq!(
        c.app("b").unwrap().source_dir,
        Some(dir.path().parent().unwrap().join("src/b"))
    );
    assert_eq!(
        c.scalingo.token.as_ref().map(Secret::expose),
        Some("tk-us-rel")
    );
    // Absolute paths stay as they are.
    assert_eq!(
        config("state_dir = \"/abs\"").state_dir,
        PathBuf::from("/abs")
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let message = Config::load(&path, &no_env()).unwrap_err().to_string();
    assert_eq!(
        message,
        format!(
            "cannot read config file {}: No such file or directory",
            path.display()
        )
    );
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dropdeploy.toml");
    std::fs::write(&path, "max_parallel = 7\n").unwrap();
    let c = Config::load(&path, &no_env()).unwrap().config;
    assert_eq!(c.max_parallel, 7);
    assert_eq!(c.file, Some(path));
}

#[test]
fn secrets_never_print() {
    let secret = Secret::new("tk-us-hidden");
    assert_eq!(format!("{secret}"), "[redacted]");
    assert_eq!(format!("{secret:?}"), "Secret([redacted])");
    assert_eq!(secret.expose(), "tk-us-hidden");
    let env = Env::from_pairs([("SCALINGO_API_TOKEN", "tk-us-hidden")]);
    let loaded = Config::from_env(&env).unwrap();
    let debug = format!("{loaded:?} {env:?}");
    assert!(!debug.contains("tk-us-hidden"), "{debug}");
    assert!(debug.contains("SCALINGO_API_TOKEN"), "{debug}");
}

#[test]
fn positions_count_characters_from_one() {
    let text = "a = \"é\"\nbé = 1";
    assert_eq!(position(text, 0), Position { line: 1, column: 1 });
    assert_eq!(
        position(text, text.find("= 1").unwrap()),
        Position { line: 2, column: 4 }
    );
    assert_eq!(
        position(text, text.len() + 10),
        Position { line: 2, column: 7 }
    );
}

/// A `$CREDENTIALS_DIRECTORY` as systemd makes it, holding `scalingo-token` when given.
fn credentials(token: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(token) = token {
        std::fs::write(dir.path().join("scalingo-token"), token).unwrap();
    }
    dir
}

#[test]
fn the_systemd_credential_wins_over_the_environment_and_the_token_file() {
    let creds = credentials(Some("tk-us-credential\n"));
    let files = token_file("tk-us-file", 0o600);
    let env = Env::from_pairs([
        ("SCALINGO_API_TOKEN", "tk-us-env"),
        ("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap()),
    ]);
    let loaded = load_with_token_file(files.path(), &env).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let s = loaded.config.scalingo;
    assert_eq!(
        s.token.as_ref().map(Secret::expose),
        Some("tk-us-credential")
    );
    assert_eq!(
        s.token_origin.as_deref(),
        Some("systemd credential scalingo-token")
    );
    // Without a config file too.
    let s = Config::from_env(&env).unwrap().config.scalingo;
    assert_eq!(
        s.require_token().map(Secret::expose).ok(),
        Some("tk-us-credential")
    );
}

#[test]
fn the_token_file_is_not_read_when_the_credential_exists() {
    let creds = credentials(Some("tk-us-credential"));
    let empty = tempfile::tempdir().unwrap(); // no token file: reading it would fail
    let env = Env::from_pairs([("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())]);
    let s = load_with_token_file(empty.path(), &env)
        .unwrap()
        .config
        .scalingo;
    assert_eq!(
        s.token.as_ref().map(Secret::expose),
        Some("tk-us-credential")
    );
}

#[test]
fn without_the_credential_file_the_usual_order_applies() {
    // A credentials directory without scalingo-token (the unit loads other credentials).
    let creds = credentials(None);
    let dir = creds.path().to_str().unwrap();
    let env = Env::from_pairs([
        ("SCALINGO_API_TOKEN", "tk-us-env"),
        ("CREDENTIALS_DIRECTORY", dir),
    ]);
    let s = Config::from_env(&env).unwrap().config.scalingo;
    assert_eq!(s.token_origin.as_deref(), Some("$SCALINGO_API_TOKEN"));

    let files = token_file("tk-us-file", 0o600);
    let env = Env::from_pairs([("CREDENTIALS_DIRECTORY", dir)]);
    let s = load_with_token_file(files.path(), &env)
        .unwrap()
        .config
        .scalingo;
    assert_eq!(s.token.as_ref().map(Secret::expose), Some("tk-us-file"));

    let s = Config::from_env(&env).unwrap().config.scalingo;
    assert!(s.token.is_none());
}

#[test]
fn an_empty_credential_is_an_error_naming_the_variable() {
    let creds = credentials(Some(" \n"));
    let env = Env::from_pairs([
        ("SCALINGO_API_TOKEN", "tk-us-env"),
        ("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap()),
    ]);
    let message = Config::from_env(&env).unwrap_err().to_string();
    let path = creds.path().join("scalingo-token");
    assert_eq!(
        message,
        format!(
            "$CREDENTIALS_DIRECTORY: token file {} is empty; write the Scalingo API token in it",
            path.display()
        )
    );
}

#[test]
fn credentials_directory_is_read_from_the_process() {
    assert!(ENV_VARS.contains(&"CREDENTIALS_DIRECTORY"));
}

#[test]
fn the_old_name_quiet_still_sets_debounce_with_one_warning_naming_its_line() {
    let text = "[[app]]\nname = \"a\"\nsource_dir = \"/src\"\nquiet = \"3s\"\n";
    let loaded = match parse(text) {
        Ok(loaded) => loaded,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    };
    assert_eq!(loaded.config.apps[0].debounce, Duration::from_secs(3));
    assert_eq!(
        loaded.warnings,
        vec![format!(
            "{FILE}:4: `quiet` in [[app]] is now called `debounce`; rename it (`quiet` still works)"
        )]
    );
}

#[test]
fn debounce_gives_no_warning() {
    let text = "[[app]]\nname = \"a\"\nsource_dir = \"/src\"\ndebounce = \"250ms\"\n";
    let loaded = match parse(text) {
        Ok(loaded) => loaded,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    };
    assert_eq!(loaded.config.apps[0].debounce, Duration::from_millis(250));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn quiet_and_debounce_together_are_refused() {
    let text = "[[app]]\nname = \"a\"\nsource_dir = \"/src\"\ndebounce = \"1s\"\nquiet = \"2s\"\n";
    let message = error(text);
    assert!(
        message.starts_with(&format!("{FILE}:5:9: `quiet` and `debounce`")),
        "{message}"
    );
}

#[test]
fn a_verify_table_is_typed_with_its_defaults() {
    let text = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\nverify = { url = \"https://a.example/up\", soak = \"0s\", attempts = 2 }\n";
    let c = config(text);
    let v = c.app("a").unwrap().verify.clone().unwrap();
    assert_eq!(v.url, "https://a.example/up");
    assert_eq!((v.expect, v.attempts), (200, 2));
    assert_eq!(v.soak, std::time::Duration::ZERO);
    assert_eq!(v.warmup, std::time::Duration::from_secs(10));
    assert!(v.rollback);
}

#[test]
fn a_bad_verify_table_is_reported_key_by_key() {
    let text = "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\nverify = { url = \"ftp://x\", expect = 99, interval = \"soon\" }\n";
    let message = error(text);
    assert!(
        message.contains("must start with http:// or https://"),
        "{message}"
    );
    assert!(
        message.contains("`expect` in `verify` must be an HTTP status"),
        "{message}"
    );
    assert!(
        message.contains("invalid duration \"soon\" for `interval` in verify of [[app]]"),
        "{message}"
    );
    let message =
        error("[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\nverify = { urll = \"https://x\" }\n");
    assert!(message.contains("unknown key `urll`"), "{message}");
    let message = error("[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\nverify = { soak = \"1s\" }\n");
    assert!(message.contains("`verify` needs a `url`"), "{message}");
}

#[test]
fn an_app_may_name_its_region_and_the_api_budget_is_a_number_of_requests() {
    let c = config(
        "[scalingo]\napi_rate_limit = 30\n\n[[app]]\nname = \"a\"\ndrop_dir = \"/srv/a\"\nregion = \"osc-secnum-fr1\"\n",
    );
    assert_eq!(c.scalingo.api_rate_limit, 30);
    assert_eq!(c.apps[0].region.as_deref(), Some("osc-secnum-fr1"));
    assert_eq!(config("").scalingo.api_rate_limit, 60);
    let message = error("[scalingo]\napi_rate_limit = 0\n");
    assert!(
        message.contains("2:18: `api_rate_limit` in [scalingo]"),
        "{message}"
    );
    let message = error("[[app]]\nname = \"a\"\ndrop_dir = \"/srv/a\"\nregion = \"Paris 1\"\n");
    assert!(
        message.contains("`region` in [[app]]: invalid region"),
        "{message}"
    );
}

#[test]
fn a_check_may_be_a_path_on_the_apps_url_but_not_for_local_releases() {
    let c = config("[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\nverify = { url = \"/up\" }\n");
    assert_eq!(c.app("a").unwrap().verify.as_ref().unwrap().url, "/up");
    let message = error(
        "[[app]]\nname = \"a\"\ndrop_dir = \"/a\"\ntarget = \"local\"\nreleases_dir = \"/r\"\nverify = { url = \"/up\" }\n",
    );
    assert!(
        message.contains("6:10: `url` in `verify` is a path (\"/up\")"),
        "{message}"
    );
}

#[test]
fn intake_takes_a_token_file_relative_to_the_config_and_nothing_inline() {
    let c = config("[intake]\ntoken_file = \"intake-tokens\"\n");
    assert_eq!(
        c.intake.token_file.as_deref(),
        Some(Path::new("/etc/dropdeploy/intake-tokens"))
    );
    assert_eq!(config("").intake.token_file, None);
    let message = error("[intake]\ntokne_file = \"x\"\n");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("2:1: unknown key `tokne_file` in [intake]; did you mean `token_file`?"),
        "{message}"
    );
    let message = error("[intake]\ntoken = \"secret-intake-value\"\n");
    assert!(!message.contains("secret-intake-value"), "{message}");
}

#[test]
fn intake_listens_on_loopback_and_elsewhere_only_when_plain_http_is_accepted() {
    let c = config("[intake]\nlisten = \"127.0.0.1:8473\"\n");
    assert_eq!(c.intake.listen, Some("127.0.0.1:8473".parse().unwrap()));
    assert_eq!(config("").intake.listen, None);
    let message = error("[intake]\nlisten = \"0.0.0.0:8473\"\n");
    assert!(
        message.contains("insecure_plain_http") && message.contains("0.0.0.0:8473"),
        "{message}"
    );
    let c = config("[intake]\nlisten = \"0.0.0.0:8473\"\ninsecure_plain_http = true\n");
    assert_eq!(c.intake.listen, Some("0.0.0.0:8473".parse().unwrap()));
    let message = error("[intake]\nlisten = \"localhost\"\n");
    assert!(message.contains("`listen` in [intake]"), "{message}");
}

#[test]
fn intake_tls_takes_both_files_and_then_any_address() {
    let c = config(
        "[intake]\nlisten = \"0.0.0.0:8473\"\ntls_cert = \"intake.pem\"\ntls_key = \"intake.key\"\n",
    );
    assert_eq!(
        c.intake.tls,
        Some((
            PathBuf::from("/etc/dropdeploy/intake.pem"),
            PathBuf::from("/etc/dropdeploy/intake.key")
        ))
    );
    assert!(c.intake.listen.is_some());
    let message = error("[intake]\nlisten = \"127.0.0.1:1\"\ntls_cert = \"intake.pem\"\n");
    assert!(message.contains("both `tls_cert`"), "{message}");
}

#[test]
fn without_cluster_there_is_no_fleet_mode() {
    assert!(config("").cluster.is_none());
    assert!(
        Config::from_env(&no_env())
            .unwrap()
            .config
            .cluster
            .is_none()
    );
}

#[test]
fn a_cluster_table_is_typed_with_its_defaults() {
    let c = config("[cluster]\ndatabase_url = \"postgres://dd:pw@db/dd\"\n");
    let cluster = c.cluster.unwrap();
    assert_eq!(
        cluster.database_url.as_ref().map(Secret::expose),
        Some("postgres://dd:pw@db/dd")
    );
    assert_eq!(cluster.lease, DEFAULT_LEASE);
    assert_eq!(cluster.poll, DEFAULT_POLL);
    assert!(!cluster.node.is_empty(), "the host name by default");
    assert!(
        !format!("{cluster:?}").contains("pw@"),
        "the URL is a secret"
    );

    let c = config(
        "[cluster]\ndatabase_url = \"postgresql://db/dd\"\nnode = \"web-1\"\nlease = \"6s\"\n\
         poll = \"500ms\"\n",
    );
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.node, "web-1");
    assert_eq!(cluster.lease, Duration::from_secs(6));
    assert_eq!(cluster.poll, Duration::from_millis(500));
}

#[test]
fn the_environment_database_url_wins_and_alone_turns_fleet_mode_on() {
    let env = Env::from_pairs([(ENV_DATABASE_URL, "postgres://env@db/dd")]);
    let text = "[cluster]\ndatabase_url = \"postgres://file@db/dd\"\nnode = \"a\"\n";
    let c = Config::from_str(text, Path::new(FILE), &env)
        .unwrap()
        .config;
    let cluster = c.cluster.unwrap();
    assert_eq!(
        cluster.database_url.unwrap().expose(),
        "postgres://env@db/dd"
    );
    assert_eq!(cluster.node, "a");

    let c = Config::from_env(&env).unwrap().config.cluster.unwrap();
    assert_eq!(c.database_url.unwrap().expose(), "postgres://env@db/dd");
    assert_eq!((c.lease, c.poll), (DEFAULT_LEASE, DEFAULT_POLL));

    let bad = Env::from_pairs([(ENV_DATABASE_URL, "mysql://secret-pw@db")]);
    let message = Config::from_env(&bad).unwrap_err().to_string();
    assert!(
        message.starts_with("$DROPDEPLOY_DATABASE_URL: not a PostgreSQL URL"),
        "{message}"
    );
    assert!(!message.contains("secret-pw"), "{message}");
}

#[test]
fn the_database_url_file_is_read_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db-url"), "postgres://dd@db/dd\n").unwrap();
    let file = dir.path().join("dropdeploy.toml");
    let text = "[cluster]\ndatabase_url_file = \"db-url\"\n";
    let c = Config::from_str(text, &file, &no_env()).unwrap().config;
    let url = c.cluster.unwrap().database_url.unwrap();
    assert_eq!(url.expose(), "postgres://dd@db/dd");

    let text = "[cluster]\ndatabase_url_file = \"missing\"\n";
    let message = Config::from_str(text, &file, &no_env())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(":2:21: cannot read database_url_file"),
        "{message}"
    );
}

#[test]
fn cluster_problems_are_located_and_never_quote_the_url() {
    let text = "[cluster]\ndatabase_url = \"mysql://u:hunter2@db\"\nlease = \"2s\"\n\
                poll = \"soon\"\nnode = \"web 1\"\nleese = \"5s\"\n";
    let found = problems(text);
    let positions: Vec<_> = found.iter().map(|p| p.position).collect();
    assert_eq!(
        positions,
        vec![at(2, 16), at(3, 9), at(4, 8), at(5, 8), at(6, 1)],
        "{found:?}"
    );
    let message = error(text);
    assert!(
        message.contains("`lease` in [cluster] must be at least 3s"),
        "{message}"
    );
    assert!(
        message.contains("invalid duration \"soon\" for `poll`"),
        "{message}"
    );
    assert!(
        message.contains("\"web 1\" is not a node name"),
        "{message}"
    );
    assert!(message.contains("unknown key `leese` in [cluster]; did you mean `lease`?"));
    assert!(!message.contains("hunter2"), "{message}");

    let message = error("[cluster]\nnode = \"a\"\n");
    assert!(
        message.contains("[cluster] needs the fleet's database"),
        "{message}"
    );
    let message =
        error("[cluster]\ndatabase_url = \"postgres://db\"\nlease = \"5s\"\npoll = \"5s\"\n");
    assert!(message.contains(":4:8: `poll` in [cluster]"), "{message}");
    assert!(
        message.contains("must be shorter than `lease`"),
        "{message}"
    );
    let message = error("[cluster]\ndatabase_url = \"postgres://db\"\ndatabase_url_file = \"f\"\n");
    assert!(
        message.contains(":3:21: [cluster] takes `database_url` or"),
        "{message}"
    );
}
