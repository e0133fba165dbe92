//! The domain types of a standalone config: nodes, namespaces, workloads, services and raw
//! policies, holding typed values only (addresses, networks, keys, paths), never raw YAML.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipnet::Ipv4Net;
use nodemesh_identity::SpiffeId;
use serde::{Serialize, Serializer};

/// Kubernetes labels (or a label selector): key to value, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// The label by which a namespace joins the mesh (`enabled`) or a pod leaves it (`disabled`).
pub const MESH_LABEL: &str = "nodemesh.io/mesh";
/// The label by which a mesh namespace accepts plaintext from outside the mesh (`permissive`).
pub const MTLS_MODE_LABEL: &str = "nodemesh.io/mtls-mode";
/// The default of `workloads[].serviceAccount`.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Where the CA is and which roots to trust (`ca:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Ca {
    /// The CA's gRPC address, an `https` URL such as `https://127.0.0.1:15012`.
    #[serde(serialize_with = "origin")]
    pub address: http::Uri,
    /// The trust bundle (PEM) to verify the CA and peers with, resolved against the YAML's
    /// directory. Re-read when it changes.
    pub root_cert: PathBuf,
}

/// A node of the cluster (`nodes[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Node {
    /// The node's name, as given to its proxy by `--node`.
    pub name: String,
    /// The node's own address, which other nodes reach it on.
    pub address: Ipv4Addr,
    /// The pod network of the node; workload IPs on the node must lie inside it. Required by
    /// `--wireguard`.
    #[serde(rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Net>,
    /// The node's WireGuard public key. Required by `--wireguard`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key: Option<WireguardPublicKey>,
    /// The node's labels (ClusterNetworkPolicy `nodes` peers select by them).
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// A namespace with its labels (`namespaces[]`). A namespace not listed has no labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Namespace {
    /// The namespace's name.
    pub name: String,
    /// Its labels, e.g. `nodemesh.io/mesh: enabled`.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// A pod (`workloads[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Workload {
    /// The pod's name.
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's service account (default `default`).
    pub service_account: String,
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address on a dual-stack node (`ipv6`): not meshed, so the node drops
    /// IPv6 forwarded to or from it (SECURITY.md "IPv6").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// The node the pod runs on (always a node of the config).
    pub node: String,
    /// The pod's labels.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The pod's container ports (`ports`): what NetworkPolicy named ports resolve to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// The pod's SPIFFE ID, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    #[serde(skip)]
    pub identity: SpiffeId,
}

/// A Service: a virtual IP whose ports lead to the workloads its selector matches (`services[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Service {
    /// The Service's name.
    pub name: String,
    /// The Service's namespace; its endpoints are workloads of this namespace.
    pub namespace: String,
    /// The virtual IP clients dial.
    pub vip: Ipv4Addr,
    /// Its ports (at least one).
    pub ports: Vec<ServicePort>,
    /// The labels a workload must have (all of them) to be an endpoint. Empty selects nothing.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub selector: Labels,
    /// Explicit ready endpoints by IP (from Kubernetes EndpointSlices, or `endpoints` in the
    /// YAML), used instead of the selector when set. They need not be workloads: the API
    /// server and hostNetwork pods are not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<Ipv4Addr>>,
}

/// A port a pod's container declares (`workloads[].ports[]`), by which NetworkPolicies may name
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ContainerPort {
    /// The port's name (an IANA service name), unique in the pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// The transport protocol (default TCP).
    pub protocol: Protocol,
}

impl ContainerPort {
    /// A container port.
    pub fn new(name: Option<String>, port: u16, protocol: Protocol) -> Self {
        Self {
            name,
            port,
            protocol,
        }
    }
}

/// One port of a [`Service`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ServicePort {
    /// The port on the VIP.
    pub port: u16,
    /// The port on the endpoint (default: `port`).
    pub target_port: u16,
    /// The port every node's address forwards to the Service (kube-proxy's NodePort).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// The port's name (required when the Service has more than one port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The transport protocol.
    pub protocol: Protocol,
}

/// One endpoint of a [`Service`]: a known workload, or an address that is none (the API
/// server, a hostNetwork pod, a host outside the cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// A workload of the Service's namespace.
    Workload(&'a Workload),
    /// An address that is no workload.
    Address(Ipv4Addr),
}

impl Endpoint<'_> {
    /// The endpoint's IP.
    pub fn ip(&self) -> Ipv4Addr {
        match self {
            Self::Workload(w) => w.ip,
            Self::Address(ip) => *ip,
        }
    }

    /// The workload, when the endpoint is one.
    pub fn workload(&self) -> Option<&Workload> {
        match self {
            Self::Workload(w) => Some(w),
            Self::Address(_) => None,
        }
    }
}

/// A port's transport protocol, as Kubernetes writes it. Service ports are TCP only for now;
/// container ports may be any of the three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The name as Kubernetes writes it: `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy document as written in the file (`policies[]`: AuthorizationPolicy;
/// `networkPolicies[]`, `clusterNetworkPolicies[]`), kept raw: the policy engine compiles it.
/// Always a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RawPolicy(serde_json::Value);

impl RawPolicy {
    /// Wraps a policy document (a JSON mapping), e.g. an object read from Kubernetes.
    pub fn new(document: serde_json::Value) -> Self {
        Self(document)
    }

    /// The document (a JSON/YAML mapping).
    pub fn document(&self) -> &serde_json::Value {
        &self.0
    }

    /// The document, owned.
    pub fn into_document(self) -> serde_json::Value {
        self.0
    }

    /// `metadata.name`, if the document has one.
    pub fn name(&self) -> Option<&str> {
        self.0.pointer("/metadata/name").and_then(|v| v.as_str())
    }
}

/// A WireGuard (Curve25519) public key: 32 bytes, written in base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WireguardPublicKey([u8; 32]);

impl WireguardPublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Why a string is not a WireGuard public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireguardKeyError {
    /// Not valid base64.
    #[error("not valid base64: {0}")]
    Base64(String),
    /// Valid base64, but not 32 bytes.
    #[error("decodes to {0} bytes, expected 32")]
    Length(usize),
}

impl FromStr for WireguardPublicKey {
    type Err = WireguardKeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = BASE64
            .decode(s)
            .map_err(|e| WireguardKeyError::Base64(e.to_string()))?;
        let len = bytes.len();
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| WireguardKeyError::Length(len))?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for WireguardPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for WireguardPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WireguardPublicKey({self})")
    }
}

impl Serialize for WireguardPublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Serializes a URL without path as `scheme://authority` (no trailing `/`).
fn origin<S: Serializer>(uri: &http::Uri, s: S) -> Result<S::Ok, S::Error> {
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => s.collect_str(&format_args!("{scheme}://{authority}")),
        _ => s.collect_str(uri),
    }
}

/// Serializes any `Display` value as a string.
pub(crate) fn as_display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wireguard_keys() {
        let key = WireguardPublicKey::from_bytes([7; 32]);
        let text = key.to_string();
        assert_eq!(text.parse::<WireguardPublicKey>(), Ok(key));
        assert_eq!(
            "AAAA".parse::<WireguardPublicKey>(),
            Err(WireguardKeyError::Length(3))
        );
        assert!(matches!(
            "not base64!".parse::<WireguardPublicKey>(),
            Err(WireguardKeyError::Base64(_))
        ));
    }
}
