//! Running as a systemd service: the notify protocol as the real daemon speaks it (on a socket
//! made by the test, standing in for systemd), the token as a systemd credential, log lines for
//! the journal, and the unit file itself.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{self, Proc, World, wait_for};

const LONG: Duration = Duration::from_secs(30);

/// The variables systemd sets for a service, removed from every child unless a test sets them.
const SERVICE_VARS: [&str; 5] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "CREDENTIALS_DIRECTORY",
    "JOURNAL_STREAM",
];

/// Plays systemd's side of the notify protocol: a datagram socket in a temporary directory.
struct Manager {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
    /// Every message received so far, in order.
    messages: Vec<String>,
}

impl Manager {
    fn new() -> Manager {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Manager {
            _dir: dir,
            path,
            socket,
            messages: Vec::new(),
        }
    }

    /// Receives until a message satisfies `pred` (true), or `timeout` passes (false).
    fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = pred(&message);
                self.messages.push(message);
                if done {
                    return true;
                }
            }
        }
        false
    }

    /// Receives for `period`, whatever comes.
    fn collect(&mut self, period: Duration) {
        self.wait_for(period, |_| false);
    }

    fn count(&self, line: &str) -> usize {
        self.messages
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }
}

/// `dropdeploy run` with the service variables given and no others, output in `<tag>.stderr`.
fn spawn_daemon(world: &World, tag: &str, vars: &[(&str, &str)]) -> Proc {
    let stdout = std::fs::File::create(world.path(&format!("{tag}.stdout"))).unwrap();
    let stderr = std::fs::File::create(world.path(&format!("{tag}.stderr"))).unwrap();
    let mut cmd = world.command(&["run"]);
    for var in SERVICE_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(vars.iter().copied());
    Proc(cmd.stdout(stdout).stderr(stderr).spawn().unwrap())
}

fn wait_running(world: &World, tag: &str) {
    let up = wait_for(LONG, || world.log(tag).contains("dropdeploy is running"));
    assert!(up, "daemon did not start:\n{}", world.log(tag));
}

fn notify_vars(manager: &Manager) -> Vec<(&'static str, String)> {
    vec![("NOTIFY_SOCKET", manager.path.to_str().unwrap().to_string())]
}

fn start_notified(world: &World, tag: &str, manager: &Manager, extra: &[(&str, &str)]) -> Proc {
    let mut vars: Vec<(&str, String)> = notify_vars(manager);
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let borrowed: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_daemon(world, tag, &borrowed)
}

fn is_ready(message: &str) -> bool {
    message.lines().any(|l| l == "READY=1")
}

#[test]
fn ready_is_sent_once_running_then_a_status_line() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let mut manager = Manager::new();
    let _daemon = start_notified(&world, "d", &manager, &[]);
    assert!(
        manager.wait_for(LONG, is_ready),
        "no READY=1; got {:?}\n{}",
        manager.messages,
        world.log("d")
    );
    // Ready means the drop folders are prepared and watched.
    assert!(drop.is_dir());
    assert!(
        manager.wait_for(LONG, |m| m.lines().any(|l| l.starts_with("STATUS=1 app"))),
        "no status line after READY=1; got {:?}",
        manager.messages
    );
    assert_eq!(manager.count("READY=1"), 1, "{:?}", manager.messages);
}

#[test]
fn the_watchdog_is_pinged_at_half_its_timeout() {
    let world = World::new();
    world.add_drop_app("my-app", "");
    let mut manager = Manager::new();
    // 400 ms: a ping every 200 ms.
    let _daemon = start_notified(&world, "d", &manager, &[("WATCHDOG_USEC", "400000")]);
    assert!(manager.wait_for(LONG, is_ready), "{:?}", manager.messages);
    manager.collect(Duration::from_millis(1500));
    let pings = manager.count("WATCHDOG=1");
    assert!(
        (4..=12).contains(&pings),
        "{pings} pings in 1.5 s: {:?}",
        manager.messages
    );
}

#[test]
fn the_watchdog_stops_while_the_claiming_loop_is_stuck() {
    let world = World::new();
    // Allow a 1 GB archive: checking it keeps the claiming loop busy for seconds.
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        format!("max_archive_size = 2000000000\n{text}"),
    )
    .unwrap();
    let drop = world.add_drop_app("my-app", "");
    let big = world.path("big.tar.gz");
    support::zeros_archive(&big, 1_000_000_000);
    let mut manager = Manager::new();
    let _daemon = start_notified(&world, "d", &manager, &[("WATCHDOG_USEC", "400000")]);
    assert!(manager.wait_for(LONG, is_ready), "{:?}", manager.messages);
    // Pings while idle.
    manager.collect(Duration::from_millis(600));
    assert!(manager.count("WATCHDOG=1") >= 2, "{:?}", manager.messages);
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::rename(&big, drop.join("big.tar.gz")).unwrap();
    // The claim has begun once the file left the folder.
    assert!(wait_for(LONG, || !drop.join("big.tar.gz").exists()));
    let claim_began = Instant::now();
    let mut pings = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(120);
    let claimed = |w: &World| w.log("d").contains("claimed");
    let mut claimed_at = None;
    while Instant::now() < deadline {
        if let Ok(n) = manager.socket.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "WATCHDOG=1")
        {
            pings.push(Instant::now());
        }
        if claimed_at.is_none() && claimed(&world) {
            claimed_at = Some(Instant::now());
        }
        if let Some(at) = claimed_at
            && at.elapsed() > Duration::from_secs(1)
        {
            break;
        }
    }
    let claimed_at = claimed_at.expect("the archive was claimed in the end");
    let after = pings.iter().filter(|p| **p > claimed_at).count();
    // While the loop was busy checking the archive, no ping: systemd would restart a daemon
    // stuck like this for longer than WatchdogSec. Measured from the moment the claim began.
    let mut marks = vec![claim_began];
    marks.extend(pings.iter().copied());
    let silent = marks
        .windows(2)
        .map(|w| w[1].saturating_duration_since(w[0]))
        .max()
        .unwrap_or_default();
    let timeline: Vec<u128> = pings
        .iter()
        .map(|p| p.saturating_duration_since(claim_began).as_millis())
        .collect();
    assert!(
        silent >= Duration::from_millis(800),
        "pings kept coming while the loop was stuck: longest silence {silent:?}; pings (ms after the claim began): {timeline:?}"
    );
    assert!(after >= 2, "pings resume once the loop is free again");
}

#[test]
fn no_watchdog_pings_without_watchdog_usec() {
    let world = World::new();
    world.add_drop_app("my-app", "");
    let mut manager = Manager::new();
    let _daemon = start_notified(&world, "d", &manager, &[]);
    assert!(manager.wait_for(LONG, is_ready), "{:?}", manager.messages);
    manager.collect(Duration::from_millis(500));
    assert_eq!(manager.count("WATCHDOG=1"), 0, "{:?}", manager.messages);
}

#[test]
fn sighup_sends_reloading_with_the_monotonic_clock_then_ready() {
    let world = World::new();
    world.add_drop_app("my-app", "");
    let mut manager = Manager::new();
    let daemon = start_notified(&world, "d", &manager, &[]);
    assert!(manager.wait_for(LONG, is_ready), "{:?}", manager.messages);
    wait_running(&world, "d");
    daemon.signal("HUP");
    assert!(
        manager.wait_for(LONG, |m| m.lines().any(|l| l == "RELOADING=1")),
        "no RELOADING=1: {:?}",
        manager.messages
    );
    let reloading = manager.messages.last().cloned().unwrap_or_default();
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC with RELOADING=1: {reloading:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|u| u > 0), "{reloading:?}");
    assert!(
        manager.wait_for(LONG, is_ready),
        "no READY=1 after the reload: {:?}",
        manager.messages
    );
    assert!(
        world.log("d").contains("configuration reloaded"),
        "{}",
        world.log("d")
    );
}

#[test]
fn a_refused_reload_still_ends_with_ready() {
    let world = World::new();
    world.add_drop_app("my-app", "");
    let mut manager = Manager::new();
    let daemon = start_notified(&world, "d", &manager, &[]);
    assert!(manager.wait_for(LONG, is_ready), "{:?}", manager.messages);
    world.append_config("\nthis is not toml\n");
    daemon.signal("HUP");
    assert!(
        manager.wait_for(LONG, |m| m.lines().any(|l| l == "RELOADING=1")),
        "{:?}",
        manager.messages
    );
    assert!(
        manager.wait_for(LONG, is_ready),
        "no READY=1 after a refused reload: {:?}",
        manager.messages
    );
    assert!(world.log("d").contains("reload refused"));
}

#[test]
fn sigterm_sends_stopping_and_the_daemon_exits_cleanly() {
    let world = World::new();
    world.add_drop_app("my-app", "");
    let mut manager = Manager::new();
    let mut daemon = start_notified(&world, "d", &manager, &[]);
    assert!(manager.wait_for(LONG, is_ready), "{:?}", manager.messages);
    daemon.signal("TERM");
    assert!(
        manager.wait_for(LONG, |m| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1: {:?}",
        manager.messages
    );
    assert!(daemon.wait_exit(LONG).success(), "{}", world.log("d"));
}

#[test]
fn a_notify_socket_that_is_gone_does_not_stop_the_daemon() {
    let world = World::new();
    let drop = world.add_drop_app("my-app", "");
    let gone = world.path("no-such-dir/notify");
    let mut daemon = spawn_daemon(
        &world,
        "d",
        &[
            ("NOTIFY_SOCKET", gone.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    wait_running(&world, "d");
    world.drop_archive(&drop, "release-1.tar.gz");
    let history = world.wait_history(1, LONG);
    assert_eq!(history[0]["outcome"], "succeeded");
    daemon.signal("HUP");
    assert!(wait_for(LONG, || world
        .log("d")
        .contains("configuration reloaded")));
    daemon.signal("TERM");
    assert!(daemon.wait_exit(LONG).success(), "{}", world.log("d"));
}

/// A `$CREDENTIALS_DIRECTORY` holding `scalingo-token`, as systemd makes it for
/// `LoadCredential=scalingo-token:…`.
fn credentials_dir(world: &World, token: &str) -> PathBuf {
    let dir = world.path("credentials");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("scalingo-token"), format!("{token}\n")).unwrap();
    dir
}

fn deploy_with(world: &World, vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let archive = world.archive("release.tar.gz");
    let mut cmd = world.command(&["deploy", "--app", "my-app", archive.to_str().unwrap()]);
    for var in SERVICE_VARS {
        cmd.env_remove(var);
    }
    let out = cmd.envs(vars.iter().copied()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    support::assert_no_secret(&text, &world.fake.api_token());
    (out.status.code(), text)
}

#[test]
fn the_systemd_credential_wins_over_the_environment_token() {
    let world = World::new();
    let creds = credentials_dir(&world, &world.fake.api_token());
    let (code, text) = deploy_with(
        &world,
        &[
            ("SCALINGO_API_TOKEN", "tk-us-not-this-one-0123456789"),
            ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("success"), "{text}");
    assert_eq!(world.fake.deployments("my-app").len(), 1);
}

#[test]
fn without_the_credential_file_the_environment_token_is_used() {
    let world = World::new();
    // The unit loads no scalingo-token: the directory exists but does not hold it.
    let creds = world.path("credentials");
    std::fs::create_dir_all(&creds).unwrap();
    let (code, text) = deploy_with(
        &world,
        &[
            ("SCALINGO_API_TOKEN", "tk-us-not-this-one-0123456789"),
            ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
        ],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("API token was refused"), "{text}");
    assert!(!text.contains("not-this-one"), "{text}");
}

#[test]
fn an_empty_credential_is_a_configuration_error() {
    let world = World::new();
    let creds = credentials_dir(&world, "");
    let (code, text) = deploy_with(
        &world,
        &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("$CREDENTIALS_DIRECTORY"), "{text}");
    assert!(text.contains("scalingo-token is empty"), "{text}");
}

/// `JOURNAL_STREAM` naming the file stderr goes to, as systemd names the journal's socket.
fn journal_stream_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

#[test]
fn log_lines_for_the_journal_have_a_priority_and_no_timestamp() {
    let world = World::new();
    world.add_drop_app("my-app", "");
    let stderr = world.path("j.stderr");
    std::fs::File::create(&stderr).unwrap();
    let stream = journal_stream_of(&stderr);
    let mut daemon = spawn_daemon(&world, "j", &[("JOURNAL_STREAM", &stream)]);
    wait_running(&world, "j");
    daemon.signal("TERM");
    daemon.wait_exit(LONG);
    let log = world.log("j");
    let running = log
        .lines()
        .find(|l| l.contains("dropdeploy is running"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(running.starts_with("<6> INFO "), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
    for line in log.lines().filter(|l| !l.is_empty()) {
        assert!(line.starts_with('<'), "a line without its priority: {line}");
    }
}

#[test]
fn a_journal_stream_for_another_file_changes_nothing() {
    let world = World::new();
    world.add_drop_app("my-app", "");
    // Inherited from a parent whose stderr was the journal; ours is a file.
    let other = world.path("elsewhere");
    std::fs::File::create(&other).unwrap();
    let stream = journal_stream_of(&other);
    let mut daemon = spawn_daemon(&world, "j", &[("JOURNAL_STREAM", &stream)]);
    wait_running(&world, "j");
    daemon.signal("TERM");
    daemon.wait_exit(LONG);
    let log = world.log("j");
    let running = log
        .lines()
        .find(|l| l.contains("dropdeploy is running"))
        .unwrap_or_else(|| panic!("{log}"));
    // The usual line: an RFC 3339 timestamp first.
    assert!(
        running.as_bytes().first().is_some_and(u8::is_ascii_digit) && running.contains('T'),
        "{running}"
    );
}

// The unit file and its companions.

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The unit's `Key=value` assignments, in order (comments and sections left out).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting(settings: &[(String, String)], key: &str) -> Option<String> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

#[test]
fn the_unit_matches_what_the_daemon_expects() {
    let unit = unit_settings(&repo_file("systemd/dropdeploy.service"));
    let get = |key: &str| setting(&unit, key).unwrap_or_else(|| panic!("no {key}= in the unit"));
    assert_eq!(get("Type"), "notify");
    assert_eq!(get("NotifyAccess"), "main");
    assert_eq!(
        get("ExecStart"),
        "/usr/bin/dropdeploy --config /etc/dropdeploy/dropdeploy.toml run"
    );
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    // The credential's name is the one the configuration reads.
    assert!(
        get("LoadCredential").starts_with("scalingo-token:"),
        "{}",
        get("LoadCredential")
    );
    // Stopping lets steps in flight finish within shutdown_grace (30 s by default).
    let stop = humantime::parse_duration(&get("TimeoutStopSec")).unwrap();
    assert!(stop > Duration::from_secs(30), "{stop:?}");
    let watchdog = humantime::parse_duration(&get("WatchdogSec")).unwrap();
    assert!(watchdog >= Duration::from_secs(10), "{watchdog:?}");
    // Configuration errors exit with 2: no restart loop on them.
    assert_eq!(get("RestartPreventExitStatus"), "2");
    // The user the unit runs as is the one sysusers creates.
    let sysusers = repo_file("systemd/dropdeploy.sysusers");
    let user = get("User");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", user.as_str()])),
        "{sysusers}"
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Ok(version) = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    else {
        eprintln!("skipped: systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    if !version.success() {
        eprintln!("skipped: systemd-analyze does not run here");
        return;
    }
    // verify checks that ExecStart= exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("dropdeploy.service");
    let text = repo_file("systemd/dropdeploy.service")
        .replace("/usr/bin/dropdeploy", env!("CARGO_BIN_EXE_dropdeploy"));
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Unknown keys and bad values are only warnings ("…, ignoring"): none are allowed.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("dropdeploy.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn every_file_the_package_installs_exists() {
    let manifest: toml::Table = toml::from_str(&repo_file("Cargo.toml")).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().expect("assets");
    let mut targets = Vec::new();
    for asset in assets {
        let asset = asset.as_array().expect("[source, target, mode]");
        let source = asset[0].as_str().unwrap();
        targets.push(asset[1].as_str().unwrap().to_string());
        if source.starts_with("target/release/") {
            continue; // built by cargo deb
        }
        if let Some(generated) = source.strip_prefix("target/assets/") {
            // Completions and the man page: written by the packaging script before cargo deb.
            let script = repo_file("scripts/deb-assets.sh");
            assert!(
                script.contains(generated),
                "asset {source} is not written by scripts/deb-assets.sh"
            );
            continue;
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
        assert!(path.is_file(), "asset {source} does not exist");
    }
    for conf in deb["conf-files"].as_array().expect("conf-files") {
        let conf = conf.as_str().unwrap();
        assert!(
            targets.iter().any(|t| t == conf.trim_start_matches('/')),
            "conf-file {conf} is not an asset's target: {targets:?}"
        );
    }
    // The units directory holds what cargo deb's systemd support picks up by name.
    let units = deb["systemd-units"]["unit-scripts"].as_str().unwrap();
    for name in [
        "dropdeploy.service",
        "dropdeploy.sysusers",
        "dropdeploy.tmpfile",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(units).join(name);
        assert!(path.is_file(), "{}", path.display());
    }
}
