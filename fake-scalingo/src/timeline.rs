//! The platform's timeline, as a test reads it after the fact: deployments of one app that
//! overlapped (two drivers at once: a client never creates a deployment while its previous one
//! of the app runs), deployments per `git_ref`, and API requests per minute of wall-clock time
//! (what a rate limit of so many requests a minute sees).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{DeploymentRecord, Endpoint, FakeScalingo, State};

/// Two deployments of one app whose lifetimes overlap: `later` was created before `earlier`
/// finished (or while it still runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub app: String,
    pub earlier: DeploymentRecord,
    pub later: DeploymentRecord,
}

/// Whether a request to `endpoint` is an API request (the rate limit's count): storage
/// transfers and requests to no known endpoint (the apps' own pages) are not.
fn is_api(endpoint: Option<Endpoint>) -> bool {
    endpoint.is_some_and(|e| !matches!(e, Endpoint::Upload | Endpoint::Download))
}

/// Pairs of one app's deployments that overlap, taken in creation order. A deployment still
/// running overlaps every one created after it.
pub fn overlaps(app: &str, deployments: &[DeploymentRecord]) -> Vec<Overlap> {
    let mut sorted: Vec<&DeploymentRecord> = deployments.iter().collect();
    sorted.sort_by_key(|d| d.created_at);
    let mut found = Vec::new();
    for (i, earlier) in sorted.iter().enumerate() {
        for later in &sorted[i + 1..] {
            let overlapping = match earlier.finished_at {
                Some(end) => later.created_at < end,
                None => true,
            };
            if overlapping {
                found.push(Overlap {
                    app: app.to_string(),
                    earlier: (*earlier).clone(),
                    later: (*later).clone(),
                });
            }
        }
    }
    found
}

/// The count of each unix minute (seconds since the epoch / 60) among `times`.
pub fn per_minute(times: impl IntoIterator<Item = SystemTime>) -> BTreeMap<u64, u64> {
    let mut minutes = BTreeMap::new();
    for t in times {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        *minutes.entry(secs / 60).or_insert(0) += 1;
    }
    minutes
}

/// The most `times` (sorted or not) in any window of `window`, sliding.
pub fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end].duration_since(sorted[start]) >= window {
            start += 1;
        }
        best = best.max(end + 1 - start);
    }
    best
}

/// The timeline's figures for `GET /_fake/stats`: API requests per unix minute, the most in
/// any sliding minute, overlapping deployments of an app, the most deployments of a git_ref.
pub(crate) fn summary(st: &State) -> Value {
    let times: Vec<Instant> = st
        .requests
        .iter()
        .filter(|r| is_api(r.endpoint))
        .map(|r| r.received)
        .collect();
    let (now, wall) = (Instant::now(), SystemTime::now());
    let minutes = per_minute(
        times
            .iter()
            .map(|t| wall - now.saturating_duration_since(*t)),
    );
    let overlapping: usize = st
        .apps
        .iter()
        .map(|a| overlaps(&a.name, &a.deployments).len())
        .sum();
    let mut refs: BTreeMap<(&str, Option<&str>), usize> = BTreeMap::new();
    for app in &st.apps {
        for d in &app.deployments {
            *refs.entry((&app.name, d.git_ref.as_deref())).or_insert(0) += 1;
        }
    }
    json!({
        "api_requests_per_minute": minutes
            .iter()
            .map(|(m, n)| (m.to_string(), *n))
            .collect::<BTreeMap<String, u64>>(),
        "max_api_requests_in_60s": max_in_window(&times, Duration::from_secs(60)),
        "overlapping_deployments": overlapping,
        "max_deployments_per_git_ref": refs.values().copied().max().unwrap_or(0),
    })
}

impl FakeScalingo {
    /// Every app's name, in the order they were added.
    pub fn app_names(&self) -> Vec<String> {
        self.shared
            .lock()
            .apps
            .iter()
            .map(|a| a.name.clone())
            .collect()
    }

    /// Deployments of one app that overlapped, over every app: empty when each app's
    /// deployments ran one after the other, as one driver per app makes them.
    pub fn overlapping_deployments(&self) -> Vec<Overlap> {
        let st = self.shared.lock();
        st.apps
            .iter()
            .flat_map(|a| overlaps(&a.name, &a.deployments))
            .collect()
    }

    /// How many deployments each (app, git_ref) has; deployments without a git_ref are
    /// counted under `None`.
    pub fn deployments_per_git_ref(&self) -> BTreeMap<(String, Option<String>), usize> {
        let st = self.shared.lock();
        let mut counts = BTreeMap::new();
        for app in &st.apps {
            for d in &app.deployments {
                *counts
                    .entry((app.name.clone(), d.git_ref.clone()))
                    .or_insert(0) += 1;
            }
        }
        counts
    }

    /// When each API request (storage transfers left out) was received, on the monotonic
    /// clock, in the order they were answered.
    pub fn api_request_times(&self) -> Vec<Instant> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| is_api(r.endpoint))
            .map(|r| r.received)
            .collect()
    }

    /// API requests received per unix minute of wall-clock time (storage transfers left out):
    /// the count a fixed one-minute window of the platform, or of a fleet's shared budget,
    /// sees. Receipt times are mapped from the monotonic clock to the wall clock at the call.
    pub fn api_requests_per_minute(&self) -> BTreeMap<u64, u64> {
        let times = self.api_request_times();
        let (now, wall) = (Instant::now(), SystemTime::now());
        per_minute(
            times
                .into_iter()
                .map(|t| wall - now.saturating_duration_since(t)),
        )
    }

    /// The most API requests received in any sliding `window`.
    pub fn max_api_requests_in(&self, window: Duration) -> usize {
        max_in_window(&self.api_request_times(), window)
    }
}
