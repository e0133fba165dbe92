//! Kubernetes `NetworkPolicy` (`networking.k8s.io/v1`) and network-policy-api
//! `ClusterNetworkPolicy` (`policy.networking.k8s.io/v1alpha2`) objects to the raw documents
//! the config carries (`Parts::network_policies`, `Parts::cluster_network_policies`); the policy
//! crate compiles them.
//!
//! Both are watched untyped ([`DynamicObject`]), NetworkPolicy too: a typed k8s-openapi object
//! would silently drop `spec` fields newer than the pinned API version (a narrowing field of a
//! peer dropped widens what the peer admits), and one object that does not deserialize would
//! fail the whole list. Untyped, every field the API server stored reaches the compiler, which
//! refuses unknown fields and fails that one policy closed.
//!
//! ClusterNetworkPolicy is a CRD that may not be installed: its watcher treats a 404 as "none"
//! ([`crate::watch::Absent::Empty`]) with [`CRD_ABSENT_WARNING`], and keeps re-checking.

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use nodemesh_config::RawPolicy;
use serde_json::{Map, Value};

/// `apiVersion` of NetworkPolicy documents.
pub const NETWORK_POLICY_API_VERSION: &str = "networking.k8s.io/v1";
/// `kind` of NetworkPolicy documents.
pub const NETWORK_POLICY_KIND: &str = "NetworkPolicy";
/// The API group of ClusterNetworkPolicy.
pub const CLUSTER_NETWORK_POLICY_GROUP: &str = "policy.networking.k8s.io";
/// The version of ClusterNetworkPolicy followed.
pub const CLUSTER_NETWORK_POLICY_VERSION: &str = "v1alpha2";
/// `kind` of ClusterNetworkPolicy documents.
pub const CLUSTER_NETWORK_POLICY_KIND: &str = "ClusterNetworkPolicy";
/// The resource (plural) of ClusterNetworkPolicy.
pub const CLUSTER_NETWORK_POLICY_PLURAL: &str = "clusternetworkpolicies";

/// Logged once each time the API stops (or starts without) serving ClusterNetworkPolicies.
pub const CRD_ABSENT_WARNING: &str = "ClusterNetworkPolicy is not enforced: the API does not serve \
     policy.networking.k8s.io/v1alpha2 clusternetworkpolicies (the CRD is absent). Install it \
     with the chart (networkPolicy.installClusterNetworkPolicyCRD=true) or from \
     kubernetes-sigs/network-policy-api v0.2.0; nodemesh re-checks and starts enforcing it \
     without a restart";

/// The NetworkPolicy resource (namespaced), to watch untyped.
pub fn network_policy_resource() -> ApiResource {
    ApiResource::erase::<NetworkPolicy>(&())
}

/// The ClusterNetworkPolicy resource (cluster-scoped).
pub fn cluster_network_policy_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk(
        CLUSTER_NETWORK_POLICY_GROUP,
        CLUSTER_NETWORK_POLICY_VERSION,
        CLUSTER_NETWORK_POLICY_KIND,
    );
    ApiResource::from_gvk_with_plural(&gvk, CLUSTER_NETWORK_POLICY_PLURAL)
}

/// The document of a NetworkPolicy object; `None` without a name or namespace.
pub fn network_policy(obj: &DynamicObject) -> Option<RawPolicy> {
    obj.metadata.namespace.as_ref()?;
    document(obj, NETWORK_POLICY_API_VERSION, NETWORK_POLICY_KIND)
}

/// The document of a ClusterNetworkPolicy object; `None` without a name.
pub fn cluster_network_policy(obj: &DynamicObject) -> Option<RawPolicy> {
    let api_version = format!("{CLUSTER_NETWORK_POLICY_GROUP}/{CLUSTER_NETWORK_POLICY_VERSION}");
    document(obj, &api_version, CLUSTER_NETWORK_POLICY_KIND)
}

/// `{apiVersion, kind, metadata, spec}`: `apiVersion` and `kind` set here (the items of a list
/// of built-in objects carry neither), `metadata` without server bookkeeping such as
/// `managedFields`, `spec` exactly as stored, `status` left out.
fn document(obj: &DynamicObject, api_version: &str, kind: &str) -> Option<RawPolicy> {
    obj.metadata.name.as_ref()?;
    let mut doc = Map::new();
    doc.insert("apiVersion".into(), api_version.into());
    doc.insert("kind".into(), kind.into());
    let mut metadata = serde_json::to_value(&obj.metadata).ok()?;
    if let Some(meta) = metadata.as_object_mut() {
        crate::policy::retain_document_metadata(meta);
    }
    doc.insert("metadata".into(), metadata);
    if let Some(spec) = obj.data.get("spec") {
        doc.insert("spec".into(), spec.clone());
    }
    Some(RawPolicy::new(Value::Object(doc)))
}

/// The `(namespace, name)` a document is ordered by (namespace empty when cluster-scoped).
pub fn order_key(doc: &RawPolicy) -> (&str, &str) {
    let at = |p: &str| {
        doc.document()
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    (at("/metadata/namespace"), at("/metadata/name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn network_policy_documents_keep_spec_and_drop_bookkeeping() {
        // As a list item of the real API: no apiVersion/kind, managedFields and status present.
        let obj = object(json!({
            "metadata": {"name": "deny-all", "namespace": "shop", "uid": "u1",
                         "resourceVersion": "7", "generation": 2, "labels": {"team": "a"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "futureField": true},
            "status": {"conditions": []},
        }));
        let doc = network_policy(&obj).unwrap();
        assert_eq!(
            doc.document(),
            &json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "deny-all", "namespace": "shop", "uid": "u1",
                             "resourceVersion": "7", "generation": 2, "labels": {"team": "a"}},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "futureField": true},
            }),
            "an unknown spec field survives, for the compiler to refuse"
        );
        assert_eq!(order_key(&doc), ("shop", "deny-all"));
        let no_ns = object(json!({"metadata": {"name": "x"}, "spec": {}}));
        assert!(network_policy(&no_ns).is_none());
    }

    #[test]
    fn cluster_network_policy_documents_are_cluster_scoped() {
        let obj = object(json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "admin-deny"},
            "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}},
        }));
        let doc = cluster_network_policy(&obj).unwrap();
        assert_eq!(
            doc.document(),
            &json!({
                "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                "metadata": {"name": "admin-deny"},
                "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}},
            })
        );
        assert_eq!(order_key(&doc), ("", "admin-deny"));
        let r = cluster_network_policy_resource();
        assert_eq!(
            (r.api_version.as_str(), r.plural.as_str()),
            (
                "policy.networking.k8s.io/v1alpha2",
                "clusternetworkpolicies"
            )
        );
        let r = network_policy_resource();
        assert_eq!(
            (r.api_version.as_str(), r.plural.as_str()),
            ("networking.k8s.io/v1", "networkpolicies")
        );
    }
}
