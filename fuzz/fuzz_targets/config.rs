//! `Config::from_str` on arbitrary UTF-8: it must never panic, and no error message may repeat
//! the value of an inline `token = "…"` line.
#![no_main]

use std::path::Path;

use dropdeploy::config::{Config, Env};
use libfuzzer_sys::fuzz_target;

/// The origin named in messages.
const ORIGIN: &str = "/fuzz/dropdeploy.toml";

/// The values of `token = "…"` lines (also `api_token`, `scalingo_api_token`, any case) that
/// are worth looking for in messages: at least 8 characters, found nowhere else in the input
/// (a value also used as another key or value may rightly be quoted by another message), and
/// not part of the origin.
fn secret_values(text: &str) -> Vec<&str> {
    // Inside a multi-line string, a `token = "…"` line is text, not a key: skip such inputs.
    if text.contains("\"\"\"") || text.contains("'''") {
        return Vec::new();
    }
    let mut found = Vec::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        if !matches!(key.as_str(), "token" | "api_token" | "scalingo_api_token") {
            continue;
        }
        let Some(rest) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some((value, _)) = rest.split_once('"') else {
            continue;
        };
        if value.chars().count() >= 8
            && !value.contains('\\')
            && text.matches(value).count() == 1
            && !ORIGIN.contains(value)
        {
            found.push(value);
        }
    }
    found
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = Env::from_pairs::<_, &str, &str>([]);
    let Err(error) = Config::from_str(text, Path::new(ORIGIN), &env) else {
        return;
    };
    let shown = format!("{error}\n{error:?}");
    for value in secret_values(text) {
        if !shown.contains(value) {
            continue;
        }
        // The value may be in the message for another reason (a word of the message itself):
        // only a leak if it goes away when the token's value is replaced by another.
        let placeholder = "#".repeat(value.len());
        let other = text.replacen(value, &placeholder, 1);
        let again = match Config::from_str(&other, Path::new(ORIGIN), &env) {
            Ok(_) => String::new(),
            Err(error) => format!("{error}\n{error:?}"),
        };
        assert!(
            again.contains(value),
            "the error message repeats the inline token {value:?}:\n{shown}"
        );
    }
});
