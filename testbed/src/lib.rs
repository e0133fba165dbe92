//! nodemesh-testbed: a mini-cluster out of network namespaces, for `nodemesh demo`, the root
//! test tier and the netns benchmarks.
//!
//! [`Testbed::build`] turns a [`ClusterSpec`] into namespaces: an underlay bridge, nodes with
//! `ip_forward`, pods with `/32` routes (as the CNI `ptp` plugin), routes between nodes' pod
//! networks, and the standalone YAML describing it all. [`Testbed::start_mesh`] runs the real
//! `nodemesh` processes in it (CA, one proxy per node with TPROXY capture, an app per pod).
//! Clients run inside pods with [`Netns::block_on`]; [`PacketCapture`] shows what crossed the
//! underlay. Everything is torn down on drop, processes first.
//!
//! [`matrix`] is the network-policy reachability matrix of the Kubernetes e2e suite on such a
//! testbed: namespaces x, y, z × pods a, b, c, probed pod to pod on TCP and UDP 80 and 81.

pub mod apps;
mod cluster;
mod config;
mod error;
mod inject;
pub mod kube_proxy;
pub mod matrix;
mod mesh;
mod netns;
mod packets;
mod plan;
mod process;
pub mod real_node;
pub mod scenario;

pub use cluster::{NAME_PREFIX, Testbed, check_prerequisites, destroy_all};
pub use config::{CA_GRPC_PORT, ca_address, render as render_config};
pub use error::TestbedError;
pub use kube_proxy::KubeProxyMode;
pub use mesh::{CA_HTTP_PORT, HOST_NETWORK_PORT, MeshOptions, READINESS_PORT};
pub use netns::{Netns, NetnsTask, list as list_netns};
pub use packets::{Captured, FrameInfo, PacketCapture, Transport};
pub use plan::{
    API_SERVER, API_SERVER_PORT, ClusterSpec, ContainerPort, Labels, METADATA, NamespaceSpec,
    NodePlan, NodeSpec, Plan, PodPlan, PodRouting, PodSpec, ServicePlan, ServiceSpec, node_address,
};
pub use process::Process;
