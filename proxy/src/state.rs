//! What the proxy knows about the mesh: workloads, namespaces, services and compiled policies,
//! published as immutable snapshots. Readers load the current snapshot without locks
//! (`arc-swap`); a source replaces it whole when its input changes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use nodemesh_config::{Config, Service, Workload};
use nodemesh_policy::{EngineOptions, Policy, PolicyDocument, PolicySet};
use tokio::sync::watch;

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
    #[error("policies[{index}]: {reason}")]
    PolicyDocument {
        /// Position in `policies`.
        index: usize,
        /// What is wrong.
        reason: String,
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
    policy_problems: Vec<PolicyProblem>,
    /// Round-robin cursors, one per service (index into `config.services()`).
    cursors: Vec<AtomicUsize>,
}

/// Where a Service VIP leads.
#[derive(Debug, Clone)]
pub struct ServiceTarget<'a> {
    /// The Service.
    pub service: &'a Service,
    /// The chosen endpoint.
    pub endpoint: &'a Workload,
    /// The endpoint's port.
    pub port: u16,
}

impl MeshState {
    /// Builds a state for `node` from a validated config, compiling its policies (failing closed).
    pub fn new(config: Config, node: &str) -> Result<Self, StateError> {
        let mut compiled: Vec<Policy> = Vec::new();
        let mut policy_problems = Vec::new();
        for (index, raw) in config.policies().iter().enumerate() {
            let doc: PolicyDocument =
                serde_json::from_value(raw.document().clone()).map_err(|e| {
                    StateError::PolicyDocument {
                        index,
                        reason: e.to_string(),
                    }
                })?;
            let Some(id) = doc.policy_ref() else {
                return Err(StateError::PolicyDocument {
                    index,
                    reason: "metadata.namespace is required".into(),
                });
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
        policy_problems: Vec<PolicyProblem>,
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
        Ok(Self {
            policies: Arc::new(PolicySet::new(compiled, options)),
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

    /// Policies that did not compile (they fail closed).
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
        self.config
            .workloads_on_node(&self.node)
            .filter(|w| self.config.in_mesh(w))
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

    /// The Service behind `vip:port`, if any.
    pub fn service(&self, addr: SocketAddr) -> Option<&Service> {
        match addr.ip() {
            IpAddr::V4(v4) => self.config.service_by_vip(v4, addr.port()).map(|(s, _)| s),
            IpAddr::V6(_) => None,
        }
    }

    /// Picks a ready endpoint of the Service at `addr` round robin; `None` when it has none.
    pub fn pick_endpoint(&self, addr: SocketAddr) -> Option<ServiceTarget<'_>> {
        let IpAddr::V4(vip) = addr.ip() else {
            return None;
        };
        let (service, port) = self.config.service_by_vip(vip, addr.port())?;
        let port = port.target_port;
        let endpoints: Vec<&Workload> = self.config.service_endpoints(service).collect();
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

/// The current [`MeshState`], readable without locks; writers replace it whole.
#[derive(Debug)]
pub struct WorkloadStore {
    current: ArcSwap<MeshState>,
    changed: watch::Sender<u64>,
    health: SourceHealth,
}

impl WorkloadStore {
    /// A store holding `initial`.
    pub fn new(initial: MeshState) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
            changed: watch::Sender::new(0),
            health: SourceHealth::default(),
        }
    }

    /// Whether the source feeding the store is in touch with its input.
    pub fn health(&self) -> &SourceHealth {
        &self.health
    }

    /// The current state.
    pub fn load(&self) -> Arc<MeshState> {
        self.current.load_full()
    }

    /// Replaces the state and wakes subscribers.
    pub fn publish(&self, state: MeshState) {
        self.current.store(Arc::new(state));
        self.changed.send_modify(|v| *v += 1);
    }

    /// A receiver that changes each time the state is replaced.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// How stale the published state may be: a source that loses its input (the Kubernetes API
/// going away) marks itself stale and keeps the last state serving; the admin API exports the
/// age as `nodemesh_source_stale_seconds`.
#[derive(Debug, Default)]
pub struct SourceHealth {
    /// Unix milliseconds since which the source is out of touch; 0 when in touch.
    stale_since_ms: AtomicU64,
}

impl SourceHealth {
    /// The source is in touch with its input again.
    pub fn mark_fresh(&self) {
        self.stale_since_ms.store(0, Ordering::Relaxed);
    }

    /// The source lost its input at `now` (kept from the first loss until fresh again).
    pub fn mark_stale(&self, now: SystemTime) {
        let ms = unix_ms(now).max(1);
        let _ = self
            .stale_since_ms
            .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// How long the state has been possibly stale at `now` (zero when in touch).
    pub fn stale_for(&self, now: SystemTime) -> Duration {
        match self.stale_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(unix_ms(now).saturating_sub(since)),
        }
    }

    /// The Prometheus text of `nodemesh_source_stale_seconds` at `now`.
    pub fn render(&self, now: SystemTime) -> String {
        format!(
            "# HELP nodemesh_source_stale_seconds How long the state source (Kubernetes API) has been out of reach; 0 when in sync.\n\
             # TYPE nodemesh_source_stale_seconds gauge\n\
             nodemesh_source_stale_seconds {}\n",
            self.stale_for(now).as_secs_f64()
        )
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Keeps a [`WorkloadStore`] fed from the standalone YAML: re-reads it when it changes; a bad new
/// file is refused with its errors and the last good state keeps serving.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    node: String,
    stamp: Option<(std::time::SystemTime, u64)>,
}

impl FileSource {
    /// A source for `path` as seen by `node`.
    pub fn new(path: impl Into<PathBuf>, node: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            node: node.into(),
            stamp: None,
        }
    }

    /// Loads the file now.
    pub fn load(&mut self) -> Result<MeshState, StateError> {
        self.stamp = file_stamp(&self.path);
        let config = Config::from_file(&self.path)?;
        MeshState::new(config, &self.node)
    }

    /// Polls the file every `interval` and publishes good new versions until `stop` is dropped.
    pub async fn watch(mut self, store: Arc<WorkloadStore>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if file_stamp(&self.path) == self.stamp {
                continue;
            }
            match self.load() {
                Ok(state) => {
                    tracing::info!(file = %self.path.display(), "config reloaded");
                    store.publish(state);
                }
                Err(error) => {
                    tracing::error!(file = %self.path.display(), %error, "config reload refused; the last good config keeps serving");
                }
            }
        }
    }
}

fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The IPv4 address of `ip`, if it is one.
pub fn ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}
