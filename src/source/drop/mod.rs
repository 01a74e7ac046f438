//! The drop folder: a directory where a user or a CI job drops ready-made `.tar.gz` archives.
//!
//! [`DropWatcher`] watches one folder (not recursively) and sends a [`ReadyFile`] for each archive
//! once it is complete, exactly once while it stays there. It only *notices*: the daemon claims a
//! ready file by renaming it into its spool, and later moves it to `done/` or `failed/`.
//!
//! A file is complete when no writer has it open and it stayed unchanged (size, mtime, ctime,
//! inode) for the settle time; a file renamed into the folder (a rename is atomic) needs no settle
//! time, and one found already there with an old mtime needs one unchanged check. Whether anyone
//! has the file open for writing is asked of the kernel with a read lease (`F_SETLEASE`, released
//! at once); where leases are refused (the daemon neither owns the files nor has `CAP_LEASE`)
//! the log says so once and a file written in place must also be seen closed
//! (`IN_CLOSE_WRITE`). One predicate (`Settling::check`) decides for every way a file is
//! noticed: an event, the listing at start, a rescan, a recheck after a failed claim.
//! Filesystem events are hints: every candidate is checked on a timer, an overflow, a watcher
//! error or a full internal queue leads to a rescan of the whole folder, and the folder is listed
//! again every 30 s in any case, so nothing dropped is missed, even a hard link that
//! brings no write and no close. Files that wait are shown on the live board
//! ([`crate::live`]) with the reason. Linux (inotify) is the target.
//!
//! The code: `complete` holds the completeness predicate and the lease probe, `events` reads
//! filesystem events into hints, `folder` is the watcher's view of the folder, `scan` lists the
//! folder (rescans, rechecks), and `watcher` is the event loop.

mod complete;
mod events;
mod folder;
mod scan;
mod watcher;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

pub use self::complete::Writers;
use self::folder::Folder;
use self::watcher::{EVENT_QUEUE, WatchTask, start_watch};
use crate::live::{Board, WaitKind};

/// A drop folder's layout: the folder where archives are dropped, `done/` for the deployed (and
/// superseded) ones, `failed/` for the failed and refused ones, each beside its reason file.
/// The drop folder owns these names; `prepare` creates the subfolders at start, and whoever
/// records an outcome puts the archive back through this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropLayout {
    dir: PathBuf,
}

impl DropLayout {
    /// The folder, inside a drop folder, where deployed (and superseded) archives go.
    pub const DONE: &'static str = "done";
    /// The folder, inside a drop folder, where failed and refused archives go, with their
    /// reasons.
    pub const FAILED: &'static str = "failed";
    /// Appended to an archive's name in `failed/` to name its reason file.
    pub const REASON_SUFFIX: &'static str = ".reason.txt";

    /// The layout of the drop folder `dir`. Touches nothing on disk.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DropLayout { dir: dir.into() }
    }

    /// The layout of the drop folder `original` was dropped into (`.` for a bare name), and the
    /// name it was dropped under (`archive.tar.gz` if it has none).
    pub fn of_dropped(original: &Path) -> (Self, OsString) {
        let dir = match original.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = original
            .file_name()
            .map(OsStr::to_os_string)
            .unwrap_or_else(|| OsString::from("archive.tar.gz"));
        (DropLayout { dir }, name)
    }

    /// The drop folder itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/done`.
    pub fn done(&self) -> PathBuf {
        self.dir.join(Self::DONE)
    }

    /// `<dir>/failed`.
    pub fn failed(&self) -> PathBuf {
        self.dir.join(Self::FAILED)
    }

    /// The reason file beside `archive` (a file in `failed/`): `<archive>.reason.txt`.
    pub fn reason_path(archive: &Path) -> PathBuf {
        let mut name = archive.as_os_str().to_os_string();
        name.push(Self::REASON_SUFFIX);
        PathBuf::from(name)
    }
}

/// How a file was judged complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Renamed into the folder: a rename is atomic, so the file was complete at once.
    RenamedIn,
    /// Written in place (or linked in), no writer left, then unchanged for the settle time.
    Settled,
    /// Already in the folder when it was listed (at start, by a rescan, or again after a failed
    /// claim), no writer has it open, and no longer changing: older than the settle time and
    /// unchanged for one check, or unchanged for the settle time.
    FoundAtStart,
}

/// As the logs write it: `renamed-in`, `settled`, `found-at-start`.
impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Readiness::RenamedIn => "renamed-in",
            Readiness::Settled => "settled",
            Readiness::FoundAtStart => "found-at-start",
        })
    }
}

/// A complete archive in a drop folder, ready to be claimed.
#[derive(Debug, Clone)]
pub struct ReadyFile {
    /// The app the drop folder belongs to ([`DropFolderConfig::app`]).
    pub app: String,
    /// The file, as an absolute path directly in the drop folder. It may be gone by the time the
    /// daemon claims it (deleted, or already claimed after a [`DropWatcher::rescan`]): a claim
    /// that finds nothing there must be ignored.
    pub path: PathBuf,
    /// How the file was judged complete.
    pub readiness: Readiness,
    /// The file's size in bytes when it was judged complete.
    pub size: u64,
}

/// Why a drop folder could not be prepared or watched. Every message names the folder.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    /// The drop folder did not exist and could not be created.
    #[error("cannot create drop folder {}: {source}", dir.display())]
    Create { dir: PathBuf, source: io::Error },
    /// The `done/` or `failed/` subfolder could not be created.
    #[error("cannot create {} (drop folder {}): {source}", path.display(), dir.display())]
    CreateSubfolder {
        dir: PathBuf,
        path: PathBuf,
        source: io::Error,
    },
    /// The drop folder's path is taken by something that is not a directory.
    #[error("drop folder {} exists but is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    /// The drop folder exists but cannot be read or listed.
    #[error("cannot read drop folder {}: {source}", dir.display())]
    Read { dir: PathBuf, source: io::Error },
    /// The kernel refused another inotify watch (`ENOSPC`) or instance (`EMFILE`).
    #[error(
        "cannot watch drop folder {}: {os}: the inotify limit {setting} is reached; raise it \
         with `sysctl -w {setting}={suggested}` (and in /etc/sysctl.d/ to keep it)",
        dir.display()
    )]
    InotifyLimit {
        dir: PathBuf,
        /// The sysctl that sets the limit: `fs.inotify.max_user_watches` or
        /// `fs.inotify.max_user_instances`.
        setting: &'static str,
        /// A value that is usually enough.
        suggested: u32,
        /// What the OS said.
        os: String,
    },
    /// The watch could not be set up for another reason.
    #[error("cannot watch drop folder {}: {reason}", dir.display())]
    Watch { dir: PathBuf, reason: String },
    /// [`DropWatcher::start`] was called outside a tokio runtime.
    #[error("cannot watch drop folder {}: not inside a tokio runtime", dir.display())]
    NoRuntime { dir: PathBuf },
}

/// One drop folder to watch.
#[derive(Debug, Clone)]
pub struct DropFolderConfig {
    /// The app whose archives land here; copied into every [`ReadyFile`].
    pub app: String,
    /// The folder. Relative paths are taken from the current directory at start.
    pub dir: PathBuf,
    /// How long a file written in place must stay closed and unchanged before it is ready.
    pub settle: Duration,
}

/// Creates the drop folder (and its `done/` and `failed/` subfolders) if needed, and checks that
/// it can be listed. A folder that had to be created is logged at INFO. Blocking.
pub fn prepare(dir: &Path) -> Result<(), DropError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(DropError::NotADirectory {
                dir: dir.to_path_buf(),
            });
        }
        // NotADirectory: a parent is a file; creating says so in the error the user should see.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            crate::durable::create_dir_all(dir).map_err(|source| DropError::Create {
                dir: dir.to_path_buf(),
                source,
            })?;
            tracing::info!(drop_dir = %dir.display(), "created the missing drop folder");
        }
        Err(source) => {
            return Err(DropError::Read {
                dir: dir.to_path_buf(),
                source,
            });
        }
    }
    let layout = DropLayout::new(dir);
    for path in [layout.done(), layout.failed()] {
        // Made durable in the drop folder (fsynced), like every folder the daemon makes.
        crate::durable::create_dir_all(&path).map_err(|source| DropError::CreateSubfolder {
            dir: dir.to_path_buf(),
            path: path.clone(),
            source,
        })?;
    }
    fs::read_dir(dir).map_err(|source| DropError::Read {
        dir: dir.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// Suffixes of names that download tools and sync programs give a file while it is being
/// written; the file is taken only once it is renamed to its real name.
const TEMPORARY_SUFFIXES: [&str; 5] = [".part", ".partial", ".tmp", ".crdownload", "~"];
/// Suffixes of archives the daemon deploys (compared without regard to ASCII case).
const ARCHIVE_SUFFIXES: [&str; 2] = [".tar.gz", ".tgz"];

/// Whether a file name is a candidate archive: it ends in `.tar.gz` or `.tgz` (any ASCII case)
/// with something before it, and is neither hidden (a leading `.`, which covers `.syncthing.*`
/// and rsync's temporary files) nor a temporary name (`*.part`, `*.partial`, `*.tmp`,
/// `*.crdownload`, `~*`, `*~`). Names that are not valid UTF-8 are judged on their bytes.
pub fn is_candidate_name(name: &OsStr) -> bool {
    let bytes = name.as_encoded_bytes();
    if bytes.is_empty() || bytes[0] == b'.' || bytes[0] == b'~' {
        return false;
    }
    let ends_with = |suffix: &str| {
        bytes.len() > suffix.len()
            && bytes[bytes.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    if TEMPORARY_SUFFIXES.iter().any(|s| ends_with(s)) {
        return false;
    }
    ARCHIVE_SUFFIXES.iter().any(|s| ends_with(s))
}

/// Watches one drop folder and sends each complete archive on a channel, once.
///
/// Dropping it (or calling [`DropWatcher::stop`]) ends the watch and its task.
pub struct DropWatcher {
    rescan: Arc<Notify>,
    rechecks: mpsc::UnboundedSender<PathBuf>,
    /// The board its waits are shown on, and the app they are under.
    live: Option<(Arc<Board>, String)>,
    task: JoinHandle<()>,
}

/// Asks a [`DropWatcher`] to check one file of its folder again, as a candidate, and send it
/// once complete: the way to retry a claim that failed. Cheap to clone; does nothing once the
/// watcher is stopped.
#[derive(Debug, Clone)]
pub struct Recheck(mpsc::UnboundedSender<PathBuf>);

impl Recheck {
    pub fn file(&self, path: PathBuf) {
        let _ = self.0.send(path);
    }
}

impl DropWatcher {
    /// Prepares the folder (see [`prepare`]), starts the watch first and then lists what is
    /// already there (so nothing dropped in between is missed), and from then on sends each
    /// complete archive on `tx`. Must be called inside a tokio runtime. Errors name the folder
    /// and the OS error; an inotify limit says which `sysctl` to raise.
    ///
    /// A file is sent once while it stays in the folder; once it leaves (claimed, deleted), the
    /// same name dropped again is sent again. If the drop folder itself is removed while watched,
    /// it is created and watched again a little later (logged at ERROR). A drop folder that is a
    /// symbolic link to a directory is followed: the directory it leads to is watched, and
    /// watched again within seconds when the link is pointed elsewhere. The watcher stops by
    /// itself if `tx`'s receiver is dropped.
    pub fn start(
        cfg: DropFolderConfig,
        tx: mpsc::Sender<ReadyFile>,
    ) -> Result<DropWatcher, DropError> {
        DropWatcher::start_with(cfg, tx, None)
    }

    /// [`DropWatcher::start`], showing each file that waits to be complete on `live`
    /// ([`WaitKind::Settle`]) with the reason, and clearing a [`WaitKind::Claim`] wait when its
    /// file leaves the folder.
    pub fn start_with_board(
        cfg: DropFolderConfig,
        tx: mpsc::Sender<ReadyFile>,
        live: Arc<Board>,
    ) -> Result<DropWatcher, DropError> {
        DropWatcher::start_with(cfg, tx, Some(live))
    }

    fn start_with(
        cfg: DropFolderConfig,
        tx: mpsc::Sender<ReadyFile>,
        live: Option<Arc<Board>>,
    ) -> Result<DropWatcher, DropError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(DropError::NoRuntime { dir: cfg.dir });
        };
        let dir = std::path::absolute(&cfg.dir).map_err(|source| DropError::Read {
            dir: cfg.dir.clone(),
            source,
        })?;
        prepare(&dir)?;
        let identity = watcher::identity(&dir);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        // An inotify limit does not stop the app: the folder is listed on a timer instead.
        let (watcher, limited) = match start_watch(&dir, events_tx.clone(), overflow.clone()) {
            Ok(watcher) => (Some(watcher), None),
            Err(e @ DropError::InotifyLimit { .. }) => {
                tracing::warn!(app = %cfg.app, "{e}; the drop folder is listed every {} s instead, until a watch can be had", watcher::LIMITED_RETRY.as_secs());
                (None, Some(e.to_string()))
            }
            Err(e) => return Err(e),
        };
        let rescan = Arc::new(Notify::new());
        let (rechecks_tx, rechecks) = mpsc::unbounded_channel();
        let task = WatchTask {
            folder: Folder::new(cfg.app.clone(), dir, cfg.settle, live.clone(), tx),
            events,
            events_tx,
            overflow,
            rescan: rescan.clone(),
            rechecks,
            watcher,
            identity,
            limited,
        };
        let task = runtime.spawn(task.run());
        Ok(DropWatcher {
            rescan,
            rechecks: rechecks_tx,
            live: live.map(|board| (board, cfg.app)),
            task,
        })
    }

    /// A handle to ask for a file to be checked and sent again (see [`Recheck`]).
    pub fn rechecker(&self) -> Recheck {
        Recheck(self.rechecks.clone())
    }

    /// Asks for the whole folder to be listed again, for instance after a failed claim. Unlike
    /// the rescans the watcher does by itself, this one forgets what was sent: every complete
    /// archive still in the folder is sent again (as [`Readiness::FoundAtStart`]), including
    /// ones whose claim may be in flight. Call it after a back-off, not in a tight loop.
    pub fn rescan(&self) {
        self.rescan.notify_one();
    }

    /// Stops the watch and its task (the same as dropping the watcher).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for DropWatcher {
    fn drop(&mut self) {
        self.task.abort();
        // Nobody checks those files any more; a new watcher of the folder shows them again.
        if let Some((live, app)) = &self.live {
            live.clear_kind(app, WaitKind::Settle);
            live.clear_kind(app, WaitKind::Watch);
        }
    }
}

impl std::fmt::Debug for DropWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropWatcher").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
