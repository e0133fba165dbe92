//! `nodemesh proxy` as a real process: it becomes ready once its workloads have certificates,
//! serves its admin API, and drains and exits 0 on SIGTERM. The CA runs in-process.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodemesh_ca::{LifetimePolicy, RootSource, ServeOptions};
use nodemesh_identity::SystemClock;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_process_becomes_ready_serves_admin_and_drains_on_sigterm() {
    nodemesh_identity::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh.yaml");
    let base = "nodes: [{name: node-a, address: 127.200.0.1, podCIDR: 127.200.1.0/24}]\n\
        namespaces: [{name: shop, labels: {nodemesh.io/mesh: enabled}}]\n\
        workloads: [{name: web-1, namespace: shop, serviceAccount: web, ip: 127.200.1.11, node: node-a}]\n";
    std::fs::write(&config, base).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "token-of-node-a-0123456789 node-a\n").unwrap();
    let ca = nodemesh_ca::start(
        ServeOptions {
            root: RootSource::state_dir(dir.path().join("ca")),
            callers: nodemesh_ca::Callers::Files {
                config_file: config.clone(),
                tokens_file: tokens,
            },
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            serving_names: vec!["127.0.0.1".into()],
            lifetimes: LifetimePolicy::default(),
            reload_interval: Duration::from_millis(100),
        },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "ca: {{address: \"https://127.0.0.1:{}\", rootCert: ca/trust-bundle.pem}}\n{base}",
            ca.grpc_addr.port()
        ),
    )
    .unwrap();
    let token = dir.path().join("ca-token");
    std::fs::write(&token, "token-of-node-a-0123456789\n").unwrap();

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
        .arg(&config)
        .arg("--ca-token-file")
        .arg(&token)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("nodemesh proxy:") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "proxy exited early"
        );
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
    });
    let field = |name: &str| {
        let rest = &line[line.find(&format!("{name} ")).unwrap() + name.len() + 1..];
        rest.split([',', ' ', '\n']).next().unwrap().to_owned()
    };
    let (admin, readiness) = (field("admin"), field("readiness"));

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http_get(&readiness, "/healthz/ready").unwrap_or_default();
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
