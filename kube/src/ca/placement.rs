//! Where pods run: `(namespace, name) -> (uid, node, service account)` and a count of running
//! pods per `(node, namespace, service account)`, kept by a pod watcher. The CA asks it who a
//! token's pod is and whether an identity runs on a node. Pods without an identity (mirror pods,
//! pods without a service account: [`crate::pod::service_account`]) are kept apart: they grant
//! nothing, and only name themselves in the refusal.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use nodemesh_identity::{SpiffeId, TrustDomain};
use tokio::sync::watch as tokio_watch;

use crate::pod::{self, NoIdentity};

/// Where one pod runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPlace {
    /// The pod's UID.
    pub uid: String,
    /// Its node.
    pub node: String,
    /// Its service account.
    pub service_account: String,
}

/// A running pod that gets no identity: its node and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unidentified {
    node: String,
    why: NoIdentity,
}

#[derive(Debug, Default)]
struct Index {
    pods: HashMap<(String, String), PodPlace>,
    running: HashMap<(String, String, String), usize>,
    unidentified: HashMap<(String, String), Unidentified>,
}

/// Where one pod goes in the index.
enum Entry {
    Identified(PodPlace),
    Unidentified(Unidentified),
}

impl Index {
    fn put(&mut self, key: (String, String), entry: Entry) {
        match entry {
            Entry::Identified(place) => self.insert(key, place),
            Entry::Unidentified(u) => {
                self.remove(&key);
                self.unidentified.insert(key, u);
            }
        }
    }

    fn insert(&mut self, key: (String, String), place: PodPlace) {
        self.remove(&key);
        *self
            .running
            .entry((
                place.node.clone(),
                key.0.clone(),
                place.service_account.clone(),
            ))
            .or_default() += 1;
        self.pods.insert(key, place);
    }

    fn remove(&mut self, key: &(String, String)) {
        self.unidentified.remove(key);
        if let Some(old) = self.pods.remove(key) {
            let k = (old.node, key.0.clone(), old.service_account);
            if let Some(n) = self.running.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.running.remove(&k);
                }
            }
        }
    }
}

/// The index of running pods. Reads take a short read lock: the CA is not the data path, and
/// each request does one look-up.
#[derive(Debug)]
pub struct PodPlacement {
    trust_domain: TrustDomain,
    // A std RwLock, not Mutex: many concurrent readers, one writer (the watcher), no await
    // while held.
    index: RwLock<Index>,
    synced: tokio_watch::Sender<bool>,
}

/// A pod's place, when it is scheduled and not finished.
fn place(pod: &Pod) -> Option<((String, String), Entry)> {
    let spec = pod.spec.as_ref()?;
    if matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return None;
    }
    let key = (pod.metadata.namespace.clone()?, pod.metadata.name.clone()?);
    let node = spec.node_name.clone()?;
    let entry = match pod::service_account(pod) {
        Ok(sa) => Entry::Identified(PodPlace {
            uid: pod.metadata.uid.clone()?,
            node,
            service_account: sa.to_owned(),
        }),
        Err(why) => Entry::Unidentified(Unidentified { node, why }),
    };
    Some((key, entry))
}

impl PodPlacement {
    /// An empty index for identities of `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            index: RwLock::new(Index::default()),
            synced: tokio_watch::Sender::new(false),
        }
    }

    /// The pod `namespace/name`, if it runs.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodPlace> {
        let index = self.index.read().ok()?;
        index
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Whether a running pod on `node` has the identity `id`.
    pub fn runs_on(&self, node: &str, id: &SpiffeId) -> bool {
        if id.trust_domain_str() != self.trust_domain.as_str() {
            return false;
        }
        let Ok((ns, sa)) = id.workload_parts() else {
            return false;
        };
        self.index.read().is_ok_and(|i| {
            i.running
                .contains_key(&(node.to_owned(), ns.to_owned(), sa.to_owned()))
        })
    }

    /// Why `node` gets no certificate for `id` although pods of its namespace run there: they
    /// have no identity (`namespace/name (reason)`, each). `None` when an identified pod with
    /// `id` runs there or no such pod does.
    pub fn unidentified(&self, node: &str, id: &SpiffeId) -> Option<String> {
        if self.runs_on(node, id) || id.trust_domain_str() != self.trust_domain.as_str() {
            return None;
        }
        let (ns, _) = id.workload_parts().ok()?;
        let index = self.index.read().ok()?;
        let mut pods: Vec<String> = index
            .unidentified
            .iter()
            .filter(|((pod_ns, _), u)| pod_ns == ns && u.node == node)
            .map(|((pod_ns, name), u)| format!("{pod_ns}/{name} ({})", u.why))
            .collect();
        if pods.is_empty() {
            return None;
        }
        pods.sort();
        Some(format!(
            "its namespace's pods on the node get no identity: {}",
            pods.join(", ")
        ))
    }

    /// Sets or removes one pod.
    pub fn apply(&self, pod: &Pod) {
        let Ok(mut index) = self.index.write() else {
            return;
        };
        match place(pod) {
            Some((key, p)) => index.put(key, p),
            None => {
                if let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) {
                    index.remove(&(ns.clone(), name.clone()));
                }
            }
        }
    }

    fn delete(&self, pod: &Pod) {
        if let (Some(ns), Some(name), Ok(mut index)) = (
            &pod.metadata.namespace,
            &pod.metadata.name,
            self.index.write(),
        ) {
            index.remove(&(ns.clone(), name.clone()));
        }
    }

    fn reset(&self, pods: &[Pod]) {
        let mut fresh = Index::default();
        for (key, p) in pods.iter().filter_map(place) {
            fresh.put(key, p);
        }
        if let Ok(mut index) = self.index.write() {
            *index = fresh;
        }
        self.synced.send_replace(true);
    }

    /// Waits until the first full list of pods is in.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Keeps the index in step with the API (relisting after any error, with backoff).
    pub async fn follow(&self, api: Api<Pod>) {
        let mut wait = Duration::from_millis(500);
        loop {
            let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
            let mut listing = Vec::new();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(Event::Init) => listing.clear(),
                    Ok(Event::InitApply(p)) => listing.push(p),
                    Ok(Event::InitDone) => {
                        self.reset(&listing);
                        listing.clear();
                        wait = Duration::from_millis(500);
                    }
                    Ok(Event::Apply(p)) => self.apply(&p),
                    Ok(Event::Delete(p)) => self.delete(&p),
                    Err(error) => {
                        tracing::warn!(%error, "pod watch failed; keeping the last index and retrying");
                        break;
                    }
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
}
