//! Pass 4 for one `[[app]]` table: its name, its one source, its busy policy and timings, its
//! target and its hook. Every problem is reported; an app with any is left out of the config
//! (the load then fails on the report).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::build::{duration_value, path_value};
use super::on_outcome::build_hook;
use super::raw::{DurationText, RawApp, RawHook};
use super::report::Report;
use super::{
    AppConfig, DEFAULT_DEBOUNCE, DEFAULT_DEPLOY_TIMEOUT, DEFAULT_KEEP_DONE, DEFAULT_MAX_WAIT,
    DEFAULT_SETTLE, HookConfig, LocalTargetConfig, QueuePolicy, TargetConfig,
};

/// The longest `git_ref_label`: a git_ref becomes a Docker image tag (at most 128 characters),
/// and the job adds a 24-character suffix to the label.
pub(super) const MAX_GIT_REF_LABEL: usize = 100;

/// A problem was found and reported; the app it belongs to is left out.
struct Reported;

/// The names and drop folders of the apps built so far, which the next ones may not reuse.
#[derive(Default)]
pub(super) struct SeenApps {
    /// Each app name, with the line that declared it.
    names: HashMap<String, usize>,
    /// Each drop folder, with the app that watches it.
    drop_dirs: HashMap<PathBuf, String>,
}

/// One `[[app]]`, or `None` when it has problems (all of them reported).
pub(super) fn build_app(
    raw: &Spanned<RawApp>,
    base: &Path,
    report: &mut Report<'_>,
    seen: &mut SeenApps,
) -> Option<AppConfig> {
    let header = raw.span();
    let raw = raw.get_ref();
    let Some(name) = &raw.name else {
        report.at(
            header,
            "this [[app]] has no `name`; give the Scalingo app's name, e.g. name = \"my-app\"",
        );
        return None;
    };
    let named = check_app_name(name, report, &mut seen.names);
    let app = name.get_ref();
    let sources = app_sources(raw, app, header, base, report, &mut seen.drop_dirs);
    let queue = queue_policy(raw.queue.as_ref(), report);
    let git_ref_label = git_ref_label(raw.git_ref_label.as_ref(), report);
    let keep_done = keep_done(raw.keep_done.as_ref(), report);
    let timings = app_timings(raw, report);
    let target = build_target(raw, app, base, report);
    let on_outcome = app_hook(raw.on_outcome.as_ref(), report);
    let verify = raw
        .verify
        .as_ref()
        .map(|v| super::verify::build_verify(v, report))
        .transpose();
    let region = app_region(raw.region.as_ref(), report);

    // Every check above has run, so that all of the app's problems are reported.
    named.ok()?;
    let (drop_dir, source_dir) = sources.ok()?;
    let queue = queue.ok()?;
    let git_ref_label = git_ref_label.ok()?;
    let keep_done = keep_done.ok()?;
    let target = target.ok()?;
    let on_outcome = on_outcome.ok()?;
    let verify = verify.ok()?;
    let region = region.ok()?;
    // A path is taken on the app's URL, which only the platform knows.
    if let (TargetConfig::Local(_), Some(v), Some(raw_verify)) = (&target, &verify, &raw.verify)
        && v.url.starts_with('/')
    {
        report.at(
            raw_verify.span(),
            format!(
                "`url` in `verify` is a path (\"{}\"), which needs the app's URL on the \
                 platform; an app deployed to local releases needs a full http:// or https:// URL",
                v.url
            ),
        );
        return None;
    }
    Some(AppConfig {
        name: app.clone(),
        drop_dir,
        source_dir,
        queue,
        debounce: timings.debounce,
        ignore: raw.ignore.clone(),
        git_ref_label,
        settle: timings.settle,
        keep_done,
        follow_interval: timings.follow_interval,
        retry_budget: timings.retry_budget,
        deploy_timeout: timings.deploy_timeout,
        include: raw.include.clone(),
        max_wait: timings.max_wait,
        poll: timings.poll,
        deploy_on_start: raw.deploy_on_start.unwrap_or(true),
        target,
        on_outcome,
        verify,
        region,
    })
}

/// `region`: a region name (whether the platform knows it is asked when the client starts).
fn app_region(
    raw: Option<&Spanned<String>>,
    report: &mut Report<'_>,
) -> Result<Option<String>, Reported> {
    let Some(region) = raw else {
        return Ok(None);
    };
    if super::build::is_region_name(region.get_ref()) {
        return Ok(Some(region.get_ref().clone()));
    }
    report.at(
        region.span(),
        format!(
            "`region` in [[app]]: {}",
            super::build::region_message(region.get_ref())
        ),
    );
    Err(Reported)
}

/// An app's timings; a bad one is reported and does not leave the app out.
struct AppTimings {
    debounce: Duration,
    settle: Duration,
    follow_interval: Option<Duration>,
    retry_budget: Option<Duration>,
    deploy_timeout: Option<Duration>,
    max_wait: Duration,
    poll: Option<Duration>,
}

/// `debounce`, `settle`, `max_wait` and `poll` for the app's source, and the app's own
/// `follow_interval`, `retry_budget` and `deploy_timeout`.
fn app_timings(raw: &RawApp, report: &mut Report<'_>) -> AppTimings {
    AppTimings {
        debounce: debounce(raw, report),
        settle: duration_value(&raw.settle, "settle", "app", DEFAULT_SETTLE, true, report),
        follow_interval: optional_duration(
            &raw.follow_interval,
            "follow_interval",
            Duration::from_secs(3),
            report,
        ),
        retry_budget: optional_duration(
            &raw.retry_budget,
            "retry_budget",
            Duration::from_secs(3600),
            report,
        ),
        deploy_timeout: optional_duration(
            &raw.deploy_timeout,
            "deploy_timeout",
            DEFAULT_DEPLOY_TIMEOUT,
            report,
        ),
        max_wait: duration_value(
            &raw.max_wait,
            "max_wait",
            "app",
            DEFAULT_MAX_WAIT,
            false,
            report,
        ),
        poll: optional_duration(&raw.poll, "poll", Duration::from_secs(2), report),
    }
}

/// `debounce`, or its old name `quiet` with a warning naming its line; both at once is an
/// error, since they would disagree.
fn debounce(raw: &RawApp, report: &mut Report<'_>) -> Duration {
    match (&raw.debounce, &raw.quiet) {
        (Some(_), Some(old)) => {
            report.at(
                old.span(),
                "`quiet` and `debounce` in [[app]] are the same setting (`quiet` is its old \
                 name): keep only `debounce`",
            );
            DEFAULT_DEBOUNCE
        }
        (None, Some(old)) => {
            report.warn_at(
                old.span(),
                "`quiet` in [[app]] is now called `debounce`; rename it (`quiet` still works)",
            );
            duration_value(&raw.quiet, "quiet", "app", DEFAULT_DEBOUNCE, true, report)
        }
        _ => duration_value(
            &raw.debounce,
            "debounce",
            "app",
            DEFAULT_DEBOUNCE,
            true,
            report,
        ),
    }
}

/// `name`: a valid Scalingo app name, not declared by an earlier `[[app]]`. A name is recorded
/// at its first declaration, valid or not.
fn check_app_name(
    name: &Spanned<String>,
    report: &mut Report<'_>,
    seen_names: &mut HashMap<String, usize>,
) -> Result<(), Reported> {
    let mut result = Ok(());
    if !is_app_name(name.get_ref()) {
        report.at(
            name.span(),
            format!(
                "invalid app name \"{}\": a Scalingo app name is lowercase letters, digits and \
                 dashes, not starting with a dash",
                name.get_ref()
            ),
        );
        result = Err(Reported);
    }
    let here = report.line(name.span().start);
    if let Some(first) = seen_names.get(name.get_ref()) {
        report.at(
            name.span(),
            format!(
                "app `{}` is declared twice (first at line {first})",
                name.get_ref()
            ),
        );
        result = Err(Reported);
    } else {
        seen_names.insert(name.get_ref().clone(), here);
    }
    result
}

/// `drop_dir` and `source_dir`, resolved: exactly one of them, and a drop folder that no
/// earlier app watches.
fn app_sources(
    raw: &RawApp,
    app: &str,
    header: Range<usize>,
    base: &Path,
    report: &mut Report<'_>,
    seen_drop_dirs: &mut HashMap<PathBuf, String>,
) -> Result<(Option<PathBuf>, Option<PathBuf>), Reported> {
    let drop_dir = raw
        .drop_dir
        .as_ref()
        .and_then(|dir| path_value(dir, "drop_dir", "app", base, report));
    let source_dir = raw
        .source_dir
        .as_ref()
        .and_then(|dir| path_value(dir, "source_dir", "app", base, report));
    let one_source = check_one_source(raw, app, header, report);
    let own_folder = match (&drop_dir, &raw.drop_dir) {
        (Some(dir), Some(raw_dir)) => {
            check_own_drop_dir(dir, raw_dir.span(), app, report, seen_drop_dirs)
        }
        _ => Ok(()),
    };
    one_source.and(own_folder).map(|()| (drop_dir, source_dir))
}

/// An app takes its work from one place: `drop_dir` or `source_dir`, not both, not neither.
fn check_one_source(
    raw: &RawApp,
    app: &str,
    header: Range<usize>,
    report: &mut Report<'_>,
) -> Result<(), Reported> {
    match (&raw.drop_dir, &raw.source_dir) {
        (Some(drop), Some(source)) => {
            let later = if drop.span().start > source.span().start {
                drop.span()
            } else {
                source.span()
            };
            report.at(
                later,
                format!(
                    "app `{app}` has both drop_dir and source_dir; an app takes its work from one \
                     of them: declare a second [[app]] for the other"
                ),
            );
            Err(Reported)
        }
        (None, None) => {
            report.at(
                header,
                format!(
                    "app `{app}` has neither drop_dir nor source_dir; give one: drop_dir for a \
                     folder where archives are dropped, source_dir for a directory to pack and \
                     deploy"
                ),
            );
            Err(Reported)
        }
        _ => Ok(()),
    }
}

/// Two apps cannot share a drop folder; the first to name it keeps it.
fn check_own_drop_dir(
    dir: &Path,
    span: Range<usize>,
    app: &str,
    report: &mut Report<'_>,
    seen_drop_dirs: &mut HashMap<PathBuf, String>,
) -> Result<(), Reported> {
    if let Some(other) = seen_drop_dirs.get(dir) {
        report.at(
            span,
            format!(
                "drop_dir {} is already the drop folder of app `{other}`; two apps cannot \
                 share one",
                dir.display()
            ),
        );
        return Err(Reported);
    }
    seen_drop_dirs.insert(dir.to_path_buf(), app.to_string());
    Ok(())
}

/// `queue`: `"latest"` (the default) or `"all"`.
fn queue_policy(
    raw: Option<&Spanned<String>>,
    report: &mut Report<'_>,
) -> Result<QueuePolicy, Reported> {
    match raw.map(|q| (q.span(), q.get_ref().as_str())) {
        None | Some((_, "latest")) => Ok(QueuePolicy::Latest),
        Some((_, "all")) => Ok(QueuePolicy::All),
        Some((span, other)) => {
            report.at(
                span,
                format!("`queue` in [[app]] must be \"latest\" or \"all\", found \"{other}\""),
            );
            Err(Reported)
        }
    }
}

/// `git_ref_label`, when given: the start of a Docker image tag.
fn git_ref_label(
    raw: Option<&Spanned<String>>,
    report: &mut Report<'_>,
) -> Result<Option<String>, Reported> {
    match raw {
        Some(label) if !is_git_ref_label(label.get_ref()) => {
            report.at(
                label.span(),
                format!(
                    "invalid git_ref_label \"{}\": use letters, digits, '.', '_' and '-', not \
                     starting with '-' or '.', at most {MAX_GIT_REF_LABEL} characters",
                    label.get_ref()
                ),
            );
            Err(Reported)
        }
        Some(label) => Ok(Some(label.get_ref().clone())),
        None => Ok(None),
    }
}

/// `keep_done`: 0 or more (default 20).
fn keep_done(raw: Option<&Spanned<i64>>, report: &mut Report<'_>) -> Result<usize, Reported> {
    let Some(n) = raw else {
        return Ok(DEFAULT_KEEP_DONE);
    };
    usize::try_from(*n.get_ref()).map_err(|_| {
        report.at(
            n.span(),
            format!(
                "`keep_done` in [[app]] must be 0 or more (how many deployed archives \
                 done/ keeps), found {}",
                n.get_ref()
            ),
        );
        Reported
    })
}

/// An app's own duration that overrides a global one: `None` when not given. `fallback` only
/// stands in for a bad value, which is reported.
fn optional_duration(
    raw: &Option<Spanned<DurationText>>,
    key: &str,
    fallback: Duration,
    report: &mut Report<'_>,
) -> Option<Duration> {
    raw.as_ref()
        .map(|_| duration_value(raw, key, "app", fallback, false, report))
}

/// `target`: Scalingo (the default), whose app takes none of the local keys, or `"local"`.
fn build_target(
    raw: &RawApp,
    app: &str,
    base: &Path,
    report: &mut Report<'_>,
) -> Result<TargetConfig, Reported> {
    match raw
        .target
        .as_ref()
        .map(|t| (t.span(), t.get_ref().as_str()))
    {
        None | Some((_, "scalingo")) => {
            refuse_local_keys(raw, app, report).map(|()| TargetConfig::Scalingo)
        }
        Some((span, "local")) => {
            local_target(raw, app, span, base, report).map(TargetConfig::Local)
        }
        Some((span, other)) => {
            report.at(
                span,
                format!("`target` in [[app]] must be \"scalingo\" or \"local\", found \"{other}\""),
            );
            Err(Reported)
        }
    }
}

/// Each key of the local target, given to an app that deploys to Scalingo, is a mistake.
fn refuse_local_keys(raw: &RawApp, app: &str, report: &mut Report<'_>) -> Result<(), Reported> {
    let mut result = Ok(());
    for (present, key) in [
        (raw.releases_dir.as_ref().map(|v| v.span()), "releases_dir"),
        (raw.activate.as_ref().map(|v| v.span()), "activate"),
        (
            raw.keep_releases.as_ref().map(|v| v.span()),
            "keep_releases",
        ),
        (
            raw.activate_timeout.as_ref().map(|v| v.span()),
            "activate_timeout",
        ),
    ] {
        if let Some(span) = present {
            report.at(
                span,
                format!(
                    "`{key}` only applies to target = \"local\"; app `{app}` deploys to Scalingo"
                ),
            );
            result = Err(Reported);
        }
    }
    result
}

/// `target = "local"`: `releases_dir` (required), `activate`, `activate_timeout`,
/// `keep_releases`. `span` is the `target` value's.
fn local_target(
    raw: &RawApp,
    app: &str,
    span: Range<usize>,
    base: &Path,
    report: &mut Report<'_>,
) -> Result<LocalTargetConfig, Reported> {
    let releases_dir = match &raw.releases_dir {
        Some(dir) => path_value(dir, "releases_dir", "app", base, report),
        None => {
            report.at(
                span,
                format!(
                    "app `{app}` has target = \"local\" but no releases_dir; give the directory \
                     where its releases go, e.g. releases_dir = \"/srv/releases\""
                ),
            );
            None
        }
    };
    let activate = activate(raw.activate.as_ref(), report);
    let activate_timeout = duration_value(
        &raw.activate_timeout,
        "activate_timeout",
        "app",
        Duration::from_secs(60),
        false,
        report,
    );
    let keep_releases = keep_releases(raw.keep_releases.as_ref(), report);
    let (Some(releases_dir), Ok(activate), Ok(keep_releases)) =
        (releases_dir, activate, keep_releases)
    else {
        return Err(Reported);
    };
    Ok(LocalTargetConfig {
        releases_dir,
        activate,
        activate_timeout,
        keep_releases,
    })
}

/// `activate`: a command run after the switch, none by default; its program is not empty.
fn activate(
    raw: Option<&Spanned<Vec<String>>>,
    report: &mut Report<'_>,
) -> Result<Vec<String>, Reported> {
    let Some(argv) = raw else {
        return Ok(Vec::new());
    };
    if argv.get_ref().first().is_some_and(|c| c.trim().is_empty()) {
        report.at(argv.span(), "`activate` starts with an empty program name");
        return Err(Reported);
    }
    Ok(argv.get_ref().clone())
}

/// `keep_releases`: at least 1, the current release (default 5).
fn keep_releases(raw: Option<&Spanned<i64>>, report: &mut Report<'_>) -> Result<usize, Reported> {
    let Some(n) = raw else {
        return Ok(5);
    };
    match usize::try_from(*n.get_ref()) {
        Ok(n) if n >= 1 => Ok(n),
        _ => {
            report.at(
                n.span(),
                format!(
                    "`keep_releases` must be at least 1 (the current release), found {}",
                    n.get_ref()
                ),
            );
            Err(Reported)
        }
    }
}

/// The app's own `on_outcome`, when given.
fn app_hook(
    raw: Option<&Spanned<RawHook>>,
    report: &mut Report<'_>,
) -> Result<Option<HookConfig>, Reported> {
    match raw {
        Some(hook) => build_hook(hook, "app.on_outcome", report)
            .map(Some)
            .ok_or(Reported),
        None => Ok(None),
    }
}

/// Whether `name` is a Scalingo app name: lowercase letters, digits and dashes, not starting
/// with a dash (what `[[app]] name` and `--app` accept).
pub fn is_app_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub(super) fn is_git_ref_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_GIT_REF_LABEL
        && !label.starts_with(['-', '.'])
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
