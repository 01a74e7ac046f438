//! Claiming ready files from the drop folders, and retrying claims that fail for an I/O
//! reason.

use super::*;

/// The longest wait between two tries of a claim that fails for an I/O reason.
pub(super) const CLAIM_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// A drop file whose claim failed for an I/O reason (disk full, spool not writable, …).
pub(super) struct ClaimRetry {
    /// Failed tries so far.
    pub(super) tries: u32,
    /// When the last try failed.
    pub(super) last: tokio::time::Instant,
    /// Asks the watcher to check the file again when the backoff is over.
    pub(super) timer: tokio::task::JoinHandle<()>,
}

/// The wait after a claim's `tries`-th failure: 1 s, doubling, at most [`CLAIM_RETRY_MAX`].
pub(super) fn claim_backoff(tries: u32) -> std::time::Duration {
    let doubled = std::time::Duration::from_secs(1u64 << tries.saturating_sub(1).min(6));
    doubled.min(CLAIM_RETRY_MAX)
}

impl Daemon {
    /// Claims a ready file: moves it into the spool, checks it, and hands the job to its lane;
    /// a bad archive goes to `failed/` with its reason.
    pub(super) async fn claim(&mut self, ready: ReadyFile) {
        let Some(app) = self.config.app(&ready.app).cloned() else {
            self.claim_settled(&ready);
            return;
        };
        let spool = self.pipeline.spool.clone();
        let limits = Limits {
            max_uncompressed: self.config.max_archive_bytes,
        };
        let path = ready.path.clone();
        let label = app.ref_label().to_string();
        let name = app.name.clone();
        let made = tokio::task::spawn_blocking(move || {
            enqueue_archive(&spool, &name, &path, Transfer::Move, &label, None, &limits)
        })
        .await;
        match made {
            Ok(Ok(job)) => {
                self.claim_settled(&ready);
                tracing::info!(
                    app = %app.name,
                    job = %job.id,
                    file = %ready.path.display(),
                    git_ref = %job.git_ref,
                    readiness = %ready.readiness,
                    "claimed"
                );
                // Fleet mode: the job becomes the fleet's; whichever node holds the app's lane
                // drives it. If the store cannot take it now, it waits on the board and is
                // tried again on the fleet's poll.
                if let Some(publisher) = self.publisher.clone() {
                    if publisher.publish(job).await.is_ok() {
                        tracing::debug!(app = %app.name, file = %ready.path.display(), "published to the fleet");
                    }
                } else if let Err(job) = self.pipeline.lanes.submit(job) {
                    tracing::error!(app = %job.app, job = %job.id, "no lane for the app; the job stays in the spool");
                }
            }
            Ok(Err(IntakeError::Rejected {
                file,
                rejection,
                kept: Some(kept),
            })) => {
                self.claim_settled(&ready);
                let outcomes = self.pipeline.outcomes.clone();
                let app_name = app.name.clone();
                let shown = file.display().to_string();
                let done = tokio::task::spawn_blocking(move || {
                    outcomes.record_rejected(&app_name, &file, &kept, &rejection)
                })
                .await;
                match done {
                    Ok(Ok(entry)) => self.pipeline.after.done(&entry, None),
                    Ok(Err(e)) => {
                        tracing::error!(app = %app.name, file = %shown, "cannot move the refused archive to failed/: {e}")
                    }
                    Err(e) => tracing::error!(app = %app.name, file = %shown, "{e}"),
                }
            }
            Ok(Err(IntakeError::Io { source, .. }))
                if source.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(&ready.path)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
            {
                tracing::debug!(app = %app.name, file = %ready.path.display(), "the file left the drop folder before its claim");
                self.claim_settled(&ready);
            }
            // Nothing is lost (the file is still in the drop folder) but nothing may stay stuck.
            Ok(Err(IntakeError::Spool(crate::queue::spool::SpoolError::Io {
                action,
                source,
                ..
            }))) => {
                // The path is a fresh job directory each try: the cause names the spool instead,
                // so that it stays the same while the reason does.
                let cause = format!(
                    "{action} in {}: {source}",
                    self.pipeline.spool.dir().display()
                );
                self.claim_failed(&ready, cause);
            }
            Ok(Err(e)) => self.claim_failed(&ready, e.to_string()),
            Err(e) => self.claim_failed(&ready, format!("the claim crashed: {e}")),
        }
    }

    /// A claim failed for an I/O reason: shows it on the live board, logs it once per cause,
    /// and asks the watcher to check the file again (and send it once complete) after a backoff.
    pub(super) fn claim_failed(&mut self, ready: &ReadyFile, cause: String) {
        let now = tokio::time::Instant::now();
        // An entry that stopped failing long ago is of a file that left the folder meanwhile.
        self.claim_retries
            .retain(|_, r| now.duration_since(r.last) < CLAIM_RETRY_MAX * 3);
        let tries = self.claim_retries.get(&ready.path).map_or(0, |r| r.tries) + 1;
        let delay = claim_backoff(tries);
        let subject = ready.path.display().to_string();
        let retry_at = crate::queue::spool::now() + delay.as_secs();
        let new_cause = self.live.wait(
            &ready.app,
            crate::live::WaitKind::Claim,
            &subject,
            &cause,
            Some(retry_at),
        );
        if new_cause {
            tracing::warn!(
                app = %ready.app,
                file = %subject,
                "cannot claim: {cause}; the file stays in the drop folder and the claim is tried \
                 again in {}s, backing off to every {}s until it succeeds",
                delay.as_secs(),
                CLAIM_RETRY_MAX.as_secs()
            );
        } else {
            tracing::debug!(app = %ready.app, file = %subject, tries, "cannot claim yet: {cause}");
        }
        let Some((_, watcher)) = self.watchers.get(&ready.app) else {
            return;
        };
        let recheck = watcher.rechecker();
        let path = ready.path.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            recheck.file(path);
        });
        let retry = ClaimRetry {
            tries,
            last: now,
            timer,
        };
        if let Some(old) = self.claim_retries.insert(ready.path.clone(), retry) {
            old.timer.abort();
        }
    }

    /// The claim of a file ended (claimed, refused, gone): its retry and its wait end too.
    pub(super) fn claim_settled(&mut self, ready: &ReadyFile) {
        let subject = ready.path.display().to_string();
        if let Some(retry) = self.claim_retries.remove(&ready.path) {
            retry.timer.abort();
            tracing::info!(app = %ready.app, file = %subject, failed_tries = retry.tries, "the claim no longer waits");
        }
        self.live
            .clear(&ready.app, crate::live::WaitKind::Claim, &subject);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_claim_backs_off_from_one_second_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| claim_backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(claim_backoff(u32::MAX), CLAIM_RETRY_MAX);
    }
}
