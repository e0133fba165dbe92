//! Resource bounds, sans IO: how many connections each listener and each source IP may hold,
//! how many HBONE handshakes may be in progress, and how many buffer bytes the proxy may account
//! for. Each bound hands out a guard that gives its share back on drop; past a bound, the caller
//! refuses the connection `overloaded`.
//!
//! The data path touches atomics only, except the per-source counts: a map sharded by source IP,
//! locked for one map operation when a connection is accepted or closed, never across IO.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

pub use crate::relay::{Charge, MemoryBudget};

/// The bounds a proxy is configured with ([`ProxyOptions::bounds`](crate::ProxyOptions)).
/// [`Default`] suits a node: far above what its pods use in normal operation, far below what
/// exhausts its descriptors or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundsConfig {
    /// Connections open at once on the outbound listener (15001). 32,768: every connection is a
    /// descriptor on each side of the proxy plus an upstream one, so this keeps the proxy's
    /// outbound share well under a 1,048,576 descriptor limit while no node's pods together
    /// come near it in normal operation.
    pub outbound_connections: usize,
    /// Connections open at once on the HBONE listener (15008). 16,384: peers pool their tunnels
    /// (up to 100 streams on one connection), so a node sees a few connections per peer node
    /// and client pod, not one per tunnel.
    pub hbone_connections: usize,
    /// Connections open at once on the inbound plaintext listener (15006), 16,384.
    pub plaintext_connections: usize,
    /// Connections one source IP may hold open on one listener, 4,096: a single pod (or peer)
    /// cannot take a listener's whole cap; it takes at least four sources to fill 15008.
    pub connections_per_source: usize,
    /// HBONE connections between accept and a received HTTP/2 preface (TLS handshake included),
    /// 1,024. A handshake costs CPU and a TLS buffer before anything is authenticated; bounding
    /// them apart keeps a handshake flood from taking the connection cap (and the CPU) that
    /// established peers need.
    pub hbone_handshakes: usize,
    /// How long an HBONE client has, after TLS, to send the HTTP/2 preface and its SETTINGS,
    /// 10 s; then the connection is closed.
    pub h2_preface_timeout: Duration,
    /// Buffer bytes the proxy may account for (relay buffers and HBONE TLS read buffers), 512 MiB.
    /// Past it, new connections are refused and open relays keep their small buffers; open
    /// connections go on. 512 MiB holds 4,096 connections moving data at full speed both ways
    /// (128 KiB each) or some 60,000 idle ones (8 KiB each).
    pub memory_budget: usize,
}

impl Default for BoundsConfig {
    fn default() -> Self {
        Self {
            outbound_connections: 32_768,
            hbone_connections: 16_384,
            plaintext_connections: 16_384,
            connections_per_source: 4_096,
            hbone_handshakes: 1_024,
            h2_preface_timeout: Duration::from_secs(10),
            memory_budget: 512 * 1024 * 1024,
        }
    }
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Outbound capture (15001).
    Outbound,
    /// HBONE (15008).
    Hbone,
    /// Inbound plaintext (15006).
    Plaintext,
}

/// Which bound refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overload {
    /// The listener holds its cap of connections.
    #[error("the listener holds its cap of {0} connections")]
    Listener(usize),
    /// The source IP holds its cap of connections on this listener.
    #[error("the source holds its cap of {0} connections on this listener")]
    Source(usize),
    /// The cap of handshakes in progress is reached.
    #[error("{0} handshakes are in progress already")]
    Handshakes(usize),
    /// The memory budget is used up.
    #[error("the buffer budget of {0} bytes is used up")]
    Memory(usize),
}

/// A counter with a cap; [`Cap::try_acquire`] takes one unit.
#[derive(Debug)]
pub struct Cap {
    limit: usize,
    held: AtomicUsize,
}

impl Cap {
    /// A cap of `limit` units.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held: AtomicUsize::new(0),
        })
    }

    /// One unit, unless `limit` are held already.
    pub fn try_acquire(self: &Arc<Self>) -> Option<CapPermit> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()?;
        Some(CapPermit(Arc::clone(self)))
    }

    /// Units held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// One unit of a [`Cap`], given back on drop.
#[derive(Debug)]
#[must_use = "dropping the permit gives the unit back"]
pub struct CapPermit(Arc<Cap>);

impl Drop for CapPermit {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

const SHARDS: usize = 16;

/// Connections per source IP, each capped: a map sharded by IP. An entry exists while its IP
/// holds a connection.
#[derive(Debug)]
pub struct PerSource {
    limit: usize,
    hasher: std::collections::hash_map::RandomState,
    // A lock is unavoidable for a map; it is held for one map operation, never across IO,
    // and split 16 ways so concurrent accepts rarely meet. Increments happen under the lock
    // (read lock for a present entry), so removing an entry at zero never loses one.
    shards: [RwLock<HashMap<IpAddr, Arc<AtomicUsize>>>; SHARDS],
}

impl PerSource {
    /// At most `limit` connections per source IP.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            hasher: Default::default(),
            shards: std::array::from_fn(|_| RwLock::new(HashMap::new())),
        })
    }

    fn shard(&self, ip: IpAddr) -> &RwLock<HashMap<IpAddr, Arc<AtomicUsize>>> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    fn take(&self, count: &AtomicUsize) -> bool {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// One connection for `ip`, unless it holds `limit` already.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<SourcePermit> {
        let shard = self.shard(ip);
        let fast = {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            map.get(&ip).map(|count| self.take(count))
        };
        let taken = match fast {
            Some(taken) => taken,
            None => {
                let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
                let taken = self.take(map.entry(ip).or_default());
                if !taken && self.limit == 0 {
                    map.remove(&ip);
                }
                taken
            }
        };
        taken.then(|| SourcePermit {
            map: Arc::clone(self),
            ip,
        })
    }

    /// Connections `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> usize {
        let map = self
            .shard(ip)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&ip).map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Source IPs holding a connection now.
    pub fn sources(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn release(&self, ip: IpAddr) {
        let shard = self.shard(ip);
        let last = {
            let map = shard.read().unwrap_or_else(PoisonError::into_inner);
            map.get(&ip)
                .is_some_and(|c| c.fetch_sub(1, Ordering::AcqRel) == 1)
        };
        if last {
            let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
            if map.get(&ip).is_some_and(|c| c.load(Ordering::Acquire) == 0) {
                map.remove(&ip);
            }
        }
    }
}

/// One connection of a source IP, given back on drop.
#[derive(Debug)]
#[must_use = "dropping the permit gives the connection back"]
pub struct SourcePermit {
    map: Arc<PerSource>,
    ip: IpAddr,
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        self.map.release(self.ip);
    }
}

/// One listener's bounds: its total and its per-source counts.
#[derive(Debug)]
struct ListenerBounds {
    total: Arc<Cap>,
    per_source: Arc<PerSource>,
}

impl ListenerBounds {
    fn new(limit: usize, per_source: usize) -> Self {
        Self {
            total: Cap::new(limit),
            per_source: PerSource::new(per_source),
        }
    }
}

/// Every bound of one proxy.
#[derive(Debug)]
pub struct Bounds {
    outbound: ListenerBounds,
    hbone: ListenerBounds,
    plaintext: ListenerBounds,
    /// HBONE handshakes in progress.
    pub handshakes: Arc<Cap>,
    /// The buffer budget.
    pub memory: Arc<MemoryBudget>,
    /// The HTTP/2 preface deadline on 15008.
    pub h2_preface_timeout: Duration,
}

impl Bounds {
    /// The bounds `config` describes, nothing held.
    pub fn new(config: &BoundsConfig) -> Self {
        let per = config.connections_per_source;
        Self {
            outbound: ListenerBounds::new(config.outbound_connections, per),
            hbone: ListenerBounds::new(config.hbone_connections, per),
            plaintext: ListenerBounds::new(config.plaintext_connections, per),
            handshakes: Cap::new(config.hbone_handshakes),
            memory: MemoryBudget::new(config.memory_budget),
            h2_preface_timeout: config.h2_preface_timeout,
        }
    }

    fn listener(&self, listener: Listener) -> &ListenerBounds {
        match listener {
            Listener::Outbound => &self.outbound,
            Listener::Hbone => &self.hbone,
            Listener::Plaintext => &self.plaintext,
        }
    }

    /// Lets in one connection from `source` on `listener`, or says which bound refuses it.
    pub fn admit(&self, listener: Listener, source: IpAddr) -> Result<ConnPermit, Overload> {
        if self.memory.exhausted() {
            return Err(Overload::Memory(self.memory.limit()));
        }
        let bounds = self.listener(listener);
        let total = bounds
            .total
            .try_acquire()
            .ok_or(Overload::Listener(bounds.total.limit()))?;
        let source = bounds
            .per_source
            .try_acquire(source)
            .ok_or(Overload::Source(bounds.per_source.limit))?;
        Ok(ConnPermit {
            _total: total,
            _source: source,
        })
    }

    /// Connections open on `listener` now.
    pub fn open(&self, listener: Listener) -> usize {
        self.listener(listener).total.held()
    }
}

/// One admitted connection's share of its listener's bounds, given back on drop.
#[derive(Debug)]
#[must_use = "dropping the permit gives the connection back"]
pub struct ConnPermit {
    _total: CapPermit,
    _source: SourcePermit,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn cap_refuses_past_its_limit_and_takes_back_on_drop() {
        let cap = Cap::new(2);
        let a = cap.try_acquire().unwrap();
        let _b = cap.try_acquire().unwrap();
        assert!(cap.try_acquire().is_none());
        assert_eq!(cap.held(), 2);
        drop(a);
        assert_eq!(cap.held(), 1);
        assert!(cap.try_acquire().is_some());
    }

    #[test]
    fn per_source_counts_each_ip_apart_and_forgets_idle_ones() {
        let map = PerSource::new(2);
        let a1 = map.try_acquire(ip(1)).unwrap();
        let a2 = map.try_acquire(ip(1)).unwrap();
        assert!(map.try_acquire(ip(1)).is_none(), "third from one source");
        let b = map.try_acquire(ip(2)).unwrap();
        assert_eq!((map.held(ip(1)), map.held(ip(2)), map.sources()), (2, 1, 2));
        drop(a1);
        assert!(map.try_acquire(ip(1)).is_some());
        drop((a2, b));
        assert_eq!(
            map.sources(),
            0,
            "no entry stays for an IP without connections"
        );
    }

    #[test]
    fn per_source_counts_stay_exact_under_contention() {
        let map = PerSource::new(1_000_000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2_000 {
                        let p = map.try_acquire(ip(7)).unwrap();
                        let q = map.try_acquire(ip(8)).unwrap();
                        drop(p);
                        drop(q);
                    }
                });
            }
        });
        assert_eq!((map.held(ip(7)), map.sources()), (0, 0));
    }

    #[test]
    fn admit_checks_budget_listener_and_source() {
        let bounds = Bounds::new(&BoundsConfig {
            outbound_connections: 3,
            connections_per_source: 2,
            memory_budget: 10,
            ..BoundsConfig::default()
        });
        let a = bounds.admit(Listener::Outbound, ip(1)).unwrap();
        let _b = bounds.admit(Listener::Outbound, ip(1)).unwrap();
        assert_eq!(
            bounds.admit(Listener::Outbound, ip(1)).unwrap_err(),
            Overload::Source(2)
        );
        // A refusal by source gives the listener's unit back.
        assert_eq!(bounds.open(Listener::Outbound), 2);
        let _c = bounds.admit(Listener::Outbound, ip(2)).unwrap();
        assert_eq!(
            bounds.admit(Listener::Outbound, ip(3)).unwrap_err(),
            Overload::Listener(3)
        );
        // Other listeners have their own counts.
        let _d = bounds.admit(Listener::Hbone, ip(1)).unwrap();
        drop(a);
        let _e = bounds.admit(Listener::Outbound, ip(3)).unwrap();
        let _full = bounds.memory.charge(10);
        assert_eq!(
            bounds.admit(Listener::Plaintext, ip(4)).unwrap_err(),
            Overload::Memory(10)
        );
    }
}
