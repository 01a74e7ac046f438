//! One probe (an HTTP GET of the check's URL, bounded by its timeout) and the check's pure
//! decisions: what the next step is, given what the record says so far.

use std::time::{Duration, Instant};

use crate::config::VerifyConfig;
use crate::queue::check::{Check, EXCERPT_CHARS, Probe, Verdict};
use crate::queue::spool::Timestamp;

/// How much of a body is read, at most (enough for `contains` on a health page).
const BODY_LIMIT: usize = 64 * 1024;

/// Asks `url` (the check's) once. Never fails: no answer is an unhealthy probe saying why, and
/// headers whose body does not come (or breaks) are an unhealthy probe with their status.
pub async fn probe(http: &reqwest::Client, cfg: &VerifyConfig, url: &str) -> Probe {
    let started = Instant::now();
    // The status and when it came, once the headers are in.
    let mut headers: Option<(u16, Duration)> = None;
    let answer = tokio::time::timeout(cfg.timeout, async {
        let mut resp = http.get(url).send().await?;
        let status = resp.status().as_u16();
        headers = Some((status, started.elapsed()));
        let mut body = Vec::new();
        while body.len() < BODY_LIMIT
            && let Some(chunk) = resp.chunk().await?
        {
            body.extend_from_slice(&chunk);
        }
        Ok::<_, reqwest::Error>((status, body))
    })
    .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    if let Some((status, after)) = headers
        && !matches!(answer, Ok(Ok(_)))
    {
        let what = match &answer {
            Ok(Err(e)) => format!("the body broke: {}", describe_error(e)),
            _ => format!(
                "the body did not come within the {} timeout",
                humantime::format_duration(cfg.timeout)
            ),
        };
        return Probe {
            status: Some(status),
            latency_ms,
            excerpt: String::new(),
            error: Some(crate::redact::redact_owned(format!(
                "headers in {} ms, but {what}",
                after.as_millis()
            ))),
            healthy: false,
        };
    }
    match answer {
        Ok(Ok((status, body))) => {
            let text = String::from_utf8_lossy(&body);
            let healthy =
                status == cfg.expect && cfg.contains.as_ref().is_none_or(|c| text.contains(c));
            Probe {
                status: Some(status),
                latency_ms,
                excerpt: crate::redact::redact_owned(crate::human::one_line(&text, EXCERPT_CHARS)),
                error: None,
                healthy,
            }
        }
        Ok(Err(e)) => Probe {
            status: None,
            latency_ms,
            excerpt: String::new(),
            error: Some(crate::redact::redact_owned(describe_error(&e))),
            healthy: false,
        },
        Err(_) => Probe {
            status: None,
            latency_ms,
            excerpt: String::new(),
            error: Some(format!(
                "timed out after {}",
                humantime::format_duration(cfg.timeout)
            )),
            healthy: false,
        },
    }
}

/// A reqwest error with its causes, on one line.
fn describe_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "cannot connect".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What the check does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Wait until the warmup ends (this long), then probe.
    Warmup(Duration),
    /// Probe now (`soak`: the app answered well already, and must keep doing so).
    Probe { soak: bool },
}

/// The next step of a check whose record says `check`, `started` after the check began
/// (measured on the monotonic clock: see [`crate::queue::clock`]).
pub fn next(check: &Check, cfg: &VerifyConfig, started: Duration) -> Next {
    if check.probes == 0 && started < cfg.warmup {
        return Next::Warmup(cfg.warmup - started);
    }
    Next::Probe {
        soak: check.healthy_at.is_some(),
    }
}

/// Records a probe's answer in `check` and says whether it decides the check (with why).
/// `now` is recorded as the first healthy answer's time; `healthy_for` is how long ago that
/// answer came, if one did (measured on the monotonic clock).
pub fn record(
    check: &mut Check,
    cfg: &VerifyConfig,
    probe: Probe,
    now: Timestamp,
    healthy_for: Option<Duration>,
) -> Option<(Verdict, String)> {
    check.probes += 1;
    let healthy = check.healthy_at.map(|_| healthy_for.unwrap_or_default());
    let decided = match healthy {
        None if probe.healthy => {
            check.healthy_at = Some(now);
            cfg.soak
                .is_zero()
                .then(|| (Verdict::Verified, format!("healthy: {}", probe.describe())))
        }
        None => {
            check.failures += 1;
            (check.failures >= cfg.attempts).then(|| {
                (
                    Verdict::Unhealthy,
                    format!(
                        "no healthy answer (expected HTTP {}{}) in {} attempt(s); last: {}",
                        cfg.expect,
                        cfg.contains
                            .as_ref()
                            .map(|c| format!(" containing \"{c}\""))
                            .unwrap_or_default(),
                        check.failures,
                        probe.describe()
                    ),
                )
            })
        }
        Some(healthy) if !probe.healthy => Some((
            Verdict::Unhealthy,
            format!(
                "stopped answering well {} s after its first healthy answer (during the {} soak): {}",
                healthy.as_secs(),
                humantime::format_duration(cfg.soak),
                probe.describe()
            ),
        )),
        Some(healthy) if healthy >= cfg.soak => Some((
            Verdict::Verified,
            format!(
                "healthy, and still answering well after the {} soak: {}",
                humantime::format_duration(cfg.soak),
                probe.describe()
            ),
        )),
        Some(_) => None,
    };
    if decided.is_some() || check.last.is_none() || !probe.healthy || check.probes == 1 {
        check.last = Some(probe);
    }
    decided
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VerifyConfig {
        VerifyConfig {
            url: "http://127.0.0.1:1/up".into(),
            expect: 200,
            contains: None,
            timeout: Duration::from_secs(1),
            attempts: 2,
            interval: Duration::from_secs(1),
            warmup: Duration::from_secs(10),
            soak: Duration::from_secs(30),
            rollback: true,
        }
    }

    fn answer(status: u16) -> Probe {
        Probe {
            status: Some(status),
            latency_ms: 3,
            excerpt: "x".into(),
            error: None,
            healthy: status == 200,
        }
    }

    #[test]
    fn the_warmup_is_waited_once_from_the_recorded_start() {
        let mut check = Check {
            started_at: Some(100),
            ..Check::default()
        };
        let secs = Duration::from_secs;
        assert_eq!(next(&check, &cfg(), secs(4)), Next::Warmup(secs(6)));
        assert_eq!(next(&check, &cfg(), secs(10)), Next::Probe { soak: false });
        check.probes = 1;
        assert_eq!(next(&check, &cfg(), secs(1)), Next::Probe { soak: false });
    }

    #[test]
    fn failures_before_the_first_healthy_answer_are_bounded_by_attempts() {
        let mut check = Check::default();
        assert_eq!(record(&mut check, &cfg(), answer(500), 1, None), None);
        let (verdict, why) = record(&mut check, &cfg(), answer(502), 2, None).unwrap();
        assert_eq!(verdict, Verdict::Unhealthy);
        assert!(
            why.contains("2 attempt(s)") && why.contains("HTTP 502"),
            "{why}"
        );
    }

    #[test]
    fn a_healthy_app_is_verified_after_the_soak_and_one_that_dies_is_not() {
        let secs = |n| Some(Duration::from_secs(n));
        let mut check = Check::default();
        assert_eq!(record(&mut check, &cfg(), answer(200), 10, None), None);
        assert_eq!(check.healthy_at, Some(10));
        assert_eq!(record(&mut check, &cfg(), answer(200), 20, secs(10)), None);
        let (verdict, _) = record(&mut check, &cfg(), answer(200), 40, secs(30)).unwrap();
        assert_eq!(verdict, Verdict::Verified);

        let mut check = Check::default();
        record(&mut check, &cfg(), answer(200), 10, None);
        let (verdict, why) = record(&mut check, &cfg(), answer(503), 25, secs(15)).unwrap();
        assert_eq!(verdict, Verdict::Unhealthy);
        assert!(why.contains("15 s after"), "{why}");
    }

    /// Issue 21: headers that came without their body were reported as "no answer".
    #[tokio::test]
    async fn headers_without_their_body_say_so_with_their_status() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).unwrap();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
                .unwrap();
            // Keep the connection open, the body never finished, until the probe is done.
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
        });
        let cfg = VerifyConfig {
            timeout: Duration::from_millis(500),
            ..cfg()
        };
        let http = crate::http::client_builder().build().unwrap();
        let probe = probe(&http, &cfg, &format!("http://{addr}/up")).await;
        done_tx.send(()).unwrap();
        server.join().unwrap();
        assert_eq!(probe.status, Some(200), "{probe:?}");
        assert!(!probe.healthy);
        let said = probe.describe();
        assert!(
            said.contains("HTTP 200")
                && said.contains("headers in")
                && said.contains("the body did not come within the 500ms timeout"),
            "{said}"
        );
        assert!(!said.contains("no answer"), "{said}");
    }

    #[test]
    fn without_a_soak_the_first_healthy_answer_verifies() {
        let cfg = VerifyConfig {
            soak: Duration::ZERO,
            ..cfg()
        };
        let mut check = Check::default();
        assert_eq!(
            record(&mut check, &cfg, answer(200), 1, None).map(|d| d.0),
            Some(Verdict::Verified)
        );
    }
}
