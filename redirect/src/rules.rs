//! [`RuleSet`]: the desired capture rules of one node, and their rendering (no I/O).
//!
//! The rendered text is in the canonical form the tools print back (`iptables-save`,
//! `nft list`), so [`status`](crate::status) compares installed rules line by line.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use nodemesh_net::Mark;
use nodemesh_net::routing::{TPROXY_RULE_PREF, TPROXY_TABLE};
use nodemesh_net::{marks, ports};

use crate::error::RedirectError;

/// Our chain jumped to from `mangle PREROUTING`: the capture rules.
pub const CHAIN_PREROUTING: &str = "NODEMESH-PREROUTING";
/// Our chain that marks packets of flows owned by a transparent socket and accepts them.
pub const CHAIN_DIVERT: &str = "NODEMESH-DIVERT";
/// Our chain jumped to first from `nat PREROUTING`: flows already captured skip NAT, so
/// kube-proxy does not rewrite a captured connection's Service VIP.
pub const CHAIN_NAT: &str = "NODEMESH-NAT";
/// Our chain jumped to first from `filter FORWARD`: TCP to or from a mesh pod that no proxy
/// socket owns is dropped.
pub const CHAIN_FORWARD: &str = "NODEMESH-FORWARD";
/// Our nft chain after kube-proxy's DNAT: captures connections DNAT'd to a local mesh pod.
pub const CHAIN_DNAT: &str = "NODEMESH-DNAT";
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
                Tool::Ip6tablesRestore,
                Tool::Ip6tablesSave,
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
    pods6: BTreeSet<Ipv6Addr>,
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
            pods6: BTreeSet::new(),
            ports: Ports::default(),
            marks: Marks::default(),
            table: TPROXY_TABLE,
            rule_pref: TPROXY_RULE_PREF,
            backend,
        }
    }

    /// Like [`RuleSet::new`], from text addresses (IPv4 ones are captured, IPv6 ones guarded);
    /// anything but an IP address is refused.
    pub fn parse<S: AsRef<str>>(
        backend: Backend,
        pods: impl IntoIterator<Item = S>,
    ) -> Result<Self, RedirectError> {
        let addrs = pods
            .into_iter()
            .map(|s| {
                let s = s.as_ref().trim();
                s.parse::<IpAddr>().map_err(|_| RedirectError::BadAddress {
                    input: s.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(backend, []).with_addrs(addrs))
    }

    /// The mesh pods' IPv4 addresses (captured), sorted.
    pub fn pods(&self) -> &BTreeSet<Ipv4Addr> {
        &self.pods
    }

    /// The mesh pods' IPv6 addresses (not meshed: the IPv6 guard drops what is forwarded to or
    /// from them, see [`crate::ipv6`]), sorted.
    pub fn pods6(&self) -> &BTreeSet<Ipv6Addr> {
        &self.pods6
    }

    /// Every mesh pod address, both families.
    pub fn addrs(&self) -> BTreeSet<IpAddr> {
        let v4 = self.pods.iter().copied().map(IpAddr::V4);
        v4.chain(self.pods6.iter().copied().map(IpAddr::V6))
            .collect()
    }

    /// The same rules for another set of IPv6 pod addresses (the IPv4 ones kept).
    pub fn with_pods6(&self, pods6: impl IntoIterator<Item = Ipv6Addr>) -> Self {
        Self {
            pods6: pods6.into_iter().collect(),
            ..self.clone()
        }
    }

    /// The same rules for another set of pod addresses of either family.
    pub fn with_addrs(&self, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let (mut pods, mut pods6) = (BTreeSet::new(), BTreeSet::new());
        for addr in addrs {
            match addr {
                IpAddr::V4(ip) => pods.insert(ip),
                IpAddr::V6(ip) => pods6.insert(ip),
            };
        }
        Self {
            pods,
            pods6,
            ..self.clone()
        }
    }

    /// The same rules for another set of IPv4 pod addresses (the IPv6 ones kept).
    pub fn with_pods(&self, pods: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        Self {
            pods: pods.into_iter().collect(),
            ..self.clone()
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_no_address() {
        for bad in ["10.0.0", "pod-a", "", "10.0.0.1/32", "fd00::/64"] {
            let err = RuleSet::parse(Backend::Iptables, [bad]).unwrap_err();
            assert!(
                matches!(err, RedirectError::BadAddress { .. }),
                "{bad}: {err}"
            );
        }
        let ok = RuleSet::parse(Backend::Iptables, ["10.0.0.2", "10.0.0.1", "10.0.0.2"]).unwrap();
        assert_eq!(ok.pods().len(), 2);
        let dual = RuleSet::parse(Backend::Iptables, ["10.0.0.1", "fd00::1"]).unwrap();
        assert_eq!((dual.pods().len(), dual.pods6().len()), (1, 1));
        assert_eq!(dual.with_pods([]).pods6().len(), 1, "IPv6 kept");
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
}
