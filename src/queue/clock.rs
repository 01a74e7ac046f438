//! Durations measured on the monotonic clock, from the wall-clock times job records keep.
//!
//! A record keeps wall-clock [`Timestamp`]s (readable, and meaningful after a restart), but the
//! wall clock jumps (NTP steps, a suspended VM, an operator's `date -s`): a duration computed as
//! "wall now − recorded" would make a job fail an hour early or wait an hour too long. So within
//! a process every duration is measured on the monotonic clock ([`tokio::time::Instant`]):
//! a time recorded by this process is anchored when it is taken ([`Clocks::stamp`]); a time read
//! from a record made before is anchored once, when first asked about, at "wall now − recorded"
//! ago, and a recorded time in the future (the clock stepped back since) counts as now.

use std::time::Duration;

use tokio::time::Instant;

use crate::queue::spool::{Timestamp, now};

/// A moment in the past on the monotonic clock: `before` ago when `anchor` was taken.
#[derive(Debug, Clone, Copy)]
pub struct Since {
    anchor: Instant,
    before: Duration,
}

impl Since {
    /// Now.
    pub fn now() -> Since {
        Since {
            anchor: Instant::now(),
            before: Duration::ZERO,
        }
    }

    /// The wall-clock time `at` read from a record: as long ago as the wall clock says now,
    /// and never in the future.
    pub fn recorded(at: Timestamp) -> Since {
        Since {
            anchor: Instant::now(),
            before: Duration::from_secs(now().saturating_sub(at)),
        }
    }

    /// Time elapsed since then, on the monotonic clock.
    pub fn elapsed(&self) -> Duration {
        self.before + self.anchor.elapsed()
    }
}

/// What a record's times mean in this process: one anchor per (what, recorded time). Keyed by
/// the recorded value too, so that a time the record replaced (a new upload slot) gets a new
/// anchor.
#[derive(Debug, Default)]
pub struct Clocks {
    anchors: Vec<(&'static str, Timestamp, Since)>,
}

impl Clocks {
    pub fn new() -> Clocks {
        Clocks::default()
    }

    /// The wall-clock time now, to record as `what`, anchored now.
    pub fn stamp(&mut self, what: &'static str) -> Timestamp {
        let at = now();
        self.anchors.retain(|(w, _, _)| *w != what);
        self.anchors.push((what, at, Since::now()));
        at
    }

    /// The moment `what` recorded as `at`: anchored when it was stamped, or now from the record.
    pub fn since(&mut self, what: &'static str, at: Timestamp) -> Since {
        if let Some((_, _, since)) = self.anchors.iter().find(|(w, a, _)| *w == what && *a == at) {
            return *since;
        }
        let since = Since::recorded(at);
        self.anchors.retain(|(w, _, _)| *w != what);
        self.anchors.push((what, at, since));
        since
    }

    /// Time elapsed since `what` recorded as `at` (see [`Clocks::since`]).
    pub fn elapsed(&mut self, what: &'static str, at: Timestamp) -> Duration {
        self.since(what, at).elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_time_in_the_future_counts_as_now() {
        let since = Since::recorded(now() + 3600);
        assert!(since.elapsed() < Duration::from_secs(5));
        let past = Since::recorded(now().saturating_sub(600));
        assert!(past.elapsed() >= Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn an_anchor_is_kept_while_the_record_holds_the_same_time() {
        let mut clocks = Clocks::new();
        let at = clocks.stamp("source");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clocks.elapsed("source", at), Duration::from_secs(30));
        // Another recorded value is another moment, anchored from the record.
        let other = at.saturating_sub(100);
        assert!(clocks.elapsed("source", other) >= Duration::from_secs(100));
        assert!(clocks.elapsed("source", other) < Duration::from_secs(105));
    }
}
