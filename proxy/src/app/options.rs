//! What `nodemesh proxy` is told, and why it may not start.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nodemesh_identity::Backoff;
use nodemesh_net::ports;
use nodemesh_state::{MeshStore, StateError};

use crate::bounds::BoundsConfig;
use crate::l7::L7Limits;
use crate::observe::FlowLogTarget;
use crate::pending::PendingPods;

/// Where the proxy's view of the mesh comes from.
#[derive(Debug, Clone)]
pub enum StateSource {
    /// The standalone YAML, re-read when it changes.
    File(PathBuf),
    /// A store another source keeps fed (the Kubernetes watchers); it must hold a first full
    /// state already.
    Store(Arc<MeshStore>),
}

/// Everything `nodemesh proxy` is told. [`Default`] is a production node's setup reading
/// `/etc/nodemesh/mesh.yaml`; set at least `source`, `node` and `ca_token`.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Where the state comes from.
    pub source: StateSource,
    /// Whether the proxy enforces NetworkPolicies and ClusterNetworkPolicies on the TCP it
    /// sees (`--network-policy`; off when the CNI enforces them).
    pub network_policy: bool,
    /// This node's name.
    pub node: String,
    /// This node's CA token.
    pub ca_token: String,
    /// The file `ca_token` came from, re-read when it rotates (projected tokens); `None` keeps
    /// `ca_token` for good.
    pub ca_token_file: Option<PathBuf>,
    /// Outbound capture listener (15001).
    pub outbound_addr: SocketAddr,
    /// HBONE listener (15008); with `inbound_binds`, only its port is used.
    pub inbound_addr: SocketAddr,
    /// Inbound plaintext capture listener (15006); with `inbound_binds`, only its port is used.
    pub inbound_plaintext_addr: SocketAddr,
    /// Bind the inbound listeners on these IPs (the node's pod IPs) instead of one wildcard.
    pub inbound_binds: Vec<IpAddr>,
    /// Port peers' HBONE listeners are reached on (15008).
    pub hbone_port: u16,
    /// How long a drain waits for in-flight connections.
    pub drain_timeout: Duration,
    /// Where flow-log lines go.
    pub flow_log: FlowLogTarget,
    /// Connect to pods from the client pod's IP.
    pub preserve_source_ip: bool,
    /// Make outbound connections (HBONE to peers, passthrough) from the client pod's IP
    /// instead of the node's; needs capture's routing for the replies (the CLI's default).
    pub outbound_from_pod_ip: bool,
    /// Set `IP_TRANSPARENT` on listeners (capture needs it; tests without root do not).
    pub transparent: bool,
    /// Mark the proxy's sockets with `SO_MARK 0x539`.
    pub mark_sockets: bool,
    /// How often the config and trust bundle files are checked for changes.
    pub reload_interval: Duration,
    /// Renewal backoff.
    pub backoff: Backoff,
    /// How long a TCP connect may take (HBONE to peers, plain TCP to pods and outside the
    /// mesh); past it the client's connection is reset and counted `connect_timeout`.
    pub connect_timeout: Duration,
    /// Timeouts and size limits of connections under L7 enforcement.
    pub l7_limits: L7Limits,
    /// Captured pod addresses the state does not know yet (the CNI plugin's), kept current by
    /// the caller; connections from or to them are refused.
    pub pending_pods: PendingPods,
    /// Connection caps per listener and source, handshakes in progress, the HTTP/2 preface
    /// deadline and the buffer budget; past a cap, connections are refused `overloaded`.
    pub bounds: BoundsConfig,
}

impl ProxyOptions {
    /// Where an inbound listener configured at `addr` binds: one address per
    /// [`inbound_binds`](Self::inbound_binds) IP on `addr`'s port, or `addr` itself.
    pub fn listen_addrs(&self, addr: SocketAddr) -> Vec<SocketAddr> {
        if self.inbound_binds.is_empty() {
            vec![addr]
        } else {
            self.inbound_binds
                .iter()
                .map(|ip| SocketAddr::new(*ip, addr.port()))
                .collect()
        }
    }
}

impl Default for ProxyOptions {
    fn default() -> Self {
        let any = |port| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
        let loopback = |port| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        Self {
            source: StateSource::File(PathBuf::from("/etc/nodemesh/mesh.yaml")),
            network_policy: true,
            node: String::new(),
            ca_token: String::new(),
            ca_token_file: None,
            outbound_addr: loopback(ports::OUTBOUND),
            inbound_addr: any(ports::HBONE),
            inbound_plaintext_addr: loopback(ports::INBOUND_PLAINTEXT),
            inbound_binds: Vec::new(),
            hbone_port: ports::HBONE,
            drain_timeout: Duration::from_secs(5),
            flow_log: FlowLogTarget::Stdout,
            preserve_source_ip: false,
            outbound_from_pod_ip: false,
            transparent: true,
            mark_sockets: true,
            reload_interval: Duration::from_secs(1),
            backoff: Backoff::default(),
            connect_timeout: nodemesh_net::timeouts::CONNECT,
            l7_limits: L7Limits::default(),
            pending_pods: PendingPods::default(),
            bounds: BoundsConfig::default(),
        }
    }
}

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The config has no `ca` section.
    #[error("{0} (nodemesh proxy needs the CA's address and trust bundle)")]
    NoCa(String),
    /// Certificates cannot be managed.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The flow log cannot be opened.
    #[error(transparent)]
    FlowLog(#[from] crate::observe::FlowLogError),
}
