//! `nodemesh proxy --manage-redirect`: the proxy keeps its node's capture rules in step with the
//! mesh workloads it serves, through [`nodemesh_redirect::Reconciler`] (installed before the
//! proxy reports ready, updated on every state change, never removed), and works with the CNI
//! plugin through the state directory: it writes the plugin's namespace cache whenever the
//! state changes, and adopts the pods the plugin captured that the state does not know yet
//! (they stay in the capture set, and the proxy refuses their connections until it knows them).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use nodemesh_cni::{MtlsMode, NamespaceEntry, NodeCache, PodRecord, StateDir};
use nodemesh_config::MESH_LABEL;
use nodemesh_proxy::PendingPods;
use nodemesh_redirect::{
    ApplyReport, Backend, Host, Installer, Reconciler, RedirectError, RuleSet,
};
use nodemesh_state::{MeshState, MeshStore};
use tokio::sync::watch;

/// How often the plugin's records are looked at between state changes.
const RECORDS_POLL: Duration = Duration::from_secs(1);

/// The addresses of the proxy's node's in-mesh workloads: the IPv4 ones are captured, the
/// IPv6 ones guarded.
fn mesh_pods(state: &MeshState) -> BTreeSet<IpAddr> {
    let config = state.config();
    config
        .mesh_workloads_on_node(state.node())
        .flat_map(|w| w.addrs())
        .collect()
}

/// The plugin's pods that the state does not know: kept captured, refused until known. A pod
/// the state knows is the state's to decide (in the mesh, or not).
fn adopted(state: &MeshState, records: &[PodRecord]) -> BTreeSet<Ipv4Addr> {
    unknown(state, records).map(|r| r.ip).collect()
}

/// The plugin's records of pods the state does not know.
fn unknown<'a>(state: &MeshState, records: &'a [PodRecord]) -> impl Iterator<Item = &'a PodRecord> {
    records
        .iter()
        .filter(|r| state.workload(r.ip.into()).is_none())
}

/// The plugin's cache for `state`: every namespace the state lists, and the backend.
fn node_cache(state: &MeshState, backend: Backend) -> NodeCache {
    let config = state.config();
    let namespaces = config
        .namespaces()
        .iter()
        .map(|ns| {
            let mesh = ns.labels.get(MESH_LABEL).is_some_and(|v| v == "enabled");
            let mtls_mode = if config.is_permissive(&ns.name) {
                MtlsMode::Permissive
            } else {
                MtlsMode::Strict
            };
            (ns.name.clone(), NamespaceEntry { mesh, mtls_mode })
        })
        .collect();
    NodeCache {
        version: nodemesh_cni::CACHE_VERSION,
        node: state.node().to_owned(),
        backend,
        namespaces,
    }
}

/// Installs rules with the plugin's pods added, under the plugin's lock, so that a pod the
/// plugin captures while the set is being replaced is not dropped from it.
struct WithCniPods {
    host: Host,
    cni: StateDir,
    store: Arc<MeshStore>,
}

impl Installer for WithCniPods {
    fn install(&self, rules: &RuleSet) -> Result<ApplyReport, RedirectError> {
        let cni_error = |e: nodemesh_cni::CniError| RedirectError::Installer {
            reason: e.to_string(),
        };
        let _lock = self.cni.lock().map_err(cni_error)?;
        let records = self.cni.records().map_err(cni_error)?;
        let state = self.store.load();
        let mut addrs = rules.addrs();
        for record in unknown(&state, &records) {
            addrs.insert(IpAddr::V4(record.ip));
            addrs.extend(record.ipv6.map(IpAddr::V6));
        }
        nodemesh_redirect::apply(&self.host, &rules.with_addrs(addrs))
    }
}

/// Installs the rules for the store's current state and writes the plugin's cache (the proxy's
/// start-up step: an error stops the proxy), then returns the task that keeps both in step and
/// `pending` current.
pub async fn manage(
    store: Arc<MeshStore>,
    backend: Backend,
    state_dir: PathBuf,
    pending: PendingPods,
) -> Result<impl Future<Output = ()>> {
    let cni = StateDir::new(&state_dir);
    cni.write_cache(&node_cache(&store.load(), backend))
        .context("cannot write the CNI plugin's namespace cache")?;
    match cni.records() {
        Ok(records) => pending.replace(adopted(&store.load(), &records)),
        Err(error) => tracing::error!(%error, "CNI pod records not read"),
    }
    let (nudge, changes) = watch::channel(0u64);
    let follow = follow(
        Arc::clone(&store),
        cni.clone(),
        backend,
        pending.clone(),
        nudge,
    );
    let installer = WithCniPods {
        host: Host::local(),
        cni,
        store: Arc::clone(&store),
    };
    let keep_in_step = Reconciler::new(installer, RuleSet::new(backend, []))
        .start(
            move || {
                let mut pods = mesh_pods(&store.load());
                pods.extend(pending.load().iter().copied().map(IpAddr::V4));
                pods
            },
            changes,
        )
        .await
        .context("cannot install the capture rules (see `nodemesh redirect --help`)")?;
    Ok(async move {
        tokio::join!(follow, keep_in_step);
    })
}

/// On every state change and every [`RECORDS_POLL`]: rewrites the plugin's cache when it
/// changed, refreshes `pending` from the plugin's records, and nudges the reconciler when
/// either changed.
async fn follow(
    store: Arc<MeshStore>,
    cni: StateDir,
    backend: Backend,
    pending: PendingPods,
    nudge: watch::Sender<u64>,
) {
    let mut changes = store.subscribe();
    loop {
        let state_changed = match tokio::time::timeout(RECORDS_POLL, changes.changed()).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => return,
            Err(_) => false,
        };
        let state = store.load();
        if state_changed && let Err(error) = cni.write_cache(&node_cache(&state, backend)) {
            tracing::error!(%error, "CNI namespace cache not written");
        }
        let adopt = match cni.records() {
            Ok(records) => adopted(&state, &records),
            Err(error) => {
                tracing::error!(%error, "CNI pod records not read; pending pods unchanged");
                continue;
            }
        };
        let pending_changed = *pending.load() != adopt;
        if pending_changed {
            tracing::info!(pods = ?adopt, "captured pods the state does not know yet");
            pending.replace(adopt);
        }
        if state_changed || pending_changed {
            nudge.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use nodemesh_config::Config;

    use super::*;

    const YAML: &str = r#"
nodes:
  - {name: node-a, address: 10.0.0.1}
namespaces:
  - {name: shop, labels: {nodemesh.io/mesh: enabled}}
  - {name: open, labels: {nodemesh.io/mesh: enabled, nodemesh.io/mtls-mode: permissive}}
  - {name: legacy}
workloads:
  - {name: web-1, namespace: shop, ip: 10.1.0.11, node: node-a}
  - {name: plain-1, namespace: legacy, ip: 10.1.0.51, node: node-a}
"#;

    fn state() -> MeshState {
        let config = Config::from_yaml_str(YAML, "/").expect("valid");
        MeshState::new(config, "node-a").expect("valid")
    }

    fn record(ip: [u8; 4]) -> PodRecord {
        PodRecord {
            container_id: format!("c{}", ip[3]),
            ip: ip.into(),
            ipv6: None,
            namespace: "shop".into(),
            pod: None,
        }
    }

    #[test]
    fn the_cache_lists_every_namespace_with_its_mode() {
        let cache = node_cache(&state(), Backend::Nftables);
        assert_eq!(cache.backend, Backend::Nftables);
        let ns = |name: &str| cache.namespaces[name];
        assert!(ns("shop").mesh && ns("shop").mtls_mode == MtlsMode::Strict);
        assert!(ns("open").mesh && ns("open").mtls_mode == MtlsMode::Permissive);
        assert!(!ns("legacy").mesh);
        assert_eq!(cache.namespaces.len(), 3);
    }

    #[test]
    fn only_records_the_state_does_not_know_are_adopted() {
        let records = [
            record([10, 1, 0, 11]),
            record([10, 1, 0, 51]),
            record([10, 1, 0, 99]),
        ];
        assert_eq!(
            adopted(&state(), &records),
            [Ipv4Addr::new(10, 1, 0, 99)].into()
        );
    }
}
