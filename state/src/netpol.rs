//! Network policies on a state: compiled from the config's documents when the state is built,
//! and decided for a flow with the pods and nodes the state knows.

use std::net::IpAddr;

use nodemesh_config::{Config, Protocol as PortProtocol, Workload};
use nodemesh_policy::Labels;
use nodemesh_policy::netpol::{
    self, ClusterNetworkPolicy, Endpoint, Flow, NetDecision, NetworkPolicy, NetworkPolicySet, Pod,
    Protocol,
};

use crate::{MeshState, PolicyProblem};

/// A workload as network policies see it: itself and its namespace's labels.
#[derive(Clone, Copy, Debug)]
pub struct PodView<'a> {
    /// The workload.
    pub workload: &'a Workload,
    /// Its namespace's labels.
    pub namespace_labels: &'a nodemesh_config::Labels,
}

impl<'a> PodView<'a> {
    /// The view of `workload` in `config`.
    pub fn new(config: &'a Config, workload: &'a Workload) -> Self {
        Self {
            workload,
            namespace_labels: config.namespace_labels(&workload.namespace),
        }
    }
}

impl Pod for PodView<'_> {
    fn namespace(&self) -> &str {
        &self.workload.namespace
    }

    fn labels(&self) -> &dyn Labels {
        &self.workload.labels
    }

    fn namespace_labels(&self) -> &dyn Labels {
        self.namespace_labels
    }

    fn has_named_port(&self, name: &str, port: u16, protocol: Protocol) -> bool {
        self.workload.ports.iter().any(|p| {
            p.port == port && p.name.as_deref() == Some(name) && same(p.protocol, protocol)
        })
    }
}

/// Whether a container port's protocol is the flow's.
pub fn same(port: PortProtocol, flow: Protocol) -> bool {
    matches!(
        (port, flow),
        (PortProtocol::Tcp, Protocol::Tcp)
            | (PortProtocol::Udp, Protocol::Udp)
            | (PortProtocol::Sctp, Protocol::Sctp)
    )
}

/// Who opened a flow, as far as the deciding proxy can tell.
#[derive(Clone, Copy, Debug)]
pub enum FlowSource<'a> {
    /// An address the proxy believes: a local pod it captured, or a plaintext client (whose
    /// address the node's routing vouches for).
    Address(IpAddr),
    /// A mesh client: its address, and the identity its certificate proves. It is the pod at
    /// that address only if the pod has that identity; otherwise it matches no pod and no
    /// `ipBlock`.
    Verified {
        /// The connection's source address.
        ip: IpAddr,
        /// The identity of its certificate.
        identity: &'a nodemesh_identity::SpiffeId,
    },
}

/// Compiles the config's NetworkPolicy and ClusterNetworkPolicy documents, each failing closed
/// when it does not compile (reported in `problems`, like AuthorizationPolicies).
pub(crate) fn compile(config: &Config, problems: &mut Vec<PolicyProblem>) -> NetworkPolicySet {
    let mut policies: Vec<NetworkPolicy> = Vec::new();
    let mut cluster: Vec<ClusterNetworkPolicy> = Vec::new();
    let report = |problems: &mut Vec<PolicyProblem>,
                  what: &str,
                  doc: &serde_json::Value,
                  errors: Vec<netpol::NetpolError>| {
        let name = doc
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or("<unnamed>");
        let policy = match doc.pointer("/metadata/namespace").and_then(|v| v.as_str()) {
            Some(ns) => format!("{what} {ns}/{name}"),
            None => format!("{what} {name}"),
        };
        problems.push(PolicyProblem {
            policy,
            errors: errors.iter().map(ToString::to_string).collect(),
        });
    };
    for raw in config.network_policies() {
        let (policy, errors) = netpol::network_policy_fail_closed(raw.document());
        if let Some(errors) = errors {
            report(problems, "NetworkPolicy", raw.document(), errors);
        }
        policies.extend(policy);
    }
    for raw in config.cluster_network_policies() {
        let (policy, errors) = netpol::cluster_network_policy_fail_closed(raw.document());
        if let Some(errors) = errors {
            report(problems, "ClusterNetworkPolicy", raw.document(), errors);
        }
        cluster.extend(policy);
    }
    NetworkPolicySet::new(policies, cluster)
}

impl MeshState {
    /// The compiled NetworkPolicies and ClusterNetworkPolicies.
    pub fn network_policies(&self) -> &NetworkPolicySet {
        &self.network_policies
    }

    /// Decides a new flow from `source` to `destination:port` (an endpoint, never a VIP) by the
    /// network policies, in both directions.
    pub fn decide_network(
        &self,
        source: FlowSource<'_>,
        destination: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> NetDecision<'_> {
        let config = self.config();
        let (src_ip, src_pod) = match source {
            FlowSource::Address(ip) => (Some(ip), self.workload(ip)),
            FlowSource::Verified { ip, identity } => match self.workload(ip) {
                Some(w) if w.identity == *identity => (Some(ip), Some(w)),
                Some(_) => (None, None),
                None => (Some(ip), None),
            },
        };
        let src_view = src_pod.map(|w| PodView::new(config, w));
        let dst_view = self.workload(destination).map(|w| PodView::new(config, w));
        let node_labels = |ip: Option<IpAddr>| {
            let v4 = ip.and_then(crate::ipv4)?;
            config
                .nodes()
                .iter()
                .find(|n| n.address == v4)
                .map(|n| &n.labels as &dyn Labels)
        };
        // A pod's address is no node's: look nodes up only for other addresses.
        let flow = Flow {
            source: Endpoint {
                ip: src_ip,
                pod: src_view.as_ref().map(|p| p as &dyn Pod),
                node: src_view.is_none().then(|| node_labels(src_ip)).flatten(),
            },
            destination: Endpoint {
                ip: Some(destination),
                pod: dst_view.as_ref().map(|p| p as &dyn Pod),
                node: dst_view
                    .is_none()
                    .then(|| node_labels(Some(destination)))
                    .flatten(),
            },
            protocol,
            port,
        };
        self.network_policies.decide(&flow)
    }
}
