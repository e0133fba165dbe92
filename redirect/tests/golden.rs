//! Golden tests: the rendered rules compared exactly with the text under `tests/golden/`.
//!
//! After an intended change, regenerate with `NODEMESH_BLESS=1 cargo test -p nodemesh-redirect
//! --test golden` and review the diff.
#![allow(clippy::unwrap_used)] // Test helpers: a panic is a failed test.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use nodemesh_redirect::{Backend, IptablesTable, RuleSet};

fn rules(backend: Backend) -> RuleSet {
    let addrs = [
        "10.200.1.12",
        "10.200.1.11",
        "10.200.1.13",
        "fd00:10:200:1::12",
    ];
    RuleSet::parse(backend, addrs).unwrap()
}

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

#[test]
fn iptables_restore_input_per_table() {
    for table in IptablesTable::ALL {
        check(
            &format!("iptables-restore-{}.txt", table.name()),
            &rules(Backend::Iptables).render_iptables(table, 0),
        );
    }
}

#[test]
fn iptables_restore_input_moving_the_jump_first() {
    check(
        "iptables-restore-nat-moved.txt",
        &rules(Backend::Iptables).render_iptables(IptablesTable::Nat, 2),
    );
}

#[test]
fn ipset_restore_input() {
    check(
        "ipset-restore.txt",
        &rules(Backend::Iptables).render_ipset(),
    );
}

#[test]
fn ipset_restore_input_empty() {
    let empty = RuleSet::new(Backend::Iptables, std::iter::empty::<Ipv4Addr>());
    check("ipset-restore-empty.txt", &empty.render_ipset());
}

#[test]
fn nft_script() {
    check("nft.txt", &rules(Backend::Nftables).render_nft());
}

#[test]
fn nft_script_empty() {
    let empty = RuleSet::new(Backend::Nftables, std::iter::empty::<Ipv4Addr>());
    check("nft-empty.txt", &empty.render_nft());
}

#[test]
fn nft_set_update() {
    check("nft-set.txt", &rules(Backend::Nftables).render_nft_set());
}

#[test]
fn the_ipv6_guard() {
    let rules = rules(Backend::Iptables);
    let table = IptablesTable::Filter6;
    check(
        "ip6tables-restore-filter.txt",
        &rules.render_iptables(table, 0),
    );
    check("ipset-restore-6.txt", &rules.render_ipset6());
    check("nft6.txt", &rules.render_nft6());
    check("nft6-set.txt", &rules.render_nft6_set());
}

#[test]
fn ip_commands() {
    check("ip.txt", &rules(Backend::Iptables).render_ip());
}
