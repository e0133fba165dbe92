//! `nodemesh check` on a testbed (root tier): the shop's mesh with capture and WireGuard
//! passes every item (exit 0); then each item is broken on purpose and that item fails (or
//! warns) with its hint: a capture rule removed, the clock skewed (the hidden test-only
//! `NODEMESH_CHECK_CLOCK_OFFSET`), a certificate expired (the same fake clock, a day on) or
//! near expiry, a policy that does not compile, the handoff socket gone, the proxy stopped, the
//! CA stopped. Every test runs once per capture backend; with `NODEMESH_E2E=1` a missing
//! privilege or tool is a failure. `--source kubernetes`'s cluster items run against the fake API server (no root).
#![allow(clippy::unwrap_used)] // Test code: a panic is a failed test.

use std::process::Command;

use nix::sys::signal::Signal;
use nodemesh_redirect::Backend;
use nodemesh_testbed::{MeshOptions, Testbed, scenario};
use serde_json::{Value, json};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");

mod kube_testbed;
/// The node checked: it runs the CA too.
const NODE: &str = "node-a";

fn mesh(backend: Backend) -> Testbed {
    let mut bed = Testbed::build(scenario::shop_for(backend)).unwrap();
    let mut opts = MeshOptions::new(BINARY);
    opts.backend = backend;
    opts.wireguard = true;
    if let Err(e) = bed.start_mesh(&opts) {
        panic!(
            "mesh did not start: {e}\n--- proxy {NODE} ---\n{}",
            bed.log_tail(&format!("proxy/{NODE}"), 25)
        );
    }
    bed
}

/// What one `nodemesh check --output json` on [`NODE`] printed, and its exit status.
struct Checked {
    code: i32,
    json: Value,
}

impl Checked {
    fn item(&self, name: &str) -> &Value {
        self.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no item {name:?} in {:#}", self.json))
    }

    fn status(&self, name: &str) -> &str {
        self.item(name)["status"].as_str().unwrap()
    }

    /// Asserts that the `field` (`detail`, `hint`) of item `name` contains `needle`.
    fn assert_says(&self, name: &str, field: &str, needle: &str) {
        let item = self.item(name);
        let text = item[field].as_str().unwrap_or_default();
        assert!(
            text.contains(needle),
            "{name}: {field} should mention {needle:?}: {item:#}"
        );
    }

    /// The items that are not `ok`, by name.
    fn not_ok(&self) -> Vec<String> {
        self.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["status"] != "ok")
            .map(|i| i["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Asserts that `name` has `status`, a detail containing `detail` and a hint.
    fn assert_item(&self, name: &str, status: &str, detail: &str) {
        let item = self.item(name);
        assert_eq!(item["status"], status, "{name}: {item:#}");
        assert!(
            item["detail"].as_str().unwrap().contains(detail),
            "{name}: detail should mention {detail:?}: {item:#}"
        );
        assert!(
            item["hint"].as_str().is_some_and(|h| !h.is_empty()),
            "{name}: a {status} has a hint: {item:#}"
        );
    }
}

/// `nodemesh check` on [`NODE`] with `config`, the proxy's state directory and backend.
fn check_command(bed: &Testbed, backend: Backend, config: &std::path::Path) -> Command {
    let mut cmd: Command = bed.node(NODE).unwrap().command(BINARY);
    cmd.arg("check")
        .arg("--config")
        .arg(config)
        .args(["--node", NODE])
        .arg("--state-dir")
        .arg(bed.dir().join(NODE))
        .args(["--capture-backend", &backend.to_string()])
        .env_remove("NODEMESH_CHECK_CLOCK_OFFSET");
    cmd
}

/// `nodemesh check --output json` with the proxy's config, `extra` arguments and `env`.
fn check(bed: &Testbed, backend: Backend, extra: &[&str], env: &[(&str, &str)]) -> Checked {
    check_with(bed, backend, &bed.config_file(), extra, env)
}

fn check_with(
    bed: &Testbed,
    backend: Backend,
    config: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Checked {
    let mut cmd = check_command(bed, backend, config);
    cmd.args(["--output", "json"]).args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "check printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let code = out.status.code().unwrap();
    let want = match json["status"].as_str().unwrap() {
        "ok" => 0,
        "warn" => 1,
        _ => 2,
    };
    assert_eq!(code, want, "exit status follows the worst item: {json:#}");
    Checked { code, json }
}

/// Waits (WireGuard's first handshakes, say) until the check passes, and returns it.
fn healthy(bed: &Testbed, backend: Backend) -> Checked {
    let mut last = None;
    for _ in 0..40 {
        let checked = check(bed, backend, &[], &[]);
        if checked.code == 0 {
            return checked;
        }
        last = Some(checked);
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!(
        "a healthy testbed fails the check: {:#}",
        last.map(|c| c.json).unwrap_or_default()
    );
}

/// Removes the first rule of the capture chain, as someone else's firewall tool might, and
/// returns it as the tools print it.
fn remove_a_capture_rule(bed: &Testbed, backend: Backend) -> String {
    let node = bed.node(NODE).unwrap();
    let chain = "NODEMESH-PREROUTING";
    match backend {
        Backend::Iptables => {
            let listed = node
                .exec(&["iptables", "-t", "mangle", "-S", chain])
                .unwrap();
            let rule = listed
                .lines()
                .find(|l| l.starts_with("-A "))
                .unwrap_or_else(|| panic!("no rule in {listed}"))
                .to_owned();
            node.exec(&["iptables", "-t", "mangle", "-D", chain, "1"])
                .unwrap();
            rule
        }
        Backend::Nftables => {
            let listed = node
                .exec(&["nft", "-a", "list", "chain", "ip", "nodemesh", chain])
                .unwrap();
            let (rule, handle) = listed
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !["table ", "chain ", "type "]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .find_map(|l| l.split_once(" # handle "))
                .unwrap_or_else(|| panic!("no rule with a handle in {listed}"));
            node.exec(&[
                "nft", "delete", "rule", "ip", "nodemesh", chain, "handle", handle,
            ])
            .unwrap();
            rule.to_owned()
        }
    }
}

fn healthy_then_broken(backend: Backend) {
    if !nodemesh_test_support::root_tier("check_healthy_then_broken", backend.tools()) {
        return;
    }
    let mut bed = mesh(backend);

    // Healthy: every item ok, the text form too.
    let ok = healthy(&bed, backend);
    for name in [
        "kernel: TPROXY target",
        "kernel: socket match",
        "capture rules in sync",
        "IPv6 stance",
        "proxy ready",
        "upgrade handoff",
        "workload certificates",
        "CA reachable",
        "trust bundle matches the CA",
        "clock skew against the CA",
        "WireGuard peers",
        "policies accepted",
    ] {
        assert_eq!(ok.status(name), "ok", "{name}: {:#}", ok.json);
    }
    ok.assert_says("WireGuard peers", "detail", "1 of 1 peers");
    let started = std::time::Instant::now();
    let text = check_command(&bed, backend, &bed.config_file())
        .output()
        .unwrap();
    let text_out = String::from_utf8_lossy(&text.stdout);
    eprintln!("{text_out}(took {:?})", started.elapsed());
    assert_eq!(text.status.code(), Some(0), "{text_out}");
    assert!(
        text_out
            .lines()
            .any(|l| l.starts_with("ok    capture rules in sync")),
        "{text_out}"
    );
    assert!(text_out.ends_with("0 warnings, 0 failures\n"), "{text_out}");

    // A certificate near expiry (closer than the warning window): a warning, exit 1.
    let near = check(&bed, backend, &["--cert-expiry-warning", "3d"], &[]);
    assert_eq!(near.code, 1, "{:#}", near.json);
    near.assert_item("workload certificates", "warn", "expires in");
    assert_eq!(near.not_ok(), ["workload certificates"]);

    // No handoff socket (moved away): an upgrade would cut connections, a warning.
    let socket = bed.dir().join(NODE).join("handoff.sock");
    let aside = bed.dir().join(NODE).join("handoff.sock.aside");
    std::fs::rename(&socket, &aside).unwrap();
    let no_handoff = check(&bed, backend, &[], &[]);
    std::fs::rename(&aside, &socket).unwrap();
    assert_eq!(no_handoff.code, 1, "{:#}", no_handoff.json);
    no_handoff.assert_item("upgrade handoff", "warn", "no handoff socket");
    no_handoff.assert_says("upgrade handoff", "hint", "--state-dir");
    assert_eq!(no_handoff.not_ok(), ["upgrade handoff"]);

    // The clock ten minutes ahead: the skew fails, and peers' handshakes look ten minutes old.
    let skewed = check(
        &bed,
        backend,
        &[],
        &[("NODEMESH_CHECK_CLOCK_OFFSET", "10m")],
    );
    assert_eq!(skewed.code, 2);
    // +10m as measured against a Date header of whole seconds: +9m 59s or +10m.
    skewed.assert_item("clock skew against the CA", "fail", "is +");
    skewed.assert_item("WireGuard peers", "fail", "no recent handshake");
    assert_eq!(skewed.status("workload certificates"), "ok");

    // A day on, the certificates (24 h) have expired.
    let expired = check(
        &bed,
        backend,
        &[],
        &[("NODEMESH_CHECK_CLOCK_OFFSET", "1day")],
    );
    expired.assert_item("workload certificates", "fail", "expired");

    // A capture rule removed: drift named, and back in sync once reinstalled.
    let removed = remove_a_capture_rule(&bed, backend);
    let drift = check(&bed, backend, &[], &[]);
    drift.assert_item("capture rules in sync", "fail", "1 rule(s) missing");
    drift.assert_says("capture rules in sync", "detail", &removed);
    drift.assert_says("capture rules in sync", "hint", "nodemesh redirect install");
    assert_eq!(drift.not_ok(), ["capture rules in sync"]);
    bed.node(NODE)
        .unwrap()
        .exec(&[
            BINARY,
            "redirect",
            "install",
            "--config",
            bed.config_file().to_str().unwrap(),
            "--node",
            NODE,
            "--backend",
            &backend.to_string(),
        ])
        .unwrap();
    assert_eq!(
        check(&bed, backend, &[], &[]).status("capture rules in sync"),
        "ok"
    );

    // A policy that does not compile: named with its error.
    let mut policies = bed.spec().policies.clone();
    policies.push(json!({
        "apiVersion": "security.nodemesh.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "broken", "namespace": "shop"},
        "spec": {"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["not-a-port"]}}]}]},
    }));
    bed.set_policies(policies).unwrap();
    let refused = check(&bed, backend, &[], &[]);
    refused.assert_item("policies accepted", "fail", "shop/broken: ");
    refused.assert_says("policies accepted", "detail", "ports");

    // The config naming another key for node-b: its device peer is not the one expected.
    let mut rekeyed: Value =
        serde_json::from_str(&std::fs::read_to_string(bed.config_file()).unwrap()).unwrap();
    let other_key = nodemesh_config::WireguardPublicKey::from_bytes([9; 32]).to_string();
    for n in rekeyed["nodes"].as_array_mut().unwrap() {
        if n["name"] == "node-b" {
            n["wireguardPublicKey"] = json!(other_key);
        }
    }
    let rekeyed_config = bed.dir().join("rekeyed.yaml");
    std::fs::write(&rekeyed_config, rekeyed.to_string()).unwrap();
    let stranger = check_with(&bed, backend, &rekeyed_config, &[], &[]);
    stranger.assert_item(
        "WireGuard peers",
        "fail",
        "node-b (not a peer of the device)",
    );
    assert_eq!(stranger.status("CA reachable"), "ok");

    // The node trusting another root: the bundle differs from the CA's, and the CA's serving
    // certificate does not verify (as it would not for the proxy).
    let mut other =
        serde_json::from_str::<Value>(&std::fs::read_to_string(bed.config_file()).unwrap())
            .unwrap();
    other["ca"]["rootCert"] = json!("other-root.pem");
    let other_root = nodemesh_test_support::TestCa::new("another CA")
        .bundle()
        .to_pem();
    std::fs::write(bed.dir().join("other-root.pem"), other_root).unwrap();
    let other_config = bed.dir().join("other-root.yaml");
    std::fs::write(&other_config, other.to_string()).unwrap();
    let untrusted = check_with(&bed, backend, &other_config, &[], &[]);
    untrusted.assert_item("trust bundle matches the CA", "fail", "1 not in the file");
    untrusted.assert_item("CA reachable", "fail", "TLS: ");
    untrusted.assert_says("CA reachable", "hint", "--serving-names");

    // The CA stopped: reachability, the bundle comparison and the clock fail.
    bed.stop_process("ca", Signal::SIGTERM).unwrap();
    let no_ca = check(&bed, backend, &[], &[]);
    no_ca.assert_item("CA reachable", "fail", "15012");
    no_ca.assert_item("trust bundle matches the CA", "fail", "not compared");
    no_ca.assert_item("clock skew against the CA", "fail", "not measured");
    no_ca.assert_says("CA reachable", "hint", "nodemesh ca serve");

    // The proxy stopped: not ready, no certificates to read.
    bed.stop_proxy(NODE, Signal::SIGTERM).unwrap();
    let no_proxy = check(&bed, backend, &[], &[]);
    no_proxy.assert_item("proxy ready", "fail", "not reachable");
    no_proxy.assert_item("workload certificates", "fail", "cannot read");
}

/// `--pre` in a fresh network namespace (nothing installed, forwarding off): every item ok;
/// without the tools on PATH, the tools item fails naming their packages.
fn pre_install(backend: Backend) {
    if !nodemesh_test_support::root_tier("check_pre_install", backend.tools()) {
        return;
    }
    let pre = |path: &str| {
        let out = Command::new("/usr/bin/unshare")
            .args(["--net", "--", BINARY, "check", "--pre", "--output", "json"])
            .args(["--capture-backend", &backend.to_string()])
            .env("PATH", path)
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        Checked {
            code: out.status.code().unwrap(),
            json,
        }
    };
    let ok = pre(&std::env::var("PATH").unwrap());
    assert_eq!(ok.code, 0, "{:#}", ok.json);
    assert_eq!(
        ok.json["items"].as_array().unwrap().len(),
        6,
        "{:#}",
        ok.json
    );
    ok.assert_says(
        "kernel: net.ipv4.ip_forward",
        "detail",
        "installing the capture rules turns it on",
    );
    let bare = pre("/nonexistent");
    let tools = format!("tools: {backend} backend");
    bare.assert_item(&tools, "fail", "missing: ip");
    let package = match backend {
        Backend::Iptables => "iptables",
        Backend::Nftables => "nftables",
    };
    bare.assert_says(&tools, "hint", package);
}

nodemesh_test_support::per_backend!(healthy_then_broken, pre_install);

/// Kubernetes mode on a testbed whose proxies follow the fake API (with WireGuard keys on the
/// Nodes): with the chart's objects in the API, every item passes, the node's items judged
/// against the proxy's view; a policy put through the API that does not compile fails the
/// policies item as the proxy compiled it.
#[test]
fn kubernetes_mode_on_a_testbed() {
    let backend = Backend::Nftables;
    if !nodemesh_test_support::root_tier("kubernetes_mode_on_a_testbed", backend.tools()) {
        return;
    }
    let mut bed = Testbed::build(scenario::shop()).unwrap();
    let api = kube_testbed::fake_api_for(&bed);
    kubernetes::put_chart(&api);
    let kubeconfig = bed.dir().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let mut opts = MeshOptions::new(BINARY);
    opts.backend = backend;
    opts.kubeconfig = Some(kubeconfig.clone());
    opts.wireguard = true;
    if let Err(e) = bed.start_mesh(&opts) {
        panic!("mesh did not start: {e}");
    }
    let kube_check = || {
        let out = bed
            .node(NODE)
            .unwrap()
            .command(BINARY)
            .args(["check", "--source", "kubernetes", "--node", NODE])
            .arg("--state-dir")
            .arg(bed.dir().join(NODE))
            .args([
                "--capture-backend",
                &backend.to_string(),
                "--output",
                "json",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        Checked {
            code: out.status.code().unwrap(),
            json: serde_json::from_slice(&out.stdout).unwrap(),
        }
    };
    let mut last = kube_check();
    for _ in 0..40 {
        if last.code == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        last = kube_check();
    }
    assert_eq!(last.code, 0, "{:#}", last.json);
    for name in [
        "CRD authorizationpolicies.security.nodemesh.io",
        "Nodes carry WireGuard keys",
        "capture rules in sync",
        "workload certificates",
        "CA reachable",
        "trust bundle matches the CA",
        "WireGuard peers",
        "policies accepted",
    ] {
        assert_eq!(last.status(name), "ok", "{name}: {:#}", last.json);
    }
    api.put(
        nodemesh_test_support::kube::objects::POLICIES,
        nodemesh_test_support::kube::objects::policy(
            "shop",
            "broken",
            json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["not-a-port"]}}]}]}),
        ),
    );
    let mut refused = kube_check();
    for _ in 0..40 {
        if refused.status("policies accepted") == "fail" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        refused = kube_check();
    }
    refused.assert_item("policies accepted", "fail", "shop/broken: ");
}

mod kubernetes {
    //! `nodemesh check --source kubernetes` against the fake API server (no root): the chart's
    //! objects healthy, then each broken.

    use nodemesh_test_support::kube::FakeApi;
    use nodemesh_test_support::kube::objects::{NODES, node};
    use serde_json::{Value, json};

    pub const CRDS: &str = "apiextensions.k8s.io/v1/customresourcedefinitions";
    pub const DAEMONSETS: &str = "apps/v1/daemonsets";
    pub const DEPLOYMENTS: &str = "apps/v1/deployments";
    pub const CRD: &str = "authorizationpolicies.security.nodemesh.io";
    const KEY_ANNOTATION: &str = "nodemesh.io/wireguard-public-key";

    fn keyed_node(name: &str, ip: &str, cidr: &str, key_byte: u8) -> Value {
        let mut n = node(name, ip, cidr);
        let key = nodemesh_config::WireguardPublicKey::from_bytes([key_byte; 32]).to_string();
        n["metadata"]["annotations"] = json!({KEY_ANNOTATION: key});
        n
    }

    pub fn daemonset(ready: i64) -> Value {
        json!({"metadata": {"name": "nodemesh-proxy", "namespace": "nodemesh-system"},
               "status": {"desiredNumberScheduled": 2, "numberReady": ready, "updatedNumberScheduled": 2}})
    }

    pub fn deployment(ready: i64) -> Value {
        json!({"metadata": {"name": "nodemesh-ca", "namespace": "nodemesh-system"},
               "spec": {"replicas": 1}, "status": {"readyReplicas": ready}})
    }

    /// Runs the check as node-a (no proxy there: its items fail) and returns the items by name.
    async fn check(kubeconfig: &std::path::Path) -> Value {
        let kubeconfig = kubeconfig.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(super::BINARY)
                .args(["check", "--source", "kubernetes", "--node", "node-a"])
                .args(["--output", "json", "--readiness-addr", "127.0.0.1:9"])
                .env("KUBECONFIG", &kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "the proxy is not running");
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        let by_name = json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["name"].as_str().unwrap().to_owned(), i.clone()))
            .collect();
        Value::Object(by_name)
    }

    fn assert_status(items: &Value, name: &str, status: &str, detail: &str) {
        let item = &items[name];
        assert_eq!(item["status"], status, "{name}: {items:#}");
        assert!(
            item["detail"].as_str().unwrap().contains(detail),
            "{name}: detail should mention {detail:?}: {item:#}"
        );
        if status != "ok" {
            assert!(item["hint"].is_string(), "{name} has a hint: {item:#}");
        }
    }

    /// The chart's objects, healthy: the CRD, the DaemonSet on 2 nodes, the CA.
    pub fn put_chart(api: &FakeApi) {
        api.put(
            CRDS,
            json!({"metadata": {"name": CRD},
                   "status": {"conditions": [{"type": "Established", "status": "True"}]}}),
        );
        api.put(DAEMONSETS, daemonset(2));
        api.put(DEPLOYMENTS, deployment(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_items_pass_then_fail_one_by_one() {
        let api = FakeApi::start().await;
        put_chart(&api);
        api.put(NODES, keyed_node("node-a", "10.0.0.1", "10.1.1.0/24", 1));
        api.put(NODES, keyed_node("node-b", "10.0.0.2", "10.1.2.0/24", 2));
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);

        let items = check(&kubeconfig).await;
        assert_status(&items, &format!("CRD {CRD}"), "ok", "established");
        assert_status(
            &items,
            "CRD clusternetworkpolicies.policy.networking.k8s.io",
            "ok",
            "optional",
        );
        assert_status(
            &items,
            "DaemonSet nodemesh-proxy ready",
            "ok",
            "2 of 2 nodes ready",
        );
        assert_status(
            &items,
            "Deployment nodemesh-ca ready",
            "ok",
            "1 of 1 replicas",
        );
        assert_status(&items, "Nodes carry WireGuard keys", "ok", "all 2 Nodes");
        assert_status(&items, "proxy ready", "fail", "not reachable");

        api.delete(CRDS, "", CRD);
        api.put(DAEMONSETS, daemonset(1));
        api.put(DEPLOYMENTS, deployment(0));
        api.put(NODES, node("node-b", "10.0.0.2", "10.1.2.0/24"));
        let items = check(&kubeconfig).await;
        assert_status(&items, &format!("CRD {CRD}"), "fail", "not installed");
        assert_status(
            &items,
            "DaemonSet nodemesh-proxy ready",
            "fail",
            "1 of 2 nodes ready",
        );
        assert_status(
            &items,
            "Deployment nodemesh-ca ready",
            "fail",
            "0 of 1 replicas",
        );
        assert_status(
            &items,
            "Nodes carry WireGuard keys",
            "fail",
            "node-b (no key)",
        );
    }
}
