//! [`Testbed`]: builds the mini-cluster of a [`Plan`] out of network namespaces and tears it
//! down — always: on drop, and by prefix after a crash or signal ([`destroy_all`]).
//!
//! Layout: one namespace for the underlay (a bridge `br0`), one per node (`uplink` on the
//! underlay, `ip_forward=1`, a `/32` route per pod and a route per other node's pod network),
//! one per pod (`eth0` with a `/32` address and a default route via the node's gateway address,
//! as the CNI `ptp` plugin does). Names start with a prefix unique to the run, since namespace
//! names are machine-wide.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::TestbedError;
use crate::kube_proxy::{self, KubeProxyMode};
use crate::netns::{self, Netns};
use crate::plan::{API_SERVER, ClusterSpec, METADATA, NodePlan, Plan, PodPlan, PodRouting};
use crate::process::Process;

/// Every testbed namespace starts with this.
pub const NAME_PREFIX: &str = "nm";

/// A built mini-cluster. Dropping it kills its processes and deletes its namespaces and files,
/// unless [`Testbed::keep`] was called.
#[derive(Debug)]
pub struct Testbed {
    pub(crate) prefix: String,
    pub(crate) spec: ClusterSpec,
    pub(crate) plan: Plan,
    pub(crate) dir: PathBuf,
    tempdir: Option<tempfile::TempDir>,
    pub(crate) underlay: Netns,
    pub(crate) nodes: BTreeMap<String, Netns>,
    pub(crate) pods: BTreeMap<String, Netns>,
    /// Named processes: `ca`, `proxy/<node>`, `app/<pod>`.
    pub(crate) processes: BTreeMap<String, Process>,
    /// How the mesh was started, for restarts.
    pub(crate) mesh: Option<crate::mesh::MeshOptions>,
    /// Each node's WireGuard public key, once created.
    pub(crate) wireguard_keys: BTreeMap<String, String>,
    kept: bool,
}

impl Testbed {
    /// Builds `spec`: checks prerequisites, creates namespaces, links, addresses and routes.
    /// Whatever was created is removed again if a later step fails.
    pub fn build(spec: ClusterSpec) -> Result<Self, TestbedError> {
        check_prerequisites()?;
        let plan = Plan::new(&spec)?;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tempdir = tempfile::Builder::new()
            .prefix(&format!("nodemesh-{prefix}-"))
            .tempdir()
            .map_err(|source| TestbedError::File {
                path: std::env::temp_dir(),
                source,
            })?;
        let dir = tempdir.path().to_owned();
        let underlay = Netns::create(&format!("{prefix}-underlay"))?;
        let mut bed = Self {
            prefix,
            spec,
            plan,
            dir,
            tempdir: Some(tempdir),
            underlay,
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            processes: BTreeMap::new(),
            mesh: None,
            wireguard_keys: BTreeMap::new(),
            kept: false,
        };
        bed.wire()?; // on error, `bed` is dropped and tears down what exists
        crate::config::write(&bed)?;
        Ok(bed)
    }

    fn wire(&mut self) -> Result<(), TestbedError> {
        self.underlay
            .ip(&["link", "add", "br0", "type", "bridge"])?;
        self.underlay.ip(&["link", "set", "br0", "up"])?;
        // Hosts outside every pod network on the underlay: the API server and the cloud's
        // metadata server. Like a cloud VPC, the underlay routes each pod network to its node,
        // so they can answer pods that call them from their own IP.
        let api = format!("{API_SERVER}/24");
        self.underlay.ip(&["addr", "add", &api, "dev", "br0"])?;
        let metadata = format!("{METADATA}/32");
        self.underlay
            .ip(&["addr", "add", &metadata, "dev", "br0"])?;
        let plan = self.plan.clone();
        for (i, node) in plan.nodes.iter().enumerate() {
            let ns = Netns::create(&format!("{}-{}", self.prefix, node.name))?;
            self.nodes.insert(node.name.clone(), ns.clone());
            if self.spec.dual_stack {
                ns.enable_ipv6()?;
                ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
            }
            let port = format!("n{i}");
            self.underlay.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                ns.name(),
            ])?;
            self.underlay
                .ip(&["link", "set", &port, "master", "br0", "up"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{}/24", node.address),
                "dev",
                "uplink",
            ])?;
            if let Some(address6) = node.address6 {
                let address6 = format!("{address6}/64");
                ns.ip(&["addr", "add", &address6, "dev", "uplink", "nodad"])?;
            }
            ns.ip(&["link", "set", "uplink", "up"])?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            ns.ip(&["route", "add", &metadata, "dev", "uplink"])?;
            self.underlay.ip(&[
                "route",
                "add",
                &format!("{}/24", node.pod_cidr),
                "via",
                &node.address.to_string(),
            ])?;
            for pod in &node.pods {
                self.wire_pod(&ns, node, pod)?;
            }
            if let Some(mode) = self.spec.kube_proxy {
                self.install_kube_proxy(&ns, node, mode)?;
            }
        }
        if self.spec.pod_routing == PodRouting::Underlay {
            self.route_pod_networks()?;
        }
        Ok(())
    }

    /// Adds on every node a route to each other node's pod network via its underlay address
    /// (what [`PodRouting::Underlay`] does at build time; for a testbed built with
    /// [`PodRouting::None`] once a test wants plaintext routes).
    pub fn route_pod_networks(&self) -> Result<(), TestbedError> {
        for node in &self.plan.nodes {
            let ns = &self.nodes[&node.name];
            for other in self.plan.nodes.iter().filter(|o| o.name != node.name) {
                ns.ip(&[
                    "route",
                    "add",
                    &format!("{}/24", other.pod_cidr),
                    "via",
                    &other.address.to_string(),
                    "dev",
                    "uplink",
                ])?;
                if let (Some(net6), Some(via6)) = (other.pod_cidr6, other.address6) {
                    let (net6, via6) = (format!("{net6}/64"), via6.to_string());
                    ns.ip(&["-6", "route", "add", &net6, "via", &via6, "dev", "uplink"])?;
                }
            }
        }
        Ok(())
    }

    /// Writes kube-proxy's rules for `node` to a file in the testbed directory and loads them,
    /// as kube-proxy does at start.
    fn install_kube_proxy(
        &self,
        ns: &Netns,
        node: &NodePlan,
        mode: KubeProxyMode,
    ) -> Result<(), TestbedError> {
        let (text, file, program, flag) = match mode {
            KubeProxyMode::Iptables => (
                kube_proxy::render_iptables(&self.plan),
                "iptables",
                "iptables-restore",
                "--noflush",
            ),
            KubeProxyMode::Nftables => {
                (kube_proxy::render_nft(&self.plan, node), "nft", "nft", "-f")
            }
        };
        let path = self.dir.join(format!("kube-proxy-{}.{file}", node.name));
        std::fs::write(&path, text).map_err(|source| TestbedError::File {
            path: path.clone(),
            source,
        })?;
        let path = path.to_string_lossy().into_owned();
        ns.exec(&[program, flag, &path]).map(drop)
    }

    fn wire_pod(
        &mut self,
        node_ns: &Netns,
        node: &NodePlan,
        pod: &PodPlan,
    ) -> Result<(), TestbedError> {
        let ns = Netns::create(&format!("{}-{}", self.prefix, pod.name))?;
        self.pods.insert(pod.name.clone(), ns.clone());
        if pod.ip6.is_some() {
            ns.enable_ipv6()?;
        }
        let link = pod.host_link.as_str();
        let gateway = node.gateway.to_string();
        node_ns.ip(&[
            "link",
            "add",
            link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        node_ns.ip(&["addr", "add", &format!("{gateway}/32"), "dev", link])?;
        node_ns.ip(&["link", "set", link, "up"])?;
        node_ns.ip(&["route", "add", &format!("{}/32", pod.ip), "dev", link])?;
        ns.ip(&["addr", "add", &format!("{}/32", pod.ip), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", &gateway, "dev", "eth0", "scope", "link"])?;
        ns.ip(&["route", "add", "default", "via", &gateway, "dev", "eth0"])?;
        if let Some(ip6) = pod.ip6 {
            // As Calico: a link-local gateway on the node side, the pod's /128 on eth0.
            let gateway6 = crate::plan::GATEWAY6.to_string();
            let gw = format!("{gateway6}/64");
            node_ns.ip(&["addr", "add", &gw, "dev", link, "nodad"])?;
            node_ns.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", link])?;
            ns.ip(&["addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"])?;
            ns.ip(&[
                "-6", "route", "add", "default", "via", &gateway6, "dev", "eth0",
            ])?;
        }
        Ok(())
    }

    /// The run's unique name prefix (every namespace name starts with it).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The address plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The spec it was built from.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The directory of its files (config, CA state, logs, flow logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The standalone YAML describing the cluster.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("cluster.yaml")
    }

    /// The underlay's namespace (its bridge `br0` sees every packet between nodes).
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// A node's namespace.
    pub fn node(&self, name: &str) -> Result<&Netns, TestbedError> {
        self.nodes
            .get(name)
            .ok_or_else(|| TestbedError::Spec(format!("no node {name:?}")))
    }

    /// A pod's namespace.
    pub fn pod(&self, name: &str) -> Result<&Netns, TestbedError> {
        self.pods
            .get(name)
            .ok_or_else(|| TestbedError::Spec(format!("no pod {name:?}")))
    }

    /// A pod's IP.
    pub fn pod_ip(&self, name: &str) -> Result<std::net::Ipv4Addr, TestbedError> {
        self.plan
            .pod(name)
            .map(|(_, p)| p.ip)
            .ok_or_else(|| TestbedError::Spec(format!("no pod {name:?}")))
    }

    /// The IPv6 address of pod `name` (a dual-stack testbed).
    pub fn pod_ip6(&self, name: &str) -> Result<std::net::Ipv6Addr, TestbedError> {
        self.plan
            .pod(name)
            .and_then(|(_, p)| p.ip6)
            .ok_or_else(|| TestbedError::Spec(format!("no IPv6 pod {name:?}")))
    }

    /// Leaves everything running when dropped (processes, namespaces, files); [`destroy_all`]
    /// removes it later. Returns the directory of its files.
    pub fn keep(mut self) -> PathBuf {
        self.kept = true;
        for (_, process) in std::mem::take(&mut self.processes) {
            process.detach();
        }
        if let Some(dir) = self.tempdir.take() {
            let _ = dir.keep();
        }
        self.dir.clone()
    }

    /// Kills every process, then deletes every namespace and file. Runs once; dropping the
    /// testbed calls it.
    pub fn teardown(&mut self) -> Result<(), TestbedError> {
        let mut first_error = None;
        let mut processes = std::mem::take(&mut self.processes);
        for process in processes.values_mut() {
            process.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(2));
        }
        drop(processes);
        let namespaces = std::mem::take(&mut self.pods)
            .into_values()
            .chain(std::mem::take(&mut self.nodes).into_values())
            .chain(std::iter::once(self.underlay.clone()));
        for ns in namespaces {
            if netns::list().iter().any(|n| n == ns.name())
                && let Err(e) = ns.destroy()
            {
                first_error.get_or_insert(e);
            }
        }
        drop(self.tempdir.take());
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A test failed: the processes' last words, to see why.
            for (key, process) in &self.processes {
                eprintln!("--- {key} ---\n{}", process.log_tail(20));
            }
        }
        if !self.kept
            && let Err(e) = self.teardown()
        {
            eprintln!("testbed {}: teardown: {e}", self.prefix);
        }
    }
}

/// Root and the tools the testbed runs (`ip`; capture's tools are checked by the proxy).
pub fn check_prerequisites() -> Result<(), TestbedError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(TestbedError::Prerequisite(
            "network namespaces need root (run as root, e.g. with sudo)".into(),
        ));
    }
    nodemesh_redirect::Tool::Ip.locate().map_err(|e| {
        TestbedError::Prerequisite(format!("{e} (scripts/install-deps installs it)"))
    })?;
    Ok(())
}

/// Kills the processes of, and deletes, every testbed namespace whose name starts with
/// `prefix` (`nm` for all of them); returns the names deleted. For leftovers of a run that was
/// killed or kept.
pub fn destroy_all(prefix: &str) -> Result<Vec<String>, TestbedError> {
    let mut deleted = Vec::new();
    let ours = |name: &str| {
        name.starts_with(prefix)
            && name
                .strip_prefix(NAME_PREFIX)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    for name in netns::list().into_iter().filter(|n| ours(n)) {
        Netns::existing(&name).destroy()?;
        deleted.push(name);
    }
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.strip_prefix("nodemesh-").is_some_and(ours) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(deleted)
}
