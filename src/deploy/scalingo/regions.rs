//! Regions: a region's API URL comes from the platform, `GET {auth}/v1/regions` (each region's
//! `api` field), as both official clients read it. The list is cached for the process (per auth
//! URL, for an hour). A region the platform does not list is an error at once, naming the
//! valid ones, not a DNS failure retried for an hour. When the list cannot be had (the auth
//! service unreachable), the region's usual URL (`https://api.<region>.scalingo.com`) is used,
//! with a warning, so that a network hiccup at start does not stop a daemon.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::api::{ApiError, MAX_ANSWER, ScalingoClient, decode_json};

/// How long a fetched list is used before it is fetched again.
const CACHE_FOR: Duration = Duration::from_secs(3600);

/// One region as the platform lists it (other fields ignored, missing ones empty).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Region {
    #[serde(default, deserialize_with = "super::lenient::string")]
    pub name: String,
    #[serde(default, deserialize_with = "super::lenient::string")]
    pub api: String,
    /// The platform's default region (the official CLI takes it, else the first).
    #[serde(default, deserialize_with = "super::lenient::flag")]
    pub default: bool,
}

/// The region the platform marks `default`, else the first listed.
pub fn default_of(regions: &[Region]) -> Option<&Region> {
    regions
        .iter()
        .find(|r| r.default)
        .or_else(|| regions.first())
}

type Cache = Mutex<HashMap<String, (Instant, Vec<Region>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// `GET {auth}/v1/regions`, or the cached answer.
pub async fn list(client: &ScalingoClient) -> Result<Vec<Region>, ApiError> {
    let auth = client.auth_url().to_string();
    if let Ok(cached) = cache().lock()
        && let Some((at, regions)) = cached.get(&auth)
        && at.elapsed() < CACHE_FOR
    {
        return Ok(regions.clone());
    }
    #[derive(Deserialize)]
    struct Listed {
        #[serde(default)]
        regions: Vec<Region>,
    }
    let url = format!("{auth}/v1/regions");
    let what = "list regions";
    let body = client
        .call_bytes(what, reqwest::Method::GET, &url, None, MAX_ANSWER)
        .await?;
    let listed: Listed = decode_json(what, &body)?;
    if let Ok(mut cached) = cache().lock() {
        cached.insert(auth, (Instant::now(), listed.regions.clone()));
    }
    Ok(listed.regions)
}

/// The API URL of `region` in `regions`, or the error naming the valid ones.
pub fn find(regions: &[Region], region: &str) -> Result<String, ApiError> {
    match regions
        .iter()
        .find(|r| r.name == region && !r.api.is_empty())
    {
        Some(r) => Ok(r.api.trim_end_matches('/').to_string()),
        None => Err(ApiError::UnknownRegion {
            region: region.to_string(),
            known: regions.iter().map(|r| r.name.clone()).collect(),
        }),
    }
}

/// The API URL of `region`, for `client` (whose auth URL and token are used to ask).
pub async fn api_of(client: &ScalingoClient, region: &str) -> Result<String, ApiError> {
    match list(client).await {
        Ok(regions) => find(&regions, region),
        // A refused token is not a region problem: say so as it is.
        Err(e) if !e.is_transient() => Err(e),
        Err(e) => {
            let url = crate::config::region_api_url(region);
            tracing::warn!(
                region,
                api = %url,
                "cannot list the platform's regions ({e}); using the region's usual API URL"
            );
            Ok(url)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_found_by_name_or_the_error_lists_the_known_ones() {
        let regions: Vec<Region> = serde_json::from_str(
            r#"[{"name":"osc-fr1","api":"https://api.osc-fr1.scalingo.com/","default":true},
                {"name":"osc-secnum-fr1","api":"https://api.osc-secnum-fr1.scalingo.com"},
                {"display_name":"no name"}]"#,
        )
        .unwrap();
        assert_eq!(
            find(&regions, "osc-fr1").unwrap(),
            "https://api.osc-fr1.scalingo.com"
        );
        let err = find(&regions, "osc-de1").unwrap_err();
        assert!(!err.is_transient());
        let text = err.to_string();
        assert!(text.contains("invalid region \"osc-de1\""), "{text}");
        assert!(text.contains("osc-fr1, osc-secnum-fr1"), "{text}");
    }
}
