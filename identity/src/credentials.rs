//! A workload's current certificate and key, rotated through a `tokio::sync::watch` channel.
//!
//! The store writes; TLS configs hold a [`CredentialsWatch`] and resolve the newest credentials
//! on each handshake, so new connections pick up a renewed certificate while old ones finish.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::spiffe_id::SpiffeId;
use crate::svid::{SvidError, SvidInfo, inspect_leaf};

/// Why a certificate chain and key do not make usable credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The chain is empty or not PEM.
    #[error("certificate chain is malformed: {0}")]
    Chain(String),
    /// The leaf breaks the SVID rules.
    #[error("leaf is not an SVID: {0}")]
    Svid(#[from] SvidError),
    /// The leaf is for another identity than the one asked for.
    #[error("certificate is for {actual}, not {expected}")]
    WrongIdentity {
        /// The identity asked for.
        expected: String,
        /// The identity in the certificate.
        actual: String,
    },
    /// The private key is unusable or does not match the leaf.
    #[error("private key is unusable or does not match the certificate: {0}")]
    Key(rustls::Error),
}

/// A certificate chain (leaf first) with its private key, ready for rustls.
#[derive(Debug)]
pub struct Credentials {
    info: SvidInfo,
    certified: Arc<CertifiedKey>,
}

impl Credentials {
    /// Checks that `chain` is an SVID for `expected` whose leaf matches `key`.
    pub fn new(
        expected: &SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        provider: &CryptoProvider,
    ) -> Result<Self, CredentialsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| CredentialsError::Chain("empty chain".into()))?;
        let info = inspect_leaf(leaf)?;
        if &info.id != expected {
            return Err(CredentialsError::WrongIdentity {
                expected: expected.to_string(),
                actual: info.id.to_string(),
            });
        }
        let certified =
            CertifiedKey::from_der(chain, key, provider).map_err(CredentialsError::Key)?;
        Ok(Self {
            info,
            certified: Arc::new(certified),
        })
    }

    /// Like [`Credentials::new`], from PEM certificates (one or more per string, leaf first).
    pub fn from_pem(
        expected: &SpiffeId,
        chain_pem: &[String],
        key: PrivateKeyDer<'static>,
        provider: &CryptoProvider,
    ) -> Result<Self, CredentialsError> {
        let mut chain = Vec::new();
        for pem in chain_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(cert.map_err(|e| CredentialsError::Chain(e.to_string()))?);
            }
        }
        Self::new(expected, chain, key, provider)
    }

    /// The SPIFFE ID the certificate carries.
    pub fn id(&self) -> &SpiffeId {
        &self.info.id
    }

    /// Identity and validity window of the leaf.
    pub fn info(&self) -> &SvidInfo {
        &self.info
    }

    /// The chain and signing key in rustls form.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// Whether the leaf is inside its validity window at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.info.not_before <= now && now <= self.info.not_after
    }
}

/// Receives the newest credentials of one workload (`None` until the first are issued).
pub type CredentialsWatch = watch::Receiver<Option<Arc<Credentials>>>;

/// Holds one workload's current credentials and announces replacements.
#[derive(Debug)]
pub struct CredentialStore {
    id: SpiffeId,
    tx: watch::Sender<Option<Arc<Credentials>>>,
}

impl CredentialStore {
    /// An empty store for `id`.
    pub fn new(id: SpiffeId) -> Self {
        Self {
            id,
            tx: watch::Sender::new(None),
        }
    }

    /// The identity this store holds credentials for.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The current credentials, if any (possibly expired: see [`CredentialStore::valid_at`]).
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.tx.borrow().clone()
    }

    /// The current credentials if they are valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> Option<Arc<Credentials>> {
        self.current().filter(|c| c.is_valid_at(now))
    }

    /// Installs new credentials; every subscriber sees them on its next handshake.
    pub fn replace(&self, creds: Arc<Credentials>) {
        self.tx.send_replace(Some(creds));
    }

    /// A receiver of the current and future credentials.
    pub fn subscribe(&self) -> CredentialsWatch {
        self.tx.subscribe()
    }
}

/// A rustls certificate resolver (client and server side) serving the newest credentials.
#[derive(Debug, Clone)]
pub struct WatchedCertResolver(CredentialsWatch);

impl WatchedCertResolver {
    /// Resolves certificates from `watch`.
    pub fn new(watch: CredentialsWatch) -> Self {
        Self(watch)
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0
            .borrow()
            .as_ref()
            .map(|c| Arc::clone(c.certified_key()))
    }
}

impl rustls::client::ResolvesClientCert for WatchedCertResolver {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.0.borrow().is_some()
    }
}

impl rustls::server::ResolvesServerCert for WatchedCertResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}
