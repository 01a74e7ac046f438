//! The `activate` command: run in the new release, with the deploy's variables and without
//! the API token, through the one process runner ([`crate::process`]).

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use super::{ACTIVATE_OUTPUT_LIMIT, LocalFailure, LocalStep, LocalTarget, OUTPUT_GRACE, TOKEN_VAR};
use crate::process::{self, Capture, Ending, OutputWait};

impl LocalTarget {
    /// Runs the activate command in the release, if there is one; returns its output.
    pub(super) fn activate(
        &self,
        app: &str,
        release: &Path,
        git_ref: &str,
    ) -> Result<String, LocalFailure> {
        let Some(program) = self.activate.first() else {
            return Ok(String::new());
        };
        let shown = shown_command(&self.activate);
        let command = self.activate_command(app, release, git_ref);
        let fail = |reason: String, output: String| LocalFailure {
            step: LocalStep::Activate,
            reason: format!("app {app}: activate command `{shown}` {reason}"),
            output,
        };
        tracing::info!(app, command = %shown, "running the activate command");
        let options = process::Options {
            timeout: self.activate_timeout,
            stdin: None,
            capture: Capture::Merged,
            tail_bytes: ACTIVATE_OUTPUT_LIMIT,
            output_wait: OutputWait::Grace(OUTPUT_GRACE),
            abandoned: None,
        };
        let finished = match process::run(command, options) {
            Ok(finished) => finished,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(fail(
                    format!("could not start: {e} (is `{program}` installed and on PATH?)"),
                    String::new(),
                ));
            }
            Err(e) => return Err(fail(format!("could not start: {e}"), String::new())),
        };
        let mut output = finished.stdout.text();
        if finished.output_held {
            output
                .push_str("\n[output still open: a background process of the command holds it]\n");
        }
        match finished.ending {
            Ending::TimedOut => Err(fail(
                format!(
                    "timed out after {} and was killed",
                    crate::human::duration(self.activate_timeout)
                ),
                output,
            )),
            Ending::Exited(status) => {
                if status.success() {
                    Ok(output)
                } else if let Some(code) = status.code() {
                    Err(fail(format!("exited with status {code}"), output))
                } else if let Some(signal) = status.signal() {
                    Err(fail(format!("was killed by signal {signal}"), output))
                } else {
                    Err(fail(format!("failed ({status})"), output))
                }
            }
        }
    }

    /// The activate command, ready for the runner (which gives it a process group of its own
    /// and a closed stdin): no shell, cwd = the release, the inherited environment plus
    /// `DROPDEPLOY_*` and minus the API token.
    pub(super) fn activate_command(&self, app: &str, release: &Path, git_ref: &str) -> Command {
        let release = std::path::absolute(release).unwrap_or_else(|_| release.to_path_buf());
        let mut command = Command::new(self.activate.first().map_or("", String::as_str));
        command
            .args(self.activate.iter().skip(1))
            .current_dir(&release)
            .env("DROPDEPLOY_APP", app)
            .env("DROPDEPLOY_RELEASE", &release)
            .env("DROPDEPLOY_GIT_REF", git_ref)
            .env_remove(TOKEN_VAR)
            .env_remove(crate::config::ENV_INTAKE_TOKEN)
            .env_remove(crate::config::ENV_DATABASE_URL);
        command
    }
}

/// argv as a person would type it: `sh -c 'echo boom; exit 3'`.
pub(super) fn shown_command(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-./:=@%+,".contains(&b));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
