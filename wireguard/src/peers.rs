//! Peers, pure: the desired WireGuard configuration of a node from the cluster's node list, and
//! the diff from what a device has to what it should have. No I/O here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;
use nodemesh_config::{Config, WireguardPublicKey};
use nodemesh_net::ports;

use crate::error::WireguardError;

/// The WireGuard UDP port a node listens on unless told otherwise ([`ports::WIREGUARD`]).
pub const DEFAULT_PORT: u16 = ports::WIREGUARD;

/// A node as WireGuard sees it: where it is, which pods it has, its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The node's name.
    pub name: String,
    /// Its underlay address.
    pub address: Ipv4Addr,
    /// Its pod network.
    pub pod_cidr: Ipv4Net,
    /// Its public key.
    pub public_key: WireguardPublicKey,
}

/// The node list of a standalone config: every node with its podCIDR and key, or the config's
/// errors (`nodes[1].wireguardPublicKey: required by --wireguard`).
pub fn nodes_of(config: &Config) -> Result<Vec<NodeEntry>, WireguardError> {
    let nodes = config
        .require_wireguard()
        .map_err(WireguardError::NotReady)?;
    Ok(nodes
        .into_iter()
        .map(|n| NodeEntry {
            name: n.node.name.clone(),
            address: n.node.address,
            pod_cidr: n.pod_cidr,
            public_key: n.public_key,
        })
        .collect())
}

/// The node list as a cluster publishes it over time (Kubernetes: podCIDR from the Node, key
/// from its annotation). `local` gets `local_key` (its own key, published by this very process).
/// A node that has published no key yet gets `stand_in(name)`, a key nobody holds: its pod
/// network is routed into the tunnel all the same, where no handshake can complete, so its
/// traffic is dropped, never sent in plaintext, until its real key arrives. Nodes without a
/// podCIDR are left out.
pub fn published_nodes(
    config: &Config,
    local: &str,
    local_key: WireguardPublicKey,
    mut stand_in: impl FnMut(&str) -> WireguardPublicKey,
) -> Vec<NodeEntry> {
    config
        .nodes()
        .iter()
        .filter_map(|n| {
            let public_key = if n.name == local {
                local_key
            } else {
                n.wireguard_public_key.unwrap_or_else(|| stand_in(&n.name))
            };
            Some(NodeEntry {
                name: n.name.clone(),
                address: n.address,
                pod_cidr: n.pod_cidr?,
                public_key,
            })
        })
        .collect()
}

/// A remote node as a WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// The node's name (for logs and status).
    pub node: String,
    /// Its public key.
    pub public_key: WireguardPublicKey,
    /// Its WireGuard endpoint: the node's address and the WireGuard port.
    pub endpoint: SocketAddrV4,
    /// Its pod network: the peer's only allowed IPs, routed through the tunnel.
    pub pod_cidr: Ipv4Net,
}

/// What one node's WireGuard should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// This node.
    pub local: NodeEntry,
    /// The UDP port every node listens on.
    pub port: u16,
    /// The other nodes, by public key.
    pub peers: PeerSet,
}

/// Peers by public key.
pub type PeerSet = BTreeMap<[u8; 32], PeerSpec>;

impl Desired {
    /// The desired configuration of node `local` among `nodes`, every node listening on `port`.
    ///
    /// Refuses, naming the node and field: an unknown local node, overlapping pod CIDRs, a key
    /// used twice, and the all-zero key.
    pub fn plan(nodes: &[NodeEntry], local: &str, port: u16) -> Result<Self, WireguardError> {
        for (i, node) in nodes.iter().enumerate() {
            if node.public_key.as_bytes() == &[0; 32] {
                return Err(WireguardError::Config {
                    path: format!("nodes[{i}].wireguardPublicKey"),
                    reason: format!("node {:?} has the all-zero key", node.name),
                });
            }
            for (j, other) in nodes.iter().enumerate().take(i) {
                let (a, b) = (node.pod_cidr, other.pod_cidr);
                if a.contains(&b.network()) || b.contains(&a.network()) {
                    return Err(WireguardError::Config {
                        path: format!("nodes[{i}].podCIDR"),
                        reason: format!(
                            "{a} of node {:?} overlaps {b}, the podCIDR of node {:?} (nodes[{j}])",
                            node.name, other.name
                        ),
                    });
                }
                if node.public_key == other.public_key {
                    return Err(WireguardError::Config {
                        path: format!("nodes[{i}].wireguardPublicKey"),
                        reason: format!(
                            "node {:?} has the same key as node {:?} (nodes[{j}])",
                            node.name, other.name
                        ),
                    });
                }
            }
        }
        let local = nodes
            .iter()
            .find(|n| n.name == local)
            .cloned()
            .ok_or_else(|| WireguardError::Config {
                path: "--node".into(),
                reason: format!("no node {local:?} in the config"),
            })?;
        let peers = nodes
            .iter()
            .filter(|n| n.name != local.name)
            .map(|n| {
                let spec = PeerSpec {
                    node: n.name.clone(),
                    public_key: n.public_key,
                    endpoint: SocketAddrV4::new(n.address, port),
                    pod_cidr: n.pod_cidr,
                };
                (*n.public_key.as_bytes(), spec)
            })
            .collect();
        Ok(Self { local, port, peers })
    }

    /// The remote pod networks, routed through the tunnel.
    pub fn remote_cidrs(&self) -> Vec<Ipv4Net> {
        self.peers.values().map(|p| p.pod_cidr).collect()
    }
}

/// One step from the current peers to the desired ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// A new peer.
    Add(PeerSpec),
    /// A peer that is no longer wanted.
    Remove(PeerSpec),
    /// The same key with another endpoint or pod network.
    Update {
        /// What it was.
        from: PeerSpec,
        /// What it becomes.
        to: PeerSpec,
    },
}

impl fmt::Display for PeerChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Add(p) => write!(f, "add peer {} ({}, {})", p.node, p.endpoint, p.pod_cidr),
            Self::Remove(p) => write!(f, "remove peer {} ({})", p.node, p.public_key),
            Self::Update { from, to } => write!(
                f,
                "update peer {} ({} {} -> {} {})",
                to.node, from.endpoint, from.pod_cidr, to.endpoint, to.pod_cidr
            ),
        }
    }
}

/// The changes that turn `current` into `desired`, removals first. Peers that are equal are not
/// mentioned, so applying the diff leaves their tunnels alone.
pub fn diff(current: &PeerSet, desired: &PeerSet) -> Vec<PeerChange> {
    let removed = current
        .iter()
        .filter(|(k, _)| !desired.contains_key(*k))
        .map(|(_, p)| PeerChange::Remove(p.clone()));
    let added_or_updated = desired.iter().filter_map(|(k, want)| match current.get(k) {
        None => Some(PeerChange::Add(want.clone())),
        Some(have) if have.endpoint != want.endpoint || have.pod_cidr != want.pod_cidr => {
            Some(PeerChange::Update {
                from: have.clone(),
                to: want.clone(),
            })
        }
        Some(_) => None,
    });
    removed.chain(added_or_updated).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> WireguardPublicKey {
        WireguardPublicKey::from_bytes([n; 32])
    }

    #[test]
    fn published_nodes_stand_in_for_missing_keys() {
        let yaml = format!(
            "nodes:\n\
             - {{name: a, address: 10.0.0.1, podCIDR: 10.1.0.0/24}}\n\
             - {{name: b, address: 10.0.0.2, podCIDR: 10.2.0.0/24, wireguardPublicKey: {}}}\n\
             - {{name: c, address: 10.0.0.3, podCIDR: 10.3.0.0/24}}\n\
             - {{name: d, address: 10.0.0.4}}\n\
             workloads: []\n",
            key(2)
        );
        let config = Config::from_yaml_str(&yaml, ".").unwrap();
        let nodes = published_nodes(&config, "a", key(1), |_| key(9));
        let keys: Vec<_> = nodes
            .iter()
            .map(|n| (n.name.as_str(), n.public_key))
            .collect();
        // a: its own key; b: published; c: a stand-in (its pods stay in the tunnel); d: no
        // podCIDR, left out.
        assert_eq!(keys, vec![("a", key(1)), ("b", key(2)), ("c", key(9))]);
    }

    fn node(name: &str, n: u8) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            address: Ipv4Addr::new(10, 0, 0, n),
            pod_cidr: format!("10.{n}.0.0/24").parse().unwrap(),
            public_key: key(n),
        }
    }

    fn nodes() -> Vec<NodeEntry> {
        vec![node("node-a", 1), node("node-b", 2), node("node-c", 3)]
    }

    #[test]
    fn the_local_node_is_no_peer() {
        let d = Desired::plan(&nodes(), "node-a", DEFAULT_PORT).unwrap();
        assert_eq!(d.local.name, "node-a");
        let names: Vec<_> = d.peers.values().map(|p| p.node.as_str()).collect();
        assert_eq!(names, ["node-b", "node-c"]);
        let b = &d.peers[&[2; 32]];
        assert_eq!(b.endpoint, "10.0.0.2:51820".parse().unwrap());
        assert_eq!(b.pod_cidr, "10.2.0.0/24".parse().unwrap());
        assert_eq!(d.remote_cidrs().len(), 2);
    }

    #[test]
    fn an_unknown_local_node_is_named() {
        let err = Desired::plan(&nodes(), "node-z", DEFAULT_PORT).unwrap_err();
        assert_eq!(err.to_string(), "--node: no node \"node-z\" in the config");
    }

    #[test]
    fn overlapping_pod_cidrs_are_refused() {
        let mut n = nodes();
        n[2].pod_cidr = "10.2.0.128/25".parse().unwrap();
        let err = Desired::plan(&n, "node-a", DEFAULT_PORT)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "nodes[2].podCIDR: 10.2.0.128/25 of node \"node-c\" overlaps 10.2.0.0/24"
            ),
            "{err}"
        );
        assert!(err.contains("\"node-b\" (nodes[1])"), "{err}");
    }

    #[test]
    fn shared_and_zero_keys_are_refused() {
        let mut n = nodes();
        n[2].public_key = key(1);
        let err = Desired::plan(&n, "node-a", DEFAULT_PORT)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "nodes[2].wireguardPublicKey: node \"node-c\" has the same key as node \"node-a\""
            ),
            "{err}"
        );
        n[2].public_key = key(0);
        let err = Desired::plan(&n, "node-a", DEFAULT_PORT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("all-zero key"), "{err}");
    }

    #[test]
    fn adding_a_node_touches_no_other_peer() {
        let before = Desired::plan(&nodes()[..2], "node-a", DEFAULT_PORT).unwrap();
        let after = Desired::plan(&nodes(), "node-a", DEFAULT_PORT).unwrap();
        let changes = diff(&before.peers, &after.peers);
        assert_eq!(changes.len(), 1);
        assert!(matches!(&changes[0], PeerChange::Add(p) if p.node == "node-c"));
        assert!(diff(&after.peers, &after.peers).is_empty());
    }

    #[test]
    fn removal_rotation_and_moves() {
        let before = Desired::plan(&nodes(), "node-a", DEFAULT_PORT).unwrap();
        let mut n = nodes();
        n.remove(2); // node-c leaves
        n[1].public_key = key(9); // node-b rotates its key
        n.push(NodeEntry {
            address: Ipv4Addr::new(10, 0, 0, 40),
            ..node("node-d", 4)
        });
        let mut after = Desired::plan(&n, "node-a", DEFAULT_PORT).unwrap();
        let changes = diff(&before.peers, &after.peers);
        let text: Vec<_> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 4, "{text:?}");
        assert!(text[0].starts_with("remove peer node-b"), "{text:?}");
        assert!(text[1].starts_with("remove peer node-c"), "{text:?}");
        assert!(
            text.iter()
                .any(|t| t == "add peer node-d (10.0.0.40:51820, 10.4.0.0/24)")
        );
        assert!(text.iter().any(|t| t.starts_with("add peer node-b")));

        let moved = after.peers.get_mut(&[4; 32]).unwrap();
        let old = moved.clone();
        moved.endpoint = "10.0.0.41:51820".parse().unwrap();
        let mut with_old = after.peers.clone();
        with_old.insert([4; 32], old);
        let changes = diff(&with_old, &after.peers);
        assert_eq!(changes.len(), 1);
        assert!(
            matches!(&changes[0], PeerChange::Update { to, .. } if to.endpoint.ip().octets()[3] == 41)
        );
    }

    #[test]
    fn from_a_standalone_config() {
        let yaml = format!(
            "nodes:\n  - {{name: node-a, address: 10.0.0.1, podCIDR: 10.1.0.0/24, wireguardPublicKey: \"{}\"}}\n  - {{name: node-b, address: 10.0.0.2, podCIDR: 10.2.0.0/24, wireguardPublicKey: \"{}\"}}\nworkloads: []\n",
            key(1),
            key(2)
        );
        let config = Config::from_yaml_str(&yaml, "/").unwrap();
        let entries = nodes_of(&config).unwrap();
        assert_eq!(entries.len(), 2);
        let without_key =
            "nodes:\n  - {name: node-a, address: 10.0.0.1, podCIDR: 10.1.0.0/24}\nworkloads: []\n";
        let config = Config::from_yaml_str(without_key, "/").unwrap();
        let err = nodes_of(&config).unwrap_err().to_string();
        assert!(
            err.contains("nodes[0].wireguardPublicKey: required by --wireguard"),
            "{err}"
        );
    }
}
