//! The file watch behind a watched source directory: which directories are watched, and which
//! filesystem events are relevant changes. [`crate::source::tree`] turns the changes found here
//! into debounced bursts.
//!
//! [`DirectoryWatches`] keeps one *non-recursive* watch on each directory of the tree that the
//! ignore rules keep, so an ignored `node_modules/` or `target/` costs no watch. It follows the
//! tree as it changes: a new directory is watched with everything below it (and what is already
//! there counts as changed, so a `mkdir -p a/b/c && touch a/b/c/f` is not missed), a removed or
//! renamed-away directory loses its watches, and a change to an ignore file rebuilds the rules
//! and adds or drops watches to match. Filesystem events are hints: an overflow, a watcher error
//! or a full internal queue means "the whole tree may have changed" and the tree is walked again.
//!
//! Linux (inotify) is the target, through [`DirWatcher`](crate::source::inotify::DirWatcher),
//! which asks the kernel for changes only (a `grep -r` or a pack of the tree, which open every
//! file, wake nothing). With a poll interval, notify's `PollWatcher` is used instead (for NFS
//! and other filesystems without inotify), on the same directories.
//!
//! The helpers that make notify's callback non-blocking and that explain inotify limits are
//! shared with the drop folder ([`crate::source::drop`]).

mod directories;
mod events;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind};
use tokio::sync::mpsc;

use crate::archive::ignore::{IgnoreError, IgnoreRules};

pub(crate) use directories::{DirectoryWatches, UNWATCHED_CHECK, root_identity};
pub(crate) use events::{Changes, EventStream};

// Linux errno values (the same on every Linux architecture) that mean an inotify limit.
pub(crate) const ENOSPC: i32 = 28;
pub(crate) const EMFILE: i32 = 24;

/// An inotify limit that the kernel enforced, and how to raise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InotifyLimit {
    /// The sysctl that sets the limit: `fs.inotify.max_user_watches` (`ENOSPC` when adding a
    /// watch) or `fs.inotify.max_user_instances` (`EMFILE` when creating a watcher).
    pub setting: &'static str,
    /// A value that is usually enough.
    pub suggested: u32,
    /// What the OS said.
    pub os: String,
}

/// Which inotify limit a notify error means, if any.
pub(crate) fn inotify_limit(e: &notify::Error) -> Option<InotifyLimit> {
    let watches = |os: String| InotifyLimit {
        setting: "fs.inotify.max_user_watches",
        suggested: 524_288,
        os,
    };
    match &e.kind {
        // notify reports ENOSPC from inotify_add_watch as this kind.
        notify::ErrorKind::MaxFilesWatch => {
            Some(watches("No space left on device (ENOSPC)".to_string()))
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(ENOSPC) => {
            Some(watches(io.to_string()))
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(EMFILE) => Some(InotifyLimit {
            setting: "fs.inotify.max_user_instances",
            suggested: 512,
            os: io.to_string(),
        }),
        _ => None,
    }
}

/// A notify event handler that never blocks notify's thread: it only tries to queue the event,
/// and raises `overflow` when the queue is full (the receiver then treats events as lost).
/// Opens and reads are dropped here: they are frequent and never a change.
pub(crate) fn forward_events(
    events: mpsc::Sender<notify::Result<Event>>,
    overflow: Arc<AtomicBool>,
) -> impl FnMut(notify::Result<Event>) + Send + 'static {
    move |res: notify::Result<Event>| {
        if let Ok(event) = &res
            && matches!(
                event.kind,
                EventKind::Access(
                    AccessKind::Open(_)
                        | AccessKind::Read
                        | AccessKind::Close(AccessMode::Read)
                        | AccessKind::Any
                        | AccessKind::Other
                )
            )
            && !event.need_rescan()
        {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(res) {
            overflow.store(true, Ordering::Release);
        }
    }
}

/// Why a source directory could not be watched. Every message names the source directory.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The source directory does not exist.
    #[error("source directory {} does not exist", root.display())]
    NotFound { root: PathBuf },
    /// The source directory's path is taken by something that is not a directory.
    #[error("source directory {} exists but is not a directory", root.display())]
    NotADirectory { root: PathBuf },
    /// The source directory exists but cannot be read or listed.
    #[error("cannot read source directory {}: {source}", root.display())]
    Read { root: PathBuf, source: io::Error },
    /// The ignore rules could not be read (the error names the file and line).
    #[error("cannot read the ignore rules of source directory {}: {source}", root.display())]
    Rules { root: PathBuf, source: IgnoreError },
    /// The kernel refused another inotify watch (`ENOSPC`) or instance (`EMFILE`).
    #[error(
        "cannot watch {} (source directory {}): {os}: the inotify limit {setting} is reached; \
         raise it with `sysctl -w {setting}={suggested}` (and in /etc/sysctl.d/ to keep it), \
         ignore more directories, or watch by polling",
        dir.display(),
        root.display()
    )]
    InotifyLimit {
        root: PathBuf,
        /// The directory whose watch was refused.
        dir: PathBuf,
        /// The sysctl that sets the limit: `fs.inotify.max_user_watches` or
        /// `fs.inotify.max_user_instances`.
        setting: &'static str,
        /// A value that is usually enough.
        suggested: u32,
        /// What the OS said.
        os: String,
    },
    /// A watch could not be set up for another reason.
    #[error("cannot watch {} (source directory {}): {reason}", dir.display(), root.display())]
    Watch {
        root: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    /// [`crate::source::tree::TreeWatcher::start`] was called outside a tokio runtime.
    #[error("cannot watch source directory {}: not inside a tokio runtime", root.display())]
    NoRuntime { root: PathBuf },
}

fn watch_error(root: &Path, dir: &Path, e: &notify::Error) -> WatchError {
    if let Some(limit) = inotify_limit(e) {
        return WatchError::InotifyLimit {
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
            setting: limit.setting,
            suggested: limit.suggested,
            os: limit.os,
        };
    }
    let reason = match &e.kind {
        notify::ErrorKind::Io(io) => io.to_string(),
        notify::ErrorKind::PathNotFound => "the directory does not exist".to_string(),
        _ => e.to_string(),
    };
    WatchError::Watch {
        root: root.to_path_buf(),
        dir: dir.to_path_buf(),
        reason,
    }
}

/// Whether a notify error says that the path is gone (it vanished between a listing and its
/// watch, or a polled directory was removed).
fn is_not_found(e: &notify::Error) -> bool {
    match &e.kind {
        notify::ErrorKind::PathNotFound => true,
        notify::ErrorKind::Io(io) => io.kind() == io::ErrorKind::NotFound,
        _ => false,
    }
}

/// What builds the ignore rules: the values of the app's configuration, kept to rebuild the
/// rules when an ignore file changes.
#[derive(Debug, Clone)]
pub(crate) struct RulesSource {
    pub ignore: Vec<String>,
    pub include: Vec<String>,
    pub always_ignore: Vec<PathBuf>,
}

impl RulesSource {
    pub(super) fn build(&self, root: &Path) -> Result<IgnoreRules, IgnoreError> {
        IgnoreRules::new(root, &self.ignore, &self.include, &self.always_ignore)
    }
}
