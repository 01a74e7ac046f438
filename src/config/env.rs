//! The environment over the file, as in Scalingo's CLI: the region and URLs, and the API
//! token, read from the systemd credential, else `$SCALINGO_API_TOKEN`, else `token_file`.
//! The variables are captured in an [`Env`], so that tests need not touch the process's own.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::build::{base_url, is_region_name, region_message};
use super::report::{Report, io_reason};
use super::{Config, Secret, region_api_url};

/// The environment variables read, as in Scalingo's CLI. The token's is public: commands
/// that dropdeploy runs (hooks, activate) never inherit it.
pub const ENV_TOKEN: &str = "SCALINGO_API_TOKEN";
/// A token that allows actions through the daemon's HTTP listener (`[intake]`), besides those
/// of `token_file`. Commands that dropdeploy runs never inherit it either.
pub const ENV_INTAKE_TOKEN: &str = "DROPDEPLOY_INTAKE_TOKEN";
const ENV_API_URL: &str = "SCALINGO_API_URL";
const ENV_AUTH_URL: &str = "SCALINGO_AUTH_URL";
const ENV_REGION: &str = "SCALINGO_REGION";
/// Set by systemd for a unit with `LoadCredential=`: the directory of the unit's credentials.
const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
pub(super) const ENV_VARS: [&str; 7] = [
    ENV_TOKEN,
    ENV_INTAKE_TOKEN,
    super::cluster::ENV_DATABASE_URL,
    ENV_API_URL,
    ENV_AUTH_URL,
    ENV_REGION,
    ENV_CREDENTIALS_DIRECTORY,
];
/// The systemd credential that holds the API token (`LoadCredential=scalingo-token:…`).
const TOKEN_CREDENTIAL: &str = "scalingo-token";

/// The platform's documentation writes these variables as bare hosts
/// (`https://$SCALINGO_API_URL/v1`): one without a scheme is taken as https.
fn with_scheme(value: &str) -> String {
    let value = value.trim();
    if value.contains("://") || value.is_empty() {
        value.to_string()
    } else {
        format!("https://{value}")
    }
}

/// The environment variables the configuration reads, captured once. Its `Debug` shows the
/// names only, never the values.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    /// The variables of this process (only those the configuration reads).
    pub fn from_process() -> Self {
        Env::from_pairs(
            ENV_VARS
                .iter()
                .filter_map(|name| std::env::var(name).ok().map(|value| (*name, value))),
        )
    }

    /// A given set of variables, for tests and for callers that build their own.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The same variables with `name` set to `value` (a command-line flag standing for it).
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    /// A variable's value, trimmed; an unset or blank variable is `None` (as in Scalingo's CLI,
    /// an empty value does not override).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.vars.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

/// A `token_file` as configured: its resolved path and the span of its value.
pub(super) type TokenFile = (PathBuf, Range<usize>);

/// What the file said that the environment step still needs.
#[derive(Default)]
pub(super) struct LeftForEnv {
    /// The token file, read only if the environment holds no token.
    pub(super) token_file: Option<TokenFile>,
    /// Whether the file named a region (else the region is only a default).
    pub(super) region_given: bool,
    /// What `[cluster]` left: its `database_url_file`.
    pub(super) cluster: super::cluster::LeftForCluster,
}

/// Applies the environment over the file, then finds the token: the systemd credential
/// `$CREDENTIALS_DIRECTORY/scalingo-token` when that file exists, else `$SCALINGO_API_TOKEN`,
/// else the token file (a source that is not used is not read at all).
pub(super) fn apply_env(
    config: &mut Config,
    left: LeftForEnv,
    env: &Env,
    report: &mut Report<'_>,
    warnings: &mut Vec<String>,
) {
    super::cluster::apply_cluster_env(&mut config.cluster, left.cluster, env, report);
    let s = &mut config.scalingo;
    let env_region = env.get(ENV_REGION);
    if let Some(region) = env_region {
        if is_region_name(region) {
            s.region = Some(region.to_string());
            s.api_url = region_api_url(region);
            s.api_url_explicit = false;
        } else {
            report.env(ENV_REGION, region_message(region));
        }
    }
    if let Some(api_url) = env.get(ENV_API_URL) {
        match base_url(&with_scheme(api_url)) {
            Ok(url) => {
                s.api_url = url;
                s.api_url_explicit = true;
                if env_region.is_none() && !left.region_given {
                    s.region = None;
                }
            }
            Err(why) => report.env(ENV_API_URL, why),
        }
    }
    if let Some(auth_url) = env.get(ENV_AUTH_URL) {
        match base_url(&with_scheme(auth_url)) {
            Ok(url) => s.auth_url = url,
            Err(why) => report.env(ENV_AUTH_URL, why),
        }
    }

    if let Some(dir) = env.get(ENV_CREDENTIALS_DIRECTORY) {
        let path = Path::new(dir).join(TOKEN_CREDENTIAL);
        if std::fs::symlink_metadata(&path).is_ok() {
            // systemd makes the credential private to the unit: no mode warning applies.
            match read_token_file(&path, &mut Vec::new()) {
                Ok(token) => {
                    s.token = Some(token);
                    s.token_origin = Some(format!("systemd credential {TOKEN_CREDENTIAL}"));
                }
                Err(why) => report.env(ENV_CREDENTIALS_DIRECTORY, why),
            }
            return;
        }
    }
    if let Some(token) = env.get(ENV_TOKEN) {
        s.token = Some(Secret::new(token));
        s.token_origin = Some(format!("${ENV_TOKEN}"));
        return;
    }
    let Some((path, span)) = left.token_file else {
        return;
    };
    match read_token_file(&path, warnings) {
        Ok(token) => {
            s.token = Some(token);
            s.token_origin = Some(path.display().to_string());
        }
        Err(why) => report.at(span, why),
    }
}

/// Reads a token file: the whole file, whitespace trimmed, not empty. A file that group or
/// others can read is used, with a warning.
fn read_token_file(path: &Path, warnings: &mut Vec<String>) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read token file {}: {}",
            path.display(),
            io_reason(&e)
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "token file {} is empty; write the Scalingo API token in it",
            path.display()
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                warnings.push(format!(
                    "token file {} can be read by group or others (mode {mode:04o}); \
                     run `chmod 600 {}`",
                    path.display(),
                    path.display()
                ));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = warnings;
    Ok(Secret::new(token))
}
