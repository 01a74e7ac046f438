//! Removing old releases, and whole trees safely (read-only folders included, links never
//! followed).

use std::fs::{self, File, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::switch::{current_link, remove_previous_note};
use super::{LocalTarget, looks_like_release};

impl LocalTarget {
    /// Keeps `keep_releases` releases: the current one, then the newest others by name (which
    /// starts with the job's creation time), and removes the rest; errors are logged. The
    /// current release takes one of the places, so at most `keep_releases` stay even when it
    /// is not the newest by name, or when several jobs were created in the same second.
    /// Returns the removed directories.
    pub(super) fn prune(&self, app: &str, app_dir: &Path) -> Vec<PathBuf> {
        let current = current_link(app_dir).map(|target| app_dir.join(target));
        let mut releases = match list_releases(app_dir) {
            Ok(releases) => releases,
            Err(e) => {
                tracing::warn!(app, dir = %app_dir.display(), error = %e, "cannot list releases to prune");
                return Vec::new();
            }
        };
        let mut places = self.keep_releases;
        if let Some(at) = releases
            .iter()
            .position(|name| current.as_ref() == Some(&app_dir.join(name)))
        {
            releases.remove(at);
            places = places.saturating_sub(1);
        }
        let mut pruned = Vec::new();
        for name in releases.iter().rev().skip(places) {
            let path = app_dir.join(name);
            match remove_tree(&path) {
                Ok(()) => {
                    remove_previous_note(app_dir, name);
                    pruned.push(path);
                }
                Err(e) => {
                    tracing::warn!(app, release = %path.display(), error = %e, "cannot prune an old release");
                }
            }
        }
        pruned
    }
}

/// Release directory names in `app_dir`, oldest first (name order).
pub(super) fn list_releases(app_dir: &Path) -> io::Result<Vec<String>> {
    let mut releases = Vec::new();
    for entry in fs::read_dir(app_dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // `file_type` does not follow links: a symlink named like a release is not one.
        if looks_like_release(&name) && entry.file_type()?.is_dir() {
            releases.push(name);
        }
    }
    releases.sort();
    Ok(releases)
}

/// Removes a file, a link or a whole tree, even one with read-only folders; a missing path
/// is fine. Never follows links.
pub(super) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    // A folder without write or search permission stops `remove_dir_all` (unless root).
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(handle) = open_dir_nofollow(&dir) {
            let _ = handle.set_permissions(Permissions::from_mode(0o700));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
    fs::remove_dir_all(path)
}

/// Opens a directory for metadata changes, refusing a symlink in its place.
pub(super) fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}
