//! The walk over the tar entries: each entry checked (paths, links, type) as it is read, the
//! top-level names gathered, and the stream after tar's end checked.

use std::collections::HashMap;
use std::io::{self, Read};

use tar::EntryType;

use super::guard::SizeLimit;
use super::messages::{describe_type, describe_unknown, human_size, join_and};
use super::{Rejection, RejectionKind};
use crate::archive::paths;

/// Distinct top-level names remembered for the error message; more are only counted as "more".
const MAX_TRACKED_ROOTS: usize = 1000;
/// Top-level names spelled out in a "several top-level entries" reason.
const MAX_LISTED_ROOTS: usize = 3;

/// What the walk over the entries has learnt so far.
#[derive(Default)]
pub(super) struct Scan {
    pub(super) entries: u64,
    pub(super) files: u64,
    /// Top-level names in order of appearance, at most [`MAX_TRACKED_ROOTS`].
    roots: Vec<Root>,
    root_index: HashMap<Vec<u8>, usize>,
    /// More distinct top-level names were seen than are tracked.
    more_roots: bool,
    /// The last entry read: its name and where its body (padding included) ends.
    pub(super) last: Option<(String, u64)>,
    /// Entry paths and links, judged as the local extractor judges them.
    paths: paths::Policy,
}

struct Root {
    name: Vec<u8>,
    /// The type of the entry naming the top-level item itself, if there is one.
    own_type: Option<EntryType>,
    /// Some entry lives inside it, which makes it a folder even without its own entry.
    has_children: bool,
}

impl Root {
    fn is_folder(&self) -> bool {
        match self.own_type {
            Some(kind) => kind.is_dir(),
            None => self.has_children,
        }
    }

    fn shown(&self) -> String {
        let name = String::from_utf8_lossy(&self.name);
        if self.is_folder() {
            format!("{name}/")
        } else {
            name.into_owned()
        }
    }
}

impl Scan {
    fn note_root(&mut self, components: &[&[u8]], kind: EntryType) {
        let Some(first) = components.first() else {
            return;
        };
        let index = match self.root_index.get(*first) {
            Some(&index) => index,
            None if self.roots.len() >= MAX_TRACKED_ROOTS => {
                self.more_roots = true;
                return;
            }
            None => {
                self.roots.push(Root {
                    name: first.to_vec(),
                    own_type: None,
                    has_children: false,
                });
                self.root_index.insert(first.to_vec(), self.roots.len() - 1);
                self.roots.len() - 1
            }
        };
        let root = &mut self.roots[index];
        if components.len() > 1 {
            root.has_children = true;
        } else if root.own_type.is_none() || !kind.is_dir() {
            // A non-folder entry for the top-level name wins: it cannot also be a folder.
            root.own_type = Some(kind);
        }
    }

    pub(super) fn single_root(&self) -> Result<String, Rejection> {
        if self.entries == 0 {
            return Err(Rejection::new(
                RejectionKind::Empty,
                "empty archive: no entries",
            ));
        }
        match self.roots.as_slice() {
            [] => Err(Rejection::new(
                RejectionKind::Empty,
                "empty archive: no files or folders besides ./",
            )),
            [root] if !self.more_roots => match root.own_type {
                Some(kind) if !kind.is_dir() => Err(Rejection::new(
                    RejectionKind::NoSingleRoot,
                    format!(
                        "the single top-level entry {} is {}, not a folder",
                        String::from_utf8_lossy(&root.name),
                        describe_type(kind)
                    ),
                )),
                _ => Ok(String::from_utf8_lossy(&root.name).into_owned()),
            },
            [first, second] if !self.more_roots => Err(Rejection::new(
                RejectionKind::NoSingleRoot,
                format!(
                    "two top-level entries: {} and {}",
                    first.shown(),
                    second.shown()
                ),
            )),
            roots => {
                let listed: Vec<String> = roots
                    .iter()
                    .take(MAX_LISTED_ROOTS)
                    .map(Root::shown)
                    .collect();
                let unlisted = roots.len() - listed.len();
                let reason = if self.more_roots {
                    format!(
                        "more than {} top-level entries: {} and others",
                        roots.len(),
                        listed.join(", ")
                    )
                } else if unlisted > 0 {
                    format!(
                        "{} top-level entries: {} and {unlisted} more",
                        roots.len(),
                        listed.join(", ")
                    )
                } else {
                    format!("{} top-level entries: {}", roots.len(), join_and(&listed))
                };
                Err(Rejection::new(RejectionKind::NoSingleRoot, reason))
            }
        }
    }
}

pub(super) enum ScanError {
    /// One of our own checks failed on an entry that tar read fine.
    Rejected(Rejection),
    /// Tar (or a layer below it) could not read on.
    Tar(io::Error),
}

impl From<Rejection> for ScanError {
    fn from(rejection: Rejection) -> Self {
        ScanError::Rejected(rejection)
    }
}

pub(super) fn scan_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    scan: &mut Scan,
) -> Result<(), ScanError> {
    // Bodies are not read here: fetching the next header skips them, which reads every byte.
    for entry in archive.entries().map_err(ScanError::Tar)? {
        let entry = entry.map_err(ScanError::Tar)?;
        check_entry(&entry, scan)?;
    }
    Ok(())
}

fn check_entry<R: Read>(entry: &tar::Entry<'_, R>, scan: &mut Scan) -> Result<(), Rejection> {
    let kind = entry.header().entry_type();
    if kind.is_pax_global_extensions() {
        // Metadata for the whole archive (git archive puts the commit id there), not a member.
        return Ok(());
    }
    let path = entry.path_bytes();
    let shown = String::from_utf8_lossy(&path).into_owned();
    let padded = entry.size().div_ceil(512) * 512;
    scan.last = Some((shown.clone(), entry.raw_file_position() + padded));
    scan.entries += 1;

    let target = match kind {
        EntryType::Symlink | EntryType::Link => entry.link_name_bytes().unwrap_or_default(),
        _ => Default::default(),
    };
    let policy_kind = match kind {
        EntryType::Directory => paths::EntryKind::Folder,
        EntryType::Symlink => paths::EntryKind::Symlink(&target),
        EntryType::Link => paths::EntryKind::HardLink(&target),
        _ => paths::EntryKind::File,
    };
    match scan.paths.admit(&path, policy_kind) {
        Ok(_) => {}
        // Left to the end, where every top-level name can be listed.
        Err(refusal) if refusal.kind == paths::RefusalKind::Root => {}
        Err(refusal) => {
            let kind = match refusal.kind {
                paths::RefusalKind::Unnamed => RejectionKind::CorruptTar,
                _ => RejectionKind::UnsafePath,
            };
            return Err(Rejection::new(kind, refusal.reason));
        }
    }

    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => scan.files += 1,
        EntryType::Directory | EntryType::Symlink | EntryType::Link => {}
        EntryType::Char | EntryType::Block => {
            return Err(Rejection::new(
                RejectionKind::SpecialFile,
                format!("device file {shown}"),
            ));
        }
        EntryType::Fifo => {
            return Err(Rejection::new(
                RejectionKind::SpecialFile,
                format!("fifo {shown}"),
            ));
        }
        other => {
            return Err(Rejection::new(
                RejectionKind::SpecialFile,
                format!(
                    "unsupported entry type {:?} ({}) for {shown}",
                    char::from(other.as_byte()),
                    describe_unknown(other)
                ),
            ));
        }
    }
    scan.note_root(&paths::components(&path), kind);
    Ok(())
}

/// After tar's end-of-archive: read the rest so gzip checks its CRCs, and accept only zeros.
pub(super) fn check_tail<R: Read>(
    stream: &mut SizeLimit<R>,
    entries: u64,
) -> Result<(), ScanError> {
    let mut buf = [0u8; 8192];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(ScanError::Tar(error)),
        };
        if let Some(at) = buf[..n].iter().position(|&byte| byte != 0) {
            let offset = stream.bytes - n as u64 + at as u64;
            let rejection = if entries == 0 {
                Rejection::new(
                    RejectionKind::NotTar,
                    format!(
                        "not a tar archive inside the gzip stream: it starts with an empty block, \
                         then has data at {}",
                        human_size(offset)
                    ),
                )
            } else {
                Rejection::new(
                    RejectionKind::CorruptTar,
                    format!(
                        "unexpected data after the end of the tar archive at {} (uncompressed)",
                        human_size(offset)
                    ),
                )
            };
            return Err(ScanError::Rejected(rejection));
        }
    }
}
