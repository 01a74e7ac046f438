//! Whether a candidate file is complete: what a check sees of it ([`Seen`]), whether a writer
//! has it open ([`probe_writers`], asked of the kernel with a read lease), and the one predicate
//! that weighs both ([`Settling::check`]). Pure data apart from the probe, so the rule is tested
//! without a filesystem.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::Readiness;

/// What a check saw of a file: its identity, size and times. Any change restarts the settle time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    pub(super) size: u64,
    pub(super) mtime: Option<SystemTime>,
    /// Status change time (seconds, nanoseconds): catches a truncate, chmod or link that leaves
    /// the size and mtime as they were.
    pub(super) ctime: (i64, i64),
    /// Device and inode: a file replaced under the same name is another file.
    pub(super) id: (u64, u64),
}

impl Seen {
    pub(super) fn of(meta: &fs::Metadata) -> Seen {
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
pub(super) enum Pending {
    /// A writer has it open.
    WriterOpen,
    /// Written to, and the kernel cannot be asked about writers: its close is awaited.
    AwaitingClose,
    /// Not unchanged for the settle time yet.
    Settling,
}

impl Pending {
    pub(super) fn cause(self, settle: Duration) -> String {
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
pub(super) enum Verdict {
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
pub(super) struct Settling {
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
    pub(super) arrival: u64,
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
    pub(super) fn found(seen: Seen, now: Instant, old: bool) -> Self {
        Settling::new(seen, now, Readiness::FoundAtStart, true, old)
    }

    /// A file that appeared under its name by `IN_CREATE` (a new file, or a hard link, which
    /// brings no write and no close: none is awaited until a write is seen).
    pub(super) fn created(seen: Seen, now: Instant) -> Self {
        Settling::new(seen, now, Readiness::Settled, true, false)
    }

    /// A file that an event says is being written in place.
    pub(super) fn written(seen: Seen, now: Instant) -> Self {
        Settling::new(seen, now, Readiness::Settled, false, false)
    }

    /// A file renamed into the folder.
    pub(super) fn renamed(seen: Seen, now: Instant) -> Self {
        Settling::new(seen, now, Readiness::RenamedIn, true, false)
    }

    /// Someone wrote to it: it is written in place, and, without the kernel's word, a close is
    /// awaited before the settle time.
    pub(super) fn on_write(&mut self, now: Instant) {
        self.last_change = now;
        self.closed = false;
        self.how = Readiness::Settled;
        self.old = false;
    }

    /// A writer closed it: the settle time runs from now.
    pub(super) fn on_close(&mut self, now: Instant) {
        self.last_change = now;
        self.closed = true;
    }

    /// Events may have been lost (an overflow): a close may have been among them, so stop
    /// waiting for one and rely on the settle time alone. A later write asks for a close again.
    pub(super) fn forget_close(&mut self) {
        self.closed = true;
    }

    /// Records what a check saw (and whether a writer has the file open) and says whether the
    /// file is complete now.
    pub(super) fn check(
        &mut self,
        seen: Seen,
        writers: Writers,
        now: Instant,
        settle: Duration,
    ) -> Verdict {
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
pub(super) fn is_old(mtime: Option<SystemTime>, wall_now: SystemTime, settle: Duration) -> bool {
    mtime.is_some_and(|m| wall_now.duration_since(m).is_ok_and(|age| age >= settle))
}

/// How often candidates that wait to settle are checked: a quarter of the settle time, at most
/// 250 ms, at least 10 ms.
pub(super) fn check_interval(settle: Duration) -> Duration {
    (settle / 4).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// Asks the kernel whether anyone has a regular file open for writing: it refuses a read lease
/// (`EAGAIN`) exactly then. The lease is released at once. An error means the daemon cannot
/// tell (not the file's owner and no `CAP_LEASE`, or no leases on this filesystem). Blocking.
#[cfg(target_os = "linux")]
pub(super) fn probe_writers(path: &Path) -> io::Result<Writers> {
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
pub(super) fn probe_writers(_path: &Path) -> io::Result<Writers> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "file leases are a Linux feature",
    ))
}
