use super::*;

const QUIET: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn nothing_pending_means_no_deadline() {
    let t0 = Instant::now();
    let mut d = Debounce::new(QUIET, MAX_WAIT);
    assert_eq!(d.deadline(), None);
    assert!(!d.is_pending());
    assert_eq!(d.fire_if_due(t0 + Duration::from_secs(3600)), None);
}

#[test]
fn a_burst_ends_after_the_quiet_period() {
    let t0 = Instant::now();
    let mut d = Debounce::new(QUIET, MAX_WAIT);
    d.change(t0, 1);
    assert_eq!(d.deadline(), Some(t0 + QUIET));
    assert_eq!(d.fire_if_due(t0 + ms(999)), None);
    let burst = d.fire_if_due(t0 + QUIET).expect("due");
    assert_eq!(
        burst,
        Burst {
            changed_paths: 1,
            overflow: false,
            first: t0,
            last: t0,
        }
    );
}

#[test]
fn each_change_restarts_the_quiet_period_and_adds_its_paths() {
    let t0 = Instant::now();
    let mut d = Debounce::new(QUIET, MAX_WAIT);
    d.change(t0, 2);
    d.change(t0 + ms(800), 3);
    assert_eq!(d.fire_if_due(t0 + QUIET), None);
    assert_eq!(d.deadline(), Some(t0 + ms(1800)));
    d.change(t0 + ms(1500), 5);
    assert_eq!(d.fire_if_due(t0 + ms(2400)), None);
    let burst = d.fire_if_due(t0 + ms(2500)).expect("due");
    assert_eq!(burst.changed_paths, 10);
    assert_eq!(burst.first, t0);
    assert_eq!(burst.last, t0 + ms(1500));
}

#[test]
fn a_tree_that_never_stops_changing_fires_at_max_wait() {
    let t0 = Instant::now();
    let mut d = Debounce::new(QUIET, MAX_WAIT);
    let mut fired = Vec::new();
    // A change every 100 ms for 25 s, checked every 10 ms.
    for tick in 0..2500u64 {
        let now = t0 + ms(tick * 10);
        if tick % 10 == 0 {
            d.change(now, 1);
        }
        if let Some(burst) = d.fire_if_due(now) {
            fired.push((now, burst));
        }
    }
    assert_eq!(fired.len(), 2, "{fired:?}");
    assert_eq!(fired[0].0, t0 + MAX_WAIT);
    assert_eq!(fired[0].1.first, t0);
    assert_eq!(fired[0].1.changed_paths, 101);
    // The next burst starts with the first change after the fire.
    assert_eq!(fired[1].1.first, t0 + MAX_WAIT + ms(100));
    assert_eq!(fired[1].0, t0 + MAX_WAIT * 2 + ms(100));
}

#[test]
fn firing_resets() {
    let t0 = Instant::now();
    let mut d = Debounce::new(QUIET, MAX_WAIT);
    d.overflow(t0);
    d.change(t0, 4);
    let burst = d.fire_if_due(t0 + QUIET).expect("due");
    assert!(burst.overflow);
    assert_eq!(burst.changed_paths, 4);
    assert!(!d.is_pending());
    assert_eq!(d.deadline(), None);
    assert_eq!(d.fire_if_due(t0 + QUIET * 5), None);
    let t1 = t0 + QUIET * 5;
    d.change(t1, 1);
    let burst = d.fire_if_due(t1 + QUIET).expect("due");
    assert_eq!((burst.changed_paths, burst.overflow), (1, false));
    assert_eq!(burst.first, t1);
}

#[test]
fn a_change_stamped_in_the_past_does_not_move_the_burst_back() {
    let t0 = Instant::now();
    let mut d = Debounce::new(QUIET, MAX_WAIT);
    d.change(t0 + ms(500), 1);
    d.change(t0, 1);
    assert_eq!(d.deadline(), Some(t0 + ms(1500)));
}

#[test]
fn an_overflow_alone_is_a_burst() {
    let t0 = Instant::now();
    let mut d = Debounce::new(QUIET, MAX_WAIT);
    d.overflow(t0);
    let burst = d.fire_if_due(t0 + QUIET).expect("due");
    assert!(burst.overflow);
    assert_eq!(burst.changed_paths, 0);
}

#[test]
fn a_discarded_burst_never_fires_and_its_paths_count_again() {
    let t0 = Instant::now();
    let mut d = Debounce::new(QUIET, MAX_WAIT);
    d.change_named(t0, &[PathBuf::from("/src/a")], 0);
    d.discard();
    assert!(!d.is_pending());
    assert_eq!(d.fire_if_due(t0 + QUIET * 5), None);
    d.change_named(t0, &[PathBuf::from("/src/a")], 0);
    assert_eq!(d.fire_if_due(t0 + QUIET).map(|b| b.changed_paths), Some(1));
}

#[test]
fn a_burst_already_due_fires_at_once() {
    let t0 = Instant::now();
    let mut d = Debounce::new(QUIET, MAX_WAIT);
    d.change(t0, 1);
    assert!(d.fire_if_due(t0 + Duration::from_secs(60)).is_some());
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    let err =
        TreeWatcher::start(TreeConfig::new("my-app", "/nonexistent/src")).expect_err("no runtime");
    assert!(matches!(err, WatchError::NoRuntime { .. }), "{err:?}");
}
