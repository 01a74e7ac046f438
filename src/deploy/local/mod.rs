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

mod activate;
pub mod driver;
mod extract;
mod prune;
mod recover;
mod switch;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::LocalTargetConfig;
use crate::queue::spool::{Timestamp, compact_utc};
use switch::{
    Rollback, current_link, read_previous_note, remove_previous_note, roll_back, switch_in,
};

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
    pub fn deploy(
        &self,
        app: &str,
        release_name: &str,
        git_ref: &str,
        archive: &Path,
    ) -> Result<Deployed, LocalFailure> {
        check_app(app)?;
        check_release_name(app, release_name)?;
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
            self.resume_current(app, &app_dir, release_name)?
        } else {
            let extracted = self.extract_release(app, &app_dir, release_name, archive);
            if let Err(failure) = extracted {
                if created_app_dir {
                    // Leave nothing behind for a refused archive; fails harmlessly if not empty.
                    let _ = fs::remove_dir(&app_dir);
                }
                return Err(failure);
            }
            switch_in(app, &app_dir, release_name, before, points_here)?
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

    /// An earlier run got past the switch: keep the release, and activate it again. The
    /// rollback is to the release its note records; without a note, it stays.
    fn resume_current(
        &self,
        app: &str,
        app_dir: &Path,
        release_name: &str,
    ) -> Result<Rollback, LocalFailure> {
        let release = app_dir.join(release_name);
        self.remove_partial(app, app_dir, release_name)?;
        tracing::info!(app, release = %release.display(), "release is already current; activating it again");
        Ok(match read_previous_note(app_dir, release_name) {
            Some(previous) => Rollback::To(previous),
            // The note goes only once activation has ended, and a rolled-back release is
            // not current: this one was activated successfully before.
            None => Rollback::Keep,
        })
    }
}

/// A release name must be what [`LocalTarget::release_name`] makes.
fn check_release_name(app: &str, release_name: &str) -> Result<(), LocalFailure> {
    if looks_like_release(release_name) {
        return Ok(());
    }
    Err(LocalFailure::new(
        LocalStep::Extract,
        format!(
            "app {app}: release name `{release_name}` is not of the form \
             <YYYYmmddTHHMMSSZ>-<git_ref>"
        ),
    ))
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
