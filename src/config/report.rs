//! Located error reporting: a [`ConfigError`] lists every [`Problem`] found, each at
//! `file:line:column` (or on an environment variable), in file order. Every message passes
//! through redaction, so that a token pasted into the wrong setting is never echoed.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::redact::{redact, redact_owned};

/// Why a configuration could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read: `cannot read config file X: No such file or directory`.
    #[error("cannot read config file {}: {}", redact(&.path.display().to_string()), io_reason(.io))]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        io: std::io::Error,
    },
    /// The file or the environment holds mistakes: one located [`Problem`] per line.
    #[error("{}", render_problems(.problems))]
    Invalid {
        /// Every problem found: those in the file in file order, then the environment's.
        problems: Vec<Problem>,
    },
    /// A command needs the API token and none was configured.
    #[error("no Scalingo API token: set SCALINGO_API_TOKEN or token_file in [scalingo] of {}",
        config_file_name(.file.as_deref()))]
    NoToken {
        /// The config file in use, if any.
        file: Option<PathBuf>,
    },
}

/// One mistake in the configuration, and where it is: `file:line:column: message`, or
/// `$VARIABLE: message` for the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file's path, or `$NAME` of an environment variable.
    pub origin: String,
    /// Where in the file, when the problem is in a file.
    pub position: Option<Position>,
    /// What is wrong, and what is expected instead.
    pub message: String,
}

/// A 1-based line and column (in characters) in a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => {
                write!(f, "{}:{line}:{column}: {}", self.origin, self.message)
            }
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

fn render_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn config_file_name(file: Option<&Path>) -> String {
    file.map_or_else(
        || "a config file (--config FILE)".to_string(),
        |file| redact(&file.display().to_string()).into_owned(),
    )
}

/// An I/O error in plain words: "No such file or directory", without "(os error 2)".
pub(super) fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    }
}

/// Collects located problems while a text is checked.
pub(super) struct Report<'a> {
    text: &'a str,
    origin: String,
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl<'a> Report<'a> {
    pub(super) fn new(text: &'a str, origin: &str) -> Self {
        Report {
            text,
            origin: origin.to_string(),
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// A warning at a byte span of the text (`file:line: message`): the file loads, but
    /// should be changed.
    pub(super) fn warn_at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let line = position(self.text, span.start).line;
        self.warnings
            .push(format!("{}:{line}: {}", self.origin, message.into()));
    }

    /// The warnings reported so far, in the order they were found; the report keeps none.
    pub(super) fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// A problem at a byte span of the text. Its message quotes values as given, so it is
    /// redacted: a token pasted into the wrong setting is not echoed.
    pub(super) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: redact_owned(self.origin.clone()),
            position: Some(position(self.text, span.start)),
            message: redact_owned(message.into()),
        });
    }

    /// A problem with an origin of its own (an environment variable), redacted as for `at`.
    pub(super) fn env(&mut self, variable: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: format!("${variable}"),
            position: None,
            message: redact_owned(message.into()),
        });
    }

    /// The 1-based line of a byte offset of the text, for messages that point back at it.
    pub(super) fn line(&self, offset: usize) -> usize {
        position(self.text, offset).line
    }

    /// The problems in file order (tables are not kept in file order), then the environment's.
    pub(super) fn into_error(mut self) -> ConfigError {
        self.problems.sort_by_key(|p| match p.position {
            Some(Position { line, column }) => (0, line, column),
            None => (1, 0, 0),
        });
        ConfigError::Invalid {
            problems: self.problems,
        }
    }

    pub(super) fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }
}

/// The 1-based line and column of a byte offset.
pub(super) fn position(text: &str, offset: usize) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    Position {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

/// Where a table is, for messages: "at the top level", "in [scalingo]", "in [[app]]".
pub(super) fn table_label(path: &str) -> String {
    match path {
        "" => "at the top level".to_string(),
        "app" => "in [[app]]".to_string(),
        "app.on_outcome" => "in on_outcome of [[app]]".to_string(),
        "app.verify" => "in verify of [[app]]".to_string(),
        _ => format!("in [{path}]"),
    }
}
