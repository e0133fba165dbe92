//! The CA as `nodemesh ca serve --source kubernetes` runs it, in process, against the fake API:
//! its root in a Secret, its bundle in a ConfigMap, callers authenticated by TokenReview and
//! placed by the pods the API lists.

use std::sync::Arc;
use std::time::SystemTime;

use nodemesh_ca::{Callers, RunningCa};
use nodemesh_kube::ca::{PodPlacement, RootStore, TokenReviewAuthenticator};
use serde_json::json;

use super::fake_api::FakeApi;
use super::objects::{CONFIGMAPS, PODS, proxy_pod};
use crate::ca::{loopback_options, start as start_ca};

/// The proxy pod of node-a and a TokenReview answer for its token `token-a`.
pub fn proxy_a(api: &FakeApi) {
    api.put(PODS, proxy_pod("proxy-a", "10.0.0.1", "node-a"));
    api.review(
        "token-a",
        json!({"authenticated": true, "audiences": ["nodemesh-ca"],
               "user": {"username": "system:serviceaccount:nodemesh-system:nodemesh-proxy",
                        "extra": {"authentication.kubernetes.io/pod-name": ["proxy-a"],
                                  "authentication.kubernetes.io/pod-uid": ["uid-proxy-a"],
                                  "authentication.kubernetes.io/node-name": ["node-a"]}}}),
    );
}

/// A running CA (its state in `state_dir`) and the trust bundle it published in the
/// ConfigMap `nodemesh-system/nodemesh-trust-bundle`.
pub async fn start(api: &FakeApi, state_dir: &std::path::Path) -> (RunningCa, String) {
    let td: nodemesh_identity::TrustDomain = "cluster.local".parse().unwrap();
    let (root, _) = RootStore {
        namespace: "nodemesh-system".into(),
        state_dir: state_dir.to_owned(),
    }
    .ensure(api.client(), &td, SystemTime::now())
    .await
    .unwrap();
    let pods = Arc::new(PodPlacement::new(td.clone()));
    let follower = Arc::clone(&pods);
    let pod_api = ::kube::Api::all(api.client());
    tokio::spawn(async move { follower.follow(pod_api).await });
    pods.wait_synced().await;
    let authenticator = Arc::new(TokenReviewAuthenticator::new(
        api.client(),
        vec!["nodemesh-system/nodemesh-proxy".parse().unwrap()],
        pods,
    ));
    let callers = Callers::External {
        trust_domain: td,
        authenticator,
    };
    let ca = start_ca(loopback_options(root, callers)).await;
    let bundle = api
        .get(CONFIGMAPS, "nodemesh-system", "nodemesh-trust-bundle")
        .unwrap()["data"]["trust-bundle.pem"]
        .as_str()
        .unwrap()
        .to_owned();
    (ca, bundle)
}
