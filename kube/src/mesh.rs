//! The cluster as the watchers last saw it: one incremental map per kind, holding converted
//! objects only, and [`MeshView::assemble`], which snapshots the maps into a [`MeshState`].
//!
//! Events are applied incrementally: a pod event converts one pod, a policy event compiles one
//! policy. Snapshots are debounced by the source and only copy the converted values into a
//! [`Config`] (no parsing, no policy compilation), so a burst of events costs one cheap
//! assembly, not one rebuild per event.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use nodemesh_config::{
    Ca, Config, MTLS_MODE_LABEL, Namespace, Node, Parts, RawPolicy, Service, ServicePort,
};
use nodemesh_identity::TrustDomain;
use nodemesh_state::{MeshState, StateError};

use crate::claims::{self, Refusals};
use crate::convert::{ServiceInfo, SliceInfo};
use crate::netpol;
use crate::pod::PodClaim;
use crate::policy::{PolicyApi, PolicyEntry};

/// What does not come from the API: this node, the trust domain, the CA.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// This proxy's node.
    pub node: String,
    /// The SPIFFE trust domain.
    pub trust_domain: TrustDomain,
    /// The root namespace (mesh-wide policies).
    pub root_namespace: String,
    /// The CA's address and trust bundle file.
    pub ca: Ca,
    /// Mesh namespaces without the label `nodemesh.io/mtls-mode` are permissive (else strict).
    pub default_permissive: bool,
    /// Refuse pods whose IP is outside their node's podCIDR (see [`crate::claims`]); off only
    /// for IPAMs that ignore `spec.podCIDR`.
    pub pod_cidr_check: bool,
}

/// One converted object, by kind.
#[derive(Debug, Clone)]
pub enum Object {
    /// A pod in the proxy's view, with or without an identity.
    Pod(Box<PodClaim>),
    /// A namespace.
    Namespace(Namespace),
    /// A node.
    Node(Node),
    /// A Service.
    Service(ServiceInfo),
    /// An EndpointSlice.
    Slice(SliceInfo),
    /// A policy of one of the APIs.
    Policy(Box<PolicyEntry>),
    /// A NetworkPolicy or ClusterNetworkPolicy document (the kind's map says which), compiled
    /// by the policy crate from the assembled config.
    Document(RawPolicy),
}

/// The kinds watched; each has its own map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Pods.
    Pods,
    /// Namespaces.
    Namespaces,
    /// Nodes.
    Nodes,
    /// Services.
    Services,
    /// EndpointSlices.
    EndpointSlices,
    /// AuthorizationPolicies of one API.
    Policies(PolicyApi),
    /// NetworkPolicies (`networking.k8s.io/v1`).
    NetworkPolicies,
    /// ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`; none while the CRD is
    /// absent).
    ClusterNetworkPolicies,
}

/// The latest converted objects of every kind.
#[derive(Debug, Default)]
pub struct MeshView {
    maps: HashMap<Kind, BTreeMap<String, Object>>,
    synced: BTreeSet<Kind>,
    refusals: Refusals,
}

impl MeshView {
    /// Sets or replaces one object; `None` removes it (it left the proxy's view).
    pub fn apply(&mut self, kind: Kind, key: String, object: Option<Object>) {
        let map = self.maps.entry(kind).or_default();
        match object {
            Some(o) => {
                map.insert(key, o);
            }
            None => {
                map.remove(&key);
            }
        }
    }

    /// Replaces every object of `kind` after a full (re)list and marks the kind synced.
    pub fn reset(&mut self, kind: Kind, objects: BTreeMap<String, Object>) {
        self.maps.insert(kind, objects);
        self.synced.insert(kind);
    }

    /// Whether every kind in `kinds` has been listed at least once.
    pub fn synced(&self, kinds: &[Kind]) -> bool {
        kinds.iter().all(|k| self.synced.contains(k))
    }

    fn objects(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.maps.get(&kind).into_iter().flat_map(|m| m.values())
    }

    /// The pods the last [`MeshView::assemble`] refused.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// The state for this node now; logs the pods newly refused (or no longer refused) since
    /// the last call.
    pub fn assemble(&mut self, settings: &MeshSettings) -> Result<MeshState, StateError> {
        let nodes: Vec<Node> = self
            .objects(Kind::Nodes)
            .filter_map(|o| match o {
                Object::Node(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        let namespaces: Vec<Namespace> = self
            .objects(Kind::Namespaces)
            .filter_map(|o| match o {
                Object::Namespace(n) => Some(with_default_mode(n, settings.default_permissive)),
                _ => None,
            })
            .collect();
        let claims = self.objects(Kind::Pods).filter_map(|o| match o {
            Object::Pod(c) => Some(c.as_ref()),
            _ => None,
        });
        let admission = claims::admit(claims, &nodes, settings.pod_cidr_check);
        admission.refusals.log_since(&self.refusals);
        self.refusals = admission.refusals;
        let workloads = admission.workloads;
        let services = self.services();
        let mut compiled = Vec::new();
        let mut problems = Vec::new();
        let mut raw = Vec::new();
        for api in [
            PolicyApi::Nodemesh,
            PolicyApi::IstioV1,
            PolicyApi::IstioV1beta1,
        ] {
            for o in self.objects(Kind::Policies(api)) {
                if let Object::Policy(entry) = o {
                    compiled.push(entry.policy.clone());
                    problems.extend(entry.problem.clone());
                    raw.push(entry.raw.clone());
                }
            }
        }
        let config = Config::assemble(Parts {
            trust_domain: settings.trust_domain.clone(),
            root_namespace: settings.root_namespace.clone(),
            ca: Some(settings.ca.clone()),
            nodes,
            namespaces,
            workloads,
            services,
            policies: raw,
            network_policies: self.documents(Kind::NetworkPolicies),
            cluster_network_policies: self.documents(Kind::ClusterNetworkPolicies),
        });
        MeshState::with_policies(config, &settings.node, compiled, problems)
    }

    /// The documents of `kind`, ordered by namespace, then name.
    fn documents(&self, kind: Kind) -> Vec<RawPolicy> {
        let mut docs: Vec<&RawPolicy> = self
            .objects(kind)
            .filter_map(|o| match o {
                Object::Document(d) => Some(d),
                _ => None,
            })
            .collect();
        docs.sort_by(|a, b| netpol::order_key(a).cmp(&netpol::order_key(b)));
        docs.into_iter().cloned().collect()
    }

    /// Services with their ready endpoints and target ports resolved from EndpointSlices.
    fn services(&self) -> Vec<Service> {
        let mut slices: HashMap<(&str, &str), Vec<&SliceInfo>> = HashMap::new();
        for o in self.objects(Kind::EndpointSlices) {
            if let Object::Slice(s) = o {
                slices
                    .entry((s.namespace.as_str(), s.service.as_str()))
                    .or_default()
                    .push(s);
            }
        }
        self.objects(Kind::Services)
            .filter_map(|o| match o {
                Object::Service(s) => Some(s),
                _ => None,
            })
            .map(|svc| {
                let own = slices
                    .get(&(svc.namespace.as_str(), svc.name.as_str()))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let endpoints: BTreeSet<Ipv4Addr> =
                    own.iter().flat_map(|s| s.ready.iter().copied()).collect();
                let ports = svc
                    .ports
                    .iter()
                    .map(|p| {
                        let target = own
                            .iter()
                            .find_map(|s| s.ports.get(&p.name).copied())
                            .or(p.target_port)
                            .unwrap_or(p.port);
                        let name = (!p.name.is_empty()).then(|| p.name.clone());
                        ServicePort::tcp(p.port, target, name)
                    })
                    .collect();
                Service::with_endpoints(
                    svc.name.clone(),
                    svc.namespace.clone(),
                    svc.vip,
                    ports,
                    endpoints.into_iter().collect(),
                )
            })
            .collect()
    }
}

/// The namespace, labelled `nodemesh.io/mtls-mode=permissive` when it carries no mode and the
/// default is permissive.
fn with_default_mode(ns: &Namespace, default_permissive: bool) -> Namespace {
    if default_permissive && !ns.labels.contains_key(MTLS_MODE_LABEL) {
        let mut labels = ns.labels.clone();
        labels.insert(MTLS_MODE_LABEL.to_owned(), "permissive".to_owned());
        Namespace::new(ns.name.clone(), labels)
    } else {
        ns.clone()
    }
}
