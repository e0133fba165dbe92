//! An in-process mesh: the real CA over gRPC+TLS, two real proxies (node-a, node-b), pods as
//! loopback addresses served by echo servers. Each proxy's inbound listeners are bound on its own
//! pods' addresses, so the accepted local address is the pod's IP, as under TPROXY. Outbound
//! connections enter through `ProxyHandle::outbound_entry`, the path the 15001 listener takes
//! after accept.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nodemesh_ca::{LifetimePolicy, RootSource, RunningCa, ServeOptions};
use nodemesh_identity::{Backoff, SystemClock};
use nodemesh_proxy::observe::FlowLogTarget;
use nodemesh_proxy::{ProxyHandle, ProxyOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub const ECHO: u16 = 8080;
pub const NAME: u16 = 9090;
pub const HTTP: u16 = 8081;

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

pub struct Mesh {
    pub n: u8,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub ca: Option<RunningCa>,
    pub a: ProxyHandle,
    pub b: ProxyHandle,
    pub ca_section: String,
}

/// A keep-alive HTTP/1.1 server on :8081 that answers every request `200` with its path.
async fn start_http(ip: &str) {
    let http = TcpListener::bind((ip, HTTP)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = http.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut s = tokio::io::BufReader::new(s);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        use tokio::io::AsyncBufReadExt;
                        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
                        path.len()
                    );
                    if s.get_mut().write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Echo on :8080 (half-close aware), name on :9090 (writes the pod IP, then closes), HTTP on :8081.
pub async fn start_pod(ip: &str) {
    start_http(ip).await;
    let echo = TcpListener::bind((ip, ECHO)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = echo.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let name = TcpListener::bind((ip, NAME)).await.unwrap();
    let ip = ip.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = name.accept().await else {
                return;
            };
            let ip = ip.clone();
            tokio::spawn(async move {
                let _ = s.write_all(ip.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

pub fn proxy_options(config: &std::path::Path, node: &str, binds: &[&str]) -> ProxyOptions {
    ProxyOptions {
        source: nodemesh_proxy::StateSource::File(config.to_path_buf()),
        node: node.into(),
        ca_token: format!("token-of-{node}-0123456789"),
        ca_token_file: None,
        outbound_addr: "127.0.0.1:0".parse().unwrap(),
        inbound_addr: "0.0.0.0:15008".parse().unwrap(),
        inbound_plaintext_addr: "0.0.0.0:15006".parse().unwrap(),
        inbound_binds: binds.iter().map(|b| b.parse().unwrap()).collect(),
        hbone_port: 15008,
        drain_timeout: Duration::from_secs(5),
        flow_log: FlowLogTarget::Off,
        preserve_source_ip: false,
        transparent: false,
        mark_sockets: false,
        reload_interval: Duration::from_millis(100),
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        },
        l7_limits: Default::default(),
    }
}

impl Mesh {
    /// Starts the CA, both proxies and the pods; waits until both proxies are ready.
    pub async fn start(policies: &str) -> Mesh {
        Self::start_with(policies, |_| {}).await
    }

    pub async fn start_with(policies: &str, tweak: impl Fn(&mut ProxyOptions)) -> Mesh {
        Self::start_full(policies, LifetimePolicy::default(), tweak).await
    }

    /// Like [`Mesh::start_with`], with the CA issuing certificates per `lifetimes`.
    pub async fn start_full(
        policies: &str,
        lifetimes: LifetimePolicy,
        tweak: impl Fn(&mut ProxyOptions),
    ) -> Mesh {
        nodemesh_identity::install_default_provider();
        let n = NEXT_NET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mesh.yaml");
        std::fs::write(&config, format!("{}{policies}", base(n))).unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            "token-of-node-a-0123456789 node-a\ntoken-of-node-b-0123456789 node-b\n",
        )
        .unwrap();
        let ca = nodemesh_ca::start(
            ServeOptions {
                root: RootSource::state_dir(dir.path().join("ca")),
                callers: nodemesh_ca::Callers::Files {
                    config_file: config.to_path_buf(),
                    tokens_file: tokens,
                },
                grpc_listen: "127.0.0.1:0".parse().unwrap(),
                http_listen: "127.0.0.1:0".parse().unwrap(),
                serving_names: vec!["127.0.0.1".into()],
                lifetimes,
                reload_interval: Duration::from_millis(100),
            },
            Arc::new(SystemClock),
        )
        .await
        .unwrap();
        let ca_section = format!(
            "ca: {{address: \"https://127.0.0.1:{}\", rootCert: ca/trust-bundle.pem}}\n",
            ca.grpc_addr.port()
        );
        std::fs::write(&config, format!("{ca_section}{}{policies}", base(n))).unwrap();
        let ip = |host: &str| format!("127.{n}.{host}");
        for pod in ["1.11", "1.12", "2.21", "2.22"] {
            start_pod(&ip(pod)).await;
        }
        let mut oa = proxy_options(&config, "node-a", &[&ip("1.11"), &ip("1.12")]);
        let mut ob = proxy_options(&config, "node-b", &[&ip("2.21"), &ip("2.22")]);
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

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Sends `data`, half-closes, and reads everything back.
pub async fn echo_roundtrip(mut s: TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut out = Vec::with_capacity(data.len());
    let read = r.read_to_end(&mut out);
    let (_, n) = tokio::join!(write, read);
    n.unwrap();
    out
}

/// Reads until EOF; returns what came (empty when the proxy refused).
pub async fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}
