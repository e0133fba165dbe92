//! X.509-SVID validation: the SPIFFE rules for a leaf, plus a chain to the trust bundle.
//!
//! Stricter than ztunnel: a leaf with more than one URI SAN is refused.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::bundle::TrustBundle;
use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Signature algorithms accepted on chain certificates: ECDSA (what nodemesh issues), plus RSA
/// and Ed25519 for roots supplied by an operator.
static CHAIN_ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::aws_lc_rs::ECDSA_P256_SHA256,
    webpki::aws_lc_rs::ECDSA_P256_SHA384,
    webpki::aws_lc_rs::ECDSA_P384_SHA256,
    webpki::aws_lc_rs::ECDSA_P384_SHA384,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::aws_lc_rs::ED25519,
];

/// Which side of a TLS handshake the SVID is presented by; selects the required extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidUsage {
    /// The peer is a TLS server (EKU serverAuth, if EKUs are present).
    Server,
    /// The peer is a TLS client (EKU clientAuth, if EKUs are present).
    Client,
}

/// Why a certificate chain is not a valid X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    /// No certificate was presented.
    #[error("no certificate presented")]
    EmptyChain,
    /// The leaf is not parsable DER X.509.
    #[error("leaf certificate is malformed: {0}")]
    Malformed(String),
    /// The leaf has no URI SAN.
    #[error("leaf has no URI SAN (an SVID carries exactly one SPIFFE ID)")]
    NoUriSan,
    /// The leaf has more than one URI SAN.
    #[error("leaf has {0} URI SANs (an SVID carries exactly one SPIFFE ID)")]
    MultipleUriSans(usize),
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    BadSpiffeId {
        /// The URI as found.
        uri: String,
        /// Why it is invalid.
        reason: SpiffeIdError,
    },
    /// The leaf is a CA certificate.
    #[error("leaf is a CA certificate (basicConstraints CA:true)")]
    LeafIsCa,
    /// The leaf has no key usage extension, or it lacks digitalSignature.
    #[error("leaf key usage lacks digitalSignature")]
    MissingDigitalSignature,
    /// The leaf may sign certificates or CRLs.
    #[error("leaf key usage has keyCertSign or cRLSign")]
    ForbiddenKeyUsage,
    /// The current time is after the leaf's notAfter.
    #[error("certificate expired at {not_after} (unix seconds)")]
    Expired {
        /// notAfter, in unix seconds.
        not_after: i64,
    },
    /// The current time is before the leaf's notBefore.
    #[error("certificate is not valid before {not_before} (unix seconds)")]
    NotYetValid {
        /// notBefore, in unix seconds.
        not_before: i64,
    },
    /// The chain does not lead to a root of the trust bundle (or a signature is bad).
    #[error("chain does not verify against the trust bundle: {0}")]
    Untrusted(String),
    /// The SPIFFE ID's trust domain is not the one required.
    #[error("trust domain {actual:?} is not the expected {expected:?}")]
    WrongTrustDomain {
        /// The trust domain required.
        expected: String,
        /// The trust domain presented.
        actual: String,
    },
    /// The SPIFFE ID is not the one required.
    #[error("peer identity {actual} is not the expected {expected}")]
    UnexpectedIdentity {
        /// The identity required.
        expected: String,
        /// The identity presented.
        actual: String,
    },
}

/// The facts of a leaf certificate that passed the SPIFFE leaf rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    /// The SPIFFE ID in the single URI SAN.
    pub id: SpiffeId,
    /// Start of the validity window.
    pub not_before: SystemTime,
    /// End of the validity window.
    pub not_after: SystemTime,
    /// The serial number, colon-separated hex.
    pub serial: String,
}

impl SvidInfo {
    /// The moment half of the lifetime has passed: when renewal is due.
    pub fn half_life(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime / 2
    }
}

/// Checks the SPIFFE leaf rules (one URI SAN with a valid SPIFFE ID, not a CA, digitalSignature,
/// no certificate signing) and returns the identity and validity window. Does not check the chain
/// or the time.
pub fn inspect_leaf(leaf: &CertificateDer<'_>) -> Result<SvidInfo, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let mut uris = Vec::new();
    let mut is_ca = false;
    let mut key_usage = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                uris.extend(san.general_names.iter().filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                }));
            }
            ParsedExtension::BasicConstraints(bc) => is_ca = bc.ca,
            ParsedExtension::KeyUsage(ku) => key_usage = Some(*ku),
            _ => {}
        }
    }
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [one] => *one,
        many => return Err(SvidError::MultipleUriSans(many.len())),
    };
    let id = SpiffeId::new(uri).map_err(|reason| SvidError::BadSpiffeId {
        uri: uri.to_owned(),
        reason,
    })?;
    if is_ca {
        return Err(SvidError::LeafIsCa);
    }
    match key_usage {
        Some(ku) if ku.key_cert_sign() || ku.crl_sign() => {
            return Err(SvidError::ForbiddenKeyUsage);
        }
        Some(ku) if ku.digital_signature() => {}
        _ => return Err(SvidError::MissingDigitalSignature),
    }
    let validity = cert.validity();
    Ok(SvidInfo {
        id,
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
        serial: cert.tbs_certificate.raw_serial_as_string(),
    })
}

/// Validates a presented chain (leaf first) as an X.509-SVID at time `now`: the leaf rules, the
/// validity window, and a chain to one of the bundle's roots. Returns the leaf's facts.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
    usage: SvidUsage,
) -> Result<SvidInfo, SvidError> {
    let (leaf, intermediates) = chain.split_first().ok_or(SvidError::EmptyChain)?;
    let info = inspect_leaf(leaf)?;
    if now < info.not_before {
        return Err(SvidError::NotYetValid {
            not_before: unix_seconds(info.not_before),
        });
    }
    if now > info.not_after {
        return Err(SvidError::Expired {
            not_after: unix_seconds(info.not_after),
        });
    }
    let ee = EndEntityCert::try_from(leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let eku = match usage {
        SvidUsage::Server => KeyUsage::server_auth(),
        SvidUsage::Client => KeyUsage::client_auth(),
    };
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    ee.verify_for_usage(
        CHAIN_ALGORITHMS,
        bundle.anchors(),
        intermediates,
        UnixTime::since_unix_epoch(since_epoch),
        eku,
        None,
        None,
    )
    .map_err(|e| SvidError::Untrusted(e.to_string()))?;
    Ok(info)
}

fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
