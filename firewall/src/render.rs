//! The structured ruleset (no I/O): named sets with their elements and chains with their rules,
//! rendered deterministically from the config's workloads and nodes and the compiled policies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use ipnet::IpNet;
use nodemesh_config::{Config, Workload};
use nodemesh_policy::netpol::{
    Action, Block, ClusterRule, Direction, LabelSelector, Namespaces, NetworkPolicySet, Peer,
    PodSet, PortMatch, Protocol,
};

use crate::names::{comment, hashed};

/// The table this crate owns, of family `inet`.
pub const TABLE: &str = "nodemesh-netpol";

/// The named counters of denied flows, one per direction.
pub(crate) const COUNTERS: [&str; 2] = ["denied-egress", "denied-ingress"];

/// What a set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetKind {
    /// Pod or node addresses.
    Addr,
    /// Address ranges (`ipBlock` minus its exceptions).
    Interval,
    /// `(pod address, protocol, port)` of a named container port.
    AddrProtoPort,
}

impl SetKind {
    /// The set's declaration inside `{ }`, without elements.
    pub(crate) fn declaration(self) -> &'static str {
        match self {
            SetKind::Addr => "type ipv4_addr;",
            SetKind::Interval => "type ipv4_addr; flags interval;",
            SetKind::AddrProtoPort => "type ipv4_addr . inet_proto . inet_service;",
        }
    }
}

/// One element of a set, ordered numerically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// An address.
    Addr(Ipv4Addr),
    /// An inclusive address range.
    Range(Ipv4Addr, Ipv4Addr),
    /// A pod's named port.
    Port(Ipv4Addr, Proto, u16),
}

/// The protocols a port element can have (ordered as nft's `inet_proto` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// 6.
    Tcp,
    /// 17.
    Udp,
    /// 132.
    Sctp,
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Element::Addr(a) => write!(f, "{a}"),
            Element::Range(a, b) if a == b => write!(f, "{a}"),
            Element::Range(a, b) => write!(f, "{a}-{b}"),
            Element::Port(a, p, n) => {
                let p = match p {
                    Proto::Tcp => "tcp",
                    Proto::Udp => "udp",
                    Proto::Sctp => "sctp",
                };
                write!(f, "{a} . {p} . {n}")
            }
        }
    }
}

/// A named set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// What it holds.
    pub kind: SetKind,
    /// Its elements, sorted.
    pub elements: BTreeSet<Element>,
}

/// A chain and its rules, as `nft` rule text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// The base chain declaration (`type filter hook forward ...;`), for a base chain.
    pub hook: Option<&'static str>,
    /// Its rules, in order.
    pub rules: Vec<String>,
}

/// The whole table: what [`Ruleset::render`] makes and [`crate::transaction`] compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// The sets by name.
    pub sets: BTreeMap<String, Set>,
    /// The chains, each after the chains it jumps to.
    pub chains: Vec<Chain>,
}

const FORWARD_HOOK: &str = "type filter hook forward priority filter; policy accept;";

impl Ruleset {
    /// The rules enforcing `policies` on node `node`'s pods (the workloads with that node), with
    /// peers resolved against every workload and node of `config`.
    pub fn render(config: &Config, policies: &NetworkPolicySet, node: &str) -> Ruleset {
        let mut b = Builder {
            config,
            sets: BTreeMap::new(),
            chains: Vec::new(),
        };
        let local: BTreeSet<Element> = config
            .workloads_on_node(node)
            .map(|w| Element::Addr(w.ip))
            .collect();
        b.sets.insert(
            "local-pods".to_owned(),
            Set {
                kind: SetKind::Addr,
                elements: local,
            },
        );
        for dir in ["ingress", "egress"] {
            b.chains.push(Chain {
                name: format!("reject-{dir}"),
                hook: None,
                rules: vec![
                    format!("counter name \"denied-{dir}\""),
                    "meta l4proto tcp reject with tcp reset".to_owned(),
                    "reject with icmpx admin-prohibited".to_owned(),
                ],
            });
        }
        b.direction(Direction::Ingress, policies, node);
        b.chains.push(Chain {
            name: "egress-allowed".to_owned(),
            hook: None,
            rules: vec![
                "ip daddr @local-pods goto ingress".to_owned(),
                "accept".to_owned(),
            ],
        });
        b.direction(Direction::Egress, policies, node);
        b.chains.push(Chain {
            name: "forward".to_owned(),
            hook: Some(FORWARD_HOOK),
            rules: vec![
                "ct state established,related accept".to_owned(),
                "ip saddr @local-pods jump egress".to_owned(),
                "ip daddr @local-pods jump ingress".to_owned(),
            ],
        });
        Ruleset {
            sets: b.sets,
            chains: b.chains,
        }
    }

    /// The chain called `name`.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The table as an `nft -f` block (`table inet nodemesh-netpol { ... }`); see
    /// [`crate::transaction`] for the script that replaces a stale table with it.
    pub fn to_nft(&self) -> String {
        let mut out = format!("table inet {TABLE} {{\n");
        for c in COUNTERS {
            let _ = writeln!(out, "\tcounter {c} {{\n\t}}\n");
        }
        for (name, set) in &self.sets {
            let _ = writeln!(out, "\tset {name} {{");
            for line in set.kind.declaration().split_inclusive(';') {
                let _ = writeln!(out, "\t\t{}", line.trim().trim_end_matches(';'));
            }
            if !set.elements.is_empty() {
                let _ = writeln!(out, "\t\telements = {{ {} }}", join(&set.elements));
            }
            let _ = writeln!(out, "\t}}\n");
        }
        for (i, chain) in self.chains.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let _ = writeln!(out, "\tchain {} {{", chain.name);
            if let Some(hook) = chain.hook {
                let _ = writeln!(out, "\t\t{hook}");
            }
            for rule in &chain.rules {
                let _ = writeln!(out, "\t\t{rule}");
            }
            out.push_str("\t}\n");
        }
        out.push_str("}\n");
        out
    }
}

/// `a, b, c`.
pub(crate) fn join<'a>(elements: impl IntoIterator<Item = &'a Element>) -> String {
    let mut out = String::new();
    for (i, e) in elements.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{e}");
    }
    out
}

struct Builder<'c> {
    config: &'c Config,
    sets: BTreeMap<String, Set>,
    chains: Vec<Chain>,
}

/// The words of one direction.
struct Dir {
    name: &'static str,
    subject: &'static str,
    peer: &'static str,
    allow: &'static str,
    deny: String,
}

impl Dir {
    fn new(direction: Direction) -> Self {
        match direction {
            Direction::Ingress => Dir {
                name: "ingress",
                subject: "ip daddr",
                peer: "ip saddr",
                allow: "accept",
                deny: "goto reject-ingress".to_owned(),
            },
            Direction::Egress => Dir {
                name: "egress",
                subject: "ip saddr",
                peer: "ip daddr",
                allow: "goto egress-allowed",
                deny: "goto reject-egress".to_owned(),
            },
        }
    }
}

impl Builder<'_> {
    fn direction(&mut self, direction: Direction, policies: &NetworkPolicySet, node: &str) {
        let d = Dir::new(direction);
        // NetworkPolicies: one chain per policy with rules, a dispatch chain, the isolated pods.
        let mut dispatch = Vec::new();
        let mut isolated = BTreeSet::new();
        for p in policies.network_policies() {
            let rules = match direction {
                Direction::Ingress => &p.ingress,
                Direction::Egress => &p.egress,
            };
            let Some(rules) = rules else { continue };
            let subject = PodSet {
                namespaces: Namespaces::Named(p.id.namespace.clone()),
                pods: p.pod_selector.clone(),
            };
            isolated.extend(
                self.config
                    .workloads_on_node(node)
                    .filter(|w| pod_in(self.config, &subject, w))
                    .map(|w| Element::Addr(w.ip)),
            );
            let id = p.id.to_string();
            let chain = hashed("np", &format!("{id}/{}", d.name));
            let mut lines = Vec::new();
            for (i, r) in rules.iter().enumerate() {
                let note = comment(&format!("{id} {}[{i}]", d.name));
                let any = [Peer::Any];
                let peers = if r.peers.is_empty() {
                    &any[..]
                } else {
                    &r.peers
                };
                self.rule_lines(&d, peers, &r.ports, d.allow, &note, &mut lines);
            }
            if lines.is_empty() {
                continue;
            }
            let set = self.pods_set(&subject);
            dispatch.push(format!(
                "{} @{set} jump {chain} comment \"{}\"",
                d.subject,
                comment(&id)
            ));
            self.chains.push(Chain {
                name: chain,
                hook: None,
                rules: lines,
            });
        }
        let isolated_set = format!("np-isolated-{}", d.name);
        self.sets.insert(
            isolated_set.clone(),
            Set {
                kind: SetKind::Addr,
                elements: isolated,
            },
        );
        dispatch.push(d.deny.clone());
        let np_chain = format!("{}-np", d.name);
        self.chains.push(Chain {
            name: np_chain.clone(),
            hook: None,
            rules: dispatch,
        });
        // Baseline: for pods no NetworkPolicy isolates; Pass is the end of the tiers (allow).
        let tier_chain = format!("{}-np-tier", d.name);
        let mut tier = vec![format!("{} @{isolated_set} goto {np_chain}", d.subject)];
        let baseline = self.cluster_tier(&d, policies.baseline(), d.allow);
        tier.extend(baseline);
        tier.push(d.allow.to_owned());
        self.chains.push(Chain {
            name: tier_chain.clone(),
            hook: None,
            rules: tier,
        });
        // Admin: Pass goes on to the NetworkPolicy tier.
        let mut admin = self.cluster_tier(&d, policies.admin(), &format!("goto {tier_chain}"));
        admin.push(format!("goto {tier_chain}"));
        self.chains.push(Chain {
            name: d.name.to_owned(),
            hook: None,
            rules: admin,
        });
    }

    /// One chain per ClusterNetworkPolicy with rules in this direction; the dispatch lines.
    fn cluster_tier(
        &mut self,
        d: &Dir,
        tier: &[nodemesh_policy::netpol::ClusterNetworkPolicy],
        pass: &str,
    ) -> Vec<String> {
        let mut dispatch = Vec::new();
        for p in tier {
            let rules: &[ClusterRule] = match d.name {
                "ingress" => &p.ingress,
                _ => &p.egress,
            };
            let chain = hashed("cnp", &format!("{}/{}", p.name, d.name));
            let mut lines = Vec::new();
            for r in rules {
                let verdict = match r.action {
                    Action::Accept => d.allow,
                    Action::Deny => d.deny.as_str(),
                    Action::Pass => pass,
                };
                let note = comment(&format!("{} {} {}", p.name, r.name, r.action.as_str()));
                self.rule_lines(d, &r.peers, &r.ports, verdict, &note, &mut lines);
            }
            if lines.is_empty() {
                continue;
            }
            let set = self.pods_set(&p.subject);
            dispatch.push(format!(
                "{} @{set} jump {chain} comment \"{}\"",
                d.subject,
                comment(&format!(
                    "{} {} priority {}",
                    p.tier.as_str(),
                    p.name,
                    p.priority
                ))
            ));
            self.chains.push(Chain {
                name: chain,
                hook: None,
                rules: lines,
            });
        }
        dispatch
    }

    /// The lines of one rule: any peer on any port (empty ports: all traffic, ICMP too).
    fn rule_lines(
        &mut self,
        d: &Dir,
        peers: &[Peer],
        ports: &[PortMatch],
        verdict: &str,
        note: &str,
        out: &mut Vec<String>,
    ) {
        let all = [None];
        let port_matches: Vec<Option<String>> = ports.iter().map(|m| self.port_match(m)).collect();
        for peer in peers {
            let Some(peer) = self.peer_match(d, peer) else {
                continue;
            };
            let ports: Vec<Option<&str>> = if ports.is_empty() {
                all.to_vec()
            } else {
                port_matches
                    .iter()
                    .flatten()
                    .map(|s| Some(s.as_str()))
                    .collect()
            };
            for port in ports {
                let mut line = String::new();
                for part in [peer.as_deref(), port, Some(verdict)].into_iter().flatten() {
                    line.push_str(part);
                    line.push(' ');
                }
                let _ = write!(line, "comment \"{note}\"");
                out.push(line);
            }
        }
    }

    /// `Some(None)`: every peer; `Some(Some(m))`: the match `m`; `None`: no peer.
    fn peer_match(&mut self, d: &Dir, peer: &Peer) -> Option<Option<String>> {
        match peer {
            Peer::Any => Some(None),
            Peer::None => None,
            Peer::Pods(set) => {
                let name = self.pods_set(set);
                Some(Some(format!("{} @{name}", d.peer)))
            }
            Peer::Block(block) => {
                let name = self.block_set(block)?;
                Some(Some(format!("{} @{name}", d.peer)))
            }
            Peer::Nodes(selector) => {
                let name = self.nodes_set(selector);
                Some(Some(format!("{} @{name}", d.peer)))
            }
        }
    }

    /// The match of a port rule; `None` when it can match no IPv4 packet.
    fn port_match(&mut self, m: &PortMatch) -> Option<String> {
        match m {
            PortMatch::Numbers {
                protocol,
                first,
                last,
            } => {
                let proto = l4proto(*protocol);
                if *protocol == Protocol::Icmp {
                    return Some(format!("meta l4proto {proto}"));
                }
                Some(if first == last {
                    format!("meta l4proto {proto} th dport {first}")
                } else {
                    format!("meta l4proto {proto} th dport {first}-{last}")
                })
            }
            PortMatch::Named { protocol, name } => {
                let key = format!("{name}/{protocol:?}");
                let set = hashed("port", &key);
                if !self.sets.contains_key(&set) {
                    let elements = self
                        .config
                        .workloads()
                        .iter()
                        .flat_map(|w| {
                            w.ports.iter().filter_map(move |p| {
                                let proto = proto(p.protocol)?;
                                let wanted =
                                    protocol.is_none_or(|x| l4proto(x) == proto_name(proto));
                                (p.name.as_deref() == Some(name.as_str()) && wanted)
                                    .then_some(Element::Port(w.ip, proto, p.port))
                            })
                        })
                        .collect();
                    self.sets.insert(
                        set.clone(),
                        Set {
                            kind: SetKind::AddrProtoPort,
                            elements,
                        },
                    );
                }
                Some(format!("ip daddr . meta l4proto . th dport @{set}"))
            }
        }
    }

    fn pods_set(&mut self, set: &PodSet) -> String {
        let name = hashed("pods", &format!("{set:?}"));
        if !self.sets.contains_key(&name) {
            let elements = self
                .config
                .workloads()
                .iter()
                .filter(|w| pod_in(self.config, set, w))
                .map(|w| Element::Addr(w.ip))
                .collect();
            self.sets.insert(
                name.clone(),
                Set {
                    kind: SetKind::Addr,
                    elements,
                },
            );
        }
        name
    }

    fn nodes_set(&mut self, selector: &LabelSelector) -> String {
        let name = hashed("nodes", &format!("{selector:?}"));
        if !self.sets.contains_key(&name) {
            let elements = self
                .config
                .nodes()
                .iter()
                .filter(|n| selector.matches(&n.labels))
                .map(|n| Element::Addr(n.address))
                .collect();
            self.sets.insert(
                name.clone(),
                Set {
                    kind: SetKind::Addr,
                    elements,
                },
            );
        }
        name
    }

    /// An interval set of the block minus its exceptions; `None` for an IPv6 block.
    fn block_set(&mut self, block: &Block) -> Option<String> {
        let IpNet::V4(net) = block.net else {
            return None;
        };
        let name = hashed("net", &format!("{block:?}"));
        if !self.sets.contains_key(&name) {
            let mut ranges = vec![(u32::from(net.network()), u32::from(net.broadcast()))];
            for e in &block.except {
                if let IpNet::V4(e) = e {
                    ranges = subtract(&ranges, u32::from(e.network()), u32::from(e.broadcast()));
                }
            }
            let elements = ranges
                .into_iter()
                .map(|(a, b)| Element::Range(Ipv4Addr::from(a), Ipv4Addr::from(b)))
                .collect();
            self.sets.insert(
                name.clone(),
                Set {
                    kind: SetKind::Interval,
                    elements,
                },
            );
        }
        Some(name)
    }
}

/// Inclusive ranges minus `[lo, hi]`.
fn subtract(ranges: &[(u32, u32)], lo: u32, hi: u32) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        if hi < a || lo > b {
            out.push((a, b));
            continue;
        }
        if lo > a {
            out.push((a, lo - 1));
        }
        if hi < b {
            out.push((hi + 1, b));
        }
    }
    out
}

fn pod_in(config: &Config, set: &PodSet, w: &Workload) -> bool {
    set.namespaces
        .contains(&w.namespace, config.namespace_labels(&w.namespace))
        && set.pods.matches(&w.labels)
}

fn l4proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
        Protocol::Icmp => "icmp",
    }
}

fn proto(p: nodemesh_config::Protocol) -> Option<Proto> {
    match p {
        nodemesh_config::Protocol::Tcp => Some(Proto::Tcp),
        nodemesh_config::Protocol::Udp => Some(Proto::Udp),
        nodemesh_config::Protocol::Sctp => Some(Proto::Sctp),
        _ => None,
    }
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Sctp => "sctp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn except_ranges_are_cut_out() {
        let r = subtract(&[(0, 255)], 16, 31);
        assert_eq!(r, [(0, 15), (32, 255)]);
        assert_eq!(subtract(&r, 0, 15), [(32, 255)]);
        assert_eq!(subtract(&[(0, 255)], 0, 255), []);
    }
}
