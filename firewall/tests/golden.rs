//! Golden tests: the rendered table and deltas compared exactly with the text under
//! `tests/golden/`.
//!
//! After an intended change, regenerate with `NODEMESH_BLESS=1 cargo test -p nodemesh-firewall
//! --test golden` and review the diff.
#![allow(clippy::unwrap_used)] // Test helpers: a panic is a failed test.

mod common;

use std::path::PathBuf;

use nodemesh_firewall::{Ruleset, transaction};

fn check(name: &str, rendered: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("NODEMESH_BLESS").is_some() {
        std::fs::write(&path, rendered).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless with NODEMESH_BLESS=1)", path.display()));
    assert_eq!(
        rendered,
        expected,
        "{} differs from the rendering",
        path.display()
    );
}

fn render(yaml: &str) -> Ruleset {
    let config = common::config_from(yaml);
    Ruleset::render(&config, &common::policies(&config), "node-a")
}

#[test]
fn whole_table() {
    check("table.nft", &render(common::CONFIG).to_nft());
}

#[test]
fn from_scratch_replaces_a_stale_table() {
    let (script, delta) = transaction(None, &render(common::CONFIG)).unwrap();
    assert!(script.starts_with(
        "add table inet nodemesh-netpol\ndelete table inet nodemesh-netpol\ntable inet nodemesh-netpol {\n"
    ));
    assert!(delta.from_scratch);
}

#[test]
fn rendering_is_deterministic() {
    assert_eq!(render(common::CONFIG), render(common::CONFIG));
    assert_eq!(
        transaction(Some(&render(common::CONFIG)), &render(common::CONFIG)),
        None
    );
}

#[test]
fn a_pod_added_only_adds_elements() {
    let more = common::CONFIG.replace(
        "workloads:\n",
        "workloads:\n  - {name: xc, namespace: x, ip: 10.1.0.13, node: node-a, labels: {pod: b}}\n",
    );
    let (script, delta) = transaction(Some(&render(common::CONFIG)), &render(&more)).unwrap();
    check("delta-pod-added.nft", &script);
    assert!(
        script.lines().all(|l| l.starts_with("add element ")),
        "only elements change:\n{script}"
    );
    assert_eq!(
        (
            delta.chains_changed,
            delta.sets_changed,
            delta.elements_deleted
        ),
        (0, 0, 0)
    );
}

#[test]
fn a_pod_removed_only_deletes_elements() {
    let fewer = common::CONFIG.replace(
        "  - {name: yb, namespace: y, ip: 10.1.1.12, node: node-a, labels: {pod: b}}\n",
        "",
    );
    let (script, delta) = transaction(Some(&render(common::CONFIG)), &render(&fewer)).unwrap();
    assert!(
        script.lines().all(|l| l.starts_with("delete element ")),
        "only elements change:\n{script}"
    );
    assert_eq!(delta.chains_changed, 0);
    assert!(delta.elements_deleted > 0);
}

#[test]
fn a_policy_changed_refills_its_chain_only() {
    let changed = common::CONFIG.replace(
        "ports: [{port: 53, protocol: UDP}]",
        "ports: [{port: 5353, protocol: UDP}]",
    );
    let (script, delta) = transaction(Some(&render(common::CONFIG)), &render(&changed)).unwrap();
    check("delta-policy-changed.nft", &script);
    let flushed: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with("flush chain"))
        .collect();
    assert_eq!(flushed.len(), 1, "{script}");
    assert!(script.contains("th dport 5353 goto egress-allowed comment \"x/web egress[1]\""));
    assert_eq!(delta.chains_changed, 1);
}

#[test]
fn a_policy_deleted_removes_its_chain_and_sets() {
    let gone = common::CONFIG.replace(
        "  - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny-all, namespace: y}, spec: {podSelector: {}, policyTypes: [Ingress]}}\n",
        "",
    );
    let (script, _) = transaction(Some(&render(common::CONFIG)), &render(&gone)).unwrap();
    check("delta-policy-deleted.nft", &script);
    // y's pods are no longer isolated for ingress.
    assert!(
        script.contains("delete element inet nodemesh-netpol np-isolated-ingress { 10.1.1.12 }")
    );
}
