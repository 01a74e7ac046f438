//! What the watcher's events say: each notify event read as changes to paths, the queue that
//! carries them from notify's thread in batches, and what a batch changed in the tree.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind};
use tokio::sync::mpsc;

/// Room for this many filesystem events between notify's thread and the watcher task; past that
/// the events are dropped and the tree is walked again instead.
pub(super) const EVENT_QUEUE: usize = 4096;
/// At most this many events are handled together.
const BATCH: usize = 1024;

/// What one event says about one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// It appeared: created, or renamed into its directory. `Some(true)` when the event says it
    /// is a directory, `None` when the event does not say.
    Appeared(Option<bool>),
    /// It left: deleted, or renamed away.
    Left(Option<bool>),
    /// Its content or metadata changed (a write, a close after writing, a `touch`, a `chmod`).
    Changed(Option<bool>),
    /// It was renamed, in a direction the event does not say: look whether it is there.
    Renamed,
}

/// What one notify event says.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Reading {
    pub(super) paths: Vec<(PathBuf, Seen)>,
    /// Events were lost: walk the whole tree again.
    pub(super) rescan: bool,
}

/// Reads one event. Opens, reads and closes without writing are not changes. A close after
/// writing is (a `touch` of an existing file shows as a metadata change and a close after
/// writing; the packer's digest later says whether the content really changed).
pub(super) fn read_event(event: &Event) -> Reading {
    let seen = match event.kind {
        EventKind::Create(CreateKind::Folder) => Some(Seen::Appeared(Some(true))),
        EventKind::Create(CreateKind::File) => Some(Seen::Appeared(Some(false))),
        EventKind::Create(_) => Some(Seen::Appeared(None)),
        EventKind::Remove(RemoveKind::Folder) => Some(Seen::Left(Some(true))),
        EventKind::Remove(RemoveKind::File) => Some(Seen::Left(Some(false))),
        EventKind::Remove(_) => Some(Seen::Left(None)),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => Some(Seen::Left(None)),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Some(Seen::Appeared(None)),
        // notify's inotify backend also reports each half of a pair on its own (just above).
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => None,
        EventKind::Modify(ModifyKind::Name(_)) => Some(Seen::Renamed),
        // Only files can be written to.
        EventKind::Modify(ModifyKind::Data(_)) => Some(Seen::Changed(Some(false))),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Seen::Changed(Some(false))),
        EventKind::Modify(_) => Some(Seen::Changed(None)),
        EventKind::Access(_) => None,
        // Unknown events (other backends) are taken as changes; an overflow carries no path.
        EventKind::Any | EventKind::Other => Some(Seen::Changed(None)),
    };
    Reading {
        paths: match seen {
            Some(seen) => event.paths.iter().map(|p| (p.clone(), seen)).collect(),
            None => Vec::new(),
        },
        rescan: event.need_rescan(),
    }
}

/// Events handed over by notify, in order.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(super) events: Vec<notify::Result<Event>>,
    /// The queue was full and events were dropped: the whole tree may have changed.
    pub(super) lost: bool,
}

/// The receiving end of the events of a [`DirectoryWatches`].
#[derive(Debug)]
pub(crate) struct EventStream {
    pub(super) events: mpsc::Receiver<notify::Result<Event>>,
    pub(super) overflow: Arc<AtomicBool>,
}

impl EventStream {
    /// Waits for events and returns what is queued (up to a batch). `None` when the watcher is
    /// gone. Cancel-safe.
    pub(crate) async fn next_batch(&mut self) -> Option<Batch> {
        let first = self.events.recv().await?;
        let mut batch = Batch {
            events: vec![first],
            lost: false,
        };
        while batch.events.len() < BATCH {
            match self.events.try_recv() {
                Ok(res) => batch.events.push(res),
                Err(_) => break,
            }
        }
        if self.overflow.swap(false, Ordering::AcqRel) {
            // What is still queued is older than what was lost; the walk that follows sees the
            // tree as it is now. At most one queue's worth, so a steady stream cannot keep this
            // going.
            for _ in 0..EVENT_QUEUE {
                if self.events.try_recv().is_err() {
                    break;
                }
            }
            batch.lost = true;
        }
        Some(batch)
    }
}

/// What a batch of events changed in the tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Changes {
    /// How many relevant paths changed: distinct paths named by events, plus what was found in
    /// new directories. A size hint, not an exact count.
    pub paths: usize,
    /// The distinct paths named by events in this batch.
    pub named: Vec<PathBuf>,
    /// Entries found in new directories.
    pub found: usize,
    /// Events were lost (an overflow, a watcher error, a full queue): the whole tree may have
    /// changed. It was walked again and its watches set up anew.
    pub overflow: bool,
    /// The ignore rules were rebuilt (an ignore file changed, or after an overflow).
    pub rules_rebuilt: bool,
    /// The root itself was deleted, renamed away or replaced: nothing is watched any more
    /// ([`crate::source::tree`] looks for it and watches it again).
    pub root_lost: bool,
}

impl Changes {
    /// Whether anything relevant changed.
    pub(crate) fn is_change(&self) -> bool {
        self.paths > 0 || self.overflow
    }
}
