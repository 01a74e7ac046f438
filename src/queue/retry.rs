//! The retry policy: which errors are worth another try, and how long to wait before it.
//!
//! Pure functions only; the retry loops that use them are the deployments' (in
//! `deploy/scalingo/driver.rs`) and the outcome webhooks' (in `hooks.rs`).

use std::time::{Duration, SystemTime};

use crate::config::RetryConfig;

/// Whether an error may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Connect errors, timeouts, 408, 425, 429, 5xx, a broken upload: try again later.
    Transient,
    /// Everything else: trying again cannot help.
    Permanent,
}

/// Classifies an HTTP status code: the one classification of every HTTP call the project
/// makes (the platform's API, the upload storage, the outcome webhooks).
///
/// A 401 that reaches here is permanent: it is the token exchange refusing the API token (an API
/// call's 401 after a fresh exchange is reported as a transient error of its own). 409 is
/// permanent: the platform documents it as "already exists, or blocked by the resource
/// state", and nothing says the state changes by itself; 425 (too early) is transient.
pub fn classify_status(status: u16) -> Class {
    match status {
        408 | 425 | 429 => Class::Transient,
        500..=599 => Class::Transient,
        _ => Class::Permanent,
    }
}

/// Parses a `Retry-After` header value: either delay-seconds or an HTTP date.
///
/// A date in the past gives a zero delay; an unparsable value gives `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The exponential backoff ceiling for the `n`th consecutive failure (0-based):
/// `min(max_delay, initial · 2ⁿ)`.
pub fn backoff_ceiling(policy: &RetryConfig, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.min(30));
    policy
        .initial
        .checked_mul(factor)
        .unwrap_or(policy.max_delay)
        .min(policy.max_delay)
}

/// The delay before the next try: full jitter below the backoff ceiling, but never shorter
/// than what the server asked for with `Retry-After`. `unit` is a random number in `[0, 1)`.
pub fn next_delay(
    policy: &RetryConfig,
    failures: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Duration {
    let jittered = backoff_ceiling(policy, failures).mul_f64(unit.clamp(0.0, 1.0));
    match retry_after {
        Some(asked) => jittered.max(asked),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryConfig {
        RetryConfig {
            initial: Duration::from_secs(2),
            max_delay: Duration::from_secs(300),
            budget: Duration::from_secs(3600),
            retry_aborted: false,
        }
    }

    #[test]
    fn statuses_are_classified_as_the_design_says() {
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert_eq!(classify_status(s), Class::Transient, "{s}");
        }
        for s in [400, 401, 402, 403, 404, 409, 422] {
            assert_eq!(classify_status(s), Class::Permanent, "{s}");
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        assert_eq!(backoff_ceiling(&p, 0), Duration::from_secs(2));
        assert_eq!(backoff_ceiling(&p, 1), Duration::from_secs(4));
        assert_eq!(backoff_ceiling(&p, 5), Duration::from_secs(64));
        assert_eq!(backoff_ceiling(&p, 8), Duration::from_secs(300));
        assert_eq!(backoff_ceiling(&p, 1000), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_below_the_ceiling_and_honours_retry_after() {
        let p = policy();
        assert_eq!(next_delay(&p, 3, None, 0.0), Duration::ZERO);
        assert_eq!(next_delay(&p, 3, None, 0.5), Duration::from_secs(8));
        assert!(next_delay(&p, 3, None, 0.999) < Duration::from_secs(16));
        assert_eq!(
            next_delay(&p, 0, Some(Duration::from_secs(30)), 0.5),
            Duration::from_secs(30)
        );
        assert_eq!(
            next_delay(&p, 6, Some(Duration::from_secs(1)), 0.5),
            Duration::from_secs(64)
        );
    }
}
