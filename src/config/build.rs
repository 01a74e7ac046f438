//! Pass 4, the meaning of the values: paths resolved against the config file's directory,
//! durations, URLs and regions, then the typed [`Config`] with every problem in the report.
//! Each `[[app]]` is built in `app.rs`, each `on_outcome` table in `on_outcome.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::app::{SeenApps, build_app};
use super::env::{LeftForEnv, TokenFile};
use super::on_outcome::build_hook;
use super::raw::{DurationText, RawConfig, RawIntake, RawRetry, RawScalingo, SizeText, parse_size};
use super::report::{Report, table_label};
use super::{
    Config, DEFAULT_MAX_ARCHIVE_BYTES, DEFAULT_SHUTDOWN_GRACE, RetryConfig, ScalingoConfig,
    region_api_url,
};

/// The directory that relative paths in the file are relative to, made absolute so that a
/// later change of working directory does not change what they mean.
pub(super) fn config_dir(origin: &Path) -> PathBuf {
    let parent = match origin.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}

pub(super) fn resolve(base: &Path, value: &str) -> PathBuf {
    normalize(&base.join(value))
}

/// Removes `.` and `..` components lexically, so that paths in messages read as a person
/// would write them (`/srv/var/drop`, not `/srv/config/../var/drop`).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A path value: not empty, resolved against the config file's directory.
pub(super) fn path_value(
    value: &Spanned<String>,
    key: &str,
    table: &str,
    base: &Path,
    report: &mut Report<'_>,
) -> Option<PathBuf> {
    if value.get_ref().trim().is_empty() {
        report.at(
            value.span(),
            format!("`{key}` {} is empty; give a path", table_label(table)),
        );
        return None;
    }
    Some(resolve(base, value.get_ref()))
}

pub(super) fn duration_value(
    value: &Option<Spanned<DurationText>>,
    key: &str,
    table: &str,
    default: Duration,
    allow_zero: bool,
    report: &mut Report<'_>,
) -> Duration {
    let Some(value) = value else {
        return default;
    };
    let text = &value.get_ref().0;
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() && !allow_zero => {
            report.at(
                value.span(),
                format!(
                    "`{key}` {} must be longer than zero, found \"{text}\"",
                    table_label(table)
                ),
            );
            default
        }
        Ok(duration) => duration,
        Err(_) => {
            report.at(
                value.span(),
                format!(
                    "invalid duration \"{text}\" for `{key}` {}: expected a number and a unit, \
                     e.g. \"30s\", \"5m\" or \"1h\"",
                    table_label(table)
                ),
            );
            default
        }
    }
}

pub(super) fn is_region_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(super) fn region_message(value: &str) -> String {
    format!(
        "invalid region \"{value}\": a region name is lowercase letters, digits and dashes, \
         e.g. osc-fr1 or osc-secnum-fr1"
    )
}

/// An http(s) URL without its trailing slashes, or why it is not one.
pub(super) fn base_url(value: &str) -> Result<String, String> {
    let trimmed = value.trim_end_matches('/');
    let host = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"));
    match host {
        Some(host)
            if !host.is_empty()
                && !host.starts_with('/')
                && !trimmed.chars().any(char::is_whitespace) =>
        {
            Ok(trimmed.to_string())
        }
        _ => Err(format!(
            "\"{value}\" is not an http:// or https:// URL, e.g. https://api.osc-fr1.scalingo.com"
        )),
    }
}

/// Pass 4: the typed configuration, with every problem of meaning in `report`, and the token
/// file to read unless the environment holds the token.
pub(super) fn build(raw: RawConfig, base: &Path, report: &mut Report<'_>) -> (Config, LeftForEnv) {
    let mut config = Config::default();
    build_top_level(&raw, base, &mut config, report);
    if let Some(hook) = &raw.on_outcome {
        config.on_outcome = build_hook(hook, "on_outcome", report);
    }
    let token_file = raw
        .scalingo
        .as_ref()
        .and_then(|scalingo| build_scalingo(scalingo, base, &mut config.scalingo, report));
    if let Some(retry) = &raw.retry {
        build_retry(retry, &mut config.retry, report);
    }
    if let Some(file) = raw.intake.as_ref().and_then(|i| i.token_file.as_ref()) {
        config.intake.token_file = path_value(file, "token_file", "intake", base, report);
    }
    if let Some(intake) = &raw.intake {
        config.intake.tls = intake_tls(intake, base, report);
        config.intake.read_timeout = duration_value(
            &intake.read_timeout,
            "read_timeout",
            "intake",
            super::DEFAULT_INTAKE_READ_TIMEOUT,
            false,
            report,
        );
        config.intake.listen = intake_listen(intake, config.intake.tls.is_some(), report);
    }
    // A 429 without Retry-After pauses the client on the project's one retry policy.
    config.scalingo.rate_limit_backoff = (config.retry.initial, config.retry.max_delay);
    let mut seen = SeenApps::default();
    config.apps = raw
        .app
        .iter()
        .filter_map(|app| build_app(app, base, report, &mut seen))
        .collect();
    let region_given = raw.scalingo.as_ref().is_some_and(|s| s.region.is_some());
    let mut left = LeftForEnv {
        token_file,
        region_given,
        ..LeftForEnv::default()
    };
    if let Some(cluster) = &raw.cluster {
        (config.cluster, left.cluster) = super::cluster::build_cluster(cluster, base, report);
    }
    (config, left)
}

/// The top-level keys: `state_dir`, `max_parallel`, `max_archive_size`, `shutdown_grace` and
/// `metrics_listen`.
fn build_top_level(raw: &RawConfig, base: &Path, config: &mut Config, report: &mut Report<'_>) {
    if let Some(state_dir) = &raw.state_dir
        && let Some(path) = path_value(state_dir, "state_dir", "", base, report)
    {
        config.state_dir = path;
    }
    if let Some(n) = raw
        .max_parallel
        .as_ref()
        .and_then(|n| max_parallel(n, report))
    {
        config.max_parallel = n;
    }
    if let Some(n) = raw
        .max_archive_size
        .as_ref()
        .and_then(|size| max_archive_bytes(size, report))
    {
        config.max_archive_bytes = n;
    }
    config.shutdown_grace = duration_value(
        &raw.shutdown_grace,
        "shutdown_grace",
        "",
        DEFAULT_SHUTDOWN_GRACE,
        true,
        report,
    );
    if let Some(addr) = raw
        .metrics_listen
        .as_ref()
        .and_then(|listen| metrics_listen(listen, report))
    {
        config.metrics_listen = Some(addr);
    }
}

/// `max_parallel`: at least 1. `None` when it is not (reported).
fn max_parallel(value: &Spanned<i64>, report: &mut Report<'_>) -> Option<usize> {
    match usize::try_from(*value.get_ref()) {
        Ok(n) if n >= 1 => Some(n),
        _ => {
            report.at(
                value.span(),
                format!(
                    "`max_parallel` must be at least 1 (how many apps may deploy at once), \
                     found {}",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

/// `max_archive_size`: a positive number of bytes, or a size with a unit (`"300MB"`). `None`
/// when it is not (reported).
fn max_archive_bytes(value: &Spanned<SizeText>, report: &mut Report<'_>) -> Option<u64> {
    let (bytes, found) = match value.get_ref() {
        SizeText::Bytes(n) => (u64::try_from(*n).ok(), n.to_string()),
        SizeText::Text(text) => (parse_size(text), format!("\"{text}\"")),
    };
    match bytes {
        Some(n) if n >= 1 => Some(n),
        _ => {
            report.at(
                value.span(),
                format!(
                    "`max_archive_size` must be a positive size: a number of bytes \
                     ({DEFAULT_MAX_ARCHIVE_BYTES}) or a number and a unit (\"300MB\", \
                     \"300MiB\"), found {found}"
                ),
            );
            None
        }
    }
}

/// `metrics_listen`: an IP address and a port. `None` when it is not (reported).
fn metrics_listen(value: &Spanned<String>, report: &mut Report<'_>) -> Option<SocketAddr> {
    match value.get_ref().trim().parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            report.at(
                value.span(),
                format!(
                    "`metrics_listen` must be an IP address and a port, e.g. \"127.0.0.1:9464\" \
                     or \"[::1]:9464\", found \"{}\"",
                    value.get_ref()
                ),
            );
            None
        }
    }
}

/// `[intake] listen`: an IP address and a port; plain HTTP off loopback only when
/// `insecure_plain_http = true` says so (a token sent in clear could be read on the way).
fn intake_listen(intake: &RawIntake, tls: bool, report: &mut Report<'_>) -> Option<SocketAddr> {
    let value = intake.listen.as_ref()?;
    let Ok(addr) = value.get_ref().trim().parse::<SocketAddr>() else {
        report.at(
            value.span(),
            format!(
                "`listen` in [intake] must be an IP address and a port, e.g. \"127.0.0.1:8473\", \
                 found \"{}\"",
                value.get_ref()
            ),
        );
        return None;
    };
    let plain_allowed = intake
        .insecure_plain_http
        .as_ref()
        .is_some_and(|v| *v.get_ref());
    if !addr.ip().is_loopback() && !plain_allowed && !tls {
        report.at(
            value.span(),
            format!(
                "`listen` in [intake] is {addr}, not a loopback address: the intake speaks plain \
                 HTTP, so bearer tokens and archives would cross the network in clear; set \
                 `tls_cert` and `tls_key`, or listen on 127.0.0.1 behind a TLS proxy, or set \
                 `insecure_plain_http = true` in [intake] to accept that"
            ),
        );
        return None;
    }
    Some(addr)
}

/// `[intake] tls_cert` and `tls_key`: both or neither.
fn intake_tls(
    intake: &RawIntake,
    base: &Path,
    report: &mut Report<'_>,
) -> Option<(PathBuf, PathBuf)> {
    let cert = intake.tls_cert.as_ref();
    let key = intake.tls_key.as_ref();
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let cert = path_value(cert, "tls_cert", "intake", base, report)?;
            let key = path_value(key, "tls_key", "intake", base, report)?;
            Some((cert, key))
        }
        (Some(one), None) | (None, Some(one)) => {
            report.at(
                one.span(),
                "[intake] needs both `tls_cert` (the certificate chain, PEM) and `tls_key` (its \
                 private key, PEM), or neither",
            );
            None
        }
        (None, None) => None,
    }
}

/// `[retry]` over its defaults.
fn build_retry(raw: &RawRetry, r: &mut RetryConfig, report: &mut Report<'_>) {
    r.initial = duration_value(&raw.initial, "initial", "retry", r.initial, false, report);
    r.max_delay = duration_value(
        &raw.max_delay,
        "max_delay",
        "retry",
        r.max_delay,
        false,
        report,
    );
    r.budget = duration_value(&raw.budget, "budget", "retry", r.budget, false, report);
    if r.initial > r.max_delay
        && let Some(initial) = &raw.initial
    {
        report.warn_at(
            initial.span(),
            format!(
                "`initial` in [retry] ({}) is longer than `max_delay` ({}): every retry waits \
                 max_delay",
                crate::human::duration(r.initial),
                crate::human::duration(r.max_delay)
            ),
        );
    }
    r.retry_aborted = raw.retry_aborted.unwrap_or(r.retry_aborted);
}

/// `[scalingo]` over its defaults; the `token_file`, when one is given, for the environment
/// step.
fn build_scalingo(
    raw: &RawScalingo,
    base: &Path,
    s: &mut ScalingoConfig,
    report: &mut Report<'_>,
) -> Option<TokenFile> {
    if let Some(region) = &raw.region {
        if is_region_name(region.get_ref()) {
            s.region = Some(region.get_ref().clone());
            s.api_url = region_api_url(region.get_ref());
        } else {
            report.at(
                region.span(),
                format!(
                    "`region` in [scalingo]: {}",
                    region_message(region.get_ref())
                ),
            );
        }
    }
    // An explicit api_url wins over the region.
    if let Some(api_url) = &raw.api_url {
        match base_url(api_url.get_ref()) {
            Ok(url) => {
                s.api_url = url;
                s.api_url_explicit = true;
                if raw.region.is_none() {
                    s.region = None;
                }
            }
            Err(why) => report.at(api_url.span(), format!("`api_url` in [scalingo]: {why}")),
        }
    }
    if let Some(auth_url) = &raw.auth_url {
        match base_url(auth_url.get_ref()) {
            Ok(url) => s.auth_url = url,
            Err(why) => report.at(auth_url.span(), format!("`auth_url` in [scalingo]: {why}")),
        }
    }
    s.timeout = duration_value(
        &raw.timeout,
        "timeout",
        "scalingo",
        s.timeout,
        false,
        report,
    );
    s.follow_interval = duration_value(
        &raw.follow_interval,
        "follow_interval",
        "scalingo",
        s.follow_interval,
        false,
        report,
    );
    s.deploy_timeout = duration_value(
        &raw.deploy_timeout,
        "deploy_timeout",
        "scalingo",
        s.deploy_timeout,
        false,
        report,
    );
    if let Some(limit) = &raw.api_rate_limit {
        match u32::try_from(*limit.get_ref()) {
            Ok(n) if n >= 1 => s.api_rate_limit = n,
            _ => report.at(
                limit.span(),
                format!(
                    "`api_rate_limit` in [scalingo]: {} is not a number of requests a minute \
                     (at least 1; the platform allows 60)",
                    limit.get_ref()
                ),
            ),
        }
    }
    let token_file = raw.token_file.as_ref()?;
    path_value(token_file, "token_file", "scalingo", base, report)
        .map(|path| (path, token_file.span()))
}
