//! What every connection of one proxy shares. Imports no handler: handlers import it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use nodemesh_state::MeshStore;

use crate::addr::ClientAddr;
use crate::bounds::Bounds;
use crate::certs::CertManager;
use crate::conns::Conns;
use crate::flow::FlowSink;
use crate::hbone::HboneClient;
use crate::l7::L7Limits;
use crate::observe::{DrainWatch, Metrics};
use crate::pending::PendingPods;
use crate::socket::ConnectOptions;
use crate::tls::TlsConfigs;

/// State shared by every connection of one proxy.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// Workloads, services, policies.
    pub(crate) store: Arc<MeshStore>,
    /// Certificates of local workloads.
    pub(crate) certs: Arc<CertManager>,
    /// TLS configs.
    pub(crate) tls: Arc<TlsConfigs>,
    /// The HBONE pool.
    pub(crate) hbone: HboneClient,
    /// Outgoing socket options.
    pub(crate) connect: ConnectOptions,
    /// Metrics and flow log.
    pub(crate) flows: FlowSink,
    /// Drain signal.
    pub(crate) drain: DrainWatch,
    /// Connect to pods from the client's IP.
    pub(crate) preserve_source_ip: bool,
    /// Outbound connections leave from the client pod's IP ([`Ctx::outbound_source`]).
    pub(crate) outbound_from_pod_ip: bool,
    /// Port of peers' HBONE listeners.
    pub(crate) hbone_port: u16,
    /// Limits of connections under L7 enforcement.
    pub(crate) l7_limits: L7Limits,
    /// The proxy's own listener addresses (a connection to one of them is a loop).
    pub(crate) own_listeners: Vec<SocketAddr>,
    /// Captured addresses the state does not know (refused both ways).
    pub(crate) pending: PendingPods,
    /// The destination side's open connections, re-decided on every change of the state.
    pub(crate) conns: Conns,
    /// Connection caps, handshakes in progress and the buffer budget.
    pub(crate) bounds: Bounds,
}

impl Ctx {
    /// The proxy's metrics.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        self.flows.metrics()
    }

    /// The source address outbound connections (HBONE to a peer, passthrough) of `client`
    /// leave from: the client pod's own IP, unless the proxy was told to use the node's.
    pub(crate) fn outbound_source(&self, client: ClientAddr) -> Option<IpAddr> {
        self.outbound_from_pod_ip.then(|| client.ip())
    }

    /// The source address connections to pods leave from for `client` (its own IP, when the
    /// proxy preserves source IPs).
    pub(crate) fn pod_source(&self, client: ClientAddr) -> Option<IpAddr> {
        self.preserve_source_ip.then(|| client.ip())
    }
}
