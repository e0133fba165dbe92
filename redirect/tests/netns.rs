//! Root tier: apply, re-apply, update, status and remove in a network namespace of each test's
//! own, for both backends.
//!
//! Runs when root. Without root the tests print a skip line and pass, unless `NODEMESH_E2E=1`,
//! where a skip is a failure. The namespace is deleted by a guard, even when a test fails.
#![allow(clippy::unwrap_used)] // Test helpers: a panic is a failed test.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use nodemesh_redirect::{
    Backend, Host, IptablesTable, ItemState, NFT_TABLE, RedirectError, RuleSet, Tool, apply,
    remove, status,
};
use nodemesh_test_support::process::sh;
use nodemesh_test_support::root_tier;

/// What every test here needs besides root: both backends' tools.
const TOOLS: [Tool; 5] = [
    Tool::Ip,
    Tool::IptablesRestore,
    Tool::IptablesSave,
    Tool::Ipset,
    Tool::Nft,
];

/// A network namespace of our own, deleted on drop (its processes killed first).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "nm-redir-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        // A new namespace has `lo` down; the local route of table 133 needs it up.
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn host(&self) -> Host {
        Host::netns(&self.name)
    }

    fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Everything of the namespace's firewall and routing that capture could touch, with
/// `iptables-save` comments and counters stripped.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    iptables: Vec<String>,
    ipsets: String,
    nft: String,
    rules: String,
    routes: String,
}

fn snapshot(ns: &Netns) -> Snapshot {
    // Both families, the IPv6 lines marked: the IPv6 guard is ours too.
    let v4 = ns.exec(&["iptables-save"]);
    let v6 = ns.exec(&["ip6tables-save"]);
    let lines = v4
        .lines()
        .map(|l| (l, ""))
        .chain(v6.lines().map(|l| (l, "ip6 ")));
    let iptables = lines
        .filter(|(l, _)| !l.starts_with('#'))
        .map(|(l, family)| match l.find(" [") {
            Some(i) if l.starts_with(':') => format!("{family}{}", &l[..i]),
            _ => format!("{family}{l}"),
        })
        .collect();
    // Table by table in a fixed order: a repaired table may be listed in another place.
    let nft = ["ip", "ip6"]
        .map(|family| ns.exec(&["nft", "list", "ruleset", family]))
        .join("");
    Snapshot {
        iptables,
        ipsets: ns.exec(&["ipset", "save"]),
        nft,
        rules: ns.exec(&["ip", "-4", "rule", "list"]),
        routes: ns.exec(&["ip", "-4", "route", "show", "table", "all"]),
    }
}

/// The parts of a snapshot that are ours.
fn ours(s: &Snapshot) -> Vec<String> {
    let mut found: Vec<String> = s
        .iptables
        .iter()
        .filter(|l| l.contains("NODEMESH"))
        .cloned()
        .collect();
    found.extend(s.ipsets.lines().map(str::to_owned));
    found.extend(
        s.nft
            .lines()
            .filter(|l| l.contains(NFT_TABLE))
            .map(str::to_owned),
    );
    found.extend(
        s.rules
            .lines()
            .filter(|l| l.contains("lookup 133"))
            .map(str::to_owned),
    );
    found.extend(
        s.routes
            .lines()
            .filter(|l| l.contains("table 133"))
            .map(str::to_owned),
    );
    found
}

/// The iptables rules that are not ours (built-in chain policies and others' rules).
fn not_ours(s: &Snapshot) -> Vec<String> {
    s.iptables
        .iter()
        .filter(|l| l.starts_with("-A") && !l.contains("NODEMESH"))
        .cloned()
        .collect()
}

/// Our nft chain as listed, or nothing when it is not there.
fn nft_chain(ns: &Netns) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "nft", "list", "chain", "ip", NFT_TABLE,
        ])
        .arg("NODEMESH-PREROUTING")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pods(last: &[u8]) -> Vec<Ipv4Addr> {
    last.iter().map(|&n| Ipv4Addr::new(10, 200, 1, n)).collect()
}

fn lifecycle(backend: Backend) {
    let ns = Netns::new();
    let host = ns.host();
    // Someone else's rules (kube-proxy's, say), which must survive us: ours go before them.
    for (table, chain) in [
        ("mangle", "PREROUTING"),
        ("nat", "PREROUTING"),
        ("filter", "FORWARD"),
    ] {
        ns.exec(&[
            "iptables", "-t", table, "-A", chain, "-p", "udp", "-j", "ACCEPT",
        ]);
    }
    let before = snapshot(&ns);
    assert!(ours(&before).is_empty(), "{:?}", ours(&before));

    let rules = RuleSet::new(backend, pods(&[11, 12])).with_pods6(["fd00::11".parse().unwrap()]);
    let st = status(&host, &rules).unwrap();
    assert!(st.nothing_installed(), "{st}");
    assert!(!st.in_sync());

    let first = apply(&host, &rules).unwrap();
    assert!(!first.changed.is_empty());
    let st = status(&host, &rules).unwrap();
    assert!(st.in_sync(), "{st}");
    let installed = snapshot(&ns);
    match backend {
        Backend::Iptables => {
            assert!(
                installed
                    .iptables
                    .contains(&"-A PREROUTING -j NODEMESH-PREROUTING".to_owned())
            );
            assert!(
                installed
                    .iptables
                    .contains(&"-A PREROUTING -j NODEMESH-NAT".to_owned())
            );
            assert!(
                installed
                    .iptables
                    .contains(&"-A FORWARD -j NODEMESH-FORWARD".to_owned())
            );
            for rule in IptablesTable::ALL
                .into_iter()
                .flat_map(|t| rules.iptables_rules(t))
            {
                assert!(
                    installed.iptables.contains(&rule),
                    "{rule} not in {:?}",
                    installed.iptables
                );
            }
            assert!(
                installed.ipsets.contains("add nodemesh-pods 10.200.1.11"),
                "{}",
                installed.ipsets
            );
            assert!(installed.ipsets.contains("add nodemesh-pods 10.200.1.12"));
            assert!(!installed.ipsets.contains("nodemesh-pods-new"));
            // The IPv6 guard: first in ip6tables' FORWARD, the set of IPv6 pod addresses.
            let v6 = &installed.iptables;
            assert!(
                v6.contains(&"ip6 -A FORWARD -j NODEMESH-FORWARD".to_owned()),
                "{v6:?}"
            );
            for rule in rules.iptables_rules(IptablesTable::Filter6) {
                assert!(v6.contains(&format!("ip6 {rule}")), "{rule} not in {v6:?}");
            }
            assert!(installed.ipsets.contains("add nodemesh-pods6 fd00::11"));
        }
        Backend::Nftables => {
            for line in rules.nft_chains().into_iter().flat_map(|c| c.lines) {
                assert!(
                    installed.nft.contains(&line),
                    "{line} not in {}",
                    installed.nft
                );
            }
            assert!(
                installed.nft.contains("10.200.1.11, 10.200.1.12"),
                "{}",
                installed.nft
            );
            assert!(
                installed.nft.contains("table ip6 nodemesh"),
                "{}",
                installed.nft
            );
            for line in rules.nft6_chain().lines {
                assert!(
                    installed.nft.contains(&line),
                    "{line} not in {}",
                    installed.nft
                );
            }
            assert!(
                installed.nft.contains("elements = { fd00::11 }"),
                "{}",
                installed.nft
            );
        }
    }
    assert!(
        installed
            .rules
            .contains("100:\tfrom all fwmark 0x111/0xfff lookup 133"),
        "{}",
        installed.rules
    );
    assert!(
        installed.routes.contains("local default dev lo table 133"),
        "{}",
        installed.routes
    );
    assert_eq!(
        ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );

    // Idempotent: a second apply changes nothing at all.
    let again = apply(&host, &rules).unwrap();
    assert!(again.changed.is_empty(), "{:?}", again.changed);
    assert_eq!(snapshot(&ns), installed);

    // A new pod replaces the set's members only.
    let chain_before = nft_chain(&ns);
    let more = rules.with_pods(pods(&[11, 12, 13]));
    let st = status(&host, &more).unwrap();
    assert!(!st.in_sync());
    let update = apply(&host, &more).unwrap();
    assert_eq!(update.changed.len(), 1, "{:?}", update.changed);
    assert!(update.changed[0].contains("set"), "{:?}", update.changed);
    let updated = snapshot(&ns);
    assert_eq!(updated.iptables, installed.iptables);
    assert_eq!(updated.rules, installed.rules);
    assert_eq!(updated.routes, installed.routes);
    match backend {
        Backend::Iptables => {
            assert_eq!(updated.nft, installed.nft);
            assert_ne!(updated.ipsets, installed.ipsets);
            assert!(updated.ipsets.contains("add nodemesh-pods 10.200.1.13"));
        }
        Backend::Nftables => {
            assert_eq!(nft_chain(&ns), chain_before);
            assert!(updated.nft.contains("10.200.1.13"), "{}", updated.nft);
        }
    }
    assert!(status(&host, &more).unwrap().in_sync());

    // A new IPv6 address replaces the IPv6 set's members only.
    let more = more.with_pods6(["fd00::11", "fd00::13"].map(|a| a.parse().unwrap()));
    let update = apply(&host, &more).unwrap();
    assert_eq!(update.changed.len(), 1, "{:?}", update.changed);
    assert!(
        update.changed[0].contains("set") && update.changed[0].contains('6'),
        "{:?}",
        update.changed
    );
    assert_eq!(snapshot(&ns).iptables, installed.iptables);
    assert!(status(&host, &more).unwrap().in_sync());

    // Remove leaves nothing of ours and everything else as it was.
    let removed = remove(&host, &more).unwrap();
    assert!(!removed.changed.is_empty());
    let after = snapshot(&ns);
    assert!(ours(&after).is_empty(), "{:?}", ours(&after));
    assert_eq!(not_ours(&after), not_ours(&before));
    assert_eq!(after.rules, before.rules);
    assert_eq!(after.routes, before.routes);
    if backend == Backend::Nftables {
        assert_eq!(after.iptables, before.iptables);
    }
    assert!(status(&host, &more).unwrap().nothing_installed());
    // Removing again is a no-op.
    assert!(remove(&host, &more).unwrap().changed.is_empty());
}

#[test]
fn lifecycle_iptables() {
    if root_tier("lifecycle_iptables", TOOLS) {
        lifecycle(Backend::Iptables);
    }
}

#[test]
fn lifecycle_nftables() {
    if root_tier("lifecycle_nftables", TOOLS) {
        lifecycle(Backend::Nftables);
    }
}

fn drift_repair(backend: Backend) {
    let ns = Netns::new();
    let host = ns.host();
    let rules = RuleSet::new(backend, pods(&[11]));
    apply(&host, &rules).unwrap();
    let installed = snapshot(&ns);
    match backend {
        Backend::Iptables => {
            ns.exec(&["iptables", "-t", "mangle", "-D", "NODEMESH-PREROUTING", "3"]);
            ns.exec(&[
                "iptables",
                "-t",
                "mangle",
                "-A",
                "PREROUTING",
                "-j",
                "NODEMESH-PREROUTING",
            ]);
        }
        Backend::Nftables => {
            ns.exec(&[
                "nft",
                "flush",
                "chain",
                "ip",
                NFT_TABLE,
                "NODEMESH-PREROUTING",
            ]);
        }
    }
    ns.exec(&["ip", "rule", "del", "pref", "100"]);
    let st = status(&host, &rules).unwrap();
    assert!(!st.in_sync(), "{st}");
    assert!(
        matches!(st.capture.state, ItemState::Drift(_) | ItemState::Missing)
            && st.capture.name.contains("chain"),
        "{st}"
    );
    apply(&host, &rules).unwrap();
    assert!(status(&host, &rules).unwrap().in_sync());
    assert_eq!(snapshot(&ns), installed);
    remove(&host, &rules).unwrap();
}

#[test]
fn drift_is_reported_and_repaired_iptables() {
    if root_tier("drift_is_reported_and_repaired_iptables", TOOLS) {
        drift_repair(Backend::Iptables);
    }
}

#[test]
fn drift_is_reported_and_repaired_nftables() {
    if root_tier("drift_is_reported_and_repaired_nftables", TOOLS) {
        drift_repair(Backend::Nftables);
    }
}

#[test]
fn unknown_namespace_is_refused_before_anything() {
    if !root_tier("unknown_namespace_is_refused_before_anything", TOOLS) {
        return;
    }
    let host = Host::netns(format!("nm-redir-{}-absent", std::process::id()));
    let rules = RuleSet::new(Backend::Iptables, pods(&[11]));
    let err = apply(&host, &rules).unwrap_err();
    assert!(matches!(err, RedirectError::NoNetns { .. }), "{err}");
}

#[test]
fn remove_also_clears_the_other_backend() {
    if !root_tier("remove_also_clears_the_other_backend", TOOLS) {
        return;
    }
    let ns = Netns::new();
    let host = ns.host();
    let before = snapshot(&ns);
    apply(&host, &RuleSet::new(Backend::Iptables, pods(&[11]))).unwrap();
    apply(&host, &RuleSet::new(Backend::Nftables, pods(&[11]))).unwrap();
    remove(&host, &RuleSet::new(Backend::Nftables, pods(&[11]))).unwrap();
    let after = snapshot(&ns);
    assert!(ours(&after).is_empty(), "{:?}", ours(&after));
    assert_eq!(after.rules, before.rules);
    assert_eq!(after.routes, before.routes);
}

/// Set to a namespace name by [`read_only_proc_sys_is_refused_before_anything`] for the child run.
const RO_CHILD_ENV: &str = "NODEMESH_REDIRECT_RO_NETNS";

#[test]
fn read_only_proc_sys_is_refused_before_anything() {
    if !root_tier("read_only_proc_sys_is_refused_before_anything", TOOLS) {
        return;
    }
    let ns = Netns::new();
    // The child test runs in a mount namespace of its own where /proc/sys is read-only.
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "mount --bind -o ro /proc/sys /proc/sys && exec {} --exact read_only_proc_sys_child \
         --nocapture",
        exe.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env(RO_CHILD_ENV, &ns.name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing was touched.
    assert!(ns.exec(&["ip", "rule", "list", "pref", "100"]).is_empty());
    assert_eq!(
        ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "0"
    );
}

/// The child of [`read_only_proc_sys_is_refused_before_anything`]; does nothing on its own.
#[test]
fn read_only_proc_sys_child() {
    let Ok(name) = std::env::var(RO_CHILD_ENV) else {
        return;
    };
    let err = apply(
        &Host::netns(name),
        &RuleSet::new(Backend::Iptables, pods(&[11])),
    )
    .unwrap_err();
    assert!(matches!(err, RedirectError::IpForward { .. }), "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
}
