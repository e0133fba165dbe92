//! Outbound classification, without sockets: where each kind of destination goes.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use nodemesh_config::Config;
use nodemesh_proxy::PendingPods;
use nodemesh_proxy::addr::{ClientAddr, OrigDstAddr};
use nodemesh_proxy::observe::RefusalReason;
use nodemesh_proxy::outbound::{Route, Routed, classify};
use nodemesh_state::MeshState;

const YAML: &str = r#"
nodes:
  - {name: node-a, address: 10.0.0.1, podCIDR: 10.1.0.0/24}
  - {name: node-b, address: 10.0.0.2, podCIDR: 10.2.0.0/24}
namespaces:
  - {name: shop, labels: {nodemesh.io/mesh: enabled}}
workloads:
  - {name: web-1, namespace: shop, serviceAccount: web, ip: 10.1.0.11, node: node-a, labels: {app: web}}
  - {name: local-1, namespace: shop, serviceAccount: local, ip: 10.1.0.12, node: node-a}
  - {name: plain-1, namespace: legacy, ip: 10.1.0.13, node: node-a}
  - {name: db-1, namespace: shop, serviceAccount: db, ip: 10.2.0.21, node: node-b, labels: {app: db}}
  - {name: db-2, namespace: shop, serviceAccount: db, ip: 10.2.0.22, node: node-b, labels: {app: db}}
services:
  - {name: db, namespace: shop, vip: 10.96.0.10, ports: [{port: 80, targetPort: 8080, nodePort: 30080}], selector: {app: db}}
  - {name: none, namespace: shop, vip: 10.96.0.11, ports: [{port: 80}], selector: {app: nothing}}
  - {name: kubernetes, namespace: default, vip: 10.96.0.1, ports: [{port: 443, targetPort: 6443}], endpoints: [10.0.0.250]}
  - {name: exporter, namespace: shop, vip: 10.96.0.12, ports: [{port: 9100}], endpoints: [10.0.0.2]}
  - {name: ghost, namespace: shop, vip: 10.96.0.13, ports: [{port: 80}], endpoints: [10.2.0.99]}
"#;

fn state() -> MeshState {
    MeshState::new(Config::from_yaml_str(YAML, "/").unwrap(), "node-a").unwrap()
}

fn none() -> PendingPods {
    PendingPods::default()
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Endpoints that are not pods (the API server behind `kubernetes.default`, a hostNetwork
/// backend on a node's address) are reached as passthrough, under the Service's name; an
/// endpoint inside a pod network that is no known workload is refused; a VIP port the Service
/// does not declare is refused, never passed through to the VIP.
#[test]
fn endpoints_that_are_not_pods_are_passthrough_and_undeclared_vip_ports_refused() {
    let st = state();
    let own = [a("127.0.0.1:15001")];
    let call = |dst: &str| {
        classify(
            &st,
            ClientAddr(a("10.1.0.11:40000")),
            OrigDstAddr(a(dst)),
            &own,
            &none(),
        )
    };
    assert_eq!(
        call("10.96.0.1:443"),
        Ok(Routed {
            route: Route::Passthrough {
                target: a("10.0.0.250:6443")
            },
            service: Some("kubernetes.default".into()),
        })
    );
    assert_eq!(
        call("10.96.0.12:9100").map(|r| r.route),
        Ok(Route::Passthrough {
            target: a("10.0.0.2:9100")
        }),
        "hostNetwork backend"
    );
    assert_eq!(
        call("10.96.0.13:80"),
        Err(RefusalReason::UnknownDestination)
    );
    assert_eq!(
        call("10.96.0.1:80"),
        Err(RefusalReason::UndeclaredServicePort)
    );
    assert_eq!(
        call("10.96.0.10:8080"),
        Err(RefusalReason::UndeclaredServicePort)
    );
}

/// A mesh pod calling a NodePort (on its own node or another) goes to the Service's endpoints
/// through the mesh, with policy, instead of being passed to kube-proxy's DNAT in plaintext.
#[test]
fn a_node_port_is_the_service() {
    let st = state();
    let own = [a("127.0.0.1:15001")];
    for node in ["10.0.0.1", "10.0.0.2"] {
        let routed = classify(
            &st,
            ClientAddr(a("10.1.0.11:40000")),
            OrigDstAddr(a(&format!("{node}:30080"))),
            &own,
            &none(),
        )
        .unwrap();
        assert!(matches!(routed.route, Route::Hbone { .. }), "{routed:?}");
        assert_eq!(routed.service.as_deref(), Some("db.shop"));
    }
    let other_port = classify(
        &st,
        ClientAddr(a("10.1.0.11:40000")),
        OrigDstAddr(a("10.0.0.1:30081")),
        &own,
        &none(),
    );
    assert!(matches!(
        other_port.map(|r| r.route),
        Ok(Route::Passthrough { .. })
    ));
}

#[test]
fn each_destination_kind_is_routed_or_refused() {
    let st = state();
    let web = a("10.1.0.11:40000");
    let own = [a("127.0.0.1:15001"), a("10.1.0.11:15008")];
    let route = |dst: &str| {
        classify(&st, ClientAddr(web), OrigDstAddr(a(dst)), &own, &none()).map(|r| r.route)
    };

    assert!(
        matches!(route("10.2.0.21:8080"), Ok(Route::Hbone { target, .. }) if target == a("10.2.0.21:8080"))
    );
    assert!(matches!(route("10.1.0.12:8080"), Ok(Route::Local { .. })));
    assert!(
        matches!(route("10.1.0.13:8080"), Ok(Route::Passthrough { .. })),
        "non-mesh pod"
    );
    assert!(
        matches!(route("93.184.216.34:443"), Ok(Route::Passthrough { .. })),
        "outside the mesh"
    );
    assert_eq!(
        route("10.2.0.99:8080"),
        Err(RefusalReason::UnknownDestination)
    );
    assert_eq!(route("10.96.0.11:80"), Err(RefusalReason::NoEndpoint));
    assert_eq!(route("127.0.0.1:15001"), Err(RefusalReason::Loop));
    assert_eq!(
        classify(
            &st,
            ClientAddr(a("10.1.0.77:1")),
            OrigDstAddr(a("10.2.0.21:8080")),
            &own,
            &none()
        )
        .map(|r| r.route),
        Err(RefusalReason::UnknownSource)
    );
    assert_eq!(
        classify(
            &st,
            ClientAddr(a("10.2.0.21:1")),
            OrigDstAddr(a("10.1.0.12:8080")),
            &own,
            &none()
        )
        .map(|r| r.route),
        Err(RefusalReason::UnknownSource),
        "a pod of another node is no local source"
    );
}

#[test]
fn service_vip_round_robins_over_endpoints_with_the_target_port() {
    let st = state();
    let mut targets = Vec::new();
    for _ in 0..4 {
        let Routed { route, service } = classify(
            &st,
            ClientAddr(a("10.1.0.11:1")),
            OrigDstAddr(a("10.96.0.10:80")),
            &[],
            &none(),
        )
        .unwrap();
        assert_eq!(service.as_deref(), Some("db.shop"));
        let Route::Hbone {
            target,
            destination,
            ..
        } = route
        else {
            panic!("{route:?}")
        };
        assert_eq!(destination.as_str(), "spiffe://cluster.local/ns/shop/sa/db");
        assert_eq!(target.port(), 8080);
        targets.push(target.ip().to_string());
    }
    assert_eq!(
        targets,
        ["10.2.0.21", "10.2.0.22", "10.2.0.21", "10.2.0.22"]
    );
}

/// A pod the CNI plugin captured before the state knew it: when the node's podCIDR does not
/// cover it, only the pending set keeps it from passing through; as a source it is unknown.
#[test]
fn pending_captured_pods_are_refused_both_ways() {
    let st = state();
    let pending = PendingPods::default();
    let new_pod = a("10.9.0.5:8080");
    let web = ClientAddr(a("10.1.0.11:40000"));
    let before = classify(&st, web, OrigDstAddr(new_pod), &[], &pending).map(|r| r.route);
    assert!(
        matches!(before, Ok(Route::Passthrough { .. })),
        "{before:?}"
    );
    pending.replace([new_pod.ip().to_string().parse().unwrap()].into());
    let to = classify(&st, web, OrigDstAddr(new_pod), &[], &pending).map(|r| r.route);
    assert_eq!(to, Err(RefusalReason::UnknownDestination));
    let from = classify(
        &st,
        ClientAddr(new_pod),
        OrigDstAddr(a("10.1.0.12:80")),
        &[],
        &pending,
    );
    assert_eq!(from.map(|r| r.route), Err(RefusalReason::UnknownSource));
}
