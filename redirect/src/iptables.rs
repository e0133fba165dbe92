//! The iptables backend's rules, rendered (no I/O): chains of ours in three tables, each entered
//! by one jump placed first in a built-in chain.
//!
//! - `mangle PREROUTING` → `NODEMESH-PREROUTING`: capture (TPROXY of new flows; packets of
//!   flows a transparent socket owns are marked and delivered locally by `NODEMESH-DIVERT`).
//! - `nat PREROUTING` → `NODEMESH-NAT`: captured flows skip NAT. Mangle runs before nat, so
//!   without it kube-proxy's `KUBE-SERVICES` would DNAT a captured SYN to a Service VIP: the
//!   proxy's half-open socket would be keyed on the endpoint while the client's ACK still
//!   carries the VIP, and the connection would never complete.
//! - `filter FORWARD` → `NODEMESH-FORWARD`: every legitimate TCP packet to or from a mesh pod
//!   ends at (or starts from) a proxy socket on this node, so one that is forwarded is not
//!   captured: a segment of a flow whose proxy socket is gone (crash, reset), or a connection
//!   kube-proxy DNAT'd to a mesh pod after capture looked (ClusterIP or NodePort of a local
//!   mesh pod, from a pod outside the mesh). Both are dropped: iptables cannot TPROXY after
//!   DNAT, so such connections are refused whatever the mTLS mode (SECURITY.md).

use std::fmt::Write as _;

use crate::rules::{
    CHAIN_DIVERT, CHAIN_FORWARD, CHAIN_NAT, CHAIN_PREROUTING, IPSET_NAME, IPSET_STAGING, RuleSet,
};

/// One iptables table holding chains of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IptablesTable {
    /// `mangle`: capture.
    Mangle,
    /// `nat`: captured flows skip NAT.
    Nat,
    /// `filter`: the forward guard.
    Filter,
    /// ip6tables' `filter`: the IPv6 guard ([`crate::ipv6`]). Not in [`IptablesTable::ALL`].
    Filter6,
}

impl IptablesTable {
    /// Every IPv4 table of ours, in install order.
    pub const ALL: [Self; 3] = [Self::Mangle, Self::Nat, Self::Filter];

    /// The table's name, as `iptables -t` (or `ip6tables -t`) takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mangle => "mangle",
            Self::Nat => "nat",
            Self::Filter | Self::Filter6 => "filter",
        }
    }

    /// The table's name with its family when it is IPv6: `mangle`, `ip6 filter`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Filter6 => "ip6 filter",
            other => other.name(),
        }
    }

    /// Whether the table is ip6tables'.
    pub fn is_ipv6(self) -> bool {
        self == Self::Filter6
    }

    /// The built-in chain that jumps to ours, and the chain it jumps to.
    pub fn hook(self) -> (&'static str, &'static str) {
        match self {
            Self::Mangle => ("PREROUTING", CHAIN_PREROUTING),
            Self::Nat => ("PREROUTING", CHAIN_NAT),
            Self::Filter | Self::Filter6 => ("FORWARD", CHAIN_FORWARD),
        }
    }

    /// Our chains in this table, sorted.
    pub fn chains(self) -> &'static [&'static str] {
        match self {
            Self::Mangle => &[CHAIN_DIVERT, CHAIN_PREROUTING],
            Self::Nat => &[CHAIN_NAT],
            Self::Filter | Self::Filter6 => &[CHAIN_FORWARD],
        }
    }

    /// The jump line from the built-in chain, as `iptables-save` prints it.
    pub fn jump(self) -> String {
        let (builtin, chain) = self.hook();
        format!("-A {builtin} -j {chain}")
    }
}

impl RuleSet {
    /// The rules of our chains in `table`, as `iptables-save` prints them (chains in its order).
    pub fn iptables_rules(&self, table: IptablesTable) -> Vec<String> {
        let Self { ports, marks, .. } = self;
        match table {
            IptablesTable::Mangle => {
                let syn = "-p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN";
                let tproxy = |port: u16| {
                    format!(
                        "-j TPROXY --on-port {port} --on-ip 127.0.0.1 --tproxy-mark {}",
                        marks.tproxy
                    )
                };
                vec![
                    format!("-A {CHAIN_DIVERT} -j MARK --set-xmark {}", marks.tproxy),
                    format!("-A {CHAIN_DIVERT} -j ACCEPT"),
                    format!(
                        "-A {CHAIN_PREROUTING} -m mark --mark {} -j RETURN",
                        marks.proxy
                    ),
                    // Not a pure SYN: a new SYN that hits one of the proxy's TIME_WAIT sockets
                    // must be captured again, not delivered to a port with no listener.
                    format!(
                        "-A {CHAIN_PREROUTING} -p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN \
                         -m socket --transparent -j {CHAIN_DIVERT}"
                    ),
                    format!(
                        "-A {CHAIN_PREROUTING} {syn} -m set --match-set {IPSET_NAME} src {}",
                        tproxy(ports.outbound)
                    ),
                    format!(
                        "-A {CHAIN_PREROUTING} -p tcp -m tcp --dport {} --tcp-flags \
                         FIN,SYN,RST,ACK SYN -m set --match-set {IPSET_NAME} dst {}",
                        ports.hbone,
                        tproxy(ports.hbone)
                    ),
                    format!(
                        "-A {CHAIN_PREROUTING} {syn} -m set --match-set {IPSET_NAME} dst {}",
                        tproxy(ports.inbound)
                    ),
                ]
            }
            IptablesTable::Nat => vec![format!(
                "-A {CHAIN_NAT} -m mark --mark {} -j ACCEPT",
                marks.tproxy
            )],
            IptablesTable::Filter => ["src", "dst"]
                .map(|dir| {
                    format!(
                        "-A {CHAIN_FORWARD} -p tcp -m set --match-set {IPSET_NAME} {dir} -j DROP"
                    )
                })
                .into(),
            IptablesTable::Filter6 => self.ipv6_iptables_rules(),
        }
    }

    /// `iptables-restore --noflush` input that (re)creates our chains in `table` and moves the
    /// jump to them to the top of its built-in chain, deleting the `jumps` found there: declaring
    /// a chain flushes it, so the table's change is one atomic commit.
    pub fn render_iptables(&self, table: IptablesTable, jumps: usize) -> String {
        let (builtin, chain) = table.hook();
        let mut out = format!("*{}\n", table.name());
        for chain in table.chains() {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for _ in 0..jumps {
            let _ = writeln!(out, "-D {builtin} -j {chain}");
        }
        let _ = writeln!(out, "-I {builtin} 1 -j {chain}");
        for rule in self.iptables_rules(table) {
            let _ = writeln!(out, "{rule}");
        }
        out.push_str("COMMIT\n");
        out
    }

    /// `ipset restore` input that replaces the pod set in place: fill a staging set, swap it in
    /// (atomic), destroy the staging set. Rules that reference the set are untouched.
    pub fn render_ipset(&self) -> String {
        ipset_script(IPSET_NAME, IPSET_STAGING, "inet", self.pods())
    }
}

/// `ipset restore` input that replaces the members of `set` (`hash:ip`, `family`) with
/// `members` through `staging`, atomically.
pub(crate) fn ipset_script<T: std::fmt::Display>(
    set: &str,
    staging: &str,
    family: &str,
    members: impl IntoIterator<Item = T>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "create {set} hash:ip family {family} -exist");
    let _ = writeln!(out, "create {staging} hash:ip family {family} -exist");
    let _ = writeln!(out, "flush {staging}");
    for ip in members {
        let _ = writeln!(out, "add {staging} {ip}");
    }
    let _ = writeln!(out, "swap {staging} {set}");
    let _ = writeln!(out, "destroy {staging}");
    out
}

/// `iptables-restore --noflush` input that deletes `jumps` jumps to our chains in `table` and
/// the `chains` of ours found there.
pub(crate) fn render_iptables_removal(
    table: IptablesTable,
    chains: &[String],
    jumps: usize,
) -> String {
    let (builtin, chain) = table.hook();
    let mut out = format!("*{}\n", table.name());
    for _ in 0..jumps {
        let _ = writeln!(out, "-D {builtin} -j {chain}");
    }
    for chain in chains {
        let _ = writeln!(out, "-F {chain}");
    }
    for chain in chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use nodemesh_net::Mark;

    use super::*;
    use crate::rules::Backend;

    #[test]
    fn a_masked_proxy_mark_is_matched_under_its_mask() {
        let mut r = RuleSet::new(Backend::Iptables, []);
        let has = |r: &RuleSet, rule: &str| {
            r.iptables_rules(IptablesTable::Mangle)
                .iter()
                .any(|l| l.ends_with(rule))
        };
        assert!(has(
            &r,
            "NODEMESH-PREROUTING -m mark --mark 0x539 -j RETURN"
        ));
        r.marks.proxy = Mark {
            value: 0x539,
            mask: 0xfff,
        };
        assert!(has(
            &r,
            "NODEMESH-PREROUTING -m mark --mark 0x539/0xfff -j RETURN"
        ));
    }

    #[test]
    fn the_socket_rule_leaves_pure_syns_to_capture() {
        let r = RuleSet::new(Backend::Iptables, []);
        let rules = r.iptables_rules(IptablesTable::Mangle);
        let socket = rules.iter().find(|l| l.contains("-m socket")).unwrap();
        assert!(
            socket.contains("! --tcp-flags FIN,SYN,RST,ACK SYN"),
            "{socket}"
        );
    }

    #[test]
    fn captured_flows_skip_nat_and_forwarded_pod_tcp_is_dropped() {
        let r = RuleSet::new(Backend::Iptables, []);
        assert_eq!(
            r.iptables_rules(IptablesTable::Nat),
            ["-A NODEMESH-NAT -m mark --mark 0x111/0xfff -j ACCEPT"]
        );
        let forward = r.iptables_rules(IptablesTable::Filter);
        assert_eq!(forward.len(), 2);
        assert!(forward.iter().all(|l| l.ends_with("-j DROP")));
    }

    #[test]
    fn the_jump_is_moved_to_the_top_in_the_same_commit() {
        let r = RuleSet::new(Backend::Iptables, [Ipv4Addr::new(10, 0, 0, 1)]);
        let text = r.render_iptables(IptablesTable::Nat, 2);
        assert_eq!(
            text,
            "*nat\n:NODEMESH-NAT - [0:0]\n-D PREROUTING -j NODEMESH-NAT\n\
             -D PREROUTING -j NODEMESH-NAT\n-I PREROUTING 1 -j NODEMESH-NAT\n\
             -A NODEMESH-NAT -m mark --mark 0x111/0xfff -j ACCEPT\nCOMMIT\n"
        );
    }

    #[test]
    fn set_change_keeps_chains() {
        let a = RuleSet::new(Backend::Iptables, [Ipv4Addr::new(10, 0, 0, 1)]);
        let b = a.with_pods([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
        for table in IptablesTable::ALL {
            assert_eq!(a.iptables_rules(table), b.iptables_rules(table));
        }
        assert_ne!(a.render_ipset(), b.render_ipset());
    }
}
