//! What the tests of the Kubernetes source share: a small cluster in the fake API and node-a's
//! source started against it.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use nodemesh_config::Ca;
use nodemesh_kube::mesh::MeshSettings;
use nodemesh_kube::watch::Retry;
use nodemesh_kube::{KubeSource, SourceOptions};
use nodemesh_state::MeshStore;
use nodemesh_test_support::kube::FakeApi;
use nodemesh_test_support::kube::objects::*;
use serde_json::json;

/// Two nodes (podCIDRs 10.1.1.0/24 and 10.1.2.0/24), the mesh namespace `shop` with `web-1`
/// (10.1.1.11, node-a) and `db-1` (10.1.2.21, node-b), `plain/other` (10.1.1.99, node-a), the
/// `db` Service and one policy.
pub fn cluster(api: &FakeApi) {
    api.put(NODES, node("node-a", "10.0.0.1", "10.1.1.0/24"));
    api.put(NODES, node("node-b", "10.0.0.2", "10.1.2.0/24"));
    api.put(
        NAMESPACES,
        namespace("shop", json!({"nodemesh.io/mesh": "enabled"})),
    );
    api.put(NAMESPACES, namespace("plain", json!({})));
    api.put(
        PODS,
        pod(
            "shop",
            "web-1",
            "web",
            "10.1.1.11",
            "node-a",
            json!({"app": "web"}),
        ),
    );
    api.put(
        PODS,
        pod(
            "shop",
            "db-1",
            "db",
            "10.1.2.21",
            "node-b",
            json!({"app": "db"}),
        ),
    );
    api.put(
        PODS,
        pod(
            "plain",
            "other",
            "default",
            "10.1.1.99",
            "node-a",
            json!({}),
        ),
    );
    api.put(SERVICES, service("shop", "db", "10.96.0.20", 5432, 5432));
    api.put(SLICES, slice("shop", "db", &["10.1.2.21"], &[], 5432));
    api.put(
        POLICIES,
        policy(
            "shop",
            "allow-web",
            json!({"selector": {"matchLabels": {"app": "db"}},
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}]}]}),
        ),
    );
}

/// The source of node-a's proxy, started and synced, with the podCIDR check on.
pub async fn start(api: &FakeApi, istio: bool) -> KubeSource {
    start_with(api, istio, true).await
}

/// The source of node-a's proxy, started and synced.
pub async fn start_with(api: &FakeApi, istio: bool, pod_cidr_check: bool) -> KubeSource {
    tokio::time::timeout(
        Duration::from_secs(10),
        KubeSource::start(api.client(), options(istio, pod_cidr_check)),
    )
    .await
    .expect("first sync in time")
    .expect("first sync")
}

/// The options of node-a's source: fast retries (50 ms to 200 ms) and a 10 ms debounce.
pub fn options(istio: bool, pod_cidr_check: bool) -> SourceOptions {
    SourceOptions {
        settings: MeshSettings {
            node: "node-a".into(),
            trust_domain: "cluster.local".parse().unwrap(),
            root_namespace: "nodemesh-system".into(),
            ca: Ca::new(
                "https://127.0.0.1:15012".parse().unwrap(),
                "/nonexistent/bundle.pem".into(),
            ),
            default_permissive: false,
            pod_cidr_check,
        },
        istio_policies: istio,
        retry: Retry {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        debounce: Duration::from_millis(10),
    }
}

/// An address.
pub fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// Whether the workload at `addr` is in the mesh; `None` when no workload has it.
pub fn in_mesh(store: &MeshStore, addr: &str) -> Option<bool> {
    let state = store.load();
    let w = state.workload(ip(addr))?;
    Some(state.in_mesh(w))
}
