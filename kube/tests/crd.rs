//! The chart's copy of the AuthorizationPolicy CRD is exactly what the Rust type generates.
//! Regenerate it with `cargo run -q -- crd > charts/nodemesh/crds/authorizationpolicies.security.nodemesh.io.yaml`.
#![allow(clippy::unwrap_used)]

use nodemesh_kube::crd::{CHART_CRD_PATH, crd_yaml};

#[test]
fn chart_crd_matches_the_rust_type() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(CHART_CRD_PATH);
    let generated = crd_yaml().unwrap();
    let shipped =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        shipped == generated,
        "{} differs from the generated CRD; regenerate it with `cargo run -q -- crd > {CHART_CRD_PATH}`",
        path.display()
    );
}

#[test]
fn crd_has_the_status_subresource() {
    let yaml = crd_yaml().unwrap();
    assert!(yaml.contains("subresources:"), "{yaml}");
    assert!(yaml.contains("status: {}"), "{yaml}");
    assert!(yaml.contains("conditions"), "{yaml}");
}

/// The chart's ClusterNetworkPolicy CRD (installed on request) is what the Rust type
/// generates. Regenerate it with
/// `cargo run -q -- crd --kind cluster-network-policy > charts/nodemesh/files/clusternetworkpolicies.yaml`.
#[test]
fn chart_cluster_network_policy_crd_matches_the_rust_type() {
    use nodemesh_kube::crd::{
        CHART_CLUSTER_NETWORK_POLICY_CRD_PATH, cluster_network_policy_crd_yaml,
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(CHART_CLUSTER_NETWORK_POLICY_CRD_PATH);
    let generated = cluster_network_policy_crd_yaml().unwrap();
    assert!(generated.contains("name: clusternetworkpolicies.policy.networking.k8s.io"));
    assert!(generated.contains("scope: Cluster"), "{generated}");
    let shipped =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        shipped == generated,
        "{} differs from the generated CRD; regenerate it with `cargo run -q -- crd --kind cluster-network-policy > {CHART_CLUSTER_NETWORK_POLICY_CRD_PATH}`",
        path.display()
    );
}
