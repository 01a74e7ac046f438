//! `dropdeploy manpage`: one man page (section 1) documenting every command and flag, made from
//! the same definition as `--help`, with the ENVIRONMENT, FILES and EXIT STATUS sections a
//! packaged command owes its readers. It names no other page of its own (there is none).

use std::fmt::Write as _;

use clap::CommandFactory;

use super::Cli;

/// The whole page, in roff.
pub(super) fn page() -> std::io::Result<String> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut head = Vec::new();
    man.render_title(&mut head)?;
    man.render_name_section(&mut head)?;
    man.render_synopsis_section(&mut head)?;
    man.render_description_section(&mut head)?;
    man.render_options_section(&mut head)?;
    let mut out = String::from_utf8_lossy(&head).into_owned();
    out.push_str(".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        command(&mut out, &format!("dropdeploy {}", sub.get_name()), sub);
        for inner in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("dropdeploy {} {}", sub.get_name(), inner.get_name());
            command(&mut out, &name, inner);
        }
    }
    out.push_str(TAIL);
    Ok(out)
}

/// One command: its usage, its help, its own arguments (the global ones are under OPTIONS).
fn command(out: &mut String, name: &str, sub: &clap::Command) {
    if sub.has_subcommands() {
        let _ = writeln!(out, ".SS \"{}\"", escape(name));
        paragraph(out, &about(sub));
        return;
    }
    let usage = sub
        .clone()
        .bin_name(name)
        .render_usage()
        .to_string()
        .trim_start_matches("Usage: ")
        .to_string();
    let _ = writeln!(out, ".SS \"{}\"", escape(&usage));
    paragraph(out, &about(sub));
    let aliases: Vec<&str> = sub.get_visible_aliases().collect();
    if !aliases.is_empty() {
        paragraph(out, &format!("Also called: {}.", aliases.join(", ")));
    }
    // Built, so that each argument knows how many values it takes.
    let mut built = sub.clone();
    built.build();
    for arg in built.get_arguments() {
        if arg.is_global_set()
            || arg.is_hide_set()
            || ["help", "version"].contains(&arg.get_id().as_str())
        {
            continue;
        }
        argument(out, arg);
    }
}

fn about(cmd: &clap::Command) -> String {
    cmd.get_long_about()
        .or(cmd.get_about())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// One flag or positional argument, as a tagged paragraph.
fn argument(out: &mut String, arg: &clap::Arg) {
    let value = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| format!(" <{v}>"))
        .unwrap_or_else(|| format!(" <{}>", arg.get_id().as_str().to_uppercase()));
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    let tag = match (arg.get_short(), arg.get_long()) {
        (Some(s), Some(l)) => format!("-{s}, --{l}{}", if takes_value { &value } else { "" }),
        (None, Some(l)) => format!("--{l}{}", if takes_value { &value } else { "" }),
        (Some(s), None) => format!("-{s}"),
        (None, None) => value.trim().to_string(),
    };
    let mut help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|s| s.to_string())
        .unwrap_or_default();
    if let Some(env) = arg.get_env() {
        let _ = write!(help, " [env: {}]", env.to_string_lossy());
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && takes_value {
        let _ = write!(help, " [default: {}]", defaults.join(", "));
    }
    let _ = writeln!(out, ".TP\n\\fB{}\\fR", escape(&tag));
    let _ = writeln!(out, "{}", escape(help.trim()));
}

fn paragraph(out: &mut String, text: &str) {
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let _ = writeln!(out, ".PP\n{}", escape(block.trim()));
    }
}

/// Text made safe for roff: backslashes and hyphens escaped, no line starting with a control
/// character.
fn escape(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .lines()
        .map(|line| {
            if line.starts_with('.') || line.starts_with('\'') {
                format!("\\&{line}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const TAIL: &str = r#".SH ENVIRONMENT
.TP
\fBSCALINGO_API_TOKEN\fR
The Scalingo API token (also read from the systemd credential \fIscalingo\-token\fR, or from
\fItoken_file\fR in the configuration). It never appears in logs, errors or records.
.TP
\fBSCALINGO_APP\fR
The app, for the commands that take \fB\-a\fR/\fB\-\-app\fR.
.TP
\fBSCALINGO_REGION\fR, \fBSCALINGO_API_URL\fR, \fBSCALINGO_AUTH_URL\fR
The region (osc\-fr1, osc\-secnum\-fr1), or the API and authentication URLs; they override
the configuration file, as in Scalingo's own CLI.
.TP
\fBDROPDEPLOY_CONFIG\fR
The configuration file (as \fB\-\-config\fR).
.TP
\fBDROPDEPLOY_STATE_DIR\fR
Where one\-shot commands keep their jobs (as \fB\-\-state\-dir\fR).
.TP
\fBRUST_LOG\fR
A log filter (e.g. \fIdropdeploy=debug\fR); when set, it wins over \fB\-v\fR and \fB\-q\fR
for the logs.
.TP
\fBNO_COLOR\fR
Set to anything but empty: no colours with \fB\-\-color auto\fR.
.TP
\fBCREDENTIALS_DIRECTORY\fR
Set by systemd: where the \fIscalingo\-token\fR credential is read.
.SH FILES
.TP
\fI/etc/dropdeploy/dropdeploy.toml\fR
The configuration that \fBrun\fR and \fBconfig check\fR read without \fB\-\-config\fR.
.TP
\fI/var/lib/dropdeploy\fR
The daemon's default state directory: \fIspool/\fR (one directory per job, its record and
archive), \fIhistory.jsonl\fR (one line per finished job), the verified archives kept for
rollbacks.
.TP
\fI$XDG_STATE_HOME/dropdeploy\fR or \fI~/.local/state/dropdeploy\fR
The one\-shot commands' state directory without a configuration file.
.TP
\fI/usr/share/doc/dropdeploy/README.md\fR
The full documentation: drop folders, watched trees, health checks, the systemd service.
.SH "EXIT STATUS"
.TP
\fB0\fR
Success (the deployment succeeded, the archive is fine, the configuration is valid).
.TP
\fB1\fR
The deployment failed or was refused (a bad archive, a failure status, an unknown app), or a
followed deployment failed.
.TP
\fB2\fR
A usage or configuration error (flags, the configuration file, a missing or refused API token).
.TP
\fB3\fR
Gave up after retrying transient errors for the whole retry budget.
.TP
\fB130\fR
Interrupted (Ctrl\-C) during \fBdeploy\fR; the same command resumes the job.
"#;
