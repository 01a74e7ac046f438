//! Secret redaction: the one function that removes anything shaped like a Scalingo API token or
//! a bearer JWT from a text, whatever setting or answer the text came from.
//!
//! A token pasted into the wrong setting (a `token_file` path, an API URL, an app name, a
//! region) is not known to be a secret where it is used, so the text is cleaned by shape on its
//! way out: in every log line ([`RedactingMakeWriter`]), every message the CLI prints, every
//! configuration error, history line, reason file and job record. A text with nothing to hide
//! is returned borrowed, without a copy.

use std::borrow::Cow;
use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// What replaces a Scalingo API token.
pub const TOKEN_MARKER: &str = "tk-us-[redacted]";
/// What replaces a JWT (a bearer token).
pub const JWT_MARKER: &str = "[redacted JWT]";

/// Token characters after `tk-xx-` needed to count as a token. Real tokens have 48; the bound
/// is low so that a shortened or mistyped one is caught too.
const MIN_TOKEN_CHARS: usize = 8;

/// `text` with every substring shaped like a Scalingo API token (`tk-` two lowercase letters,
/// `-`, then at least 8 of `[A-Za-z0-9_-]`) replaced by [`TOKEN_MARKER`], and every JWT
/// (`eyJ…` `.` `…` `.` `…`, base64url parts) replaced by [`JWT_MARKER`]. Borrowed when nothing
/// matched. Redacting twice changes nothing more.
pub fn redact(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i + 3 <= bytes.len() {
        let found = match &bytes[i..i + 3] {
            b"tk-" => token_end(bytes, i).map(|end| (end, TOKEN_MARKER)),
            b"eyJ" => jwt_end(bytes, i).map(|end| (end, JWT_MARKER)),
            _ => None,
        };
        match found {
            Some((end, marker)) => {
                let o = out.get_or_insert_with(|| String::with_capacity(text.len()));
                // Both patterns are ASCII: `i` and `end` are on character boundaries.
                o.push_str(&text[copied..i]);
                o.push_str(marker);
                copied = end;
                i = end;
            }
            None => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut o) => {
            o.push_str(&text[copied..]);
            Cow::Owned(o)
        }
    }
}

/// [`redact`] for an owned string: the same string back, without a copy, when nothing matched.
pub fn redact_owned(text: String) -> String {
    let clean = match redact(&text) {
        Cow::Borrowed(_) => None,
        Cow::Owned(clean) => Some(clean),
    };
    clean.unwrap_or(text)
}

/// [`redact_bytes`] for an owned buffer: the same buffer back when nothing matched.
pub fn redact_vec(bytes: Vec<u8>) -> Vec<u8> {
    let clean = match redact_bytes(&bytes) {
        Cow::Borrowed(_) => None,
        Cow::Owned(clean) => Some(clean),
    };
    clean.unwrap_or(bytes)
}

/// [`redact`] for bytes that should be UTF-8 (a serialized record): borrowed when nothing
/// matched; bytes that are not UTF-8 are cleaned in their lossy reading.
pub fn redact_bytes(bytes: &[u8]) -> Cow<'_, [u8]> {
    match redact(&String::from_utf8_lossy(bytes)) {
        Cow::Borrowed(_) => Cow::Borrowed(bytes),
        Cow::Owned(clean) => Cow::Owned(clean.into_bytes()),
    }
}

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The end of a token starting at `start` (which holds `tk-`), if one is there.
fn token_end(bytes: &[u8], start: usize) -> Option<usize> {
    let region = bytes.get(start + 3..start + 6)?;
    if !(region[0].is_ascii_lowercase() && region[1].is_ascii_lowercase() && region[2] == b'-') {
        return None;
    }
    let body = start + 6;
    let len = bytes[body..]
        .iter()
        .take_while(|&&b| is_token_char(b))
        .count();
    (len >= MIN_TOKEN_CHARS).then_some(body + len)
}

/// The end of a JWT starting at `start` (which holds `eyJ`): three base64url parts joined by
/// dots, the last possibly empty (an unsigned token).
fn jwt_end(bytes: &[u8], start: usize) -> Option<usize> {
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-';
    let part = |from: usize| from + bytes[from..].iter().take_while(|b| is_b64(b)).count();
    let header_end = part(start);
    if bytes.get(header_end) != Some(&b'.') {
        return None;
    }
    let payload_end = part(header_end + 1);
    if payload_end == header_end + 1 || bytes.get(payload_end) != Some(&b'.') {
        return None;
    }
    Some(part(payload_end + 1))
}

/// A [`MakeWriter`] whose writers pass every log line through [`redact`]: each event is
/// buffered whole and written redacted when the writer is dropped (the formatter makes one
/// writer per event), so a token is never split across two writes.
#[derive(Debug, Clone)]
pub struct RedactingMakeWriter<M> {
    inner: M,
}

impl<M> RedactingMakeWriter<M> {
    /// Redacts what `inner`'s writers receive.
    pub fn new(inner: M) -> Self {
        RedactingMakeWriter { inner }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer(),
            buffer: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        RedactingWriter {
            inner: self.inner.make_writer_for(meta),
            buffer: Vec::new(),
        }
    }
}

/// One event's writer: see [`RedactingMakeWriter`].
pub struct RedactingWriter<W: Write> {
    inner: W,
    buffer: Vec<u8>,
}

impl<W: Write> RedactingWriter<W> {
    fn write_out(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut self.buffer);
        self.inner.write_all(&redact_bytes(&buffer))?;
        self.inner.flush()
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Only whole events go out (see the type's docs); dropping the writer writes them.
        Ok(())
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        // A log line that cannot be written has nowhere to be reported.
        let _ = self.write_out();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "tk-us-TPdFpIyuvXJLQytNSugN3RBeN0YYLed3ib1b7uJiPqk_XAws";

    #[test]
    fn a_token_anywhere_in_a_text_is_replaced() {
        assert_eq!(redact(TOKEN), TOKEN_MARKER);
        assert_eq!(
            redact(&format!(
                "cannot read token file /etc/{TOKEN}: No such file"
            )),
            "cannot read token file /etc/tk-us-[redacted]: No such file"
        );
        assert_eq!(
            redact(&format!("https://api.example/{TOKEN}/v1/sources")),
            "https://api.example/tk-us-[redacted]/v1/sources"
        );
        assert_eq!(
            redact(&format!("\"{TOKEN}\" and {TOKEN}")),
            "\"tk-us-[redacted]\" and tk-us-[redacted]"
        );
        // Other regions' tokens, short ones, glued to a word.
        assert_eq!(redact("tk-eu-abcd1234"), TOKEN_MARKER);
        assert_eq!(redact("xtk-us-SECRET-canary"), "xtk-us-[redacted]");
    }

    #[test]
    fn texts_without_a_secret_are_borrowed_unchanged() {
        for text in [
            "",
            "tk",
            "tk-us-",
            "tk-us-short",
            "tk-US-ABCDEFGHIJ",
            "deploy my-app-tk-us to osc-fr1",
            "eyJ alone",
            "eyJhbGci.only-two-parts",
            "https://api.osc-fr1.scalingo.com/v1/apps/my-app/deployments",
            "déjà vu — ünïcode stays",
        ] {
            assert!(
                matches!(redact(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn jwts_are_replaced_whole() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.c2lnbmF0dXJl-_x";
        assert_eq!(
            redact(&format!("Authorization: Bearer {jwt}; next")),
            "Authorization: Bearer [redacted JWT]; next"
        );
        assert_eq!(redact("eyJhbGciOiJub25lIn0.eyJ4IjoxfQ."), JWT_MARKER);
    }

    #[test]
    fn redacting_twice_changes_nothing_more() {
        let once = redact(&format!("{TOKEN} eyJa.eyJb.c")).into_owned();
        assert!(matches!(redact(&once), Cow::Borrowed(_)), "{once}");
        assert_eq!(redact_owned(once.clone()), once);
    }

    #[test]
    fn records_stay_valid_json_once_redacted() {
        let record = serde_json::json!({ "app": TOKEN, "url": format!("http://x/{TOKEN}?a=1") });
        let bytes = serde_json::to_vec(&record).unwrap();
        let clean = redact_bytes(&bytes);
        let back: serde_json::Value = serde_json::from_slice(&clean).unwrap();
        assert_eq!(back["app"], TOKEN_MARKER);
        assert_eq!(back["url"], "http://x/tk-us-[redacted]?a=1");
        assert!(matches!(
            redact_bytes(b"{\"app\":\"my-app\"}"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn the_log_writer_redacts_each_event_whole() {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let make = RedactingMakeWriter::new({
            let sink = sink.clone();
            move || sink.clone()
        });
        {
            let mut w = make.make_writer();
            // The token arrives split across two writes.
            w.write_all(&TOKEN.as_bytes()[..10]).unwrap();
            w.write_all(&TOKEN.as_bytes()[10..]).unwrap();
            w.write_all(b" refused\n").unwrap();
            w.flush().unwrap();
            assert!(
                sink.0.lock().unwrap().is_empty(),
                "nothing before the event ends"
            );
        }
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "tk-us-[redacted] refused\n");
    }
}
