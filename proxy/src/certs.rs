//! Certificates of the workloads on this node: fetched from the CA when a workload appears,
//! renewed at half-life, forgotten when it leaves. The trust bundle (`ca.rootCert`) is re-read
//! when it changes, so a rotated root reaches the proxy.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use nodemesh_ca::CaClient;
use nodemesh_identity::{
    Backoff, BundleWatch, CertificateIssuer, Clock, CredentialStore, Credentials, SpiffeId,
    TrustBundle, run_renewal,
};
use rustls::crypto::CryptoProvider;
use tokio::sync::{Mutex, watch};
use tokio::task::AbortHandle;

/// Lifetime asked of the CA (it may clamp).
pub const REQUESTED_LIFETIME: Duration = Duration::from_secs(86_400);

/// How to reach the CA.
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// `https://host:port`.
    pub address: String,
    /// This node's bearer token.
    pub token: String,
    /// Where the token is re-read from when it rotates (a projected ServiceAccount token);
    /// `None` keeps `token` for good.
    pub token_file: Option<PathBuf>,
}

/// The current CA client, rebuilt when the trust bundle changes.
#[derive(Debug)]
struct ClientSlot {
    settings: CaSettings,
    /// The token in use (it may have rotated since start).
    token: ArcSwap<String>,
    /// The bundle PEM in use.
    bundle_pem: ArcSwap<String>,
    client: ArcSwap<CaClient>,
}

/// Asks the current CA client for one identity's certificate.
struct SlotIssuer {
    slot: Arc<ClientSlot>,
    identity: SpiffeId,
}

impl CertificateIssuer for SlotIssuer {
    async fn issue(
        &self,
        csr_pem: String,
    ) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
        let client = self.slot.client.load_full();
        let seconds = i64::try_from(REQUESTED_LIFETIME.as_secs()).unwrap_or(i64::MAX);
        Ok(client
            .create_certificate(csr_pem, seconds, Some(&self.identity))
            .await?)
    }
}

/// Why certificates cannot be managed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The trust bundle file is unreadable.
    #[error("trust bundle {path}: {source}")]
    BundleRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The trust bundle file holds no usable roots.
    #[error("trust bundle {path}: {source}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: nodemesh_identity::BundleError,
    },
    /// The CA settings are invalid.
    #[error(transparent)]
    Client(#[from] nodemesh_ca::ClientError),
    /// The token file is unreadable.
    #[error("CA token {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Certificates of this node's workloads.
pub struct CertManager {
    stores: ArcSwap<HashMap<SpiffeId, Arc<CredentialStore>>>,
    tasks: Mutex<HashMap<SpiffeId, AbortHandle>>,
    slot: Arc<ClientSlot>,
    bundle_file: PathBuf,
    bundle: watch::Sender<Arc<TrustBundle>>,
    provider: Arc<CryptoProvider>,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("identities", &self.stores.load().len())
            .finish_non_exhaustive()
    }
}

fn read_bundle(path: &PathBuf) -> Result<(String, TrustBundle), CertError> {
    let pem = std::fs::read_to_string(path).map_err(|source| CertError::BundleRead {
        path: path.clone(),
        source,
    })?;
    let bundle = TrustBundle::from_pem(&pem).map_err(|source| CertError::Bundle {
        path: path.clone(),
        source,
    })?;
    Ok((pem, bundle))
}

impl CertManager {
    /// A manager for the CA in `settings`, trusting the bundle in `bundle_file`.
    pub fn new(
        settings: CaSettings,
        bundle_file: PathBuf,
        clock: Arc<dyn Clock>,
        backoff: Backoff,
    ) -> Result<Self, CertError> {
        let (pem, bundle) = read_bundle(&bundle_file)?;
        let client = CaClient::new(&settings.address, &pem, &settings.token)?;
        Ok(Self {
            stores: ArcSwap::from_pointee(HashMap::new()),
            tasks: Mutex::new(HashMap::new()),
            slot: Arc::new(ClientSlot {
                token: ArcSwap::from_pointee(settings.token.clone()),
                bundle_pem: ArcSwap::from_pointee(pem),
                settings,
                client: ArcSwap::from_pointee(client),
            }),
            bundle_file,
            bundle: watch::Sender::new(Arc::new(bundle)),
            provider: nodemesh_identity::crypto_provider(),
            clock,
            backoff,
        })
    }

    /// The trust bundle peers are verified against; follows the file.
    pub fn bundle(&self) -> BundleWatch {
        self.bundle.subscribe()
    }

    /// Re-reads the trust bundle; a bad file is refused and the old bundle kept.
    pub fn reload_bundle(&self) -> Result<bool, CertError> {
        let (pem, bundle) = read_bundle(&self.bundle_file)?;
        if bundle.roots() == self.bundle.borrow().roots() {
            return Ok(false);
        }
        let client = CaClient::new(&self.slot.settings.address, &pem, &self.slot.token.load())?;
        self.slot.client.store(Arc::new(client));
        self.slot.bundle_pem.store(Arc::new(pem));
        self.bundle.send_replace(Arc::new(bundle));
        Ok(true)
    }

    /// Re-reads the token file (when configured); a changed token replaces the CA client.
    pub fn reload_token(&self) -> Result<bool, CertError> {
        let Some(path) = &self.slot.settings.token_file else {
            return Ok(false);
        };
        let token = std::fs::read_to_string(path)
            .map_err(|source| CertError::Token {
                path: path.clone(),
                source,
            })?
            .trim()
            .to_owned();
        if token.is_empty() || **self.slot.token.load() == token {
            return Ok(false);
        }
        let client = CaClient::new(
            &self.slot.settings.address,
            &self.slot.bundle_pem.load(),
            &token,
        )?;
        self.slot.client.store(Arc::new(client));
        self.slot.token.store(Arc::new(token));
        Ok(true)
    }

    /// Starts renewal for identities in `wanted` that have none, and forgets the others.
    pub async fn reconcile(&self, wanted: &HashSet<SpiffeId>) {
        let mut tasks = self.tasks.lock().await;
        let mut stores = HashMap::clone(&self.stores.load());
        tasks.retain(|id, handle| {
            let keep = wanted.contains(id);
            if !keep {
                handle.abort();
                stores.remove(id);
                tracing::info!(identity = %id, "workload left: certificate forgotten");
            }
            keep
        });
        for id in wanted {
            if tasks.contains_key(id) {
                continue;
            }
            let store = Arc::new(CredentialStore::new(id.clone()));
            stores.insert(id.clone(), Arc::clone(&store));
            let issuer = SlotIssuer {
                slot: Arc::clone(&self.slot),
                identity: id.clone(),
            };
            let task = tokio::spawn(run_renewal(
                store,
                issuer,
                Arc::clone(&self.provider),
                Arc::clone(&self.clock),
                self.backoff,
            ));
            tasks.insert(id.clone(), task.abort_handle());
        }
        self.stores.store(Arc::new(stores));
    }

    /// The credential store of `id`, if it is a workload of this node.
    pub fn store(&self, id: &SpiffeId) -> Option<Arc<CredentialStore>> {
        self.stores.load().get(id).cloned()
    }

    /// The valid credentials of `id` now, if any.
    pub fn credentials(&self, id: &SpiffeId) -> Option<Arc<Credentials>> {
        self.store(id)?.valid_at(self.clock.now())
    }

    /// Every managed identity with its current credentials (if any).
    pub fn all(&self) -> Vec<(SpiffeId, Option<Arc<Credentials>>)> {
        let mut all: Vec<_> = self
            .stores
            .load()
            .iter()
            .map(|(id, store)| (id.clone(), store.current()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether every managed identity has valid credentials.
    pub fn all_ready(&self) -> bool {
        let now = self.clock.now();
        self.stores
            .load()
            .values()
            .all(|s| s.valid_at(now).is_some())
    }

    /// The clock certificates are checked against.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}
