//! The compiled form of NetworkPolicies and ClusterNetworkPolicies: selectors, peers and ports
//! validated once, shared by the proxy's per-connection decision ([`super::NetworkPolicySet`]) and
//! the node firewall's rendering, so both enforce the same thing.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::policy::PolicyRef;
use crate::request::Labels;

/// A transport protocol, as network policies name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP (never named by a port rule; matched only by rules without ports).
    Icmp,
}

impl Protocol {
    /// `TCP`, `UDP`, `SCTP`, `ICMP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// The label has one of the values (`matchLabels` is `In` with one value).
    In(String, Vec<String>),
    /// The label is absent or has none of the values.
    NotIn(String, Vec<String>),
    /// The label is present.
    Exists(String),
    /// The label is absent.
    DoesNotExist(String),
}

impl Requirement {
    fn holds(&self, labels: &dyn Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.label(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => labels.label(k).is_none_or(|v| vs.iter().all(|x| x != v)),
            Requirement::Exists(k) => labels.label(k).is_some(),
            Requirement::DoesNotExist(k) => labels.label(k).is_none(),
        }
    }
}

/// A compiled `metav1.LabelSelector`: every requirement must hold; none selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements, `matchLabels` first.
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &dyn Labels) -> bool {
        self.requirements.iter().all(|r| r.holds(labels))
    }

    /// Whether it selects everything (`{}`).
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The first `key=value` it requires, if any: what the index files it under.
    pub fn first_equality(&self) -> Option<(&str, &str)> {
        self.requirements.iter().find_map(|r| match r {
            Requirement::In(k, vs) if vs.len() == 1 => Some((k.as_str(), vs[0].as_str())),
            _ => None,
        })
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::In(k, vs) if vs.len() == 1 => write!(f, "{k}={}", vs[0])?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

/// Which namespaces a pod peer or subject is looked for in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// One namespace by name (a NetworkPolicy's own).
    Named(String),
    /// The namespaces whose labels match.
    Selected(LabelSelector),
}

impl Namespaces {
    /// Whether a pod of namespace `name` with namespace labels `labels` is in scope.
    pub fn contains(&self, name: &str, labels: &dyn Labels) -> bool {
        match self {
            Namespaces::Named(n) => n == name,
            Namespaces::Selected(s) => s.matches(labels),
        }
    }
}

/// Pods: the namespaces they are in, and a selector on their own labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSet {
    /// The namespaces.
    pub namespaces: Namespaces,
    /// The pods' labels.
    pub pods: LabelSelector,
}

/// An IP network minus exceptions (`ipBlock`, or one CNP `networks` CIDR with none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The network.
    pub net: IpNet,
    /// Parts of it that do not match.
    pub except: Vec<IpNet>,
}

impl Block {
    /// Whether `ip` is in the block and in none of its exceptions.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// The other side of a rule (the source of an ingress rule, the destination of an egress rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods.
    Pods(PodSet),
    /// Addresses.
    Block(Block),
    /// Nodes by their labels (their addresses).
    Nodes(LabelSelector),
    /// Every peer: a fail-closed Deny or Pass rule with a peer this version cannot read.
    Any,
    /// No peer: a fail-closed Accept rule with a peer this version cannot read.
    None,
}

/// Which ports of which protocol a rule covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    /// Every port of `protocol`, or a range (`first..=last`).
    Numbers {
        /// The protocol.
        protocol: Protocol,
        /// First port.
        first: u16,
        /// Last port.
        last: u16,
    },
    /// A container port by name on the destination pod; `protocol` `None` for CNP's
    /// `destinationNamedPort` (the protocol it is declared with).
    Named {
        /// The protocol it must be declared with, if any.
        protocol: Option<Protocol>,
        /// The name.
        name: String,
    },
}

/// A NetworkPolicy rule: any of `peers` (empty: everyone) on any of `ports` (empty: all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// The peers.
    pub peers: Vec<Peer>,
    /// The ports.
    pub ports: Vec<PortMatch>,
}

/// A compiled NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// `namespace/name`.
    pub id: PolicyRef,
    /// The pods of its namespace it selects.
    pub pod_selector: LabelSelector,
    /// Its ingress rules, when it isolates ingress (`policyTypes` has Ingress).
    pub ingress: Option<Vec<Rule>>,
    /// Its egress rules, when it isolates egress.
    pub egress: Option<Vec<Rule>>,
    /// It did not compile: it isolates its pods in both directions and admits nothing.
    pub failed: bool,
}

/// A ClusterNetworkPolicy tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tier {
    /// Before NetworkPolicies.
    Admin,
    /// After NetworkPolicies, for pods they do not select.
    Baseline,
}

impl Tier {
    /// `Admin`, `Baseline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

/// What a ClusterNetworkPolicy rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allow; no further tier decides.
    Accept,
    /// Deny; no further tier decides.
    Deny,
    /// Skip the rest of this tier; the next tier decides.
    Pass,
}

impl Action {
    /// `Accept`, `Deny`, `Pass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// A ClusterNetworkPolicy rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRule {
    /// Its name, or `ingress[i]` / `egress[i]`.
    pub name: String,
    /// Its action.
    pub action: Action,
    /// Its peers (at least one).
    pub peers: Vec<Peer>,
    /// Its ports (empty: all traffic).
    pub ports: Vec<PortMatch>,
}

/// A compiled ClusterNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNetworkPolicy {
    /// Its name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// Its priority in the tier (lower first).
    pub priority: u16,
    /// The pods it applies to.
    pub subject: PodSet,
    /// Rules on traffic to the subject, in order.
    pub ingress: Vec<ClusterRule>,
    /// Rules on traffic from the subject, in order.
    pub egress: Vec<ClusterRule>,
}
