//! Observe: run the tools and read what of ours is installed on a [`Host`] into an [`Observed`].
//!
//! Reading changes nothing. The parsers of the tools' output are pure and tested here; the
//! comparison with a desired [`RuleSet`] is [`crate::compare`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::error::RedirectError;
use crate::host::{Host, Tool, ok_or_failed};
use crate::rules::{
    Backend, CHAIN_PREROUTING, IPSET_NAME, IPSET_STAGING, NFT_SET, NFT_TABLE, RuleSet,
};

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
    /// Our chains and set, of the backend looked at.
    pub firewall: Firewall,
}

/// Our chains and pod set as one backend's tools print them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firewall {
    /// `iptables-save` and `ipset`.
    Iptables(IptablesState),
    /// `nft list`.
    Nftables(NftState),
}

impl Firewall {
    /// Nothing of ours, for `backend`.
    pub fn empty(backend: Backend) -> Self {
        match backend {
            Backend::Iptables => Self::Iptables(IptablesState::default()),
            Backend::Nftables => Self::Nftables(NftState::default()),
        }
    }
}

/// Our iptables chains and ipsets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IptablesState {
    /// Our `-A NODEMESH-*` rules, in `iptables-save` order.
    pub rules: Vec<String>,
    /// Our chains that exist.
    pub chains: Vec<String>,
    /// How many jumps lead from `mangle PREROUTING` to our chain.
    pub jumps: usize,
    /// Our sets that exist (the pod set, a leftover staging set).
    pub sets: Vec<String>,
    /// The pod set's members, when it exists.
    pub members: Option<BTreeSet<Ipv4Addr>>,
}

/// Our nft table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftState {
    /// The lines of our chain, when the table exists (empty when the chain does not).
    pub chain: Option<Vec<String>>,
    /// The pod set's members, when it exists.
    pub members: Option<BTreeSet<Ipv4Addr>>,
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
        firewall: observe_firewall(host, rules.backend)?,
    })
}

/// Reads our chains and pod set with the tools of `backend` (a missing tool is an error).
pub fn observe_firewall(host: &Host, backend: Backend) -> Result<Firewall, RedirectError> {
    match backend {
        Backend::Iptables => observe_iptables(host).map(Firewall::Iptables),
        Backend::Nftables => observe_nft(host).map(Firewall::Nftables),
    }
}

fn observe_iptables(host: &Host) -> Result<IptablesState, RedirectError> {
    let save = host.run(Tool::IptablesSave, &[], None, "read the rules")?;
    let names = host.run(Tool::Ipset, &["list", "-n"], None, "list sets")?;
    let sets = parse_ipset_names(&names);
    let members = if sets.iter().any(|s| s == IPSET_NAME) {
        let saved = host.run(Tool::Ipset, &["save", IPSET_NAME], None, "read the pod set")?;
        Some(parse_ipset_members(&saved)?)
    } else {
        None
    };
    Ok(IptablesState {
        sets,
        members,
        ..parse_iptables_save(&save)
    })
}

fn observe_nft(host: &Host) -> Result<NftState, RedirectError> {
    let listed = host.try_run(
        Tool::Nft,
        &["list", "table", "ip", NFT_TABLE],
        None,
        "read our table",
    )?;
    if !listed.ok {
        if listed.stderr.contains("No such file") || listed.stderr.contains("does not exist") {
            return Ok(NftState::default());
        }
        return ok_or_failed(listed, "nft", "read our table").map(|_| NftState::default());
    }
    let set = host.try_run(
        Tool::Nft,
        &["-j", "list", "set", "ip", NFT_TABLE, NFT_SET],
        None,
        "read the pod set",
    )?;
    let members = if set.ok {
        Some(parse_nft_members(&set.stdout)?)
    } else {
        None
    };
    Ok(NftState {
        chain: Some(parse_nft_chain(&listed.stdout)),
        members,
    })
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_end().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Our chains, rules and jumps in the `mangle` table of `iptables-save` output (no sets).
fn parse_iptables_save(save: &str) -> IptablesState {
    let mut found = IptablesState::default();
    let mut in_mangle = false;
    let jump = format!("-A PREROUTING -j {CHAIN_PREROUTING}");
    for line in save.lines().map(str::trim_end) {
        if let Some(table) = line.strip_prefix('*') {
            in_mangle = table == "mangle";
        } else if !in_mangle {
        } else if let Some(decl) = line.strip_prefix(':') {
            if decl.starts_with("NODEMESH-") {
                found
                    .chains
                    .push(decl.split(' ').next().unwrap_or(decl).to_owned());
            }
        } else if line.starts_with("-A NODEMESH-") {
            found.rules.push(line.to_owned());
        } else if line == jump {
            found.jumps += 1;
        }
    }
    found
}

/// Our sets among the names `ipset list -n` prints.
fn parse_ipset_names(names: &str) -> Vec<String> {
    names
        .lines()
        .map(str::trim)
        .filter(|n| *n == IPSET_NAME || *n == IPSET_STAGING)
        .map(str::to_owned)
        .collect()
}

/// The members of the pod set in `ipset save` output.
fn parse_ipset_members(saved: &str) -> Result<BTreeSet<Ipv4Addr>, RedirectError> {
    let prefix = format!("add {IPSET_NAME} ");
    let mut members = BTreeSet::new();
    for line in saved.lines() {
        if let Some(ip) = line.trim().strip_prefix(&prefix) {
            members.insert(ip.parse().map_err(|_| RedirectError::Output {
                tool: "ipset".into(),
                reason: format!("set member {ip:?} is not an IPv4 address"),
            })?);
        }
    }
    Ok(members)
}

/// The lines of our chain in `nft list table` output, trimmed.
fn parse_nft_chain(listed: &str) -> Vec<String> {
    let header = format!("chain {CHAIN_PREROUTING} {{");
    listed
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| *l != "}")
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The members of the pod set in `nft -j list set` output.
fn parse_nft_members(json: &str) -> Result<BTreeSet<Ipv4Addr>, RedirectError> {
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
            members.insert(
                text.parse()
                    .map_err(|_| bad(format!("set element {text:?} is not an IPv4 address")))?,
            );
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
        let members = parse_nft_members(json).unwrap();
        assert_eq!(members.len(), 2);
        let empty = r#"{"nftables": [{"set": {"name": "pods"}}]}"#;
        assert!(parse_nft_members(empty).unwrap().is_empty());
        assert!(parse_nft_members(r#"{"nftables": [{"set": {"elem": ["::1"]}}]}"#).is_err());
        assert!(parse_nft_members("not json").is_err());
    }

    #[test]
    fn iptables_save_of_mangle_only() {
        let save = "\
*filter
:NODEMESH-PREROUTING - [0:0]
-A PREROUTING -j NODEMESH-PREROUTING
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:NODEMESH-DIVERT - [0:0]
:NODEMESH-PREROUTING - [3:120]
-A PREROUTING -p udp -j ACCEPT
-A PREROUTING -j NODEMESH-PREROUTING
-A PREROUTING -j NODEMESH-PREROUTING
-A NODEMESH-DIVERT -j ACCEPT
COMMIT
";
        let found = parse_iptables_save(save);
        assert_eq!(found.chains, ["NODEMESH-DIVERT", "NODEMESH-PREROUTING"]);
        assert_eq!(found.jumps, 2);
        assert_eq!(found.rules, ["-A NODEMESH-DIVERT -j ACCEPT"]);
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
            parse_ipset_members(saved).unwrap(),
            [Ipv4Addr::new(10, 0, 0, 2)].into()
        );
        assert!(parse_ipset_members("add nodemesh-pods pod-a\n").is_err());
    }

    #[test]
    fn nft_chain_lines() {
        let listed = "table ip nodemesh {\n\tset pods {\n\t\ttype ipv4_addr\n\t}\n\n\tchain \
                      NODEMESH-PREROUTING {\n\t\ttype filter hook prerouting priority mangle; \
                      policy accept;\n\n\t\tmeta mark 0x00000539 return\n\t}\n}\n";
        assert_eq!(
            parse_nft_chain(listed),
            [
                "type filter hook prerouting priority mangle; policy accept;",
                "meta mark 0x00000539 return"
            ]
        );
        assert!(parse_nft_chain("table ip nodemesh {\n}\n").is_empty());
    }
}
