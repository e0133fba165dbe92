//! rustls verifiers that check SPIFFE identities instead of DNS names.
//!
//! There is no SNI in HBONE, so the client pins the server's SPIFFE ID explicitly and the
//! `ServerName` rustls hands us is a placeholder. The server accepts any client of its trust domain
//! and leaves authorization to policy; [`peer_identity`] tells the caller who the client is.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use tokio::sync::watch;

use crate::bundle::TrustBundle;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{SvidError, SvidUsage, inspect_leaf, verify_svid};

/// The current trust bundle; a new value reaches every verifier holding a receiver.
pub type BundleWatch = watch::Receiver<Arc<TrustBundle>>;

/// The `ServerName` passed to rustls for HBONE connections: never sent (no SNI), never checked.
pub fn placeholder_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// The SPIFFE ID of the peer of a finished handshake, from its leaf certificate.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| inspect_leaf(leaf).ok())
        .map(|info| info.id)
}

fn rustls_error(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

fn system_time(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

/// Client side: the server must present a valid SVID for exactly the expected SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    expected: SpiffeId,
    bundle: BundleWatch,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    /// A verifier that accepts only `expected`, chained to the current bundle.
    pub fn new(expected: SpiffeId, bundle: BundleWatch, provider: Arc<CryptoProvider>) -> Self {
        Self {
            expected,
            bundle,
            provider,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let bundle = Arc::clone(&self.bundle.borrow());
        let info = verify_svid(&chain, &bundle, system_time(now), SvidUsage::Server)
            .map_err(rustls_error)?;
        if info.id != self.expected {
            return Err(rustls_error(SvidError::UnexpectedIdentity {
                expected: self.expected.to_string(),
                actual: info.id.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server side: the client must present a valid SVID of our trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    trust_domain: TrustDomain,
    bundle: BundleWatch,
    provider: Arc<CryptoProvider>,
}

impl SpiffeClientVerifier {
    /// A verifier that accepts any valid SVID of `trust_domain`, chained to the current bundle.
    pub fn new(
        trust_domain: TrustDomain,
        bundle: BundleWatch,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            trust_domain,
            bundle,
            provider,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let bundle = Arc::clone(&self.bundle.borrow());
        let info = verify_svid(&chain, &bundle, system_time(now), SvidUsage::Client)
            .map_err(rustls_error)?;
        if info.id.trust_domain_str() != self.trust_domain.as_str() {
            return Err(rustls_error(SvidError::WrongTrustDomain {
                expected: self.trust_domain.to_string(),
                actual: info.id.trust_domain_str().to_owned(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
