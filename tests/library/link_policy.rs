//! `dropdeploy check` (the inspector) and the local extractor judge entry paths and links by
//! one policy: each case below is a real `.tar.gz` on disk, checked by `inspect` and deployed
//! by a `LocalTarget`, and both must give the expected verdict, refusing with the same reason.

use std::fs;
use std::path::Path;
use std::time::Duration;

use dropdeploy::archive::inspect::{InspectError, Limits, RejectionKind, inspect};
use dropdeploy::config::LocalTargetConfig;
use dropdeploy::deploy::local::{LocalStep, LocalTarget};
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

const DIR: EntryType = EntryType::Directory;
const FILE: EntryType = EntryType::Regular;
const SYMLINK: EntryType = EntryType::Symlink;
const HARD: EntryType = EntryType::Link;

/// Name, type and link target, written into the header as they are.
type Entry = (&'static str, EntryType, &'static str);

struct Case {
    name: &'static str,
    entries: &'static [Entry],
    accepted: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "a link to . then a link through it with .. (the reported chain)",
        entries: &[
            ("app/", DIR, ""),
            ("app/a/", DIR, ""),
            ("app/a/x", SYMLINK, "."),
            ("app/a/y", SYMLINK, "x/../.."),
        ],
        accepted: false,
    },
    Case {
        name: "a link to . then x/.. at the top (lexically inside)",
        entries: &[
            ("app/", DIR, ""),
            ("app/x", SYMLINK, "."),
            ("app/y", SYMLINK, "x/.."),
        ],
        accepted: false,
    },
    Case {
        name: "a link to . then x/../..",
        entries: &[
            ("app/", DIR, ""),
            ("app/x", SYMLINK, "."),
            ("app/y", SYMLINK, "x/../.."),
        ],
        accepted: false,
    },
    Case {
        name: "an absolute symlink target",
        entries: &[("app/", DIR, ""), ("app/l", SYMLINK, "/etc/passwd")],
        accepted: false,
    },
    Case {
        name: "an absolute hard link target",
        entries: &[("app/", DIR, ""), ("app/h", HARD, "/etc/passwd")],
        accepted: false,
    },
    Case {
        name: "a link to a link that escapes",
        entries: &[
            ("app/", DIR, ""),
            ("app/up", SYMLINK, "../.."),
            ("app/l", SYMLINK, "up"),
        ],
        accepted: false,
    },
    Case {
        name: "a link through a link to a folder's parent, then ..",
        entries: &[
            ("app/", DIR, ""),
            ("app/d/", DIR, ""),
            ("app/d/up", SYMLINK, ".."),
            ("app/l", SYMLINK, "d/up/.."),
        ],
        accepted: false,
    },
    Case {
        name: "a chain of links to links ending at ., then ..",
        entries: &[
            ("app/", DIR, ""),
            ("app/a", SYMLINK, "b"),
            ("app/b", SYMLINK, "."),
            ("app/c", SYMLINK, "a/.."),
        ],
        accepted: false,
    },
    Case {
        name: "a later link that would redirect an accepted one outside",
        entries: &[
            ("app/", DIR, ""),
            ("app/m", SYMLINK, "u/.."),
            ("app/u", SYMLINK, "."),
        ],
        accepted: false,
    },
    Case {
        name: "a link to a folder, then an entry under it",
        entries: &[
            ("app/", DIR, ""),
            ("app/d/", DIR, ""),
            ("app/l", SYMLINK, "d"),
            ("app/l/f", FILE, ""),
        ],
        accepted: false,
    },
    Case {
        name: "a link to a folder, then a link through it climbing out",
        entries: &[
            ("app/", DIR, ""),
            ("app/d/", DIR, ""),
            ("app/d/e/", DIR, ""),
            ("app/l", SYMLINK, "d/e"),
            ("app/m", SYMLINK, "l/../../.."),
        ],
        accepted: false,
    },
    Case {
        name: "a hard link to an escaping path",
        entries: &[("app/", DIR, ""), ("app/h", HARD, "app/../../etc/passwd")],
        accepted: false,
    },
    Case {
        name: "a hard link through a link to .",
        entries: &[
            ("app/", DIR, ""),
            ("app/f", FILE, ""),
            ("app/l", SYMLINK, "."),
            ("app/h", HARD, "app/l/f"),
        ],
        accepted: false,
    },
    Case {
        name: "a path climbing out",
        entries: &[("app/", DIR, ""), ("app/../../evil", FILE, "")],
        accepted: false,
    },
    Case {
        name: "a benign relative link inside the tree",
        entries: &[
            ("app/", DIR, ""),
            ("app/a/", DIR, ""),
            ("app/a/f", FILE, ""),
            ("app/b/", DIR, ""),
            ("app/b/l", SYMLINK, "../a/f"),
        ],
        accepted: true,
    },
    Case {
        name: "a link to a sibling in the root folder",
        entries: &[
            ("app/", DIR, ""),
            ("app/f", FILE, ""),
            ("app/l", SYMLINK, "f"),
        ],
        accepted: true,
    },
    Case {
        name: "a link through a link to a folder, stepping back inside",
        entries: &[
            ("app/", DIR, ""),
            ("app/d/", DIR, ""),
            ("app/d/e/", DIR, ""),
            ("app/l", SYMLINK, "d/e"),
            ("app/m", SYMLINK, "l/../.."),
        ],
        accepted: true,
    },
    Case {
        name: "a link to the root folder itself and a link to a later file",
        entries: &[
            ("app/", DIR, ""),
            ("app/self", SYMLINK, "."),
            ("app/l", SYMLINK, "sub/x"),
            ("app/sub/", DIR, ""),
            ("app/sub/x", FILE, ""),
        ],
        accepted: true,
    },
    Case {
        name: "a hard link to a file in the root folder",
        entries: &[
            ("app/", DIR, ""),
            ("app/f", FILE, ""),
            ("app/h", HARD, "./app/d/../f"),
        ],
        accepted: true,
    },
];

fn write_archive(path: &Path, entries: &[Entry]) {
    let file = fs::File::create(path).unwrap();
    let mut builder = tar::Builder::new(GzEncoder::new(file, Compression::fast()));
    for (name, kind, link) in entries {
        let data: &[u8] = if *kind == FILE { b"data" } else { b"" };
        let mut header = Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(*kind);
        header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        header.set_size(data.len() as u64);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
}

/// The verdict of `check` on `archive`: `None` when accepted, else the reason.
fn check(archive: &Path) -> Option<String> {
    match inspect(archive, &Limits::default()) {
        Ok(_) => None,
        Err(InspectError::Rejected(rejection)) => {
            assert_eq!(rejection.kind, RejectionKind::UnsafePath, "{rejection}");
            Some(rejection.reason)
        }
        Err(other) => panic!("cannot inspect {}: {other}", archive.display()),
    }
}

/// The verdict of the local extractor on `archive`: `None` when deployed, else the reason.
fn extract(releases: &Path, archive: &Path) -> Option<String> {
    let target = LocalTarget::new(&LocalTargetConfig {
        releases_dir: releases.to_path_buf(),
        activate: Vec::new(),
        activate_timeout: Duration::from_secs(10),
        keep_releases: 5,
    });
    let release = LocalTarget::release_name(1_767_225_600, "web-r1");
    match target.deploy("web", &release, "web-r1", archive) {
        Ok(_) => None,
        Err(failure) => {
            assert_eq!(failure.step, LocalStep::Extract, "{failure:?}");
            Some(failure.reason)
        }
    }
}

#[test]
fn check_and_the_local_extractor_give_the_same_verdict_on_every_path_and_link() {
    let mut wrong = Vec::new();
    for case in CASES {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("case.tar.gz");
        write_archive(&archive, case.entries);
        let releases = dir.path().join("releases");
        fs::create_dir(&releases).unwrap();

        let checked = check(&archive);
        let extracted = extract(&releases, &archive);
        match (&checked, &extracted) {
            (None, None) if case.accepted => {}
            // The extractor's reason wraps the policy's: the same words as `check`.
            (Some(why), Some(failure)) if !case.accepted && failure.contains(why.as_str()) => {}
            _ => wrong.push(format!(
                "{}: expected {}, check said {checked:?}, the extractor said {extracted:?}",
                case.name,
                if case.accepted { "accepted" } else { "refused" }
            )),
        }
        // Nothing ever lands beside the releases, whatever the verdict.
        let beside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(beside.len(), 2, "{}: {beside:?}", case.name);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_reported_chain_is_refused_naming_the_entry_the_target_and_the_link_it_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("chain.tar.gz");
    write_archive(&archive, CASES[0].entries);
    let expected = "symlink app/a/y points outside the app/ folder (x/../.., through the \
                    symlink app/a/x -> .)";
    assert_eq!(check(&archive).as_deref(), Some(expected));
    let releases = dir.path().join("releases");
    fs::create_dir(&releases).unwrap();
    let reason = extract(&releases, &archive).unwrap_or_default();
    assert!(reason.contains(expected), "{reason}");
}
