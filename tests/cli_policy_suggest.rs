//! `nodemesh policy suggest` end to end, issue 15's acceptance test: run the traffic, suggest,
//! apply the suggestion with default-deny, replay the traffic: everything observed still passes,
//! a new flow is refused.
//!
//! No root: the real CA and two real proxies (node-a, node-b) in process, pods on loopback
//! addresses in three namespaces, HBONE between the proxies, flow logs to files. The proxies run
//! in process because without capture a `nodemesh proxy` process cannot learn a connection's
//! original destination (`ProxyHandle::outbound_entry` is the path its 15001 listener takes after
//! accept, see `nodemesh_test_support::mesh`). `nodemesh policy suggest` runs as the binary on the
//! proxies' flow logs, and its output is applied by rewriting the config the proxies reload.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nodemesh_proxy::ProxyHandle;
use nodemesh_proxy::observe::FlowLogTarget;
use nodemesh_proxy::{ProxyOptions, StateSource};
use nodemesh_test_support::ca::{LocalCa, config_line};
use nodemesh_test_support::mesh::{addr, dial, proxy_options, read_all};
use nodemesh_test_support::wait::eventually;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Its own 127.N.0.0/16, apart from the in-process meshes of other test binaries.
const N: u8 = 77;

/// Every pod serves these ports; each answers `<ip>:<port>` and closes.
const PORTS: [u16; 4] = [8080, 9090, 5432, 9187];

/// The mesh: client in `front`, web (two replicas, one per node) and db in `shop`, monitor in
/// `ops`. Pod-unique labels (`pod-template-hash`) differ between the web replicas.
fn base() -> String {
    format!(
        r#"nodes:
  - {{name: node-a, address: 127.{N}.0.1, podCIDR: 127.{N}.1.0/24}}
  - {{name: node-b, address: 127.{N}.0.2, podCIDR: 127.{N}.2.0/24}}
namespaces:
  - {{name: front, labels: {{nodemesh.io/mesh: enabled}}}}
  - {{name: shop, labels: {{nodemesh.io/mesh: enabled}}}}
  - {{name: ops, labels: {{nodemesh.io/mesh: enabled}}}}
workloads:
  - {{name: client-1, namespace: front, serviceAccount: client, ip: 127.{N}.1.11, node: node-a, labels: {{app: client}}}}
  - {{name: web-1, namespace: shop, serviceAccount: web, ip: 127.{N}.1.21, node: node-a, labels: {{app: web, pod-template-hash: aaa}}}}
  - {{name: web-2, namespace: shop, serviceAccount: web, ip: 127.{N}.2.22, node: node-b, labels: {{app: web, pod-template-hash: bbb}}}}
  - {{name: db-1, namespace: shop, serviceAccount: db, ip: 127.{N}.2.31, node: node-b, labels: {{app: db}}}}
  - {{name: monitor-1, namespace: ops, serviceAccount: monitor, ip: 127.{N}.2.41, node: node-b, labels: {{app: monitor}}}}
"#
    )
}

const CLIENT: &str = "1.11";
const WEB_1: &str = "1.21";
const WEB_2: &str = "2.22";
const DB: &str = "2.31";
const MONITOR: &str = "2.41";

/// The demo traffic: source pod, destination pod, port.
const OBSERVED: [(&str, &str, u16); 7] = [
    (CLIENT, WEB_1, 8080),  // cross-namespace, same node
    (CLIENT, WEB_2, 8080),  // cross-namespace, across nodes
    (WEB_1, DB, 5432),      // same namespace, across nodes
    (WEB_2, DB, 5432),      // same namespace, same node
    (MONITOR, WEB_1, 9090), // ops scrapes web and db
    (MONITOR, DB, 9187),
    (MONITOR, CLIENT, 9090), // and client, so `front` gets a policy too
];

/// Flows never observed: a pair never seen, an observed pair on another port, the reverse of
/// an observed flow, and between replicas of one group.
const NEW: [(&str, &str, u16); 4] = [
    (CLIENT, DB, 5432),
    (MONITOR, WEB_1, 8080),
    (WEB_1, CLIENT, 8080),
    (WEB_1, WEB_2, 8080),
];

fn ip(host: &str) -> String {
    format!("127.{N}.{host}")
}

fn node_of(host: &str) -> &'static str {
    if host.starts_with("1.") {
        "node-a"
    } else {
        "node-b"
    }
}

/// Every port of [`PORTS`] on `ip`, answering `<ip>:<port>`.
async fn start_pod(ip: &str) {
    for port in PORTS {
        let listener = TcpListener::bind((ip, port)).await.unwrap();
        let answer = format!("{ip}:{port}");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
    }
}

struct Mesh {
    dir: tempfile::TempDir,
    config: PathBuf,
    ca_section: String,
    a: ProxyHandle,
    b: ProxyHandle,
    _ca: nodemesh_ca::RunningCa,
}

impl Mesh {
    async fn start() -> Mesh {
        let files = LocalCa::new(&base(), &["node-a", "node-b"]);
        let ca = files.start().await;
        let ca_section = config_line(&ca);
        let LocalCa { dir, config, .. } = files;
        std::fs::write(&config, format!("{ca_section}{}", base())).unwrap();
        for pod in [CLIENT, WEB_1, WEB_2, DB, MONITOR] {
            start_pod(&ip(pod)).await;
        }
        let options = |node: &str, pods: &[&str]| ProxyOptions {
            inbound_addr: "0.0.0.0:15008".parse().unwrap(),
            inbound_plaintext_addr: "0.0.0.0:15006".parse().unwrap(),
            inbound_binds: pods.iter().map(|p| ip(p).parse().unwrap()).collect(),
            flow_log: FlowLogTarget::File(dir.path().join(format!("flows-{node}.jsonl"))),
            ..proxy_options(StateSource::File(config.clone()), node)
        };
        let a = ProxyHandle::start(options("node-a", &[CLIENT, WEB_1]))
            .await
            .unwrap();
        let b = ProxyHandle::start(options("node-b", &[WEB_2, DB, MONITOR]))
            .await
            .unwrap();
        for p in [&a, &b] {
            let mut ready = p.ready();
            tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
                .await
                .unwrap()
                .unwrap();
        }
        Mesh {
            dir,
            config,
            ca_section,
            a,
            b,
            _ca: ca,
        }
    }

    fn proxy(&self, node: &str) -> &ProxyHandle {
        if node == "node-a" { &self.a } else { &self.b }
    }

    fn flow_log(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("flows-{node}.jsonl"))
    }

    /// Every line of both flow logs.
    fn flows(&self) -> Vec<Value> {
        ["node-a", "node-b"]
            .iter()
            .flat_map(|n| read_lines(&self.flow_log(n)))
            .collect()
    }

    /// Opens `src` → `dst:port` through the source node's proxy; what the server answered
    /// (empty when refused).
    async fn call(&self, (src, dst, port): (&str, &str, u16)) -> String {
        let target: SocketAddr = addr(&ip(dst), port);
        let stream = dial(self.proxy(node_of(src)), &ip(src), target).await;
        String::from_utf8(read_all(stream).await).unwrap()
    }

    /// Rewrites the config with these NetworkPolicies and AuthorizationPolicies (JSON is YAML),
    /// then waits until both proxies run it with every policy compiled.
    async fn apply(&self, network: &[Value], authorization: &[Value]) {
        let list = |docs: &[Value]| {
            let items: Vec<String> = docs.iter().map(|d| format!("  - {d}\n")).collect();
            items.concat()
        };
        let mut yaml = format!("{}{}", self.ca_section, base());
        if !network.is_empty() {
            yaml.push_str(&format!("networkPolicies:\n{}", list(network)));
        }
        if !authorization.is_empty() {
            yaml.push_str(&format!("policies:\n{}", list(authorization)));
        }
        std::fs::write(&self.config, yaml).unwrap();
        for p in [&self.a, &self.b] {
            eventually("the proxy runs the new policies", || {
                let state = p.store().load();
                let config = state.config();
                config.network_policies().len() == network.len()
                    && config.policies().len() == authorization.len()
            })
            .await;
            let state = p.store().load();
            assert!(
                state.policy_problems().is_empty(),
                "{:?}",
                state.policy_problems()
            );
        }
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Whether a flow-log line is `src` → `dst:port`.
fn is_flow(line: &Value, (src, dst, port): (&str, &str, u16)) -> bool {
    line["src"]["ip"] == ip(src).as_str()
        && line["dst"]["ip"] == ip(dst).as_str()
        && line["dst"]["port"] == port
}

/// Waits until some flow-log line says `flow` was denied (verdict `deny`) for one of `reasons`
/// (`network_policy`, `policy`).
async fn expect_denied_in_log(mesh: &Mesh, flow: (&str, &str, u16), reasons: &[&str]) {
    let denied = |l: &Value| {
        is_flow(l, flow) && l["verdict"] == "deny" && reasons.iter().any(|r| l["reason"] == *r)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !mesh.flows().iter().any(denied) {
        let lines: Vec<Value> = mesh
            .flows()
            .into_iter()
            .filter(|l| is_flow(l, flow))
            .collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no flow-log line denies {flow:?}: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `nodemesh policy suggest` and returns its documents.
fn suggest(config: &Path, flow_logs: &[PathBuf]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_nodemesh"))
        .args(["policy", "suggest", "--config"])
        .arg(config)
        .args(["--default-deny", "--kind", "both"])
        .args(flow_logs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn name(doc: &Value) -> String {
    format!(
        "{} {}/{}",
        doc["kind"].as_str().unwrap(),
        doc["metadata"]["namespace"].as_str().unwrap(),
        doc["metadata"]["name"].as_str().unwrap()
    )
}

/// The acceptance test: the observed traffic passes with no policy; with only the suggested
/// default-denies it is refused (the enforcement is real, an empty suggestion would fail the
/// replay); with the whole suggestion applied it passes again, and flows never observed are
/// refused, the flow log saying by which kind of policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suggested_policies_admit_exactly_the_observed_traffic() {
    let mesh = Mesh::start().await;

    // The demo traffic, with no policy: everything passes.
    for flow in OBSERVED {
        let (_, dst, port) = flow;
        assert_eq!(
            mesh.call(flow).await,
            format!("{}:{port}", ip(dst)),
            "{flow:?}"
        );
    }
    eventually("every observed flow in the flow logs", || {
        let flows = mesh.flows();
        OBSERVED.iter().all(|f| {
            flows
                .iter()
                .any(|l| is_flow(l, *f) && l["verdict"] == "allow")
        })
    })
    .await;

    let logs = [mesh.flow_log("node-a"), mesh.flow_log("node-b")];
    let docs = suggest(&mesh.config, &logs);
    let names: Vec<String> = docs.iter().map(name).collect();
    for want in [
        "NetworkPolicy front/client-ingress-suggested",
        "NetworkPolicy shop/web-ingress-suggested",
        "NetworkPolicy shop/db-ingress-suggested",
        "AuthorizationPolicy front/client-ingress-suggested",
        "AuthorizationPolicy shop/web-ingress-suggested",
        "AuthorizationPolicy shop/db-ingress-suggested",
        "NetworkPolicy front/default-deny-suggested",
        "NetworkPolicy shop/default-deny-suggested",
    ] {
        assert!(names.iter().any(|n| n == want), "no {want}: {names:?}");
    }
    let (network, authorization): (Vec<Value>, Vec<Value>) =
        docs.into_iter().partition(|d| d["kind"] == "NetworkPolicy");
    let default_deny: Vec<Value> = network
        .iter()
        .filter(|d| d["metadata"]["name"] == "default-deny-suggested")
        .cloned()
        .collect();

    // Only the default-denies: the observed traffic is refused, by a NetworkPolicy.
    mesh.apply(&default_deny, &[]).await;
    for flow in OBSERVED {
        assert_eq!(mesh.call(flow).await, "", "{flow:?} passed a default-deny");
        expect_denied_in_log(&mesh, flow, &["network_policy"]).await;
    }

    // The whole suggestion: the observed traffic passes again, new flows are refused.
    mesh.apply(&network, &authorization).await;
    for flow in OBSERVED {
        let (_, dst, port) = flow;
        assert_eq!(
            mesh.call(flow).await,
            format!("{}:{port}", ip(dst)),
            "{flow:?}"
        );
    }
    for flow in NEW {
        assert_eq!(mesh.call(flow).await, "", "{flow:?} was never observed");
        expect_denied_in_log(&mesh, flow, &["network_policy", "policy"]).await;
    }
}
