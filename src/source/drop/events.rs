//! What a filesystem event says about the drop folder: hints about its candidate files, a
//! request to list it again when events were lost, or that the folder itself went away.

use std::path::{Path, PathBuf};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{Event, EventKind};

use super::is_candidate_name;

/// What one event says about a file of the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hint {
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
pub(super) struct Reading {
    /// Hints about candidate files, by their path in the folder.
    pub(super) hints: Vec<(PathBuf, Hint)>,
    /// Events were lost: list the whole folder again.
    pub(super) rescan: bool,
    /// The folder itself was deleted or renamed away.
    pub(super) folder_lost: bool,
}

/// Reads one event: which candidate files of `dir` it is about, and what it says of each. Paths
/// outside `dir` (or in its subfolders) and names that are not candidates are left out.
pub(super) fn read_event(event: &Event, dir: &Path) -> Reading {
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
