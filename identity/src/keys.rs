//! ECDSA P-256 key pairs and certificate signing requests for a SPIFFE ID.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::spiffe_id::SpiffeId;

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate {what}: {source}")]
pub struct KeyError {
    what: &'static str,
    #[source]
    source: rcgen::Error,
}

/// A fresh private key and the PEM CSR that asks for an SVID for one SPIFFE ID.
pub struct CsrBundle {
    /// The CSR, PEM-encoded, with the SPIFFE ID as its single URI SAN.
    pub csr_pem: String,
    /// The private key, PKCS#8 DER.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for CsrBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrBundle")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// Generates an ECDSA P-256 key pair.
pub fn generate_key() -> Result<KeyPair, KeyError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| KeyError {
        what: "ECDSA P-256 key",
        source,
    })
}

/// Generates a key and a CSR for `id`. The CSR carries only the URI SAN: the CA sets every other
/// field itself.
pub fn generate_csr(id: &SpiffeId) -> Result<CsrBundle, KeyError> {
    let key = generate_key()?;
    let csr_pem = csr_for_key(id, &key)?;
    Ok(CsrBundle {
        csr_pem,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    })
}

/// Builds the PEM CSR for `id` signed by `key`.
pub fn csr_for_key(id: &SpiffeId, key: &KeyPair) -> Result<String, KeyError> {
    let err = |source| KeyError {
        what: "CSR",
        source,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().map_err(err)?)];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(err)
}
