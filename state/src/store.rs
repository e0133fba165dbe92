//! The current snapshot, swapped whole, and how fresh its source is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::MeshState;

/// The current [`MeshState`], readable without locks; writers replace it whole.
#[derive(Debug)]
pub struct MeshStore {
    current: ArcSwap<MeshState>,
    /// Whether published states keep their network policies (`--network-policy`).
    network_policies: AtomicBool,
    changed: watch::Sender<u64>,
    health: SourceHealth,
}

impl MeshStore {
    /// A store holding `initial`.
    pub fn new(initial: MeshState) -> Self {
        Self {
            network_policies: AtomicBool::new(true),
            current: ArcSwap::from_pointee(initial),
            changed: watch::Sender::new(0),
            health: SourceHealth::default(),
        }
    }

    /// Whether the source feeding the store is in touch with its input.
    pub fn health(&self) -> &SourceHealth {
        &self.health
    }

    /// The current state.
    pub fn load(&self) -> Arc<MeshState> {
        self.current.load_full()
    }

    /// Replaces the state and wakes subscribers.
    pub fn publish(&self, state: MeshState) {
        let state = if self.network_policies.load(Ordering::Relaxed) {
            state
        } else {
            state.without_network_policies()
        };
        self.current.store(Arc::new(state));
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether states keep their network policies (`--network-policy=enforce`, the default) or
    /// are stripped of them from now on, the current one included (`off`: the CNI enforces
    /// them). Authorization policies are kept either way.
    pub fn enforce_network_policies(&self, enforce: bool) {
        self.network_policies.store(enforce, Ordering::Relaxed);
        if !enforce {
            self.publish(self.load().stripped_of_network_policies());
        }
    }

    /// A receiver that changes each time the state is replaced.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// How stale the published state may be: a source that loses its input (the Kubernetes API
/// going away) marks itself stale and keeps the last state serving; the admin API exports the
/// age as `nodemesh_source_stale_seconds`. Also how many pods of its input the source refused
/// to believe, as `nodemesh_source_refused_pods{reason}`.
#[derive(Debug, Default)]
pub struct SourceHealth {
    /// Unix milliseconds since which the source is out of touch; 0 when in touch.
    stale_since_ms: AtomicU64,
    /// Refused pods, in the order of [`REFUSED_POD_REASONS`].
    refused_pods: [AtomicU64; 3],
}

/// The `reason` labels of `nodemesh_source_refused_pods`: a pod IP outside its node's podCIDR,
/// an IP claimed by several pods (every claimant counts), a pod without an identity (mirror pod,
/// no service account).
pub const REFUSED_POD_REASONS: [&str; 3] = ["outside_pod_cidr", "duplicate_ip", "no_identity"];

impl SourceHealth {
    /// The source is in touch with its input again.
    pub fn mark_fresh(&self) {
        self.stale_since_ms.store(0, Ordering::Relaxed);
    }

    /// The source lost its input at `now` (kept from the first loss until fresh again).
    pub fn mark_stale(&self, now: SystemTime) {
        let ms = unix_ms(now).max(1);
        let _ = self
            .stale_since_ms
            .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// How long the state has been possibly stale at `now` (zero when in touch).
    pub fn stale_for(&self, now: SystemTime) -> Duration {
        match self.stale_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(unix_ms(now).saturating_sub(since)),
        }
    }

    /// The pods the source refuses now, per reason of [`REFUSED_POD_REASONS`].
    pub fn set_refused_pods(&self, counts: [usize; 3]) {
        for (gauge, n) in self.refused_pods.iter().zip(counts) {
            gauge.store(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// The pods the source refuses now, per reason of [`REFUSED_POD_REASONS`].
    pub fn refused_pods(&self) -> [u64; 3] {
        self.refused_pods
            .each_ref()
            .map(|g| g.load(Ordering::Relaxed))
    }

    /// The Prometheus text of `nodemesh_source_stale_seconds` at `now` and of
    /// `nodemesh_source_refused_pods`.
    pub fn render(&self, now: SystemTime) -> String {
        let mut out = format!(
            "# HELP nodemesh_source_stale_seconds How long the state source (Kubernetes API) has been out of reach; 0 when in sync.\n\
             # TYPE nodemesh_source_stale_seconds gauge\n\
             nodemesh_source_stale_seconds {}\n\
             # HELP nodemesh_source_refused_pods Pods the state source does not believe (no identity; their traffic is refused), by reason.\n\
             # TYPE nodemesh_source_refused_pods gauge\n",
            self.stale_for(now).as_secs_f64()
        );
        for (reason, n) in REFUSED_POD_REASONS.iter().zip(self.refused_pods()) {
            out.push_str(&format!(
                "nodemesh_source_refused_pods{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        out
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
