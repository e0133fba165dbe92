//! [`Mesh`]: an in-process mesh: the real CA over gRPC+TLS, two real proxies (node-a, node-b),
//! pods as loopback addresses served by echo, name and HTTP servers. Each proxy's inbound listeners
//! are bound on its own pods' addresses, so the accepted local address is the pod's IP, as under
//! TPROXY. Outbound connections enter through `ProxyHandle::outbound_entry` ([`dial`]), the path
//! the 15001 listener takes after accept.

mod pods;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use nodemesh_ca::{LifetimePolicy, RunningCa};
use nodemesh_identity::Backoff;
use nodemesh_proxy::observe::FlowLogTarget;
use nodemesh_proxy::{ProxyHandle, ProxyOptions, StateSource};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub use pods::{ECHO, HTTP, NAME, addr, echo_roundtrip, read_all, start_pod};

use crate::ca::{LocalCa, config_line, node_token};

/// Each mesh gets its own 127.N.0.0/16 so tests in one binary can run in parallel.
static NEXT_NET: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(10);

/// The standalone YAML of a mesh in 127.N.0.0/16 (without `ca` and policies).
pub fn base(n: u8) -> String {
    format!(
        r#"
nodes:
  - {{name: node-a, address: 127.{n}.0.1, podCIDR: 127.{n}.1.0/24}}
  - {{name: node-b, address: 127.{n}.0.2, podCIDR: 127.{n}.2.0/24}}
namespaces:
  - {{name: shop, labels: {{nodemesh.io/mesh: enabled}}}}
workloads:
  - {{name: web-1, namespace: shop, serviceAccount: web, ip: 127.{n}.1.11, node: node-a, labels: {{app: web}}}}
  - {{name: local-1, namespace: shop, serviceAccount: local, ip: 127.{n}.1.12, node: node-a, labels: {{app: local}}}}
  - {{name: db-1, namespace: shop, serviceAccount: db, ip: 127.{n}.2.21, node: node-b, labels: {{app: db}}}}
  - {{name: db-2, namespace: shop, serviceAccount: db, ip: 127.{n}.2.22, node: node-b, labels: {{app: db}}}}
services:
  - {{name: db, namespace: shop, vip: 127.{n}.3.10, ports: [{{port: 80, targetPort: 9090}}], selector: {{app: db}}}}
  - {{name: nothing, namespace: shop, vip: 127.{n}.3.11, ports: [{{port: 80}}], selector: {{app: none}}}}
"#
    )
}

/// A running mesh; its proxies and CA stop when it is dropped.
pub struct Mesh {
    /// Its network: 127.N.0.0/16.
    pub n: u8,
    /// The directory of its files (config, tokens, CA state).
    pub dir: tempfile::TempDir,
    /// The standalone YAML both proxies and the CA read.
    pub config: PathBuf,
    /// The CA, until [`Mesh::stop_ca`].
    pub ca: Option<RunningCa>,
    /// node-a's proxy (web-1 at `1.11`, local-1 at `1.12`).
    pub a: ProxyHandle,
    /// node-b's proxy (db-1 at `2.21`, db-2 at `2.22`).
    pub b: ProxyHandle,
    /// The config's `ca:` line.
    pub ca_section: String,
}

/// Options of node `node`'s proxy fed by `source`: every listener on an ephemeral loopback
/// port, no inbound binds, no flow log, no capture or socket marks, the node's
/// [`node_token`], reloads every 100 ms and a short CA backoff.
pub fn proxy_options(source: StateSource, node: &str) -> ProxyOptions {
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ProxyOptions {
        source,
        node: node.into(),
        ca_token: node_token(node),
        ca_token_file: None,
        outbound_addr: loopback,
        inbound_addr: loopback,
        inbound_plaintext_addr: loopback,
        flow_log: FlowLogTarget::Off,
        transparent: false,
        mark_sockets: false,
        reload_interval: Duration::from_millis(100),
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        ..ProxyOptions::default()
    }
}

/// The mesh's options for `node`: [`proxy_options`] from the config file, HBONE on
/// `0.0.0.0:15008` and plaintext on `0.0.0.0:15006`, bound on the addresses `binds`.
fn mesh_proxy_options(config: &std::path::Path, node: &str, binds: &[&str]) -> ProxyOptions {
    ProxyOptions {
        inbound_addr: "0.0.0.0:15008".parse().unwrap(),
        inbound_plaintext_addr: "0.0.0.0:15006".parse().unwrap(),
        inbound_binds: binds.iter().map(|b| b.parse().unwrap()).collect(),
        ..proxy_options(StateSource::File(config.to_path_buf()), node)
    }
}

impl Mesh {
    /// Starts the CA, both proxies and the pods; waits until both proxies are ready.
    pub async fn start(policies: &str) -> Mesh {
        Self::start_with(policies, |_| {}).await
    }

    /// Like [`Mesh::start`], with `tweak` applied to both proxies' options.
    pub async fn start_with(policies: &str, tweak: impl Fn(&mut ProxyOptions)) -> Mesh {
        Self::start_full(policies, LifetimePolicy::default(), tweak).await
    }

    /// Like [`Mesh::start_with`], with the CA issuing certificates per `lifetimes`.
    pub async fn start_full(
        policies: &str,
        lifetimes: LifetimePolicy,
        tweak: impl Fn(&mut ProxyOptions),
    ) -> Mesh {
        let n = NEXT_NET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut files = LocalCa::new(&format!("{}{policies}", base(n)), &["node-a", "node-b"]);
        files.opts.lifetimes = lifetimes;
        let ca = files.start().await;
        let LocalCa { dir, config, .. } = files;
        let ca_section = config_line(&ca);
        std::fs::write(&config, format!("{ca_section}{}{policies}", base(n))).unwrap();
        let ip = |host: &str| format!("127.{n}.{host}");
        for pod in ["1.11", "1.12", "2.21", "2.22"] {
            start_pod(&ip(pod)).await;
        }
        let mut oa = mesh_proxy_options(&config, "node-a", &[&ip("1.11"), &ip("1.12")]);
        let mut ob = mesh_proxy_options(&config, "node-b", &[&ip("2.21"), &ip("2.22")]);
        tweak(&mut oa);
        tweak(&mut ob);
        let a = ProxyHandle::start(oa).await.unwrap();
        let b = ProxyHandle::start(ob).await.unwrap();
        for p in [&a, &b] {
            let mut ready = p.ready();
            tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
                .await
                .unwrap()
                .unwrap();
        }
        Mesh {
            n,
            dir,
            config,
            ca: Some(ca),
            a,
            b,
            ca_section,
        }
    }

    /// Stops the CA; returns the address it served on.
    pub async fn stop_ca(&mut self) -> SocketAddr {
        let ca = self.ca.take().unwrap();
        let addr = ca.grpc_addr;
        ca.shutdown().await;
        addr
    }

    /// `127.N.<host>`, e.g. `mesh.ip("1.11")`.
    pub fn ip(&self, host: &str) -> String {
        format!("127.{}.{host}", self.n)
    }

    /// web-1 on node-a.
    pub fn web(&self) -> String {
        self.ip("1.11")
    }

    /// `ip:port` of a host in this mesh.
    pub fn addr(&self, host: &str, port: u16) -> SocketAddr {
        addr(&self.ip(host), port)
    }

    /// Rewrites the config's policies (the CA section and the base stay).
    pub fn write_policies(&self, policies: &str) {
        std::fs::write(
            &self.config,
            format!("{}{}{policies}", self.ca_section, base(self.n)),
        )
        .unwrap();
    }
}

/// Opens a connection "from pod `src`" to `dst` through `proxy`'s outbound path.
pub async fn dial(proxy: &ProxyHandle, src: &str, dst: SocketAddr) -> TcpStream {
    let capture = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let client = socket.connect(capture.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = capture.accept().await.unwrap();
    proxy.outbound_entry(accepted, dst);
    client
}

/// Opens `n` connections from pod `src` through `proxy` to `dst`, each carrying one byte, and
/// returns them once `arrived` has reported each byte read by the server (the connections are
/// then idle, end to end).
pub async fn open_idle(
    proxy: &ProxyHandle,
    src: &str,
    dst: SocketAddr,
    arrived: &mut tokio::sync::mpsc::Receiver<()>,
    n: usize,
) -> Vec<TcpStream> {
    use tokio::io::AsyncWriteExt as _;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = dial(proxy, src, dst).await;
        s.write_all(b"x").await.unwrap();
        held.push(s);
    }
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(10), arrived.recv())
            .await
            .expect("every connection reaches the server")
            .unwrap();
    }
    held
}
