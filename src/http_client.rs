//! Outgoing HTTP clients, all on one TLS stack: rustls with the `ring` provider.
//!
//! `kube`, `reqwest`, `object_store`, the simulated cluster's server and `rcgen` all use rustls
//! with `ring` (the `aws-lc-rs` provider built a large C library on every cold build; see
//! `docs/BENCHMARKS.md`). `reqwest` is built without a provider of its own, so the process-wide
//! default must be installed before its first client is built: every client of the crate comes
//! from [`builder`], which installs it once.

use std::sync::Once;

/// Installs `ring` as the process's default rustls provider, once; a provider installed
/// earlier (by the embedding program) is kept.
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    // Fails only when a provider is installed already, which is then kept.
    INSTALL.call_once(|| drop(rustls::crypto::ring::default_provider().install_default()));
}

/// A `reqwest` client builder, with the crypto provider in place.
#[allow(clippy::disallowed_methods)] // the one place allowed to: it installs the provider first
pub fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// A `reqwest` client with the default settings.
///
/// # Panics
///
/// When the TLS backend cannot be initialised, as `reqwest::Client::new` does; no input from
/// outside the process reaches it.
pub fn client() -> reqwest::Client {
    builder().build().unwrap_or_else(|e| panic!("initialising the HTTP client's TLS backend: {e}"))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_client_builds_and_the_provider_is_ring() {
        let client = super::builder().https_only(true).build();
        assert!(client.is_ok(), "{client:?}");
        let provider = rustls::crypto::CryptoProvider::get_default();
        let Some(provider) = provider else { panic!("no provider installed") };
        let ring = rustls::crypto::ring::default_provider();
        let names = |p: &rustls::crypto::CryptoProvider| {
            p.cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect::<Vec<_>>()
        };
        assert_eq!(names(provider), names(&ring));
    }
}
