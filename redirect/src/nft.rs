//! The nftables backend's rules, rendered (no I/O): one table `ip nodemesh` with the pod set and
//! four base chains.
//!
//! - `NODEMESH-PREROUTING` (prerouting, `mangle`): capture, as the iptables backend.
//! - `NODEMESH-NAT` (nat prerouting, `dstnat - 10`): a captured flow gets an identity DNAT. In
//!   nftables an `accept` in one base chain does not stop the next one, so the only way to keep
//!   kube-proxy's `nat-prerouting` chain (`dstnat`) from rewriting a captured connection's VIP
//!   is to bind the connection's NAT first: the kernel runs no further NAT chain for a
//!   connection whose destination NAT is set, and an identity binding changes no address.
//! - `NODEMESH-DNAT` (prerouting, `dstnat + 10`): connections kube-proxy DNAT'd to a local mesh
//!   pod (a ClusterIP or NodePort called from outside the mesh) are captured after DNAT, as
//!   inbound plaintext, so STRICT refuses them and PERMISSIVE checks them against policy.
//! - `NODEMESH-FORWARD` (forward, `filter - 10`): TCP to or from a mesh pod that no proxy socket
//!   owns is dropped (see [`crate::iptables`]).

use std::fmt::Write as _;

use nodemesh_net::Mark;

use crate::rules::{
    CHAIN_DNAT, CHAIN_FORWARD, CHAIN_NAT, CHAIN_PREROUTING, NFT_SET, NFT_TABLE, RuleSet,
};

/// One base chain of our table: its name and its lines as `nft list` prints them (trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChain {
    /// The chain's name.
    pub name: &'static str,
    /// Its lines: the base-chain declaration, then the rules.
    pub lines: Vec<String>,
}

impl RuleSet {
    /// Our chains, in the order they are defined (and `nft list table` prints them).
    pub fn nft_chains(&self) -> Vec<NftChain> {
        let Self { ports, marks, .. } = self;
        let mark = format!("meta mark set {:#010x}", marks.tproxy.value);
        let syn = "tcp flags syn / fin,syn,rst,ack";
        let not_syn = "tcp flags != syn / fin,syn,rst,ack";
        let tproxy = |port: u16| format!("tproxy to 127.0.0.1:{port} {mark} accept");
        let prerouting = vec![
            "type filter hook prerouting priority mangle; policy accept;".to_owned(),
            format!("{} return", nft_mark_match(marks.proxy)),
            // Not a pure SYN: a new SYN that hits one of the proxy's TIME_WAIT sockets must be
            // captured again, not delivered to a port with no listener.
            format!("{not_syn} socket transparent 1 {mark} accept"),
            format!("{syn} ip saddr @{NFT_SET} {}", tproxy(ports.outbound)),
            format!(
                "tcp dport {} {syn} ip daddr @{NFT_SET} {}",
                ports.hbone,
                tproxy(ports.hbone)
            ),
            format!("{syn} ip daddr @{NFT_SET} {}", tproxy(ports.inbound)),
            // Unlike iptables' TPROXY target, nft's `tproxy` falls through to the next rule
            // when no listener is there (the proxy is down): drop, so capture fails closed.
            format!("{syn} ip saddr @{NFT_SET} drop"),
            format!("{syn} ip daddr @{NFT_SET} drop"),
        ];
        let nat = vec![
            "type nat hook prerouting priority dstnat - 10; policy accept;".to_owned(),
            format!("{} dnat to ip daddr", nft_mark_match(marks.tproxy)),
        ];
        let dnat = vec![
            "type filter hook prerouting priority dstnat + 10; policy accept;".to_owned(),
            format!("ct status dnat {not_syn} socket transparent 1 {mark} accept"),
            format!(
                "ct status dnat {syn} ip daddr @{NFT_SET} {}",
                tproxy(ports.inbound)
            ),
            format!("ct status dnat {syn} ip daddr @{NFT_SET} drop"),
        ];
        let forward = vec![
            "type filter hook forward priority filter - 10; policy accept;".to_owned(),
            format!("meta l4proto tcp ip saddr @{NFT_SET} drop"),
            format!("meta l4proto tcp ip daddr @{NFT_SET} drop"),
        ];
        [
            (CHAIN_PREROUTING, prerouting),
            (CHAIN_NAT, nat),
            (CHAIN_DNAT, dnat),
            (CHAIN_FORWARD, forward),
        ]
        .into_iter()
        .map(|(name, lines)| NftChain { name, lines })
        .collect()
    }

    /// The `nft -f` script that replaces our table in one transaction (create it empty if absent,
    /// delete it, define it whole), in the layout `nft list table` prints.
    pub fn render_nft(&self) -> String {
        let elements = nft_elements(self.pods());
        nft_table_script("ip", &[], "ipv4_addr", &elements, &self.nft_chains())
    }

    /// The `nft -f` script that replaces only the pod set's elements, in one transaction.
    pub fn render_nft_set(&self) -> String {
        nft_set_script("ip", &nft_elements(self.pods()))
    }
}

/// The `nft -f` script that replaces our table of `family` in one transaction: `objects` (lines
/// before the set, such as a counter), the pod set of `set_type` with `elements`, the `chains`.
pub(crate) fn nft_table_script(
    family: &str,
    objects: &[&str],
    set_type: &str,
    elements: &str,
    chains: &[NftChain],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table {family} {NFT_TABLE} {{}}");
    let _ = writeln!(out, "delete table {family} {NFT_TABLE}");
    let _ = writeln!(out, "table {family} {NFT_TABLE} {{");
    for line in objects {
        let _ = writeln!(out, "\t{line}");
    }
    let _ = writeln!(out, "\tset {NFT_SET} {{");
    let _ = writeln!(out, "\t\ttype {set_type}");
    if !elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {elements} }}");
    }
    let _ = writeln!(out, "\t}}");
    for chain in chains {
        let _ = writeln!(out);
        let _ = writeln!(out, "\tchain {} {{", chain.name);
        for line in &chain.lines {
            let _ = writeln!(out, "\t\t{line}");
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
    out
}

/// The `nft -f` script that replaces only the elements of our pod set in `family`.
pub(crate) fn nft_set_script(family: &str, elements: &str) -> String {
    let mut out = format!("flush set {family} {NFT_TABLE} {NFT_SET}\n");
    if !elements.is_empty() {
        let _ = writeln!(
            out,
            "add element {family} {NFT_TABLE} {NFT_SET} {{ {elements} }}"
        );
    }
    out
}

/// Set elements as nft lists them: `a, b, c`.
pub(crate) fn nft_elements<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let all: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    all.join(", ")
}

/// An nft match of `mark` as `nft list` prints it: the value alone when the mark owns every bit.
fn nft_mark_match(mark: Mark) -> String {
    if mark.mask == u32::MAX {
        format!("meta mark {:#010x}", mark.value)
    } else {
        format!("meta mark & {:#010x} == {:#010x}", mark.mask, mark.value)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::rules::Backend;

    fn chain(r: &RuleSet, name: &str) -> Vec<String> {
        r.nft_chains()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap()
            .lines
    }

    #[test]
    fn a_masked_proxy_mark_is_matched_under_its_mask() {
        let mut r = RuleSet::new(Backend::Nftables, []);
        let lines = chain(&r, CHAIN_PREROUTING);
        assert!(lines.contains(&"meta mark 0x00000539 return".to_owned()));
        r.marks.proxy = Mark {
            value: 0x539,
            mask: 0xfff,
        };
        let lines = chain(&r, CHAIN_PREROUTING);
        assert!(lines.contains(&"meta mark & 0x00000fff == 0x00000539 return".to_owned()));
    }

    #[test]
    fn captured_flows_get_an_identity_nat_before_kube_proxy() {
        let r = RuleSet::new(Backend::Nftables, []);
        assert_eq!(
            chain(&r, CHAIN_NAT),
            [
                "type nat hook prerouting priority dstnat - 10; policy accept;",
                "meta mark & 0x00000fff == 0x00000111 dnat to ip daddr"
            ]
        );
    }

    #[test]
    fn dnat_to_a_mesh_pod_is_captured_after_dnat_and_fails_closed() {
        let r = RuleSet::new(Backend::Nftables, []);
        let lines = chain(&r, CHAIN_DNAT);
        assert!(lines[0].contains("priority dstnat + 10"));
        assert!(lines[2].contains("tproxy to 127.0.0.1:15006"), "{lines:?}");
        assert!(lines.last().unwrap().ends_with("ip daddr @pods drop"));
    }

    #[test]
    fn set_change_keeps_chains() {
        let a = RuleSet::new(Backend::Nftables, [Ipv4Addr::new(10, 0, 0, 1)]);
        let b = a.with_pods([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(a.nft_chains(), b.nft_chains());
        assert_ne!(a.render_nft_set(), b.render_nft_set());
    }
}
