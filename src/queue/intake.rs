//! Making jobs: an archive (copied or moved into the spool, then inspected) or a URL becomes a
//! job record in the spool, in state `queued`.

use std::fs;
use std::path::{Path, PathBuf};

use crate::archive::inspect::{InspectError, Limits, Rejection, Summary, inspect};
use crate::queue::spool::{ARCHIVE_NAME, Claim, Job, Payload, Spool, SpoolError, compact_utc, now};

/// How an archive gets into the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Copy it: the user keeps the file (the one-shot `deploy` command).
    Copy,
    /// Rename it: the spool takes the file (a claimed drop; same filesystem).
    Move,
    /// Rename a file the daemon received and synced itself (the HTTP intake's upload, under
    /// the state_dir): no claim note, no drop folder to give it back to; kept like a copy.
    Take,
}

/// Why an archive did not become a job.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The archive is bad. With [`Transfer::Move`] the file now sits at `kept`, for the caller
    /// to move wherever rejected files go; otherwise the spool's copy was removed.
    #[error("{}: {rejection}", file.display())]
    Rejected {
        file: PathBuf,
        rejection: Rejection,
        kept: Option<PathBuf>,
    },
    /// The archive could not be read, copied or moved.
    #[error("{action} {}: {source}", file.display())]
    Io {
        action: &'static str,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The watched directory could not be packed.
    #[error("cannot pack {}: {source}", root.display())]
    Pack {
        root: PathBuf,
        source: crate::archive::pack::PackError,
    },
}

/// A `git_ref` for a job: `<label>-<YYYYmmddHHMMSS>-<8 hex>`, kept to `[A-Za-z0-9._-]` and never
/// starting with `-` (it ends up in an image tag). `hex` is the random part of the job's id, so
/// that two jobs never share a git_ref, even for the same bytes in the same second: it is how
/// a job recognises its own deployment after an ambiguous failure.
pub fn make_git_ref(label: &str, at: u64, hex: &str) -> String {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_start_matches(['-', '.']);
    let label = if clean.is_empty() {
        "dropdeploy"
    } else {
        clean
    };
    let short: String = hex.chars().take(8).collect();
    format!("{label}-{}-{short}", compact_utc(at))
}

/// The random part of a job id (`<YYYYmmddHHMMSS>-<8 hex>`), unique among the spool's jobs.
fn job_nonce(id: &str) -> &str {
    id.rsplit('-').next().unwrap_or(id)
}

/// Whether a user-chosen `git_ref` is acceptable to the platform.
pub fn valid_git_ref(git_ref: &str) -> bool {
    !git_ref.is_empty()
        && git_ref.len() <= 128
        && !git_ref.starts_with(['-', '.'])
        && git_ref
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Puts `file` into a new job directory, inspects it there (so what is uploaded is exactly
/// what was checked), and writes the job record. `git_ref` overrides the generated one.
pub fn enqueue_archive(
    spool: &Spool,
    app: &str,
    file: &Path,
    transfer: Transfer,
    label: &str,
    git_ref: Option<&str>,
    limits: &Limits,
) -> Result<Job, IntakeError> {
    let (id, tmp) = spool.new_job_dir()?;
    let archive = tmp.join(ARCHIVE_NAME);
    if transfer == Transfer::Move {
        // Say where the file came from before taking it, so a crash cannot lose it.
        let claim = Claim {
            app: app.to_string(),
            original: file.to_path_buf(),
        };
        if let Err(e) = spool.write_claim(&tmp, &claim) {
            let _ = crate::durable::remove_tree(&tmp);
            return Err(e.into());
        }
    }
    let moved = match transfer {
        // Synced: the job may be answered for (the HTTP intake's 202) once it is committed.
        Transfer::Copy => {
            fs::copy(file, &archive).and_then(|_| crate::durable::sync_path(&archive))
        }
        Transfer::Move | Transfer::Take => claim_rename(file, &archive, &tmp),
    };
    if let Err(source) = moved {
        if transfer == Transfer::Move && archive.exists() {
            // Moved, but not made durable: the file goes back.
            give_back(spool, &tmp, transfer);
        } else {
            let _ = crate::durable::remove_tree(&tmp);
        }
        return Err(IntakeError::Io {
            action: match transfer {
                Transfer::Copy => "cannot copy into the spool",
                Transfer::Move | Transfer::Take => "cannot move into the spool",
            },
            file: file.to_path_buf(),
            source,
        });
    }
    let summary = match inspect(&archive, limits) {
        Ok(summary) => summary,
        Err(err) => {
            let (rejection, kept) = match transfer {
                Transfer::Copy | Transfer::Take => {
                    let _ = crate::durable::remove_tree(&tmp);
                    (err, None)
                }
                Transfer::Move => (err, Some(archive)),
            };
            return Err(match rejection {
                InspectError::Rejected(rejection) => IntakeError::Rejected {
                    file: file.to_path_buf(),
                    rejection,
                    kept,
                },
                InspectError::Io { source, .. } => {
                    give_back(spool, &tmp, transfer);
                    IntakeError::Io {
                        action: "cannot read",
                        file: file.to_path_buf(),
                        source,
                    }
                }
            });
        }
    };
    let created_at = now();
    let git_ref_given = git_ref.is_some();
    let git_ref = git_ref
        .map(str::to_string)
        .unwrap_or_else(|| make_git_ref(label, created_at, job_nonce(&id)));
    let payload = Payload::Archive {
        original: file.to_path_buf(),
        summary,
        tree_digest: None,
        copied: transfer != Transfer::Move,
    };
    let mut job = Job::new(id, app, git_ref, payload, created_at);
    job.git_ref_given = git_ref_given;
    if let Err(e) = spool.commit_new(&tmp, &mut job) {
        give_back(spool, &tmp, transfer);
        return Err(e.into());
    }
    Ok(job)
}

/// Moves a dropped `file` into the job directory being made (`tmp`) and makes the move
/// durable on both sides: the job directory holding it, and the drop folder without it.
fn claim_rename(file: &Path, archive: &Path, tmp: &Path) -> std::io::Result<()> {
    crate::durable::rename(file, archive)?;
    let sync = |dir: &Path| crate::durable::sync_dir(dir).map_err(|e| e.source);
    sync(tmp)?;
    match file.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => sync(folder),
        _ => sync(Path::new(".")),
    }
}

/// After an I/O failure past the move (a full disk writing the record, say), a claimed file
/// goes back to its drop folder at once, so the claim's retry finds it there (instead of it
/// waiting in a half-made job until the next start).
fn give_back(spool: &Spool, tmp: &Path, transfer: Transfer) {
    let undone = match transfer {
        Transfer::Move => spool.put_back(tmp).map(|_| ()),
        Transfer::Copy | Transfer::Take => {
            crate::durable::remove_tree(tmp).map_err(|source| SpoolError::Io {
                action: "cannot remove",
                path: tmp.to_path_buf(),
                source,
            })
        }
    };
    if let Err(e) = undone {
        tracing::warn!("{e}; the next start puts the file back");
    }
}

/// Packs a watched directory straight into a new job directory and writes the job record.
/// Blocking.
///
/// The archive is not read again: the packer computes what [`inspect`] would report (entries,
/// files, sizes, SHA-256) while writing it, writes only entries `inspect` accepts under the one
/// top-level folder, and stops at `limits.max_uncompressed`. Unless `unless_digest` is the
/// tree's content digest: then the tree is what was last deployed, the archive is thrown away
/// and `Ok(None)` is returned.
pub fn enqueue_packed(
    spool: &Spool,
    app: &str,
    rules: &crate::archive::ignore::IgnoreRules,
    opts: &crate::archive::pack::PackOptions,
    label: &str,
    limits: &Limits,
    unless_digest: Option<&str>,
) -> Result<Option<Job>, IntakeError> {
    let root = rules.root().to_path_buf();
    let started = std::time::Instant::now();
    let (id, tmp) = spool.new_job_dir()?;
    let archive = tmp.join(ARCHIVE_NAME);
    let opts = crate::archive::pack::PackOptions {
        max_uncompressed: Some(limits.max_uncompressed),
        ..opts.clone()
    };
    let packed = crate::archive::pack::pack(rules, &archive, &opts);
    let packed_at = started.elapsed();
    let packed = match packed {
        Ok(packed) if unless_digest == Some(packed.digest.as_str()) => {
            let _ = crate::durable::remove_tree(&tmp);
            return Ok(None);
        }
        Ok(packed) => crate::durable::sync_path(&archive)
            .map_err(|source| crate::archive::pack::PackError::Io {
                path: archive.clone(),
                action: "sync",
                source,
            })
            .map(|()| packed),
        Err(error) => Err(error),
    };
    let packed = match packed {
        Ok(p) => p,
        Err(source) => {
            let _ = crate::durable::remove_tree(&tmp);
            return Err(IntakeError::Pack { root, source });
        }
    };
    let summary = Summary {
        root: opts.prefix.clone(),
        entries: packed.entries,
        files: packed.files,
        uncompressed_bytes: packed.uncompressed_bytes,
        compressed_bytes: packed.bytes_out,
        sha256: packed.sha256,
    };
    let created_at = now();
    let git_ref = make_git_ref(label, created_at, job_nonce(&id));
    let payload = Payload::Archive {
        original: root,
        summary,
        tree_digest: Some(packed.digest),
        copied: false,
    };
    let mut job = Job::new(id, app, git_ref, payload, created_at);
    let synced_at = started.elapsed();
    spool.commit_new(&tmp, &mut job)?;
    tracing::debug!(
        app,
        job = %job.id,
        pack_ms = packed_at.as_secs_f64() * 1000.0,
        sync_ms = (synced_at - packed_at).as_secs_f64() * 1000.0,
        commit_ms = (started.elapsed() - synced_at).as_secs_f64() * 1000.0,
        "packed job written"
    );
    Ok(Some(job))
}

/// A job for an archive the platform downloads itself.
pub fn enqueue_url(
    spool: &Spool,
    app: &str,
    url: &str,
    label: &str,
    git_ref: Option<&str>,
) -> Result<Job, SpoolError> {
    let (id, tmp) = spool.new_job_dir()?;
    let created_at = now();
    let git_ref_given = git_ref.is_some();
    let git_ref = git_ref
        .map(str::to_string)
        .unwrap_or_else(|| make_git_ref(label, created_at, job_nonce(&id)));
    let payload = Payload::Url {
        url: url.to_string(),
    };
    let mut job = Job::new(id, app, git_ref, payload, created_at);
    job.git_ref_given = git_ref_given;
    spool.commit_new(&tmp, &mut job)?;
    Ok(job)
}

/// The oldest unfinished job in the spool, other than `except`, for the same app and the same
/// archive content (or URL): running the same `deploy` again after an interruption resumes it
/// instead of deploying twice.
pub fn find_unfinished(
    spool: &Spool,
    app: &str,
    payload: &PayloadKey<'_>,
    except: Option<&str>,
) -> Option<Job> {
    let jobs = spool.jobs().ok()?;
    jobs.into_iter().flatten().find(|job| {
        job.app == app
            && Some(job.id.as_str()) != except
            && !job.is_done()
            && match (&job.payload, payload) {
                (Payload::Archive { summary, .. }, PayloadKey::Sha256(sha)) => {
                    summary.sha256 == *sha
                }
                (Payload::Url { url }, PayloadKey::Url(u)) => url == u,
                _ => false,
            }
    })
}

/// What identifies a job's content.
pub enum PayloadKey<'a> {
    Sha256(&'a str),
    Url(&'a str),
}

/// The summary of an archive job, if it is one.
pub fn summary(job: &Job) -> Option<&Summary> {
    match &job.payload {
        Payload::Archive { summary, .. } => Some(summary),
        Payload::Url { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_refs_are_safe_for_image_tags() {
        assert_eq!(
            make_git_ref("my-app", 1_700_000_000, "0123456789abcdef"),
            "my-app-20231114221320-01234567"
        );
        assert_eq!(
            make_git_ref("-weird label/x", 0, "ab"),
            "weird-label-x-19700101000000-ab"
        );
        assert!(make_git_ref("---", 0, "ab").starts_with("dropdeploy-"));
        assert!(valid_git_ref("v1.2_rc-3"));
        assert!(!valid_git_ref("-x"));
        assert!(!valid_git_ref("a b"));
        assert!(!valid_git_ref(""));
    }

    #[test]
    fn the_same_bytes_queued_twice_in_one_second_get_two_git_refs() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool")).unwrap();
        let a = enqueue_url(&spool, "app", "https://x/a.tar.gz", "app", None).unwrap();
        let b = enqueue_url(&spool, "app", "https://x/a.tar.gz", "app", None).unwrap();
        assert_ne!(a.git_ref, b.git_ref);
        assert!(a.git_ref.ends_with(job_nonce(&a.id)), "{}", a.git_ref);
        assert!(b.git_ref.ends_with(job_nonce(&b.id)), "{}", b.git_ref);
    }
}
