//! The history file, `<state_dir>/history.jsonl`: one JSON line per outcome, appended in one
//! write, read back from its end (so the last few entries stay cheap on a long history), and
//! shown as a table by `dropdeploy history`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{HistoryEntry, OutcomeError, exists, human_duration, io_err, sync_dir};
use crate::redact::redact_vec;

/// How long a reason is in the history table before it is cut.
const TABLE_REASON_CHARS: usize = 60;

/// What [`read_history_counted`] found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistoryRead {
    /// The entries, oldest first.
    pub entries: Vec<HistoryEntry>,
    /// Lines that were read but are not history entries (damaged or foreign), skipped.
    pub skipped: usize,
}

/// The history at `path`, oldest first: only `app`'s entries if given, and only the last
/// `limit` (matching) entries if given. A missing file is an empty history. Lines that are not
/// history entries are skipped, and their count logged as a warning (see
/// [`read_history_counted`] to get it). Reads from the end, so a small `limit` stays cheap on a
/// long history.
pub fn read_history(
    path: &Path,
    app: Option<&str>,
    limit: Option<usize>,
) -> Result<Vec<HistoryEntry>, OutcomeError> {
    let read = read_history_counted(path, app, limit)?;
    if read.skipped > 0 {
        tracing::warn!(
            "skipped {} unreadable line(s) in {}",
            read.skipped,
            path.display()
        );
    }
    Ok(read.entries)
}

/// What is live for `app` by its last history line: what a rollback by hand rolls back from.
/// Blocking.
pub fn live_now(state_dir: &Path, app: &str) -> Option<crate::verify::rollback::Live> {
    let history = state_dir.join(super::HISTORY_NAME);
    let last = read_history(&history, Some(app), Some(1)).ok()?.pop()?;
    Some(crate::verify::rollback::Live {
        job: last.job,
        file: last.file,
        git_ref: last.git_ref,
    })
}

/// [`read_history`], also saying how many unreadable lines were skipped (among those read: with
/// a `limit`, reading stops once enough entries were found).
pub fn read_history_counted(
    path: &Path,
    app: Option<&str>,
    limit: Option<usize>,
) -> Result<HistoryRead, OutcomeError> {
    let mut read = HistoryRead::default();
    if limit == Some(0) {
        return Ok(read);
    }
    let Some(mut lines) = RevLines::open(path, REV_CHUNK)? else {
        return Ok(read);
    };
    while let Some(line) = lines
        .next_line()
        .map_err(io_err("cannot read the history file", path))?
    {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(entry) = serde_json::from_slice::<HistoryEntry>(&line) else {
            read.skipped += 1;
            continue;
        };
        if app.is_some_and(|app| entry.app != app) {
            continue;
        }
        read.entries.push(entry);
        if limit.is_some_and(|limit| read.entries.len() >= limit) {
            break;
        }
    }
    read.entries.reverse();
    Ok(read)
}

/// The history as an aligned table, one line per entry in the given order, under a header:
/// `TIME APP OUTCOME STATUS DEPLOYMENT FILE DURATION REASON`. Absent values show as `-`; the
/// reason is cut to one short line. Every line ends with `\n`; no entries gives the header alone.
pub fn format_history_table(entries: &[HistoryEntry]) -> String {
    let header = [
        "TIME",
        "APP",
        "OUTCOME",
        "STATUS",
        "DEPLOYMENT",
        "FILE",
        "DURATION",
        "REASON",
    ];
    let rows: Vec<[String; 8]> = entries
        .iter()
        .map(|e| {
            [
                dash(&e.time),
                dash(&e.app),
                e.outcome.to_string(),
                dash(e.status.as_deref().unwrap_or("")),
                dash(e.deployment_id.as_deref().unwrap_or("")),
                dash(&e.file),
                human_duration(e.duration_ms),
                dash(&crate::human::one_line(
                    e.reason.as_deref().unwrap_or(""),
                    TABLE_REASON_CHARS,
                )),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_string);
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The last entry of each of `apps` in the history, reading from the end until all are found.
pub(super) fn last_outcomes(
    history: &Path,
    apps: &[String],
) -> Result<HashMap<String, HistoryEntry>, OutcomeError> {
    let mut found = HashMap::new();
    let Some(mut lines) = RevLines::open(history, REV_CHUNK)? else {
        return Ok(found);
    };
    while found.len() < apps.len()
        && let Some(line) = lines
            .next_line()
            .map_err(io_err("cannot read the history file", history))?
    {
        if let Ok(entry) = serde_json::from_slice::<HistoryEntry>(&line)
            && apps.contains(&entry.app)
            && !found.contains_key(&entry.app)
        {
            found.insert(entry.app.clone(), entry);
        }
    }
    Ok(found)
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

pub(super) fn file_len(path: &Path) -> Result<u64, OutcomeError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err("cannot stat the history file", path)(e)),
    }
}

/// Appends `entry` as one line, in one write, and fsyncs. A last line left without its newline
/// (a write cut short) is closed first, so the new line never glues onto it.
///
/// The look at the last byte and the write happen under an exclusive `flock` of the file
/// (every appender, in any process, takes it): otherwise a line being written by another
/// appender at that moment (its bytes partly in the file) looks cut short, and a newline
/// added before this one leaves a blank line between the two.
pub(super) fn append_history(path: &Path, entry: &HistoryEntry) -> Result<(), OutcomeError> {
    let line = serde_json::to_vec(entry).map_err(|source| OutcomeError::Json {
        action: "cannot write a history line to",
        path: path.to_path_buf(),
        source,
    })?;
    let mut line = redact_vec(line);
    line.push(b'\n');
    let created = !exists(path)?;
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err("cannot open the history file", path))?;
    // Released when `file` is closed, at the end of this function (or by the kernel on a crash).
    lock_exclusive(&file).map_err(io_err("cannot lock the history file", path))?;
    let len = file
        .metadata()
        .map_err(io_err("cannot stat the history file", path))?
        .len();
    if len > 0 {
        let mut last = [0u8];
        file.seek(SeekFrom::Start(len - 1))
            .and_then(|_| file.read_exact(&mut last))
            .map_err(io_err("cannot read the history file", path))?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }
    // One write_all on an O_APPEND file: one write(2) for a line this size, so lines appended
    // at once by several threads never interleave.
    file.write_all(&line)
        .map_err(io_err("cannot append to the history file", path))?;
    crate::durable::sync_file(&file, path).map_err(io_err("cannot sync the history file", path))?;
    if created && let Some(dir) = path.parent() {
        sync_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?;
    }
    Ok(())
}

/// Waits for the exclusive `flock` of `file` (held by other appenders for one write and fsync).
fn lock_exclusive(file: &File) -> io::Result<()> {
    use std::os::fd::AsFd;
    loop {
        match rustix::fs::flock(file.as_fd(), rustix::fs::FlockOperation::LockExclusive) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// The entry for `job` in the history at or after byte `from` (from the start if the file is
/// now shorter than that: it was rotated).
pub(super) fn find_job_line(
    path: &Path,
    job: &str,
    from: u64,
) -> Result<Option<HistoryEntry>, OutcomeError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot open the history file", path)(e)),
    };
    let len = file
        .metadata()
        .map_err(io_err("cannot stat the history file", path))?
        .len();
    let start = if from <= len { from } else { 0 };
    file.seek(SeekFrom::Start(start))
        .map_err(io_err("cannot read the history file", path))?;
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    let needle = job.as_bytes();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(io_err("cannot read the history file", path))?;
        if n == 0 {
            return Ok(None);
        }
        if !line.windows(needle.len().max(1)).any(|w| w == needle) {
            continue;
        }
        if let Ok(entry) = serde_json::from_slice::<HistoryEntry>(&line)
            && entry.job == job
        {
            return Ok(Some(entry));
        }
    }
}

/// How much of the history is read at a time from its end.
const REV_CHUNK: usize = 64 * 1024;

/// A file's lines, last first (each without its `\n`; a trailing `\n` yields an empty line).
pub(super) struct RevLines {
    file: File,
    /// Where the part not yet read begins.
    pos: u64,
    /// Bytes read but not yet returned: from `pos` to the start of the last returned line.
    buf: Vec<u8>,
    chunk: usize,
    done: bool,
}

impl RevLines {
    /// `None` if the file does not exist.
    pub(super) fn open(path: &Path, chunk: usize) -> Result<Option<RevLines>, OutcomeError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot open the history file", path)(e)),
        };
        let pos = file
            .metadata()
            .map_err(io_err("cannot stat the history file", path))?
            .len();
        Ok(Some(RevLines {
            file,
            pos,
            buf: Vec::new(),
            chunk: chunk.max(1),
            done: false,
        }))
    }

    pub(super) fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf.iter().rposition(|&b| b == b'\n') {
                let line = self.buf.split_off(i + 1);
                self.buf.truncate(i);
                return Ok(Some(line));
            }
            if self.pos == 0 {
                if self.done {
                    return Ok(None);
                }
                self.done = true;
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            let n = (self.chunk as u64).min(self.pos);
            self.pos -= n;
            let mut chunk = vec![0; n as usize];
            self.file.seek(SeekFrom::Start(self.pos))?;
            self.file.read_exact(&mut chunk)?;
            chunk.extend_from_slice(&self.buf);
            self.buf = chunk;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    fn entry(job: &str) -> HistoryEntry {
        HistoryEntry {
            app: "my-app".into(),
            job: job.into(),
            ..HistoryEntry::default()
        }
    }

    /// Issue 21: one blank line among 10,006 lines appended at once. An appender that looks at
    /// the last byte while another's line is half in the file took it for a line cut short.
    /// Here the half-written line is the test's own, written under the lock every appender
    /// takes: the append must wait for it, not glue a newline onto half a line.
    #[test]
    fn an_append_waits_for_a_line_being_written_and_adds_no_blank_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        append_history(&path, &entry("j0")).unwrap();
        let line = serde_json::to_vec(&entry("j1")).unwrap();
        let (head, tail) = line.split_at(line.len() / 2);

        let mut writer = OpenOptions::new().append(true).open(&path).unwrap();
        rustix::fs::flock(writer.as_fd(), rustix::fs::FlockOperation::LockExclusive).unwrap();
        writer.write_all(head).unwrap();
        let appender = {
            let path = path.clone();
            std::thread::spawn(move || append_history(&path, &entry("j2")))
        };
        // The appender must not finish while the line is half written; give it a generous
        // moment to do the wrong thing (it has nothing to wait for but the lock).
        let deadline = Instant::now() + Duration::from_secs(1);
        while !appender.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        writer.write_all(tail).unwrap();
        writer.write_all(b"\n").unwrap();
        drop(writer);
        appender.join().unwrap().unwrap();

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text:?}");
        for line in &lines {
            assert!(
                serde_json::from_str::<HistoryEntry>(line).is_ok(),
                "a damaged or blank line in {text:?}"
            );
        }
    }

    #[test]
    fn concurrent_appends_are_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..40 {
                        append_history(&path, &entry(&format!("t{t}-{i}"))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 320);
        assert!(
            lines
                .iter()
                .all(|l| serde_json::from_str::<HistoryEntry>(l).is_ok())
        );
    }
}
