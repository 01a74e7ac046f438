//! The local target: Capistrano-style releases on this machine, for a box that deploys the
//! tarballs dropped on it without any platform.
//!
//! Layout, for each app (`<releases_dir>/<app>/`):
//!
//! ```text
//! 20260101T120000Z-my-app-20260101120000-1a2b3c4d/   a complete release (the archive's top folder)
//! 20260102T090000Z-my-app-20260102090000-5e6f7a8b/   another one
//! current -> 20260102T090000Z-my-app-...             relative symlink: the live release
//! .partial-<release>/                                 an extraction in progress (never `current`)
//! .previous-<release>                                 where `current` pointed before <release>,
//!                                                     kept only while <release> is activated
//! ```
//!
//! [`LocalTarget::deploy`] extracts into `.partial-<release>/`, renames it into place, switches
//! `current` atomically (a new symlink renamed over the old one), runs the `activate` command
//! and rolls `current` back if it fails, then prunes old releases. Every step is safe to repeat:
//! a process killed at any point leaves either a `.partial-*` directory (removed by
//! [`LocalTarget::recover`] or by the next deploy of the same release), a complete release that
//! is not `current` (redone), or a release that is already `current` (kept; activation runs
//! again, and a failure still rolls back to the release recorded in `.previous-<release>`;
//! with no such note the release had been activated successfully, and `current` stays).
//!
//! Durability: files are not fsynced one by one (too slow for large trees); one `syncfs` of
//! the releases filesystem after extraction puts the whole tree on disk before the release can
//! become `current`, and each rename or link switch is followed by an fsync of the app
//! directory.
//!
//! The archive is checked again while it is written, whatever inspection said, by the same
//! [`paths`](crate::archive::paths) policy as `dropdeploy check` (paths, one top-level folder,
//! symlink and hard link targets resolved as the extracted tree will resolve them, nothing
//! written through a symlink); then no device or fifo, and, as the disk shows, hard links
//! only to files already extracted and no folder replaced. Permission bits and mtimes are kept (setuid, setgid and
//! sticky bits are dropped; ownership is not restored).
//!
//! The blocking API is meant for `spawn_blocking`. Calls for one app must not overlap (the
//! app's lane runs one job at a time); calls for different apps are independent.

pub mod driver;

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use crate::archive::paths::{EntryKind, Place, Policy};
use crate::config::LocalTargetConfig;
use crate::queue::spool::{Timestamp, compact_utc};

/// The live release link inside an app's directory.
const CURRENT: &str = "current";
/// The link being made before it is renamed over [`CURRENT`].
const CURRENT_TMP: &str = "current.tmp";
/// Prefix of a release directory being extracted.
const PARTIAL_PREFIX: &str = ".partial-";
/// Prefix of the note that records where `current` pointed before a release was switched in.
const PREVIOUS_PREFIX: &str = ".previous-";
/// The environment variable holding the platform token: never handed to a command.
const TOKEN_VAR: &str = crate::config::ENV_TOKEN;
/// How much of the activate command's output is kept (the end of it).
pub const ACTIVATE_OUTPUT_LIMIT: usize = 64 * 1024;
/// How long to wait for the output pipe to close once the command has ended: a background
/// process it started may hold the pipe open for ever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Releases of apps on this machine, under one `releases_dir` (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct LocalTarget {
    releases_dir: PathBuf,
    activate: Vec<String>,
    activate_timeout: Duration,
    keep_releases: usize,
}

/// What a successful [`LocalTarget::deploy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The release directory, `<releases_dir>/<app>/<release_name>`, now `current`.
    pub release: PathBuf,
    /// Where `current` pointed before (resolved against the app directory), if anywhere.
    pub previous: Option<PathBuf>,
    /// The activate command's stdout and stderr, interleaved, at most the last
    /// [`ACTIVATE_OUTPUT_LIMIT`] bytes (lossy UTF-8); empty without an `activate` command.
    pub activate_output: String,
    /// Old release directories removed after the switch.
    pub pruned: Vec<PathBuf>,
}

/// The step of a local deploy, as named in a [`LocalFailure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalStep {
    /// Unpacking the archive into a new release directory (also: an invalid app or release
    /// name, and cleaning half-extracted releases in [`LocalTarget::recover`]).
    Extract,
    /// Pointing `current` at the new release.
    Switch,
    /// Running the `activate` command; `current` has been switched back when this fails.
    Activate,
    /// Removing old releases. A prune error is only logged and never fails a deploy, so
    /// [`LocalTarget::deploy`] does not return this step; it exists for logs and callers.
    Prune,
}

impl fmt::Display for LocalStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LocalStep::Extract => "extract",
            LocalStep::Switch => "switch",
            LocalStep::Activate => "activate",
            LocalStep::Prune => "prune",
        })
    }
}

/// Why a local deploy (or recovery) stopped. After any failure `current` points where it
/// pointed before the call (or nowhere, if it pointed nowhere).
#[derive(Debug)]
pub struct LocalFailure {
    /// The step that failed.
    pub step: LocalStep,
    /// One line for a person: the app, the path or command, and the cause.
    pub reason: String,
    /// The activate command's captured stdout and stderr (the end of it), else empty.
    pub output: String,
}

impl LocalFailure {
    fn new(step: LocalStep, reason: String) -> Self {
        LocalFailure {
            step,
            reason,
            output: String::new(),
        }
    }
}

impl fmt::Display for LocalFailure {
    /// `<step>: <reason>`, without the output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.reason)
    }
}

impl std::error::Error for LocalFailure {}

impl LocalTarget {
    /// A target configured by an app's `target = "local"` settings. Touches no file.
    pub fn new(cfg: &LocalTargetConfig) -> Self {
        LocalTarget {
            releases_dir: cfg.releases_dir.clone(),
            activate: cfg.activate.clone(),
            activate_timeout: cfg.activate_timeout,
            keep_releases: cfg.keep_releases.max(1),
        }
    }

    /// The release directory name for a job: `<YYYYmmddTHHMMSSZ>-<git_ref>`, from the job's
    /// creation time, so it is the same on every retry and after a restart, and release names
    /// sort by age. Characters of `git_ref` other than ASCII letters, digits, `.`, `_` and `-`
    /// become `_` (a git_ref made by dropdeploy has none).
    pub fn release_name(created_at: Timestamp, git_ref: &str) -> String {
        let stamp = compact_utc(created_at);
        let (date, time) = stamp.split_at(stamp.len().saturating_sub(6));
        let git_ref: String = git_ref
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{date}T{time}Z-{git_ref}")
    }

    /// The app's directory: `<releases_dir>/<app>`.
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.releases_dir.join(app)
    }

    /// The release `current` points to, resolved against the app directory (the release
    /// directory itself, not the link); `None` when there is no `current` link. The directory
    /// is not checked to exist.
    pub fn current(&self, app: &str) -> Option<PathBuf> {
        let app_dir = self.app_dir(app);
        current_link(&app_dir).map(|target| app_dir.join(target))
    }

    /// Deploys one archive (already accepted by [`crate::archive::inspect`]) as release
    /// `release_name` of `app`: extract, switch `current`, activate, prune, in that order;
    /// blocking.
    ///
    /// `release_name` must come from [`LocalTarget::release_name`]. Calling again with the
    /// same name after a crash or a failure is safe: a half-extracted or unswitched release is
    /// redone, and a release that is already `current` is kept and activated again.
    /// On failure `current` is where it was before (see [`LocalFailure`]); a release whose
    /// activation failed stays on disk for inspection but is not `current`. The one exception:
    /// a release that was already current and whose earlier activation had succeeded (the job
    /// is simply run again) stays current if activating it again fails.
    ///
    /// The activate command runs with no shell, in the release directory, with stdin closed,
    /// the daemon's environment minus `SCALINGO_API_TOKEN`, plus `DROPDEPLOY_APP`,
    /// `DROPDEPLOY_RELEASE` (absolute path) and `DROPDEPLOY_GIT_REF`, in a process group of its
    /// own that is killed whole after `activate_timeout`. If it leaves a background process
    /// holding its output open, the deploy waits 2 s more for the output, then goes on.
    pub fn deploy(
        &self,
        app: &str,
        release_name: &str,
        git_ref: &str,
        archive: &Path,
    ) -> Result<Deployed, LocalFailure> {
        check_app(app)?;
        if !looks_like_release(release_name) {
            return Err(LocalFailure::new(
                LocalStep::Extract,
                format!(
                    "app {app}: release name `{release_name}` is not of the form \
                     <YYYYmmddTHHMMSSZ>-<git_ref>"
                ),
            ));
        }
        let app_dir = self.app_dir(app);
        let release = app_dir.join(release_name);
        let created_app_dir = !app_dir.exists();
        fs::create_dir_all(&app_dir).map_err(|e| {
            LocalFailure::new(
                LocalStep::Extract,
                format!("app {app}: cannot create {}: {e}", app_dir.display()),
            )
        })?;

        let before = current_link(&app_dir);
        let points_here = before
            .as_ref()
            .is_some_and(|target| app_dir.join(target) == release);
        let rollback = if points_here && release.is_dir() {
            // An earlier run got past the switch: keep the release, activate it again.
            self.remove_partial(app, &app_dir, release_name)?;
            tracing::info!(app, release = %release.display(), "release is already current; activating it again");
            match read_previous_note(&app_dir, release_name) {
                Some(previous) => Rollback::To(previous),
                // The note goes only once activation has ended, and a rolled-back release is
                // not current: this one was activated successfully before.
                None => Rollback::Keep,
            }
        } else {
            let extracted = self.extract_release(app, &app_dir, release_name, archive);
            if let Err(failure) = extracted {
                if created_app_dir {
                    // Leave nothing behind for a refused archive; fails harmlessly if not empty.
                    let _ = fs::remove_dir(&app_dir);
                }
                return Err(failure);
            }
            if points_here {
                // `current` already named this release, whose directory had gone missing.
                Rollback::To(read_previous_note(&app_dir, release_name).flatten())
            } else {
                write_previous_note(&app_dir, release_name, before.as_deref()).map_err(|e| {
                    LocalFailure::new(
                        LocalStep::Switch,
                        format!(
                            "app {app}: cannot record the previous release in {}: {e}",
                            note_path(&app_dir, release_name).display()
                        ),
                    )
                })?;
                switch_current(&app_dir, Path::new(release_name)).map_err(|e| {
                    LocalFailure::new(
                        LocalStep::Switch,
                        format!(
                            "app {app}: cannot point {} to {release_name}: {e}",
                            app_dir.join(CURRENT).display()
                        ),
                    )
                })?;
                tracing::info!(app, release = %release.display(), "current switched");
                Rollback::To(before)
            }
        };

        let activate_output = match self.activate(app, &release, git_ref) {
            Ok(output) => output,
            Err(mut failure) => {
                failure.reason.push_str(&roll_back(&app_dir, &rollback));
                remove_previous_note(&app_dir, release_name);
                return Err(failure);
            }
        };
        remove_previous_note(&app_dir, release_name);

        let pruned = self.prune(app, &app_dir);
        Ok(Deployed {
            release,
            previous: match rollback {
                Rollback::To(previous) => previous.map(|target| app_dir.join(target)),
                Rollback::Keep => None,
            },
            activate_output,
            pruned,
        })
    }

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
    fn remove_partial(
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

    /// Extracts into `.partial-<name>`, makes it durable, and renames it to `<name>`.
    fn extract_release(
        &self,
        app: &str,
        app_dir: &Path,
        release_name: &str,
        archive: &Path,
    ) -> Result<(), LocalFailure> {
        let partial = app_dir.join(format!("{PARTIAL_PREFIX}{release_name}"));
        let release = app_dir.join(release_name);
        self.remove_partial(app, app_dir, release_name)?;
        let io_failure = |what: String, e: io::Error| {
            LocalFailure::new(LocalStep::Extract, format!("app {app}: {what}: {e}"))
        };
        fs::create_dir(&partial)
            .map_err(|e| io_failure(format!("cannot create {}", partial.display()), e))?;

        if let Err(error) = extract(archive, &partial) {
            let mut reason = match error {
                ExtractError::Refused(why) => format!(
                    "archive {} refused: {why}; nothing was extracted",
                    archive.display()
                ),
                ExtractError::Io(why) => format!(
                    "cannot extract {} into {}: {why}",
                    archive.display(),
                    partial.display()
                ),
            };
            if let Err(e) = remove_tree(&partial) {
                reason.push_str(&format!(
                    " (and removing {} failed: {e})",
                    partial.display()
                ));
            }
            return Err(LocalFailure::new(
                LocalStep::Extract,
                format!("app {app}: {reason}"),
            ));
        }

        // One syncfs instead of an fsync per file: the whole tree is on disk before the
        // release can become `current`, at the cost of one flush of that filesystem.
        File::open(&partial)
            .and_then(|dir| rustix::fs::syncfs(&dir).map_err(io::Error::from))
            .map_err(|e| io_failure(format!("cannot sync {}", partial.display()), e))?;
        // A complete release of the same name that is not current is from an interrupted
        // or failed earlier run: replace it with the fresh extraction.
        remove_tree(&release).map_err(|e| {
            io_failure(
                format!(
                    "cannot remove the earlier, unfinished {}",
                    release.display()
                ),
                e,
            )
        })?;
        fs::rename(&partial, &release).map_err(|e| {
            io_failure(
                format!(
                    "cannot rename {} to {}",
                    partial.display(),
                    release.display()
                ),
                e,
            )
        })?;
        sync_dir(app_dir).map_err(|e| io_failure(format!("cannot sync {}", app_dir.display()), e))
    }

    /// Runs the activate command in the release, if there is one; returns its output.
    fn activate(&self, app: &str, release: &Path, git_ref: &str) -> Result<String, LocalFailure> {
        let Some(program) = self.activate.first() else {
            return Ok(String::new());
        };
        let shown = shown_command(&self.activate);
        let command = self.activate_command(app, release, git_ref);
        let fail = |reason: String, output: String| LocalFailure {
            step: LocalStep::Activate,
            reason: format!("app {app}: activate command `{shown}` {reason}"),
            output,
        };
        tracing::info!(app, command = %shown, "running the activate command");
        match run_captured(command, self.activate_timeout) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(fail(
                format!("could not start: {e} (is `{program}` installed and on PATH?)"),
                String::new(),
            )),
            Err(e) => Err(fail(format!("could not start: {e}"), String::new())),
            Ok(Run {
                ending: Ending::TimedOut,
                output,
            }) => Err(fail(
                format!(
                    "timed out after {} and was killed",
                    crate::human::duration(self.activate_timeout)
                ),
                output,
            )),
            Ok(Run {
                ending: Ending::Exited(status),
                output,
            }) => {
                if status.success() {
                    Ok(output)
                } else if let Some(code) = status.code() {
                    Err(fail(format!("exited with status {code}"), output))
                } else if let Some(signal) = status.signal() {
                    Err(fail(format!("was killed by signal {signal}"), output))
                } else {
                    Err(fail(format!("failed ({status})"), output))
                }
            }
        }
    }

    /// The activate command, ready to spawn: no shell, cwd = the release, the inherited
    /// environment plus `DROPDEPLOY_*` and minus the API token, in a process group of its own.
    fn activate_command(&self, app: &str, release: &Path, git_ref: &str) -> Command {
        let release = std::path::absolute(release).unwrap_or_else(|_| release.to_path_buf());
        let mut command = Command::new(self.activate.first().map_or("", String::as_str));
        command
            .args(self.activate.iter().skip(1))
            .current_dir(&release)
            .env("DROPDEPLOY_APP", app)
            .env("DROPDEPLOY_RELEASE", &release)
            .env("DROPDEPLOY_GIT_REF", git_ref)
            .env_remove(TOKEN_VAR)
            .stdin(Stdio::null())
            .process_group(0);
        command
    }

    /// Keeps `keep_releases` releases: the current one, then the newest others by name (which
    /// starts with the job's creation time), and removes the rest; errors are logged. The
    /// current release takes one of the places, so at most `keep_releases` stay even when it
    /// is not the newest by name, or when several jobs were created in the same second.
    /// Returns the removed directories.
    fn prune(&self, app: &str, app_dir: &Path) -> Vec<PathBuf> {
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

/// Removes a leftover file of an interrupted deploy; the error names the app and the path.
fn remove_stray(app: &str, path: &Path) -> Result<(), LocalFailure> {
    fs::remove_file(path).map_err(|e| {
        LocalFailure::new(
            LocalStep::Switch,
            format!("app {app}: cannot remove {}: {e}", path.display()),
        )
    })
}

/// An app name must be one plain path component.
fn check_app(app: &str) -> Result<(), LocalFailure> {
    let plain =
        !app.is_empty() && !app.starts_with('.') && !app.contains(['/', '\0']) && app != CURRENT;
    if plain {
        Ok(())
    } else {
        Err(LocalFailure::new(
            LocalStep::Extract,
            format!("app name `{app}` cannot be used as a folder name"),
        ))
    }
}

/// `YYYYmmddTHHMMSSZ-<something>`: what [`LocalTarget::release_name`] makes (years of four
/// digits or more).
fn looks_like_release(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some(t) = bytes.iter().position(|&b| b == b'T') else {
        return false;
    };
    let (date, rest) = bytes.split_at(t);
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    date.len() >= 8
        && digits(date)
        && rest.len() >= 10
        && digits(&rest[1..7])
        && &rest[7..9] == b"Z-"
        && !name.contains(['/', '\0'])
}

/// Release directory names in `app_dir`, oldest first (name order).
fn list_releases(app_dir: &Path) -> io::Result<Vec<String>> {
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

/// The target of `<app_dir>/current`, as written in the link.
fn current_link(app_dir: &Path) -> Option<PathBuf> {
    fs::read_link(app_dir.join(CURRENT)).ok()
}

/// Points `current` at `target` atomically: a new link `current.tmp`, renamed over `current`,
/// then the directory synced.
fn switch_current(app_dir: &Path, target: &Path) -> io::Result<()> {
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
enum Rollback {
    /// Point it back where it was (`None`: remove it, there was no release before).
    To(Option<PathBuf>),
    /// Leave it: the release was current, and successfully activated, before this call.
    Keep,
}

/// After a failed activation: `current` back to the previous release, or removed if there was
/// none. Returns the words to append to the failure's reason.
fn roll_back(app_dir: &Path, rollback: &Rollback) -> String {
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
fn read_previous_note(app_dir: &Path, release_name: &str) -> Option<Option<PathBuf>> {
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
fn remove_previous_note(app_dir: &Path, release_name: &str) {
    let path = note_path(app_dir, release_name);
    if let Err(e) = fs::remove_file(&path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a release note");
    }
}

/// fsync a directory, so that renames inside it survive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    crate::durable::sync_dir(dir).map_err(|e| e.source)
}

/// Removes a file, a link or a whole tree, even one with read-only folders; a missing path
/// is fine. Never follows links.
fn remove_tree(path: &Path) -> io::Result<()> {
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
fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

// ---------------------------------------------------------------------------------------------
// Extraction

enum ExtractError {
    /// The archive holds something this target will not write.
    Refused(String),
    /// Reading the archive or writing the release failed.
    Io(String),
}

/// Streams `archive` (tar over gzip, any number of members) into the empty directory `dest`,
/// without its single top-level folder.
fn extract(archive: &Path, dest: &Path) -> Result<(), ExtractError> {
    let file = File::open(archive)
        .map_err(|e| ExtractError::Io(format!("cannot open {}: {e}", archive.display())))?;
    let reader = MultiGzDecoder::new(BufReader::with_capacity(64 * 1024, file));
    extract_from(reader, dest)
}

fn extract_from(reader: impl Read, dest: &Path) -> Result<(), ExtractError> {
    let read_error = |e: io::Error| ExtractError::Io(format!("cannot read the archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut extractor = Extractor {
        dest,
        paths: Policy::new(),
        dirs: HashSet::new(),
        deferred: Vec::new(),
    };
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        extractor.entry(&mut entry)?;
    }
    extractor.finish()
}

/// A folder's mode and mtime, applied once everything inside it is written.
struct DirMeta {
    path: PathBuf,
    depth: usize,
    mode: u32,
    mtime: Option<SystemTime>,
}

/// Writes entries one by one, checking each again: the archive was inspected, but this code
/// writes to the disk and trusts nothing it did not check itself.
struct Extractor<'a> {
    dest: &'a Path,
    /// Entry paths and links, judged as `dropdeploy check` judges them.
    paths: Policy,
    /// Folders under `dest` known to be real directories (made or checked here, and never
    /// replaced: an entry that would replace a folder is refused).
    dirs: HashSet<PathBuf>,
    deferred: Vec<DirMeta>,
}

fn path_of(base: &Path, components: &[Vec<u8>]) -> PathBuf {
    let mut path = base.to_path_buf();
    for component in components {
        path.push(OsStr::from_bytes(component));
    }
    path
}

fn shown_bytes(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_error(path: &Path) -> impl Fn(io::Error) -> ExtractError + '_ {
    move |e| ExtractError::Io(format!("cannot write {}: {e}", path.display()))
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = shown_bytes(&raw);
        let target = match kind {
            EntryType::Symlink | EntryType::Link => {
                entry.link_name_bytes().unwrap_or_default().into_owned()
            }
            _ => Vec::new(),
        };
        let policy_kind = match kind {
            EntryType::Directory => EntryKind::Folder,
            EntryType::Symlink => EntryKind::Symlink(&target),
            EntryType::Link => EntryKind::HardLink(&target),
            _ => EntryKind::File,
        };
        let (rel, hard_link_to) = match self.paths.admit(&raw, policy_kind) {
            Ok(Place::ArchiveRoot) => return Ok(()),
            Ok(Place::Inside { path, hard_link_to }) => (path, hard_link_to),
            Err(refusal) => return Err(ExtractError::Refused(refusal.reason)),
        };
        let mode = entry.header().mode().map_err(|e| {
            ExtractError::Refused(format!("entry {shown} has an unreadable mode: {e}"))
        })? & 0o777;
        let mtime = entry
            .header()
            .mtime()
            .ok()
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)));

        if rel.is_empty() {
            // The top-level folder itself (the policy refused anything else) is the release.
            self.deferred.push(DirMeta {
                path: self.dest.to_path_buf(),
                depth: 0,
                mode,
                mtime,
            });
            return Ok(());
        }
        self.ensure_parents(&rel, &shown)?;
        let path = path_of(self.dest, &rel);
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(entry, &path, &shown, mode, mtime)
            }
            EntryType::Directory => self.make_dir(&path, rel.len(), &shown, mode, mtime),
            EntryType::Symlink => {
                self.clear_slot(&path, &shown)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(write_error(&path))
            }
            EntryType::Link => {
                let source = hard_link_to.unwrap_or_default();
                self.make_hard_link(&path, &shown, &target, &source)
            }
            EntryType::Char | EntryType::Block => {
                Err(ExtractError::Refused(format!("device file {shown}")))
            }
            EntryType::Fifo => Err(ExtractError::Refused(format!("fifo {shown}"))),
            other => Err(ExtractError::Refused(format!(
                "unsupported entry type {:?} for {shown}",
                char::from(other.as_byte())
            ))),
        }
    }

    /// Makes sure every folder above the entry is a real directory inside the release (made
    /// here if missing): writing through a symlink made by an earlier entry could land
    /// anywhere.
    fn ensure_parents(&mut self, rel: &[Vec<u8>], shown: &str) -> Result<(), ExtractError> {
        for depth in 1..rel.len() {
            let dir = path_of(self.dest, &rel[..depth]);
            if self.dirs.contains(&dir) {
                continue;
            }
            let inside = shown_bytes(&rel[..depth].join(&b'/'));
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ExtractError::Refused(format!(
                        "entry {shown} would be written through the symlink {inside}"
                    )));
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(ExtractError::Refused(format!(
                        "entry {shown} is inside {inside}, which is not a folder"
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(write_error(&dir))?;
                }
                Err(e) => return Err(write_error(&dir)(e)),
            }
            self.dirs.insert(dir);
        }
        Ok(())
    }

    /// Clears the way for a new file or link: an earlier file or link of the same name is
    /// replaced (as tar does with duplicates), a folder is not.
    fn clear_slot(&self, path: &Path, shown: &str) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(write_error(path)(e)),
            Ok(meta) if meta.is_dir() => Err(ExtractError::Refused(format!(
                "entry {shown} would replace a folder of the same name"
            ))),
            Ok(_) => fs::remove_file(path).map_err(write_error(path)),
        }
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        shown: &str,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), ExtractError> {
        self.clear_slot(path, shown)?;
        // `create_new` never follows a symlink at the final component.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_error(path))?;
        io::copy(entry, &mut file).map_err(|e| {
            ExtractError::Io(format!("cannot extract {shown} to {}: {e}", path.display()))
        })?;
        // Permission bits only: setuid, setgid and sticky bits are dropped.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(write_error(path))?;
        if let Some(mtime) = mtime {
            file.set_modified(mtime).map_err(write_error(path))?;
        }
        Ok(())
    }

    fn make_dir(
        &mut self,
        path: &Path,
        depth: usize,
        shown: &str,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), ExtractError> {
        if !self.dirs.contains(path) {
            match fs::symlink_metadata(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(path).map_err(write_error(path))?;
                }
                Err(e) => return Err(write_error(path)(e)),
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(ExtractError::Refused(format!(
                        "folder {shown} would replace a file or link of the same name"
                    )));
                }
            }
            self.dirs.insert(path.to_path_buf());
        }
        self.deferred.push(DirMeta {
            path: path.to_path_buf(),
            depth,
            mode,
            mtime,
        });
        Ok(())
    }

    /// `source` is the linked member below the top folder, as the policy resolved it: still
    /// to check on the disk is that it is a file extracted before, reached through folders.
    fn make_hard_link(
        &mut self,
        path: &Path,
        shown: &str,
        target: &[u8],
        source: &[Vec<u8>],
    ) -> Result<(), ExtractError> {
        let target_shown = shown_bytes(target);
        for depth in 1..source.len() {
            let dir = path_of(self.dest, &source[..depth]);
            let real_dir =
                self.dirs.contains(&dir) || fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
            if !real_dir {
                return Err(ExtractError::Refused(format!(
                    "hard link {shown} points through something other than a folder ({target_shown})"
                )));
            }
        }
        let source = path_of(self.dest, source);
        // Only a file: a hard link to a symlink would be a copy of that symlink elsewhere,
        // where its relative target may lead out of the release.
        if !fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
            return Err(ExtractError::Refused(format!(
                "hard link {shown} must point to a file extracted before it ({target_shown})"
            )));
        }
        if source == path {
            return Ok(());
        }
        self.clear_slot(path, shown)?;
        fs::hard_link(&source, path).map_err(write_error(path))
    }

    /// Applies folder modes and mtimes, deepest first, now that nothing more is written in
    /// them (a read-only folder would have refused its own content).
    fn finish(mut self) -> Result<(), ExtractError> {
        self.deferred
            .sort_by_key(|meta| std::cmp::Reverse(meta.depth));
        for meta in &self.deferred {
            let dir = open_dir_nofollow(&meta.path).map_err(write_error(&meta.path))?;
            dir.set_permissions(Permissions::from_mode(meta.mode))
                .map_err(write_error(&meta.path))?;
            if let Some(mtime) = meta.mtime {
                dir.set_modified(mtime).map_err(write_error(&meta.path))?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running the activate command

enum Ending {
    Exited(ExitStatus),
    TimedOut,
}

struct Run {
    ending: Ending,
    output: String,
}

/// The end of a stream, at most [`ACTIVATE_OUTPUT_LIMIT`] bytes of it.
#[derive(Default)]
struct OutputTail {
    bytes: Vec<u8>,
    cut: bool,
}

impl OutputTail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        // Trim in batches, so each byte is moved a bounded number of times.
        if self.bytes.len() > 2 * ACTIVATE_OUTPUT_LIMIT {
            let excess = self.bytes.len() - ACTIVATE_OUTPUT_LIMIT;
            self.bytes.drain(..excess);
            self.cut = true;
        }
    }

    fn text(&self) -> String {
        let start = self.bytes.len().saturating_sub(ACTIVATE_OUTPUT_LIMIT);
        let text = String::from_utf8_lossy(&self.bytes[start..]);
        if self.cut || start > 0 {
            format!("[earlier output cut]\n{text}")
        } else {
            text.into_owned()
        }
    }
}

/// Runs `command` with stdout and stderr into one pipe, killing its process group after
/// `timeout`. `Err` only when it could not be started.
fn run_captured(mut command: Command, timeout: Duration) -> io::Result<Run> {
    let (mut reader, writer) = io::pipe()?;
    command.stdout(writer.try_clone()?).stderr(writer);
    let spawned = command.spawn();
    // The command holds the pipe's write ends: drop them, or the reader never sees the end.
    drop(command);
    let mut child = spawned?;

    let tail = Arc::new(Mutex::new(OutputTail::default()));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let thread_tail = Arc::clone(&tail);
    // Detached on purpose: a background process started by the command may keep the pipe
    // open; the thread keeps draining it (so that process never blocks or gets SIGPIPE) and
    // ends when the pipe closes.
    let reader_thread = std::thread::Builder::new()
        .name("activate-output".into())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Ok(mut tail) = thread_tail.lock() {
                            tail.push(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = done_tx.send(());
        });
    if let Err(e) = reader_thread {
        kill_group(&mut child);
        return Err(e);
    }

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let ending = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ending::Exited(status),
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(e);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(&mut child);
            break Ending::TimedOut;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    };

    let closed = done_rx.recv_timeout(OUTPUT_GRACE).is_ok();
    let mut output = tail.lock().map(|tail| tail.text()).unwrap_or_default();
    if !closed {
        output.push_str("\n[output still open: a background process of the command holds it]\n");
    }
    Ok(Run { ending, output })
}

/// SIGKILL to the child's whole process group (it leads one of its own), then reap it. The
/// child is not reaped before the kill, so its pid, and the group's id, cannot be reused.
fn kill_group(child: &mut Child) {
    let pid = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// argv as a person would type it: `sh -c 'echo boom; exit 3'`.
fn shown_command(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,".contains(&b));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(dir: &Path, activate: &[&str], keep: usize) -> LocalTarget {
        LocalTarget::new(&LocalTargetConfig {
            releases_dir: dir.to_path_buf(),
            activate: activate.iter().map(|s| s.to_string()).collect(),
            activate_timeout: Duration::from_secs(10),
            keep_releases: keep,
        })
    }

    /// Name, type, link target, content.
    type RawEntry<'a> = (&'a [u8], EntryType, &'a [u8], &'a [u8]);

    /// A tar (uncompressed) built from raw GNU headers: any name, any link target.
    fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, link, data) in entries {
            let mut header = tar::Header::new_gnu();
            {
                let gnu = header.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name);
                gnu.linkname[..link.len()].copy_from_slice(link);
            }
            header.set_entry_type(*kind);
            header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
            header.set_size(data.len() as u64);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn extract_raw(entries: &[RawEntry<'_>]) -> (tempfile::TempDir, Result<(), String>) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("release");
        fs::create_dir(&dest).unwrap();
        let result = extract_from(&raw_tar(entries)[..], &dest).map_err(|e| match e {
            ExtractError::Refused(why) => format!("refused: {why}"),
            ExtractError::Io(why) => format!("io: {why}"),
        });
        (dir, result)
    }

    const DIR: EntryType = EntryType::Directory;
    const FILE: EntryType = EntryType::Regular;
    const SYMLINK: EntryType = EntryType::Symlink;
    const HARD: EntryType = EntryType::Link;

    #[test]
    fn release_names_sort_by_creation_time() {
        assert_eq!(
            LocalTarget::release_name(1_700_000_000, "app-20231114221320-deadbeef"),
            "20231114T221320Z-app-20231114221320-deadbeef"
        );
        assert_eq!(
            LocalTarget::release_name(0, "a/b c"),
            "19700101T000000Z-a_b_c"
        );
        assert!(looks_like_release(&LocalTarget::release_name(5, "x")));
        assert!(!looks_like_release("current"));
        assert!(!looks_like_release(".partial-19700101T000000Z-x"));
        assert!(!looks_like_release("19700101T000000Z-"));
        assert!(!looks_like_release("1970010T000000Z-x"));
    }

    #[test]
    fn a_leading_dot_slash_and_the_top_folder_are_stripped() {
        let (dir, result) = extract_raw(&[
            (b"./", DIR, b"", b""),
            (b"./app/", DIR, b"", b""),
            (b"./app/sub/x.txt", FILE, b"", b"hello"),
            (b"app/y", FILE, b"", b"why"),
        ]);
        result.unwrap();
        let release = dir.path().join("release");
        assert_eq!(fs::read(release.join("sub/x.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(release.join("y")).unwrap(), b"why");
        let mtime = fs::metadata(release.join("y")).unwrap().modified().unwrap();
        assert_eq!(mtime, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    }

    #[test]
    fn an_entry_under_a_symlink_made_earlier_is_refused() {
        // The link itself stays inside the release; writing through it is still refused.
        let (dir, result) = extract_raw(&[
            (b"app/", DIR, b"", b""),
            (b"app/d/", DIR, b"", b""),
            (b"app/l", SYMLINK, b"d", b""),
            (b"app/l/f", FILE, b"", b"x"),
        ]);
        let err = result.unwrap_err();
        assert!(err.contains("through the symlink app/l"), "{err}");
        assert!(!dir.path().join("release/d/f").exists());
    }

    #[test]
    fn symlink_targets_must_stay_in_the_release() {
        for (link, target, fragment) in [
            (&b"app/l"[..], &b"/etc/passwd"[..], "absolute path"),
            (b"app/l", b"../x", "outside the app/ folder"),
            (b"app/a/l", b"../../x", "outside the app/ folder"),
            (b"app/a/l", b"b/../../../x", "outside the app/ folder"),
            (b"app/l", b"", "empty target"),
        ] {
            let (_dir, result) = extract_raw(&[
                (b"app/", DIR, b"", b""),
                (b"app/a/", DIR, b"", b""),
                (link, SYMLINK, target, b""),
            ]);
            let err = result.unwrap_err();
            assert!(
                err.starts_with("refused") && err.contains(fragment),
                "{err}"
            );
        }
        let (dir, result) = extract_raw(&[
            (b"app/", DIR, b"", b""),
            (b"app/a/", DIR, b"", b""),
            (b"app/a/up", SYMLINK, b"../x", b""),
            (b"app/a/here", SYMLINK, b".", b""),
        ]);
        result.unwrap();
        let up = fs::read_link(dir.path().join("release/a/up")).unwrap();
        assert_eq!(up, Path::new("../x"));
    }

    #[test]
    fn hard_links_must_point_to_a_file_in_the_release() {
        let (dir, result) = extract_raw(&[
            (b"app/", DIR, b"", b""),
            (b"app/f", FILE, b"", b"data"),
            (b"app/h", HARD, b"app/f", b""),
        ]);
        result.unwrap();
        assert_eq!(fs::read(dir.path().join("release/h")).unwrap(), b"data");

        for (target, fragment) in [
            (&b"/etc/passwd"[..], "points to the absolute path"),
            (b"../../etc/passwd", "outside the app/ folder"),
            (b"other/f", "outside the app/ folder"),
            (b"app", "the app/ folder itself"),
            (b"app/s", "must point to a file"),
            (b"app/missing", "must point to a file"),
        ] {
            let (_dir, result) = extract_raw(&[
                (b"app/", DIR, b"", b""),
                (b"app/a/", DIR, b"", b""),
                (b"app/a/s", SYMLINK, b"../f", b""),
                (b"app/s", SYMLINK, b"a", b""),
                (b"app/h", HARD, target, b""),
            ]);
            let err = result.unwrap_err();
            assert!(err.contains(fragment), "{target:?}: {err}");
        }
    }

    #[test]
    fn paths_special_files_and_second_roots_are_refused() {
        for (name, kind, fragment) in [
            (&b"app/../../evil"[..], FILE, "leaves the archive"),
            (b"/abs", FILE, "absolute path"),
            (b"app/dev", EntryType::Char, "device file"),
            (b"app/pipe", EntryType::Fifo, "fifo"),
            (b"other/x", FILE, "outside the top-level folder app/"),
        ] {
            let (_dir, result) = extract_raw(&[(b"app/", DIR, b"", b""), (name, kind, b"", b"")]);
            let err = result.unwrap_err();
            assert!(err.contains(fragment), "{err}");
        }
    }

    #[test]
    fn a_folder_never_replaces_a_link_and_a_link_never_replaces_a_folder() {
        let (_dir, result) = extract_raw(&[
            (b"app/", DIR, b"", b""),
            (b"app/l", SYMLINK, b".", b""),
            (b"app/l/", DIR, b"", b""),
        ]);
        assert!(result.unwrap_err().contains("would replace"));
        let (_dir, result) = extract_raw(&[
            (b"app/", DIR, b"", b""),
            (b"app/d/", DIR, b"", b""),
            (b"app/d", SYMLINK, b".", b""),
        ]);
        assert!(result.unwrap_err().contains("would replace a folder"));
    }

    #[test]
    fn read_only_folders_get_their_mode_after_their_content() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(DIR);
        header.set_mode(0o555);
        header.set_size(0);
        builder
            .append_data(&mut header, "app/ro/", &[][..])
            .unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(2);
        builder
            .append_data(&mut header, "app/ro/f", &b"hi"[..])
            .unwrap();
        let bytes = builder.into_inner().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("release");
        fs::create_dir(&dest).unwrap();
        assert!(extract_from(&bytes[..], &dest).is_ok());
        let mode = fs::metadata(dest.join("ro")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o555);
        assert_eq!(fs::read(dest.join("ro/f")).unwrap(), b"hi");
        remove_tree(&dest).unwrap();
        assert!(!dest.exists());
    }

    #[test]
    fn the_activate_command_never_gets_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let target = target(dir.path(), &["env"], 5);
        let command = target.activate_command("web", Path::new("rel"), "ref-1");
        let envs: Vec<(String, Option<String>)> = command
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert!(envs.contains(&(TOKEN_VAR.to_string(), None)), "{envs:?}");
        assert!(envs.contains(&("DROPDEPLOY_APP".to_string(), Some("web".to_string()))));
        assert!(envs.contains(&("DROPDEPLOY_GIT_REF".to_string(), Some("ref-1".to_string()))));
        let release = envs
            .iter()
            .find(|(k, _)| k == "DROPDEPLOY_RELEASE")
            .and_then(|(_, v)| v.clone())
            .unwrap();
        assert!(Path::new(&release).is_absolute(), "{release}");
    }

    #[test]
    fn only_the_end_of_a_long_output_is_kept() {
        let mut tail = OutputTail::default();
        for i in 0..100_000u32 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let text = tail.text();
        assert!(text.len() <= ACTIVATE_OUTPUT_LIMIT + 32);
        assert!(text.starts_with("[earlier output cut]"));
        assert!(text.ends_with("line 99999\n"));
    }

    #[test]
    fn commands_and_durations_read_as_typed() {
        let argv = ["sh", "-c", "echo boom; exit 3", "it's"].map(String::from);
        assert_eq!(shown_command(&argv), r"sh -c 'echo boom; exit 3' 'it'\''s'");
        assert_eq!(crate::human::duration(Duration::from_secs(60)), "60 s");
        assert_eq!(crate::human::duration(Duration::from_millis(300)), "300 ms");
        assert_eq!(crate::human::duration(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn prune_keeps_the_current_release_and_the_newest_others() {
        let dir = tempfile::tempdir().unwrap();
        let target = target(dir.path(), &[], 2);
        let app_dir = target.app_dir("web");
        fs::create_dir_all(&app_dir).unwrap();
        let names: Vec<String> = (1..=5)
            .map(|i| LocalTarget::release_name(i * 1000, &format!("r{i}")))
            .collect();
        for name in &names {
            fs::create_dir(app_dir.join(name)).unwrap();
        }
        fs::create_dir(app_dir.join(".partial-x")).unwrap();
        fs::write(app_dir.join("notes.txt"), b"mine").unwrap();
        // Rolled back by hand to the oldest release.
        switch_current(&app_dir, Path::new(&names[0])).unwrap();
        let pruned = target.prune("web", &app_dir);
        assert_eq!(
            pruned,
            vec![
                app_dir.join(&names[3]),
                app_dir.join(&names[2]),
                app_dir.join(&names[1])
            ]
        );
        assert_eq!(
            list_releases(&app_dir).unwrap(),
            vec![names[0].clone(), names[4].clone()]
        );
        assert!(app_dir.join(".partial-x").exists());
        assert!(app_dir.join("notes.txt").exists());
        assert_eq!(target.current("web"), Some(app_dir.join(&names[0])));
    }
}
