//! `nodemesh proxy --manage-redirect`: the proxy keeps its node's capture rules in step with the
//! mesh workloads it serves.
//!
//! The rules are installed before the proxy reports ready and updated whenever the workload state
//! changes. They are never removed here: a stopped or crashed proxy leaves capture in place, so
//! captured traffic finds no listener and is refused (fail closed). Only `nodemesh redirect
//! remove` deletes them.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nodemesh_redirect::{Backend, Host, RuleSet};
use nodemesh_state::{MeshState, MeshStore};

/// How long a failed update waits before it is retried.
const RETRY: Duration = Duration::from_secs(2);

/// The capture rules the proxy's node needs now: its in-mesh workloads' IPv4 addresses.
pub fn desired_rules(state: &MeshState, backend: Backend) -> RuleSet {
    RuleSet::new(backend, state.local_mesh_workloads().map(|w| w.ip))
}

/// Installs the rules for the store's current state (the proxy's start-up step: an error stops
/// the proxy), then returns the task that keeps them in step.
pub async fn manage(store: Arc<MeshStore>, backend: Backend) -> Result<impl Future<Output = ()>> {
    let rules = desired_rules(&store.load(), backend);
    let applied = apply(rules.clone())
        .await
        .context("cannot install the capture rules (see `nodemesh redirect --help`)")?;
    tracing::info!(pods = rules.pods().len(), changed = ?applied, "capture rules in place");
    Ok(keep_in_step(store, backend, rules.pods().clone()))
}

async fn keep_in_step(store: Arc<MeshStore>, backend: Backend, mut current: BTreeSet<Ipv4Addr>) {
    let mut changes = store.subscribe();
    loop {
        let rules = desired_rules(&store.load(), backend);
        if *rules.pods() != current {
            match apply(rules.clone()).await {
                Ok(changed) => {
                    tracing::info!(pods = rules.pods().len(), ?changed, "capture rules updated");
                    current = rules.pods().clone();
                }
                Err(error) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "capture rules not updated; retrying"
                    );
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Applies `rules` in this network namespace on a blocking thread (the tools are processes).
async fn apply(rules: RuleSet) -> Result<Vec<String>> {
    let report =
        tokio::task::spawn_blocking(move || nodemesh_redirect::apply(&Host::local(), &rules))
            .await
            .context("the capture task panicked")??;
    Ok(report.changed)
}
