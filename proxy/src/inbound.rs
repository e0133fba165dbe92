//! The destination side, shared by HBONE (15008), inbound plaintext (15006) and same-node traffic
//! handed over in-process: check the destination, authorize, connect to the pod, relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use nodemesh_identity::SpiffeId;
use nodemesh_policy::{Connection, Destination, Peer, Verdict};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::observe::RefusalReason;
use crate::proxy::Ctx;
use crate::report::{Direction, Flow, Party};
use crate::state::MeshState;

/// A connection arriving for a local pod.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The verified peer identity (HBONE); `None` for plaintext.
    pub peer: Option<SpiffeId>,
    /// The client's address.
    pub src: SocketAddr,
    /// The pod address and port asked for.
    pub target: SocketAddr,
}

/// A refused arrival: why, and the HBONE status it is answered with.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The metric reason.
    pub reason: RefusalReason,
    /// The CONNECT answer.
    pub status: StatusCode,
    /// The deciding policy, for policy refusals.
    pub policy: Option<String>,
}

impl Refused {
    fn new(reason: RefusalReason, status: StatusCode) -> Self {
        Self {
            reason,
            status,
            policy: None,
        }
    }
}

/// An authorized arrival, connected to the pod (unless the destination needs L7, where the pod is
/// dialled per request).
#[derive(Debug)]
pub struct Admitted {
    state: Arc<MeshState>,
    arrival: Arrival,
    flow: Flow,
    upstream: Option<TcpStream>,
    needs_l7: bool,
}

/// Checks and authorizes an arrival, and connects to the pod.
pub async fn admit(ctx: &Ctx, arrival: Arrival) -> Result<Admitted, (Refused, Flow)> {
    let state = ctx.store.load();
    let mut flow = Flow::new(Direction::Inbound, arrival.src, arrival.target);
    flow.mtls = arrival.peer.is_some();
    flow.src = Party::at(&state, arrival.src, arrival.peer.clone());
    flow.dst = Party::at(&state, arrival.target, None);
    let Some(dst) = state
        .workload(arrival.target.ip())
        .filter(|w| state.is_local(w) && state.in_mesh(w))
    else {
        return Err((
            Refused::new(
                RefusalReason::UnknownDestination,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            flow,
        ));
    };
    flow.dst.identity = Some(dst.identity.clone());
    if arrival.peer.is_none() && !state.is_permissive(dst) {
        return Err((
            Refused::new(RefusalReason::StrictMtls, StatusCode::UNAUTHORIZED),
            flow,
        ));
    }
    if ctx.certs.credentials(&dst.identity).is_none() {
        return Err((
            Refused::new(
                RefusalReason::NoCertificate,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            flow,
        ));
    }
    let (needs_l7, denied) = authorize_l4(ctx, &state, dst, &arrival, &mut flow);
    if let Some(refused) = denied {
        return Err((refused, flow));
    }
    let upstream = if needs_l7 {
        None
    } else {
        let source = ctx.preserve_source_ip.then(|| arrival.src.ip());
        match ctx.connect.connect(arrival.target, source).await {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::debug!(target = %arrival.target, %error, "connect to pod failed");
                return Err((
                    Refused::new(
                        RefusalReason::UpstreamConnect,
                        StatusCode::SERVICE_UNAVAILABLE,
                    ),
                    flow,
                ));
            }
        }
    };
    drop(state);
    Ok(Admitted {
        state: ctx.store.load(),
        arrival,
        flow,
        upstream,
        needs_l7,
    })
}

/// Carries an admitted connection's bytes (or HTTP requests, under L7) until both sides close.
pub async fn serve<S>(ctx: &Ctx, admitted: Admitted, mut downstream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Admitted {
        state,
        arrival,
        mut flow,
        upstream,
        needs_l7,
    } = admitted;
    let started = Instant::now();
    let conn_metrics = ctx
        .metrics
        .connection_opened(&flow.labels(crate::observe::Reporter::Destination));
    if needs_l7 {
        crate::l7_glue::serve(ctx, &state, &arrival, downstream, &mut flow, &conn_metrics).await;
    } else if let Some(mut upstream) = upstream {
        match crate::relay::relay(&mut downstream, &mut upstream).await {
            Ok(t) => {
                conn_metrics.add_received(t.downstream_to_upstream);
                conn_metrics.add_sent(t.upstream_to_downstream);
            }
            Err(error) => tracing::debug!(%error, "inbound relay ended with an error"),
        }
    }
    flow.bytes_received = conn_metrics.bytes_received();
    flow.bytes_sent = conn_metrics.bytes_sent();
    flow.duration = started.elapsed();
    conn_metrics.closed();
    ctx.report_flow(&flow);
}

/// Reports a refusal (metric + flow log).
pub fn refused(ctx: &Ctx, refused: &Refused, mut flow: Flow) {
    tracing::info!(src = %flow.src_addr, dst = %flow.dst_addr, reason = refused.reason.as_str(), "inbound connection refused");
    ctx.metrics.refused(refused.reason);
    flow.deny(refused.reason, refused.policy.clone());
    ctx.report_flow(&flow);
}

/// Serves a connection captured on the inbound plaintext listener (15006): traffic to a local
/// pod that did not come through HBONE. STRICT namespaces refuse it; PERMISSIVE ones apply policy
/// with no principal.
pub async fn serve_plaintext(ctx: &Ctx, stream: TcpStream, peer: SocketAddr, target: SocketAddr) {
    let arrival = Arrival {
        peer: None,
        src: peer,
        target,
    };
    match admit(ctx, arrival).await {
        Ok(admitted) => serve(ctx, admitted, stream).await,
        Err((refused_, flow)) => refused(ctx, &refused_, flow),
    }
}

/// Decides at L4 unless the destination needs L7 (then per request): returns whether L7 is needed
/// and the refusal, if any. Synchronous, so nothing borrowed crosses an await.
fn authorize_l4(
    ctx: &Ctx,
    state: &MeshState,
    dst: &nodemesh_config::Workload,
    arrival: &Arrival,
    flow: &mut Flow,
) -> (bool, Option<Refused>) {
    let destination = Destination {
        namespace: &dst.namespace,
        labels: &dst.labels,
        ip: Some(arrival.target.ip()),
        port: arrival.target.port(),
    };
    let policies = state.policies();
    if policies.needs_l7(&destination) {
        return (true, None);
    }
    let connection = Connection {
        source: Peer {
            principal: arrival.peer.as_ref().map(|p| p.principal()),
            namespace: None,
            ip: Some(arrival.src.ip()),
        },
        destination,
    };
    let decision = policies.decide_connection(&connection);
    let policy = decision.deciding_policy.as_ref().map(|p| p.to_string());
    ctx.metrics
        .policy_decision(decision.verdict.as_str(), policy.as_deref());
    flow.policy = policy.clone();
    if decision.verdict == Verdict::Deny {
        return (
            false,
            Some(Refused {
                reason: RefusalReason::Policy,
                status: StatusCode::UNAUTHORIZED,
                policy,
            }),
        );
    }
    (false, None)
}
