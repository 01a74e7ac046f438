//! Who drives what: one daemon per `state_dir`, one driver per job.
//!
//! Both are `flock(2)` locks, which the kernel releases when the holder dies, so a crash never
//! leaves a stale lock behind. [`StateLock`] is taken by `dropdeploy run` on
//! `<state_dir>/daemon.lock` (with its pid written inside, for the message a second daemon
//! prints); [`JobLock`] is taken on a job's directory by whichever process drives that job (a
//! daemon's lane or a one-shot `deploy`), so two processes sharing a `state_dir` never drive
//! the same job. A job directory keeps its inode when it is renamed into place, so a lock taken
//! while the job is being made still holds once it is committed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

/// The daemon's lock file inside `state_dir`.
pub const DAEMON_LOCK_NAME: &str = "daemon.lock";

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error(
        "another dropdeploy daemon{} already uses state_dir {}: one daemon owns a state_dir at a \
         time; stop it first (systemctl stop dropdeploy), or give this one another state_dir",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        state_dir.display()
    )]
    Held {
        state_dir: PathBuf,
        holder: Option<u32>,
    },
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The exclusive hold of a daemon on its `state_dir`, released on drop (or death).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock without waiting, and writes this process's pid into the lock file.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join(DAEMON_LOCK_NAME);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(LockError::Held {
                    state_dir: state_dir.to_path_buf(),
                    holder: read_pid(&mut file),
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StateLock { _file: file })
    }

    /// The pid of the live daemon holding `state_dir`, if one does (a lock file left by a dead
    /// one does not count).
    pub fn holder(state_dir: &Path) -> Option<u32> {
        let path = state_dir.join(DAEMON_LOCK_NAME);
        let mut file = File::open(path).ok()?;
        match flock(file.as_fd(), FlockOperation::NonBlockingLockShared) {
            Ok(()) => None,
            Err(_) => Some(read_pid(&mut file).unwrap_or(0)),
        }
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The hold of one process on one job, released on drop (or death).
#[derive(Debug)]
pub struct JobLock {
    _dir: File,
}

impl JobLock {
    /// Whether a process holds the lock of the job directory `dir`, seen in `/proc/locks`
    /// without taking it (taking it, even for an instant, could make its driver think another
    /// process has it). `None` when it cannot be told.
    pub fn is_held(dir: &Path) -> Option<bool> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(dir).ok()?;
        let dev = meta.dev();
        // The userspace encoding of a device number (glibc's `major` and `minor`).
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let key = format!("{major:02x}:{minor:02x}:{}", meta.ino());
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        Some(locks.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.contains(&"FLOCK") && fields.contains(&key.as_str())
        }))
    }

    /// Locks the job directory `dir` without waiting. `Ok(None)`: another process drives it.
    pub fn try_acquire(dir: &Path) -> std::io::Result<Option<JobLock>> {
        let file = File::open(dir)?;
        match flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(JobLock { _dir: file })),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// The folder of the apps' locks inside `state_dir`.
pub const APP_LOCKS_DIR: &str = "locks";

/// The hold of one process on one app, released on drop (or death): whichever process drives
/// one of the app's jobs (a daemon's lane, a one-shot `deploy`) holds it, so that processes
/// sharing a `state_dir` never deploy one app twice at once. The holder writes its pid and job
/// in the file, for the message of whoever waits.
#[derive(Debug)]
pub struct AppLock {
    _file: File,
}

/// Who holds an app's lock, as its holder wrote it (either may be missing while it writes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppHolder {
    pub pid: Option<u32>,
    pub job: Option<String>,
}

impl AppLock {
    /// The lock file of `app` in the folder `dir`: the name's bytes other than lowercase
    /// letters, digits and `-` are written as `_<hex>`, so any name makes one plain file name.
    pub fn path(dir: &Path, app: &str) -> PathBuf {
        let mut name = String::with_capacity(app.len() + 5);
        for byte in app.bytes() {
            match byte {
                b'a'..=b'z' | b'0'..=b'9' | b'-' => name.push(char::from(byte)),
                other => name.push_str(&format!("_{other:02x}")),
            }
        }
        name.push_str(".lock");
        dir.join(name)
    }

    /// Takes `app`'s lock in `dir` (created if missing) without waiting, for `job`.
    /// `Ok(Err(holder))`: another process (or another handle of this one) holds it.
    pub fn try_acquire(
        dir: &Path,
        app: &str,
        job: &str,
    ) -> std::io::Result<Result<AppLock, AppHolder>> {
        std::fs::create_dir_all(dir)?;
        let path = AppLock::path(dir, app);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Ok(Err(read_holder(&mut file)));
            }
            Err(e) => return Err(e.into()),
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{} {job}", std::process::id())?;
        Ok(Ok(AppLock { _file: file }))
    }
}

fn read_holder(file: &mut File) -> AppHolder {
    let mut text = String::new();
    if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
        return AppHolder::default();
    }
    let mut words = text.split_whitespace();
    AppHolder {
        pid: words.next().and_then(|w| w.parse().ok()),
        job: words.next().map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_job_lock_is_seen_without_taking_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(JobLock::is_held(dir.path()), Some(false));
        let lock = JobLock::try_acquire(dir.path()).unwrap().unwrap();
        assert_eq!(JobLock::is_held(dir.path()), Some(true));
        drop(lock);
        assert_eq!(JobLock::is_held(dir.path()), Some(false));
    }

    #[test]
    fn a_second_daemon_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StateLock::holder(dir.path()), None);
        let first = StateLock::acquire(dir.path()).unwrap();
        assert_eq!(StateLock::holder(dir.path()), Some(std::process::id()));
        match StateLock::acquire(dir.path()) {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        assert_eq!(StateLock::holder(dir.path()), None);
        StateLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_job_directory_is_driven_by_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = JobLock::try_acquire(dir.path()).unwrap();
        assert!(first.is_some());
        assert!(JobLock::try_acquire(dir.path()).unwrap().is_none());
        drop(first);
        assert!(JobLock::try_acquire(dir.path()).unwrap().is_some());
    }

    #[test]
    fn an_app_is_held_by_one_holder_at_a_time_who_says_who_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let first = AppLock::try_acquire(&locks, "my-app", "job-1")
            .unwrap()
            .unwrap();
        let holder = AppLock::try_acquire(&locks, "my-app", "job-2")
            .unwrap()
            .unwrap_err();
        assert_eq!(holder.pid, Some(std::process::id()));
        assert_eq!(holder.job.as_deref(), Some("job-1"));
        assert!(
            AppLock::try_acquire(&locks, "other", "job-3")
                .unwrap()
                .is_ok()
        );
        drop(first);
        assert!(
            AppLock::try_acquire(&locks, "my-app", "job-2")
                .unwrap()
                .is_ok()
        );
        let odd = AppLock::path(&locks, "a/b\nc");
        assert_eq!(odd.file_name().unwrap(), "a_2fb_0ac.lock");
    }
}
