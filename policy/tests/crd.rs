//! The Kubernetes CustomResourceDefinition (feature `crd`).

#![cfg(feature = "crd")]

use kube::CustomResourceExt;
use kube::core::Resource;
use nodemesh_policy::AuthorizationPolicy;

#[test]
fn crd_identity() {
    let crd = AuthorizationPolicy::crd();
    assert_eq!(crd.spec.group, "security.nodemesh.io");
    assert_eq!(crd.spec.names.kind, "AuthorizationPolicy");
    assert_eq!(crd.spec.names.plural, "authorizationpolicies");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.versions.len(), 1);
    assert_eq!(crd.spec.versions[0].name, "v1");
    assert_eq!(
        AuthorizationPolicy::api_version(&()),
        "security.nodemesh.io/v1"
    );
    let schema = serde_json::to_string(&crd.spec.versions[0].schema).expect("json");
    for field in [
        "notPrincipals",
        "remoteIpBlocks",
        "serviceAccounts",
        "notValues",
        "matchLabels",
    ] {
        assert!(schema.contains(field), "schema lacks {field}");
    }
    // Kubernetes structural schemas refuse `additionalProperties: false` next to `properties`.
    assert!(
        !schema.contains("\"additionalProperties\":false"),
        "{schema}"
    );
}

#[test]
fn kubernetes_object_compiles_fail_closed() {
    let obj: AuthorizationPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "d", "namespace": "shop", "annotations": {"istio.io/dry-run": "true"}},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["99999"]}}]}]},
    }))
    .expect("object");
    let (policy, errors) = obj.compile_fail_closed();
    assert_eq!(policy.id().to_string(), "shop/d");
    assert!(policy.dry_run());
    assert!(!policy.is_valid());
    let errors = errors.expect("errors");
    assert_eq!(errors.0[0].field, "spec.rules[0].to[0].operation.ports[0]");
}
