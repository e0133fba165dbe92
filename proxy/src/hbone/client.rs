//! The HBONE client: a pool of HTTP/2-over-mTLS connections keyed by (source identity,
//! destination identity, HBONE address), many CONNECT streams per connection, one handshake at a
//! time per key (no herd). Which connection a stream takes and which ones go is [`super::pool`]'s
//! decision; this file does the I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use nodemesh_identity::{Credentials, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::HboneError;
use super::conn::{Conn, dial};
use super::pool::{self, ConnView, PoolLimits};
use super::request::{Caller, connect_request};
use crate::socket::ConnectOptions;
use crate::tls::TlsConfigs;

/// Which pooled connections a stream may share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The client workload's identity (its certificate is presented).
    pub source: SpiffeId,
    /// The identity the server must present.
    pub destination: SpiffeId,
    /// `<destination pod IP>:15008`.
    pub addr: SocketAddr,
    /// The address the connection leaves from: the client pod's IP (bound transparently, so
    /// the peer and everything on the way sees the pod, not the node), or `None` for the
    /// node's own address.
    pub source_ip: Option<IpAddr>,
}

#[derive(Default)]
struct Slot {
    conns: tokio::sync::Mutex<Vec<Conn>>,
}

/// The HBONE connection pool.
pub struct HboneClient {
    tls: Arc<TlsConfigs>,
    connect: ConnectOptions,
    limits: PoolLimits,
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
            .store(millis(self.epoch.elapsed()), Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
            limits: PoolLimits::default(),
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

    /// How `conn` looks to the pool's rules now.
    fn view(&self, conn: &Conn, current: Option<&Arc<Credentials>>, now_ms: u64) -> ConnView {
        ConnView {
            closed: conn.sender.is_closed(),
            ready: conn.sender.is_ready(),
            streams: conn.streams.load(Ordering::Acquire),
            idle: Duration::from_millis(
                now_ms.saturating_sub(conn.last_used.load(Ordering::Relaxed)),
            ),
            current_cert: match (&conn.creds, current) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            },
        }
    }

    /// Opens a CONNECT tunnel to `target` (`<pod ip>:<port>`) over a pooled connection.
    pub async fn open(
        &self,
        key: &PoolKey,
        target: SocketAddr,
        caller: &Caller<'_>,
    ) -> Result<Tunnel, HboneError> {
        let request = connect_request(target, caller)
            .map_err(HboneError::Request)?
            .map(|()| Empty::<Bytes>::new());
        let slot = self.slot(key);
        let (mut sender, streams, last_used) = {
            // Holding the slot's lock while connecting makes concurrent callers for the same key
            // wait for this one handshake instead of each starting their own.
            let mut conns = slot.conns.lock().await;
            let current = self.tls.current_credentials(&key.source);
            let now = millis(self.epoch.elapsed());
            conns.retain(|c| pool::keep(&self.view(c, current.as_ref(), now), &self.limits));
            let views = conns.iter().map(|c| self.view(c, current.as_ref(), now));
            let index = match pool::choose(views, &self.limits) {
                Some(i) => i,
                None => {
                    let conn = dial(&self.tls, self.connect, key, current.clone(), now).await?;
                    conns.push(conn);
                    conns.len() - 1
                }
            };
            let conn = &conns[index];
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
}
