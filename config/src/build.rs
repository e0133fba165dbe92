//! Constructors of the domain types for sources other than the YAML (the Kubernetes watchers).
//! They take typed values; the caller has already decided what is valid.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use nodemesh_identity::{SpiffeId, SpiffeIdError, TrustDomain};

use crate::model::{
    Ca, ContainerPort, Labels, Namespace, Node, Protocol, Service, ServicePort, WireguardPublicKey,
    Workload,
};

impl Ca {
    /// The CA at `address` (an `https` URL), trusted through the bundle file `root_cert`.
    pub fn new(address: http::Uri, root_cert: PathBuf) -> Self {
        Self { address, root_cert }
    }
}

impl Node {
    /// A node reached on `address`.
    pub fn new(
        name: impl Into<String>,
        address: Ipv4Addr,
        pod_cidr: Option<Ipv4Net>,
        wireguard_public_key: Option<WireguardPublicKey>,
    ) -> Self {
        Self {
            name: name.into(),
            address,
            pod_cidr,
            wireguard_public_key,
            labels: Labels::new(),
        }
    }

    /// The node with its labels.
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }
}

impl Namespace {
    /// A namespace with its labels.
    pub fn new(name: impl Into<String>, labels: Labels) -> Self {
        Self {
            name: name.into(),
            labels,
        }
    }
}

/// Who a workload is and where it runs: the fields of [`Workload::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadFields {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, on a dual-stack node.
    pub ipv6: Option<Ipv6Addr>,
    /// Node name.
    pub node: String,
    /// Pod labels.
    pub labels: Labels,
    /// The pod's container ports.
    pub ports: Vec<ContainerPort>,
}

impl Workload {
    /// The pod's addresses: its IPv4, then its IPv6 when it has one.
    pub fn addrs(&self) -> impl Iterator<Item = std::net::IpAddr> + use<> {
        let v6 = self.ipv6.map(std::net::IpAddr::V6);
        std::iter::once(std::net::IpAddr::V4(self.ip)).chain(v6)
    }

    /// A workload; its SPIFFE ID is derived from `trust_domain`, namespace and service account.
    pub fn new(trust_domain: &TrustDomain, f: WorkloadFields) -> Result<Self, SpiffeIdError> {
        let identity = SpiffeId::workload(trust_domain, &f.namespace, &f.service_account)?;
        Ok(Self {
            name: f.name,
            namespace: f.namespace,
            service_account: f.service_account,
            ip: f.ip,
            ipv6: f.ipv6,
            node: f.node,
            labels: f.labels,
            ports: f.ports,
            identity,
        })
    }
}

impl Service {
    /// A Service whose endpoints are listed explicitly (ready endpoint IPs).
    pub fn with_endpoints(
        name: impl Into<String>,
        namespace: impl Into<String>,
        vip: Ipv4Addr,
        ports: Vec<ServicePort>,
        endpoints: Vec<Ipv4Addr>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            vip,
            ports,
            selector: Labels::new(),
            endpoints: Some(endpoints),
        }
    }
}

impl ServicePort {
    /// A TCP port.
    pub fn tcp(port: u16, target_port: u16, name: Option<String>) -> Self {
        Self {
            port,
            target_port,
            node_port: None,
            name,
            protocol: Protocol::Tcp,
        }
    }
}
