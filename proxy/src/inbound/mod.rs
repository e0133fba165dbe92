//! The destination side: HBONE (15008, [`hbone`]), inbound plaintext (15006, [`plaintext`]) and
//! same-node traffic handed over in-process all end here: [`decide`] (pure, one state snapshot
//! per connection), then dial the pod, then relay — or, for destinations whose policies need
//! it, authorize every HTTP request ([`l7`]). One [`FlowGuard`] reports each connection.

mod admit;
pub(crate) mod hbone;
mod l7;
pub(crate) mod plaintext;
pub mod preface;
mod source;

use std::sync::Arc;

use http::StatusCode;
use nodemesh_state::MeshState;
use tokio::net::TcpStream;

pub use admit::{Admission, decide, recheck, vouched};

pub use crate::conns::Arrival;
use crate::conns::{AdmittedOn, Carried, Table};
use crate::ctx::Ctx;
use crate::flow::{Flow, FlowGuard, Party, Refused};
use crate::observe::{Direction, RefusalReason, Reporter};
use crate::relay::{RelayIo, relay_logged_in};

/// The HBONE answer to a refused CONNECT (ztunnel's: 401 for policy and STRICT, 400 for a
/// malformed request, 503 for everything the client cannot fix).
pub fn status(reason: RefusalReason) -> StatusCode {
    match reason {
        RefusalReason::Policy | RefusalReason::NetworkPolicy | RefusalReason::StrictMtls => {
            StatusCode::UNAUTHORIZED
        }
        RefusalReason::BadRequest => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An arrival that was let in and, unless it is decided per request, connected to its pod.
pub(crate) struct Admitted {
    state: Arc<MeshState>,
    on: AdmittedOn,
    guard: FlowGuard,
    /// `None` under L7, where the pod is dialled per request.
    upstream: Option<TcpStream>,
}

/// Decides an arrival against `state` and dials the pod: what happens before the HBONE answer.
/// A refusal is reported here; `Err` is the status to answer with.
pub(crate) async fn admit(
    ctx: &Ctx,
    state: Arc<MeshState>,
    arrival: Arrival,
) -> Result<Admitted, StatusCode> {
    let mut guard = ctx
        .flows
        .start(Flow::new(Direction::Inbound, arrival.src, arrival.target));
    let flow = guard.flow();
    flow.mtls = arrival.peer.is_some();
    flow.src = Party::at(&state, arrival.src.0, arrival.peer.clone());
    flow.dst = Party::at(&state, arrival.target.0, None);
    if ctx.bounds.memory.exhausted() {
        // Open connections keep going; new ones wait for buffers to be given back.
        let refused = Refused::new(RefusalReason::Overloaded);
        let code = status(refused.reason);
        guard.finish(Err(refused));
        return Err(code);
    }
    let admission = match decide(&state, &arrival, &ctx.pending, |id| {
        ctx.certs.credentials(id).is_some()
    }) {
        Ok(admission) => admission,
        Err(refused) => {
            if refused.reason == RefusalReason::Policy {
                ctx.metrics()
                    .policy_decision("deny", refused.policy.as_deref());
            }
            let code = status(refused.reason);
            guard.finish(Err(refused));
            return Err(code);
        }
    };
    let flow = guard.flow();
    flow.dst.identity = Some(admission.destination.clone());
    flow.policy.clone_from(&admission.policy);
    let upstream = if admission.needs_l7 {
        None
    } else {
        ctx.metrics()
            .policy_decision("allow", admission.policy.as_deref());
        let target = arrival.target.0;
        match ctx
            .connect
            .connect(target, ctx.pod_source(arrival.src))
            .await
        {
            Ok(stream) => Some(stream),
            Err(error) => {
                tracing::debug!(%target, %error, "connect to pod failed");
                let refused = Refused::connect_failed(&error);
                let code = status(refused.reason);
                guard.finish(Err(refused));
                return Err(code);
            }
        }
    };
    let on = AdmittedOn {
        source_vouched: vouched(&state, &arrival),
        arrival,
        destination: admission.destination,
        carried: Carried::Opaque,
    };
    Ok(Admitted {
        state,
        on,
        guard,
        upstream,
    })
}

impl Admitted {
    /// Carries the connection's bytes (or HTTP requests, under L7) until both sides close, or
    /// until a change of the state no longer allows it (`policy_changed`). The admission is
    /// taken apart before the future is built, so the connection's task holds each part once.
    pub(crate) fn serve<'a, S>(
        self,
        ctx: &'a Ctx,
        mut downstream: S,
    ) -> impl Future<Output = ()> + 'a
    where
        S: RelayIo + Send + 'static,
    {
        let Admitted {
            state,
            on,
            mut guard,
            upstream,
        } = self;
        guard.opened(Reporter::Destination);
        async move {
            let result = match upstream {
                // Boxed: an L4 connection's task does not carry the size of the HTTP server's.
                None => Box::pin(l7::serve(ctx, &state, on, downstream, &mut guard)).await,
                Some(mut upstream) => {
                    let open = ctx.conns.open(&state, on);
                    open.run(relay_logged_in(
                        &ctx.bounds.memory,
                        &mut downstream,
                        &mut upstream,
                    ))
                    .await
                }
            };
            guard.finish(result);
        }
    }
}

/// Closes a refused connection at once with a reset (`SO_LINGER` 0): no FIN handshake, no
/// `TIME_WAIT` kept for it, and the client learns at once.
pub(crate) fn reset(stream: tokio::net::TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}

/// Admits and serves a connection that needs no answer before its bytes flow (inbound
/// plaintext, same-node calls). A refused connection is handed back (to be reset).
pub(crate) async fn serve<S>(
    ctx: &Ctx,
    state: Arc<MeshState>,
    arrival: Arrival,
    stream: S,
) -> Option<S>
where
    S: RelayIo + Send + 'static,
{
    match Box::pin(admit(ctx, state, arrival)).await {
        Ok(admitted) => {
            admitted.serve(ctx, stream).await;
            None
        }
        Err(_) => Some(stream),
    }
}

/// Keeps the open connections' table: each change of the state re-decides them with
/// [`recheck`]; those no longer allowed are closed (`policy_changed`).
pub(crate) async fn follow_policy(ctx: Arc<Ctx>, table: Table) {
    let store = Arc::clone(&ctx.store);
    table
        .run(store, |state, on| {
            recheck(state, on, &ctx.pending, |id| {
                ctx.certs.credentials(id).is_some()
            })
        })
        .await;
}
