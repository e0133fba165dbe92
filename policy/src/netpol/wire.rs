//! Wire types: Kubernetes `NetworkPolicy` (`networking.k8s.io/v1`) and network-policy-api
//! `ClusterNetworkPolicy` (`policy.networking.k8s.io/v1alpha2`) as written in YAML or served by
//! the API server. Only carry data; [`super::compile`] validates them.
//!
//! `metadata` is read leniently (the API server adds `uid`, `managedFields`, ...); every `spec`
//! type refuses unknown fields, except ClusterNetworkPolicy peers, which must fail closed on a
//! field of a newer API version instead (see [`ClusterPeer::unknown`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `apiVersion` of a NetworkPolicy.
pub const NETWORK_POLICY_API_VERSION: &str = "networking.k8s.io/v1";
/// `kind` of a NetworkPolicy.
pub const NETWORK_POLICY_KIND: &str = "NetworkPolicy";
/// `apiVersion` of a ClusterNetworkPolicy.
pub const CLUSTER_NETWORK_POLICY_API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// `kind` of a ClusterNetworkPolicy.
pub const CLUSTER_NETWORK_POLICY_KIND: &str = "ClusterNetworkPolicy";

/// The part of `metadata` a policy needs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `metadata.name`.
    #[serde(default)]
    pub name: Option<String>,
    /// `metadata.namespace` (NetworkPolicy only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A whole NetworkPolicy object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyDocument {
    /// Must be [`NETWORK_POLICY_API_VERSION`].
    pub api_version: String,
    /// Must be [`NETWORK_POLICY_KIND`].
    pub kind: String,
    /// Name and namespace.
    pub metadata: Metadata,
    /// The policy.
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

/// `spec` of a NetworkPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; `{}` selects all.
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `Ingress`, `Egress`; when absent: Ingress, plus Egress if `egress` is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,
    /// Allowed incoming traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Allowed outgoing traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

/// One `ingress[]` rule: traffic from any of `from` to any of `ports`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// Sources; absent or empty matches every source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    /// Ports; absent or empty matches every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PolicyPort>>,
}

/// One `egress[]` rule: traffic to any of `to` on any of `ports`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Destinations; absent or empty matches every destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    /// Ports; absent or empty matches every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PolicyPort>>,
}

/// A NetworkPolicy peer: pods by selectors, or an IP block.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// Pods (of the policy's namespace, or of the namespaces `namespace_selector` picks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces whose pods match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// A CIDR with exceptions (not combinable with the selectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpBlock {
    /// The block.
    pub cidr: String,
    /// Parts of the block that do not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// A port of a rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A number or a container port's name; absent matches every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// The last port of a range starting at `port` (a number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// Kubernetes' `IntOrString`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A name (or a number written as a string, which Kubernetes refuses for ports).
    String(String),
}

/// `metav1.LabelSelector`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One `matchExpressions[]` item.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// The values for `In`/`NotIn` (none for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// A whole ClusterNetworkPolicy object (cluster-scoped).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicyDocument {
    /// Must be [`CLUSTER_NETWORK_POLICY_API_VERSION`].
    pub api_version: String,
    /// Must be [`CLUSTER_NETWORK_POLICY_KIND`].
    pub kind: String,
    /// The name.
    pub metadata: Metadata,
    /// The policy.
    pub spec: ClusterNetworkPolicySpec,
}

/// `spec` of a ClusterNetworkPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[cfg_attr(feature = "crd", derive(kube::CustomResource))]
#[cfg_attr(
    feature = "crd",
    kube(
        group = "policy.networking.k8s.io",
        version = "v1alpha2",
        kind = "ClusterNetworkPolicy",
        plural = "clusternetworkpolicies",
        shortname = "cnp",
        doc = "A cluster-wide network policy (network-policy-api v1alpha2): tiers Admin and Baseline around NetworkPolicies."
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    pub tier: String,
    /// 0..=1000, lower first.
    pub priority: i64,
    /// The pods it applies to.
    pub subject: ClusterSubject,
    /// Rules for traffic to the subject, first match wins (at most 25).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<ClusterRule>,
    /// Rules for traffic from the subject, first match wins (at most 25).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<ClusterRule>,
}

/// `subject`: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSubject {
    /// Every pod of the namespaces selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace and pod selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// `pods`: namespace AND pod selector.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedPod {
    /// The namespaces.
    pub namespace_selector: LabelSelector,
    /// The pods in them.
    pub pod_selector: LabelSelector,
}

/// One ingress or egress rule of a ClusterNetworkPolicy (`from` for ingress, `to` for egress).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterRule {
    /// A name for humans (at most 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    pub action: String,
    /// Sources of an ingress rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<ClusterPeer>>,
    /// Destinations of an egress rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<ClusterPeer>>,
    /// Protocols and ports; absent matches all traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ClusterProtocol>>,
}

/// A ClusterNetworkPolicy peer: exactly one field. Fields this version does not know are kept
/// in `unknown`, so that the rule fails closed rather than the whole policy being dropped.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPeer {
    /// Every pod of the namespaces selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// Pods by namespace and pod selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Nodes by label (egress, experimental).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// CIDRs (egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Domain names (egress, experimental): not supported, fails closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
    /// Fields of a newer API version (not in the schema: an API server with this CRD prunes
    /// them; one with a newer CRD keeps them, and the rule fails closed).
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// One `protocols[]` item: exactly one field.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterProtocol {
    /// TCP to a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ClusterPortMatch>,
    /// UDP to a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ClusterPortMatch>,
    /// SCTP to a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ClusterPortMatch>,
    /// A container port by name (any protocol it is declared with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// `tcp` / `udp` / `sctp`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterPortMatch {
    /// The destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<ClusterPort>,
}

/// `destinationPort`: exactly one of a number and a range.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterPort {
    /// One port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    /// A range of ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<ClusterPortRange>,
}

/// `range`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterPortRange {
    /// First port.
    pub start: i64,
    /// Last port.
    pub end: i64,
}
