//! The spool's arrival counter: every job record gets the next number when it is committed,
//! so jobs are ordered by arrival, never by a clock (ids have one-second resolution and
//! follow the wall clock, which may step back).
//!
//! The counter is the file [`SEQUENCE_NAME`] in the spool directory, shared by every process
//! that makes jobs there (the daemon and one-shot commands): taken under an exclusive `flock`,
//! rewritten in place (fixed width) and synced before the number is used, so a number is never
//! given twice. A missing or unreadable counter (first start, or a torn write) is rebuilt from
//! the highest number the spool's records hold; each process also checks that once, so a
//! counter older than the records (a restored backup) cannot give a number already in use.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FlockOperation, flock};

use super::{RECORD_NAME, SpoolError, io};

/// The counter's file inside the spool directory (a dot-name: never listed as a job).
pub const SEQUENCE_NAME: &str = ".sequence";

/// The counter of one spool, as one process sees it.
#[derive(Debug, Clone, Default)]
pub(super) struct Sequence {
    /// Whether this process compared the counter with the records yet.
    checked: Arc<AtomicBool>,
}

impl Sequence {
    /// The next arrival number of the spool at `dir`. Blocking (one fsync).
    pub(super) fn next(&self, dir: &Path) -> Result<u64, SpoolError> {
        let path = dir.join(SEQUENCE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| io("cannot lock", &path)(e.into()))?;
        let mut last = read_counter(&mut file);
        if last.is_none() || !self.checked.swap(true, Ordering::SeqCst) {
            last = Some(last.unwrap_or(0).max(highest_recorded(dir)));
        }
        let next = last.unwrap_or(0) + 1;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(format!("{next:020}\n").as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(io("cannot write", &path))?;
        Ok(next)
    }
}

fn read_counter(file: &mut File) -> Option<u64> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The highest arrival number in the records of the spool at `dir` (0 if none has one).
fn highest_recorded(dir: &Path) -> u64 {
    #[derive(serde::Deserialize)]
    struct Numbered {
        #[serde(default)]
        seq: Option<u64>,
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join(RECORD_NAME)).ok())
        .filter_map(|bytes| serde_json::from_slice::<Numbered>(&bytes).ok())
        .filter_map(|n| n.seq)
        .max()
        .unwrap_or(0)
}
