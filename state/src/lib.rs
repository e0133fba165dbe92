//! What a proxy knows about the mesh: workloads, namespaces, services and compiled policies,
//! published as immutable snapshots. Readers load the current [`MeshState`] without locks
//! (`arc-swap`) from a [`MeshStore`]; a source ([`FileSource`], or the Kubernetes watchers of
//! `nodemesh-kube`) replaces it whole when its input changes. No sockets.

mod file;
mod mesh;
mod netpol;
mod store;

use std::net::{IpAddr, Ipv4Addr};

pub use file::FileSource;
pub use mesh::{MeshState, PolicyProblem, ServiceTarget, StateError};
pub use netpol::{FlowSource, PodView};
pub use store::{MeshStore, REFUSED_POD_REASONS, SourceHealth};

/// The IPv4 address of `ip`, if it is one.
pub fn ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}
