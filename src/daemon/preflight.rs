//! What `run` refuses at start, found without starting: the token, the state_dir and each
//! app's folders. `config check` prints these problems and the daemon refuses to start on the
//! first one, with the same words (exit status 2 both ways).

use std::path::Path;

use crate::config::{Config, TargetConfig};

use super::startup::{other_filesystem, problem_text};

/// Every problem of the environment that would stop `run` at start: no token for a Scalingo
/// app, a state_dir or drop folder that cannot be created or written, a source directory that
/// does not exist or cannot be read. Nothing is left behind: a folder that would be created is
/// tried (its first missing part made and removed again), not kept.
pub fn check_environment(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if config
        .apps
        .iter()
        .any(|a| a.target == TargetConfig::Scalingo)
        && let Err(e) = config.scalingo.require_token()
    {
        problems.push(e.to_string());
    }
    if let Err(e) = writable_dir(&config.state_dir) {
        problems.push(
            problem_text(
                "cannot create state_dir",
                &config.state_dir,
                &e,
                "state_dir",
            )
            .0,
        );
    }
    if let Some((cert, key)) = &config.intake.tls
        && let Err(e) = super::intake_tls::load(cert, key)
    {
        problems.push(e);
    }
    for app in &config.apps {
        if let Some(dir) = &app.drop_dir {
            if let Err(e) = writable_dir(dir) {
                let action = format!("app {}: cannot use drop folder", app.name);
                problems.push(problem_text(&action, dir, &e, "drop_dir").0);
            } else {
                let spool = config.state_dir.join("spool");
                if let (Some(a), Some(b)) = (device_of(dir), device_of(&spool))
                    && a != b
                {
                    problems.push(other_filesystem(&app.name, dir, &spool));
                }
            }
        }
        if let Some(dir) = &app.source_dir
            && let Err(e) = readable_tree(dir)
        {
            problems.push(format!("app {}: {e}", app.name));
        }
    }
    problems
}

/// The device of `path`, or of the nearest folder above it that exists (where it would be
/// made).
fn device_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    path.ancestors()
        .find_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev())
}

/// Whether `dir` is a folder this process can write in, or could create (and then write in).
fn writable_dir(dir: &Path) -> std::io::Result<()> {
    use rustix::fs::Access;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            rustix::fs::access(dir, Access::WRITE_OK | Access::EXEC_OK | Access::READ_OK)
                .map_err(std::io::Error::from)
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "it exists but is not a directory",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => try_create(dir),
        Err(e) => Err(e),
    }
}

/// Makes the first missing folder on the way to `dir` and removes it again: whether the rest
/// could be made is then known (the folder above exists and takes new entries).
fn try_create(dir: &Path) -> std::io::Result<()> {
    let Some(existing) = dir.ancestors().skip(1).find(|p| p.exists()) else {
        return Ok(());
    };
    if !existing.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} is not a directory", existing.display()),
        ));
    }
    let Some(first) = dir
        .ancestors()
        .take_while(|p| *p != existing)
        .last()
        .map(Path::to_path_buf)
    else {
        return Ok(());
    };
    std::fs::create_dir(&first)?;
    let _ = std::fs::remove_dir(&first);
    Ok(())
}

/// Whether a source directory exists, is a directory and can be listed: the watch's own
/// error when not, so `run`, `watch` and `config check` say the same.
fn readable_tree(dir: &Path) -> Result<(), crate::source::watch::WatchError> {
    use crate::source::watch::WatchError;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            std::fs::read_dir(dir)
                .map(|_| ())
                .map_err(|source| WatchError::Read {
                    root: dir.to_path_buf(),
                    source,
                })
        }
        Ok(_) => Err(WatchError::NotADirectory {
            root: dir.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(WatchError::NotFound {
            root: dir.to_path_buf(),
        }),
        Err(source) => Err(WatchError::Read {
            root: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_that_cannot_be_made_is_found_and_nothing_is_left_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("a/b/c");
        assert!(writable_dir(&missing).is_ok());
        assert!(!tmp.path().join("a").exists(), "the probe folder stays");
        assert!(writable_dir(Path::new("/proc/nope/x")).is_err());
        let file = tmp.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(writable_dir(&file.join("x")).is_err());
        assert!(writable_dir(&file).is_err());
    }
}
