//! Trust bundles: the CA roots a peer's chain must lead to.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

/// Why a trust bundle could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The PEM text holds no certificate.
    #[error("trust bundle holds no certificate")]
    Empty,
    /// The PEM text could not be decoded.
    #[error("trust bundle PEM is malformed: {0}")]
    Pem(String),
    /// A certificate in the bundle cannot serve as a trust anchor.
    #[error("trust bundle certificate #{index} is not a usable root: {reason}")]
    BadRoot {
        /// Position of the certificate in the bundle, from 0.
        index: usize,
        /// What webpki said.
        reason: String,
    },
}

/// One or more root certificates (two during a root rotation) that SVID chains must lead to.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Builds a bundle from DER root certificates.
    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::BadRoot {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { roots, anchors })
    }

    /// Builds a bundle from concatenated PEM certificates.
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleError::Pem(e.to_string()))?;
        Self::from_der(roots)
    }

    /// The root certificates, oldest first as given.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The bundle as concatenated PEM.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|c| der_to_pem(c)).collect()
    }
}

/// Encodes one DER certificate as PEM.
pub fn der_to_pem(der: &CertificateDer<'_>) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.as_ref()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Encodes a PKCS#8 private key as PEM (`PRIVATE KEY`); other key formats are refused.
pub fn private_key_to_pem(
    key: &rustls_pki_types::PrivateKeyDer<'_>,
) -> Result<String, BundleError> {
    match key {
        rustls_pki_types::PrivateKeyDer::Pkcs8(k) => Ok(pem::encode_config(
            &pem::Pem::new("PRIVATE KEY", k.secret_pkcs8_der()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        )),
        _ => Err(BundleError::Pem("only PKCS#8 keys are written".into())),
    }
}
