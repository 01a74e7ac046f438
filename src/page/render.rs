//! The page's HTML, written by hand: every text that comes from outside (file names, reasons,
//! build lines, app names) goes through [`escape`]; no inline script or style (the
//! Content-Security-Policy forbids both), so the timeline's bars are SVG rectangles whose
//! width is an attribute.

use std::fmt::Write as _;

use super::{AppView, BudgetView, JobNow, View};
use crate::live::{Wait, WaitKind};
use crate::outcome::{HistoryEntry, Outcome, rfc3339_utc};
use crate::queue::spool::{Step, Timestamp};
use crate::redact::redact;

/// Seconds between two reloads of the page without JavaScript.
pub const REFRESH_SECS: u32 = 5;

/// `text` safe inside HTML text and attribute values (quoted), after redaction.
pub fn escape(text: &str) -> String {
    let text = redact(text);
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn render(view: &View) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let attention = view.apps.iter().filter(|a| a.attention.is_some()).count();
    let busy = view.apps.iter().filter(|a| a.now.job.is_some()).count();
    let mut title = format!("dropdeploy: {} apps, {busy} deploying", view.apps.len());
    if attention > 0 {
        let _ = write!(title, ", {attention} need attention");
    }
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/page.css\">\
         <script src=\"/page.js\" defer></script>\
         <noscript><meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\"></noscript></head>\n\
         <body data-live=\"off\"><header><h1>dropdeploy</h1><p class=\"summary\">{}</p>",
        escape(&title),
        escape(title.trim_start_matches("dropdeploy: "))
    );
    budgets(&mut out, &view.budgets);
    out.push_str("</header>\n<main id=\"main\">\n<section class=\"apps\">\n");
    for app in &view.apps {
        app_card(&mut out, app, view);
    }
    if view.apps.is_empty() {
        out.push_str("<p class=\"empty\">No app is configured.</p>");
    }
    out.push_str("</section>\n");
    waits(&mut out, &view.waits, view.now);
    out.push_str("<section class=\"history\"><h2>Last outcomes, all apps</h2>");
    timeline(&mut out, &view.history, true);
    out.push_str("</section>\n</main>\n<footer>");
    let _ = write!(
        out,
        "<p>Read at <time>{}</time>. {} <a href=\"/metrics\">metrics</a></p>",
        rfc3339_utc(view.now),
        if view.can_act {
            "Actions need an intake token."
        } else {
            "Read-only: no intake token is configured (<code>[intake] token_file</code> or \
             <code>DROPDEPLOY_INTAKE_TOKEN</code>)."
        }
    );
    out.push_str("</footer></body></html>\n");
    out
}

fn budgets(out: &mut String, budgets: &[BudgetView]) {
    for b in budgets {
        let _ = write!(
            out,
            "<p class=\"budget\">{}: <strong>{}</strong> of {} requests in the last minute \
             <meter min=\"0\" max=\"{}\" low=\"{}\" high=\"{}\" value=\"{}\"></meter>",
            escape(&b.label),
            b.used,
            b.limit,
            b.limit,
            b.limit / 2,
            b.limit * 9 / 10,
            b.used.min(b.limit as usize)
        );
        if let Some(secs) = b.paused_secs {
            let _ = write!(
                out,
                " <span class=\"paused\">paused {secs} s more (the platform answered 429)</span>"
            );
        }
        out.push_str("</p>");
    }
}

/// How an app's lane stands, in words, and its class.
fn lane_state(app: &AppView, waits: &[Wait]) -> (&'static str, String) {
    if let Some(attention) = &app.attention {
        return (
            "attention",
            format!("needs attention: {}", attention.reason),
        );
    }
    if let Some(job) = &app.now.job {
        if let Some(wait) = waits
            .iter()
            .find(|w| w.app == app.name && w.kind == WaitKind::RateLimit)
        {
            return (
                "budget",
                format!("waiting for the API budget: {}", wait.cause),
            );
        }
        return match job.step {
            Some(Step::Verify) => (
                "verifying",
                format!("verifying ({})", job.phase.as_deref().unwrap_or("starting")),
            ),
            step => {
                let mut doing = format!(
                    "deploying: {}",
                    step.map_or("starting".to_string(), |s| s.to_string())
                );
                if let Some(status) = &job.platform_status {
                    let _ = write!(doing, " ({status})");
                }
                ("deploying", doing)
            }
        };
    }
    if !app.next.is_empty() {
        return ("waiting", "waiting for a place to deploy".to_string());
    }
    if !app.configured {
        return (
            "idle",
            "not configured (jobs left in the spool)".to_string(),
        );
    }
    ("idle", "idle".to_string())
}

fn app_card(out: &mut String, app: &AppView, view: &View) {
    let (class, state) = lane_state(app, &view.waits);
    let name = escape(&app.name);
    let _ = write!(
        out,
        "<article class=\"app state-{class}\" data-app=\"{name}\"><h2>{name} \
         <span class=\"badge\">{}</span></h2><dl>",
        escape(&state)
    );
    match &app.live {
        Some(live) => {
            let checked = match live.outcome {
                Outcome::Verified | Outcome::RolledBack => "<span class=\"ok\">verified</span>",
                Outcome::Unhealthy => "<span class=\"bad\">unhealthy</span>",
                _ => "<span class=\"unchecked\">not checked</span>",
            };
            let _ = write!(
                out,
                "<dt>Live</dt><dd><span class=\"file\">{}</span> · <code>{}</code> · \
                 deployment <code>{}</code> · <time>{}</time> · {checked}</dd>",
                escape(&live.file),
                escape(live.git_ref.as_deref().unwrap_or("-")),
                escape(live.deployment_id.as_deref().unwrap_or("-")),
                escape(&live.time),
            );
        }
        None => out.push_str("<dt>Live</dt><dd>nothing deployed yet</dd>"),
    }
    match app.next.first() {
        Some(next) => {
            let more = app.next.len() - 1;
            let _ = write!(
                out,
                "<dt>Next</dt><dd><span class=\"file\">{}</span>, waiting {}{}</dd>",
                escape(&next.file),
                ago(view.now, next.since),
                if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                }
            );
        }
        None => out.push_str("<dt>Next</dt><dd>nothing waits</dd>"),
    }
    out.push_str("</dl>");
    if let Some(job) = &app.now.job {
        job_now(out, job, view.now);
    }
    if !app.last.is_empty() {
        out.push_str("<h3>Last outcomes</h3>");
        timeline(out, &app.last, false);
    }
    actions(out, app, view.can_act);
    out.push_str("</article>\n");
}

fn job_now(out: &mut String, job: &JobNow, now: Timestamp) {
    let _ = write!(
        out,
        "<div class=\"job\"><p>{}<span class=\"file\">{}</span> · <code>{}</code>",
        if job.rollback { "rollback: " } else { "" },
        escape(&job.file),
        escape(&job.git_ref)
    );
    if let Some(id) = &job.deployment_id {
        let _ = write!(out, " · deployment <code>{}</code>", escape(id));
    }
    let _ = write!(
        out,
        " · for {}</p>",
        ago(now, job.since).trim_end_matches(" ago")
    );
    if let Some((sent, total)) = job.upload {
        let _ = write!(
            out,
            "<p>uploading <progress max=\"{total}\" value=\"{sent}\"></progress> {} of {}</p>",
            crate::human::bytes(sent),
            crate::human::bytes(total)
        );
    }
    if let Some(error) = &job.retrying {
        let _ = write!(out, "<p class=\"retrying\">retrying: {}</p>", escape(error));
    }
    if !job.probes.is_empty() {
        out.push_str("<ol class=\"probes\">");
        for probe in &job.probes {
            let class = if probe.starts_with("healthy") {
                "ok"
            } else {
                "bad"
            };
            let _ = write!(out, "<li class=\"{class}\">{}</li>", escape(probe));
        }
        out.push_str("</ol>");
    }
    let _ = write!(
        out,
        "<pre class=\"log\" data-job=\"{}\" data-count=\"{}\">",
        escape(&job.id),
        job.lines_total
    );
    for line in &job.lines {
        let _ = writeln!(out, "<span>{}</span>", escape(line));
    }
    out.push_str("</pre></div>");
}

/// Outcomes as rows with a bar as long as the job took (against the longest shown).
fn timeline(out: &mut String, entries: &[HistoryEntry], with_app: bool) {
    if entries.is_empty() {
        out.push_str("<p class=\"empty\">No outcome recorded yet.</p>");
        return;
    }
    let longest = entries
        .iter()
        .map(|e| e.duration_ms)
        .max()
        .unwrap_or(1)
        .max(1);
    out.push_str("<ol class=\"timeline\">");
    for e in entries {
        let took = crate::human::duration(std::time::Duration::from_millis(e.duration_ms));
        let width = (e.duration_ms as f64 / longest as f64 * 100.0).max(1.0);
        let reason = e.reason.as_deref().unwrap_or("");
        let _ = write!(
            out,
            "<li class=\"o-{}\" title=\"{}\"><time>{}</time>",
            e.outcome.name(),
            escape(&format!("{} {}: {}", e.outcome, e.file, reason)),
            escape(e.time.get(5..19).unwrap_or(&e.time)).replace('T', " "),
        );
        if with_app {
            let _ = write!(out, "<span class=\"app-name\">{}</span>", escape(&e.app));
        }
        let _ = write!(
            out,
            "<span class=\"outcome\">{}</span>\
             <svg class=\"bar\" viewBox=\"0 0 100 10\" preserveAspectRatio=\"none\" role=\"img\">\
             <title>{}</title><rect width=\"{width:.1}\" height=\"10\"></rect></svg>\
             <span class=\"took\">{}</span><span class=\"file\">{}</span>",
            e.outcome.name().replace('_', " "),
            escape(&took),
            escape(&took),
            escape(&e.file)
        );
        if !e.outcome.is_success() && !reason.is_empty() {
            let _ = write!(
                out,
                "<details><summary>why</summary><p>{}</p></details>",
                escape(reason)
            );
        }
        out.push_str("</li>");
    }
    out.push_str("</ol>");
}

fn waits(out: &mut String, waits: &[Wait], now: Timestamp) {
    out.push_str("<section class=\"waits\"><h2>Waits</h2>");
    if waits.is_empty() {
        out.push_str("<p class=\"empty\">The daemon waits on nothing.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>App</th><th>What</th><th>On</th><th>Why</th><th>Since</th>\
         <th>Next try</th></tr></thead><tbody>",
    );
    for w in waits {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&w.app),
            escape(w.kind.label()),
            escape(&w.subject),
            escape(&w.cause),
            ago(now, w.since),
            w.retry_at
                .map(|at| format!("in {}", in_secs(at.saturating_sub(now))))
                .unwrap_or_else(|| "-".to_string())
        );
    }
    out.push_str("</tbody></table></section>\n");
}

fn actions(out: &mut String, app: &AppView, can_act: bool) {
    if !can_act || !app.configured {
        return;
    }
    let name = escape(&app.name);
    let token = "<input type=\"password\" name=\"token\" placeholder=\"intake token\" \
                 autocomplete=\"current-password\" required>";
    out.push_str("<div class=\"actions\">");
    if app.attention.is_some() {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/actions/resume\"><input type=\"hidden\" \
             name=\"app\" value=\"{name}\">{token}<button>Resume</button></form>"
        );
    }
    if let Some(next) = app.next.first() {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/actions/discard\"><input type=\"hidden\" \
             name=\"app\" value=\"{name}\"><input type=\"hidden\" name=\"job\" value=\"{}\">\
             {token}<button>Discard the next job</button></form>",
            escape(&next.job)
        );
    }
    if !app.kept.is_empty() {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/actions/rollback\"><input type=\"hidden\" \
             name=\"app\" value=\"{name}\"><select name=\"to\">"
        );
        for k in &app.kept {
            let _ = write!(
                out,
                "<option value=\"{}\">{} ({})</option>",
                escape(&k.job),
                escape(&k.git_ref),
                escape(&k.file)
            );
        }
        let _ = write!(out, "</select>{token}<button>Roll back</button></form>");
    }
    out.push_str("</div>");
}

/// `12 s ago`, `3 min ago`.
fn ago(now: Timestamp, then: Timestamp) -> String {
    format!("{} ago", in_secs(now.saturating_sub(then)))
}

fn in_secs(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::{AppNow, Queued};

    fn entry(file: &str, outcome: Outcome, ms: u64, reason: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            time: "2026-12-07T21:40:12Z".into(),
            app: "my-app".into(),
            job: "j".into(),
            file: file.into(),
            git_ref: Some("my-app-1".into()),
            outcome,
            deployment_id: Some("d-1".into()),
            reason: reason.map(str::to_string),
            duration_ms: ms,
            ..HistoryEntry::default()
        }
    }

    #[test]
    fn every_outside_text_is_escaped_and_redacted() {
        let hostile = "<img src=x onerror=alert(1)><script>alert(2)</script>\"'.tar.gz";
        let token = "tk-us-abcdefghijklmnopqrstuvwxyz0123456789abcdefghij";
        let view = View {
            apps: vec![AppView {
                name: "my-app".into(),
                configured: true,
                live: Some(entry(hostile, Outcome::Verified, 1000, None)),
                last: vec![
                    entry(
                        hostile,
                        Outcome::Failed,
                        3000,
                        Some(&format!("<b>{token}</b>")),
                    ),
                    entry("a.tar.gz", Outcome::Verified, 1000, None),
                ],
                now: AppNow::default(),
                next: vec![Queued {
                    app: "my-app".into(),
                    job: "j2".into(),
                    file: hostile.into(),
                    since: 0,
                }],
                attention: None,
                kept: Vec::new(),
            }],
            history: vec![entry(hostile, Outcome::Failed, 10, Some("x"))],
            waits: Vec::new(),
            budgets: Vec::new(),
            can_act: false,
            now: 100,
        };
        let html = render(&view);
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(!html.contains("abcdefghijklmnop"), "{html}");
        assert!(
            !html.contains("style="),
            "inline styles break the CSP: {html}"
        );
        assert!(!html.contains("<script>"), "inline scripts break the CSP");
        // A failure's bar, three times as long as the success's, and its reason.
        assert!(html.contains("<rect width=\"100.0\""), "{html}");
        assert!(html.contains("<rect width=\"33.3\""), "{html}");
        assert!(html.contains("<details><summary>why</summary>"), "{html}");
        assert!(!html.contains("action=\"/actions"), "read-only: no forms");
    }
}
