//! NetworkPolicies, ClusterNetworkPolicies and Node labels through the Kubernetes source, into
//! the assembled `Config` the policy crate compiles. The API server in every test is the
//! in-repo fake (`test-support/src/kube/fake_api.rs`) speaking the real list/watch wire
//! protocol (JSON lists with resourceVersions, streamed watch events, 404 for a resource it
//! does not serve), driven by the real kube-rs client and kube-runtime watchers.
#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::{cluster, options, start};
use nodemesh_config::RawPolicy;
use nodemesh_kube::KubeSource;
use nodemesh_state::MeshStore;
use nodemesh_test_support::kube::FakeApi;
use nodemesh_test_support::kube::objects::*;
use nodemesh_test_support::wait::eventually;
use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Counts the warnings whose message contains `text` (a tracing layer).
struct CountWarnings {
    text: &'static str,
    count: Arc<AtomicUsize>,
}

impl<S: tracing::Subscriber> Layer<S> for CountWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if *event.metadata().level() != tracing::Level::WARN {
            return;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0.contains(self.text) {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Each document as `{apiVersion, kind, metadata: {name, namespace?}, spec}`, after checking
/// that it has exactly those top-level keys and none of the server's bookkeeping.
fn summary(docs: &[RawPolicy]) -> Vec<Value> {
    docs.iter()
        .map(|d| {
            let doc = d.document();
            let mut keys: Vec<&str> = doc
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            assert_eq!(keys, ["apiVersion", "kind", "metadata", "spec"], "{doc}");
            assert!(doc["metadata"].get("managedFields").is_none(), "{doc}");
            let mut meta = json!({"name": doc["metadata"]["name"]});
            if let Some(ns) = doc["metadata"].get("namespace") {
                meta["namespace"] = ns.clone();
            }
            json!({"apiVersion": doc["apiVersion"], "kind": doc["kind"],
                   "metadata": meta, "spec": doc["spec"]})
        })
        .collect()
}

fn np(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

fn cnp(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
           "metadata": {"name": name}, "spec": spec})
}

fn network_policies(store: &MeshStore) -> Vec<Value> {
    summary(store.load().config().network_policies())
}

fn cluster_network_policies(store: &MeshStore) -> Vec<Value> {
    summary(store.load().config().cluster_network_policies())
}

fn deny_all() -> Value {
    json!({"podSelector": {}, "policyTypes": ["Ingress"]})
}

fn allow_web() -> Value {
    json!({"podSelector": {"matchLabels": {"app": "db"}},
           "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                        "ports": [{"port": "http", "protocol": "TCP"}, {"port": 8000, "endPort": 8100}]}]})
}

fn admin_deny() -> Value {
    json!({"tier": "Admin", "priority": 10,
           "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}},
           "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]})
}

/// The fake API server speaks the real list/watch wire protocol. NetworkPolicies (all
/// namespaces) and ClusterNetworkPolicies listed before the start are in the first `Config`,
/// ordered by namespace then name, as `{apiVersion, kind, metadata, spec}` documents (no
/// `managedFields`, no `status`, unknown spec fields kept for the compiler to refuse); watch
/// events then add, modify and delete them, and the config carries exactly the expected
/// documents after each.
#[tokio::test]
async fn network_policies_listed_then_followed() {
    let api = FakeApi::start().await;
    cluster(&api);
    let mut managed = network_policy("shop", "deny-all", deny_all());
    managed["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply"}]);
    api.put(NETWORK_POLICIES, managed);
    api.put(
        NETWORK_POLICIES,
        network_policy("plain", "allow-web", allow_web()),
    );
    // "shop-2" sorts after "shop" by namespace, though "shop-2/..." < "shop/..." as strings.
    api.put(NETWORK_POLICIES, network_policy("shop-2", "a", deny_all()));
    let mut with_status = cluster_network_policy("admin-deny", admin_deny());
    with_status["status"] = json!({"conditions": [{"type": "Accepted", "status": "True"}]});
    api.put(CLUSTER_NETWORK_POLICIES, with_status);
    let source = start(&api, false).await;
    let store = Arc::clone(source.store());

    assert_eq!(
        network_policies(&store),
        [
            np("plain", "allow-web", allow_web()),
            np("shop", "deny-all", deny_all()),
            np("shop-2", "a", deny_all()),
        ]
    );
    assert_eq!(
        cluster_network_policies(&store),
        [cnp("admin-deny", admin_deny())]
    );

    // Added, with a field this API version does not know: kept verbatim.
    let future = json!({"podSelector": {}, "ingress": [{"from": [{"futurePeer": {}}]}]});
    api.put(
        NETWORK_POLICIES,
        network_policy("shop", "future", future.clone()),
    );
    let want = [
        np("plain", "allow-web", allow_web()),
        np("shop", "deny-all", deny_all()),
        np("shop", "future", future.clone()),
        np("shop-2", "a", deny_all()),
    ];
    eventually("NetworkPolicy added", || network_policies(&store) == want).await;

    // Modified.
    let egress = json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]});
    api.put(
        NETWORK_POLICIES,
        network_policy("shop", "deny-all", egress.clone()),
    );
    let want = [
        np("plain", "allow-web", allow_web()),
        np("shop", "deny-all", egress.clone()),
        np("shop", "future", future.clone()),
        np("shop-2", "a", deny_all()),
    ];
    eventually("NetworkPolicy modified", || {
        network_policies(&store) == want
    })
    .await;

    // Deleted.
    api.delete(NETWORK_POLICIES, "plain", "allow-web");
    api.delete(NETWORK_POLICIES, "shop-2", "a");
    let want = [np("shop", "deny-all", egress), np("shop", "future", future)];
    eventually("NetworkPolicies deleted", || {
        network_policies(&store) == want
    })
    .await;

    // ClusterNetworkPolicies: added (ordered by name), modified, deleted.
    let baseline = json!({"tier": "Baseline", "priority": 5, "subject": {"pods": {
        "namespaceSelector": {}, "podSelector": {}}}, "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]});
    api.put(
        CLUSTER_NETWORK_POLICIES,
        cluster_network_policy("a-baseline", baseline.clone()),
    );
    let want = [
        cnp("a-baseline", baseline.clone()),
        cnp("admin-deny", admin_deny()),
    ];
    eventually("ClusterNetworkPolicy added", || {
        cluster_network_policies(&store) == want
    })
    .await;
    let mut pass = admin_deny();
    pass["ingress"][0]["action"] = json!("Pass");
    api.put(
        CLUSTER_NETWORK_POLICIES,
        cluster_network_policy("admin-deny", pass.clone()),
    );
    let want = [cnp("a-baseline", baseline.clone()), cnp("admin-deny", pass)];
    eventually("ClusterNetworkPolicy modified", || {
        cluster_network_policies(&store) == want
    })
    .await;
    api.delete(CLUSTER_NETWORK_POLICIES, "", "admin-deny");
    let want = [cnp("a-baseline", baseline)];
    eventually("ClusterNetworkPolicy deleted", || {
        cluster_network_policies(&store) == want
    })
    .await;
    assert_eq!(
        network_policies(&store).len(),
        2,
        "NetworkPolicies untouched"
    );
}

/// The fake API server speaks the real list/watch wire protocol, including the real server's
/// plain-text 404 for a resource it does not serve. Without the ClusterNetworkPolicy CRD the
/// source still completes its first sync, fresh (not stale), with no ClusterNetworkPolicies
/// and the NetworkPolicies it listed; once the CRD is installed the re-check picks its
/// objects up without a restart, and removing the CRD (its objects first) empties them. The warning that
/// ClusterNetworkPolicy is not enforced is logged once per absence, not once per re-check.
#[tokio::test]
async fn cluster_network_policy_crd_absent_then_installed() {
    // The test runtime has one thread: the source's tasks log to this subscriber.
    let warnings = Arc::new(AtomicUsize::new(0));
    let _logs =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(CountWarnings {
            text: "ClusterNetworkPolicy is not enforced",
            count: Arc::clone(&warnings),
        }));
    let api = FakeApi::start().await;
    cluster(&api);
    api.put(
        NETWORK_POLICIES,
        network_policy("shop", "deny-all", deny_all()),
    );
    api.put(
        CLUSTER_NETWORK_POLICIES,
        cluster_network_policy("admin-deny", admin_deny()),
    );
    api.set_served(CLUSTER_NETWORK_POLICIES, false);
    let source = start(&api, false).await;
    let store = Arc::clone(source.store());
    assert_eq!(cluster_network_policies(&store), Vec::<Value>::new());
    assert_eq!(
        network_policies(&store),
        [np("shop", "deny-all", deny_all())]
    );
    // The absent CRD is not an outage: nothing is stale, now or after a few re-checks.
    assert_eq!(store.health().stale_for(SystemTime::now()), Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.health().stale_for(SystemTime::now()), Duration::ZERO);
    assert_eq!(
        warnings.load(Ordering::SeqCst),
        1,
        "one warning, not one per re-check"
    );

    api.set_served(CLUSTER_NETWORK_POLICIES, true);
    eventually("CRD installed: its objects are followed", || {
        cluster_network_policies(&store) == [cnp("admin-deny", admin_deny())]
    })
    .await;
    // Deleting the CRD deletes its objects (the watch delivers that), then stops serving it.
    api.delete(CLUSTER_NETWORK_POLICIES, "", "admin-deny");
    eventually("CRD removed: its objects go first", || {
        cluster_network_policies(&store).is_empty()
    })
    .await;
    api.set_served(CLUSTER_NETWORK_POLICIES, false);
    eventually("warned again for the new absence", || {
        warnings.load(Ordering::SeqCst) == 2
    })
    .await;
    assert!(cluster_network_policies(&store).is_empty());
    assert_eq!(store.health().stale_for(SystemTime::now()), Duration::ZERO);
}

/// The fake API server speaks the real list/watch wire protocol. Fail closed: while the
/// NetworkPolicies cannot be listed (here the server answers 404 for them; for this built-in
/// kind that is an error, unlike the optional ClusterNetworkPolicy CRD), the source does not
/// report its first sync, so the proxy cannot start and admit what a policy forbids; once they
/// are listed it starts, with them.
#[tokio::test]
async fn first_sync_waits_for_network_policies() {
    let api = FakeApi::start().await;
    cluster(&api);
    api.put(
        NETWORK_POLICIES,
        network_policy("shop", "deny-all", deny_all()),
    );
    api.set_served(NETWORK_POLICIES, false);
    let mut starting = tokio::spawn(KubeSource::start(api.client(), options(false, true)));
    // A negative cannot be polled for: give the source several retry rounds (50-200 ms).
    let early = tokio::time::timeout(Duration::from_millis(800), &mut starting).await;
    assert!(
        early.is_err(),
        "the source synced without the NetworkPolicies"
    );

    api.set_served(NETWORK_POLICIES, true);
    let source = tokio::time::timeout(Duration::from_secs(10), starting)
        .await
        .expect("first sync in time")
        .unwrap()
        .expect("first sync");
    assert_eq!(
        network_policies(source.store()),
        [np("shop", "deny-all", deny_all())]
    );
}

/// The fake API server speaks the real list/watch wire protocol. Node labels (which
/// ClusterNetworkPolicy `nodes` peers select by) reach the config's nodes, and a label change
/// follows.
#[tokio::test]
async fn node_labels_reach_the_config() {
    let api = FakeApi::start().await;
    cluster(&api);
    let mut labelled = node("node-b", "10.0.0.2", "10.1.2.0/24");
    labelled["metadata"]["labels"] =
        json!({"kubernetes.io/hostname": "node-b", "topology.kubernetes.io/zone": "z1"});
    api.put(NODES, labelled.clone());
    let source = start(&api, false).await;
    let store = Arc::clone(source.store());
    let labels = |name: &str| {
        let state = store.load();
        let node = state.config().node(name).unwrap();
        serde_json::to_value(&node.labels).unwrap()
    };
    assert_eq!(
        labels("node-b"),
        json!({"kubernetes.io/hostname": "node-b", "topology.kubernetes.io/zone": "z1"})
    );
    assert_eq!(labels("node-a"), json!({}));

    labelled["metadata"]["labels"]["topology.kubernetes.io/zone"] = json!("z2");
    api.put(NODES, labelled);
    eventually("zone label changed", || {
        labels("node-b")["topology.kubernetes.io/zone"] == "z2"
    })
    .await;
}

/// The fake API server speaks the real list/watch wire protocol. A 404 for ClusterNetworkPolicies
/// while the source holds some (an API server that is still starting answers 404 for CRD
/// resources; a CRD really deleted deletes its objects first) is an outage, not an absent CRD:
/// the last ClusterNetworkPolicies keep serving, the source turns stale, and when the resource
/// is served again the relist applies what changed.
#[tokio::test]
async fn a_404_with_cluster_network_policies_held_keeps_them() {
    let api = FakeApi::start().await;
    cluster(&api);
    api.put(
        CLUSTER_NETWORK_POLICIES,
        cluster_network_policy("admin-deny", admin_deny()),
    );
    let source = start(&api, false).await;
    let store = Arc::clone(source.store());
    assert_eq!(
        cluster_network_policies(&store),
        [cnp("admin-deny", admin_deny())]
    );

    api.set_served(CLUSTER_NETWORK_POLICIES, false);
    eventually("stale", || {
        store.health().stale_for(SystemTime::now()) > Duration::ZERO
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cluster_network_policies(&store),
        [cnp("admin-deny", admin_deny())],
        "kept through the 404s"
    );

    let mut pass = admin_deny();
    pass["ingress"][0]["action"] = json!("Pass");
    api.put(
        CLUSTER_NETWORK_POLICIES,
        cluster_network_policy("admin-deny", pass.clone()),
    );
    api.set_served(CLUSTER_NETWORK_POLICIES, true);
    eventually("relisted", || {
        cluster_network_policies(&store) == [cnp("admin-deny", pass.clone())]
    })
    .await;
    eventually("fresh again", || {
        store.health().stale_for(SystemTime::now()) == Duration::ZERO
    })
    .await;
}
