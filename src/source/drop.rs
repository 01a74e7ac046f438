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

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::inotify::DirWatcher;
use super::watch::{forward_events, inotify_limit};
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

/// Room for this many filesystem events between notify's thread and the watcher task; past that
/// the events are dropped and the folder is rescanned instead.
const EVENT_QUEUE: usize = 4096;
/// How long a drop folder that vanished while watched may stay missing before it is created again
/// (someone replacing it with `rm -rf dir && mv new dir` gets there first).
const RECREATE_GRACE: Duration = Duration::from_secs(2);
/// How often a vanished drop folder that cannot be created or watched is tried again.
const RECREATE_RETRY: Duration = Duration::from_secs(5);
/// How often each drop folder is listed even when no event came: the safety net for a file
/// whose events never come (events are hints), so a rescan and a timer reach the same answer.
const RESCAN_EVERY: Duration = Duration::from_secs(30);

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
            fs::create_dir_all(dir).map_err(|source| DropError::Create {
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
        fs::create_dir_all(&path).map_err(|source| DropError::CreateSubfolder {
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

/// What a check saw of a file: its identity, size and times. Any change restarts the settle time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    size: u64,
    mtime: Option<SystemTime>,
    /// Status change time (seconds, nanoseconds): catches a truncate, chmod or link that leaves
    /// the size and mtime as they were.
    ctime: (i64, i64),
    /// Device and inode: a file replaced under the same name is another file.
    id: (u64, u64),
}

impl Seen {
    fn of(meta: &fs::Metadata) -> Seen {
        use std::os::unix::fs::MetadataExt;
        Seen {
            size: meta.len(),
            mtime: meta.modified().ok(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            id: (meta.dev(), meta.ino()),
        }
    }
}

/// Whether anyone has a file open for writing, as far as the daemon can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// Nobody: the kernel granted a read lease (released at once).
    None,
    /// Someone has it open for writing (the kernel refused a read lease).
    Open,
    /// The daemon cannot tell (no lease: not the file's owner and no `CAP_LEASE`, or a
    /// filesystem without leases). Completeness then rests on the settle time alone.
    Unknown,
}

/// Why a candidate is not complete yet (shown in `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// A writer has it open.
    WriterOpen,
    /// Written to, and the kernel cannot be asked about writers: its close is awaited.
    AwaitingClose,
    /// Not unchanged for the settle time yet.
    Settling,
}

impl Pending {
    fn cause(self, settle: Duration) -> String {
        match self {
            Pending::WriterOpen => "open for writing by another process".to_string(),
            Pending::AwaitingClose => "written to; waiting for its writer to close it".to_string(),
            Pending::Settling => format!(
                "must stay unchanged for the settle time ({} ms)",
                settle.as_millis()
            ),
        }
    }
}

/// What the completeness predicate answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ready(Readiness),
    Wait(Pending),
}

/// The completeness predicate: how far a candidate file is from complete. Pure data: the
/// watcher feeds it events (hints only) and what each check sees, and it answers. Every way a
/// file is noticed (an event, the listing at start, a rescan, a recheck after a failed claim)
/// leads here, and nothing in it waits for an event that may never come.
///
/// The rule: complete = no writer has it open, and unchanged (size, mtime, ctime, inode) for
/// the settle time. Two shortcuts where the file cannot be half-written: one renamed in
/// (a rename is atomic), and, when the kernel says nobody writes it, one found by a listing
/// whose mtime is older than the settle time and that stays unchanged for one check.
#[derive(Debug, Clone)]
struct Settling {
    seen: Seen,
    /// When the file was last seen to change, open by a writer, or written or closed.
    last_change: Instant,
    /// No write was reported since its last close. Only consulted when the kernel cannot be
    /// asked about writers ([`Writers::Unknown`]).
    closed: bool,
    /// The readiness it will have; also decides the shortcuts.
    how: Readiness,
    /// Found with an mtime older than the settle time.
    old: bool,
    /// When it became a candidate, in the folder's order: files are sent in the order they
    /// arrived.
    arrival: u64,
}

impl Settling {
    fn new(seen: Seen, now: Instant, how: Readiness, closed: bool, old: bool) -> Self {
        Settling {
            seen,
            last_change: now,
            closed,
            how,
            old,
            arrival: 0,
        }
    }

    /// A file found by listing the folder. Its close may have happened before the watch began,
    /// so none is awaited.
    fn found(seen: Seen, now: Instant, old: bool) -> Self {
        Settling::new(seen, now, Readiness::FoundAtStart, true, old)
    }

    /// A file that appeared under its name by `IN_CREATE` (a new file, or a hard link, which
    /// brings no write and no close: none is awaited until a write is seen).
    fn created(seen: Seen, now: Instant) -> Self {
        Settling::new(seen, now, Readiness::Settled, true, false)
    }

    /// A file that an event says is being written in place.
    fn written(seen: Seen, now: Instant) -> Self {
        Settling::new(seen, now, Readiness::Settled, false, false)
    }

    /// A file renamed into the folder.
    fn renamed(seen: Seen, now: Instant) -> Self {
        Settling::new(seen, now, Readiness::RenamedIn, true, false)
    }

    /// Someone wrote to it: it is written in place, and, without the kernel's word, a close is
    /// awaited before the settle time.
    fn on_write(&mut self, now: Instant) {
        self.last_change = now;
        self.closed = false;
        self.how = Readiness::Settled;
        self.old = false;
    }

    /// A writer closed it: the settle time runs from now.
    fn on_close(&mut self, now: Instant) {
        self.last_change = now;
        self.closed = true;
    }

    /// Events may have been lost (an overflow): a close may have been among them, so stop
    /// waiting for one and rely on the settle time alone. A later write asks for a close again.
    fn forget_close(&mut self) {
        self.closed = true;
    }

    /// Records what a check saw (and whether a writer has the file open) and says whether the
    /// file is complete now.
    fn check(&mut self, seen: Seen, writers: Writers, now: Instant, settle: Duration) -> Verdict {
        if seen != self.seen || writers == Writers::Open {
            // A file that changes after its rename was not complete when renamed.
            if seen != self.seen && self.how == Readiness::RenamedIn {
                self.how = Readiness::Settled;
            }
            self.seen = seen;
            self.last_change = now;
            self.old = false;
            return Verdict::Wait(if writers == Writers::Open {
                Pending::WriterOpen
            } else {
                Pending::Settling
            });
        }
        if writers == Writers::Unknown && !self.closed {
            return Verdict::Wait(Pending::AwaitingClose);
        }
        let quick = self.how == Readiness::RenamedIn || (self.old && writers == Writers::None);
        if quick || now.saturating_duration_since(self.last_change) >= settle {
            Verdict::Ready(self.how)
        } else {
            Verdict::Wait(Pending::Settling)
        }
    }
}

/// Whether a file's mtime is at least `settle` in the past (an mtime in the future is not).
fn is_old(mtime: Option<SystemTime>, wall_now: SystemTime, settle: Duration) -> bool {
    mtime.is_some_and(|m| wall_now.duration_since(m).is_ok_and(|age| age >= settle))
}

/// How often candidates that wait to settle are checked: a quarter of the settle time, at most
/// 250 ms, at least 10 ms.
fn check_interval(settle: Duration) -> Duration {
    (settle / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// What one event says about a file of the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    /// A new file appeared under this name (`IN_CREATE`).
    Created,
    /// Its data changed (`IN_MODIFY`).
    Written,
    /// A writer closed it (`IN_CLOSE_WRITE`).
    Closed,
    /// It was renamed into the folder under this name (`IN_MOVED_TO`).
    RenamedIn,
    /// It was renamed, in an unknown direction (backends without rename pairs).
    Renamed,
    /// It left: deleted or renamed away.
    Gone,
    /// Its metadata changed.
    Touched,
}

/// What one notify event says about the folder.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    /// Hints about candidate files, by their path in the folder.
    hints: Vec<(PathBuf, Hint)>,
    /// Events were lost: list the whole folder again.
    rescan: bool,
    /// The folder itself was deleted or renamed away.
    folder_lost: bool,
}

/// Reads one event: which candidate files of `dir` it is about, and what it says of each. Paths
/// outside `dir` (or in its subfolders) and names that are not candidates are left out.
fn read_event(event: &Event, dir: &Path) -> Reading {
    let mut reading = Reading {
        rescan: event.need_rescan(),
        ..Reading::default()
    };
    let hint_for = |index: usize| -> Option<Hint> {
        match event.kind {
            EventKind::Create(_) => Some(Hint::Created),
            EventKind::Modify(ModifyKind::Data(_)) => Some(Hint::Written),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Hint::RenamedIn),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Some(Hint::Gone),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => Some(if index == 0 {
                Hint::Gone
            } else {
                Hint::RenamedIn
            }),
            EventKind::Modify(ModifyKind::Name(_)) => Some(Hint::Renamed),
            EventKind::Modify(_) => Some(Hint::Touched),
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Hint::Closed),
            EventKind::Remove(_) => Some(Hint::Gone),
            EventKind::Access(_) | EventKind::Any | EventKind::Other => None,
        }
    };
    for (index, path) in event.paths.iter().enumerate() {
        let Some(hint) = hint_for(index) else {
            continue;
        };
        if path == dir {
            reading.folder_lost |= hint == Hint::Gone;
            continue;
        }
        if path.parent() != Some(dir) {
            continue;
        }
        let Some(name) = path.file_name() else {
            continue;
        };
        if is_candidate_name(name) {
            reading.hints.push((dir.join(name), hint));
        }
    }
    reading
}

/// What a path in the folder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Regular(Seen),
    /// Anything else, described for the warning ("a symbolic link", …).
    Other(&'static str),
}

/// Looks at a path without following a symlink and without opening it (a fifo would block).
fn look(path: &Path) -> io::Result<Kind> {
    let meta = fs::symlink_metadata(path)?;
    let file_type = meta.file_type();
    if file_type.is_file() {
        return Ok(Kind::Regular(Seen::of(&meta)));
    }
    Ok(Kind::Other(describe(&file_type)))
}

/// Asks the kernel whether anyone has a regular file open for writing: it refuses a read lease
/// (`EAGAIN`) exactly then. The lease is released at once. An error means the daemon cannot
/// tell (not the file's owner and no `CAP_LEASE`, or no leases on this filesystem). Blocking.
#[cfg(target_os = "linux")]
fn probe_writers(path: &Path) -> io::Result<Writers> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        // Someone holds a write lease on it; O_NONBLOCK says so instead of waiting.
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => return Ok(Writers::Open),
        Err(e) => return Err(e),
    };
    // Linux's F_SETSIG (the same on every architecture); libc exports it for few targets.
    const F_SETSIG: libc::c_int = 10;
    let fd = file.as_raw_fd();
    // A writer opening the file while the lease is held signals its holder, by default with
    // SIGIO, which would kill the daemon; SIGURG is ignored unless handled.
    // SAFETY: fcntl with integer arguments on a descriptor owned by `file`.
    if unsafe { libc::fcntl(fd, F_SETSIG, libc::SIGURG) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } == -1 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(Writers::Open),
            _ => Err(e),
        };
    }
    // Released at once: a held lease would make the next writer wait for it. Closing the file
    // releases it too, should this fail.
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    Ok(Writers::None)
}

#[cfg(not(target_os = "linux"))]
fn probe_writers(_path: &Path) -> io::Result<Writers> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "file leases are a Linux feature",
    ))
}

/// What one check sees of a candidate: what the path is and, for a regular file, whether a
/// writer has it open (`Err`: cannot tell, and why). Blocking.
fn observe(path: &Path) -> io::Result<(Kind, io::Result<Writers>)> {
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

/// Starts a non-recursive notify watch on `dir` whose callback never blocks: it only tries to
/// queue the event, and raises `overflow` when the queue is full. Opens and reads are dropped:
/// they say nothing about completeness.
fn start_watch(
    dir: &Path,
    events: mpsc::Sender<notify::Result<Event>>,
    overflow: Arc<AtomicBool>,
) -> Result<DirWatcher, DropError> {
    let handler = forward_events(events, overflow);
    let mut watcher =
        DirWatcher::new(handler, notify::Config::default()).map_err(|e| watch_error(dir, e))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| watch_error(dir, e))?;
    Ok(watcher)
}

fn watch_error(dir: &Path, e: notify::Error) -> DropError {
    if let Some(limit) = inotify_limit(&e) {
        return DropError::InotifyLimit {
            dir: dir.to_path_buf(),
            setting: limit.setting,
            suggested: limit.suggested,
            os: limit.os,
        };
    }
    match &e.kind {
        notify::ErrorKind::Io(io) => DropError::Watch {
            dir: dir.to_path_buf(),
            reason: io.to_string(),
        },
        notify::ErrorKind::PathNotFound => DropError::Watch {
            dir: dir.to_path_buf(),
            reason: "the folder does not exist".to_string(),
        },
        _ => DropError::Watch {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
        },
    }
}

/// The receiver of ready files is gone: the watcher has no one to tell, so it stops.
struct ReceiverGone;

/// Why the folder is listed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rescan {
    /// At start, or events were lost (overflow, watcher error, the folder came back): files
    /// already sent stay sent while they are there, and no close is awaited any more.
    EventsLost,
    /// The periodic safety net ([`RESCAN_EVERY`]): a file whose events never came is taken in.
    Periodic,
    /// Asked for by [`DropWatcher::rescan`]: every complete file still there is sent again.
    Requested,
}

/// The watcher task's view of the folder.
struct Folder {
    app: String,
    dir: PathBuf,
    settle: Duration,
    /// Files waiting to be complete.
    candidates: HashMap<PathBuf, Settling>,
    /// Files sent and still there.
    sent: HashSet<PathBuf>,
    /// Paths already warned about (not regular files), so each is warned about once.
    warned: HashSet<PathBuf>,
    /// Whether the log already says that writers cannot be detected here.
    lease_note: bool,
    /// The arrival number of the next candidate.
    arrivals: u64,
    /// Where waiting candidates are shown for `status`.
    live: Option<Arc<Board>>,
    ready: mpsc::Sender<ReadyFile>,
}

impl Folder {
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

    fn add_candidate(&mut self, path: PathBuf, mut settling: Settling) {
        settling.arrival = self.arrivals;
        self.arrivals += 1;
        self.candidates.insert(path, settling);
    }

    /// The path left the folder: a file dropped later under the same name is new work.
    fn forget(&mut self, path: &Path) {
        self.candidates.remove(path);
        self.sent.remove(path);
        self.warned.remove(path);
        self.clear_waits(path, true);
    }

    fn warn_once(&mut self, path: &Path, what: &str) {
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
        tracing::debug!(app = %self.app, file = %path.display(), ?readiness, size, "drop file ready");
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
    fn look_at(&mut self, path: &Path) -> Option<Seen> {
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
    fn apply(&mut self, path: PathBuf, hint: Hint) -> bool {
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

    /// A claim of `path` failed: it becomes a candidate again and is sent once the completeness
    /// predicate says so (it may have been rewritten since).
    fn recheck(&mut self, path: PathBuf) {
        if path.parent() != Some(self.dir.as_path()) || self.candidates.contains_key(&path) {
            return;
        }
        self.sent.remove(&path);
        if let Some(seen) = self.look_at(&path) {
            let old = is_old(seen.mtime, SystemTime::now(), self.settle);
            self.add_candidate(path, Settling::found(seen, Instant::now(), old));
        }
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
    async fn check_candidates(&mut self) -> Result<(), ReceiverGone> {
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

    /// Lists the folder and brings what is known up to date with it. Returns `false` when the
    /// folder itself is missing.
    async fn scan(&mut self, why: Rescan) -> bool {
        let dir = self.dir.clone();
        let listing = match tokio::task::spawn_blocking(move || list_folder(&dir)).await {
            Ok(Ok(listing)) => listing,
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => return false,
            Ok(Err(e)) => {
                tracing::error!(app = %self.app, drop_dir = %self.dir.display(), "cannot list the drop folder: {e}");
                return true;
            }
            Err(e) => {
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

/// The task behind a [`DropWatcher`].
struct WatchTask {
    folder: Folder,
    events: mpsc::Receiver<notify::Result<Event>>,
    /// Kept to make a new watch if the folder vanishes and comes back.
    events_tx: mpsc::Sender<notify::Result<Event>>,
    overflow: Arc<AtomicBool>,
    rescan: Arc<Notify>,
    /// Files whose claim failed, to be checked and sent again.
    rechecks: mpsc::UnboundedReceiver<PathBuf>,
    /// `None` while the folder is missing.
    watcher: Option<DirWatcher>,
}

impl WatchTask {
    async fn run(mut self) {
        if self.run_until_receiver_gone().await.is_err() {
            tracing::debug!(app = %self.folder.app, "drop folder watcher stops: nobody receives ready files");
        }
    }

    async fn run_until_receiver_gone(&mut self) -> Result<(), ReceiverGone> {
        let interval = check_interval(self.folder.settle);
        let mut next_check: Option<Instant> = None;
        let mut recreate_at: Option<Instant> = None;
        let mut recreate_failed = false;
        let mut next_rescan = Instant::now() + RESCAN_EVERY;
        if !self.folder.scan(Rescan::EventsLost).await {
            self.lose_folder(&mut recreate_at);
        }
        loop {
            next_check = match next_check {
                _ if self.folder.candidates.is_empty() => None,
                None => Some(Instant::now() + interval),
                some => some,
            };
            let mut events_lost = false;
            let mut requested = false;
            let mut periodic = false;
            let mut folder_lost = false;
            tokio::select! {
                Some(res) = self.events.recv() => match res {
                    Ok(event) => {
                        let reading = read_event(&event, &self.folder.dir);
                        for (path, hint) in reading.hints {
                            if self.folder.apply(path, hint) {
                                next_check = Some(Instant::now());
                            }
                        }
                        events_lost = reading.rescan;
                        folder_lost = reading.folder_lost;
                    }
                    Err(e) => {
                        tracing::warn!(app = %self.folder.app, drop_dir = %self.folder.dir.display(), "file watch error: {e}; listing the folder again");
                        events_lost = true;
                    }
                },
                () = self.rescan.notified() => requested = true,
                Some(path) = self.rechecks.recv() => {
                    if self.watcher.is_some() {
                        self.folder.recheck(path);
                        next_check = Some(Instant::now());
                    }
                }
                () = sleep_until(Some(next_rescan)) => {
                    next_rescan = Instant::now() + RESCAN_EVERY;
                    periodic = true;
                }
                () = sleep_until(next_check), if next_check.is_some() => {
                    next_check = None;
                    self.folder.check_candidates().await?;
                }
                () = sleep_until(recreate_at), if recreate_at.is_some() => {
                    recreate_at = None;
                    match self.watch_again() {
                        Ok(()) => {
                            tracing::info!(app = %self.folder.app, drop_dir = %self.folder.dir.display(), "drop folder watched again");
                            recreate_failed = false;
                            events_lost = true;
                        }
                        Err(e) => {
                            if recreate_failed {
                                tracing::debug!(app = %self.folder.app, "{e}");
                            } else {
                                tracing::error!(app = %self.folder.app, "{e}; trying again every {}s", RECREATE_RETRY.as_secs());
                            }
                            recreate_failed = true;
                            recreate_at = Some(Instant::now() + RECREATE_RETRY);
                        }
                    }
                }
            }
            if self.overflow.swap(false, Ordering::AcqRel) {
                tracing::debug!(app = %self.folder.app, "file event queue full; listing the folder again");
                self.discard_queued_events();
                events_lost = true;
            }
            if self.watcher.is_none() {
                continue;
            }
            if folder_lost {
                self.lose_folder(&mut recreate_at);
                continue;
            }
            let scans = [
                events_lost.then_some(Rescan::EventsLost),
                requested.then_some(Rescan::Requested),
                (periodic && !events_lost && !requested).then_some(Rescan::Periodic),
            ];
            for why in scans.into_iter().flatten() {
                if !self.folder.scan(why).await {
                    self.lose_folder(&mut recreate_at);
                    break;
                }
            }
        }
    }

    /// After an overflow, the events still queued are older than the ones lost: a write among
    /// them whose close was lost would make its file wait for a close forever. The listing that
    /// follows sees the folder as it is now, so they are dropped (at most one queue's worth, so
    /// that a steady stream of new events cannot keep this going).
    fn discard_queued_events(&mut self) {
        for _ in 0..EVENT_QUEUE {
            if self.events.try_recv().is_err() {
                break;
            }
        }
    }

    /// The folder was deleted or renamed away: its watch is worthless, so drop it and make the
    /// folder again after a grace period.
    fn lose_folder(&mut self, recreate_at: &mut Option<Instant>) {
        tracing::error!(
            app = %self.folder.app,
            drop_dir = %self.folder.dir.display(),
            "the drop folder was removed or renamed; it will be created and watched again in {}s",
            RECREATE_GRACE.as_secs()
        );
        self.watcher = None;
        let known: Vec<PathBuf> = (self.folder.candidates.keys())
            .chain(self.folder.sent.iter())
            .cloned()
            .collect();
        for path in known {
            self.folder.forget(&path);
        }
        self.folder.warned.clear();
        *recreate_at = Some(Instant::now() + RECREATE_GRACE);
    }

    fn watch_again(&mut self) -> Result<(), DropError> {
        prepare(&self.folder.dir)?;
        let watcher = start_watch(
            &self.folder.dir,
            self.events_tx.clone(),
            self.overflow.clone(),
        )?;
        self.watcher = Some(watcher);
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
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
    /// it is created and watched again a little later (logged at ERROR). The watcher stops by
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
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let watcher = start_watch(&dir, events_tx.clone(), overflow.clone())?;
        let rescan = Arc::new(Notify::new());
        let (rechecks_tx, rechecks) = mpsc::unbounded_channel();
        let task = WatchTask {
            folder: Folder {
                app: cfg.app.clone(),
                dir,
                settle: cfg.settle,
                candidates: HashMap::new(),
                sent: HashSet::new(),
                warned: HashSet::new(),
                lease_note: false,
                arrivals: 0,
                live: live.clone(),
                ready: tx,
            },
            events,
            events_tx,
            overflow,
            rescan: rescan.clone(),
            rechecks,
            watcher: Some(watcher),
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
        }
    }
}

impl std::fmt::Debug for DropWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropWatcher").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::watch::EMFILE;
    use notify::event::{CreateKind, DataChange, RemoveKind};

    fn candidate(name: &str) -> bool {
        is_candidate_name(OsStr::new(name))
    }

    #[test]
    fn archives_are_candidates() {
        assert!(candidate("app.tar.gz"));
        assert!(candidate("app-1.2.3.tgz"));
        assert!(candidate("APP.TAR.GZ"));
        assert!(candidate("x.tar.gz"));
    }

    #[test]
    fn other_names_are_not_candidates() {
        for name in [
            "notes.txt",
            "app.tar",
            "app.gz",
            "app.zip",
            ".tar.gz",
            ".tgz",
            "tar.gz",
            "",
            "done",
            "failed",
        ] {
            assert!(!candidate(name), "{name:?}");
        }
    }

    #[test]
    fn hidden_and_temporary_names_are_not_candidates() {
        for name in [
            ".app.tar.gz",
            ".syncthing.app.tar.gz.tmp",
            ".app.tar.gz.AbC123",
            "app.tar.gz.part",
            "app.tar.gz.partial",
            "app.tar.gz.tmp",
            "app.tar.gz.crdownload",
            "~app.tar.gz",
            "app.tar.gz~",
            "APP.TAR.GZ.PART",
        ] {
            assert!(!candidate(name), "{name:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn names_that_are_not_utf8_are_judged_on_their_bytes() {
        use std::os::unix::ffi::OsStrExt;
        assert!(is_candidate_name(OsStr::from_bytes(b"caf\xe9.tar.gz")));
        assert!(!is_candidate_name(OsStr::from_bytes(b".caf\xe9.tar.gz")));
    }

    const SETTLE: Duration = Duration::from_secs(2);
    const NOBODY: Writers = Writers::None;
    const OPEN: Writers = Writers::Open;
    const UNKNOWN: Writers = Writers::Unknown;

    fn seen(size: u64, secs: u64) -> Seen {
        Seen {
            size,
            mtime: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            ctime: (secs as i64, 0),
            id: (1, 42),
        }
    }

    fn ready(how: Readiness) -> Verdict {
        Verdict::Ready(how)
    }

    fn waits(pending: Pending) -> Verdict {
        Verdict::Wait(pending)
    }

    #[test]
    fn without_the_kernels_word_a_written_file_waits_for_its_close() {
        let t0 = Instant::now();
        let mut s = Settling::written(seen(10, 100), t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            s.check(seen(10, 100), UNKNOWN, later, SETTLE),
            waits(Pending::AwaitingClose)
        );
    }

    #[test]
    fn a_closed_file_is_ready_after_settle_without_change() {
        for writers in [NOBODY, UNKNOWN] {
            let t0 = Instant::now();
            let mut s = Settling::written(seen(10, 100), t0);
            let t1 = t0 + Duration::from_secs(1);
            s.on_close(t1);
            assert_eq!(
                s.check(seen(10, 100), writers, t1 + SETTLE / 2, SETTLE),
                waits(Pending::Settling)
            );
            assert_eq!(
                s.check(seen(10, 100), writers, t1 + SETTLE, SETTLE),
                ready(Readiness::Settled)
            );
        }
    }

    #[test]
    fn a_change_of_size_mtime_ctime_or_inode_restarts_the_settle_time() {
        let t0 = Instant::now();
        let base = seen(20, 100);
        let changes = [
            seen(21, 100),
            seen(20, 101),
            Seen {
                ctime: (100, 5),
                ..base
            },
            Seen {
                id: (1, 43),
                ..base
            },
        ];
        for changed in changes {
            let mut s = Settling::found(base, t0, false);
            let t1 = t0 + SETTLE;
            assert_eq!(
                s.check(changed, NOBODY, t1, SETTLE),
                waits(Pending::Settling),
                "{changed:?}"
            );
            assert_eq!(
                s.check(changed, NOBODY, t1 + SETTLE / 2, SETTLE),
                waits(Pending::Settling)
            );
            assert_eq!(
                s.check(changed, NOBODY, t1 + SETTLE, SETTLE),
                ready(Readiness::FoundAtStart)
            );
        }
    }

    #[test]
    fn a_file_open_for_writing_is_never_ready_whatever_its_age() {
        let t0 = Instant::now();
        let mut s = Settling::found(seen(10, 100), t0, true);
        for n in 1..20 {
            assert_eq!(
                s.check(seen(10, 100), OPEN, t0 + SETTLE * n, SETTLE),
                waits(Pending::WriterOpen)
            );
        }
        // Closed at last: unchanged for the settle time from the last time it was seen open.
        let last_open = t0 + SETTLE * 19;
        assert_eq!(
            s.check(seen(10, 100), NOBODY, last_open + SETTLE / 2, SETTLE),
            waits(Pending::Settling)
        );
        assert_eq!(
            s.check(seen(10, 100), NOBODY, last_open + SETTLE, SETTLE),
            ready(Readiness::FoundAtStart)
        );
    }

    #[test]
    fn a_file_renamed_in_is_ready_at_once_unless_a_writer_has_it_open() {
        let t0 = Instant::now();
        for writers in [NOBODY, UNKNOWN] {
            let mut s = Settling::renamed(seen(10, 100), t0);
            assert_eq!(
                s.check(seen(10, 100), writers, t0, SETTLE),
                ready(Readiness::RenamedIn)
            );
        }
        let mut s = Settling::renamed(seen(10, 100), t0);
        assert_eq!(
            s.check(seen(10, 100), OPEN, t0, SETTLE),
            waits(Pending::WriterOpen)
        );
        // Written after its rename: no longer complete by its rename.
        assert_eq!(
            s.check(seen(20, 101), OPEN, t0 + SETTLE, SETTLE),
            waits(Pending::WriterOpen)
        );
        let last_open = t0 + SETTLE;
        assert_eq!(
            s.check(seen(20, 101), NOBODY, last_open + SETTLE / 2, SETTLE),
            waits(Pending::Settling)
        );
        assert_eq!(
            s.check(seen(20, 101), NOBODY, last_open + SETTLE, SETTLE),
            ready(Readiness::Settled)
        );
    }

    #[test]
    fn when_the_kernel_says_nobody_writes_no_close_event_is_needed() {
        let t0 = Instant::now();
        let mut s = Settling::written(seen(10, 100), t0);
        assert_eq!(
            s.check(seen(10, 100), NOBODY, t0 + SETTLE, SETTLE),
            ready(Readiness::Settled)
        );
    }

    #[test]
    fn a_created_file_such_as_a_hard_link_needs_no_close_event() {
        for writers in [NOBODY, UNKNOWN] {
            let t0 = Instant::now();
            let mut s = Settling::created(seen(10, 100), t0);
            assert_eq!(
                s.check(seen(10, 100), writers, t0 + SETTLE / 2, SETTLE),
                waits(Pending::Settling)
            );
            assert_eq!(
                s.check(seen(10, 100), writers, t0 + SETTLE, SETTLE),
                ready(Readiness::Settled)
            );
        }
    }

    #[test]
    fn a_write_after_close_asks_for_a_new_close_when_writers_are_unknown() {
        let t0 = Instant::now();
        let mut s = Settling::written(seen(10, 100), t0);
        s.on_close(t0);
        s.on_write(t0 + Duration::from_secs(1));
        assert_eq!(
            s.check(seen(10, 100), UNKNOWN, t0 + SETTLE * 10, SETTLE),
            waits(Pending::AwaitingClose)
        );
        s.on_close(t0 + SETTLE * 10);
        assert_eq!(
            s.check(seen(10, 100), UNKNOWN, t0 + SETTLE * 11, SETTLE),
            ready(Readiness::Settled)
        );
    }

    #[test]
    fn an_old_file_found_with_no_writer_is_ready_after_one_unchanged_check() {
        let t0 = Instant::now();
        let mut s = Settling::found(seen(10, 100), t0, true);
        assert_eq!(
            s.check(
                seen(10, 100),
                NOBODY,
                t0 + Duration::from_millis(250),
                SETTLE
            ),
            ready(Readiness::FoundAtStart)
        );
    }

    #[test]
    fn an_old_file_found_needs_the_full_settle_time_when_writers_are_unknown() {
        let t0 = Instant::now();
        let mut s = Settling::found(seen(10, 100), t0, true);
        assert_eq!(
            s.check(
                seen(10, 100),
                UNKNOWN,
                t0 + Duration::from_millis(250),
                SETTLE
            ),
            waits(Pending::Settling)
        );
        assert_eq!(
            s.check(seen(10, 100), UNKNOWN, t0 + SETTLE, SETTLE),
            ready(Readiness::FoundAtStart)
        );
    }

    #[test]
    fn an_old_file_found_that_changes_waits_for_settle() {
        let t0 = Instant::now();
        let mut s = Settling::found(seen(10, 100), t0, true);
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(
            s.check(seen(11, 100), NOBODY, t1, SETTLE),
            waits(Pending::Settling)
        );
        assert_eq!(
            s.check(seen(11, 100), NOBODY, t1 + SETTLE / 2, SETTLE),
            waits(Pending::Settling)
        );
        assert_eq!(
            s.check(seen(11, 100), NOBODY, t1 + SETTLE, SETTLE),
            ready(Readiness::FoundAtStart)
        );
    }

    #[test]
    fn a_found_file_that_is_written_to_is_settled_not_found() {
        let t0 = Instant::now();
        let mut s = Settling::found(seen(10, 100), t0, true);
        s.on_write(t0);
        assert_eq!(
            s.check(seen(10, 100), UNKNOWN, t0 + SETTLE * 5, SETTLE),
            waits(Pending::AwaitingClose)
        );
        s.on_close(t0 + SETTLE * 5);
        assert_eq!(
            s.check(seen(10, 100), UNKNOWN, t0 + SETTLE * 6, SETTLE),
            ready(Readiness::Settled)
        );
    }

    #[test]
    fn after_lost_events_no_close_is_awaited() {
        let t0 = Instant::now();
        let mut s = Settling::written(seen(10, 100), t0);
        s.forget_close();
        assert_eq!(
            s.check(seen(10, 100), UNKNOWN, t0 + SETTLE, SETTLE),
            ready(Readiness::Settled)
        );
    }

    #[test]
    fn the_kernel_tells_a_file_open_for_writing_from_a_closed_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.tar.gz");
        let file = fs::File::create(&path).expect("create");
        match probe_writers(&path) {
            Ok(writers) => assert_eq!(writers, Writers::Open),
            Err(e) => {
                println!("skipped: no read lease here ({e})");
                return;
            }
        }
        let reader = fs::File::open(&path).expect("open for reading");
        drop(file);
        assert_eq!(probe_writers(&path).expect("probe"), Writers::None);
        drop(reader);
        // The lease was released: a writer opens the file at once.
        let began = Instant::now();
        let again = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("reopen");
        assert!(began.elapsed() < Duration::from_secs(1));
        assert_eq!(probe_writers(&path).expect("probe"), Writers::Open);
        drop(again);
    }

    #[test]
    fn age_is_measured_on_the_mtime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |secs| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert!(is_old(at(990), now, SETTLE));
        assert!(is_old(at(998), now, SETTLE));
        assert!(!is_old(at(999), now, SETTLE));
        assert!(!is_old(at(2000), now, SETTLE), "an mtime in the future");
        assert!(!is_old(None, now, SETTLE));
    }

    #[test]
    fn the_check_interval_is_a_quarter_of_settle_at_most_250ms() {
        assert_eq!(
            check_interval(Duration::from_secs(2)),
            Duration::from_millis(250)
        );
        assert_eq!(
            check_interval(Duration::from_millis(400)),
            Duration::from_millis(100)
        );
        assert_eq!(check_interval(Duration::ZERO), Duration::from_millis(10));
    }

    fn event(kind: EventKind, paths: &[&str]) -> Event {
        paths
            .iter()
            .fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
    }

    fn hints(event: &Event) -> Vec<(PathBuf, Hint)> {
        read_event(event, Path::new("/drop")).hints
    }

    #[test]
    fn events_become_hints_for_candidates_in_the_folder() {
        let p = PathBuf::from("/drop/a.tar.gz");
        let cases = [
            (EventKind::Create(CreateKind::File), Hint::Created),
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                Hint::Written,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                Hint::Closed,
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                Hint::RenamedIn,
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                Hint::Gone,
            ),
            (EventKind::Remove(RemoveKind::File), Hint::Gone),
        ];
        for (kind, hint) in cases {
            assert_eq!(
                hints(&event(kind, &["/drop/a.tar.gz"])),
                vec![(p.clone(), hint)]
            );
        }
        let opened = event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            &["/drop/a.tar.gz"],
        );
        assert!(hints(&opened).is_empty());
    }

    #[test]
    fn a_rename_pair_is_a_departure_and_an_arrival() {
        let both = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/drop/a.tar.gz.partial", "/drop/a.tar.gz"],
        );
        assert_eq!(
            hints(&both),
            vec![(PathBuf::from("/drop/a.tar.gz"), Hint::RenamedIn)]
        );
        let out = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/drop/a.tar.gz", "/elsewhere/a.tar.gz"],
        );
        assert_eq!(
            hints(&out),
            vec![(PathBuf::from("/drop/a.tar.gz"), Hint::Gone)]
        );
    }

    #[test]
    fn subfolders_other_folders_and_other_names_are_left_out() {
        for path in [
            "/drop/done/a.tar.gz",
            "/drop/failed/a.tar.gz",
            "/other/a.tar.gz",
            "/drop/a.txt",
            "/drop/.a.tar.gz",
        ] {
            let e = event(EventKind::Create(CreateKind::File), &[path]);
            assert!(hints(&e).is_empty(), "{path}");
        }
    }

    #[test]
    fn the_folder_itself_going_away_is_noticed() {
        let removed = event(EventKind::Remove(RemoveKind::Folder), &["/drop"]);
        assert!(read_event(&removed, Path::new("/drop")).folder_lost);
        let moved = event(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            &["/drop"],
        );
        assert!(read_event(&moved, Path::new("/drop")).folder_lost);
        let touched = event(
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
            &["/drop"],
        );
        assert!(!read_event(&touched, Path::new("/drop")).folder_lost);
    }

    #[test]
    fn inotify_limits_say_which_sysctl_to_raise() {
        let dir = Path::new("/srv/deploy/my-app");
        let watches = watch_error(dir, notify::Error::new(notify::ErrorKind::MaxFilesWatch));
        let message = watches.to_string();
        assert!(message.contains("/srv/deploy/my-app"), "{message}");
        assert!(
            message.contains("sysctl -w fs.inotify.max_user_watches="),
            "{message}"
        );

        let emfile = notify::Error::io(io::Error::from_raw_os_error(EMFILE));
        let message = watch_error(dir, emfile).to_string();
        assert!(message.contains("/srv/deploy/my-app"), "{message}");
        assert!(
            message.contains("sysctl -w fs.inotify.max_user_instances="),
            "{message}"
        );
        assert!(message.contains("os error 24"), "{message}");

        let other = notify::Error::io(io::Error::from_raw_os_error(13));
        let message = watch_error(dir, other).to_string();
        assert!(
            message.contains("/srv/deploy/my-app") && !message.contains("sysctl"),
            "{message}"
        );
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error() {
        let (tx, _rx) = mpsc::channel(1);
        let cfg = DropFolderConfig {
            app: "my-app".to_string(),
            dir: PathBuf::from("/nonexistent/drop"),
            settle: SETTLE,
        };
        let err = DropWatcher::start(cfg, tx).expect_err("no runtime");
        assert!(matches!(err, DropError::NoRuntime { .. }), "{err:?}");
    }

    #[test]
    fn an_overflow_asks_for_a_rescan() {
        let overflow = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        let reading = read_event(&overflow, Path::new("/drop"));
        assert!(reading.rescan);
        assert!(reading.hints.is_empty());
    }
}
