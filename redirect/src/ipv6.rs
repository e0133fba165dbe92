//! The IPv6 guard: rendered (no I/O), and its drop counter read from a host.
//!
//! nodemesh captures, tunnels and authorizes IPv4. On a dual-stack node a mesh pod's IPv6
//! address would be a way around mTLS and policy, so every IPv6 packet forwarded to or from one
//! is dropped and counted: an ipset ([`IPSET6_NAME`], `hash:ip family inet6`) matched first in
//! ip6tables' `filter FORWARD` (chain [`CHAIN_FORWARD`]), or the nft table `ip6 nodemesh` (set
//! `pods`, chain [`CHAIN_FORWARD`] at `filter - 10`, named counter [`NFT6_COUNTER`]). Only
//! forwarded packets: the node's own IPv6 traffic with its pods (kubelet probes) passes, as the
//! IPv4 forward guard lets it.

use crate::error::RedirectError;
use crate::host::{Host, Tool};
use crate::iptables::ipset_script;
use crate::nft::{NftChain, nft_elements, nft_set_script, nft_table_script};
use crate::rules::{Backend, CHAIN_FORWARD, NFT_SET, NFT_TABLE, RuleSet};

/// The ipset (`hash:ip family inet6`) of the node's mesh pods' IPv6 addresses.
pub const IPSET6_NAME: &str = "nodemesh-pods6";
/// The staging ipset filled and swapped in to replace [`IPSET6_NAME`] atomically.
pub const IPSET6_STAGING: &str = "nodemesh-pods6-new";
/// The nft counter (in table `ip6 nodemesh`) of the packets the guard dropped.
pub const NFT6_COUNTER: &str = "dropped";

impl RuleSet {
    /// The rules of ip6tables' `NODEMESH-FORWARD`, as `ip6tables-save` prints them.
    pub(crate) fn ipv6_iptables_rules(&self) -> Vec<String> {
        ["src", "dst"]
            .map(|dir| format!("-A {CHAIN_FORWARD} -m set --match-set {IPSET6_NAME} {dir} -j DROP"))
            .into()
    }

    /// `ipset restore` input that replaces the IPv6 pod set in place (staging set, swap).
    pub fn render_ipset6(&self) -> String {
        ipset_script(IPSET6_NAME, IPSET6_STAGING, "inet6", self.pods6())
    }

    /// The forward chain of the nft table `ip6 nodemesh`, as `nft list` prints it.
    pub fn nft6_chain(&self) -> NftChain {
        let drop = |dir: &str| format!("ip6 {dir} @{NFT_SET} counter name \"{NFT6_COUNTER}\" drop");
        NftChain {
            name: CHAIN_FORWARD,
            lines: vec![
                "type filter hook forward priority filter - 10; policy accept;".to_owned(),
                drop("saddr"),
                drop("daddr"),
            ],
        }
    }

    /// The `nft -f` script that replaces the table `ip6 nodemesh` in one transaction.
    pub fn render_nft6(&self) -> String {
        let counter = format!("counter {NFT6_COUNTER} {{\n\t}}");
        let elements = nft_elements(self.pods6());
        nft_table_script(
            "ip6",
            &[&counter],
            "ipv6_addr",
            &elements,
            &[self.nft6_chain()],
        )
    }

    /// The `nft -f` script that replaces only the IPv6 pod set's elements.
    pub fn render_nft6_set(&self) -> String {
        nft_set_script("ip6", &nft_elements(self.pods6()))
    }
}

/// Whether `host` has IPv6 at all (a kernel booted with `ipv6.disable=1` has none, and then
/// there is nothing to guard).
pub(crate) fn host_has_ipv6(host: &Host) -> Result<bool, RedirectError> {
    Ok(host.sh("test -d /proc/sys/net/ipv6", "look for IPv6")?.ok)
}

/// The packets the IPv6 guard has dropped on `host` since it was installed (0 when it is not).
pub fn ipv6_dropped(host: &Host, backend: Backend) -> Result<u64, RedirectError> {
    if !host_has_ipv6(host)? {
        return Ok(0);
    }
    match backend {
        Backend::Iptables => {
            let args = ["-c", "-t", "filter"];
            let saved = host.run(Tool::Ip6tablesSave, &args, None, "read the IPv6 guard")?;
            Ok(parse_ip6tables_counters(&saved))
        }
        Backend::Nftables => {
            let args = ["list", "counter", "ip6", NFT_TABLE, NFT6_COUNTER];
            let listed = host.try_run(Tool::Nft, &args, None, "read the IPv6 guard's counter")?;
            Ok(if listed.ok {
                parse_nft_counter(&listed.stdout)
            } else {
                0
            })
        }
    }
}

/// The packets counted by our rules in `ip6tables-save -c` output (`[packets:bytes] -A ...`).
fn parse_ip6tables_counters(saved: &str) -> u64 {
    let ours = format!("-A {CHAIN_FORWARD} ");
    saved
        .lines()
        .filter_map(|l| l.trim().strip_prefix('['))
        .filter_map(|l| l.split_once("] "))
        .filter(|(_, rule)| rule.starts_with(&ours))
        .filter_map(|(counters, _)| counters.split(':').next()?.parse::<u64>().ok())
        .sum()
}

/// The packets of the counter in `nft list counter` output (`packets N bytes M`).
fn parse_nft_counter(listed: &str) -> u64 {
    listed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("packets "))
        .filter_map(|l| l.split(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn dual() -> RuleSet {
        let addrs = ["10.0.0.1", "fd00::2", "fd00::1"].map(|a| a.parse::<IpAddr>().unwrap());
        RuleSet::new(Backend::Nftables, []).with_addrs(addrs)
    }

    #[test]
    fn every_forwarded_ipv6_packet_of_a_mesh_pod_is_dropped_and_counted() {
        let chain = dual().nft6_chain();
        assert!(chain.lines[0].contains("hook forward priority filter - 10"));
        assert!(
            chain.lines[1..]
                .iter()
                .all(|l| l.ends_with("counter name \"dropped\" drop"))
        );
        let rules = dual().ipv6_iptables_rules();
        assert_eq!(
            rules,
            [
                "-A NODEMESH-FORWARD -m set --match-set nodemesh-pods6 src -j DROP",
                "-A NODEMESH-FORWARD -m set --match-set nodemesh-pods6 dst -j DROP"
            ],
            "every protocol, not only TCP"
        );
    }

    #[test]
    fn the_sets_hold_only_ipv6_addresses_sorted() {
        let r = dual();
        assert!(r.render_nft6().contains("elements = { fd00::1, fd00::2 }"));
        assert!(
            r.render_ipset6()
                .contains("add nodemesh-pods6-new fd00::1\nadd nodemesh-pods6-new fd00::2\n")
        );
        assert!(!r.render_ipset6().contains("10.0.0.1"));
        assert_eq!(
            r.render_nft6_set(),
            "flush set ip6 nodemesh pods\nadd element ip6 nodemesh pods { fd00::1, fd00::2 }\n"
        );
    }

    #[test]
    fn counters_are_read_from_the_tools_output() {
        let saved = "*filter\n:FORWARD ACCEPT [9:9]\n:NODEMESH-FORWARD - [0:0]\n\
                     [3:240] -A NODEMESH-FORWARD -m set --match-set nodemesh-pods6 src -j DROP\n\
                     [4:320] -A NODEMESH-FORWARD -m set --match-set nodemesh-pods6 dst -j DROP\n\
                     [100:1] -A FORWARD -j ACCEPT\nCOMMIT\n";
        assert_eq!(parse_ip6tables_counters(saved), 7);
        let listed =
            "table ip6 nodemesh {\n\tcounter dropped {\n\t\tpackets 12 bytes 960\n\t}\n}\n";
        assert_eq!(parse_nft_counter(listed), 12);
        assert_eq!(parse_nft_counter(""), 0);
    }
}
