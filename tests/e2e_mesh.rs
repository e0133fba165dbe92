//! Root tier: the mesh end to end in a testbed — real namespaces, real TPROXY capture installed
//! by the proxies (`--manage-redirect`), real `nodemesh` processes (CA, proxies, pods' apps),
//! real TLS on an underlay that a packet capture watches. Every test runs once per capture
//! backend (iptables, nftables).
//!
//! Runs as root with `ip`, `iptables`/`ipset` and `nft` installed. Otherwise each test prints a
//! skip line and passes, unless `NODEMESH_E2E=1`, where a skip is a failure.
#![allow(clippy::unwrap_used)] // Test code: a panic is a failed test.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use nodemesh_redirect::Backend;
use nodemesh_testbed::scenario;
use nodemesh_testbed::{ClusterSpec, KubeProxyMode, MeshOptions, Netns, Testbed, apps};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");

fn options(backend: Backend) -> MeshOptions {
    let mut opts = MeshOptions::new(BINARY);
    opts.backend = backend;
    opts
}

/// The shop with its mesh running, with kube-proxy in the mode that goes with the backend.
fn shop(mut spec: ClusterSpec, opts: &MeshOptions) -> Testbed {
    if spec.kube_proxy.is_some() {
        spec.kube_proxy = Some(KubeProxyMode::matching(opts.backend));
    }
    let mut bed = Testbed::build(spec).unwrap();
    if let Err(e) = bed.start_mesh(opts) {
        panic!("mesh did not start: {e}");
    }
    bed
}

/// Every step of `nodemesh demo`, asserted: Service VIP across nodes with both SPIFFE IDs in
/// the flow log, L7 deny, L4 deny, STRICT, passthrough, and an underlay with TLS only.
fn demo_steps(backend: Backend) {
    if !nodemesh_test_support::root_tier("demo_steps", backend.tools()) {
        return;
    }
    let bed = shop(scenario::shop(), &options(backend));
    let capture = bed.capture_underlay().unwrap();
    for step in [
        scenario::allowed_via_service,
        scenario::l7_deny,
        scenario::l4_deny,
        scenario::strict_refuses_plaintext,
        scenario::passthrough_to_non_mesh,
    ] {
        scenario::assert_ok(&bed, &step(&bed).unwrap());
    }
    let control = scenario::marker(&bed, "control");
    scenario::send_control(&bed, &control).unwrap();
    let captured = capture.finish().unwrap();
    let markers = ["allowed", "admin-body", "l4"].map(|m| scenario::marker(&bed, m));
    scenario::assert_ok(
        &bed,
        &scenario::underlay_encrypted(&captured, &control, &markers),
    );
}

/// With only `CAP_NET_ADMIN` and `CAP_NET_RAW` (the Helm chart's DaemonSet capabilities), the
/// proxies install capture and serve the demo's traffic.
fn runs_with_only_net_admin_and_net_raw(backend: Backend) {
    if !nodemesh_test_support::root_tier("runs_with_only_net_admin_and_net_raw", backend.tools()) {
        return;
    }
    let mut opts = options(backend);
    opts.only_net_caps = true;
    let bed = shop(scenario::shop(), &opts);
    for node in ["node-a", "node-b"] {
        let pid = bed.pid(&format!("proxy/{node}")).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let effective = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        const NET_ADMIN: u64 = 1 << 12;
        const NET_RAW: u64 = 1 << 13;
        assert_eq!(effective, NET_ADMIN | NET_RAW, "{node} proxy capabilities");
    }
    for step in [
        scenario::allowed_via_service,
        scenario::l7_deny,
        scenario::strict_refuses_plaintext,
    ] {
        scenario::assert_ok(&bed, &step(&bed).unwrap());
    }
}

/// SIGTERM (drain) and SIGKILL (crash) of node-b's proxy both leave capture in place: calls
/// fail, nothing reaches the underlay in plaintext, and a restarted proxy serves again.
fn stopped_proxy_fails_closed(backend: Backend) {
    if !nodemesh_test_support::root_tier("stopped_proxy_fails_closed", backend.tools()) {
        return;
    }
    let mut bed = shop(scenario::shop(), &options(backend));
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        for outcome in scenario::proxy_down_fails_closed(&mut bed, signal).unwrap() {
            scenario::assert_ok(&bed, &outcome);
        }
    }
}

/// Pod -> pod on one node goes through the proxy and its policy: allowed first, then refused
/// once a DENY policy lands in the config (reloaded live), with the deny in the flow log.
fn same_node_goes_through_policy(backend: Backend) {
    if !nodemesh_test_support::root_tier("same_node_goes_through_policy", backend.tools()) {
        return;
    }
    let mut bed = shop(scenario::shop(), &options(backend));
    let frontend = scenario::pod_http(&bed, "frontend-a").unwrap();
    let reply = scenario::call(&bed, "batch-a", frontend, "GET", "/", "")
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
    let mtls = scenario::find_flow(&bed, "node-a", |r| {
        r["direction"] == "inbound"
            && r["dst"]["workload"] == "frontend-a"
            && r["src"]["identity"] == "spiffe://cluster.local/ns/shop/sa/batch"
    });
    assert!(
        mtls.is_some(),
        "node-a logged the same-node call with the batch identity"
    );

    let mut policies = scenario::shop_policies();
    policies.push(serde_json::json!({
        "apiVersion": "security.nodemesh.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "frontend-deny-batch", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "frontend"}},
            "action": "DENY",
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/batch"]}}]}],
        },
    }));
    bed.set_policies(policies).unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if scenario::call(&bed, "batch-a", frontend, "GET", "/", "")
            .unwrap()
            .is_err()
        {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(refused, "the new DENY policy took effect on the same node");
    let deny = scenario::find_flow(&bed, "node-a", |r| {
        r["verdict"] == "deny" && r["policy"] == "shop/frontend-deny-batch"
    });
    assert!(
        deny.is_some(),
        "node-a logged the deny by shop/frontend-deny-batch"
    );
}

/// With `--preserve-source-ip` the destination pod sees the client pod's IP, not the node's.
fn preserves_source_ip(backend: Backend) {
    if !nodemesh_test_support::root_tier("preserves_source_ip", backend.tools()) {
        return;
    }
    let mut opts = options(backend);
    opts.preserve_source_ip = true;
    let bed = shop(scenario::shop(), &opts);
    let vip = scenario::web_vip(&bed).unwrap();
    let reply = scenario::call(&bed, "frontend-a", vip, "GET", "/", "")
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let peer: SocketAddr = reply.field("peer").unwrap().parse().unwrap();
    assert_eq!(
        peer.ip(),
        bed.pod_ip("frontend-a").unwrap(),
        "web-b saw {peer}, not frontend-a's IP"
    );
}

/// 200 concurrent connections from 4 pods (50 each, to a pod on the other node) all complete
/// with their 64 KiB of data intact.
fn concurrent_connections_keep_data_intact(backend: Backend) {
    if !nodemesh_test_support::root_tier("concurrent_connections_keep_data_intact", backend.tools())
    {
        return;
    }
    let mut spec = scenario::shop();
    spec.policies.clear();
    let bed = shop(spec, &options(backend));
    let pairs = [
        ("frontend-a", "web-b"),
        ("batch-a", "db-b"),
        ("web-b", "frontend-a"),
        ("db-b", "batch-a"),
    ];
    let tasks: Vec<_> = pairs
        .iter()
        .map(|(from, to)| {
            let target = SocketAddr::from((bed.pod_ip(to).unwrap(), apps::ECHO_PORT));
            let seed = bed.pod_ip(from).unwrap().octets()[3];
            bed.pod(from)
                .unwrap()
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let calls = (0..50u8).map(|i| async move {
                            let payload: Vec<u8> =
                                (0..65536u32).map(|j| (j as u8) ^ i ^ seed).collect();
                            let back = apps::echo(target, &payload, Duration::from_secs(30)).await;
                            back.map(|b| b == payload)
                        });
                        futures_util::future::join_all(calls).await
                    })
                })
                .unwrap()
        })
        .collect();
    for ((from, to), task) in pairs.iter().zip(tasks) {
        let results = task.join().unwrap();
        let intact = results.iter().filter(|r| matches!(r, Ok(true))).count();
        let failures: Vec<String> = results
            .iter()
            .filter_map(|r| match r {
                Ok(true) => None,
                Ok(false) => Some("data differed".into()),
                Err(e) => Some(e.to_string()),
            })
            .take(3)
            .collect();
        assert_eq!(intact, 50, "{from} -> {to}: {failures:?}");
    }
}

/// Snapshot of a namespace's capture-relevant state: `iptables-save` without comments and
/// counters, `nft --stateless list ruleset` (no counters), ip rules and every routing table.
///
/// Tables with no rule at all are left out: iptables (nf_tables backend) creates a table's
/// built-in chains, empty with policy ACCEPT, on first use and never deletes them. Such a table
/// matches nothing and changes no packet, so it is the same ruleset as no table.
fn snapshot(ns: &Netns) -> Vec<String> {
    let strip_counters = |line: &str| match line.find(" [") {
        Some(i) if line.starts_with(':') => line[..i].to_owned(),
        _ => line.to_owned(),
    };
    let saved: Vec<String> = ns
        .exec(&["iptables-save"])
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(strip_counters)
        .collect();
    let mut lines = without_empty_blocks(
        &saved,
        |l| l.starts_with('*'),
        |l| l == "COMMIT",
        |l| l.starts_with("-A") || (l.starts_with(':') && !l.ends_with(" ACCEPT")),
    );
    let ruleset = ns.exec(&["nft", "--stateless", "list", "ruleset"]).unwrap();
    let ruleset: Vec<String> = ruleset.lines().map(str::to_owned).collect();
    lines.push("--- nft".into());
    lines.extend(without_empty_blocks(
        &ruleset,
        |l| l.starts_with("table"),
        |l| l == "}",
        |l| {
            let builtin = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
            match l.strip_prefix("\tchain ") {
                Some(chain) => !builtin.iter().any(|b| chain == format!("{b} {{")),
                None => {
                    l.starts_with("\t\t")
                        && !(l.contains("type filter hook") && l.ends_with("policy accept;"))
                }
            }
        },
    ));
    for argv in [
        &["ip", "rule", "show"][..],
        // IPv4 only: capture routes no IPv6, and the kernel adds IPv6 link-local routes to a
        // fresh namespace's interfaces at its own pace, which made the comparison flaky.
        &["ip", "-4", "route", "show", "table", "all"],
        &["ipset", "list", "-n"],
    ] {
        lines.push(format!("--- {argv:?}"));
        lines.extend(ns.exec(argv).unwrap().lines().map(str::to_owned));
    }
    lines
}

/// `lines` without the blocks (from a `start` line to an `end` line) that hold no `meaningful`
/// line.
fn without_empty_blocks(
    lines: &[String],
    start: impl Fn(&str) -> bool,
    end: impl Fn(&str) -> bool,
    meaningful: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut block: Option<Vec<String>> = None;
    for line in lines {
        match block.as_mut() {
            None if start(line) => block = Some(vec![line.clone()]),
            None => out.push(line.clone()),
            Some(b) => {
                b.push(line.clone());
                if end(line) {
                    let b = block.take().unwrap_or_default();
                    if b.iter().any(|l| meaningful(l)) {
                        out.extend(b);
                    }
                }
            }
        }
    }
    out.extend(block.unwrap_or_default());
    out
}

/// `nodemesh redirect install` twice changes nothing the second time; `remove` restores the
/// node's rules exactly as they were before.
fn redirect_cli_is_idempotent_and_reversible(backend: Backend) {
    if !nodemesh_test_support::root_tier(
        "redirect_cli_is_idempotent_and_reversible",
        backend.tools(),
    ) {
        return;
    }
    let bed = Testbed::build(scenario::shop()).unwrap();
    let ns = bed.node("node-a").unwrap();
    let redirect = |verb: &str| {
        let mut cmd = Command::new(BINARY);
        cmd.args(["redirect", verb]);
        if verb != "remove" {
            // Removal needs no config: it deletes what nodemesh made by name.
            cmd.arg("--config")
                .arg(bed.config_file())
                .args(["--node", "node-a"]);
        }
        let out = cmd
            .args(["--backend", &backend.to_string(), "--netns"])
            .arg(ns.name())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "redirect {verb}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let before = snapshot(ns);
    redirect("install");
    let installed = snapshot(ns);
    assert_ne!(before, installed, "install changed nothing");
    let again = redirect("install");
    assert!(again.contains("already in sync"), "{again}");
    assert_eq!(
        snapshot(ns),
        installed,
        "a second install changed the rules"
    );
    redirect("remove");
    assert_eq!(snapshot(ns), before, "remove did not restore the rules");
}

/// The proxy and the CNI plugin share the node's state directory: the proxy writes the plugin's
/// namespace cache, and keeps every pod the plugin recorded that its state does not know in the
/// capture set across its own replacements of the set, until the record goes (DEL).
fn proxy_adopts_cni_pods(backend: Backend) {
    if !nodemesh_test_support::root_tier("proxy_adopts_cni_pods", backend.tools()) {
        return;
    }
    let bed = shop(scenario::shop(), &options(backend));
    let cni = nodemesh_cni::StateDir::new(bed.dir().join("node-a"));
    let cache = cni.read_cache().unwrap();
    assert_eq!(cache.backend, backend);
    assert!(cache.namespaces["shop"].mesh && !cache.namespaces["legacy"].mesh);
    let host = nodemesh_redirect::Host::netns(bed.node("node-a").unwrap().name());
    let captured =
        |ip: std::net::Ipv4Addr| nodemesh_redirect::has_pod(&host, backend, ip.into()).unwrap();
    let guarded =
        |ip: std::net::Ipv6Addr| nodemesh_redirect::has_pod(&host, backend, ip.into()).unwrap();
    let unknown = |last: u8| {
        let [a, b, c, _] = bed.pod_ip("frontend-a").unwrap().octets();
        std::net::Ipv4Addr::new(a, b, c, last)
    };
    let record = |id: &str, ip, ipv6| nodemesh_cni::PodRecord {
        container_id: id.into(),
        ip,
        ipv6,
        namespace: "shop".into(),
        pod: Some(id.into()),
    };
    // What the plugin's ADD does: the record, then the address, under the shared lock.
    let (first, second) = (unknown(200), unknown(201));
    {
        let _lock = cni.lock().unwrap();
        cni.write_record(&record("first", first, None)).unwrap();
        nodemesh_redirect::add_pod(&host, backend, first.into()).unwrap();
    }
    // A record alone: the proxy adopts it into the set it installs, and keeps the first.
    // A dual-stack pod: its IPv6 joins the IPv6 guard's set with it.
    let second6: std::net::Ipv6Addr = "fd00:10:200:1::201".parse().unwrap();
    cni.write_record(&record("second", second, Some(second6)))
        .unwrap();
    nodemesh_test_support::wait::eventually_blocking("the proxy adopts the record", || {
        captured(second)
    });
    assert!(guarded(second6), "the adopted pod's IPv6 is guarded");
    assert!(
        captured(first),
        "the proxy's set replacement kept the plugin's pod"
    );
    cni.remove_record("second").unwrap();
    nodemesh_test_support::wait::eventually_blocking("the proxy drops a deleted record", || {
        !captured(second)
    });
    assert!(!guarded(second6), "and its IPv6 leaves the guard's set");
    assert!(captured(first), "still recorded, still captured");
    assert!(
        captured(bed.pod_ip("frontend-a").unwrap()),
        "the state's pods stay"
    );
}

nodemesh_test_support::per_backend!(
    demo_steps,
    runs_with_only_net_admin_and_net_raw,
    stopped_proxy_fails_closed,
    same_node_goes_through_policy,
    preserves_source_ip,
    concurrent_connections_keep_data_intact,
    redirect_cli_is_idempotent_and_reversible,
    proxy_adopts_cni_pods,
);
