//! The source side (15001): who is calling whom ([`classify`], pure), then the dial — HBONE to a
//! remote pod, the inbound side in-process for a pod on this node, plain TCP outside the mesh —
//! and the relay. One [`FlowGuard`](crate::flow::FlowGuard) reports each connection.

mod classify;
mod gone;

use std::net::SocketAddr;
use std::sync::Arc;

use nodemesh_identity::SpiffeId;
use nodemesh_policy::Verdict;
use nodemesh_policy::netpol::Protocol;
use nodemesh_state::{FlowSource, MeshState};
use tokio::net::TcpStream;

pub use classify::{Route, Routed, classify};

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::ctx::Ctx;
use crate::flow::{Flow, FlowGuard, Party, Refused};
use crate::hbone::request::Caller;
use crate::hbone::{PoolKey, Tunnel};
use crate::inbound::{self, Arrival};
use crate::observe::{Direction, ErrorChain, LogLimit, RefusalReason, Reporter};
use crate::relay::{Transferred, relay_logged_in};
use crate::socket;
use gone::{ClientGone, unless_client_resets, was_reset};

/// Handles one captured outbound connection from `src` whose original destination was
/// `orig_dst` (the listener's accepted local address; tests pass it directly). A refused
/// client is reset (RST), so it fails at once instead of reading an empty answer.
///
/// Everything before the relay (classification, policy, the dial) is boxed and freed once the
/// upstream is open: the connection's task keeps only what its relay needs.
pub(crate) async fn handle(
    ctx: Arc<Ctx>,
    client: TcpStream,
    src: ClientAddr,
    orig_dst: OrigDstAddr,
) {
    if let Some(connected) = Box::pin(connect(&ctx, client, src, orig_dst)).await {
        connected.relay(&ctx).await;
    }
}

/// A connection whose upstream is open: what its relay needs.
struct Connected {
    guard: FlowGuard,
    client: TcpStream,
    upstream: Upstream,
}

/// Where a relayed connection's bytes go.
enum Upstream {
    /// Plain TCP outside the mesh.
    Plain(TcpStream),
    /// An HBONE tunnel to a mesh pod on another node.
    Tunnel(Tunnel),
}

impl Connected {
    /// Relays until both sides close, then reports the flow. Taken apart before the future is
    /// built, so the task holds each part once.
    fn relay(self, ctx: &Ctx) -> impl Future<Output = ()> + '_ {
        let Connected {
            guard,
            mut client,
            upstream,
        } = self;
        async move {
            let moved = match upstream {
                Upstream::Plain(mut up) => {
                    relay_logged_in(&ctx.bounds.memory, &mut client, &mut up).await
                }
                Upstream::Tunnel(mut up) => {
                    relay_logged_in(&ctx.bounds.memory, &mut client, &mut up).await
                }
            };
            guard.finish(Ok(moved));
        }
    }
}

/// Classifies, decides and dials: the open upstream, or `None` once the connection is over
/// (refused and reset, its client gone, or a same-node call served by the inbound side).
async fn connect(
    ctx: &Ctx,
    mut client: TcpStream,
    src: ClientAddr,
    orig_dst: OrigDstAddr,
) -> Option<Connected> {
    let state = ctx.store.load();
    let mut guard = ctx
        .flows
        .start(Flow::new(Direction::Outbound, src, orig_dst));
    guard.flow().src = Party::at(&state, src.0, None);
    let routed = match classify(&state, src, orig_dst, &ctx.own_listeners, &ctx.pending) {
        Ok(routed) => routed,
        Err(reason) => {
            guard.flow().dst = Party::at(&state, orig_dst.0, None);
            return refuse(guard, client, reason.into());
        }
    };
    guard.flow().service = routed.service;
    if let Some(refused) = network_policy(&state, src, &routed.route) {
        guard.flow().dst = Party::at(&state, routed.route.target(), None);
        return refuse(guard, client, refused);
    }
    let upstream = match routed.route {
        Route::Local { source, target } => {
            // Same node: the source needs a valid certificate, as over HBONE; then the inbound
            // side decides and reports.
            if ctx.certs.credentials(&source).is_none() {
                tracing::warn!(identity = %source, "same-node call refused: no valid certificate");
                guard.flow().dst = Party::at(&state, target, None);
                return refuse(guard, client, Refused::new(RefusalReason::NoCertificate));
            }
            guard.hand_over();
            let arrival = Arrival {
                peer: Some(source),
                src,
                target: OrigDstAddr(target),
            };
            if let Some(refused) = inbound::serve(ctx, state, arrival, client).await {
                socket::reset(refused);
            }
            return None;
        }
        Route::Passthrough { target } => {
            passthrough(ctx, &state, &mut guard, &mut client, src, target)
                .await
                .map(Upstream::Plain)
        }
        Route::Hbone {
            source,
            destination,
            target,
        } => {
            let hop = Hop {
                source,
                destination,
                target,
            };
            hbone(ctx, &state, &mut guard, &mut client, src, hop)
                .await
                .map(Upstream::Tunnel)
        }
    };
    match upstream {
        Ok(upstream) => Some(Connected {
            guard,
            client,
            upstream,
        }),
        // The client left while the proxy was still connecting: nothing was sent for it.
        Err(Outcome::ClientGone) => {
            guard.finish(Ok(Transferred::default()));
            None
        }
        Err(Outcome::Refused(refused)) => refuse(guard, client, refused),
    }
}

/// Reports `refused` and resets the client (RST): the connection is over.
fn refuse(guard: FlowGuard, client: TcpStream, refused: Refused) -> Option<Connected> {
    guard.finish(Err(refused));
    socket::reset(client);
    None
}

/// How a connection that never reached its relay ended.
enum Outcome {
    /// Refused by the proxy (or the dial failed): the client is reset.
    Refused(Refused),
    /// The client reset its connection first.
    ClientGone,
}

impl From<Refused> for Outcome {
    fn from(refused: Refused) -> Self {
        Outcome::Refused(refused)
    }
}

impl From<ClientGone> for Outcome {
    fn from(ClientGone: ClientGone) -> Self {
        Outcome::ClientGone
    }
}

/// Plain TCP to a destination outside the mesh, from the client pod's IP (so a metadata
/// server or a host firewall sees the pod, not the node).
async fn passthrough(
    ctx: &Ctx,
    state: &MeshState,
    guard: &mut FlowGuard,
    client: &mut TcpStream,
    src: ClientAddr,
    target: SocketAddr,
) -> Result<TcpStream, Outcome> {
    guard.flow().mtls = false;
    guard.flow().dst = Party::at(state, target, None);
    let source = ctx
        .outbound_source(src)
        .filter(|_| !crate::socket::is_local(target.ip()));
    let connect = ctx.connect.connect(target, source);
    let upstream = unless_client_resets(client, connect)
        .await?
        .map_err(|error| {
            tracing::debug!(%target, %error, "passthrough connect failed");
            Refused::connect_failed(&error)
        })?;
    if was_reset(client) {
        return Err(Outcome::ClientGone);
    }
    guard.opened(Reporter::Source);
    Ok(upstream)
}

/// The HBONE hop to a mesh pod on another node.
struct Hop {
    source: SpiffeId,
    destination: SpiffeId,
    target: SocketAddr,
}

async fn hbone(
    ctx: &Ctx,
    state: &MeshState,
    guard: &mut FlowGuard,
    client: &mut TcpStream,
    src: ClientAddr,
    hop: Hop,
) -> Result<Tunnel, Outcome> {
    if ctx.certs.credentials(&hop.source).is_none() {
        tracing::warn!(identity = %hop.source, "outbound refused: no valid certificate");
        return Err(Refused::new(RefusalReason::NoCertificate).into());
    }
    let flow = guard.flow();
    flow.dst = Party::at(state, hop.target, Some(hop.destination.clone()));
    let (namespace, workload) = flow
        .src
        .namespace
        .clone()
        .zip(flow.src.workload.clone())
        .unwrap_or_default();
    let caller = Caller {
        addr: src.0,
        namespace: &namespace,
        workload: &workload,
    };
    let key = PoolKey {
        source: hop.source,
        destination: hop.destination,
        addr: SocketAddr::new(hop.target.ip(), ctx.hbone_port),
        source_ip: ctx.outbound_source(src),
    };
    let open = ctx.hbone.open(&key, hop.target, &caller);
    let tunnel = unless_client_resets(client, open)
        .await?
        .map_err(|error| {
            static LOG: LogLimit = LogLimit::per_second();
            if let Some(suppressed) = LOG.admit() {
                tracing::info!(%src, target = %hop.target, error = %ErrorChain(&error), suppressed, "HBONE tunnel refused");
            }
            Refused::new(error.refusal())
        })?;
    if was_reset(client) {
        return Err(Outcome::ClientGone);
    }
    guard.opened(Reporter::Source);
    Ok(tunnel)
}

/// The network policies' decision on a connection from a local pod, for the routes this side
/// completes (HBONE and passthrough; a same-node call is decided by the inbound side): egress
/// at the source pod, and ingress at the destination (for a pod outside the mesh, no one else
/// sees this connection). `Some` is the refusal. Decided on the chosen endpoint and its target
/// port, never on a Service VIP.
fn network_policy(state: &MeshState, src: ClientAddr, route: &Route) -> Option<Refused> {
    if state.network_policies().is_empty() || matches!(route, Route::Local { .. }) {
        return None;
    }
    let target = route.target();
    let decision = state.decide_network(
        FlowSource::Address(src.ip()),
        target.ip(),
        Protocol::Tcp,
        target.port(),
    );
    (decision.verdict == Verdict::Deny)
        .then(|| Refused::by_network_policy(&decision, target.port()))
}
