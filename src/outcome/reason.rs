//! The text of a failed archive's reason file: what went wrong, with every identifier a person
//! may need, and what to do about it.

use std::path::Path;

use super::HistoryEntry;
use crate::queue::spool::{Failure, Step};

/// The reason file's text: what failed, with every identifier a person may need, what to do,
/// and the end of the build output.
pub(super) fn reason_text(
    entry: &HistoryEntry,
    original: &Path,
    now_at: &Path,
    drop_dir: &Path,
    failure: &Failure,
) -> String {
    let mut t = String::new();
    let inspect = failure.step == Step::Inspect;
    let verify = failure.step == Step::Verify;
    if verify {
        t.push_str(&format!(
            "dropdeploy deployed this archive to {}: it built and started (status success), but \
             the health check after it failed.\n\n",
            entry.app
        ));
    } else if inspect {
        t.push_str(&format!(
            "dropdeploy refused this archive for {} before uploading it: nothing was uploaded.\n\n",
            entry.app
        ));
    } else {
        t.push_str(&format!(
            "dropdeploy could not deploy this archive to {}.\n\n",
            entry.app
        ));
    }
    let line = |t: &mut String, label: &str, value: &str| {
        t.push_str(&format!("  {label:<12} {value}\n"));
    };
    t.push_str("What went wrong\n");
    line(&mut t, "step:", &failure.step.to_string());
    line(
        &mut t,
        if verify { "check:" } else { "cause:" },
        &failure.reason,
    );
    if verify {
        line(
            &mut t,
            "got:",
            failure
                .log_tail
                .first()
                .map_or("no answer recorded", String::as_str),
        );
    }
    line(&mut t, "app:", &entry.app);
    line(&mut t, "file:", &original.display().to_string());
    line(&mut t, "now at:", &now_at.display().to_string());
    line(&mut t, "job:", &entry.job);
    line(
        &mut t,
        "git_ref:",
        entry.git_ref.as_deref().unwrap_or("none"),
    );
    line(
        &mut t,
        "deployment:",
        failure
            .deployment_id
            .as_deref()
            .unwrap_or("none (the platform never started one)"),
    );
    line(
        &mut t,
        "status:",
        failure.status.as_deref().unwrap_or("none"),
    );
    if let Some(code) = failure.http_status {
        line(&mut t, "http status:", &code.to_string());
    }
    line(&mut t, "when:", &entry.time);
    line(&mut t, "attempts:", &entry.attempts.to_string());
    if failure.gave_up {
        line(&mut t, "gave up:", "yes, the retry budget ran out");
    }
    if let Some(sha) = &entry.sha256 {
        line(&mut t, "sha256:", sha);
    }
    t.push_str("\nWhat to do\n");
    t.push_str(&format!("  {}\n", advice(entry, failure, drop_dir)));
    if verify {
        // The probe's answer is in `got:` above: there is no build output to show.
    } else if failure.log_tail.is_empty() {
        if failure.deployment_id.is_some() {
            t.push_str("\nNo build output could be fetched.\n");
        }
    } else {
        t.push_str("\nLast lines of the build output\n");
        for l in &failure.log_tail {
            t.push_str(&format!("  | {l}\n"));
        }
    }
    t
}

/// One paragraph telling a person what to do about a failure.
fn advice(entry: &HistoryEntry, failure: &Failure, drop_dir: &Path) -> String {
    let app = &entry.app;
    let drop = drop_dir.display();
    let again = format!("then move this file back into {drop} to deploy it again");
    if failure.step == Step::Inspect {
        return format!(
            "Fix the archive (a gzip-compressed tar holding one top-level folder, with no \
             absolute or `..` paths and no device files) and drop the corrected archive into \
             {drop}."
        );
    }
    if failure.step == Step::Verify {
        return format!(
            "The code built and started, but the app did not answer the health check as \
             expected (what it got is above). {} Look at the app's own logs (`scalingo --app \
             {app} logs`) to see why, fix it, and drop a new archive into {drop}; `dropdeploy \
             history --app {app}` shows what runs now.",
            rollback_words(&failure.reason)
        );
    }
    if failure.gave_up {
        return format!(
            "The platform or the network kept failing with errors that usually pass \
             (timeouts, 5xx, 429) until the retry budget ran out; the archive itself may be \
             fine. Once the platform answers again, {again}."
        );
    }
    match failure.http_status {
        Some(code @ (401 | 403)) => {
            return format!(
                "The Scalingo API refused the token (HTTP {code}): check `token_file` or \
                 SCALINGO_API_TOKEN, and that the token's account may deploy {app}; {again}."
            );
        }
        Some(402) => {
            return format!(
                "The platform refused for billing reasons (HTTP 402): check the account's \
                 payment details on the dashboard; {again}."
            );
        }
        Some(404) => {
            return format!(
                "The platform does not know the app {app} (HTTP 404): check `name` in the \
                 [[app]] section and the region or `api_url` in [scalingo]; {again}."
            );
        }
        _ => {}
    }
    if let Some(status) = &failure.status {
        let logs = match &failure.deployment_id {
            Some(id) => format!(" (the full log: `scalingo --app {app} deployment-logs {id}`)"),
            None => String::new(),
        };
        return format!(
            "The deployment ran and ended with status {status}: the code did not build or did \
             not start. Read the build output below{logs}, fix the code, and drop a new archive \
             into {drop}."
        );
    }
    format!("Fix the cause above, {again}.")
}

/// What an unhealthy deployment's check did next, from its reason: the rollback and what it
/// brings back, or why there was none.
fn rollback_words(reason: &str) -> String {
    if let Some(rest) = reason.split("rolling back to ").nth(1) {
        let target = rest.split(" (job ").next().unwrap_or(rest);
        return format!(
            "It was rolled back to {target}: that archive is deployed again and checked, \
             and this one is NOT live."
        );
    }
    if reason.contains("needs attention") {
        return "This was itself a rollback, and no other is tried: the app needs attention."
            .to_string();
    }
    "No rollback was made (see the check line above): this deployment is what runs now.".to_string()
}
