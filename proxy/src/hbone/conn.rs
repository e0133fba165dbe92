//! One HBONE connection to a peer proxy: TCP, TLS 1.3 with the source's certificate (the peer
//! must present the destination's SPIFFE ID), HTTP/2 with the shared settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use h2::client::SendRequest;
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
    pub(super) sender: SendRequest<Bytes>,
    /// Set once the connection has ended (the peer closed it, an error, an unanswered PING).
    pub(super) closed: Arc<AtomicBool>,
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
    let (sender, mut connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(tls)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let keepalive = super::keepalive::until_unanswered(connection.ping_pong());
    tokio::spawn({
        let closed = Arc::clone(&closed);
        async move {
            // The connection's one task: it moves every stream's frames. It ends when the
            // connection does, or when the peer stops answering PINGs (dropping it then ends
            // every stream with an error).
            tokio::select! {
                result = &mut connection => {
                    if let Err(error) = result {
                        tracing::debug!(%addr, %error, "HBONE connection closed with an error");
                    }
                }
                () = keepalive => {}
            }
            closed.store(true, Ordering::Release);
        }
    });
    Ok(Conn {
        sender,
        closed,
        creds,
        streams: Arc::new(AtomicUsize::new(0)),
        last_used: Arc::new(AtomicU64::new(now_ms)),
    })
}
