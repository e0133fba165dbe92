//! The decision: which tiers select a flow's pods, and what they say, per direction
//! (Admin ClusterNetworkPolicies, then NetworkPolicies, then Baseline), without I/O and, when a
//! flow is allowed, without allocating.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use super::model::{
    Action, ClusterNetworkPolicy, ClusterRule, NetworkPolicy, Peer, PodSet, PortMatch, Protocol,
    Rule, Tier,
};
use crate::decision::Verdict;
use crate::policy::PolicyRef;
use crate::request::Labels;

/// A pod as network policies see it.
pub trait Pod {
    /// Its namespace.
    fn namespace(&self) -> &str;
    /// Its labels.
    fn labels(&self) -> &dyn Labels;
    /// Its namespace's labels.
    fn namespace_labels(&self) -> &dyn Labels;
    /// Whether it declares a container port `name` as `port`/`protocol`.
    fn has_named_port(&self, name: &str, port: u16, protocol: Protocol) -> bool;
}

/// One end of a flow.
#[derive(Clone, Copy, Default)]
pub struct Endpoint<'a> {
    /// Its address; `None` for an address not to be believed (a mesh source whose certificate
    /// names another workload than the one at its address): it then matches no `ipBlock`.
    pub ip: Option<IpAddr>,
    /// The pod at the address, when it is one (for a mesh source: only if its certificate names
    /// that pod's identity).
    pub pod: Option<&'a dyn Pod>,
    /// The labels of the node whose address this is, when it is a node's.
    pub node: Option<&'a dyn Labels>,
}

impl fmt::Debug for Endpoint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("ip", &self.ip)
            .field("pod", &self.pod.map(|p| p.namespace().to_owned()))
            .finish_non_exhaustive()
    }
}

/// A new flow: who opens it to whom, on which protocol and destination port (after Service
/// resolution: the endpoint and its target port, never a VIP).
#[derive(Clone, Copy, Debug)]
pub struct Flow<'a> {
    /// The client.
    pub source: Endpoint<'a>,
    /// The server.
    pub destination: Endpoint<'a>,
    /// The protocol.
    pub protocol: Protocol,
    /// The destination port (0 for ICMP).
    pub port: u16,
}

/// Ingress (to the destination pod) or egress (from the source pod).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Policies on the destination pod.
    Ingress,
    /// Policies on the source pod.
    Egress,
}

impl Direction {
    /// `ingress`, `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Why a direction was decided as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis<'e> {
    /// The pod of this direction is no pod (an address outside the pod network): nothing applies.
    NoPod,
    /// No policy of any tier selects the pod for this direction (or every tier passed).
    NotSelected,
    /// A ClusterNetworkPolicy rule decided (Accept or Deny).
    Cluster {
        /// The policy.
        policy: &'e ClusterNetworkPolicy,
        /// The rule.
        rule: &'e ClusterRule,
    },
    /// A rule of a NetworkPolicy that selects the pod admits the flow.
    Admitted {
        /// The policy.
        policy: &'e PolicyRef,
        /// The rule's index.
        rule: usize,
    },
    /// NetworkPolicies select the pod for this direction and none of their rules admits it.
    Isolated {
        /// The first of them (by namespace/name order).
        first: &'e NetworkPolicy,
        /// How many select the pod.
        count: usize,
    },
}

/// One direction's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectionDecision<'e> {
    /// Which direction.
    pub direction: Direction,
    /// Allow or deny.
    pub verdict: Verdict,
    /// Why.
    pub basis: Basis<'e>,
    /// An Admin rule that passed the flow on to the NetworkPolicy tier, if one did.
    pub passed: Option<(&'e ClusterNetworkPolicy, &'e ClusterRule)>,
}

/// A flow's decision: egress at the source pod and ingress at the destination pod must both
/// allow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetDecision<'e> {
    /// Allow when both directions allow.
    pub verdict: Verdict,
    /// The source pod's policies.
    pub egress: DirectionDecision<'e>,
    /// The destination pod's policies.
    pub ingress: DirectionDecision<'e>,
}

impl<'e> NetDecision<'e> {
    /// The decision as JSON for `/policy/explain` and `nodemesh policy explain`:
    /// `{"verdict", "egress": {"verdict", "policy", "reason"}, "ingress": {...}}`.
    pub fn to_json(&self, protocol: Protocol, port: u16) -> serde_json::Value {
        let side = |d: &DirectionDecision<'_>| {
            serde_json::json!({
                "verdict": d.verdict.as_str(),
                "policy": d.policy_name(),
                "reason": d.describe(protocol, port),
            })
        };
        serde_json::json!({
            "verdict": self.verdict.as_str(),
            "egress": side(&self.egress),
            "ingress": side(&self.ingress),
        })
    }

    /// The decision for people, one line per direction after the verdict.
    pub fn to_text(&self, protocol: Protocol, port: u16) -> String {
        format!(
            "network policy: {}\n  {}\n  {}\n",
            self.verdict.as_str(),
            self.egress.describe(protocol, port),
            self.ingress.describe(protocol, port)
        )
    }

    /// The direction that denied, if one did (egress first).
    pub fn denied(&self) -> Option<&DirectionDecision<'e>> {
        [&self.egress, &self.ingress]
            .into_iter()
            .find(|d| d.verdict == Verdict::Deny)
    }
}

/// A flow's protocol and port, for messages: `TCP port 9090`.
struct What(Protocol, u16);

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Protocol::Icmp => f.write_str("ICMP"),
            p => write!(f, "{p} port {}", self.1),
        }
    }
}

impl DirectionDecision<'_> {
    /// The policy that decided, as `NetworkPolicy/<ns>/<name>` or
    /// `ClusterNetworkPolicy/<name>`; `None` when none did.
    pub fn policy_name(&self) -> Option<String> {
        match self.basis {
            Basis::NoPod | Basis::NotSelected => None,
            Basis::Cluster { policy, .. } => Some(format!("ClusterNetworkPolicy/{}", policy.name)),
            Basis::Admitted { policy, .. } => Some(format!("NetworkPolicy/{policy}")),
            Basis::Isolated { first, .. } => Some(format!("NetworkPolicy/{}", first.id)),
        }
    }

    /// A sentence for people: `denied by default-deny shop/deny-all (ingress): no rule admits
    /// TCP port 9090`.
    pub fn describe(&self, protocol: Protocol, port: u16) -> String {
        let dir = self.direction.as_str();
        let passed = self
            .passed
            .map(|(p, r)| format!(" (passed on by Admin {}/{})", p.name, r.name))
            .unwrap_or_default();
        match self.basis {
            Basis::NoPod => format!("{dir}: not a pod, no policy applies"),
            Basis::NotSelected => format!("{dir}: allowed, no policy selects the pod{passed}"),
            Basis::Cluster { policy, rule } => format!(
                "{} by {} ClusterNetworkPolicy {} rule {} ({}, priority {})",
                if self.verdict == Verdict::Allow {
                    "allowed"
                } else {
                    "denied"
                },
                policy.tier.as_str(),
                policy.name,
                rule.name,
                dir,
                policy.priority,
            ),
            Basis::Admitted { policy, rule } => {
                format!("allowed by NetworkPolicy {policy} ({dir} rule {rule}){passed}")
            }
            Basis::Isolated { first, count } => {
                let what = What(protocol, port);
                let kind = if first.failed {
                    "NetworkPolicy that does not compile (fails closed)"
                } else if count == 1
                    && direction_rules(first, self.direction).is_some_and(|r| r.is_empty())
                {
                    "default-deny"
                } else {
                    "NetworkPolicy"
                };
                let others = match count {
                    1 => String::new(),
                    n => format!(" and {} more", n - 1),
                };
                format!(
                    "denied by {kind} {}{others} ({dir}): no rule admits {what}{passed}",
                    first.id
                )
            }
        }
    }
}

fn direction_rules(p: &NetworkPolicy, d: Direction) -> Option<&Vec<Rule>> {
    match d {
        Direction::Ingress => p.ingress.as_ref(),
        Direction::Egress => p.egress.as_ref(),
    }
}

/// The NetworkPolicies of one namespace, indexed by the first `key=value` their pod selector
/// requires, so a decision looks at the few that may select a pod.
#[derive(Debug, Default)]
struct NamespaceIndex {
    by_label: Vec<(String, HashMap<String, Vec<usize>>)>,
    others: Vec<usize>,
}

/// Every compiled NetworkPolicy and ClusterNetworkPolicy of the cluster, ready to decide flows.
#[derive(Debug, Default)]
pub struct NetworkPolicySet {
    policies: Vec<NetworkPolicy>,
    by_namespace: HashMap<String, NamespaceIndex>,
    admin: Vec<ClusterNetworkPolicy>,
    baseline: Vec<ClusterNetworkPolicy>,
}

impl NetworkPolicySet {
    /// A set of compiled policies.
    pub fn new(
        mut policies: Vec<NetworkPolicy>,
        cluster: impl IntoIterator<Item = ClusterNetworkPolicy>,
    ) -> Self {
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        let mut by_namespace: HashMap<String, NamespaceIndex> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            let index = by_namespace.entry(p.id.namespace.clone()).or_default();
            match p.pod_selector.first_equality() {
                Some((k, v)) => {
                    let pos = match index.by_label.iter().position(|(key, _)| key == k) {
                        Some(pos) => pos,
                        None => {
                            index.by_label.push((k.to_owned(), HashMap::new()));
                            index.by_label.len() - 1
                        }
                    };
                    index.by_label[pos]
                        .1
                        .entry(v.to_owned())
                        .or_default()
                        .push(i);
                }
                None => index.others.push(i),
            }
        }
        let (mut admin, mut baseline): (Vec<_>, Vec<_>) =
            cluster.into_iter().partition(|p| p.tier == Tier::Admin);
        let order = |a: &ClusterNetworkPolicy, b: &ClusterNetworkPolicy| {
            (a.priority, &a.name).cmp(&(b.priority, &b.name))
        };
        admin.sort_by(order);
        baseline.sort_by(order);
        Self {
            policies,
            by_namespace,
            admin,
            baseline,
        }
    }

    /// The NetworkPolicies, by namespace/name.
    pub fn network_policies(&self) -> &[NetworkPolicy] {
        &self.policies
    }

    /// The Admin tier, in evaluation order.
    pub fn admin(&self) -> &[ClusterNetworkPolicy] {
        &self.admin
    }

    /// The Baseline tier, in evaluation order.
    pub fn baseline(&self) -> &[ClusterNetworkPolicy] {
        &self.baseline
    }

    /// Whether there is no policy at all (every flow is allowed).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.admin.is_empty() && self.baseline.is_empty()
    }

    /// Decides a new flow in both directions.
    pub fn decide<'e>(&'e self, flow: &Flow<'_>) -> NetDecision<'e> {
        let egress = self.decide_direction(Direction::Egress, flow);
        let ingress = self.decide_direction(Direction::Ingress, flow);
        let verdict = if egress.verdict == Verdict::Allow && ingress.verdict == Verdict::Allow {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        NetDecision {
            verdict,
            egress,
            ingress,
        }
    }

    /// Decides one direction of a new flow.
    pub fn decide_direction<'e>(
        &'e self,
        direction: Direction,
        flow: &Flow<'_>,
    ) -> DirectionDecision<'e> {
        let (subject, peer) = match direction {
            Direction::Ingress => (flow.destination, flow.source),
            Direction::Egress => (flow.source, flow.destination),
        };
        let done = |verdict, basis, passed| DirectionDecision {
            direction,
            verdict,
            basis,
            passed,
        };
        let Some(pod) = subject.pod else {
            return done(Verdict::Allow, Basis::NoPod, None);
        };
        let mut passed = None;
        match cluster_tier(&self.admin, direction, pod, &peer, flow) {
            TierOutcome::Decided(verdict, policy, rule) => {
                return done(verdict, Basis::Cluster { policy, rule }, None);
            }
            TierOutcome::Passed(policy, rule) => passed = Some((policy, rule)),
            TierOutcome::NoMatch => {}
        }
        let mut isolating: Option<(&NetworkPolicy, usize)> = None;
        for i in self.candidates(pod) {
            let p = &self.policies[i];
            let Some(rules) = direction_rules(p, direction) else {
                continue;
            };
            if !p.pod_selector.matches(pod.labels()) {
                continue;
            }
            if let Some(rule) = rules.iter().position(|r| rule_matches(r, &peer, flow)) {
                return done(
                    Verdict::Allow,
                    Basis::Admitted {
                        policy: &p.id,
                        rule,
                    },
                    passed,
                );
            }
            isolating = match isolating {
                Some((first, n)) if first.id <= p.id => Some((first, n + 1)),
                Some((_, n)) => Some((p, n + 1)),
                None => Some((p, 1)),
            };
        }
        if let Some((first, count)) = isolating {
            return done(Verdict::Deny, Basis::Isolated { first, count }, passed);
        }
        match cluster_tier(&self.baseline, direction, pod, &peer, flow) {
            TierOutcome::Decided(verdict, policy, rule) => {
                done(verdict, Basis::Cluster { policy, rule }, passed)
            }
            TierOutcome::Passed(..) | TierOutcome::NoMatch => {
                done(Verdict::Allow, Basis::NotSelected, passed)
            }
        }
    }

    /// The NetworkPolicies that may select a pod (its namespace's, filtered by the index).
    fn candidates<'s>(&'s self, pod: &'s dyn Pod) -> impl Iterator<Item = usize> + 's {
        let index = self.by_namespace.get(pod.namespace());
        let indexed = index.into_iter().flat_map(move |ix| {
            ix.by_label
                .iter()
                .filter_map(move |(k, values)| pod.labels().label(k).and_then(|v| values.get(v)))
        });
        let others = index.into_iter().flat_map(|ix| ix.others.iter());
        indexed.flatten().chain(others).copied()
    }
}

enum TierOutcome<'e> {
    Decided(Verdict, &'e ClusterNetworkPolicy, &'e ClusterRule),
    Passed(&'e ClusterNetworkPolicy, &'e ClusterRule),
    NoMatch,
}

fn cluster_tier<'e>(
    tier: &'e [ClusterNetworkPolicy],
    direction: Direction,
    pod: &dyn Pod,
    peer: &Endpoint<'_>,
    flow: &Flow<'_>,
) -> TierOutcome<'e> {
    for p in tier {
        if !pod_in(&p.subject, pod) {
            continue;
        }
        let rules = match direction {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        for r in rules {
            if r.peers.iter().any(|x| peer_matches(x, peer))
                && (r.ports.is_empty() || r.ports.iter().any(|m| port_matches(m, flow)))
            {
                return match r.action {
                    Action::Accept => TierOutcome::Decided(Verdict::Allow, p, r),
                    Action::Deny => TierOutcome::Decided(Verdict::Deny, p, r),
                    Action::Pass => TierOutcome::Passed(p, r),
                };
            }
        }
    }
    TierOutcome::NoMatch
}

fn pod_in(set: &PodSet, pod: &dyn Pod) -> bool {
    set.namespaces
        .contains(pod.namespace(), pod.namespace_labels())
        && set.pods.matches(pod.labels())
}

fn rule_matches(rule: &Rule, peer: &Endpoint<'_>, flow: &Flow<'_>) -> bool {
    (rule.peers.is_empty() || rule.peers.iter().any(|p| peer_matches(p, peer)))
        && (rule.ports.is_empty() || rule.ports.iter().any(|m| port_matches(m, flow)))
}

fn peer_matches(peer: &Peer, ep: &Endpoint<'_>) -> bool {
    match peer {
        Peer::Pods(set) => ep.pod.is_some_and(|p| pod_in(set, p)),
        Peer::Block(b) => ep.ip.is_some_and(|ip| b.contains(ip)),
        Peer::Nodes(sel) => ep.node.is_some_and(|l| sel.matches(l)),
        Peer::Any => true,
        Peer::None => false,
    }
}

fn port_matches(m: &PortMatch, flow: &Flow<'_>) -> bool {
    match m {
        PortMatch::Numbers {
            protocol,
            first,
            last,
        } => *protocol == flow.protocol && (*first..=*last).contains(&flow.port),
        PortMatch::Named { protocol, name } => {
            protocol.is_none_or(|p| p == flow.protocol)
                && flow.protocol != Protocol::Icmp
                && flow
                    .destination
                    .pod
                    .is_some_and(|d| d.has_named_port(name, flow.port, flow.protocol))
        }
    }
}
