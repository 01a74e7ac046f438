//! The command line's habits: `--color` and NO_COLOR, `-q`/`-v` against RUST_LOG, shell
//! completions and the man page, SCALINGO_APP and `--region`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{self, Proc, World, wait_for};

const LONG: Duration = Duration::from_secs(30);
const ESC: char = '\u{1b}';

/// Runs the daemon with `flags` and `env` until one dropped archive is deployed, stops it with
/// SIGTERM, and returns what it logged.
fn daemon_log(flags: &[&str], env: &[(&str, &str)]) -> String {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let mut args = flags.to_vec();
    args.push("run");
    let stderr = std::fs::File::create(world.path("d.stderr")).unwrap();
    let mut cmd = world.command(&args);
    cmd.envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut daemon = Proc(cmd.spawn().unwrap());
    world.drop_archive(&drop, "release.tar.gz");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded", "{history:?}");
    daemon.signal("TERM");
    assert!(daemon.wait_exit(LONG).success(), "{}", world.log("d"));
    world.log("d")
}

#[test]
fn color_always_colours_the_logs_even_off_a_terminal_and_despite_no_color() {
    let log = daemon_log(&["--color", "always"], &[("NO_COLOR", "1")]);
    assert!(log.contains(ESC), "no ANSI escape in:\n{log}");
}

#[test]
fn color_never_writes_no_escape() {
    let log = daemon_log(&["--color", "never"], &[]);
    assert!(log.contains("dropdeploy is running"), "{log}");
    assert!(!log.contains(ESC), "an ANSI escape in:\n{log}");
}

#[test]
fn quiet_hides_the_info_lines() {
    let log = daemon_log(&["-q"], &[]);
    assert!(!log.contains("INFO"), "{log}");
    assert!(!log.contains("dropdeploy is running"), "{log}");
}

#[test]
fn verbose_twice_shows_debug_lines() {
    let log = daemon_log(&["-vv"], &[]);
    assert!(log.contains("DEBUG"), "{log}");
}

#[test]
fn rust_log_wins_over_quiet() {
    let log = daemon_log(&["-q"], &[("RUST_LOG", "info")]);
    assert!(log.contains("dropdeploy is running"), "{log}");
}

/// NO_COLOR on a real terminal: the daemon runs under `script`, which gives it a pty.
#[test]
fn no_color_turns_colour_off_on_a_terminal() {
    let with = |no_color: &str| {
        let world = World::new();
        world.add_drop_app("my-app", "");
        let typescript = world.path("pty.log");
        let line = format!(
            "exec env NO_COLOR={no_color} {} --config {} run",
            env!("CARGO_BIN_EXE_dropdeploy"),
            world.config.display()
        );
        let mut script = world.command(&[]);
        // Only the environment of `world.command`: the program is `script`.
        let envs: Vec<_> = script
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
            .collect();
        script = Command::new("script");
        for (k, v) in envs {
            match v {
                Some(v) => script.env(k, v),
                None => script.env_remove(k),
            };
        }
        script
            .args(["-qfec", &line])
            .arg(&typescript)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut child = Proc(script.spawn().unwrap());
        let read = || std::fs::read_to_string(&typescript).unwrap_or_default();
        assert!(
            wait_for(LONG, || read().contains("dropdeploy is running")),
            "{}",
            read()
        );
        // The daemon is `script`'s only child.
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.0.id())).unwrap();
        let pid = children.split_whitespace().next().unwrap();
        assert!(
            Command::new("kill")
                .args(["-TERM", pid])
                .status()
                .unwrap()
                .success()
        );
        child.wait_exit(LONG);
        let log = read();
        support::assert_no_secret(&log, &world.fake.api_token());
        log
    };
    let coloured = with("");
    assert!(
        coloured.contains(ESC),
        "no colour on a terminal:\n{coloured}"
    );
    let plain = with("1");
    assert!(plain.contains("dropdeploy is running"), "{plain}");
    assert!(
        !plain.contains(ESC),
        "an ANSI escape with NO_COLOR:\n{plain}"
    );
}

#[test]
fn completion_scripts_name_the_subcommands() {
    let world = World::new();
    for shell in ["bash", "zsh", "fish"] {
        let run = world.run(&["completions", shell]);
        run.assert_code(0);
        for name in ["deploy", "watch", "status", "completions"] {
            assert!(
                run.stdout.contains(name),
                "{shell}: no {name}:\n{}",
                run.stdout
            );
        }
    }
}

#[test]
fn the_man_page_is_roff_and_names_the_subcommands() {
    let world = World::new();
    let run = world.run(&["manpage"]);
    run.assert_code(0);
    assert!(run.stdout.contains(".TH dropdeploy 1"), "{}", run.stdout);
    for name in ["deploy", "watch", "status", "completions"] {
        assert!(run.stdout.contains(name), "no {name}:\n{}", run.stdout);
    }
}

#[test]
fn scalingo_app_fills_the_app() {
    let world = World::new();
    world.fake.add_app("env-app");
    let archive = world.archive("a.tar.gz");
    let out = world
        .command(&["deploy", archive.to_str().unwrap()])
        .env("SCALINGO_APP", "env-app")
        .output()
        .unwrap();
    support::Run::from_output(out, &world.fake.api_token())
        .assert_code(0)
        .assert_contains("env-app: success");
    assert_eq!(world.fake.deployments("env-app").len(), 1);
}

#[test]
fn deploy_accepts_a_region_and_checks_it() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    let file = archive.to_str().unwrap();
    // SCALINGO_API_URL (the fake) wins over the region's URL, as in Scalingo's CLI.
    world
        .run(&["deploy", "--region", "osc-secnum-fr1", "-a", "my-app", file])
        .assert_code(0);
    world
        .run(&["deploy", "--region", "Not A Region", "-a", "my-app", file])
        .assert_code(2)
        .assert_contains("region");
}

#[test]
fn help_shows_the_new_flags() {
    let world = World::new();
    let run = world.run(&["--help"]);
    for flag in ["--color <WHEN>", "--verbose", "-q"] {
        run.assert_contains(flag);
    }
    world
        .run(&["deploy", "--help"])
        .assert_contains("--region")
        .assert_contains("SCALINGO_APP")
        .assert_contains("SCALINGO_REGION");
}
