//! Root tier, Kubernetes mode: the testbed's proxies run `--source kubernetes` against the
//! in-repo fake API server of `nodemesh-test-support` (no API server can be installed on our build
//! hosts; the fake speaks the list/watch JSON protocol to the real kube-rs client). The fake runs
//! inside node-a's namespace on its underlay address, so both nodes' proxies reach it; its pods
//! mirror the testbed's pods (same names, IPs and nodes). Changes made through the API — a pod
//! opting out, a new policy — change capture and enforcement for real connections; WireGuard
//! peers follow the keys the proxies publish on their Nodes.
//!
//! Runs as root; without root it prints a skip line, unless `NODEMESH_E2E=1` (then it fails).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use nodemesh_redirect::Backend;
use nodemesh_test_support::kube::objects::*;
use nodemesh_test_support::root_tier;
use nodemesh_test_support::wait::eventually_blocking as eventually;
use nodemesh_testbed::scenario;
use nodemesh_testbed::{MeshOptions, Testbed};
use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");

mod kube_testbed;
use kube_testbed::fake_api_for;

/// Service, L7 and L4 policy from the API's objects; then, through the API, frontend-a opts out
/// of the mesh (node-a drops it from the capture set, so its plaintext call is refused by
/// node-b's STRICT mode), comes back, and a DENY policy for batch -> frontend takes effect.
#[test]
fn proxies_follow_the_kubernetes_api() {
    if !root_tier(
        "proxies_follow_the_kubernetes_api",
        Backend::Nftables.tools(),
    ) {
        return;
    }
    let mut bed = Testbed::build(scenario::shop()).unwrap();
    let api = fake_api_for(&bed);
    let kubeconfig = bed.dir().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let mut opts = MeshOptions::new(BINARY);
    opts.backend = Backend::Nftables;
    opts.kubeconfig = Some(kubeconfig);
    opts.wireguard = true;
    if let Err(e) = bed.start_mesh(&opts) {
        panic!("mesh did not start: {e}");
    }

    // Each proxy publishes its WireGuard key on its Node; peers follow the annotations.
    for node in ["node-a", "node-b"] {
        eventually(&format!("{node}'s key annotation"), || {
            api.get(NODES, "", node).is_some_and(|n| {
                n["metadata"]["annotations"]["nodemesh.io/wireguard-public-key"].is_string()
            })
        });
    }
    let mut tunnel = scenario::wireguard_carries_the_rest(&bed).unwrap();
    for _ in 0..5 {
        if tunnel.ok {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        tunnel = scenario::wireguard_carries_the_rest(&bed).unwrap();
    }
    assert!(tunnel.ok, "{}", tunnel.details.join("\n"));

    for step in [
        scenario::allowed_via_service,
        scenario::l7_deny,
        scenario::l4_deny,
        scenario::passthrough_to_non_mesh,
    ] {
        let outcome = step(&bed).unwrap();
        assert!(
            outcome.ok,
            "{}: {}\n{}",
            outcome.step,
            outcome.details.join("\n"),
            bed.log_tail("proxy/node-b", 20)
        );
    }

    // frontend-a leaves the mesh: node-a's capture set drops it, so its call to web-b goes out
    // as plaintext and node-b's STRICT mode refuses it.
    let frontend_ip = bed.pod_ip("frontend-a").unwrap().to_string();
    api.put(
        PODS,
        pod(
            "shop",
            "frontend-a",
            "frontend",
            &frontend_ip,
            "node-a",
            json!({"app": "frontend", "nodemesh.io/mesh": "disabled"}),
        ),
    );
    let web = scenario::pod_http(&bed, "web-b").unwrap();
    eventually("frontend-a's plaintext call refused by STRICT", || {
        scenario::call(&bed, "frontend-a", web, "GET", "/", "")
            .unwrap()
            .is_err()
            && scenario::find_flow(&bed, "node-b", |r| {
                r["reason"] == "strict_mtls" && r["src"]["ip"] == frontend_ip
            })
            .is_some()
    });
    let set = bed
        .node("node-a")
        .unwrap()
        .exec(&[
            "nft",
            "list",
            "set",
            "ip",
            nodemesh_redirect::NFT_TABLE,
            nodemesh_redirect::NFT_SET,
        ])
        .unwrap();
    assert!(
        set.contains(&bed.pod_ip("batch-a").unwrap().to_string()),
        "{set}"
    );
    assert!(
        !set.contains(&frontend_ip),
        "frontend-a still captured: {set}"
    );

    // Back in, and a DENY policy for batch -> frontend arrives through the API.
    api.put(
        PODS,
        pod(
            "shop",
            "frontend-a",
            "frontend",
            &frontend_ip,
            "node-a",
            json!({"app": "frontend"}),
        ),
    );
    api.put(
        POLICIES,
        policy(
            "shop",
            "frontend-deny-batch",
            json!({
                "selector": {"matchLabels": {"app": "frontend"}},
                "action": "DENY",
                "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/batch"]}}]}],
            }),
        ),
    );
    let frontend = scenario::pod_http(&bed, "frontend-a").unwrap();
    eventually("batch-a -> frontend-a denied by the new policy", || {
        let refused = scenario::call(&bed, "batch-a", frontend, "GET", "/", "")
            .unwrap()
            .is_err();
        refused
            && scenario::find_flow(&bed, "node-a", |r| {
                r["verdict"] == "deny" && r["policy"] == "shop/frontend-deny-batch"
            })
            .is_some()
    });
    // The capture set follows the state on its own task: poll until frontend-a is captured.
    let vip = scenario::web_vip(&bed).unwrap();
    eventually(
        "frontend-a back in the mesh reaches web through the VIP",
        || {
            scenario::call(&bed, "frontend-a", vip, "GET", "/", "")
                .unwrap()
                .is_ok_and(|r| r.status == 200)
        },
    );
}
