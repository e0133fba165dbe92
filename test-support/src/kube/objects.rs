//! Kubernetes objects as the API serves them (JSON), and the collections [`super::FakeApi`]
//! keeps them in (`v1/pods`, `<group>/<version>/<resource>`).

use serde_json::{Value, json};

/// Pods (core v1).
pub const PODS: &str = "v1/pods";
/// Namespaces (core v1, cluster-scoped).
pub const NAMESPACES: &str = "v1/namespaces";
/// Nodes (core v1, cluster-scoped).
pub const NODES: &str = "v1/nodes";
/// Services (core v1).
pub const SERVICES: &str = "v1/services";
/// EndpointSlices (discovery.k8s.io/v1).
pub const SLICES: &str = "discovery.k8s.io/v1/endpointslices";
/// nodemesh's AuthorizationPolicies (security.nodemesh.io/v1).
pub const POLICIES: &str = "security.nodemesh.io/v1/authorizationpolicies";
/// Istio's AuthorizationPolicies (security.istio.io/v1).
pub const ISTIO_POLICIES: &str = "security.istio.io/v1/authorizationpolicies";
/// Istio's AuthorizationPolicies (security.istio.io/v1beta1).
pub const ISTIO_BETA_POLICIES: &str = "security.istio.io/v1beta1/authorizationpolicies";
/// Kubernetes NetworkPolicies (networking.k8s.io/v1).
pub const NETWORK_POLICIES: &str = "networking.k8s.io/v1/networkpolicies";
/// network-policy-api ClusterNetworkPolicies (policy.networking.k8s.io/v1alpha2,
/// cluster-scoped).
pub const CLUSTER_NETWORK_POLICIES: &str =
    "policy.networking.k8s.io/v1alpha2/clusternetworkpolicies";
/// Secrets (core v1).
pub const SECRETS: &str = "v1/secrets";
/// ConfigMaps (core v1).
pub const CONFIGMAPS: &str = "v1/configmaps";

/// A Node with its InternalIP and pod CIDR.
pub fn node(name: &str, ip: &str, cidr: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

/// A Namespace with `labels` (a JSON object).
pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}})
}

/// A running Pod on `node` with service account `sa`, IP `ip`, `labels` and uid `uid-NAME`.
pub fn pod(ns: &str, name: &str, sa: &str, ip: &str, node: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns, "labels": labels, "uid": format!("uid-{name}")},
           "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c"}]},
           "status": {"phase": "Running", "podIP": ip}})
}

/// The pod of node `node`'s proxy: service account `nodemesh-system/nodemesh-proxy`, on the
/// host network (as the chart's DaemonSet), IP `ip` (the node's).
pub fn proxy_pod(name: &str, ip: &str, node: &str) -> Value {
    let mut p = pod(
        "nodemesh-system",
        name,
        "nodemesh-proxy",
        ip,
        node,
        json!({}),
    );
    p["spec"]["hostNetwork"] = json!(true);
    p
}

/// The mirror pod the kubelet of `node` makes for a static pod: annotated
/// `kubernetes.io/config.mirror`, no service account, IP `ip`.
pub fn mirror_pod(ns: &str, name: &str, ip: &str, node: &str) -> Value {
    let mut p = pod(ns, name, "", ip, node, json!({}));
    p["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": format!("hash-{name}")});
    if let Some(spec) = p["spec"].as_object_mut() {
        spec.remove("serviceAccountName");
    }
    p
}

/// A Service with ClusterIP `vip` and one TCP port `http` (`port` -> `target`).
pub fn service(ns: &str, name: &str, vip: &str, port: u16, target: u16) -> Value {
    json!({"metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}]}})
}

/// The EndpointSlice of `service` with `ready` and `not_ready` endpoint IPs on `port`.
pub fn slice(ns: &str, service: &str, ready: &[&str], not_ready: &[&str], port: u16) -> Value {
    let mut endpoints: Vec<Value> = ready
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    endpoints.extend(
        not_ready
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": false}})),
    );
    json!({"metadata": {"name": format!("{service}-abc"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "endpoints": endpoints,
           "ports": [{"name": "http", "port": port, "protocol": "TCP"}]})
}

/// An AuthorizationPolicy (any group: the collection decides) with `spec`.
pub fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A NetworkPolicy (networking.k8s.io/v1) with `spec`.
pub fn network_policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2, cluster-scoped) with `spec`.
pub fn cluster_network_policy(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": spec})
}
