//! Fault storms: the real daemon against a fake platform that fails at random (seeded), with and
//! without SIGKILL at random moments. Whatever happens, nothing dropped is lost, each archive
//! gets one history line and at most one deployment per git_ref, every failure says why, and
//! the token never shows in a log.
//!
//! The storm also does what a hostile world does: the same bytes dropped twice at once, files
//! dropped as hard links, a file held open for writing across a restart, and (with SIGKILL) a
//! watched source directory edited, removed and swapped by rename while its deployments run.
//! Beyond the above: every git_ref belongs to one job across the whole history, no valid
//! archive is ever refused (taken before it was complete), and once quiet the tree's last
//! deployment holds its current content, with no content deployed twice in a row.
//!
//! Small by default (CI runs it every time); `bench/reliability.sh` runs big ones (this module
//! alone, in release) through `CHAOS_ARCHIVES`, `CHAOS_APPS`, `CHAOS_PROBABILITY`, `CHAOS_SEED`,
//! `CHAOS_KILLS` and `CHAOS_STREAM` (0: no deployments stream, every deployment polled).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fake_scalingo::Chaos;

use crate::support::{self, FakeConfig, Proc, World, archives_in, wait_for};

struct Params {
    archives: usize,
    apps: usize,
    probability: f64,
    seed: u64,
    kills: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

impl Params {
    fn from_env(default_seed: u64) -> Params {
        let p = Params {
            archives: env_or("CHAOS_ARCHIVES", 24),
            apps: env_or("CHAOS_APPS", 4),
            probability: env_or("CHAOS_PROBABILITY", 0.2),
            seed: env_or("CHAOS_SEED", default_seed),
            kills: env_or("CHAOS_KILLS", 8),
        };
        assert!(p.apps > 0 && p.archives > 0);
        assert!((0.0..=1.0).contains(&p.probability));
        p
    }
}

struct Storm {
    world: World,
    /// (app name, drop folder)
    apps: Vec<(String, PathBuf)>,
    /// (app index, file name), in drop order.
    files: Vec<(usize, String)>,
    dropped: usize,
    tags: Vec<String>,
    started: Instant,
    /// The watched source directory, when the storm has one.
    tree: Option<PathBuf>,
    /// Files written in place and still open: (file, handle, the bytes still to write).
    held: Vec<(PathBuf, std::fs::File, Vec<u8>)>,
}

/// The app of the watched source directory.
const TREE_APP: &str = "storm-tree";

impl Storm {
    fn new(p: &Params) -> Storm {
        let world = World::with(FakeConfig {
            chaos: Some(Chaos {
                seed: p.seed,
                probability: p.probability,
                delay_past_timeout: Duration::from_millis(1300),
                transient_only: false,
            }),
            step: Duration::from_millis(20),
            // CHAOS_STREAM=0: no deployments stream, every deployment polled.
            stream: std::env::var("CHAOS_STREAM").map_or(true, |v| v != "0"),
            ..FakeConfig::default()
        });
        std::fs::write(
            &world.config,
            format!(
                r#"state_dir = "{}"
shutdown_grace = "5s"
max_parallel = 4

[scalingo]
timeout = "1s"
follow_interval = "20ms"
api_rate_limit = 1000000

[retry]
initial = "20ms"
max_delay = "200ms"
budget = "60s"
retry_aborted = true
"#,
                world.state.display()
            ),
        )
        .unwrap();
        let apps: Vec<(String, PathBuf)> = (0..p.apps)
            .map(|n| {
                let name = format!("storm-{n}");
                let drop = world.add_drop_app(&name, "queue = \"all\"\nkeep_done = 1000000");
                std::fs::create_dir_all(&drop).unwrap();
                (name, drop)
            })
            .collect();
        let files = (0..p.archives)
            .map(|n| (n % p.apps, format!("a{n:04}.tar.gz")))
            .collect();
        Storm {
            world,
            apps,
            files,
            dropped: 0,
            tags: Vec::new(),
            started: Instant::now(),
            tree: None,
            held: Vec::new(),
        }
    }

    /// Adds a watched source directory app (deployed at start when changed).
    fn with_tree(mut self) -> Storm {
        let root = self.world.add_tree_app(
            TREE_APP,
            "deploy_on_start = true
queue = \"latest\"",
        );
        self.tree = Some(root);
        self
    }

    /// Edits the tree; every fifth call removes it and puts a new one in its place by rename.
    fn edit_tree(&self, round: usize) {
        let Some(root) = &self.tree else { return };
        let text = format!("console.log('round {round}')\n");
        if round % 5 == 4 {
            let next = root.with_extension("next");
            std::fs::create_dir_all(next.join("lib")).unwrap();
            std::fs::write(next.join("package.json"), br#"{"name":"demo"}"#).unwrap();
            std::fs::write(next.join("lib/util.js"), b"module.exports = 1\n").unwrap();
            std::fs::write(next.join("index.js"), &text).unwrap();
            let old = root.with_extension("old");
            std::fs::rename(root, &old).unwrap();
            std::fs::rename(&next, root).unwrap();
            std::fs::remove_dir_all(&old).unwrap();
        } else {
            std::fs::write(root.join("index.js"), text).unwrap();
        }
    }

    /// Starts writing an archive in place into the next app's folder, and keeps it open.
    fn hold_one(&mut self, round: usize) {
        let app = round % self.apps.len();
        let name = format!("held-{round:02}.tar.gz");
        let bytes =
            std::fs::read(support::good_archive(self.world.dir.path(), &name, "app")).unwrap();
        let path = self.apps[app].1.join(&name);
        let mut file = std::fs::File::create(&path).unwrap();
        let half = bytes.len() / 2;
        file.write_all(&bytes[..half]).unwrap();
        file.flush().unwrap();
        self.held.push((path, file, bytes[half..].to_vec()));
        self.files.push((app, name));
    }

    /// Finishes and closes the files held open.
    fn release_held(&mut self) {
        for (_, mut file, rest) in self.held.drain(..) {
            file.write_all(&rest).unwrap();
        }
    }

    /// Drops the next `n` archives (fewer if there are no more).
    fn drop_some(&mut self, n: usize) {
        let end = (self.dropped + n).min(self.files.len());
        for index in self.dropped..end {
            let (app, name) = &self.files[index];
            let drop = &self.apps[*app].1;
            if name.starts_with("held-") {
                continue;
            }
            if index % 4 == 3 {
                // The same bytes as the previous archive, under another name, at once.
                // Made in a folder of its own: the previous archive's file may be a hard link
                // into the drop folder, which must not be rewritten under the daemon.
                let (_, previous) = &self.files[index - 1];
                let own = self.world.dir.path().join(format!("dup-{index}"));
                std::fs::create_dir_all(&own).unwrap();
                let made = support::good_archive(&own, previous, "app");
                let temp = drop.join(format!("{name}.partial"));
                std::fs::rename(made, &temp).unwrap();
                std::fs::rename(temp, drop.join(name)).unwrap();
            } else if index % 7 == 5 {
                // A hard link: no write, no close in the folder.
                let made = support::good_archive(self.world.dir.path(), name, "app");
                std::fs::hard_link(&made, drop.join(name)).unwrap();
            } else {
                self.world.drop_archive(drop, name);
            }
        }
        self.dropped = end;
    }

    fn start(&mut self, tag: &str) -> Proc {
        self.tags.push(tag.to_string());
        self.world.start_daemon(tag)
    }

    /// Waits for one history line per archive; false on timeout (a stuck job).
    fn wait_all(&self, timeout: Duration) -> bool {
        let n = self.files.len();
        wait_for(timeout, || {
            self.world
                .history()
                .iter()
                .filter(|h| h["app"] != TREE_APP)
                .count()
                >= n
                && self.tree_is_quiet()
        })
    }

    /// The tree's newest deployment is finished, holds the tree's current content, and no
    /// job of the tree is left in the spool. True when the storm has no tree.
    fn tree_is_quiet(&self) -> bool {
        let Some(root) = &self.tree else { return true };
        let Ok(current) = std::fs::read_to_string(root.join("index.js")) else {
            return false;
        };
        let deployments = self.world.fake.deployments(TREE_APP);
        let Some(last) = deployments.iter().max_by_key(|d| d.created_at) else {
            return false;
        };
        last.is_finished()
            && self.deployed_index(&last.source_url).as_deref() == Some(current.as_str())
            && !self
                .world
                .job_records()
                .iter()
                .any(|r| r.contains(&format!("\"app\": \"{TREE_APP}\"")))
    }

    /// `index.js` in the archive a deployment was made from.
    fn deployed_index(&self, source_url: &str) -> Option<String> {
        let bytes = self.world.fake.archive_at(source_url)?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        for entry in archive.entries().ok()? {
            let mut entry = entry.ok()?;
            if entry.path().ok()?.ends_with("index.js") {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).ok()?;
                return Some(text);
            }
        }
        None
    }

    /// Prints the table, then checks every invariant.
    fn report_and_check(&self, title: &str, p: &Params) {
        let world = &self.world;
        let all_history = world.history();
        let history: Vec<serde_json::Value> = all_history
            .iter()
            .filter(|h| h["app"] != TREE_APP)
            .cloned()
            .collect();
        let stats = world.fake.stats();

        // Files: every dropped file is in its folder, done/ or failed/.
        let mut found = 0;
        let mut unclaimed = 0;
        for (_, drop) in &self.apps {
            unclaimed += archives_in(drop).len();
            found += archives_in(drop).len()
                + archives_in(&drop.join("done")).len()
                + archives_in(&drop.join("failed")).len();
        }
        let lost = self.files.len().saturating_sub(found);
        let missing: Vec<&String> = self
            .files
            .iter()
            .filter(|(app, name)| {
                let drop = &self.apps[*app].1;
                ![drop.clone(), drop.join("done"), drop.join("failed")]
                    .iter()
                    .any(|d| archives_in(d).iter().any(|n| n == name))
            })
            .map(|(_, name)| name)
            .collect();

        // Deployments per git_ref.
        let mut per_ref: HashMap<(String, String), usize> = HashMap::new();
        let mut deployments = 0;
        let mut without_ref = 0;
        let tree_app = self
            .tree
            .as_ref()
            .map(|_| (TREE_APP.to_string(), PathBuf::new()));
        for (app, _) in self.apps.iter().chain(tree_app.iter()) {
            for d in world.fake.deployments(app) {
                deployments += 1;
                match d.git_ref {
                    Some(r) => *per_ref.entry((app.clone(), r)).or_default() += 1,
                    None => without_ref += 1,
                }
            }
        }
        let max_per_ref = per_ref.values().copied().max().unwrap_or(0);

        // History.
        let mut per_file: HashMap<(String, String), usize> = HashMap::new();
        let mut succeeded = 0;
        let mut failed: BTreeMap<String, usize> = BTreeMap::new();
        let mut other = 0;
        let mut retries = 0u64;
        let mut without_reason = Vec::new();
        for h in &history {
            let app = h["app"].as_str().unwrap_or("").to_string();
            let file = h["file"].as_str().unwrap_or("").to_string();
            *per_file.entry((app, file)).or_default() += 1;
            retries += h["attempts"].as_u64().unwrap_or(1).saturating_sub(1);
            match h["outcome"].as_str() {
                Some("succeeded") => succeeded += 1,
                Some("failed") => {
                    let reason = h["reason"].as_str().unwrap_or("").trim();
                    if reason.is_empty() {
                        without_reason.push(h.clone());
                    }
                    let step = h["step"].as_str().unwrap_or("?");
                    *failed
                        .entry(format!("{step}: {}", shorten(reason)))
                        .or_default() += 1;
                }
                _ => other += 1,
            }
        }
        let max_lines_per_file = per_file.values().copied().max().unwrap_or(0);
        let failed_total: usize = failed.values().sum();
        // A valid archive refused means it was taken before it was complete.
        let refused = history.iter().filter(|h| h["step"] == "inspect").count();
        // Every git_ref belongs to one job, across the whole history.
        let mut refs = HashSet::new();
        let mut shared_refs = Vec::new();
        for h in &all_history {
            if let Some(r) = h["git_ref"].as_str()
                && !refs.insert(r.to_string())
            {
                shared_refs.push(r.to_string());
            }
        }
        // The tree: consecutive deployments (an aborted one retried aside) differ in content.
        let mut tree_deployments = 0;
        let mut tree_repeats = 0;
        if self.tree.is_some() {
            let mut ds = world.fake.deployments(TREE_APP);
            ds.sort_by_key(|d| d.created_at);
            ds.retain(|d| d.status != "aborted");
            tree_deployments = ds.len();
            let contents: Vec<Option<String>> = ds
                .iter()
                .map(|d| self.deployed_index(&d.source_url))
                .collect();
            tree_repeats = contents.windows(2).filter(|w| w[0] == w[1]).count();
        }

        let mut table = format!(
            "\n== {title} (seed {}, p {}, {} apps, kills {}) ==\n",
            p.seed,
            p.probability,
            self.apps.len(),
            self.tags.len().saturating_sub(1)
        );
        let mut row = |k: &str, v: String| table.push_str(&format!("  {k:<30} {v}\n"));
        row("jobs (archives dropped)", self.files.len().to_string());
        row("history lines", history.len().to_string());
        row("succeeded", succeeded.to_string());
        row("failed", failed_total.to_string());
        for (reason, n) in &failed {
            row(&format!("  {n:>4} x"), reason.clone());
        }
        row("other outcomes", other.to_string());
        row("deployments", deployments.to_string());
        row("max deployments per git_ref", max_per_ref.to_string());
        row("max history lines per file", max_lines_per_file.to_string());
        row("files lost", lost.to_string());
        row("files never claimed", unclaimed.to_string());
        row("valid archives refused", refused.to_string());
        row("git_refs of two jobs", shared_refs.len().to_string());
        if self.tree.is_some() {
            row("tree deployments", tree_deployments.to_string());
            row("tree content twice in a row", tree_repeats.to_string());
        }
        row("faults injected", stats.faults_injected.to_string());
        row("requests", stats.requests.to_string());
        row("retries (attempts - 1)", retries.to_string());
        row(
            "wall time",
            format!("{:.1} s", self.started.elapsed().as_secs_f64()),
        );
        eprintln!("{table}");

        // The token never shows in any log (World::log asserts it).
        for tag in &self.tags {
            let _ = world.log(tag);
            let stdout =
                std::fs::read_to_string(world.path(&format!("{tag}.stdout"))).unwrap_or_default();
            support::assert_no_secret(&stdout, &world.fake.api_token());
        }

        let sharing: Vec<&serde_json::Value> = all_history
            .iter()
            .filter(|h| shared_refs.iter().any(|r| h["git_ref"] == r.as_str()))
            .collect();
        assert!(
            shared_refs.is_empty(),
            "git_refs of two jobs: {sharing:#?}\nfiles lost: {missing:?}{table}"
        );
        assert_eq!(lost, 0, "files lost: {missing:?}{table}");
        assert_eq!(unclaimed, 0, "files never taken{table}");
        assert_eq!(
            history.len(),
            self.files.len(),
            "one history line per archive{table}\n{history:#?}"
        );
        assert_eq!(max_lines_per_file, 1, "one history line per archive{table}");
        assert_eq!(other, 0, "only succeeded or failed with queue = all{table}");
        assert!(max_per_ref <= 1, "a git_ref deployed twice{table}");
        assert_eq!(refused, 0, "a valid archive refused{table}\n{history:#?}");
        assert!(
            shared_refs.is_empty(),
            "git_refs of two jobs: {shared_refs:?}{table}"
        );
        assert_eq!(
            tree_repeats, 0,
            "the same tree content deployed twice in a row{table}"
        );
        assert!(
            self.tree_is_quiet(),
            "the tree's last deployment is not its content{table}"
        );
        assert_eq!(without_ref, 0, "deployments without a git_ref{table}");
        assert!(
            without_reason.is_empty(),
            "failures without a reason: {without_reason:#?}"
        );
        assert!(
            stats.faults_injected > 0,
            "the storm injected nothing{table}"
        );
        // A success names a deployment that succeeded, with the job's git_ref.
        for h in history.iter().filter(|h| h["outcome"] == "succeeded") {
            let app = h["app"].as_str().unwrap();
            let id = h["deployment_id"].as_str().expect("a deployment id");
            let d = world
                .fake
                .deployment(app, id)
                .expect("the deployment exists");
            assert_eq!(d.status, "success", "{h:#?}");
            assert_eq!(d.git_ref.as_deref(), h["git_ref"].as_str(), "{h:#?}");
        }
        // Every failed file has its reason file next to it.
        for (_, drop) in &self.apps {
            for name in archives_in(&drop.join("failed")) {
                let has_reason = std::fs::read_dir(drop.join("failed"))
                    .unwrap()
                    .flatten()
                    .any(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n.starts_with(&name) && n.ends_with(".reason.txt")
                    });
                assert!(has_reason, "{name} in failed/ has no reason file");
            }
        }
    }
}

/// The reason's first line with URLs cut (they hold ports and ids), so that like failures
/// group.
fn shorten(reason: &str) -> String {
    let first = reason.lines().next().unwrap_or("");
    let mut out = first
        .split(' ')
        .map(|w| if w.contains("://") { "<url>" } else { w })
        .collect::<Vec<_>>()
        .join(" ");
    if out.len() > 100 {
        let mut cut = 100;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

fn budget(p: &Params) -> Duration {
    // Generous: a stuck job shows as a timeout, not as a hang.
    Duration::from_secs(60 + (p.archives as u64 * 2) / p.apps as u64 * 3)
}

#[test]
fn a_fault_storm_loses_nothing_and_deploys_each_archive_at_most_once() {
    let p = Params::from_env(0x5eed_0001);
    let mut storm = Storm::new(&p);
    let _daemon = storm.start("storm");
    storm.drop_some(p.archives);
    let done = storm.wait_all(budget(&p));
    storm.report_and_check("fault storm", &p);
    assert!(done, "not every job finished (stuck)");
}

#[test]
fn a_fault_storm_with_sigkill_loop_loses_nothing_and_deploys_each_archive_at_most_once() {
    let p = Params::from_env(0x5eed_0002);
    let mut storm = Storm::new(&p).with_tree();
    let mut rng = fastrand::Rng::with_seed(p.seed ^ 0x6b11);
    let batch = p.archives.div_ceil(p.kills + 1);
    for round in 0..p.kills {
        let mut daemon = storm.start(&format!("round{round:02}"));
        // A file held open across the kill and the next start is finished only then.
        storm.release_held();
        storm.drop_some(batch);
        storm.edit_tree(round);
        if round % 3 == 1 {
            storm.hold_one(round);
        }
        std::thread::sleep(Duration::from_millis(rng.u64(50..1500)));
        daemon.kill9();
    }
    storm.drop_some(p.archives);
    let _daemon = storm.start("last");
    storm.release_held();
    let done = storm.wait_all(budget(&p));
    storm.report_and_check("fault storm with SIGKILL", &p);
    assert!(done, "not every job finished (stuck)");
}
