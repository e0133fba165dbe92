//! The HBONE client: a pool of HTTP/2-over-mTLS connections keyed by (source identity,
//! destination identity, HBONE address), many CONNECT streams per connection, a new connection
//! past [`CLIENT_STREAMS_PER_CONNECTION`] streams, one handshake at a time per key (no herd),
//! broken connections evicted, idle ones released.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nodemesh_identity::{Credentials, SpiffeId, placeholder_server_name};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

use super::request::{Caller, connect_request};
use super::settings::*;
use crate::socket::ConnectOptions;
use crate::tls::{TlsConfigs, TlsError};

/// How long a TLS handshake to a peer proxy may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Which pooled connections a stream may share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The client workload's identity (its certificate is presented).
    pub source: SpiffeId,
    /// The identity the server must present.
    pub destination: SpiffeId,
    /// `<destination pod IP>:15008`.
    pub addr: SocketAddr,
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HboneError {
    /// No certificate for the source workload.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// TCP connect to the peer failed.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The HBONE address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong identity, untrusted chain, timeout...).
    #[error("TLS handshake with {addr}: {reason}")]
    Handshake {
        /// The HBONE address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// HTTP/2 failed.
    #[error("HTTP/2: {0}")]
    Http(#[from] hyper::Error),
    /// The peer answered the CONNECT with a non-200 status (401 policy, 503 unavailable...).
    #[error("peer answered {0}")]
    Status(StatusCode),
}

/// A pooled connection.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    /// The source certificate the connection was authenticated with: once it is replaced, the
    /// connection takes no new streams (it drains), so new tunnels present the new certificate.
    creds: Option<Arc<Credentials>>,
    streams: Arc<AtomicUsize>,
    /// Milliseconds since the pool's epoch when the last stream closed or opened.
    last_used: Arc<AtomicU64>,
}

#[derive(Default)]
struct Slot {
    conns: tokio::sync::Mutex<Vec<Conn>>,
}

/// The HBONE connection pool.
pub struct HboneClient {
    tls: Arc<TlsConfigs>,
    connect: ConnectOptions,
    epoch: Instant,
    // Read on each new tunnel to find the key's slot; written only for a new key.
    slots: RwLock<HashMap<PoolKey, Arc<Slot>>>,
}

impl std::fmt::Debug for HboneClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneClient").finish_non_exhaustive()
    }
}

/// An open CONNECT tunnel: raw bytes to and from the destination pod.
pub struct Tunnel {
    io: TokioIo<hyper::upgrade::Upgraded>,
    _guard: StreamGuard,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

struct StreamGuard {
    streams: Arc<AtomicUsize>,
    last_used: Arc<AtomicU64>,
    epoch: Instant,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
        self.last_used
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl HboneClient {
    /// A pool that builds TLS from `tls` and marks its sockets per `connect`.
    pub fn new(tls: Arc<TlsConfigs>, connect: ConnectOptions) -> Self {
        Self {
            tls,
            connect,
            epoch: Instant::now(),
            slots: RwLock::new(HashMap::new()),
        }
    }

    fn slot(&self, key: &PoolKey) -> Arc<Slot> {
        if let Some(slot) = self.slots.read().ok().and_then(|m| m.get(key).cloned()) {
            return slot;
        }
        match self.slots.write() {
            Ok(mut m) => Arc::clone(m.entry(key.clone()).or_default()),
            Err(_) => Arc::new(Slot::default()),
        }
    }

    /// Number of live pooled connections for `key` (for tests and the admin API).
    pub async fn connections(&self, key: &PoolKey) -> usize {
        let slot = self.slot(key);
        let conns = slot.conns.lock().await;
        conns.iter().filter(|c| !c.sender.is_closed()).count()
    }

    /// Opens a CONNECT tunnel to `target` (`<pod ip>:<port>`) over a pooled connection.
    pub async fn open(
        &self,
        key: &PoolKey,
        target: SocketAddr,
        caller: &Caller<'_>,
    ) -> Result<Tunnel, HboneError> {
        let slot = self.slot(key);
        let (mut sender, streams, last_used) = {
            // Holding the slot's lock while connecting makes concurrent callers for the same key
            // wait for this one handshake instead of each starting their own.
            let mut conns = slot.conns.lock().await;
            let current = self.tls.current_credentials(&key.source);
            let now = self.epoch.elapsed().as_millis() as u64;
            let idle_ms = POOL_IDLE.as_millis() as u64;
            let same_cert = |c: &Conn| match (&c.creds, &current) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            // Drop closed connections, idle ones, and idle ones with a replaced certificate
            // (busy ones are kept until their streams end: dropping the sender would not cut
            // them, but keeping it lets `connections` count them).
            conns.retain(|c| {
                let busy = c.streams.load(Ordering::Acquire) > 0;
                let fresh = now.saturating_sub(c.last_used.load(Ordering::Relaxed)) <= idle_ms;
                !c.sender.is_closed() && (busy || (fresh && same_cert(c)))
            });
            let reusable = conns.iter().find(|c| {
                same_cert(c)
                    && c.sender.is_ready()
                    && c.streams.load(Ordering::Acquire) < CLIENT_STREAMS_PER_CONNECTION
            });
            let conn = match reusable {
                Some(c) => c,
                None => {
                    let conn = self.dial(key, current.clone()).await?;
                    conns.push(conn);
                    let Some(c) = conns.last() else {
                        return Err(HboneError::Status(StatusCode::INTERNAL_SERVER_ERROR));
                    };
                    c
                }
            };
            conn.streams.fetch_add(1, Ordering::AcqRel);
            conn.last_used.store(now, Ordering::Relaxed);
            (
                conn.sender.clone(),
                Arc::clone(&conn.streams),
                Arc::clone(&conn.last_used),
            )
        };
        let guard = StreamGuard {
            streams,
            last_used,
            epoch: self.epoch,
        };
        let request = connect_request(target, caller)
            .map_err(|_| HboneError::Status(StatusCode::BAD_REQUEST))?
            .map(|()| Empty::<Bytes>::new());
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Status(response.status()));
        }
        let upgraded = hyper::upgrade::on(response).await?;
        Ok(Tunnel {
            io: TokioIo::new(upgraded),
            _guard: guard,
        })
    }

    async fn dial(
        &self,
        key: &PoolKey,
        creds: Option<Arc<Credentials>>,
    ) -> Result<Conn, HboneError> {
        let config = self.tls.client(&key.source, &key.destination)?;
        let tcp = self
            .connect
            .connect(key.addr, None)
            .await
            .map_err(|source| HboneError::Connect {
                addr: key.addr,
                source,
            })?;
        let handshake = TlsConnector::from(config)
            .connect(placeholder_server_name(), super::buffered(tcp));
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(HboneError::Handshake {
                    addr: key.addr,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(HboneError::Handshake {
                    addr: key.addr,
                    reason: "timed out".into(),
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
        let addr = key.addr;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "HBONE connection closed with an error");
            }
        });
        Ok(Conn {
            sender,
            creds,
            streams: Arc::new(AtomicUsize::new(0)),
            last_used: Arc::new(AtomicU64::new(self.epoch.elapsed().as_millis() as u64)),
        })
    }
}
