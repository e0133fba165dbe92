//! The Kubernetes source of the proxy's [`MeshStore`]: watchers for Pods, Namespaces, Nodes,
//! Services, EndpointSlices, AuthorizationPolicies, NetworkPolicies and ClusterNetworkPolicies
//! feed one task that owns the [`MeshView`], applies each change to it, and publishes a
//! debounced snapshot.
//!
//! The store exists only after the first full sync (every kind listed once and this node seen),
//! so the proxy, and with it its readiness endpoint, starts on a complete view: never before
//! the policies that may forbid traffic are known. The one exception to "listed" is a
//! ClusterNetworkPolicy CRD that is not installed: the API's 404 counts as an empty list (with
//! a warning), re-checked with the backoff ([`watch::Absent::Empty`]). When the API goes
//! away the last state keeps serving (never fail open), `nodemesh_source_stale_seconds` rises,
//! and the relist after reconnecting applies whatever changed meanwhile. Pods whose IP claims
//! are not believed ([`crate::claims`]) are counted in `nodemesh_source_refused_pods`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DynamicObject;
use kube::{Api, Client, ResourceExt};
use nodemesh_state::{MeshStore, StateError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::convert::{self, object_key};
use crate::mesh::{Kind, MeshSettings, MeshView, Object};
use crate::policy::{self, PolicyApi, StatusUpdate};
use crate::watch::{self, Absent, Retry, Update};
use crate::{netpol, pod, status};

/// How the source runs.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Node, trust domain, root namespace, CA.
    pub settings: MeshSettings,
    /// Also follow Istio's `security.istio.io/v1` and `v1beta1` policies.
    pub istio_policies: bool,
    /// Backoff after API errors.
    pub retry: Retry,
    /// How long a burst of events may grow before one snapshot is published.
    pub debounce: Duration,
}

/// Why the source cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The watchers stopped before the first full sync.
    #[error("the Kubernetes watchers stopped before the first full sync")]
    Stopped,
    /// The first full state is unusable (this node missing from the API, for instance).
    #[error(transparent)]
    State(#[from] StateError),
}

/// A running Kubernetes source.
#[derive(Debug)]
pub struct KubeSource {
    store: Arc<MeshStore>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeSource {
    /// Starts the watchers and returns once the first full state is published (waiting as long
    /// as the API takes; errors until then are logged and retried).
    pub async fn start(client: Client, opts: SourceOptions) -> Result<Self, SourceError> {
        if !opts.settings.pod_cidr_check {
            tracing::warn!(
                "--pod-cidr-check=false: pod IPs are believed wherever they lie, so a compromised node can claim other nodes' pod IPs"
            );
        }
        let (tx, mut rx) = mpsc::channel::<Update>(1024);
        let mut tasks = spawn_watchers(&client, &opts, &tx);
        drop(tx);
        let kinds = watched_kinds(opts.istio_policies);
        let mut view = MeshView::default();
        let mut failing = BTreeSet::new();
        let (status_tx, status_rx) = mpsc::channel::<StatusUpdate>(256);
        tasks.push(tokio::spawn(status::write(client.clone(), status_rx)));
        let state = loop {
            let update = rx.recv().await.ok_or(SourceError::Stopped)?;
            apply(&mut view, &mut failing, update, &status_tx, None);
            if !view.synced(&kinds) {
                continue;
            }
            match view.assemble(&opts.settings) {
                Ok(state) => break state,
                Err(StateError::UnknownNode(node)) => {
                    tracing::warn!(%node, "waiting for this node to appear in the API");
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::info!(
            workloads = state.config().workloads().len(),
            services = state.config().services().len(),
            policies = state.config().policies().len(),
            network_policies = state.config().network_policies().len(),
            cluster_network_policies = state.config().cluster_network_policies().len(),
            "first full sync with the Kubernetes API"
        );
        let store = Arc::new(MeshStore::new(state));
        store.health().set_refused_pods(view.refusals().counts());
        if !failing.is_empty() {
            store.health().mark_stale(SystemTime::now());
        }
        tasks.push(tokio::spawn(follow(
            rx,
            view,
            failing,
            Arc::clone(&store),
            opts,
            status_tx,
        )));
        Ok(Self { store, tasks })
    }

    /// The store the proxy reads.
    pub fn store(&self) -> &Arc<MeshStore> {
        &self.store
    }
}

fn watched_kinds(istio: bool) -> Vec<Kind> {
    let mut kinds = vec![
        Kind::Pods,
        Kind::Namespaces,
        Kind::Nodes,
        Kind::Services,
        Kind::EndpointSlices,
        Kind::Policies(PolicyApi::Nodemesh),
        Kind::NetworkPolicies,
        Kind::ClusterNetworkPolicies,
    ];
    if istio {
        kinds.push(Kind::Policies(PolicyApi::IstioV1));
        kinds.push(Kind::Policies(PolicyApi::IstioV1beta1));
    }
    kinds
}

fn spawn_watchers(
    client: &Client,
    opts: &SourceOptions,
    tx: &mpsc::Sender<Update>,
) -> Vec<JoinHandle<()>> {
    let retry = opts.retry;
    let td = opts.settings.trust_domain.clone();
    let mut tasks = vec![
        tokio::spawn(watch::run(
            Api::<Pod>::all(client.clone()),
            Kind::Pods,
            |p: &Pod| object_key(&p.metadata),
            move |p: &Pod| pod::claim(p, &td).map(|c| Object::Pod(Box::new(c))),
            tx.clone(),
            retry,
        )),
        tokio::spawn(watch::run(
            Api::<Namespace>::all(client.clone()),
            Kind::Namespaces,
            |n: &Namespace| object_key(&n.metadata),
            |n: &Namespace| convert::namespace(n).map(Object::Namespace),
            tx.clone(),
            retry,
        )),
        tokio::spawn(watch::run(
            Api::<Node>::all(client.clone()),
            Kind::Nodes,
            |n: &Node| object_key(&n.metadata),
            |n: &Node| convert::node(n).map(Object::Node),
            tx.clone(),
            retry,
        )),
        tokio::spawn(watch::run(
            Api::<Service>::all(client.clone()),
            Kind::Services,
            |s: &Service| object_key(&s.metadata),
            |s: &Service| convert::service(s).map(Object::Service),
            tx.clone(),
            retry,
        )),
        tokio::spawn(watch::run(
            Api::<EndpointSlice>::all(client.clone()),
            Kind::EndpointSlices,
            |s: &EndpointSlice| object_key(&s.metadata),
            |s: &EndpointSlice| convert::endpoint_slice(s).map(Object::Slice),
            tx.clone(),
            retry,
        )),
        tokio::spawn(watch::run(
            Api::<DynamicObject>::all_with(client.clone(), &netpol::network_policy_resource()),
            Kind::NetworkPolicies,
            |o: &DynamicObject| object_key(&o.metadata),
            |o: &DynamicObject| netpol::network_policy(o).map(Object::Document),
            tx.clone(),
            retry,
        )),
        tokio::spawn(watch::run_with(
            Api::<DynamicObject>::all_with(
                client.clone(),
                &netpol::cluster_network_policy_resource(),
            ),
            Kind::ClusterNetworkPolicies,
            |o: &DynamicObject| object_key(&o.metadata),
            |o: &DynamicObject| netpol::cluster_network_policy(o).map(Object::Document),
            tx.clone(),
            retry,
            Absent::Empty {
                warning: netpol::CRD_ABSENT_WARNING,
            },
        )),
    ];
    let mut apis = vec![PolicyApi::Nodemesh];
    if opts.istio_policies {
        apis.extend([PolicyApi::IstioV1, PolicyApi::IstioV1beta1]);
    }
    for api in apis {
        tasks.push(tokio::spawn(watch::run(
            Api::<DynamicObject>::all_with(client.clone(), &api.resource()),
            Kind::Policies(api),
            |o: &DynamicObject| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()),
            move |o: &DynamicObject| policy::compile(api, o).map(|e| Object::Policy(Box::new(e))),
            tx.clone(),
            retry,
        )));
    }
    tasks
}

/// Applies one update to the view; tracks which kinds are failing and the store's health.
fn apply(
    view: &mut MeshView,
    failing: &mut BTreeSet<Kind>,
    update: Update,
    status: &mpsc::Sender<StatusUpdate>,
    store: Option<&MeshStore>,
) {
    let request_status = |o: &Object| {
        if let Object::Policy(entry) = o
            && let Some(update) = &entry.status_update
        {
            // A full queue drops the write; the next event of the object asks again.
            let _ = status.try_send(update.clone());
        }
    };
    match update {
        Update::Reset(kind, objects) => {
            objects.values().for_each(request_status);
            if failing.remove(&kind) {
                tracing::info!(?kind, "watch resynced");
            }
            view.reset(kind, objects);
        }
        Update::Apply(kind, key, object) => {
            object.iter().for_each(request_status);
            view.apply(kind, key, object);
        }
        Update::Delete(kind, key) => view.apply(kind, key, None),
        Update::Failed(kind, error) => {
            tracing::warn!(?kind, %error, "Kubernetes watch failed; keeping the last known state and retrying");
            failing.insert(kind);
        }
    }
    if let Some(store) = store {
        if failing.is_empty() {
            store.health().mark_fresh();
        } else {
            store.health().mark_stale(SystemTime::now());
        }
    }
}

/// After the first sync: apply updates as they come, publish one snapshot per quiet period.
async fn follow(
    mut rx: mpsc::Receiver<Update>,
    mut view: MeshView,
    mut failing: BTreeSet<Kind>,
    store: Arc<MeshStore>,
    opts: SourceOptions,
    status: mpsc::Sender<StatusUpdate>,
) {
    loop {
        let Some(update) = rx.recv().await else {
            return;
        };
        let mut changed = !matches!(update, Update::Failed(..));
        apply(&mut view, &mut failing, update, &status, Some(&store));
        // Debounce: take everything that arrives within the window.
        let deadline = tokio::time::Instant::now() + opts.debounce;
        while let Ok(Some(update)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            changed |= !matches!(update, Update::Failed(..));
            apply(&mut view, &mut failing, update, &status, Some(&store));
        }
        if !changed {
            continue;
        }
        let assembled = view.assemble(&opts.settings);
        store.health().set_refused_pods(view.refusals().counts());
        match assembled {
            Ok(state) => store.publish(state),
            Err(error) => {
                tracing::error!(%error, "Kubernetes state refused; the last good state keeps serving")
            }
        }
    }
}
