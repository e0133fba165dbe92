//! One immutable view of the mesh, built from a validated config with its policies compiled.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nodemesh_config::{Config, Endpoint, Service, Workload};
use nodemesh_policy::netpol::NetworkPolicySet;
use nodemesh_policy::{EngineOptions, Policy, PolicyDocument, PolicySet};

/// A policy that did not compile: it fails closed, and is reported.
#[derive(Debug, Clone)]
pub struct PolicyProblem {
    /// `namespace/name`.
    pub policy: String,
    /// Every compile error, `field: reason`.
    pub errors: Vec<String>,
}

/// Why a config cannot become the proxy's state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] nodemesh_config::LoadError),
    /// A policy document is not an AuthorizationPolicy at all.
    #[error("policies[{index}]: {source}")]
    PolicyDocument {
        /// Position in `policies`.
        index: usize,
        /// What serde found.
        #[source]
        source: serde_json::Error,
    },
    /// A policy has no `metadata.namespace`.
    #[error("policies[{index}].metadata.namespace: required")]
    PolicyNamespace {
        /// Position in `policies`.
        index: usize,
    },
    /// This proxy's node is not in the config.
    #[error("--node {0:?} is not in the config's nodes")]
    UnknownNode(String),
}

/// One immutable view of the mesh.
#[derive(Debug)]
pub struct MeshState {
    config: Config,
    node: String,
    policies: Arc<PolicySet>,
    pub(crate) network_policies: NetworkPolicySet,
    policy_problems: Vec<PolicyProblem>,
    /// Round-robin cursors, one per service (index into `config.services()`).
    cursors: Vec<AtomicUsize>,
}

/// Where a Service VIP leads.
#[derive(Debug, Clone)]
pub struct ServiceTarget<'a> {
    /// The Service.
    pub service: &'a Service,
    /// The chosen endpoint: a workload, or an address that is none (the API server, a
    /// hostNetwork pod).
    pub endpoint: Endpoint<'a>,
    /// The endpoint's port.
    pub port: u16,
}

impl MeshState {
    /// Builds a state for `node` from a validated config, compiling its policies (failing closed).
    pub fn new(config: Config, node: &str) -> Result<Self, StateError> {
        let mut compiled: Vec<Policy> = Vec::new();
        let mut policy_problems = Vec::new();
        for (index, raw) in config.policies().iter().enumerate() {
            let doc: PolicyDocument = serde_json::from_value(raw.document().clone())
                .map_err(|source| StateError::PolicyDocument { index, source })?;
            let Some(id) = doc.policy_ref() else {
                return Err(StateError::PolicyNamespace { index });
            };
            let (policy, errors) = nodemesh_policy::compile_fail_closed(
                id.clone(),
                &doc.metadata.annotations,
                &doc.spec,
            );
            if let Some(errors) = errors {
                policy_problems.push(PolicyProblem {
                    policy: id.to_string(),
                    errors: errors
                        .0
                        .iter()
                        .map(|e| format!("{}: {}", e.field, e.kind))
                        .collect(),
                });
            }
            compiled.push(policy);
        }
        Self::with_policies(config, node, compiled, policy_problems)
    }

    /// Builds a state for `node` from a config and policies compiled already (a source that
    /// compiles each policy once, when it changes); `config.policies()` is not read.
    pub fn with_policies(
        config: Config,
        node: &str,
        compiled: Vec<Policy>,
        mut policy_problems: Vec<PolicyProblem>,
    ) -> Result<Self, StateError> {
        if config.node(node).is_none() {
            return Err(StateError::UnknownNode(node.to_owned()));
        }
        let options = EngineOptions {
            root_namespace: config.root_namespace().to_owned(),
            ..EngineOptions::default()
        };
        let cursors = config
            .services()
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect();
        let network_policies = crate::netpol::compile(&config, &mut policy_problems);
        Ok(Self {
            policies: Arc::new(PolicySet::new(compiled, options)),
            network_policies,
            config,
            node: node.to_owned(),
            policy_problems,
            cursors,
        })
    }

    /// The config this state was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This proxy's node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The compiled policies.
    pub fn policies(&self) -> &Arc<PolicySet> {
        &self.policies
    }

    /// The state without its network policies (`--network-policy=off`: another component, the
    /// CNI, enforces them).
    pub fn without_network_policies(mut self) -> Self {
        self.network_policies = NetworkPolicySet::default();
        self
    }

    /// A copy of the state without its network policies.
    pub fn stripped_of_network_policies(&self) -> Self {
        Self {
            config: self.config.clone(),
            node: self.node.clone(),
            policies: Arc::clone(&self.policies),
            network_policies: NetworkPolicySet::default(),
            policy_problems: self.policy_problems.clone(),
            cursors: self.cursors.iter().map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Policies that did not compile (they fail closed): AuthorizationPolicies, and
    /// NetworkPolicies / ClusterNetworkPolicies (named with their kind).
    pub fn policy_problems(&self) -> &[PolicyProblem] {
        &self.policy_problems
    }

    /// The workload with `ip`, anywhere in the mesh.
    pub fn workload(&self, ip: IpAddr) -> Option<&Workload> {
        match ip {
            IpAddr::V4(v4) => self.config.workload_by_ip(v4),
            IpAddr::V6(_) => None,
        }
    }

    /// Whether `w` is in the mesh (namespace opted in, pod not opted out).
    pub fn in_mesh(&self, w: &Workload) -> bool {
        self.config.in_mesh(w)
    }

    /// Whether `w` runs on this proxy's node.
    pub fn is_local(&self, w: &Workload) -> bool {
        w.node == self.node
    }

    /// The mesh workloads on this node.
    pub fn local_mesh_workloads(&self) -> impl Iterator<Item = &Workload> {
        self.config.mesh_workloads_on_node(&self.node)
    }

    /// Whether `w`'s namespace accepts plaintext from outside the mesh.
    pub fn is_permissive(&self, w: &Workload) -> bool {
        self.config.is_permissive(&w.namespace)
    }

    /// Whether `ip` lies in some node's pod network (so an unknown IP there is refused).
    pub fn in_pod_network(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.config.node_of_pod_ip(v4).is_some(),
            IpAddr::V6(_) => false,
        }
    }

    /// Whether `ip` is the virtual IP of a Service (on any port).
    pub fn is_service_vip(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.config.service_with_vip(v4).is_some(),
            IpAddr::V6(_) => false,
        }
    }

    /// The Service behind `addr`, if any: a port of its VIP, or its NodePort on a node's
    /// address.
    pub fn service(&self, addr: SocketAddr) -> Option<&Service> {
        match addr.ip() {
            IpAddr::V4(v4) => self.config.service_at(v4, addr.port()).map(|(s, _)| s),
            IpAddr::V6(_) => None,
        }
    }

    /// Picks a ready endpoint of the Service at `addr` (see [`MeshState::service`]) round
    /// robin; `None` when it has none.
    pub fn pick_endpoint(&self, addr: SocketAddr) -> Option<ServiceTarget<'_>> {
        let IpAddr::V4(vip) = addr.ip() else {
            return None;
        };
        let (service, port) = self.config.service_at(vip, addr.port())?;
        let port = port.target_port;
        let endpoints = self.config.service_targets(service);
        if endpoints.is_empty() {
            return None;
        }
        let index = self
            .config
            .services()
            .iter()
            .position(|s| std::ptr::eq(s, service))
            .unwrap_or(0);
        let turn = self
            .cursors
            .get(index)
            .map_or(0, |c| c.fetch_add(1, Ordering::Relaxed));
        Some(ServiceTarget {
            service,
            endpoint: endpoints[turn % endpoints.len()],
            port,
        })
    }

    /// The file the trust bundle is read from (`ca.rootCert`), if configured.
    pub fn trust_bundle_file(&self) -> Option<&Path> {
        self.config.ca().map(|ca| ca.root_cert.as_path())
    }
}
