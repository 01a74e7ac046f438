//! What a lane holds while it drives a job or rewrites a waiting one: the app's lock (no other
//! process sharing the `state_dir` deploys the app meanwhile) and the job's lock (no other
//! process drives or rewrites the job). Locks are taken in that order by every process, and
//! only tried (never waited for) while another one is held, so two processes never wait on
//! each other. The tries, and the saves, run on blocking threads.

use std::sync::Arc;
use std::time::Duration;

use super::LaneContext;
use crate::live::WaitKind;
use crate::lock::{APP_LOCKS_DIR, AppHolder, AppLock, JobLock, StateLock};
use crate::queue::observe::Event;
use crate::queue::spool::{Job, JobState};
use crate::shutdown::Shutdown;

/// How often a lane looks again at an app or a job that another process holds.
pub(super) const RECHECK: Duration = Duration::from_secs(2);

/// The locks a lane holds while it drives a job; released on drop.
pub(super) struct Held {
    _app: AppLock,
    _job: JobLock,
}

/// One try at the locks.
enum Try {
    Held(Held),
    /// Another process holds the app or the job: why, in words.
    Busy(String),
    /// The job cannot be locked (its directory is gone, or unreadable): said already.
    Failed,
}

/// Takes the app's lock, then the job's, waiting while another process holds either: the wait
/// is on the board (`status`) with its reason and told to the observer (the daemon's log, a
/// command's terminal) once per reason, and looked at again every [`RECHECK`]. `None`: the
/// shutdown came first, or the job cannot be locked.
pub(super) async fn hold(
    ctx: &Arc<LaneContext>,
    job: &Job,
    shutdown: &mut Shutdown,
) -> Option<Held> {
    let mut told: Option<String> = None;
    loop {
        let tried = {
            let (ctx, app, id) = (ctx.clone(), job.app.clone(), job.id.clone());
            crate::blocking::run(move || {
                Ok::<_, std::convert::Infallible>(try_hold(&ctx, &app, &id))
            })
            .await
        };
        match tried {
            Ok(Try::Held(held)) => return Some(held),
            Ok(Try::Busy(reason)) => {
                if told.as_deref() != Some(reason.as_str()) {
                    ctx.observer.event(job, &Event::Waiting { reason: &reason });
                    told = Some(reason);
                }
            }
            Ok(Try::Failed) => return None,
            Err(e) => {
                tracing::error!(app = %job.app, job = %job.id, "cannot lock the job: {e}");
                return None;
            }
        }
        if !shutdown.sleep(RECHECK).await {
            let (board, app) = (ctx.board.clone(), job.app.clone());
            let _ = crate::blocking::run(move || {
                board.clear(&app, WaitKind::AppBusy, &app);
                Ok::<_, std::convert::Infallible>(())
            })
            .await;
            return None;
        }
    }
}

/// Tries the app's lock, then the job's; shows a wait on the board, or takes it off.
fn try_hold(ctx: &LaneContext, app: &str, id: &str) -> Try {
    let locks = ctx.state_dir.join(APP_LOCKS_DIR);
    let busy = |reason: String| {
        let next = crate::queue::spool::now() + RECHECK.as_secs();
        ctx.board
            .wait(app, WaitKind::AppBusy, app, &reason, Some(next));
        Try::Busy(reason)
    };
    let app_lock = match AppLock::try_acquire(&locks, app, id) {
        Ok(Ok(lock)) => lock,
        Ok(Err(holder)) => return busy(holder_words(ctx, app, &holder)),
        Err(e) => {
            tracing::error!(
                app,
                job = id,
                "cannot lock the app in {}: {e}; the job stays in the spool",
                locks.display()
            );
            ctx.board.clear(app, WaitKind::AppBusy, app);
            return Try::Failed;
        }
    };
    let dir = ctx.spool.job_dir(id);
    match JobLock::try_acquire(&dir) {
        Ok(Some(job_lock)) => {
            ctx.board.clear(app, WaitKind::AppBusy, app);
            Try::Held(Held {
                _app: app_lock,
                _job: job_lock,
            })
        }
        Ok(None) => busy(format!(
            "another dropdeploy process is driving job {id}; waiting for it to let go"
        )),
        Err(e) => {
            tracing::error!(
                app,
                job = id,
                "cannot lock the job directory {}: {e}",
                dir.display()
            );
            ctx.board.clear(app, WaitKind::AppBusy, app);
            Try::Failed
        }
    }
}

/// Who holds the app, in words: the daemon (whose pid is in the `state_dir`'s lock) or another
/// process.
fn holder_words(ctx: &LaneContext, app: &str, holder: &AppHolder) -> String {
    let daemon = StateLock::holder(&ctx.state_dir);
    let who = match holder.pid {
        Some(pid) if daemon == Some(pid) => format!("the dropdeploy daemon (pid {pid})"),
        Some(pid) => format!("another dropdeploy process (pid {pid})"),
        None => "another dropdeploy process".to_string(),
    };
    let job = holder
        .job
        .as_deref()
        .map(|j| format!(" (job {j})"))
        .unwrap_or_default();
    format!(
        "{who} is deploying {app}{job}; this job starts once it is done (looked at again every {} s)",
        RECHECK.as_secs()
    )
}

/// What became of a waiting job that newer work would supersede.
pub(super) enum Supersede {
    /// Superseded, its outcome recorded: its final state.
    Done(JobState),
    /// Not superseded: another process drives it, or it is under way now (its record as read).
    Kept(Box<Job>),
    /// Gone from the spool (finished by another process).
    Gone,
}

/// Ends a waiting job `superseded` by `by` and records its outcome, under the job's lock and
/// from its record as it is on disk: a job that another process drives (a one-shot `deploy`
/// that resumed it) or that moved on since it was read is kept.
pub(super) async fn supersede(
    ctx: &Arc<LaneContext>,
    job: Job,
    by: &str,
    keep: usize,
) -> Supersede {
    let (ctx2, by) = (ctx.clone(), by.to_string());
    let id = job.id.clone();
    match crate::blocking::run(move || {
        Ok::<_, std::convert::Infallible>(supersede_locked(&ctx2, job, &by, keep))
    })
    .await
    {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(job = %id, "superseding the job failed: {e}");
            Supersede::Gone
        }
    }
}

fn supersede_locked(ctx: &LaneContext, job: Job, by: &str, keep: usize) -> Supersede {
    let dir = ctx.spool.job_dir(&job.id);
    let _lock = match JobLock::try_acquire(&dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            tracing::info!(app = %job.app, job = %job.id, "another dropdeploy process drives this job: not superseded");
            return Supersede::Kept(Box::new(job));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Supersede::Gone,
        Err(e) => {
            tracing::error!(app = %job.app, job = %job.id, "cannot lock the job directory {}: {e}; not superseded", dir.display());
            return Supersede::Kept(Box::new(job));
        }
    };
    let mut fresh = match ctx.spool.load(&job.id) {
        Ok(fresh) => fresh,
        Err(_) if !dir.exists() => return Supersede::Gone,
        Err(e) => {
            tracing::error!(app = %job.app, job = %job.id, "{e}; not superseded");
            return Supersede::Kept(Box::new(job));
        }
    };
    if super::under_way(&fresh) {
        return Supersede::Kept(Box::new(fresh));
    }
    fresh.state = JobState::Superseded { by: by.to_string() };
    match ctx.spool.save(&fresh) {
        Ok(()) => ctx.finisher.finish(&fresh, keep),
        Err(e) => tracing::error!(job = %fresh.id, "cannot record superseded job: {e}"),
    }
    Supersede::Done(fresh.state)
}
