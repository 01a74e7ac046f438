//! Fleet mode's intake and view (issue 24 item 2), with the real binary, a real PostgreSQL
//! (`testpg`) and the fake API: a file dropped on one node is deployed by the node that holds
//! the lane and placed in done/ by the node it was dropped on; an upload is answered only once
//! the database has it; a drop while the database is down is kept and published when it is
//! back; `history` and `status` on any node show the fleet's jobs and lane holders; the
//! outage shows in `status` and `/metrics`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Proc, World, archives_in, wait_for};

const LONG: Duration = Duration::from_secs(90);
const TOKEN: &str = "fleet-intake-token-77a1";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One node of the fleet: its own configuration, state_dir and drop folder, the world's fake
/// API and the fleet's database.
struct Node {
    name: String,
    config: PathBuf,
    state: PathBuf,
    drop: PathBuf,
    metrics: u16,
    intake: u16,
}

impl Node {
    fn new(world: &World, name: &str) -> Node {
        let base = world.path(name);
        let state = base.join("state");
        let drop = base.join("drop");
        std::fs::create_dir_all(&drop).unwrap();
        let (metrics, intake) = (free_port(), free_port());
        let config = base.join("dropdeploy.toml");
        let common = std::fs::read_to_string(&world.config).unwrap();
        // The world's settings (fake API timings, retries), with this node's state_dir.
        let common: String = common
            .lines()
            .filter(|l| !l.starts_with("state_dir"))
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n{common}\n\
                 [intake]\nlisten = \"127.0.0.1:{intake}\"\n\n\
                 [cluster]\nnode = \"{name}\"\nlease = \"3s\"\npoll = \"200ms\"\n\n\
                 [[app]]\nname = \"my-app\"\ndrop_dir = \"{}\"\nsettle = \"300ms\"\n",
                state.display(),
                drop.display()
            ),
        )
        .unwrap();
        Node {
            name: name.to_string(),
            config,
            state,
            drop,
            metrics,
            intake,
        }
    }

    /// `dropdeploy --config <this node's> ARGS` with the fake API's settings, the fleet's
    /// database and the intake token.
    fn command(&self, world: &World, db: &str, args: &[&str]) -> Command {
        let mut cmd = crate::support::dropdeploy_command(&self.config, &world.fake, args);
        cmd.env("DROPDEPLOY_DATABASE_URL", db)
            .env("DROPDEPLOY_INTAKE_TOKEN", TOKEN);
        cmd
    }

    fn log_path(&self) -> PathBuf {
        self.state.parent().unwrap().join("daemon.stderr")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start(&self, world: &World, db: &str) -> Proc {
        let stderr = std::fs::File::create(self.log_path()).unwrap();
        let child = self
            .command(world, db, &["run"])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let proc = Proc(child);
        let up = wait_for(LONG, || self.log().contains("dropdeploy is running"));
        assert!(up, "node {} did not start:\n{}", self.name, self.log());
        proc
    }

    fn run(&self, world: &World, db: &str, args: &[&str]) -> (i32, String, String) {
        let out = self.command(world, db, args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn history(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state.join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn metrics(&self) -> String {
        http_get(self.metrics, "/metrics", None).1
    }
}

/// One plain HTTP/1.1 exchange.
fn http(port: u16, head: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"),
        b"",
    )
}

fn put_archive(port: u16, name: &str, body: &[u8]) -> (u16, String) {
    let head = format!(
        "PUT /v1/apps/my-app/archives/{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    http(port, &head, body)
}

/// Drops a good archive into `drop` (written aside, renamed in).
fn drop_file(world: &World, drop: &Path, name: &str) -> PathBuf {
    let made = crate::support::good_archive(&world.path("made"), name, "app");
    let target = drop.join(name);
    std::fs::rename(&made, &target).unwrap();
    target
}

/// The ids in the fleet's `jobs` table.
fn job_ids(db: &str) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(db, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let rows = client.query("SELECT id FROM jobs", &[]).await.unwrap();
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    })
}

/// The lane holder's name as `status --json` on `node` says, if any.
fn holder(world: &World, node: &Node, db: &str) -> Option<String> {
    let (_, out, _) = node.run(world, db, &["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&out).ok()?;
    doc["apps"]
        .as_array()?
        .iter()
        .find(|a| a["app"] == "my-app")?["lane"]["node"]
        .as_str()
        .map(str::to_string)
}

/// The fleet's database and a world whose fake API both nodes use.
fn fleet() -> (testpg::Cluster, World) {
    // A private server: one test stops and starts it again.
    let pg = testpg::Cluster::start_local();
    let world = World::new();
    world.fake.add_app("my-app");
    std::fs::create_dir_all(world.path("made")).unwrap();
    (pg, world)
}

/// B starts first and takes the lane; A starts after. Returns (A, B) and their daemons.
fn two_nodes(world: &World, db: &str) -> ((Node, Proc), (Node, Proc)) {
    let b = Node::new(world, "node-b");
    let b_proc = b.start(world, db);
    let held = wait_for(LONG, || holder(world, &b, db).as_deref() == Some("node-b"));
    assert!(held, "node-b never held the lane:\n{}", b.log());
    let a = Node::new(world, "node-a");
    let a_proc = a.start(world, db);
    ((a, a_proc), (b, b_proc))
}

#[test]
fn a_file_dropped_on_one_node_is_deployed_by_the_lane_holder_and_placed_by_its_origin() {
    let (pg, world) = fleet();
    let db = pg.url().to_string();
    let ((a, _a_proc), (b, _b_proc)) = two_nodes(&world, &db);
    std::fs::write(b.drop.join("untouched.txt"), b"B's own").unwrap();

    drop_file(&world, &a.drop, "site.tar.gz");
    // Placed: the file in done/ and the history line (written after the move) on A.
    let placed = wait_for(LONG, || {
        archives_in(&a.drop.join("done")) == ["site.tar.gz"] && a.history().len() == 1
    });
    assert!(
        placed,
        "A did not place the file:\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );

    // Deployed once, by B: the fake saw one deployment; B's log names the job.
    assert_eq!(world.fake.deployments("my-app").len(), 1);
    let history = a.history();
    assert_eq!(history.len(), 1, "A:\n{}\nB:\n{}", a.log(), b.log());
    let line = &history[0];
    assert_eq!(line["outcome"], "succeeded");
    let job = line["job"].as_str().unwrap();
    assert!(b.log().contains(job), "B did not drive {job}:\n{}", b.log());
    assert!(
        !a.log().contains("deployment created"),
        "A deployed:\n{}",
        a.log()
    );
    // B never touched A's folders, and A's are B's as they were.
    assert!(archives_in(&b.drop.join("done")).is_empty());
    assert!(archives_in(&b.drop.join("failed")).is_empty());
    let a_drop = a.drop.display().to_string();
    assert!(
        !b.log().contains(&a_drop),
        "B names A's folder:\n{}",
        b.log()
    );
    assert_eq!(
        std::fs::read_to_string(b.drop.join("untouched.txt")).unwrap(),
        "B's own"
    );
    // `history` on B lists the job A originated; `status` on A names B as the lane holder.
    let (code, out, err) = b.run(&world, &db, &["history", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(job), "B's history lacks {job}:\n{out}");
    let (code, out, err) = a.run(&world, &db, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lane:      held by node-b until"), "{out}");
    assert!(
        out.contains("node-a: last seen") && out.contains("node-b: last seen"),
        "{out}"
    );
    assert!(
        !out.contains(&db) && !err.contains(&db),
        "the database URL shows:\n{out}{err}"
    );
    // What cannot work through the store yet says so, and acts on nothing.
    let (code, _, err) = a.run(&world, &db, &["jobs", "resume", job]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not work in fleet mode"), "{err}");
}

#[test]
fn an_upload_is_answered_only_once_the_database_has_the_job() {
    let (pg, world) = fleet();
    let db = pg.url().to_string();
    let ((a, _a_proc), (_b, _b_proc)) = two_nodes(&world, &db);
    let archive = std::fs::read(crate::support::good_archive(
        &world.path("made"),
        "up.tar.gz",
        "app",
    ))
    .unwrap();
    let (status, body) = put_archive(a.intake, "up.tar.gz", &archive);
    assert_eq!(status, 202, "{body}");
    let job: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = job["job"].as_str().unwrap();
    // At the moment of the 202 the job is in the database.
    assert_eq!(job_ids(&db), [id.to_string()]);
    let done = wait_for(LONG, || world.fake.deployments("my-app").len() == 1);
    assert!(done, "the upload was not deployed:\n{}", a.log());
}

#[test]
fn a_drop_while_the_database_is_down_is_kept_and_deployed_once_it_is_back() {
    let (mut pg, world) = fleet();
    let db = pg.url().to_string();
    let ((a, _a_proc), (b, _b_proc)) = two_nodes(&world, &db);

    pg.stop();
    let seen = wait_for(LONG, || {
        a.metrics()
            .contains("dropdeploy_database_up{node=\"node-a\"} 0")
    });
    assert!(seen, "the outage is not in A's metrics:\n{}", a.metrics());
    let (code, out, _) = a.run(&world, &db, &["status"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("database: UNREACHABLE"), "{out}");
    assert!(
        out.contains("cannot reach the fleet's database since"),
        "{out}"
    );

    drop_file(&world, &a.drop, "down.tar.gz");
    // Claimed into A's spool, waiting to be published.
    let waiting = wait_for(LONG, || {
        a.run(&world, &db, &["status"])
            .1
            .contains("waiting to reach the fleet's store")
    });
    assert!(waiting, "no wait shown:\n{}", a.log());
    assert!(world.fake.deployments("my-app").is_empty());

    pg.start_again();
    let placed = wait_for(LONG, || {
        archives_in(&a.drop.join("done")) == ["down.tar.gz"]
    });
    assert!(
        placed,
        "not deployed after the database came back:\nA:\n{}\nB:\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(world.fake.deployments("my-app").len(), 1, "deployed once");
    let up = wait_for(LONG, || {
        a.metrics()
            .contains("dropdeploy_database_up{node=\"node-a\"} 1")
    });
    assert!(up, "{}", a.metrics());
}
