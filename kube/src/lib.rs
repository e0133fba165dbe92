//! nodemesh on Kubernetes: the one crate that depends on kube-rs and k8s-openapi, so the rest of
//! the workspace builds without them.
//!
//! - [`source`]: watchers for Pods, Namespaces, Nodes, Services, EndpointSlices,
//!   AuthorizationPolicies, NetworkPolicies and ClusterNetworkPolicies feeding the proxy's
//!   `MeshStore` ([`convert`], [`pod`], [`policy`] and [`netpol`] turn objects into domain
//!   types once per event,
//!   [`claims`] decides which pods' IPs are believed, [`mesh`] keeps
//!   them per kind and assembles snapshots, [`watch`] runs one list/watch loop per kind,
//!   [`status`] writes policy conditions).
//! - [`node`]: publishes this node's WireGuard public key as a Node annotation.
//! - [`ca`]: TokenReview authentication, the pod placement index and the root Secret for
//!   `nodemesh ca serve --source kubernetes`.
//! - [`crd`]: the AuthorizationPolicy CRD as the chart ships it.

pub mod ca;
pub mod claims;
pub mod convert;
pub mod crd;
pub mod mesh;
pub mod netpol;
pub mod node;
pub mod pod;
pub mod policy;
pub mod source;
pub mod status;
pub mod watch;

pub use source::{KubeSource, SourceError, SourceOptions};
