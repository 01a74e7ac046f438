//! The `on_outcome` tables (a top-level `[on_outcome]`, or `on_outcome = { … }` in an
//! `[[app]]`): the [`HookConfig`] type, its defaults, and the checks of pass 4. The hooks
//! themselves run in `crate::hooks`, which takes its configuration from here.

use std::time::Duration;

use toml::Spanned;

use super::build::duration_value;
use super::raw::RawHook;
use super::report::{Report, table_label};

/// How long one webhook attempt, or the whole command, may take when `timeout` is not given.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a webhook is tried in all when `retries` is not given.
pub const DEFAULT_HOOK_RETRIES: u32 = 3;
/// The outcome names `only` accepts (a history entry's `outcome`).
pub const HOOK_OUTCOMES: [&str; 6] = [
    "succeeded",
    "failed",
    "superseded",
    "verified",
    "unhealthy",
    "rolled_back",
];

/// One `on_outcome` hook: a webhook, a command, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// `webhook`: an http:// or https:// URL the outcome is POSTed to.
    pub webhook: Option<String>,
    /// `command`: a program and its arguments, run without a shell; empty for none.
    pub command: Vec<String>,
    /// `timeout`: the limit of one webhook attempt, and of the command's whole run
    /// (default 10 s).
    pub timeout: Duration,
    /// `retries`: how many times the webhook is tried in all (default 3, at least 1).
    pub retries: u32,
    /// `only`: the outcomes the hook runs for (names from [`HOOK_OUTCOMES`]); empty for all.
    pub only: Vec<String>,
}

impl HookConfig {
    /// Whether the hook runs for an outcome named `outcome` (`succeeded`, `failed`, …).
    pub fn wants(&self, outcome: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == outcome)
    }
}

impl Default for HookConfig {
    /// No webhook, no command, the default timeout and attempts.
    fn default() -> Self {
        HookConfig {
            webhook: None,
            command: Vec::new(),
            timeout: DEFAULT_HOOK_TIMEOUT,
            retries: DEFAULT_HOOK_RETRIES,
            only: Vec::new(),
        }
    }
}

/// `url` without what may hold a secret: query string, fragment and user info, for messages.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_query(None);
            parsed.set_fragment(None);
            if !parsed.username().is_empty() || parsed.password().is_some() {
                let _ = parsed.set_password(None);
                let _ = parsed.set_username("redacted");
            }
            parsed.to_string()
        }
        Err(_) => {
            let end = url.find(['?', '#']).unwrap_or(url.len());
            let base = &url[..end];
            // Without a parser, a user info part is anything up to an '@' in the authority.
            match (base.find("://"), base.rfind('@')) {
                (Some(scheme_end), Some(at)) if at > scheme_end => {
                    format!("{}redacted{}", &base[..scheme_end + 3], &base[at..])
                }
                _ => base.to_string(),
            }
        }
    }
}

/// Whether `url` can be a webhook: an absolute http:// or https:// URL with a host. The error
/// is a sentence that shows the URL redacted.
fn check_webhook_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(parsed)
            if matches!(parsed.scheme(), "http" | "https")
                && parsed.host_str().is_some_and(|h| !h.is_empty()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "\"{}\" is not an http:// or https:// URL, e.g. https://hooks.example.com/deploys",
            redact_url(url)
        )),
    }
}

/// An `on_outcome` table (`table` is `on_outcome` or `app.on_outcome`): a webhook, a command,
/// or both. `None` when it has problems (reported).
pub(super) fn build_hook(
    raw: &Spanned<RawHook>,
    table: &str,
    report: &mut Report<'_>,
) -> Option<HookConfig> {
    let whole = raw.span();
    let raw = raw.get_ref();
    let label = table_label(table);
    let mut ok = true;
    let webhook = match &raw.webhook {
        Some(url) => match check_webhook_url(url.get_ref()) {
            Ok(()) => Some(url.get_ref().clone()),
            Err(why) => {
                report.at(url.span(), format!("`webhook` {label}: {why}"));
                ok = false;
                None
            }
        },
        None => None,
    };
    let command = match &raw.command {
        Some(argv) if argv.get_ref().first().is_none_or(|p| p.trim().is_empty()) => {
            report.at(
                argv.span(),
                format!(
                    "`command` {label} has no program; give the program and its arguments, \
                     e.g. [\"/usr/local/bin/notify-deploy\", \"--quiet\"]"
                ),
            );
            ok = false;
            Vec::new()
        }
        Some(argv) => argv.get_ref().clone(),
        None => Vec::new(),
    };
    if raw.webhook.is_none() && raw.command.is_none() {
        let what = match table {
            "on_outcome" => "[on_outcome]",
            _ => "`on_outcome` in [[app]]",
        };
        report.at(
            whole,
            format!(
                "{what} has neither webhook nor command; give one or both, e.g. \
                 webhook = \"https://hooks.example.com/deploys\""
            ),
        );
        ok = false;
    }
    let timeout = duration_value(
        &raw.timeout,
        "timeout",
        table,
        DEFAULT_HOOK_TIMEOUT,
        false,
        report,
    );
    let retries = match &raw.retries {
        None => DEFAULT_HOOK_RETRIES,
        Some(n) => hook_retries(n, &label, report).unwrap_or_else(|| {
            ok = false;
            DEFAULT_HOOK_RETRIES
        }),
    };
    let only = match &raw.only {
        None => Vec::new(),
        Some(names) => hook_only(names, &label, report).unwrap_or_else(|| {
            ok = false;
            Vec::new()
        }),
    };
    ok.then_some(HookConfig {
        webhook,
        command,
        timeout,
        retries,
        only,
    })
}

/// `only`: a non-empty list of outcome names, each reported where it is written when it is
/// not one of [`HOOK_OUTCOMES`]. `None` when there was a problem (reported).
fn hook_only(
    names: &Spanned<Vec<Spanned<String>>>,
    label: &str,
    report: &mut Report<'_>,
) -> Option<Vec<String>> {
    let valid = HOOK_OUTCOMES.join(", ");
    if names.get_ref().is_empty() {
        report.at(
            names.span(),
            format!(
                "`only` {label} is empty: the hook would never run; leave `only` out to run it \
                 for every outcome, or list some of {valid}"
            ),
        );
        return None;
    }
    let mut ok = true;
    let mut only = Vec::new();
    for name in names.get_ref() {
        if HOOK_OUTCOMES.contains(&name.get_ref().as_str()) {
            if !only.contains(name.get_ref()) {
                only.push(name.get_ref().clone());
            }
        } else {
            report.at(
                name.span(),
                format!(
                    "`only` {label}: {:?} is not an outcome; expected one of {valid}",
                    name.get_ref()
                ),
            );
            ok = false;
        }
    }
    ok.then_some(only)
}

/// `retries`: at least 1. `None` when it is not (reported).
fn hook_retries(n: &Spanned<i64>, label: &str, report: &mut Report<'_>) -> Option<u32> {
    match u32::try_from(*n.get_ref()) {
        Ok(n) if n >= 1 => Some(n),
        _ => {
            report.at(
                n.span(),
                format!(
                    "`retries` {label} must be at least 1 (how many times the webhook is \
                     tried in all), found {}",
                    n.get_ref()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_webhooks() {
        assert!(check_webhook_url("https://hooks.example.com/deploys").is_ok());
        assert!(check_webhook_url("http://127.0.0.1:8080").is_ok());
        let why = check_webhook_url("ftp://hooks.example.com/?key=s3cret").unwrap_err();
        assert!(why.contains("is not an http:// or https:// URL"), "{why}");
        assert!(!why.contains("s3cret"), "{why}");
        assert!(check_webhook_url("hooks.example.com").is_err());
        assert!(check_webhook_url("https://").is_err());
    }
}
