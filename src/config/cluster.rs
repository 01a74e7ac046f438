//! `[cluster]`: fleet mode, where the job store is the fleet's PostgreSQL. Built in pass 4
//! (the node, the lease, the poll, an inline `database_url`); the environment step then lets
//! `$DROPDEPLOY_DATABASE_URL` win, or reads `database_url_file` (a systemd credential, say).
//! The URL may hold a password: it is a [`Secret`], never quoted in a message.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::build::{duration_value, path_value};
use super::env::Env;
use super::raw::RawCluster;
use super::report::{Report, io_reason};
use super::{ClusterConfig, Secret};

/// The variable that gives the database's URL, over the file's `database_url`.
pub const ENV_DATABASE_URL: &str = "DROPDEPLOY_DATABASE_URL";
/// `lease` by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// `poll` by default.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);
/// The shortest `lease`: it is renewed every third of it, and a renewal is a round trip to
/// the database.
pub const MIN_LEASE: Duration = Duration::from_secs(3);
/// The longest node name (a host name's label length).
const MAX_NODE_NAME: usize = 64;

/// What `[cluster]` left for the environment step.
#[derive(Default)]
pub(super) struct LeftForCluster {
    /// `database_url_file`, read unless the environment gives the URL.
    url_file: Option<(PathBuf, Range<usize>)>,
    /// The `[cluster]` table's span, for "no database URL".
    span: Option<Range<usize>>,
    /// Whether the file gave `database_url` (even a bad one, reported already).
    url_given: bool,
}

/// Pass 4 of `[cluster]`.
pub(super) fn build_cluster(
    raw: &Spanned<RawCluster>,
    base: &Path,
    report: &mut Report<'_>,
) -> (Option<ClusterConfig>, LeftForCluster) {
    let span = raw.span();
    let raw = raw.get_ref();
    let lease = duration_value(&raw.lease, "lease", "cluster", DEFAULT_LEASE, false, report);
    let lease = match &raw.lease {
        Some(value) if lease < MIN_LEASE => {
            report.at(
                value.span(),
                format!(
                    "`lease` in [cluster] must be at least 3s (it is renewed every third of \
                     it), found \"{}\"",
                    value.get_ref().0
                ),
            );
            DEFAULT_LEASE
        }
        _ => lease,
    };
    let poll = duration_value(&raw.poll, "poll", "cluster", DEFAULT_POLL, false, report);
    if let Some(value) = &raw.poll
        && poll >= lease
    {
        report.at(
            value.span(),
            format!(
                "`poll` in [cluster] ({}) must be shorter than `lease` ({}): a lane whose \
                 holder died waits for the next poll after its lease ran out",
                crate::human::duration(poll),
                crate::human::duration(lease)
            ),
        );
    }
    let node = match &raw.node {
        Some(value) => match node_problem(value.get_ref()) {
            None => value.get_ref().clone(),
            Some(why) => {
                report.at(value.span(), format!("`node` in [cluster]: {why}"));
                String::new()
            }
        },
        None => default_node(Some(span.clone()), report),
    };
    let database_url = raw
        .database_url
        .as_ref()
        .and_then(|url| match url_problem(url.get_ref()) {
            None => Some(Secret::new(url.get_ref().trim())),
            Some(why) => {
                report.at(url.span(), format!("`database_url` in [cluster]: {why}"));
                None
            }
        });
    let url_file = raw.database_url_file.as_ref().and_then(|file| {
        if raw.database_url.is_some() {
            report.at(
                file.span(),
                "[cluster] takes `database_url` or `database_url_file`, not both",
            );
            return None;
        }
        path_value(file, "database_url_file", "cluster", base, report).map(|p| (p, file.span()))
    });
    let cluster = ClusterConfig {
        database_url,
        node,
        lease,
        poll,
    };
    let left = LeftForCluster {
        url_file,
        span: Some(span),
        url_given: raw.database_url.is_some(),
    };
    (Some(cluster), left)
}

/// The environment step of `[cluster]`: `$DROPDEPLOY_DATABASE_URL` wins over the file (and
/// alone puts the daemon in fleet mode, every other setting at its default); else
/// `database_url_file` is read. A `[cluster]` without any URL is an error.
pub(super) fn apply_cluster_env(
    cluster: &mut Option<ClusterConfig>,
    left: LeftForCluster,
    env: &Env,
    report: &mut Report<'_>,
) {
    if let Some(url) = env.get(ENV_DATABASE_URL) {
        match url_problem(url) {
            None => {
                let config = cluster.get_or_insert_with(|| ClusterConfig {
                    database_url: None,
                    node: default_node(None, report),
                    lease: DEFAULT_LEASE,
                    poll: DEFAULT_POLL,
                });
                config.database_url = Some(Secret::new(url));
            }
            Some(why) => report.env(ENV_DATABASE_URL, why),
        }
        return;
    }
    let Some(config) = cluster else {
        return;
    };
    if let Some((path, span)) = left.url_file {
        match read_url_file(&path) {
            Ok(url) => config.database_url = Some(url),
            Err(why) => report.at(span, why),
        }
        return;
    }
    if config.database_url.is_none()
        && !left.url_given
        && let Some(span) = left.span
    {
        report.at(
            span,
            format!(
                "[cluster] needs the fleet's database: `database_url` (postgres://…), \
                 `database_url_file` (a file holding it, e.g. a systemd credential) or \
                 ${ENV_DATABASE_URL}"
            ),
        );
    }
}

/// Why a database URL cannot be one, in words that never quote it (it may hold a password).
fn url_problem(url: &str) -> Option<String> {
    let url = url.trim();
    let scheme = url.starts_with("postgres://") || url.starts_with("postgresql://");
    // tokio-postgres also takes `host=… user=…` connection strings.
    let conninfo = !url.contains("://") && url.contains('=');
    if scheme || conninfo {
        return None;
    }
    Some(
        "not a PostgreSQL URL: expected postgres://user@host:port/database (with \
         ?sslmode=require for a managed database) or a `host=… dbname=…` string"
            .to_string(),
    )
}

/// Reads `database_url_file`: the whole file, trimmed, not empty, a database URL.
fn read_url_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read database_url_file {}: {}",
            path.display(),
            io_reason(&e)
        )
    })?;
    let url = text.trim();
    if url.is_empty() {
        return Err(format!(
            "database_url_file {} is empty; write the database's URL in it",
            path.display()
        ));
    }
    match url_problem(url) {
        None => Ok(Secret::new(url)),
        Some(why) => Err(format!("database_url_file {}: {why}", path.display())),
    }
}

/// Why `name` cannot name a node, if it cannot.
fn node_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| {
        format!(
            "\"{name}\" is not a node name: 1 to {MAX_NODE_NAME} letters, digits, '.', '_' or \
             '-' (default: the host name)"
        )
    })
}

/// This machine's host name, the default node name; a problem when there is none usable.
fn default_node(span: Option<Range<usize>>, report: &mut Report<'_>) -> String {
    let name = host_name();
    match name.as_deref().map(|n| (n, node_problem(n))) {
        Some((name, None)) => name.to_string(),
        _ => {
            let message = "this machine's host name cannot name a node: set `node` in [cluster]";
            match span {
                Some(span) => report.at(span, message),
                None => report.env(ENV_DATABASE_URL, message),
            }
            String::new()
        }
    }
}

/// The kernel's host name.
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}
