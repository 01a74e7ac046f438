//! Passes 1 to 3 over a config file's text: TOML syntax (an inline API token is refused
//! before any other message), key names against the keys each table accepts, and value types
//! through `serde` into raw structs that keep each value's span for pass 4.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::report::{Report, table_label};

/// Key names that mean "the API token written inline", refused wherever they appear.
const INLINE_TOKEN_KEYS: [&str; 3] = ["token", "api_token", "scalingo_api_token"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) max_parallel: Option<Spanned<i64>>,
    pub(super) max_archive_size: Option<Spanned<SizeText>>,
    pub(super) shutdown_grace: Option<Spanned<DurationText>>,
    pub(super) metrics_listen: Option<Spanned<String>>,
    pub(super) scalingo: Option<RawScalingo>,
    pub(super) retry: Option<RawRetry>,
    pub(super) on_outcome: Option<Spanned<RawHook>>,
    pub(super) intake: Option<RawIntake>,
    pub(super) cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    pub(super) app: Vec<Spanned<RawApp>>,
}

/// `[intake]`: who may act through the daemon's HTTP listener (the status page's actions).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIntake {
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) listen: Option<Spanned<String>>,
    pub(super) insecure_plain_http: Option<Spanned<bool>>,
    pub(super) tls_cert: Option<Spanned<String>>,
    pub(super) tls_key: Option<Spanned<String>>,
    pub(super) read_timeout: Option<Spanned<DurationText>>,
}

/// `[cluster]`: fleet mode, the job store in PostgreSQL.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) database_url: Option<Spanned<String>>,
    pub(super) database_url_file: Option<Spanned<String>>,
    pub(super) node: Option<Spanned<String>>,
    pub(super) lease: Option<Spanned<DurationText>>,
    pub(super) poll: Option<Spanned<DurationText>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScalingo {
    pub(super) region: Option<Spanned<String>>,
    pub(super) api_url: Option<Spanned<String>>,
    pub(super) auth_url: Option<Spanned<String>>,
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<DurationText>>,
    pub(super) follow_interval: Option<Spanned<DurationText>>,
    pub(super) deploy_timeout: Option<Spanned<DurationText>>,
    pub(super) api_rate_limit: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    pub(super) initial: Option<Spanned<DurationText>>,
    pub(super) max_delay: Option<Spanned<DurationText>>,
    pub(super) budget: Option<Spanned<DurationText>>,
    pub(super) retry_aborted: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) name: Option<Spanned<String>>,
    pub(super) drop_dir: Option<Spanned<String>>,
    pub(super) source_dir: Option<Spanned<String>>,
    pub(super) queue: Option<Spanned<String>>,
    pub(super) debounce: Option<Spanned<DurationText>>,
    /// The old name of `debounce`, still accepted with a warning.
    pub(super) quiet: Option<Spanned<DurationText>>,
    #[serde(default)]
    pub(super) ignore: Vec<String>,
    pub(super) git_ref_label: Option<Spanned<String>>,
    pub(super) settle: Option<Spanned<DurationText>>,
    pub(super) keep_done: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) include: Vec<String>,
    pub(super) max_wait: Option<Spanned<DurationText>>,
    pub(super) poll: Option<Spanned<DurationText>>,
    pub(super) deploy_on_start: Option<bool>,
    pub(super) target: Option<Spanned<String>>,
    pub(super) releases_dir: Option<Spanned<String>>,
    pub(super) activate: Option<Spanned<Vec<String>>>,
    pub(super) activate_timeout: Option<Spanned<DurationText>>,
    pub(super) keep_releases: Option<Spanned<i64>>,
    pub(super) follow_interval: Option<Spanned<DurationText>>,
    pub(super) retry_budget: Option<Spanned<DurationText>>,
    pub(super) deploy_timeout: Option<Spanned<DurationText>>,
    pub(super) on_outcome: Option<Spanned<RawHook>>,
    pub(super) verify: Option<Spanned<super::verify::RawVerify>>,
    pub(super) region: Option<Spanned<String>>,
}

/// An `on_outcome` table, global or in an `[[app]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    pub(super) webhook: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) timeout: Option<Spanned<DurationText>>,
    pub(super) retries: Option<Spanned<i64>>,
    pub(super) only: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A duration as written (`"30s"`); parsed in pass 4 so that every bad one is reported. A bare
/// number is refused here with a hint, since its unit would be a guess.
pub(super) struct DurationText(pub(super) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a duration string with a unit, e.g. "30s", "5m" or "1h""#)
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<DurationText, E> {
                Ok(DurationText(value.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<DurationText, E> {
                Err(E::custom(format!(
                    r#"a duration needs a unit and quotes: write "{value}s" for {value} seconds"#
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<DurationText, E> {
                Err(E::custom(format!(
                    r#"a duration needs a unit and quotes: write "{value}s" for {value} seconds"#
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A size as written: a number of bytes (`314572800`) or a number and a unit (`"300MB"`,
/// `"300MiB"`); parsed in pass 4.
pub(super) enum SizeText {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for SizeText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SizeText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a size: a number of bytes, or a number and a unit such as "300MB""#)
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<SizeText, E> {
                Ok(SizeText::Text(value.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<SizeText, E> {
                Ok(SizeText::Bytes(value))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<SizeText, E> {
                Ok(SizeText::Bytes(i64::try_from(value).unwrap_or(i64::MAX)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `text` as a number of bytes: digits (a fraction allowed with a unit), then an optional
/// unit, decimal (`B`, `kB`, `MB`, `GB`) or binary (`KiB`, `MiB`, `GiB`), case aside.
pub(super) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (text[..split].trim(), text[split..].trim());
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    if number.is_empty() || (factor == 1 && number.contains('.')) {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let bytes = (value * factor as f64).round();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The keys each table accepts, in the order `config/dropdeploy.toml` documents them.
const TOP_KEYS: &[&str] = &[
    "state_dir",
    "max_parallel",
    "max_archive_size",
    "shutdown_grace",
    "metrics_listen",
    "scalingo",
    "retry",
    "on_outcome",
    "intake",
    "cluster",
    "app",
];
const SCALINGO_KEYS: &[&str] = &[
    "region",
    "api_url",
    "auth_url",
    "token_file",
    "timeout",
    "follow_interval",
    "deploy_timeout",
    "api_rate_limit",
];
const INTAKE_KEYS: &[&str] = &[
    "token_file",
    "listen",
    "insecure_plain_http",
    "tls_cert",
    "tls_key",
    "read_timeout",
];
const CLUSTER_KEYS: &[&str] = &["database_url", "database_url_file", "node", "lease", "poll"];
const RETRY_KEYS: &[&str] = &["initial", "max_delay", "budget", "retry_aborted"];
const APP_KEYS: &[&str] = &[
    "name",
    "drop_dir",
    "source_dir",
    "queue",
    "debounce",
    "ignore",
    "git_ref_label",
    "settle",
    "keep_done",
    "follow_interval",
    "retry_budget",
    "deploy_timeout",
    "include",
    "max_wait",
    "poll",
    "deploy_on_start",
    "target",
    "releases_dir",
    "activate",
    "activate_timeout",
    "keep_releases",
    "on_outcome",
    "verify",
    "region",
];
const HOOK_KEYS: &[&str] = &["webhook", "command", "timeout", "retries", "only"];
/// Old names an `[[app]]` still accepts (with a warning, pass 4), never suggested.
const APP_OLD_KEYS: &[&str] = &["quiet"];

/// Passes 1 to 3. `None` when there were problems (already in `report`).
pub(super) fn parse_raw(text: &str, report: &mut Report<'_>) -> Option<RawConfig> {
    let (table, syntax_errors) = DeTable::parse_recoverable(text);

    // The inline token wins over every other message, so that none of them can echo it.
    let mut tokens = Vec::new();
    find_inline_tokens(table.get_ref(), "", &mut tokens);
    if tokens.is_empty() && !syntax_errors.is_empty() {
        // A broken line may be missing from the recovered table: look at the raw lines too.
        tokens = scan_inline_tokens(text);
    }
    if !tokens.is_empty() {
        for (span, key, table) in tokens {
            report.at(span, inline_token_message(&key, &table));
        }
        return None;
    }

    if !syntax_errors.is_empty() {
        for error in &syntax_errors {
            let span = error.span().unwrap_or(0..0);
            report.at(span, format!("invalid TOML: {}", error.message()));
        }
        return None;
    }

    // Every problem of the file in one pass: an unknown key is reported, then left out so
    // that the types of the others are still checked; a value of the wrong type likewise, so
    // that pass 4 still sees every other value.
    check_keys(table.get_ref(), report);
    let mut table = table;
    remove_unknown_keys(table.get_mut());
    for _ in 0..MAX_TYPE_ERRORS {
        let root = table.get_ref().clone();
        let error = match RawConfig::deserialize(toml::de::Deserializer::from(table.clone())) {
            Ok(raw) => return Some(raw),
            Err(error) => error,
        };
        let span = error.span().unwrap_or(0..0);
        let message = plain_type_error(error.message());
        let message = match key_at(&root, &span) {
            Some(key) => format!("{key}: {message}"),
            None => message,
        };
        report.at(span.clone(), message);
        if !remove_value_at(table.get_mut(), &span) {
            return None;
        }
    }
    None
}

/// Type errors reported at most, in one file.
const MAX_TYPE_ERRORS: usize = 100;

/// A type error in words, not `serde`'s (`invalid type: string "300MB", expected i64`).
fn plain_type_error(message: &str) -> String {
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message.replace(
            "expected a sequence",
            "expected a list, e.g. [\"a\", \"b\"]",
        );
    };
    let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
    let found = match found.split_once(' ') {
        Some(("string", value)) => format!("the string {value}"),
        Some(("integer", value)) => format!("the number {}", value.trim_matches('`')),
        Some(("floating", value)) => format!(
            "the number {}",
            value.trim_start_matches("point ").trim_matches('`')
        ),
        Some(("boolean", value)) => value.trim_matches('`').to_string(),
        _ => match found {
            "sequence" => "a list".to_string(),
            "map" => "a table".to_string(),
            other => other.to_string(),
        },
    };
    let expected = match expected {
        "i64" | "u64" | "usize" | "u32" | "i32" => "a whole number, without quotes",
        "a boolean" => "true or false, without quotes",
        "a string" => "a string in quotes",
        "a sequence" => "a list, e.g. [\"a\", \"b\"]",
        e if e.starts_with("struct ") || e == "a map" => "a table",
        e => e,
    };
    format!("expected {expected}, found {found}")
}

/// Removes, at any depth, the keys that [`check_keys`] reported (and an `[app]` table).
fn remove_unknown_keys(root: &mut DeTable<'_>) {
    // A misspelt key whose meaning is clear (the "did you mean" of pass 2) is read as meant,
    // so that it causes no second message (an app "without drop_dir"); others are left out.
    fn keep(table: &mut DeTable<'_>, allowed: &[&str], old: &[&str]) {
        let all = std::mem::take(table);
        for (key, value) in all {
            let name: &str = key.get_ref().as_ref();
            if allowed.contains(&name) || old.contains(&name) {
                table.insert(key, value);
            } else if let Some(near) = nearest(name, allowed)
                && !table
                    .iter()
                    .any(|(k, _)| k.get_ref().as_ref() as &str == near)
            {
                let meant = toml::Spanned::new(key.span(), std::borrow::Cow::Owned(near.into()));
                table.insert(meant, value);
            }
        }
    }
    keep(root, TOP_KEYS, &[]);
    retain_keys(root, |name, value| {
        !(name == "app" && matches!(value.get_ref(), DeValue::Table(_)))
    });
    for (key, value) in root.iter_mut() {
        let name: &str = key.get_ref().as_ref();
        match (name, value.get_mut()) {
            ("scalingo", DeValue::Table(t)) => keep(t, SCALINGO_KEYS, &[]),
            ("retry", DeValue::Table(t)) => keep(t, RETRY_KEYS, &[]),
            ("on_outcome", DeValue::Table(t)) => keep(t, HOOK_KEYS, &[]),
            ("intake", DeValue::Table(t)) => keep(t, INTAKE_KEYS, &[]),
            ("cluster", DeValue::Table(t)) => keep(t, CLUSTER_KEYS, &[]),
            ("app", DeValue::Array(items)) => {
                for item in items.iter_mut() {
                    if let DeValue::Table(app) = item.get_mut() {
                        keep(app, APP_KEYS, APP_OLD_KEYS);
                        for (key, value) in app.iter_mut() {
                            let name: &str = key.get_ref().as_ref();
                            match (name, value.get_mut()) {
                                ("on_outcome", DeValue::Table(t)) => keep(t, HOOK_KEYS, &[]),
                                ("verify", DeValue::Table(t)) => {
                                    keep(t, super::verify::VERIFY_KEYS, &[])
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Removes the innermost key whose value holds `span`; false when there is none.
fn remove_value_at(table: &mut DeTable<'_>, span: &Range<usize>) -> bool {
    let mut found = None;
    for (key, value) in table.iter_mut() {
        // Tables are searched whatever their span (an array of tables has none of its own).
        let nested = match value.get_mut() {
            DeValue::Table(inner) => remove_value_at(inner, span),
            DeValue::Array(items) => items.iter_mut().any(|item| match item.get_mut() {
                DeValue::Table(inner) => remove_value_at(inner, span),
                _ => false,
            }),
            _ => false,
        };
        if nested {
            return true;
        }
        let s = value.span();
        if !(s.start <= span.start && span.end <= s.end && s != (0..0)) {
            continue;
        }
        let name: &str = key.get_ref().as_ref();
        found = Some(name.to_string());
        break;
    }
    let Some(found) = found else {
        return false;
    };
    retain_keys(table, |name, _| name != found);
    true
}

/// Keeps the entries of `table` for which `keep(name, value)` holds, in their order.
fn retain_keys<'i>(
    table: &mut DeTable<'i>,
    mut keep: impl FnMut(&str, &toml::Spanned<DeValue<'i>>) -> bool,
) {
    let all = std::mem::take(table);
    for (key, value) in all {
        let name: &str = key.get_ref().as_ref();
        if keep(name, &value) {
            table.insert(key, value);
        }
    }
}

fn inline_token_message(key: &str, table: &str) -> String {
    format!(
        "`{key}` {table}: do not put the API token in the config file; \
         put it in a file of its own, readable only by the daemon \
         (token_file = \"/etc/dropdeploy/token\" in [scalingo], \
         then chmod 600 /etc/dropdeploy/token), \
         or set the SCALINGO_API_TOKEN environment variable"
    )
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Every key, at any depth, that holds an inline token: (key span, key, table label).
fn find_inline_tokens(
    table: &DeTable<'_>,
    path: &str,
    found: &mut Vec<(Range<usize>, String, String)>,
) {
    for (key, value) in table.iter() {
        let name: &str = key.get_ref().as_ref();
        if INLINE_TOKEN_KEYS.contains(&name.to_ascii_lowercase().as_str()) {
            found.push((key.span(), name.to_string(), table_label(path)));
        }
        let inner = join_path(path, name);
        match value.get_ref() {
            DeValue::Table(t) => find_inline_tokens(t, &inner, found),
            DeValue::Array(items) => {
                for item in items.iter() {
                    if let DeValue::Table(t) = item.get_ref() {
                        find_inline_tokens(t, &inner, found);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Lines that assign an inline token (`token = …`, `scalingo.token = …`, `"api_token" = …`),
/// found without a TOML parser, for files too broken to parse.
pub(super) fn scan_inline_tokens(text: &str) -> Vec<(Range<usize>, String, String)> {
    let mut found = Vec::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        if let Some(eq) = line.find('=') {
            let lhs = &line[..eq];
            let last = lhs.rsplit('.').next().unwrap_or(lhs);
            let key = last.trim().trim_matches(|c| c == '"' || c == '\'');
            if INLINE_TOKEN_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                let indent = line.len() - line.trim_start().len();
                let start = line_start + indent;
                let table = if lhs.trim_start().starts_with("scalingo.") {
                    table_label("scalingo")
                } else {
                    "in the config file".to_string()
                };
                found.push((start..start + eq - indent, key.to_string(), table));
            }
        }
        line_start += line.len();
    }
    found
}

/// Pass 2: every unknown key, and `[app]` written where `[[app]]` was meant.
fn check_keys(root: &DeTable<'_>, report: &mut Report<'_>) {
    check_table_keys(root, "", TOP_KEYS, &[], report);
    for (key, value) in root.iter() {
        let name: &str = key.get_ref().as_ref();
        match (name, value.get_ref()) {
            ("scalingo", DeValue::Table(t)) => {
                check_table_keys(t, "scalingo", SCALINGO_KEYS, &[], report)
            }
            ("retry", DeValue::Table(t)) => check_table_keys(t, "retry", RETRY_KEYS, &[], report),
            ("intake", DeValue::Table(t)) => {
                check_table_keys(t, "intake", INTAKE_KEYS, &[], report)
            }
            ("cluster", DeValue::Table(t)) => {
                check_table_keys(t, "cluster", CLUSTER_KEYS, &[], report)
            }
            ("on_outcome", DeValue::Table(t)) => {
                check_table_keys(t, "on_outcome", HOOK_KEYS, &[], report)
            }
            ("app", DeValue::Array(items)) => {
                for item in items.iter() {
                    if let DeValue::Table(t) = item.get_ref() {
                        check_table_keys(t, "app", APP_KEYS, APP_OLD_KEYS, report);
                        check_app_hook_keys(t, report);
                    }
                }
            }
            ("app", DeValue::Table(_)) => report.at(
                value.span(),
                "`app` must be an array of tables: write [[app]] (two brackets) above each app",
            ),
            _ => {}
        }
    }
}

/// Pass 2 for an app's `on_outcome = { … }`.
fn check_app_hook_keys(app: &DeTable<'_>, report: &mut Report<'_>) {
    for (key, value) in app.iter() {
        if key.get_ref().as_ref() as &str == "on_outcome"
            && let DeValue::Table(t) = value.get_ref()
        {
            check_table_keys(t, "app.on_outcome", HOOK_KEYS, &[], report);
        }
        if key.get_ref().as_ref() as &str == "verify"
            && let DeValue::Table(t) = value.get_ref()
        {
            let keys = super::verify::VERIFY_KEYS;
            check_table_keys(t, "app.verify", keys, &[], report);
        }
    }
}

/// Reports the keys of `table` that are neither `allowed` nor `old` names; the message lists
/// only the `allowed` ones.
fn check_table_keys(
    table: &DeTable<'_>,
    path: &str,
    allowed: &[&str],
    old: &[&str],
    report: &mut Report<'_>,
) {
    let unknown = table.iter().map(|(key, _)| key).filter(|key| {
        let name: &str = key.get_ref().as_ref();
        !allowed.contains(&name) && !old.contains(&name)
    });
    for key in unknown {
        let name: &str = key.get_ref().as_ref();
        if let Some(near) = nearest(name, allowed) {
            report.at(
                key.span(),
                format!(
                    "unknown key `{name}` {}; did you mean `{near}`?",
                    table_label(path)
                ),
            );
            continue;
        }
        let expected: Vec<String> = allowed
            .iter()
            .map(|name| match (path, *name) {
                ("", "scalingo" | "retry" | "on_outcome" | "intake" | "cluster") => {
                    format!("[{name}]")
                }
                ("", "app") => "[[app]]".to_string(),
                _ => name.to_string(),
            })
            .collect();
        report.at(
            key.span(),
            format!(
                "unknown key `{}` {}; expected one of {}",
                key.get_ref().as_ref() as &str,
                table_label(path),
                expected.join(", ")
            ),
        );
    }
}

/// The accepted key a misspelt `name` most likely meant: at most two edits away (a third of
/// its length for short names), the nearest first.
fn nearest<'k>(name: &str, allowed: &[&'k str]) -> Option<&'k str> {
    let limit = (name.chars().count() / 3).clamp(1, 2);
    allowed
        .iter()
        .map(|k| (edit_distance(&name.to_ascii_lowercase(), k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The key whose value holds `span`, for type errors: "`timeout` in [scalingo]".
fn key_at(root: &DeTable<'_>, span: &Range<usize>) -> Option<String> {
    fn walk(
        table: &DeTable<'_>,
        path: &str,
        span: &Range<usize>,
        best: &mut Option<(usize, String)>,
    ) {
        for (key, value) in table.iter() {
            let name: &str = key.get_ref().as_ref();
            let inner = join_path(path, name);
            let vspan = value.span();
            if vspan.start <= span.start && span.end <= vspan.end {
                let size = vspan.end - vspan.start;
                if best.as_ref().is_none_or(|(best_size, _)| size < *best_size) {
                    *best = Some((size, format!("`{name}` {}", table_label(path))));
                }
            }
            match value.get_ref() {
                DeValue::Table(t) => walk(t, &inner, span, best),
                DeValue::Array(items) => {
                    for item in items.iter() {
                        if let DeValue::Table(t) = item.get_ref() {
                            walk(t, &inner, span, best);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut best = None;
    walk(root, "", span, &mut best);
    best.map(|(_, key)| key)
}
