//! Start-up checks: folders the daemon must write, a rename from each drop folder into the
//! spool, the platform client, leftovers of local releases.

use super::*;

/// What the daemon owns on disk once started: its lock on the state_dir, its board of waits,
/// and the spool, cleaned of half-made jobs.
pub(super) struct State {
    pub(super) lock: crate::lock::StateLock,
    pub(super) live: Arc<crate::live::Board>,
    pub(super) spool: Spool,
}

/// Takes the state_dir (exit status 2 if another daemon has it or it cannot be written),
/// cleans what a crash left (`leftovers.rs`), checks every app's folders, puts back files
/// claimed when a daemon died, and removes half-made local releases: all before any new work
/// is taken.
pub(super) async fn open_state(config: &Config) -> Result<State, DaemonError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        setup_error(
            "cannot create state_dir",
            &config.state_dir,
            &e,
            "state_dir",
        )
    })?;
    let lock = crate::lock::StateLock::acquire(&config.state_dir).map_err(|e| match e {
        crate::lock::LockError::Held { .. } => DaemonError::Setup(e.to_string()),
        crate::lock::LockError::Io { path, source } => {
            setup_error("cannot write in state_dir", &path, &source, "state_dir")
        }
    })?;
    let live = Arc::new(crate::live::Board::published(&config.state_dir));
    let spool = Spool::open(config.state_dir.join("spool")).map_err(|e| match e {
        crate::queue::spool::SpoolError::Io { path, source, .. } => {
            setup_error("cannot create the spool", &path, &source, "state_dir")
        }
        other => DaemonError::Setup(other.to_string()),
    })?;
    super::leftovers::clean_spool(&spool);
    // The drop folders first (made if missing, as at every start), so that a file claimed
    // when a daemon died finds its folder to go back to.
    check_apps(config, &spool)?;
    super::leftovers::clean_drop_folders(config);
    super::leftovers::put_back_claims(&spool, &live).map_err(DaemonError::Startup)?;
    recover_releases(config).await;
    Ok(State { lock, live, spool })
}

/// Whether an I/O error means "not allowed to write there" (permissions or a read-only
/// mount): retrying will not help, so it is a configuration problem, not a crash.
pub(super) fn access_problem(e: &std::io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::ACCESS.raw_os_error() => Some("permission denied"),
        Some(code) if code == rustix::io::Errno::PERM.raw_os_error() => {
            Some("operation not permitted")
        }
        Some(code) if code == rustix::io::Errno::ROFS.raw_os_error() => Some("read-only mount"),
        _ => None,
    }
}

/// The error for a path the daemon cannot use: a configuration error (exit status 2) naming
/// the path, who the daemon runs as, the folder's owner and mode, and what to change.
pub(super) fn setup_error(
    action: &str,
    path: &std::path::Path,
    e: &std::io::Error,
    key: &str,
) -> DaemonError {
    DaemonError::Setup(problem_text(action, path, e, key).0)
}

/// The words for a path that cannot be used, and whether it is a permission or mount problem:
/// then they name the path, who this process runs as, the folder's owner and mode, and what to
/// change. Shared by the daemon's start and `config check`, so both say the same.
pub(super) fn problem_text(
    action: &str,
    path: &std::path::Path,
    e: &std::io::Error,
    key: &str,
) -> (String, bool) {
    let Some(problem) = access_problem(e) else {
        return (format!("{action} {}: {e}", path.display()), false);
    };
    // The nearest existing folder is the one whose permissions matter.
    let folder = path
        .ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(path)
        .to_path_buf();
    let owner = std::fs::metadata(&folder)
        .map(|m| {
            use std::os::unix::fs::PermissionsExt;
            format!(
                "; {} is owned by uid {} gid {} with mode {:o}",
                folder.display(),
                m.uid(),
                m.gid(),
                m.permissions().mode() & 0o7777
            )
        })
        .unwrap_or_default();
    let me = format!(
        "the daemon runs as uid {} gid {}",
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    let fix = if problem == "read-only mount" {
        format!(
            "the folder is on a read-only mount: under systemd, list it in ReadWritePaths= \
             (ProtectSystem=strict makes the rest read-only), or set {key} to a writable place"
        )
    } else {
        format!(
            "give that user write access (chown or chmod {}), or set {key} to a folder it can \
             write",
            folder.display()
        )
    };
    (
        format!(
            "{action} {}: {problem} ({me}{owner}): {fix}",
            path.display()
        ),
        true,
    )
}

/// Checks what the daemon needs of each app before it takes any work.
pub(super) fn check_apps(config: &Config, spool: &Spool) -> Result<(), DaemonError> {
    let spool_dev = std::fs::metadata(spool.dir())
        .map_err(|e| DaemonError::Setup(format!("cannot read {}: {e}", spool.dir().display())))?
        .dev();
    for app in &config.apps {
        if let Some(dir) = &app.drop_dir {
            crate::source::drop::prepare(dir).map_err(|e| {
                use crate::source::drop::DropError;
                let action = format!("app {}: cannot use drop folder", app.name);
                match &e {
                    DropError::Create { dir, source } | DropError::Read { dir, source } => {
                        setup_error(&action, dir, source, "drop_dir")
                    }
                    DropError::CreateSubfolder { path, source, .. } => {
                        setup_error(&action, path, source, "drop_dir")
                    }
                    _ => DaemonError::Setup(format!("app {}: {e}", app.name)),
                }
            })?;
            let dev = std::fs::metadata(dir)
                .map_err(|e| {
                    DaemonError::Setup(format!(
                        "app {}: cannot read drop folder {}: {e}",
                        app.name,
                        dir.display()
                    ))
                })?
                .dev();
            if dev != spool_dev {
                return Err(DaemonError::Setup(other_filesystem(
                    &app.name,
                    dir,
                    spool.dir(),
                )));
            }
            // Same device is not enough: two mount points of one filesystem (bind mounts, or
            // systemd's ReadWritePaths=) still refuse a rename between them. Try one.
            probe_rename(dir, spool.dir()).map_err(|(place, e)| {
                if access_problem(&e).is_some() {
                    let (action, key) = match place {
                        Probe::DropFolder => (
                            format!("app {}: cannot write in drop folder", app.name),
                            "drop_dir",
                        ),
                        Probe::Spool => (
                            format!("app {}: cannot move a file into the spool", app.name),
                            "state_dir",
                        ),
                    };
                    let path = match place {
                        Probe::DropFolder => dir.as_path(),
                        Probe::Spool => spool.dir(),
                    };
                    return setup_error(&action, path, &e, key);
                }
                DaemonError::Setup(format!(
                    "app {}: a file cannot be renamed from the drop folder {} into the spool {} \
                     ({e}); files are claimed by renaming them, so put state_dir where a rename \
                     from the drop folders works (the same filesystem and mount point, e.g. \
                     state_dir = \"{}\")",
                    app.name,
                    dir.display(),
                    spool.dir().display(),
                    dir.parent().unwrap_or(dir).join(".dropdeploy").display()
                ))
            })?;
        }
    }
    Ok(())
}

/// The words for a drop folder that a rename cannot leave for the spool.
pub(super) fn other_filesystem(
    app: &str,
    dir: &std::path::Path,
    spool: &std::path::Path,
) -> String {
    format!(
        "app {app}: drop folder {} is on another filesystem than the spool {}; files are \
         claimed by renaming them, so put state_dir on the same filesystem as the drop folders",
        dir.display(),
        spool.display()
    )
}

/// Which side of the probe failed.
#[derive(Debug, Clone, Copy)]
pub(super) enum Probe {
    DropFolder,
    Spool,
}

/// Renames a small dot-file (ignored by the watcher) from `from` into `to` and removes it.
pub(super) fn probe_rename(
    from: &std::path::Path,
    to: &std::path::Path,
) -> Result<(), (Probe, std::io::Error)> {
    let name = format!(".dropdeploy-probe-{:08x}", fastrand::u32(..));
    let src = from.join(&name);
    let dst = to.join(&name);
    std::fs::write(&src, b"").map_err(|e| (Probe::DropFolder, e))?;
    let moved = crate::durable::rename(&src, &dst).map_err(|e| (Probe::Spool, e));
    let _ = crate::durable::remove_file(&src);
    let _ = crate::durable::remove_file(&dst);
    moved
}

/// The Scalingo client, when an app deploys there (which then needs the token).
pub(super) fn scalingo_client(config: &Config) -> Result<Option<Arc<ScalingoClient>>, DaemonError> {
    if !config
        .apps
        .iter()
        .any(|a| a.target == TargetConfig::Scalingo)
    {
        return Ok(None);
    }
    let token = config.scalingo.require_token()?.clone();
    ScalingoClient::new(&config.scalingo, token)
        .map(|c| Some(Arc::new(c)))
        .map_err(|e| DaemonError::Startup(e.to_string()))
}

/// Looks up the API URL of every region the Scalingo apps use (`GET {auth}/v1/regions`): a
/// region the platform does not list is a configuration error (exit status 2) naming the valid
/// ones. A platform that cannot be asked now is not an error (each client falls back to the
/// region's usual URL).
pub(super) async fn check_regions(
    client: Option<&Arc<ScalingoClient>>,
    config: &Config,
) -> Result<(), DaemonError> {
    let Some(client) = client else {
        return Ok(());
    };
    for app in &config.apps {
        if app.target != TargetConfig::Scalingo {
            continue;
        }
        let regional = match &app.region {
            Some(region) => client.in_region(region),
            None => client.clone(),
        };
        if let Err(e) = regional.resolve().await
            && !e.is_transient()
        {
            return Err(DaemonError::Setup(format!("app {}: {e}", app.name)));
        }
    }
    Ok(())
}

/// Removes half-extracted releases of local-target apps left by a process that died.
pub(super) async fn recover_releases(config: &Config) {
    for app in &config.apps {
        if let TargetConfig::Local(local) = &app.target {
            let target = LocalTarget::new(local);
            let name = app.name.clone();
            match tokio::task::spawn_blocking(move || target.recover(&name)).await {
                Ok(Ok(removed)) => {
                    for path in removed {
                        tracing::warn!(app = %app.name, path = %path.display(), "removed a half-made release");
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(app = %app.name, "cannot clean the releases: {}", e.reason)
                }
                Err(e) => tracing::error!(app = %app.name, "cannot clean the releases: {e}"),
            }
        }
    }
}
