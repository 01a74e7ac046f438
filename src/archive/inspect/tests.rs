use std::io::{self, Read, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::Sha256;
use tar::EntryType;

use super::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A tar built with `tar::Builder`: names ending in `/` are folders, others files.
fn tar_of(names: &[&str]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for name in names {
        append(&mut builder, name.as_bytes(), entry_kind(name), None, b"");
    }
    builder.into_inner().unwrap()
}

fn entry_kind(name: &str) -> EntryType {
    if name.ends_with('/') {
        EntryType::Directory
    } else {
        EntryType::Regular
    }
}

/// Appends a raw GNU header, bypassing `tar::Builder`'s refusal of `..` and absolute paths.
fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: EntryType,
    link: Option<&[u8]>,
    data: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    let gnu = header.as_gnu_mut().unwrap();
    gnu.name[..name.len()].copy_from_slice(name);
    if let Some(link) = link {
        gnu.linkname[..link.len()].copy_from_slice(link);
    }
    header.set_entry_type(kind);
    header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn tgz_of(names: &[&str]) -> Vec<u8> {
    gzip(&tar_of(names))
}

/// A raw entry: name, type and link target, all bytes as they go in the header.
type RawEntry<'a> = (&'a [u8], EntryType, Option<&'a [u8]>);

/// A tar.gz of `app/` holding the given raw entries.
fn tgz_with(raw: &[RawEntry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, b"app/", EntryType::Directory, None, b"");
    for (name, kind, link) in raw {
        append(&mut builder, name, *kind, *link, b"");
    }
    gzip(&builder.into_inner().unwrap())
}

fn check(bytes: &[u8]) -> Result<Summary, Rejection> {
    check_with(bytes, &Limits::default())
}

fn check_with(bytes: &[u8], limits: &Limits) -> Result<Summary, Rejection> {
    inspect_reader(bytes, limits).expect("a slice never fails to read")
}

#[track_caller]
fn rejected(bytes: &[u8], kind: RejectionKind) -> String {
    match check(bytes) {
        Ok(summary) => panic!("accepted, expected {kind:?}: {summary}"),
        Err(rejection) => {
            assert_eq!(rejection.kind, kind, "{}", rejection.reason);
            rejection.reason
        }
    }
}

#[test]
fn accepts_a_single_folder_and_summarises_it() {
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, b"app/", EntryType::Directory, None, b"");
    append(
        &mut builder,
        b"app/main.go",
        EntryType::Regular,
        None,
        b"package main\n",
    );
    append(&mut builder, b"app/lib/", EntryType::Directory, None, b"");
    append(
        &mut builder,
        b"app/lib/x.txt",
        EntryType::Regular,
        None,
        &[7; 3000],
    );
    let tar = builder.into_inner().unwrap();
    let bytes = gzip(&tar);

    let summary = check(&bytes).unwrap();
    assert_eq!(
        summary,
        Summary {
            root: "app".into(),
            entries: 4,
            files: 2,
            uncompressed_bytes: tar.len() as u64,
            compressed_bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        }
    );
}

#[test]
fn summary_display_shows_root_counts_sizes_and_full_sha256() {
    let summary = Summary {
        root: "app".into(),
        entries: 132,
        files: 120,
        uncompressed_bytes: 4_100_000,
        compressed_bytes: 1_234_567,
        sha256: "ab".repeat(32),
    };
    assert_eq!(
        summary.to_string(),
        format!(
            "app/: 132 entries (120 files), 4.1 MB uncompressed, 1.2 MB compressed, sha256 {}",
            "ab".repeat(32)
        )
    );
    let one = Summary {
        entries: 1,
        files: 1,
        ..summary
    };
    assert!(one.to_string().starts_with("app/: 1 entry (1 file), "));
}

#[test]
fn human_size_uses_decimal_units_with_one_decimal() {
    assert_eq!(human_size(0), "0 bytes");
    assert_eq!(human_size(1), "1 byte");
    assert_eq!(human_size(999), "999 bytes");
    assert_eq!(human_size(1000), "1.0 kB");
    assert_eq!(human_size(345_000), "345.0 kB");
    assert_eq!(human_size(999_960), "1.0 MB");
    assert_eq!(human_size(1_234_567), "1.2 MB");
    assert_eq!(human_size(DEFAULT_MAX_ARCHIVE_BYTES), "314.6 MB");
    assert_eq!(human_size(u64::MAX), "18.4 EB");
}

#[test]
fn default_limit_is_the_platform_limit() {
    assert_eq!(Limits::default().max_uncompressed, 314_572_800);
}

#[test]
fn accepts_dot_slash_prefix() {
    let summary = check(&tgz_of(&["./", "./app/", "./app/x"])).unwrap();
    assert_eq!(summary.root, "app");
    assert_eq!((summary.entries, summary.files), (3, 1));
}

#[test]
fn accepts_a_folder_implied_by_its_entries() {
    let summary = check(&tgz_of(&["app/a", "app/b/c"])).unwrap();
    assert_eq!(summary.root, "app");
}

#[test]
fn accepts_multi_member_gzip() {
    let tar = tar_of(&["app/", "app/a", "app/b"]);
    let mut bytes = Vec::new();
    for part in tar.chunks(700) {
        bytes.extend(gzip(part));
    }
    bytes.extend(gzip(b""));
    let summary = check(&bytes).unwrap();
    assert_eq!(summary.entries, 3);
    assert_eq!(summary.uncompressed_bytes, tar.len() as u64);
    assert_eq!(summary.compressed_bytes, bytes.len() as u64);
}

#[test]
fn accepts_zero_padding_after_the_tar_end() {
    let mut tar = tar_of(&["app/", "app/a"]);
    tar.resize(10240, 0);
    assert_eq!(check(&gzip(&tar)).unwrap().uncompressed_bytes, 10240);
}

#[test]
fn accepts_a_tar_without_end_of_archive_blocks() {
    let tar = tar_of(&["app/", "app/a"]);
    let summary = check(&gzip(&tar[..tar.len() - 1024])).unwrap();
    assert_eq!(summary.entries, 2);
}

#[test]
fn accepts_zero_bytes_after_the_gzip_end_as_gzip_does() {
    let mut bytes = tgz_of(&["app/", "app/a"]);
    bytes.extend([0; 3000]);
    let summary = check(&bytes).unwrap();
    assert_eq!(summary.compressed_bytes, bytes.len() as u64);
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(&bytes)));
}

/// Issue 21: a small gzip followed by 5 GiB of zeros was accepted (and would have been
/// uploaded whole). Zero padding is bounded; 64 MiB stand for the 5 GiB here.
#[test]
fn rejects_more_zero_padding_after_the_gzip_end_than_any_padding() {
    let bytes = tgz_of(&["app/", "app/a"]);
    let end = bytes.len() as u64;
    let zeros = io::repeat(0).take(64 << 20);
    let verdict = inspect_reader(io::Cursor::new(bytes).chain(zeros), &Limits::default())
        .expect("no read error");
    let rejection = verdict.expect_err("64 MiB of zeros is no padding");
    assert_eq!(rejection.kind, RejectionKind::CorruptGzip);
    assert!(
        rejection.reason.contains(&format!(
            "after the end of the gzip stream at {}",
            human_size(end)
        )) && rejection.reason.contains("zero bytes"),
        "{}",
        rejection.reason
    );
}

/// Empty gzip members after the archive decompress to nothing: only the file's own size bound
/// stops them.
#[test]
fn rejects_a_file_larger_than_any_archive_within_the_limit_compresses_to() {
    let limits = Limits {
        max_uncompressed: 64 * 1024,
    };
    let mut bytes = tgz_of(&["app/", "app/a"]);
    let empty = gzip(b"");
    while (bytes.len() as u64) <= limits.max_compressed() + 64 * 1024 {
        bytes.extend_from_slice(&empty);
    }
    let rejection = check_with(&bytes, &limits).expect_err("too large a file");
    assert_eq!(rejection.kind, RejectionKind::TooLarge);
    assert!(
        rejection
            .reason
            .contains(&human_size(limits.max_compressed())),
        "{}",
        rejection.reason
    );
    // The same archive with a few empty members is fine.
    let mut few = tgz_of(&["app/", "app/a"]);
    for _ in 0..10 {
        few.extend_from_slice(&empty);
    }
    assert_eq!(check_with(&few, &limits).unwrap().entries, 2);
}

#[test]
fn rejects_garbage_after_the_gzip_end_as_gnu_tar_does() {
    let mut bytes = tgz_of(&["app/", "app/a"]);
    let end = bytes.len();
    bytes.extend([0, 0]);
    bytes.extend(b"garbage");
    let reason = rejected(&bytes, RejectionKind::CorruptGzip);
    assert_eq!(
        reason,
        format!(
            "unexpected data after the end of the gzip stream at {}",
            human_size(end as u64 + 2)
        )
    );
}

#[test]
fn rejects_data_after_the_tar_end() {
    let mut tar = tar_of(&["app/", "app/a"]);
    tar.extend(tar_of(&["app/b"]));
    let reason = rejected(&gzip(&tar), RejectionKind::CorruptTar);
    assert!(
        reason.starts_with("unexpected data after the end of the tar archive at "),
        "{reason}"
    );
}

#[test]
fn rejects_an_empty_file() {
    assert_eq!(rejected(b"", RejectionKind::Empty), "empty file (0 bytes)");
}

#[test]
fn rejects_an_archive_without_entries() {
    let empty_tar = tar::Builder::new(Vec::new()).into_inner().unwrap();
    assert_eq!(
        rejected(&gzip(&empty_tar), RejectionKind::Empty),
        "empty archive: no entries"
    );
    assert_eq!(
        rejected(&gzip(b""), RejectionKind::Empty),
        "empty archive: no entries"
    );
}

#[test]
fn rejects_an_archive_holding_only_dot() {
    let reason = rejected(&tgz_of(&["./"]), RejectionKind::Empty);
    assert_eq!(reason, "empty archive: no files or folders besides ./");
}

#[test]
fn rejects_a_zip_and_says_so() {
    let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00";
    assert_eq!(
        rejected(zip, RejectionKind::NotGzip),
        "not a gzip file (it starts with bytes 50 4b 03 04, which looks like a zip archive)"
    );
}

#[test]
fn rejects_other_formats_and_names_them() {
    let tar = tar_of(&["app/", "app/a"]);
    let cases: [(&[u8], &str); 5] = [
        (&tar, "an uncompressed tar archive"),
        (b"BZh91AY&SY", "a bzip2-compressed file"),
        (b"\xfd7zXZ\x00\x00\x04", "an xz-compressed file"),
        (b"\x28\xb5\x2f\xfd\x00", "a zstd-compressed file"),
        (
            b"<!DOCTYPE html><html>",
            "an HTML page (a failed download?)",
        ),
    ];
    for (bytes, format) in cases {
        let reason = rejected(bytes, RejectionKind::NotGzip);
        assert!(
            reason.ends_with(&format!("which looks like {format})")),
            "{reason}"
        );
    }
    assert_eq!(
        rejected(b"hi", RejectionKind::NotGzip),
        "not a gzip file (it starts with bytes 68 69)"
    );
}

#[test]
fn rejects_a_truncated_gzip_stream() {
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, b"app/", EntryType::Directory, None, b"");
    let noise: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    append(&mut builder, b"app/noise", EntryType::Regular, None, &noise);
    let bytes = gzip(&builder.into_inner().unwrap());
    for cut in [1, 5, 20, bytes.len() / 2, bytes.len() - 4, bytes.len() - 1] {
        let reason = rejected(&bytes[..cut], RejectionKind::TruncatedGzip);
        assert_eq!(
            reason,
            format!("truncated gzip stream after {}", human_size(cut as u64))
        );
    }
}

#[test]
fn rejects_corrupt_deflate_data() {
    let mut bytes = tgz_of(&["app/", "app/a"]);
    // The first block header: final, type 3, which deflate reserves.
    bytes[10] = 0xff;
    let reason = rejected(&bytes, RejectionKind::CorruptGzip);
    assert!(reason.starts_with("gzip data corrupt at "), "{reason}");
}

#[test]
fn rejects_a_crc_or_length_mismatch() {
    let good = tgz_of(&["app/", "app/a"]);
    for position in [good.len() - 8, good.len() - 1] {
        let mut bytes = good.clone();
        bytes[position] ^= 1;
        assert_eq!(
            rejected(&bytes, RejectionKind::CorruptGzip),
            "gzip checksum mismatch"
        );
    }
}

#[test]
fn rejects_a_gzip_that_holds_no_tar() {
    assert_eq!(
        rejected(&gzip(b"hello\n"), RejectionKind::NotTar),
        "not a tar archive inside the gzip stream: it holds only 6 bytes, less than one \
         512-byte tar header"
    );
    let reason = rejected(&gzip(&[b'x'; 2000]), RejectionKind::NotTar);
    assert!(
        reason.starts_with(
            "not a tar archive inside the gzip stream: its first block is not a tar header (numeric field was not a number: xxxxxxxx"
        ),
        "{reason}"
    );
    assert!(reason.ends_with("…)"), "{reason}");
    let mut not_tar = vec![b' '; 1000];
    not_tar[148..156].copy_from_slice(b"0000000\0");
    assert_eq!(
        rejected(&gzip(&not_tar), RejectionKind::NotTar),
        "not a tar archive inside the gzip stream: its first block is not a tar header \
         (archive header checksum mismatch)"
    );
}

#[test]
fn rejects_a_corrupt_tar_header_after_a_good_one() {
    let mut tar = tar_of(&["app/", "app/a"]);
    tar[512 + 10] ^= 0x20;
    let reason = rejected(&gzip(&tar), RejectionKind::CorruptTar);
    assert_eq!(
        reason,
        "tar data corrupt after app/: archive header checksum mismatch"
    );
}

#[test]
fn rejects_a_truncated_tar_inside_a_complete_gzip() {
    let mut builder = tar::Builder::new(Vec::new());
    append(&mut builder, b"app/", EntryType::Directory, None, b"");
    append(
        &mut builder,
        b"app/big",
        EntryType::Regular,
        None,
        &[1; 5000],
    );
    let tar = builder.into_inner().unwrap();
    assert_eq!(
        rejected(&gzip(&tar[..3000]), RejectionKind::CorruptTar),
        "truncated tar data: it ends inside the contents of app/big"
    );
    let header_end = 512 + 512 + 5120;
    assert_eq!(
        rejected(&gzip(&tar[..header_end + 100]), RejectionKind::CorruptTar),
        "truncated tar data: it ends after app/big, inside the next header"
    );
}

#[test]
fn rejects_two_top_level_entries() {
    assert_eq!(
        rejected(
            &tgz_of(&["app/", "app/a", "README.md"]),
            RejectionKind::NoSingleRoot
        ),
        "two top-level entries: app/ and README.md"
    );
}

#[test]
fn rejects_several_top_level_entries_listing_a_few() {
    assert_eq!(
        rejected(
            &tgz_of(&["a/", "b/x", "a/y", "README.md"]),
            RejectionKind::NoSingleRoot
        ),
        "3 top-level entries: a/, b/ and README.md"
    );
    assert_eq!(
        rejected(
            &tgz_of(&["a", "b", "c", "d", "e/"]),
            RejectionKind::NoSingleRoot
        ),
        "5 top-level entries: a, b, c and 2 more"
    );
}

#[test]
fn rejects_a_lone_file_at_the_top() {
    assert_eq!(
        rejected(&tgz_of(&["README.md"]), RejectionKind::NoSingleRoot),
        "the single top-level entry README.md is a file, not a folder"
    );
    let mut builder = tar::Builder::new(Vec::new());
    append(
        &mut builder,
        b"app",
        EntryType::Symlink,
        Some(b"elsewhere"),
        b"",
    );
    assert_eq!(
        rejected(
            &gzip(&builder.into_inner().unwrap()),
            RejectionKind::NoSingleRoot
        ),
        "the single top-level entry app is a symlink, not a folder"
    );
}

#[test]
fn rejects_a_file_that_is_also_used_as_the_folder() {
    let reason = rejected(&tgz_of(&["app", "app/x"]), RejectionKind::NoSingleRoot);
    assert_eq!(
        reason,
        "the single top-level entry app is a file, not a folder"
    );
}

#[test]
fn rejects_an_absolute_path() {
    assert_eq!(
        rejected(
            &tgz_with(&[(b"/etc/passwd", EntryType::Regular, None)]),
            RejectionKind::UnsafePath
        ),
        "absolute path /etc/passwd"
    );
}

#[test]
fn rejects_any_dot_dot_component() {
    assert_eq!(
        rejected(
            &tgz_with(&[(b"app/../../x", EntryType::Regular, None)]),
            RejectionKind::UnsafePath
        ),
        "path app/../../x leaves the archive"
    );
    assert_eq!(
        rejected(
            &tgz_with(&[(b"app/x/../y", EntryType::Regular, None)]),
            RejectionKind::UnsafePath
        ),
        "path app/x/../y contains a .. component"
    );
}

#[test]
fn rejects_device_files_and_fifos() {
    assert_eq!(
        rejected(
            &tgz_with(&[(b"app/dev/sda", EntryType::Block, None)]),
            RejectionKind::SpecialFile
        ),
        "device file app/dev/sda"
    );
    assert_eq!(
        rejected(
            &tgz_with(&[(b"app/tty", EntryType::Char, None)]),
            RejectionKind::SpecialFile
        ),
        "device file app/tty"
    );
    assert_eq!(
        rejected(
            &tgz_with(&[(b"app/pipe", EntryType::Fifo, None)]),
            RejectionKind::SpecialFile
        ),
        "fifo app/pipe"
    );
}

#[test]
fn accepts_links_that_stay_inside_the_folder() {
    let bytes = tgz_with(&[
        (b"app/a", EntryType::Regular, None),
        (b"app/d/", EntryType::Directory, None),
        (b"app/d/up", EntryType::Symlink, Some(b"../a")),
        (b"app/d/here", EntryType::Symlink, Some(b"./x/../y")),
        (b"app/self", EntryType::Symlink, Some(b".")),
        (b"app/hard", EntryType::Link, Some(b"app/a")),
        (b"./app/hard2", EntryType::Link, Some(b"./app/d/../a")),
    ]);
    let summary = check(&bytes).unwrap();
    assert_eq!((summary.entries, summary.files), (8, 1));
}

#[test]
fn rejects_links_that_leave_the_folder() {
    let cases: [(&[u8], EntryType, &[u8], &str); 6] = [
        (
            b"app/l",
            EntryType::Symlink,
            b"/etc/passwd",
            "symlink app/l points to the absolute path /etc/passwd, outside the app/ folder",
        ),
        (
            b"app/l",
            EntryType::Symlink,
            b"../../x",
            "symlink app/l points outside the app/ folder (../../x)",
        ),
        (
            b"app/l",
            EntryType::Symlink,
            b"../other",
            "symlink app/l points outside the app/ folder (../other)",
        ),
        (
            b"app/d/l",
            EntryType::Symlink,
            b"../../app/x",
            "symlink app/d/l points outside the app/ folder (../../app/x)",
        ),
        (
            b"app/h",
            EntryType::Link,
            b"/etc/shadow",
            "hard link app/h points to the absolute path /etc/shadow, outside the app/ folder",
        ),
        (
            b"app/h",
            EntryType::Link,
            b"../x",
            "hard link app/h points outside the app/ folder (../x)",
        ),
    ];
    for (name, kind, target, expected) in cases {
        let bytes = tgz_with(&[(name, kind, Some(target))]);
        assert_eq!(rejected(&bytes, RejectionKind::UnsafePath), expected);
    }
    let other_root = tgz_with(&[(b"app/h", EntryType::Link, Some(b"other/x"))]);
    assert_eq!(
        rejected(&other_root, RejectionKind::UnsafePath),
        "hard link app/h points outside the app/ folder (other/x)"
    );
    let empty = tgz_with(&[(b"app/l", EntryType::Symlink, None)]);
    assert_eq!(
        rejected(&empty, RejectionKind::UnsafePath),
        "symlink app/l has an empty target"
    );
}

#[test]
fn rejects_a_link_chain_that_leaves_the_folder() {
    // Lexically `app/a/x/../..` is `app`; but x is a link to app/a, so it is app/.. .
    let bytes = tgz_with(&[
        (b"app/a/", EntryType::Directory, None),
        (b"app/a/x", EntryType::Symlink, Some(b".")),
        (b"app/a/y", EntryType::Symlink, Some(b"x/../..")),
    ]);
    assert_eq!(
        rejected(&bytes, RejectionKind::UnsafePath),
        "symlink app/a/y points outside the app/ folder (x/../.., through the symlink \
         app/a/x -> .)"
    );
}

#[test]
fn handles_long_names_and_pax_headers_through_tar() {
    let long = format!("app/{}/file.txt", "d".repeat(150));
    let mut builder = tar::Builder::new(Vec::new());
    let mut global = tar::Header::new_ustar();
    global.set_path("pax_global_header").unwrap();
    global.set_entry_type(EntryType::XGlobalHeader);
    let comment = b"52 comment=0123456789012345678901234567890123456789\n";
    global.set_size(comment.len() as u64);
    global.set_cksum();
    builder.append(&global, &comment[..]).unwrap();
    builder
        .append_pax_extensions([("path", b"app/pax-named".as_slice())])
        .unwrap();
    append(&mut builder, b"ignored", EntryType::Regular, None, b"x");
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    builder.append_data(&mut header, &long, &b"y"[..]).unwrap();
    let summary = check(&gzip(&builder.into_inner().unwrap())).unwrap();
    assert_eq!((summary.root.as_str(), summary.entries), ("app", 2));

    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    let escaping = format!("app/{}/../../../x", "d".repeat(150));
    builder
        .append_data(&mut header, "app/ok", &b""[..])
        .unwrap();
    append_long_name(&mut builder, escaping.as_bytes());
    assert_eq!(
        rejected(
            &gzip(&builder.into_inner().unwrap()),
            RejectionKind::UnsafePath
        ),
        format!("path {escaping} leaves the archive")
    );
}

/// A header of `kind` announcing `size` bytes, followed by `body` (which may be shorter).
fn announced(kind: EntryType, size: u64, body: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(body);
    tar
}

#[test]
fn refuses_an_oversized_extension_record_before_the_tar_reader_takes_it() {
    // Announced far beyond what is there: refused on the header alone, nothing buffered.
    for (kind, what) in [
        (EntryType::GNULongName, "a long-name record of 300.0 MB"),
        (EntryType::GNULongLink, "a long-link record of 300.0 MB"),
        (EntryType::XHeader, "a PAX header of 300.0 MB"),
        (EntryType::XGlobalHeader, "a PAX header of 300.0 MB"),
    ] {
        let bytes = gzip(&announced(kind, 300_000_000, &[b'a'; 4096]));
        let reason = rejected(&bytes, RejectionKind::CorruptTar);
        assert_eq!(reason, format!("{what} (more than 1.0 MB allowed)"));
    }
    // Complete, just over the limit, after a good entry: the same.
    let mut tar = tar_of(&["app/"]);
    tar.truncate(tar.len() - 1024);
    let body = vec![b'n'; 1024 * 1024 + 1];
    tar.extend(announced(EntryType::GNULongName, body.len() as u64, &body));
    tar.resize(tar.len().div_ceil(512) * 512 + 2048, 0);
    let reason = rejected(&gzip(&tar), RejectionKind::CorruptTar);
    assert!(
        reason.starts_with("a long-name record of 1.0 MB"),
        "{reason}"
    );
}

#[test]
fn follows_headers_through_sparse_files_and_pax_size_overrides() {
    // A PAX `size` record overrides the next header's size: the guard stops following
    // (it would otherwise lose its place) and the archive is judged by tar alone.
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(EntryType::Directory);
    dir.set_size(0);
    builder.append_data(&mut dir, "app/", &b""[..]).unwrap();
    builder
        .append_pax_extensions([("size", b"600".as_slice())])
        .unwrap();
    let mut file = tar::Header::new_ustar();
    file.set_path("app/big").unwrap();
    file.set_size(0);
    file.set_mode(0o644);
    file.set_cksum();
    let mut tar = builder.into_inner().unwrap();
    tar.truncate(tar.len() - 1024); // the end-of-archive blocks
    tar.extend_from_slice(file.as_bytes());
    // 600 bytes of body that look like a huge long-name header to a reader that trusted
    // the header's size of 0.
    let mut body = announced(EntryType::GNULongName, 300_000_000, &[]);
    body.resize(1024, b'z');
    tar.extend_from_slice(&body);
    tar.extend_from_slice(&[0; 1024]);
    let summary = check(&gzip(&tar)).unwrap();
    assert_eq!((summary.root.as_str(), summary.files), ("app", 1));

    // GNU tar's sparse format with extension blocks, from GNU tar itself when present.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app");
    std::fs::create_dir(&src).unwrap();
    let sparse = std::fs::File::create(src.join("sparse")).unwrap();
    // Many holes: more than the 4 sparse entries of the main header.
    for i in 0..12u64 {
        use std::os::unix::fs::FileExt;
        sparse.write_at(b"data", i * 1024 * 1024).unwrap();
    }
    std::fs::write(src.join("after"), "x").unwrap();
    let archive = dir.path().join("s.tar.gz");
    let made = std::process::Command::new("tar")
        .args(["--format=gnu", "-S", "-czf"])
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .arg("app")
        .status()
        .unwrap();
    assert!(made.success());
    let summary = inspect(&archive, &Limits::default()).unwrap();
    assert_eq!((summary.root.as_str(), summary.files), ("app", 2));
}

/// A GNU long-name entry followed by a file, written by hand so `..` gets through.
fn append_long_name(builder: &mut tar::Builder<Vec<u8>>, name: &[u8]) {
    let mut long = tar::Header::new_gnu();
    long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    long.set_entry_type(EntryType::GNULongName);
    long.set_mode(0o644);
    long.set_size(name.len() as u64 + 1);
    long.set_cksum();
    let mut data = name.to_vec();
    data.push(0);
    builder.append(&long, &data[..]).unwrap();
    append(builder, b"short", EntryType::Regular, None, b"");
}

#[test]
fn enforces_the_uncompressed_limit_exactly() {
    let tar = tar_of(&["app/", "app/a"]);
    let bytes = gzip(&tar);
    let size = tar.len() as u64;
    let at_limit = Limits {
        max_uncompressed: size,
    };
    assert_eq!(
        check_with(&bytes, &at_limit).unwrap().uncompressed_bytes,
        size
    );
    let below = Limits {
        max_uncompressed: size - 1,
    };
    let rejection = check_with(&bytes, &below).unwrap_err();
    assert_eq!(rejection.kind, RejectionKind::TooLarge);
    assert_eq!(
        rejection.reason,
        format!(
            "uncompressed size exceeds the limit of {}",
            human_size(size - 1)
        )
    );
}

/// Counts what the inspector pulls from its input.
struct Metered<'a> {
    bytes: &'a [u8],
    read: u64,
}

impl Read for Metered<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.bytes.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// A tar.gz of `app/zeros`, a file of zeros filling `mib` MiB of tar stream (end blocks
/// included), as one gzip member. Writing 400 MB through an encoder takes ~20 s in a debug
/// build, so one deflate block of 1 MiB of zeros ending in a full flush (which makes it
/// self-contained) is repeated instead, and the CRCs are combined.
fn zero_bomb(mib: u64) -> Vec<u8> {
    const MIB: u64 = 1 << 20;
    let mut header = tar::Header::new_gnu();
    header.set_path("app/zeros").unwrap();
    header.set_size(mib * MIB - 1024);
    header.set_mode(0o644);
    header.set_cksum();

    let mut deflate = flate2::Compress::new(Compression::best(), false);
    let mut full_flush = |input: &[u8]| {
        let before = deflate.total_in();
        let mut out = Vec::with_capacity(input.len() + 1024);
        deflate
            .compress_vec(input, &mut out, flate2::FlushCompress::Full)
            .unwrap();
        assert_eq!(deflate.total_in() - before, input.len() as u64);
        out
    };
    let zeros = vec![0u8; MIB as usize];
    let start = full_flush(header.as_bytes());
    let block = full_flush(&zeros);
    assert_eq!(
        full_flush(&zeros),
        block,
        "a full flush makes blocks repeatable"
    );
    let mut end = Vec::with_capacity(64);
    deflate
        .compress_vec(&[], &mut end, flate2::FlushCompress::Finish)
        .unwrap();

    let mut crc = flate2::Crc::new();
    crc.update(header.as_bytes());
    let mut zeros_crc = flate2::Crc::new();
    zeros_crc.update(&zeros);
    for _ in 0..mib {
        crc.combine(&zeros_crc);
    }

    let mut bomb = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    bomb.extend(&start);
    for _ in 0..mib {
        bomb.extend(&block);
    }
    bomb.extend(&end);
    bomb.extend(crc.sum().to_le_bytes());
    bomb.extend(crc.amount().to_le_bytes());
    bomb
}

#[test]
fn the_test_bomb_is_a_valid_archive() {
    let bomb = zero_bomb(3);
    let unlimited = Limits {
        max_uncompressed: u64::MAX,
    };
    let summary = check_with(&bomb, &unlimited).unwrap();
    assert_eq!((summary.entries, summary.files), (1, 1));
    assert_eq!(summary.uncompressed_bytes, 512 + 3 * (1 << 20));
}

#[test]
fn refuses_a_gzip_bomb_without_reading_it_all() {
    // 400 MiB of zeros in one file: about 400 kB compressed.
    let bomb = zero_bomb(400);
    assert!(bomb.len() < 1_000_000, "{}", bomb.len());

    let mut input = Metered {
        bytes: &bomb,
        read: 0,
    };
    let rejection = inspect_reader(&mut input, &Limits::default())
        .unwrap()
        .unwrap_err();
    assert_eq!(rejection.kind, RejectionKind::TooLarge);
    assert_eq!(
        rejection.reason,
        "uncompressed size exceeds the limit of 314.6 MB"
    );
    // It stopped at the limit (3/4 of the stream), not at the end.
    assert!(
        input.read < bomb.len() as u64 * 8 / 10,
        "read {} of {}",
        input.read,
        bomb.len()
    );
}

struct Failing;

impl Read for Failing {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "no"))
    }
}

#[test]
fn a_failing_reader_is_an_io_error_not_a_rejection() {
    let error = inspect_reader(Failing, &Limits::default()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);

    // Failing after a valid start: still the reader's fault, reported as such.
    let bytes = tgz_of(&["app/", "app/a"]);
    let reader = (&bytes[..20]).chain(Failing);
    let error = inspect_reader(reader, &Limits::default()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
}

#[test]
fn inspect_reads_a_file_and_names_it_when_it_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.tar.gz");
    let bytes = tgz_of(&["app/", "app/a"]);
    std::fs::write(&path, &bytes).unwrap();
    let summary = inspect(&path, &Limits::default()).unwrap();
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(&bytes)));

    let missing = dir.path().join("missing.tar.gz");
    match inspect(&missing, &Limits::default()) {
        Err(InspectError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }

    std::fs::write(&path, b"").unwrap();
    let error = inspect(&path, &Limits::default()).unwrap_err();
    assert!(matches!(&error, InspectError::Rejected(r) if r.kind == RejectionKind::Empty));
    assert_eq!(error.to_string(), "empty file (0 bytes)");
}
