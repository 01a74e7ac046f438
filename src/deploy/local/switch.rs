//! The `current` link: switching it atomically, the note that records where it pointed
//! before a release was switched in, and the rollback after a failed activation.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::{CURRENT, CURRENT_TMP, LocalFailure, LocalStep, PREVIOUS_PREFIX};

/// Switches `current` to the freshly extracted `release_name`, after recording where it
/// pointed (`before`) for a rollback; when `current` already named it (`points_here`, its
/// directory had gone missing), the rollback is to the release recorded earlier.
pub(super) fn switch_in(
    app: &str,
    app_dir: &Path,
    release_name: &str,
    before: Option<PathBuf>,
    points_here: bool,
) -> Result<Rollback, LocalFailure> {
    if points_here {
        // `current` already named this release, whose directory had gone missing.
        return Ok(Rollback::To(
            read_previous_note(app_dir, release_name).flatten(),
        ));
    }
    write_previous_note(app_dir, release_name, before.as_deref()).map_err(|e| {
        LocalFailure::new(
            LocalStep::Switch,
            format!(
                "app {app}: cannot record the previous release in {}: {e}",
                note_path(app_dir, release_name).display()
            ),
        )
    })?;
    switch_current(app_dir, Path::new(release_name)).map_err(|e| {
        LocalFailure::new(
            LocalStep::Switch,
            format!(
                "app {app}: cannot point {} to {release_name}: {e}",
                app_dir.join(CURRENT).display()
            ),
        )
    })?;
    let release = app_dir.join(release_name);
    tracing::info!(app, release = %release.display(), "current switched");
    Ok(Rollback::To(before))
}

/// The target of `<app_dir>/current`, as written in the link.
pub(super) fn current_link(app_dir: &Path) -> Option<PathBuf> {
    fs::read_link(app_dir.join(CURRENT)).ok()
}

/// Points `current` at `target` atomically: a new link `current.tmp`, renamed over `current`,
/// then the directory synced.
pub(super) fn switch_current(app_dir: &Path, target: &Path) -> io::Result<()> {
    let tmp = app_dir.join(CURRENT_TMP);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("removing {}: {e}", tmp.display()),
            ));
        }
    }
    std::os::unix::fs::symlink(target, &tmp)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", tmp.display())))?;
    let current = app_dir.join(CURRENT);
    if let Err(e) = fs::rename(&tmp, &current) {
        let _ = fs::remove_file(&tmp);
        let hint = if fs::symlink_metadata(&current).is_ok_and(|m| m.is_dir()) {
            " (it is a real directory, not a link: move it away)"
        } else {
            ""
        };
        return Err(io::Error::new(e.kind(), format!("{e}{hint}")));
    }
    sync_dir(app_dir)
}

/// What a failed activation does to `current`.
pub(super) enum Rollback {
    /// Point it back where it was (`None`: remove it, there was no release before).
    To(Option<PathBuf>),
    /// Leave it: the release was current, and successfully activated, before this call.
    Keep,
}

/// After a failed activation: `current` back to the previous release, or removed if there was
/// none. Returns the words to append to the failure's reason.
pub(super) fn roll_back(app_dir: &Path, rollback: &Rollback) -> String {
    let current = app_dir.join(CURRENT);
    match rollback {
        Rollback::Keep => "; current left on this release, which an earlier run had activated \
                           successfully (nothing older is recorded)"
            .to_string(),
        Rollback::To(Some(previous)) => match switch_current(app_dir, previous) {
            Ok(()) => format!("; current switched back to {}", previous.display()),
            Err(e) => format!(
                "; switching {} back to {} failed too: {e}",
                current.display(),
                previous.display()
            ),
        },
        Rollback::To(None) => match fs::remove_file(&current).and_then(|()| sync_dir(app_dir)) {
            Ok(()) => "; current removed (there was no previous release)".to_string(),
            Err(e) => format!(
                "; removing {} (there was no previous release) failed too: {e}",
                current.display()
            ),
        },
    }
}

fn note_path(app_dir: &Path, release_name: &str) -> PathBuf {
    app_dir.join(format!("{PREVIOUS_PREFIX}{release_name}"))
}

/// Records, before the switch, where `current` pointed (empty: nowhere), so that a deploy
/// resumed after a crash past the switch can still roll back.
fn write_previous_note(
    app_dir: &Path,
    release_name: &str,
    previous: Option<&Path>,
) -> io::Result<()> {
    let path = note_path(app_dir, release_name);
    let tmp = app_dir.join(format!("{PREVIOUS_PREFIX}{release_name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(previous.map_or(&[][..], |p| p.as_os_str().as_bytes()))?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, &path)?;
    sync_dir(app_dir)
}

/// The note of `release_name`: `None` if there is none, `Some(None)` if `current` pointed
/// nowhere before it.
pub(super) fn read_previous_note(app_dir: &Path, release_name: &str) -> Option<Option<PathBuf>> {
    let path = note_path(app_dir, release_name);
    match fs::read(&path) {
        Ok(bytes) if bytes.is_empty() => Some(None),
        Ok(bytes) => Some(Some(PathBuf::from(OsString::from_vec(bytes)))),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the release note");
            }
            None
        }
    }
}

/// The note is only needed until activation has ended; a leftover is harmless.
pub(super) fn remove_previous_note(app_dir: &Path, release_name: &str) {
    let path = note_path(app_dir, release_name);
    if let Err(e) = fs::remove_file(&path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a release note");
    }
}

/// fsync a directory, so that renames inside it survive a crash.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    crate::durable::sync_dir(dir).map_err(|e| e.source)
}
