//! The watcher task's view of the folder: the candidates waiting to be complete, the files
//! sent, and what each event's hint and each check change in it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::complete::{Seen, Settling, Verdict, Writers};
use super::events::Hint;
use super::scan::{Kind, look, observe};
use super::{Readiness, ReadyFile};
use crate::live::{Board, WaitKind};

/// The receiver of ready files is gone: the watcher has no one to tell, so it stops.
pub(super) struct ReceiverGone;

/// The watcher task's view of the folder.
pub(super) struct Folder {
    pub(super) app: String,
    pub(super) dir: PathBuf,
    pub(super) settle: Duration,
    /// Files waiting to be complete.
    pub(super) candidates: HashMap<PathBuf, Settling>,
    /// Files sent and still there.
    pub(super) sent: HashSet<PathBuf>,
    /// Paths already warned about (not regular files), so each is warned about once.
    pub(super) warned: HashSet<PathBuf>,
    /// Whether the log already says that writers cannot be detected here.
    lease_note: bool,
    /// The arrival number of the next candidate.
    arrivals: u64,
    /// Where waiting candidates are shown for `status`.
    live: Option<Arc<Board>>,
    ready: mpsc::Sender<ReadyFile>,
}

impl Folder {
    /// The view of a folder just watched: nothing known of it yet.
    pub(super) fn new(
        app: String,
        dir: PathBuf,
        settle: Duration,
        live: Option<Arc<Board>>,
        ready: mpsc::Sender<ReadyFile>,
    ) -> Self {
        Folder {
            app,
            dir,
            settle,
            candidates: HashMap::new(),
            sent: HashSet::new(),
            warned: HashSet::new(),
            lease_note: false,
            arrivals: 0,
            live,
            ready,
        }
    }

    fn subject(path: &Path) -> String {
        path.display().to_string()
    }

    /// Takes the path's waits off the board: a claim that waited for it too, since the file is
    /// gone or sent again.
    fn clear_waits(&self, path: &Path, claim_too: bool) {
        if let Some(live) = &self.live {
            let subject = Folder::subject(path);
            live.clear(&self.app, WaitKind::Settle, &subject);
            if claim_too {
                live.clear(&self.app, WaitKind::Claim, &subject);
            }
        }
    }

    /// Shows on the board that the folder is listed on a timer instead of watched (`cause`),
    /// or takes that off (`None`).
    pub(super) fn show_unwatched(&self, cause: Option<&str>, retry: Duration) {
        let Some(live) = &self.live else {
            return;
        };
        let subject = self.dir.display().to_string();
        match cause {
            Some(cause) => {
                let next = (std::time::SystemTime::now() + retry)
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .ok();
                live.wait(&self.app, WaitKind::Watch, &subject, cause, next);
            }
            None => {
                live.clear(&self.app, WaitKind::Watch, &subject);
            }
        }
    }

    pub(super) fn add_candidate(&mut self, path: PathBuf, mut settling: Settling) {
        settling.arrival = self.arrivals;
        self.arrivals += 1;
        self.candidates.insert(path, settling);
    }

    /// The path left the folder: a file dropped later under the same name is new work.
    pub(super) fn forget(&mut self, path: &Path) {
        self.candidates.remove(path);
        self.sent.remove(path);
        self.warned.remove(path);
        self.clear_waits(path, true);
    }

    pub(super) fn warn_once(&mut self, path: &Path, what: &str) {
        self.candidates.remove(path);
        self.clear_waits(path, false);
        if self.warned.insert(path.to_path_buf()) {
            tracing::warn!(
                app = %self.app,
                file = %path.display(),
                "ignoring {} in the drop folder: it is {what}, not a regular file (symbolic links \
                 are not followed)",
                path.display()
            );
        }
    }

    async fn send(
        &mut self,
        path: PathBuf,
        readiness: Readiness,
        size: u64,
    ) -> Result<(), ReceiverGone> {
        self.candidates.remove(&path);
        self.sent.insert(path.clone());
        self.clear_waits(&path, false);
        tracing::debug!(app = %self.app, file = %path.display(), %readiness, size, "drop file ready");
        let ready = ReadyFile {
            app: self.app.clone(),
            path,
            readiness,
            size,
        };
        self.ready.send(ready).await.map_err(|_| ReceiverGone)
    }

    /// Looks at a path an event named; `None` when it is gone or not a regular file (both
    /// handled here).
    pub(super) fn look_at(&mut self, path: &Path) -> Option<Seen> {
        match look(path) {
            Ok(Kind::Regular(seen)) => {
                self.warned.remove(path);
                Some(seen)
            }
            Ok(Kind::Other(what)) => {
                self.warn_once(path, what);
                None
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(path);
                None
            }
            Err(e) => {
                tracing::debug!(file = %path.display(), "cannot look at a drop file: {e}");
                None
            }
        }
    }

    /// Applies an event's hint. Returns true when a candidate should be checked at once (it
    /// was renamed in, so it needs no settle time).
    pub(super) fn apply(&mut self, path: PathBuf, hint: Hint) -> bool {
        if hint == Hint::Gone {
            self.forget(&path);
            return false;
        }
        // Rewritten after it was sent: the daemon's claim decides what it takes.
        if self.sent.contains(&path) {
            return false;
        }
        let now = Instant::now();
        let known = self.candidates.contains_key(&path);
        match hint {
            Hint::RenamedIn | Hint::Renamed => {
                if let Some(seen) = self.look_at(&path) {
                    self.add_candidate(path, Settling::renamed(seen, now));
                    return true;
                }
            }
            Hint::Written => {
                if let Some(settling) = self.candidates.get_mut(&path) {
                    settling.on_write(now);
                } else if let Some(seen) = self.look_at(&path) {
                    self.add_candidate(path, Settling::written(seen, now));
                }
            }
            Hint::Closed => {
                if let Some(settling) = self.candidates.get_mut(&path) {
                    settling.on_close(now);
                } else if let Some(seen) = self.look_at(&path) {
                    let mut settling = Settling::written(seen, now);
                    settling.on_close(now);
                    self.add_candidate(path, settling);
                }
            }
            // A tracked file's change shows in its next check; an unknown one is taken in
            // (a hard link made into the folder brings IN_CREATE and IN_ATTRIB, nothing more).
            Hint::Created if !known => {
                if let Some(seen) = self.look_at(&path) {
                    self.add_candidate(path, Settling::created(seen, now));
                }
            }
            Hint::Touched if !known => {
                if let Some(seen) = self.look_at(&path) {
                    self.add_candidate(path, Settling::found(seen, now, false));
                }
            }
            Hint::Created | Hint::Touched | Hint::Gone => {}
        }
        false
    }

    /// What the daemon can know of writers, from a probe's answer; says once per folder when
    /// it cannot know.
    fn writers(&mut self, probed: io::Result<Writers>, path: &Path) -> Writers {
        match probed {
            Ok(writers) => writers,
            Err(e) => {
                if !self.lease_note {
                    self.lease_note = true;
                    tracing::warn!(
                        app = %self.app,
                        drop_dir = %self.dir.display(),
                        "cannot tell whether a writer still has files open in the drop folder \
                         (a read lease on {} was refused: {e}; leases need the daemon to own the \
                         files or to have CAP_LEASE): a file counts as complete once unchanged for \
                         the settle time ({} ms); writers should write elsewhere and rename in",
                        path.display(),
                        self.settle.as_millis()
                    );
                }
                Writers::Unknown
            }
        }
    }

    /// Checks every waiting candidate against the completeness predicate, sends those that are
    /// complete, and shows why the others wait.
    pub(super) async fn check_candidates(&mut self) -> Result<(), ReceiverGone> {
        let mut paths: Vec<PathBuf> = self.candidates.keys().cloned().collect();
        paths.sort_by_key(|p| self.candidates.get(p).map(|c| c.arrival));
        let observed = tokio::task::spawn_blocking(move || {
            paths
                .into_iter()
                .map(|path| {
                    let seen = observe(&path);
                    (path, seen)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let observed = match observed {
            Ok(observed) => observed,
            Err(e) => {
                tracing::error!(app = %self.app, drop_dir = %self.dir.display(), "checking drop files failed: {e}");
                return Ok(());
            }
        };
        for (path, seen) in observed {
            let (seen, writers) = match seen {
                Ok((Kind::Regular(seen), writers)) => {
                    self.warned.remove(&path);
                    (seen, self.writers(writers, &path))
                }
                Ok((Kind::Other(what), _)) => {
                    self.warn_once(&path, what);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.forget(&path);
                    continue;
                }
                Err(e) => {
                    tracing::debug!(file = %path.display(), "cannot look at a drop file: {e}");
                    continue;
                }
            };
            let settle = self.settle;
            let Some(settling) = self.candidates.get_mut(&path) else {
                continue;
            };
            match settling.check(seen, writers, Instant::now(), settle) {
                Verdict::Ready(readiness) => self.send(path, readiness, seen.size).await?,
                Verdict::Wait(pending) => {
                    if let Some(live) = &self.live {
                        let cause = pending.cause(settle);
                        live.wait(
                            &self.app,
                            WaitKind::Settle,
                            &Folder::subject(&path),
                            &cause,
                            None,
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
