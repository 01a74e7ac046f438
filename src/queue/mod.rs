//! Durable jobs: the spool of job records, the retry policy, and the runner that drives a job
//! through its state machine.

pub mod intake;
pub mod lane;
pub mod release;
pub mod retry;
pub mod runner;
pub mod spool;
