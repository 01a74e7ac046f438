//! The words of a rejection: what a file that is not gzip looks like, what a tar error means
//! at the place it happened, and the small helpers that spell counts and sizes.

use std::io;

use tar::EntryType;

use super::scan::Scan;
use super::{Rejection, RejectionKind};

pub(super) fn not_gzip(prefix: &[u8]) -> Rejection {
    let shown: Vec<String> = prefix
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let reason = match looks_like(prefix) {
        Some(format) => format!(
            "not a gzip file (it starts with bytes {}, which looks like {format})",
            shown.join(" ")
        ),
        None => format!("not a gzip file (it starts with bytes {})", shown.join(" ")),
    };
    Rejection::new(RejectionKind::NotGzip, reason)
}

/// Names the format of a file by its first bytes, for the formats people confuse with `.tar.gz`.
fn looks_like(prefix: &[u8]) -> Option<&'static str> {
    const MAGICS: &[(&[u8], &str)] = &[
        (b"PK\x03\x04", "a zip archive"),
        (b"PK\x05\x06", "an empty zip archive"),
        (b"BZh", "a bzip2-compressed file"),
        (b"\xfd7zXZ\x00", "an xz-compressed file"),
        (b"\x28\xb5\x2f\xfd", "a zstd-compressed file"),
        (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
        (b"Rar!", "a RAR archive"),
        (b"\x1f\x9d", "a compress (.Z) file"),
    ];
    if let Some((_, name)) = MAGICS.iter().find(|(magic, _)| prefix.starts_with(magic)) {
        return Some(name);
    }
    if prefix.get(257..262) == Some(b"ustar") {
        return Some("an uncompressed tar archive");
    }
    let text = prefix.trim_ascii_start();
    let lower: Vec<u8> = text.iter().take(14).map(u8::to_ascii_lowercase).collect();
    if lower.starts_with(b"<!doctype html") || lower.starts_with(b"<html") {
        return Some("an HTML page (a failed download?)");
    }
    None
}

/// `a, b and c`
pub(super) fn join_and(items: &[String]) -> String {
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, head)) => format!("{} and {last}", head.join(", ")),
    }
}

pub(super) fn describe_type(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Symlink => "a symlink",
        EntryType::Link => "a hard link",
        _ => "a file",
    }
}

pub(super) fn describe_unknown(kind: EntryType) -> &'static str {
    match kind {
        EntryType::GNULongName | EntryType::GNULongLink | EntryType::XHeader => {
            "an extension header tar could not apply"
        }
        _ => "not a file, folder or link",
    }
}

/// Words for a tar error that no lower layer explains.
pub(super) fn tar_rejection(error: &io::Error, scan: &Scan, bytes: u64, ended: bool) -> Rejection {
    let Some((last, body_end)) = &scan.last else {
        let detail = if ended && bytes < 512 {
            format!(
                "it holds only {}, less than one 512-byte tar header",
                plural(bytes, "byte", "bytes")
            )
        } else {
            format!(
                "its first block is not a tar header ({})",
                brief(&error.to_string())
            )
        };
        return Rejection::new(
            RejectionKind::NotTar,
            format!("not a tar archive inside the gzip stream: {detail}"),
        );
    };
    let reason = if ended && bytes < *body_end {
        format!("truncated tar data: it ends inside the contents of {last}")
    } else if ended {
        format!("truncated tar data: it ends after {last}, inside the next header")
    } else {
        format!(
            "tar data corrupt after {last}: {}",
            brief(&error.to_string())
        )
    };
    Rejection::new(RejectionKind::CorruptTar, reason)
}

/// Tar quotes whole header fields in some messages; one line is enough.
fn brief(message: &str) -> String {
    const MAX_CHARS: usize = 80;
    match message.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &message[..cut]),
        None => message.to_string(),
    }
}

pub(super) fn plural(count: u64, one: &str, many: &str) -> String {
    if count == 1 {
        format!("1 {one}")
    } else {
        format!("{count} {many}")
    }
}

pub(crate) fn human_size(bytes: u64) -> String {
    crate::human::bytes(bytes)
}
