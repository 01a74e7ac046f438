//! The `[intake]` tokens that allow actions, compared in constant time, and the small parsing
//! a form post needs. A token is never logged, never shown, never echoed in an answer.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::Secret;

/// The tokens that allow actions; none: the page is read-only.
#[derive(Default)]
pub struct Tokens {
    /// SHA-256 of each token: compared digest to digest, in constant time, so that neither a
    /// token's bytes nor its length show in the time an answer takes.
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.digests.len())
    }
}

impl Tokens {
    /// The tokens of `token_file` (one per line; blank lines and `#` comments skipped) and of
    /// `from_env` (`DROPDEPLOY_INTAKE_TOKEN`). Blocking (reads the file). An error names the
    /// file and the cause, never a token.
    pub fn load(token_file: Option<&Path>, from_env: Option<Secret>) -> Result<Tokens, String> {
        let mut tokens = Tokens::default();
        if let Some(path) = token_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "cannot read the intake token file {} (token_file in [intake]): {e}",
                    path.display()
                )
            })?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    tokens.add(line);
                }
            }
            if tokens.digests.is_empty() {
                return Err(format!(
                    "the intake token file {} (token_file in [intake]) holds no token",
                    path.display()
                ));
            }
        }
        if let Some(secret) = from_env {
            tokens.add(secret.expose());
        }
        Ok(tokens)
    }

    fn add(&mut self, token: &str) {
        self.digests.push(Sha256::digest(token.as_bytes()).into());
    }

    /// Whether any token is configured (else every action is refused).
    pub fn any(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `given` is one of the tokens. Every configured token is compared, each in
    /// constant time.
    pub fn allows(&self, given: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let mut found = false;
        for known in &self.digests {
            found |= constant_time_eq(known, &digest);
        }
        found && !given.is_empty()
    }
}

/// Equality of two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The fields of an `application/x-www-form-urlencoded` body, decoded.
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let key = decode(parts.next().unwrap_or_default());
            let value = decode(parts.next().unwrap_or_default());
            (key, value)
        })
        .collect()
}

/// `+` as a space and `%XX` as its byte; a broken escape is kept as written.
fn decode(text: &[u8]) -> String {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < text.len() => {
                match std::str::from_utf8(&text[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_the_file_and_the_environment_and_only_they_allow() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# operators\nalpha-token\n\n  beta-token  \n").unwrap();
        let tokens = Tokens::load(Some(&file), Some(Secret::new("gamma"))).unwrap();
        assert!(tokens.any());
        for good in ["alpha-token", "beta-token", "gamma"] {
            assert!(tokens.allows(good), "{good}");
        }
        for bad in ["", "alpha", "alpha-token ", "# operators", "delta"] {
            assert!(!tokens.allows(bad), "{bad:?}");
        }
        assert!(!Tokens::load(None, None).unwrap().any());
        assert!(!Tokens::default().allows(""));
        std::fs::write(&file, "# none\n").unwrap();
        let empty = Tokens::load(Some(&file), None).unwrap_err();
        assert!(empty.contains("holds no token"), "{empty}");
        let missing = Tokens::load(Some(&dir.path().join("nope")), None).unwrap_err();
        assert!(missing.contains("nope"), "{missing}");
        assert!(!format!("{tokens:?}").contains("alpha"));
    }

    #[test]
    fn form_bodies_are_decoded() {
        let fields = form_fields(b"app=my-app&to=a%2Bb+c&token=t%3D1&bad=%zz&end=%4");
        assert_eq!(
            fields,
            [
                ("app".to_string(), "my-app".to_string()),
                ("to".to_string(), "a+b c".to_string()),
                ("token".to_string(), "t=1".to_string()),
                ("bad".to_string(), "%zz".to_string()),
                ("end".to_string(), "%4".to_string()),
            ]
        );
    }
}
