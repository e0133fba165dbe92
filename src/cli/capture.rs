//! `nodemesh proxy --manage-redirect`: the proxy keeps its node's capture rules in step with the
//! mesh workloads it serves, through [`nodemesh_redirect::Reconciler`] (installed before the
//! proxy reports ready, updated on every state change, never removed).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Context, Result};
use nodemesh_redirect::{Backend, Host, Reconciler, RuleSet};
use nodemesh_state::{MeshState, MeshStore};

/// The pods the proxy's node captures now: its in-mesh workloads' IPv4 addresses.
fn mesh_pods(state: &MeshState) -> BTreeSet<Ipv4Addr> {
    let config = state.config();
    config
        .mesh_workloads_on_node(state.node())
        .map(|w| w.ip)
        .collect()
}

/// Installs the rules for the store's current state (the proxy's start-up step: an error stops
/// the proxy), then returns the task that keeps them in step.
pub async fn manage(store: Arc<MeshStore>, backend: Backend) -> Result<impl Future<Output = ()>> {
    let changes = store.subscribe();
    Reconciler::new(Host::local(), RuleSet::new(backend, []))
        .start(move || mesh_pods(&store.load()), changes)
        .await
        .context("cannot install the capture rules (see `nodemesh redirect --help`)")
}
