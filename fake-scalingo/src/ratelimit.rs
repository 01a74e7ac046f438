//! The platform's rate limit: at most `requests` API requests in any `window` (Scalingo: 60 a
//! minute), beyond which it answers 429 `Retry later` in plain text with a `Retry-After`.
//!
//! Whether the platform counts per token or per address is not documented; the fake counts
//! every request to an API endpoint (the token exchange, the regions and the stream's dial
//! included), whoever sends it: the strict side. Storage transfers (upload and download URLs)
//! are not API requests and are not counted, nor are the answers 429 themselves, so a client
//! that waits the `Retry-After` it was given gets through.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{Endpoint, Shared};

/// A sliding-window limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
}

impl RateLimit {
    /// Scalingo's documented limit: 60 requests a minute.
    pub fn per_minute(requests: u32) -> RateLimit {
        RateLimit {
            requests,
            window: Duration::from_secs(60),
        }
    }
}

/// Whether the endpoint counts against the limit.
fn counted(endpoint: Endpoint) -> bool {
    !matches!(endpoint, Endpoint::Upload | Endpoint::Download)
}

/// Counts the request, or returns the `Retry-After` (whole seconds, rounded up) to answer with
/// when it is over the limit.
pub(crate) fn admit(shared: &Shared, endpoint: Option<Endpoint>) -> Result<(), u64> {
    let (Some(limit), Some(endpoint)) = (shared.cfg.rate_limit, endpoint) else {
        return Ok(());
    };
    if !counted(endpoint) {
        return Ok(());
    }
    let mut st = shared.lock();
    let now = Instant::now();
    admit_at(&mut st.rate_window, limit, now)
}

fn admit_at(window: &mut VecDeque<Instant>, limit: RateLimit, now: Instant) -> Result<(), u64> {
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= limit.window)
    {
        window.pop_front();
    }
    if window.len() < limit.requests as usize {
        window.push_back(now);
        return Ok(());
    }
    let oldest = window.front().copied().unwrap_or(now);
    let left = limit.window.saturating_sub(now.duration_since(oldest));
    Err(left.as_secs_f64().ceil().max(1.0) as u64)
}
