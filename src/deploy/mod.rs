//! Deploy targets: where an inspected archive goes.
//!
//! A lane drives each job through one small trait, [`crate::queue::lane::Target`]: drive this
//! job from its recorded state to a finished one. [`scalingo`] is the platform (its client,
//! and [`scalingo::driver::Runner`], the job's state machine against it); [`local`] extracts
//! releases on this machine ([`local::driver::ReleaseRunner`]). [`build`] is the one place
//! that turns an app's configuration into a ready target: a new target is a new module and a
//! new arm there, with no change to the lanes.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{RetryConfig, TargetConfig};
use crate::queue::lane::Target;
use crate::queue::observe::Observer;
use crate::queue::spool::Spool;
use crate::shutdown::Shutdown;

pub mod local;
pub mod scalingo;

/// What a target needs besides the app's own settings.
#[derive(Clone)]
pub struct Wiring {
    /// The Scalingo client; `None` when no app deploys there (no token needed then).
    pub client: Option<Arc<scalingo::api::ScalingoClient>>,
    pub spool: Spool,
    pub observer: Arc<dyn Observer>,
    pub shutdown: Shutdown,
}

/// How a Scalingo app's jobs are driven.
#[derive(Debug, Clone)]
pub struct Pacing {
    pub retry: RetryConfig,
    pub follow_interval: Duration,
    pub deploy_timeout: Duration,
    /// The app's own Scalingo region, when it is not the client's (one client per region).
    pub region: Option<String>,
    /// Follow the deployment to its end (`false`: `deploy --no-follow`, the job stops once the
    /// deployment is created).
    pub follow: bool,
    /// Fetch the build output as it grows, for [`crate::queue::observe::Event::Output`]
    /// (`watch` prints it; the daemon has no one to show it to).
    pub output: bool,
}

/// The target of an app: its jobs go where `target` says. Errors when the app deploys to
/// Scalingo and no client (no API token) was given.
pub fn build(
    target: &TargetConfig,
    pacing: &Pacing,
    wiring: &Wiring,
) -> Result<Arc<dyn Target>, String> {
    Ok(match target {
        TargetConfig::Local(local) => Arc::new(local::driver::ReleaseRunner::new(
            Arc::new(local::LocalTarget::new(local)),
            wiring.spool.clone(),
            wiring.observer.clone(),
            wiring.shutdown.clone(),
        )),
        TargetConfig::Scalingo => {
            let client = wiring
                .client
                .clone()
                .ok_or("no Scalingo client (no API token)")?;
            let client = match &pacing.region {
                Some(region) => client.in_region(region),
                None => client,
            };
            let mut runner = scalingo::driver::Runner::new(
                client,
                wiring.spool.clone(),
                pacing.retry.clone(),
                pacing.follow_interval,
                wiring.observer.clone(),
            )
            .with_deploy_timeout(pacing.deploy_timeout)
            .with_shutdown(wiring.shutdown.clone());
            if !pacing.follow {
                runner = runner.without_follow();
            }
            if pacing.output {
                runner = runner.with_output();
            }
            Arc::new(runner)
        }
    })
}
