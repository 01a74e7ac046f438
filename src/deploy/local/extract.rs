//! Safe extraction: the archive is written into a new release directory, checked again entry
//! by entry as it is written, then made durable and renamed into place.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use super::prune::{open_dir_nofollow, remove_tree};
use super::switch::sync_dir;
use super::{LocalFailure, LocalStep, LocalTarget, PARTIAL_PREFIX};
use crate::archive::paths::{EntryKind, Place, Policy};

impl LocalTarget {
    /// Extracts into `.partial-<name>`, makes it durable, and renames it to `<name>`.
    pub(super) fn extract_release(
        &self,
        app: &str,
        app_dir: &Path,
        release_name: &str,
        archive: &Path,
    ) -> Result<(), LocalFailure> {
        let partial = app_dir.join(format!("{PARTIAL_PREFIX}{release_name}"));
        let release = app_dir.join(release_name);
        self.remove_partial(app, app_dir, release_name)?;
        let io_failure = |what: String, e: io::Error| {
            LocalFailure::new(LocalStep::Extract, format!("app {app}: {what}: {e}"))
        };
        fs::create_dir(&partial)
            .map_err(|e| io_failure(format!("cannot create {}", partial.display()), e))?;

        if let Err(error) = extract(archive, &partial) {
            let mut reason = match error {
                ExtractError::Refused(why) => format!(
                    "archive {} refused: {why}; nothing was extracted",
                    archive.display()
                ),
                ExtractError::Io(why) => format!(
                    "cannot extract {} into {}: {why}",
                    archive.display(),
                    partial.display()
                ),
            };
            if let Err(e) = remove_tree(&partial) {
                reason.push_str(&format!(
                    " (and removing {} failed: {e})",
                    partial.display()
                ));
            }
            return Err(LocalFailure::new(
                LocalStep::Extract,
                format!("app {app}: {reason}"),
            ));
        }

        // One syncfs instead of an fsync per file: the whole tree is on disk before the
        // release can become `current`, at the cost of one flush of that filesystem.
        File::open(&partial)
            .and_then(|dir| rustix::fs::syncfs(&dir).map_err(io::Error::from))
            .map_err(|e| io_failure(format!("cannot sync {}", partial.display()), e))?;
        // A complete release of the same name that is not current is from an interrupted
        // or failed earlier run: replace it with the fresh extraction.
        remove_tree(&release).map_err(|e| {
            io_failure(
                format!(
                    "cannot remove the earlier, unfinished {}",
                    release.display()
                ),
                e,
            )
        })?;
        fs::rename(&partial, &release).map_err(|e| {
            io_failure(
                format!(
                    "cannot rename {} to {}",
                    partial.display(),
                    release.display()
                ),
                e,
            )
        })?;
        sync_dir(app_dir).map_err(|e| io_failure(format!("cannot sync {}", app_dir.display()), e))
    }
}

pub(super) enum ExtractError {
    /// The archive holds something this target will not write.
    Refused(String),
    /// Reading the archive or writing the release failed.
    Io(String),
}

/// Streams `archive` (tar over gzip, any number of members) into the empty directory `dest`,
/// without its single top-level folder.
fn extract(archive: &Path, dest: &Path) -> Result<(), ExtractError> {
    let file = File::open(archive)
        .map_err(|e| ExtractError::Io(format!("cannot open {}: {e}", archive.display())))?;
    let reader = MultiGzDecoder::new(BufReader::with_capacity(64 * 1024, file));
    extract_from(reader, dest)
}

pub(super) fn extract_from(reader: impl Read, dest: &Path) -> Result<(), ExtractError> {
    let read_error = |e: io::Error| ExtractError::Io(format!("cannot read the archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut extractor = Extractor {
        dest,
        paths: Policy::new(),
        dirs: HashSet::new(),
        deferred: Vec::new(),
    };
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        extractor.entry(&mut entry)?;
    }
    extractor.finish()
}

/// A folder's mode and mtime, applied once everything inside it is written.
struct DirMeta {
    path: PathBuf,
    depth: usize,
    mode: u32,
    mtime: Option<SystemTime>,
}

/// Writes entries one by one, checking each again: the archive was inspected, but this code
/// writes to the disk and trusts nothing it did not check itself.
struct Extractor<'a> {
    dest: &'a Path,
    /// Entry paths and links, judged as `dropdeploy check` judges them.
    paths: Policy,
    /// Folders under `dest` known to be real directories (made or checked here, and never
    /// replaced: an entry that would replace a folder is refused).
    dirs: HashSet<PathBuf>,
    deferred: Vec<DirMeta>,
}

fn path_of(base: &Path, components: &[Vec<u8>]) -> PathBuf {
    let mut path = base.to_path_buf();
    for component in components {
        path.push(OsStr::from_bytes(component));
    }
    path
}

fn shown_bytes(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_error(path: &Path) -> impl Fn(io::Error) -> ExtractError + '_ {
    move |e| ExtractError::Io(format!("cannot write {}: {e}", path.display()))
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = shown_bytes(&raw);
        let target = match kind {
            EntryType::Symlink | EntryType::Link => {
                entry.link_name_bytes().unwrap_or_default().into_owned()
            }
            _ => Vec::new(),
        };
        let policy_kind = match kind {
            EntryType::Directory => EntryKind::Folder,
            EntryType::Symlink => EntryKind::Symlink(&target),
            EntryType::Link => EntryKind::HardLink(&target),
            _ => EntryKind::File,
        };
        let (rel, hard_link_to) = match self.paths.admit(&raw, policy_kind) {
            Ok(Place::ArchiveRoot) => return Ok(()),
            Ok(Place::Inside { path, hard_link_to }) => (path, hard_link_to),
            Err(refusal) => return Err(ExtractError::Refused(refusal.reason)),
        };
        let mode = entry.header().mode().map_err(|e| {
            ExtractError::Refused(format!("entry {shown} has an unreadable mode: {e}"))
        })? & 0o777;
        let mtime = entry
            .header()
            .mtime()
            .ok()
            .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)));

        if rel.is_empty() {
            // The top-level folder itself (the policy refused anything else) is the release.
            self.deferred.push(DirMeta {
                path: self.dest.to_path_buf(),
                depth: 0,
                mode,
                mtime,
            });
            return Ok(());
        }
        self.ensure_parents(&rel, &shown)?;
        let path = path_of(self.dest, &rel);
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(entry, &path, &shown, mode, mtime)
            }
            EntryType::Directory => self.make_dir(&path, rel.len(), &shown, mode, mtime),
            EntryType::Symlink => {
                self.clear_slot(&path, &shown)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(write_error(&path))
            }
            EntryType::Link => {
                let source = hard_link_to.unwrap_or_default();
                self.make_hard_link(&path, &shown, &target, &source)
            }
            EntryType::Char | EntryType::Block => {
                Err(ExtractError::Refused(format!("device file {shown}")))
            }
            EntryType::Fifo => Err(ExtractError::Refused(format!("fifo {shown}"))),
            other => Err(ExtractError::Refused(format!(
                "unsupported entry type {:?} for {shown}",
                char::from(other.as_byte())
            ))),
        }
    }

    /// Makes sure every folder above the entry is a real directory inside the release (made
    /// here if missing): writing through a symlink made by an earlier entry could land
    /// anywhere.
    fn ensure_parents(&mut self, rel: &[Vec<u8>], shown: &str) -> Result<(), ExtractError> {
        for depth in 1..rel.len() {
            let dir = path_of(self.dest, &rel[..depth]);
            if self.dirs.contains(&dir) {
                continue;
            }
            let inside = shown_bytes(&rel[..depth].join(&b'/'));
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ExtractError::Refused(format!(
                        "entry {shown} would be written through the symlink {inside}"
                    )));
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(ExtractError::Refused(format!(
                        "entry {shown} is inside {inside}, which is not a folder"
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&dir).map_err(write_error(&dir))?;
                }
                Err(e) => return Err(write_error(&dir)(e)),
            }
            self.dirs.insert(dir);
        }
        Ok(())
    }

    /// Clears the way for a new file or link: an earlier file or link of the same name is
    /// replaced (as tar does with duplicates), a folder is not.
    fn clear_slot(&self, path: &Path, shown: &str) -> Result<(), ExtractError> {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(write_error(path)(e)),
            Ok(meta) if meta.is_dir() => Err(ExtractError::Refused(format!(
                "entry {shown} would replace a folder of the same name"
            ))),
            Ok(_) => fs::remove_file(path).map_err(write_error(path)),
        }
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        shown: &str,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), ExtractError> {
        self.clear_slot(path, shown)?;
        // `create_new` never follows a symlink at the final component.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_error(path))?;
        io::copy(entry, &mut file).map_err(|e| {
            ExtractError::Io(format!("cannot extract {shown} to {}: {e}", path.display()))
        })?;
        // Permission bits only: setuid, setgid and sticky bits are dropped.
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(write_error(path))?;
        if let Some(mtime) = mtime {
            file.set_modified(mtime).map_err(write_error(path))?;
        }
        Ok(())
    }

    fn make_dir(
        &mut self,
        path: &Path,
        depth: usize,
        shown: &str,
        mode: u32,
        mtime: Option<SystemTime>,
    ) -> Result<(), ExtractError> {
        if !self.dirs.contains(path) {
            match fs::symlink_metadata(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(path).map_err(write_error(path))?;
                }
                Err(e) => return Err(write_error(path)(e)),
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(ExtractError::Refused(format!(
                        "folder {shown} would replace a file or link of the same name"
                    )));
                }
            }
            self.dirs.insert(path.to_path_buf());
        }
        self.deferred.push(DirMeta {
            path: path.to_path_buf(),
            depth,
            mode,
            mtime,
        });
        Ok(())
    }

    /// `source` is the linked member below the top folder, as the policy resolved it: still
    /// to check on the disk is that it is a file extracted before, reached through folders.
    fn make_hard_link(
        &mut self,
        path: &Path,
        shown: &str,
        target: &[u8],
        source: &[Vec<u8>],
    ) -> Result<(), ExtractError> {
        let target_shown = shown_bytes(target);
        for depth in 1..source.len() {
            let dir = path_of(self.dest, &source[..depth]);
            let real_dir =
                self.dirs.contains(&dir) || fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
            if !real_dir {
                return Err(ExtractError::Refused(format!(
                    "hard link {shown} points through something other than a folder ({target_shown})"
                )));
            }
        }
        let source = path_of(self.dest, source);
        // Only a file: a hard link to a symlink would be a copy of that symlink elsewhere,
        // where its relative target may lead out of the release.
        if !fs::symlink_metadata(&source).is_ok_and(|m| m.is_file()) {
            return Err(ExtractError::Refused(format!(
                "hard link {shown} must point to a file extracted before it ({target_shown})"
            )));
        }
        if source == path {
            return Ok(());
        }
        self.clear_slot(path, shown)?;
        fs::hard_link(&source, path).map_err(write_error(path))
    }

    /// Applies folder modes and mtimes, deepest first, now that nothing more is written in
    /// them (a read-only folder would have refused its own content).
    fn finish(mut self) -> Result<(), ExtractError> {
        self.deferred
            .sort_by_key(|meta| std::cmp::Reverse(meta.depth));
        for meta in &self.deferred {
            let dir = open_dir_nofollow(&meta.path).map_err(write_error(&meta.path))?;
            dir.set_permissions(Permissions::from_mode(meta.mode))
                .map_err(write_error(&meta.path))?;
            if let Some(mtime) = meta.mtime {
                dir.set_modified(mtime).map_err(write_error(&meta.path))?;
            }
        }
        Ok(())
    }
}
