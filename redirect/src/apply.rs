//! [`apply`], [`remove`] and [`status`]: the capture rules of a [`RuleSet`] on a [`Host`].
//!
//! Each one first checks its tools and the namespace and reads what is installed; only then
//! does [`apply`] change what differs from the desired rules, each part with one atomic tool run
//! (`iptables-restore`, `ipset restore`, `nft -f`). Running it twice changes nothing the second
//! time, and a changed pod set only replaces the set's members.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use crate::error::RedirectError;
use crate::host::{Host, Tool, ok_or_failed};
use crate::rules::{
    Backend, CHAIN_DIVERT, CHAIN_PREROUTING, IPSET_NAME, IPSET_STAGING, NFT_SET, NFT_TABLE, RuleSet,
};

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The state of one part of the capture rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemState {
    /// Installed and as desired.
    InSync,
    /// Not installed at all.
    Missing,
    /// Installed but different from the desired rules; says how.
    Drift(String),
}

/// One part of the capture rules and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// What it is: `ip_forward`, `ip rule`, `route table 133`, `pod set`, `chains`.
    pub name: String,
    /// Its state.
    pub state: ItemState,
}

/// What is installed on a host compared with a desired [`RuleSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The backend looked at.
    pub backend: Backend,
    /// Every part, in install order.
    pub items: Vec<Item>,
}

impl Status {
    /// Whether everything is installed as desired.
    pub fn in_sync(&self) -> bool {
        self.items.iter().all(|i| i.state == ItemState::InSync)
    }

    /// Whether none of our rules, sets, ip rules or routes is installed (`ip_forward` aside).
    pub fn nothing_installed(&self) -> bool {
        self.items
            .iter()
            .filter(|i| i.name != "ip_forward")
            .all(|i| i.state == ItemState::Missing)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "backend: {}", self.backend)?;
        for item in &self.items {
            match &item.state {
                ItemState::InSync => writeln!(f, "{}: in sync", item.name)?,
                ItemState::Missing => writeln!(f, "{}: missing", item.name)?,
                ItemState::Drift(how) => writeln!(f, "{}: drift: {how}", item.name)?,
            }
        }
        let summary = if self.in_sync() {
            "in sync"
        } else if self.nothing_installed() {
            "not installed"
        } else {
            "drift"
        };
        write!(f, "capture: {summary}")
    }
}

/// What [`apply`] changed: the names of the parts it (re)installed, empty when all was in sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The parts changed, in the order they were changed.
    pub changed: Vec<String>,
}

/// What is installed, read from the host.
struct Observed {
    ip_forward: String,
    rule_lines: Vec<String>,
    route_lines: Option<Vec<String>>,
    firewall: Firewall,
}

enum Firewall {
    Iptables {
        /// Our `-A NODEMESH-*` rules, in `iptables-save` order.
        rules: Vec<String>,
        /// Our chains that exist.
        chains: Vec<String>,
        /// How many jumps from `PREROUTING` to our chain.
        jumps: usize,
        /// Our sets that exist (the pod set, a leftover staging set).
        sets: Vec<String>,
        /// The pod set's members, when it exists.
        members: Option<BTreeSet<Ipv4Addr>>,
    },
    Nftables {
        /// The lines of our chain, when the table exists.
        chain: Option<Vec<String>>,
        /// The pod set's members, when it exists.
        members: Option<BTreeSet<Ipv4Addr>>,
    },
}

/// Checks tools and namespace, before anything is read or touched.
fn preflight(host: &Host, backend: Backend) -> Result<(), RedirectError> {
    for tool in backend.tools() {
        tool.locate()?;
    }
    host.check()
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_end().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn observe(host: &Host, rules: &RuleSet) -> Result<Observed, RedirectError> {
    let forward = host.sh(&format!("cat {IP_FORWARD}"), "read ip_forward")?;
    let ip_forward = ok_or_failed(forward, "cat", "read ip_forward")?
        .trim()
        .to_owned();
    let pref = rules.rule_pref.to_string();
    let rule_lines = lines(&host.run(
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
    let route_lines = routes.ok.then(|| lines(&routes.stdout));
    let firewall = match rules.backend {
        Backend::Iptables => observe_iptables(host)?,
        Backend::Nftables => observe_nft(host)?,
    };
    Ok(Observed {
        ip_forward,
        rule_lines,
        route_lines,
        firewall,
    })
}

fn observe_iptables(host: &Host) -> Result<Firewall, RedirectError> {
    let save = host.run(Tool::IptablesSave, &[], None, "read the rules")?;
    let mut in_mangle = false;
    let mut rules = Vec::new();
    let mut chains = Vec::new();
    let mut jumps = 0;
    let jump = format!("-A PREROUTING -j {CHAIN_PREROUTING}");
    for line in save.lines().map(str::trim_end) {
        if let Some(table) = line.strip_prefix('*') {
            in_mangle = table == "mangle";
        } else if !in_mangle {
        } else if let Some(decl) = line.strip_prefix(':') {
            if decl.starts_with("NODEMESH-") {
                chains.push(decl.split(' ').next().unwrap_or(decl).to_owned());
            }
        } else if line.starts_with("-A NODEMESH-") {
            rules.push(line.to_owned());
        } else if line == jump {
            jumps += 1;
        }
    }
    let names = host.run(Tool::Ipset, &["list", "-n"], None, "list sets")?;
    let sets: Vec<String> = names
        .lines()
        .map(str::trim)
        .filter(|n| *n == IPSET_NAME || *n == IPSET_STAGING)
        .map(str::to_owned)
        .collect();
    let members = if sets.iter().any(|s| s == IPSET_NAME) {
        let saved = host.run(Tool::Ipset, &["save", IPSET_NAME], None, "read the pod set")?;
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
        Some(members)
    } else {
        None
    };
    Ok(Firewall::Iptables {
        rules,
        chains,
        jumps,
        sets,
        members,
    })
}

fn observe_nft(host: &Host) -> Result<Firewall, RedirectError> {
    let listed = host.try_run(
        Tool::Nft,
        &["list", "table", "ip", NFT_TABLE],
        None,
        "read our table",
    )?;
    if !listed.ok {
        if listed.stderr.contains("No such file") || listed.stderr.contains("does not exist") {
            return Ok(Firewall::Nftables {
                chain: None,
                members: None,
            });
        }
        return ok_or_failed(listed, "nft", "read our table").map(|_| Firewall::Nftables {
            chain: None,
            members: None,
        });
    }
    let header = format!("chain {CHAIN_PREROUTING} {{");
    let chain = listed
        .stdout
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| *l != "}")
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
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
    Ok(Firewall::Nftables {
        chain: Some(chain),
        members,
    })
}

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

fn diff_lines(installed: &[String], desired: &[String]) -> String {
    let missing = desired.iter().filter(|l| !installed.contains(l)).count();
    let extra = installed.iter().filter(|l| !desired.contains(l)).count();
    if missing == 0 && extra == 0 {
        "rules in another order".to_owned()
    } else {
        format!("{missing} rule(s) missing, {extra} unexpected")
    }
}

fn members_state(members: Option<&BTreeSet<Ipv4Addr>>, desired: &BTreeSet<Ipv4Addr>) -> ItemState {
    match members {
        None => ItemState::Missing,
        Some(m) if m == desired => ItemState::InSync,
        Some(m) => {
            let missing: Vec<_> = desired.difference(m).map(ToString::to_string).collect();
            let extra: Vec<_> = m.difference(desired).map(ToString::to_string).collect();
            ItemState::Drift(format!(
                "missing [{}], unexpected [{}]",
                missing.join(", "),
                extra.join(", ")
            ))
        }
    }
}

fn compare(rules: &RuleSet, seen: &Observed) -> Status {
    let mut items = Vec::new();
    let mut push = |name: String, state| items.push(Item { name, state });
    push(
        "ip_forward".into(),
        if seen.ip_forward == "1" {
            ItemState::InSync
        } else {
            ItemState::Drift(format!("is {}, capture needs 1", seen.ip_forward))
        },
    );
    let want_rule = rules.ip_rule_line();
    push(
        format!("ip rule pref {}", rules.rule_pref),
        match seen.rule_lines.as_slice() {
            [] => ItemState::Missing,
            [one] if *one == want_rule => ItemState::InSync,
            other => ItemState::Drift(format!("found {other:?}, want [{want_rule:?}]")),
        },
    );
    push(
        format!("route table {}", rules.table),
        match seen.route_lines.as_deref() {
            None | Some([]) => ItemState::Missing,
            Some([one]) if one == rules.route_line() => ItemState::InSync,
            Some(other) => {
                ItemState::Drift(format!("found {other:?}, want [{:?}]", rules.route_line()))
            }
        },
    );
    match &seen.firewall {
        Firewall::Iptables {
            rules: installed,
            chains,
            jumps,
            sets,
            members,
        } => {
            let mut state = members_state(members.as_ref(), rules.pods());
            if sets.iter().any(|s| s == IPSET_STAGING) && state != ItemState::Missing {
                state = ItemState::Drift(format!("leftover staging set {IPSET_STAGING}"));
            }
            push(format!("ipset {IPSET_NAME}"), state);
            let desired = rules.iptables_rules();
            let state = if chains.is_empty() && *jumps == 0 {
                ItemState::Missing
            } else if *jumps != 1 {
                ItemState::Drift(format!("{jumps} jumps from mangle PREROUTING, want 1"))
            } else if *installed != desired {
                ItemState::Drift(diff_lines(installed, &desired))
            } else if chains.len() != 2 {
                ItemState::Drift(format!("chains {chains:?}"))
            } else {
                ItemState::InSync
            };
            push(
                format!("chains mangle {CHAIN_PREROUTING} {CHAIN_DIVERT}"),
                state,
            );
        }
        Firewall::Nftables { chain, members } => {
            push(
                format!("nft set ip {NFT_TABLE} {NFT_SET}"),
                members_state(members.as_ref(), rules.pods()),
            );
            let desired = rules.nft_chain_lines();
            push(
                format!("nft chain ip {NFT_TABLE} {CHAIN_PREROUTING}"),
                match chain {
                    None => ItemState::Missing,
                    Some(c) if c.is_empty() => ItemState::Missing,
                    Some(c) if *c == desired => ItemState::InSync,
                    Some(c) => ItemState::Drift(diff_lines(c, &desired)),
                },
            );
        }
    }
    Status {
        backend: rules.backend,
        items,
    }
}

/// Reads what is installed on `host` and compares it with `rules`. Changes nothing.
pub fn status(host: &Host, rules: &RuleSet) -> Result<Status, RedirectError> {
    preflight(host, rules.backend)?;
    let seen = observe(host, rules)?;
    Ok(compare(rules, &seen))
}

/// Installs `rules` on `host`, changing only the parts that differ (see the module docs).
///
/// Turns `ip_forward` on when it is off; fails with a clear error if `/proc/sys` is read-only.
pub fn apply(host: &Host, rules: &RuleSet) -> Result<ApplyReport, RedirectError> {
    preflight(host, rules.backend)?;
    let seen = observe(host, rules)?;
    let status = compare(rules, &seen);
    let mut report = ApplyReport::default();
    let state = |i: usize| {
        status
            .items
            .get(i)
            .map_or(ItemState::Missing, |it| it.state.clone())
    };
    let name = |i: usize| {
        status
            .items
            .get(i)
            .map_or(String::new(), |it| it.name.clone())
    };

    if state(0) != ItemState::InSync {
        let wrote = host.sh(&format!("echo 1 > {IP_FORWARD}"), "set ip_forward")?;
        if !wrote.ok {
            return Err(RedirectError::IpForward {
                value: seen.ip_forward.clone(),
                stderr: wrote.stderr.trim().to_owned(),
            });
        }
        report.changed.push(name(0));
    }
    let pref = rules.rule_pref.to_string();
    if state(1) != ItemState::InSync {
        for _ in &seen.rule_lines {
            host.run(
                Tool::Ip,
                &["-4", "rule", "del", "pref", &pref],
                None,
                "delete an ip rule",
            )?;
        }
        let args = rules.ip_rule_args();
        let mut argv = vec!["-4", "rule", "add"];
        argv.extend(args.iter().map(String::as_str));
        host.run(Tool::Ip, &argv, None, "add the ip rule")?;
        report.changed.push(name(1));
    }
    let table = rules.table.to_string();
    if state(2) != ItemState::InSync {
        if seen.route_lines.as_ref().is_some_and(|r| !r.is_empty()) {
            host.run(
                Tool::Ip,
                &["-4", "route", "flush", "table", &table],
                None,
                "flush our routes",
            )?;
        }
        host.run(
            Tool::Ip,
            &[
                "-4",
                "route",
                "replace",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                &table,
            ],
            None,
            "add the local route",
        )?;
        report.changed.push(name(2));
    }
    match &seen.firewall {
        Firewall::Iptables { jumps, .. } => {
            if state(3) != ItemState::InSync {
                host.run(
                    Tool::Ipset,
                    &["restore"],
                    Some(&rules.render_ipset()),
                    "replace the pod set",
                )?;
                report.changed.push(name(3));
            }
            if state(4) != ItemState::InSync {
                let mut input = rules.render_iptables(*jumps == 0);
                // Extra jumps (someone added one) go in the same commit.
                for _ in 1..*jumps {
                    input = input.replacen(
                        "*mangle\n",
                        &format!("*mangle\n-D PREROUTING -j {CHAIN_PREROUTING}\n"),
                        1,
                    );
                }
                host.run(
                    Tool::IptablesRestore,
                    &["--noflush"],
                    Some(&input),
                    "install our chains",
                )?;
                report.changed.push(name(4));
            }
        }
        Firewall::Nftables { .. } => {
            if state(4) != ItemState::InSync {
                host.run(
                    Tool::Nft,
                    &["-f", "-"],
                    Some(&rules.render_nft()),
                    "install our table",
                )?;
                if state(3) != ItemState::InSync {
                    report.changed.push(name(3));
                }
                report.changed.push(name(4));
            } else if state(3) != ItemState::InSync {
                host.run(
                    Tool::Nft,
                    &["-f", "-"],
                    Some(&rules.render_nft_set()),
                    "replace the pod set",
                )?;
                report.changed.push(name(3));
            }
        }
    }
    Ok(report)
}

/// Deletes every chain, set, ip rule and route of ours on `host`: those of `rules.backend`, and
/// those of the other backend when its tools are installed. What is not there is skipped;
/// `ip_forward` is left as it is.
pub fn remove(host: &Host, rules: &RuleSet) -> Result<ApplyReport, RedirectError> {
    preflight(host, rules.backend)?;
    let seen = observe(host, rules)?;
    let mut report = ApplyReport::default();
    remove_firewall(host, &seen.firewall, &mut report)?;
    // What the other backend left (the backend was switched): removed too when its tools exist.
    let other = match rules.backend {
        Backend::Iptables => Backend::Nftables,
        Backend::Nftables => Backend::Iptables,
    };
    if other.tools().iter().all(|t| t.locate().is_ok()) {
        let leftover = match other {
            Backend::Iptables => observe_iptables(host)?,
            Backend::Nftables => observe_nft(host)?,
        };
        remove_firewall(host, &leftover, &mut report)?;
    }
    let want_rule = rules.ip_rule_line();
    let pref = rules.rule_pref.to_string();
    for line in &seen.rule_lines {
        if *line == want_rule {
            let mut argv = vec!["-4", "rule", "del"];
            let args = rules.ip_rule_args();
            argv.extend(args.iter().map(String::as_str));
            host.run(Tool::Ip, &argv, None, "delete the ip rule")?;
            report.changed.push(format!("ip rule pref {pref}"));
        }
    }
    if seen.route_lines.as_ref().is_some_and(|r| !r.is_empty()) {
        let table = rules.table.to_string();
        host.run(
            Tool::Ip,
            &["-4", "route", "flush", "table", &table],
            None,
            "delete our routes",
        )?;
        report.changed.push(format!("route table {table}"));
    }
    Ok(report)
}

/// Deletes the chains, sets or table of `firewall` that exist.
fn remove_firewall(
    host: &Host,
    firewall: &Firewall,
    report: &mut ApplyReport,
) -> Result<(), RedirectError> {
    match firewall {
        Firewall::Iptables {
            chains,
            jumps,
            sets,
            ..
        } => {
            if !chains.is_empty() || *jumps > 0 {
                let mut input = String::from("*mangle\n");
                for _ in 0..*jumps {
                    input.push_str(&format!("-D PREROUTING -j {CHAIN_PREROUTING}\n"));
                }
                for chain in chains {
                    input.push_str(&format!("-F {chain}\n"));
                }
                for chain in chains {
                    input.push_str(&format!("-X {chain}\n"));
                }
                input.push_str("COMMIT\n");
                host.run(
                    Tool::IptablesRestore,
                    &["--noflush"],
                    Some(&input),
                    "delete our chains",
                )?;
                report.changed.push("chains".into());
            }
            for set in sets {
                host.run(Tool::Ipset, &["destroy", set], None, "delete our set")?;
                report.changed.push(format!("ipset {set}"));
            }
        }
        Firewall::Nftables { chain, .. } => {
            if chain.is_some() {
                host.run(
                    Tool::Nft,
                    &["delete", "table", "ip", NFT_TABLE],
                    None,
                    "delete our table",
                )?;
                report.changed.push(format!("nft table ip {NFT_TABLE}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(backend: Backend) -> RuleSet {
        RuleSet::new(
            backend,
            [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
        )
    }

    fn installed(rules: &RuleSet) -> Observed {
        let firewall = match rules.backend {
            Backend::Iptables => Firewall::Iptables {
                rules: rules.iptables_rules(),
                chains: vec![CHAIN_DIVERT.into(), CHAIN_PREROUTING.into()],
                jumps: 1,
                sets: vec![IPSET_NAME.into()],
                members: Some(rules.pods().clone()),
            },
            Backend::Nftables => Firewall::Nftables {
                chain: Some(rules.nft_chain_lines()),
                members: Some(rules.pods().clone()),
            },
        };
        Observed {
            ip_forward: "1".into(),
            rule_lines: vec![rules.ip_rule_line()],
            route_lines: Some(vec![rules.route_line().into()]),
            firewall,
        }
    }

    #[test]
    fn what_apply_installs_is_in_sync() {
        for backend in [Backend::Iptables, Backend::Nftables] {
            let r = rules(backend);
            let st = compare(&r, &installed(&r));
            assert!(st.in_sync(), "{st}");
            assert!(!st.nothing_installed());
        }
    }

    #[test]
    fn drift_is_named() {
        let r = rules(Backend::Iptables);
        let mut seen = installed(&r);
        seen.ip_forward = "0".into();
        if let Firewall::Iptables { jumps, members, .. } = &mut seen.firewall {
            *jumps = 2;
            members.as_mut().unwrap().insert(Ipv4Addr::new(10, 0, 0, 9));
        }
        let st = compare(&r, &seen);
        let text = st.to_string();
        assert!(text.contains("ip_forward: drift: is 0"), "{text}");
        assert!(text.contains("2 jumps from mangle PREROUTING"), "{text}");
        assert!(text.contains("unexpected [10.0.0.9]"), "{text}");
        assert!(text.ends_with("capture: drift"), "{text}");
    }

    #[test]
    fn a_missing_nft_rule_is_drift() {
        let r = rules(Backend::Nftables);
        let mut seen = installed(&r);
        if let Firewall::Nftables { chain: Some(c), .. } = &mut seen.firewall {
            c.pop();
        }
        let st = compare(&r, &seen);
        assert!(
            st.items
                .iter()
                .any(|i| i.state == ItemState::Drift("1 rule(s) missing, 0 unexpected".into())),
            "{st}"
        );
    }

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
}
