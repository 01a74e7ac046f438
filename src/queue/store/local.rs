//! [`LocalStore`]: the store of one node without a database, over its `state_dir`.
//!
//! - records: the spool's `job.json` files (`state_dir/spool/<id>/`, through [`Spool`]);
//! - history: `state_dir/history.jsonl`, read as JSON lines; [`Store::finish`] appends the
//!   entry (once) and removes the job's directory, as the outcome recording does;
//! - leases: the apps' `flock` locks (`state_dir/locks/`, [`AppLock`]), held while the lease
//!   lasts, with a token from the counter file `state_dir/locks/lease-token`. A lease is not
//!   taken from a live holder by the kernel, so it ends when its holder gives it up, dies, or
//!   finds it stale at its next write (then the lock is let go).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{FlockOperation, flock};
use sha2::{Digest, Sha256};

use super::{Finished, Holder, Lease, Store, StoreError};
use crate::lock::{APP_LOCKS_DIR, AppLock};
use crate::queue::spool::{ARCHIVE_NAME, Job, Payload, RECORD_NAME, Spool, SpoolError};

/// The history file inside `state_dir` (the outcome recording writes it).
pub const HISTORY_FILE: &str = "history.jsonl";
/// The lease token counter inside the locks folder.
const TOKEN_FILE: &str = "lease-token";

/// A lease is not acted on in the last tenth of its duration.
const MARGIN_DIVISOR: u32 = 10;

/// See the [module docs](self).
#[derive(Debug)]
pub struct LocalStore {
    state_dir: PathBuf,
    spool: Spool,
    node: String,
    leases: Mutex<HashMap<String, Held>>,
}

#[derive(Debug)]
struct Held {
    lease: Lease,
    duration: Duration,
    _lock: AppLock,
}

impl LocalStore {
    /// The store of `state_dir` (its spool is made if missing), for the node `node`.
    pub fn open(state_dir: &Path, node: &str) -> Result<LocalStore, StoreError> {
        let spool = Spool::open(state_dir.join("spool")).map_err(spool_error)?;
        Ok(LocalStore {
            state_dir: state_dir.to_path_buf(),
            spool,
            node: node.to_owned(),
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// The spool the records are kept in.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    fn history_path(&self) -> PathBuf {
        self.state_dir.join(HISTORY_FILE)
    }

    fn locks_dir(&self) -> PathBuf {
        self.state_dir.join(APP_LOCKS_DIR)
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Ok` if this store holds a fresh lease of `app`; a stale one is let go (`Fenced`).
    fn check_lease(&self, app: &str) -> Result<(), StoreError> {
        let mut leases = self.leases();
        match leases.get(app) {
            Some(held)
                if held
                    .lease
                    .fresh(held.duration, held.duration / MARGIN_DIVISOR) =>
            {
                Ok(())
            }
            Some(_) => {
                leases.remove(app);
                Err(self.fenced(app))
            }
            None => Err(self.fenced(app)),
        }
    }

    fn fenced(&self, app: &str) -> StoreError {
        StoreError::Fenced {
            app: app.to_owned(),
            node: self.node.clone(),
        }
    }

    fn exists(&self, id: &str) -> bool {
        self.spool.job_dir(id).join(RECORD_NAME).exists()
    }

    /// The next lease token (a counter file under `flock`, synced before it is used).
    fn next_token(&self) -> Result<i64, StoreError> {
        let dir = self.locks_dir();
        let path = dir.join(TOKEN_FILE);
        let io = |action: &'static str| {
            let path = path.clone();
            move |source: std::io::Error| StoreError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&dir).map_err(io("cannot create the folder of"))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("cannot open"))?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| io("cannot lock")(e.into()))?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io("cannot read"))?;
        let next = text.trim().parse::<i64>().unwrap_or(0) + 1;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(format!("{next:020}\n").as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(io("cannot write"))?;
        Ok(next)
    }

    /// Whether the history holds an entry for job `id`.
    fn in_history(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .read_history(None)?
            .iter()
            .any(|finished| finished.job == id))
    }

    /// The history's entries (of one app, or all), oldest first; lines that are not JSON
    /// objects with a job and an app are skipped.
    fn read_history(&self, app: Option<&str>) -> Result<Vec<Finished>, StoreError> {
        let path = self.history_path();
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "cannot open",
                    path,
                    source,
                });
            }
        };
        let mut found = Vec::new();
        for line in BufReader::new(file).split(b'\n') {
            let line = line.map_err(|source| StoreError::Io {
                action: "cannot read",
                path: path.clone(),
                source,
            })?;
            let Ok(entry) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            let (Some(job), Some(entry_app)) = (
                entry.get("job").and_then(|v| v.as_str()),
                entry.get("app").and_then(|v| v.as_str()),
            ) else {
                continue;
            };
            if app.is_some_and(|app| app != entry_app) {
                continue;
            }
            found.push(Finished {
                job: job.to_owned(),
                app: entry_app.to_owned(),
                entry: entry.clone(),
            });
        }
        Ok(found)
    }

    /// Appends one line to the history (one write on an append-only file).
    fn append_history(&self, entry: &serde_json::Value) -> Result<(), StoreError> {
        let path = self.history_path();
        let io = |action: &'static str| {
            let path = path.clone();
            move |source: std::io::Error| StoreError::Io {
                action,
                path,
                source,
            }
        };
        let mut line = serde_json::to_vec(entry).map_err(|e| io("cannot write")(e.into()))?;
        line = crate::redact::redact_vec(line);
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io("cannot open"))?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| io("cannot lock")(e.into()))?;
        file.write_all(&line).map_err(io("cannot append to"))?;
        file.sync_data().map_err(io("cannot sync"))
    }
}

impl Store for LocalStore {
    fn node(&self) -> &str {
        &self.node
    }

    fn shared(&self) -> bool {
        false
    }

    fn add(&self, job: &mut Job, archive: Option<&Path>) -> Result<(), StoreError> {
        if self.exists(&job.id) {
            let stored = self.load(&job.id)?;
            job.seq = stored.seq;
            return Ok(());
        }
        let tmp = self.spool.dir().join(format!(".new-{}", job.id));
        crate::durable::create_dir_all(&tmp).map_err(|source| StoreError::Io {
            action: "cannot create job directory",
            path: tmp.clone(),
            source,
        })?;
        if let Some(archive) = archive {
            let to = tmp.join(ARCHIVE_NAME);
            std::fs::copy(archive, &to)
                .and_then(|_| File::open(&to)?.sync_all())
                .map_err(|source| StoreError::Io {
                    action: "cannot copy the archive to",
                    path: to,
                    source,
                })?;
        }
        self.spool.commit_new(&tmp, job).map_err(spool_error)
    }

    fn save(&self, job: &Job) -> Result<(), StoreError> {
        self.check_lease(&job.app)?;
        if !self.exists(&job.id) {
            return Err(StoreError::Missing(job.id.clone()));
        }
        self.spool.save(job).map_err(spool_error)
    }

    fn finish(&self, job: &Job, entry: &serde_json::Value) -> Result<(), StoreError> {
        self.check_lease(&job.app)?;
        if !self.exists(&job.id) {
            // Finished already (its directory goes once the entry is written), or unknown.
            return if self.in_history(&job.id)? {
                Ok(())
            } else {
                Err(StoreError::Missing(job.id.clone()))
            };
        }
        if !self.in_history(&job.id)? {
            self.append_history(entry)?;
        }
        self.spool.remove(&job.id).map_err(spool_error)
    }

    fn load(&self, id: &str) -> Result<Job, StoreError> {
        match self.spool.load(id) {
            Ok(job) => Ok(job),
            Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::Missing(id.to_owned()))
            }
            Err(e) => Err(spool_error(e)),
        }
    }

    fn jobs(&self, app: Option<&str>) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        for job in self.spool.jobs().map_err(spool_error)? {
            match job {
                Ok(job) if app.is_none_or(|app| app == job.app) => jobs.push(job),
                Ok(_) => {}
                Err(e) => tracing::warn!("skipping a job record: {e}"),
            }
        }
        Ok(jobs)
    }

    fn fetch_archive(&self, id: &str, to: &Path) -> Result<(), StoreError> {
        let job = self.load(id)?;
        let from = self.spool.archive_path(id);
        let mut target = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(to)
            .map_err(|source| StoreError::Io {
                action: "cannot create",
                path: to.to_path_buf(),
                source,
            })?;
        let sha = match copy_checked(&from, (&mut target, to)) {
            Ok(sha) => sha,
            Err(e) => {
                // Only the file made here is removed (never one that was there before).
                let _ = std::fs::remove_file(to);
                return Err(e);
            }
        };
        if let Payload::Archive { summary, .. } = &job.payload
            && summary.sha256 != sha
        {
            let _ = std::fs::remove_file(to);
            return Err(StoreError::Io {
                action: "refusing to write",
                path: to.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the archive of job {id} does not match its SHA-256"),
                ),
            });
        }
        Ok(())
    }

    fn history(&self, app: Option<&str>, limit: usize) -> Result<Vec<Finished>, StoreError> {
        let mut entries = self.read_history(app)?;
        let skip = entries.len().saturating_sub(limit);
        entries.drain(..skip);
        Ok(entries)
    }

    fn acquire(&self, app: &str, lease: Duration) -> Result<Option<Lease>, StoreError> {
        let dir = self.locks_dir();
        let lock = match AppLock::try_acquire(&dir, app, &format!("lease:{}", self.node)) {
            Ok(Ok(lock)) => lock,
            Ok(Err(_holder)) => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "cannot lock",
                    path: AppLock::path(&dir, app),
                    source,
                });
            }
        };
        let granted = Lease {
            app: app.to_owned(),
            node: self.node.clone(),
            token: self.next_token()?,
            until: SystemTime::now() + lease,
            renewed: Instant::now(),
        };
        self.leases().insert(
            app.to_owned(),
            Held {
                lease: granted.clone(),
                duration: lease,
                _lock: lock,
            },
        );
        Ok(Some(granted))
    }

    fn renew(&self, lease: &Lease, duration: Duration) -> Result<Option<Lease>, StoreError> {
        let mut leases = self.leases();
        let Some(held) = leases.get_mut(&lease.app) else {
            return Ok(None);
        };
        if held.lease.token != lease.token {
            return Ok(None);
        }
        if held.lease.renewed.elapsed() >= held.duration {
            leases.remove(&lease.app);
            return Ok(None);
        }
        held.lease.renewed = Instant::now();
        held.lease.until = SystemTime::now() + duration;
        held.duration = duration;
        Ok(Some(held.lease.clone()))
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut leases = self.leases();
        if leases
            .get(&lease.app)
            .is_some_and(|held| held.lease.token == lease.token)
        {
            leases.remove(&lease.app);
        }
        Ok(())
    }

    fn holders(&self) -> Result<Vec<Holder>, StoreError> {
        let mut holders: Vec<Holder> = self
            .leases()
            .values()
            .map(|held| Holder {
                app: held.lease.app.clone(),
                node: held.lease.node.clone(),
                token: held.lease.token,
                until: held.lease.until,
            })
            .collect();
        holders.sort_by(|a, b| a.app.cmp(&b.app));
        Ok(holders)
    }

    fn lease_of(&self, app: &str) -> Option<Lease> {
        self.leases().get(app).map(|held| held.lease.clone())
    }
}

/// Copies `from` into `target`, the new file `to` (synced); returns the SHA-256 of the bytes
/// copied.
fn copy_checked(from: &Path, (target, to): (&mut File, &Path)) -> Result<String, StoreError> {
    let mut source = File::open(from).map_err(|source| StoreError::Io {
        action: "cannot open",
        path: from.to_path_buf(),
        source,
    })?;
    let io_to = |source| StoreError::Io {
        action: "cannot write",
        path: to.to_path_buf(),
        source,
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = source.read(&mut buf).map_err(|source| StoreError::Io {
            action: "cannot read",
            path: from.to_path_buf(),
            source,
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        target.write_all(&buf[..n]).map_err(io_to)?;
    }
    target.sync_all().map_err(io_to)?;
    Ok(hex::encode(hasher.finalize()))
}

fn spool_error(e: SpoolError) -> StoreError {
    match e {
        SpoolError::Io {
            action,
            path,
            source,
        } => StoreError::Io {
            action,
            path,
            source,
        },
        SpoolError::Record { path, source } => StoreError::Record {
            id: path
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            reason: source.to_string(),
        },
        SpoolError::Store(e) => e,
    }
}
