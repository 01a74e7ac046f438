//! The apps themselves, for health checks: `GET /app/<name>/<any path>` answers as the app
//! would once deployed (no bearer needed, like a public app URL).
//!
//! What a deployed app does is written in its archive, in `<root>/fake-app.txt`, one
//! `key=value` per line:
//! - `status=500`: every answer has that status (default 200);
//! - `body=text`: the answer's body (default `ok`), followed by ` <version>`;
//! - `version=v2`: a name for the answers (default: the deployment's git_ref);
//! - `die_after=3`: from 3 seconds after the deployment, the app answers 503 `app crashed`;
//! - `start_after=3`: for 3 seconds after the deployment, the app answers 503 `starting`.
//!
//! [`crate::FakeScalingo::break_app`] breaks an app whatever it runs (as a database down would).
//! A Scalingo app serves its newest deployment that ended in `success`. An app registered
//! with [`crate::FakeScalingo::serve_release`] is a local release instead: its answers follow
//! the `fake-app.txt` found under `<releases>/current/` at each request.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file, at an archive's root folder, that says how the app behaves.
pub const FILE: &str = "fake-app.txt";

/// How an app behaves, from its `fake-app.txt`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behaviour {
    pub status: Option<u16>,
    pub body: Option<String>,
    pub version: Option<String>,
    pub die_after: Option<Duration>,
    pub start_after: Option<Duration>,
}

impl Behaviour {
    /// Parses `key=value` lines; unknown keys are ignored.
    pub fn parse(text: &str) -> Behaviour {
        let mut b = Behaviour::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "status" => b.status = value.parse().ok(),
                "body" => b.body = Some(value.to_string()),
                "version" => b.version = Some(value.to_string()),
                "die_after" => b.die_after = value.parse().ok().map(Duration::from_secs_f64),
                "start_after" => b.start_after = value.parse().ok().map(Duration::from_secs_f64),
                _ => {}
            }
        }
        b
    }

    /// The behaviour written in a `.tar.gz` (the default when it has no `fake-app.txt`).
    pub fn from_archive(path: &Path) -> Behaviour {
        let Ok(file) = std::fs::File::open(path) else {
            return Behaviour::default();
        };
        let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
        let mut archive = tar::Archive::new(gz);
        let Ok(entries) = archive.entries() else {
            return Behaviour::default();
        };
        for entry in entries.flatten() {
            let mut entry = entry;
            let is_ours = entry.path().ok().is_some_and(|p| {
                let parts: Vec<_> = p.components().collect();
                parts.len() == 2 && parts[1].as_os_str() == FILE
            });
            if is_ours {
                let mut text = String::new();
                let _ = entry.by_ref().take(64 * 1024).read_to_string(&mut text);
                return Behaviour::parse(&text);
            }
        }
        Behaviour::default()
    }
}

/// What an app serves now.
#[derive(Debug, Clone)]
pub struct Serving {
    pub behaviour: Behaviour,
    pub since: Instant,
    pub git_ref: Option<String>,
}

/// Apps being served: Scalingo apps by their last successful deployment, local releases by
/// their `current` link.
#[derive(Debug, Default)]
pub struct Apps {
    deployed: HashMap<String, Serving>,
    local: HashMap<String, PathBuf>,
    /// Apps broken whatever they run (a database down, say): the status they answer.
    broken: HashMap<String, u16>,
}

impl Apps {
    /// A deployment of `app` ended in `success`: the app now behaves as its archive says.
    pub fn deployed(&mut self, app: &str, behaviour: Behaviour, git_ref: Option<String>) {
        self.deployed.insert(
            app.to_string(),
            Serving {
                behaviour,
                since: Instant::now(),
                git_ref,
            },
        );
    }

    pub fn serve_release(&mut self, name: &str, app_dir: &Path) {
        self.local.insert(name.to_string(), app_dir.to_path_buf());
    }

    /// Makes `app` answer `status` whatever it runs, or (`None`) as its release says again.
    pub fn set_broken(&mut self, app: &str, status: Option<u16>) {
        match status {
            Some(status) => self.broken.insert(app.to_string(), status),
            None => self.broken.remove(app),
        };
    }

    /// The answer of `app` now: (status, body).
    pub fn answer(&self, app: &str) -> (u16, String) {
        if let Some(status) = self.broken.get(app) {
            return (*status, "broken from outside".to_string());
        }
        if let Some(dir) = self.local.get(app) {
            let current = dir.join("current");
            let Ok(target) = std::fs::canonicalize(&current) else {
                return (503, "no current release".to_string());
            };
            let text = std::fs::read_to_string(target.join(FILE)).unwrap_or_default();
            let behaviour = Behaviour::parse(&text);
            let since = std::fs::symlink_metadata(&current)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned());
            return answer_of(&behaviour, since, name.as_deref());
        }
        match self.deployed.get(app) {
            None => (404, "no app deployed here".to_string()),
            Some(s) => answer_of(&s.behaviour, s.since.elapsed(), s.git_ref.as_deref()),
        }
    }
}

fn answer_of(b: &Behaviour, up_for: Duration, fallback_version: Option<&str>) -> (u16, String) {
    if b.die_after.is_some_and(|d| up_for >= d) {
        return (503, "app crashed".to_string());
    }
    if b.start_after.is_some_and(|d| up_for < d) {
        return (503, "starting".to_string());
    }
    let version = b
        .version
        .as_deref()
        .or(fallback_version)
        .unwrap_or("unknown");
    let body = b.body.as_deref().unwrap_or("ok");
    (b.status.unwrap_or(200), format!("{body} {version}"))
}
