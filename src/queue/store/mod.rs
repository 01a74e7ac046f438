//! The store boundary: where job records, archives, outcomes and lane leases are kept durably.
//!
//! Two stores stand behind it:
//! - [`LocalStore`]: this machine's `state_dir` (the spool's `job.json` files, the app locks).
//!   The embedded default: one node, no database.
//! - the fleet's PostgreSQL (`crate::fleet::PgStore`, `[cluster] database_url`): every node
//!   of the fleet sees the same jobs; the local spool is then the node's working copy of the
//!   jobs whose lane it holds.
//!
//! Every write of a job's record goes through [`crate::queue::spool::Spool::save`], which
//! hands it to the spool's store: that is the one place where the lane's lease (the fence) is
//! checked. A store's methods block (file or database I/O): call them off the async runtime
//! (`blocking::run`), never on a runtime worker thread.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use crate::queue::spool::Job;

mod local;
pub use local::LocalStore;

/// The right to drive one app's lane, for a while.
///
/// `token` is the fencing token: it grows every time the lease changes hands, and every write
/// of a job record carries it, so a node that lost its lease (paused past it, cut off) cannot
/// write, and stops driving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub app: String,
    /// The node that holds it.
    pub node: String,
    pub token: i64,
    /// Until when the store grants it, by the store's clock (shown by `status`).
    pub until: SystemTime,
    /// When this node last had it granted or renewed, on its monotonic clock: the node treats
    /// the lease as gone `lease` after this, whatever any wall clock says.
    pub renewed: Instant,
}

impl Lease {
    /// Whether this node may still act under the lease, with `margin` to spare (checked right
    /// before a side effect such as posting a deployment).
    pub fn fresh(&self, lease: Duration, margin: Duration) -> bool {
        self.renewed.elapsed() + margin < lease
    }
}

/// Who holds an app's lane (for `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub app: String,
    pub node: String,
    pub token: i64,
    pub until: SystemTime,
}

/// A finished job's outcome as the store keeps it: its history entry (a JSON object, the
/// history's line), and whether the node that claimed its file has placed that file in
/// `done/` or `failed/`.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub job: String,
    pub app: String,
    pub entry: serde_json::Value,
}

/// Errors of a store. `Fenced` and `Unavailable` are not about the job: the job stays where
/// it is, for whoever holds its lane next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// This node no longer holds the app's lane: it must stop driving it.
    #[error("app {app}: this node ({node}) no longer holds the app's lane (its lease ended)")]
    Fenced { app: String, node: String },
    /// The store cannot be reached now (the database is down or restarting).
    #[error("the job store is unreachable: {0}")]
    Unavailable(String),
    /// No such job.
    #[error("job {0} is not in the store")]
    Missing(String),
    /// A file of the local store.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A record that cannot be read back.
    #[error("job record {id} is unreadable: {reason}")]
    Record { id: String, reason: String },
}

/// The store boundary. See the [module docs](self).
pub trait Store: Send + Sync + std::fmt::Debug {
    /// This node's name (the host name unless configured).
    fn node(&self) -> &str;

    /// Whether the store is shared by several nodes (PostgreSQL), so that jobs reach this
    /// node only through the leases it holds.
    fn shared(&self) -> bool;

    /// Makes a new job the store's: its archive (streamed, content-addressed by SHA-256; none
    /// for a URL job) and its record, which gets its arrival number (`job.seq`) here: if it
    /// has none (the local store), or always (a shared store gives the fleet's number,
    /// replacing the local spool's). Durable when it returns. Any node may add jobs for any
    /// app, lease or not. Adding a job id that exists already changes nothing and is not an
    /// error: `job.seq` is then set to the stored job's.
    fn add(&self, job: &mut Job, archive: Option<&Path>) -> Result<(), StoreError>;

    /// Writes a job's record, if this node holds the lease of the job's app with the token
    /// it knows ([`StoreError::Fenced`] otherwise).
    fn save(&self, job: &Job) -> Result<(), StoreError>;

    /// Records a finished job: its history entry, once (a second call for the same job
    /// changes nothing), and the job leaves the unfinished ones. Fenced like [`Store::save`].
    fn finish(&self, job: &Job, entry: &serde_json::Value) -> Result<(), StoreError>;

    /// One job's record, finished or not.
    fn load(&self, id: &str) -> Result<Job, StoreError>;

    /// The unfinished jobs (of one app, or all), in arrival order.
    fn jobs(&self, app: Option<&str>) -> Result<Vec<Job>, StoreError>;

    /// Copies a job's archive to `to` (a new file), checking its SHA-256 on the way.
    fn fetch_archive(&self, id: &str, to: &Path) -> Result<(), StoreError>;

    /// The newest finished jobs' history entries (of one app, or all), newest last, at most
    /// `limit`.
    fn history(&self, app: Option<&str>, limit: usize) -> Result<Vec<Finished>, StoreError>;

    /// Takes the app's lane for `lease` if nobody holds it (or its lease ran out): `None`
    /// when another node holds it. A lease taken over gets a greater token.
    fn acquire(&self, app: &str, lease: Duration) -> Result<Option<Lease>, StoreError>;

    /// Extends a lease this node holds; `None` when it was lost (ran out and taken over).
    fn renew(&self, lease: &Lease, duration: Duration) -> Result<Option<Lease>, StoreError>;

    /// Gives a lease up (at shutdown), so another node takes the lane at once.
    fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Who holds which lane, and until when.
    fn holders(&self) -> Result<Vec<Holder>, StoreError>;

    /// The lease this node holds for `app` now, if any (the one [`Store::save`] checks).
    fn lease_of(&self, app: &str) -> Option<Lease>;
}
