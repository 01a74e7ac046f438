//! Hook deliveries that survive a crash. Before a job's outcome is recorded (which ends with
//! the job leaving the spool), a note naming the job is written to `<state_dir>/hooks/`; it is
//! removed once the job's hook has been delivered (or given up, or is not wanted). A note left
//! by a process that died is delivered by the daemon at its next start, from the job's history
//! line: delivery is at least once. The process delivering a note holds a lock on it, so a
//! note under way in a live process is never taken by another.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

/// The folder of the notes, inside `state_dir`.
pub const PENDING_DIR: &str = "hooks";

#[derive(Serialize, Deserialize)]
struct NoteText {
    job: String,
    app: String,
}

/// The notes of one `state_dir`.
#[derive(Debug, Clone)]
pub struct Pending {
    dir: PathBuf,
}

/// One job's note, locked by this process until [`PendingNote::done`] (or until dropped: the
/// note then stays for the next start).
#[derive(Debug)]
pub struct PendingNote {
    path: PathBuf,
    _file: Option<File>,
    pub job: String,
    pub app: String,
}

impl Pending {
    pub fn new(state_dir: &Path) -> Pending {
        Pending {
            dir: state_dir.join(PENDING_DIR),
        }
    }

    /// Writes (durably) and locks the note of `job`, whose outcome is about to be recorded.
    /// Blocking.
    pub fn note(&self, job: &str, app: &str) -> io::Result<PendingNote> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(format!("{job}.json"));
        let text = serde_json::to_vec(&NoteText {
            job: job.to_string(),
            app: app.to_string(),
        })?;
        crate::durable::write(&path, &text).map_err(|e| e.source)?;
        let file = lock(&path)?;
        Ok(PendingNote {
            path,
            _file: file,
            job: job.to_string(),
            app: app.to_string(),
        })
    }

    /// The notes that no live process holds (left by one that died), each locked now.
    /// Unreadable notes are logged and removed. Blocking.
    pub fn left(&self) -> Vec<PendingNote> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut notes = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let is_note = path.extension().is_some_and(|e| e == "json")
                && !entry.file_name().to_string_lossy().starts_with('.');
            if !is_note {
                continue;
            }
            let Ok(Some(file)) = lock(&path) else {
                continue;
            };
            let text = std::fs::read(&path).ok();
            match text.and_then(|t| serde_json::from_slice::<NoteText>(&t).ok()) {
                Some(NoteText { job, app }) => notes.push(PendingNote {
                    path,
                    _file: Some(file),
                    job,
                    app,
                }),
                None => {
                    tracing::warn!("unreadable hook note {}: removed", path.display());
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        notes
    }
}

impl PendingNote {
    /// Delivered, given up, or not wanted: the note goes. Blocking.
    pub fn done(self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(job = %self.job, "cannot remove the hook note {}: {e}", self.path.display());
        }
    }
}

/// Locks `path` without waiting. `Ok(None)`: another process holds it.
fn lock(path: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new().read(true).open(path)?;
    match flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(None),
        Err(e) => Err(e.into()),
    }
}
