//! `nodemesh ca serve --source kubernetes` and `nodemesh proxy --source kubernetes` as
//! processes, against the in-repo fake API server of `kube/tests/support` (reached through a
//! kubeconfig): the CA creates its root Secret and bundle ConfigMap, the proxy publishes its
//! WireGuard key on its Node, syncs, gets its pod's certificate through TokenReview and
//! becomes ready.
#![allow(clippy::unwrap_used)]

#[path = "../kube/tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::fake_api::FakeApi;
use support::objects::*;

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Reads lines from `from` until one contains `marker`; keeps draining afterwards.
fn line_with(from: impl Read + Send + 'static, marker: &str) -> String {
    let mut reader = BufReader::new(from);
    let mut line = String::new();
    while !line.contains(marker) {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "exited before {marker:?}"
        );
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = reader.read_to_string(&mut sink);
    });
    line
}

fn field(line: &str, name: &str) -> String {
    let rest = &line[line.find(&format!("{name} ")).unwrap() + name.len() + 1..];
    rest.split([',', ' ', '\n']).next().unwrap().to_owned()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_processes() {
    let api = FakeApi::start().await;
    api.put(NODES, node("node-a", "10.0.0.1", "10.1.1.0/24"));
    api.put(
        NAMESPACES,
        namespace("shop", json!({"nodemesh.io/mesh": "enabled"})),
    );
    support::kube_ca::proxy_a(&api);
    api.put(
        PODS,
        pod("shop", "web-1", "web", "10.1.1.11", "node-a", json!({})),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);

    let mut ca = Command::new(env!("CARGO_BIN_EXE_nodemesh"))
        .args([
            "ca",
            "serve",
            "--source",
            "kubernetes",
            "--namespace",
            "nodemesh-system",
        ])
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(["--serving-names", "127.0.0.1"])
        .arg("--state-dir")
        .arg(dir.path().join("ca"))
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ca_out = ca.stdout.take().unwrap();
    let _ca = Killed(ca);
    let line = line_with(ca_out, "nodemesh CA:");
    let grpc = field(&line, "on");
    assert!(
        api.get(SECRETS, "nodemesh-system", "nodemesh-ca-root")
            .is_some()
    );
    let bundle = api
        .get(CONFIGMAPS, "nodemesh-system", "nodemesh-trust-bundle")
        .unwrap();
    let bundle_file = dir.path().join("trust-bundle.pem");
    std::fs::write(
        &bundle_file,
        bundle["data"]["trust-bundle.pem"].as_str().unwrap(),
    )
    .unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "token-a\n").unwrap();

    let key = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_nodemesh"))
        .args([
            "proxy",
            "--source",
            "kubernetes",
            "--node",
            "node-a",
            "--no-capture",
        ])
        .args(["--flow-log", "off", "--wireguard-public-key", key])
        .args(["--ca-address", &format!("https://{grpc}")])
        .args([
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--inbound-plaintext-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--readiness-addr",
            "127.0.0.1:0",
        ])
        .arg("--trust-bundle")
        .arg(&bundle_file)
        .arg("--ca-token-file")
        .arg(&token)
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let proxy_err = proxy.stderr.take().unwrap();
    let _proxy = Killed(proxy);
    let line = line_with(proxy_err, "nodemesh proxy: outbound");
    let (admin, readiness) = (field(&line, "admin"), field(&line, "readiness"));
    assert_eq!(
        api.get(NODES, "", "node-a").unwrap()["metadata"]["annotations"]["nodemesh.io/wireguard-public-key"],
        key
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http_get(&readiness, "/healthz/ready").unwrap_or_default();
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dump = http_get(&admin, "/config_dump").unwrap();
    assert!(
        dump.contains("spiffe://cluster.local/ns/shop/sa/web") && dump.contains("web-1"),
        "{dump}"
    );
}
