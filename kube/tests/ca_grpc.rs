//! `nodemesh ca serve --source kubernetes` end to end, in process: the real CA over gRPC+TLS
//! with the TokenReview authenticator against the in-repo fake API server. A proxy's token gets
//! identities of pods on its own node only; other tokens are refused with `Unauthenticated`.
#![allow(clippy::unwrap_used)]

use nodemesh_ca::{CaClient, ClientError};
use nodemesh_identity::{SpiffeId, generate_csr};
use nodemesh_test_support::kube::FakeApi;
use nodemesh_test_support::kube::objects::*;
use serde_json::json;

/// The gRPC status code's name.
fn code(r: Result<Vec<String>, ClientError>) -> String {
    match r {
        Err(ClientError::Status(s)) => format!("{:?}", s.code()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn proxies_get_their_own_nodes_identities_only() {
    let api = FakeApi::start().await;
    nodemesh_test_support::kube::ca::proxy_a(&api);
    api.put(
        PODS,
        pod("shop", "web-1", "web", "10.1.1.11", "node-a", json!({})),
    );
    api.put(
        PODS,
        pod("shop", "db-1", "db", "10.1.2.21", "node-b", json!({})),
    );
    let dir = tempfile::tempdir().unwrap();
    let (ca, bundle) = nodemesh_test_support::kube::ca::start(&api, &dir.path().join("ca")).await;
    let address = format!("https://127.0.0.1:{}", ca.grpc_addr.port());
    let ask = |token: &'static str, identity: &'static str| {
        let address = address.clone();
        let bundle = bundle.clone();
        async move {
            let id = SpiffeId::new(identity).unwrap();
            let csr = generate_csr(&id).unwrap();
            CaClient::new(&address, &bundle, token)
                .unwrap()
                .create_certificate(csr.csr_pem, 3600, None)
                .await
        }
    };

    let chain = ask("token-a", "spiffe://cluster.local/ns/shop/sa/web")
        .await
        .unwrap();
    assert!(chain.len() >= 2, "leaf and root");
    assert_eq!(
        code(ask("token-a", "spiffe://cluster.local/ns/shop/sa/db").await),
        "PermissionDenied",
        "db runs on node-b"
    );
    assert_eq!(
        code(ask("not-a-token", "spiffe://cluster.local/ns/shop/sa/web").await),
        "Unauthenticated"
    );
    ca.shutdown().await;
}
