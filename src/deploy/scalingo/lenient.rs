//! Lenient decoding of the platform's answers, as its official clients read them: an id or a
//! status may come as a string, a number or `null` (a whole answer is not refused for one odd
//! field), a page number as a number or a numeric string, and unknown fields are ignored.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A text field given as a string, a number or a boolean; `null` (or anything else) is empty.
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(optional_string(d)?.unwrap_or_default())
}

/// [`string`], with `None` for `null` (or anything that is not text, a number or a boolean).
pub fn optional_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(text_of(&Value::deserialize(d)?))
}

/// The text of a JSON value that is a string, a number or a boolean.
pub fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A page number given as a number or a numeric string; `None` for `null`, absent or other.
pub fn page_number(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A flag given as a boolean (or `"true"`); anything else is false.
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Bool(b) => b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        _ => false,
    })
}

/// An RFC 3339 time as the platform writes it: `Z` or an offset (`+00:00`, `+02:00`), with or
/// without fractions of a second.
pub fn timestamp(text: &str) -> Option<std::time::SystemTime> {
    let t = text.trim();
    let (local, offset) = split_offset(t)?;
    let at = humantime::parse_rfc3339_weak(local).ok()?;
    // Local time = UTC + offset.
    if offset >= 0 {
        at.checked_sub(std::time::Duration::from_secs(offset.unsigned_abs()))
    } else {
        at.checked_add(std::time::Duration::from_secs(offset.unsigned_abs()))
    }
}

/// The time without its zone, and the zone's offset in seconds east of UTC.
fn split_offset(t: &str) -> Option<(&str, i64)> {
    if let Some(local) = t.strip_suffix(['Z', 'z']) {
        return Some((local, 0));
    }
    let b = t.as_bytes();
    let n = b.len();
    if n > 6 && matches!(b[n - 6], b'+' | b'-') && b[n - 3] == b':' {
        let hours: i64 = t.get(n - 5..n - 3)?.parse().ok()?;
        let minutes: i64 = t.get(n - 2..)?.parse().ok()?;
        let sign = if b[n - 6] == b'-' { -1 } else { 1 };
        return Some((&t[..n - 6], sign * (hours * 3600 + minutes * 60)));
    }
    Some((t, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_an_offset_or_z_are_read_as_the_same_instant() {
        let z = timestamp("2026-12-07T10:17:48Z").unwrap();
        assert_eq!(timestamp("2026-12-07T10:17:48+00:00"), Some(z));
        assert_eq!(timestamp("2026-12-07T12:17:48+02:00"), Some(z));
        assert_eq!(timestamp("2026-12-07T09:17:48-01:00"), Some(z));
        let ms = timestamp("2026-12-07T10:17:48.002+00:00").unwrap();
        assert_eq!(ms.duration_since(z).unwrap().as_millis(), 2);
        assert_eq!(timestamp("yesterday"), None);
    }

    #[test]
    fn ids_statuses_and_pages_are_read_from_any_plain_value() {
        #[derive(serde::Deserialize)]
        struct D {
            #[serde(default, deserialize_with = "string")]
            id: String,
            #[serde(default, deserialize_with = "optional_string")]
            status: Option<String>,
        }
        let d: D = serde_json::from_str(r#"{"id":17,"status":null,"extra":[1]}"#).unwrap();
        assert_eq!((d.id.as_str(), d.status), ("17", None));
        let d: D = serde_json::from_str(r#"{"id":null,"status":"success"}"#).unwrap();
        assert_eq!((d.id.as_str(), d.status.as_deref()), ("", Some("success")));
        assert_eq!(page_number(Some(&serde_json::json!("3"))), Some(3));
        assert_eq!(page_number(Some(&serde_json::json!(2))), Some(2));
        assert_eq!(page_number(Some(&serde_json::Value::Null)), None);
    }
}
