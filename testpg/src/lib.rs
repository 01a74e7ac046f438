//! A throw-away PostgreSQL for tests and benches.
//!
//! [`Cluster::start`] gives every caller its own database:
//! - when `DATABASE_URL` is set, a fresh database on that server (dropped at the end);
//! - otherwise a private server: `initdb` into a temporary directory, `postgres` on a free
//!   port of 127.0.0.1 with its socket in that directory, run as the `postgres` user when this
//!   process is root (PostgreSQL refuses to run as root). Dropping the cluster stops the
//!   server (immediate shutdown) and removes the directory.
//!
//! [`Cluster::start_local`] always runs a private server, for the tests that stop and restart
//! it ([`Cluster::stop`], [`Cluster::start_again`], [`Cluster::restart`]).
//!
//! There is no skip: without PostgreSQL's programs and without `DATABASE_URL`, starting a
//! cluster panics and says how to install them.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections, and to stop.
const DEADLINE: Duration = Duration::from_secs(30);

/// The superuser that `initdb` creates in a private cluster.
const SUPERUSER: &str = "postgres";

/// The database a private cluster creates for its caller.
const DATABASE: &str = "testpg";

static SERIAL: AtomicU32 = AtomicU32::new(0);

/// A PostgreSQL database for one test: see the [crate docs](crate).
#[derive(Debug)]
pub struct Cluster {
    url: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A database made on the server of `DATABASE_URL`.
    External { admin_url: String, database: String },
    /// A private server.
    Local(Box<Server>),
}

/// A private server: its directory, port and process.
#[derive(Debug)]
struct Server {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The `postgres` user's ids when this process runs as root.
    user: Option<(u32, u32)>,
    child: Option<Child>,
    /// More `-c name=value` settings.
    options: Vec<String>,
}

impl Cluster {
    /// A fresh database: on `DATABASE_URL`'s server if set, else on a private server.
    pub fn start() -> Cluster {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Cluster::external(url.trim()),
            _ => Cluster::start_local(),
        }
    }

    /// A private server, whatever `DATABASE_URL` says (for tests that stop it).
    pub fn start_local() -> Cluster {
        Cluster::local(None)
    }

    /// A private server that also speaks TLS with the given certificate and key (PEM files,
    /// copied into its directory). Its URL does not ask for TLS: add `sslmode=…` to it.
    pub fn start_local_tls(cert: &Path, key: &Path) -> Cluster {
        Cluster::local(Some((cert, key)))
    }

    fn local(tls: Option<(&Path, &Path)>) -> Cluster {
        let bin = find_bin();
        let dir = tempfile::Builder::new()
            .prefix("testpg-")
            .tempdir_in(std::env::temp_dir())
            .unwrap_or_else(|e| panic!("testpg: cannot make a temporary directory: {e}"));
        let user = if unsafe { libc::geteuid() } == 0 {
            let ids = postgres_user();
            if let Err(e) = std::os::unix::fs::chown(dir.path(), Some(ids.0), Some(ids.1)) {
                panic!(
                    "testpg: cannot give {} to the postgres user: {e}",
                    dir.path().display()
                );
            }
            Some(ids)
        } else {
            None
        };
        let mut server = Server {
            port: free_port(),
            dir,
            bin,
            user,
            child: None,
            options: Vec::new(),
        };
        if let Some((cert, key)) = tls {
            server.add_tls(cert, key);
        }
        server.initdb();
        server.spawn();
        let admin = format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", server.port);
        server.wait_ready(&admin);
        admin_exec(&admin, &format!("CREATE DATABASE {DATABASE}"));
        Cluster {
            url: format!(
                "postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}",
                server.port
            ),
            kind: Kind::Local(Box::new(server)),
        }
    }

    fn external(admin_url: &str) -> Cluster {
        let database = format!(
            "testpg_{}_{}_{}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        admin_exec(admin_url, &format!("CREATE DATABASE {database}"));
        Cluster {
            url: with_database(admin_url, &database),
            kind: Kind::External {
                admin_url: admin_url.to_owned(),
                database,
            },
        }
    }

    /// The database's connection URL (`postgres://…`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port of a private server (`None` on `DATABASE_URL`'s server).
    pub fn port(&self) -> Option<u16> {
        match &self.kind {
            Kind::Local(server) => Some(server.port),
            Kind::External { .. } => None,
        }
    }

    /// Stops the server (a fast shutdown: clients are disconnected), keeping its data.
    pub fn stop(&mut self) {
        self.server("stop").shutdown(libc::SIGINT);
    }

    /// Starts the stopped server again, on the same port with the same data, and waits until
    /// it accepts connections.
    pub fn start_again(&mut self) {
        let url = self.url.clone();
        let server = self.server("start");
        if server.child.is_none() {
            server.spawn();
        }
        server.wait_ready(&url);
    }

    /// Stops and starts the server ("PostgreSQL restarted mid-run").
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    fn server(&mut self, what: &str) -> &mut Server {
        match &mut self.kind {
            Kind::Local(server) => server,
            Kind::External { .. } => panic!(
                "testpg: cannot {what} DATABASE_URL's server: use Cluster::start_local() in \
                 tests that stop or restart PostgreSQL"
            ),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match &mut self.kind {
            Kind::Local(server) => server.shutdown(libc::SIGQUIT),
            Kind::External {
                admin_url,
                database,
            } => {
                let sql = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
                if let Err(e) = try_admin_exec(admin_url, &sql) {
                    eprintln!("testpg: cannot drop the database {database}: {e}");
                }
            }
        }
    }
}

impl Server {
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path()).env_remove("PGDATA");
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        command
    }

    /// Copies the certificate and key in (the key readable by the server's user only, as
    /// PostgreSQL demands) and turns TLS on.
    fn add_tls(&mut self, cert: &Path, key: &Path) {
        for (from, name, mode) in [(cert, "server.crt", 0o644), (key, "server.key", 0o600)] {
            let to = self.dir.path().join(name);
            std::fs::copy(from, &to)
                .and_then(|_| {
                    std::fs::set_permissions(
                        &to,
                        std::os::unix::fs::PermissionsExt::from_mode(mode),
                    )
                })
                .unwrap_or_else(|e| panic!("testpg: cannot copy {}: {e}", from.display()));
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("testpg: cannot chown {}: {e}", to.display()));
            }
            let setting = if name == "server.crt" {
                "ssl_cert_file"
            } else {
                "ssl_key_file"
            };
            self.options.push(format!("{setting}={}", to.display()));
        }
        self.options.push("ssl=on".into());
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn initdb(&self) {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["--no-sync", "-A", "trust", "-U", SUPERUSER])
            .args(["-E", "UTF8", "--locale=C"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("testpg: cannot run initdb: {e}"));
        if !output.status.success() {
            panic!(
                "testpg: initdb failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap_or_else(|e| panic!("testpg: cannot open the server's log: {e}"));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("testpg: cannot open the server's log: {e}"));
        // fsync=off: a crash of the machine would lose this cluster's data, which is thrown
        // away anyway; a server stop or restart (the scenarios tests play) loses nothing,
        // since the data still reaches the operating system's page cache.
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .args(self.options.iter().flat_map(|o| ["-c", o.as_str()]))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("testpg: cannot start postgres: {e}"));
        self.child = Some(child);
    }

    /// Polls until the server accepts connections on `url`, within [`DEADLINE`].
    fn wait_ready(&mut self, url: &str) {
        let start = Instant::now();
        loop {
            let error = match try_admin_exec(url, "SELECT 1") {
                Ok(()) => return,
                Err(e) => e,
            };
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "testpg: postgres exited ({status}) before accepting connections: {}",
                    self.log_tail()
                );
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "testpg: postgres did not accept connections within {DEADLINE:?} ({error}): {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Signals the server (SIGINT: fast shutdown, SIGQUIT: immediate) and waits until it and
    /// its processes are gone; SIGKILL past the deadline.
    fn shutdown(&mut self, signal: libc::c_int) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        unsafe { libc::kill(pid, signal) };
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if start.elapsed() > DEADLINE => {
                    eprintln!("testpg: postgres did not stop within {DEADLINE:?}: killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(self.log()) {
            let _ = file.read_to_string(&mut text);
        }
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_owned()
    }
}

/// The directory of `initdb`, `postgres`: the newest `/usr/lib/postgresql/*/bin`, else `PATH`.
fn find_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        if dir.join("initdb").exists() && dir.join("postgres").exists() {
            return dir;
        }
    }
    panic!(
        "testpg: PostgreSQL's programs (initdb, postgres) are not installed and DATABASE_URL is \
         not set. Install them (Debian: apt-get install postgresql; scripts/test does it when \
         run as root), or set DATABASE_URL to a server where this user may create databases."
    )
}

/// The `postgres` user's uid and gid (from /etc/passwd).
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_else(|e| panic!("testpg: cannot read /etc/passwd: {e}"));
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3
            && fields[0] == "postgres"
            && let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse())
        {
            return (uid, gid);
        }
    }
    panic!(
        "testpg: running as root, and there is no postgres user to run PostgreSQL as \
         (PostgreSQL refuses to run as root): install Debian's postgresql package, which adds it"
    )
}

/// A port of 127.0.0.1 free now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|e| panic!("testpg: no free port on 127.0.0.1: {e}"))
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let rest = &url[after_scheme..];
    let authority_end = rest
        .find(['/', '?'])
        .map(|i| after_scheme + i)
        .unwrap_or(url.len());
    let query = url[authority_end..]
        .find('?')
        .map(|i| &url[authority_end + i..])
        .unwrap_or("");
    format!("{}/{database}{query}", &url[..authority_end])
}

fn admin_exec(url: &str, sql: &str) {
    if let Err(e) = try_admin_exec(url, sql) {
        panic!("testpg: {sql}: {e}");
    }
}

/// Runs one statement on its own connection, on a thread of its own (so that callers may be
/// inside a tokio runtime or not).
fn try_admin_exec(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let connect = tokio_postgres::connect(&url, tokio_postgres::NoTls);
            let (client, connection) = tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .map_err(|_| "connecting timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            let task = tokio::spawn(connection);
            let result = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = task.await;
            result
        })
    })
    .join()
    .map_err(|_| "the connecting thread panicked".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_the_path_only() {
        assert_eq!(
            with_database("postgres://u:p@h:5/db?sslmode=require", "x"),
            "postgres://u:p@h:5/x?sslmode=require"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(with_database("postgres://h?a=b", "x"), "postgres://h/x?a=b");
    }

    fn query_one(url: &str) -> i32 {
        let url = url.to_owned();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(connection);
                client
                    .batch_execute("CREATE TABLE IF NOT EXISTS t (v int); INSERT INTO t VALUES (1)")
                    .await
                    .unwrap();
                let row = client
                    .query_one("SELECT count(*)::int FROM t", &[])
                    .await
                    .unwrap();
                row.get::<_, i32>(0)
            })
        })
        .join()
        .unwrap()
    }

    #[test]
    fn starts_connects_restarts_and_cleans_up() {
        let mut cluster = Cluster::start_local();
        assert_eq!(query_one(cluster.url()), 1);
        let dir = match &cluster.kind {
            Kind::Local(server) => server.dir.path().to_owned(),
            Kind::External { .. } => unreachable!(),
        };
        cluster.restart();
        // Same port, same data: the row written before the restart is still there.
        assert_eq!(query_one(cluster.url()), 2);
        cluster.stop();
        assert!(try_admin_exec(cluster.url(), "SELECT 1").is_err());
        cluster.start_again();
        assert_eq!(query_one(cluster.url()), 3);
        let url = cluster.url().to_owned();
        drop(cluster);
        assert!(!dir.exists(), "the cluster's directory is removed");
        assert!(
            try_admin_exec(&url, "SELECT 1").is_err(),
            "the server is stopped"
        );
    }

    #[test]
    fn start_gives_each_cluster_its_own_database() {
        let a = Cluster::start();
        let b = Cluster::start();
        assert_ne!(a.url(), b.url());
        assert_eq!(query_one(a.url()), 1);
        assert_eq!(query_one(b.url()), 1);
    }
}
