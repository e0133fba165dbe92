//! `nodemesh proxy --manage-redirect`: the node firewall for network policies (table
//! `inet nodemesh-netpol`, `nodemesh-firewall`), kept in step with the state: one nft
//! transaction per change, the delta only. With `--network-policy=off` the table is removed.

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result};
use nodemesh_firewall::Firewall;
use nodemesh_state::MeshStore;

/// Installs the firewall for `node` from the current state (an error stops the proxy before it
/// is ready: policies it cannot enforce must not look enforced), and returns the task that
/// follows every state change. A failed update is logged and retried on the next change; the
/// last applied rules keep enforcing meanwhile.
pub async fn manage(store: Arc<MeshStore>, node: String) -> Result<impl Future<Output = ()>> {
    let state = store.load();
    let firewall = Firewall::new("nft");
    let (firewall, outcome) = sync(firewall, Arc::clone(&state), node.clone()).await;
    outcome.context("cannot install the node firewall for network policies (needs nft)")?;
    Ok(async move {
        let mut firewall = firewall;
        let mut changes = store.subscribe();
        while changes.changed().await.is_ok() {
            let (next, outcome) = sync(firewall, store.load(), node.clone()).await;
            firewall = next;
            if let Err(error) = outcome {
                tracing::error!(%error, "node firewall not updated; the previous rules stay");
            }
        }
    })
}

/// Removes the node firewall (`--network-policy=off`): a table left by an earlier run would
/// keep enforcing policies nobody updates.
pub async fn remove() -> Result<()> {
    tokio::task::spawn_blocking(|| Firewall::new("nft").remove())
        .await
        .context("the firewall task")?
        .context("cannot remove the node firewall table inet nodemesh-netpol")
}

/// One sync off the runtime's threads (it runs nft).
async fn sync(
    mut firewall: Firewall,
    state: Arc<nodemesh_state::MeshState>,
    node: String,
) -> (Firewall, Result<()>) {
    let task = tokio::task::spawn_blocking(move || {
        let outcome = firewall.sync(state.config(), state.network_policies(), &node);
        if let Ok(outcome) = &outcome
            && let Some(delta) = &outcome.applied
        {
            tracing::info!(
                ?delta,
                recovered = outcome.recovered,
                "node firewall updated"
            );
        }
        (firewall, outcome.map(|_| ()).map_err(anyhow::Error::from))
    });
    match task.await {
        Ok(done) => done,
        Err(e) => (
            Firewall::new("nft"),
            Err(anyhow::anyhow!("the firewall task failed: {e}")),
        ),
    }
}
