//! Looking at the folder on disk: what a path is, the listing of the whole folder, the rescans
//! that bring the watcher's view up to date with it, and the recheck of a file whose claim
//! failed.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::complete::{Seen, Settling, Writers, is_old, probe_writers};
use super::folder::Folder;
use super::is_candidate_name;
use crate::blocking::BlockingError;

/// What a path in the folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Regular(Seen),
    /// Anything else, described for the warning ("a symbolic link", …).
    Other(&'static str),
}

/// Looks at a path without following a symlink and without opening it (a fifo would block).
pub(super) fn look(path: &Path) -> io::Result<Kind> {
    let meta = fs::symlink_metadata(path)?;
    let file_type = meta.file_type();
    if file_type.is_file() {
        return Ok(Kind::Regular(Seen::of(&meta)));
    }
    Ok(Kind::Other(describe(&file_type)))
}

/// What one check sees of a candidate: what the path is and, for a regular file, whether a
/// writer has it open (`Err`: cannot tell, and why). Blocking.
pub(super) fn observe(path: &Path) -> io::Result<(Kind, io::Result<Writers>)> {
    let kind = look(path)?;
    let writers = match kind {
        Kind::Regular(_) => probe_writers(path),
        Kind::Other(_) => Ok(Writers::Unknown),
    };
    Ok((kind, writers))
}

fn describe(file_type: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a named pipe (fifo)";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_block_device() || file_type.is_char_device() {
            return "a device";
        }
    }
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// Lists the candidate names of the folder with what each is; `None` where it could not be
/// looked at (it stays as it was). Blocking.
fn list_folder(dir: &Path) -> io::Result<Vec<(PathBuf, Option<Kind>)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                tracing::debug!(drop_dir = %dir.display(), "skipping an unreadable entry: {e}");
                continue;
            }
        };
        let name = entry.file_name();
        if !is_candidate_name(&name) {
            continue;
        }
        let path = dir.join(&name);
        match look(&path) {
            Ok(kind) => found.push((path, Some(kind))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(file = %path.display(), "cannot look at a drop file: {e}");
                found.push((path, None));
            }
        }
    }
    Ok(found)
}

/// Why the folder is listed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rescan {
    /// At start, or events were lost (overflow, watcher error, the folder came back): files
    /// already sent stay sent while they are there, and no close is awaited any more.
    EventsLost,
    /// The periodic safety net ([`RESCAN_EVERY`](super::watcher::RESCAN_EVERY)): a file
    /// whose events never came is taken in.
    Periodic,
    /// Asked for by [`DropWatcher::rescan`](super::DropWatcher::rescan): every complete file
    /// still there is sent again.
    Requested,
}

impl Folder {
    /// A claim of `path` failed: it becomes a candidate again and is sent once the completeness
    /// predicate says so (it may have been rewritten since).
    pub(super) fn recheck(&mut self, path: PathBuf) {
        if path.parent() != Some(self.dir.as_path()) || self.candidates.contains_key(&path) {
            return;
        }
        self.sent.remove(&path);
        if let Some(seen) = self.look_at(&path) {
            let old = is_old(seen.mtime, SystemTime::now(), self.settle);
            self.add_candidate(path, Settling::found(seen, Instant::now(), old));
        }
    }

    /// Lists the folder and brings what is known up to date with it. Returns `false` when the
    /// folder itself is missing.
    pub(super) async fn scan(&mut self, why: Rescan) -> bool {
        let dir = self.dir.clone();
        let listing = match crate::blocking::run(move || list_folder(&dir)).await {
            Ok(listing) => listing,
            Err(BlockingError::Failed(e)) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(BlockingError::Failed(e)) => {
                tracing::error!(app = %self.app, drop_dir = %self.dir.display(), "cannot list the drop folder: {e}");
                return true;
            }
            Err(BlockingError::Crashed(e)) => {
                tracing::error!(app = %self.app, drop_dir = %self.dir.display(), "listing the drop folder failed: {e}");
                return true;
            }
        };
        let present: HashSet<PathBuf> = listing.iter().map(|(path, _)| path.clone()).collect();
        let known: Vec<PathBuf> = self
            .candidates
            .keys()
            .chain(self.sent.iter())
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for path in known {
            self.forget(&path);
        }
        if why == Rescan::Requested {
            self.sent.clear();
        }
        self.warned.retain(|p| present.contains(p));
        if why == Rescan::EventsLost {
            self.candidates
                .values_mut()
                .for_each(Settling::forget_close);
        }
        let now = Instant::now();
        let wall_now = SystemTime::now();
        for (path, kind) in listing {
            if self.sent.contains(&path) || self.candidates.contains_key(&path) {
                continue;
            }
            match kind {
                Some(Kind::Regular(seen)) => {
                    self.warned.remove(&path);
                    let old = is_old(seen.mtime, wall_now, self.settle);
                    self.add_candidate(path, Settling::found(seen, now, old));
                }
                Some(Kind::Other(what)) => self.warn_once(&path, what),
                None => {}
            }
        }
        true
    }
}
