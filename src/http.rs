//! The one way an HTTP client is built: reqwest over rustls with the `ring` crypto provider.
//!
//! reqwest is compiled with `rustls-no-provider`, so a client built before a rustls provider
//! is installed panics. [`client_builder`] installs `ring` as the process-wide default first
//! (once), then hands out a builder with dropdeploy's `User-Agent`. Certificates are checked
//! as with reqwest's default TLS: rustls-platform-verifier, against the system's roots.

use std::sync::Once;

/// `User-Agent: dropdeploy/<version>`, sent by every client.
pub const USER_AGENT: &str = concat!("dropdeploy/", env!("CARGO_PKG_VERSION"));

/// A reqwest client builder with the `ring` provider installed and dropdeploy's `User-Agent`.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().user_agent(USER_AGENT)
}

/// Installs `ring` as rustls' process-wide default provider, unless one already is (an
/// embedder's, or the fake's in the tests: either is kept, since any provider will do).
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another provider was installed first: it is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_installed_provider_is_ring() {
        client_builder().build().expect("client builds");
        let provider = rustls::crypto::CryptoProvider::get_default().expect("a provider");
        // ring's random source is the unit struct `Ring` (aws-lc-rs's is `AwsLcRs`).
        assert_eq!(format!("{:?}", provider.secure_random), "Ring");
    }
}
