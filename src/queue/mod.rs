//! Durable jobs and the lanes that run them: the spool of job records, making jobs, the retry
//! policy, durations on the monotonic clock, the observer events every target reports
//! through, and one lane per app.

pub mod check;
pub mod clock;
pub mod intake;
pub mod lane;
pub mod observe;
pub mod retry;
pub mod spool;
pub mod store;
