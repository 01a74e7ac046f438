//! Test harness: the fake Scalingo API, archives made on the fly, and a runner for the real
//! `dropdeploy` binary that checks every output for the API token.
#![allow(dead_code)]

pub mod fake_scalingo;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
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

/// A good archive: `root/` with a few files, gzip-compressed tar.
pub fn good_archive(dir: &Path, name: &str, root: &str) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut add = |p: &str, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, p, body).unwrap();
    };
    add(&format!("{root}/package.json"), br#"{"name":"demo"}"#);
    add(&format!("{root}/index.js"), b"console.log('hello')\n");
    add(&format!("{root}/{name}.txt"), name.as_bytes());
    tar.into_inner().unwrap().finish().unwrap();
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

[scalingo]
timeout = "2s"
follow_interval = "20ms"

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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dropdeploy"));
        cmd.arg("--config").arg(&self.config).args(args);
        for var in [
            "SCALINGO_API_TOKEN",
            "SCALINGO_API_URL",
            "SCALINGO_AUTH_URL",
            "SCALINGO_REGION",
            "DROPDEPLOY_CONFIG",
            "DROPDEPLOY_STATE_DIR",
            "RUST_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("SCALINGO_API_URL", self.fake.url())
            .env("SCALINGO_AUTH_URL", self.fake.url())
            .env("SCALINGO_API_TOKEN", self.fake.api_token())
            .stdin(Stdio::null());
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
