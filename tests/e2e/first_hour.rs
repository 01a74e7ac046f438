//! What a new user meets in the first hour (issue 23): `-q`, `pack`, help and names, units and
//! wording, as the real binary prints them.

use std::process::Stdio;
use std::time::Duration;

use sha2::Digest;

use crate::support::{Proc, Run, World, wait_for};

const LONG: Duration = Duration::from_secs(30);
const ESC: char = '\u{1b}';

/// A small tree to pack: two files, one directory, and files being written.
fn tree(world: &World) -> std::path::PathBuf {
    let root = world.path("site");
    std::fs::create_dir_all(root.join("lib")).unwrap();
    std::fs::write(root.join("index.js"), b"console.log('hi')\n").unwrap();
    std::fs::write(root.join("lib/util.js"), b"module.exports = 1\n").unwrap();
    std::fs::write(root.join("upload.tmp"), b"half written").unwrap();
    std::fs::write(root.join("big.bin.part"), b"half downloaded").unwrap();
    root
}

fn names_in(archive: &[u8]) -> Vec<String> {
    let gz = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(gz);
    tar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

// ---- item 6: -q is "errors only" for every command ------------------------------------------

#[test]
fn quiet_deploy_prints_nothing_when_it_succeeds() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    let run = world.run(&["-q", "deploy", "-a", "my-app", archive.to_str().unwrap()]);
    run.assert_code(0);
    assert_eq!(run.stdout.trim(), "", "stdout under -q");
    assert_eq!(run.stderr.trim(), "", "stderr under -q");
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn quiet_deploy_still_says_a_failure() {
    let world = World::new();
    world.fake.set_next_outcome("my-app", "build-error");
    let archive = world.archive("a.tar.gz");
    let run = world.run(&["-q", "deploy", "-a", "my-app", archive.to_str().unwrap()]);
    run.assert_code(1).assert_contains("FAILED");
    assert!(!run.all().contains("uploading"), "{}", run.all());
}

#[test]
fn quiet_pack_check_and_config_check_print_nothing_when_all_is_well() {
    let world = World::new();
    let root = tree(&world);
    let out = world.path("out.tar.gz");
    let pack = world.run(&[
        "-q",
        "pack",
        root.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    pack.assert_code(0);
    assert_eq!(pack.all().trim(), "", "pack -q");
    let check = world.run(&["-q", "check", out.to_str().unwrap()]);
    check.assert_code(0);
    assert_eq!(check.all().trim(), "", "check -q");
    let config = world.run(&["-q", "config", "check"]);
    config.assert_code(0);
    assert_eq!(config.all().trim(), "", "config check -q");
}

// ---- item 7: pack -o -, the default output, the digests, what is left out -------------------

#[test]
fn pack_dash_o_dash_writes_the_archive_to_stdout() {
    let world = World::new();
    let root = tree(&world);
    let out = world
        .command(&["pack", root.to_str().unwrap(), "-o", "-"])
        .current_dir(world.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!world.path("-").exists(), "a file named '-' was written");
    assert_eq!(&out.stdout[..2], &[0x1f, 0x8b], "stdout is not gzip");
    let names = names_in(&out.stdout);
    assert!(names.iter().any(|n| n == "site/index.js"), "{names:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let sha = hex::encode(sha2::Sha256::digest(&out.stdout));
    assert!(
        stderr.contains(&sha),
        "no archive sha256 {sha} in:\n{stderr}"
    );
}

#[test]
fn pack_without_o_writes_the_directory_name_dot_tar_gz() {
    let world = World::new();
    let root = tree(&world);
    let out = world
        .command(&["pack", root.to_str().unwrap()])
        .current_dir(world.dir.path())
        .output()
        .unwrap();
    let run = Run::from_output(out, &world.fake.api_token());
    run.assert_code(0);
    let archive = world.path("site.tar.gz");
    assert!(archive.exists(), "{}", run.all());
    let bytes = std::fs::read(&archive).unwrap();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    run.assert_contains(&format!("archive sha256: {sha}"))
        .assert_contains("tree digest:");
}

#[test]
fn pack_leaves_out_files_being_written_as_drop_folders_do() {
    let world = World::new();
    let root = tree(&world);
    let out = world.path("out.tar.gz");
    world
        .run(&["pack", root.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .assert_code(0);
    let names = names_in(&std::fs::read(&out).unwrap());
    assert!(names.iter().any(|n| n == "site/lib/util.js"), "{names:?}");
    for skipped in ["site/upload.tmp", "site/big.bin.part"] {
        assert!(
            !names.iter().any(|n| n == skipped),
            "{skipped} packed: {names:?}"
        );
    }
}

// ---- item 9: help and names -----------------------------------------------------------------

#[test]
fn help_puts_global_flags_under_their_own_heading_with_duration_value_names() {
    let world = World::new();
    let top = world.run(&["--help"]);
    top.assert_code(0).assert_contains("Global options:");
    let watch = world.run(&["watch", "--help"]);
    watch.assert_contains("Global options:");
    for flag in [
        "--max-wait <DURATION>",
        "--poll <DURATION>",
        "--debounce <DURATION>",
    ] {
        watch.assert_contains(flag);
    }
}

#[test]
fn run_help_names_source_directories_and_the_default_config_once() {
    let world = World::new();
    let run = world.run(&["run", "--help"]);
    run.assert_code(0).assert_contains("source directory");
    let said = run
        .stdout
        .matches("/etc/dropdeploy/dropdeploy.toml")
        .count();
    assert_eq!(
        said, 1,
        "the default config path {said} times:\n{}",
        run.stdout
    );
}

#[test]
fn rollback_and_resume_take_the_app_from_scalingo_app() {
    let world = World::new();
    world.add_drop_app("my-app", "");
    let run = world
        .command(&["resume"])
        .env("SCALINGO_APP", "my-app")
        .output()
        .unwrap();
    Run::from_output(run, &world.fake.api_token())
        .assert_code(0)
        .assert_contains("my-app");
    world.run(&["resume", "-a", "my-app"]).assert_code(0);
    world
        .run(&["rollback", "--help"])
        .assert_contains("--app <APP>")
        .assert_contains("SCALINGO_APP");
}

#[test]
fn deployment_logs_and_follow_are_named_as_the_platform_cli_names_them() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    world
        .run(&["deploy", "-a", "my-app", archive.to_str().unwrap()])
        .assert_code(0);
    for command in ["deployment-logs", "logs"] {
        world.run(&[command, "-a", "my-app"]).assert_code(0);
    }
    world
        .run(&["deployment-follow", "-a", "my-app"])
        .assert_code(0);
    world
        .run(&["--help"])
        .assert_contains("deployment-logs")
        .assert_contains("deployment-follow");
}

#[test]
fn following_a_failed_deployment_exits_non_zero() {
    let world = World::new();
    world.fake.set_next_outcome("my-app", "build-error");
    let archive = world.archive("a.tar.gz");
    world
        .run(&["deploy", "-a", "my-app", archive.to_str().unwrap()])
        .assert_code(1);
    world.run(&["logs", "-f", "-a", "my-app"]).assert_code(1);
    world
        .run(&["deployment-follow", "-a", "my-app"])
        .assert_code(1);
    // Printing it without following is not a failure of the command.
    world.run(&["logs", "-a", "my-app"]).assert_code(0);
}

#[test]
fn deploy_help_says_what_the_git_ref_is_and_every_json_field() {
    let world = World::new();
    let run = world.run(&["deploy", "--help"]);
    run.assert_code(0).assert_contains("git_ref_label");
    assert!(
        !run.stdout.contains("of the archive's sha256"),
        "{}",
        run.stdout
    );
    let archive = world.archive("a.tar.gz");
    let deployed = world.run(&[
        "deploy",
        "--json",
        "-a",
        "my-app",
        archive.to_str().unwrap(),
    ]);
    deployed.assert_code(0);
    let result: serde_json::Value = serde_json::from_str(deployed.stdout.trim()).unwrap();
    let help = run.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for field in result.as_object().unwrap().keys() {
        assert!(
            help.contains(field.as_str()),
            "--json field {field} not in the help:\n{help}"
        );
    }
}

// ---- item 11: units and wording -------------------------------------------------------------

#[test]
fn deploy_says_durations_as_the_history_does_and_no_rate_over_nothing() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    let run = world.run(&["deploy", "-a", "my-app", archive.to_str().unwrap()]);
    run.assert_code(0);
    let success = run
        .all()
        .lines()
        .find(|l| l.contains("success"))
        .unwrap_or_default()
        .to_string();
    // `human::duration`: "48 ms", "1.2 s", "12 s"; never humantime's "0s" or "4s".
    let took = success.rsplit(" in ").next().unwrap_or_default();
    assert!(
        took.ends_with(" ms") || took.ends_with(" s"),
        "duration {took:?} in: {success}"
    );
    let uploaded = run
        .all()
        .lines()
        .find(|l| l.contains("uploaded"))
        .unwrap_or_default()
        .to_string();
    assert!(!uploaded.contains("0.00 s"), "{uploaded}");
}

#[test]
fn watch_counts_one_directory_in_the_singular() {
    let world = World::new();
    let root = world.path("flat");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.js"), b"1\n").unwrap();
    let mut child = Proc(world.spawn(
        &[
            "watch",
            "-a",
            "my-app",
            "--no-deploy-on-start",
            root.to_str().unwrap(),
        ],
        "w",
    ));
    let out = world.path("w.stdout");
    let watching = wait_for(LONG, || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.contains("watching"))
    });
    child.signal("INT");
    child.wait_exit(LONG);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(watching, "{text}\n{}", world.log("w"));
    assert!(text.contains("(1 directory)"), "{text}");
}

#[test]
fn daemon_logs_quote_fields_one_way_and_show_no_debug_text() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let mut daemon = world.start_daemon("d");
    world.drop_archive(&drop, "release.tar.gz");
    world.wait_history(1, LONG);
    daemon.signal("TERM");
    daemon.wait_exit(LONG);
    let log = world.log("d");
    assert!(log.contains("readiness=renamed-in"), "{log}");
    assert!(!log.contains("RenamedIn"), "{log}");
    assert!(!log.contains("app=\"my-app\""), "quoted app in:\n{log}");
    assert!(log.contains("app=my-app"), "{log}");
}

#[test]
fn color_always_colours_the_outcome_line() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    let run = world.run(&[
        "--color",
        "always",
        "deploy",
        "-a",
        "my-app",
        archive.to_str().unwrap(),
    ]);
    run.assert_code(0);
    assert!(run.stdout.contains(ESC), "no colour in: {}", run.stdout);
    let plain = world.run(&["deploy", "-a", "my-app", archive.to_str().unwrap()]);
    assert!(!plain.all().contains(ESC), "{}", plain.all());
}

// ---- item 8: configuration errors -----------------------------------------------------------

/// `config check FILE` on `text`.
fn config_check(world: &World, text: &str) -> Run {
    let file = world.path("check.toml");
    std::fs::write(&file, text).unwrap();
    world.run(&["config", "check", file.to_str().unwrap()])
}

#[test]
fn config_check_reports_every_kind_of_problem_in_one_pass() {
    let world = World::new();
    let run = config_check(
        &world,
        "max_paralel = 4\nmax_archive_size = true\n\n[retry]\ninitial = 3\n\n\
         [[app]]\nname = \"my-app\"\ndrop_dir = \"drop\"\nsettle = \"soon\"\nignore = \"*.log\"\n",
    );
    run.assert_code(2)
        // An unknown key, with the key meant.
        .assert_contains("unknown key `max_paralel` at the top level; did you mean `max_parallel`?")
        // Types, all of them, in plain words.
        .assert_contains("`max_archive_size`")
        .assert_contains("`initial` in [retry]")
        .assert_contains("`ignore` in [[app]]: expected a list")
        // And meanings, in the same pass.
        .assert_contains("invalid duration \"soon\"");
    let all = run.all();
    for serde_words in ["invalid type", "expected a sequence", "i64"] {
        assert!(!all.contains(serde_words), "{serde_words:?} in:\n{all}");
    }
}

#[test]
fn a_wrong_type_is_said_in_plain_words() {
    let world = World::new();
    let run = config_check(&world, "max_parallel = \"4\"\n");
    run.assert_code(2)
        .assert_contains("`max_parallel` at the top level: expected a whole number, without quotes, found the string \"4\"");
}

#[test]
fn sizes_take_units_and_bare_numbers_still_work() {
    let world = World::new();
    let archive = world.archive("a.tar.gz");
    let base = std::fs::read_to_string(&world.config).unwrap();
    // `check` applies the limit: the archive is a few kB uncompressed.
    for (value, code) in [
        ("\"300MB\"", 0),
        ("\"300MiB\"", 0),
        ("\"1MB\"", 0),
        ("\"2kB\"", 1),
        ("1000", 1),
        ("314572800", 0),
    ] {
        std::fs::write(&world.config, format!("max_archive_size = {value}\n{base}")).unwrap();
        let run = world.run(&["check", archive.to_str().unwrap()]);
        assert_eq!(
            run.code,
            Some(code),
            "max_archive_size = {value}:\n{}",
            run.all()
        );
    }
    std::fs::write(
        &world.config,
        format!("max_archive_size = \"300 parsecs\"\n{base}"),
    )
    .unwrap();
    world
        .run(&["config", "check"])
        .assert_code(2)
        .assert_contains("`max_archive_size` must be a positive size");
}

#[test]
fn an_initial_retry_delay_above_max_delay_is_warned_before_valid() {
    let world = World::new();
    let run = config_check(&world, "[retry]\ninitial = \"30s\"\nmax_delay = \"10s\"\n");
    run.assert_code(0)
        .assert_contains("`initial` in [retry] (30 s) is longer than `max_delay` (10 s)");
    let warned = run.stdout.find("warning").unwrap();
    let valid = run.stdout.find(": valid").unwrap();
    assert!(
        warned < valid,
        "the warning after \"valid\":\n{}",
        run.stdout
    );
}

#[test]
fn a_bad_duration_flag_gives_the_hint_of_the_docs() {
    let world = World::new();
    let run = world.run(&["deploy", "-a", "my-app", "--interval", "3x", "a.tar.gz"]);
    run.assert_code(2).assert_contains("e.g. 3s");
    assert!(!run.stderr.contains("sec,"), "{}", run.stderr);
}

#[test]
fn a_bad_keep_done_reads_as_one_sentence() {
    let world = World::new();
    let run = config_check(
        &world,
        "[[app]]\nname = \"my-app\"\ndrop_dir = \"drop\"\nkeep_done = -1\n",
    );
    run.assert_code(2).assert_contains("keep_done");
    assert!(
        !run.all().contains("  "),
        "a run of spaces in:\n{}",
        run.all()
    );
}

// ---- item 13: the man page ------------------------------------------------------------------

#[test]
fn the_man_page_documents_every_command_and_flag_and_names_no_missing_page() {
    let world = World::new();
    let run = world.run(&["manpage"]);
    run.assert_code(0);
    let page = &run.stdout;
    for section in [
        ".SH COMMANDS",
        ".SH ENVIRONMENT",
        ".SH FILES",
        ".SH \"EXIT STATUS\"",
    ] {
        assert!(page.contains(section), "no {section}");
    }
    // Every subcommand's flags, as roff writes them (\- for a hyphen).
    for flag in [
        "\\-\\-git\\-ref",
        "\\-\\-no\\-follow",
        "\\-\\-give\\-up\\-after",
        "\\-\\-max\\-size",
        "\\-\\-prefix",
        "\\-\\-follow",
        "\\-\\-to",
    ] {
        assert!(page.contains(flag), "no {flag} in the man page");
    }
    for command in [
        "deployment\\-logs",
        "deployment\\-follow",
        "config check",
        "completions",
    ] {
        assert!(page.contains(command), "no {command} in the man page");
    }
    // clap_mangen's default lists "dropdeploy-deploy(1)" and the like, pages that do not exist.
    assert!(
        !page.contains("(1)"),
        "a reference to another page:\n{page}"
    );
    for var in ["SCALINGO_API_TOKEN", "DROPDEPLOY_STATE_DIR", "NO_COLOR"] {
        assert!(page.contains(var), "no {var}");
    }
}
