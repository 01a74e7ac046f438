//! Files that survive a crash whole. A file is written through a temporary file in the same
//! folder (write, fsync, rename, fsync the folder), so readers and a restart see the old
//! content or the new, never a part; a folder is fsynced after a rename or link inside it.
//!
//! Every durable step of the daemon's files (rename, link, unlink, mkdir, rmdir, fsync) goes
//! through this module, which makes them crash points: with `DROPDEPLOY_CRASH_AFTER=K` in
//! the environment, the process kills itself (SIGKILL) right after its K-th step, and with
//! `K = 0` it only numbers them; either way each step is said on stderr
//! (`crash point N: <step> <path>`). `DROPDEPLOY_CRASH_ON=<text>` counts only the steps on a
//! path holding that text. The crash-point sweep test (`tests/e2e/crash_points.rs`)
//! runs the daemon with every K.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that sets the crash point (see the module docs).
pub const CRASH_AFTER_ENV: &str = "DROPDEPLOY_CRASH_AFTER";

/// With [`CRASH_AFTER_ENV`], counts only the steps on a path holding this text (to aim at
/// one operation whatever came before it).
pub const CRASH_ON_ENV: &str = "DROPDEPLOY_CRASH_ON";

/// Steps taken so far by this process (counted only when [`CRASH_AFTER_ENV`] is set).
static STEPS: AtomicU64 = AtomicU64::new(0);

/// The K of [`CRASH_AFTER_ENV`], read once.
fn crash_after() -> Option<u64> {
    static AFTER: OnceLock<Option<u64>> = OnceLock::new();
    *AFTER.get_or_init(|| std::env::var(CRASH_AFTER_ENV).ok()?.trim().parse().ok())
}

/// A durable step was just taken: numbered, and the process killed if it is the K-th.
fn step(what: &str, path: &Path) {
    let Some(after) = crash_after() else {
        return;
    };
    static ON: OnceLock<Option<String>> = OnceLock::new();
    if let Some(on) = ON.get_or_init(|| std::env::var(CRASH_ON_ENV).ok())
        && !path.to_string_lossy().contains(on.as_str())
    {
        return;
    }
    let n = STEPS.fetch_add(1, Ordering::SeqCst) + 1;
    eprintln!("crash point {n}: {what} {}", path.display());
    if n == after {
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; should it not be delivered at once, nothing goes on.
        loop {
            std::thread::park();
        }
    }
}

/// Runs `op`, a durable step, and counts it when it succeeded.
fn counted<T>(what: &str, path: &Path, op: std::io::Result<T>) -> std::io::Result<T> {
    if op.is_ok() {
        step(what, path);
    }
    op
}

/// `fs::rename`, as a crash point.
pub fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    counted("rename", to, fs::rename(from, to))
}

/// `fs::hard_link`, as a crash point.
pub fn hard_link(src: &Path, dst: &Path) -> std::io::Result<()> {
    counted("link", dst, fs::hard_link(src, dst))
}

/// `fs::remove_file`, as a crash point.
pub fn remove_file(path: &Path) -> std::io::Result<()> {
    counted("unlink", path, fs::remove_file(path))
}

/// `fs::create_dir`, as a crash point.
pub fn create_dir(path: &Path) -> std::io::Result<()> {
    counted("mkdir", path, fs::create_dir(path))
}

/// Creates `path` and its missing parents, each a crash point, each made durable in its
/// parent (fsynced) before the next is made.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    // A parent that exists, even as a file, is left for `mkdir` to judge (`Not a directory`).
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
        && fs::symlink_metadata(parent).is_err()
    {
        create_dir_all(parent)?;
    }
    match create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent).map_err(|e| e.source),
        _ => Ok(()),
    }
}

/// `fs::remove_dir`, as a crash point.
pub fn remove_dir(path: &Path) -> std::io::Result<()> {
    counted("rmdir", path, fs::remove_dir(path))
}

/// Removes a folder and what it holds, one crash point per file and folder (a name already
/// gone is no error, so a removal cut short can be run again).
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let result = if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())
        } else {
            remove_file(&entry.path())
        };
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match remove_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `File::sync_all` of an open file at `path`, as a crash point.
pub fn sync_file(file: &File, path: &Path) -> std::io::Result<()> {
    counted("fsync", path, file.sync_all())
}

/// Opens the file at `path` and fsyncs it, as a crash point.
pub fn sync_path(path: &Path) -> std::io::Result<()> {
    sync_file(&File::open(path)?, path)
}

/// A failed durable write: what was being done, to which file.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct DurableError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn fail(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DurableError {
    let path = path.to_path_buf();
    move |source| DurableError {
        action,
        path,
        source,
    }
}

/// Replaces `path` with `bytes` atomically and durably (the temporary file is
/// `.<name>.tmp` beside it).
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    replace_file(path, bytes, true)
}

/// Replaces `path` with `bytes` atomically, without fsync: readers never see a part, but a
/// crash may keep the old content. For files that are rewritten often and whose loss costs
/// nothing (a status board), so that writing them never waits on the disk.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    replace_file(path, bytes, false)
}

fn replace_file(path: &Path, bytes: &[u8], synced: bool) -> Result<(), DurableError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp_name = OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or(OsStr::new("file")));
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = File::create(&tmp).map_err(fail("cannot create", &tmp))?;
    file.write_all(bytes).map_err(fail("cannot write", &tmp))?;
    if !synced {
        // Not a durable step: a file whose loss costs nothing, so not a crash point either.
        drop(file);
        return fs::rename(&tmp, path).map_err(fail("cannot rename into", path));
    }
    sync_file(&file, &tmp).map_err(fail("cannot sync", &tmp))?;
    drop(file);
    rename(&tmp, path).map_err(fail("cannot rename into", path))?;
    sync_dir(dir)
}

/// fsyncs a folder, so that a rename, link or removal inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| sync_file(&d, dir))
        .map_err(fail("cannot sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write(&path, b"old").unwrap();
        write(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("state.json")]);
    }

    #[test]
    fn folders_are_made_with_their_parents_and_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        create_dir_all(&deep).unwrap();
        write(&deep.join("x.json"), b"x").unwrap();
        remove_tree(&dir.path().join("a")).unwrap();
        assert!(!dir.path().join("a").exists());
        // Run again after it is gone, as after a crash in the middle: nothing to do.
        remove_tree(&dir.path().join("a")).unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        let err = create_dir_all(&file.join("sub")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotADirectory, "{err}");
    }

    #[test]
    fn an_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = write(&dir.path().join("missing/x.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing/.x.json.tmp"), "{err}");
    }
}
