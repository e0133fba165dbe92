//! What to build ([`ClusterSpec`]) and where everything goes ([`Plan`]): a pure address plan, so
//! the layout is unit-tested without root.
//!
//! Node `i` (from 0) sits on the underlay at `10.200.0.(i+1)/24` with pod network
//! `10.200.(i+1).0/24`; its gateway address (the node side of every pod link, as the CNI `ptp`
//! plugin does) is `.1`, its pods get `.11`, `.12`, ... Service VIPs are `10.96.0.(10+j)`.
//! The underlay also holds hosts outside every pod network: [`API_SERVER`] (the cluster's API
//! server, the `kubernetes` Service's endpoint) and the cloud's metadata server [`METADATA`],
//! which every node routes to on its uplink.
//!
//! A dual-stack spec ([`ClusterSpec::dual_stack`]) adds IPv6: node `i` at
//! `fd00:10:200::(i+1)/64` on the underlay, its pods at `fd00:10:200:(i+1)::(11+j)/128` (a
//! `/64` per node) behind the link-local gateway [`GATEWAY6`], as Calico wires IPv6 pods.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::TestbedError;
use crate::kube_proxy::KubeProxyMode;

/// A host on the underlay outside every pod network: where the API server listens.
pub const API_SERVER: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 240);
/// The API server's port.
pub const API_SERVER_PORT: u16 = 6443;
/// The cloud metadata server's address, on the underlay.
pub const METADATA: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The link-local gateway every pod's IPv6 default route points at (the node side of its link).
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The IPv6 underlay address of node `index` (from 0) of a dual-stack spec.
pub fn node_address6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x200, 0, 0, 0, 0, (index + 1) as u16)
}

/// The IPv6 pod network (`/64`) of node `index` (from 0) of a dual-stack spec.
pub fn pod_cidr6(index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x200, (index + 1) as u16, 0, 0, 0, 0)
}

/// The underlay address of node `index` (from 0) of a spec: `10.200.0.(index+1)`.
pub fn node_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, (index + 1) as u8)
}

/// Labels of a namespace or pod.
pub type Labels = BTreeMap<String, String>;

/// The mini-cluster to build.
#[derive(Debug, Clone, Default)]
pub struct ClusterSpec {
    /// Nodes, each with its pods.
    pub nodes: Vec<NodeSpec>,
    /// Namespaces with labels (`nodemesh.io/mesh: enabled` puts one in the mesh).
    pub namespaces: Vec<NamespaceSpec>,
    /// Services: a VIP in front of the pods their selector picks.
    pub services: Vec<ServiceSpec>,
    /// AuthorizationPolicy documents, as JSON (the same shape as the YAML/CRD).
    pub policies: Vec<serde_json::Value>,
    /// Kubernetes NetworkPolicy documents (`networkPolicies:`; the key is left out of the
    /// config while empty).
    pub network_policies: Vec<serde_json::Value>,
    /// ClusterNetworkPolicy documents (`clusterNetworkPolicies:`; left out while empty).
    pub cluster_network_policies: Vec<serde_json::Value>,
    /// How nodes reach each other's pod networks.
    pub pod_routing: PodRouting,
    /// kube-proxy's Service rules on every node (`None`: no kube-proxy, Service VIPs exist only
    /// for the mesh).
    pub kube_proxy: Option<KubeProxyMode>,
    /// Nodes and pods get IPv6 addresses too (routed between nodes over the underlay).
    pub dual_stack: bool,
}

/// How a node reaches the pods of the other nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PodRouting {
    /// A route per other node's pod network via that node's underlay address (as flannel's
    /// `host-gw`): pod traffic crosses the underlay as it is.
    #[default]
    Underlay,
    /// No such routes: only what a test sets up (a tunnel, or
    /// [`crate::Testbed::route_pod_networks`] later) carries pod traffic between nodes.
    None,
}

/// One node and its pods.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node name, e.g. `node-a`.
    pub name: String,
    /// The pods scheduled on it.
    pub pods: Vec<PodSpec>,
}

/// One pod.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Pod name, unique in the cluster.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account (the SPIFFE ID's `sa` segment).
    pub service_account: String,
    /// Labels.
    pub labels: Labels,
    /// Container ports (`workloads[].ports`, what NetworkPolicy named ports resolve to; the key
    /// is left out of the config while empty).
    pub ports: Vec<ContainerPort>,
}

/// A port a pod's container declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    /// The port's name.
    pub name: String,
    /// The port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: &'static str,
}

impl PodSpec {
    /// A pod with no labels.
    pub fn new(name: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            labels: Labels::new(),
            ports: Vec::new(),
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// A namespace with labels.
#[derive(Debug, Clone)]
pub struct NamespaceSpec {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
}

/// A Service: `vip:port` in front of the selected pods' `target_port`.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service port.
    pub port: u16,
    /// Pod port.
    pub target_port: u16,
    /// Label selector.
    pub selector: Labels,
    /// The port every node's address forwards to the Service (kube-proxy's NodePort).
    pub node_port: Option<u16>,
    /// Endpoints that are not pods (the API server, hostNetwork pods), used instead of the
    /// selector when not empty.
    pub endpoints: Vec<Ipv4Addr>,
}

impl ServiceSpec {
    /// A ClusterIP Service in front of the pods `selector` picks.
    pub fn new(name: &str, namespace: &str, port: u16, target_port: u16, selector: Labels) -> Self {
        Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            port,
            target_port,
            selector,
            node_port: None,
            endpoints: Vec::new(),
        }
    }
}

/// Where a node and its pods live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub address: Ipv4Addr,
    /// Pod network base (`/24`).
    pub pod_cidr: Ipv4Addr,
    /// The node side of every pod link.
    pub gateway: Ipv4Addr,
    /// IPv6 underlay address (dual-stack).
    pub address6: Option<Ipv6Addr>,
    /// IPv6 pod network base (`/64`, dual-stack).
    pub pod_cidr6: Option<Ipv6Addr>,
    /// Its pods, in spec order.
    pub pods: Vec<PodPlan>,
}

/// Where a pod lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlan {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Labels.
    pub labels: Labels,
    /// Container ports.
    pub ports: Vec<ContainerPort>,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Pod IPv6 address (dual-stack).
    pub ip6: Option<Ipv6Addr>,
    /// The node-side interface of its link (`pod0`, `pod1`, ...).
    pub host_link: String,
}

/// A Service with its VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// The spec.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Virtual IP.
    pub vip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// Pod port.
    pub target_port: u16,
    /// Label selector.
    pub selector: Labels,
    /// kube-proxy's NodePort.
    pub node_port: Option<u16>,
    /// Explicit endpoints that are not pods (empty: the selector's pods).
    pub endpoints: Vec<Ipv4Addr>,
}

/// The address plan of a [`ClusterSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Nodes in spec order.
    pub nodes: Vec<NodePlan>,
    /// Services in spec order.
    pub services: Vec<ServicePlan>,
}

/// Most nodes a plan places (`10.200.0.1` ... `10.200.0.200`).
pub const MAX_NODES: usize = 200;
/// Most pods per node (`.11` ... `.250`).
pub const MAX_PODS_PER_NODE: usize = 240;

impl Plan {
    /// Places every node, pod and Service; refuses duplicate names and oversized specs.
    pub fn new(spec: &ClusterSpec) -> Result<Self, TestbedError> {
        if spec.nodes.is_empty() {
            return Err(TestbedError::Spec("at least one node is needed".into()));
        }
        if spec.nodes.len() > MAX_NODES {
            return Err(TestbedError::Spec(format!(
                "{} nodes: at most {MAX_NODES}",
                spec.nodes.len()
            )));
        }
        let mut seen_nodes = std::collections::BTreeSet::new();
        let mut seen_pods = std::collections::BTreeSet::new();
        let mut nodes = Vec::with_capacity(spec.nodes.len());
        for (i, node) in spec.nodes.iter().enumerate() {
            if !seen_nodes.insert(node.name.as_str()) {
                return Err(TestbedError::Spec(format!("node {:?} twice", node.name)));
            }
            if node.pods.len() > MAX_PODS_PER_NODE {
                return Err(TestbedError::Spec(format!(
                    "node {:?} has {} pods: at most {MAX_PODS_PER_NODE}",
                    node.name,
                    node.pods.len()
                )));
            }
            let n = (i + 1) as u8;
            let pods = node
                .pods
                .iter()
                .enumerate()
                .map(|(j, pod)| {
                    if !seen_pods.insert(pod.name.as_str()) {
                        return Err(TestbedError::Spec(format!("pod {:?} twice", pod.name)));
                    }
                    Ok(PodPlan {
                        name: pod.name.clone(),
                        namespace: pod.namespace.clone(),
                        service_account: pod.service_account.clone(),
                        labels: pod.labels.clone(),
                        ports: pod.ports.clone(),
                        ip: Ipv4Addr::new(10, 200, n, 11 + j as u8),
                        ip6: spec.dual_stack.then(|| {
                            let [a, b, c, d, ..] = pod_cidr6(i).segments();
                            Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0x11 + j as u16)
                        }),
                        host_link: format!("pod{j}"),
                    })
                })
                .collect::<Result<_, _>>()?;
            nodes.push(NodePlan {
                name: node.name.clone(),
                address: node_address(i),
                pod_cidr: Ipv4Addr::new(10, 200, n, 0),
                gateway: Ipv4Addr::new(10, 200, n, 1),
                address6: spec.dual_stack.then(|| node_address6(i)),
                pod_cidr6: spec.dual_stack.then(|| pod_cidr6(i)),
                pods,
            });
        }
        let services = spec
            .services
            .iter()
            .enumerate()
            .map(|(j, s)| ServicePlan {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                vip: Ipv4Addr::new(10, 96, 0, 10 + j as u8),
                port: s.port,
                target_port: s.target_port,
                selector: s.selector.clone(),
                node_port: s.node_port,
                endpoints: s.endpoints.clone(),
            })
            .collect();
        Ok(Self { nodes, services })
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod called `name` and the node it runs on.
    pub fn pod(&self, name: &str) -> Option<(&NodePlan, &PodPlan)> {
        self.nodes
            .iter()
            .find_map(|n| n.pods.iter().find(|p| p.name == name).map(|p| (n, p)))
    }

    /// The Service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServicePlan> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The endpoint IPs of `service`: its explicit endpoints, else the pods of its namespace
    /// carrying every label of its selector (none for an empty selector).
    pub fn service_endpoints(&self, service: &ServicePlan) -> Vec<Ipv4Addr> {
        if !service.endpoints.is_empty() {
            return service.endpoints.clone();
        }
        self.nodes
            .iter()
            .flat_map(|n| &n.pods)
            .filter(|p| {
                !service.selector.is_empty()
                    && p.namespace == service.namespace
                    && service
                        .selector
                        .iter()
                        .all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .map(|p| p.ip)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ClusterSpec {
        ClusterSpec {
            nodes: vec![
                NodeSpec {
                    name: "node-a".into(),
                    pods: vec![
                        PodSpec::new("a1", "shop", "web"),
                        PodSpec::new("a2", "shop", "db"),
                    ],
                },
                NodeSpec {
                    name: "node-b".into(),
                    pods: vec![PodSpec::new("b1", "shop", "web")],
                },
            ],
            services: vec![ServiceSpec::new("web", "shop", 80, 8080, Labels::new())],
            ..ClusterSpec::default()
        }
    }

    #[test]
    fn places_nodes_pods_and_vips() {
        let plan = Plan::new(&spec()).unwrap();
        let b = plan.node("node-b").unwrap();
        assert_eq!(b.address, Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(b.gateway, Ipv4Addr::new(10, 200, 2, 1));
        let (node, a2) = plan.pod("a2").unwrap();
        assert_eq!(node.name, "node-a");
        assert_eq!(a2.ip, Ipv4Addr::new(10, 200, 1, 12));
        assert_eq!(a2.host_link, "pod1");
        assert_eq!(
            plan.service("web").unwrap().vip,
            Ipv4Addr::new(10, 96, 0, 10)
        );
    }

    #[test]
    fn dual_stack_adds_ipv6_per_node_and_pod() {
        let plan = Plan::new(&spec()).unwrap();
        assert!(
            plan.pod("a2").unwrap().1.ip6.is_none(),
            "IPv4 only by default"
        );
        let plan = Plan::new(&ClusterSpec {
            dual_stack: true,
            ..spec()
        })
        .unwrap();
        let (node, a2) = plan.pod("a2").unwrap();
        assert_eq!(a2.ip6, Some("fd00:10:200:1::12".parse().unwrap()));
        assert_eq!(node.address6, Some("fd00:10:200::1".parse().unwrap()));
        let b = plan.node("node-b").unwrap();
        assert_eq!(b.pod_cidr6, Some("fd00:10:200:2::".parse().unwrap()));
        assert_eq!(b.pods[0].ip6, Some("fd00:10:200:2::11".parse().unwrap()));
    }

    #[test]
    fn refuses_duplicates_and_empty_specs() {
        let mut dup = spec();
        dup.nodes[1].pods.push(PodSpec::new("a1", "shop", "x"));
        assert!(
            Plan::new(&dup)
                .unwrap_err()
                .to_string()
                .contains("\"a1\" twice")
        );
        assert!(Plan::new(&ClusterSpec::default()).is_err());
    }
}
