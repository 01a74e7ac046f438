//! Packing real source trees: the archives pass `inspect`, GNU gzip and GNU tar, are
//! deterministic, and leave out exactly what the ignore rules say.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use dropdeploy::archive::ignore::{EntryKind, IgnoreRules};
use dropdeploy::archive::inspect::{Limits, inspect};
use dropdeploy::archive::pack::{PackError, PackOptions, PackSummary, pack, tree_digest};

/// A source tree in a temporary directory, and a separate place for archives.
struct Tree {
    src: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Tree {
    /// `"dir/"` makes a folder, `("path", text)` a file with that text.
    fn new(files: &[(&str, &str)]) -> Tree {
        let tree = Tree {
            src: tempfile::tempdir().unwrap(),
            out: tempfile::tempdir().unwrap(),
        };
        for (path, text) in files {
            tree.write(path, text);
        }
        tree
    }

    fn root(&self) -> &Path {
        self.src.path()
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root().join(relative)
    }

    fn write(&self, relative: &str, text: &str) {
        let full = self.path(relative);
        if relative.ends_with('/') {
            fs::create_dir_all(&full).unwrap();
        } else {
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, text).unwrap();
        }
    }

    fn rules(&self) -> IgnoreRules {
        self.rules_with(&[], &[], &[])
    }

    fn rules_with(&self, ignore: &[&str], include: &[&str], always: &[PathBuf]) -> IgnoreRules {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        IgnoreRules::new(self.root(), &owned(ignore), &owned(include), always).unwrap()
    }

    /// Packs into `<out>/<name>` under the prefix `app`.
    fn pack(&self, rules: &IgnoreRules, name: &str) -> (PathBuf, PackSummary) {
        let archive = self.out.path().join(name);
        let summary = pack(rules, &archive, &PackOptions::new("app")).unwrap();
        (archive, summary)
    }

    /// The names GNU tar lists in a pack of the tree with these rules.
    fn packed_names(&self, rules: &IgnoreRules) -> Vec<String> {
        let (archive, _) = self.pack(rules, "names.tar.gz");
        gnu_list(&archive)
    }
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// `tar -tzf`, one name per member.
fn gnu_list(archive: &Path) -> Vec<String> {
    run("/usr/bin/tar", &["-tzf".as_ref(), archive.as_os_str()])
        .lines()
        .map(str::to_string)
        .collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn sorted(list: &[String]) -> Vec<String> {
    let mut sorted = list.to_vec();
    sorted.sort_by(|a, b| a.trim_end_matches('/').cmp(b.trim_end_matches('/')));
    sorted
}

fn set_mtime(path: &Path, at: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

/// Every path on disk under `root`, packed or not, with whether it is a folder.
fn everything(root: &Path) -> Vec<(PathBuf, bool)> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let is_dir = entry.file_type().unwrap().is_dir();
            all.push((entry.path(), is_dir));
            if is_dir {
                stack.push(entry.path());
            }
        }
    }
    all
}

/// `is_ignored` says "kept" for exactly the paths `walk` lists.
fn assert_is_ignored_agrees_with_walk(rules: &IgnoreRules) {
    let walked: BTreeSet<PathBuf> = rules
        .walk()
        .unwrap()
        .into_iter()
        .map(|e| e.absolute)
        .collect();
    for (path, is_dir) in everything(rules.root()) {
        assert_eq!(
            rules.is_ignored(&path, is_dir),
            !walked.contains(&path),
            "is_ignored and walk disagree on {}",
            path.display()
        );
    }
}

#[test]
fn a_pack_passes_inspect_gzip_and_gnu_tar() {
    let tree = Tree::new(&[
        ("index.js", "console.log('hi')\n"),
        ("lib/util.js", "module.exports = {}\n"),
        ("lib/deep/er.txt", "x"),
        ("empty/", ""),
        ("Procfile", "web: node index.js\n"),
    ]);
    let rules = tree.rules();
    let (archive, summary) = tree.pack(&rules, "app.tar.gz");

    let inspected = inspect(&archive, &Limits::default()).unwrap();
    assert_eq!(inspected.root, "app");
    assert_eq!(
        (inspected.entries, inspected.files),
        (summary.entries, summary.files)
    );
    assert_eq!(inspected.compressed_bytes, summary.bytes_out);
    assert_eq!(summary.bytes_out, fs::metadata(&archive).unwrap().len());
    assert_eq!(summary.bytes_in, 18 + 20 + 1 + 19);
    assert!(summary.skipped.is_empty());

    run("/usr/bin/gzip", &["-t".as_ref(), archive.as_os_str()]);
    let listed = gnu_list(&archive);
    assert_eq!(
        listed,
        names(&[
            "app/",
            "app/Procfile",
            "app/empty/",
            "app/index.js",
            "app/lib/",
            "app/lib/deep/",
            "app/lib/deep/er.txt",
            "app/lib/util.js",
        ])
    );
    assert_eq!(listed, sorted(&listed));
}

/// An archive of many compression blocks (the parallel gzip writer cuts the tar stream every
/// 128 KiB) is one gzip member that GNU gzip tests and GNU tar extracts byte for byte, whatever
/// the number of threads.
#[test]
fn a_multi_block_pack_extracts_with_gnu_tar_identically() {
    let big: String = (0..60_000).map(|i| format!("{i} lorem ipsum\n")).collect();
    let random: String = (0..200_000u64)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) % 26) as u8))
        .collect();
    let tree = Tree::new(&[("big.txt", &big), ("lib/noise.txt", &random), ("a", "a")]);
    let rules = tree.rules();
    let mut packs = Vec::new();
    for threads in [1, 2, 4] {
        let archive = tree.out.path().join(format!("t{threads}.tar.gz"));
        let opts = PackOptions {
            threads,
            ..PackOptions::new("app")
        };
        let summary = pack(&rules, &archive, &opts).unwrap();
        assert!(summary.uncompressed_bytes > 6 * 128 * 1024, "{summary:?}");
        packs.push((fs::read(&archive).unwrap(), summary.uncompressed_bytes));
        run("/usr/bin/gzip", &["-t".as_ref(), archive.as_os_str()]);
        let inspected = inspect(&archive, &Limits::default()).unwrap();
        assert_eq!(inspected.sha256, summary.sha256);
        assert_eq!(inspected.uncompressed_bytes, summary.uncompressed_bytes);
        let into = tree.out.path().join(format!("x{threads}"));
        fs::create_dir(&into).unwrap();
        run(
            "/usr/bin/tar",
            &[
                "-xzf".as_ref(),
                archive.as_os_str(),
                "-C".as_ref(),
                into.as_os_str(),
            ],
        );
        assert_eq!(fs::read_to_string(into.join("app/big.txt")).unwrap(), big);
        assert_eq!(
            fs::read_to_string(into.join("app/lib/noise.txt")).unwrap(),
            random
        );
    }
    assert!(
        packs.windows(2).all(|w| w[0] == w[1]),
        "thread count changed the bytes"
    );
    // One member: a reader that stops after the first member gets the whole tar stream.
    let (bytes, uncompressed) = &packs[0];
    let mut decoder = flate2::read::GzDecoder::new(&bytes[..]);
    let read = std::io::copy(&mut decoder, &mut std::io::sink()).unwrap();
    assert_eq!(read, *uncompressed);
}

#[test]
fn packs_are_byte_identical_and_touch_keeps_the_digest() {
    let tree = Tree::new(&[("a.txt", "alpha"), ("b/c.sh", "#!/bin/sh\n")]);
    let rules = tree.rules();
    let (first, one) = tree.pack(&rules, "1.tar.gz");
    let (second, two) = tree.pack(&rules, "2.tar.gz");
    assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
    assert_eq!(one, two);
    assert_eq!(one.digest, tree_digest(&rules).unwrap());

    // The archive stores mtimes, so its bytes change; the content digest does not.
    set_mtime(
        &tree.path("a.txt"),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
    );
    let (touched, three) = tree.pack(&rules, "3.tar.gz");
    assert_ne!(fs::read(&first).unwrap(), fs::read(&touched).unwrap());
    assert_eq!(three.digest, one.digest);
}

#[test]
fn editing_chmod_and_renaming_change_the_digest() {
    let tree = Tree::new(&[("run.sh", "echo hi\n"), ("data.txt", "1")]);
    let mut seen = BTreeSet::new();
    let digest = || tree_digest(&tree.rules()).unwrap();
    assert!(seen.insert(digest()));

    fs::write(tree.path("data.txt"), "2").unwrap();
    assert!(seen.insert(digest()), "an edit changes the digest");

    fs::set_permissions(tree.path("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(seen.insert(digest()), "chmod +x changes the digest");

    fs::rename(tree.path("data.txt"), tree.path("data2.txt")).unwrap();
    assert!(seen.insert(digest()), "a rename changes the digest");

    fs::create_dir(tree.path("new")).unwrap();
    assert!(
        seen.insert(digest()),
        "a new empty folder changes the digest"
    );
}

#[test]
fn the_executable_bit_is_kept() {
    let tree = Tree::new(&[("run.sh", "echo hi\n"), ("plain", "")]);
    fs::set_permissions(tree.path("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(tree.path("plain"), fs::Permissions::from_mode(0o640)).unwrap();
    let (archive, _) = tree.pack(&tree.rules(), "modes.tar.gz");
    let verbose = run("/usr/bin/tar", &["-tvzf".as_ref(), archive.as_os_str()]);
    let line = |name: &str| {
        verbose
            .lines()
            .find(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not in {verbose}"))
            .to_string()
    };
    assert!(
        line("app/run.sh").starts_with("-rwxr-xr-x 0/0 "),
        "{verbose}"
    );
    assert!(
        line("app/plain").starts_with("-rw-r----- 0/0 "),
        "{verbose}"
    );
}

#[test]
fn gitignored_node_modules_and_logs_are_neither_packed_nor_watched() {
    let tree = Tree::new(&[
        (".gitignore", "node_modules/\n*.log\n"),
        ("index.js", ""),
        ("debug.log", ""),
        ("lib/trace.log", ""),
        ("node_modules/left-pad/index.js", ""),
        ("node_modules/left-pad/lib/", ""),
    ]);
    let rules = tree.rules();
    assert_eq!(
        tree.packed_names(&rules),
        names(&["app/", "app/.gitignore", "app/index.js", "app/lib/"])
    );
    assert_eq!(
        rules.directories().unwrap(),
        [tree.root().to_path_buf(), tree.path("lib")]
    );
    assert!(rules.is_ignored(&tree.path("node_modules"), true));
    assert!(rules.is_ignored(&tree.path("node_modules/left-pad/new.js"), false));
    assert!(rules.is_ignored(&tree.path("lib/deleted.log"), false));
    assert_is_ignored_agrees_with_walk(&rules);
}

#[test]
fn a_nested_gitignore_applies_only_below_its_folder() {
    let tree = Tree::new(&[
        ("web/.gitignore", "*.css\n/build\n"),
        ("web/a.css", ""),
        ("web/sub/b.css", ""),
        ("web/build/x", ""),
        ("c.css", ""),
        ("build/y", ""),
    ]);
    let rules = tree.rules();
    assert_eq!(
        tree.packed_names(&rules),
        names(&[
            "app/",
            "app/build/",
            "app/build/y",
            "app/c.css",
            "app/web/",
            "app/web/.gitignore",
            "app/web/sub/",
        ])
    );
    assert_is_ignored_agrees_with_walk(&rules);
}

#[test]
fn a_deployignore_works_without_git() {
    let tree = Tree::new(&[
        (".deployignore", "docs/\n*.psd\n"),
        ("docs/manual.md", ""),
        ("art/logo.psd", ""),
        ("art/logo.png", ""),
    ]);
    let rules = tree.rules();
    assert_eq!(
        tree.packed_names(&rules),
        names(&["app/", "app/.deployignore", "app/art/", "app/art/logo.png"])
    );
    assert_is_ignored_agrees_with_walk(&rules);
}

#[test]
fn a_negated_pattern_keeps_a_file() {
    let tree = Tree::new(&[
        (".gitignore", "*.log\n!keep.log\n"),
        ("keep.log", ""),
        ("drop.log", ""),
        ("sub/keep.log", ""),
    ]);
    let rules = tree.rules();
    assert_eq!(
        tree.packed_names(&rules),
        names(&[
            "app/",
            "app/.gitignore",
            "app/keep.log",
            "app/sub/",
            "app/sub/keep.log"
        ])
    );
    assert_is_ignored_agrees_with_walk(&rules);
}

#[test]
fn config_ignore_and_include_apply() {
    let tree = Tree::new(&[
        (".gitignore", "dist/\n"),
        ("dist/app.js", ""),
        ("dist/app.js.map", ""),
        ("dist/chunks/1.js", ""),
        ("tmp/scratch", ""),
        ("a.bak", ""),
        ("src/main.js", ""),
    ]);
    let rules = tree.rules_with(&["tmp/", "*.bak"], &["dist/**/*.js"], &[]);
    assert_eq!(
        tree.packed_names(&rules),
        names(&[
            "app/",
            "app/.gitignore",
            "app/dist/",
            "app/dist/app.js",
            "app/dist/chunks/",
            "app/dist/chunks/1.js",
            "app/src/",
            "app/src/main.js",
        ])
    );
    // The folders leading to included files are watched.
    assert_eq!(
        rules.directories().unwrap(),
        [
            tree.root().to_path_buf(),
            tree.path("dist"),
            tree.path("dist/chunks"),
            tree.path("src"),
        ]
    );
    assert!(!rules.is_ignored(&tree.path("dist/new.js"), false));
    assert!(rules.is_ignored(&tree.path("dist/new.css"), false));
    assert_is_ignored_agrees_with_walk(&rules);

    // Without the include, the gitignored build output stays out.
    let plain = tree.rules_with(&["tmp/", "*.bak"], &[], &[]);
    assert_eq!(
        tree.packed_names(&plain),
        names(&["app/", "app/.gitignore", "app/src/", "app/src/main.js"])
    );
}

#[test]
fn an_always_ignored_folder_inside_the_tree_is_never_packed() {
    let tree = Tree::new(&[
        ("index.js", ""),
        (".dropdeploy/spool/job-1/archive.tar.gz", "old"),
        (".dropdeploy/history.jsonl", "{}"),
    ]);
    let state = tree.path(".dropdeploy");
    let rules = tree.rules_with(
        &[],
        &[".dropdeploy/**", "*.jsonl"],
        std::slice::from_ref(&state),
    );
    assert_eq!(tree.packed_names(&rules), names(&["app/", "app/index.js"]));
    assert_eq!(rules.directories().unwrap(), [tree.root().to_path_buf()]);
    assert!(rules.is_ignored(&state.join("spool/job-2/archive.tar.gz"), false));
    assert_is_ignored_agrees_with_walk(&rules);
}

#[test]
fn builtin_ignores_apply_and_hidden_files_are_kept() {
    let tree = Tree::new(&[
        (".git/HEAD", "ref: refs/heads/main\n"),
        (".git/objects/ab/cdef", ""),
        ("sub/.hg/store", ""),
        ("src/.main.js.swp", ""),
        ("src/main.js~", ""),
        ("src/#main.js#", ""),
        ("src/.#main.js", ""),
        (".DS_Store", ""),
        ("src/main.js", ""),
        (".env.example", "PORT=3000\n"),
        (
            ".buildpacks",
            "https://github.com/Scalingo/nodejs-buildpack\n",
        ),
    ]);
    let rules = tree.rules();
    assert_eq!(
        tree.packed_names(&rules),
        names(&[
            "app/",
            "app/.buildpacks",
            "app/.env.example",
            "app/src/",
            "app/src/main.js",
            "app/sub/",
        ])
    );
    assert_is_ignored_agrees_with_walk(&rules);
}

#[test]
fn symlinks_inside_are_kept_and_those_leaving_are_skipped() {
    let tree = Tree::new(&[("config/app.yml", "a: 1\n"), ("bin/", "")]);
    symlink("../config/app.yml", tree.path("bin/app.yml")).unwrap();
    symlink("config", tree.path("conf")).unwrap();
    symlink("/etc/passwd", tree.path("passwd")).unwrap();
    symlink("../../outside", tree.path("bin/escape")).unwrap();
    let rules = tree.rules();
    let kinds: Vec<_> = rules.walk().unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == EntryKind::Symlink).count(),
        4
    );

    let (archive, summary) = tree.pack(&rules, "links.tar.gz");
    inspect(&archive, &Limits::default()).unwrap();
    let verbose = run("/usr/bin/tar", &["-tvzf".as_ref(), archive.as_os_str()]);
    assert!(
        verbose.contains("app/bin/app.yml -> ../config/app.yml"),
        "{verbose}"
    );
    assert!(verbose.contains("app/conf -> config"), "{verbose}");
    assert!(!verbose.contains("passwd"), "{verbose}");
    assert!(!verbose.contains("escape"), "{verbose}");

    let skipped: Vec<&Path> = summary.skipped.iter().map(|(p, _)| p.as_path()).collect();
    assert_eq!(skipped, [tree.path("bin/escape"), tree.path("passwd")]);
    assert!(
        summary.skipped[1].1.contains("/etc/passwd"),
        "{:?}",
        summary.skipped
    );
}

#[test]
fn a_fifo_is_skipped() {
    let tree = Tree::new(&[("a.txt", "a")]);
    let fifo = tree.path("pipe");
    run("/usr/bin/mkfifo", &[fifo.as_os_str()]);
    let rules = tree.rules();
    let (archive, summary) = tree.pack(&rules, "fifo.tar.gz");
    assert_eq!(gnu_list(&archive), names(&["app/", "app/a.txt"]));
    assert_eq!(summary.skipped.len(), 1);
    assert_eq!(summary.skipped[0].0, fifo);
    assert!(
        summary.skipped[0].1.contains("fifo"),
        "{:?}",
        summary.skipped
    );
    inspect(&archive, &Limits::default()).unwrap();
    assert_eq!(tree_digest(&rules).unwrap(), summary.digest);
}

#[test]
fn an_unreadable_file_fails_the_pack_with_its_path() {
    let tree = Tree::new(&[("a.txt", "a"), ("secret.pem", "key")]);
    let secret = tree.path("secret.pem");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    if fs::File::open(&secret).is_ok() {
        eprintln!("skipped: running as root, chmod 000 does not prevent reading");
        return;
    }
    let archive = tree.out.path().join("fail.tar.gz");
    let error = pack(&tree.rules(), &archive, &PackOptions::new("app")).unwrap_err();
    match &error {
        PackError::Io { path, action, .. } => {
            assert_eq!(path, &secret);
            assert_eq!(*action, "open");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(error.to_string().contains("secret.pem"), "{error}");
    assert!(!archive.exists(), "the partial archive is removed");
    assert!(tree_digest(&tree.rules()).is_err());
}

#[test]
fn a_200_character_path_works() {
    let long = format!(
        "{}/{}/{}.txt",
        "d".repeat(90),
        "e".repeat(90),
        "f".repeat(14)
    );
    assert_eq!(long.len(), 200);
    let tree = Tree::new(&[(long.as_str(), "deep")]);
    symlink(
        format!("{}.txt", "f".repeat(14)),
        tree.path(&format!(
            "{}/{}/{}",
            "d".repeat(90),
            "e".repeat(90),
            "l".repeat(20)
        )),
    )
    .unwrap();
    let (archive, _) = tree.pack(&tree.rules(), "long.tar.gz");
    inspect(&archive, &Limits::default()).unwrap();
    let listed = gnu_list(&archive);
    assert!(listed.contains(&format!("app/{long}")), "{listed:?}");
    assert_eq!(listed.len(), 5);

    let extract = tempfile::tempdir().unwrap();
    run(
        "/usr/bin/tar",
        &[
            "-xzf".as_ref(),
            archive.as_os_str(),
            "-C".as_ref(),
            extract.path().as_os_str(),
        ],
    );
    assert_eq!(
        fs::read_to_string(extract.path().join("app").join(&long)).unwrap(),
        "deep"
    );
}

#[test]
fn is_ignored_agrees_with_walk_on_a_mixed_tree() {
    let tree = Tree::new(&[
        (
            ".gitignore",
            "*.log\n!important.log\nbuild/\n/vendor\ncache/\n",
        ),
        ("important.log", ""),
        ("other.log", ""),
        ("build/out/a.o", ""),
        ("src/build/b.o", ""),
        ("vendor/lib.js", ""),
        ("src/vendor/keep.js", ""),
        ("src/.ignore", "*.gen.js\n"),
        ("src/x.gen.js", ""),
        ("src/x.js", ""),
        ("src/cache/entry", ""),
        ("src/sub/.deployignore", "!*.gen.js\n*.md\n"),
        ("src/sub/y.gen.js", ""),
        ("src/sub/README.md", ""),
        ("dist/bundle.js", ""),
        ("dist/skip.css", ""),
        ("empty/", ""),
    ]);
    let rules = tree.rules_with(&["empty/"], &["build/out/*.o"], &[]);
    let walked: Vec<String> = rules
        .walk()
        .unwrap()
        .iter()
        .map(|e| e.relative.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        walked,
        names(&[
            ".gitignore",
            "build",
            "build/out",
            "build/out/a.o",
            "dist",
            "dist/bundle.js",
            "dist/skip.css",
            "important.log",
            "src",
            "src/.ignore",
            "src/sub",
            "src/sub/.deployignore",
            "src/sub/y.gen.js",
            "src/vendor",
            "src/vendor/keep.js",
            "src/x.js",
        ])
    );
    assert_is_ignored_agrees_with_walk(&rules);
    assert!(!rules.is_ignored(&tree.path("build/out/new.o"), false));
    assert!(rules.is_ignored(&tree.path("build/other/new.o"), false));
    assert!(rules.is_ignored(&tree.path("vendor/gone/deep.js"), false));
    assert!(!rules.is_ignored(&tree.path("src/vendor/gone.js"), false));
    assert!(rules.is_ignored(&tree.path("src/cache/gone"), false));
    assert!(!rules.is_ignored(tree.root(), true));
    assert!(rules.is_ignored(Path::new("/somewhere/else"), false));
}
