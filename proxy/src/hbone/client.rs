//! The HBONE client: a pool of HTTP/2-over-mTLS connections keyed by (source identity,
//! destination identity, HBONE address), many CONNECT streams per connection, callers that
//! arrive while a dial is young share it (no herd). Which connection a stream takes and which ones go is [`super::pool`]'s
//! decision; this file does the I/O.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
// One short lock per new tunnel (a list scan, never I/O), none per byte: see `Slot`.
#[allow(clippy::disallowed_types)]
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::StatusCode;
use nodemesh_identity::{Credentials, SpiffeId};
use tokio::sync::watch;

use super::HboneError;
use super::conn::{Conn, dial};
use super::pool::{self, ConnView, PoolLimits};
use super::request::{Caller, connect_request};
use super::stream::H2Stream;
use super::tunnel::{StreamGuard, Tunnel, millis};
use crate::observe::{ErrorChain, RefusalReason};
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

/// The connections of one key, and the dial under way for it, if any.
#[derive(Default)]
struct Slot {
    // Held only to look at or change the list, never across I/O, once per new tunnel: the
    // data path (bytes of open tunnels) never takes it.
    #[allow(clippy::disallowed_types)]
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    conns: Vec<Conn>,
    /// The latest dial in progress and when it started: callers that find no usable
    /// connection while [`pool::joins`] it wait for its outcome instead of
    /// starting their own (no herd), and are woken when it ends either way.
    dialing: Option<(Instant, watch::Receiver<Option<DialOutcome>>)>,
}

/// How a dial that others waited for ended: `Err` carries what the waiters report.
type DialOutcome = Result<(), (RefusalReason, Arc<str>)>;

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding the lock leaves a list that is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The right to dial for a slot. Dropped unfinished (the caller gave up: its client left),
/// it clears the slot's dial so a waiter starts a new one.
struct DialTicket {
    slot: Arc<Slot>,
    outcome: watch::Sender<Option<DialOutcome>>,
}

impl DialTicket {
    /// Ends the dial: `conn` joins the pool, and the waiters learn the outcome.
    fn finish(self, conn: Result<Conn, &HboneError>) {
        let outcome = {
            let mut state = self.slot.lock();
            self.clear(&mut state);
            match conn {
                Ok(conn) => {
                    state.conns.push(conn);
                    Ok(())
                }
                Err(error) => Err((error.refusal(), Arc::from(ErrorChain(error).to_string()))),
            }
        };
        self.outcome.send_replace(Some(outcome));
    }
}

impl DialTicket {
    /// Forgets this dial as the slot's latest, unless a newer one replaced it.
    fn clear(&self, state: &mut SlotState) {
        if state
            .dialing
            .as_ref()
            .is_some_and(|(_, rx)| rx.same_channel(&self.outcome.subscribe()))
        {
            state.dialing = None;
        }
    }
}

impl Drop for DialTicket {
    fn drop(&mut self) {
        let slot = Arc::clone(&self.slot);
        self.clear(&mut slot.lock());
    }
}

/// What a caller does after looking at its slot.
enum Next {
    /// Take this connection: (sender, streams, last used).
    Use(SendRequest<Bytes>, Arc<AtomicUsize>, Arc<AtomicU64>),
    /// Dial a new connection.
    Dial(DialTicket, Option<Arc<Credentials>>),
    /// Wait for another caller's dial.
    Wait(watch::Receiver<Option<DialOutcome>>),
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
        let Some(slot) = self.slots.read().ok().and_then(|m| m.get(key).cloned()) else {
            return 0;
        };
        let state = slot.lock();
        state
            .conns
            .iter()
            .filter(|c| !c.closed.load(Ordering::Acquire))
            .count()
    }

    /// Keys the pool holds a slot for (connections or a dial under way).
    pub fn slots(&self) -> usize {
        self.slots.read().map_or(0, |m| m.len())
    }

    /// Evicts what [`pool::keep`] would not keep, and every idle connection whose key is not
    /// `wanted` (its destination pod is gone); slots left empty go. Called on every change of
    /// the state and periodically, so the pool does not grow with pod churn.
    pub fn prune(&self, wanted: impl Fn(&PoolKey) -> bool) {
        let Ok(mut slots) = self.slots.write() else {
            return;
        };
        let now = millis(self.epoch.elapsed());
        slots.retain(|key, slot| {
            let wanted = wanted(key);
            let current = self.tls.current_credentials(&key.source);
            let mut state = slot.lock();
            state.conns.retain(|c| {
                let view = self.view(c, current.as_ref(), now);
                pool::keep(&view, &self.limits) && (wanted || view.streams > 0)
            });
            !state.conns.is_empty() || state.dialing.is_some()
        });
    }

    /// How `conn` looks to the pool's rules now.
    fn view(&self, conn: &Conn, current: Option<&Arc<Credentials>>, now_ms: u64) -> ConnView {
        let streams = conn.streams.load(Ordering::Acquire);
        ConnView {
            closed: conn.closed.load(Ordering::Acquire),
            // Under the peer's SETTINGS_MAX_CONCURRENT_STREAMS: past it, h2 would queue the
            // stream until another ends, so the pool opens a connection instead.
            ready: streams < conn.sender.current_max_send_streams(),
            streams,
            idle: Duration::from_millis(
                now_ms.saturating_sub(conn.last_used.load(Ordering::Relaxed)),
            ),
            current_cert: match (&conn.creds, current) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            },
        }
    }

    /// Looks at the slot once, under its lock: evicts, then picks a connection, the dial to
    /// wait for, or the right to dial.
    fn next(&self, slot: &Arc<Slot>, key: &PoolKey) -> Next {
        let mut state = slot.lock();
        let current = self.tls.current_credentials(&key.source);
        let now = millis(self.epoch.elapsed());
        state
            .conns
            .retain(|c| pool::keep(&self.view(c, current.as_ref(), now), &self.limits));
        let views = state
            .conns
            .iter()
            .map(|c| self.view(c, current.as_ref(), now));
        if let Some(index) = pool::choose(views, &self.limits) {
            let conn = &state.conns[index];
            conn.streams.fetch_add(1, Ordering::AcqRel);
            conn.last_used.store(now, Ordering::Relaxed);
            return Next::Use(
                conn.sender.clone(),
                Arc::clone(&conn.streams),
                Arc::clone(&conn.last_used),
            );
        }
        if let Some((started, dialing)) = &state.dialing
            && pool::joins(started.elapsed())
        {
            return Next::Wait(dialing.clone());
        }
        let (outcome, waiters) = watch::channel(None);
        state.dialing = Some((Instant::now(), waiters));
        Next::Dial(
            DialTicket {
                slot: Arc::clone(slot),
                outcome,
            },
            current,
        )
    }

    /// Opens a CONNECT tunnel to `target` (`<pod ip>:<port>`) over a pooled connection.
    pub async fn open(
        &self,
        key: &PoolKey,
        target: SocketAddr,
        caller: &Caller<'_>,
    ) -> Result<Tunnel, HboneError> {
        let build = || connect_request(target, caller).map_err(HboneError::Request);
        // Built (and so checked) before any connection is taken; built again only to retry.
        let mut request = Some(build()?);
        let slot = self.slot(key);
        // A pooled connection whose peer has since sent GOAWAY (it drains for an upgrade or a
        // restart) refuses the stream before anything reached the destination: that
        // connection leaves the pool and the stream is tried once more, on a fresh dial.
        let mut retried = false;
        loop {
            let (sender, streams, last_used) = self.stream_slot(&slot, key).await?;
            let guard = StreamGuard {
                streams,
                last_used,
                epoch: self.epoch,
            };
            let request = match request.take() {
                Some(request) => request,
                None => build()?,
            };
            match self.send(sender, request).await {
                Err(Sent::Not(error)) | Err(Sent::Refused(error)) if !retried => {
                    tracing::debug!(addr = %key.addr, %error, "HBONE stream not taken (connection closed, or its peer draining); retrying on a new connection");
                    retried = true;
                    slot.lock()
                        .conns
                        .retain(|c| !Arc::ptr_eq(&c.streams, &guard.streams));
                }
                Err(Sent::Not(error) | Sent::Refused(error) | Sent::Failed(error)) => {
                    return Err(error);
                }
                Ok(io) => return Ok(Tunnel { io, _guard: guard }),
            }
        }
    }

    /// Sends the CONNECT request and waits for the answer; 200 opens the tunnel.
    async fn send(
        &self,
        sender: SendRequest<Bytes>,
        request: http::Request<()>,
    ) -> Result<H2Stream, Sent> {
        // Until the request is handed to h2, nothing has left: any failure may be retried.
        let mut sender = sender.ready().await.map_err(|e| Sent::Not(e.into()))?;
        let (response, send) = sender
            .send_request(request, false)
            .map_err(|e| Sent::Not(e.into()))?;
        let response = response.await.map_err(|e| {
            if is_refused_before_processed(&e) {
                Sent::Refused(e.into())
            } else {
                Sent::Failed(e.into())
            }
        })?;
        if response.status() != StatusCode::OK {
            return Err(Sent::Failed(HboneError::Status(response.status())));
        }
        Ok(H2Stream::new(send, response.into_body()))
    }

    /// A connection for one new stream of `key`: pooled, joined or dialed.
    async fn stream_slot(
        &self,
        slot: &Arc<Slot>,
        key: &PoolKey,
    ) -> Result<(SendRequest<Bytes>, Arc<AtomicUsize>, Arc<AtomicU64>), HboneError> {
        loop {
            match self.next(slot, key) {
                Next::Use(sender, streams, last_used) => return Ok((sender, streams, last_used)),
                Next::Dial(ticket, creds) => {
                    // No lock is held here: other keys, and callers of this key that find a
                    // usable connection, go on while this dial runs (bounded by the connect
                    // and handshake deadlines). Dropping this future abandons the dial.
                    let now = millis(self.epoch.elapsed());
                    match dial(&self.tls, self.connect, key, creds, now).await {
                        Ok(conn) => ticket.finish(Ok(conn)),
                        Err(error) => {
                            ticket.finish(Err(&error));
                            return Err(error);
                        }
                    }
                }
                Next::Wait(mut outcome) => {
                    // Err: the dialer gave up (its client left); look again, maybe dial.
                    if let Ok(done) = outcome.wait_for(Option::is_some).await
                        && let Some(Err((reason, cause))) = done.as_ref()
                    {
                        return Err(HboneError::Shared {
                            addr: key.addr,
                            reason: *reason,
                            cause: Arc::clone(cause),
                        });
                    }
                }
            }
        }
    }
}

/// How a CONNECT failed, as far as retrying goes.
enum Sent {
    /// Before the request was handed to HTTP/2 (the connection had closed or was going away).
    Not(HboneError),
    /// The peer refused the stream unprocessed (`REFUSED_STREAM`, or a GOAWAY that excluded it).
    Refused(HboneError),
    /// Anything else: the destination may have seen the connection.
    Failed(HboneError),
}

/// Whether the peer refused a stream before it was processed (`REFUSED_STREAM`, or a graceful
/// GOAWAY that excluded it). Nothing reached the destination, so the stream may be tried again.
fn is_refused_before_processed(error: &h2::Error) -> bool {
    error.reason() == Some(h2::Reason::REFUSED_STREAM)
        || (error.is_go_away() && error.reason() == Some(h2::Reason::NO_ERROR))
}
