//! What the running daemon is waiting on, where `dropdeploy status` can see it.
//!
//! Every state that waits for something outside the daemon (a file it could not claim, a
//! source directory that vanished, …) is put on the [`Board`] with its cause and, when a timer
//! will try again, the time of the next try; it is taken off when the wait ends. The board is
//! written to `<state_dir>/live.json` (atomically) on every change, and `status` shows it while
//! the daemon holds its lock ([`crate::lock::StateLock`]), so a stale file of a dead daemon
//! is never shown as current.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::queue::spool::{Timestamp, now};

/// The file the board is written to, inside `state_dir`.
pub const LIVE_NAME: &str = "live.json";

/// What kind of thing waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    /// A file in a drop folder that is complete but could not be claimed (I/O error).
    Claim,
    /// A file in a drop folder that is not complete yet (open for writing, or still changing).
    Settle,
    /// A watched folder (drop folder or source directory) that cannot be watched right now.
    Watch,
    /// A deployment's health check (warmup, probes, soak), bounded by its settings.
    Verify,
    /// An app whose rollback was unhealthy too: it waits for a new job or `dropdeploy resume`.
    Attention,
    /// Calls to the platform's API held back: its rate limit answered 429, or the client's own
    /// budget of requests a minute is spent.
    RateLimit,
    /// A job that waits because another process sharing the `state_dir` (a one-shot `deploy`,
    /// the daemon) deploys the same app; looked at again every few seconds.
    AppBusy,
    /// Fleet mode: a job made on this node (a claimed file, an upload, a packed tree) that the
    /// fleet's store could not take yet; it stays in the local spool and is tried again.
    Publish,
    /// Fleet mode: the fleet's database cannot be reached (since when: the wait's `since`).
    Database,
}

impl WaitKind {
    /// How `status` says it.
    pub fn label(self) -> &'static str {
        match self {
            WaitKind::Claim => "waiting to claim",
            WaitKind::Settle => "waiting for a writer",
            WaitKind::Watch => "not watched",
            WaitKind::Verify => "verifying",
            WaitKind::Attention => "needs attention",
            WaitKind::RateLimit => "API calls paused",
            WaitKind::AppBusy => "waiting for another process",
            WaitKind::Publish => "waiting to reach the fleet's store",
            WaitKind::Database => "database unreachable",
        }
    }
}

/// One wait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wait {
    pub app: String,
    pub kind: WaitKind,
    /// The file or folder concerned.
    pub subject: String,
    /// Why, in words.
    pub cause: String,
    /// Since when (this cause).
    pub since: Timestamp,
    /// When a timer tries again, if one does (by the wall clock when the wait was put).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// The same moment on the machine's monotonic clock (`CLOCK_MONOTONIC`, seconds), which
    /// every process reads alike and no wall-clock jump moves: see [`Wait::next_try`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_monotonic: Option<u64>,
}

impl Wait {
    /// When the timer tries again, by the wall clock now: the timers run on the monotonic
    /// clock, so a wall clock stepped since the wait was put does not move the next try.
    pub fn next_try(&self) -> Option<Timestamp> {
        match (self.retry_monotonic, monotonic_secs()) {
            (Some(at), Some(mono)) => Some(now() + at.saturating_sub(mono)),
            _ => self.retry_at,
        }
    }
}

/// The machine's monotonic clock, in seconds.
fn monotonic_secs() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).ok()
}

/// The content of `live.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveFile {
    pub pid: u32,
    pub waits: Vec<Wait>,
}

type Key = (String, WaitKind, String);

/// The daemon's waits, shared by its tasks. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Board {
    /// `None`: kept in memory only (one-shot commands, tests).
    path: Option<PathBuf>,
    waits: Mutex<BTreeMap<Key, Wait>>,
}

impl Board {
    /// A board published to `<state_dir>/live.json` (written empty now).
    pub fn published(state_dir: &Path) -> Board {
        let board = Board {
            path: Some(state_dir.join(LIVE_NAME)),
            waits: Mutex::new(BTreeMap::new()),
        };
        board.write(&BTreeMap::new());
        board
    }

    /// A board nobody else reads.
    pub fn in_memory() -> Board {
        Board {
            path: None,
            waits: Mutex::new(BTreeMap::new()),
        }
    }

    /// Puts (or updates) a wait. Returns true when this is a new wait or its cause changed,
    /// which is when the caller should log it (once per change of cause, not per try).
    pub fn wait(
        &self,
        app: &str,
        kind: WaitKind,
        subject: &str,
        cause: &str,
        retry_at: Option<Timestamp>,
    ) -> bool {
        let Ok(mut waits) = self.waits.lock() else {
            return true;
        };
        let key = (app.to_string(), kind, subject.to_string());
        let changed = waits.get(&key).is_none_or(|w| w.cause != cause);
        let since = match waits.get(&key) {
            Some(w) if !changed => w.since,
            _ => now(),
        };
        let wait = Wait {
            app: app.to_string(),
            kind,
            subject: subject.to_string(),
            cause: cause.to_string(),
            since,
            retry_at,
            retry_monotonic: retry_at
                .zip(monotonic_secs())
                .map(|(at, mono)| mono + at.saturating_sub(now())),
        };
        if waits.get(&key) != Some(&wait) {
            waits.insert(key, wait);
            self.write(&waits);
        }
        changed
    }

    /// Takes a wait off. Returns true if there was one.
    pub fn clear(&self, app: &str, kind: WaitKind, subject: &str) -> bool {
        let Ok(mut waits) = self.waits.lock() else {
            return false;
        };
        let removed = waits
            .remove(&(app.to_string(), kind, subject.to_string()))
            .is_some();
        if removed {
            self.write(&waits);
        }
        removed
    }

    /// Takes off every wait of one kind of an app (what shows them stopped).
    pub fn clear_kind(&self, app: &str, kind: WaitKind) {
        let Ok(mut waits) = self.waits.lock() else {
            return;
        };
        let before = waits.len();
        waits.retain(|(a, k, _), _| !(a == app && *k == kind));
        if waits.len() != before {
            self.write(&waits);
        }
    }

    /// Takes off every wait of an app (it was removed or restarted).
    pub fn clear_app(&self, app: &str) {
        let Ok(mut waits) = self.waits.lock() else {
            return;
        };
        let before = waits.len();
        waits.retain(|(a, _, _), _| a != app);
        if waits.len() != before {
            self.write(&waits);
        }
    }

    /// The waits now, ordered by app, kind and subject.
    pub fn snapshot(&self) -> Vec<Wait> {
        self.waits
            .lock()
            .map(|w| w.values().cloned().collect())
            .unwrap_or_default()
    }

    fn write(&self, waits: &BTreeMap<Key, Wait>) {
        let Some(path) = &self.path else { return };
        let file = LiveFile {
            pid: std::process::id(),
            waits: waits.values().cloned().collect(),
        };
        // Written under the board's lock, from async code: an atomic replace without fsync
        // (the board says what is true now; a crash loses nothing worth waiting on the disk).
        let written = serde_json::to_vec_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                crate::durable::replace(path, &bytes)
                    .map_err(|e| std::io::Error::new(e.source.kind(), e.to_string()))
            });
        if let Err(e) = written {
            tracing::warn!("cannot write {}: {e}", path.display());
        }
    }
}

/// The board of the daemon that holds `state_dir` now, if one does.
pub fn read(state_dir: &Path) -> Option<LiveFile> {
    crate::lock::StateLock::holder(state_dir)?;
    let bytes = std::fs::read(state_dir.join(LIVE_NAME)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_reported_once_per_cause_and_published_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::published(dir.path());
        assert!(board.wait("a", WaitKind::Claim, "/d/x.tar.gz", "disk full", Some(5)));
        assert!(!board.wait("a", WaitKind::Claim, "/d/x.tar.gz", "disk full", Some(9)));
        let text = std::fs::read_to_string(dir.path().join(LIVE_NAME)).unwrap();
        let file: LiveFile = serde_json::from_str(&text).unwrap();
        assert_eq!(file.waits.len(), 1);
        assert_eq!(file.waits[0].retry_at, Some(9));
        // A time in the past: tried again now.
        assert!(file.waits[0].next_try().unwrap() >= now());
        assert!(board.wait(
            "a",
            WaitKind::Claim,
            "/d/x.tar.gz",
            "permission denied",
            None
        ));
        assert!(board.clear("a", WaitKind::Claim, "/d/x.tar.gz"));
        assert!(!board.clear("a", WaitKind::Claim, "/d/x.tar.gz"));
        let file: LiveFile =
            serde_json::from_slice(&std::fs::read(dir.path().join(LIVE_NAME)).unwrap()).unwrap();
        assert!(file.waits.is_empty());
    }

    #[test]
    fn the_board_of_a_daemon_that_is_not_running_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::published(dir.path());
        board.wait("a", WaitKind::Watch, "/src", "removed", None);
        assert_eq!(read(dir.path()), None);
        let _lock = crate::lock::StateLock::acquire(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap().waits.len(), 1);
    }
}
