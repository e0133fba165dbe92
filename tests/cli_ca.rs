//! The `nodemesh ca` commands as a user runs them: real processes, real files, real gRPC.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use nodemesh_identity::{SpiffeId, SvidUsage, TrustBundle, generate_csr, verify_svid};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn nodemesh() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nodemesh"))
}

#[test]
fn issue_writes_a_valid_svid_offline() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ca");
    let out = dir.path().join("out");
    assert!(
        nodemesh()
            .args(["ca", "init", "--state-dir"])
            .arg(&state)
            .status()
            .unwrap()
            .success()
    );
    let status = nodemesh()
        .args([
            "ca",
            "issue",
            "--identity",
            "spiffe://cluster.local/ns/shop/sa/web",
            "--state-dir",
        ])
        .arg(&state)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let chain: Vec<_> = CertificateDer::pem_file_iter(out.join("cert-chain.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let bundle =
        TrustBundle::from_pem(&std::fs::read_to_string(out.join("root-cert.pem")).unwrap())
            .unwrap();
    let info = verify_svid(&chain, &bundle, SystemTime::now(), SvidUsage::Server).unwrap();
    assert_eq!(info.id.as_str(), "spiffe://cluster.local/ns/shop/sa/web");
    rustls::pki_types::PrivateKeyDer::from_pem_file(out.join("key.pem")).unwrap();
}

#[test]
fn issue_refuses_a_lifetime_over_the_maximum_and_a_foreign_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ca");
    let init = nodemesh()
        .args(["ca", "init", "--state-dir"])
        .arg(&state)
        .status();
    assert!(init.unwrap().success());
    let issue = |identity: &str, lifetime: &str| {
        nodemesh()
            .args([
                "ca",
                "issue",
                "--identity",
                identity,
                "--lifetime",
                lifetime,
            ])
            .arg("--state-dir")
            .arg(&state)
            .arg("--out")
            .arg(dir.path().join("out"))
            .output()
            .unwrap()
    };
    let out = issue("spiffe://cluster.local/ns/shop/sa/web", "8d");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("above the maximum of 604800s (7 days)"),
        "{stderr}"
    );
    let out = issue("spiffe://other.example/ns/shop/sa/web", "1h");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is not of trust domain \"cluster.local\""),
        "{stderr}"
    );
    assert!(!dir.path().join("out").exists(), "nothing written");
}

#[test]
fn issue_refuses_a_bad_identity_with_a_clear_error() {
    let out = nodemesh()
        .args([
            "ca",
            "issue",
            "--state-dir",
            "/nonexistent",
            "--out",
            "/nonexistent",
            "--identity",
            "spiffe://td/ns/a/../b",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--identity") && stderr.contains("relative segment"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_issues_over_grpc_until_stopped() {
    nodemesh_identity::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh.yaml");
    std::fs::write(
        &config,
        "nodes: [{name: node-a, address: 10.0.0.1}]\nworkloads: [{name: web-1, namespace: shop, serviceAccount: web, ip: 10.1.0.11, node: node-a}]\n",
    )
    .unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "secret-token-of-node-a node-a\n").unwrap();
    let state = dir.path().join("state");
    let mut child = nodemesh()
        .args([
            "ca",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .arg("--tokens")
        .arg(&tokens)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "nodemesh CA: gRPC on 127.0.0.1:PORT, HTTP on 127.0.0.1:PORT"
    let grpc = line
        .split_whitespace()
        .nth(4)
        .unwrap()
        .trim_end_matches(',');
    let bundle = std::fs::read_to_string(state.join("trust-bundle.pem")).unwrap();
    let client = nodemesh_ca::CaClient::new(
        &format!("https://{grpc}"),
        &bundle,
        "secret-token-of-node-a",
    )
    .unwrap();
    let id = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let chain = client
        .create_certificate(generate_csr(&id).unwrap().csr_pem, 0, Some(&id))
        .await
        .unwrap();
    assert_eq!(chain.len(), 2);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn stage_activate_and_retire_a_root() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("ca");
    let run = |args: &[&str]| {
        nodemesh()
            .arg("ca")
            .args(args)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap()
    };
    let roots = || {
        TrustBundle::from_pem(&std::fs::read_to_string(state.join("trust-bundle.pem")).unwrap())
            .unwrap()
            .roots()
            .len()
    };
    assert!(run(&["init"]).status.success());
    let issue = nodemesh()
        .args([
            "ca",
            "issue",
            "--identity",
            "spiffe://cluster.local/ns/shop/sa/web",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--out")
        .arg(dir.path().join("out"))
        .status()
        .unwrap();
    assert!(issue.success());
    let staged = run(&["stage-root"]);
    assert!(staged.status.success(), "{staged:?}");
    assert!(String::from_utf8_lossy(&staged.stdout).contains("activate-root"));
    assert_eq!(roots(), 2);
    assert!(run(&["activate-root"]).status.success());

    // The offline leaf of the old root is live: refused, with what to do.
    let refused = run(&["retire-root"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("Retry after"), "{stderr}");
    assert_eq!(roots(), 2, "a refusal changes nothing");

    let forced = run(&["retire-root", "--force"]);
    assert!(forced.status.success(), "{forced:?}");
    assert!(String::from_utf8_lossy(&forced.stdout).contains("retired root"));
    assert_eq!(roots(), 1);
    let again = run(&["retire-root"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to retire"));
}
