use super::*;
use std::collections::BTreeSet;

/// Makes a tree: `"dir/"` makes a directory, `"path"` a file holding its own name, and
/// `("path", text)` a file with that text.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let full = dir.path().join(path);
        if path.ends_with('/') {
            fs::create_dir_all(&full).unwrap();
        } else {
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, text).unwrap();
        }
    }
    dir
}

fn rules(dir: &Path, ignore: &[&str], include: &[&str]) -> IgnoreRules {
    let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    IgnoreRules::new(dir, &owned(ignore), &owned(include), &[]).unwrap()
}

fn walked(rules: &IgnoreRules) -> Vec<String> {
    rules
        .walk()
        .unwrap()
        .iter()
        .map(|entry| {
            let name = entry.relative.to_string_lossy().into_owned();
            if entry.kind == EntryKind::Dir {
                format!("{name}/")
            } else {
                name
            }
        })
        .collect()
}

/// Every path on disk, packed or not, with whether it is a directory.
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

fn assert_agrees(rules: &IgnoreRules) {
    let packed: BTreeSet<PathBuf> = rules
        .walk()
        .unwrap()
        .into_iter()
        .map(|e| e.absolute)
        .collect();
    for (path, is_dir) in everything(rules.root()) {
        assert_eq!(
            rules.is_ignored(&path, is_dir),
            !packed.contains(&path),
            "is_ignored disagrees with walk on {}",
            path.display()
        );
    }
}

#[test]
fn gitignore_nested_and_negated() {
    let dir = tree(&[
        (".gitignore", "*.log\n!keep.log\nnode_modules/\n"),
        ("a.log", ""),
        ("keep.log", ""),
        ("node_modules/x/y.js", ""),
        ("src/.gitignore", "*.bak\n"),
        ("src/a.bak", ""),
        ("src/b.rs", ""),
        ("top.bak", ""),
        (".env.example", ""),
        (".git/HEAD", ""),
        ("src/.main.rs.swp", ""),
        ("#auto#", ""),
        ("notes.txt~", ""),
    ]);
    let rules = rules(dir.path(), &[], &[]);
    assert_eq!(
        walked(&rules),
        [
            ".env.example",
            ".gitignore",
            "keep.log",
            "src/",
            "src/.gitignore",
            "src/b.rs",
            "top.bak"
        ]
    );
    assert_agrees(&rules);
    assert!(rules.is_ignored(&dir.path().join("node_modules/x/new.js"), false));
    assert!(rules.is_ignored(&dir.path().join("src/gone.bak"), false));
    assert!(!rules.is_ignored(&dir.path().join("gone.bak"), false));
    assert_eq!(
        rules.directories().unwrap(),
        [dir.path().to_path_buf(), dir.path().join("src")]
    );
}

#[test]
fn precedence_between_kinds_of_file() {
    let dir = tree(&[
        (".gitignore", "*.txt\n"),
        (".ignore", "!b.txt\n"),
        (".deployignore", "c.md\n!d.txt\n"),
        ("a.txt", ""),
        ("b.txt", ""),
        ("c.md", ""),
        ("d.txt", ""),
        ("sub/.gitignore", "!a.txt\n"),
        ("sub/a.txt", ""),
    ]);
    let rules = rules(dir.path(), &[], &[]);
    assert_eq!(
        walked(&rules),
        [
            ".deployignore",
            ".gitignore",
            ".ignore",
            "b.txt",
            "d.txt",
            "sub/",
            "sub/.gitignore",
            "sub/a.txt"
        ]
    );
    assert_agrees(&rules);
}

#[test]
fn nothing_comes_back_from_inside_an_ignored_directory_but_include() {
    let dir = tree(&[
        (".gitignore", "build/\ndist/\n"),
        ("build/.gitignore", "!*\n"),
        ("build/out.js", ""),
        ("dist/app.js", ""),
        ("dist/maps/app.js.map", ""),
        ("dist/deep/er/x.js", ""),
    ]);
    let rules = rules(dir.path(), &[], &["dist/*.js", "/dist/deep/**"]);
    assert_eq!(
        walked(&rules),
        [
            ".gitignore",
            "dist/",
            "dist/app.js",
            "dist/deep/",
            "dist/deep/er/",
            "dist/deep/er/x.js"
        ]
    );
    assert_agrees(&rules);
    // A file that does not exist yet in a reached directory would be packed.
    assert!(!rules.is_ignored(&dir.path().join("dist/new.js"), false));
    assert!(rules.is_ignored(&dir.path().join("dist/maps"), true));
    assert!(rules.is_ignored(&dir.path().join("build/out.js"), false));
}

#[test]
fn unanchored_include_does_not_reach_into_ignored_directories() {
    let dir = tree(&[
        (".gitignore", "*.js\nnode_modules/\n"),
        ("app.min.js", ""),
        ("app.js", ""),
        ("node_modules/lib.min.js", ""),
    ]);
    let rules = rules(dir.path(), &[], &["*.min.js"]);
    assert_eq!(walked(&rules), [".gitignore", "app.min.js"]);
    assert_agrees(&rules);
}

#[test]
fn config_ignore_beats_ignore_files_and_include_beats_it() {
    let dir = tree(&[
        (".gitignore", "!*.log\n"),
        ("a.log", ""),
        ("b.log", ""),
        ("tmp/x", ""),
        (".git/config", ""),
    ]);
    let rules = rules(dir.path(), &["*.log", "tmp/"], &["b.log", ".git/"]);
    assert_eq!(
        walked(&rules),
        [".git/", ".git/config", ".gitignore", "b.log"]
    );
    assert_agrees(&rules);
}

#[test]
fn always_ignore_wins_over_include() {
    let dir = tree(&[("state/spool/job/archive.tar.gz", ""), ("app.rs", "")]);
    let always = [dir.path().join("state"), PathBuf::from("/elsewhere")];
    let rules = IgnoreRules::new(dir.path(), &[], &["state/**".to_string()], &always).unwrap();
    assert_eq!(walked(&rules), ["app.rs"]);
    assert!(rules.is_ignored(&dir.path().join("state"), true));
    assert!(rules.is_ignored(&dir.path().join("state/spool/new"), false));
    assert_eq!(rules.directories().unwrap(), [dir.path().to_path_buf()]);
    assert_agrees(&rules);
}

#[test]
fn paths_are_taken_relative_or_through_the_canonical_root() {
    let dir = tree(&[(".gitignore", "x\n"), ("y", "")]);
    let link = tempfile::tempdir().unwrap();
    let alias = link.path().join("alias");
    std::os::unix::fs::symlink(dir.path(), &alias).unwrap();
    let rules = rules(&alias, &[], &[]);
    assert_eq!(rules.root(), alias);
    assert!(rules.is_ignored(Path::new("x"), false));
    assert!(!rules.is_ignored(Path::new("y"), false));
    let canonical = fs::canonicalize(dir.path()).unwrap();
    assert!(rules.is_ignored(&canonical.join("x"), false));
    assert!(!rules.is_ignored(&canonical.join("y"), false));
    assert!(!rules.is_ignored(&alias, true));
    assert!(rules.is_ignored(Path::new("/etc/passwd"), false));
    assert!(rules.is_ignored(&alias.join("../escape"), false));
}

#[test]
fn bad_patterns_name_their_origin() {
    let dir = tree(&[("sub/.gitignore", "ok\n\n{a,b\n")]);
    let error = IgnoreRules::new(dir.path(), &[], &[], &[])
        .unwrap_err()
        .to_string();
    let file = dir.path().join("sub/.gitignore");
    assert!(
        error.starts_with(&format!(
            "{} line 3: bad pattern \"{{a,b\": ",
            file.display()
        )),
        "{error}"
    );
    let error = IgnoreRules::new(dir.path(), &["[z-a]".into()], &[], &[]).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("config ignore: bad pattern \"[z-a]\": "),
        "{error}"
    );
    let error = IgnoreRules::new(dir.path(), &[], &["a/{b".into()], &[]).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("config include: bad pattern \"a/{b\": "),
        "{error}"
    );
}

#[test]
fn a_missing_root_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    match IgnoreRules::new(&missing, &[], &[], &[]) {
        Err(IgnoreError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn walk_order_is_byte_order_of_the_full_path() {
    let dir = tree(&[("a/x", ""), ("a-b", ""), ("B", ""), ("a.c", "")]);
    let rules = rules(dir.path(), &[], &[]);
    assert_eq!(walked(&rules), ["B", "a/", "a-b", "a.c", "a/x"]);
}

#[test]
fn reached_dirs_of_include_patterns() {
    assert_eq!(reached_dirs("dist/js/*.js"), ["/dist/", "/dist/js/"]);
    assert_eq!(reached_dirs("/dist/**"), ["/dist/"]);
    assert_eq!(reached_dirs("a/**/x/y"), ["/a/", "/a/**/"]);
    assert_eq!(reached_dirs("vendor/"), Vec::<String>::new());
    assert!(reached_dirs("*.min.js").is_empty());
    assert!(reached_dirs("**/dist/x").is_empty());
    assert!(reached_dirs("!dist/x").is_empty());
}

#[test]
fn ignore_file_names() {
    assert!(IgnoreRules::is_ignore_file(Path::new("/a/.deployignore")));
    assert!(IgnoreRules::is_ignore_file(Path::new(".gitignore")));
    assert!(!IgnoreRules::is_ignore_file(Path::new("/a/.gitignore.bak")));
}
