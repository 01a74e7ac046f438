//! What a rollback needs, kept in the state directory: the archives of the last verified
//! deployments of each app (`verified/<app>/<job>.tar.gz`, with `<job>.json` beside it), and
//! the apps that need attention (`attention/<app>.json`).
//!
//! A kept archive is a hard link to the job's archive when it can be (the spool is in the
//! state directory), else a copy; its record is written after it, so a listed entry always has
//! its file. Records and flags are written with [`crate::durable`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::archive::inspect::Summary;
use crate::durable::DurableError;
use crate::queue::spool::{Job, Payload, Timestamp, now};

/// How many verified archives are kept per app (the last one is the rollback target; the
/// others are there for `dropdeploy rollback --to`).
pub const KEEP_VERIFIED: usize = 3;

/// One kept archive of a verified deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub app: String,
    pub job: String,
    pub git_ref: String,
    /// The original file's name or path, for messages.
    pub file: String,
    pub summary: Summary,
    /// When it was verified.
    pub verified_at: Timestamp,
    /// The same in milliseconds: what orders two verified in the same second.
    #[serde(default)]
    pub verified_ms: u64,
    /// The other names (job ids, git_refs, file names) under which the same content was
    /// verified: a rollback that brought it back, or the same archive dropped again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl Kept {
    /// Whether `name` is this archive's job id, git_ref or file name, or one it was verified
    /// under before.
    pub fn answers_to(&self, name: &str) -> bool {
        self.job == name
            || self.git_ref == name
            || self.file == name
            || self.aliases.iter().any(|a| a == name)
    }

    /// Every name it answers to, its own first.
    fn names(&self) -> Vec<String> {
        let mut names = vec![self.job.clone(), self.git_ref.clone(), self.file.clone()];
        names.extend(self.aliases.iter().cloned());
        names
    }

    /// Adds `names` to the aliases, leaving out its own and the ones it has.
    fn learn(&mut self, names: impl IntoIterator<Item = String>) {
        for name in names {
            if !name.is_empty() && !self.answers_to(&name) {
                self.aliases.push(name);
            }
        }
    }
}

/// A kept archive, as `done/` must recognise it: the same file (a hard link), or the same
/// size and sha256.
#[derive(Debug, Clone)]
pub struct Protected {
    dev_ino: Option<(u64, u64)>,
    bytes: u64,
    sha256: String,
}

impl Protected {
    /// Whether `path` holds this archive. Only a file of the same size is hashed.
    pub fn matches(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = fs::metadata(path) else {
            return false;
        };
        if self.dev_ino == Some((meta.dev(), meta.ino())) {
            return true;
        }
        meta.len() == self.bytes && sha256_of(path).is_some_and(|d| d == self.sha256)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn sha256_of(path: &Path) -> Option<String> {
    use sha2::Digest as _;
    let mut file = fs::File::open(path).ok()?;
    let mut hasher = sha2::Sha256::new();
    io::copy(&mut file, &mut hasher).ok()?;
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Why an app needs attention (a rollback was unhealthy too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    pub app: String,
    /// The rollback job that was unhealthy.
    pub job: String,
    pub reason: String,
    pub since: Timestamp,
}

/// Errors of the store: about one file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Durable(#[from] DurableError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// The kept archives and attention flags under a state directory.
#[derive(Debug, Clone)]
pub struct Store {
    state_dir: PathBuf,
}

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            state_dir: state_dir.to_path_buf(),
        }
    }

    fn app_dir(&self, app: &str) -> PathBuf {
        self.state_dir.join("verified").join(app)
    }

    fn attention_path(&self, app: &str) -> PathBuf {
        self.state_dir.join("attention").join(format!("{app}.json"))
    }

    /// The file of a kept archive.
    pub fn archive_path(&self, kept: &Kept) -> PathBuf {
        self.app_dir(&kept.app).join(format!("{}.tar.gz", kept.job))
    }

    /// Keeps `archive`, the archive of the verified `job`, as the app's last verified one, and
    /// forgets the oldest beyond [`KEEP_VERIFIED`]. One content is kept once: verified again
    /// (a rollback bringing it back, or the same archive dropped again), it becomes the newest
    /// under one name and answers to every name it had ([`Kept::answers_to`]); a rollback
    /// keeps the name of the archive it brought back. Safe to repeat. Blocking. A URL job has
    /// no archive to keep: `Ok(false)`.
    pub fn keep(&self, job: &Job, archive: &Path) -> Result<bool, StoreError> {
        let Payload::Archive { summary, .. } = &job.payload else {
            return Ok(false);
        };
        let dir = self.app_dir(&job.app);
        crate::durable::create_dir_all(&dir).map_err(io_err("cannot create", &dir))?;
        let same: Vec<Kept> = self
            .kept(&job.app)?
            .into_iter()
            .filter(|k| k.summary.sha256 == summary.sha256)
            .collect();
        let known: Vec<String> = same.iter().flat_map(Kept::names).collect();
        let restored = job.rollback().and_then(|of| {
            same.iter()
                .find(|k| k.answers_to(&of.to_job))
                .or(same.first())
        });
        let mut kept = match restored {
            // A rollback: the archive it brought back stays under its own name.
            Some(restored) => restored.clone(),
            None => {
                self.link(job, archive, &dir)?;
                self.identity(job, summary)
            }
        };
        kept.learn(known);
        kept.learn([job.id.clone(), job.git_ref.clone()]);
        (kept.verified_at, kept.verified_ms) = (now(), now_ms());
        let record = dir.join(format!("{}.json", kept.job));
        let bytes = serde_json::to_vec_pretty(&kept).map_err(|e| StoreError::Io {
            action: "cannot write",
            path: record.clone(),
            source: io::Error::other(e),
        })?;
        crate::durable::write(&record, &crate::redact::redact_vec(bytes))?;
        let stale = self
            .kept(&job.app)?
            .into_iter()
            .filter(|k| k.job != kept.job);
        let (copies, others): (Vec<Kept>, Vec<Kept>) =
            stale.partition(|k| k.summary.sha256 == summary.sha256);
        for old in copies
            .into_iter()
            .chain(others.into_iter().skip(KEEP_VERIFIED - 1))
        {
            // The record goes first: an archive without a record is never listed.
            let _ = crate::durable::remove_file(&dir.join(format!("{}.json", old.job)));
            let _ = crate::durable::remove_file(&self.archive_path(&old));
        }
        Ok(true)
    }

    /// Links (or copies) the job's archive into the store, as `<job>.tar.gz`.
    fn link(&self, job: &Job, archive: &Path, dir: &Path) -> Result<(), StoreError> {
        let dest = dir.join(format!("{}.tar.gz", job.id));
        if fs::symlink_metadata(&dest).is_ok() {
            return Ok(());
        }
        let tmp = dir.join(format!(".{}.tar.gz.tmp", job.id));
        let _ = crate::durable::remove_file(&tmp);
        if crate::durable::hard_link(archive, &tmp).is_err() {
            fs::copy(archive, &tmp).map_err(io_err("cannot copy the archive to", &tmp))?;
            crate::durable::sync_path(&tmp).map_err(io_err("cannot sync", &tmp))?;
        }
        crate::durable::rename(&tmp, &dest).map_err(io_err("cannot rename into", &dest))?;
        crate::durable::sync_dir(dir)?;
        Ok(())
    }

    /// A new record for the job's archive: its own names, or, for a rollback whose archive is
    /// no longer kept, the names of the archive it brought back.
    fn identity(&self, job: &Job, summary: &Summary) -> Kept {
        let (git_ref, file) = match job.rollback() {
            Some(of) => (of.to_ref.clone(), of.to_file.clone()),
            None => (job.git_ref.clone(), crate::queue::check::file_name_of(job)),
        };
        let mut kept = Kept {
            app: job.app.clone(),
            job: job.id.clone(),
            git_ref,
            file,
            summary: summary.clone(),
            verified_at: now(),
            verified_ms: now_ms(),
            aliases: Vec::new(),
        };
        if let Some(of) = job.rollback() {
            kept.learn([of.to_job.clone()]);
        }
        kept
    }

    /// The app's kept archives, newest first.
    pub fn kept(&self, app: &str) -> Result<Vec<Kept>, StoreError> {
        let dir = self.app_dir(app);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot list", &dir)(e)),
        };
        let mut kept = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("cannot list", &dir))?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = fs::read(&path) else { continue };
            let Ok(record) = serde_json::from_slice::<Kept>(&bytes) else {
                tracing::warn!("skipping the unreadable record {}", path.display());
                continue;
            };
            if self.archive_path(&record).is_file() {
                kept.push(record);
            }
        }
        kept.sort_by(|a, b| {
            (b.verified_at, b.verified_ms, &b.job).cmp(&(a.verified_at, a.verified_ms, &a.job))
        });
        Ok(kept)
    }

    /// The app's last verified archive, if one is kept.
    pub fn last(&self, app: &str) -> Result<Option<Kept>, StoreError> {
        Ok(self.kept(app)?.into_iter().next())
    }

    /// The last verified archive of every app (what `done/` must not lose).
    pub fn protected(&self) -> Vec<Protected> {
        use std::os::unix::fs::MetadataExt;
        let Ok(apps) = fs::read_dir(self.state_dir.join("verified")) else {
            return Vec::new();
        };
        apps.flatten()
            .filter_map(|a| a.file_name().to_str().map(str::to_string))
            .filter_map(|app| self.last(&app).ok().flatten())
            .map(|k| Protected {
                dev_ino: fs::metadata(self.archive_path(&k))
                    .ok()
                    .map(|m| (m.dev(), m.ino())),
                bytes: k.summary.compressed_bytes,
                sha256: k.summary.sha256,
            })
            .collect()
    }

    /// Marks the app as needing attention (durably).
    pub fn set_attention(&self, attention: &Attention) -> Result<(), StoreError> {
        let path = self.attention_path(&attention.app);
        if let Some(dir) = path.parent() {
            crate::durable::create_dir_all(dir).map_err(io_err("cannot create", dir))?;
        }
        let bytes = serde_json::to_vec_pretty(attention).map_err(|e| StoreError::Io {
            action: "cannot write",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        Ok(crate::durable::write(
            &path,
            &crate::redact::redact_vec(bytes),
        )?)
    }

    /// Why the app needs attention, if it does.
    pub fn attention(&self, app: &str) -> Option<Attention> {
        let bytes = fs::read(self.attention_path(app)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every app that needs attention.
    pub fn all_attention(&self) -> Vec<Attention> {
        let Ok(entries) = fs::read_dir(self.state_dir.join("attention")) else {
            return Vec::new();
        };
        let mut all: Vec<Attention> = entries
            .flatten()
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        all.sort_by(|a: &Attention, b| a.app.cmp(&b.app));
        all
    }

    /// Clears the app's attention flag. Returns whether it was set.
    pub fn clear_attention(&self, app: &str) -> Result<bool, StoreError> {
        let path = self.attention_path(app);
        match crate::durable::remove_file(&path) {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    crate::durable::sync_dir(dir)?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("cannot remove", &path)(e)),
        }
    }
}
