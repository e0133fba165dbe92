//! One outcome per connection: the facts the data path learns ([`Flow`]) are reported exactly
//! once, when the connection's [`FlowGuard`] drops, whatever path the connection took: the Istio
//! TCP metrics of a served connection, or the refusal count of a refused one, and one flow-log
//! line either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodemesh_identity::SpiffeId;
use nodemesh_state::MeshState;

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::observe::{
    ConnectionLabels, ConnectionMetrics, Direction, FlowEndpoint, FlowLog, FlowRecord, FlowVerdict,
    LogLimit, Metrics, RefusalReason, Reporter, SecurityPolicy,
};
use crate::relay::Transferred;

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

/// Why a connection was refused: the reason counted and logged, and the deciding policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The metric and flow-log reason.
    pub reason: RefusalReason,
    /// The deciding policy (`namespace/name`), for policy refusals.
    pub policy: Option<String>,
}

impl Refused {
    /// A refusal no policy decided.
    pub fn new(reason: RefusalReason) -> Self {
        Self {
            reason,
            policy: None,
        }
    }

    /// A connect upstream that failed: `connect_timeout` when it ran out of time, else
    /// `upstream_connect`.
    pub fn connect_failed(error: &std::io::Error) -> Self {
        Self::new(if crate::socket::is_timeout(error) {
            RefusalReason::ConnectTimeout
        } else {
            RefusalReason::UpstreamConnect
        })
    }

    /// A refusal by a network policy: the direction that denied names the policy, and the
    /// sentence that explains it goes to the debug log.
    pub fn by_network_policy(
        decision: &nodemesh_policy::netpol::NetDecision<'_>,
        port: u16,
    ) -> Self {
        let denied = decision.denied();
        if let Some(d) = denied {
            tracing::debug!(
                reason = %d.describe(nodemesh_policy::netpol::Protocol::Tcp, port),
                "refused by network policy"
            );
        }
        Self {
            reason: RefusalReason::NetworkPolicy,
            policy: denied.and_then(|d| d.policy_name()),
        }
    }

    /// A refusal by policy (`policy` is the deciding one, when one decided).
    pub fn by_policy(policy: Option<String>) -> Self {
        Self {
            reason: RefusalReason::Policy,
            policy,
        }
    }
}

impl From<RefusalReason> for Refused {
    fn from(reason: RefusalReason) -> Self {
        Self::new(reason)
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
    /// A new flow from `src` to `dst`.
    pub fn new(direction: Direction, src: ClientAddr, dst: OrigDstAddr) -> Self {
        Self {
            direction,
            src_addr: src.0,
            dst_addr: dst.0,
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
            Some(
                RefusalReason::Policy | RefusalReason::PolicyChanged | RefusalReason::NetworkPolicy,
            ) => FlowVerdict::Deny,
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
    pub fn deny(&mut self, refused: Refused) {
        self.refused = Some(refused.reason);
        if refused.policy.is_some() {
            self.policy = refused.policy;
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

/// Where finished flows go: the proxy's metrics and its flow log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FlowSink {
    metrics: Arc<Metrics>,
    log: FlowLog,
}

impl FlowSink {
    /// Reports into `metrics` and `log`.
    pub fn new(metrics: Arc<Metrics>, log: FlowLog) -> Self {
        Self { metrics, log }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The flow log.
    pub fn log(&self) -> &FlowLog {
        &self.log
    }

    /// Starts reporting one connection: whatever happens to it, dropping the guard records it.
    pub fn start(&self, flow: Flow) -> FlowGuard {
        FlowGuard {
            sink: self.clone(),
            flow,
            started: Instant::now(),
            open: None,
            refused: None,
            armed: true,
        }
    }
}

/// One connection's report, written exactly once, on drop: a refusal counts in
/// `nodemesh_connections_refused_total`; a connection that was [opened](FlowGuard::opened)
/// closes its Istio TCP series with its bytes; both write one flow-log line.
#[must_use = "dropping the guard reports the connection"]
#[derive(Debug)]
pub struct FlowGuard {
    sink: FlowSink,
    flow: Flow,
    started: Instant,
    open: Option<ConnectionMetrics>,
    refused: Option<Refused>,
    armed: bool,
}

impl FlowGuard {
    /// The facts so far, to fill in as they are learned.
    pub fn flow(&mut self) -> &mut Flow {
        &mut self.flow
    }

    /// The connection is served: counts it opened under the labels the flow has now, as seen
    /// by `reporter`; bytes go on the returned counters as they flow.
    pub fn opened(&mut self, reporter: Reporter) -> &ConnectionMetrics {
        let labels = self.flow.labels(reporter);
        self.open
            .insert(self.sink.metrics.connection_opened(&labels))
    }

    /// The counters of an [opened](FlowGuard::opened) connection.
    pub fn counters(&self) -> Option<&ConnectionMetrics> {
        self.open.as_ref()
    }

    /// Ends the connection with the handler's result (bytes relayed, or why it was refused).
    pub fn finish(mut self, result: Result<Transferred, Refused>) {
        match result {
            Ok(t) => {
                if let Some(counters) = &self.open {
                    // Istio's convention: "received" is the request direction, "sent" the response.
                    counters.add_received(t.downstream_to_upstream);
                    counters.add_sent(t.upstream_to_downstream);
                }
            }
            Err(refused) => self.refused = Some(refused),
        }
    }

    /// The connection goes on under another guard (a same-node call, which the inbound side
    /// reports): nothing is recorded here.
    pub fn hand_over(mut self) {
        self.armed = false;
    }
}

impl Drop for FlowGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(refused) = self.refused.take() {
            // Every refusal is counted and flow-logged; the log line is rate-limited, since a
            // flood of refusals is what an attacker makes.
            static LOG: LogLimit = LogLimit::per_second();
            if let Some(suppressed) = LOG.admit() {
                tracing::info!(
                    direction = ?self.flow.direction,
                    src = %self.flow.src_addr,
                    dst = %self.flow.dst_addr,
                    reason = refused.reason.as_str(),
                    suppressed,
                    "connection refused"
                );
            }
            self.sink.metrics.refused(refused.reason);
            self.flow.deny(refused);
        }
        if let Some(counters) = self.open.take() {
            self.flow.bytes_received = counters.bytes_received();
            self.flow.bytes_sent = counters.bytes_sent();
            // Dropping the counters counts the connection closed.
        }
        self.flow.duration = self.started.elapsed();
        if self.sink.log.is_enabled() {
            self.sink.log.record(self.flow.to_record());
        }
    }
}
