//! [`Config`]: a whole validated standalone config, how to load it, and the look-ups the proxy
//! and the CA make on it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use nodemesh_identity::{SpiffeId, TrustDomain};
use serde::Serialize;

use crate::error::{ConfigError, ConfigErrors, LoadError};
use crate::model::{
    Ca, Endpoint, Labels, MESH_LABEL, MTLS_MODE_LABEL, Namespace, Node, RawPolicy, Service,
    ServicePort, WireguardPublicKey, Workload, as_display,
};
use crate::parse;

static NO_LABELS: Labels = BTreeMap::new();

/// A valid standalone config: every field typed, every cross-check passed.
///
/// Built only by [`Config::from_file`] or [`Config::from_yaml_str`]. Serializes back to the same
/// YAML schema (defaults written out, paths absolute when loaded from a file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    #[serde(serialize_with = "as_display")]
    trust_domain: TrustDomain,
    root_namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<Ca>,
    nodes: Vec<Node>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    namespaces: Vec<Namespace>,
    workloads: Vec<Workload>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<Service>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policies: Vec<RawPolicy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    network_policies: Vec<RawPolicy>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cluster_network_policies: Vec<RawPolicy>,
    /// Workload index by IP (IPs are unique).
    #[serde(skip)]
    by_ip: BTreeMap<Ipv4Addr, usize>,
    /// The labels of every namespace listed or holding a workload, with the label Kubernetes
    /// sets on every namespace, `kubernetes.io/metadata.name: <name>`.
    #[serde(skip)]
    namespace_labels: BTreeMap<String, Labels>,
}

/// The label Kubernetes puts on every namespace, naming it (NetworkPolicies select by it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The sections of a config, typed: what the YAML parser produces, or what another source (the
/// Kubernetes watchers) assembles with [`Config::assemble`].
#[derive(Debug, Clone)]
pub struct Parts {
    /// The SPIFFE trust domain.
    pub trust_domain: TrustDomain,
    /// The root namespace.
    pub root_namespace: String,
    /// The CA settings.
    pub ca: Option<Ca>,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The namespaces with labels.
    pub namespaces: Vec<Namespace>,
    /// The workloads; their IPs must be unique (the last one of an IP wins).
    pub workloads: Vec<Workload>,
    /// The Services.
    pub services: Vec<Service>,
    /// The AuthorizationPolicy documents.
    pub policies: Vec<RawPolicy>,
    /// The Kubernetes NetworkPolicy documents (`networking.k8s.io/v1`).
    pub network_policies: Vec<RawPolicy>,
    /// The ClusterNetworkPolicy documents (`policy.networking.k8s.io/v1alpha2`).
    pub cluster_network_policies: Vec<RawPolicy>,
}

/// A node with everything `--wireguard` needs (see [`Config::require_wireguard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WireguardNode<'a> {
    /// The node.
    pub node: &'a Node,
    /// Its pod network, routed through its tunnel.
    pub pod_cidr: Ipv4Net,
    /// Its public key.
    pub public_key: WireguardPublicKey,
}

impl Config {
    /// A config from typed parts, without the YAML's cross-checks: for a source that keeps its
    /// own invariants (the Kubernetes watchers keep one running pod per IP).
    pub fn assemble(p: Parts) -> Self {
        Self::from_parts(p)
    }

    pub(crate) fn from_parts(p: Parts) -> Self {
        let by_ip = p
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| (w.ip, i))
            .collect();
        let mut namespace_labels: BTreeMap<String, Labels> = p
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), n.labels.clone()))
            .collect();
        for w in &p.workloads {
            namespace_labels.entry(w.namespace.clone()).or_default();
        }
        for (name, labels) in &mut namespace_labels {
            labels
                .entry(NAMESPACE_NAME_LABEL.to_owned())
                .or_insert_with(|| name.clone());
        }
        Self {
            namespace_labels,
            trust_domain: p.trust_domain,
            root_namespace: p.root_namespace,
            ca: p.ca,
            nodes: p.nodes,
            namespaces: p.namespaces,
            workloads: p.workloads,
            services: p.services,
            policies: p.policies,
            network_policies: p.network_policies,
            cluster_network_policies: p.cluster_network_policies,
            by_ip,
        }
    }

    /// Reads and validates the standalone YAML at `path`. Relative paths in it are taken
    /// relative to the file's directory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let io_error = |source| LoadError::Io {
            path: path.to_owned(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(io_error)?;
        let absolute = std::path::absolute(path).map_err(io_error)?;
        let base_dir = absolute.parent().unwrap_or(Path::new("/"));
        Self::from_yaml_str(&text, base_dir).map_err(|errors| LoadError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }

    /// Parses and validates standalone YAML; relative paths in it are resolved against
    /// `base_dir`. Returns every mistake at once.
    pub fn from_yaml_str(text: &str, base_dir: impl AsRef<Path>) -> Result<Self, ConfigErrors> {
        parse::parse(text, base_dir.as_ref())
    }

    /// The config as YAML in the same schema; [`Config::from_yaml_str`] reads it back to an equal
    /// config.
    pub fn to_yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        serde_saphyr::to_string(self)
    }

    /// The SPIFFE trust domain (default `cluster.local`).
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root namespace, whose policies apply mesh-wide (default `nodemesh-system`).
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// The CA settings, if the file has them.
    pub fn ca(&self) -> Option<&Ca> {
        self.ca.as_ref()
    }

    /// The CA settings, or the error `ca: required by nodemesh proxy` for a file without them.
    pub fn require_ca(&self) -> Result<&Ca, ConfigError> {
        self.ca.as_ref().ok_or_else(|| {
            ConfigError::new(
                "ca",
                "required by nodemesh proxy (address and rootCert of the CA)",
            )
        })
    }

    /// Every node with its podCIDR and WireGuard key, or an error for each node missing one
    /// (`nodes[1].podCIDR: required by --wireguard`).
    pub fn require_wireguard(&self) -> Result<Vec<WireguardNode<'_>>, ConfigErrors> {
        let mut ready = Vec::new();
        let mut errors = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.pod_cidr.is_none() {
                errors.push(ConfigError::new(
                    format!("nodes[{i}].podCIDR"),
                    "required by --wireguard",
                ));
            }
            if node.wireguard_public_key.is_none() {
                errors.push(ConfigError::new(
                    format!("nodes[{i}].wireguardPublicKey"),
                    "required by --wireguard",
                ));
            }
            if let (Some(pod_cidr), Some(public_key)) = (node.pod_cidr, node.wireguard_public_key) {
                ready.push(WireguardNode {
                    node,
                    pod_cidr,
                    public_key,
                });
            }
        }
        if errors.is_empty() {
            Ok(ready)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The nodes, in file order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The listed namespaces, in file order.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.namespaces
    }

    /// The workloads, in file order.
    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// The Services, in file order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The AuthorizationPolicy documents, in file order, uncompiled.
    pub fn policies(&self) -> &[RawPolicy] {
        &self.policies
    }

    /// The NetworkPolicy documents, in file order, uncompiled.
    pub fn network_policies(&self) -> &[RawPolicy] {
        &self.network_policies
    }

    /// The ClusterNetworkPolicy documents, in file order, uncompiled.
    pub fn cluster_network_policies(&self) -> &[RawPolicy] {
        &self.cluster_network_policies
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node whose podCIDR holds `ip`.
    pub fn node_of_pod_ip(&self, ip: Ipv4Addr) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.pod_cidr.is_some_and(|net| net.contains(&ip)))
    }

    /// The listed namespace called `name`.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// The labels of namespace `name` with `kubernetes.io/metadata.name` (as Kubernetes sets
    /// it); none for a namespace neither listed nor holding a workload.
    pub fn namespace_labels(&self, name: &str) -> &Labels {
        self.namespace_labels.get(name).unwrap_or(&NO_LABELS)
    }

    /// The workload with IP `ip`.
    pub fn workload_by_ip(&self, ip: Ipv4Addr) -> Option<&Workload> {
        self.by_ip.get(&ip).and_then(|&i| self.workloads.get(i))
    }

    /// The workloads that run on node `node`.
    pub fn workloads_on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Workload> {
        self.workloads.iter().filter(move |w| w.node == node)
    }

    /// The in-mesh workloads that run on node `node` (see [`Config::in_mesh`]): the pods a node's
    /// proxy serves and its capture rules cover.
    pub fn mesh_workloads_on_node<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Workload> {
        self.workloads_on_node(node).filter(|w| self.in_mesh(w))
    }

    /// Whether `workload` is in the mesh: its namespace is labelled `nodemesh.io/mesh=enabled`
    /// and the workload itself is not labelled `nodemesh.io/mesh=disabled`.
    pub fn in_mesh(&self, workload: &Workload) -> bool {
        self.namespace_labels(&workload.namespace)
            .get(MESH_LABEL)
            .is_some_and(|v| v == "enabled")
            && workload
                .labels
                .get(MESH_LABEL)
                .is_none_or(|v| v != "disabled")
    }

    /// Whether namespace `name` accepts plaintext from outside the mesh (labelled
    /// `nodemesh.io/mtls-mode=permissive`); mesh namespaces are strict otherwise.
    pub fn is_permissive(&self, name: &str) -> bool {
        self.namespace_labels(name)
            .get(MTLS_MODE_LABEL)
            .is_some_and(|v| v == "permissive")
    }

    /// The SPIFFE ID of `workload`: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn spiffe_id<'a>(&self, workload: &'a Workload) -> &'a SpiffeId {
        &workload.identity
    }

    /// The workloads behind `service`: its explicit endpoints when it has them (Kubernetes), else
    /// those of its namespace that carry every label of its selector (none for an empty
    /// selector), mesh or not.
    pub fn service_endpoints<'a>(
        &'a self,
        service: &'a Service,
    ) -> impl Iterator<Item = &'a Workload> {
        let explicit = service.endpoints.as_deref().map(|ips| {
            ips.iter()
                .filter_map(|ip| self.workload_by_ip(*ip))
                .filter(|w| w.namespace == service.namespace)
        });
        let selected = explicit
            .is_none()
            .then(|| self.selected(service))
            .into_iter()
            .flatten();
        explicit.into_iter().flatten().chain(selected)
    }

    /// Every endpoint of `service`: its explicit endpoints when it has them (a workload of
    /// another namespace is skipped; an address that is no workload is an
    /// [`Endpoint::Address`]), else the workloads its selector picks.
    pub fn service_targets<'a>(&'a self, service: &'a Service) -> Vec<Endpoint<'a>> {
        match service.endpoints.as_deref() {
            Some(ips) => ips
                .iter()
                .filter_map(|ip| match self.workload_by_ip(*ip) {
                    Some(w) if w.namespace == service.namespace => Some(Endpoint::Workload(w)),
                    Some(_) => None,
                    None => Some(Endpoint::Address(*ip)),
                })
                .collect(),
            None => self.selected(service).map(Endpoint::Workload).collect(),
        }
    }

    /// The Service and port that `ip:port` reaches through kube-proxy: a port of a Service VIP,
    /// or a NodePort on any node's address.
    pub fn service_at(&self, ip: Ipv4Addr, port: u16) -> Option<(&Service, &ServicePort)> {
        self.service_by_vip(ip, port).or_else(|| {
            if !self.nodes.iter().any(|n| n.address == ip) {
                return None;
            }
            self.services.iter().find_map(|s| {
                s.ports
                    .iter()
                    .find(|p| p.node_port == Some(port))
                    .map(|p| (s, p))
            })
        })
    }

    /// The Service with the virtual IP `vip`, whatever the port.
    pub fn service_with_vip(&self, vip: Ipv4Addr) -> Option<&Service> {
        self.services.iter().find(|s| s.vip == vip)
    }

    fn selected<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Workload> {
        self.workloads.iter().filter(move |w| {
            !service.selector.is_empty()
                && w.namespace == service.namespace
                && service
                    .selector
                    .iter()
                    .all(|(k, v)| w.labels.get(k) == Some(v))
        })
    }

    /// The Service and port that `vip:port` addresses.
    pub fn service_by_vip(&self, vip: Ipv4Addr, port: u16) -> Option<(&Service, &ServicePort)> {
        self.services
            .iter()
            .filter(|s| s.vip == vip)
            .find_map(|s| s.ports.iter().find(|p| p.port == port).map(|p| (s, p)))
    }
}
