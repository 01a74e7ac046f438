//! Which files of a watched source directory are deployed: gitignore semantics.
//!
//! [`IgnoreRules`] answers, for one tree, "is this path packed?", and lists what is. The glob
//! matching is the [`ignore`] crate's (BurntSushi's, as in ripgrep); this module only decides
//! which matchers apply to a path and in what order. A path is left out when:
//!
//! 1. it is at or under one of the `always_ignore` paths (the daemon's own state or spool when
//!    they sit inside the tree): nothing undoes this;
//! 2. otherwise it is packed if it, or a directory above it, matches a config `include` pattern,
//!    or if it is a directory an `include` pattern leads through (see below);
//! 3. otherwise it is left out if it, or a directory above it, is ignored by the rules below,
//!    each checked for that path where it sits (so, as in git, nothing inside an ignored
//!    directory comes back, whatever a `!pattern` says):
//!    - a [`BUILTIN_IGNORES`] pattern or a config `ignore` pattern matches it: files in the tree
//!      cannot undo these (only `include` can);
//!    - else the ignore files ([`IGNORE_FILES`]) of the directories above it decide, with the
//!      precedence of the `ignore` crate's walker (ripgrep, fd): `.deployignore` beats `.ignore`
//!      beats `.gitignore`; within one kind, the deepest file with a matching line decides, and
//!      within one file the last matching line (so `!keep.log` after `*.log` keeps it).
//!
//! Ignore files are read in every directory that is not ignored, each one applying to its own
//! directory and below, as git does; it does not matter whether the tree is a git repository.
//! Nothing outside the tree applies: no global gitignore, no `.git/info/exclude`, no ignore file
//! of a parent of the root, so a pack does not depend on who runs it or where. Hidden files are
//! packed like any other (`.env.example`, `.buildpacks`, `.profile` matter on Scalingo).
//!
//! **Reaching into an ignored directory.** `include = ["dist/**"]` packs a gitignored `dist/`:
//! an include pattern that is anchored (it has a `/` before its end) and whose first component
//! is not `**` makes every directory on its way (`dist/` here) kept, even if ignored and even if
//! empty, so that the files it matches are reached and watched. A pattern with no directory part
//! (`*.min.js`) or starting with `**/` re-includes matches only in directories that are not
//! ignored, as a `!` line in a `.gitignore` would (otherwise every ignored directory, such as
//! `node_modules/`, would have to be walked and watched). To include everything of an ignored
//! directory, name it: `include = ["vendor/"]` or `["vendor/**"]`.
//!
//! **Cost.** [`IgnoreRules::new`] reads every directory that is not ignored once and parses the
//! ignore files found there: about the cost of one [`IgnoreRules::walk`], no more. The result is
//! a snapshot: an edit to an ignore file takes effect by building new rules (the tree watcher
//! does so when [`IgnoreRules::is_ignore_file`] says a changed file is one). [`is_ignored`]
//! does no I/O.
//!
//! [`is_ignored`]: IgnoreRules::is_ignored

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Patterns left out of every pack, whatever the ignore files in the tree say (only a config
/// `include` brings a match back). They are gitignore patterns, except that a leading `#` is a
/// literal character here, not a comment (`#*#` is an Emacs autosave file).
pub const BUILTIN_IGNORES: &[&str] = &[
    ".git/",
    ".hg/",
    ".svn/",
    ".*.swp",
    ".*.swo",
    "*~",
    "#*#",
    ".#*",
    ".DS_Store",
    // Files being written (downloads, editors' and tools' temporary names): the same names a
    // drop folder waits on, so that a half-written file is never deployed either way.
    "*.tmp",
    "*.part",
    "*.partial",
    "*.crdownload",
];

/// Names of the files whose patterns are read in every directory of the tree, lowest
/// precedence first (a `.deployignore` line beats an `.ignore` line beats a `.gitignore` line).
pub const IGNORE_FILES: &[&str] = &[".gitignore", ".ignore", ".deployignore"];

/// Why the rules could not be built or the tree listed.
#[derive(Debug, thiserror::Error)]
pub enum IgnoreError {
    /// A pattern that does not parse. The message names where it comes from (an ignore file and
    /// its line, or `config ignore` / `config include` and the pattern's position) and the
    /// pattern itself, e.g. `/src/app/.gitignore line 3: bad pattern "{a,b": unclosed
    /// alternate group; missing '}' (maybe escape '{' with '[{]'?)`.
    #[error("{0}")]
    Pattern(String),
    /// A directory or an ignore file that exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One thing to pack, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    /// Relative path with `/` separators, never empty, never starting with `/`.
    pub relative: PathBuf,
    /// The root joined with `relative`.
    pub absolute: PathBuf,
    /// What it was when the directory was read (symlinks are not followed).
    pub kind: EntryKind,
}

/// The type of a [`TreeEntry`], as seen without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// A socket, fifo or device: skipped with a warning by the packer.
    Special,
}

/// The rules for one tree, as they are on disk now; see the [module docs](self) for what is
/// left out and why. Build a new one to see edits to ignore files (the watcher does when one
/// changes). Cheap to clone (the parsed ignore files are shared).
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    core: Core,
    /// The ignore files of each directory (relative path, `""` for the root) that has any,
    /// among the directories that are not ignored.
    dirs: HashMap<PathBuf, Arc<DirRules>>,
}

/// Everything but the per-directory ignore files.
#[derive(Debug, Clone)]
struct Core {
    /// Absolute (not canonicalised: symlinks in it are kept as given).
    root: PathBuf,
    /// The root with symlinks resolved, to recognise paths reported through another spelling.
    canonical_root: Option<PathBuf>,
    builtin: Arc<Gitignore>,
    config_ignore: Arc<Gitignore>,
    include: Arc<Gitignore>,
    /// Directory-only patterns for the directories that anchored include patterns lead through.
    reach: Arc<Gitignore>,
    /// `always_ignore` paths strictly inside the tree, relative to the root.
    always: Vec<PathBuf>,
}

/// The ignore files of one directory, indexed like [`IGNORE_FILES`].
#[derive(Debug, Default)]
struct DirRules {
    files: [Option<Gitignore>; IGNORE_FILES.len()],
}

impl IgnoreRules {
    /// Reads the rules of the tree at `root`.
    ///
    /// `ignore`: extra gitignore patterns (config `ignore = [...]`), relative to the root;
    /// `include`: patterns kept even when ignored (config `include = [...]`), relative to the
    /// root; `always_ignore`: absolute paths never packed nor watched (the daemon's state_dir and
    /// spool when they sit inside the tree; paths outside the tree, or the root itself, are
    /// disregarded). A relative `root` is taken from the current directory.
    ///
    /// Errors: a pattern that does not parse ([`IgnoreError::Pattern`], naming its file and
    /// line or the config key), or a directory or ignore file that cannot be read (the root
    /// missing included). Blocking: it reads the tree (see the module docs for the cost).
    pub fn new(
        root: &Path,
        ignore: &[String],
        include: &[String],
        always_ignore: &[PathBuf],
    ) -> Result<IgnoreRules, IgnoreError> {
        let root = std::path::absolute(root).map_err(|source| IgnoreError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let canonical_root = fs::canonicalize(&root).ok();

        let mut builtin = GitignoreBuilder::new(&root);
        for pattern in BUILTIN_IGNORES {
            // In a gitignore file a leading `#` starts a comment; here it is part of the name.
            let line = match pattern.strip_prefix('#') {
                Some(rest) => format!("\\#{rest}"),
                None => (*pattern).to_string(),
            };
            add_config_line(&mut builtin, "built-in ignore", &line)?;
        }
        let mut config_ignore = GitignoreBuilder::new(&root);
        for line in ignore {
            add_config_line(&mut config_ignore, "config ignore", line)?;
        }
        let mut include_builder = GitignoreBuilder::new(&root);
        let mut reach = GitignoreBuilder::new(&root);
        for line in include {
            add_config_line(&mut include_builder, "config include", line)?;
            for dir in reached_dirs(line) {
                add_config_line(&mut reach, "config include", &dir)?;
            }
        }

        let always = always_ignore
            .iter()
            .filter_map(|path| inside(&root, canonical_root.as_deref(), path))
            .collect();
        let core = Core {
            builtin: Arc::new(build(&builtin, "built-in ignore")?),
            config_ignore: Arc::new(build(&config_ignore, "config ignore")?),
            include: Arc::new(build(&include_builder, "config include")?),
            reach: Arc::new(build(&reach, "config include")?),
            always,
            root,
            canonical_root,
        };
        let mut dirs = HashMap::new();
        traverse(&core, &mut Scopes::Load(&mut dirs), Visit::Nothing)?;
        Ok(IgnoreRules { core, dirs })
    }

    /// The root of the tree, made absolute (symlinks in it are not resolved).
    pub fn root(&self) -> &Path {
        &self.core.root
    }

    /// Whether a path is left out (a path inside a left-out directory is too). For a path that
    /// exists, this agrees with [`walk`](Self::walk): `false` exactly for the paths it lists.
    ///
    /// The path need not exist (a watcher reports deleted files): `is_dir` says what it was.
    /// It is an absolute path under the root (or under the root's canonical form), or a
    /// relative one taken from the root; a path outside the tree is ignored, the root itself is
    /// not. No I/O: the ignore files were read when the rules were built.
    pub fn is_ignored(&self, path: &Path, is_dir: bool) -> bool {
        let Some(relative) = self.core.relative(path) else {
            return true;
        };
        let parts: Vec<&OsStr> = relative.iter().collect();
        let mut scope: Vec<Arc<DirRules>> =
            self.dirs.get(Path::new("")).cloned().into_iter().collect();
        let mut current = PathBuf::new();
        let mut hidden = false;
        for (index, part) in parts.iter().enumerate() {
            current.push(part);
            let last = index + 1 == parts.len();
            let verdict = self.core.judge(&current, !last || is_dir, hidden, &scope);
            if verdict.ignored {
                return true;
            }
            hidden = verdict.hidden;
            // The same scopes as the walk: ignore files of directories it entered unhidden.
            if !last
                && !hidden
                && let Some(rules) = self.dirs.get(&current)
            {
                scope.push(Arc::clone(rules));
            }
        }
        false
    }

    /// Every entry that is packed, sorted by relative path (byte order of the `/`-joined path,
    /// so a directory comes before its content). Symlinks are listed, not followed; sockets,
    /// fifos and devices are listed as [`EntryKind::Special`] (the packer skips them). The
    /// root itself is not listed.
    ///
    /// Blocking: reads every directory that is not left out. A directory that vanishes while
    /// it is read is passed over; any other error reading one fails with its path.
    pub fn walk(&self) -> Result<Vec<TreeEntry>, IgnoreError> {
        let mut entries = Vec::new();
        traverse(
            &self.core,
            &mut Scopes::Use(&self.dirs),
            Visit::Entries(&mut entries),
        )?;
        entries.sort_by(|a, b| {
            a.relative
                .as_os_str()
                .as_bytes()
                .cmp(b.relative.as_os_str().as_bytes())
        });
        Ok(entries)
    }

    /// The directories that are not left out, as absolute paths, the root first and then in
    /// [`walk`](Self::walk) order: what the watcher watches. An ignored directory is absent,
    /// and so is everything under it, unless an include pattern leads into it (then the
    /// directories on its way are listed).
    pub fn directories(&self) -> Result<Vec<PathBuf>, IgnoreError> {
        let mut relative = Vec::new();
        traverse(
            &self.core,
            &mut Scopes::Use(&self.dirs),
            Visit::Dirs(&mut relative),
        )?;
        relative.sort_by(|a: &PathBuf, b: &PathBuf| {
            a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes())
        });
        let mut dirs = Vec::with_capacity(relative.len() + 1);
        dirs.push(self.core.root.clone());
        dirs.extend(relative.iter().map(|dir| self.core.root.join(dir)));
        Ok(dirs)
    }

    /// Whether a file name is one of [`IGNORE_FILES`] (a change to it changes the rules).
    pub fn is_ignore_file(path: &Path) -> bool {
        path.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| IGNORE_FILES.contains(&n))
    }
}

/// What [`Core::judge`] says about one path, given what was said about its parent.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    /// Left out: not packed, not listed, not descended into.
    ignored: bool,
    /// The path or a directory above it is ignored by the rules (before `include` is applied):
    /// its content is left out unless included.
    hidden: bool,
}

impl Core {
    /// The one decision, shared by the walk and [`IgnoreRules::is_ignored`] so they agree.
    /// `relative` is non-empty; `scope` holds the ignore files of the directories above it,
    /// shallowest first.
    fn judge(
        &self,
        relative: &Path,
        is_dir: bool,
        parent_hidden: bool,
        scope: &[Arc<DirRules>],
    ) -> Verdict {
        if self
            .always
            .iter()
            .any(|always| relative.starts_with(always))
        {
            return Verdict {
                ignored: true,
                hidden: true,
            };
        }
        let absolute = self.root.join(relative);
        let hidden = parent_hidden || self.ignored_by_rules(&absolute, is_dir, scope);
        let ignored = hidden
            && !self
                .include
                .matched_path_or_any_parents(&absolute, is_dir)
                .is_ignore()
            && !(is_dir && self.reach.matched(&absolute, true).is_ignore());
        Verdict { ignored, hidden }
    }

    /// The path itself is ignored by the built-in, config or ignore-file patterns.
    fn ignored_by_rules(&self, absolute: &Path, is_dir: bool, scope: &[Arc<DirRules>]) -> bool {
        if self.builtin.matched(absolute, is_dir).is_ignore()
            || self.config_ignore.matched(absolute, is_dir).is_ignore()
        {
            return true;
        }
        // As the `ignore` crate's walker: the highest-precedence kind of file with a match
        // decides; within a kind, the deepest file with a match.
        for kind in (0..IGNORE_FILES.len()).rev() {
            for dir in scope.iter().rev() {
                let Some(file) = &dir.files[kind] else {
                    continue;
                };
                match file.matched(absolute, is_dir) {
                    Match::None => {}
                    Match::Ignore(_) => return true,
                    Match::Whitelist(_) => return false,
                }
            }
        }
        false
    }

    /// `path` relative to the root, if it is in the tree (`""` for the root itself).
    fn relative(&self, path: &Path) -> Option<PathBuf> {
        let relative = if path.is_relative() {
            path
        } else if let Ok(rest) = path.strip_prefix(&self.root) {
            rest
        } else {
            path.strip_prefix(self.canonical_root.as_deref()?).ok()?
        };
        let mut clean = PathBuf::new();
        for component in relative.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        Some(clean)
    }
}

/// Where the ignore files of the directories come from during a traversal.
enum Scopes<'a> {
    /// Read them from disk and record them (when the rules are built).
    Load(&'a mut HashMap<PathBuf, Arc<DirRules>>),
    /// Use the recorded ones.
    Use(&'a HashMap<PathBuf, Arc<DirRules>>),
}

/// What a traversal collects.
enum Visit<'a> {
    Nothing,
    Entries(&'a mut Vec<TreeEntry>),
    /// Relative paths of the directories (files are not even judged).
    Dirs(&'a mut Vec<PathBuf>),
}

fn traverse(core: &Core, scopes: &mut Scopes<'_>, mut visit: Visit<'_>) -> Result<(), IgnoreError> {
    let mut scope = Vec::new();
    visit_dir(core, scopes, &mut visit, Path::new(""), false, &mut scope)
}

/// Reads one directory that is not left out, then its children, depth first (recursion depth
/// is the tree's depth, which `PATH_MAX` bounds).
fn visit_dir(
    core: &Core,
    scopes: &mut Scopes<'_>,
    visit: &mut Visit<'_>,
    relative: &Path,
    hidden: bool,
    scope: &mut Vec<Arc<DirRules>>,
) -> Result<(), IgnoreError> {
    let absolute = core.root.join(relative);
    let Some(children) = list_dir(&absolute, relative.as_os_str().is_empty())? else {
        return Ok(());
    };
    // Ignore files inside a hidden directory could only affect paths that are left out anyway.
    let rules = match scopes {
        Scopes::Load(map) if !hidden => {
            let loaded = load_dir_rules(&absolute, &children)?.map(Arc::new);
            if let Some(rules) = &loaded {
                map.insert(relative.to_path_buf(), Arc::clone(rules));
            }
            loaded
        }
        Scopes::Load(_) => None,
        Scopes::Use(map) if !hidden => map.get(relative).cloned(),
        Scopes::Use(_) => None,
    };
    let pushed = rules.is_some();
    scope.extend(rules);

    let mut result = Ok(());
    for (name, kind) in children {
        let is_dir = kind == EntryKind::Dir;
        if !is_dir && matches!(visit, Visit::Dirs(_) | Visit::Nothing) {
            continue;
        }
        let child = relative.join(&name);
        let verdict = core.judge(&child, is_dir, hidden, scope);
        if verdict.ignored {
            continue;
        }
        match visit {
            Visit::Nothing => {}
            Visit::Dirs(dirs) => dirs.push(child.clone()),
            Visit::Entries(entries) => entries.push(TreeEntry {
                absolute: core.root.join(&child),
                relative: child.clone(),
                kind,
            }),
        }
        if is_dir {
            result = visit_dir(core, scopes, visit, &child, verdict.hidden, scope);
            if result.is_err() {
                break;
            }
        }
    }
    if pushed {
        scope.pop();
    }
    result
}

/// The names and kinds in a directory; `None` if it vanished (unless it is the root).
fn list_dir(dir: &Path, is_root: bool) -> Result<Option<Vec<(PathBuf, EntryKind)>>, IgnoreError> {
    let io_error = |source| IgnoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let reader = match fs::read_dir(dir) {
        Ok(reader) => reader,
        Err(error) if error.kind() == io::ErrorKind::NotFound && !is_root => return Ok(None),
        Err(error) => return Err(io_error(error)),
    };
    let mut children = Vec::new();
    for entry in reader {
        let entry = entry.map_err(io_error)?;
        let file_type = match entry.file_type() {
            Ok(file_type) => file_type,
            // Deleted between the listing and the look: it is not there any more.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(IgnoreError::Io {
                    path: entry.path(),
                    source,
                });
            }
        };
        let kind = if file_type.is_dir() {
            EntryKind::Dir
        } else if file_type.is_file() {
            EntryKind::File
        } else if file_type.is_symlink() {
            EntryKind::Symlink
        } else {
            EntryKind::Special
        };
        children.push((PathBuf::from(entry.file_name()), kind));
    }
    Ok(Some(children))
}

/// Parses the ignore files among `children` of `dir`, if there are any.
fn load_dir_rules(
    dir: &Path,
    children: &[(PathBuf, EntryKind)],
) -> Result<Option<DirRules>, IgnoreError> {
    let mut rules = DirRules::default();
    let mut any = false;
    for (index, name) in IGNORE_FILES.iter().enumerate() {
        let present = children
            .iter()
            .any(|(child, kind)| child.as_os_str() == *name && *kind != EntryKind::Dir);
        if !present {
            continue;
        }
        let path = dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            // Deleted meanwhile, or a dangling symlink: as if absent.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(IgnoreError::Io { path, source }),
        };
        rules.files[index] = Some(parse_ignore_file(dir, &path, &bytes)?);
        any = true;
    }
    Ok(any.then_some(rules))
}

/// One ignore file, its patterns relative to `dir`. Errors name the file and the line.
fn parse_ignore_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<Gitignore, IgnoreError> {
    let mut builder = GitignoreBuilder::new(dir);
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    for (index, line) in bytes.split(|&byte| byte == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let place = || format!("{} line {}", path.display(), index + 1);
        let Ok(line) = std::str::from_utf8(line) else {
            return Err(IgnoreError::Pattern(format!(
                "{}: not valid UTF-8",
                place()
            )));
        };
        if let Err(error) = builder.add_line(Some(path.to_path_buf()), line) {
            return Err(pattern_error(&place(), line, &error));
        }
    }
    build(&builder, &path.display().to_string())
}

fn add_config_line(
    builder: &mut GitignoreBuilder,
    origin: &str,
    line: &str,
) -> Result<(), IgnoreError> {
    match builder.add_line(None, line) {
        Ok(_) => Ok(()),
        Err(error) => Err(pattern_error(origin, line, &error)),
    }
}

fn build(builder: &GitignoreBuilder, origin: &str) -> Result<Gitignore, IgnoreError> {
    builder
        .build()
        .map_err(|error| IgnoreError::Pattern(format!("{origin}: {error}")))
}

/// `<origin>: bad pattern "<line>": <why>`, the reason without the crate's own prefix.
fn pattern_error(origin: &str, line: &str, error: &ignore::Error) -> IgnoreError {
    let why = match error {
        ignore::Error::Glob { err, .. } => err.clone(),
        other => other.to_string(),
    };
    IgnoreError::Pattern(format!("{origin}: bad pattern {line:?}: {why}"))
}

/// The directory-only, root-anchored patterns for the directories an include pattern leads
/// through: `dist/js/*.js` gives `/dist/` and `/dist/js/`; `a/**/x` gives `/a/` and `/a/**/`.
/// Patterns that are not anchored, start with `**`, or are negations give none.
fn reached_dirs(pattern: &str) -> Vec<String> {
    let line = pattern.trim();
    if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
        return Vec::new();
    }
    let line = line.strip_suffix('/').unwrap_or(line);
    let (anchored, body) = match line.strip_prefix('/') {
        Some(body) => (true, body),
        None => (line.contains('/'), line),
    };
    let parts: Vec<&str> = body.split('/').filter(|part| !part.is_empty()).collect();
    if !anchored || parts.first().is_none_or(|first| *first == "**") {
        return Vec::new();
    }
    let mut dirs = Vec::new();
    let mut prefix = String::new();
    for part in &parts[..parts.len() - 1] {
        prefix.push('/');
        prefix.push_str(part);
        dirs.push(format!("{prefix}/"));
        if *part == "**" {
            break;
        }
    }
    dirs
}

/// `path` relative to the root if it is strictly inside the tree.
fn inside(root: &Path, canonical_root: Option<&Path>, path: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(path).ok()?;
    let relative = match absolute.strip_prefix(root) {
        Ok(relative) => relative.to_path_buf(),
        Err(_) => {
            let canonical = fs::canonicalize(&absolute).ok()?;
            canonical.strip_prefix(canonical_root?).ok()?.to_path_buf()
        }
    };
    let normal = relative
        .components()
        .all(|component| matches!(component, Component::Normal(_)));
    (normal && !relative.as_os_str().is_empty()).then_some(relative)
}

#[cfg(test)]
mod tests;
