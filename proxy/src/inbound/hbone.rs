//! The HBONE server (15008): TLS with the certificate of the pod that owns the accepted socket's
//! local address, HTTP/2 (`h2` directly: one task per stream, which admits it and relays it),
//! one CONNECT stream per tunnelled connection, each admitted like any other arrival.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, Response, StatusCode};
use nodemesh_identity::{SpiffeId, peer_identity};
use nodemesh_net::timeouts::TLS_HANDSHAKE;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{Arrival, preface};
use crate::addr::{ClientAddr, OrigDstAddr};
use crate::ctx::Ctx;
use crate::flow::{Flow, Refused};
use crate::hbone::H2Stream;
use crate::hbone::request::{check_connect, forwarded_for};
use crate::hbone::settings::*;
use crate::observe::{Direction, LogLimit, RefusalReason};

fn status(code: StatusCode) -> Response<()> {
    let mut r = Response::new(());
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
    // A peer that completed TLS has this long to start HTTP/2 (the preface and its SETTINGS).
    let start = async {
        let tls = preface::read(tls).await.map_err(|e| e.to_string())?;
        h2::server::Builder::new()
            .max_concurrent_streams(SERVER_MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_LIST)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| e.to_string())
    };
    let mut conn = match tokio::time::timeout(ctx.bounds.h2_preface_timeout, start).await {
        Ok(Ok(conn)) => conn,
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
    let mut keepalive = std::pin::pin!(crate::hbone::keepalive::until_unanswered(conn.ping_pong()));
    let mut draining = false;
    // Accepting drives the connection: every stream's frames move while this loop polls it.
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let ctx = Arc::clone(&ctx);
                    let peer_id = peer_id.clone();
                    tokio::spawn(handle_stream(ctx, req, respond, peer_id, peer, local));
                }
                Some(Err(error)) => {
                    tracing::debug!(%peer, %error, "HBONE connection ended with an error");
                    break;
                }
                None => break,
            },
            () = ctx.drain.signaled(), if !draining => {
                // GOAWAY: no new streams; running ones finish (the drain deadline forces the
                // rest), then `accept` ends.
                conn.graceful_shutdown();
                draining = true;
            }
            () = &mut keepalive => break,
        }
    }
}

/// Answers one CONNECT stream and, once admitted, serves its tunnel. The answer (checks,
/// admission, the response) is boxed and freed before the tunnel's bytes flow: the stream's
/// task keeps only what serving needs (see `crate::app::accept::dispatch`).
fn handle_stream(
    ctx: Arc<Ctx>,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    peer_id: SpiffeId,
    peer: ClientAddr,
    local: OrigDstAddr,
) -> impl Future<Output = ()> {
    let guard = ctx.drain.guard();
    let answering = Box::pin(answer(Arc::clone(&ctx), req, respond, peer_id, peer, local));
    async move {
        if let Some((admitted, tunnel)) = answering.await {
            admitted.serve(&ctx, tunnel).await;
        }
        drop(guard);
    }
}

/// Checks and admits one CONNECT stream and answers it: the admitted connection and its tunnel,
/// or `None` once refused.
async fn answer(
    ctx: Arc<Ctx>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer_id: SpiffeId,
    peer: ClientAddr,
    local: OrigDstAddr,
) -> Option<(super::Admitted, H2Stream)> {
    let refuse_with = |respond: &mut SendResponse<Bytes>, code: StatusCode| {
        if let Err(error) = respond.send_response(status(code), true) {
            tracing::debug!(%error, "HBONE refusal not sent: the stream is gone");
        }
        None
    };
    let target = match check_connect(&req, local.ip()) {
        Ok(t) => OrigDstAddr(t),
        Err(error) => {
            if let Some(suppressed) = REFUSALS_LOG.admit() {
                tracing::info!(peer = %peer_id, %error, suppressed, "HBONE request refused");
            }
            refuse(&ctx, peer, local, RefusalReason::BadRequest);
            return refuse_with(&mut respond, error.status());
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
        Err(code) => refuse_with(&mut respond, code),
        Ok(admitted) => match respond.send_response(status(StatusCode::OK), false) {
            Ok(send) => Some((admitted, H2Stream::new(send, req.into_body()))),
            Err(error) => {
                tracing::debug!(%error, "HBONE tunnel gone before its answer");
                None
            }
        },
    }
}
