//! Recovery at start: the leftovers of an interrupted deploy (half-extracted releases, a
//! stray `current.tmp`, notes of releases that are not `current`) are removed.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::prune::remove_tree;
use super::switch::{current_link, sync_dir};
use super::{
    CURRENT_TMP, LocalFailure, LocalStep, LocalTarget, PARTIAL_PREFIX, PREVIOUS_PREFIX, check_app,
};

impl LocalTarget {
    /// Cleans `app`'s directory at daemon start, before any deploy: removes half-extracted
    /// releases (`.partial-*`), a stray `current.tmp` link, and `.previous-*` notes of releases
    /// that are not `current`. Never touches `current`, the note of the current release (a
    /// resumed deploy needs it to roll back), or complete releases. Returns what was removed.
    /// A missing app directory is not an error.
    pub fn recover(&self, app: &str) -> Result<Vec<PathBuf>, LocalFailure> {
        check_app(app)?;
        let app_dir = self.app_dir(app);
        let entries = match fs::read_dir(&app_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(LocalFailure::new(
                    LocalStep::Extract,
                    format!("app {app}: cannot list {}: {e}", app_dir.display()),
                ));
            }
        };
        let current = current_link(&app_dir);
        let mut removed = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                LocalFailure::new(
                    LocalStep::Extract,
                    format!("app {app}: cannot list {}: {e}", app_dir.display()),
                )
            })?;
            let name = entry.file_name();
            let path = entry.path();
            let bytes = name.as_bytes();
            if bytes.starts_with(PARTIAL_PREFIX.as_bytes()) {
                remove_tree(&path).map_err(|e| {
                    LocalFailure::new(
                        LocalStep::Extract,
                        format!(
                            "app {app}: cannot remove the half-extracted release {}: {e}",
                            path.display()
                        ),
                    )
                })?;
                removed.push(path);
            } else if bytes == CURRENT_TMP.as_bytes() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if is_dir {
                    tracing::warn!(app, path = %path.display(), "not removing current.tmp: it is a directory, not a link");
                    continue;
                }
                remove_stray(app, &path)?;
                removed.push(path);
            } else if let Some(release) = bytes.strip_prefix(PREVIOUS_PREFIX.as_bytes()) {
                let of_current = current
                    .as_ref()
                    .is_some_and(|target| target.as_os_str().as_bytes() == release);
                if of_current {
                    continue;
                }
                remove_stray(app, &path)?;
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            sync_dir(&app_dir).map_err(|e| {
                LocalFailure::new(
                    LocalStep::Extract,
                    format!("app {app}: cannot sync {}: {e}", app_dir.display()),
                )
            })?;
            tracing::info!(
                app,
                removed = removed.len(),
                "removed leftovers of an interrupted deploy"
            );
        }
        removed.sort();
        Ok(removed)
    }

    /// Removes `.partial-<release_name>` if it exists.
    pub(super) fn remove_partial(
        &self,
        app: &str,
        app_dir: &Path,
        release_name: &str,
    ) -> Result<(), LocalFailure> {
        let partial = app_dir.join(format!("{PARTIAL_PREFIX}{release_name}"));
        remove_tree(&partial).map_err(|e| {
            LocalFailure::new(
                LocalStep::Extract,
                format!(
                    "app {app}: cannot remove the leftover {}: {e}",
                    partial.display()
                ),
            )
        })
    }
}

/// Removes a leftover file of an interrupted deploy; the error names the app and the path.
fn remove_stray(app: &str, path: &Path) -> Result<(), LocalFailure> {
    fs::remove_file(path).map_err(|e| {
        LocalFailure::new(
            LocalStep::Switch,
            format!("app {app}: cannot remove {}: {e}", path.display()),
        )
    })
}
