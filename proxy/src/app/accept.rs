//! Accepting connections: each listener's loop, the bounds a connection is let in under, and
//! the hand-over to its side (outbound, HBONE, inbound plaintext).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::bounds::{ConnPermit, Listener};
use crate::ctx::Ctx;
use crate::flow::{Flow, Refused};
use crate::observe::{Direction, RefusalReason};
use crate::{inbound, outbound};

/// Accepts on `listener` until the drain; with `gate`, only once it turns true.
pub(super) async fn accept_loop(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    side: Listener,
    gate: Option<watch::Receiver<bool>>,
) {
    if let Some(mut ready) = gate {
        // Inherited: the running process accepts until this one can serve.
        tokio::select! {
            became = ready.wait_for(|r| *r) => if became.is_err() { return },
            () = ctx.drain.signaled() => return,
        }
    }
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(?side, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = ctx.drain.signaled() => return,
        };
        let Some(permit) = bound(&ctx, side, &stream, peer, None) else {
            inbound::reset(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::clone(&ctx);
        let guard = ctx.drain.guard();
        tokio::spawn(async move {
            dispatch(ctx, side, stream, peer, None).await;
            drop((permit, guard));
        });
    }
}

/// Lets a connection in under its listener's bounds (its share goes back when the permit
/// drops), or reports it refused `overloaded`; the caller then resets it.
pub(super) fn bound(
    ctx: &Ctx,
    side: Listener,
    stream: &tokio::net::TcpStream,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
) -> Option<ConnPermit> {
    let overload = match ctx.bounds.admit(side, peer.ip()) {
        Ok(permit) => return Some(permit),
        Err(overload) => overload,
    };
    tracing::debug!(?side, %peer, %overload, "connection refused");
    let local = orig_dst
        .or_else(|| stream.local_addr().ok())
        .unwrap_or(peer);
    let direction = match side {
        Listener::Outbound => Direction::Outbound,
        Listener::Hbone | Listener::Plaintext => Direction::Inbound,
    };
    ctx.flows
        .start(Flow::new(direction, ClientAddr(peer), OrigDstAddr(local)))
        .finish(Err(Refused::new(RefusalReason::Overloaded)));
    None
}

/// Hands an accepted connection to its side. Under TPROXY the original destination is the
/// accepted socket's local address; tests without capture pass it in.
///
/// This future is the connection's task, allocated once for its whole life: whatever it holds
/// across an await is paid by every idle connection. So each step that runs only before the
/// bytes flow (dials, handshakes, admission) is boxed where it is awaited, and freed when done.
pub(super) async fn dispatch(
    ctx: Arc<Ctx>,
    side: Listener,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    orig_dst: Option<SocketAddr>,
) {
    let peer = ClientAddr(peer);
    let orig_dst = match orig_dst.map_or_else(|| stream.local_addr(), Ok) {
        Ok(addr) => OrigDstAddr(addr),
        Err(error) => return tracing::debug!(%error, "no original destination"),
    };
    match side {
        Listener::Outbound => outbound::handle(ctx, stream, peer, orig_dst).await,
        // Boxed: a pooled HBONE connection is rare next to the tunnels it carries, and its
        // TLS and HTTP/2 state would otherwise size every outbound connection's task.
        Listener::Hbone => Box::pin(inbound::hbone::serve_connection(ctx, stream, peer.0)).await,
        Listener::Plaintext => inbound::plaintext::serve(&ctx, stream, peer, orig_dst).await,
    }
}
