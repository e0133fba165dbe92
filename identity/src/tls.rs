//! rustls configurations for SPIFFE mutual TLS: TLS 1.3 only, aws-lc-rs, identities pinned.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, ServerConfig};

use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::verifier::{BundleWatch, SpiffeClientVerifier, SpiffeServerVerifier};

/// The one crypto provider nodemesh uses: aws-lc-rs.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs aws-lc-rs as the process-wide rustls provider (call once at start-up; later calls are
/// harmless). Libraries that build configs with `ClientConfig::builder()` then find exactly one.
pub fn install_default_provider() {
    let _already_installed = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A client config that presents the certificate `client_cert` resolves and accepts only a server
/// whose SVID carries `expected_server`.
pub fn client_config(
    provider: Arc<CryptoProvider>,
    client_cert: Arc<dyn ResolvesClientCert>,
    expected_server: SpiffeId,
    bundle: BundleWatch,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = SpiffeServerVerifier::new(expected_server, bundle, Arc::clone(&provider));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(client_cert);
    // Every connection is a full handshake: a resumed session would skip the peer's SVID checks.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A server config that presents the certificate `server_cert` resolves and requires a client SVID
/// of `trust_domain`.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    server_cert: Arc<dyn ResolvesServerCert>,
    trust_domain: TrustDomain,
    bundle: BundleWatch,
) -> Result<ServerConfig, rustls::Error> {
    let verifier = SpiffeClientVerifier::new(trust_domain, bundle, Arc::clone(&provider));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(server_cert);
    disable_resumption(&mut config);
    Ok(config)
}

/// Turns off session resumption on a server config: no session cache, no TLS 1.3 tickets, so every
/// client is verified by a full handshake.
pub fn disable_resumption(config: &mut ServerConfig) {
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod resumption_tests {
    use super::*;

    #[test]
    fn disable_resumption_drops_session_cache_and_tickets() {
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
        assert!(config.session_storage.can_cache());
        assert!(config.send_tls13_tickets > 0);
        disable_resumption(&mut config);
        assert!(!config.session_storage.can_cache());
        assert_eq!(config.send_tls13_tickets, 0);
    }
}
