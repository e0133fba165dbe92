//! Routing remote pod networks into the tunnel (DESIGN.md "Capture", marks and tables), failing
//! closed.
//!
//! - `ip rule pref 110 to <remote podCIDR> lookup 134`, one per remote node;
//! - table 134: `<podCIDR> dev <wg>` and, behind it, `unreachable <podCIDR> metric 4096`: when the
//!   device is gone (the process died) the packet still matches table 134 and is dropped, never
//!   routed through `main` in plaintext;
//! - HBONE (TCP to or from port 15008) is marked `0x222/0xfff` in our own mangle chains and
//!   `ip rule pref 105 fwmark 0x222/0xfff lookup main` keeps it out of the tunnel; packets
//!   already marked for TPROXY delivery (`0x111`) are left alone;
//! - TCP MSS is clamped to the tunnel's path MTU on the way into the device.
//!
//! [`apply`] adds what is missing and drops the device routes of nodes that left, but keeps their
//! rules and unreachable routes (a node removed from the config is dropped, not reached in
//! plaintext). Only [`remove`] (`nodemesh wireguard down`) deletes everything of ours.
//!
//! Our mangle chains are `NMWG-*`: the capture crate owns every `NODEMESH-*` chain.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nodemesh_net::routing::{HBONE_RULE_PREF, WIREGUARD_RULE_PREF, WIREGUARD_TABLE};
use nodemesh_net::{marks, ports};

use crate::command::{ROUTING_TOOLS, Tool, locate, run, try_run};
use crate::error::WireguardError;

/// The metric of the unreachable fallback routes (worse than the device routes' 0).
pub const UNREACHABLE_METRIC: u32 = 4096;
/// Our mangle chains and the built-in chain each is jumped to from.
pub const CHAINS: [(&str, &str); 3] = [
    ("PREROUTING", "NMWG-PREROUTING"),
    ("OUTPUT", "NMWG-OUTPUT"),
    ("POSTROUTING", "NMWG-POSTROUTING"),
];

/// The routing of one node: its WireGuard interface and the remote pod networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// The WireGuard interface.
    pub dev: String,
    /// The remote nodes' pod networks.
    pub cidrs: BTreeSet<Ipv4Net>,
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
    /// Networks with an unreachable route in table 134.
    pub unreachable: BTreeSet<Ipv4Net>,
    /// Built-in chains that jump to ours.
    pub jumps: Vec<String>,
    /// Our chains that exist.
    pub chains: Vec<String>,
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
    /// (Re)write our mangle chains, adding the missing jumps.
    Chains {
        /// Built-in chains that still need a jump to ours.
        missing_jumps: Vec<&'static str>,
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
}

impl Routing {
    /// The rules of our chains, in order, as `iptables-restore` takes them.
    pub fn chain_rules(&self) -> Vec<String> {
        let [(_, pre), (_, out), (_, post)] = CHAINS;
        let (hbone, tproxy, port) = (marks::HBONE, marks::TPROXY, ports::HBONE);
        let mark = format!("-j MARK --set-xmark {hbone}");
        vec![
            format!("-A {pre} -m mark --mark {tproxy} -j RETURN"),
            format!("-A {pre} -p tcp -m tcp --dport {port} {mark}"),
            format!("-A {pre} -p tcp -m tcp --sport {port} {mark}"),
            format!("-A {out} -p tcp -m tcp --dport {port} {mark}"),
            format!("-A {out} -p tcp -m tcp --sport {port} {mark}"),
            format!(
                "-A {post} -o {} -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
                self.dev
            ),
        ]
    }

    /// `iptables-restore --noflush` input (re)creating our chains in one commit; declaring a
    /// chain flushes it.
    pub fn render_iptables(&self, missing_jumps: &[&str]) -> String {
        let mut out = String::from("*mangle\n");
        for (_, chain) in CHAINS {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for (builtin, chain) in CHAINS {
            if missing_jumps.contains(&builtin) {
                let _ = writeln!(out, "-A {builtin} -j {chain}");
            }
        }
        for rule in self.chain_rules() {
            let _ = writeln!(out, "{rule}");
        }
        out.push_str("COMMIT\n");
        out
    }

    /// The steps from `installed` to this routing, pure. Fallback routes and rules of networks
    /// no longer wanted stay (fail closed); only their device routes go.
    pub fn plan(&self, installed: &Installed) -> Vec<Step> {
        let mut steps = Vec::new();
        let missing_jumps: Vec<&'static str> = CHAINS
            .iter()
            .filter(|(builtin, _)| !installed.jumps.iter().any(|j| j == builtin))
            .map(|(builtin, _)| *builtin)
            .collect();
        // Rewriting the chains is idempotent; it also picks up a renamed device.
        steps.push(Step::Chains { missing_jumps });
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
        for net in installed.dev_routes.difference(&self.cidrs) {
            steps.push(Step::DelDevRoute(*net));
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

/// The device routes and unreachable routes of `ip -4 route show table 134`.
pub fn parse_routes(text: &str) -> (BTreeSet<Ipv4Net>, BTreeSet<Ipv4Net>) {
    let mut dev = BTreeSet::new();
    let mut unreachable = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("unreachable") => {
                if let Some(net) = words.next().and_then(parse_net) {
                    unreachable.insert(net);
                }
            }
            Some(first) if line.contains(" dev ") => {
                if let Some(net) = parse_net(first) {
                    dev.insert(net);
                }
            }
            _ => {}
        }
    }
    (dev, unreachable)
}

/// Checks that every tool is installed, before anything is touched.
pub fn preflight() -> Result<(), WireguardError> {
    for tool in ROUTING_TOOLS {
        locate(tool)?;
    }
    Ok(())
}

/// Reads what of ours is installed in this network namespace.
pub fn installed() -> Result<Installed, WireguardError> {
    let table = WIREGUARD_TABLE.to_string();
    let rules = run(
        Tool::Ip,
        &[
            "-4",
            "rule",
            "list",
            "pref",
            &WIREGUARD_RULE_PREF.to_string(),
        ],
        None,
        "list the WireGuard ip rules",
    )?;
    let hbone = run(
        Tool::Ip,
        &["-4", "rule", "list", "pref", &HBONE_RULE_PREF.to_string()],
        None,
        "list the HBONE ip rule",
    )?;
    // A table that was never created is an error for `ip route show`: nothing installed.
    let routes = try_run(
        Tool::Ip,
        &["-4", "route", "show", "table", &table],
        None,
        &format!("list table {WIREGUARD_TABLE}"),
    )?;
    let (dev_routes, unreachable) = if routes.ok {
        parse_routes(&routes.stdout)
    } else {
        Default::default()
    };
    let save = run(
        Tool::IptablesSave,
        &["-t", "mangle"],
        None,
        "read the mangle table",
    )?;
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for line in save.lines().map(str::trim_end) {
        for (builtin, chain) in CHAINS {
            if line == format!("-A {builtin} -j {chain}") {
                jumps.push(builtin.to_owned());
            }
            if line
                .strip_prefix(':')
                .is_some_and(|d| d.split(' ').next() == Some(chain))
            {
                chains.push(chain.to_owned());
            }
        }
    }
    Ok(Installed {
        rules: parse_rules(&rules),
        hbone_rule: hbone.contains(&format!("fwmark {} lookup main", marks::HBONE)),
        dev_routes,
        unreachable,
        jumps,
        chains,
    })
}

/// Installs `routing` in this network namespace, changing only what differs; returns the steps
/// taken (the chains are rewritten every time).
pub fn apply(routing: &Routing) -> Result<Vec<Step>, WireguardError> {
    preflight()?;
    let steps = routing.plan(&installed()?);
    let table = WIREGUARD_TABLE.to_string();
    let source = routing.source.map(|a| a.to_string());
    if let Some(source) = &source {
        let addr = format!("{source}/32");
        let argv = ["-4", "addr", "replace", &addr, "dev", &routing.dev];
        run(Tool::Ip, &argv, None, "give the tunnel its source address")?;
    }
    for step in &steps {
        match step {
            Step::Chains { missing_jumps } => {
                run(
                    Tool::IptablesRestore,
                    &["--noflush"],
                    Some(&routing.render_iptables(missing_jumps)),
                    "install the HBONE exemption chains",
                )?;
            }
            Step::HboneRule => {
                let (pref, mark) = (HBONE_RULE_PREF.to_string(), marks::HBONE.to_string());
                let argv = [
                    "-4", "rule", "add", "pref", &pref, "fwmark", &mark, "lookup", "main",
                ];
                run(Tool::Ip, &argv, None, "add the HBONE ip rule")?;
            }
            Step::Unreachable(net) => {
                let (net, metric) = (net.to_string(), UNREACHABLE_METRIC.to_string());
                let argv = [
                    "-4",
                    "route",
                    "replace",
                    "unreachable",
                    &net,
                    "table",
                    &table,
                    "metric",
                    &metric,
                ];
                run(Tool::Ip, &argv, None, "add a fail-closed route")?;
            }
            Step::DevRoute(net) => {
                let net = net.to_string();
                let mut argv = vec![
                    "-4",
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
                run(Tool::Ip, &argv, None, "route a pod network into the tunnel")?;
            }
            Step::Rule(net) => {
                let (net, pref) = (net.to_string(), WIREGUARD_RULE_PREF.to_string());
                let argv = [
                    "-4", "rule", "add", "pref", &pref, "to", &net, "lookup", &table,
                ];
                run(Tool::Ip, &argv, None, "add a WireGuard ip rule")?;
            }
            Step::DelDevRoute(net) => {
                let net = net.to_string();
                let argv = ["-4", "route", "del", &net, "table", &table, "metric", "0"];
                // Gone already when the device went away: not an error.
                try_run(Tool::Ip, &argv, None, "delete a tunnel route")?;
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
        let argv = [
            "-4", "rule", "del", "pref", &pref, "to", &net, "lookup", &table,
        ];
        run(Tool::Ip, &argv, None, "delete a WireGuard ip rule")?;
    }
    if found.hbone_rule {
        let (pref, mark) = (HBONE_RULE_PREF.to_string(), marks::HBONE.to_string());
        let argv = [
            "-4", "rule", "del", "pref", &pref, "fwmark", &mark, "lookup", "main",
        ];
        run(Tool::Ip, &argv, None, "delete the HBONE ip rule")?;
    }
    if !found.dev_routes.is_empty() || !found.unreachable.is_empty() {
        run(
            Tool::Ip,
            &["-4", "route", "flush", "table", &table],
            None,
            &format!("flush table {WIREGUARD_TABLE}"),
        )?;
    }
    if !found.jumps.is_empty() || !found.chains.is_empty() {
        let mut input = String::from("*mangle\n");
        for builtin in &found.jumps {
            let chain = CHAINS
                .iter()
                .find(|(b, _)| b == builtin)
                .map_or("", |(_, c)| *c);
            let _ = writeln!(input, "-D {builtin} -j {chain}");
        }
        for chain in &found.chains {
            let _ = writeln!(input, "-F {chain}");
        }
        for chain in &found.chains {
            let _ = writeln!(input, "-X {chain}");
        }
        input.push_str("COMMIT\n");
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

    fn routing(nets: &[&str]) -> Routing {
        Routing {
            dev: "nodemesh-wg0".into(),
            cidrs: nets.iter().map(|s| net(s)).collect(),
            source: None,
        }
    }

    #[test]
    fn from_nothing_everything_is_added() {
        let steps = routing(&["10.2.0.0/24"]).plan(&Installed::default());
        assert_eq!(
            steps,
            [
                Step::Chains {
                    missing_jumps: vec!["PREROUTING", "OUTPUT", "POSTROUTING"]
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
            rules: [net("10.2.0.0/24")].into(),
            hbone_rule: true,
            dev_routes: [net("10.2.0.0/24")].into(),
            unreachable: [net("10.2.0.0/24")].into(),
            jumps: vec!["PREROUTING".into(), "OUTPUT".into(), "POSTROUTING".into()],
            chains: CHAINS.iter().map(|(_, c)| (*c).to_owned()).collect(),
        };
        let steps = r.plan(&installed);
        assert_eq!(
            steps,
            [
                Step::Chains {
                    missing_jumps: vec![]
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
            rules: [net("10.2.0.0/24")].into(),
            hbone_rule: true,
            dev_routes: [net("10.2.0.0/24")].into(),
            unreachable: [net("10.2.0.0/24")].into(),
            jumps: vec!["PREROUTING".into(), "OUTPUT".into(), "POSTROUTING".into()],
            chains: vec![],
        };
        let steps = routing(&[]).plan(&installed);
        assert_eq!(steps.last(), Some(&Step::DelDevRoute(net("10.2.0.0/24"))));
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, Step::Unreachable(_) | Step::Rule(_)))
        );
    }

    #[test]
    fn iptables_input() {
        let text = routing(&[]).render_iptables(&["OUTPUT"]);
        assert!(
            text.starts_with("*mangle\n:NMWG-PREROUTING - [0:0]\n"),
            "{text}"
        );
        assert!(text.contains("\n-A OUTPUT -j NMWG-OUTPUT\n"), "{text}");
        assert!(!text.contains("-A PREROUTING -j"), "{text}");
        assert!(text.contains("-A NMWG-PREROUTING -m mark --mark 0x111/0xfff -j RETURN\n-A NMWG-PREROUTING -p tcp -m tcp --dport 15008 -j MARK --set-xmark 0x222/0xfff\n"), "{text}");
        assert!(text.contains("-A NMWG-POSTROUTING -o nodemesh-wg0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu\n"), "{text}");
        assert!(text.ends_with("COMMIT\n"));
        assert!(CHAINS.iter().all(|(_, c)| !c.starts_with("NODEMESH-")));
    }

    #[test]
    fn tool_output_is_read() {
        let rules = "110:\tfrom all to 10.2.0.0/24 lookup 134\n110:\tfrom all to 10.9.9.9 lookup 134\n110:\tfrom all to 10.5.0.0/24 lookup 99\n";
        assert_eq!(
            parse_rules(rules),
            [net("10.2.0.0/24"), net("10.9.9.9/32")].into()
        );
        let routes = "10.2.0.0/24 dev nodemesh-wg0 scope link \nunreachable 10.2.0.0/24 metric 4096 \nunreachable 10.3.0.0/24 metric 4096 \n";
        let (dev, unr) = parse_routes(routes);
        assert_eq!(dev, [net("10.2.0.0/24")].into());
        assert_eq!(unr, [net("10.2.0.0/24"), net("10.3.0.0/24")].into());
    }
}
