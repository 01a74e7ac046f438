//! The runner's events for a person: one line per step and status, and a progress bar on a terminal.

use super::*;

/// Prints the runner's events for a person: one line per step and status, and a progress bar
/// for the upload when stderr is a terminal. Every line goes to one stream, the bar or not.
pub(super) struct Printer {
    pub(super) bar: Mutex<Option<indicatif::ProgressBar>>,
    pub(super) terminal: bool,
    /// Lines to stderr (`deploy`, whose stdout is its result) rather than stdout (`watch`).
    on_stderr: bool,
}

impl Printer {
    /// Lines on stdout; the bar, when there is one, on stderr.
    pub(super) fn new(terminal: bool) -> Self {
        Printer {
            bar: Mutex::new(None),
            terminal,
            on_stderr: false,
        }
    }

    /// Lines and the bar on stderr, leaving stdout to the command's result.
    pub(super) fn on_stderr(terminal: bool) -> Self {
        Printer {
            on_stderr: true,
            ..Printer::new(terminal)
        }
    }

    /// A line of information: not under `-q`.
    pub(super) fn line(&self, text: &str) {
        if !super::quiet() {
            self.alert(text);
        }
    }

    /// A line printed even under `-q`: something went wrong or needs a person.
    pub(super) fn alert(&self, text: &str) {
        let bar = self.bar.lock().ok().and_then(|b| b.clone());
        match (bar, self.on_stderr) {
            (Some(bar), true) => bar.println(crate::redact::redact(text)),
            // The bar steps aside while the line is printed on the other stream.
            (Some(bar), false) => bar.suspend(|| println!("{text}")),
            (None, true) => eprintln!("{text}"),
            (None, false) => println!("{text}"),
        }
    }

    pub(super) fn finish(&self) {
        if let Ok(mut bar) = self.bar.lock()
            && let Some(bar) = bar.take()
        {
            bar.finish_and_clear();
        }
    }

    /// The upload's first line, and its progress bar on a terminal.
    fn upload_starts(&self, job: &Job) {
        let total = crate::queue::intake::summary(job)
            .map(|s| s.compressed_bytes)
            .unwrap_or(0);
        self.line(&format!(
            "{}: uploading {}",
            job.app,
            crate::human::bytes(total)
        ));
        if self.terminal
            && let Ok(mut bar) = self.bar.lock()
        {
            let pb = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                pb.set_style(style);
            }
            *bar = Some(pb);
        }
    }

    fn upload_progress(&self, sent: u64) {
        if let Ok(bar) = self.bar.lock()
            && let Some(bar) = bar.as_ref()
        {
            bar.set_position(sent);
        }
    }

    /// The progress bar cleared, and the upload's size, time and rate.
    fn upload_finished(&self, app: &str, bytes: u64, elapsed: std::time::Duration) {
        self.finish();
        // A rate measured over less than a tenth of a second says nothing of the link.
        let secs = elapsed.as_secs_f64();
        let rate = if secs >= 0.1 {
            format!(" ({}/s)", crate::human::bytes((bytes as f64 / secs) as u64))
        } else {
            String::new()
        };
        self.line(&format!(
            "{app}: uploaded {} in {}{rate}",
            crate::human::bytes(bytes),
            crate::human::duration(elapsed)
        ));
    }
}

impl Observer for Printer {
    fn event(&self, job: &Job, event: &Event<'_>) {
        let app = &job.app;
        match event {
            Event::Resumed { state } => {
                self.line(&format!(
                    "{app}: resuming job {} (git_ref {}) from state {state}",
                    job.id, job.git_ref
                ));
            }
            Event::Step(Step::Upload) => self.upload_starts(job),
            Event::Step(Step::CreateSource) => self.line(&format!("{app}: creating source")),
            Event::Step(_) => {}
            Event::Uploading { sent, .. } => self.upload_progress(*sent),
            Event::Uploaded { bytes, elapsed } => self.upload_finished(app, *bytes, *elapsed),
            Event::DeploymentCreated { id } => {
                self.line(&format!(
                    "{app}: deployment {id} created (git_ref {})",
                    job.git_ref
                ));
            }
            Event::DeploymentAdopted { id } => {
                self.line(&format!(
                    "{app}: found deployment {id} already posted for git_ref {}; following it",
                    job.git_ref
                ));
            }
            Event::Status { status } => self.line(&format!("{app}: status {status}")),
            Event::Output { lines } => {
                for line in lines.iter() {
                    self.line(&format!("  | {line}"));
                }
            }
            Event::Retrying {
                step,
                error,
                delay,
                failures,
            } => {
                self.finish();
                self.line(&format!(
                    "{app}: {step} failed ({error}); retry {failures} in {}",
                    crate::human::duration(*delay)
                ));
            }
            Event::Checking { phase, wait } => self.line(&format!(
                "{app}: health check: {phase} ({})",
                crate::human::duration(*wait)
            )),
            // Once healthy, the soak's probes are quiet: only one that fails is a line.
            Event::Probed { probe }
                if probe.healthy && job.check.as_ref().is_some_and(|c| c.healthy_at.is_some()) => {}
            Event::Probed { probe } => self.line(&format!("{app}: probe: {}", probe.describe())),
            Event::Checked {
                verdict, reason, ..
            } => {
                let line = format!("{app}: {}: {reason}", verdict_name(*verdict));
                match verdict {
                    crate::queue::check::Verdict::Unhealthy => self.alert(&line),
                    _ => self.line(&line),
                }
                if let Some(of) = job.rollback()
                    && *verdict == crate::queue::check::Verdict::Verified
                {
                    self.line(&format!(
                        "{app}: {} is NOT live; live now: {} (rolled back)",
                        of.replaced(),
                        of.target()
                    ));
                }
            }
            Event::RollingBack { job: id, to_ref } => {
                self.line(&format!("{app}: rolling back to {to_ref} (job {id})"))
            }
            Event::NeedsAttention { reason } => {
                self.alert(&format!("{app}: needs attention: {reason}"))
            }
            Event::Waiting { reason } => self.line(&format!("{app}: waiting: {reason}")),
            Event::Finished => self.finish(),
        }
    }
}

/// A check's verdict as the history writes it.
fn verdict_name(verdict: crate::queue::check::Verdict) -> &'static str {
    match verdict {
        crate::queue::check::Verdict::Verified => "verified",
        crate::queue::check::Verdict::Unhealthy => "unhealthy",
        crate::queue::check::Verdict::Skipped => "check skipped",
    }
}
