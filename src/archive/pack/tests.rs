use super::*;

fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let full = dir.path().join(path);
        fs::create_dir_all(full.parent().unwrap()).unwrap();
        fs::write(&full, text).unwrap();
    }
    dir
}

fn rules(dir: &Path) -> IgnoreRules {
    IgnoreRules::new(dir, &[], &[], &[]).unwrap()
}

fn packed(rules: &IgnoreRules, opts: &PackOptions) -> (Vec<u8>, PackSummary) {
    let mut bytes = Vec::new();
    let summary = pack_to_writer(rules, &mut bytes, opts).unwrap();
    (bytes, summary)
}

/// (name, type, link target, content) of every entry.
fn listing(bytes: &[u8]) -> Vec<(String, EntryType, Option<String>, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let header = entry.header();
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
            assert_eq!(header.username_bytes(), Some(&b""[..]));
            assert_eq!(header.groupname_bytes(), Some(&b""[..]));
            let kind = header.entry_type();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap());
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            (name, kind, link, content)
        })
        .collect()
}

#[test]
fn packs_under_one_folder_in_walk_order() {
    let dir = tree(&[
        ("b/c.txt", "see"),
        ("a.txt", "hello"),
        (".gitignore", "*.log\n"),
        ("x.log", ""),
    ]);
    let rules = rules(dir.path());
    let (bytes, summary) = packed(&rules, &PackOptions::new("my-app"));
    let list = listing(&bytes);
    let names: Vec<&str> = list.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "my-app/",
            "my-app/.gitignore",
            "my-app/a.txt",
            "my-app/b/",
            "my-app/b/c.txt"
        ]
    );
    assert_eq!(list[2].3, b"hello");
    assert_eq!(list[3].1, EntryType::Directory);
    assert_eq!(
        (summary.entries, summary.files, summary.bytes_in),
        (5, 3, 5 + 3 + 6)
    );
    assert_eq!(summary.bytes_out, bytes.len() as u64);
    assert_eq!(summary.digest, tree_digest(&rules).unwrap());
    // gzip header: no name flag, mtime 0, OS Unix.
    assert_eq!(&bytes[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
}

#[test]
fn the_digest_does_not_depend_on_the_prefix_or_level() {
    let dir = tree(&[("a", "1")]);
    let rules = rules(dir.path());
    let one = packed(&rules, &PackOptions::new("one")).1.digest;
    let two = packed(
        &rules,
        &PackOptions {
            level: 0,
            ..PackOptions::new("two")
        },
    )
    .1
    .digest;
    assert_eq!(one, two);
}

#[test]
fn the_summary_matches_what_inspect_reads() {
    // Several compression blocks, so the parallel path is the one checked.
    let big: String = (0..40_000).map(|i| format!("line {i}\n")).collect();
    let dir = tree(&[("a.txt", &big), ("b/c.txt", "see"), ("b/d/e", "")]);
    let rules = rules(dir.path());
    for threads in [1, 2, 3] {
        let opts = PackOptions {
            threads,
            ..PackOptions::new("app")
        };
        let (bytes, summary) = packed(&rules, &opts);
        let seen = crate::archive::inspect::inspect_reader(
            &bytes[..],
            &crate::archive::inspect::Limits::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(seen.root, "app");
        assert_eq!(
            (seen.entries, seen.files, seen.uncompressed_bytes),
            (summary.entries, summary.files, summary.uncompressed_bytes)
        );
        assert_eq!(seen.compressed_bytes, summary.bytes_out);
        assert_eq!(seen.sha256, summary.sha256);
        assert_eq!(summary.sha256, hex::encode(Sha256::digest(&bytes)));
    }
}

#[test]
fn stops_at_the_uncompressed_limit() {
    let dir = tree(&[("a.txt", &"x".repeat(100_000)), ("z.txt", "z")]);
    let rules = rules(dir.path());
    let whole = packed(&rules, &PackOptions::new("app"))
        .1
        .uncompressed_bytes;
    let at = |limit: u64| {
        let opts = PackOptions {
            max_uncompressed: Some(limit),
            ..PackOptions::new("app")
        };
        pack_to_writer(&rules, Vec::new(), &opts)
    };
    assert_eq!(at(whole).unwrap().uncompressed_bytes, whole);
    let error = at(whole - 1).unwrap_err();
    assert!(
        matches!(error, PackError::TooLarge { limit } if limit == whole - 1),
        "{error}"
    );
    assert!(error.to_string().contains("too large"), "{error}");
    // Refused in the middle of a file's body, and no archive is left behind.
    let out = dir.path().join("out.tar.gz");
    let opts = PackOptions {
        max_uncompressed: Some(50_000),
        ..PackOptions::new("app")
    };
    assert!(matches!(
        pack(&rules, &out, &opts),
        Err(PackError::TooLarge { limit: 50_000 })
    ));
    assert!(!out.exists());
}

#[test]
fn refuses_unsafe_prefixes() {
    let dir = tree(&[("a", "1")]);
    let rules = rules(dir.path());
    for bad in ["", ".", "..", "a/b", "/abs", "sp ace", "é"] {
        let error = pack_to_writer(&rules, Vec::new(), &PackOptions::new(bad)).unwrap_err();
        assert!(
            matches!(&error, PackError::BadPrefix(p) if p == bad),
            "{error}"
        );
    }
    let out = dir.path().join("never.tar.gz");
    assert!(pack(&rules, &out, &PackOptions::new("../x")).is_err());
    assert!(!out.exists());
    for good in ["app", "my-app_2.0", "..."] {
        pack_to_writer(&rules, Vec::new(), &PackOptions::new(good)).unwrap();
    }
}

#[test]
fn symlink_targets_are_judged_lexically() {
    let ok = |rel: &str, target: &str| unsafe_target(Path::new(rel), Path::new(target)).is_none();
    assert!(ok("l", "a"));
    assert!(ok("l", "."));
    assert!(ok("l", "./x/../y"));
    assert!(ok("d/l", "../a"));
    assert!(ok("d/e/l", "../../a"));
    assert!(!ok("l", "../x"));
    assert!(!ok("d/l", "../../x"));
    assert!(!ok("l", "x/../../y"));
    assert!(!ok("l", "/etc/passwd"));
    assert!(!ok("l", ""));
}

/// Reads through [`ExactSize`] from a file of `actual` bytes announced as `announced`.
fn exact(actual: usize, announced: u64) -> (Vec<u8>, bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    fs::write(&path, vec![7u8; actual]).unwrap();
    let mut hasher = Sha256::new();
    let mut body = ExactSize {
        file: File::open(&path).unwrap(),
        remaining: announced,
        at_end: false,
        hasher: &mut hasher,
        error: None,
    };
    let mut out = Vec::new();
    body.read_to_end(&mut out).unwrap();
    let at_end = body.at_end;
    assert_eq!(
        hasher.finalize().as_slice(),
        Sha256::digest(&out).as_slice()
    );
    (out, at_end)
}

#[test]
fn a_file_that_changed_size_is_cut_or_padded_to_its_header() {
    let (shrunk, at_end) = exact(3, 5);
    assert_eq!(shrunk, [7, 7, 7, 0, 0]);
    assert!(at_end);
    let (grown, at_end) = exact(10, 4);
    assert_eq!(grown, [7, 7, 7, 7]);
    assert!(!at_end);
    assert_eq!(exact(100_000, 100_000).0.len(), 100_000);
}

#[test]
fn io_errors_name_the_path() {
    let error = PackError::Io {
        path: PathBuf::from("/src/app/key"),
        action: "open",
        source: io::Error::from(io::ErrorKind::PermissionDenied),
    };
    assert_eq!(
        error.to_string(),
        "cannot open /src/app/key: permission denied"
    );
    let error = PackError::Io {
        path: PathBuf::new(),
        action: "write the archive",
        source: io::Error::from(io::ErrorKind::WriteZero),
    };
    assert_eq!(error.to_string(), "cannot write the archive: write zero");
}

#[test]
fn progress_counts_each_entry_up_to_the_summary() {
    let dir = tree(&[("a.txt", "hello"), ("b/c.txt", "see"), ("b/d.txt", "")]);
    let rules = rules(dir.path());
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("p.tar.gz");
    let mut seen = Vec::new();
    let summary =
        pack_with_progress(&rules, &out, &PackOptions::new("p"), &mut |p| seen.push(p)).unwrap();
    // One call per entry under the top folder: a.txt, b/, b/c.txt, b/d.txt.
    let entries: Vec<u64> = seen.iter().map(|p| p.entries).collect();
    assert_eq!(entries, vec![2, 3, 4, 5]);
    assert!(seen.iter().all(|p| p.total_entries == 5), "{seen:?}");
    let last = seen.last().unwrap();
    assert_eq!(
        (last.entries, last.files, last.bytes_in),
        (summary.entries, summary.files, summary.bytes_in)
    );
    assert_eq!((last.files, last.bytes_in), (3, 8));
    // Counts only grow.
    assert!(seen.windows(2).all(|w| w[0].bytes_in <= w[1].bytes_in));
}
