//! [`RuleSet`]: the desired capture rules of one node, and their rendering (no I/O).
//!
//! The rendered text is in the canonical form the tools print back (`iptables-save`,
//! `nft list`), so [`status`](crate::status) compares installed rules line by line.

use std::collections::BTreeSet;
use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use nodemesh_net::Mark;
use nodemesh_net::routing::{TPROXY_RULE_PREF, TPROXY_TABLE};
use nodemesh_net::{marks, ports};

use crate::error::RedirectError;

/// Our chain jumped to from `mangle PREROUTING`: the capture rules.
pub const CHAIN_PREROUTING: &str = "NODEMESH-PREROUTING";
/// Our chain that marks packets of flows owned by a transparent socket and accepts them.
pub const CHAIN_DIVERT: &str = "NODEMESH-DIVERT";
/// The ipset (`hash:ip`) of the node's mesh pod IPs.
pub const IPSET_NAME: &str = "nodemesh-pods";
/// The staging ipset filled and swapped in to replace [`IPSET_NAME`] atomically.
pub const IPSET_STAGING: &str = "nodemesh-pods-new";
/// The nftables table (family `ip`) holding our set and chain.
pub const NFT_TABLE: &str = "nodemesh";
/// The nftables set of the node's mesh pod IPs.
pub const NFT_SET: &str = "pods";

/// Which tool set installs the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// `iptables-restore` rules and an `ipset` set.
    #[default]
    Iptables,
    /// One `nft` table with a set and a chain.
    Nftables,
}

impl Backend {
    /// The programs this backend runs.
    pub fn tools(self) -> &'static [crate::host::Tool] {
        use crate::host::Tool;
        match self {
            Self::Iptables => &[
                Tool::Ip,
                Tool::IptablesRestore,
                Tool::IptablesSave,
                Tool::Ipset,
            ],
            Self::Nftables => &[Tool::Ip, Tool::Nft],
        }
    }
}

impl FromStr for Backend {
    type Err = RedirectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "iptables" => Ok(Self::Iptables),
            "nftables" | "nft" => Ok(Self::Nftables),
            _ => Err(RedirectError::UnknownBackend {
                input: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
        })
    }
}

/// The proxy's capture listeners (DESIGN.md "Ports"); the defaults are [`nodemesh_net::ports`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Outbound capture: new flows from a local mesh pod ([`ports::OUTBOUND`]).
    pub outbound: u16,
    /// Inbound plaintext capture: new flows to a local mesh pod ([`ports::INBOUND_PLAINTEXT`]).
    pub inbound: u16,
    /// HBONE: new flows to the HBONE port of a local mesh pod ([`ports::HBONE`]).
    pub hbone: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            outbound: ports::OUTBOUND,
            inbound: ports::INBOUND_PLAINTEXT,
            hbone: ports::HBONE,
        }
    }
}

/// The marks capture sets and honours (DESIGN.md "Marks, tables and rule priorities"); the
/// defaults are [`nodemesh_net::marks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// TPROXY delivery, routed by table [`RuleSet::table`] ([`marks::TPROXY`]).
    pub tproxy: Mark,
    /// The proxy's own sockets ([`marks::PROXY`]): capture skips them.
    pub proxy: Mark,
}

impl Default for Marks {
    fn default() -> Self {
        Self {
            tproxy: marks::TPROXY,
            proxy: marks::PROXY,
        }
    }
}

/// The desired capture rules of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pods: BTreeSet<Ipv4Addr>,
    /// The capture listeners.
    pub ports: Ports,
    /// The marks.
    pub marks: Marks,
    /// The routing table that delivers TPROXY-marked packets locally ([`TPROXY_TABLE`]).
    pub table: u32,
    /// The priority of the `ip rule` sending marked packets to [`RuleSet::table`]
    /// ([`TPROXY_RULE_PREF`]).
    pub rule_pref: u32,
    /// Which tool set installs the rules.
    pub backend: Backend,
}

impl RuleSet {
    /// The rules for `pods` with the default ports, marks and table.
    pub fn new(backend: Backend, pods: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        Self {
            pods: pods.into_iter().collect(),
            ports: Ports::default(),
            marks: Marks::default(),
            table: TPROXY_TABLE,
            rule_pref: TPROXY_RULE_PREF,
            backend,
        }
    }

    /// Like [`RuleSet::new`], from text addresses; anything but an IPv4 address is refused.
    pub fn parse<S: AsRef<str>>(
        backend: Backend,
        pods: impl IntoIterator<Item = S>,
    ) -> Result<Self, RedirectError> {
        let pods = pods
            .into_iter()
            .map(|s| {
                let s = s.as_ref().trim();
                match s.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => Ok(ip),
                    _ => Err(RedirectError::NotIpv4 {
                        input: s.to_owned(),
                    }),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(backend, pods))
    }

    /// The mesh pod IPs, sorted.
    pub fn pods(&self) -> &BTreeSet<Ipv4Addr> {
        &self.pods
    }

    /// The same rules for another pod set.
    pub fn with_pods(&self, pods: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        Self {
            pods: pods.into_iter().collect(),
            ..self.clone()
        }
    }

    /// The rule in `mangle PREROUTING` that jumps to our chain, as `iptables-save` prints it.
    pub fn iptables_jump(&self) -> String {
        format!("-A PREROUTING -j {CHAIN_PREROUTING}")
    }

    /// The rules of our chains, as `iptables-save` prints them (chains in its order).
    pub fn iptables_rules(&self) -> Vec<String> {
        let Self { ports, marks, .. } = self;
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
            format!("-A {CHAIN_PREROUTING} -p tcp -m socket --transparent -j {CHAIN_DIVERT}"),
            format!(
                "-A {CHAIN_PREROUTING} {syn} -m set --match-set {IPSET_NAME} src {}",
                tproxy(ports.outbound)
            ),
            format!(
                "-A {CHAIN_PREROUTING} -p tcp -m tcp --dport {} --tcp-flags FIN,SYN,RST,ACK SYN \
                 -m set --match-set {IPSET_NAME} dst {}",
                ports.hbone,
                tproxy(ports.hbone)
            ),
            format!(
                "-A {CHAIN_PREROUTING} {syn} -m set --match-set {IPSET_NAME} dst {}",
                tproxy(ports.inbound)
            ),
        ]
    }

    /// `iptables-restore --noflush` input that (re)creates our chains in `mangle`: declaring a
    /// chain flushes it, so the whole table change is one atomic commit. The jump from
    /// `PREROUTING` is included when `with_jump` (it must not be added twice).
    pub fn render_iptables(&self, with_jump: bool) -> String {
        let mut out = String::from("*mangle\n");
        let _ = writeln!(out, ":{CHAIN_DIVERT} - [0:0]");
        let _ = writeln!(out, ":{CHAIN_PREROUTING} - [0:0]");
        if with_jump {
            let _ = writeln!(out, "{}", self.iptables_jump());
        }
        for rule in self.iptables_rules() {
            let _ = writeln!(out, "{rule}");
        }
        out.push_str("COMMIT\n");
        out
    }

    /// `ipset restore` input that replaces the pod set in place: fill a staging set, swap it in
    /// (atomic), destroy the staging set. Rules that reference the set are untouched.
    pub fn render_ipset(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "create {IPSET_NAME} hash:ip family inet -exist");
        let _ = writeln!(out, "create {IPSET_STAGING} hash:ip family inet -exist");
        let _ = writeln!(out, "flush {IPSET_STAGING}");
        for ip in &self.pods {
            let _ = writeln!(out, "add {IPSET_STAGING} {ip}");
        }
        let _ = writeln!(out, "swap {IPSET_STAGING} {IPSET_NAME}");
        let _ = writeln!(out, "destroy {IPSET_STAGING}");
        out
    }

    /// The lines of our nft chain, as `nft list` prints them (trimmed).
    pub fn nft_chain_lines(&self) -> Vec<String> {
        let Self { ports, marks, .. } = self;
        let mark = format!("meta mark set {:#010x}", marks.tproxy.value);
        let syn = "tcp flags syn / fin,syn,rst,ack";
        let tproxy = |port: u16| format!("tproxy to 127.0.0.1:{port} {mark} accept");
        vec![
            "type filter hook prerouting priority mangle; policy accept;".to_owned(),
            format!("{} return", nft_mark_match(marks.proxy)),
            format!("meta l4proto tcp socket transparent 1 {mark} accept"),
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
        ]
    }

    /// The `nft -f` script that replaces our table in one transaction (create it empty if absent,
    /// delete it, define it whole), in the layout `nft list table` prints.
    pub fn render_nft(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "table ip {NFT_TABLE} {{}}");
        let _ = writeln!(out, "delete table ip {NFT_TABLE}");
        let _ = writeln!(out, "table ip {NFT_TABLE} {{");
        let _ = writeln!(out, "\tset {NFT_SET} {{");
        let _ = writeln!(out, "\t\ttype ipv4_addr");
        if !self.pods.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", self.nft_elements());
        }
        let _ = writeln!(out, "\t}}");
        let _ = writeln!(out);
        let _ = writeln!(out, "\tchain {CHAIN_PREROUTING} {{");
        for line in self.nft_chain_lines() {
            let _ = writeln!(out, "\t\t{line}");
        }
        let _ = writeln!(out, "\t}}");
        let _ = writeln!(out, "}}");
        out
    }

    /// The `nft -f` script that replaces only the pod set's elements, in one transaction.
    pub fn render_nft_set(&self) -> String {
        let mut out = format!("flush set ip {NFT_TABLE} {NFT_SET}\n");
        if !self.pods.is_empty() {
            let _ = writeln!(
                out,
                "add element ip {NFT_TABLE} {NFT_SET} {{ {} }}",
                self.nft_elements()
            );
        }
        out
    }

    /// The `ip rule` selector and action, after `ip rule add`/`del`.
    pub fn ip_rule_args(&self) -> Vec<String> {
        vec![
            "pref".into(),
            self.rule_pref.to_string(),
            "fwmark".into(),
            self.marks.tproxy.to_string(),
            "lookup".into(),
            self.table.to_string(),
        ]
    }

    /// The `ip rule list` line of our rule, as `ip` prints it.
    pub fn ip_rule_line(&self) -> String {
        format!(
            "{}:\tfrom all fwmark {} lookup {}",
            self.rule_pref, self.marks.tproxy, self.table
        )
    }

    /// The route of table [`RuleSet::table`], as `ip route show table N` prints it.
    pub fn route_line(&self) -> &'static str {
        "local default dev lo scope host"
    }

    /// The setup commands besides the firewall, one per line, for humans and golden tests.
    pub fn render_ip(&self) -> String {
        format!(
            "ip rule add {}\nip route replace local 0.0.0.0/0 dev lo table {}\n",
            self.ip_rule_args().join(" "),
            self.table
        )
    }

    fn nft_elements(&self) -> String {
        self.pods
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
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
    use super::*;

    #[test]
    fn refuses_non_ipv4() {
        for bad in ["::1", "10.0.0", "pod-a", "", "10.0.0.1/32"] {
            let err = RuleSet::parse(Backend::Iptables, [bad]).unwrap_err();
            assert!(matches!(err, RedirectError::NotIpv4 { .. }), "{bad}: {err}");
        }
        let ok = RuleSet::parse(Backend::Iptables, ["10.0.0.2", "10.0.0.1", "10.0.0.2"]).unwrap();
        assert_eq!(ok.pods().len(), 2);
    }

    #[test]
    fn backend_names() {
        assert_eq!("iptables".parse::<Backend>().unwrap(), Backend::Iptables);
        assert_eq!("nftables".parse::<Backend>().unwrap(), Backend::Nftables);
        assert!("ebtables".parse::<Backend>().is_err());
    }

    #[test]
    fn marks_and_ports_are_the_nodes() {
        let r = RuleSet::new(Backend::Iptables, []);
        assert_eq!(r.marks.tproxy, marks::TPROXY);
        assert_eq!(r.marks.proxy, marks::PROXY);
        assert_eq!(r.ports.hbone, ports::HBONE);
        assert_eq!((r.table, r.rule_pref), (TPROXY_TABLE, TPROXY_RULE_PREF));
    }

    #[test]
    fn a_masked_proxy_mark_is_matched_under_its_mask() {
        let mut r = RuleSet::new(Backend::Nftables, []);
        let exact = format!("{CHAIN_PREROUTING} -m mark --mark 0x539 -j RETURN");
        assert!(r.iptables_rules().iter().any(|l| l.ends_with(&exact)));
        assert!(
            r.nft_chain_lines()
                .contains(&"meta mark 0x00000539 return".to_owned())
        );
        r.marks.proxy = Mark {
            value: 0x539,
            mask: 0xfff,
        };
        let masked = format!("{CHAIN_PREROUTING} -m mark --mark 0x539/0xfff -j RETURN");
        assert!(r.iptables_rules().iter().any(|l| l.ends_with(&masked)));
        assert!(
            r.nft_chain_lines()
                .contains(&"meta mark & 0x00000fff == 0x00000539 return".to_owned())
        );
    }

    #[test]
    fn set_change_keeps_chains() {
        let a = RuleSet::new(Backend::Iptables, [Ipv4Addr::new(10, 0, 0, 1)]);
        let b = a.with_pods([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(a.iptables_rules(), b.iptables_rules());
        assert_eq!(a.nft_chain_lines(), b.nft_chain_lines());
        assert_ne!(a.render_ipset(), b.render_ipset());
    }
}
