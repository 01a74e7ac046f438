//! Fleet harness: one throw-away PostgreSQL (`testpg`), one fake API, and nodes, each with its
//! own config and `state_dir`, running the real binary in fleet mode. Jobs can be put into the
//! fleet's store from the test as any node's intake does (`Fleet::add_job`), and the store
//! read back, through the library's `PgStore`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use dropdeploy::config::Secret;
use dropdeploy::fleet::PgStore;
use dropdeploy::queue::spool::{Job, Spool};
use dropdeploy::queue::store::Store;

use crate::support::{FakeConfig, FakeScalingo, Proc, assert_no_secret, good_archive, wait_for};

/// A fleet: the database, the fake platform, a directory for the nodes.
pub struct Fleet {
    pub fake: FakeScalingo,
    pub dir: tempfile::TempDir,
    pub pg: testpg::Cluster,
}

/// One node: its name and config file (its `state_dir` is `<name>/state`).
pub struct Node {
    pub name: String,
    pub config: PathBuf,
}

impl Fleet {
    pub fn new(cfg: FakeConfig) -> Fleet {
        Fleet {
            fake: FakeScalingo::start(cfg),
            dir: tempfile::tempdir().unwrap(),
            pg: testpg::Cluster::start(),
        }
    }

    /// A node with the given apps (each with a drop folder of its own under the node's
    /// directory) and `[cluster]` settings (`lease`, `poll`).
    pub fn node(&self, name: &str, apps: &[&str], lease: &str, poll: &str) -> Node {
        let home = self.dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        let state = home.join("state");
        let mut text = format!(
            r#"state_dir = "{}"
shutdown_grace = "5s"

[scalingo]
timeout = "2s"
follow_interval = "50ms"
api_rate_limit = 1000000

[retry]
initial = "20ms"
max_delay = "200ms"
budget = "60s"

[cluster]
node = "{name}"
lease = "{lease}"
poll = "{poll}"
"#,
            state.display()
        );
        for app in apps {
            self.fake.add_app(app);
            text.push_str(&format!(
                "\n[[app]]\nname = \"{app}\"\ndrop_dir = \"{}\"\nsettle = \"300ms\"\nqueue = \"all\"\n",
                home.join("drop").join(app).display()
            ));
        }
        let config = home.join("dropdeploy.toml");
        std::fs::write(&config, text).unwrap();
        Node {
            name: name.to_string(),
            config,
        }
    }

    /// `dropdeploy --config <node's> ARGS` with the fake's URLs and token and the database's
    /// URL in the environment.
    pub fn command(&self, node: &Node, args: &[&str]) -> Command {
        let mut cmd = crate::support::dropdeploy_command(&node.config, &self.fake, args);
        cmd.env("DROPDEPLOY_DATABASE_URL", self.pg.url());
        cmd
    }

    /// Starts `dropdeploy run` on the node (output in `<node>.stderr`) and waits until it
    /// runs.
    pub fn start(&self, node: &Node) -> Proc {
        let stdout = std::fs::File::create(self.log_path(node, "stdout")).unwrap();
        let stderr = std::fs::File::create(self.log_path(node, "stderr")).unwrap();
        let mut command = self.command(node, &["run"]);
        command.stdout(stdout).stderr(stderr);
        let child = Proc(command.spawn().unwrap());
        let up = wait_for(Duration::from_secs(60), || {
            self.log(node).contains("dropdeploy is running")
        });
        assert!(up, "node {} did not start:\n{}", node.name, self.log(node));
        child
    }

    fn log_path(&self, node: &Node, stream: &str) -> PathBuf {
        self.dir.path().join(format!("{}.{stream}", node.name))
    }

    /// What the node's daemon wrote on stderr (never the API token, nor the database URL).
    pub fn log(&self, node: &Node) -> String {
        let text = std::fs::read_to_string(self.log_path(node, "stderr")).unwrap_or_default();
        assert_no_secret(&text, &self.fake.api_token());
        text
    }

    /// Waits until the node's log holds `needle`.
    pub fn wait_log(&self, node: &Node, needle: &str, timeout: Duration) -> bool {
        wait_for(timeout, || self.log(node).contains(needle))
    }

    /// The fleet's store, as a node named `name` sees it.
    pub fn store(&self, name: &str) -> PgStore {
        let store = PgStore::new(&Secret::new(self.pg.url()), name).unwrap();
        store.migrate().unwrap();
        store
    }

    /// Makes an archive job for `app` and adds it to the fleet's store as a node's intake
    /// does (the node `ci`, which drives nothing). Returns the job as added.
    pub fn add_job(&self, app: &str) -> Job {
        let scratch = self.dir.path().join("ci");
        let spool = Spool::open(scratch.join("spool")).unwrap();
        let archive = good_archive(&scratch, &format!("{app}.tar.gz"), "app");
        let mut job = dropdeploy::queue::intake::enqueue_archive(
            &spool,
            app,
            &archive,
            dropdeploy::queue::intake::Transfer::Copy,
            app,
            None,
            &Default::default(),
        )
        .unwrap();
        job.seq = None;
        let store = self.store("ci");
        let archive = spool.archive_path(&job.id);
        store.add(&mut job, Some(&archive)).unwrap();
        job
    }

    /// Waits until the store holds the job's outcome; returns its history entry.
    pub fn wait_finished(&self, app: &str, id: &str, timeout: Duration) -> serde_json::Value {
        let store = self.store("ci");
        let mut entry = None;
        let done = wait_for(timeout, || {
            entry = store
                .history(Some(app), 100)
                .unwrap_or_default()
                .into_iter()
                .find(|f| f.job == id)
                .map(|f| f.entry);
            entry.is_some()
        });
        assert!(done, "job {id} did not finish within {timeout:?}");
        entry.unwrap()
    }
}
