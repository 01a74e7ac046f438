//! The commands that only look: `history`, `status`, `config check`.

use super::*;

/// The state directory of `history`, `status` and `jobs`: `--state-dir` (or
/// DROPDEPLOY_STATE_DIR) as for `deploy` and `watch`; else the config's (`--config`, else the
/// service's default file); without any configuration file, the one where `deploy` and `watch`
/// keep their jobs and history for a user without a configuration.
pub(super) fn state_dir_for_reading(
    cli: &Cli,
    flag: Option<&PathBuf>,
) -> Result<(Config, PathBuf), u8> {
    let (config, dir) = configured_state_dir(cli)?;
    Ok((config, flag.cloned().unwrap_or(dir)))
}

fn configured_state_dir(cli: &Cli) -> Result<(Config, PathBuf), u8> {
    let env = Env::from_process();
    let path = config_path(cli);
    if cli.config.is_none() && !path.exists() {
        return match Config::from_env(&env) {
            Ok(Loaded { config, .. }) => Ok((config, default_user_state_dir())),
            Err(e) => {
                eprintln!("dropdeploy: {e}");
                Err(EXIT_USAGE)
            }
        };
    }
    match Config::load(&path, &env) {
        Ok(Loaded { config, .. }) => {
            let dir = config.state_dir.clone();
            Ok((config, dir))
        }
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            Err(EXIT_USAGE)
        }
    }
}

pub(super) fn history(
    cli: &Cli,
    flag: Option<&PathBuf>,
    app: Option<&str>,
    limit: usize,
    json: bool,
) -> u8 {
    let (config, state_dir) = match state_dir_for_reading(cli, flag) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if let Some(code) = super::fleet::history_command(&config, app, limit, json) {
        return code;
    }
    let path = state_dir.join("history.jsonl");
    match crate::outcome::read_history(&path, app, Some(limit)) {
        Ok(entries) => {
            if json {
                for e in &entries {
                    match serde_json::to_string(e) {
                        Ok(line) => println!("{line}"),
                        Err(err) => eprintln!("dropdeploy: {err}"),
                    }
                }
            } else if entries.is_empty() {
                println!("no finished jobs in {}", path.display());
            } else {
                print!("{}", crate::outcome::format_history_table(&entries));
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            EXIT_FAILED
        }
    }
}

pub(super) fn status(cli: &Cli, flag: Option<&PathBuf>, json: bool) -> u8 {
    let (config, state_dir) = match state_dir_for_reading(cli, flag) {
        Ok(x) => x,
        Err(code) => return code,
    };
    if let Some(code) = super::fleet::status_command(&config, &state_dir, json) {
        return code;
    }
    let spool = match Spool::open(state_dir.join("spool")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            return EXIT_FAILED;
        }
    };
    let apps: Vec<String> = config.apps.iter().map(|a| a.name.clone()).collect();
    let live = crate::live::read(&state_dir);
    let history = state_dir.join("history.jsonl");
    let pid = crate::lock::StateLock::holder(&state_dir);
    let shown = if json {
        crate::outcome::status_json(&spool, &history, &apps, live.as_ref(), pid)
            .map(|doc| format!("{doc}\n"))
    } else {
        crate::outcome::status_report(&spool, &history, &apps, live.as_ref()).map(|text| {
            let daemon = match pid {
                Some(pid) => format!("daemon: running (pid {pid})"),
                None => "daemon: not running".to_string(),
            };
            format!("{daemon}\n{text}")
        })
    };
    match shown {
        Ok(text) => {
            print!("{text}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("dropdeploy: {e}");
            EXIT_FAILED
        }
    }
}

pub(super) fn config_check(path: PathBuf) -> u8 {
    let loaded = match Config::load(&path, &Env::from_process()) {
        Ok(l) => l,
        Err(e) => {
            println!("{e}");
            return EXIT_USAGE;
        }
    };
    // What `run` would refuse at start, in its own words.
    let problems = crate::daemon::check_environment(&loaded.config);
    if !problems.is_empty() {
        println!(
            "{}: the file is valid, but `dropdeploy run` would refuse to start (checked as uid {}):",
            path.display(),
            rustix::process::getuid().as_raw()
        );
        for problem in &problems {
            println!("  {problem}");
        }
        return EXIT_USAGE;
    }
    if super::quiet() {
        // Errors only: the warnings, not the description.
        for w in &loaded.warnings {
            eprintln!("{}: warning: {w}", path.display());
        }
    } else {
        print!("{}", describe_config(&path, &loaded));
    }
    EXIT_OK
}

/// What a valid configuration will do, in a few lines a person can check.
pub fn describe_config(path: &std::path::Path, loaded: &Loaded) -> String {
    use crate::config::TargetConfig;
    use std::fmt::Write;
    let c = &loaded.config;
    let mut out = String::new();
    // Warnings first, so that "valid" reads as the verdict on all of them.
    for w in &loaded.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let _ = writeln!(out, "{}: valid", path.display());
    let _ = writeln!(
        out,
        "state_dir {} (spool/, history.jsonl); at most {} apps deploying at once",
        c.state_dir.display(),
        c.max_parallel
    );
    let scalingo_apps = c
        .apps
        .iter()
        .filter(|a| a.target == TargetConfig::Scalingo)
        .count();
    if scalingo_apps > 0 {
        let token = match (&c.scalingo.token, &c.scalingo.token_origin) {
            (Some(_), Some(origin)) => format!("token from {origin}"),
            (Some(_), None) => "token set".to_string(),
            (None, _) => "NO TOKEN: set SCALINGO_API_TOKEN or token_file".to_string(),
        };
        let _ = writeln!(out, "Scalingo API {} ({token})", c.scalingo.api_url);
    }
    if c.apps.is_empty() {
        let _ = writeln!(out, "no [[app]]: the daemon would watch nothing");
    }
    for app in &c.apps {
        describe_app(&mut out, app);
    }
    out
}

/// One app's lines in `config check`: where its work comes from, where it goes, and its check.
fn describe_app(out: &mut String, app: &crate::config::AppConfig) {
    use crate::config::TargetConfig;
    use std::fmt::Write;
    let from = match (&app.drop_dir, &app.source_dir) {
        (Some(dir), _) => format!(
            "archives dropped in {} (settle {}, keep {} in done/)",
            dir.display(),
            humantime::format_duration(app.settle),
            app.keep_done
        ),
        (None, Some(dir)) => format!(
            "source directory {} packed after {} without change (debounce; max wait {}){}",
            dir.display(),
            humantime::format_duration(app.debounce),
            humantime::format_duration(app.max_wait),
            if app.deploy_on_start {
                ", deployed at start if changed"
            } else {
                ""
            }
        ),
        (None, None) => "nothing".to_string(),
    };
    let to = match &app.target {
        TargetConfig::Scalingo => match &app.region {
            Some(region) => format!("Scalingo app {} in region {region}", app.name),
            None => format!("Scalingo app {}", app.name),
        },
        TargetConfig::Local(l) => format!(
            "local releases in {} (keep {}{})",
            l.releases_dir.join(&app.name).display(),
            l.keep_releases,
            if l.activate.is_empty() {
                String::new()
            } else {
                format!(", then run {:?}", l.activate)
            }
        ),
    };
    let policy = match app.queue {
        crate::config::QueuePolicy::Latest => "latest",
        crate::config::QueuePolicy::All => "all",
    };
    let _ = writeln!(out, "app {}: {from} → {to}; queue {policy}", app.name);
    if let Some(v) = &app.verify {
        let d = humantime::format_duration;
        let _ = writeln!(
            out,
            "  then checked: GET {} expecting {}{} (warmup {}, {} attempts every {}, timeout {}, soak {}); {}",
            crate::config::redact_url(&v.url),
            v.expect,
            v.contains
                .as_ref()
                .map(|c| format!(" with \"{c}\""))
                .unwrap_or_default(),
            d(v.warmup),
            v.attempts,
            d(v.interval),
            d(v.timeout),
            d(v.soak),
            if v.rollback {
                "an unhealthy deployment is rolled back once to the last verified archive"
            } else {
                "no automatic rollback"
            }
        );
    }
}
