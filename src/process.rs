//! Running a command in a process group of its own, with a time limit: the one runner behind
//! the local target's `activate` command and the `on_outcome` hook command.
//!
//! [`run`] is blocking (async callers use [`crate::blocking::run`]). The command leads a new
//! process group, so that a timeout kills it and everything it started. Its output is drained
//! by threads of their own, keeping only the end of each stream, so a chatty command never
//! blocks on a full pipe and never costs more than the kept tail.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How the command's stdout and stderr are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Both into one pipe, interleaved as written; kept in [`Finished::stdout`].
    Merged,
    /// Each apart, in [`Finished::stdout`] and [`Finished::stderr`].
    Separate,
}

/// How long the output may stay open once the command has ended: a background process it
/// started may hold it open for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputWait {
    /// Until the timeout, like the command itself; then the whole group is killed.
    WithinTimeout,
    /// This long after the command ended (or was killed); then the run ends without it, and
    /// the draining threads stay behind until the output closes (so the process holding it
    /// never blocks or gets SIGPIPE).
    Grace(Duration),
}

/// What to run and within which limits.
#[derive(Debug, Clone)]
pub struct Options {
    /// The command is killed, with its whole process group, if it has not ended by then.
    pub timeout: Duration,
    /// Bytes written to its stdin (a command that does not read them is not an error);
    /// `None`: stdin is closed (`/dev/null`).
    pub stdin: Option<Vec<u8>>,
    pub capture: Capture,
    /// How much of each captured stream is kept (its end).
    pub tail_bytes: usize,
    pub output_wait: OutputWait,
    /// Set by a caller that stopped waiting (see [`Abandon`]): the group is killed at once.
    pub abandoned: Option<Arc<AtomicBool>>,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(ExitStatus),
    /// Still running at the timeout: its process group was killed.
    TimedOut,
}

/// A command that ran.
#[derive(Debug)]
pub struct Finished {
    pub ending: Ending,
    /// Its stdout (with [`Capture::Merged`]: stdout and stderr), the end of it.
    pub stdout: OutputTail,
    /// Its stderr, the end of it; empty with [`Capture::Merged`].
    pub stderr: OutputTail,
    /// The output was still open when the run ended: a process the command started holds it
    /// (with [`OutputWait::WithinTimeout`], that group has been killed).
    pub output_held: bool,
}

/// Why a command did not run to an [`Ending`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// It could not be started (or its pipes or threads could not be made).
    #[error("{0}")]
    Start(io::Error),
    /// Waiting for it failed; its group was killed.
    #[error("{0}")]
    Wait(io::Error),
    /// The caller stopped waiting; its group was killed.
    #[error("abandoned: nobody waits for it any more")]
    Abandoned,
}

impl RunError {
    /// The underlying error's kind ([`io::ErrorKind::Other`] when abandoned).
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            RunError::Start(e) | RunError::Wait(e) => e.kind(),
            RunError::Abandoned => io::ErrorKind::Other,
        }
    }
}

/// Marks a run abandoned when dropped: an async caller holds it while it awaits the blocking
/// run, so that a task dropped at shutdown takes the command's process group with it.
pub struct Abandon(Arc<AtomicBool>);

impl Abandon {
    /// A guard, and the flag to put in [`Options::abandoned`].
    pub fn new() -> (Abandon, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (Abandon(Arc::clone(&flag)), flag)
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The end of a stream, at most a fixed number of bytes of it.
#[derive(Debug, Default, Clone)]
pub struct OutputTail {
    bytes: Vec<u8>,
    limit: usize,
    cut: bool,
}

impl OutputTail {
    /// An empty tail keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        OutputTail {
            bytes: Vec::new(),
            limit,
            cut: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        // Trim in batches, so each byte is moved a bounded number of times.
        if self.bytes.len() > 2 * self.limit {
            let excess = self.bytes.len() - self.limit;
            self.bytes.drain(..excess);
            self.cut = true;
        }
    }

    /// The kept bytes, at most the limit.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[self.bytes.len().saturating_sub(self.limit)..]
    }

    /// The kept bytes as text (lossy UTF-8), marked `[earlier output cut]` when the start is
    /// missing.
    pub fn text(&self) -> String {
        let start = self.bytes.len().saturating_sub(self.limit);
        let text = String::from_utf8_lossy(&self.bytes[start..]);
        if self.cut || start > 0 {
            format!("[earlier output cut]\n{text}")
        } else {
            text.into_owned()
        }
    }
}

/// Runs `command` (program, arguments, environment and working directory as the caller set
/// them) in a process group of its own, within `options`; blocking. `Err` when it could not
/// be started or waited for, or was abandoned; an exit status, whatever it is, is `Ok`.
pub fn run(mut command: Command, options: Options) -> Result<Finished, RunError> {
    command.process_group(0).stdin(match options.stdin {
        Some(_) => Stdio::piped(),
        None => Stdio::null(),
    });
    let merged = match options.capture {
        Capture::Merged => {
            let (reader, writer) = io::pipe().map_err(RunError::Start)?;
            command
                .stdout(writer.try_clone().map_err(RunError::Start)?)
                .stderr(writer);
            Some(reader)
        }
        Capture::Separate => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        }
    };
    let spawned = command.spawn();
    // The command holds the pipe's write ends: drop them, or the reader never sees the end.
    drop(command);
    let mut child = spawned.map_err(RunError::Start)?;
    let pipes = match start_pipes(&mut child, merged, &options) {
        Ok(pipes) => pipes,
        Err(e) => {
            kill_group(&mut child);
            return Err(RunError::Start(e));
        }
    };
    let started = Instant::now();
    let ending = wait_for_exit(&mut child, &options, started + options.timeout)?;
    let output_held = !pipes.wait_closed(&child, ending, &options, started)?;
    Ok(Finished {
        ending,
        stdout: pipes.stdout.lock().map(|t| t.clone()).unwrap_or_default(),
        stderr: pipes.stderr.lock().map(|t| t.clone()).unwrap_or_default(),
        output_held,
    })
}

/// The threads feeding the command's stdin and draining its output; each says when it is done.
struct Pipes {
    stdout: Arc<Mutex<OutputTail>>,
    stderr: Arc<Mutex<OutputTail>>,
    done: mpsc::Receiver<()>,
    count: usize,
}

fn start_pipes(
    child: &mut Child,
    merged: Option<io::PipeReader>,
    options: &Options,
) -> io::Result<Pipes> {
    let (done_tx, done) = mpsc::channel::<()>();
    let stdout = Arc::new(Mutex::new(OutputTail::new(options.tail_bytes)));
    let stderr = Arc::new(Mutex::new(OutputTail::new(options.tail_bytes)));
    let mut count = 0;
    let mut drain = |reader: Box<dyn Read + Send>, tail: &Arc<Mutex<OutputTail>>| {
        count += 1;
        let (tail, done_tx) = (Arc::clone(tail), done_tx.clone());
        // Detached on purpose: a background process started by the command may keep the pipe
        // open; the thread keeps draining it and ends when the pipe closes.
        std::thread::Builder::new()
            .name("command-output".into())
            .spawn(move || {
                drain_into(reader, &tail);
                let _ = done_tx.send(());
            })
            .map(drop)
    };
    match merged {
        Some(reader) => drain(Box::new(reader), &stdout)?,
        None => {
            if let Some(out) = child.stdout.take() {
                drain(Box::new(out), &stdout)?;
            }
            if let Some(err) = child.stderr.take() {
                drain(Box::new(err), &stderr)?;
            }
        }
    }
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), options.stdin.clone()) {
        count += 1;
        let done_tx = done_tx.clone();
        std::thread::Builder::new()
            .name("command-input".into())
            .spawn(move || {
                // A command that does not read its input is not an error.
                let _ = pipe.write_all(&input);
                drop(pipe);
                let _ = done_tx.send(());
            })?;
    }
    Ok(Pipes {
        stdout,
        stderr,
        done,
        count,
    })
}

fn drain_into(mut reader: impl Read, tail: &Mutex<OutputTail>) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Ok(mut tail) = tail.lock() {
                    tail.push(&buf[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Polls the child until it exits, or kills its group at `deadline` (or once abandoned).
fn wait_for_exit(
    child: &mut Child,
    options: &Options,
    deadline: Instant,
) -> Result<Ending, RunError> {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Ending::Exited(status)),
            Ok(None) => {}
            Err(e) => {
                kill_group(child);
                return Err(RunError::Wait(e));
            }
        }
        if is_abandoned(options) {
            kill_group(child);
            return Err(RunError::Abandoned);
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(child);
            return Ok(Ending::TimedOut);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

impl Pipes {
    /// Waits for every pipe thread to end, as `options.output_wait` allows; true when they
    /// all did. With [`OutputWait::WithinTimeout`], output still open at the timeout gets the
    /// command's group killed.
    fn wait_closed(
        &self,
        child: &Child,
        ending: Ending,
        options: &Options,
        started: Instant,
    ) -> Result<bool, RunError> {
        let deadline = match options.output_wait {
            OutputWait::WithinTimeout => started + options.timeout,
            OutputWait::Grace(grace) => Instant::now() + grace,
        };
        let mut left = self.count;
        while left > 0 {
            let now = Instant::now();
            if now >= deadline || is_abandoned(options) {
                break;
            }
            // In slices, so that an abandoned run is noticed.
            let slice = (deadline - now).min(Duration::from_millis(50));
            match self.done.recv_timeout(slice) {
                Ok(()) => left -= 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let closed = left == 0;
        // The command has been reaped: its pid is the group's id, not reused while a member of
        // the group (the process holding the output) lives.
        let kill = !closed && matches!(ending, Ending::Exited(_));
        if kill && (options.output_wait == OutputWait::WithinTimeout || is_abandoned(options)) {
            kill_group_of(child.id());
        }
        if is_abandoned(options) {
            return Err(RunError::Abandoned);
        }
        Ok(closed)
    }
}

fn is_abandoned(options: &Options) -> bool {
    options
        .abandoned
        .as_ref()
        .is_some_and(|flag| flag.load(Ordering::Relaxed))
}

/// SIGKILL to the child's whole process group (it leads one of its own), then reap it. The
/// child is not reaped before the kill, so its pid, and the group's id, cannot be reused.
fn kill_group(child: &mut Child) {
    kill_group_of(child.id());
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGKILL to the process group `group` (the id of the command that leads it).
fn kill_group_of(group: u32) {
    let pid = i32::try_from(group)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(timeout: Duration, capture: Capture, output_wait: OutputWait) -> Options {
        Options {
            timeout,
            stdin: None,
            capture,
            tail_bytes: 64 * 1024,
            output_wait,
            abandoned: None,
        }
    }

    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn only_the_end_of_a_long_output_is_kept() {
        let mut tail = OutputTail::new(64 * 1024);
        for i in 0..100_000u32 {
            tail.push(format!("line {i}\n").as_bytes());
        }
        let text = tail.text();
        assert!(text.len() <= 64 * 1024 + 32);
        assert!(text.starts_with("[earlier output cut]"));
        assert!(text.ends_with("line 99999\n"));
        assert_eq!(tail.bytes().len(), 64 * 1024);
        assert!(tail.bytes().ends_with(b"line 99999\n"));
    }

    #[test]
    fn stdin_goes_in_and_the_streams_come_back_apart_or_merged() {
        let mut separate = options(
            Duration::from_secs(10),
            Capture::Separate,
            OutputWait::WithinTimeout,
        );
        separate.stdin = Some(b"hello".to_vec());
        let ran = run(sh("cat; echo oops >&2; exit 3"), separate).unwrap();
        assert!(matches!(ran.ending, Ending::Exited(status) if status.code() == Some(3)));
        assert_eq!(ran.stdout.bytes(), b"hello");
        assert_eq!(ran.stderr.bytes(), b"oops\n");
        assert!(!ran.output_held);

        let merged = options(
            Duration::from_secs(10),
            Capture::Merged,
            OutputWait::Grace(Duration::from_secs(2)),
        );
        let ran = run(sh("echo a; echo b >&2"), merged).unwrap();
        assert_eq!(ran.stdout.text(), "a\nb\n");
        assert!(ran.stderr.bytes().is_empty());
    }

    #[test]
    fn a_timeout_kills_the_group_and_a_missing_program_does_not_start() {
        let ran = run(
            sh("sleep 30"),
            options(
                Duration::from_millis(200),
                Capture::Merged,
                OutputWait::Grace(Duration::from_secs(2)),
            ),
        )
        .unwrap();
        assert_eq!(ran.ending, Ending::TimedOut);
        let missing = run(
            Command::new("/nonexistent/program"),
            options(
                Duration::from_secs(1),
                Capture::Separate,
                OutputWait::WithinTimeout,
            ),
        );
        assert!(matches!(missing, Err(RunError::Start(e)) if e.kind() == io::ErrorKind::NotFound));
    }
}
