//! Kubernetes objects to the proxy's domain types, once per watch event (no I/O). Only the fields
//! nodemesh uses survive. Pods have their own module, [`crate::pod`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Node as KubeNode, NodeSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nodemesh_config::{Namespace, Node};

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

/// A namespace with its labels.
pub fn namespace(ns: &KubeNamespace) -> Option<Namespace> {
    Some(Namespace::new(
        ns.metadata.name.clone()?,
        ns.metadata.labels.clone().unwrap_or_default(),
    ))
}

/// A node: its InternalIP (IPv4), IPv4 podCIDR, WireGuard key annotation and labels
/// (ClusterNetworkPolicy `nodes` peers select by them). `None` without an IPv4 InternalIP; a
/// bad key is dropped with a warning.
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
    let pod_cidr = node.spec.as_ref().and_then(ipv4_pod_cidr);
    if pod_cidr.is_none() {
        tracing::debug!(node = %name, "no IPv4 podCIDR");
    }
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
    let labels = node.metadata.labels.clone().unwrap_or_default();
    Some(Node::new(name, address, pod_cidr, key).with_labels(labels))
}

/// The first IPv4 network of `spec.podCIDRs` (an IPv6-first dual-stack node lists its IPv6
/// network first), else `spec.podCIDR` when it is IPv4.
fn ipv4_pod_cidr(spec: &NodeSpec) -> Option<Ipv4Net> {
    spec.pod_cidrs
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(spec.pod_cidr.as_deref())
        .find_map(|c| c.parse().ok())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_need_an_internal_ipv4() {
        let n: KubeNode = serde_json::from_value(json!({
            "metadata": {"name": "n", "annotations": {WIREGUARD_KEY_ANNOTATION: "not-a-key"}},
            "spec": {"podCIDR": "10.1.1.0/24"},
            "status": {"addresses": [{"type": "Hostname", "address": "n"},
                                     {"type": "InternalIP", "address": "fd00::1"},
                                     {"type": "InternalIP", "address": "10.0.0.1"}]},
        }))
        .unwrap();
        let node = node(&n).unwrap();
        assert_eq!(node.address.to_string(), "10.0.0.1");
        assert_eq!(node.pod_cidr.unwrap().to_string(), "10.1.1.0/24");
        assert!(node.wireguard_public_key.is_none(), "a bad key is dropped");
        let dual: KubeNode = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"podCIDR": "fd00:1::/64", "podCIDRs": ["fd00:1::/64", "10.1.2.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]},
        }))
        .unwrap();
        assert_eq!(
            super::node(&dual).unwrap().pod_cidr.unwrap().to_string(),
            "10.1.2.0/24",
            "an IPv6-first node keeps its IPv4 podCIDR"
        );
        let bare: KubeNode = serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap();
        assert!(super::node(&bare).is_none());
    }

    #[test]
    fn services_and_slices() {
        let headless: Service = serde_json::from_value(json!({
            "metadata": {"name": "h", "namespace": "shop"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]},
        }))
        .unwrap();
        assert!(service(&headless).is_none());
        let named: Service = serde_json::from_value(json!({
            "metadata": {"name": "s", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "dns", "port": 53, "protocol": "UDP"}]},
        }))
        .unwrap();
        let s = service(&named).unwrap();
        assert_eq!(s.ports.len(), 1, "UDP ports are not ours");
        assert_eq!(
            s.ports[0].target_port, None,
            "named: resolved by the slices"
        );
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "s-1", "namespace": "shop",
                         "labels": {SERVICE_NAME_LABEL: "s"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.1.1"]},
                          {"addresses": ["10.1.1.2"], "conditions": {"ready": false}}],
            "ports": [{"name": "http", "port": 8080}],
        }))
        .unwrap();
        let info = endpoint_slice(&slice).unwrap();
        assert_eq!(info.ready, ["10.1.1.1".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(info.ports.get("http"), Some(&8080));
    }
}
