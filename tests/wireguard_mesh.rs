//! Root tier: the testbed's mesh with WireGuard inside the proxies (`nodemesh proxy
//! --wireguard`): HBONE still works across nodes (the proxies' own, exempt from the tunnel), and the
//! testbed's WireGuard step sees UDP, ICMP and non-mesh TCP cross only as WireGuard; the
//! proxy's own passthrough connections to non-mesh pods on other nodes get through the tunnel
//! too (they leave with the node's tunnel address, inside its pod network).
//!
//! Runs as root with the testbed's tools; otherwise a skip line, or a failure with
//! `NODEMESH_E2E=1`.
#![allow(clippy::unwrap_used)] // Test code: a panic is a failed test.

use nodemesh_testbed::scenario;
use nodemesh_testbed::{MeshOptions, Testbed, Transport};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");

#[test]
fn proxies_with_wireguard_carry_hbone_and_the_rest() {
    if !nodemesh_test_support::root_tier(
        "proxies_with_wireguard_carry_hbone_and_the_rest",
        nodemesh_redirect::Backend::Iptables.tools(),
    ) {
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
    let capture = bed.capture_underlay().unwrap();
    scenario::assert_ok(&bed, &scenario::allowed_via_service(&bed).unwrap());
    // TLS already, the proxies' HBONE stays out of the tunnel: it crosses as TCP 15008.
    let hbone = capture
        .finish()
        .unwrap()
        .ipv4()
        .filter(|f| {
            matches!(
                f.transport,
                Transport::Tcp(_, 15008) | Transport::Tcp(15008, _)
            )
        })
        .count();
    assert!(
        hbone > 0,
        "no TCP 15008 on the underlay: the proxies' HBONE went into the tunnel"
    );
    scenario::assert_ok(&bed, &scenario::passthrough_to_non_mesh(&bed).unwrap());
    let outcome = scenario::wireguard_carries_the_rest(&bed).unwrap();
    eprintln!("{}: {}", outcome.step, outcome.details.join("; "));
    scenario::assert_ok(&bed, &outcome);
}
