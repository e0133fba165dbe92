//! The HBONE server (15008): TLS with the certificate of the pod that owns the accepted socket's
//! local address, HTTP/2, one CONNECT stream per tunnelled connection, each admitted like any
//! other arrival.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nodemesh_identity::{SpiffeId, peer_identity};
use nodemesh_net::timeouts::TLS_HANDSHAKE;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{Arrival, preface};
use crate::addr::{ClientAddr, OrigDstAddr};
use crate::ctx::Ctx;
use crate::flow::{Flow, Refused};
use crate::hbone::request::{check_connect, forwarded_for};
use crate::hbone::settings::*;
use crate::observe::{Direction, LogLimit, RefusalReason};

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = code;
    r
}

/// Reports a connection refused before any CONNECT stream.
fn refuse(ctx: &Ctx, peer: ClientAddr, local: OrigDstAddr, reason: RefusalReason) {
    ctx.flows
        .start(Flow::new(Direction::Inbound, peer, local))
        .finish(Err(Refused::new(reason)));
}

/// The log lines a peer can trigger at will: failed handshakes, missing prefaces, refused
/// CONNECTs (each also counted in metrics and the flow log).
static REFUSALS_LOG: LogLimit = LogLimit::per_second();

/// Serves one accepted HBONE connection until it closes or the proxy drains.
pub(crate) async fn serve_connection(ctx: Arc<Ctx>, tcp: TcpStream, peer_addr: SocketAddr) {
    let Ok(local) = tcp.local_addr() else { return };
    let (peer, local) = (ClientAddr(peer_addr), OrigDstAddr(local));
    let state = ctx.store.load();
    let identity = state
        .workload(local.ip())
        .filter(|w| state.is_local(w) && state.in_mesh(w))
        .map(|w| w.identity.clone());
    drop(state);
    let Some(identity) = identity else {
        tracing::debug!(%local, "HBONE to an address that is no local mesh workload");
        return refuse(&ctx, peer, local, RefusalReason::UnknownDestination);
    };
    if ctx.certs.credentials(&identity).is_none() {
        tracing::warn!(%identity, "HBONE refused: no valid certificate for the destination");
        return refuse(&ctx, peer, local, RefusalReason::NoCertificate);
    }
    let config = match ctx.tls.server(&identity) {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%error, "HBONE refused");
            return refuse(&ctx, peer, local, RefusalReason::NoCertificate);
        }
    };
    // From accept to the HTTP/2 preface, the connection holds one of the handshakes in progress.
    let Some(handshake) = ctx.bounds.handshakes.try_acquire() else {
        tracing::debug!(%peer, "HBONE refused: too many handshakes in progress");
        super::reset(tcp);
        return refuse(&ctx, peer, local, RefusalReason::Overloaded);
    };
    let _tls_buffer = ctx.bounds.memory.charge(crate::hbone::TLS_READ_BUFFER);
    let accept = TlsAcceptor::from(config).accept(crate::hbone::buffered(tcp));
    let tls = match tokio::time::timeout(TLS_HANDSHAKE, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            if let Some(suppressed) = REFUSALS_LOG.admit() {
                tracing::info!(%peer, %local, %error, suppressed, "HBONE TLS handshake failed");
            }
            return refuse(&ctx, peer, local, RefusalReason::TlsHandshake);
        }
        Err(_) => {
            if let Some(suppressed) = REFUSALS_LOG.admit() {
                tracing::info!(%peer, %local, suppressed, "HBONE TLS handshake timed out");
            }
            return refuse(&ctx, peer, local, RefusalReason::TlsHandshake);
        }
    };
    let Some(peer_id) = peer_identity(tls.get_ref().1.peer_certificates()) else {
        return refuse(&ctx, peer, local, RefusalReason::TlsHandshake);
    };
    // A peer that completed TLS has this long to start HTTP/2 (the server's own timers start
    // only once it has).
    let tls = match tokio::time::timeout(ctx.bounds.h2_preface_timeout, preface::read(tls)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            if let Some(suppressed) = REFUSALS_LOG.admit() {
                tracing::info!(%peer, %local, %error, suppressed, "HBONE connection without an HTTP/2 preface");
            }
            return refuse(&ctx, peer, local, RefusalReason::BadRequest);
        }
        Err(_) => {
            if let Some(suppressed) = REFUSALS_LOG.admit() {
                tracing::info!(%peer, %local, suppressed, "HBONE HTTP/2 preface timed out");
            }
            return refuse(&ctx, peer, local, RefusalReason::BadRequest);
        }
    };
    drop(handshake);
    let service_ctx = Arc::clone(&ctx);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = Arc::clone(&service_ctx);
        let peer_id = peer_id.clone();
        async move {
            Ok::<_, std::convert::Infallible>(handle_stream(ctx, req, peer_id, peer, local).await)
        }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .keep_alive_interval(KEEPALIVE)
        .serve_connection(TokioIo::new(tls), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "HBONE connection ended with an error");
            }
        }
        () = ctx.drain.signaled() => {
            // GOAWAY: no new streams; running ones finish (the drain deadline forces the rest).
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Answers one CONNECT stream; on success the tunnel is served in its own task.
async fn handle_stream(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
    peer_id: SpiffeId,
    peer: ClientAddr,
    local: OrigDstAddr,
) -> Response<Empty<Bytes>> {
    let target = match check_connect(&req, local.ip()) {
        Ok(t) => OrigDstAddr(t),
        Err(error) => {
            if let Some(suppressed) = REFUSALS_LOG.admit() {
                tracing::info!(peer = %peer_id, %error, suppressed, "HBONE request refused");
            }
            refuse(&ctx, peer, local, RefusalReason::BadRequest);
            return status(error.status());
        }
    };
    // One snapshot for the whole stream. The client pod's address, as the peer proxy reports
    // it, is believed only for a workload with the peer's identity on the peer's node.
    let state = ctx.store.load();
    let src = super::source::trusted_source(&state, &peer_id, peer, forwarded_for(req.headers()));
    let arrival = Arrival {
        peer: Some(peer_id),
        src,
        target,
    };
    match super::admit(&ctx, state, arrival).await {
        Err(code) => status(code),
        Ok(admitted) => {
            let guard = ctx.drain.guard();
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => admitted.serve(&ctx, TokioIo::new(upgraded)).await,
                    Err(error) => tracing::debug!(%error, "HBONE tunnel upgrade failed"),
                }
                drop(guard);
            });
            status(StatusCode::OK)
        }
    }
}
