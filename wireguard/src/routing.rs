//! Routing remote pod networks into the tunnel (DESIGN.md "Capture", marks and tables), failing
//! closed.
//!
//! - `ip rule pref 110 to <remote podCIDR> lookup 134`, one per remote node;
//! - table 134: `<podCIDR> dev <wg>` and, behind it, `unreachable <podCIDR> metric 4096`: when the
//!   device is gone (the process died) the packet still matches table 134 and is dropped, never
//!   routed through `main` in plaintext;
//! - the known pods of a remote node without a podCIDR: `ip rule pref 110 to <pod>/32 lookup
//!   134` and `unreachable <pod>/32 metric 4097` only (that node cannot run WireGuard): dropped
//!   until the node has a pod network, then removed;
//! - our mangle chains ([`crate::chains`]): the proxy's HBONE marked `0x222/0xfff` and kept out of
//!   the tunnel by `ip rule pref 105 fwmark 0x222/0xfff lookup main`, anti-spoofing, MSS clamp.
//!
//! [`apply`] adds what is missing and drops the device routes of nodes that left, but keeps their
//! rules and unreachable routes (a node removed from the config is dropped, not reached in
//! plaintext). Only [`remove`] (`nodemesh wireguard down`) deletes everything of ours.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nodemesh_net::marks;
use nodemesh_net::routing::{HBONE_RULE_PREF, WIREGUARD_RULE_PREF, WIREGUARD_TABLE};

use crate::chains::{CHAINS, ChainSpec, Found};
use crate::command::{ROUTING_TOOLS, Tool, locate, run, try_run};
use crate::error::WireguardError;

/// The metric of the unreachable fallback routes (worse than the device routes' 0).
pub const UNREACHABLE_METRIC: u32 = 4096;
/// The metric of the unreachable routes of pods on nodes without a podCIDR (told apart from
/// the fallbacks, which stay, by it: these go once no longer wanted).
pub const UNASSIGNED_METRIC: u32 = 4097;

/// The routing of one node: its WireGuard interface and the remote pod networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The WireGuard interface.
    pub dev: String,
    /// This node's pod network (what anti-spoofing protects).
    pub local: Ipv4Net,
    /// The remote nodes' pod networks.
    pub cidrs: BTreeSet<Ipv4Net>,
    /// The known pods of remote nodes without a pod network (`/32`s): dropped.
    pub unassigned: BTreeSet<Ipv4Net>,
    /// The source address of node-originated packets into the tunnel (e.g. the proxy's
    /// passthrough connections): the first address of this node's pod network, put on the
    /// device. A peer accepts only sources in this node's pod network, and the answers, sent to
    /// that address, come back through the tunnel too.
    pub source: Option<std::net::Ipv4Addr>,
}

/// What of ours is installed, read back from the tools.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installed {
    /// Networks with an `ip rule pref 110 to NET lookup 134`.
    pub rules: BTreeSet<Ipv4Net>,
    /// Whether the HBONE rule (pref 105) exists.
    pub hbone_rule: bool,
    /// Networks routed to a device in table 134.
    pub dev_routes: BTreeSet<Ipv4Net>,
    /// Networks with an unreachable fallback route ([`UNREACHABLE_METRIC`]) in table 134.
    pub unreachable: BTreeSet<Ipv4Net>,
    /// Pods with an unreachable route of their own ([`UNASSIGNED_METRIC`]) in table 134.
    pub unassigned: BTreeSet<Ipv4Net>,
    /// Our mangle jumps and chains.
    pub mangle: Found,
}

impl Installed {
    /// Whether nothing of ours is installed.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One change to the routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// (Re)write our mangle chains, adding the missing jumps and deleting retired chains.
    Chains {
        /// Built-in chains that still need a jump to ours.
        missing_jumps: Vec<&'static str>,
        /// What the tunnel routes: the sources anti-spoofing drops, the destinations of the
        /// HBONE exemption.
        remote: BTreeSet<Ipv4Net>,
        /// Retired jumps and chains to delete.
        retired: Found,
    },
    /// Add the HBONE rule.
    HboneRule,
    /// Add the unreachable fallback route of a network.
    Unreachable(Ipv4Net),
    /// Route a network to the device.
    DevRoute(Ipv4Net),
    /// Add the rule sending a network to the table.
    Rule(Ipv4Net),
    /// Delete the device route of a network no longer wanted.
    DelDevRoute(Ipv4Net),
    /// Add the unreachable route of a pod on a node without a podCIDR.
    Unassigned(Ipv4Net),
    /// Delete the unreachable route of such a pod no longer wanted, and its rule unless a
    /// fallback route still needs it.
    DelUnassigned {
        /// The pod.
        net: Ipv4Net,
        /// Whether its rule goes too.
        rule: bool,
    },
}

impl Routing {
    /// What the tunnel routes, given what is installed: the remote pod networks, those of nodes
    /// that left (their fallback routes stay) and the dropped pods; never this node's own.
    pub fn remote(&self, installed: &Installed) -> BTreeSet<Ipv4Net> {
        let overlaps_local =
            |n: &Ipv4Net| n.contains(&self.local.network()) || self.local.contains(&n.network());
        self.cidrs
            .iter()
            .chain(&installed.unreachable)
            .chain(&self.unassigned)
            .copied()
            .filter(|n| !overlaps_local(n))
            .collect()
    }

    /// The mangle chains for `remote`.
    pub fn chains<'a>(&'a self, remote: &'a BTreeSet<Ipv4Net>) -> ChainSpec<'a> {
        ChainSpec {
            dev: &self.dev,
            local: self.local,
            remote,
        }
    }

    /// The steps from `installed` to this routing, pure. Fallback routes and rules of networks
    /// no longer wanted stay (fail closed); only their device routes go. Dropped pods no
    /// longer wanted go entirely.
    pub fn plan(&self, installed: &Installed) -> Vec<Step> {
        let mut steps = Vec::new();
        let missing_jumps: Vec<&'static str> = CHAINS
            .iter()
            .filter(|(builtin, _)| !installed.mangle.jumps.iter().any(|j| j == builtin))
            .map(|(builtin, _)| *builtin)
            .collect();
        // Rewriting the chains is idempotent; it also picks up a renamed device.
        steps.push(Step::Chains {
            missing_jumps,
            remote: self.remote(installed),
            retired: installed.mangle.retired(),
        });
        if !installed.hbone_rule {
            steps.push(Step::HboneRule);
        }
        for net in &self.cidrs {
            if !installed.unreachable.contains(net) {
                steps.push(Step::Unreachable(*net));
            }
            if !installed.dev_routes.contains(net) {
                steps.push(Step::DevRoute(*net));
            }
            if !installed.rules.contains(net) {
                steps.push(Step::Rule(*net));
            }
        }
        for net in &self.unassigned {
            if !installed.unassigned.contains(net) {
                steps.push(Step::Unassigned(*net));
            }
            if !installed.rules.contains(net) && !self.cidrs.contains(net) {
                steps.push(Step::Rule(*net));
            }
        }
        for net in installed.dev_routes.difference(&self.cidrs) {
            steps.push(Step::DelDevRoute(*net));
        }
        for net in installed.unassigned.difference(&self.unassigned) {
            let rule = !self.cidrs.contains(net) && !installed.unreachable.contains(net);
            steps.push(Step::DelUnassigned { net: *net, rule });
        }
        steps
    }
}

/// Parses a network as `ip` prints it (`10.1.0.0/24`, or a bare address for a /32).
fn parse_net(text: &str) -> Option<Ipv4Net> {
    text.parse::<Ipv4Net>()
        .ok()
        .or_else(|| text.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))
}

/// The networks of `ip -4 rule list pref 110` lines that look up our table.
pub fn parse_rules(text: &str) -> BTreeSet<Ipv4Net> {
    let lookup = format!("lookup {WIREGUARD_TABLE}");
    text.lines()
        .filter(|l| l.contains(&lookup))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "to")?;
            parse_net(words.next()?)
        })
        .collect()
}

/// The routes of ours in table 134, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRoutes {
    /// Routed to a device.
    pub dev: BTreeSet<Ipv4Net>,
    /// Unreachable fallbacks ([`UNREACHABLE_METRIC`], or any other metric).
    pub unreachable: BTreeSet<Ipv4Net>,
    /// Unreachable routes of pods on nodes without a podCIDR ([`UNASSIGNED_METRIC`]).
    pub unassigned: BTreeSet<Ipv4Net>,
}

/// The routes of `ip -4 route show table 134`.
pub fn parse_routes(text: &str) -> TableRoutes {
    let mut routes = TableRoutes::default();
    let unassigned = UNASSIGNED_METRIC.to_string();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("unreachable") => {
                let Some(net) = words.next().and_then(parse_net) else {
                    continue;
                };
                let metric = words.skip_while(|w| *w != "metric").nth(1);
                if metric == Some(unassigned.as_str()) {
                    routes.unassigned.insert(net);
                } else {
                    routes.unreachable.insert(net);
                }
            }
            Some(first) if line.contains(" dev ") => {
                if let Some(net) = parse_net(first) {
                    routes.dev.insert(net);
                }
            }
            _ => {}
        }
    }
    routes
}

/// Checks that every tool is installed, before anything is touched.
pub fn preflight() -> Result<(), WireguardError> {
    for tool in ROUTING_TOOLS {
        locate(tool)?;
    }
    Ok(())
}

fn ip(args: &[&str], action: &str) -> Result<String, WireguardError> {
    run(Tool::Ip, &[&["-4"][..], args].concat(), None, action)
}

/// The selectors of the `ip rule pref 105 ... lookup main` rules that keep HBONE out of the
/// tunnel, as `ip rule list` prints them: packets our mangle chains marked HBONE, and, for the
/// route lookup a socket makes before those chains see a packet, the proxy's own connects to
/// port 15008 (mark `0x539`) and the answers of its HBONE listener, both local (`iif lo`).
/// Without the last two a connect made while the device is being replaced (an upgrade's
/// handoff) meets table 134's unreachable route and fails, and answers stall.
pub fn hbone_selectors() -> [String; 3] {
    [
        format!("fwmark {}", marks::HBONE),
        format!(
            "fwmark {} iif lo ipproto tcp dport {HBONE_PORT}",
            marks::PROXY
        ),
        format!("iif lo ipproto tcp sport {HBONE_PORT}"),
    ]
}

/// Whether `ip rule list` output holds the rule with `selector` that looks up `main`.
fn has_rule(listed: &str, selector: &str) -> bool {
    let wanted = format!("from all {selector} lookup main");
    listed.lines().any(|l| l.trim_end().ends_with(&wanted))
}

/// The HBONE port the exemption rules name.
const HBONE_PORT: u16 = 15008;

/// Reads what of ours is installed in this network namespace.
pub fn installed() -> Result<Installed, WireguardError> {
    let table = WIREGUARD_TABLE.to_string();
    let rule_pref = WIREGUARD_RULE_PREF.to_string();
    let rules = ip(
        &["rule", "list", "pref", &rule_pref],
        "list the WireGuard ip rules",
    )?;
    let hbone_pref = HBONE_RULE_PREF.to_string();
    let hbone = ip(
        &["rule", "list", "pref", &hbone_pref],
        "list the HBONE ip rule",
    )?;
    // A table that was never created is an error for `ip route show`: nothing installed.
    let routes = try_run(
        Tool::Ip,
        &["-4", "route", "show", "table", &table],
        None,
        &format!("list table {WIREGUARD_TABLE}"),
    )?;
    let routes = if routes.ok {
        parse_routes(&routes.stdout)
    } else {
        TableRoutes::default()
    };
    let save = run(
        Tool::IptablesSave,
        &["-t", "mangle"],
        None,
        "read the mangle table",
    )?;
    Ok(Installed {
        rules: parse_rules(&rules),
        hbone_rule: hbone_selectors().iter().all(|s| has_rule(&hbone, s)),
        dev_routes: routes.dev,
        unreachable: routes.unreachable,
        unassigned: routes.unassigned,
        mangle: Found::parse(&save),
    })
}

/// Installs `routing` in this network namespace, changing only what differs; returns the steps
/// taken (the chains are rewritten every time).
pub fn apply(routing: &Routing) -> Result<Vec<Step>, WireguardError> {
    preflight()?;
    let steps = routing.plan(&installed()?);
    let table = WIREGUARD_TABLE.to_string();
    let (pref, hbone_pref) = (WIREGUARD_RULE_PREF.to_string(), HBONE_RULE_PREF.to_string());
    let source = routing.source.map(|a| a.to_string());
    if let Some(source) = &source {
        let addr = format!("{source}/32");
        let argv = ["addr", "replace", &addr, "dev", &routing.dev];
        ip(&argv, "give the tunnel its source address")?;
    }
    let unreachable = |net: &Ipv4Net, metric: u32, op: &str, action: &str| {
        let (net, metric) = (net.to_string(), metric.to_string());
        let argv = [
            "route",
            op,
            "unreachable",
            &net,
            "table",
            &table,
            "metric",
            &metric,
        ];
        ip(&argv, action)
    };
    for step in &steps {
        match step {
            Step::Chains {
                missing_jumps,
                remote,
                retired,
            } => {
                let input = routing.chains(remote).render(missing_jumps, retired);
                run(
                    Tool::IptablesRestore,
                    &["--noflush"],
                    Some(&input),
                    "install the HBONE exemption and anti-spoofing chains",
                )?;
            }
            Step::HboneRule => {
                let listed = ip(
                    &["rule", "list", "pref", &hbone_pref],
                    "list the HBONE ip rules",
                )?;
                for selector in hbone_selectors() {
                    if has_rule(&listed, &selector) {
                        continue;
                    }
                    let mut argv = vec!["rule", "add", "pref", &hbone_pref];
                    argv.extend(selector.split(' '));
                    argv.extend(["lookup", "main"]);
                    ip(&argv, "add an HBONE ip rule")?;
                }
            }
            Step::Unreachable(net) => {
                unreachable(
                    net,
                    UNREACHABLE_METRIC,
                    "replace",
                    "add a fail-closed route",
                )?;
            }
            Step::DevRoute(net) => {
                let net = net.to_string();
                let mut argv = vec![
                    "route",
                    "replace",
                    &net,
                    "dev",
                    &routing.dev,
                    "table",
                    &table,
                ];
                if let Some(source) = &source {
                    argv.extend(["src", source.as_str()]);
                }
                ip(&argv, "route a pod network into the tunnel")?;
            }
            Step::Rule(net) => {
                let net = net.to_string();
                let argv = ["rule", "add", "pref", &pref, "to", &net, "lookup", &table];
                ip(&argv, "add a WireGuard ip rule")?;
            }
            Step::DelDevRoute(net) => {
                let net = net.to_string();
                let argv = ["-4", "route", "del", &net, "table", &table, "metric", "0"];
                // Gone already when the device went away: not an error.
                try_run(Tool::Ip, &argv, None, "delete a tunnel route")?;
            }
            Step::Unassigned(net) => {
                let action = "drop a pod of a node without a podCIDR";
                unreachable(net, UNASSIGNED_METRIC, "replace", action)?;
            }
            Step::DelUnassigned { net, rule } => {
                if *rule {
                    let net = net.to_string();
                    let argv = ["rule", "del", "pref", &pref, "to", &net, "lookup", &table];
                    ip(&argv, "delete the ip rule of a pod no longer dropped")?;
                }
                let action = "delete the route of a pod no longer dropped";
                unreachable(net, UNASSIGNED_METRIC, "del", action)?;
            }
        }
    }
    Ok(steps)
}

/// Deletes every rule, route and chain of ours in this network namespace (and a leftover
/// interface `dev`). Returns what was there.
pub fn remove(dev: &str) -> Result<Installed, WireguardError> {
    preflight()?;
    let found = installed()?;
    let (table, pref) = (WIREGUARD_TABLE.to_string(), WIREGUARD_RULE_PREF.to_string());
    for net in &found.rules {
        let net = net.to_string();
        let argv = ["rule", "del", "pref", &pref, "to", &net, "lookup", &table];
        ip(&argv, "delete a WireGuard ip rule")?;
    }
    let pref = HBONE_RULE_PREF.to_string();
    let listed = ip(&["rule", "list", "pref", &pref], "list the HBONE ip rules")?;
    for selector in hbone_selectors() {
        if has_rule(&listed, &selector) {
            let mut argv = vec!["rule", "del", "pref", &pref];
            argv.extend(selector.split(' '));
            argv.extend(["lookup", "main"]);
            ip(&argv, "delete an HBONE ip rule")?;
        }
    }
    if !found.dev_routes.is_empty() || !found.unreachable.is_empty() || !found.unassigned.is_empty()
    {
        ip(
            &["route", "flush", "table", &table],
            &format!("flush table {WIREGUARD_TABLE}"),
        )?;
    }
    if !found.mangle.is_empty() {
        let input = format!("*mangle\n{}COMMIT\n", found.mangle.removal());
        run(
            Tool::IptablesRestore,
            &["--noflush"],
            Some(&input),
            "delete our chains",
        )?;
    }
    // A device left by a crashed run of an older kind (persistent TUN): deleted too.
    let _ = try_run(
        Tool::Ip,
        &["link", "del", dev],
        None,
        "delete the WireGuard interface",
    )?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> BTreeSet<Ipv4Net> {
        list.iter().map(|s| net(s)).collect()
    }

    fn routing(cidrs: &[&str]) -> Routing {
        Routing {
            dev: "nodemesh-wg0".into(),
            local: net("10.1.0.0/24"),
            cidrs: nets(cidrs),
            unassigned: BTreeSet::new(),
            source: None,
        }
    }

    fn all_jumps() -> Found {
        Found {
            jumps: CHAINS.iter().map(|(b, _)| (*b).to_owned()).collect(),
            chains: CHAINS.iter().map(|(_, c)| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn from_nothing_everything_is_added() {
        let steps = routing(&["10.2.0.0/24"]).plan(&Installed::default());
        assert_eq!(
            steps,
            [
                Step::Chains {
                    missing_jumps: vec!["OUTPUT", "INPUT", "FORWARD", "POSTROUTING"],
                    remote: nets(&["10.2.0.0/24"]),
                    retired: Found::default(),
                },
                Step::HboneRule,
                Step::Unreachable(net("10.2.0.0/24")),
                Step::DevRoute(net("10.2.0.0/24")),
                Step::Rule(net("10.2.0.0/24")),
            ]
        );
    }

    #[test]
    fn a_new_node_only_adds_its_own() {
        let r = routing(&["10.2.0.0/24", "10.3.0.0/24"]);
        let installed = Installed {
            rules: nets(&["10.2.0.0/24"]),
            hbone_rule: true,
            dev_routes: nets(&["10.2.0.0/24"]),
            unreachable: nets(&["10.2.0.0/24"]),
            mangle: all_jumps(),
            ..Installed::default()
        };
        let steps = r.plan(&installed);
        assert_eq!(
            steps,
            [
                Step::Chains {
                    missing_jumps: vec![],
                    remote: nets(&["10.2.0.0/24", "10.3.0.0/24"]),
                    retired: Found::default(),
                },
                Step::Unreachable(net("10.3.0.0/24")),
                Step::DevRoute(net("10.3.0.0/24")),
                Step::Rule(net("10.3.0.0/24")),
            ]
        );
    }

    #[test]
    fn a_node_that_left_stays_dropped() {
        let installed = Installed {
            rules: nets(&["10.2.0.0/24"]),
            hbone_rule: true,
            dev_routes: nets(&["10.2.0.0/24"]),
            unreachable: nets(&["10.2.0.0/24"]),
            mangle: all_jumps(),
            ..Installed::default()
        };
        let steps = routing(&[]).plan(&installed);
        assert_eq!(steps.last(), Some(&Step::DelDevRoute(net("10.2.0.0/24"))));
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, Step::Unreachable(_) | Step::Rule(_)))
        );
        // Its pods are still remote: what claims their addresses from the underlay is dropped.
        assert!(
            matches!(&steps[0], Step::Chains { remote, .. } if *remote == nets(&["10.2.0.0/24"]))
        );
    }

    #[test]
    fn pods_of_a_node_without_pod_cidr_are_dropped_until_it_has_one() {
        let mut r = routing(&["10.2.0.0/24"]);
        r.unassigned = nets(&["10.9.0.5/32"]);
        let installed = Installed {
            rules: nets(&["10.2.0.0/24"]),
            hbone_rule: true,
            dev_routes: nets(&["10.2.0.0/24"]),
            unreachable: nets(&["10.2.0.0/24"]),
            mangle: all_jumps(),
            ..Installed::default()
        };
        let steps = r.plan(&installed);
        assert_eq!(
            steps[1..],
            [
                Step::Unassigned(net("10.9.0.5/32")),
                Step::Rule(net("10.9.0.5/32"))
            ]
        );
        assert!(
            matches!(&steps[0], Step::Chains { remote, .. } if remote.contains(&net("10.9.0.5/32")))
        );
        // The node got its podCIDR (10.9.0.0/24): the pod's own route and rule go entirely, or
        // it would shadow the tunnel route.
        let installed = Installed {
            rules: nets(&["10.2.0.0/24", "10.9.0.5/32"]),
            unassigned: nets(&["10.9.0.5/32"]),
            ..installed
        };
        let steps = routing(&["10.2.0.0/24", "10.9.0.0/24"]).plan(&installed);
        assert_eq!(
            steps.last(),
            Some(&Step::DelUnassigned {
                net: net("10.9.0.5/32"),
                rule: true
            })
        );
    }

    #[test]
    fn this_nodes_own_network_is_never_remote() {
        let installed = Installed {
            unreachable: nets(&["10.1.0.0/24", "10.2.0.0/24"]),
            ..Installed::default()
        };
        assert_eq!(
            routing(&["10.1.0.0/25"]).remote(&installed),
            nets(&["10.2.0.0/24"])
        );
    }

    #[test]
    fn an_old_prerouting_chain_is_retired() {
        let installed = Installed {
            mangle: Found {
                jumps: vec!["PREROUTING".into()],
                chains: vec!["NMWG-PREROUTING".into()],
            },
            ..Installed::default()
        };
        let steps = routing(&[]).plan(&installed);
        assert!(
            matches!(&steps[0], Step::Chains { retired, .. } if *retired == installed.mangle),
            "{steps:?}"
        );
    }

    #[test]
    fn tool_output_is_read() {
        let rules = "110:\tfrom all to 10.2.0.0/24 lookup 134\n110:\tfrom all to 10.9.9.9 lookup 134\n110:\tfrom all to 10.5.0.0/24 lookup 99\n";
        assert_eq!(
            parse_rules(rules),
            [net("10.2.0.0/24"), net("10.9.9.9/32")].into()
        );
        let routes = "10.2.0.0/24 dev nodemesh-wg0 scope link \nunreachable 10.2.0.0/24 metric 4096 \nunreachable 10.3.0.0/24 metric 4096 \nunreachable 10.9.0.5 metric 4097 \n";
        let routes = parse_routes(routes);
        assert_eq!(routes.dev, nets(&["10.2.0.0/24"]));
        assert_eq!(routes.unreachable, nets(&["10.2.0.0/24", "10.3.0.0/24"]));
        assert_eq!(routes.unassigned, nets(&["10.9.0.5/32"]));
    }
}
