//! What a job records about its health check and rollback, inside `job.json`: the check's
//! progress (so that a restart resumes it where it was), its verdict, and, for a job that
//! brings back an earlier archive, which one.

use serde::{Deserialize, Serialize};

use crate::queue::spool::Timestamp;

/// The longest body excerpt kept from a probe's answer.
pub const EXCERPT_CHARS: usize = 120;

/// One probe's answer (or why there was none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Probe {
    /// The HTTP status, when an answer came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// From the request to the end of the body (or the error), in milliseconds.
    pub latency_ms: u64,
    /// The start of the body, on one line.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub excerpt: String,
    /// Why no answer came (connection refused, timeout, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether the answer was healthy.
    pub healthy: bool,
}

impl Probe {
    /// A probe that could not be sent, and why (counts as an unhealthy answer).
    pub fn unanswered(why: String) -> Probe {
        Probe {
            status: None,
            latency_ms: 0,
            excerpt: String::new(),
            error: Some(why),
            healthy: false,
        }
    }

    /// One line: `HTTP 500 in 12 ms: "oops"`, or `no answer after 5 ms: connection refused`.
    pub fn describe(&self) -> String {
        match (self.status, &self.error) {
            // Headers came, and then the body did not (or broke).
            (Some(status), Some(error)) => {
                format!("HTTP {status} after {} ms: {error}", self.latency_ms)
            }
            (Some(status), _) if self.excerpt.is_empty() => {
                format!("HTTP {status} in {} ms", self.latency_ms)
            }
            (Some(status), _) => format!(
                "HTTP {status} in {} ms: \"{}\"",
                self.latency_ms, self.excerpt
            ),
            (None, error) => format!(
                "no answer after {} ms: {}",
                self.latency_ms,
                error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A healthy answer came in time and the app kept answering well through the soak.
    Verified,
    /// No healthy answer in time, or the app stopped answering well during the soak.
    Unhealthy,
    /// Cut short: a newer job for the app was waiting (it wins).
    Skipped,
}

/// A job that brings back an earlier, verified archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackOf {
    /// The job whose deployment was replaced (unhealthy, or the one running when asked by
    /// hand), and its git_ref.
    pub from_job: String,
    pub from_ref: String,
    /// The verified job whose archive is deployed again, and its git_ref.
    pub to_job: String,
    pub to_ref: String,
    /// Started by the daemon after an unhealthy deployment (else by `dropdeploy rollback`).
    pub automatic: bool,
    /// The file names the user knows them by (the dropped file, the given file, the watched
    /// directory), empty in records written before they were kept.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_file: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to_file: String,
}

impl RollbackOf {
    /// `v2.tar.gz (git_ref …) → v1.tar.gz (git_ref …)`.
    pub fn describe(&self) -> String {
        format!(
            "{} → {}",
            named(&self.from_file, &self.from_ref),
            named(&self.to_file, &self.to_ref)
        )
    }

    /// What is brought back: `v1.tar.gz (git_ref …)`.
    pub fn target(&self) -> String {
        named(&self.to_file, &self.to_ref)
    }

    /// What is replaced: `v2.tar.gz (git_ref …)`.
    pub fn replaced(&self) -> String {
        named(&self.from_file, &self.from_ref)
    }
}

/// A file name with its git_ref, or the git_ref alone when the name is not known.
pub fn named(file: &str, git_ref: &str) -> String {
    if file.is_empty() {
        git_ref.to_string()
    } else {
        format!("{file} (git_ref {git_ref})")
    }
}

/// The name a person knows a job's archive by: the file's name (not its path), the watched
/// directory's, or the URL.
pub fn file_name_of(job: &crate::queue::spool::Job) -> String {
    match &job.payload {
        crate::queue::spool::Payload::Archive { original, .. } => original
            .file_name()
            .unwrap_or(original.as_os_str())
            .to_string_lossy()
            .into_owned(),
        crate::queue::spool::Payload::Url { url } => url.clone(),
    }
}

/// A job's check, as far as it went. Present from the job's start when its app has a check,
/// so that a deployment that succeeded is never taken for finished before it was checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Check {
    /// Set when the job is a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackOf>,
    /// When the check began (the deployment succeeded): warmup and bounds count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the first healthy answer came: the soak counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_at: Option<Timestamp>,
    /// Probes made, and how many of them failed before the first healthy one.
    #[serde(default)]
    pub probes: u32,
    #[serde(default)]
    pub failures: u32,
    /// The last probe that decided something (the first healthy one, or the failing one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Why the verdict, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The rollback job this job made, recorded before it was made (so it is made once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_up: Option<String>,
}

impl Check {
    /// A check of a job that does not deploy an earlier archive.
    pub fn pending() -> Check {
        Check::default()
    }
}
