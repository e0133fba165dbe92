//! The Kubernetes source against the in-repo fake API server (see
//! `test-support/src/kube/fake_api.rs` for why a fake and what it leaves out), through the real
//! kube-rs client and kube-runtime watchers:
//! every change of the cluster shows in the proxy's `MeshStore`, an outage keeps the last
//! state and raises the staleness, and the relist after it applies what changed meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{cluster, in_mesh, ip, start};
use nodemesh_state::MeshStore;
use nodemesh_test_support::kube::FakeApi;
use nodemesh_test_support::kube::objects::*;
use nodemesh_test_support::wait::eventually;
use serde_json::json;

#[tokio::test]
async fn first_sync_sees_the_cluster() {
    let api = FakeApi::start().await;
    cluster(&api);
    let source = start(&api, false).await;
    let state = source.store().load();
    assert_eq!(state.config().workloads().len(), 3);
    let web = state.workload(ip("10.1.1.11")).unwrap();
    assert_eq!(
        web.identity.as_str(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert!(state.in_mesh(web));
    assert!(state.is_local(web));
    assert_eq!(in_mesh(source.store(), "10.1.1.99"), Some(false));
    assert_eq!(
        state
            .local_mesh_workloads()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
        ["web-1"]
    );
    assert!(state.in_pod_network(ip("10.1.2.200")));
    let vip: SocketAddr = "10.96.0.20:5432".parse().unwrap();
    assert_eq!(
        state
            .pick_endpoint(vip)
            .unwrap()
            .endpoint
            .workload()
            .unwrap()
            .name,
        "db-1"
    );
    assert!(state.policy_problems().is_empty());
    assert_eq!(state.config().policies().len(), 1);
    // The policy compiled: its status says so.
    eventually("Accepted=True on allow-web", || {
        api.get(POLICIES, "shop", "allow-web").is_some_and(|p| {
            p["status"]["conditions"][0]["status"] == "True"
                && p["status"]["conditions"][0]["type"] == "Accepted"
        })
    })
    .await;
}

#[tokio::test]
async fn changes_apply_live() {
    let api = FakeApi::start().await;
    cluster(&api);
    let source = start(&api, false).await;
    let store = Arc::clone(source.store());

    // A new pod appears, then leaves.
    api.put(
        PODS,
        pod(
            "shop",
            "web-2",
            "web",
            "10.1.1.12",
            "node-a",
            json!({"app": "web"}),
        ),
    );
    eventually("web-2 known", || in_mesh(&store, "10.1.1.12") == Some(true)).await;
    api.delete(PODS, "shop", "web-2");
    eventually("web-2 gone", || in_mesh(&store, "10.1.1.12").is_none()).await;

    // The pod opts out, then back in.
    api.put(
        PODS,
        pod(
            "shop",
            "web-1",
            "web",
            "10.1.1.11",
            "node-a",
            json!({"app": "web", "nodemesh.io/mesh": "disabled"}),
        ),
    );
    eventually("web-1 opted out", || {
        in_mesh(&store, "10.1.1.11") == Some(false)
    })
    .await;
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
    eventually("web-1 back", || in_mesh(&store, "10.1.1.11") == Some(true)).await;

    // The namespace leaves the mesh; its pods follow.
    api.put(NAMESPACES, namespace("shop", json!({})));
    eventually("shop left", || in_mesh(&store, "10.1.1.11") == Some(false)).await;
    assert_eq!(store.load().local_mesh_workloads().count(), 0);
    api.put(
        NAMESPACES,
        namespace(
            "shop",
            json!({"nodemesh.io/mesh": "enabled", "nodemesh.io/mtls-mode": "permissive"}),
        ),
    );
    eventually("shop back, permissive", || {
        let s = store.load();
        s.workload(ip("10.1.1.11"))
            .is_some_and(|w| s.in_mesh(w) && s.is_permissive(w))
    })
    .await;

    // Endpoints: a second ready one, a not-ready one, then none.
    let vip: SocketAddr = "10.96.0.20:5432".parse().unwrap();
    api.put(
        PODS,
        pod(
            "shop",
            "db-2",
            "db",
            "10.1.2.22",
            "node-b",
            json!({"app": "db"}),
        ),
    );
    api.put(
        SLICES,
        slice(
            "shop",
            "db",
            &["10.1.2.21", "10.1.2.22"],
            &["10.1.2.23"],
            6432,
        ),
    );
    eventually("two endpoints on 6432", || {
        let s = store.load();
        let picks: std::collections::BTreeSet<String> = (0..4)
            .filter_map(|_| {
                s.pick_endpoint(vip).map(|t| {
                    format!(
                        "{}:{}",
                        t.endpoint.workload().map_or("?", |w| w.name.as_str()),
                        t.port
                    )
                })
            })
            .collect();
        picks.into_iter().collect::<Vec<_>>() == ["db-1:6432", "db-2:6432"]
    })
    .await;
    api.put(SLICES, slice("shop", "db", &[], &["10.1.2.21"], 6432));
    eventually("no ready endpoint", || {
        store.load().pick_endpoint(vip).is_none()
    })
    .await;
    assert!(
        store.load().service(vip).is_some(),
        "the VIP stays known (no_endpoint)"
    );
    api.delete(SERVICES, "shop", "db");
    eventually("service gone", || store.load().service(vip).is_none()).await;

    // Node key annotation.
    let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    nodemesh_kube::node::publish_wireguard_key(api.client(), "node-b", key)
        .await
        .unwrap();
    assert_eq!(
        api.get(NODES, "", "node-b").unwrap()["metadata"]["annotations"]["nodemesh.io/wireguard-public-key"],
        key
    );
    eventually("node-b key seen", || {
        store
            .load()
            .config()
            .node("node-b")
            .and_then(|n| n.wireguard_public_key)
            .is_some_and(|k| k.to_string() == key)
    })
    .await;
}

#[tokio::test]
async fn policies_update_and_fail_closed_with_status() {
    let api = FakeApi::start().await;
    cluster(&api);
    let source = start(&api, true).await;
    let store = Arc::clone(source.store());
    let count = |s: &MeshStore| s.load().config().policies().len();

    // A policy that does not compile: loaded fail-closed, reported, status Accepted=False.
    api.put(
        POLICIES,
        policy(
            "shop",
            "bad-port",
            json!({"rules": [{"to": [{"operation": {"ports": ["99999"]}}]}]}),
        ),
    );
    eventually("bad policy loaded", || count(&store) == 2).await;
    eventually("bad policy reported", || {
        store
            .load()
            .policy_problems()
            .iter()
            .any(|p| p.policy == "shop/bad-port" && p.errors[0].contains("99999"))
    })
    .await;
    eventually("Accepted=False written", || {
        api.get(POLICIES, "shop", "bad-port").is_some_and(|p| {
            let c = &p["status"]["conditions"][0];
            c["status"] == "False" && c["message"].as_str().unwrap_or_default().contains("99999")
        })
    })
    .await;

    // An object that does not even parse fails closed on its own.
    api.put(
        POLICIES,
        policy("shop", "garbage", json!({"action": "DENY", "rulez": []})),
    );
    eventually("unparsable policy reported", || {
        store
            .load()
            .policy_problems()
            .iter()
            .any(|p| p.policy == "shop/garbage")
    })
    .await;

    // Fixing it clears the problem; deleting removes it.
    api.put(
        POLICIES,
        policy(
            "shop",
            "bad-port",
            json!({"rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]}),
        ),
    );
    eventually("fixed", || {
        !store
            .load()
            .policy_problems()
            .iter()
            .any(|p| p.policy == "shop/bad-port")
    })
    .await;
    api.delete(POLICIES, "shop", "garbage");
    eventually("garbage deleted", || {
        store.load().policy_problems().is_empty()
    })
    .await;

    // Istio's policies follow with --istio-policies (and get no status from us).
    api.put(
        ISTIO_POLICIES,
        policy(
            "shop",
            "istio-deny",
            json!({"action": "DENY", "rules": [{}]}),
        ),
    );
    eventually("istio policy loaded", || {
        store
            .load()
            .config()
            .policies()
            .iter()
            .any(|p| p.name() == Some("istio-deny"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(api.get(ISTIO_POLICIES, "shop", "istio-deny").unwrap()["status"].is_null());
    api.put(
        ISTIO_BETA_POLICIES,
        policy("shop", "istio-beta", json!({"action": "AUDIT"})),
    );
    eventually("istio v1beta1 policy loaded", || {
        store
            .load()
            .config()
            .policies()
            .iter()
            .any(|p| p.name() == Some("istio-beta"))
    })
    .await;
    api.delete(ISTIO_POLICIES, "shop", "istio-deny");
    eventually("istio policy gone", || {
        !store
            .load()
            .config()
            .policies()
            .iter()
            .any(|p| p.name() == Some("istio-deny"))
    })
    .await;
}

#[tokio::test]
async fn outage_keeps_state_then_resyncs() {
    let api = FakeApi::start().await;
    cluster(&api);
    let source = start(&api, false).await;
    let store = Arc::clone(source.store());
    assert_eq!(store.health().stale_for(SystemTime::now()), Duration::ZERO);

    api.set_down(true);
    eventually("stale", || {
        store.health().stale_for(SystemTime::now()) > Duration::ZERO
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = store.health().stale_for(SystemTime::now());
    assert!(stale >= Duration::from_millis(300), "{stale:?}");
    let text = store.health().render(SystemTime::now());
    let value: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("nodemesh_source_stale_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(value >= 0.3, "{text}");
    // The last known state keeps serving.
    assert_eq!(in_mesh(&store, "10.1.1.11"), Some(true));

    // Changes made while the proxy cannot see them...
    api.set_down(true);
    api.delete(PODS, "shop", "web-1");
    api.put(
        PODS,
        pod(
            "shop",
            "web-3",
            "web",
            "10.1.1.13",
            "node-a",
            json!({"app": "web"}),
        ),
    );
    api.put(
        NAMESPACES,
        namespace("plain", json!({"nodemesh.io/mesh": "enabled"})),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        in_mesh(&store, "10.1.1.11"),
        Some(true),
        "no change while down"
    );

    // ...apply once the API is back, and staleness returns to zero.
    api.set_down(false);
    eventually("resynced", || {
        in_mesh(&store, "10.1.1.11").is_none()
            && in_mesh(&store, "10.1.1.13") == Some(true)
            && in_mesh(&store, "10.1.1.99") == Some(true)
    })
    .await;
    eventually("fresh again", || {
        store.health().stale_for(SystemTime::now()) == Duration::ZERO
    })
    .await;
}
