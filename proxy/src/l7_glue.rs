//! Connects the inbound path to L7 enforcement for destinations whose policies need it.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::inbound::Arrival;
use crate::observe::ConnectionMetrics;
use crate::proxy::Ctx;
use crate::report::Flow;
use crate::state::MeshState;

/// Serves a tunnel to a destination that needs L7 authorization.
///
/// Until the HTTP layer is wired in, the connection is decided at L4, where the engine treats
/// every L7 condition as false in ALLOW rules and true in DENY rules (fail closed).
pub async fn serve<S>(
    ctx: &Ctx,
    state: &MeshState,
    arrival: &Arrival,
    mut downstream: S,
    flow: &mut Flow,
    metrics: &ConnectionMetrics,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if l4_denies(state, arrival, flow) {
        return;
    }
    let source = ctx.preserve_source_ip.then(|| arrival.src.ip());
    if let Ok(mut upstream) = ctx.connect.connect(arrival.target, source).await
        && let Ok(t) = crate::relay::relay(&mut downstream, &mut upstream).await
    {
        metrics.add_received(t.downstream_to_upstream);
        metrics.add_sent(t.upstream_to_downstream);
    }
}

/// The L4 decision for a non-HTTP stream to an L7-governed destination.
fn l4_denies(state: &MeshState, arrival: &Arrival, flow: &mut Flow) -> bool {
    use nodemesh_policy::{Connection, Destination, Peer, Verdict};
    let Some(dst) = state.workload(arrival.target.ip()) else {
        return true;
    };
    let decision = state.policies().decide_connection(&Connection {
        source: Peer {
            principal: arrival.peer.as_ref().map(|p| p.principal()),
            namespace: None,
            ip: Some(arrival.src.ip()),
        },
        destination: Destination {
            namespace: &dst.namespace,
            labels: &dst.labels,
            ip: Some(arrival.target.ip()),
            port: arrival.target.port(),
        },
    });
    flow.policy = decision.deciding_policy.as_ref().map(|p| p.to_string());
    if decision.verdict == Verdict::Deny {
        flow.deny(crate::observe::RefusalReason::Policy, None);
        return true;
    }
    false
}
