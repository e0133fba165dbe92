//! The mesh on a testbed: the CA on the first node, one proxy per node with capture
//! (`--manage-redirect`), the pods' apps — all real processes of the `nodemesh` binary, started
//! inside their namespaces and awaited on their readiness ports (never on the capture port).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nodemesh_redirect::Backend;

use crate::apps;
use crate::cluster::Testbed;
use crate::config::ca_node;
use crate::error::TestbedError;
use crate::netns::{Netns, run};
use crate::plan::{API_SERVER, API_SERVER_PORT, METADATA};
use crate::process::Process;

/// The proxies' readiness port.
pub const READINESS_PORT: u16 = 15021;
/// The CA's HTTP port.
pub const CA_HTTP_PORT: u16 = 15014;
/// The port of every node's hostNetwork server (a node exporter, say), on the node's address.
pub const HOST_NETWORK_PORT: u16 = 9100;

/// How to run the mesh.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// The `nodemesh` binary.
    pub binary: PathBuf,
    /// Capture backend of every proxy.
    pub backend: Backend,
    /// Proxies connect to pods from the client's IP.
    pub preserve_source_ip: bool,
    /// Data-plane threads per proxy.
    pub worker_threads: usize,
    /// Run the proxies with only `CAP_NET_ADMIN` and `CAP_NET_RAW` (`setpriv --bounding-set`),
    /// as the Helm chart's DaemonSet does.
    pub only_net_caps: bool,
    /// Run WireGuard between the nodes inside the proxies (`--wireguard`); each node's key is
    /// created in its state directory and published in the config.
    pub wireguard: bool,
    /// Feed the proxies from the Kubernetes API this kubeconfig points at (`--source
    /// kubernetes`) instead of the testbed's YAML; the CA still reads the YAML.
    pub kubeconfig: Option<PathBuf>,
}

impl MeshOptions {
    /// Defaults: iptables, no source-IP preservation, one worker thread per proxy.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            backend: Backend::Iptables,
            preserve_source_ip: false,
            worker_threads: 1,
            only_net_caps: false,
            wireguard: false,
            kubeconfig: None,
        }
    }
}

impl Testbed {
    /// Starts the pods' apps, the CA and every proxy, and waits until all are ready.
    pub fn start_mesh(&mut self, opts: &MeshOptions) -> Result<(), TestbedError> {
        self.mesh = Some(opts.clone());
        self.start_apps(&opts.binary)?;
        if opts.wireguard {
            self.create_wireguard_keys(&opts.binary)?;
        }
        self.start_ca(&opts.binary)?;
        let nodes: Vec<String> = self.plan.nodes.iter().map(|n| n.name.clone()).collect();
        for node in &nodes {
            self.spawn_proxy(node, opts)?;
        }
        for node in &nodes {
            self.await_proxy(node)?;
        }
        Ok(())
    }

    /// Starts every pod's app (`nodemesh testbed-app`) and waits until each accepts.
    pub fn start_apps(&mut self, binary: &std::path::Path) -> Result<(), TestbedError> {
        let pods: Vec<(String, Netns)> = self
            .pods
            .iter()
            .map(|(n, ns)| (n.clone(), ns.clone()))
            .collect();
        for (name, ns) in &pods {
            let mut cmd = ns.command(binary);
            cmd.args(["testbed-app", "--name", name]);
            let log = self.dir.join(format!("app-{name}.log"));
            let process = Process::start(&format!("app {name}"), cmd, &log)?;
            self.processes.insert(format!("app/{name}"), process);
        }
        for (name, ns) in &pods {
            self.await_ready(&format!("app/{name}"), ns, apps::HTTP_PORT, None)?;
        }
        self.start_hosts(binary)
    }

    /// Starts the servers that are not pods: on the underlay the API server
    /// ([`API_SERVER`]:[`API_SERVER_PORT`]) and the cloud's metadata server ([`METADATA`]:80),
    /// on every node a hostNetwork server (node address:[`HOST_NETWORK_PORT`]); each is the
    /// testbed app, which answers with the peer address it sees.
    fn start_hosts(&mut self, binary: &std::path::Path) -> Result<(), TestbedError> {
        let mut hosts = vec![
            (
                "apiserver".to_owned(),
                self.underlay.clone(),
                SocketAddr::from((API_SERVER, API_SERVER_PORT)),
            ),
            (
                "metadata".to_owned(),
                self.underlay.clone(),
                SocketAddr::from((METADATA, 80)),
            ),
        ];
        for node in &self.plan.nodes {
            let ns = &self.nodes[&node.name];
            hosts.push((
                format!("hostnet-{}", node.name),
                ns.clone(),
                SocketAddr::from((node.address, HOST_NETWORK_PORT)),
            ));
        }
        for (name, ns, http) in &hosts {
            let echo = SocketAddr::new(http.ip(), apps::ECHO_PORT);
            let mut cmd = ns.command(binary);
            cmd.args(["testbed-app", "--name", name])
                .arg("--http")
                .arg(http.to_string())
                .arg("--echo")
                .arg(echo.to_string());
            let log = self.dir.join(format!("{name}.log"));
            let process = Process::start(name, cmd, &log)?;
            self.processes.insert(format!("host/{name}"), process);
        }
        for (name, ns, http) in &hosts {
            self.await_ready_at(&format!("host/{name}"), ns, *http, None)?;
        }
        Ok(())
    }

    /// Creates the CA's root and node tokens, starts `nodemesh ca serve` on the first node and
    /// waits for its `/healthz/ready`.
    pub fn start_ca(&mut self, binary: &std::path::Path) -> Result<(), TestbedError> {
        let state = self.dir.join("ca");
        run(std::process::Command::new(binary)
            .args(["ca", "init", "--state-dir"])
            .arg(&state))?;
        let tokens: Vec<(String, String)> = self
            .plan
            .nodes
            .iter()
            .map(|n| Ok((n.name.clone(), random_token()?)))
            .collect::<Result<_, TestbedError>>()?;
        let tokens_text: String = tokens.iter().map(|(n, t)| format!("{t} {n}\n")).collect();
        let tokens_file = self.dir.join("ca-tokens");
        write_private(&tokens_file, &tokens_text)?;
        for (node, token) in &tokens {
            let dir = self.dir.join(node);
            std::fs::create_dir_all(&dir).map_err(|source| TestbedError::File {
                path: dir.clone(),
                source,
            })?;
            write_private(&dir.join("ca-token"), &format!("{token}\n"))?;
        }
        let host = ca_node(&self.plan);
        let ns = self.nodes[&host.name].clone();
        let mut cmd = ns.command(binary);
        cmd.arg("ca")
            .arg("serve")
            .arg("--config")
            .arg(self.config_file())
            .arg("--tokens")
            .arg(&tokens_file)
            .arg("--state-dir")
            .arg(&state)
            .arg("--serving-names")
            .arg(host.address.to_string());
        let process = Process::start("ca", cmd, &self.dir.join("ca.log"))?;
        self.processes.insert("ca".into(), process);
        self.await_ready("ca", &ns, CA_HTTP_PORT, Some("/healthz/ready"))
    }

    /// Starts the proxy of `node` and waits until it is ready.
    pub fn start_proxy(&mut self, node: &str, opts: &MeshOptions) -> Result<(), TestbedError> {
        self.spawn_proxy(node, opts)?;
        self.await_proxy(node)
    }

    /// Creates each node's WireGuard key (`nodemesh wireguard pubkey`) and writes the public keys
    /// into the config.
    pub fn create_wireguard_keys(&mut self, binary: &std::path::Path) -> Result<(), TestbedError> {
        for node in self.plan.nodes.clone() {
            let dir = self.dir.join(&node.name);
            let key = run(std::process::Command::new(binary)
                .args(["wireguard", "pubkey", "--state-dir"])
                .arg(&dir))?;
            self.wireguard_keys.insert(node.name, key.trim().to_owned());
        }
        crate::config::write(self)
    }

    /// Starts `node`'s proxy again with the options of [`Testbed::start_mesh`].
    pub fn restart_proxy(&mut self, node: &str) -> Result<(), TestbedError> {
        let opts = self
            .mesh
            .clone()
            .ok_or_else(|| TestbedError::Spec("the mesh was never started".into()))?;
        self.start_proxy(node, &opts)
    }

    /// Upgrades `node`'s proxy in place: starts a second one with the options of
    /// [`Testbed::start_mesh`] plus `extra` arguments while the first runs, and waits until it
    /// says it took over the first one's sockets (`nodemesh proxy`'s handoff). The running one
    /// is then the process `proxy/<node>/old` (an earlier old one is stopped), the new one
    /// `proxy/<node>`.
    pub fn upgrade_proxy(&mut self, node: &str, extra: &[&str]) -> Result<(), TestbedError> {
        self.upgrade_proxy_until(node, extra, "took over")
    }

    /// [`Testbed::upgrade_proxy`], waiting only until the new proxy's log shows `needle`.
    pub fn upgrade_proxy_until(
        &mut self,
        node: &str,
        extra: &[&str],
        needle: &str,
    ) -> Result<(), TestbedError> {
        let opts = self
            .mesh
            .clone()
            .ok_or_else(|| TestbedError::Spec("the mesh was never started".into()))?;
        let key = format!("proxy/{node}");
        let old = self
            .processes
            .remove(&key)
            .ok_or_else(|| TestbedError::Spec(format!("no process {key:?} running")))?;
        self.processes.insert(format!("{key}/old"), old);
        self.spawn_proxy_with(node, &opts, extra)?;
        self.await_log(&key, needle)
    }

    /// Waits up to `timeout` for process `key` to exit; whether it did.
    pub fn await_exit(&mut self, key: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if !self.is_running(key) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn spawn_proxy(&mut self, node: &str, opts: &MeshOptions) -> Result<(), TestbedError> {
        self.spawn_proxy_with(node, opts, &[])
    }

    fn spawn_proxy_with(
        &mut self,
        node: &str,
        opts: &MeshOptions,
        extra: &[&str],
    ) -> Result<(), TestbedError> {
        let ns = self.node(node)?.clone();
        let dir = self.dir.join(node);
        let mut cmd = if opts.only_net_caps {
            let mut cmd = ns.command("setpriv");
            cmd.args([
                "--bounding-set",
                "-all,+net_admin,+net_raw",
                "--inh-caps",
                "-all",
                "--",
            ])
            .arg(&opts.binary);
            cmd
        } else {
            ns.command(&opts.binary)
        };
        cmd.arg("proxy");
        match &opts.kubeconfig {
            None => {
                cmd.arg("--config").arg(self.config_file());
            }
            Some(kubeconfig) => {
                let (ca_ip, ca_port) = crate::config::ca_address(&self.plan);
                cmd.args(["--source", "kubernetes"])
                    .args(["--ca-address", &format!("https://{ca_ip}:{ca_port}")])
                    .arg("--trust-bundle")
                    .arg(self.dir.join("ca").join("trust-bundle.pem"))
                    .env("KUBECONFIG", kubeconfig)
                    .env_remove("KUBERNETES_SERVICE_HOST");
            }
        }
        cmd.args(["--node", node])
            .arg("--state-dir")
            .arg(&dir)
            .arg("--flow-log")
            .arg(self.flow_log_path(node))
            .arg("--manage-redirect")
            .args(["--capture-backend", &opts.backend.to_string()])
            .args(["--worker-threads", &opts.worker_threads.to_string()])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        if opts.preserve_source_ip {
            cmd.arg("--preserve-source-ip");
        }
        if opts.wireguard {
            cmd.arg("--wireguard");
        }
        cmd.args(extra);
        let process = Process::start(
            &format!("proxy {node}"),
            cmd,
            &self.dir.join(format!("proxy-{node}.log")),
        )?;
        self.processes.insert(format!("proxy/{node}"), process);
        Ok(())
    }

    fn await_proxy(&mut self, node: &str) -> Result<(), TestbedError> {
        let ns = self.node(node)?.clone();
        self.await_ready(
            &format!("proxy/{node}"),
            &ns,
            READINESS_PORT,
            Some("/healthz/ready"),
        )
    }

    /// Stops the proxy of `node` with `signal` (SIGTERM drains; SIGKILL is a crash) and returns
    /// how it ended. Its capture rules stay.
    pub fn stop_proxy(&mut self, node: &str, signal: Signal) -> Result<String, TestbedError> {
        self.stop_process(&format!("proxy/{node}"), signal)
    }

    /// The flow log file of `node`'s proxy.
    pub fn flow_log_path(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("flows.jsonl")
    }

    /// The flow records `node`'s proxy has written so far.
    pub fn flow_log(&self, node: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.flow_log_path(node))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `127.0.0.1:port` in `ns` accepts (and, with `path`, answers 200), failing
    /// early if the process exits.
    fn await_ready(
        &mut self,
        process: &str,
        ns: &Netns,
        port: u16,
        path: Option<&'static str>,
    ) -> Result<(), TestbedError> {
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        self.await_ready_at(process, ns, target, path)
    }

    fn await_ready_at(
        &mut self,
        process: &str,
        ns: &Netns,
        target: std::net::SocketAddr,
        path: Option<&'static str>,
    ) -> Result<(), TestbedError> {
        let start = Instant::now();
        loop {
            let ready = ns.block_on(async move {
                match path {
                    None => tokio::net::TcpStream::connect(target).await.is_ok(),
                    Some(path) => {
                        apps::http(target, "GET", path, Vec::new(), Duration::from_secs(2))
                            .await
                            .is_ok_and(|r| r.status == 200)
                    }
                }
            })?;
            if ready {
                return Ok(());
            }
            if let Some(e) = self.gave_up(process, start) {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), TestbedError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| TestbedError::File {
            path: path.to_owned(),
            source,
        })
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> Result<String, TestbedError> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| TestbedError::File {
            path: "/dev/urandom".into(),
            source,
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
