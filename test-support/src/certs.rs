//! [`TestCa`]: test certificates made on the fly with rcgen, a root per trust domain and leaves
//! with any flaw a test needs. No key is ever checked in.

use std::time::{Duration, SystemTime};

use nodemesh_identity::TrustBundle;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed root that signs test leaves.
pub struct TestCa {
    /// The root certificate.
    pub cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new root with common name `name`, valid from a day ago for ten years.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).unwrap().der().clone();
        Self {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// A trust bundle of this root alone.
    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_der(vec![self.cert.clone()]).unwrap()
    }

    /// Leaf parameters of a valid SVID for `id`, valid from an hour ago for a day.
    pub fn svid_params(id: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::hours(23);
        params
    }

    /// Signs a leaf built from `params`; returns the chain (leaf, root) and the leaf's key.
    pub fn sign(
        &self,
        params: CertificateParams,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        (
            vec![leaf, self.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    /// A valid SVID for `id`.
    pub fn svid(&self, id: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.sign(Self::svid_params(id))
    }

    /// Signs the public key of a PEM CSR as a valid SVID for its URI SAN, valid `lifetime` from `not_before`.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        not_before: SystemTime,
        lifetime: Duration,
    ) -> Vec<String> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        let mut params = Self::svid_params("spiffe://x/y");
        params.subject_alt_names = csr.params.subject_alt_names.clone();
        params.not_before = not_before.into();
        params.not_after = (not_before + lifetime).into();
        let leaf = params.signed_by(&csr.public_key, &self.issuer).unwrap();
        vec![leaf.pem()]
    }
}
