//! The HBONE server (15008): TLS with the certificate of the pod that owns the accepted socket's
//! local address, HTTP/2, one CONNECT stream per tunnelled connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nodemesh_identity::{SpiffeId, peer_identity};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::request::{check_connect, forwarded_for};
use super::settings::*;
use crate::inbound::{self, Arrival};
use crate::observe::RefusalReason;
use crate::proxy::Ctx;
use crate::report::{Direction, Flow};

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut r = Response::new(Empty::new());
    *r.status_mut() = code;
    r
}

/// Serves one accepted HBONE connection until it closes or the proxy drains.
pub async fn serve_connection(ctx: Arc<Ctx>, tcp: TcpStream, peer_addr: SocketAddr) {
    let Ok(local) = tcp.local_addr() else { return };
    let state = ctx.store.load();
    let identity = state
        .workload(local.ip())
        .filter(|w| state.is_local(w) && state.in_mesh(w))
        .map(|w| w.identity.clone());
    drop(state);
    let refuse = |reason: RefusalReason| {
        ctx.metrics.refused(reason);
        let mut flow = Flow::new(Direction::Inbound, peer_addr, local);
        flow.deny(reason, None);
        ctx.report_flow(&flow);
    };
    let Some(identity) = identity else {
        tracing::debug!(%local, "HBONE to an address that is no local mesh workload");
        return refuse(RefusalReason::UnknownDestination);
    };
    if ctx.certs.credentials(&identity).is_none() {
        tracing::warn!(%identity, "HBONE refused: no valid certificate for the destination");
        return refuse(RefusalReason::NoCertificate);
    }
    let config = match ctx.tls.server(&identity) {
        Ok(c) => c,
        Err(error) => {
            tracing::warn!(%error, "HBONE refused");
            return refuse(RefusalReason::NoCertificate);
        }
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(super::buffered(tcp)))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::info!(%peer_addr, %local, %error, "HBONE TLS handshake failed");
            return refuse(RefusalReason::TlsHandshake);
        }
        Err(_) => {
            tracing::info!(%peer_addr, %local, "HBONE TLS handshake timed out");
            return refuse(RefusalReason::TlsHandshake);
        }
    };
    let Some(peer) = peer_identity(tls.get_ref().1.peer_certificates()) else {
        return refuse(RefusalReason::TlsHandshake);
    };
    let service_ctx = Arc::clone(&ctx);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = Arc::clone(&service_ctx);
        let peer = peer.clone();
        async move {
            Ok::<_, std::convert::Infallible>(handle_stream(ctx, req, peer, peer_addr, local).await)
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
                tracing::debug!(%peer_addr, %error, "HBONE connection ended with an error");
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
    peer: SpiffeId,
    peer_addr: SocketAddr,
    local: SocketAddr,
) -> Response<Empty<Bytes>> {
    let target = match check_connect(&req, local.ip()) {
        Ok(t) => t,
        Err(error) => {
            tracing::info!(%peer, %error, "HBONE request refused");
            ctx.metrics.refused(RefusalReason::BadRequest);
            let mut flow = Flow::new(Direction::Inbound, peer_addr, local);
            flow.deny(RefusalReason::BadRequest, None);
            ctx.report_flow(&flow);
            return status(error.status());
        }
    };
    // The client pod's address, as the peer proxy reports it; believed only when that address
    // belongs to a workload with the peer's own verified identity.
    let state = ctx.store.load();
    let src = forwarded_for(req.headers())
        .filter(|a| state.workload(a.ip()).is_some_and(|w| w.identity == peer))
        .unwrap_or(peer_addr);
    drop(state);
    let arrival = Arrival {
        peer: Some(peer),
        src,
        target,
    };
    match inbound::admit(&ctx, arrival).await {
        Err((refused, flow)) => {
            let code = refused.status;
            inbound::refused(&ctx, &refused, flow);
            status(code)
        }
        Ok(admitted) => {
            let guard = ctx.drain.guard();
            tokio::spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => inbound::serve(&ctx, admitted, TokioIo::new(upgraded)).await,
                    Err(error) => tracing::debug!(%error, "HBONE tunnel upgrade failed"),
                }
                drop(guard);
            });
            status(StatusCode::OK)
        }
    }
}
