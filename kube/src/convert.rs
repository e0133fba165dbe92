//! Kubernetes objects to the proxy's domain types, once per watch event (no I/O). Only the fields
//! nodemesh uses survive: a pod becomes a [`Workload`] of a few strings and an IP.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Node as KubeNode, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nodemesh_config::{DEFAULT_SERVICE_ACCOUNT, Namespace, Node, Workload, WorkloadFields};
use nodemesh_identity::TrustDomain;

/// The Node annotation holding the node's WireGuard public key (base64).
pub const WIREGUARD_KEY_ANNOTATION: &str = "nodemesh.io/wireguard-public-key";
/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `namespace/name` of an object (`name` alone for cluster-scoped ones).
pub fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or_default();
    match meta.namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// A pod as a workload: `None` for pods outside the proxy's view (no IPv4 pod IP yet, host
/// network, not scheduled, finished, or an identity that is not a valid SPIFFE ID).
pub fn workload(pod: &Pod, trust_domain: &TrustDomain) -> Option<Workload> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    if pod.metadata.deletion_timestamp.is_some() && status.pod_ip.is_none() {
        return None;
    }
    let ip: Ipv4Addr = status.pod_ip.as_deref()?.parse().ok()?;
    let fields = WorkloadFields {
        name: pod.metadata.name.clone()?,
        namespace: pod.metadata.namespace.clone()?,
        service_account: spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned()),
        ip,
        node: spec.node_name.clone()?,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
    };
    match Workload::new(trust_domain, fields) {
        Ok(w) => Some(w),
        Err(error) => {
            tracing::warn!(pod = %object_key(&pod.metadata), %error, "pod skipped: no valid SPIFFE ID");
            None
        }
    }
}

/// A namespace with its labels.
pub fn namespace(ns: &KubeNamespace) -> Option<Namespace> {
    Some(Namespace::new(
        ns.metadata.name.clone()?,
        ns.metadata.labels.clone().unwrap_or_default(),
    ))
}

/// A node: its InternalIP (IPv4), podCIDR and WireGuard key annotation. `None` without an IPv4
/// InternalIP; a bad podCIDR or key is dropped with a warning.
pub fn node(node: &KubeNode) -> Option<Node> {
    let name = node.metadata.name.clone()?;
    let address: Ipv4Addr = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())?;
    let pod_cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| match c.parse() {
            Ok(net) => Some(net),
            Err(_) => {
                tracing::debug!(node = %name, cidr = c, "podCIDR is not IPv4; ignored");
                None
            }
        });
    let key = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WIREGUARD_KEY_ANNOTATION))
        .and_then(|k| match k.parse() {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::warn!(node = %name, %error, "bad {WIREGUARD_KEY_ANNOTATION} annotation; ignored");
                None
            }
        });
    Some(Node::new(name, address, pod_cidr, key))
}

/// One port of a Service, before its EndpointSlices resolve named target ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// The port on the VIP.
    pub port: u16,
    /// Its name (empty when unnamed).
    pub name: String,
    /// A numeric `targetPort`, when the Service gives one.
    pub target_port: Option<u16>,
}

/// A Service with a ClusterIP (IPv4) and TCP ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The ClusterIP.
    pub vip: Ipv4Addr,
    /// TCP ports.
    pub ports: Vec<ServicePortInfo>,
}

/// A Service: `None` for headless Services, non-IPv4 ClusterIPs and Services without TCP ports.
pub fn service(svc: &Service) -> Option<ServiceInfo> {
    let spec = svc.spec.as_ref()?;
    let vip: Ipv4Addr = spec.cluster_ip.as_deref()?.parse().ok()?;
    let ports: Vec<ServicePortInfo> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            Some(ServicePortInfo {
                port: u16::try_from(p.port).ok().filter(|p| *p != 0)?,
                name: p.name.clone().unwrap_or_default(),
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|p| *p != 0),
                    Some(IntOrString::String(_)) => None,
                    None => u16::try_from(p.port).ok(),
                },
            })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    Some(ServiceInfo {
        namespace: svc.metadata.namespace.clone()?,
        name: svc.metadata.name.clone()?,
        vip,
        ports,
    })
}

/// The ready IPv4 endpoints of one EndpointSlice and its named ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// The namespace.
    pub namespace: String,
    /// The Service it belongs to.
    pub service: String,
    /// Ready endpoint addresses.
    pub ready: Vec<Ipv4Addr>,
    /// Port name (empty when unnamed) to endpoint port.
    pub ports: BTreeMap<String, u16>,
}

/// An EndpointSlice: `None` unless IPv4 and labelled with its Service. Endpoints count as ready
/// unless `conditions.ready` is false (the API's rule).
pub fn endpoint_slice(slice: &EndpointSlice) -> Option<SliceInfo> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    let ready = slice
        .endpoints
        .iter()
        .flatten()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse().ok())
        .collect();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok()?;
            Some((p.name.clone().unwrap_or_default(), port))
        })
        .collect();
    Some(SliceInfo {
        namespace: slice.metadata.namespace.clone()?,
        service,
        ready,
        ports,
    })
}
