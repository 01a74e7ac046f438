//! Pass 4 for an app's `verify = { … }`: the health check run after each deployment, and
//! whether an unhealthy deployment is rolled back.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::build::duration_value;
use super::raw::DurationText;
use super::report::Report;

/// The keys `verify` accepts, in the order `config/dropdeploy.toml` documents them.
pub(super) const VERIFY_KEYS: &[&str] = &[
    "url", "expect", "contains", "timeout", "attempts", "interval", "warmup", "soak", "rollback",
];

/// An app's `verify` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerify {
    pub(super) url: Option<Spanned<String>>,
    pub(super) expect: Option<Spanned<i64>>,
    pub(super) contains: Option<String>,
    pub(super) timeout: Option<Spanned<DurationText>>,
    pub(super) attempts: Option<Spanned<i64>>,
    pub(super) interval: Option<Spanned<DurationText>>,
    pub(super) warmup: Option<Spanned<DurationText>>,
    pub(super) soak: Option<Spanned<DurationText>>,
    pub(super) rollback: Option<bool>,
}

/// `verify`: how a deployment is checked once the target says it succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyConfig {
    /// `url`: the address probed with GET (`http://` or `https://`).
    pub url: String,
    /// `expect`: the HTTP status a healthy answer has (default 200).
    pub expect: u16,
    /// `contains`: a text a healthy answer's body must hold, if given.
    pub contains: Option<String>,
    /// `timeout`: how long one probe may take (default 5 s).
    pub timeout: Duration,
    /// `attempts`: how many probes may fail before the first healthy answer (default 5).
    pub attempts: u32,
    /// `interval`: the time between two probes (default 3 s).
    pub interval: Duration,
    /// `warmup`: how long to wait after the deployment before the first probe (default 10 s).
    pub warmup: Duration,
    /// `soak`: how long the app must keep answering well after its first healthy answer
    /// (default 60 s; 0 for none).
    pub soak: Duration,
    /// `rollback`: whether an unhealthy deployment brings back the last verified archive
    /// (default true).
    pub rollback: bool,
}

/// `verify`, checked; every problem is reported.
pub(super) fn build_verify(
    raw: &Spanned<RawVerify>,
    report: &mut Report<'_>,
) -> Result<VerifyConfig, ()> {
    let table = raw.span();
    let raw = raw.get_ref();
    let mut ok = true;
    let url = verify_url(raw, table, report, &mut ok);
    let expect = verify_expect(raw, report, &mut ok);
    let attempts = verify_attempts(raw, report, &mut ok);
    let d = |value, key, default, zero, report: &mut Report<'_>| {
        duration_value(value, key, "app.verify", default, zero, report)
    };
    let config = VerifyConfig {
        url,
        expect,
        contains: raw.contains.clone().filter(|c| !c.is_empty()),
        timeout: d(
            &raw.timeout,
            "timeout",
            Duration::from_secs(5),
            false,
            report,
        ),
        attempts,
        interval: d(
            &raw.interval,
            "interval",
            Duration::from_secs(3),
            false,
            report,
        ),
        warmup: d(&raw.warmup, "warmup", Duration::from_secs(10), true, report),
        soak: d(&raw.soak, "soak", Duration::from_secs(60), true, report),
        rollback: raw.rollback.unwrap_or(true),
    };
    if ok { Ok(config) } else { Err(()) }
}

/// `url`: absolute, http or https.
fn verify_url(
    raw: &RawVerify,
    table: std::ops::Range<usize>,
    report: &mut Report<'_>,
    ok: &mut bool,
) -> String {
    match &raw.url {
        Some(url) => {
            let text = url.get_ref().trim();
            if !(text.starts_with("http://")
                || text.starts_with("https://")
                || text.starts_with('/'))
            {
                report.at(
                    url.span(),
                    format!(
                        "`url` in `verify` must start with http:// or https://, or be a path on \
                         the app's URL such as \"/up\", found \"{}\"",
                        crate::redact::redact(text)
                    ),
                );
                *ok = false;
            }
            text.to_string()
        }
        None => {
            report.at(
                table,
                "`verify` needs a `url` to probe, e.g. verify = { url = \"https://my-app.osc-fr1.scalingo.io/up\" }",
            );
            *ok = false;
            String::new()
        }
    }
}

/// `expect`: an HTTP status (default 200).
fn verify_expect(raw: &RawVerify, report: &mut Report<'_>, ok: &mut bool) -> u16 {
    match &raw.expect {
        Some(code) => match u16::try_from(*code.get_ref()) {
            Ok(c) if (100..600).contains(&c) => c,
            _ => {
                report.at(
                    code.span(),
                    format!(
                        "`expect` in `verify` must be an HTTP status (100 to 599), found {}",
                        code.get_ref()
                    ),
                );
                *ok = false;
                200
            }
        },
        None => 200,
    }
}

/// `attempts`: 1 to 1000 (default 5).
fn verify_attempts(raw: &RawVerify, report: &mut Report<'_>, ok: &mut bool) -> u32 {
    match &raw.attempts {
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                report.at(
                    n.span(),
                    format!(
                        "`attempts` in `verify` must be 1 to 1000, found {}",
                        n.get_ref()
                    ),
                );
                *ok = false;
                5
            }
        },
        None => 5,
    }
}
