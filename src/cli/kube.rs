//! The Kubernetes wiring of `nodemesh proxy --source kubernetes`, `nodemesh ca serve --source
//! kubernetes` and `nodemesh crd`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use nodemesh_ca::{Callers, RootSource};
use nodemesh_identity::TrustDomain;
use nodemesh_kube::ca::{CallerRef, PodPlacement, RootStore, TokenReviewAuthenticator};
use nodemesh_kube::mesh::MeshSettings;
use nodemesh_kube::watch::Retry;
use nodemesh_kube::{KubeSource, SourceOptions};

/// A client from the in-cluster environment or the kubeconfig.
async fn client() -> Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or kubeconfig)")
}

/// What the proxy's Kubernetes source needs beyond the API.
pub struct ProxyKube {
    /// The mesh settings (node, trust domain, root namespace, CA).
    pub settings: MeshSettings,
    /// Follow Istio's policies too.
    pub istio_policies: bool,
    /// Publish this WireGuard public key on the Node.
    pub wireguard_public_key: Option<String>,
}

/// Starts the watchers and waits for the first full sync.
pub async fn proxy_source(k: ProxyKube) -> Result<KubeSource> {
    let client = client().await?;
    if let Some(key) = &k.wireguard_public_key {
        key.parse::<nodemesh_config::WireguardPublicKey>()
            .context("--wireguard-public-key")?;
        nodemesh_kube::node::publish_wireguard_key(client.clone(), &k.settings.node, key)
            .await
            .context("publishing the WireGuard public key on the Node")?;
    }
    eprintln!("nodemesh proxy: waiting for the first full sync with the Kubernetes API");
    let source = KubeSource::start(
        client,
        SourceOptions {
            settings: k.settings,
            istio_policies: k.istio_policies,
            retry: Retry::default(),
            debounce: Duration::from_millis(50),
        },
    )
    .await?;
    Ok(source)
}

/// What `ca serve --source kubernetes` needs.
pub struct CaKube {
    /// The CA's namespace.
    pub namespace: String,
    /// The private state directory.
    pub state_dir: PathBuf,
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Allowed callers.
    pub allowed: Vec<CallerRef>,
}

/// Sets up the root from the Secret, starts the pod index and returns the CA's root and callers.
pub async fn ca_callers(k: CaKube) -> Result<(RootSource, Callers)> {
    let client = client().await?;
    let store = RootStore {
        namespace: k.namespace,
        state_dir: k.state_dir,
    };
    let (root, origin) = store
        .ensure(client.clone(), &k.trust_domain, SystemTime::now())
        .await?;
    tracing::info!(
        ?origin,
        secret = nodemesh_kube::ca::ROOT_SECRET,
        "CA root ready"
    );
    let pods = Arc::new(PodPlacement::new(k.trust_domain.clone()));
    let follower = Arc::clone(&pods);
    let api = kube::Api::all(client.clone());
    tokio::spawn(async move { follower.follow(api).await });
    pods.wait_synced().await;
    tracing::info!(allowed = ?k.allowed.iter().map(ToString::to_string).collect::<Vec<_>>(), "pod index synced; serving");
    let authenticator = Arc::new(TokenReviewAuthenticator::new(client, k.allowed, pods));
    Ok((
        root,
        Callers::External {
            trust_domain: k.trust_domain,
            authenticator,
        },
    ))
}

/// Which CRD `nodemesh crd` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CrdKind {
    /// `authorizationpolicies.security.nodemesh.io` (in the chart's `crds/`).
    AuthorizationPolicy,
    /// `clusternetworkpolicies.policy.networking.k8s.io` (the chart's `files/`, installed on
    /// request).
    ClusterNetworkPolicy,
}

/// Prints a CRD the chart ships.
pub fn print_crd(kind: CrdKind) -> Result<()> {
    let yaml = match kind {
        CrdKind::AuthorizationPolicy => nodemesh_kube::crd::crd_yaml()?,
        CrdKind::ClusterNetworkPolicy => nodemesh_kube::crd::cluster_network_policy_crd_yaml()?,
    };
    print!("{yaml}");
    Ok(())
}
