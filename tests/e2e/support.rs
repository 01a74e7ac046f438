//! Test harness: a world around the fake Scalingo API (the `fake-scalingo` crate), archives made
//! on the fly, and a runner for the real `dropdeploy` binary that checks every output for the
//! API token.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use fake_scalingo::{Endpoint, FakeConfig, FakeScalingo, Fault};

/// Polls `pred` every 10 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes a gzip-compressed tar at `path` holding `entries` (name, content, mode), in order.
pub fn tar_gz(path: &Path, entries: &[(&str, &[u8], u32)]) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, body, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        tar.append_data(&mut h, name, *body).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// A good archive: `root/` with a few files, gzip-compressed tar.
pub fn good_archive(dir: &Path, name: &str, root: &str) -> PathBuf {
    let path = dir.join(name);
    tar_gz(
        &path,
        &[
            (
                &format!("{root}/package.json"),
                br#"{"name":"demo"}"#,
                0o644,
            ),
            (
                &format!("{root}/index.js"),
                b"console.log('hello')\n",
                0o644,
            ),
            (&format!("{root}/{name}.txt"), name.as_bytes(), 0o644),
        ],
    );
    path
}

/// One test's world: a fake API, a temporary directory, a config file pointing at both.
pub struct World {
    pub fake: FakeScalingo,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
}

impl World {
    pub fn new() -> World {
        World::with(FakeConfig::default())
    }

    pub fn with(cfg: FakeConfig) -> World {
        let fake = FakeScalingo::start(cfg);
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let config = dir.path().join("dropdeploy.toml");
        std::fs::write(
            &config,
            format!(
                r#"state_dir = "{}"
shutdown_grace = "5s"

[scalingo]
timeout = "2s"
follow_interval = "20ms"
# The fake has no rate limit unless a test sets one: no budget to wait for either (the budget
# itself is tested in stream.rs, in deploy/scalingo/budget.rs and by bench/api_budget.sh).
api_rate_limit = 1000000

[retry]
initial = "20ms"
max_delay = "200ms"
budget = "30s"
"#,
                state.display()
            ),
        )
        .unwrap();
        World {
            fake,
            dir,
            config,
            state,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn archive(&self, name: &str) -> PathBuf {
        good_archive(self.dir.path(), name, "app")
    }

    /// `dropdeploy --config <world config> ARGS`, with the fake's URLs and token in the
    /// environment and nothing else of the caller's Scalingo settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = dropdeploy_command(&self.config, &self.fake, args);
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs the binary to its end; fails the test if the API token shows in any output.
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().unwrap();
        Run::new(out, &self.fake.api_token())
    }

    /// Starts the binary in the background, output to files in the world's directory.
    pub fn spawn(&self, args: &[&str], tag: &str) -> Child {
        let stdout = std::fs::File::create(self.path(&format!("{tag}.stdout"))).unwrap();
        let stderr = std::fs::File::create(self.path(&format!("{tag}.stderr"))).unwrap();
        self.command(args)
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    /// The job records in the spool, as JSON text.
    pub fn job_records(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.state.join("spool")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("job.json")).ok())
            .collect()
    }

    /// Writes more configuration after the defaults (for example a `[[app]]` table).
    pub fn append_config(&self, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.config)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

/// A finished run of the binary.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// A finished process's output; fails the test if the API token shows in it.
    pub fn from_output(out: Output, token: &str) -> Run {
        Run::new(out, token)
    }

    fn new(out: Output, token: &str) -> Run {
        let run = Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_no_secret(&run.stdout, token);
        assert_no_secret(&run.stderr, token);
        run
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn assert_contains(&self, needle: &str) -> &Run {
        assert!(
            self.all().contains(needle),
            "output lacks {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Fails the test if the token, or its long distinctive part, appears in `text`.
pub fn assert_no_secret(text: &str, token: &str) {
    assert!(!token.is_empty());
    assert!(
        !text.contains(token),
        "the API token leaked into the output:\n{text}"
    );
    let tail = &token[token.len().saturating_sub(12)..];
    assert!(
        !text.contains(tail),
        "part of the API token leaked:\n{text}"
    );
}

impl World {
    /// Adds an app with a drop folder `<dir>/drop/<app>` (settle 300 ms) and returns the folder.
    pub fn add_drop_app(&self, app: &str, extra: &str) -> PathBuf {
        let drop = self.dir.path().join("drop").join(app);
        self.append_config(&format!(
            "\n[[app]]\nname = \"{app}\"\ndrop_dir = \"{}\"\nsettle = \"300ms\"\n{extra}\n",
            drop.display()
        ));
        self.fake.add_app(app);
        drop
    }

    /// Starts `dropdeploy run` in the background (output in `<tag>.stdout` / `<tag>.stderr`)
    /// and waits until it watches its folders.
    pub fn start_daemon(&self, tag: &str) -> Proc {
        self.start_daemon_with_env(tag, &[])
    }

    /// [`World::start_daemon`] with more variables in the daemon's environment.
    pub fn start_daemon_with_env(&self, tag: &str, env: &[(&str, &str)]) -> Proc {
        let stdout = std::fs::File::create(self.path(&format!("{tag}.stdout"))).unwrap();
        let stderr = std::fs::File::create(self.path(&format!("{tag}.stderr"))).unwrap();
        let mut command = self.command(&["run"]);
        command.stdout(stdout).stderr(stderr);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = Proc(command.spawn().unwrap());
        let log = self.path(&format!("{tag}.stderr"));
        let up = wait_for(Duration::from_secs(30), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("dropdeploy is running"))
        });
        assert!(up, "daemon did not start:\n{}", self.log(tag));
        child
    }

    /// What a background run wrote on stderr.
    pub fn log(&self, tag: &str) -> String {
        let text = std::fs::read_to_string(self.path(&format!("{tag}.stderr"))).unwrap_or_default();
        assert_no_secret(&text, &self.fake.api_token());
        text
    }

    /// The history lines, parsed.
    pub fn history(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state.join("history.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until the history has at least `n` lines.
    pub fn wait_history(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let ok = wait_for(timeout, || self.history().len() >= n);
        let history = self.history();
        assert!(
            ok,
            "history has {} of {n} lines: {history:#?}",
            history.len()
        );
        history
    }

    /// Drops a good archive into `drop` the way a careful tool does: written under a
    /// temporary name, then renamed in.
    pub fn drop_archive(&self, drop: &Path, name: &str) -> PathBuf {
        std::fs::create_dir_all(drop).unwrap();
        let made = good_archive(self.dir.path(), name, "app");
        let partial = drop.join(format!("{name}.partial"));
        std::fs::rename(&made, &partial).unwrap();
        let target = drop.join(name);
        std::fs::rename(&partial, &target).unwrap();
        target
    }
}

/// A background process, killed (SIGKILL) if the test ends while it runs.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn signal(&self, name: &str) {
        signal(&self.0, name);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_exit(&mut self.0, timeout)
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

/// Sends a signal with kill(1).
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for a child to exit, at most `timeout`; kills it and fails the test otherwise.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Archive file names in a folder (not reason files), sorted.
pub fn archives_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tar.gz") || n.ends_with(".tgz"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// inotify watches held by a process: the `inotify wd:` lines of each inotify descriptor in
/// `/proc/<pid>/fdinfo` (the kernel's own count).
pub fn inotify_watches(pid: u32) -> usize {
    let mut total = 0;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    for fd in fds.flatten() {
        let is_inotify = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.to_string_lossy().contains("inotify"));
        if !is_inotify {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        total += info
            .lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .count();
    }
    total
}

impl World {
    /// Adds an app whose work comes from the source directory `<dir>/src/<app>` (made with a
    /// few files), debounce 200 ms, not deployed at start unless `extra` says so. Returns it.
    pub fn add_tree_app(&self, app: &str, extra: &str) -> PathBuf {
        let root = self.dir.path().join("src").join(app);
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::write(root.join("package.json"), br#"{"name":"demo"}"#).unwrap();
        std::fs::write(root.join("index.js"), b"console.log('v1')\n").unwrap();
        std::fs::write(root.join("lib/util.js"), b"module.exports = 1\n").unwrap();
        let deploy_on_start = if extra.contains("deploy_on_start") {
            String::new()
        } else {
            "deploy_on_start = false\n".to_string()
        };
        self.append_config(&format!(
            "\n[[app]]\nname = \"{app}\"\nsource_dir = \"{}\"\ndebounce = \"200ms\"\n{deploy_on_start}{extra}\n",
            root.display()
        ));
        self.fake.add_app(app);
        root
    }

    /// The archive deployed by a deployment, written to a file, listed with GNU tar.
    pub fn deployed_listing(&self, source_url: &str) -> (PathBuf, Vec<String>) {
        let bytes = self
            .fake
            .archive_at(source_url)
            .expect("the fake stored the archive");
        let path = self.path(&format!("deployed-{}.tar.gz", fastrand::u32(..)));
        std::fs::write(&path, bytes).unwrap();
        let out = Command::new("tar").arg("tzf").arg(&path).output().unwrap();
        assert!(out.status.success(), "GNU tar lists the deployed archive");
        let names = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        (path, names)
    }

    /// One file's content in a deployed archive, read by GNU tar.
    pub fn deployed_file(&self, archive: &Path, member: &str) -> String {
        let out = Command::new("tar")
            .arg("xzf")
            .arg(archive)
            .arg("-O")
            .arg(member)
            .output()
            .unwrap();
        assert!(out.status.success(), "{member} is in the archive");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl World {
    /// Adds a drop-folder app deploying to local releases under `<dir>/releases`; returns
    /// (drop folder, the app's releases directory).
    pub fn add_local_app(&self, app: &str, extra: &str) -> (PathBuf, PathBuf) {
        let drop = self.dir.path().join("drop").join(app);
        let releases = self.dir.path().join("releases");
        self.append_config(&format!(
            "\n[[app]]\nname = \"{app}\"\ndrop_dir = \"{}\"\nsettle = \"300ms\"\ntarget = \"local\"\nreleases_dir = \"{}\"\n{extra}\n",
            drop.display(),
            releases.display()
        ));
        (drop, releases.join(app))
    }
}

/// An archive `app/` with `index.html` saying `text`, and `run.sh` executable.
pub fn site_archive(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    tar_gz(
        &path,
        &[
            ("app/index.html", text.as_bytes(), 0o644),
            ("app/run.sh", b"#!/bin/sh\necho run\n", 0o755),
        ],
    );
    path
}

/// A tar.gz with one member `app/zeros` of `size` zero bytes, compressed by GNU `gzip -1` from
/// a pipe: a small file that takes long to check and expands far (a gzip bomb when large).
pub fn zeros_archive(path: &Path, size: u64) {
    let out = std::fs::File::create(path).unwrap();
    let mut gzip = Command::new("gzip")
        .arg("-1")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .unwrap();
    let mut stdin = gzip.stdin.take().unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_path("app/zeros").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    stdin.write_all(header.as_bytes()).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = size + 1024;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stdin.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    drop(stdin);
    assert!(gzip.wait().unwrap().success());
}

/// `dropdeploy --config CONFIG ARGS` with `fake`'s URLs and token in the environment, and none
/// of the caller's Scalingo, dropdeploy or database settings (every harness starts from this).
pub fn dropdeploy_command(config: &Path, fake: &FakeScalingo, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dropdeploy"));
    cmd.arg("--config").arg(config).args(args);
    for var in [
        "SCALINGO_API_TOKEN",
        "SCALINGO_API_URL",
        "SCALINGO_AUTH_URL",
        "SCALINGO_REGION",
        "DROPDEPLOY_CONFIG",
        "DROPDEPLOY_STATE_DIR",
        "DROPDEPLOY_DATABASE_URL",
        "DATABASE_URL",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("SCALINGO_API_URL", fake.url())
        .env("SCALINGO_AUTH_URL", fake.url())
        .env("SCALINGO_API_TOKEN", fake.api_token())
        .stdin(Stdio::null());
    cmd
}
