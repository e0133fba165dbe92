//! One HBONE connection to a peer proxy: TCP, TLS 1.3 with the source's certificate (the peer
//! must present the destination's SPIFFE ID), HTTP/2 with the shared settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nodemesh_identity::{Credentials, placeholder_server_name};
use nodemesh_net::timeouts::TLS_HANDSHAKE;
use tokio_rustls::TlsConnector;

use super::HboneError;
use super::client::PoolKey;
use super::settings::*;
use crate::socket::ConnectOptions;
use crate::tls::TlsConfigs;

/// A pooled connection.
pub(super) struct Conn {
    pub(super) sender: SendRequest<Empty<Bytes>>,
    /// The source certificate the connection was authenticated with: once it is replaced, the
    /// connection takes no new streams (it drains), so new tunnels present the new certificate.
    pub(super) creds: Option<Arc<Credentials>>,
    pub(super) streams: Arc<AtomicUsize>,
    /// Milliseconds since the pool's epoch when the last stream closed or opened.
    pub(super) last_used: Arc<AtomicU64>,
}

/// Dials `key.addr` and completes TLS and the HTTP/2 handshake; `now_ms` is the pool's clock.
pub(super) async fn dial(
    tls: &TlsConfigs,
    connect: ConnectOptions,
    key: &PoolKey,
    creds: Option<Arc<Credentials>>,
    now_ms: u64,
) -> Result<Conn, HboneError> {
    let config = tls.client(&key.source, &key.destination)?;
    let addr = key.addr;
    let tcp = connect
        .connect(addr, key.source_ip)
        .await
        .map_err(|source| HboneError::Connect { addr, source })?;
    let handshake =
        TlsConnector::from(config).connect(placeholder_server_name(), super::buffered(tcp));
    let tls = match tokio::time::timeout(TLS_HANDSHAKE, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(source)) => return Err(HboneError::Handshake { addr, source }),
        Err(_) => {
            return Err(HboneError::HandshakeTimeout {
                addr,
                after: TLS_HANDSHAKE,
            });
        }
    };
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%addr, %error, "HBONE connection closed with an error");
        }
    });
    Ok(Conn {
        sender,
        creds,
        streams: Arc::new(AtomicUsize::new(0)),
        last_used: Arc::new(AtomicU64::new(now_ms)),
    })
}
