//! `dropdeploy push`: the CI side of the HTTP intake. Streams an archive to
//! `PUT /v1/apps/{app}/archives/{name}` with the token of `DROPDEPLOY_INTAKE_TOKEN`, and with
//! `--wait` follows `GET /v1/jobs/{id}` to the job's outcome.

use std::path::Path;
use std::time::Duration;

use super::{EXIT_FAILED, EXIT_GAVE_UP, EXIT_OK, EXIT_USAGE};

/// Tries of the upload when the connection fails or the daemon answers 5xx; each try carries
/// the same `Idempotency-Key`, so the daemon makes one job whatever happens.
const TRIES: u32 = 3;
/// Time between two looks at the job with `--wait`.
const POLL: Duration = Duration::from_secs(1);
/// The longest `--wait`: past it, push stops following (the job goes on) and exits 1.
const WAIT_AT_MOST: Duration = Duration::from_secs(6 * 3600);
/// The time limit of one request (an upload of a large archive included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Runs `push`; returns the exit status.
pub async fn push(to: &str, app: &str, file: &Path, wait: bool) -> u8 {
    let Ok(token) = std::env::var(crate::config::ENV_INTAKE_TOKEN) else {
        eprintln!(
            "dropdeploy: push needs the intake token in {}",
            crate::config::ENV_INTAKE_TOKEN
        );
        return EXIT_USAGE;
    };
    let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
        eprintln!("dropdeploy: {}: not a file name", file.display());
        return EXIT_USAGE;
    };
    let client = match crate::http::client_builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dropdeploy: cannot make an HTTP client: {e}");
            return EXIT_FAILED;
        }
    };
    let base = to.trim_end_matches('/');
    let url = format!(
        "{base}/v1/apps/{}/archives/{}",
        path_segment(app),
        path_segment(name)
    );
    let key = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        match send(&client, &url, &token, &key, file).await {
            Ok(answer) => break answer,
            Err(Sent::Retry(why)) if tries < TRIES => {
                eprintln!("dropdeploy: {why}; trying again");
                tokio::time::sleep(Duration::from_secs(2 * u64::from(tries))).await;
            }
            Err(Sent::Retry(why)) | Err(Sent::Refused(why)) => {
                eprintln!("dropdeploy: {app}: {} not accepted: {why}", file.display());
                return EXIT_FAILED;
            }
        }
    };
    let job = answer["job"].as_str().unwrap_or_default().to_string();
    let git_ref = answer["git_ref"].as_str().unwrap_or_default();
    println!("{app}: {name} accepted as job {job} (git_ref {git_ref})");
    if !wait {
        return EXIT_OK;
    }
    follow(&client, base, &token, app, &job).await
}

enum Sent {
    /// Worth another try (a broken connection, a 5xx).
    Retry(String),
    /// The daemon said no: trying again would not help.
    Refused(String),
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    key: &str,
    file: &Path,
) -> Result<serde_json::Value, Sent> {
    let opened = tokio::fs::File::open(file)
        .await
        .map_err(|e| Sent::Refused(format!("cannot read {}: {e}", file.display())))?;
    let length = opened
        .metadata()
        .await
        .map_err(|e| Sent::Refused(format!("cannot read {}: {e}", file.display())))?
        .len();
    let response = client
        .put(url)
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .header(reqwest::header::CONTENT_LENGTH, length)
        .body(reqwest::Body::from(opened))
        .send()
        .await
        .map_err(|e| Sent::Retry(format!("cannot reach the intake: {e}")))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.as_u16() == 202 {
        return Ok(body);
    }
    let why = format!(
        "{status}: {}",
        body["error"].as_str().unwrap_or("(no reason given)")
    );
    if status.is_server_error() {
        Err(Sent::Retry(why))
    } else {
        Err(Sent::Refused(why))
    }
}

/// Follows the job until its outcome is recorded; exits like `deploy`.
async fn follow(client: &reqwest::Client, base: &str, token: &str, app: &str, job: &str) -> u8 {
    let url = format!("{base}/v1/jobs/{job}");
    let deadline = tokio::time::Instant::now() + WAIT_AT_MOST;
    let mut last_state = String::new();
    while tokio::time::Instant::now() < deadline {
        let seen = client.get(&url).bearer_auth(token).send().await;
        let view: Option<serde_json::Value> = match seen {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        if let Some(view) = view {
            let state = view["state"].as_str().unwrap_or_default().to_string();
            if state != last_state {
                eprintln!("{app}: job {job}: {state}");
                last_state = state;
            }
            if let Some(outcome) = view["outcome"].as_str() {
                let reason = view["reason"].as_str().unwrap_or_default();
                println!("{app}: job {job}: {outcome}{}", tail(reason));
                return match outcome {
                    "succeeded" | "verified" | "rolled_back" => EXIT_OK,
                    _ if view["gave_up"].as_bool() == Some(true) => EXIT_GAVE_UP,
                    _ => EXIT_FAILED,
                };
            }
        }
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "dropdeploy: {app}: job {job} has no outcome after {}; it goes on in the daemon",
        humantime::format_duration(WAIT_AT_MOST)
    );
    EXIT_FAILED
}

/// `text` as one URL path segment: every byte but the unreserved ones percent-encoded.
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn tail(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_become_one_path_segment() {
        assert_eq!(super::path_segment("my-app_1.tar.gz"), "my-app_1.tar.gz");
        assert_eq!(super::path_segment("a b#?/.tgz"), "a%20b%23%3F%2F.tgz");
    }
}
