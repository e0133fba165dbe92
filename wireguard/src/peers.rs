//! Peers, pure: the desired WireGuard configuration of a node from the cluster's node list, and
//! the diff from what a device has to what it should have. No I/O here.

use std::collections::{BTreeMap, BTreeSet};
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
    /// Its pod network, or the pods known without one.
    pub pods: PodNetwork,
    /// Its public key.
    pub public_key: WireguardPublicKey,
}

/// Where a node's pods are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetwork {
    /// Its podCIDR: routed into the tunnel, the peer's allowed IPs.
    Cidr(Ipv4Net),
    /// No podCIDR (not allocated yet, or an IPAM that ignores it): only the IPs of its pods the
    /// workload list knows. A node without a pod network cannot run WireGuard, so these IPs are
    /// dropped (unreachable routes), never routed in plaintext.
    Unassigned(BTreeSet<Ipv4Addr>),
}

impl PodNetwork {
    /// The podCIDR, if the node has one.
    pub fn cidr(&self) -> Option<Ipv4Net> {
        match self {
            Self::Cidr(net) => Some(*net),
            Self::Unassigned(_) => None,
        }
    }
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
            pods: PodNetwork::Cidr(n.pod_cidr),
            public_key: n.public_key,
        })
        .collect())
}

/// The node list as a cluster publishes it over time (Kubernetes: podCIDR from the Node, key
/// from its annotation). `local` gets `local_key` (its own key, published by this very process).
/// A node that has published no key yet gets `stand_in(name)`, a key nobody holds: its pod
/// network is routed into the tunnel all the same, where no handshake can complete, so its
/// traffic is dropped, never sent in plaintext, until its real key arrives. A node without a
/// podCIDR comes with the IPs of its pods in the workload list ([`PodNetwork::Unassigned`]):
/// they are dropped until it has one, never routed in plaintext.
pub fn published_nodes(
    config: &Config,
    local: &str,
    local_key: WireguardPublicKey,
    mut stand_in: impl FnMut(&str) -> WireguardPublicKey,
) -> Vec<NodeEntry> {
    config
        .nodes()
        .iter()
        .map(|n| {
            let public_key = if n.name == local {
                local_key
            } else {
                n.wireguard_public_key.unwrap_or_else(|| stand_in(&n.name))
            };
            let pods = match n.pod_cidr {
                Some(net) => PodNetwork::Cidr(net),
                None => PodNetwork::Unassigned(
                    config.workloads_on_node(&n.name).map(|w| w.ip).collect(),
                ),
            };
            NodeEntry {
                name: n.name.clone(),
                address: n.address,
                pods,
                public_key,
            }
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
    /// This node's pod network.
    pub local_cidr: Ipv4Net,
    /// The UDP port every node listens on.
    pub port: u16,
    /// The other nodes with a pod network, by public key.
    pub peers: PeerSet,
    /// The other nodes without a pod network, each with the IPs of its known pods that no pod
    /// network covers: dropped, since they cannot be reached through the tunnel.
    pub unassigned: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

/// Peers by public key.
pub type PeerSet = BTreeMap<[u8; 32], PeerSpec>;

impl Desired {
    /// The desired configuration of node `local` among `nodes`, every node listening on `port`.
    ///
    /// Refuses, naming the node and field: an unknown local node, a local node without a pod
    /// network, overlapping pod CIDRs, a key used twice, and the all-zero key.
    pub fn plan(nodes: &[NodeEntry], local: &str, port: u16) -> Result<Self, WireguardError> {
        for (i, node) in nodes.iter().enumerate() {
            if node.public_key.as_bytes() == &[0; 32] {
                return Err(WireguardError::Config {
                    path: format!("nodes[{i}].wireguardPublicKey"),
                    reason: format!("node {:?} has the all-zero key", node.name),
                });
            }
            for (j, other) in nodes.iter().enumerate().take(i) {
                if let (Some(a), Some(b)) = (node.pods.cidr(), other.pods.cidr())
                    && (a.contains(&b.network()) || b.contains(&a.network()))
                {
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
        let (index, local) = nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.name == local)
            .ok_or_else(|| WireguardError::Config {
                path: "--node".into(),
                reason: format!("no node {local:?} in the config"),
            })?;
        let local_cidr = local.pods.cidr().ok_or_else(|| WireguardError::Config {
            path: format!("nodes[{index}].podCIDR"),
            reason: format!(
                "node {:?} (this node) has none: WireGuard needs this node's pod network (the \
                 tunnel's source, and what peers accept from it)",
                local.name
            ),
        })?;
        let local = local.clone();
        let remote = nodes.iter().filter(|n| n.name != local.name);
        let peers = remote
            .clone()
            .filter_map(|n| {
                let spec = PeerSpec {
                    node: n.name.clone(),
                    public_key: n.public_key,
                    endpoint: SocketAddrV4::new(n.address, port),
                    pod_cidr: n.pods.cidr()?,
                };
                Some((*n.public_key.as_bytes(), spec))
            })
            .collect();
        let unassigned = remote
            .filter_map(|n| match &n.pods {
                PodNetwork::Cidr(_) => None,
                PodNetwork::Unassigned(ips) => Some((n.name.clone(), ips)),
            })
            .map(|(name, ips)| {
                // Never an address a pod network or a node holds: those are routed (or are the
                // tunnel's own endpoints) and must not be dropped.
                let routed = |ip: &Ipv4Addr| {
                    nodes
                        .iter()
                        .any(|n| n.address == *ip || n.pods.cidr().is_some_and(|c| c.contains(ip)))
                };
                (name, ips.iter().copied().filter(|ip| !routed(ip)).collect())
            })
            .collect();
        Ok(Self {
            local,
            local_cidr,
            port,
            peers,
            unassigned,
        })
    }

    /// The remote pod networks, routed through the tunnel.
    pub fn remote_cidrs(&self) -> Vec<Ipv4Net> {
        self.peers.values().map(|p| p.pod_cidr).collect()
    }

    /// The known pods of remote nodes without a pod network, as `/32`s: dropped.
    pub fn unassigned_pods(&self) -> BTreeSet<Ipv4Net> {
        self.unassigned
            .values()
            .flatten()
            .map(|ip| Ipv4Net::from(*ip))
            .collect()
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
             workloads:\n\
             - {{name: p, namespace: default, ip: 10.4.0.7, node: d}}\n\
             - {{name: q, namespace: default, ip: 10.2.0.7, node: b}}\n",
            key(2)
        );
        let config = Config::from_yaml_str(&yaml, ".").unwrap();
        let nodes = published_nodes(&config, "a", key(1), |_| key(9));
        let keys: Vec<_> = nodes
            .iter()
            .map(|n| (n.name.as_str(), n.public_key))
            .collect();
        // a: its own key; b: published; c: a stand-in (its pods stay in the tunnel); d: no
        // podCIDR, a stand-in too, with its one known pod.
        assert_eq!(
            keys,
            vec![("a", key(1)), ("b", key(2)), ("c", key(9)), ("d", key(9))]
        );
        let pod = "10.4.0.7".parse().unwrap();
        assert_eq!(nodes[3].pods, PodNetwork::Unassigned([pod].into()));
        assert_eq!(nodes[1].pods.cidr(), Some("10.2.0.0/24".parse().unwrap()));
    }

    #[test]
    fn pods_of_a_node_without_pod_cidr_are_dropped_not_skipped() {
        let mut n = nodes();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        // node-c has no podCIDR: its pods, but not an address the others route or hold.
        n[2].pods = PodNetwork::Unassigned(
            [
                ip("10.9.0.5"),
                ip("10.9.0.6"),
                ip("10.2.0.9"),
                ip("10.0.0.1"),
            ]
            .into(),
        );
        let d = Desired::plan(&n, "node-a", DEFAULT_PORT).unwrap();
        let names: Vec<_> = d.peers.values().map(|p| p.node.as_str()).collect();
        assert_eq!(names, ["node-b"]);
        assert_eq!(
            d.unassigned,
            [("node-c".to_owned(), [ip("10.9.0.5"), ip("10.9.0.6")].into())].into()
        );
        assert_eq!(
            d.unassigned_pods(),
            [
                "10.9.0.5/32".parse().unwrap(),
                "10.9.0.6/32".parse().unwrap()
            ]
            .into()
        );
        assert_eq!(d.local_cidr, "10.1.0.0/24".parse().unwrap());
    }

    #[test]
    fn this_node_without_pod_cidr_is_refused_by_name() {
        let mut n = nodes();
        n[1].pods = PodNetwork::Unassigned(BTreeSet::new());
        let err = Desired::plan(&n, "node-b", DEFAULT_PORT)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("nodes[1].podCIDR: node \"node-b\" (this node) has none"),
            "{err}"
        );
    }

    fn node(name: &str, n: u8) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            address: Ipv4Addr::new(10, 0, 0, n),
            pods: PodNetwork::Cidr(format!("10.{n}.0.0/24").parse().unwrap()),
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
        n[2].pods = PodNetwork::Cidr("10.2.0.128/25".parse().unwrap());
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
