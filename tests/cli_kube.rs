//! `nodemesh ca serve --source kubernetes` and `nodemesh proxy --source kubernetes` as
//! processes, against the in-repo fake API server of `nodemesh-test-support` (reached through a
//! kubeconfig): the CA creates its root Secret and bundle ConfigMap, the proxy publishes its
//! WireGuard key on its Node, syncs, gets its pod's certificate through TokenReview and
//! becomes ready.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use nodemesh_test_support::kube::FakeApi;
use nodemesh_test_support::kube::objects::*;
use nodemesh_test_support::process::{Killed, await_http_ok, field, http_get, line_with};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_processes() {
    let api = FakeApi::start().await;
    api.put(NODES, node("node-a", "10.0.0.1", "10.1.1.0/24"));
    api.put(
        NAMESPACES,
        namespace("shop", json!({"nodemesh.io/mesh": "enabled"})),
    );
    nodemesh_test_support::kube::ca::proxy_a(&api);
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
    await_http_ok(&readiness, "/healthz/ready", Duration::from_secs(15));
    let dump = http_get(&admin, "/config_dump").unwrap();
    assert!(
        dump.contains("spiffe://cluster.local/ns/shop/sa/web") && dump.contains("web-1"),
        "{dump}"
    );
}
