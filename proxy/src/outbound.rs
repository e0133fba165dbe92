//! The source side (15001): who is calling whom, and how to get there — HBONE to a remote pod,
//! in-process to a local one, plain TCP outside the mesh, or refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use nodemesh_identity::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::hbone::HBONE_PORT;
use crate::hbone::client::{HboneError, PoolKey};
use crate::hbone::request::Caller;
use crate::inbound::{self, Arrival};
use crate::observe::{RefusalReason, Reporter};
use crate::proxy::Ctx;
use crate::report::{Direction, Flow, Party};
use crate::state::MeshState;

/// Where an outbound connection goes (decided without I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// HBONE to a mesh pod on another node.
    Hbone {
        /// The client workload's identity.
        source: SpiffeId,
        /// The destination workload's identity.
        destination: SpiffeId,
        /// `<pod ip>:<port>` to CONNECT to.
        target: SocketAddr,
    },
    /// A mesh pod on this node: handled by the inbound side in-process.
    Local {
        /// The client workload's identity.
        source: SpiffeId,
        /// `<pod ip>:<port>`.
        target: SocketAddr,
    },
    /// Outside the mesh: plain TCP.
    Passthrough {
        /// Where to connect.
        target: SocketAddr,
    },
}

/// Classifies a connection from `src` to `orig_dst`; `Err` is the refusal reason.
pub fn classify(
    state: &MeshState,
    src: SocketAddr,
    orig_dst: SocketAddr,
    own_listeners: &[SocketAddr],
) -> Result<(Route, Option<String>), RefusalReason> {
    if own_listeners.contains(&orig_dst) {
        return Err(RefusalReason::Loop);
    }
    let source = state
        .workload(src.ip())
        .filter(|w| state.is_local(w) && state.in_mesh(w))
        .ok_or(RefusalReason::UnknownSource)?;
    let (target, service) = if state.service(orig_dst).is_some() {
        let picked = state
            .pick_endpoint(orig_dst)
            .ok_or(RefusalReason::NoEndpoint)?;
        (
            SocketAddr::new(picked.endpoint.ip.into(), picked.port),
            Some(format!(
                "{}.{}",
                picked.service.name, picked.service.namespace
            )),
        )
    } else {
        (orig_dst, None)
    };
    let route = match state.workload(target.ip()) {
        Some(w) if state.in_mesh(w) && state.is_local(w) => Route::Local {
            source: source.identity.clone(),
            target,
        },
        Some(w) if state.in_mesh(w) => Route::Hbone {
            source: source.identity.clone(),
            destination: w.identity.clone(),
            target,
        },
        Some(_) => Route::Passthrough { target },
        None if state.in_pod_network(target.ip()) => return Err(RefusalReason::UnknownDestination),
        None => Route::Passthrough { target },
    };
    Ok((route, service))
}

/// Handles one captured outbound connection from `src` whose original destination was
/// `orig_dst` (the listener's accepted local address; tests pass it directly).
pub async fn handle<S>(ctx: Arc<Ctx>, mut client: S, src: SocketAddr, orig_dst: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = ctx.store.load();
    let mut flow = Flow::new(Direction::Outbound, src, orig_dst);
    flow.src = Party::at(&state, src, None);
    let own = ctx.own_listeners();
    let (route, service) = match classify(&state, src, orig_dst, &own) {
        Ok(r) => r,
        Err(reason) => {
            tracing::info!(%src, dst = %orig_dst, reason = reason.as_str(), "outbound connection refused");
            ctx.metrics.refused(reason);
            flow.dst = Party::at(&state, orig_dst, None);
            flow.deny(reason, None);
            ctx.report_flow(&flow);
            return;
        }
    };
    flow.service = service;
    let source_workload = state.workload(src.ip()).cloned();
    drop(state);
    match route {
        Route::Local { target, .. } => {
            // Same node: the inbound side decides, as if the connection had come over HBONE.
            let arrival = Arrival {
                peer: source_workload.map(|w| w.identity),
                src,
                target,
            };
            match inbound::admit(&ctx, arrival).await {
                Ok(admitted) => inbound::serve(&ctx, admitted, client).await,
                Err((refused, flow)) => inbound::refused(&ctx, &refused, flow),
            }
        }
        Route::Passthrough { target } => {
            flow.mtls = false;
            flow.dst = Party::at(&ctx.store.load(), target, None);
            match ctx.connect.connect(target, None).await {
                Ok(mut upstream) => relay_and_report(&ctx, &mut client, &mut upstream, flow).await,
                Err(error) => {
                    tracing::debug!(%target, %error, "passthrough connect failed");
                    ctx.metrics.refused(RefusalReason::UpstreamConnect);
                    flow.deny(RefusalReason::UpstreamConnect, None);
                    ctx.report_flow(&flow);
                }
            }
        }
        Route::Hbone {
            source,
            destination,
            target,
        } => {
            if ctx.certs.credentials(&source).is_none() {
                tracing::warn!(identity = %source, "outbound refused: no valid certificate");
                ctx.metrics.refused(RefusalReason::NoCertificate);
                flow.deny(RefusalReason::NoCertificate, None);
                ctx.report_flow(&flow);
                return;
            }
            flow.dst = Party::at(&ctx.store.load(), target, Some(destination.clone()));
            let key = PoolKey {
                source,
                destination,
                addr: SocketAddr::new(target.ip(), ctx.hbone_port),
            };
            let (namespace, workload) = flow
                .src
                .namespace
                .clone()
                .zip(flow.src.workload.clone())
                .unwrap_or_default();
            let caller = Caller {
                addr: src,
                namespace: &namespace,
                workload: &workload,
            };
            match ctx.hbone.open(&key, target, &caller).await {
                Ok(mut tunnel) => relay_and_report(&ctx, &mut client, &mut tunnel, flow).await,
                Err(error) => {
                    let reason = match &error {
                        HboneError::Status(s) if s.as_u16() == 401 => RefusalReason::Policy,
                        HboneError::Status(s) if s.as_u16() == 400 => RefusalReason::BadRequest,
                        HboneError::Tls(_) => RefusalReason::NoCertificate,
                        HboneError::Handshake { .. } => RefusalReason::TlsHandshake,
                        _ => RefusalReason::UpstreamConnect,
                    };
                    tracing::info!(%src, %target, %error, "HBONE tunnel refused");
                    ctx.metrics.refused(reason);
                    flow.deny(reason, None);
                    ctx.report_flow(&flow);
                }
            }
        }
    }
}

/// The default HBONE port, for [`Ctx`] construction.
pub const DEFAULT_HBONE_PORT: u16 = HBONE_PORT;

async fn relay_and_report<C, U>(ctx: &Ctx, client: &mut C, upstream: &mut U, mut flow: Flow)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let started = Instant::now();
    let metrics = ctx
        .metrics
        .connection_opened(&flow.labels(Reporter::Source));
    match crate::relay::relay(client, upstream).await {
        Ok(t) => {
            // Istio's convention: "received" is the request direction, "sent" the response.
            metrics.add_received(t.downstream_to_upstream);
            metrics.add_sent(t.upstream_to_downstream);
        }
        Err(error) => tracing::debug!(%error, "outbound relay ended with an error"),
    }
    flow.bytes_received = metrics.bytes_received();
    flow.bytes_sent = metrics.bytes_sent();
    flow.duration = started.elapsed();
    metrics.closed();
    ctx.report_flow(&flow);
}
