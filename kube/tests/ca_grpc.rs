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

/// A CSR for `identity` sent with `token` to the CA at `address` (trusting `bundle`).
async fn request(
    address: &str,
    bundle: &str,
    token: &str,
    identity: &str,
) -> Result<Vec<String>, ClientError> {
    let csr = generate_csr(&SpiffeId::new(identity).unwrap()).unwrap();
    CaClient::new(address, bundle, token)
        .unwrap()
        .create_certificate(csr.csr_pem, 3600, None)
        .await
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
    let ask =
        |token: &'static str, identity: &'static str| request(&address, &bundle, token, identity);

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

#[tokio::test]
async fn mirror_pods_and_pods_without_a_service_account_get_no_certificate() {
    let api = FakeApi::start().await;
    nodemesh_test_support::kube::ca::proxy_a(&api);
    // node-a's kubelet made a mirror pod in `shop`, and runs a pod without a service account
    // in `batch`; `ops` has a real pod of service account `default` there.
    api.put(
        PODS,
        mirror_pod("shop", "static-web-node-a", "10.1.1.40", "node-a"),
    );
    let mut no_sa = pod("batch", "job-1", "", "10.1.1.41", "node-a", json!({}));
    no_sa["spec"]["serviceAccountName"] = json!("");
    api.put(PODS, no_sa);
    api.put(
        PODS,
        pod("ops", "tool-1", "default", "10.1.1.42", "node-a", json!({})),
    );
    let dir = tempfile::tempdir().unwrap();
    let (ca, bundle) = nodemesh_test_support::kube::ca::start(&api, &dir.path().join("ca")).await;
    let address = format!("https://127.0.0.1:{}", ca.grpc_addr.port());
    let ask = |identity: &'static str| request(&address, &bundle, "token-a", identity);
    let refusal = |r: Result<Vec<String>, ClientError>| match r {
        Err(ClientError::Status(s)) => (format!("{:?}", s.code()), s.message().to_owned()),
        other => panic!("expected a refusal, got {other:?}"),
    };

    let (code, message) = refusal(ask("spiffe://cluster.local/ns/shop/sa/default").await);
    assert_eq!(code, "PermissionDenied");
    assert!(
        message.contains("shop/static-web-node-a (a mirror (static) pod"),
        "{message}"
    );
    let (code, message) = refusal(ask("spiffe://cluster.local/ns/batch/sa/default").await);
    assert_eq!(code, "PermissionDenied");
    assert!(
        message.contains("batch/job-1 (no spec.serviceAccountName)"),
        "{message}"
    );
    // The rule is about those pods, not about `default`: a real pod of it gets its certificate.
    ask("spiffe://cluster.local/ns/ops/sa/default")
        .await
        .expect("ops/default runs on node-a");
    ca.shutdown().await;
}
