//! Root tier: the network-policy reachability matrix (as the Kubernetes e2e suite's
//! `test/e2e/network/netpol`): namespaces x, y, z × pods a, b, c on two nodes, x and y in the
//! mesh (y/c opted out), z not; every pod probes every other pod on TCP and UDP 80 and 81, and
//! the matrix is compared with each scenario's expectation. One testbed per capture backend,
//! reused across scenarios: apply the policies (the standalone YAML, reloaded by the proxies,
//! awaited on `/config_dump`), probe, next.
//!
//! Runs as root with `ip`, `iptables`/`ipset` and `nft` installed. Otherwise the test prints a
//! skip line and passes, unless `NODEMESH_E2E=1`, where a skip is a failure.
#![allow(clippy::unwrap_used)] // Test code: a panic is a failed test.

use std::time::{Duration, Instant};

use nodemesh_redirect::Backend;
use nodemesh_testbed::MeshOptions;
use nodemesh_testbed::matrix::{
    self, Layout, MatrixBed, Outcome, PodId, Reachability, Scenario, pod,
};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");

fn start(backend: Backend) -> MatrixBed {
    let mut opts = MeshOptions::new(BINARY);
    opts.backend = backend;
    match MatrixBed::start(Layout::default(), &opts) {
        Ok(bed) => bed,
        Err(e) => panic!("the matrix testbed did not start: {e}"),
    }
}

/// Runs `scenarios` one after the other on `bed`, prints each step's summary, and fails with
/// the truth tables of every step that went wrong.
fn run_all(bed: &mut MatrixBed, scenarios: &[Scenario]) {
    let mut failed = Vec::new();
    for scenario in scenarios {
        let reports = match bed.run(scenario) {
            Ok(r) => r,
            Err(e) => panic!("scenario {:?}: {e}", scenario.name),
        };
        for report in reports {
            eprint!(
                "{}",
                if report.is_ok() {
                    format!(
                        "ok   {} / {} ({:?} to apply, {:?} to probe)\n",
                        report.scenario,
                        report.step,
                        report.applied,
                        report.comparison.observed.elapsed
                    )
                } else {
                    report.to_string()
                }
            );
            if !report.is_ok() {
                failed.push(report.to_string());
            }
        }
    }
    if !failed.is_empty() {
        let logs: String = matrix::NODES
            .iter()
            .map(|n| {
                let tail = bed.testbed().log_tail(&format!("proxy/{n}"), 25);
                format!("--- proxy {n} ---\n{tail}\n")
            })
            .collect();
        panic!(
            "{} step(s) failed:\n{}\n{logs}",
            failed.len(),
            failed.join("\n")
        );
    }
}

/// Every scenario, on one testbed: with no policy everything reaches everything on TCP and UDP
/// 80 and 81 (mesh, non-mesh and mixed pairs, same node and across); a policy change through
/// the YAML (an AuthorizationPolicy denying TCP 81 to x) takes effect, is rejected (not
/// dropped), and is undone; then the upstream suite's NetworkPolicy cases and the
/// ClusterNetworkPolicy tiers (`matrix::scenarios::network`, `cluster_network`), on TCP for
/// now.
fn reachability_matrix(backend: Backend) {
    if !nodemesh_test_support::root_tier("reachability_matrix", backend.tools()) {
        return;
    }
    let started = Instant::now();
    let mut bed = start(backend);
    let ready = started.elapsed();
    let scenarios = matrix::scenarios::available(bed.model());
    run_all(&mut bed, &scenarios);
    assert_through_the_mesh(&bed);
    // NetworkPolicy and ClusterNetworkPolicy: the proxy enforces them on mesh TCP; UDP and the
    // TCP of pods outside the mesh are the node firewall's (`--manage-redirect`). Every port.
    let policies = [
        matrix::scenarios::network(bed.model()),
        matrix::scenarios::cluster_network(bed.model()),
    ]
    .concat();
    run_all(&mut bed, &policies);
    let scenarios = [scenarios, policies].concat();
    eprintln!(
        "{backend}: testbed ready in {ready:?}, {} scenarios in {:?}",
        scenarios.len(),
        started.elapsed() - ready
    );
}

/// The matrix exercised the mesh: for every mesh pod, its node's proxy logged an inbound TCP 80
/// connection from every other pod, and the source's node logged the outbound side for every
/// mesh source on the other node, and for no source outside the mesh. (Flow records are
/// written when connections end.)
///
/// Not asserted: the source identity of a plaintext source, which the inbound record fills in
/// from the workload at the source IP although nothing verified it.
fn assert_through_the_mesh(bed: &MatrixBed) {
    let layout = &bed.model().layout;
    for to in PodId::all().filter(|p| layout.in_mesh(*p)) {
        for from in PodId::all().filter(|p| *p != to) {
            let (from_ip, to_ip) = (
                bed.model().ip(from).to_string(),
                bed.model().ip(to).to_string(),
            );
            let inbound = |r: &serde_json::Value| {
                r["direction"] == "inbound"
                    && r["dst"]["workload"] == to.testbed_name().as_str()
                    && r["dst"]["port"] == 80
                    && r["src"]["ip"] == from_ip.as_str()
                    && r["verdict"] == "allow"
            };
            await_flow(
                bed,
                to.node(),
                &format!("inbound {from} -> {to} TCP/80"),
                inbound,
            );
            // A pod outside the mesh is not captured: its node logs no outbound side.
            if !layout.in_mesh(from) {
                let captured = bed.testbed().flow_log(from.node()).into_iter().find(|r| {
                    r["direction"] == "outbound"
                        && r["src"]["workload"] == from.testbed_name().as_str()
                });
                assert!(
                    captured.is_none(),
                    "{from} is outside the mesh but was captured: {captured:?}"
                );
            }
            // A same-node call is handed to the inbound side, which alone logs it.
            if layout.in_mesh(from) && from.node() != to.node() {
                let outbound = |r: &serde_json::Value| {
                    r["direction"] == "outbound"
                        && r["src"]["workload"] == from.testbed_name().as_str()
                        && r["dst"]["ip"] == to_ip.as_str()
                        && r["dst"]["port"] == 80
                        && r["verdict"] == "allow"
                };
                await_flow(
                    bed,
                    from.node(),
                    &format!("outbound {from} -> {to} TCP/80"),
                    outbound,
                );
            }
        }
    }
}

/// Waits until `node`'s flow log has a record `matches` picks, failing after 10 s with the
/// records that are there.
fn await_flow(
    bed: &MatrixBed,
    node: &str,
    what: &str,
    matches: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bed.testbed().flow_log(node).iter().any(&matches) {
        if Instant::now() > deadline {
            let all = bed.testbed().flow_log(node);
            let last: Vec<String> = all.iter().rev().take(5).map(|r| r.to_string()).collect();
            panic!(
                "{node} never logged {what} ({} records; the last ones:\n{})",
                all.len(),
                last.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The harness itself on the real network: an expectation nothing enforces shows as wrong
/// cells, a denial by a DROP (a node rule) as "dropped, not rejected" even where the cell is
/// denied as expected, and the same denial by a REJECT (ICMP admin-prohibited) passes.
#[test]
fn matrix_flags_wrong_cells_and_drops() {
    let backend = Backend::Iptables;
    if !nodemesh_test_support::root_tier("matrix_flags_wrong_cells_and_drops", backend.tools()) {
        return;
    }
    let mut bed = start(backend);
    bed.rounds = 1;
    bed.probe.timeout = Duration::from_secs(1);
    let mut unenforced = Reachability::new(true);
    unenforced.expect_to(pod("x/a"), &[matrix::TCP_81], false);
    let cmp = bed.check(&unenforced).unwrap();
    assert_eq!(cmp.mismatches().len(), 8, "{cmp}");
    assert!(cmp.to_string().contains("TCP/81 comparison"), "{cmp}");

    let node = bed.testbed().node(pod("x/c").node()).unwrap().clone();
    let x_c = bed.model().ip(pod("x/c")).to_string();
    let rule = |verb: &str, action: &str| {
        let argv = format!("iptables {verb} FORWARD 1 -p udp --dport 81 -d {x_c} -j {action}");
        node.exec(&argv.split(' ').collect::<Vec<_>>()).unwrap();
    };
    rule("-I", "DROP");
    let mut denied = Reachability::new(true);
    denied.expect_to(pod("x/c"), &[matrix::UDP_81], false);
    let cmp = bed.check(&denied).unwrap();
    assert!(cmp.mismatches().is_empty(), "{cmp}");
    assert_eq!(cmp.dropped().len(), 8, "{cmp}");
    assert!(!cmp.is_ok());

    rule("-R", "REJECT --reject-with icmp-admin-prohibited");
    let cmp = bed.check(&denied).unwrap();
    assert!(cmp.is_ok(), "{cmp}");
    let outcome = &cmp.observed.outcomes[&(pod("z/a"), pod("x/c"), matrix::UDP_81)];
    assert!(matches!(outcome, Outcome::Refused(_)), "{outcome:?}");
}

nodemesh_test_support::per_backend!(reachability_matrix);
