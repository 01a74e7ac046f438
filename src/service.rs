//! Running under systemd: readiness, status, reload, stop and watchdog notifications
//! (`sd_notify(3)`), and log lines shaped for the journal.
//!
//! [`Notifier`] speaks the notify protocol: one datagram per state change, sent to the Unix
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). Without that
//! variable, as when the daemon runs in a terminal, every call does nothing. A socket that has
//! gone away never stops the daemon: the first failure is logged at debug level and later ones
//! are dropped quietly.
//!
//! Where the daemon calls it (`dropdeploy run`, `Type=notify` in the unit):
//!
//! - [`Notifier::from_env`] once, at the start of `daemon::run`;
//! - [`Notifier::ready`] once the spool is recovered and every watcher is started (beside the
//!   "dropdeploy is running" log line), then [`Notifier::status`] with [`status_line`];
//! - [`Notifier::status`] again whenever what is deploying or waiting changes;
//! - [`Notifier::reloading`] when SIGHUP arrives, before the configuration is read, and
//!   [`Notifier::reloaded`] when the reload is over, accepted or refused (the daemon keeps
//!   running either way);
//! - [`Notifier::stopping`] when SIGTERM or SIGINT ends the main loop, before the grace period
//!   starts, with [`Notifier::extend_timeout`] if the grace period may outlast
//!   `TimeoutStopSec=`;
//! - [`Notifier::watchdog`] on each tick of a [`WatchdogTimer`], as a branch of the daemon's
//!   main `select!` loop: the pings then stop when that loop stops turning, which is what the
//!   watchdog is for.
//!
//! For the journal, [`stderr_is_journal`] tells whether stderr is connected to it (the
//! `$JOURNAL_STREAM` convention), and [`JournalFormat`] writes plain lines with a syslog
//! priority prefix and no timestamp or colour, since journald records its own.

use std::fmt;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How long one notification may wait on a busy service manager before it is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// At most this many deploying apps are named in a status line; the rest are counted.
const MAX_NAMED_ACTIVE: usize = 3;

/// Where notifications go: the socket named by `$NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotifyAddress {
    /// A socket file, e.g. `/run/systemd/notify`.
    Path(PathBuf),
    /// An abstract socket, `@name` in the variable (the name without the `@`).
    Abstract(Vec<u8>),
}

impl NotifyAddress {
    /// Reads `$NOTIFY_SOCKET`'s value; `Err` says why it cannot be used.
    fn parse(value: &str) -> Result<NotifyAddress, String> {
        if let Some(name) = value.strip_prefix('@') {
            if name.is_empty() {
                return Err("an abstract socket needs a name after `@`".to_string());
            }
            return Ok(NotifyAddress::Abstract(name.as_bytes().to_vec()));
        }
        if value.starts_with('/') {
            return Ok(NotifyAddress::Path(PathBuf::from(value)));
        }
        Err(format!(
            "{value:?} is neither an absolute path nor an abstract socket (@name)"
        ))
    }

    fn send(&self, socket: &UnixDatagram, message: &[u8]) -> io::Result<usize> {
        match self {
            NotifyAddress::Path(path) => socket.send_to(message, path),
            #[cfg(target_os = "linux")]
            NotifyAddress::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message, &addr)
            }
            #[cfg(not(target_os = "linux"))]
            NotifyAddress::Abstract(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract sockets exist only on Linux",
            )),
        }
    }
}

/// The daemon's side of the systemd notify protocol. Every method does nothing when
/// `$NOTIFY_SOCKET` was not set, and none of them fails: a notification that cannot be sent
/// is dropped (the first such failure is logged at debug level).
///
/// Cloning is cheap; clones share the "failure already logged" flag.
#[derive(Debug, Clone)]
pub struct Notifier {
    address: Option<NotifyAddress>,
    watchdog: Option<Duration>,
    failure_logged: Arc<AtomicBool>,
}

impl Notifier {
    /// The notifier this process was started with: `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and
    /// `$WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let var = |name: &str| std::env::var(name).ok();
        Notifier::from_vars(
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
        )
    }

    /// A notifier from the values of `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`
    /// (`None` for an unset variable). An unusable socket value disables the notifier, with
    /// one debug log line.
    pub fn from_vars(
        notify_socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
    ) -> Notifier {
        let address = match notify_socket
            .filter(|v| !v.is_empty())
            .map(NotifyAddress::parse)
        {
            Some(Ok(address)) => Some(address),
            Some(Err(why)) => {
                tracing::debug!("NOTIFY_SOCKET ignored: {why}");
                None
            }
            None => None,
        };
        let watchdog = watchdog_timeout(watchdog_usec, watchdog_pid, std::process::id());
        Notifier {
            address,
            watchdog,
            failure_logged: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A notifier that never sends anything.
    pub fn disabled() -> Notifier {
        Notifier::from_vars(None, None, None)
    }

    /// Whether notifications are sent at all (the process was given a notify socket).
    pub fn enabled(&self) -> bool {
        self.address.is_some()
    }

    /// Start-up is finished: `READY=1`, with a first status.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready, NotifyState::Status("started")]);
    }

    /// `STATUS=<text>`: the one line `systemctl status` shows (see [`status_line`]). Line
    /// breaks and other control characters become spaces, so that a message can never carry
    /// another assignment.
    pub fn status(&self, text: &str) {
        // App names and errors end up here: shown by `systemctl status`, so redacted.
        let text = one_line(&crate::redact::redact(text));
        self.send(&[NotifyState::Status(&text)]);
    }

    /// A reload starts: `RELOADING=1` with `MONOTONIC_USEC=` (the `CLOCK_MONOTONIC` time, which
    /// `Type=notify-reload` on systemd 253 and later requires; older versions ignore it).
    pub fn reloading(&self) {
        if !self.enabled() {
            return;
        }
        let status = NotifyState::Status("reloading the configuration");
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, status, now]),
            Err(e) => {
                tracing::debug!("cannot read CLOCK_MONOTONIC for MONOTONIC_USEC: {e}");
                self.send(&[NotifyState::Reloading, status]);
            }
        }
    }

    /// The reload is over (the new configuration taken, or refused and the old one kept):
    /// `READY=1`. Send a fresh [`Notifier::status`] after it.
    pub fn reloaded(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// The daemon is stopping: `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: jobs in flight stop at their next persisted state"),
        ]);
    }

    /// Asks for `extra` more time for the current start, reload or stop
    /// (`EXTEND_TIMEOUT_USEC=`), e.g. when `shutdown_grace` is longer than the unit's
    /// `TimeoutStopSec=`. systemd never shortens its timeout on such a message.
    pub fn extend_timeout(&self, extra: Duration) {
        let usec = u32::try_from(extra.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// The daemon is alive: `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// How often to call [`Notifier::watchdog`]: half of `$WATCHDOG_USEC` when the watchdog is
    /// on for this process (`$WATCHDOG_PID` unset or ours) and there is a socket to ping, else
    /// `None`.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.address.as_ref()?;
        self.watchdog.map(|timeout| timeout / 2)
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        let Some(address) = &self.address else {
            return;
        };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        let sent = UnixDatagram::unbound().and_then(|socket| {
            // A stalled service manager must not hold the daemon's main loop for long.
            socket.set_write_timeout(Some(SEND_TIMEOUT))?;
            address.send(&socket, message.as_bytes())
        });
        let failure = match sent {
            Ok(n) if n == message.len() => return,
            Ok(n) => format!("only {n} of {} bytes were sent", message.len()),
            Err(e) => e.to_string(),
        };
        if !self.failure_logged.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                socket = ?address,
                "cannot notify the service manager: {failure}; further failures are not logged"
            );
        }
    }
}

/// The watchdog timeout from `$WATCHDOG_USEC` and `$WATCHDOG_PID`, as `sd_watchdog_enabled(3)`
/// reads them: a positive number of microseconds, for `pid` or for no particular process.
fn watchdog_timeout(usec: Option<&str>, for_pid: Option<&str>, pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    match for_pid.map(str::trim).filter(|p| !p.is_empty()) {
        None => {}
        Some(p) if p.parse::<u32>().ok() == Some(pid) => {}
        Some(_) => return None,
    }
    Some(Duration::from_micros(usec))
}

/// Replaces line breaks and other control characters with spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Ticks at [`Notifier::watchdog_period`], for a `select!` branch that calls
/// [`Notifier::watchdog`]; when the watchdog is off, [`WatchdogTimer::tick`] never completes.
#[derive(Debug)]
pub struct WatchdogTimer {
    interval: Option<tokio::time::Interval>,
}

impl WatchdogTimer {
    /// A timer for this notifier's watchdog period, if it has one. Call inside the runtime.
    pub fn new(notifier: &Notifier) -> WatchdogTimer {
        let interval = notifier.watchdog_period().map(|period| {
            let mut interval = tokio::time::interval(period);
            // After a stall, ping once and keep the rhythm; a burst of pings says nothing.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        WatchdogTimer { interval }
    }

    /// Waits for the next tick (the first one at once); never returns when the watchdog is off.
    pub async fn tick(&mut self) {
        match &mut self.interval {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// What an app "does" in the status line while it needs attention (see [`status_line`]).
pub const NEEDS_ATTENTION: &str = "needs attention";

/// The `STATUS=` text for the daemon's state: how many apps it serves, which are deploying
/// (app and step), and how many jobs wait. E.g. `2 apps; deploying my-app (building); 1 pending`
/// or `2 apps; idle`. At most three deploying apps are named; the others are counted.
pub fn status_line(apps: usize, active: &[(String, String)], pending: usize) -> String {
    let mut parts = vec![if apps == 1 {
        "1 app".to_string()
    } else {
        format!("{apps} apps")
    }];
    // An app whose rollback was unhealthy too is not deploying: it waits for a person.
    let (attention, active): (Vec<_>, Vec<_>) = active
        .iter()
        .cloned()
        .partition(|(_, step)| step == NEEDS_ATTENTION);
    if !active.is_empty() {
        let mut named: Vec<String> = active
            .iter()
            .take(MAX_NAMED_ACTIVE)
            .map(|(app, step)| format!("{app} ({step})"))
            .collect();
        if active.len() > MAX_NAMED_ACTIVE {
            named.push(format!("{} more", active.len() - MAX_NAMED_ACTIVE));
        }
        parts.push(format!("deploying {}", named.join(", ")));
    }
    if pending > 0 {
        parts.push(format!("{pending} pending"));
    }
    if !attention.is_empty() {
        let apps: Vec<&str> = attention.iter().map(|(app, _)| app.as_str()).collect();
        parts.push(format!("{} needs attention", apps.join(", ")));
    }
    if active.is_empty() && pending == 0 && attention.is_empty() {
        parts.push("idle".to_string());
    }
    one_line(&parts.join("; "))
}

/// Fleet mode: the status line with the database's outage first, when there is one:
/// `database unreachable since 2026-12-08T00:10:00Z; 2 apps; idle`.
pub fn with_database(line: String, down_since: Option<u64>) -> String {
    match down_since {
        Some(since) => format!(
            "database unreachable since {}; {line}",
            crate::outcome::rfc3339_utc(since)
        ),
        None => line,
    }
}

/// Whether stderr goes to the journal: `$JOURNAL_STREAM` is set and names stderr's device and
/// inode (as systemd sets it for a service whose output goes to the journal; a process whose
/// stderr was redirected elsewhere inherits the variable but no longer matches).
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(var) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata());
    match stderr {
        Ok(meta) => journal_stream_matches(&var, meta.dev(), meta.ino()),
        Err(_) => false,
    }
}

/// Whether a `$JOURNAL_STREAM` value (`DEVICE:INODE`, in decimal) names this device and inode.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// The text log format for the journal: a syslog priority prefix (`<3>` error, `<4>` warning,
/// `<6>` info, `<7>` debug and trace), which journald turns into the entry's priority, then the
/// usual line without timestamp (journald records its own) and without colours.
#[derive(Debug)]
pub struct JournalFormat {
    inner: Format<Full, ()>,
}

impl JournalFormat {
    /// The format described above.
    pub fn new() -> JournalFormat {
        JournalFormat {
            inner: Format::default().without_time().with_ansi(false),
        }
    }
}

impl Default for JournalFormat {
    fn default() -> Self {
        JournalFormat::new()
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        // journald reads the priority prefix line by line: every line of a multi-line event
        // (an error whose cause is on the next line, e.g. a refused reload's file:line:col)
        // carries it, or the lines after the first would be stored at priority info.
        let priority = syslog_priority(event.metadata().level());
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        write!(writer, "{}", prefix_lines(priority, &line))
    }
}

/// `text` with `<priority>` at the start of each of its lines; the line breaks are kept.
fn prefix_lines(priority: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.split_inclusive('\n') {
        out.push_str(&format!("<{priority}>"));
        out.push_str(line);
    }
    out
}

/// The syslog priority of a tracing level.
fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        tracing::Level::DEBUG | tracing::Level::TRACE => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn active(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, s)| (a.to_string(), s.to_string()))
            .collect()
    }

    #[test]
    fn an_unreachable_database_leads_the_status_line() {
        let line = status_line(2, &[], 0);
        assert_eq!(with_database(line.clone(), None), "2 apps; idle");
        assert_eq!(
            with_database(line, Some(1_765_152_600)),
            "database unreachable since 2025-12-08T00:10:00Z; 2 apps; idle"
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_line(2, &[], 0), "2 apps; idle");
        assert_eq!(status_line(1, &[], 0), "1 app; idle");
        assert_eq!(status_line(0, &[], 0), "0 apps; idle");
        assert_eq!(
            status_line(2, &active(&[("my-app", "building")]), 1),
            "2 apps; deploying my-app (building); 1 pending"
        );
        assert_eq!(
            status_line(3, &active(&[("a", "uploading"), ("b", "building")]), 0),
            "3 apps; deploying a (uploading), b (building)"
        );
        assert_eq!(status_line(2, &[], 2), "2 apps; 2 pending");
        assert_eq!(
            status_line(2, &active(&[("a", "building"), ("b", NEEDS_ATTENTION)]), 0),
            "2 apps; deploying a (building); b needs attention"
        );
        let many = active(&[
            ("a", "queued"),
            ("b", "uploading"),
            ("c", "building"),
            ("d", "building"),
            ("e", "pushing"),
        ]);
        assert_eq!(
            status_line(5, &many, 0),
            "5 apps; deploying a (queued), b (uploading), c (building), 2 more"
        );
        assert_eq!(
            status_line(1, &active(&[("a", "failed:\nbad")]), 0),
            "1 app; deploying a (failed: bad)"
        );
    }

    #[test]
    fn the_watchdog_period_is_half_the_timeout_for_this_process() {
        let me = std::process::id().to_string();
        let other = (std::process::id() + 1).to_string();
        let period = |usec: Option<&str>, pid: Option<&str>| {
            Notifier::from_vars(Some("/run/systemd/notify"), usec, pid).watchdog_period()
        };
        assert_eq!(
            period(Some("30000000"), None),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            period(Some("400000"), Some(&me)),
            Some(Duration::from_millis(200))
        );
        assert_eq!(period(Some("30000000"), Some(&other)), None);
        assert_eq!(period(None, Some(&me)), None);
        assert_eq!(period(Some("0"), None), None);
        assert_eq!(period(Some("soon"), None), None);
        assert_eq!(period(Some("-5"), None), None);
        assert_eq!(period(Some("30000000"), Some("x")), None);
        // No socket, nothing to ping.
        let n = Notifier::from_vars(None, Some("30000000"), Some(&me));
        assert_eq!(n.watchdog_period(), None);
        assert!(!n.enabled());
    }

    #[test]
    fn notify_socket_values() {
        assert_eq!(
            NotifyAddress::parse("/run/systemd/notify"),
            Ok(NotifyAddress::Path(PathBuf::from("/run/systemd/notify")))
        );
        assert_eq!(
            NotifyAddress::parse("@sd-notify-x"),
            Ok(NotifyAddress::Abstract(b"sd-notify-x".to_vec()))
        );
        assert!(NotifyAddress::parse("@").is_err());
        assert!(NotifyAddress::parse("relative/notify").is_err());
        assert!(NotifyAddress::parse("vsock:2:1234").is_err());
        assert!(!Notifier::from_vars(Some("relative"), None, None).enabled());
        assert!(!Notifier::from_vars(Some(""), None, None).enabled());
        assert!(Notifier::from_vars(Some("/x"), None, None).enabled());
    }

    /// A socket that plays the service manager, in a temporary directory.
    struct Manager {
        _dir: tempfile::TempDir,
        path: PathBuf,
        socket: UnixDatagram,
    }

    impl Manager {
        fn new() -> Manager {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            Manager {
                _dir: dir,
                path,
                socket,
            }
        }

        fn notifier(&self) -> Notifier {
            Notifier::from_vars(self.path.to_str(), None, None)
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    #[test]
    fn each_message_reaches_the_socket() {
        let manager = Manager::new();
        let n = manager.notifier();
        assert!(n.enabled());
        n.ready();
        assert_eq!(manager.recv(), "READY=1\nSTATUS=started\n");
        n.status("2 apps; idle");
        assert_eq!(manager.recv(), "STATUS=2 apps; idle\n");
        n.status("line one\nREADY=1");
        assert_eq!(manager.recv(), "STATUS=line one READY=1\n");
        n.reloaded();
        assert_eq!(manager.recv(), "READY=1\n");
        n.stopping();
        assert!(manager.recv().starts_with("STOPPING=1\nSTATUS=stopping"));
        n.watchdog();
        assert_eq!(manager.recv(), "WATCHDOG=1\n");
        n.extend_timeout(Duration::from_secs(40));
        assert_eq!(manager.recv(), "EXTEND_TIMEOUT_USEC=40000000\n");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let manager = Manager::new();
        let before = monotonic_usec();
        manager.notifier().reloading();
        let after = monotonic_usec();
        let message = manager.recv();
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines[0], "RELOADING=1", "{message}");
        assert!(lines.contains(&"STATUS=reloading the configuration"));
        let usec: i128 = lines
            .iter()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {message:?}"))
            .parse()
            .unwrap();
        assert!(before <= usec && usec <= after, "{before} {usec} {after}");
    }

    /// CLOCK_MONOTONIC in microseconds, read the way the notifier reads it.
    fn monotonic_usec() -> i128 {
        match NotifyState::monotonic_usec_now().unwrap() {
            NotifyState::MonotonicUsec(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_socket_is_reached() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;
        let name = format!("dropdeploy-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Notifier::from_vars(Some(&format!("@{name}")), None, None).watchdog();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }

    #[test]
    fn a_missing_socket_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("no-such-socket");
        let n = Notifier::from_vars(gone.to_str(), Some("1000000"), None);
        assert!(n.enabled());
        for _ in 0..3 {
            n.ready();
            n.status("x");
            n.reloading();
            n.reloaded();
            n.watchdog();
            n.stopping();
        }
        assert!(n.failure_logged.load(Ordering::Relaxed));
        // A socket that goes away after start-up: the same.
        let manager = Manager::new();
        let n = manager.notifier();
        let path = manager.path.clone();
        drop(manager);
        assert!(!path.exists());
        n.ready();
        n.watchdog();
    }

    #[test]
    fn a_disabled_notifier_does_nothing() {
        let n = Notifier::disabled();
        assert!(!n.enabled());
        assert_eq!(n.watchdog_period(), None);
        n.ready();
        n.reloading();
        n.stopping();
        assert!(!n.failure_logged.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn the_watchdog_timer_ticks_at_the_period_or_never() {
        let n = Notifier::from_vars(Some("/x"), Some("40000"), None);
        let mut timer = WatchdogTimer::new(&n);
        let start = tokio::time::Instant::now();
        timer.tick().await;
        timer.tick().await;
        timer.tick().await;
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(40) && elapsed < Duration::from_secs(5),
            "{elapsed:?}"
        );

        let mut off = WatchdogTimer::new(&Notifier::disabled());
        let waited = tokio::time::timeout(Duration::from_millis(100), off.tick()).await;
        assert!(
            waited.is_err(),
            "a timer without a watchdog must never tick"
        );
    }

    #[test]
    fn journal_stream_values() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(journal_stream_matches("8:1234\n", 8, 1234));
        assert!(!journal_stream_matches("8:1235", 8, 1234));
        assert!(!journal_stream_matches("9:1234", 8, 1234));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("", 8, 1234));
        assert!(!journal_stream_matches("x:y", 8, 1234));
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn journal_lines_have_a_priority_and_no_timestamp_nor_colour() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(JournalFormat::new())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(app = "my-app", "deploy failed");
            tracing::warn!("token file is readable");
            tracing::info!(apps = 2, "dropdeploy is running");
            tracing::debug!("packing");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[0].starts_with("<3>ERROR ") && lines[0].ends_with("deploy failed app=\"my-app\""),
            "{text}"
        );
        assert!(lines[1].starts_with("<4> WARN "), "{text}");
        assert!(
            lines[2].starts_with("<6> INFO ") && lines[2].contains("dropdeploy is running apps=2"),
            "{text}"
        );
        assert!(lines[3].starts_with("<7>DEBUG "), "{text}");
        // Each line starts with its priority and level: no timestamp before them.
        assert!(!text.contains('\u{1b}'), "colour escapes: {text:?}");
    }

    #[test]
    fn each_line_of_a_multi_line_event_carries_the_priority() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(JournalFormat::new())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(
                "reload refused, the running configuration is kept: \
                 /etc/dropdeploy/dropdeploy.toml:3:1: unknown key `nope`\n  caused by: x"
            );
            tracing::warn!("first\nsecond\n\nfourth");
            tracing::info!("one line");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(lines[0].starts_with("<3>ERROR "), "{text}");
        assert!(
            lines[0].contains("dropdeploy.toml:3:1: unknown key"),
            "{text}"
        );
        assert_eq!(lines[1], "<3>  caused by: x", "{text}");
        assert!(lines[2].starts_with("<4> WARN ") && lines[2].ends_with("first"));
        assert_eq!(lines[3], "<4>second");
        assert_eq!(lines[4], "<4>");
        assert_eq!(lines[5], "<4>fourth");
        assert!(lines[6].starts_with("<6> INFO ") && lines[6].ends_with("one line"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn prefixed_lines() {
        assert_eq!(prefix_lines(3, "a\nb\n"), "<3>a\n<3>b\n");
        assert_eq!(prefix_lines(4, "a"), "<4>a");
        assert_eq!(prefix_lines(6, ""), "");
    }
}
