//! Placing an archive back in its drop folder, in `done/` or `failed/`: never over another
//! file (a taken name gets a suffix), a failed archive's reason file written before the archive
//! moves in, and `done/` pruned to the newest archives.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::durable;
use crate::verify::store::Protected;

use super::record::crash_point;
use super::{OutcomeError, exists, io_err, sync_dir};
use crate::source::drop::DropLayout;

/// How many `name.N.ext` candidates are tried before giving up on a collision.
const MAX_SUFFIX: u32 = 10_000;

/// `name` with a collision suffix before its extension: `app.tar.gz` → `app.2.tar.gz`
/// (`.tar.gz` and `.tgz` kept whole); `n` = 0 is the name itself.
pub(super) fn suffixed(name: &OsStr, n: u32) -> OsString {
    if n == 0 {
        return name.to_os_string();
    }
    let Some(text) = name.to_str() else {
        let mut name = name.to_os_string();
        name.push(format!(".{n}"));
        return name;
    };
    let lower = text.to_ascii_lowercase();
    let split = [".tar.gz", ".tgz"]
        .iter()
        .find(|ext| lower.ends_with(*ext) && lower.len() > ext.len())
        .map(|ext| text.len() - ext.len())
        .or_else(|| text.rfind('.').filter(|&i| i > 0));
    match split {
        Some(i) => OsString::from(format!("{}.{n}{}", &text[..i], &text[i..])),
        None => OsString::from(format!("{text}.{n}")),
    }
}

/// Moves `src` into `dir` under `name`, or the first free suffixed name, never replacing a file.
/// When `reason` gives a text for a destination (a failed archive), that reason file is written
/// first, exclusively and complete, and only then the archive moved in: the archive's arrival
/// means its reason is there, and a name whose reason file holds another text counts as taken.
/// `before` is called with each destination before anything is written for it, to persist it.
/// `previous` (the destination an earlier run chose) is tried first; if it already is `src`
/// (linked, the spool's name not yet removed), only the spool's name goes.
pub(super) fn place(
    src: &Path,
    dir: &Path,
    name: &OsStr,
    reason: &dyn Fn(&Path) -> Option<String>,
    previous: Option<&Path>,
    mut before: impl FnMut(&Path) -> Result<(), OutcomeError>,
) -> Result<PathBuf, OutcomeError> {
    let src_dir = src.parent().unwrap_or(Path::new("."));
    if let Some(previous) = previous
        && same_file(src, previous)
    {
        durable::remove_file(src).map_err(io_err("cannot remove the spool's copy", src))?;
        sync_dir(src_dir)?;
        return Ok(previous.to_path_buf());
    }
    ensure_dir(dir)?;
    let candidates = previous
        .filter(|p| p.parent() == Some(dir))
        .map(Path::to_path_buf)
        .into_iter()
        .chain((0..=MAX_SUFFIX).map(|n| dir.join(suffixed(name, n))));
    for dest in candidates {
        let text = reason(&dest);
        if exists(&dest)? {
            // Taken by another archive: a reason written for it by an earlier run goes.
            release_reason(&dest, text.as_deref())?;
            continue;
        }
        before(&dest)?;
        if let Some(text) = &text
            && !claim_reason(&DropLayout::reason_path(&dest), text)?
        {
            continue;
        }
        crash_point("reason")?;
        // A hard link fails on an existing name where rename would silently replace it, so two
        // outcomes landing on one name at once cannot overwrite each other.
        match durable::hard_link(src, &dest) {
            Ok(()) => {
                sync_dir(dir)?;
                durable::remove_file(src).map_err(io_err("cannot remove the spool's copy", src))?;
                sync_dir(src_dir)?;
                return Ok(dest);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                release_reason(&dest, text.as_deref())?;
                continue;
            }
            Err(_) => {
                // No hard links on this filesystem: rename, the name having just been free.
                if exists(&dest)? {
                    release_reason(&dest, text.as_deref())?;
                    continue;
                }
                durable::rename(src, &dest).map_err(io_err("cannot move the archive to", &dest))?;
                sync_dir(dir)?;
                sync_dir(src_dir)?;
                return Ok(dest);
            }
        }
    }
    Err(OutcomeError::NoFreeName {
        from: src.to_path_buf(),
        dir: dir.to_path_buf(),
        name: name.to_string_lossy().into_owned(),
        tried: MAX_SUFFIX,
    })
}

/// Makes `path` hold `text` unless it holds something else: true when it now holds `text`
/// (written now, or by an earlier run of the same outcome), false when another archive's reason
/// is there. The text appears whole or not at all: a complete, synced temporary file is
/// hard-linked to the name, which fails on an existing name instead of replacing it.
pub(super) fn claim_reason(path: &Path, text: &str) -> Result<bool, OutcomeError> {
    let holds_text = |path: &Path| -> Result<Option<bool>, OutcomeError> {
        match fs::read(path) {
            Ok(bytes) => Ok(Some(bytes == text.as_bytes())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot read", path)(e)),
        }
    };
    if let Some(ours) = holds_text(path)? {
        return Ok(ours);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or(OsStr::new("reason")));
    tmp_name.push(format!(".{:08x}.tmp", fastrand::u32(..)));
    let tmp = dir.join(tmp_name);
    let mut file = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
    file.write_all(text.as_bytes())
        .map_err(io_err("cannot write", &tmp))?;
    durable::sync_file(&file, &tmp).map_err(io_err("cannot sync", &tmp))?;
    drop(file);
    let claimed = match durable::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            holds_text(path).map(|ours| ours.unwrap_or(false))
        }
        // No hard links on this filesystem: rename, the name having just been free.
        Err(_) => match holds_text(path) {
            Ok(Some(ours)) => Ok(ours),
            Ok(None) => durable::rename(&tmp, path)
                .map(|()| true)
                .map_err(io_err("cannot rename into", path)),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = durable::remove_file(&tmp)
        && e.kind() != io::ErrorKind::NotFound
    {
        return Err(io_err("cannot remove", &tmp)(e));
    }
    sync_dir(dir)?;
    claimed
}

/// Removes the reason file of `archive` if it holds `text` (ours, for a name that turned out
/// taken), so that it never describes another archive.
fn release_reason(archive: &Path, text: Option<&str>) -> Result<(), OutcomeError> {
    let Some(text) = text else {
        return Ok(());
    };
    let path = DropLayout::reason_path(archive);
    match fs::read(&path) {
        Ok(bytes) if bytes == text.as_bytes() => {
            durable::remove_file(&path).map_err(io_err("cannot remove", &path))?;
            sync_dir(path.parent().unwrap_or(Path::new(".")))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &Path, _: &Path) -> bool {
    false
}

/// Keeps the newest `keep` archives (`*.tar.gz`, `*.tgz`, regular files not starting with `.`)
/// in `done`, by modification time, `newest` (the archive just placed) counted as the newest
/// whatever its time; deletes the others, oldest first, except those that are `protected` (the
/// archives of verified deployments). Anything else is left alone.
pub(super) fn prune_done(
    done: &Path,
    keep: usize,
    newest: Option<&Path>,
    protected: &[Protected],
) -> Result<Vec<PathBuf>, OutcomeError> {
    let entries = match fs::read_dir(done) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("cannot list", done)(e)),
    };
    let mut archives = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("cannot list", done))?;
        let name = entry.file_name();
        let lower = name.to_string_lossy().to_ascii_lowercase();
        if lower.starts_with('.') || !(lower.ends_with(".tar.gz") || lower.ends_with(".tgz")) {
            continue;
        }
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io_err("cannot stat", &path))?;
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        let is_newest = newest == Some(path.as_path());
        archives.push((is_newest, mtime, name, path));
    }
    // Newest first; equal times by name, for a stable choice.
    archives.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    let mut deleted = Vec::new();
    for (_, _, _, path) in archives.into_iter().skip(keep).rev() {
        if protected.iter().any(|p| p.matches(&path)) {
            continue;
        }
        match durable::remove_file(&path) {
            Ok(()) => deleted.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot delete the old archive", &path)(e)),
        }
    }
    if !deleted.is_empty() {
        sync_dir(done)?;
    }
    Ok(deleted)
}

/// Creates `dir` if needed, making its entry in the parent durable.
fn ensure_dir(dir: &Path) -> Result<(), OutcomeError> {
    if exists(dir)? {
        return Ok(());
    }
    durable::create_dir_all(dir).map_err(io_err("cannot create", dir))
}
