//! Deploy targets: where an inspected archive goes.
//!
//! The queue runs every job through one small trait, [`Target`]: drive this job from its
//! recorded state to a finished one. [`scalingo`] is the platform (driven by
//! [`crate::queue::runner::Runner`]); [`local`] extracts releases on this machine (driven by
//! [`crate::queue::release::ReleaseRunner`]). A new target is a new implementation, with no
//! change to the lanes.

use std::future::Future;
use std::pin::Pin;

use crate::queue::spool::{Job, SpoolError};

pub mod local;
pub mod scalingo;

/// A boxed future that the trait can return (no async-trait crate needed).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Deploys jobs somewhere.
pub trait Target: Send + Sync {
    /// Drives `job` from its recorded state until it is finished, or until the shutdown the
    /// target was built with fires (the job then stays unfinished, to resume after a restart).
    /// Every step is recorded in the spool; only a failure to record is returned as an error.
    fn run<'a>(&'a self, job: &'a mut Job) -> BoxFuture<'a, Result<(), SpoolError>>;
}
