//! `nodemesh proxy` as a real process: it becomes ready once its workloads have certificates,
//! serves its admin API, and drains and exits 0 on SIGTERM. The CA runs in-process.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodemesh_test_support::ca::{LocalCa, config_line, node_token};
use nodemesh_test_support::process::{await_http_ok, field, http_get, line_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_process_becomes_ready_serves_admin_and_drains_on_sigterm() {
    let base = "nodes: [{name: node-a, address: 127.200.0.1, podCIDR: 127.200.1.0/24}]\n\
        namespaces: [{name: shop, labels: {nodemesh.io/mesh: enabled}}]\n\
        workloads: [{name: web-1, namespace: shop, serviceAccount: web, ip: 127.200.1.11, node: node-a}]\n";
    let files = LocalCa::new(base, &["node-a"]);
    let ca = files.start().await;
    let (dir, config) = (files.dir.path(), &files.config);
    std::fs::write(config, format!("{}{base}", config_line(&ca))).unwrap();
    let token = dir.join("ca-token");
    std::fs::write(&token, format!("{}\n", node_token("node-a"))).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_nodemesh"))
        .args([
            "proxy",
            "--node",
            "node-a",
            "--no-capture",
            "--flow-log",
            "off",
        ])
        .args([
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-bind",
            "127.200.1.11",
        ])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--readiness-addr",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(config)
        .arg("--ca-token-file")
        .arg(&token)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = line_with(child.stderr.take().unwrap(), "nodemesh proxy:");
    let (admin, readiness) = (field(&line, "admin"), field(&line, "readiness"));

    await_http_ok(&readiness, "/healthz/ready", Duration::from_secs(15));
    let certs = http_get(&admin, "/certs").unwrap();
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{certs}"
    );

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    ca.shutdown().await;
}
