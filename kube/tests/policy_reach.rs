//! Policy reaches open connections with the Kubernetes source: the real proxy fed by the fake
//! API, same-node calls between pods on loopback addresses. A DENY created through the API cuts
//! a running transfer within a second of the proxy taking it, and a deleted source pod loses its
//! connection, while a connection still allowed keeps running.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nodemesh_config::Ca;
use nodemesh_kube::mesh::MeshSettings;
use nodemesh_kube::watch::Retry;
use nodemesh_kube::{KubeSource, SourceOptions};
use nodemesh_proxy::{ProxyHandle, ProxyOptions, StateSource};
use nodemesh_test_support::kube::FakeApi;
use nodemesh_test_support::kube::objects::*;
use nodemesh_test_support::mesh::{ECHO, addr, dial, proxy_options, start_pod};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const WEB: &str = "127.78.1.11";
const LOCAL: &str = "127.78.1.12";
const API: &str = "127.78.1.13";

/// A transfer that runs until its connection is cut: echo rounds of 16 KiB, counted.
struct Transfer {
    rounds: Arc<AtomicU64>,
    ended: JoinHandle<Instant>,
}

fn transfer(mut s: TcpStream) -> Transfer {
    let rounds = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&rounds);
    let ended = tokio::spawn(async move {
        let data = vec![7u8; 16 * 1024];
        let mut back = vec![0u8; data.len()];
        loop {
            if s.write_all(&data).await.is_err() || s.read_exact(&mut back).await.is_err() {
                return Instant::now();
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    Transfer { rounds, ended }
}

impl Transfer {
    async fn advances(&self, n: u64) {
        let from = self.rounds.load(Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.rounds.load(Ordering::Relaxed) < from + n {
                assert!(!self.ended.is_finished(), "the transfer was cut");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the transfer moves");
    }

    async fn cut_within_a_second_of(self, applied: Instant) {
        let ended = tokio::time::timeout(Duration::from_secs(10), self.ended)
            .await
            .expect("the transfer is cut")
            .unwrap();
        let late = ended.saturating_duration_since(applied);
        assert!(
            late < Duration::from_secs(1),
            "cut {late:?} after the change"
        );
    }
}

/// Waits until the proxy's state holds `what`; returns when it did.
async fn taken(proxy: &ProxyHandle, what: impl Fn(&nodemesh_state::MeshState) -> bool) -> Instant {
    let mut changes = proxy.store().subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !what(&proxy.store().load()) {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the proxy takes the change");
    Instant::now()
}

fn refused_policy_changed(proxy: &ProxyHandle) -> u64 {
    proxy
        .metrics()
        .render()
        .lines()
        .find(|l| l.starts_with("nodemesh_connections_refused_total{reason=\"policy_changed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn a_deny_and_a_deleted_pod_from_the_api_cut_open_connections() {
    let api = FakeApi::start().await;
    api.put(NODES, node("node-a", "10.0.0.1", "127.78.1.0/24"));
    api.put(
        NAMESPACES,
        namespace("shop", json!({"nodemesh.io/mesh": "enabled"})),
    );
    api.put(NAMESPACES, namespace("nodemesh-system", json!({})));
    nodemesh_test_support::kube::ca::proxy_a(&api);
    for (name, sa, ip) in [
        ("web-1", "web", WEB),
        ("local-1", "local", LOCAL),
        ("api-1", "api", API),
    ] {
        api.put(
            PODS,
            pod("shop", name, sa, ip, "node-a", json!({"app": sa})),
        );
        start_pod(ip).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, bundle) = nodemesh_test_support::kube::ca::start(&api, &dir.path().join("ca")).await;
    let bundle_file = dir.path().join("trust-bundle.pem");
    std::fs::write(&bundle_file, bundle).unwrap();
    let source = KubeSource::start(
        api.client(),
        SourceOptions {
            settings: MeshSettings {
                node: "node-a".into(),
                trust_domain: "cluster.local".parse().unwrap(),
                root_namespace: "nodemesh-system".into(),
                ca: Ca::new(
                    format!("https://127.0.0.1:{}", ca.grpc_addr.port())
                        .parse()
                        .unwrap(),
                    bundle_file,
                ),
                default_permissive: false,
                pod_cidr_check: true,
            },
            istio_policies: false,
            retry: Retry {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
            },
            debounce: Duration::from_millis(10),
        },
    )
    .await
    .unwrap();
    let proxy = ProxyHandle::start(ProxyOptions {
        ca_token: "token-a".into(),
        drain_timeout: Duration::from_secs(1),
        ..proxy_options(StateSource::Store(Arc::clone(source.store())), "node-a")
    })
    .await
    .unwrap();
    let mut ready = proxy.ready();
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();

    let web = addr(WEB, ECHO);
    let local = transfer(dial(&proxy, LOCAL, web).await);
    let from_api = transfer(dial(&proxy, API, web).await);
    local.advances(5).await;
    from_api.advances(5).await;

    // A DENY for local's identity, created through the API.
    api.put(
        POLICIES,
        policy(
            "shop",
            "no-local",
            json!({"action": "DENY", "selector": {"matchLabels": {"app": "web"}},
                   "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/local"]}}]}]}),
        ),
    );
    let applied = taken(&proxy, |s| !s.policies().policies().is_empty()).await;
    local.cut_within_a_second_of(applied).await;
    from_api.advances(20).await;
    assert_eq!(refused_policy_changed(&proxy), 1);

    // The calling pod is deleted: its same-node connection goes too.
    api.delete(PODS, "shop", "api-1");
    let applied = taken(&proxy, |s| s.workload(API.parse().unwrap()).is_none()).await;
    from_api.cut_within_a_second_of(applied).await;
    assert_eq!(refused_policy_changed(&proxy), 2);

    let _ = proxy.drain().await;
    ca.shutdown().await;
}
