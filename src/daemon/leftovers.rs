//! What a crash can leave, cleaned at start before any work is taken: in the spool (half-made
//! jobs, whose dropped file goes back; finished jobs half removed; probes and temporary
//! files), in the drop folders (probes) and in their `done/` and `failed/` folders (temporary
//! reason files). A claimed file whose drop folder is missing stays in the spool, said in a
//! warning and on the board, and goes back once the folder is there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::live::{Board, WaitKind};
use crate::queue::spool::{KeptClaim, Spool};
use crate::source::drop::DropLayout;

/// How often a claimed file kept in the spool is tried again.
const PUT_BACK_RETRY: Duration = Duration::from_secs(10);

/// Cleans the spool of what a crash left besides half-made jobs. A failure is only logged:
/// litter never stops the daemon.
pub(super) fn clean_spool(spool: &Spool) {
    match spool.clean_leftovers() {
        Ok(removed) => {
            for path in removed {
                tracing::info!(path = %path.display(), "removed what a crash left in the spool");
            }
        }
        Err(e) => tracing::warn!("cannot clean the spool of what a crash left: {e}"),
    }
}

/// Removes the start-up probes a crash left in each drop folder, and temporary reason files
/// in its `done/` and `failed/` folders. Failures are only logged.
pub(super) fn clean_drop_folders(config: &Config) {
    for app in &config.apps {
        let Some(dir) = &app.drop_dir else { continue };
        let layout = DropLayout::new(dir);
        let mut removed = Vec::new();
        for (folder, is_litter) in [
            (dir.to_path_buf(), is_probe as fn(&str) -> bool),
            (layout.done(), is_temporary_reason),
            (layout.failed(), is_temporary_reason),
        ] {
            if let Err(e) = remove_matching(&folder, is_litter, &mut removed) {
                tracing::warn!(app = %app.name, folder = %folder.display(), "cannot clean what a crash left: {e}");
            }
        }
        for path in removed {
            tracing::info!(app = %app.name, path = %path.display(), "removed what a crash left");
        }
    }
}

fn is_probe(name: &str) -> bool {
    name.starts_with(".dropdeploy-probe-")
}

/// A reason file being written: `.<archive>.reason.txt.tmp` or `.<archive>.reason.txt.<hex>.tmp`.
fn is_temporary_reason(name: &str) -> bool {
    name.starts_with('.')
        && name.ends_with(".tmp")
        && name.contains(&format!("{}.", DropLayout::REASON_SUFFIX))
}

fn remove_matching(
    folder: &Path,
    is_litter: fn(&str) -> bool,
    removed: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let before = removed.len();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() && is_litter(&entry.file_name().to_string_lossy()) {
            crate::durable::remove_file(&entry.path())?;
            removed.push(entry.path());
        }
    }
    if removed.len() > before {
        crate::durable::sync_dir(folder).map_err(|e| e.source)?;
    }
    Ok(())
}

/// Puts back the files claimed when a daemon died (see `Spool::clean_partial`). One that
/// cannot go back is kept in the spool: a warning names it and its folder, the board shows it,
/// and it is tried again every [`PUT_BACK_RETRY`] until it is back.
pub(super) fn put_back_claims(spool: &Spool, live: &Arc<Board>) -> Result<(), String> {
    let partial = spool.clean_partial().map_err(|e| e.to_string())?;
    for restored in partial.restored {
        tracing::warn!(
            file = %restored.display(),
            "a file claimed when the daemon stopped was put back in its drop folder"
        );
    }
    if partial.kept.is_empty() {
        return Ok(());
    }
    for kept in &partial.kept {
        let (app, subject, folder) = describe(kept);
        let cause = kept_cause(kept, &folder);
        live.wait(&app, WaitKind::Claim, &subject, &cause, Some(retry_at()));
        tracing::warn!(app = %app, file = %subject, folder = %folder, "a file claimed when the daemon stopped cannot go back: {cause}");
    }
    tokio::spawn(retry_kept(spool.clone(), live.clone(), partial.kept));
    Ok(())
}

/// The app, the file and its drop folder of a kept claim, as shown.
fn describe(kept: &KeptClaim) -> (String, String, String) {
    let app = kept.app.clone().unwrap_or_default();
    let subject = kept
        .original
        .as_deref()
        .unwrap_or(kept.dir.as_path())
        .display()
        .to_string();
    let folder = kept
        .original
        .as_deref()
        .and_then(Path::parent)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    (app, subject, folder)
}

fn kept_cause(kept: &KeptClaim, folder: &str) -> String {
    format!(
        "{}; the file is kept in the spool at {} and put back in {folder} once it can be \
         (tried every {}s)",
        kept.error,
        kept.dir.display(),
        PUT_BACK_RETRY.as_secs()
    )
}

fn retry_at() -> crate::queue::spool::Timestamp {
    crate::queue::spool::now() + PUT_BACK_RETRY.as_secs()
}

/// Tries the kept claims again until each is back in its folder.
async fn retry_kept(spool: Spool, live: Arc<Board>, mut kept: Vec<KeptClaim>) {
    while !kept.is_empty() {
        tokio::time::sleep(PUT_BACK_RETRY).await;
        let mut still = Vec::new();
        for claim in kept {
            let (app, subject, folder) = describe(&claim);
            let tried = {
                let spool = spool.clone();
                let dir = claim.dir.clone();
                tokio::task::spawn_blocking(move || spool.put_back(&dir)).await
            };
            match tried {
                Ok(Ok(back)) => {
                    live.clear(&app, WaitKind::Claim, &subject);
                    let back = back.map(|p| p.display().to_string()).unwrap_or_default();
                    tracing::info!(app = %app, file = %back, "a file kept in the spool since the start went back to its drop folder");
                }
                Ok(Err(e)) => {
                    let claim = KeptClaim {
                        error: e.to_string(),
                        ..claim
                    };
                    live.wait(
                        &app,
                        WaitKind::Claim,
                        &subject,
                        &kept_cause(&claim, &folder),
                        Some(retry_at()),
                    );
                    still.push(claim);
                }
                Err(e) => {
                    tracing::error!(app = %app, file = %subject, "{e}");
                    still.push(claim);
                }
            }
        }
        kept = still;
    }
}
