//! The fleet's harness: one throw-away PostgreSQL (`testpg`), the fake API, and N real
//! `dropdeploy run` daemons sharing them, each with its own state_dir, drop folders and HTTP
//! intake. Nodes are started, SIGKILLed, SIGSTOPped and stopped by name; lanes are read from
//! the database (`lanes`: app, node, token, expires_at) with `psql`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_scalingo::{FakeConfig, FakeScalingo};

use crate::support::{self, wait_for};

/// Polls `pred` every `every` until it holds or `timeout` passes (for checks that start a
/// process or copy the fake's whole request log: not every 10 ms on 2 cores).
pub fn poll(timeout: Duration, every: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// The intake token of every node.
pub const INTAKE_TOKEN: &str = "fleet-intake-token-7d2a91";

/// How the nodes are configured.
pub struct Setup {
    /// `[cluster] lease`.
    pub lease: Duration,
    /// `[cluster] poll`.
    pub poll: Duration,
    /// `[scalingo] api_rate_limit`: the fleet's budget.
    pub rate_limit: u32,
    /// The apps, as `[[app]]` tables (name, extra keys); each node gets a drop folder per app.
    pub apps: Vec<(String, String)>,
}

/// One node: its name, files and process (if running).
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
    pub proc: Option<Child>,
    /// How many times it was started (its logs are `<dir>/run<N>.stderr`).
    pub starts: usize,
    pub stopped: bool,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Child::id)
    }

    pub fn drop_dir(&self, app: &str) -> PathBuf {
        self.dir.join("drop").join(app)
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything it wrote on stderr over all its runs.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.dir.join(format!("run{n}.stderr"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// The job records of its local spool (its working copy), as JSON text.
    pub fn spool_records(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.state().join("spool")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("job.json")).ok())
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.proc.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The fleet. Fields drop in order: the nodes are killed before the database, the fake and
/// the directory go.
pub struct Fleet {
    pub nodes: BTreeMap<String, Node>,
    pub fake: FakeScalingo,
    pub pg: testpg::Cluster,
    pub dir: tempfile::TempDir,
    pub setup: Setup,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Fleet {
    /// A database, the fake API (`fake` configured by the caller; the apps are added) and no
    /// node yet.
    pub fn new(fake: FakeConfig, setup: Setup) -> Fleet {
        // A private server: the scenario restarts it.
        let pg = testpg::Cluster::start_local();
        let fake = FakeScalingo::start(fake);
        for (app, _) in &setup.apps {
            fake.add_app(app);
        }
        Fleet {
            nodes: BTreeMap::new(),
            fake,
            pg,
            dir: tempfile::tempdir().unwrap(),
            setup,
        }
    }

    pub fn database_url(&self) -> String {
        self.pg.url().to_string()
    }

    fn config_text(&self, name: &str, dir: &Path, port: u16) -> String {
        let s = &self.setup;
        let mut text = format!(
            r#"state_dir = "{state}"
shutdown_grace = "5s"
max_parallel = 8

[scalingo]
timeout = "1s"
follow_interval = "100ms"
api_rate_limit = {rate}

[retry]
initial = "20ms"
max_delay = "300ms"
budget = "90s"
retry_aborted = true

[cluster]
node = "{name}"
lease = "{lease}ms"
poll = "{poll}ms"

[intake]
listen = "127.0.0.1:{port}"
"#,
            state = dir.join("state").display(),
            rate = s.rate_limit,
            lease = s.lease.as_millis(),
            poll = s.poll.as_millis(),
        );
        for (app, extra) in &s.apps {
            text.push_str(&format!(
                "\n[[app]]\nname = \"{app}\"\ndrop_dir = \"{}\"\nsettle = \"300ms\"\nqueue = \"all\"\nkeep_done = 1000000\n{extra}\n",
                dir.join("drop").join(app).display()
            ));
        }
        text
    }

    /// `dropdeploy --config <node's config> ARGS` with the fake's URLs and token, the
    /// database's URL and the intake token in the environment, and nothing of the caller's.
    pub fn command(&self, node: &str, args: &[&str]) -> Command {
        let n = &self.nodes[node];
        let mut cmd = crate::support::dropdeploy_command(&n.config, &self.fake, args);
        cmd.env("DROPDEPLOY_DATABASE_URL", self.database_url())
            .env("DROPDEPLOY_INTAKE_TOKEN", INTAKE_TOKEN);
        cmd
    }

    /// Starts (or restarts) node `name`, made on first use, and waits until it runs.
    pub fn start(&mut self, name: &str) {
        if !self.nodes.contains_key(name) {
            let dir = self.dir.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let port = free_port();
            let config = dir.join("dropdeploy.toml");
            std::fs::write(&config, self.config_text(name, &dir, port)).unwrap();
            for (app, _) in &self.setup.apps {
                std::fs::create_dir_all(dir.join("drop").join(app)).unwrap();
            }
            let node = Node {
                name: name.to_string(),
                dir,
                config,
                port,
                proc: None,
                starts: 0,
                stopped: false,
            };
            self.nodes.insert(name.to_string(), node);
        }
        let starts = self.nodes[name].starts + 1;
        let dir = self.nodes[name].dir.clone();
        let log = dir.join(format!("run{starts}.stderr"));
        let stdout = std::fs::File::create(dir.join(format!("run{starts}.stdout"))).unwrap();
        let stderr = std::fs::File::create(&log).unwrap();
        let child = self
            .command(name, &["run"])
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let node = self.nodes.get_mut(name).unwrap();
        node.proc = Some(child);
        node.starts = starts;
        node.stopped = false;
        let up = wait_for(Duration::from_secs(60), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("dropdeploy is running"))
        });
        assert!(
            up,
            "node {name} did not start:\n{}",
            self.nodes[name].logs()
        );
    }

    /// The names of the nodes running (not killed, not stopped for good, maybe paused).
    pub fn running(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.proc.is_some())
            .map(|n| n.name.clone())
            .collect()
    }

    /// SIGKILL, and waits for it to be gone. Returns when it was sent.
    pub fn kill9(&mut self, name: &str) -> Instant {
        let node = self.nodes.get_mut(name).unwrap();
        let mut child = node.proc.take().expect("the node runs");
        let at = Instant::now();
        child.kill().unwrap();
        child.wait().unwrap();
        at
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str, signal: &str) {
        let pid = self.nodes[name].pid().expect("the node runs");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Stops a node cleanly (SIGTERM) and waits for its exit; it is not started again.
    pub fn stop(&mut self, name: &str) -> std::process::ExitStatus {
        self.signal(name, "TERM");
        let node = self.nodes.get_mut(name).unwrap();
        let mut child = node.proc.take().unwrap();
        node.stopped = true;
        support::wait_exit(&mut child, Duration::from_secs(30))
    }

    /// One query's rows as text (`psql -At`, fields joined by `|`); `None` when the database
    /// cannot answer (restarting).
    pub fn sql(&self, query: &str) -> Option<Vec<String>> {
        let out = Command::new("psql")
            .arg(self.database_url())
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", query])
            .env("PGCONNECT_TIMEOUT", "3")
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
        )
    }

    /// The node holding `app`'s lease now (unexpired by the database's clock).
    pub fn holder(&self, app: &str) -> Option<String> {
        let rows = self.sql(&format!(
            "SELECT node FROM lanes WHERE app = '{app}' AND expires_at > now()"
        ))?;
        rows.into_iter().next().filter(|n| !n.is_empty())
    }

    /// Waits until a node other than `not` holds `app`'s lease; its name, or `None` on timeout.
    pub fn wait_holder_other_than(
        &self,
        app: &str,
        not: &str,
        timeout: Duration,
    ) -> Option<String> {
        let mut found = None;
        poll(timeout, Duration::from_millis(50), || {
            found = self.holder(app).filter(|n| n != not);
            found.is_some()
        });
        found
    }

    /// Pushes `file` for `app` to node `name` (`dropdeploy push`), retrying on failure (the
    /// database restarting) until `timeout`; the job id it printed.
    pub fn push(&self, name: &str, app: &str, file: &Path, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let to = self.nodes[name].url();
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = self
                .command(
                    name,
                    &["push", "--to", &to, "--app", app, file.to_str().unwrap()],
                )
                .output()
                .unwrap();
            let run = support::Run::from_output(out, &self.fake.api_token());
            if run.code == Some(0)
                && let Some(job) = run
                    .stdout
                    .split("as job ")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
            {
                return job.trim_end_matches(['.', ',', ':']).to_string();
            }
            last = run.all();
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "push of {} to {name} failed until the deadline: {last}",
            file.display()
        );
    }

    /// The fleet's history, read from the database (`history`: one entry per finished job),
    /// oldest first; `None` while the database cannot answer.
    pub fn history(&self) -> Option<Vec<serde_json::Value>> {
        let rows = self.sql("SELECT entry FROM history ORDER BY n")?;
        let text = rows.join("\n");
        support::assert_no_secret(&text, &self.fake.api_token());
        Some(
            rows.iter()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        )
    }

    /// Jobs in the database not finished yet, and finished ones whose dropped file is not
    /// placed yet by its origin node.
    pub fn unfinished_and_unplaced(&self) -> Option<(u64, u64)> {
        let rows = self.sql(
            "SELECT (SELECT count(*) FROM jobs WHERE finished_at IS NULL), \
             (SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL AND placed_at IS NULL \
              AND origin_path IS NOT NULL)",
        )?;
        let (a, b) = rows.first()?.split_once('|')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    /// Fails the test if a node that should run has exited (crashed).
    pub fn assert_alive(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(child) = node.proc.as_mut() {
                let status = child.try_wait().unwrap();
                assert!(
                    status.is_none(),
                    "node {} exited by itself: {status:?}\n{}",
                    node.name,
                    tail(&node.logs(), 80)
                );
            }
        }
    }

    /// Every node's logs, each under its name (for a failure's message).
    pub fn all_logs(&self) -> String {
        self.nodes
            .values()
            .map(|n| format!("===== {} =====\n{}", n.name, tail(&n.logs(), 120)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
