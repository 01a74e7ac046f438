//! The one policy for tar entry paths and links, shared by `dropdeploy check`
//! ([`inspect`](crate::archive::inspect)) and the local extractor
//! (the local target, `deploy::local`), so that what one accepts the other extracts.
//!
//! Entries are given to a [`Policy`] in archive order. It refuses:
//! - an empty name, an absolute path, a `..` component;
//! - a second top-level name, or a top-level entry that is not a folder;
//! - an entry under a symlink made by an earlier entry (it would be written through it), a
//!   folder in place of a symlink, anything else in place of a folder it knows of;
//! - a symlink whose target, resolved as the system will resolve it once everything is
//!   extracted, leaves the top-level folder: earlier symlinks are followed (chains, links to
//!   `.`, links to folders), a `..` goes to the real parent of where the walk is, and a later
//!   symlink that would change where an accepted one leads is refused in turn;
//! - a hard link whose target is absolute, outside the top-level folder, or goes to or
//!   through a symlink.
//!
//! Memory: the policy models only what links need (each symlink, its folders, and the names a
//! link target steps back out of with `..`), never every entry, within a
//! fixed budget (32 MiB).
//! Checks that need every path (a hard link to a file that is missing, a file replacing a
//! folder that holds no link) are the extractor's alone, made on the disk it writes.

use std::collections::HashMap;

/// How many symlinks one resolution may follow: Linux's own limit (`ELOOP` beyond it).
const MAX_FOLLOWS: usize = 40;
/// Path components one resolution may step through; real targets take a few dozen.
const MAX_STEPS: usize = 4096;
/// The longest link target a Linux path can hold (`PATH_MAX` less its terminating zero).
const MAX_TARGET_BYTES: usize = 4095;
/// What the model of links may take, counted as [`NODE_COST`] per name plus the bytes of link
/// targets and names: a bound on memory whatever the archive holds.
const MAX_MODEL_BYTES: usize = 32 * 1024 * 1024;
/// A rough cost of one modelled name (its node and its place in its parent's map).
const NODE_COST: usize = 128;

/// What kind of entry is offered to [`Policy::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind<'a> {
    Folder,
    /// A regular file (or anything else that is not a folder or a link: the caller refuses
    /// devices and fifos by type).
    File,
    /// A symlink and its target, as written in the archive.
    Symlink(&'a [u8]),
    /// A hard link and the member it names, from the archive's root.
    HardLink(&'a [u8]),
}

/// Why [`Policy::admit`] refused an entry: a reason for a person and its category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// One line naming the entry, the link target if any, and what is wrong.
    pub reason: String,
    pub kind: RefusalKind,
}

/// The category of a [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The entry has no usable name: the tar data is broken.
    Unnamed,
    /// A path or link that would write or lead outside the top-level folder, or through a
    /// symlink.
    Unsafe,
    /// Not exactly one top-level folder.
    Root,
}

/// Where an admitted entry goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// `./`: the archive's own root, not part of the top-level folder.
    ArchiveRoot,
    /// Inside the top-level folder: the path below it (empty for the folder itself) and, for
    /// a hard link, the member it links to, named the same way.
    Inside {
        path: Vec<Vec<u8>>,
        hard_link_to: Option<Vec<Vec<u8>>>,
    },
}

/// The path and link policy over one archive, fed its entries in order (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct Policy {
    entries: u64,
    root: Option<Vec<u8>>,
    /// `nodes[0]` is the top-level folder; a node exists for each symlink, its folders, and
    /// each name pinned by a resolution.
    nodes: Vec<Node>,
    links: Vec<Link>,
    model_bytes: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<[u8]>, u32>,
    /// The symlink here now, an index into `links`.
    link: Option<u32>,
    /// The symlink (index into `links`) whose target steps through this name: a symlink made
    /// here later would change where that one leads.
    pinned_by: Option<u32>,
}

#[derive(Debug)]
struct Link {
    entry: String,
    target: Vec<u8>,
}

/// One place in a walk: a modelled node, or a name the model does not know (nor anything
/// under it).
#[derive(Debug, Clone)]
enum At {
    Node(u32),
    New(Vec<u8>),
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new()
    }
}

impl Policy {
    pub fn new() -> Self {
        Policy {
            entries: 0,
            root: None,
            nodes: vec![Node::default()],
            links: Vec::new(),
            model_bytes: NODE_COST,
        }
    }

    /// Checks the next entry of the archive, named `path` as in its header, and records
    /// what later entries are judged against. After a refusal the archive is refused: do not
    /// offer more entries, except those refused as [`RefusalKind::Root`], which record nothing.
    pub fn admit(&mut self, path: &[u8], kind: EntryKind<'_>) -> Result<Place, Refusal> {
        self.entries += 1;
        let shown = shown(path);
        let parts = self.named_components(path, &shown)?;
        let Some((top, rel)) = parts.split_first() else {
            return archive_root_entry(kind, &shown);
        };
        self.claim_top(top, &shown)?;
        if rel.is_empty() {
            return top_level_entry(kind, &shown);
        }
        let existing = self.existing_below_folders(rel, &shown)?;
        let hard_link_to = self.record_entry(kind, rel, existing, &shown)?;
        Ok(Place::Inside {
            path: rel.iter().map(|part| part.to_vec()).collect(),
            hard_link_to,
        })
    }

    /// The entry's path components, once its name is known to be neither empty, absolute nor
    /// stepping back with `..`.
    fn named_components<'p>(&self, path: &'p [u8], shown: &str) -> Result<Vec<&'p [u8]>, Refusal> {
        if path.is_empty() {
            return Err(refusal(
                RefusalKind::Unnamed,
                format!("entry {} has an empty name", self.entries),
            ));
        }
        if path.starts_with(b"/") {
            return Err(unsafe_path(format!("absolute path {shown}")));
        }
        let parts = components(path);
        if parts.contains(&&b".."[..]) {
            return Err(unsafe_path(if climbs_out(&parts) {
                format!("path {shown} leaves the archive")
            } else {
                format!("path {shown} contains a .. component")
            }));
        }
        Ok(parts)
    }

    /// The first entry names the top-level folder; every later one must be under it.
    fn claim_top(&mut self, top: &[u8], shown: &str) -> Result<(), Refusal> {
        match &self.root {
            None => self.root = Some(top.to_vec()),
            Some(root) if root[..] == *top => {}
            Some(root) => {
                return Err(refusal(
                    RefusalKind::Root,
                    format!(
                        "entry {shown} is outside the top-level folder {}/",
                        shown_bytes(root)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What the model knows at the entry's own name, once every folder above it is known not
    /// to be a symlink made earlier.
    fn existing_below_folders(&self, rel: &[&[u8]], shown: &str) -> Result<Option<u32>, Refusal> {
        let (parents, name) = rel.split_at(rel.len() - 1);
        let mut node = Some(0);
        for part in parents {
            node = node.and_then(|node| self.child(node, part));
            let Some(node) = node else { break };
            if let Some(link) = self.nodes[node as usize].link {
                return Err(unsafe_path(format!(
                    "entry {shown} would be written through the symlink {}",
                    self.links[link as usize].entry
                )));
            }
        }
        Ok(node.and_then(|node| self.child(node, name[0])))
    }

    /// Checks the entry against what is at its name (`existing`) and records it; for a hard
    /// link, returns the member it links to.
    fn record_entry(
        &mut self,
        kind: EntryKind<'_>,
        rel: &[&[u8]],
        existing: Option<u32>,
        shown: &str,
    ) -> Result<Option<Vec<Vec<u8>>>, Refusal> {
        match kind {
            EntryKind::Folder => {
                if existing.is_some_and(|node| self.nodes[node as usize].link.is_some()) {
                    return Err(unsafe_path(format!(
                        "folder {shown} would replace a symlink of the same name"
                    )));
                }
                Ok(None)
            }
            EntryKind::File => {
                self.replace(existing, shown)?;
                Ok(None)
            }
            EntryKind::HardLink(target) => {
                let to = self.hard_link(shown, target)?;
                self.replace(existing, shown)?;
                Ok(Some(to))
            }
            EntryKind::Symlink(target) => {
                if let Some(by) = existing.and_then(|node| self.nodes[node as usize].pinned_by) {
                    return Err(unsafe_path(format!(
                        "symlink {shown} would change where the earlier symlink {} leads \
                         (its target goes through {shown})",
                        self.links[by as usize].entry
                    )));
                }
                self.replace(existing, shown)?;
                self.symlink(rel, shown, target)?;
                Ok(None)
            }
        }
    }

    fn child(&self, node: u32, name: &[u8]) -> Option<u32> {
        self.nodes[node as usize].children.get(name).copied()
    }

    /// A file or link takes the place of `existing`: a symlink there is gone, a folder the
    /// model knows of (it holds a link) cannot be replaced.
    fn replace(&mut self, existing: Option<u32>, shown: &str) -> Result<(), Refusal> {
        let Some(node) = existing else {
            return Ok(());
        };
        let node = &mut self.nodes[node as usize];
        if node.link.is_none() && !node.children.is_empty() {
            return Err(unsafe_path(format!(
                "entry {shown} would replace a folder of the same name"
            )));
        }
        node.link = None;
        Ok(())
    }

    fn symlink(&mut self, rel: &[&[u8]], shown: &str, target: &[u8]) -> Result<(), Refusal> {
        check_target(
            "symlink",
            shown,
            target,
            self.root.as_deref().unwrap_or_default(),
        )?;
        let id = self.links.len() as u32;
        self.charge(shown.len() + target.len())?;
        self.links.push(Link {
            entry: shown.to_string(),
            target: target.to_vec(),
        });
        // The link's folders are real folders: the walk starts in the last one.
        let mut own = 0;
        let mut pos = Vec::with_capacity(rel.len());
        for part in rel {
            own = self.make_child(own, part)?;
            pos.push(At::Node(own));
        }
        pos.pop();
        let mut todo: Vec<Vec<u8>> = components(target)
            .into_iter()
            .rev()
            .map(<[u8]>::to_vec)
            .collect();
        let (mut follows, mut steps) = (0, 0);
        let mut via: Option<u32> = None;
        while let Some(part) = todo.pop() {
            steps += 1;
            if steps > MAX_STEPS || follows > MAX_FOLLOWS {
                return Err(self.too_deep(shown, target));
            }
            if part == b".." {
                if pos.is_empty() {
                    return Err(self.outside(shown, target, via));
                }
                // Stepping back out of a name: pin it (and any new names above it) as a
                // folder, so no later symlink there changes where this `..` lands.
                self.pin(&mut pos, id)?;
                pos.pop();
                continue;
            }
            let here = match pos.last() {
                None => Some(0),
                Some(At::Node(node)) => Some(*node),
                Some(At::New(_)) => None,
            };
            let found = here.and_then(|node| self.child(node, &part));
            let link = found.and_then(|node| self.nodes[node as usize].link);
            match (found, link) {
                (Some(node), Some(link)) => {
                    follows += 1;
                    via = Some(link);
                    if !todo.is_empty() {
                        // Where the rest leads depends on this link: it may not change.
                        self.nodes[node as usize].pinned_by.get_or_insert(id);
                    }
                    let next = components(&self.links[link as usize].target);
                    if steps + todo.len() + next.len() > MAX_STEPS {
                        return Err(self.too_deep(shown, target));
                    }
                    todo.extend(next.into_iter().rev().map(<[u8]>::to_vec));
                }
                (Some(node), None) => pos.push(At::Node(node)),
                (None, _) => pos.push(At::New(part)),
            }
        }
        self.nodes[own as usize].link = Some(id);
        Ok(())
    }

    /// Turns the trailing new names of `pos` into nodes pinned by `link`, and pins its last.
    fn pin(&mut self, pos: &mut [At], link: u32) -> Result<(), Refusal> {
        let first_new = pos
            .iter()
            .position(|at| matches!(at, At::New(_)))
            .unwrap_or(pos.len());
        let mut parent = match first_new.checked_sub(1) {
            None => 0,
            Some(i) => match &pos[i] {
                At::Node(node) => *node,
                At::New(_) => 0,
            },
        };
        for at in pos[first_new..].iter_mut() {
            if let At::New(name) = at {
                parent = self.make_child(parent, name)?;
                self.nodes[parent as usize].pinned_by = Some(link);
                *at = At::Node(parent);
            }
        }
        if let Some(At::Node(node)) = pos.last() {
            self.nodes[*node as usize].pinned_by.get_or_insert(link);
        }
        Ok(())
    }

    fn make_child(&mut self, node: u32, name: &[u8]) -> Result<u32, Refusal> {
        if let Some(child) = self.child(node, name) {
            return Ok(child);
        }
        self.charge(NODE_COST + name.len())?;
        let child = self.nodes.len() as u32;
        self.nodes.push(Node::default());
        self.nodes[node as usize]
            .children
            .insert(name.into(), child);
        Ok(child)
    }

    fn charge(&mut self, bytes: usize) -> Result<(), Refusal> {
        self.model_bytes += bytes;
        if self.model_bytes > MAX_MODEL_BYTES {
            return Err(unsafe_path(format!(
                "too many links to check: their paths and targets take more than {} MiB",
                MAX_MODEL_BYTES / (1024 * 1024)
            )));
        }
        Ok(())
    }

    fn too_deep(&self, shown: &str, target: &[u8]) -> Refusal {
        unsafe_path(format!(
            "symlink {shown} has a target too deep to follow ({}: more than {MAX_FOLLOWS} \
             links or {MAX_STEPS} steps)",
            shown_bytes(target)
        ))
    }

    fn outside(&self, shown: &str, target: &[u8], via: Option<u32>) -> Refusal {
        let root = self.root.as_deref().map(shown_bytes).unwrap_or_default();
        let through = match via {
            Some(link) => {
                let link = &self.links[link as usize];
                format!(
                    ", through the symlink {} -> {}",
                    link.entry,
                    shown_bytes(&link.target)
                )
            }
            None => String::new(),
        };
        unsafe_path(format!(
            "symlink {shown} points outside the {root}/ folder ({}{through})",
            shown_bytes(target)
        ))
    }

    /// A hard link names a member from the archive's root; it is made at once, so it must
    /// not step to or through a symlink. Returns the member's path below the top folder.
    fn hard_link(&self, shown: &str, target: &[u8]) -> Result<Vec<Vec<u8>>, Refusal> {
        let root = self.root.as_deref().unwrap_or_default();
        check_target("hard link", shown, target, root)?;
        let target_shown = shown_bytes(target);
        let outside = || {
            unsafe_path(format!(
                "hard link {shown} points outside the {}/ folder ({target_shown})",
                shown_bytes(root)
            ))
        };
        let parts = components(target);
        let mut path: Vec<&[u8]> = Vec::new();
        // The node of each name in `path` below the top folder, while the model knows it.
        let mut nodes: Vec<Option<u32>> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if *part == b".." {
                if path.len() <= 1 {
                    return Err(outside());
                }
                path.pop();
                nodes.pop();
                continue;
            }
            if path.is_empty() {
                if *part != root {
                    return Err(outside());
                }
                path.push(part);
                continue;
            }
            let parent = match nodes.last() {
                None => Some(0),
                Some(node) => *node,
            };
            let node = parent.and_then(|node| self.child(node, part));
            if let Some(link) = node.and_then(|node| self.nodes[node as usize].link) {
                let link = &self.links[link as usize].entry;
                return Err(unsafe_path(if i + 1 == parts.len() {
                    format!(
                        "hard link {shown} must point to a file, not the symlink {link} \
                         ({target_shown})"
                    )
                } else {
                    format!("hard link {shown} points through the symlink {link} ({target_shown})")
                }));
            }
            path.push(part);
            nodes.push(node);
        }
        match path.split_first() {
            Some((_, rest)) if !rest.is_empty() => Ok(rest.iter().map(|p| p.to_vec()).collect()),
            Some(_) => Err(unsafe_path(format!(
                "hard link {shown} points to the {}/ folder itself ({target_shown})",
                shown_bytes(root)
            ))),
            None => Err(outside()),
        }
    }
}

/// An entry naming the archive's root (`./`): only a folder may.
fn archive_root_entry(kind: EntryKind<'_>, shown: &str) -> Result<Place, Refusal> {
    match kind {
        EntryKind::Folder => Ok(Place::ArchiveRoot),
        _ => Err(refusal(
            RefusalKind::Unnamed,
            format!("entry {shown} has no name"),
        )),
    }
}

/// The top-level entry itself: it must be a folder.
fn top_level_entry(kind: EntryKind<'_>, shown: &str) -> Result<Place, Refusal> {
    match kind {
        EntryKind::Folder => Ok(Place::Inside {
            path: Vec::new(),
            hard_link_to: None,
        }),
        other => Err(refusal(
            RefusalKind::Root,
            format!(
                "the top-level entry {shown} is {}, not a folder",
                describe(other)
            ),
        )),
    }
}

fn check_target(what: &str, shown: &str, target: &[u8], root: &[u8]) -> Result<(), Refusal> {
    if target.is_empty() {
        return Err(unsafe_path(format!("{what} {shown} has an empty target")));
    }
    if target.starts_with(b"/") {
        return Err(unsafe_path(format!(
            "{what} {shown} points to the absolute path {}, outside the {}/ folder",
            shown_bytes(target),
            shown_bytes(root)
        )));
    }
    if target.len() > MAX_TARGET_BYTES {
        return Err(unsafe_path(format!(
            "{what} {shown} has a target of {} bytes, longer than a path can be \
             ({MAX_TARGET_BYTES})",
            target.len()
        )));
    }
    Ok(())
}

/// A relative path's components, without empty and `.` ones (`./app//x` is `app`, `x`).
pub fn components(path: &[u8]) -> Vec<&[u8]> {
    path.split(|&byte| byte == b'/')
        .filter(|part| !part.is_empty() && *part != b".")
        .collect()
}

/// Whether `..` components climb above the archive's root.
fn climbs_out(parts: &[&[u8]]) -> bool {
    let mut depth = 0usize;
    for part in parts {
        if *part == b".." {
            match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            }
        } else {
            depth += 1;
        }
    }
    false
}

fn describe(kind: EntryKind<'_>) -> &'static str {
    match kind {
        EntryKind::Folder => "a folder",
        EntryKind::File => "a file",
        EntryKind::Symlink(_) => "a symlink",
        EntryKind::HardLink(_) => "a hard link",
    }
}

fn refusal(kind: RefusalKind, reason: String) -> Refusal {
    Refusal { reason, kind }
}

fn unsafe_path(reason: String) -> Refusal {
    refusal(RefusalKind::Unsafe, reason)
}

fn shown(path: &[u8]) -> String {
    shown_bytes(path)
}

fn shown_bytes(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit_all(entries: &[(&str, EntryKind<'_>)]) -> Result<(), String> {
        let mut policy = Policy::new();
        for (path, kind) in entries {
            policy
                .admit(path.as_bytes(), *kind)
                .map_err(|refusal| refusal.reason)?;
        }
        Ok(())
    }

    #[test]
    fn a_loop_of_links_is_refused_as_too_deep_to_follow() {
        let reason = admit_all(&[
            ("app/", EntryKind::Folder),
            ("app/a", EntryKind::Symlink(b"b")),
            ("app/b", EntryKind::Symlink(b"a")),
            ("app/c", EntryKind::Symlink(b"a/x")),
        ])
        .unwrap_err();
        assert_eq!(
            reason,
            "symlink app/c has a target too deep to follow (a/x: more than 40 links or 4096 steps)"
        );
    }

    #[test]
    fn a_target_longer_than_a_path_is_refused() {
        let long = "a/".repeat(2048);
        let reason = admit_all(&[("app/l", EntryKind::Symlink(long.as_bytes()))]).unwrap_err();
        assert_eq!(
            reason,
            "symlink app/l has a target of 4096 bytes, longer than a path can be (4095)"
        );
    }

    #[test]
    fn the_model_of_links_stays_within_its_budget() {
        // Each target steps back out of 1000 new names, which are all remembered.
        let mut policy = Policy::new();
        let refused = (0..1000).find_map(|i| {
            let target = format!("d{i}/{}..", "a/".repeat(999));
            let path = format!("app/l{i}");
            policy
                .admit(path.as_bytes(), EntryKind::Symlink(target.as_bytes()))
                .err()
        });
        let refusal = refused.expect("the budget is reached");
        assert_eq!(
            refusal.reason,
            "too many links to check: their paths and targets take more than 32 MiB"
        );
        assert!(policy.model_bytes <= MAX_MODEL_BYTES + NODE_COST + 4096);
    }
}
