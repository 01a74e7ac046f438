//! Files that survive a crash whole. A file is written through a temporary file in the same
//! folder (write, fsync, rename, fsync the folder), so readers and a restart see the old
//! content or the new, never a part; a folder is fsynced after a rename or link inside it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

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
    if synced {
        file.sync_all().map_err(fail("cannot sync", &tmp))?;
    }
    drop(file);
    fs::rename(&tmp, path).map_err(fail("cannot rename into", path))?;
    if synced { sync_dir(dir) } else { Ok(()) }
}

/// fsyncs a folder, so that a rename, link or removal inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
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
    fn an_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = write(&dir.path().join("missing/x.json"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing/.x.json.tmp"), "{err}");
    }
}
