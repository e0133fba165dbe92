//! Kubernetes `NetworkPolicy` and network-policy-api `ClusterNetworkPolicy`: wire types,
//! compilation (fail closed) and a pure decision per flow.
//!
//! ```text
//! documents --(compile_*_fail_closed)--> NetworkPolicy / ClusterNetworkPolicy
//!     --> NetworkPolicySet::new --> decide(Flow) --> NetDecision (egress, ingress)
//! ```
//!
//! Order of evaluation per direction: Admin tier (by priority, first matching rule: Accept and
//! Deny decide, Pass skips to NetworkPolicies), NetworkPolicies (a pod selected for a direction
//! is isolated: only what a rule admits passes; policies add up), Baseline tier (only for pods
//! no NetworkPolicy isolates), then allow. Replies of an allowed flow are not decided again: the
//! callers (proxy, node firewall) let them pass.

pub mod compile;
pub mod engine;
pub mod lint;
pub mod model;
pub mod wire;

pub use compile::{
    NetpolError, cluster_network_policy_fail_closed, compile_cluster_network_policy,
    compile_network_policy, network_policy_fail_closed,
};
pub use engine::{
    Basis, Direction, DirectionDecision, Endpoint, Flow, NetDecision, NetworkPolicySet, Pod,
};
pub use model::{
    Action, Block, ClusterNetworkPolicy, ClusterRule, LabelSelector, Namespaces, NetworkPolicy,
    Peer, PodSet, PortMatch, Protocol, Requirement, Rule, Tier,
};

#[cfg(test)]
mod tests;
