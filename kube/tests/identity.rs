//! Identity integrity against a compromised node, through the fake API and the real kube-rs
//! watchers: a node writes its pods' IPs, so pod IPs outside the node's podCIDR are refused
//! (unless `--pod-cidr-check=false`), an IP with several live claimants belongs to none of them,
//! terminating pods do not contest an IP, mirror pods and pods without a service account get no
//! identity, and an IPv6-first dual-stack pod keeps its IPv4.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::SystemTime;

use common::{cluster, in_mesh, ip, start, start_with};
use nodemesh_state::MeshStore;
use nodemesh_test_support::kube::FakeApi;
use nodemesh_test_support::kube::objects::*;
use nodemesh_test_support::wait::eventually;
use serde_json::{Value, json};

/// `nodemesh_source_refused_pods` per reason: outside podCIDR, duplicate IP, no identity.
fn refused(store: &MeshStore) -> [u64; 3] {
    store.health().refused_pods()
}

fn web(name: &str, ip: &str, node: &str) -> Value {
    pod("shop", name, "web", ip, node, json!({"app": "web"}))
}

fn name_at(store: &MeshStore, addr: &str) -> Option<String> {
    store.load().workload(ip(addr)).map(|w| w.name.clone())
}

#[tokio::test]
async fn pod_ips_outside_their_nodes_pod_cidr_are_refused() {
    let api = FakeApi::start().await;
    cluster(&api);
    // node-b claims an IP of node-a's pod network, and node-a's own web-1's IP.
    api.put(PODS, web("stolen", "10.1.1.50", "node-b"));
    api.put(PODS, web("shadow", "10.1.1.11", "node-b"));
    // node-c has no podCIDR: with the check on, its pods fail closed.
    api.put(
        NODES,
        json!({"metadata": {"name": "node-c"},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.3"}]}}),
    );
    api.put(PODS, web("homeless", "10.1.3.5", "node-c"));
    let source = start(&api, false).await;
    let store = source.store();
    assert_eq!(
        in_mesh(store, "10.1.1.50"),
        None,
        "outside node-b's podCIDR"
    );
    assert_eq!(in_mesh(store, "10.1.3.5"), None, "node-c has no podCIDR");
    assert_eq!(
        name_at(store, "10.1.1.11").as_deref(),
        Some("web-1"),
        "a refused claim contests nothing: node-b cannot knock out node-a's pod"
    );
    assert_eq!(refused(store), [3, 0, 0]);
    let text = store.health().render(SystemTime::now());
    assert!(
        text.contains("nodemesh_source_refused_pods{reason=\"outside_pod_cidr\"} 3"),
        "{text}"
    );

    // The stolen pod's IP moves into its own node's network: believed.
    api.put(PODS, web("stolen", "10.1.2.50", "node-b"));
    eventually("stolen admitted in its own podCIDR", || {
        in_mesh(store, "10.1.2.50") == Some(true) && refused(store) == [2, 0, 0]
    })
    .await;

    // With the check off (IPAMs that ignore spec.podCIDR), the claims are believed, and the
    // shared IP makes both claimants unknown.
    let off = start_with(&api, false, false).await;
    let store = off.store();
    assert_eq!(in_mesh(store, "10.1.3.5"), Some(true));
    assert_eq!(
        in_mesh(store, "10.1.1.11"),
        None,
        "web-1 and shadow share it"
    );
    assert_eq!(refused(store), [0, 2, 0]);
}

#[tokio::test]
async fn a_shared_ip_makes_every_claimant_unknown_until_one_goes() {
    let api = FakeApi::start().await;
    cluster(&api);
    let source = start(&api, false).await;
    let store = source.store();
    assert_eq!(in_mesh(store, "10.1.1.11"), Some(true));

    // A second pod of node-a claims web-1's IP ("web-9" sorts after "web-1", so key order
    // would have picked it): both are unknown.
    api.put(PODS, web("web-9", "10.1.1.11", "node-a"));
    eventually("both claimants unknown", || {
        in_mesh(store, "10.1.1.11").is_none() && refused(store) == [0, 2, 0]
    })
    .await;
    assert!(
        store
            .load()
            .local_mesh_workloads()
            .all(|w| w.ip != ip("10.1.1.11")),
        "not captured as a mesh workload"
    );
    let text = store.health().render(SystemTime::now());
    assert!(
        text.contains("nodemesh_source_refused_pods{reason=\"duplicate_ip\"} 2"),
        "{text}"
    );

    // One goes: the other is known again.
    api.delete(PODS, "shop", "web-9");
    eventually("web-1 known again", || {
        name_at(store, "10.1.1.11").as_deref() == Some("web-1") && refused(store) == [0, 0, 0]
    })
    .await;
}

#[tokio::test]
async fn terminating_pods_do_not_contest_an_ip() {
    let api = FakeApi::start().await;
    cluster(&api);
    // web-1 is being deleted and still drains on 10.1.1.11.
    let mut going = web("web-1", "10.1.1.11", "node-a");
    going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    api.put(PODS, going);
    let source = start(&api, false).await;
    let store = source.store();
    assert_eq!(
        name_at(store, "10.1.1.11").as_deref(),
        Some("web-1"),
        "alone, a terminating pod keeps its IP"
    );

    // Its successor gets the same IP ("web-0" sorts first: key order would keep web-1).
    api.put(PODS, web("web-0", "10.1.1.11", "node-a"));
    eventually("the live pod holds the IP", || {
        name_at(store, "10.1.1.11").as_deref() == Some("web-0")
    })
    .await;
    assert_eq!(refused(store), [0, 0, 0], "no duplicate");
}

#[tokio::test]
async fn mirror_pods_and_pods_without_a_service_account_are_not_in_the_mesh() {
    let api = FakeApi::start().await;
    cluster(&api);
    api.put(
        PODS,
        mirror_pod("shop", "static-web-node-a", "10.1.1.40", "node-a"),
    );
    let mut no_sa = web("no-sa", "10.1.1.41", "node-a");
    no_sa["spec"]["serviceAccountName"] = json!("");
    api.put(PODS, no_sa);
    let source = start(&api, false).await;
    let store = source.store();
    assert_eq!(in_mesh(store, "10.1.1.40"), None, "mirror pod: no workload");
    assert_eq!(
        in_mesh(store, "10.1.1.41"),
        None,
        "empty service account: no workload"
    );
    assert!(
        !store
            .load()
            .config()
            .workloads()
            .iter()
            .any(|w| w.identity.as_str() == "spiffe://cluster.local/ns/shop/sa/default"),
        "nothing maps to sa/default"
    );
    assert_eq!(refused(store), [0, 0, 2]);
    // A mirror pod still claims its IP: it contests a pod that shares it.
    api.put(PODS, web("web-2", "10.1.1.40", "node-a"));
    eventually("shared with a mirror pod: unknown", || {
        refused(store) == [0, 2, 1]
    })
    .await;
    assert_eq!(in_mesh(store, "10.1.1.40"), None);
}

#[tokio::test]
async fn an_ipv6_first_dual_stack_pod_keeps_its_ipv4() {
    let api = FakeApi::start().await;
    cluster(&api);
    let mut dual = web("web-2", "fd00:1::12", "node-a");
    dual["status"]["podIPs"] = json!([{"ip": "fd00:1::12"}, {"ip": "10.1.1.12"}]);
    api.put(PODS, dual);
    let source = start(&api, false).await;
    assert_eq!(in_mesh(source.store(), "10.1.1.12"), Some(true));
}
