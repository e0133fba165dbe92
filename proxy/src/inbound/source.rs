//! Who an HBONE stream comes from: the peer proxy's `forwarded` client address, believed only
//! when the state places that client where the peer could have it.

use std::net::{IpAddr, SocketAddr};

use nodemesh_identity::SpiffeId;
use nodemesh_state::MeshState;

use crate::addr::ClientAddr;

/// The node a connection from `ip` comes from: the node with that address, else the node of the
/// workload at `ip` (HBONE made from the client pod's IP), else the node whose pod network
/// holds it.
fn node_of(state: &MeshState, ip: IpAddr) -> Option<&str> {
    let IpAddr::V4(v4) = ip else { return None };
    let config = state.config();
    if let Some(node) = config.nodes().iter().find(|n| n.address == v4) {
        return Some(&node.name);
    }
    if let Some(w) = state.workload(ip) {
        return Some(&w.node);
    }
    config.node_of_pod_ip(v4).map(|n| n.name.as_str())
}

/// The client address of a stream from `peer` (the HBONE connection's TCP peer) whose verified
/// identity is `peer_id` and whose CONNECT said `forwarded`: the forwarded address when it is a
/// workload with `peer_id`'s identity on the peer's node; otherwise `peer` itself. A peer can so
/// speak only for its own node's pods of its own identity, never for another node's.
pub(super) fn trusted_source(
    state: &MeshState,
    peer_id: &SpiffeId,
    peer: ClientAddr,
    forwarded: Option<SocketAddr>,
) -> ClientAddr {
    let Some(forwarded) = forwarded else {
        return peer;
    };
    let Some(peer_node) = node_of(state, peer.ip()) else {
        return peer;
    };
    state
        .workload(forwarded.ip())
        .filter(|w| w.identity == *peer_id && w.node == peer_node)
        .map_or(peer, |_| ClientAddr(forwarded))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use nodemesh_config::Config;

    use super::*;

    const YAML: &str = r#"
nodes:
  - {name: node-a, address: 10.0.0.1, podCIDR: 10.1.0.0/24}
  - {name: node-b, address: 10.0.0.2, podCIDR: 10.2.0.0/24}
  - {name: node-c, address: 10.0.0.3, podCIDR: 10.3.0.0/24}
namespaces:
  - {name: shop, labels: {nodemesh.io/mesh: enabled}}
workloads:
  - {name: web-b, namespace: shop, serviceAccount: web, ip: 10.2.0.11, node: node-b}
  - {name: web-b2, namespace: shop, serviceAccount: web, ip: 10.2.0.12, node: node-b}
  - {name: db-b, namespace: shop, serviceAccount: db, ip: 10.2.0.21, node: node-b}
  - {name: web-c, namespace: shop, serviceAccount: web, ip: 10.3.0.11, node: node-c}
"#;

    fn state() -> MeshState {
        MeshState::new(Config::from_yaml_str(YAML, "/").unwrap(), "node-a").unwrap()
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn web() -> SpiffeId {
        SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap()
    }

    fn source(peer: &str, forwarded: Option<&str>) -> SocketAddr {
        trusted_source(&state(), &web(), ClientAddr(at(peer)), forwarded.map(at)).0
    }

    #[test]
    fn a_pod_of_the_peer_s_identity_on_the_peer_s_node_is_believed() {
        // From node-b's address, from the pod itself, from another pod of node-b.
        for peer in ["10.0.0.2:40000", "10.2.0.11:40000", "10.2.0.21:40000"] {
            assert_eq!(
                source(peer, Some("10.2.0.11:5555")),
                at("10.2.0.11:5555"),
                "{peer}"
            );
        }
        assert_eq!(source("10.0.0.2:1", Some("10.2.0.12:7")), at("10.2.0.12:7"));
    }

    #[test]
    fn anything_else_falls_back_to_the_peer_s_address() {
        let cases = [
            // node-c's proxy (holding a web certificate) speaking for node-b's web pod.
            ("10.0.0.3:1", Some("10.2.0.11:5555")),
            ("10.3.0.11:1", Some("10.2.0.11:5555")),
            // Another identity's pod, on the right node.
            ("10.0.0.2:1", Some("10.2.0.21:5555")),
            // An address no workload has, and a peer on no known node.
            ("10.0.0.2:1", Some("10.2.0.99:5555")),
            ("192.0.2.1:1", Some("10.2.0.11:5555")),
            ("10.0.0.2:1", None),
        ];
        for (peer, forwarded) in cases {
            assert_eq!(source(peer, forwarded), at(peer), "{peer} {forwarded:?}");
        }
    }
}
