//! Kubernetes objects for the tests, as the API serves them (JSON).

use serde_json::{Value, json};

pub const PODS: &str = "v1/pods";
pub const NAMESPACES: &str = "v1/namespaces";
pub const NODES: &str = "v1/nodes";
pub const SERVICES: &str = "v1/services";
pub const SLICES: &str = "discovery.k8s.io/v1/endpointslices";
pub const POLICIES: &str = "security.nodemesh.io/v1/authorizationpolicies";
pub const ISTIO_POLICIES: &str = "security.istio.io/v1/authorizationpolicies";
pub const ISTIO_BETA_POLICIES: &str = "security.istio.io/v1beta1/authorizationpolicies";
pub const SECRETS: &str = "v1/secrets";
pub const CONFIGMAPS: &str = "v1/configmaps";

pub fn node(name: &str, ip: &str, cidr: &str) -> Value {
    json!({"metadata": {"name": name}, "spec": {"podCIDR": cidr},
           "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}})
}

pub fn pod(ns: &str, name: &str, sa: &str, ip: &str, node: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns, "labels": labels, "uid": format!("uid-{name}")},
           "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "c"}]},
           "status": {"phase": "Running", "podIP": ip}})
}

pub fn service(ns: &str, name: &str, vip: &str, port: u16, target: u16) -> Value {
    json!({"metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}]}})
}

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

pub fn policy(ns: &str, name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns}, "spec": spec})
}
