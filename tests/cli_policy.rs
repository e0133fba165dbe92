//! `nodemesh policy` as a user runs it: real process, real files, exit status 0/1/2.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

const POLICIES: &str = "\
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: shop}
spec:
  rules:
  - from: [{source: {namespaces: [client]}}]
---
# an Istio object in the same file
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
";

fn nodemesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodemesh"))
        .arg("policy")
        .args(args)
        .output()
        .unwrap()
}

fn check(file: &str, extra: &[&str]) -> Output {
    let base = [
        "check",
        "--policies",
        file,
        "--destination-namespace",
        "shop",
        "--destination-port",
        "8080",
    ];
    nodemesh(&[&base[..], extra].concat())
}

#[test]
fn check_exit_status_is_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, POLICIES).unwrap();
    let file = file.to_str().unwrap();
    let client = ["--source-principal", "cluster.local/ns/client/sa/curl"];

    let out = check(file, &[&client[..], &["--method", "GET"]].concat());
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let out = check(
        file,
        &[&client[..], &["--method", "delete", "--output", "json"]].concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["verdict"], "deny");
    assert_eq!(json["policy"], "shop/deny-delete");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("{\"verdict\":\"deny\",\"policy\""));

    // Bad input of every kind exits 2, never 1.
    let out = check(file, &["--destination-port", "http"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = check("/nonexistent/policies.yaml", &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        POLICIES.replace("namespaces: [client]", "ipBlocks: [300.1.1.1]"),
    )
    .unwrap();
    let out = check(bad.to_str().unwrap(), &client);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.yaml: shop/allow-client: spec.rules[0].from[0].source.ipBlocks[0]: invalid IP address or CIDR \"300.1.1.1\""),
        "{stderr}"
    );
}

#[test]
fn explain_and_lint() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, POLICIES).unwrap();
    let file = file.to_str().unwrap();
    let out = nodemesh(&[
        "explain",
        "--policies",
        file,
        "--destination-namespace",
        "shop",
        "--destination-port",
        "80",
        "--source-namespace",
        "batch",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("source namespace \"batch\" matches none of [\"client\"]"),
        "{text}"
    );
    assert!(text.contains("verdict: DENY"), "{text}");

    let out = nodemesh(&["lint", file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        POLICIES.replace("action: DENY", "action: DENY\n  selectr: {}"),
    )
    .unwrap();
    let out = nodemesh(&["lint", file, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.yaml: shop/deny-delete: spec.selectr: unknown field `selectr`"),
        "{text}"
    );
}
