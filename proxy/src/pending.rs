//! [`PendingPods`]: addresses this node captures that the state does not know yet.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Pod addresses in this node's capture set that no workload of the state has: pods the CNI
/// plugin captured before a watcher saw them (or while the proxy was down). Connections from or
/// to them are refused (`unknown_source`, `unknown_destination`), never passed through, even
/// when the node's podCIDR is unknown. Shared: whoever adopts the plugin's records replaces it.
#[derive(Debug, Clone, Default)]
pub struct PendingPods(Arc<ArcSwap<BTreeSet<Ipv4Addr>>>);

impl PendingPods {
    /// Replaces the addresses.
    pub fn replace(&self, pods: BTreeSet<Ipv4Addr>) {
        self.0.store(Arc::new(pods));
    }

    /// The addresses now.
    pub fn load(&self) -> Arc<BTreeSet<Ipv4Addr>> {
        self.0.load_full()
    }

    /// Whether `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.0.load().contains(&v4),
            IpAddr::V6(_) => false,
        }
    }
}
