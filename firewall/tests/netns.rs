//! Root tier: the rendered table loaded into `nft` in network namespaces of each test's own —
//! checked, applied, updated by a delta, listed, recovered after a refused delta, removed — and
//! real UDP through a router namespace that enforces it.
//!
//! Runs when root. Without root or `nft` the tests print a skip line and pass, unless
//! `NODEMESH_E2E=1`, where a skip is a failure. Namespaces are deleted by a guard, even when a
//! test fails.
#![allow(clippy::unwrap_used)] // Test helpers: a panic is a failed test.

mod common;

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nodemesh_firewall::{Firewall, FirewallError, Ruleset, transaction};
use nodemesh_test_support::{Need, root_tier};
use nodemesh_testbed::Netns;

const NEEDS: [Need; 2] = [
    Need::program("nft", "nftables"),
    Need::program("ip", "iproute2"),
];

/// Namespaces deleted on drop.
struct Namespaces(Vec<Netns>);

impl Namespaces {
    fn new(roles: &[&str]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut all = Self(Vec::new());
        for role in roles {
            let name = format!("nm-fw-{}-{n}-{role}", std::process::id());
            all.0.push(Netns::create(&name).unwrap());
        }
        all
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ns.destroy();
        }
    }
}

fn render(yaml: &str) -> Ruleset {
    let config = common::config_from(yaml);
    Ruleset::render(&config, &common::policies(&config), "node-a")
}

fn with_pod_xc() -> String {
    common::CONFIG.replace(
        "workloads:\n",
        "workloads:\n  - {name: xc, namespace: x, ip: 10.1.0.13, node: node-a, labels: {pod: b}}\n",
    )
}

#[test]
fn the_table_loads_updates_by_delta_and_is_removed() {
    if !root_tier("the_table_loads_updates_by_delta_and_is_removed", NEEDS) {
        return;
    }
    let ns = Namespaces::new(&["node"]);
    let node = &ns.0[0];
    let mut fw = Firewall::in_netns("nft", node.name());
    let (script, _) = transaction(None, &render(common::CONFIG)).unwrap();
    fw.check(&script).unwrap();

    let config = common::config();
    let first = fw
        .sync(&config, &common::policies(&config), "node-a")
        .unwrap();
    assert!(first.applied.unwrap().from_scratch);
    let again = fw
        .sync(&config, &common::policies(&config), "node-a")
        .unwrap();
    assert_eq!(again.applied, None, "nothing changed, nothing applied");

    let more = common::config_from(&with_pod_xc());
    let delta = fw.sync(&more, &common::policies(&more), "node-a").unwrap();
    let delta = delta.applied.unwrap();
    assert!(!delta.from_scratch);
    assert_eq!((delta.chains_changed, delta.elements_deleted), (0, 0));
    assert!(delta.elements_added >= 2, "{delta:?}");

    let listed = node
        .exec(&[
            "nft",
            "list",
            "set",
            "inet",
            "nodemesh-netpol",
            "local-pods",
        ])
        .unwrap();
    assert!(listed.contains("10.1.0.13"), "{listed}");
    let table = node
        .exec(&["nft", "list", "table", "inet", "nodemesh-netpol"])
        .unwrap();
    assert!(
        table.contains("jump egress") && table.contains("counter denied-ingress"),
        "{table}"
    );

    fw.remove().unwrap();
    let tables = node.exec(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("nodemesh-netpol"), "{tables}");
    // Removing what is not there is fine.
    fw.remove().unwrap();
}

#[test]
fn a_refused_delta_is_recovered_from_scratch() {
    if !root_tier("a_refused_delta_is_recovered_from_scratch", NEEDS) {
        return;
    }
    let ns = Namespaces::new(&["node"]);
    let node = &ns.0[0];
    let mut fw = Firewall::in_netns("nft", node.name());
    fw.apply(render(&with_pod_xc())).unwrap();
    // Someone deletes the table behind our back: the next delta (deleting elements) is refused.
    node.exec(&["nft", "delete", "table", "inet", "nodemesh-netpol"])
        .unwrap();
    let outcome = fw.apply(render(common::CONFIG)).unwrap();
    assert!(outcome.recovered, "{outcome:?}");
    assert!(outcome.applied.unwrap().from_scratch);
    let listed = node
        .exec(&[
            "nft",
            "list",
            "set",
            "inet",
            "nodemesh-netpol",
            "local-pods",
        ])
        .unwrap();
    assert!(
        listed.contains("10.1.0.12") && !listed.contains("10.1.0.13"),
        "{listed}"
    );

    // A script nft refuses is reported with nft's words.
    let err = fw
        .check("add rule inet nodemesh-netpol nowhere accept\n")
        .unwrap_err();
    assert!(
        matches!(&err, FirewallError::Refused { stderr, .. } if stderr.contains("nowhere") || stderr.contains("No such file")),
        "{err}"
    );
}

/// Client `ya` (10.1.1.11, namespace y) — router (node-a, enforcing) — server `xa` (10.1.0.11,
/// namespace x). The fixture's Admin policy `deny-from-y` denies UDP 81 from y to x and accepts
/// the rest from pods.
#[test]
fn udp_through_the_router_is_allowed_or_rejected_as_the_policies_say() {
    if !root_tier(
        "udp_through_the_router_is_allowed_or_rejected_as_the_policies_say",
        NEEDS,
    ) {
        return;
    }
    let ns = Namespaces::new(&["c", "r", "s"]);
    let (client, router, server) = (&ns.0[0], &ns.0[1], &ns.0[2]);
    let n = client
        .name()
        .trim_end_matches("-c")
        .rsplit('-')
        .next()
        .unwrap()
        .to_owned();
    let (cv, sv) = (format!("fwc{n}"), format!("fws{n}"));
    for (peer, link, ours, addr, gw) in [
        (client, &cv, "10.1.1.1/24", "10.1.1.11/24", "10.1.1.1"),
        (server, &sv, "10.1.0.1/24", "10.1.0.11/24", "10.1.0.1"),
    ] {
        router
            .ip(&[
                "link",
                "add",
                link,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                peer.name(),
            ])
            .unwrap();
        router.ip(&["addr", "add", ours, "dev", link]).unwrap();
        router.ip(&["link", "set", link, "up"]).unwrap();
        peer.ip(&["addr", "add", addr, "dev", "eth0"]).unwrap();
        peer.ip(&["link", "set", "eth0", "up"]).unwrap();
        peer.ip(&["route", "add", "default", "via", gw]).unwrap();
    }
    router.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let mut fw = Firewall::in_netns("nft", router.name());
    let config = common::config();
    fw.sync(&config, &common::policies(&config), "node-a")
        .unwrap();

    // The server echoes one datagram per port.
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let echo = server
        .spawn(move || {
            let socks: Vec<UdpSocket> = [80, 81]
                .map(|p| UdpSocket::bind(("10.1.0.11", p)).unwrap())
                .into();
            bound_tx.send(()).unwrap();
            for s in &socks {
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            }
            let mut got = Vec::new();
            for s in &socks {
                let mut buf = [0u8; 64];
                if let Ok((len, from)) = s.recv_from(&mut buf) {
                    s.send_to(&buf[..len], from).unwrap();
                    got.push(s.local_addr().unwrap().port());
                }
            }
            got
        })
        .unwrap();
    bound.recv_timeout(Duration::from_secs(5)).unwrap();
    let probe = |port: u16| {
        client
            .run(move || {
                let s = UdpSocket::bind("10.1.1.11:0").unwrap();
                s.connect(("10.1.0.11", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let mut last = ErrorKind::TimedOut;
                for _ in 0..4 {
                    s.send(b"probe").unwrap();
                    let mut buf = [0u8; 64];
                    match s.recv(&mut buf) {
                        Ok(_) => return Ok(()),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            last = e.kind();
                        }
                        Err(e) => return Err(e.kind()),
                    }
                }
                Err(last)
            })
            .unwrap()
    };
    assert_eq!(probe(80), Ok(()), "UDP 80 from y is accepted");
    let denied = probe(81);
    assert!(
        matches!(denied, Err(k) if !matches!(k, ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "UDP 81 from y is rejected with an ICMP error, not dropped: {denied:?}"
    );
    assert_eq!(
        echo.join().unwrap(),
        [80],
        "only port 80 reached the server"
    );
    let counter = router
        .exec(&[
            "nft",
            "list",
            "counter",
            "inet",
            "nodemesh-netpol",
            "denied-ingress",
        ])
        .unwrap();
    assert!(
        !counter.contains("packets 0 "),
        "the rejection is counted: {counter}"
    );
}
