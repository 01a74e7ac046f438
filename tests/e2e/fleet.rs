//! Fleet mode (issue 24 item 3): three real daemons sharing one throw-away PostgreSQL and the
//! fake API with 30 % faults. Archives are pushed over HTTP to random nodes and dropped into
//! two nodes' folders while the fleet suffers: SIGKILL of an app's lease holder during a
//! follow and during a health check, SIGSTOP of a holder past its lease then SIGCONT,
//! PostgreSQL restarted, a node added and one stopped for good. At the end, within a
//! deadline: every archive deployed exactly once (one deployment per git_ref on the fake, one
//! success per archive in the fleet's history), nothing lost (each dropped file in exactly one
//! of done/ or failed/ on its origin node, each pushed job finished), never two nodes driving
//! one app at once (no overlapping deployments of one app on the fake's timeline), and the
//! fleet's API requests within `api_rate_limit` in every minute.
//!
//! Knobs (defaults are CI's): `FLEET_ARCHIVES` (60), `FLEET_PROBABILITY` (0.3), `FLEET_SEED`,
//! `FLEET_RATE_LIMIT` (requests a minute for the whole fleet, 300).

mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fake_scalingo::{Chaos, FakeConfig};

use crate::support::{self, archives_in};
use harness::{Fleet, Setup, poll};

/// Apps without a check: their jobs go fast.
const APPS: [&str; 4] = ["fleet-a", "fleet-b", "fleet-c", "fleet-d"];
/// The app with a health check (a soak long enough to be killed during).
const CHECK: &str = "fleet-check";
/// The platform's step while a follow is to be killed: a deployment runs for 4 of them.
const SLOW_STEP: Duration = Duration::from_millis(1000);
const STEP: Duration = Duration::from_millis(100);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// Pushed over HTTP to this node; the job id it answered.
    Push(String, String),
    /// Dropped into this node's folder.
    Drop(String),
}

struct Archive {
    name: String,
    app: String,
    route: Option<Route>,
}

/// One disruption and how long the fleet took to get over it.
struct Event {
    what: String,
    node: String,
    app: String,
    /// From the signal to another node holding the app's lease.
    lease_taken: Option<Duration>,
    /// From the signal to the platform's first request about the app (the new holder's).
    first_request: Option<Duration>,
}

struct Scenario {
    fleet: Fleet,
    archives: Vec<Archive>,
    submitted: usize,
    rng: fastrand::Rng,
    paused: BTreeSet<String>,
    events: Vec<Event>,
    started: Instant,
    made: PathBuf,
}

impl Scenario {
    fn new(count: usize, probability: f64, seed: u64, rate_limit: u32) -> Scenario {
        let fake = FakeConfig {
            chaos: Some(Chaos {
                seed,
                probability,
                delay_past_timeout: Duration::from_millis(1300),
                transient_only: false,
            }),
            step: STEP,
            ..FakeConfig::default()
        };
        let mut apps: Vec<(String, String)> = APPS
            .iter()
            .map(|a| (a.to_string(), String::new()))
            .collect();
        let setup = Setup {
            lease: Duration::from_secs(4),
            poll: Duration::from_millis(500),
            rate_limit,
            apps: Vec::new(),
        };
        // The check's URL is the fake's: known once it runs, so the apps are set after.
        let mut fleet = Fleet::new(fake, setup);
        apps.push((
            CHECK.to_string(),
            format!(
                "verify = {{ url = \"{}/up\", timeout = \"2s\", interval = \"200ms\", warmup = \"0s\", soak = \"4s\" }}",
                fleet.fake.app_url(CHECK)
            ),
        ));
        for (app, _) in &apps {
            fleet.fake.add_app(app);
        }
        fleet.setup.apps = apps;
        let archives = (0..count)
            .map(|i| {
                let app = if i % 10 == 9 {
                    CHECK.to_string()
                } else {
                    APPS[i % APPS.len()].to_string()
                };
                Archive {
                    name: format!("f{i:03}-{app}.tar.gz"),
                    app,
                    route: None,
                }
            })
            .collect();
        let made = fleet.dir.path().join("made");
        std::fs::create_dir_all(&made).unwrap();
        Scenario {
            fleet,
            archives,
            submitted: 0,
            rng: fastrand::Rng::with_seed(seed ^ 0xf1ee7),
            paused: BTreeSet::new(),
            events: Vec::new(),
            started: Instant::now(),
            made,
        }
    }

    /// Nodes that take pushes: running, not paused.
    fn live(&self) -> Vec<String> {
        self.fleet
            .running()
            .into_iter()
            .filter(|n| !self.paused.contains(n))
            .collect()
    }

    /// Submits the next `n` archives: one in three dropped into n1's or n2's folder, the others
    /// pushed to a random live node.
    fn submit(&mut self, n: usize) {
        let end = (self.submitted + n).min(self.archives.len());
        for i in self.submitted..end {
            let (name, app) = (self.archives[i].name.clone(), self.archives[i].app.clone());
            let file = support::good_archive(&self.made, &name, "app");
            let route = if i % 3 == 2 {
                let node = if (i / 3) % 2 == 0 { "n1" } else { "n2" };
                let dest = self.fleet.nodes[node].drop_dir(&app).join(&name);
                let partial = dest.with_extension("partial");
                std::fs::rename(&file, &partial).unwrap();
                std::fs::rename(&partial, &dest).unwrap();
                Route::Drop(node.to_string())
            } else {
                let live = self.live();
                let node = live[self.rng.usize(..live.len())].clone();
                let job = self.fleet.push(&node, &app, &file, Duration::from_secs(60));
                Route::Push(node, job)
            };
            self.archives[i].route = Some(route);
        }
        self.submitted = end;
    }

    /// Waits until a running node holds `app`'s lease and has its job in `state` in its spool;
    /// that node's name.
    fn wait_driving(&self, app: &str, state: &str, timeout: Duration) -> String {
        let mut found = None;
        let ok = poll(timeout, Duration::from_millis(50), || {
            let Some(holder) = self.fleet.holder(app) else {
                return false;
            };
            let Some(node) = self.fleet.nodes.get(&holder) else {
                return false;
            };
            let driving = node.proc.is_some()
                && node.spool_records().iter().any(|r| {
                    r.contains(&format!("\"app\": \"{app}\""))
                        && r.contains(&format!("\"{state}\""))
                });
            if driving {
                found = Some(holder);
            }
            driving
        });
        assert!(
            ok,
            "no node was seen driving a job of {app} in state {state}\n{}",
            self.fleet.all_logs()
        );
        found.unwrap()
    }

    /// From `at` to the first API request about `app` received after it, waiting at most
    /// `timeout`.
    fn first_request_after(&self, app: &str, at: Instant, timeout: Duration) -> Option<Duration> {
        // The platform's API about the app, or the app itself (a health check's probe).
        let (api, probe) = (format!("/apps/{app}"), format!("/app/{app}/"));
        let mut first = None;
        poll(timeout, Duration::from_millis(100), || {
            first = self
                .fleet
                .fake
                .requests()
                .iter()
                .filter(|r| {
                    r.received > at && (r.path.contains(&api) || r.path.starts_with(&probe))
                })
                .map(|r| r.received.duration_since(at))
                .min();
            first.is_some()
        });
        first
    }

    /// SIGKILL of `app`'s holder while its job is in `state`; measures the takeover, then
    /// starts the node again (its drop folders have files to place).
    fn kill_holder_during(&mut self, app: &str, state: &str, what: &str) {
        let node = self.wait_driving(app, state, Duration::from_secs(90));
        let at = self.fleet.kill9(&node);
        let lease = self.fleet.setup.lease;
        let taken = self
            .fleet
            .wait_holder_other_than(app, &node, lease * 4)
            .map(|_| at.elapsed());
        // The new holder's first request: received after it took the lane (a request the old
        // holder sent just before the signal may arrive just after it).
        let first = taken.and_then(|t| {
            self.first_request_after(
                app,
                at + t.saturating_sub(Duration::from_millis(100)),
                lease * 4,
            )
            .map(|d| d + t.saturating_sub(Duration::from_millis(100)))
        });
        self.events.push(Event {
            what: what.to_string(),
            node: node.clone(),
            app: app.to_string(),
            lease_taken: taken,
            first_request: first,
        });
        assert!(
            taken.is_some(),
            "no other node took {app}'s lane within {:?} of SIGKILL of {node}\n{}",
            lease * 4,
            self.fleet.all_logs()
        );
        self.fleet.start(&node);
    }

    /// SIGSTOP of `app`'s holder until another node took the lane (past its lease), then
    /// SIGCONT: the node wakes fenced, and carries on.
    fn pause_holder_past_lease(&mut self, app: &str) {
        let node = self.wait_driving(app, "deploying", Duration::from_secs(90));
        self.paused.insert(node.clone());
        let at = Instant::now();
        self.fleet.signal(&node, "STOP");
        let lease = self.fleet.setup.lease;
        let taken = self
            .fleet
            .wait_holder_other_than(app, &node, lease * 4)
            .map(|_| at.elapsed());
        // The new holder's first request: received after it took the lane (a request the old
        // holder sent just before the signal may arrive just after it).
        let first = taken.and_then(|t| {
            self.first_request_after(
                app,
                at + t.saturating_sub(Duration::from_millis(100)),
                lease * 4,
            )
            .map(|d| d + t.saturating_sub(Duration::from_millis(100)))
        });
        self.fleet.signal(&node, "CONT");
        self.paused.remove(&node);
        self.events.push(Event {
            what: "SIGSTOP past the lease".to_string(),
            node: node.clone(),
            app: app.to_string(),
            lease_taken: taken,
            first_request: first,
        });
        assert!(
            taken.is_some(),
            "no other node took {app}'s lane while {node} was stopped\n{}",
            self.fleet.all_logs()
        );
    }

    /// Every archive has its outcome in the fleet's history and every dropped file is placed.
    fn all_finished(&self) -> bool {
        let Some(history) = self.fleet.history() else {
            return false;
        };
        if self.fleet.unfinished_and_unplaced() != Some((0, 0)) {
            return false;
        }
        let files: BTreeSet<&str> = history.iter().filter_map(|h| h["file"].as_str()).collect();
        self.archives.iter().all(|a| {
            files.contains(a.name.as_str())
                && match &a.route {
                    Some(Route::Drop(node)) => {
                        let drop = self.fleet.nodes[node].drop_dir(&a.app);
                        [drop.join("done"), drop.join("failed")]
                            .iter()
                            .any(|d| archives_in(d).contains(&a.name))
                    }
                    _ => true,
                }
        })
    }
}

#[test]
fn a_fleet_under_faults_kills_pauses_and_a_database_restart_deploys_each_archive_once() {
    let count: usize = env_or("FLEET_ARCHIVES", 60);
    let probability: f64 = env_or("FLEET_PROBABILITY", 0.3);
    let seed: u64 = env_or("FLEET_SEED", 0xf1ee_7001);
    // Below what the fleet asks for unbounded (about 450 a minute): the shared budget bites.
    let rate_limit: u32 = env_or("FLEET_RATE_LIMIT", 300);
    assert!(count >= 20, "FLEET_ARCHIVES: at least 20");
    let mut s = Scenario::new(count, probability, seed, rate_limit);
    for node in ["n1", "n2", "n3"] {
        s.fleet.start(node);
    }
    let batch = count / 6;

    // SIGKILL of the holder during a follow: slow builds, so that one is under way.
    s.fleet.fake.set_step(SLOW_STEP);
    s.submit(batch);
    s.kill_holder_during(APPS[0], "deploying", "SIGKILL during a follow");
    s.fleet.fake.set_step(STEP);

    // SIGKILL of the holder during a health check (a 4 s soak).
    s.submit(batch);
    s.kill_holder_during(CHECK, "verifying", "SIGKILL during a check");

    // SIGSTOP of a holder past its lease, then SIGCONT.
    s.fleet.fake.set_step(SLOW_STEP);
    s.submit(batch);
    s.pause_holder_past_lease(APPS[1]);
    s.fleet.fake.set_step(STEP);

    // PostgreSQL restarted while deployments run.
    s.submit(batch);
    let restart = Instant::now();
    s.fleet.pg.restart();
    let pg_restart = restart.elapsed();

    // A node added, one stopped for good (cleanly).
    s.submit(batch);
    s.fleet.start("n4");
    let stopped = s.fleet.stop("n3");
    assert!(
        stopped.success(),
        "n3 stops cleanly: {stopped:?}\n{}",
        s.fleet.all_logs()
    );

    s.submit(count);
    let deadline = Duration::from_secs(150);
    let done = poll(deadline, Duration::from_secs(1), || s.all_finished());
    s.fleet.assert_alive();
    report_and_check(&s, pg_restart);
    assert!(
        done,
        "not every archive finished within {deadline:?}\n{}",
        s.fleet.all_logs()
    );
}

/// Prints the figures, then checks every invariant.
fn report_and_check(s: &Scenario, pg_restart: Duration) {
    let fleet = &s.fleet;
    let history = fleet.history().unwrap_or_default();
    let (unfinished, unplaced) = fleet
        .unfinished_and_unplaced()
        .unwrap_or((u64::MAX, u64::MAX));
    let stats = fleet.fake.stats();
    let per_ref = fleet.fake.deployments_per_git_ref();
    let overlaps = fleet.fake.overlapping_deployments();
    let per_minute = fleet.fake.api_requests_per_minute();
    let sliding = fleet.fake.max_api_requests_in(Duration::from_secs(60));

    // History per archive.
    let mut lines: BTreeMap<&str, Vec<&serde_json::Value>> = BTreeMap::new();
    for h in &history {
        if let Some(file) = h["file"].as_str() {
            lines.entry(file).or_default().push(h);
        }
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for h in &history {
        *outcomes
            .entry(h["outcome"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let pushed = s
        .archives
        .iter()
        .filter(|a| matches!(a.route, Some(Route::Push(..))))
        .count();
    let max_per_ref = per_ref.values().copied().max().unwrap_or(0);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for app in fleet.fake.app_names() {
        for d in fleet.fake.deployments(&app) {
            *statuses.entry(d.status).or_default() += 1;
        }
    }
    let deployments: usize = per_ref.values().sum();
    let mut ref_histogram: BTreeMap<usize, usize> = BTreeMap::new();
    for n in per_ref.values() {
        *ref_histogram.entry(*n).or_default() += 1;
    }

    let mut table = format!(
        "\n== fleet scenario ({} nodes started, faults p {}, rate limit {}/min) ==\n",
        fleet.nodes.len(),
        stats_probability(),
        fleet.setup.rate_limit
    );
    let mut row = |k: &str, v: String| table.push_str(&format!("  {k:<34} {v}\n"));
    row("archives", s.archives.len().to_string());
    row("  pushed over HTTP", pushed.to_string());
    row(
        "  dropped (n1, n2)",
        (s.archives.len() - pushed).to_string(),
    );
    row("history lines (the database's)", history.len().to_string());
    row(
        "jobs unfinished / files unplaced",
        format!("{unfinished} / {unplaced}"),
    );
    row("outcomes", format!("{outcomes:?}"));
    row("deployments", deployments.to_string());
    row("deployments by status", format!("{statuses:?}"));
    row(
        "deployments per git_ref (n: refs)",
        format!("{ref_histogram:?}"),
    );
    row("max deployments per git_ref", max_per_ref.to_string());
    row(
        "overlapping deployments of an app",
        overlaps.len().to_string(),
    );
    row("faults injected", stats.faults_injected.to_string());
    row("requests (API)", stats.api_requests().to_string());
    row(
        "API requests per minute",
        format!("{:?}", per_minute.values().collect::<Vec<_>>()),
    );
    row("max API requests in 60 s (sliding)", sliding.to_string());
    row(
        "kills (SIGKILL)",
        s.events
            .iter()
            .filter(|e| e.what.starts_with("SIGKILL"))
            .count()
            .to_string(),
    );
    for e in &s.events {
        row(
            &format!("  {}", e.what),
            format!(
                "{} holding {}: lease taken after {}, first request after {}",
                e.node,
                e.app,
                secs(e.lease_taken),
                secs(e.first_request)
            ),
        );
    }
    row(
        "PostgreSQL restart",
        format!("{:.1} s", pg_restart.as_secs_f64()),
    );
    row(
        "wall time",
        format!("{:.1} s", s.started.elapsed().as_secs_f64()),
    );
    eprintln!("{table}");

    // The token never shows in a log.
    for node in fleet.nodes.values() {
        support::assert_no_secret(&node.logs(), &fleet.fake.api_token());
    }

    // Never two nodes driving one app at once.
    assert!(
        overlaps.is_empty(),
        "deployments of one app overlapped (two drivers): {overlaps:#?}{table}"
    );
    // One deployment per git_ref.
    assert!(
        max_per_ref <= 1,
        "a git_ref deployed twice: {:?}{table}",
        per_ref.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert!(
        !per_ref.keys().any(|(_, r)| r.is_none()),
        "a deployment without a git_ref{table}"
    );
    // One history line per archive, a success, whose deployment succeeded with its git_ref.
    for a in &s.archives {
        let entries = lines.get(a.name.as_str()).cloned().unwrap_or_default();
        assert_eq!(
            entries.len(),
            1,
            "{} ({:?}): {} history lines: {entries:#?}{table}",
            a.name,
            a.route,
            entries.len()
        );
        let h = entries[0];
        assert!(
            matches!(h["outcome"].as_str(), Some("succeeded" | "verified")),
            "{} did not succeed: {h:#}{table}",
            a.name
        );
        let id = h["deployment_id"].as_str().expect("a deployment id");
        let d = fleet
            .fake
            .deployment(&a.app, id)
            .expect("the deployment exists");
        assert_eq!(d.status, "success", "{h:#}");
        assert_eq!(d.git_ref.as_deref(), h["git_ref"].as_str(), "{h:#}");
        if let Some(Route::Push(_, job)) = &a.route {
            assert_eq!(h["job"].as_str(), Some(job.as_str()), "{h:#}");
        }
    }
    assert_eq!(
        history.len(),
        s.archives.len(),
        "one history line per archive{table}"
    );
    // Nothing lost: each dropped file in exactly one of done/ or failed/ of its origin node,
    // and nowhere else.
    for a in &s.archives {
        let Some(Route::Drop(origin)) = &a.route else {
            continue;
        };
        for node in fleet.nodes.values() {
            let drop = node.drop_dir(&a.app);
            let places: Vec<PathBuf> = [drop.clone(), drop.join("done"), drop.join("failed")]
                .into_iter()
                .filter(|d| archives_in(d).contains(&a.name))
                .collect();
            let expected = usize::from(&node.name == origin);
            assert_eq!(
                places.len(),
                expected,
                "{} (dropped on {origin}) is in {places:?} on {}{table}",
                a.name,
                node.name
            );
            if expected == 1 {
                assert!(
                    places[0].ends_with("done"),
                    "{} not in done/: {places:?}",
                    a.name
                );
            }
        }
    }
    // The fleet's requests within the limit, in every minute of the wall clock.
    for (minute, n) in &per_minute {
        assert!(
            *n <= u64::from(fleet.setup.rate_limit),
            "{n} API requests in minute {minute}, over the fleet's limit of {}{table}",
            fleet.setup.rate_limit
        );
    }
    // The fleet's budget is a sliding window, as the platform's limit: no 60 s over it either.
    assert!(
        sliding <= fleet.setup.rate_limit as usize,
        "{sliding} API requests in 60 s, over the fleet's limit{table}"
    );
    assert!(stats.faults_injected > 0, "no fault injected{table}");
}

fn stats_probability() -> f64 {
    env_or("FLEET_PROBABILITY", 0.3)
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_string(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}
