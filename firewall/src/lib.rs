//! The node firewall: NetworkPolicies and ClusterNetworkPolicies for the traffic the proxy does
//! not see (non-mesh pods, UDP, ICMP, SCTP), as nftables rules rendered from the same compiled
//! model the proxy decides with ([`nodemesh_policy::netpol::NetworkPolicySet`]).
//!
//! ```text
//! Config + NetworkPolicySet --Ruleset::render(node)--> Ruleset (sets, chains; no I/O)
//!     --transaction(old, new)--> one `nft -f` script (the delta, atomic) --Firewall::sync--> nft
//! ```
//!
//! # Who owns what (the one place this is written down)
//!
//! - This crate owns the nftables table **`inet nodemesh-netpol`** and everything in it, and
//!   nothing else: it never touches another table. [`Firewall::remove`] deletes it whole.
//! - The capture rules (TPROXY of mesh pods' TCP, the drop of uncaptured pod TCP) are
//!   `nodemesh-redirect`'s: table `ip nodemesh` (nftables backend) or its iptables chains. Mesh
//!   pods' TCP is diverted there in the prerouting hook, so it never reaches this table's forward
//!   hook; the proxy decides it with the same engine.
//! - The forward hook only: traffic between pods, or between a pod and anything outside the node,
//!   routed through it. Traffic from or to the node itself (kubelet probes, hostNetwork pods, the
//!   proxy's own connections) uses the input/output hooks and is not filtered here.
//! - IPv4 only, as the mesh is; pods' IPv6 is dropped by another part.
//!
//! # Evaluation, per new flow (replies and related ICMP always pass)
//!
//! `forward` sends flows from a local pod to `egress`, flows to a local pod to `ingress`. Each
//! direction runs the Admin tier (one chain per ClusterNetworkPolicy, by priority; first matching
//! rule: Accept allows, Deny rejects, Pass goes to the NetworkPolicy tier), then, for pods some
//! NetworkPolicy isolates, the NetworkPolicies' rules (one chain per policy; any admits, none:
//! reject), else the Baseline tier, else allow. Egress allowed goes on to ingress when the
//! destination is local too. Denied flows are rejected (TCP reset, ICMP admin-prohibited), counted
//! by the named counters `denied-ingress` / `denied-egress`.

mod apply;
mod names;
mod render;
mod transaction;

pub use apply::{Firewall, FirewallError, Outcome};
pub use render::{Chain, Ruleset, Set, SetKind, TABLE};
pub use transaction::{Delta, transaction};
