//! The standalone YAML of a testbed: what the CA and every proxy read. Written as JSON (a
//! subset of YAML) and checked by the real config parser before anyone uses it.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::cluster::Testbed;
use crate::error::TestbedError;
use crate::plan::{ClusterSpec, Plan};

/// The node that runs the CA (the first).
pub(crate) fn ca_node(plan: &Plan) -> &crate::plan::NodePlan {
    &plan.nodes[0]
}

/// The CA's gRPC port.
pub const CA_GRPC_PORT: u16 = 15012;

/// The CA's address as the config names it.
pub fn ca_address(plan: &Plan) -> (Ipv4Addr, u16) {
    (ca_node(plan).address, CA_GRPC_PORT)
}

/// The standalone config of `spec` placed by `plan`, with the CA on the first node and its
/// trust bundle at `ca/trust-bundle.pem` (relative to the file), and each node's WireGuard public
/// key when `wireguard_keys` has one.
pub fn render(
    spec: &ClusterSpec,
    plan: &Plan,
    wireguard_keys: &std::collections::BTreeMap<String, String>,
) -> Value {
    let (ca_ip, ca_port) = ca_address(plan);
    let nodes: Vec<Value> = plan
        .nodes
        .iter()
        .map(|n| {
            let mut node = json!({
                "name": n.name,
                "address": n.address.to_string(),
                "podCIDR": format!("{}/24", n.pod_cidr),
            });
            if let Some(key) = wireguard_keys.get(&n.name) {
                node["wireguardPublicKey"] = json!(key);
            }
            node
        })
        .collect();
    let namespaces: Vec<Value> = spec
        .namespaces
        .iter()
        .map(|ns| json!({"name": ns.name, "labels": ns.labels}))
        .collect();
    let workloads: Vec<Value> = plan
        .nodes
        .iter()
        .flat_map(|n| {
            n.pods.iter().map(move |p| {
                let mut workload = json!({
                    "name": p.name,
                    "namespace": p.namespace,
                    "serviceAccount": p.service_account,
                    "ip": p.ip.to_string(),
                    "node": n.name,
                    "labels": p.labels,
                });
                if let Some(ip6) = p.ip6 {
                    workload["ipv6"] = json!(ip6.to_string());
                }
                if !p.ports.is_empty() {
                    let ports: Vec<Value> = p
                        .ports
                        .iter()
                        .map(|c| json!({"name": c.name, "port": c.port, "protocol": c.protocol}))
                        .collect();
                    workload["ports"] = json!(ports);
                }
                workload
            })
        })
        .collect();
    let services: Vec<Value> = plan
        .services
        .iter()
        .map(|s| {
            let mut port = json!({"port": s.port, "targetPort": s.target_port});
            if let Some(node_port) = s.node_port {
                port["nodePort"] = json!(node_port);
            }
            let mut service = json!({
                "name": s.name,
                "namespace": s.namespace,
                "vip": s.vip.to_string(),
                "ports": [port],
            });
            if s.endpoints.is_empty() {
                service["selector"] = json!(s.selector);
            } else {
                let ips: Vec<String> = s.endpoints.iter().map(ToString::to_string).collect();
                service["endpoints"] = json!(ips);
            }
            service
        })
        .collect();
    let mut config = json!({
        "trustDomain": "cluster.local",
        "ca": {"address": format!("https://{ca_ip}:{ca_port}"), "rootCert": "ca/trust-bundle.pem"},
        "nodes": nodes,
        "namespaces": namespaces,
        "workloads": workloads,
        "services": services,
        "policies": spec.policies,
    });
    if !spec.network_policies.is_empty() {
        config["networkPolicies"] = json!(spec.network_policies);
    }
    if !spec.cluster_network_policies.is_empty() {
        config["clusterNetworkPolicies"] = json!(spec.cluster_network_policies);
    }
    config
}

/// Writes the testbed's config file and checks it with the real parser.
pub(crate) fn write(bed: &Testbed) -> Result<(), TestbedError> {
    write_value(bed, &render(&bed.spec, &bed.plan, &bed.wireguard_keys))
}

/// Replaces the testbed's config file (the proxies reload it) after checking it.
pub(crate) fn write_value(bed: &Testbed, value: &Value) -> Result<(), TestbedError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TestbedError::Spec(format!("config: {e}")))?;
    nodemesh_config::Config::from_yaml_str(&text, bed.dir())
        .map_err(|e| TestbedError::Spec(format!("the generated config is invalid: {e}")))?;
    let path = bed.config_file();
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| TestbedError::File { path, source })
}

impl Testbed {
    /// Replaces the policies in the config file; running proxies pick the change up.
    pub fn set_policies(&mut self, policies: Vec<Value>) -> Result<(), TestbedError> {
        self.spec.policies = policies;
        write(self)
    }

    /// Replaces all three kinds of policy in the config file at once (AuthorizationPolicy,
    /// NetworkPolicy, ClusterNetworkPolicy); running proxies pick the change up.
    pub fn set_all_policies(
        &mut self,
        policies: Vec<Value>,
        network_policies: Vec<Value>,
        cluster_network_policies: Vec<Value>,
    ) -> Result<(), TestbedError> {
        self.spec.policies = policies;
        self.spec.network_policies = network_policies;
        self.spec.cluster_network_policies = cluster_network_policies;
        write(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{NamespaceSpec, NodeSpec, PodSpec};

    #[test]
    fn renders_a_config_the_parser_accepts() {
        let spec = ClusterSpec {
            nodes: vec![
                NodeSpec {
                    name: "node-a".into(),
                    pods: vec![PodSpec::new("a1", "shop", "web").label("app", "web")],
                },
                NodeSpec {
                    name: "node-b".into(),
                    pods: vec![PodSpec::new("b1", "legacy", "default")],
                },
            ],
            namespaces: vec![NamespaceSpec {
                name: "shop".into(),
                labels: [("nodemesh.io/mesh".to_owned(), "enabled".to_owned())].into(),
            }],
            ..ClusterSpec::default()
        };
        let plan = Plan::new(&spec).unwrap();
        let keys = [(
            "node-a".to_owned(),
            "NnLgH3tQ+w6qKh93FGRMiHrpZzPdp5OuqCItQjv/ygg=".to_owned(),
        )];
        let text = serde_json::to_string_pretty(&render(&spec, &plan, &keys.into())).unwrap();
        let config = nodemesh_config::Config::from_yaml_str(&text, "/tmp").unwrap();
        let a1 = config
            .workload_by_ip(Ipv4Addr::new(10, 200, 1, 11))
            .unwrap();
        assert!(config.in_mesh(a1));
        assert_eq!(
            a1.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        let b1 = config
            .workload_by_ip(Ipv4Addr::new(10, 200, 2, 11))
            .unwrap();
        assert!(!config.in_mesh(b1));
        assert!(
            config
                .node("node-a")
                .unwrap()
                .wireguard_public_key
                .is_some()
        );
        assert!(
            config
                .node("node-b")
                .unwrap()
                .wireguard_public_key
                .is_none()
        );
    }
}
