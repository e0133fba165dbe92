//! One connection's facts as the data path learns them, turned into Istio metric labels and a
//! flow-log line when it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nodemesh_identity::SpiffeId;

use crate::observe::{
    ConnectionLabels, FlowEndpoint, FlowRecord, FlowVerdict, RefusalReason, Reporter,
    SecurityPolicy,
};
use crate::state::MeshState;

pub use crate::observe::Direction;

/// One end of a connection.
#[derive(Debug, Clone, Default)]
pub struct Party {
    /// Pod name, when known.
    pub workload: Option<String>,
    /// Namespace, when known.
    pub namespace: Option<String>,
    /// The `app` label, when present.
    pub app: Option<String>,
    /// SPIFFE ID, when verified or known.
    pub identity: Option<SpiffeId>,
    /// Address.
    pub addr: Option<SocketAddr>,
}

impl Party {
    /// The party at `addr`, filled from the state; `identity` overrides the workload's own.
    pub fn at(state: &MeshState, addr: SocketAddr, identity: Option<SpiffeId>) -> Self {
        let w = state.workload(addr.ip());
        Self {
            workload: w.map(|w| w.name.clone()),
            namespace: w.map(|w| w.namespace.clone()),
            app: w.and_then(|w| w.labels.get("app").cloned()),
            identity: identity.or_else(|| w.map(|w| w.identity.clone())),
            addr: Some(addr),
        }
    }
}

/// Everything known about one connection.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Who reports.
    pub direction: Direction,
    /// Client address.
    pub src_addr: SocketAddr,
    /// Destination address as asked for (VIP or pod).
    pub dst_addr: SocketAddr,
    /// The client.
    pub src: Party,
    /// The server.
    pub dst: Party,
    /// `name.namespace` of the Service called, if any.
    pub service: Option<String>,
    /// Whether the hop is mutual TLS.
    pub mtls: bool,
    /// Deny reason, when refused.
    pub refused: Option<RefusalReason>,
    /// The deciding policy, when one decided.
    pub policy: Option<String>,
    /// Bytes sent to the client.
    pub bytes_sent: u64,
    /// Bytes received from the client.
    pub bytes_received: u64,
    /// How long the connection lived.
    pub duration: Duration,
}

impl Flow {
    /// A new flow between two addresses.
    pub fn new(direction: Direction, src_addr: SocketAddr, dst_addr: SocketAddr) -> Self {
        Self {
            direction,
            src_addr,
            dst_addr,
            src: Party::default(),
            dst: Party::default(),
            service: None,
            mtls: true,
            refused: None,
            policy: None,
            bytes_sent: 0,
            bytes_received: 0,
            duration: Duration::ZERO,
        }
    }

    /// The flow-log line for this flow.
    pub fn to_record(&self) -> FlowRecord {
        fn endpoint(p: &Party, addr: SocketAddr) -> FlowEndpoint {
            FlowEndpoint {
                workload: p.workload.as_deref().map(Arc::from),
                namespace: p.namespace.as_deref().map(Arc::from),
                identity: p.identity.as_ref().map(|i| Arc::from(i.as_str())),
                ip: Some(addr.ip()),
                port: Some(addr.port()),
            }
        }
        let verdict = match self.refused {
            Some(RefusalReason::Policy) => FlowVerdict::Deny,
            Some(_) => FlowVerdict::Refused,
            None if !self.mtls && self.direction == Direction::Outbound => FlowVerdict::Passthrough,
            None => FlowVerdict::Allow,
        };
        let mut record = FlowRecord::new(self.direction, verdict);
        record.time = std::time::SystemTime::now()
            .checked_sub(self.duration)
            .unwrap_or(record.time);
        record.src = endpoint(&self.src, self.src.addr.unwrap_or(self.src_addr));
        record.dst = endpoint(&self.dst, self.dst.addr.unwrap_or(self.dst_addr));
        record.service = self.service.as_deref().map(Arc::from);
        record.policy = self.policy.as_deref().map(Arc::from);
        record.reason = self.refused;
        record.bytes_sent = self.bytes_sent;
        record.bytes_received = self.bytes_received;
        record.duration = self.duration;
        record
    }

    /// Marks the flow refused.
    pub fn deny(&mut self, reason: RefusalReason, policy: Option<String>) {
        self.refused = Some(reason);
        if policy.is_some() {
            self.policy = policy;
        }
    }

    /// Istio labels for this flow as seen by `reporter`.
    pub fn labels(&self, reporter: Reporter) -> ConnectionLabels {
        fn text(v: &Option<String>) -> Option<Arc<str>> {
            v.as_deref().map(Arc::from)
        }
        let base = ConnectionLabels::new(reporter);
        ConnectionLabels {
            source_workload: text(&self.src.workload).unwrap_or(base.source_workload.clone()),
            source_workload_namespace: text(&self.src.namespace)
                .unwrap_or(base.source_workload_namespace.clone()),
            source_principal: self
                .src
                .identity
                .as_ref()
                .map(|i| Arc::from(i.as_str()))
                .unwrap_or(base.source_principal.clone()),
            source_app: text(&self.src.app).unwrap_or(base.source_app.clone()),
            destination_workload: text(&self.dst.workload)
                .unwrap_or(base.destination_workload.clone()),
            destination_workload_namespace: text(&self.dst.namespace)
                .unwrap_or(base.destination_workload_namespace.clone()),
            destination_principal: self
                .dst
                .identity
                .as_ref()
                .map(|i| Arc::from(i.as_str()))
                .unwrap_or(base.destination_principal.clone()),
            destination_app: text(&self.dst.app).unwrap_or(base.destination_app.clone()),
            destination_service: text(&self.service).unwrap_or(base.destination_service.clone()),
            connection_security_policy: if self.mtls {
                SecurityPolicy::MutualTls
            } else {
                SecurityPolicy::None
            },
            ..base
        }
    }
}
