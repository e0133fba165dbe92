//! Observe: run the tools and read what of ours is installed on a [`Host`] into an [`Observed`].
//!
//! Reading changes nothing. The parsers of the tools' output are pure and tested here; the
//! comparison with a desired [`RuleSet`] is [`crate::compare`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::error::RedirectError;
use crate::host::{Host, Tool, ok_or_failed};
use crate::iptables::IptablesTable;
use crate::ipv6::{IPSET6_NAME, IPSET6_STAGING, host_has_ipv6};
use crate::rules::{Backend, IPSET_NAME, IPSET_STAGING, NFT_SET, NFT_TABLE, RuleSet};

/// The kernel switch capture needs on (`1`): TPROXY delivers forwarded packets.
pub(crate) const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// What of the capture rules is installed on a host, as the tools print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The value of `net.ipv4.ip_forward` (`"1"` when on).
    pub ip_forward: String,
    /// The `ip -4 rule list` lines at our priority ([`RuleSet::rule_pref`]).
    pub ip_rules: Vec<String>,
    /// The routes of our table ([`RuleSet::table`]); `None` when the table does not exist.
    pub routes: Option<Vec<String>>,
    /// Whether the host has IPv6 at all (then the IPv6 guard is read and wanted).
    pub ipv6: bool,
    /// Our chains and set, of the backend looked at.
    pub firewall: Firewall,
}

/// Our chains and pod set as one backend's tools print them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firewall {
    /// `iptables-save` and `ipset`.
    Iptables(Box<IptablesState>),
    /// `nft list`.
    Nftables(NftState),
}

impl Firewall {
    /// Nothing of ours, for `backend`.
    pub fn empty(backend: Backend) -> Self {
        match backend {
            Backend::Iptables => Self::Iptables(Box::default()),
            Backend::Nftables => Self::Nftables(NftState::default()),
        }
    }
}

/// Our iptables chains and ipsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptablesState {
    /// Ours in `mangle` (capture).
    pub mangle: TableState,
    /// Ours in `nat` (captured flows skip NAT).
    pub nat: TableState,
    /// Ours in `filter` (the forward guard).
    pub filter: TableState,
    /// Ours in ip6tables' `filter` (the IPv6 guard).
    pub filter6: TableState,
    /// Our sets that exist (the pod sets, a leftover staging set).
    pub sets: Vec<String>,
    /// The pod set's members, when it exists.
    pub members: Option<BTreeSet<Ipv4Addr>>,
    /// The IPv6 pod set's members, when it exists.
    pub members6: Option<BTreeSet<Ipv6Addr>>,
}

impl IptablesState {
    /// What of ours is in `table`.
    pub fn table(&self, table: IptablesTable) -> &TableState {
        match table {
            IptablesTable::Mangle => &self.mangle,
            IptablesTable::Nat => &self.nat,
            IptablesTable::Filter => &self.filter,
            IptablesTable::Filter6 => &self.filter6,
        }
    }

    fn table_mut(&mut self, table: IptablesTable) -> &mut TableState {
        match table {
            IptablesTable::Mangle => &mut self.mangle,
            IptablesTable::Nat => &mut self.nat,
            IptablesTable::Filter => &mut self.filter,
            IptablesTable::Filter6 => &mut self.filter6,
        }
    }
}

/// Our chains in one iptables table, and the jumps to them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    /// Our chains that exist, sorted.
    pub chains: Vec<String>,
    /// Our `-A NODEMESH-*` rules, in `iptables-save` order.
    pub rules: Vec<String>,
    /// Where the jumps to our chain sit in the built-in chain (0 = its first rule).
    pub jumps: Vec<usize>,
}

/// Our nft tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftState {
    /// Our chains by name with their lines, when the table `ip nodemesh` exists.
    pub chains: Option<BTreeMap<String, Vec<String>>>,
    /// The pod set's members, when it exists.
    pub members: Option<BTreeSet<Ipv4Addr>>,
    /// The chains of the table `ip6 nodemesh` (the IPv6 guard), when it exists.
    pub chains6: Option<BTreeMap<String, Vec<String>>>,
    /// The IPv6 pod set's members, when it exists.
    pub members6: Option<BTreeSet<Ipv6Addr>>,
}

/// Checks the tools of `backend` and the namespace, before anything is read or touched.
fn preflight(host: &Host, backend: Backend) -> Result<(), RedirectError> {
    for tool in backend.tools() {
        tool.locate()?;
    }
    host.check()
}

/// Reads `ip_forward`, our ip rule and routes, and the firewall of `rules.backend` on `host`,
/// after checking that the backend's tools are installed and the namespace can be entered.
pub fn observe(host: &Host, rules: &RuleSet) -> Result<Observed, RedirectError> {
    preflight(host, rules.backend)?;
    let forward = host.sh(&format!("cat {IP_FORWARD}"), "read ip_forward")?;
    let ip_forward = ok_or_failed(forward, "cat", "read ip_forward")?
        .trim()
        .to_owned();
    let pref = rules.rule_pref.to_string();
    let ip_rules = lines(&host.run(
        Tool::Ip,
        &["-4", "rule", "list", "pref", &pref],
        None,
        "list ip rules",
    )?);
    let table = rules.table.to_string();
    // A table that was never used does not exist: `ip` fails, which means "no routes".
    let routes = host.try_run(
        Tool::Ip,
        &["-4", "route", "show", "table", &table],
        None,
        "list routes",
    )?;
    let routes = routes.ok.then(|| lines(&routes.stdout));
    Ok(Observed {
        ip_forward,
        ip_rules,
        routes,
        ipv6: host_has_ipv6(host)?,
        firewall: observe_firewall(host, rules.backend)?,
    })
}

/// Reads our chains and pod sets with the tools of `backend` (a missing tool is an error); the
/// IPv6 guard only where the host has IPv6.
pub fn observe_firewall(host: &Host, backend: Backend) -> Result<Firewall, RedirectError> {
    let ipv6 = host_has_ipv6(host)?;
    match backend {
        Backend::Iptables => observe_iptables(host, ipv6).map(|s| Firewall::Iptables(Box::new(s))),
        Backend::Nftables => observe_nft(host, ipv6).map(Firewall::Nftables),
    }
}

fn observe_iptables(host: &Host, ipv6: bool) -> Result<IptablesState, RedirectError> {
    let save = host.run(Tool::IptablesSave, &[], None, "read the rules")?;
    let names = host.run(Tool::Ipset, &["list", "-n"], None, "list sets")?;
    let sets = parse_ipset_names(&names);
    let read_set = |name: &str| -> Result<Option<String>, RedirectError> {
        if !sets.iter().any(|s| s == name) {
            return Ok(None);
        }
        host.run(Tool::Ipset, &["save", name], None, "read a pod set")
            .map(Some)
    };
    let members = match read_set(IPSET_NAME)? {
        Some(saved) => Some(parse_ipset_members(&saved, IPSET_NAME)?),
        None => None,
    };
    let members6 = match read_set(IPSET6_NAME)? {
        Some(saved) => Some(parse_ipset_members(&saved, IPSET6_NAME)?),
        None => None,
    };
    let filter6 = if ipv6 {
        let args = ["-t", "filter"];
        let save6 = host.run(Tool::Ip6tablesSave, &args, None, "read the IPv6 rules")?;
        parse_iptables_save(&save6).filter
    } else {
        TableState::default()
    };
    Ok(IptablesState {
        sets,
        members,
        members6,
        filter6,
        ..parse_iptables_save(&save)
    })
}

fn observe_nft(host: &Host, ipv6: bool) -> Result<NftState, RedirectError> {
    let (chains, members) = observe_nft_table(host, "ip")?;
    let (chains6, members6) = if ipv6 {
        observe_nft_table(host, "ip6")?
    } else {
        (None, None)
    };
    Ok(NftState {
        chains,
        members,
        chains6,
        members6,
    })
}

/// The chains and pod set of our table in `family`; `None`s when the table does not exist.
#[allow(clippy::type_complexity)]
fn observe_nft_table<A: FromStr + Ord>(
    host: &Host,
    family: &str,
) -> Result<(Option<BTreeMap<String, Vec<String>>>, Option<BTreeSet<A>>), RedirectError> {
    let listed = host.try_run(
        Tool::Nft,
        &["list", "table", family, NFT_TABLE],
        None,
        "read our table",
    )?;
    if !listed.ok {
        if listed.stderr.contains("No such file") || listed.stderr.contains("does not exist") {
            return Ok((None, None));
        }
        return ok_or_failed(listed, "nft", "read our table").map(|_| (None, None));
    }
    let set = host.try_run(
        Tool::Nft,
        &["-j", "list", "set", family, NFT_TABLE, NFT_SET],
        None,
        "read the pod set",
    )?;
    let members = if set.ok {
        Some(parse_nft_members(&set.stdout)?)
    } else {
        None
    };
    Ok((Some(parse_nft_chains(&listed.stdout)), members))
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_end().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Our chains, rules and jumps in `iptables-save` output, per table of ours (no sets).
fn parse_iptables_save(save: &str) -> IptablesState {
    let mut found = IptablesState::default();
    let mut table = None;
    let mut position = 0;
    for line in save.lines().map(str::trim_end) {
        if let Some(name) = line.strip_prefix('*') {
            table = IptablesTable::ALL.into_iter().find(|t| t.name() == name);
            position = 0;
            continue;
        }
        let Some(table) = table else { continue };
        let (builtin, _) = table.hook();
        let ours = found.table_mut(table);
        if let Some(decl) = line.strip_prefix(':') {
            if decl.starts_with("NODEMESH-") {
                ours.chains
                    .push(decl.split(' ').next().unwrap_or(decl).to_owned());
            }
        } else if line.starts_with("-A NODEMESH-") {
            ours.rules.push(line.to_owned());
        } else if line.strip_prefix("-A ").and_then(|l| l.split(' ').next()) == Some(builtin) {
            if line == table.jump() {
                ours.jumps.push(position);
            }
            position += 1;
        }
    }
    for table in IptablesTable::ALL {
        found.table_mut(table).chains.sort();
    }
    found
}

/// Our sets among the names `ipset list -n` prints.
fn parse_ipset_names(names: &str) -> Vec<String> {
    names
        .lines()
        .map(str::trim)
        .filter(|n| [IPSET_NAME, IPSET_STAGING, IPSET6_NAME, IPSET6_STAGING].contains(n))
        .map(str::to_owned)
        .collect()
}

/// The members of the pod set `set` in `ipset save` output (IPv4 or IPv6 by `A`).
fn parse_ipset_members<A: FromStr + Ord>(
    saved: &str,
    set: &str,
) -> Result<BTreeSet<A>, RedirectError> {
    let prefix = format!("add {set} ");
    let mut members = BTreeSet::new();
    for line in saved.lines() {
        if let Some(ip) = line.trim().strip_prefix(&prefix) {
            members.insert(ip.parse().map_err(|_| RedirectError::Output {
                tool: "ipset".into(),
                reason: format!("member {ip:?} of {set} is not an address of its family"),
            })?);
        }
    }
    Ok(members)
}

/// Our chains in `nft list table` output: each chain's lines, trimmed.
fn parse_nft_chains(listed: &str) -> BTreeMap<String, Vec<String>> {
    let mut chains = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in listed.lines().map(str::trim) {
        if let Some((name, lines)) = current.as_mut() {
            if line == "}" {
                chains.insert(std::mem::take(name), std::mem::take(lines));
                current = None;
            } else if !line.is_empty() {
                lines.push(line.to_owned());
            }
        } else if let Some(name) = line
            .strip_prefix("chain ")
            .and_then(|l| l.strip_suffix(" {"))
        {
            current = Some((name.to_owned(), Vec::new()));
        }
    }
    chains
}

/// The members of the pod set in `nft -j list set` output (IPv4 or IPv6 by `A`).
fn parse_nft_members<A: FromStr + Ord>(json: &str) -> Result<BTreeSet<A>, RedirectError> {
    let bad = |reason: String| RedirectError::Output {
        tool: "nft -j".into(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let mut members = BTreeSet::new();
    let items = value["nftables"].as_array().cloned().unwrap_or_default();
    for item in items {
        let Some(elems) = item["set"]["elem"].as_array() else {
            continue;
        };
        for elem in elems {
            let text = elem
                .as_str()
                .ok_or_else(|| bad(format!("set element {elem} is not an address")))?;
            members
                .insert(text.parse().map_err(|_| {
                    bad(format!("set element {text:?} is not of the set's family"))
                })?);
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_json_members() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "ip", "name": "pods", "table": "nodemesh", "type": "ipv4_addr",
             "elem": ["10.1.1.1", "10.1.1.2"]}}]}"#;
        let members: BTreeSet<Ipv4Addr> = parse_nft_members(json).unwrap();
        assert_eq!(members.len(), 2);
        let empty = r#"{"nftables": [{"set": {"name": "pods"}}]}"#;
        assert!(parse_nft_members::<Ipv4Addr>(empty).unwrap().is_empty());
        let v6 = r#"{"nftables": [{"set": {"elem": ["::1"]}}]}"#;
        assert!(parse_nft_members::<Ipv4Addr>(v6).is_err());
        assert_eq!(parse_nft_members::<Ipv6Addr>(v6).unwrap().len(), 1);
        assert!(parse_nft_members::<Ipv4Addr>("not json").is_err());
    }

    #[test]
    fn iptables_save_per_table_with_jump_positions() {
        let save = "\
*filter
:FORWARD ACCEPT [0:0]
:NODEMESH-FORWARD - [0:0]
-A FORWARD -j KUBE-FORWARD
-A FORWARD -j NODEMESH-FORWARD
-A NODEMESH-FORWARD -p tcp -j DROP
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:NODEMESH-PREROUTING - [3:120]
:NODEMESH-DIVERT - [0:0]
-A PREROUTING -j NODEMESH-PREROUTING
-A PREROUTING -p udp -j ACCEPT
-A PREROUTING -j NODEMESH-PREROUTING
-A NODEMESH-DIVERT -j ACCEPT
COMMIT
*raw
:NODEMESH-NAT - [0:0]
-A PREROUTING -j NODEMESH-NAT
COMMIT
";
        let found = parse_iptables_save(save);
        assert_eq!(
            found.mangle.chains,
            ["NODEMESH-DIVERT", "NODEMESH-PREROUTING"]
        );
        assert_eq!(found.mangle.jumps, [0, 2]);
        assert_eq!(found.mangle.rules, ["-A NODEMESH-DIVERT -j ACCEPT"]);
        assert_eq!(found.filter.jumps, [1]);
        assert_eq!(found.filter.rules, ["-A NODEMESH-FORWARD -p tcp -j DROP"]);
        assert_eq!(found.nat, TableState::default(), "raw is not ours");
        assert_eq!(
            parse_iptables_save("*mangle\nCOMMIT\n"),
            IptablesState::default()
        );
    }

    #[test]
    fn ipset_output() {
        assert_eq!(
            parse_ipset_names("other\nnodemesh-pods\nnodemesh-pods-new\n"),
            [IPSET_NAME, IPSET_STAGING]
        );
        let saved = "create nodemesh-pods hash:ip family inet\nadd nodemesh-pods 10.0.0.2\n";
        assert_eq!(
            parse_ipset_members(saved, IPSET_NAME).unwrap(),
            [Ipv4Addr::new(10, 0, 0, 2)].into()
        );
        assert!(parse_ipset_members::<Ipv4Addr>("add nodemesh-pods pod-a\n", IPSET_NAME).is_err());
        let v6 = "add nodemesh-pods6 fd00::1\nadd nodemesh-pods6 10.0.0.1\n";
        assert!(
            parse_ipset_members::<Ipv6Addr>(v6, IPSET6_NAME).is_err(),
            "IPv4 in the IPv6 set"
        );
    }

    #[test]
    fn nft_chains_by_name() {
        let listed = "table ip nodemesh {\n\tset pods {\n\t\ttype ipv4_addr\n\t}\n\n\tchain \
                      NODEMESH-PREROUTING {\n\t\ttype filter hook prerouting priority mangle; \
                      policy accept;\n\n\t\tmeta mark 0x00000539 return\n\t}\n\n\tchain \
                      NODEMESH-NAT {\n\t}\n}\n";
        let chains = parse_nft_chains(listed);
        assert_eq!(
            chains["NODEMESH-PREROUTING"],
            [
                "type filter hook prerouting priority mangle; policy accept;",
                "meta mark 0x00000539 return"
            ]
        );
        assert!(chains["NODEMESH-NAT"].is_empty());
        assert_eq!(chains.len(), 2);
        assert!(parse_nft_chains("table ip nodemesh {\n}\n").is_empty());
    }
}
