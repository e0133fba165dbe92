//! Root tier: the testbed's mesh with WireGuard inside the proxies (`nodemesh proxy
//! --wireguard`): HBONE still works across nodes (exempt from the tunnel by port), and the
//! testbed's WireGuard step sees UDP, ICMP and non-mesh TCP cross only as WireGuard; the
//! proxy's own passthrough connections to non-mesh pods on other nodes get through the tunnel
//! too (they leave with the node's tunnel address, inside its pod network).
//!
//! Runs as root with the testbed's tools; otherwise a skip line, or a failure with
//! `NODEMESH_E2E=1`.
#![allow(clippy::unwrap_used)] // Test code: a panic is a failed test.

use nodemesh_testbed::scenario::{self, Outcome};
use nodemesh_testbed::{MeshOptions, Testbed};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");

fn root_tier(test: &str) -> bool {
    let forced = std::env::var("NODEMESH_E2E").is_ok_and(|v| v == "1");
    match nodemesh_testbed::check_prerequisites() {
        Ok(()) => true,
        Err(e) if forced => panic!("{test}: NODEMESH_E2E=1 but cannot run: {e}"),
        Err(e) => {
            eprintln!("skip {test}: {e} (set NODEMESH_E2E=1 to make this a failure)");
            false
        }
    }
}

fn assert_ok(bed: &Testbed, outcome: &Outcome) {
    assert!(
        outcome.ok,
        "step failed: {}\n{}\n--- proxy node-a ---\n{}\n--- proxy node-b ---\n{}",
        outcome.step,
        outcome.details.join("\n"),
        bed.log_tail("proxy/node-a", 25),
        bed.log_tail("proxy/node-b", 25),
    );
}

#[test]
fn proxies_with_wireguard_carry_hbone_and_the_rest() {
    if !root_tier("proxies_with_wireguard_carry_hbone_and_the_rest") {
        return;
    }
    let mut bed = Testbed::build(scenario::shop()).unwrap();
    let mut opts = MeshOptions::new(BINARY);
    opts.wireguard = true;
    if let Err(e) = bed.start_mesh(&opts) {
        panic!(
            "mesh did not start: {e}\n--- proxy node-a ---\n{}",
            bed.log_tail("proxy/node-a", 25)
        );
    }
    assert_ok(&bed, &scenario::allowed_via_service(&bed).unwrap());
    assert_ok(&bed, &scenario::passthrough_to_non_mesh(&bed).unwrap());
    let outcome = scenario::wireguard_carries_the_rest(&bed).unwrap();
    eprintln!("{}: {}", outcome.step, outcome.details.join("; "));
    assert_ok(&bed, &outcome);
}
