//! The busy policy with an in-memory target: no network, no platform, milliseconds each.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::*;
use crate::queue::observe::Event;
use crate::queue::spool::{Job, JobState, Spool};

/// Deploys by recording the job and waiting for a permit from the test, so the test decides
/// how long each job stays in flight.
struct Held {
    ran: Mutex<Vec<String>>,
    release: Semaphore,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

impl Held {
    fn new() -> Arc<Held> {
        Arc::new(Held {
            ran: Mutex::new(Vec::new()),
            release: Semaphore::new(0),
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
        })
    }

    fn ran(&self) -> Vec<String> {
        self.ran.lock().unwrap().clone()
    }
}

/// The target of one app, backed by the shared [`Held`] and its spool.
struct HeldTarget(Arc<Held>, Spool);

impl Target for HeldTarget {
    fn run<'a>(&'a self, job: &'a mut Job) -> BoxFuture<'a, Result<(), SpoolError>> {
        Box::pin(async move {
            self.0.ran.lock().unwrap().push(job.id.clone());
            let now = self.0.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.0.most_at_once.fetch_max(now, Ordering::SeqCst);
            if let Ok(permit) = self.0.release.acquire().await {
                permit.forget();
            }
            self.0.running.fetch_sub(1, Ordering::SeqCst);
            job.state = JobState::Succeeded {
                deployment_id: format!("d-{}", job.id),
            };
            self.1.save(job)
        })
    }
}

/// Remembers every finished job's final state.
#[derive(Default)]
struct Recorded(Mutex<Vec<(String, &'static str)>>);

impl Finisher for Recorded {
    fn finish(&self, job: &Job, _keep_done: usize) {
        self.0
            .lock()
            .unwrap()
            .push((job.id.clone(), job.state.name()));
    }
}

/// Remembers the lane's counts (in flight, pending) and the waits it was told of.
#[derive(Default)]
struct Seen {
    lanes: Mutex<Vec<(usize, usize)>>,
    waits: Mutex<Vec<String>>,
}

impl Observer for Seen {
    fn event(&self, _: &Job, event: &Event<'_>) {
        if let Event::Waiting { reason } = event {
            self.waits.lock().unwrap().push(reason.to_string());
        }
    }

    fn lane(&self, _app: &str, in_flight: usize, pending: usize) {
        self.lanes.lock().unwrap().push((in_flight, pending));
    }
}

struct Bench {
    dir: tempfile::TempDir,
    spool: Spool,
    held: Arc<Held>,
    recorded: Arc<Recorded>,
    seen: Arc<Seen>,
    board: Arc<crate::live::Board>,
    lanes: Lanes,
}

impl Bench {
    fn new(max_parallel: usize) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let recorded = Arc::new(Recorded::default());
        let seen = Arc::new(Seen::default());
        let board = Arc::new(crate::live::Board::in_memory());
        let ctx = LaneContext::new(LaneParts {
            spool: spool.clone(),
            observer: seen.clone(),
            finisher: recorded.clone(),
            max_parallel,
            shutdown: Shutdown::never(),
            state_dir: dir.path().to_path_buf(),
            board: board.clone(),
        });
        Bench {
            dir,
            spool,
            held: Held::new(),
            recorded,
            seen,
            board,
            lanes: Lanes::new(ctx),
        }
    }

    fn lane(&mut self, app: &str, policy: QueuePolicy) {
        let target: Arc<dyn Target> = Arc::new(HeldTarget(self.held.clone(), self.spool.clone()));
        self.lanes.ensure(
            app,
            LaneSettings {
                policy,
                keep_done: 10,
                target: Ok(target),
            },
        );
    }

    fn job(&mut self, app: &str) -> String {
        let job =
            crate::queue::intake::enqueue_url(&self.spool, app, "https://x/a.tar.gz", app, None)
                .unwrap();
        let id = job.id.clone();
        self.lanes.submit(job).unwrap();
        id
    }

    fn finished(&self) -> Vec<(String, &'static str)> {
        self.recorded.0.lock().unwrap().clone()
    }

    async fn until(&self, what: &str, check: impl Fn(&Bench) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test]
async fn with_latest_a_newer_job_supersedes_the_one_waiting_and_never_the_one_running() {
    let mut b = Bench::new(4);
    b.lane("a", QueuePolicy::Latest);
    let first = b.job("a");
    b.until("the first job to start", |b| {
        b.held.ran() == [first.clone()]
    })
    .await;
    let second = b.job("a");
    let third = b.job("a");
    b.until("the second to be superseded", |b| b.finished().len() == 1)
        .await;
    assert_eq!(b.finished(), [(second, "superseded")]);
    b.held.release.add_permits(2);
    b.until("both to finish", |b| b.finished().len() == 3).await;
    assert_eq!(b.held.ran(), [first.clone(), third.clone()]);
    assert_eq!(
        b.finished()[1..],
        [(first, "succeeded"), (third, "succeeded")]
    );
}

#[tokio::test]
async fn with_all_every_job_runs_in_arrival_order_one_at_a_time() {
    let mut b = Bench::new(4);
    b.lane("a", QueuePolicy::All);
    let ids: Vec<String> = (0..4).map(|_| b.job("a")).collect();
    b.held.release.add_permits(4);
    b.until("all four to finish", |b| b.finished().len() == 4)
        .await;
    assert_eq!(b.held.ran(), ids);
    assert!(b.finished().iter().all(|(_, state)| *state == "succeeded"));
    assert_eq!(
        b.held.most_at_once.load(Ordering::SeqCst),
        1,
        "one app, one at a time"
    );
}

#[tokio::test]
async fn max_parallel_caps_apps_deploying_at_once() {
    let mut b = Bench::new(2);
    for app in ["a", "b", "c"] {
        b.lane(app, QueuePolicy::All);
        b.job(app);
    }
    b.until("two apps to start", |b| b.held.ran().len() == 2)
        .await;
    // The third waits for a place while the two run.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        b.held.ran().len(),
        2,
        "a third app started past max_parallel"
    );
    b.held.release.add_permits(3);
    b.until("all three to finish", |b| b.finished().len() == 3)
        .await;
    assert_eq!(b.held.most_at_once.load(Ordering::SeqCst), 2);
}

/// Like [`HeldTarget`], and the first job makes a follow-up job (as an unhealthy deployment
/// makes its rollback); remembers what `lane_waiting` was told.
struct ParentTarget(Arc<Held>, Spool, Mutex<Vec<usize>>);

impl Target for ParentTarget {
    fn run<'a>(&'a self, job: &'a mut Job) -> BoxFuture<'a, Result<(), SpoolError>> {
        Box::pin(async move {
            HeldTarget(self.0.clone(), self.1.clone()).run(job).await?;
            if self.0.ran().first() == Some(&job.id) {
                let mut child =
                    crate::queue::intake::enqueue_url(&self.1, &job.app, "https://x/b", "b", None)
                        .unwrap();
                child.check = Some(crate::queue::check::Check {
                    verdict: Some(crate::queue::check::Verdict::Verified),
                    ..Default::default()
                });
                self.1.save(&child)?;
                job.check = Some(crate::queue::check::Check {
                    verdict: Some(crate::queue::check::Verdict::Unhealthy),
                    follow_up: Some(child.id.clone()),
                    ..Default::default()
                });
                self.1.save(job)?;
            }
            Ok(())
        })
    }

    fn lane_waiting(&self, pending: usize) {
        self.2.lock().unwrap().push(pending);
    }
}

impl Bench {
    fn parent_lane(&mut self, app: &str, policy: QueuePolicy) -> Arc<ParentTarget> {
        let target = Arc::new(ParentTarget(
            self.held.clone(),
            self.spool.clone(),
            Mutex::new(Vec::new()),
        ));
        let dynamic: Arc<dyn Target> = target.clone();
        self.lanes.ensure(
            app,
            LaneSettings {
                policy,
                keep_done: 10,
                target: Ok(dynamic),
            },
        );
        target
    }
}

#[tokio::test]
async fn a_follow_up_job_runs_next_in_the_lane() {
    let mut b = Bench::new(4);
    let target = b.parent_lane("a", QueuePolicy::Latest);
    let parent = b.job("a");
    b.held.release.add_permits(2);
    b.until("the parent and its follow-up to finish", |b| {
        b.finished().len() == 2
    })
    .await;
    let ran = b.held.ran();
    assert_eq!(ran.len(), 2);
    assert_eq!(ran[0], parent);
    assert_eq!(b.finished()[1], (ran[1].clone(), "succeeded"));
    assert!(target.2.lock().unwrap().iter().all(|n| *n == 0));
}

#[tokio::test]
async fn newer_work_wins_over_a_follow_up_and_the_target_hears_of_it() {
    for policy in [QueuePolicy::Latest, QueuePolicy::All] {
        let mut b = Bench::new(4);
        let target = b.parent_lane("a", policy);
        let parent = b.job("a");
        b.until("the parent to start", |b| b.held.ran() == [parent.clone()])
            .await;
        let newer = b.job("a");
        b.until("the target to hear of the newer job", |_| {
            target.2.lock().unwrap().contains(&1)
        })
        .await;
        b.held.release.add_permits(3);
        b.until("the parent, the follow-up and the newer job", |b| {
            b.finished().len() == 3
        })
        .await;
        let finished = b.finished();
        assert_eq!(finished[0], (parent.clone(), "succeeded"));
        assert_eq!(finished[1].1, "superseded", "{finished:?}");
        assert_eq!(finished[2], (newer.clone(), "succeeded"));
        assert_eq!(b.held.ran(), [parent, newer], "the follow-up never ran");
    }
}

impl Bench {
    /// Polls `check` for `within`: true if it ever held. For what must *not* happen, where no
    /// event says that it will not.
    async fn ever(&self, within: Duration, check: impl Fn(&Bench) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if check(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        check(self)
    }

    /// A job of `app` recorded as already deploying on the platform (recovered after a
    /// restart), handed to its lane.
    fn job_under_way(&mut self, app: &str) -> String {
        let mut job =
            crate::queue::intake::enqueue_url(&self.spool, app, "https://x/u.tar.gz", app, None)
                .unwrap();
        job.started_at = Some(job.created_at);
        job.state = JobState::Deploying {
            deployment_id: "d-under-way".into(),
            platform_status: Some("building".into()),
            since: Some(job.created_at),
        };
        self.spool.save(&job).unwrap();
        let id = job.id.clone();
        self.lanes.submit(job).unwrap();
        id
    }

    fn job_state(&self, id: &str) -> &'static str {
        self.spool
            .load(id)
            .map(|j| j.state.name())
            .unwrap_or("gone")
    }
}

/// The time in which the bugs these tests guard against showed at once (a lane starting a job
/// within milliseconds); a correct lane never does it, however long it waits.
const NEVER: Duration = Duration::from_millis(400);

#[tokio::test]
async fn a_retired_lane_finishes_its_job_in_flight_and_starts_nothing_more() {
    let mut b = Bench::new(4);
    b.lane("a", QueuePolicy::All);
    let first = b.job("a");
    b.until("the first job to start", |b| {
        b.held.ran() == [first.clone()]
    })
    .await;
    let waiting = b.job("a");
    b.lanes.retire("a");
    b.held.release.add_permits(1);
    b.until("the job in flight to finish", |b| b.finished().len() == 1)
        .await;
    assert!(
        !b.ever(NEVER, |b| b.held.ran().len() > 1).await,
        "the waiting job was deployed after its app was removed: {:?}",
        b.held.ran()
    );
    assert_eq!(b.job_state(&waiting), "queued", "it waits in the spool");
    // The app comes back: the same lane takes its waiting job up.
    b.lane("a", QueuePolicy::All);
    b.held.release.add_permits(1);
    b.until("the waiting job to run", |b| b.finished().len() == 2)
        .await;
    assert_eq!(b.held.ran(), [first, waiting]);
}

#[tokio::test]
async fn a_re_added_apps_lane_waits_for_the_retired_one() {
    let mut b = Bench::new(4);
    b.lane("a", QueuePolicy::Latest);
    let first = b.job("a");
    b.until("the first job to start", |b| {
        b.held.ran() == [first.clone()]
    })
    .await;
    b.lanes.retire("a");
    b.lane("a", QueuePolicy::Latest);
    let second = b.job("a");
    assert!(
        !b.ever(NEVER, |b| b.held.ran().len() > 1).await,
        "a job of the re-added app started while the retired lane still deployed: {:?}",
        b.held.ran()
    );
    b.held.release.add_permits(2);
    b.until("both to finish", |b| b.finished().len() == 2).await;
    assert_eq!(b.held.ran(), [first, second]);
    assert_eq!(b.held.most_at_once.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_job_under_way_runs_before_queued_ones_and_is_never_superseded() {
    for policy in [QueuePolicy::Latest, QueuePolicy::All] {
        let mut b = Bench::new(4);
        b.lane("a", policy);
        let first = b.job("a");
        b.until("the first job to start", |b| {
            b.held.ran() == [first.clone()]
        })
        .await;
        // Recovered after a restart: a queued job listed before one already building.
        let queued = b.job("a");
        let building = b.job_under_way("a");
        b.held.release.add_permits(3);
        b.until("all three to finish", |b| b.finished().len() == 3)
            .await;
        assert_eq!(
            b.held.ran(),
            [first, building.clone(), queued.clone()],
            "{policy:?}: the job under way is driven to its end before the queued one starts"
        );
        assert!(
            b.finished().iter().all(|(_, state)| *state == "succeeded"),
            "{policy:?}: {:?}",
            b.finished()
        );
    }
}

#[tokio::test]
async fn a_waiting_job_that_another_process_drives_is_not_superseded() {
    let mut b = Bench::new(4);
    b.lane("a", QueuePolicy::Latest);
    let first = b.job("a");
    b.until("the first job to start", |b| {
        b.held.ran() == [first.clone()]
    })
    .await;
    let resumed = b.job("a");
    // Another process (a one-shot `deploy` resuming the same archive) drives it.
    let other = crate::lock::JobLock::try_acquire(&b.spool.job_dir(&resumed))
        .unwrap()
        .unwrap();
    let newer = b.job("a");
    b.until("the newer job to be in line", |b| {
        !b.finished().is_empty() || b.seen.lanes.lock().unwrap().contains(&(1, 2))
    })
    .await;
    assert!(
        b.finished().is_empty(),
        "superseded while another process held it: {:?}",
        b.finished()
    );
    assert_eq!(b.job_state(&resumed), "queued");
    drop(other);
    b.held.release.add_permits(3);
    b.until("all three to finish", |b| b.finished().len() == 3)
        .await;
    assert_eq!(b.held.ran(), [first, resumed, newer]);
}

#[tokio::test]
async fn a_job_waits_while_another_process_deploys_its_app_and_says_so() {
    let mut b = Bench::new(4);
    b.lane("a", QueuePolicy::Latest);
    let locks = b.dir.path().join(crate::lock::APP_LOCKS_DIR);
    // Another process sharing the state_dir deploys the app.
    let other = crate::lock::AppLock::try_acquire(&locks, "a", "theirs")
        .unwrap()
        .unwrap();
    let mine = b.job("a");
    b.until("the wait to be told", |b| {
        !b.seen.waits.lock().unwrap().is_empty()
    })
    .await;
    assert!(b.held.ran().is_empty(), "deployed while the app was held");
    let told = b.seen.waits.lock().unwrap()[0].clone();
    assert!(told.contains("is deploying a (job theirs)"), "{told}");
    let board = b.board.snapshot();
    assert_eq!(board.len(), 1, "{board:?}");
    assert_eq!(board[0].kind, crate::live::WaitKind::AppBusy);
    assert!(board[0].retry_at.is_some(), "a wait with its next look");
    drop(other);
    b.held.release.add_permits(1);
    b.until("the job to run once the app is free", |b| {
        b.finished() == [(mine.clone(), "succeeded")]
    })
    .await;
    assert!(b.board.snapshot().is_empty(), "the wait is off the board");
}

#[tokio::test]
async fn a_gated_lane_takes_an_apps_jobs_only_once_opened() {
    let mut b = Bench::new(4);
    b.lanes.gate();
    b.lane("a", QueuePolicy::All);
    let before = b.job("a");
    assert!(!b.lanes.knows(&before), "a closed app's job is left alone");
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(b.held.ran().is_empty());
    b.lanes.open("a");
    let job = b.spool.load(&before).unwrap();
    b.lanes.submit(job).unwrap();
    b.until("the job to start once opened", |b| {
        b.held.ran() == [before.clone()]
    })
    .await;
}

#[tokio::test]
async fn dropping_an_app_aborts_its_job_in_flight_forgets_what_waits_and_takes_it_again() {
    let mut b = Bench::new(4);
    b.lanes.gate();
    b.lanes.open("a");
    b.lane("a", QueuePolicy::All);
    let first = b.job("a");
    let second = b.job("a");
    b.until("the first job to start", |b| {
        b.held.ran() == [first.clone()]
    })
    .await;
    assert_eq!(b.lanes.known_jobs().of_app("a").len(), 2);
    let stopped = b.lanes.drop_app("a");
    assert!(!b.lanes.knows(&first) && !b.lanes.knows(&second));
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .unwrap()
        .unwrap();
    // Nothing finished: the job in flight was aborted, the waiting one forgotten.
    b.held.release.add_permits(4);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(b.finished().is_empty(), "{:?}", b.finished());
    assert_eq!(b.held.ran(), std::slice::from_ref(&first));
    // A closed app takes nothing; opened again, the same lane drives both, in order.
    let job = b.spool.load(&first).unwrap();
    b.lanes.submit(job).unwrap();
    assert!(!b.lanes.knows(&first));
    b.lanes.open("a");
    for id in [&first, &second] {
        let job = b.spool.load(id).unwrap();
        b.lanes.submit(job).unwrap();
    }
    b.until("both to finish", |b| b.finished().len() == 2).await;
    assert_eq!(b.held.ran(), [first.clone(), first, second]);
}

/// Refuses every record as a shared store that lost the lease would.
struct FencedTarget(Arc<Held>);

impl Target for FencedTarget {
    fn run<'a>(&'a self, job: &'a mut Job) -> BoxFuture<'a, Result<(), SpoolError>> {
        Box::pin(async move {
            self.0.ran.lock().unwrap().push(job.id.clone());
            Err(SpoolError::Store(crate::queue::store::StoreError::Fenced {
                app: job.app.clone(),
                node: "a".into(),
            }))
        })
    }
}

#[tokio::test]
async fn a_refused_record_makes_the_lane_drop_what_waits() {
    let mut b = Bench::new(4);
    let target: Arc<dyn Target> = Arc::new(FencedTarget(b.held.clone()));
    b.lanes.ensure(
        "a",
        LaneSettings {
            policy: QueuePolicy::All,
            keep_done: 10,
            target: Ok(target),
        },
    );
    let first = b.job("a");
    let second = b.job("a");
    b.until("the lane to forget both", |b| {
        !b.lanes.knows(&first) && !b.lanes.knows(&second)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        b.held.ran(),
        [first],
        "the second never ran: it was dropped"
    );
    assert!(b.finished().is_empty());
}
