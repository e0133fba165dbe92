//! The node proxy fed by the Kubernetes source, in process: the real proxy, the real CA with
//! TokenReview, the in-repo fake API. Pods joining and leaving the mesh get certificates and
//! lose them, and `/config_dump` and `/metrics` on the admin API show the cluster's state.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nodemesh_config::Ca;
use nodemesh_kube::mesh::MeshSettings;
use nodemesh_kube::watch::Retry;
use nodemesh_kube::{KubeSource, SourceOptions};
use nodemesh_proxy::{ProxyHandle, ProxyOptions, StateSource};
use nodemesh_test_support::kube::FakeApi;
use nodemesh_test_support::kube::objects::*;
use nodemesh_test_support::mesh::proxy_options;
use nodemesh_test_support::wait::eventually;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn has_cert(proxy: &ProxyHandle, id: &str) -> bool {
    proxy
        .certs()
        .all()
        .iter()
        .any(|(i, c)| i.as_str() == id && c.is_some())
}

#[tokio::test]
async fn proxy_follows_the_cluster() {
    let api = FakeApi::start().await;
    api.put(NODES, node("node-a", "10.0.0.1", "10.1.1.0/24"));
    api.put(
        NAMESPACES,
        namespace("shop", json!({"nodemesh.io/mesh": "enabled"})),
    );
    api.put(NAMESPACES, namespace("nodemesh-system", json!({})));
    nodemesh_test_support::kube::ca::proxy_a(&api);
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
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let admin = proxy.serve_admin(local, local, local).unwrap();

    eventually("web-1's certificate", || has_cert(&proxy, WEB)).await;
    let mut ready = proxy.ready();
    tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    let dump = get(admin.admin_addr(), "/config_dump").await;
    assert!(dump.contains("web-1") && dump.contains(WEB), "{dump}");
    let metrics = get(admin.metrics_addr(), "/metrics").await;
    assert!(
        metrics.contains("nodemesh_source_stale_seconds 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nodemesh_source_refused_pods{reason=\"outside_pod_cidr\"} 0"),
        "{metrics}"
    );

    // The namespace leaves the mesh: the certificate is forgotten; it comes back when it rejoins.
    api.put(NAMESPACES, namespace("shop", json!({})));
    eventually("certificate forgotten", || !has_cert(&proxy, WEB)).await;
    api.put(
        NAMESPACES,
        namespace("shop", json!({"nodemesh.io/mesh": "enabled"})),
    );
    eventually("certificate fetched again", || has_cert(&proxy, WEB)).await;

    // A new pod of another service account on this node gets its own.
    api.put(
        PODS,
        pod("shop", "api-1", "api", "10.1.1.12", "node-a", json!({})),
    );
    eventually("api-1's certificate", || {
        has_cert(&proxy, "spiffe://cluster.local/ns/shop/sa/api")
    })
    .await;
    let dump = get(admin.admin_addr(), "/config_dump").await;
    assert!(dump.contains("api-1"), "{dump}");

    let _ = proxy.drain().await;
    ca.shutdown().await;
}
