//! Authentication: the API token is exchanged for a short-lived bearer token (a JWT), which is
//! cached (one cache per auth URL and API token in the process, shared by the clients of every
//! region) and exchanged again a few minutes before it expires, or when the API answers 401.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use tokio::sync::Mutex;

use super::api::{ApiError, MAX_ANSWER, http_error, read_body, read_error_response};
use super::budget::Budget;
use crate::config::Secret;

/// How long before its `exp` a bearer token is exchanged again.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// A bearer token and the moment it stops being accepted, on the monotonic clock: its
/// lifetime (`exp - iat`, both the platform's) counted from the exchange, so that neither a
/// clock that differs from the platform's nor one stepped since makes it look expired (which
/// would exchange again at every call).
#[derive(Clone)]
pub struct Bearer {
    pub token: Secret,
    pub expires: tokio::time::Instant,
}

/// Exchanges the API token for bearer tokens and caches the current one.
pub struct Authenticator {
    http: reqwest::Client,
    auth_url: String,
    api_token: Secret,
    timeout: Duration,
    /// Shared by every authenticator of the process for the same auth URL and API token (the
    /// clients of several regions, a command's look-up client): one exchange serves them all.
    cached: Arc<Mutex<Option<Bearer>>>,
    /// The exchange counts against the client's requests a minute like any other call.
    budget: std::sync::Arc<Budget>,
}

impl Authenticator {
    /// `auth_url` without a trailing slash, e.g. `https://auth.scalingo.com`.
    pub fn new(
        http: reqwest::Client,
        auth_url: String,
        api_token: Secret,
        timeout: Duration,
        budget: std::sync::Arc<Budget>,
    ) -> Self {
        Authenticator {
            http,
            cached: shared_cache(&auth_url, &api_token),
            api_token,
            timeout,
            auth_url,
            budget,
        }
    }

    /// When the cached bearer will be exchanged again (its `exp` less [`REFRESH_MARGIN`]), if
    /// one is cached: the deployments stream authenticates again then.
    pub async fn renewal_due(&self) -> Option<SystemTime> {
        let cached = self.cached.lock().await;
        cached.as_ref().map(|b| {
            let left = b
                .expires
                .saturating_duration_since(tokio::time::Instant::now())
                .saturating_sub(REFRESH_MARGIN);
            SystemTime::now() + left
        })
    }

    /// A bearer token valid for at least [`REFRESH_MARGIN`], exchanging the API token if needed.
    pub async fn bearer(&self) -> Result<Secret, ApiError> {
        let mut cached = self.cached.lock().await;
        if let Some(b) = cached.as_ref()
            && b.expires > tokio::time::Instant::now() + REFRESH_MARGIN
        {
            return Ok(b.token.clone());
        }
        let fresh = self.exchange().await?;
        let token = fresh.token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets the cached bearer token if it is still `rejected` (after a 401), so that the next
    /// call to [`Authenticator::bearer`] exchanges again.
    pub async fn invalidate(&self, rejected: &Secret) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|b| &b.token == rejected) {
            *cached = None;
        }
    }

    async fn exchange(&self) -> Result<Bearer, ApiError> {
        let url = format!("{}/v1/tokens/exchange", self.auth_url);
        let what = "token exchange";
        self.budget
            .acquire()
            .await
            .map_err(|source| ApiError::Budget { what, source })?;
        let started = Instant::now();
        let response = self
            .http
            .post(&url)
            .basic_auth("", Some(self.api_token.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("{}")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| http_error(what, &url, e, started, self.timeout))?;
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let err = read_error_response(what, response).await;
            self.budget.refused(err.retry_after()).await;
            return Err(err);
        }
        self.budget.answered();
        if !response.status().is_success() {
            let mut err = read_error_response(what, response).await;
            if let ApiError::Status {
                status: 401,
                message,
                ..
            } = &mut err
            {
                *message = format!(
                    "the API token was refused ({message}); check SCALINGO_API_TOKEN or the token_file"
                );
            }
            return Err(err);
        }
        #[derive(serde::Deserialize)]
        struct Exchanged {
            token: String,
        }
        let body = read_body(what, response, MAX_ANSWER, started, self.timeout).await?;
        let body: Exchanged = serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            what,
            detail: e.to_string(),
        })?;
        let lifetime = jwt_lifetime(&body.token).unwrap_or(Duration::from_secs(55 * 60));
        Ok(Bearer {
            token: Secret::new(body.token),
            expires: tokio::time::Instant::now() + lifetime,
        })
    }
}

type Caches = std::sync::Mutex<HashMap<(String, String), Arc<Mutex<Option<Bearer>>>>>;

/// The bearer cache of an auth URL and API token, made on first use.
fn shared_cache(auth_url: &str, api_token: &Secret) -> Arc<Mutex<Option<Bearer>>> {
    static CACHES: OnceLock<Caches> = OnceLock::new();
    let caches = CACHES.get_or_init(Default::default);
    let mut caches = match caches.lock() {
        Ok(c) => c,
        Err(poisoned) => poisoned.into_inner(),
    };
    caches
        .entry((auth_url.to_string(), api_token.expose().to_string()))
        .or_default()
        .clone()
}

/// Reads the `exp` claim of a JWT without checking its signature (the server checks it; the
/// client only needs to know when to exchange again).
pub fn jwt_expiry(jwt: &str) -> Option<SystemTime> {
    Some(UNIX_EPOCH + Duration::from_secs_f64(jwt_claim(jwt, "exp")?))
}

/// How long a JWT is valid from its issue: `exp - iat`, both by the platform's clock (without
/// `iat`: until `exp` by this machine's clock).
pub fn jwt_lifetime(jwt: &str) -> Option<Duration> {
    let exp = jwt_claim(jwt, "exp")?;
    let left = match jwt_claim(jwt, "iat") {
        Some(iat) => exp - iat,
        None => jwt_expiry(jwt)?
            .duration_since(SystemTime::now())
            .ok()?
            .as_secs_f64(),
    };
    (left.is_finite() && left >= 0.0).then(|| Duration::from_secs_f64(left))
}

/// A numeric claim of a JWT (seconds since the epoch), if it has a sane one.
fn jwt_claim(jwt: &str, name: &str) -> Option<f64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let value = claims.get(name)?.as_f64()?;
    (value.is_finite() && (0.0..1e12).contains(&value)).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(payload)
        )
    }

    #[test]
    fn expiry_is_read_from_the_payload() {
        let t = jwt(r#"{"iat":1700000000,"exp":1700003600,"sub":"u"}"#);
        assert_eq!(
            jwt_expiry(&t),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_003_600))
        );
    }

    #[test]
    fn the_lifetime_is_the_platforms_exp_less_iat_whatever_this_clock_says() {
        // Issued long ago by this machine's clock: still valid for its hour from the exchange.
        let t = jwt(r#"{"iat":1700000000,"exp":1700003600}"#);
        assert_eq!(jwt_lifetime(&t), Some(Duration::from_secs(3600)));
        assert_eq!(jwt_lifetime(&jwt(r#"{"iat":5,"exp":1}"#)), None);
        assert_eq!(jwt_lifetime(&jwt(r#"{"exp":1}"#)), None);
    }

    #[test]
    fn a_token_without_exp_or_garbled_has_no_expiry() {
        assert_eq!(jwt_expiry(&jwt(r#"{"iat":1}"#)), None);
        assert_eq!(jwt_expiry("not-a-jwt"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
    }
}
