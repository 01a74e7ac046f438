//! Reading answers: every body within a bound, JSON that must be UTF-8, and redirects
//! followed by hand so that an error names the URL that failed.

use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION};
use serde::de::DeserializeOwned;

use super::{ApiError, MAX_REDIRECTS, ScalingoClient, display_url, http_error, shorten};
use crate::config::Secret;
use crate::human::bytes as human_size;

/// `4294967296 bytes (4.0 GiB) announced, …` or `more than …`: why an answer was not read.
pub(super) fn too_large_text(declared: Option<u64>, limit: u64) -> String {
    match declared {
        Some(n) => format!(
            "{n} bytes ({}) announced, more than the {} read at most",
            human_size(n),
            human_size(limit)
        ),
        None => format!(
            "more than the {} read at most (reading stopped there)",
            human_size(limit)
        ),
    }
}

/// The first `limit` bytes of a body at most (what came before an error, if one comes).
pub(super) async fn read_some(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit
        && let Ok(Some(chunk)) = response.chunk().await
    {
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    body
}

/// A success answer's body, `limit` bytes at most: a longer one is [`ApiError::TooLarge`]
/// (refused at once when its `Content-Length` says so, else once `limit` bytes came). A
/// broken or slow body is the request's error, naming the URL that answered.
pub(crate) async fn read_body(
    what: &'static str,
    mut response: reqwest::Response,
    limit: usize,
    started: Instant,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    let url = response.url().to_string();
    let declared = response.content_length();
    let too_large = || ApiError::TooLarge {
        what,
        url: display_url(&url),
        limit: limit as u64,
        declared,
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| http_error(what, &url, e, started, timeout))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON answer decoded as `T`. Text that is not UTF-8 is a garbled answer (transient), not
/// one to read with replacement characters: a `status` read so would end the job for good.
pub(crate) fn decode_json<T: DeserializeOwned>(
    what: &'static str,
    body: &[u8],
) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::Decode {
        what,
        detail: format!(
            "the answer is not UTF-8 text ({e}): {}",
            shorten(&String::from_utf8_lossy(body), 200)
        ),
    })?;
    serde_json::from_str(text).map_err(|e| ApiError::Decode {
        what,
        detail: format!("{e} in {}", shorten(text, 200)),
    })
}

impl ScalingoClient {
    /// Sends one request and follows its redirects by hand (at most [`MAX_REDIRECTS`]), so
    /// that an error names the URL that failed, not the first one. The bearer goes only to the
    /// origin of `url`; a 303 (or a 301 or 302 after a POST) is followed with a GET and no body,
    /// as browsers and reqwest do. The whole chain shares the call's time limit.
    pub(super) async fn send_following(
        &self,
        what: &'static str,
        mut method: reqwest::Method,
        url: &str,
        mut body: Option<&serde_json::Value>,
        bearer: &Secret,
        started: Instant,
    ) -> Result<reqwest::Response, ApiError> {
        let origin = reqwest::Url::parse(url).ok().map(|u| u.origin());
        let mut target = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let left = self.timeout.saturating_sub(started.elapsed());
            let mut request = self
                .http
                .request(method.clone(), &target)
                .header(ACCEPT, "application/json")
                .timeout(left.max(Duration::from_millis(1)));
            let same_origin = reqwest::Url::parse(&target)
                .ok()
                .is_some_and(|u| Some(u.origin()) == origin);
            if same_origin {
                request = request.header(AUTHORIZATION, format!("Bearer {}", bearer.expose()));
            }
            if let Some(body) = body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string());
            }
            let response = request
                .send()
                .await
                .map_err(|e| http_error(what, &target, e, started, self.timeout))?;
            let status = response.status();
            if !status.is_redirection() || status == reqwest::StatusCode::NOT_MODIFIED {
                return Ok(response);
            }
            let next = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| response.url().join(l).ok());
            let Some(next) = next else {
                return Err(ApiError::Decode {
                    what,
                    detail: format!(
                        "HTTP {status} from {} without a usable Location header",
                        display_url(&target)
                    ),
                });
            };
            let to_get = status == reqwest::StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && method == reqwest::Method::POST);
            if to_get {
                method = reqwest::Method::GET;
                body = None;
            }
            target = next.to_string();
        }
        Err(ApiError::Decode {
            what,
            detail: format!(
                "more than {MAX_REDIRECTS} redirects, the last to {}",
                display_url(&target)
            ),
        })
    }
}
