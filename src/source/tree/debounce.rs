//! [`Debounce`]: when a burst of changes is over, decided from explicit instants alone.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Burst;

/// When a burst of changes is over: `quiet` after its last change, or `max_wait` after its
/// first, whichever comes first. Pure: the caller says what time it is.
#[derive(Debug, Clone)]
pub struct Debounce {
    quiet: Duration,
    max_wait: Duration,
    /// The burst in progress, if any.
    pending: Option<Burst>,
    /// Paths already counted in the pending burst, so that a file written in several
    /// batches of events counts once (bounded: past the cap, paths are counted as they come).
    seen: std::collections::HashSet<PathBuf>,
}

/// How many distinct paths a burst remembers for its count.
const MAX_SEEN: usize = 100_000;

impl Debounce {
    /// A debounce with nothing pending.
    pub fn new(quiet: Duration, max_wait: Duration) -> Self {
        Debounce {
            quiet,
            max_wait,
            pending: None,
            seen: std::collections::HashSet::new(),
        }
    }

    /// A relevant change at `now` naming `named` paths (each counted once per burst) plus
    /// `found` entries discovered in new directories.
    pub fn change_named(&mut self, now: Instant, named: &[PathBuf], found: usize) {
        let mut new = found;
        for path in named {
            if self.seen.len() >= MAX_SEEN || self.seen.insert(path.clone()) {
                new += 1;
            }
        }
        self.change(now, new);
    }

    /// A relevant change of `paths` paths happened at `now`; starts a burst if none is pending.
    /// An instant earlier than the last one recorded does not move the burst back.
    pub fn change(&mut self, now: Instant, paths: usize) {
        match &mut self.pending {
            Some(burst) => {
                burst.changed_paths = burst.changed_paths.saturating_add(paths);
                burst.last = burst.last.max(now);
            }
            None => {
                self.pending = Some(Burst {
                    changed_paths: paths,
                    overflow: false,
                    first: now,
                    last: now,
                })
            }
        }
    }

    /// Events were lost at `now`: the whole tree may have changed. A change like any other,
    /// and the burst says so ([`Burst::overflow`]).
    pub fn overflow(&mut self, now: Instant) {
        self.change(now, 0);
        if let Some(burst) = &mut self.pending {
            burst.overflow = true;
        }
    }

    /// When the pending burst ends if nothing else happens: the earlier of `quiet` after its
    /// last change and `max_wait` after its first. `None` when nothing is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|burst| (burst.last + self.quiet).min(burst.first + self.max_wait))
    }

    /// Whether a burst is in progress (a change was recorded and has not been fired).
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Drops the pending burst, if any: what it was about is covered by a later one.
    pub fn discard(&mut self) {
        self.seen.clear();
        self.pending = None;
    }

    /// The pending burst if its deadline is at or before `now`; the debounce is then empty
    /// again. `None` (and nothing changes) otherwise.
    pub fn fire_if_due(&mut self, now: Instant) -> Option<Burst> {
        if self.deadline().is_some_and(|deadline| deadline <= now) {
            self.seen.clear();
            self.pending.take()
        } else {
            None
        }
    }
}
