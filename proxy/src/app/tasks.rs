//! What keeps a running proxy in step: certificates and TLS caches follow the state, files are
//! re-read, readiness is tracked.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::ctx::Ctx;
use crate::heap::{self, TrimPolicy};

/// Brings certificates and TLS caches in line with the local mesh workloads.
pub(super) async fn reconcile(ctx: &Ctx) {
    let state = ctx.store.load();
    let wanted: HashSet<_> = state
        .local_mesh_workloads()
        .map(|w| w.identity.clone())
        .collect();
    for problem in state.policy_problems() {
        tracing::error!(policy = %problem.policy, errors = ?problem.errors, "policy does not compile; it fails closed");
    }
    ctx.metrics()
        .policy_compile_errors(state.policy_problems().len());
    ctx.certs.reconcile(&wanted).await;
    ctx.tls.retain(|id| wanted.contains(id));
    prune_pool(ctx);
    prune_series(ctx);
}

/// Lets go of pooled HBONE connections nobody uses to pods that are gone, and of idle or
/// closed ones (the pool itself only evicts when a key is used again).
fn prune_pool(ctx: &Ctx) {
    let state = ctx.store.load();
    ctx.hbone
        .prune(|key| state.workload(key.addr.ip()).is_some());
}

/// Forgets the Istio series of pods that are gone from the state (and no connection holds).
fn prune_series(ctx: &Ctx) {
    let state = ctx.store.load();
    let alive: HashSet<(&str, &str)> = state
        .config()
        .workloads()
        .iter()
        .map(|w| (w.namespace.as_str(), w.name.as_str()))
        .collect();
    ctx.metrics()
        .prune_workloads(|namespace, name| alive.contains(&(namespace, name)));
}

/// How often [`trim_heap`] looks at the heap's slack.
pub(super) const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Gives freed heap back to the kernel once a burst has ended ([`TrimPolicy`]): otherwise a
/// thousand closed connections, or a bulk transfer's drained HTTP/2 windows, stay in the proxy's
/// RSS for good.
pub(super) async fn trim_heap(interval: Duration) {
    let mut policy = TrimPolicy::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Unreadable (another allocator, no /proc): nothing to do this time.
        let Some(slack) = heap::slack_bytes() else {
            continue;
        };
        if policy.observe(slack) {
            // Off the data path: the walk over the arenas takes about a millisecond.
            let after = tokio::task::spawn_blocking(|| {
                let released = heap::trim();
                (released, heap::slack_bytes())
            })
            .await;
            let (released, left) = after.unwrap_or((false, None));
            policy.trimmed(left.unwrap_or(slack));
            tracing::debug!(
                released,
                slack,
                ?left,
                "a burst ended: free heap given back"
            );
        }
    }
}

/// Reacts to state changes and re-reads the trust bundle.
pub(super) async fn follow_state(ctx: Arc<Ctx>, interval: Duration) {
    let mut changes = ctx.store.subscribe();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() { return; }
                reconcile(&ctx).await;
            }
            _ = tick.tick() => {
                reload_files(&ctx);
                prune_pool(&ctx);
            }
        }
    }
}

/// Re-reads the trust bundle and the CA token, and refreshes certificate expiry gauges.
fn reload_files(ctx: &Ctx) {
    match ctx.certs.reload_bundle() {
        Ok(true) => tracing::info!("trust bundle reloaded"),
        Ok(false) => {}
        Err(error) => {
            tracing::error!(%error, "trust bundle reload refused; keeping the old bundle")
        }
    }
    match ctx.certs.reload_token() {
        Ok(true) => tracing::info!("CA token reloaded"),
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "CA token reload failed; keeping the old token"),
    }
    for (id, creds) in ctx.certs.all() {
        if let Some(c) = creds {
            let expiry = c
                .info()
                .not_after
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            ctx.metrics()
                .certificate_expiry(id.as_str(), expiry.as_secs_f64());
        }
    }
}

pub(super) async fn track_readiness(
    ctx: Arc<Ctx>,
    ready: watch::Sender<bool>,
    hold: Arc<AtomicBool>,
) {
    loop {
        let now = ctx.certs.all_ready() && !hold.load(Ordering::Relaxed);
        ready.send_if_modified(|r| std::mem::replace(r, now) != now);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
