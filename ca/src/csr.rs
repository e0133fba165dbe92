//! CSR checks (sans-IO): what a requester may ask for, and nothing else.
//!
//! Only two things are taken from a CSR: its ECDSA P-256 public key (after the CSR's own signature
//! proves possession) and its single URI SAN, the SPIFFE ID asked for. Every other field the CA
//! writes itself, so nothing can be smuggled in.

use nodemesh_identity::{SpiffeId, TrustDomain};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

/// The largest PEM CSR accepted, in bytes. A P-256 CSR is well under 1 KiB.
pub const MAX_CSR_LEN: usize = 16 * 1024;

/// Why a CSR is refused (gRPC `InvalidArgument`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// No CSR was sent.
    #[error("CSR is empty")]
    Empty,
    /// The CSR is larger than [`MAX_CSR_LEN`].
    #[error("CSR is {0} bytes, more than the {MAX_CSR_LEN} allowed")]
    TooLarge(usize),
    /// Not PEM, or not a PKCS#10 request.
    #[error("CSR is not a PEM PKCS#10 certificate request: {0}")]
    Malformed(String),
    /// The CSR's signature does not verify with its own key.
    #[error("CSR signature does not verify")]
    BadSignature,
    /// The key is not ECDSA P-256.
    #[error("CSR key must be ECDSA P-256")]
    UnsupportedKey,
    /// The CSR does not ask for exactly one URI SAN.
    #[error("CSR must carry exactly one URI SAN (the SPIFFE ID), found {0}")]
    UriSanCount(usize),
    /// The URI SAN is not a workload SPIFFE ID.
    #[error(
        "CSR URI SAN {uri:?} is not a SPIFFE ID of the form spiffe://<td>/ns/<ns>/sa/<sa>: {reason}"
    )]
    BadIdentity {
        /// The URI asked for.
        uri: String,
        /// Why it is refused.
        reason: String,
    },
    /// The identity belongs to another trust domain.
    #[error("CSR asks for trust domain {actual:?}, this CA serves {expected:?}")]
    WrongTrustDomain {
        /// The CA's trust domain.
        expected: String,
        /// The trust domain asked for.
        actual: String,
    },
}

/// A CSR that passed every check: the identity asked for and the key to certify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    /// The SPIFFE ID in the CSR's single URI SAN.
    pub identity: SpiffeId,
    /// The uncompressed P-256 public point.
    pub public_key: Vec<u8>,
}

/// Parses and checks a PEM CSR for `trust_domain`.
pub fn check_csr(pem: &str, trust_domain: &TrustDomain) -> Result<CheckedCsr, CsrError> {
    if pem.trim().is_empty() {
        return Err(CsrError::Empty);
    }
    if pem.len() > MAX_CSR_LEN {
        return Err(CsrError::TooLarge(pem.len()));
    }
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(
            "trailing bytes after the request".into(),
        ));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err(CsrError::UnsupportedKey);
    }
    let public_key = spki.subject_public_key.data.to_vec();

    let mut uris = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            uris.extend(san.general_names.iter().filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            }));
        }
    }
    let uri = match uris.as_slice() {
        [one] => *one,
        other => return Err(CsrError::UriSanCount(other.len())),
    };
    let bad = |reason: String| CsrError::BadIdentity {
        uri: uri.to_owned(),
        reason,
    };
    let identity = SpiffeId::new(uri).map_err(|e| bad(e.to_string()))?;
    identity.workload_parts().map_err(|e| bad(e.to_string()))?;
    if identity.trust_domain_str() != trust_domain.as_str() {
        return Err(CsrError::WrongTrustDomain {
            expected: trust_domain.to_string(),
            actual: identity.trust_domain_str().to_owned(),
        });
    }
    Ok(CheckedCsr {
        identity,
        public_key,
    })
}
