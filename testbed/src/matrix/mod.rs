//! A reachability matrix as the Kubernetes e2e network-policy suite has it
//! (`test/e2e/network/netpol`): namespaces `x`, `y`, `z` × pods `a`, `b`, `c` on two nodes,
//! some in the mesh and some not, each serving TCP and UDP 80 and 81; a probe from every pod to
//! every other pod on each, compared with an expected [`Reachability`] and printed as truth
//! tables when they differ.
//!
//! [`MatrixBed::start`] builds the testbed and starts the mesh once; scenarios then
//! [`MatrixBed::apply`] policies (the standalone YAML is rewritten and every proxy is polled on
//! its `/config_dump` until it serves the new documents) and [`MatrixBed::check`] the matrix,
//! one after the other on the same testbed. [`scenarios`] holds the upstream suite's cases.

mod model;
mod probe;
mod reachability;
pub mod scenarios;
mod serve;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use model::{
    ALL_PORTS, Layout, Model, NAMESPACES, NODES, POD_NAMES, PodId, PortProtocol, Protocol, TCP_80,
    TCP_81, TCP_PORTS, UDP_80, UDP_81, UDP_PORTS, pod,
};
pub use probe::{Cell, Outcome, ProbeOptions};
pub use reachability::{Comparison, Observed, Reachability};
pub use scenarios::{Scenario, Step};

use crate::cluster::Testbed;
use crate::error::TestbedError;
use crate::mesh::MeshOptions;
use crate::plan::{ClusterSpec, ContainerPort, Labels, NamespaceSpec, NodeSpec, PodSpec};

/// The proxies' admin port (`/config_dump`), on the node's loopback.
const ADMIN_PORT: u16 = 15000;
/// How long the proxies may take to serve a new config.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// The testbed spec of the model with `layout`.
pub fn spec(layout: &Layout) -> ClusterSpec {
    let nodes = NODES
        .iter()
        .map(|node| NodeSpec {
            name: (*node).to_owned(),
            pods: PodId::all()
                .filter(|p| p.node() == *node)
                .map(|p| pod_spec(layout, p))
                .collect(),
        })
        .collect();
    let namespaces = NAMESPACES
        .iter()
        .map(|ns| {
            let mut labels: Labels = [
                ("ns".to_owned(), (*ns).to_owned()),
                ("kubernetes.io/metadata.name".to_owned(), (*ns).to_owned()),
            ]
            .into();
            if layout.mesh_namespaces.contains(ns) {
                labels.insert("nodemesh.io/mesh".into(), "enabled".into());
                labels.insert("nodemesh.io/mtls-mode".into(), "permissive".into());
            }
            NamespaceSpec {
                name: (*ns).to_owned(),
                labels,
            }
        })
        .collect();
    ClusterSpec {
        nodes,
        namespaces,
        ..ClusterSpec::default()
    }
}

fn pod_spec(layout: &Layout, p: PodId) -> PodSpec {
    let mut spec = PodSpec::new(&p.testbed_name(), p.namespace(), p.name()).label("pod", p.name());
    if layout.opted_out.contains(&p) {
        spec = spec.label("nodemesh.io/mesh", "disabled");
    }
    if layout.container_ports {
        spec.ports = ALL_PORTS
            .iter()
            .map(|pp| ContainerPort {
                name: pp.port_name(),
                port: pp.port,
                protocol: pp.protocol.as_str(),
            })
            .collect();
    }
    spec
}

/// Whether the config parser knows `workloads[].ports` (the container ports named ports
/// resolve to): the matrix's config with them parses.
pub fn container_ports_supported() -> bool {
    let layout = Layout {
        mesh_namespaces: Default::default(),
        opted_out: Default::default(),
        container_ports: true,
    };
    let spec = spec(&layout);
    let Ok(plan) = crate::plan::Plan::new(&spec) else {
        return false;
    };
    let config = crate::config::render(&spec, &plan, &Default::default());
    nodemesh_config::Config::from_yaml_str(&config.to_string(), "/").is_ok()
}

/// The matrix on a running mesh. Dropping it stops the pods' servers, then tears the testbed
/// down.
#[derive(Debug)]
pub struct MatrixBed {
    servers: Option<serve::Servers>,
    bed: Testbed,
    model: Model,
    /// How probes run.
    pub probe: ProbeOptions,
    /// Rounds of probing before a matrix counts as wrong: the cells that differ are probed
    /// again, as the upstream suite retries (a probe that lost a race with a slow machine).
    pub rounds: usize,
    /// The ports probed and compared (all four by default; fewer while a protocol's
    /// enforcement is not there yet).
    pub ports: Vec<PortProtocol>,
}

impl MatrixBed {
    /// Builds the model's testbed with `layout`, starts the mesh with `mesh` and every pod's
    /// servers.
    pub fn start(layout: Layout, mesh: &MeshOptions) -> Result<Self, TestbedError> {
        let mut bed = Testbed::build(spec(&layout))?;
        // The kernel sends a host at most ~1 ICMP error a second after a burst of 6
        // (`icmp_ratelimit`); a round of probes asks for a dozen rejects per pod, and the rest
        // would look like silent drops. Rejecting is what is tested, not the rate limit.
        for node in model::NODES {
            bed.node(node)?.sysctl("net.ipv4.icmp_ratelimit", "0")?;
        }
        bed.start_mesh(mesh)?;
        let servers = serve::Servers::start(&bed)?;
        let ips = PodId::all()
            .map(|p| Ok((p, bed.pod_ip(&p.testbed_name())?)))
            .collect::<Result<_, TestbedError>>()?;
        Ok(Self {
            servers: Some(servers),
            bed,
            model: Model { layout, ips },
            probe: ProbeOptions::default(),
            rounds: 3,
            ports: ALL_PORTS.to_vec(),
        })
    }

    /// The testbed.
    pub fn testbed(&self) -> &Testbed {
        &self.bed
    }

    /// The model: layout and IPs (scenarios' ipBlocks need them).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Replaces the NetworkPolicies and ClusterNetworkPolicies (and clears the
    /// AuthorizationPolicies) and waits until every proxy serves them.
    pub fn apply(
        &mut self,
        network_policies: &[Value],
        cluster_network_policies: &[Value],
    ) -> Result<(), TestbedError> {
        self.apply_all(&[], network_policies, cluster_network_policies)
    }

    /// Replaces all three kinds of policy and waits until every proxy's `/config_dump` shows
    /// exactly these documents, with no policy problem.
    ///
    /// What is awaited is the proxy's state; should the node firewall be applied after it
    /// (asynchronously), this is where to wait for the firewall's revision too.
    pub fn apply_all(
        &mut self,
        policies: &[Value],
        network_policies: &[Value],
        cluster_network_policies: &[Value],
    ) -> Result<(), TestbedError> {
        self.bed.set_all_policies(
            policies.to_vec(),
            network_policies.to_vec(),
            cluster_network_policies.to_vec(),
        )?;
        let want = json!([policies, network_policies, cluster_network_policies]);
        for node in NODES {
            self.await_config(node, &want)?;
        }
        Ok(())
    }

    fn await_config(&self, node: &str, want: &Value) -> Result<(), TestbedError> {
        let ns = self.bed.node(node)?.clone();
        let start = Instant::now();
        loop {
            let target = std::net::SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
            let reply = ns.block_on(async move {
                crate::apps::http(target, "GET", "/config_dump", Vec::new(), APPLY_TIMEOUT).await
            })?;
            let last = match reply {
                Ok(reply) if reply.status == 200 => {
                    let dump: Value = serde_json::from_str(&reply.body).unwrap_or_default();
                    let list = |key: &str| match &dump["config"][key] {
                        Value::Null => json!([]),
                        v => v.clone(),
                    };
                    let got = json!([
                        list("policies"),
                        list("networkPolicies"),
                        list("clusterNetworkPolicies")
                    ]);
                    if got == *want {
                        let problems = &dump["policyProblems"];
                        return match problems.as_array() {
                            Some(p) if !p.is_empty() => Err(TestbedError::Spec(format!(
                                "proxy {node} serves the new policies with problems: {problems}"
                            ))),
                            _ => Ok(()),
                        };
                    }
                    "an older config".to_owned()
                }
                Ok(reply) => format!("status {}", reply.status),
                Err(e) => e.to_string(),
            };
            if start.elapsed() > APPLY_TIMEOUT {
                return Err(TestbedError::NotReady {
                    what: format!("proxy {node} serving the new policies (it serves {last})"),
                    waited_ms: start.elapsed().as_millis(),
                    log: self.bed.log_tail(&format!("proxy/{node}"), 20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Probes every cell on [`MatrixBed::ports`] once.
    pub fn probe_all(&self) -> Result<Observed, TestbedError> {
        let start = Instant::now();
        let cells = Reachability::new(true).only(&self.ports).cells();
        let outcomes = probe::probe_all(&self.bed, &cells, self.probe)?;
        Ok(Observed {
            probes: cells.len(),
            outcomes,
            rounds: 1,
            elapsed: start.elapsed(),
        })
    }

    /// Probes every cell on [`MatrixBed::ports`] and compares with `expected`; cells that
    /// differ are probed again, up to [`MatrixBed::rounds`] rounds in all.
    pub fn check(&self, expected: &Reachability) -> Result<Comparison, TestbedError> {
        let start = Instant::now();
        let mut cmp = Comparison {
            expected: expected.only(&self.ports),
            observed: self.probe_all()?,
        };
        while !cmp.is_ok() && cmp.observed.rounds < self.rounds {
            let mut again: Vec<Cell> = cmp.mismatches().into_iter().map(|(c, _, _)| c).collect();
            again.extend(cmp.dropped());
            let outcomes = probe::probe_all(&self.bed, &again, self.probe)?;
            cmp.observed.probes += again.len();
            cmp.observed.rounds += 1;
            cmp.observed.outcomes.extend(outcomes);
        }
        cmp.observed.elapsed = start.elapsed();
        Ok(cmp)
    }

    /// Opens a TCP connection `from` → `to` on `pp` and checks it answers; it stays open for
    /// [`Held::alive`] to ask again later (a connection a policy change must close).
    pub fn hold(&self, from: PodId, to: PodId, pp: PortProtocol) -> Result<Held, TestbedError> {
        Held::open(&self.bed, from, to, pp, self.probe.timeout)
    }

    /// Runs `scenario`: for each step, applies its policies, checks the matrix and the held
    /// connections. Returns one report per step; the first error (a config the proxies never
    /// served) ends it.
    pub fn run(&mut self, scenario: &Scenario) -> Result<Vec<StepReport>, TestbedError> {
        let held: Vec<Held> = scenario
            .held
            .iter()
            .map(|&(from, to, pp)| self.hold(from, to, pp))
            .collect::<Result<_, _>>()?;
        let mut reports = Vec::new();
        for step in &scenario.steps {
            let start = Instant::now();
            self.apply_all(
                &step.policies,
                &step.network_policies,
                &step.cluster_network_policies,
            )?;
            let applied = start.elapsed();
            let comparison = self.check(&step.expected)?;
            let mut held_wrong = Vec::new();
            for (h, want) in held.iter().zip(&step.held_alive) {
                let alive = h.alive()?;
                if alive != *want {
                    held_wrong.push(format!(
                        "held connection {h}: {} (should be {})",
                        if alive { "still answers" } else { "closed" },
                        if *want { "open" } else { "closed" },
                    ));
                }
            }
            reports.push(StepReport {
                scenario: scenario.name,
                step: step.what.clone(),
                applied,
                comparison,
                held_wrong,
            });
        }
        Ok(reports)
    }
}

impl Drop for MatrixBed {
    fn drop(&mut self) {
        drop(self.servers.take());
    }
}

/// What one step of a scenario showed.
#[derive(Debug)]
pub struct StepReport {
    /// The scenario's name.
    pub scenario: &'static str,
    /// The step.
    pub step: String,
    /// How long the proxies took to serve the step's config.
    pub applied: Duration,
    /// The matrix.
    pub comparison: Comparison,
    /// Held connections in the wrong state.
    pub held_wrong: Vec<String>,
}

impl StepReport {
    /// Whether the matrix and the held connections are as expected.
    pub fn is_ok(&self) -> bool {
        self.comparison.is_ok() && self.held_wrong.is_empty()
    }
}

impl std::fmt::Display for StepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} / {}: {} (config served after {:?})",
            self.scenario,
            self.step,
            if self.is_ok() { "ok" } else { "FAILED" },
            self.applied
        )?;
        write!(f, "{}", self.comparison)?;
        for line in &self.held_wrong {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// A TCP connection held open across policy changes. Dropping it closes it.
#[derive(Debug)]
pub struct Held {
    from: PodId,
    to: PodId,
    pp: PortProtocol,
    /// Asks the connection's task for one exchange; it answers whether the server answered.
    ask: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<bool>>,
    _task: crate::netns::NetnsTask<()>,
}

impl Held {
    fn open(
        bed: &Testbed,
        from: PodId,
        to: PodId,
        pp: PortProtocol,
        timeout: Duration,
    ) -> Result<Self, TestbedError> {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let target = std::net::SocketAddr::from((bed.pod_ip(&to.testbed_name())?, pp.port));
        let (ask, mut asks) = tokio::sync::mpsc::channel::<tokio::sync::oneshot::Sender<bool>>(1);
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let task = bed.pod(&from.testbed_name())?.spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let connect = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target));
                let stream = match connect.await {
                    Ok(Ok(s)) => s,
                    other => {
                        let _ = opened_tx.send(Err(format!("connect: {other:?}")));
                        return;
                    }
                };
                let _ = opened_tx.send(Ok(()));
                let (r, mut w) = stream.into_split();
                let mut r = tokio::io::BufReader::new(r);
                let mut n = 0u32;
                while let Some(reply) = asks.recv().await {
                    n += 1;
                    let token = format!("held {from}->{to} {pp} #{n}\n");
                    let exchange = async {
                        w.write_all(token.as_bytes()).await.ok()?;
                        let mut line = String::new();
                        let read = r.read_line(&mut line).await.ok()?;
                        (read > 0 && line.ends_with(&token)).then_some(())
                    };
                    let ok = tokio::time::timeout(timeout, exchange)
                        .await
                        .ok()
                        .flatten()
                        .is_some();
                    let _ = reply.send(ok);
                }
            });
        })?;
        let held = Self {
            from,
            to,
            pp,
            ask,
            _task: task,
        };
        match opened_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(TestbedError::Spec(format!("hold {held}: {why}"))),
            Err(_) => return Err(TestbedError::Spec(format!("hold {held}: the task ended"))),
        }
        if !held.alive()? {
            return Err(TestbedError::Spec(format!(
                "held connection {held} never answered"
            )));
        }
        Ok(held)
    }

    /// Whether the connection still answers a line (within the probe timeout).
    pub fn alive(&self) -> Result<bool, TestbedError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.ask.blocking_send(tx).is_err() {
            return Ok(false);
        }
        Ok(rx.blocking_recv().unwrap_or(false))
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} {}", self.from, self.to, self.pp)
    }
}
