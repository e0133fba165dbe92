//! rustls configurations for HBONE, built once per identity (server) or identity pair (client)
//! and cached. Each config resolves its certificate through the workload's credential store, so
//! a renewed certificate is used by the next handshake without rebuilding anything.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use nodemesh_identity::{SpiffeId, TrustDomain, WatchedCertResolver, client_config, server_config};
use rustls::{ClientConfig, ServerConfig};

use crate::certs::CertManager;

/// The ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS config cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The identity is not a workload of this node (no certificate here).
    #[error("no certificate for {0} on this node")]
    NoCertificate(SpiffeId),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

type ClientKey = (SpiffeId, SpiffeId);

/// Cached HBONE TLS configs.
#[derive(Debug)]
pub struct TlsConfigs {
    certs: Arc<CertManager>,
    trust_domain: TrustDomain,
    // Touched once per new connection, never per byte; the write lock is held only to insert.
    servers: RwLock<HashMap<SpiffeId, Arc<ServerConfig>>>,
    clients: RwLock<HashMap<ClientKey, Arc<ClientConfig>>>,
}

impl TlsConfigs {
    /// Configs for the workloads `certs` manages, accepting clients of `trust_domain`.
    pub fn new(certs: Arc<CertManager>, trust_domain: TrustDomain) -> Self {
        Self {
            certs,
            trust_domain,
            servers: RwLock::new(HashMap::new()),
            clients: RwLock::new(HashMap::new()),
        }
    }

    /// The server config presenting `identity`'s certificate.
    pub fn server(&self, identity: &SpiffeId) -> Result<Arc<ServerConfig>, TlsError> {
        if let Some(c) = self
            .servers
            .read()
            .ok()
            .and_then(|m| m.get(identity).cloned())
        {
            return Ok(c);
        }
        let store = self
            .certs
            .store(identity)
            .ok_or_else(|| TlsError::NoCertificate(identity.clone()))?;
        let mut config = server_config(
            nodemesh_identity::crypto_provider(),
            Arc::new(WatchedCertResolver::new(store.subscribe())),
            self.trust_domain.clone(),
            self.certs.bundle(),
        )?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let config = Arc::new(config);
        if let Ok(mut m) = self.servers.write() {
            m.insert(identity.clone(), Arc::clone(&config));
        }
        Ok(config)
    }

    /// The client config presenting `source`'s certificate and requiring `destination`.
    pub fn client(
        &self,
        source: &SpiffeId,
        destination: &SpiffeId,
    ) -> Result<Arc<ClientConfig>, TlsError> {
        let key = (source.clone(), destination.clone());
        if let Some(c) = self.clients.read().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(c);
        }
        let store = self
            .certs
            .store(source)
            .ok_or_else(|| TlsError::NoCertificate(source.clone()))?;
        let mut config = client_config(
            nodemesh_identity::crypto_provider(),
            Arc::new(WatchedCertResolver::new(store.subscribe())),
            destination.clone(),
            self.certs.bundle(),
        )?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.enable_sni = false;
        let config = Arc::new(config);
        if let Ok(mut m) = self.clients.write() {
            m.insert(key, Arc::clone(&config));
        }
        Ok(config)
    }

    /// The certificate `identity` presents on new connections right now.
    pub fn current_credentials(
        &self,
        identity: &SpiffeId,
    ) -> Option<Arc<nodemesh_identity::Credentials>> {
        self.certs.store(identity)?.current()
    }

    /// Forgets configs of identities no longer on this node.
    pub fn retain(&self, keep: impl Fn(&SpiffeId) -> bool) {
        if let Ok(mut m) = self.servers.write() {
            m.retain(|id, _| keep(id));
        }
        if let Ok(mut m) = self.clients.write() {
            m.retain(|(src, _), _| keep(src));
        }
    }
}
