//! The CA on Kubernetes against the in-repo fake API server: TokenReview authentication with the
//! pod index (only identities on the caller's own node), every refusal with its reason, and the
//! root kept in a Secret across restarts.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::SystemTime;

use nodemesh_ca::Authenticator;
use nodemesh_identity::SpiffeId;
use nodemesh_kube::ca::{PodPlacement, RootStore, TokenReviewAuthenticator};
use nodemesh_test_support::kube::FakeApi;
use nodemesh_test_support::kube::objects::*;
use serde_json::{Value, json};

const PROXY_SA: &str = "system:serviceaccount:nodemesh-system:nodemesh-proxy";

fn review(username: &str, pod: &str, uid: &str, node: Option<&str>) -> Value {
    let mut extra = json!({
        "authentication.kubernetes.io/pod-name": [pod],
        "authentication.kubernetes.io/pod-uid": [uid],
    });
    if let Some(n) = node {
        extra["authentication.kubernetes.io/node-name"] = json!([n]);
    }
    json!({"authenticated": true, "audiences": ["nodemesh-ca"],
           "user": {"username": username, "extra": extra}})
}

async fn authenticator(api: &FakeApi) -> TokenReviewAuthenticator {
    let pods = Arc::new(PodPlacement::new("cluster.local".parse().unwrap()));
    let follower = Arc::clone(&pods);
    let pod_api = kube::Api::all(api.client());
    tokio::spawn(async move { follower.follow(pod_api).await });
    tokio::time::timeout(std::time::Duration::from_secs(10), pods.wait_synced())
        .await
        .expect("pod index synced");
    TokenReviewAuthenticator::new(
        api.client(),
        vec!["nodemesh-system/nodemesh-proxy".parse().unwrap()],
        pods,
    )
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

#[tokio::test]
async fn tokens_are_reviewed_and_identities_bound_to_the_node() {
    let api = FakeApi::start().await;
    api.put(PODS, proxy_pod("proxy-a", "10.0.0.1", "node-a"));
    api.put(PODS, proxy_pod("proxy-b", "10.0.0.2", "node-b"));
    api.put(
        PODS,
        pod("shop", "web-1", "web", "10.1.1.11", "node-a", json!({})),
    );
    api.put(
        PODS,
        pod("shop", "db-1", "db", "10.1.2.21", "node-b", json!({})),
    );
    api.put(
        PODS,
        pod("shop", "rogue", "rogue", "10.1.1.50", "node-a", json!({})),
    );
    api.put(PODS, mirror_pod("shop", "static-a", "10.1.1.60", "node-a"));
    api.review(
        "good-a",
        review(PROXY_SA, "proxy-a", "uid-proxy-a", Some("node-a")),
    );
    api.review(
        "good-a-old-k8s",
        review(PROXY_SA, "proxy-a", "uid-proxy-a", None),
    );
    api.review(
        "other-sa",
        review(
            "system:serviceaccount:shop:rogue",
            "rogue",
            "uid-rogue",
            Some("node-a"),
        ),
    );
    api.review(
        "expired",
        json!({"authenticated": false, "error": "[invalid bearer token, service account token has expired]"}),
    );
    let mut wrong_audience = review(PROXY_SA, "proxy-a", "uid-proxy-a", Some("node-a"));
    wrong_audience["audiences"] = json!(["https://kubernetes.default.svc"]);
    api.review("wrong-audience", wrong_audience);
    api.review(
        "gone-pod",
        review(PROXY_SA, "proxy-old", "uid-proxy-old", Some("node-a")),
    );
    api.review(
        "replaced-pod",
        review(
            PROXY_SA,
            "proxy-a",
            "uid-of-an-older-proxy-a",
            Some("node-a"),
        ),
    );
    api.review(
        "lying-node",
        review(PROXY_SA, "proxy-a", "uid-proxy-a", Some("node-b")),
    );
    let auth = authenticator(&api).await;

    assert_eq!(auth.authenticate("good-a").await.unwrap(), "node-a");
    assert_eq!(auth.authenticate("good-a-old-k8s").await.unwrap(), "node-a");
    assert!(auth.runs_on("node-a", &id("spiffe://cluster.local/ns/shop/sa/web")));
    assert!(!auth.runs_on("node-a", &id("spiffe://cluster.local/ns/shop/sa/db")));
    assert!(auth.runs_on("node-b", &id("spiffe://cluster.local/ns/shop/sa/db")));
    assert!(!auth.runs_on("node-a", &id("spiffe://other.domain/ns/shop/sa/web")));
    // The mirror pod grants nothing, and names itself in the refusal.
    let default = id("spiffe://cluster.local/ns/shop/sa/default");
    assert!(!auth.runs_on("node-a", &default));
    let why = auth.unidentified("node-a", &default).unwrap();
    assert!(
        why.contains("shop/static-a (a mirror (static) pod"),
        "{why}"
    );
    assert_eq!(auth.unidentified("node-b", &default), None, "not on node-b");
    assert_eq!(
        auth.unidentified("node-a", &id("spiffe://cluster.local/ns/shop/sa/web")),
        None,
        "web runs there"
    );

    let refusals = [
        (
            "other-sa",
            "ServiceAccount shop/rogue is not an allowed caller",
        ),
        (
            "expired",
            "token rejected by TokenReview: [invalid bearer token, service account token has expired]",
        ),
        ("wrong-audience", "token audience is not nodemesh-ca"),
        (
            "gone-pod",
            "the token's pod nodemesh-system/proxy-old has gone",
        ),
        ("replaced-pod", "has gone; a new pod has its name"),
        (
            "lying-node",
            "the token's node claim \"node-b\" differs from its pod's node \"node-a\"",
        ),
        (
            "unknown",
            "token rejected by TokenReview: invalid bearer token",
        ),
    ];
    for (token, reason) in refusals {
        let error = auth.authenticate(token).await.expect_err(token);
        assert!(error.reason.contains(reason), "{token}: {}", error.reason);
    }

    // The web pod leaves node-a: its identity is no longer issued there.
    api.delete(PODS, "shop", "web-1");
    nodemesh_test_support::wait::eventually("web-1 gone from the index", || {
        !auth.runs_on("node-a", &id("spiffe://cluster.local/ns/shop/sa/web"))
    })
    .await;
    // The proxy pod goes: its token with it.
    api.delete(PODS, "nodemesh-system", "proxy-a");
    let mut refused = false;
    for _ in 0..200 {
        if auth.authenticate("good-a").await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "token of a deleted pod still accepted");
}

#[tokio::test]
async fn root_survives_a_restart_through_the_secret() {
    let api = FakeApi::start().await;
    let td = "cluster.local".parse().unwrap();
    let first = tempfile::tempdir().unwrap();
    let store = RootStore {
        namespace: "nodemesh-system".into(),
        state_dir: first.path().join("ca"),
    };
    let (_, origin) = store
        .ensure(api.client(), &td, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(origin, nodemesh_kube::ca::RootOrigin::Created);
    let secret = api
        .get(SECRETS, "nodemesh-system", "nodemesh-ca-root")
        .expect("secret");
    assert!(secret["data"]["root-key.pem"].is_string());
    let bundle = api
        .get(CONFIGMAPS, "nodemesh-system", "nodemesh-trust-bundle")
        .expect("configmap");
    let published = bundle["data"]["trust-bundle.pem"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(published.contains("BEGIN CERTIFICATE"));
    assert!(
        !published.contains("PRIVATE KEY"),
        "the key is never published"
    );
    let root_a = std::fs::read_to_string(first.path().join("ca/root-cert.pem")).unwrap();

    // A restarted CA (fresh in-memory state dir) finds the same root.
    let second = tempfile::tempdir().unwrap();
    let store = RootStore {
        namespace: "nodemesh-system".into(),
        state_dir: second.path().join("ca"),
    };
    let (source, origin) = store
        .ensure(api.client(), &td, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(origin, nodemesh_kube::ca::RootOrigin::Secret);
    let root_b = std::fs::read_to_string(second.path().join("ca/root-cert.pem")).unwrap();
    assert_eq!(root_a, root_b);
    source.load(&td).expect("the restored root signs");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(second.path().join("ca/root-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
}
