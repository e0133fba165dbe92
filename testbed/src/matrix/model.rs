//! The matrix's model, as the Kubernetes e2e network-policy suite has it: namespaces `x`, `y`,
//! `z` with pods `a`, `b`, `c` each, labelled `ns: <namespace>` (and
//! `kubernetes.io/metadata.name`) and `pod: <pod>`, spread over two nodes; the ports every pod
//! serves (TCP and UDP 80 and 81); which pods are in the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

/// The model's namespaces.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];
/// The two nodes (names distinct from the other testbeds', for logs).
pub const NODES: [&str; 2] = ["netpol-1", "netpol-2"];

/// A pod of the model, `x/a` ... `z/c`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodId(u8);

impl PodId {
    /// Every pod, `x/a` first, in namespace then pod order.
    pub fn all() -> impl Iterator<Item = PodId> {
        (0..(NAMESPACES.len() * POD_NAMES.len()) as u8).map(PodId)
    }

    /// The pod `pod` of namespace `namespace`, if both are in the model.
    pub fn new(namespace: &str, pod: &str) -> Option<Self> {
        let ns = NAMESPACES.iter().position(|n| *n == namespace)?;
        let p = POD_NAMES.iter().position(|n| *n == pod)?;
        Some(Self((ns * POD_NAMES.len() + p) as u8))
    }

    /// Parses `x/a`.
    pub fn parse(text: &str) -> Option<Self> {
        let (ns, pod) = text.split_once('/')?;
        Self::new(ns, pod)
    }

    /// Its namespace (`x`).
    pub fn namespace(self) -> &'static str {
        NAMESPACES[usize::from(self.0) / POD_NAMES.len()]
    }

    /// Its name inside the namespace (`a`).
    pub fn name(self) -> &'static str {
        POD_NAMES[usize::from(self.0) % POD_NAMES.len()]
    }

    /// The testbed pod's name (`x-a`: testbed pod names are unique cluster-wide).
    pub fn testbed_name(self) -> String {
        format!("{}-{}", self.namespace(), self.name())
    }

    /// The node it runs on: pods alternate between the two nodes, so that every namespace has
    /// pods on both.
    pub fn node(self) -> &'static str {
        NODES[usize::from(self.0) % NODES.len()]
    }
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format!("{}/{}", self.namespace(), self.name()))
    }
}

impl fmt::Debug for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The pod `x/a` (for scenarios; panics on a name outside the model, a typo in a scenario).
pub fn pod(text: &str) -> PodId {
    match PodId::parse(text) {
        Some(pod) => pod,
        None => panic!("{text:?} is no pod of the matrix (x/a ... z/c)"),
    }
}

/// A transport protocol probed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// As Kubernetes writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

/// A port and protocol every pod serves.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct PortProtocol {
    /// The protocol.
    pub protocol: Protocol,
    /// The port.
    pub port: u16,
}

impl PortProtocol {
    /// The container port's name the pods declare (`serve-80-tcp`).
    pub fn port_name(self) -> String {
        format!(
            "serve-{}-{}",
            self.port,
            self.protocol.as_str().to_ascii_lowercase()
        )
    }
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol.as_str(), self.port)
    }
}

/// TCP port 80.
pub const TCP_80: PortProtocol = PortProtocol {
    protocol: Protocol::Tcp,
    port: 80,
};
/// TCP port 81.
pub const TCP_81: PortProtocol = PortProtocol {
    protocol: Protocol::Tcp,
    port: 81,
};
/// UDP port 80.
pub const UDP_80: PortProtocol = PortProtocol {
    protocol: Protocol::Udp,
    port: 80,
};
/// UDP port 81.
pub const UDP_81: PortProtocol = PortProtocol {
    protocol: Protocol::Udp,
    port: 81,
};
/// Every port probed.
pub const ALL_PORTS: [PortProtocol; 4] = [TCP_80, TCP_81, UDP_80, UDP_81];
/// The TCP ports.
pub const TCP_PORTS: [PortProtocol; 2] = [TCP_80, TCP_81];
/// The UDP ports.
pub const UDP_PORTS: [PortProtocol; 2] = [UDP_80, UDP_81];

/// Which pods are in the mesh, and whether the pods declare their container ports.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Namespaces labelled `nodemesh.io/mesh: enabled` (and `nodemesh.io/mtls-mode:
    /// permissive`, so that with no policy every pod reaches every pod, as the matrix's
    /// baseline needs).
    pub mesh_namespaces: BTreeSet<&'static str>,
    /// Pods of mesh namespaces labelled `nodemesh.io/mesh: disabled`.
    pub opted_out: BTreeSet<PodId>,
    /// Render `workloads[].ports` (`serve-80-tcp`, ...) into the config: what named ports
    /// resolve to. The default is whether the config parser knows the key
    /// ([`super::container_ports_supported`]).
    pub container_ports: bool,
}

impl Default for Layout {
    /// `x` and `y` in the mesh but `y/c` opted out, `z` outside; container ports rendered
    /// when the config parser knows them.
    fn default() -> Self {
        Self {
            mesh_namespaces: ["x", "y"].into(),
            opted_out: [pod("y/c")].into(),
            container_ports: super::container_ports_supported(),
        }
    }
}

impl Layout {
    /// Whether `pod` is in the mesh.
    pub fn in_mesh(&self, pod: PodId) -> bool {
        self.mesh_namespaces.contains(pod.namespace()) && !self.opted_out.contains(&pod)
    }
}

/// The model as built: the layout and each pod's IP.
#[derive(Debug, Clone)]
pub struct Model {
    /// Who is in the mesh.
    pub layout: Layout,
    /// Each pod's IP.
    pub ips: BTreeMap<PodId, Ipv4Addr>,
}

impl Model {
    /// The IP of `pod`.
    pub fn ip(&self, pod: PodId) -> Ipv4Addr {
        self.ips[&pod]
    }

    /// `ip/32` of `pod`, for ipBlock peers.
    pub fn cidr(&self, pod: PodId) -> String {
        format!("{}/32", self.ip(pod))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_round_trip_and_spread_over_both_nodes() {
        let all: Vec<PodId> = PodId::all().collect();
        assert_eq!(all.len(), 9);
        for p in &all {
            assert_eq!(PodId::parse(&p.to_string()), Some(*p));
        }
        assert_eq!(pod("y/b").testbed_name(), "y-b");
        assert_eq!(
            format!("{:>4}|{:<4}|", pod("x/a"), pod("z/c")),
            " x/a|z/c |"
        );
        for ns in NAMESPACES {
            let nodes: BTreeSet<&str> = all
                .iter()
                .filter(|p| p.namespace() == ns)
                .map(|p| p.node())
                .collect();
            assert_eq!(nodes.len(), 2, "namespace {ns} spans both nodes");
        }
        assert_eq!(PodId::parse("w/a"), None);
        assert_eq!(TCP_81.port_name(), "serve-81-tcp");
        let layout = Layout::default();
        assert!(layout.in_mesh(pod("x/a")) && !layout.in_mesh(pod("y/c")));
        assert!(!layout.in_mesh(pod("z/a")));
    }
}
