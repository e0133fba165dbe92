//! The tests' and bench's fixture: a config (namespaces x and y, pods on nodes a and b) and its
//! compiled network policies.
#![allow(dead_code, clippy::unwrap_used)] // Not every user uses every helper; a panic fails a test.

use nodemesh_config::Config;
use nodemesh_policy::netpol::{
    NetworkPolicySet, cluster_network_policy_fail_closed, network_policy_fail_closed,
};

/// The fixture's node and namespaces, pods and policies, in the standalone YAML.
pub const CONFIG: &str = r#"
trustDomain: example.org
nodes:
  - {name: node-a, address: 192.168.50.1, labels: {role: worker}}
  - {name: node-b, address: 192.168.50.2, labels: {role: control}}
namespaces:
  - {name: x, labels: {ns: x}}
  - {name: y, labels: {ns: y}}
workloads:
  - {name: xa, namespace: x, ip: 10.1.0.11, node: node-a, labels: {pod: a}, ports: [{name: serve-80-tcp, port: 80}, {name: serve-81-udp, port: 81, protocol: UDP}]}
  - {name: xb, namespace: x, ip: 10.1.0.12, node: node-a, labels: {pod: b}, ports: [{name: serve-80-tcp, port: 80}]}
  - {name: ya, namespace: y, ip: 10.1.1.11, node: node-b, labels: {pod: a}, ports: [{name: serve-80-tcp, port: 8080}]}
  - {name: yb, namespace: y, ip: 10.1.1.12, node: node-a, labels: {pod: b}}
networkPolicies:
  - {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny-all, namespace: y}, spec: {podSelector: {}, policyTypes: [Ingress]}}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: web, namespace: x}
    spec:
      podSelector: {matchLabels: {pod: a}}
      policyTypes: [Ingress, Egress]
      ingress:
        - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}, {podSelector: {matchLabels: {pod: b}}}]
          ports: [{port: 80}, {port: serve-81-udp, protocol: UDP}]
        - from: [{ipBlock: {cidr: 172.16.0.0/16, except: [172.16.1.0/24]}}]
          ports: [{port: 9000, endPort: 9010, protocol: UDP}]
      egress:
        - to: [{namespaceSelector: {}}]
          ports: [{port: serve-80-tcp}]
        - ports: [{port: 53, protocol: UDP}]
clusterNetworkPolicies:
  - {apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: deny-from-y}, spec: {tier: Admin, priority: 10, subject: {namespaces: {matchLabels: {ns: x}}}, ingress: [{name: no-y, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}], protocols: [{udp: {destinationPort: {number: 81}}}]}, {name: nodes, action: Accept, from: [{namespaces: {}}]}]}}
  - {apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: pass-b}, spec: {tier: Admin, priority: 5, subject: {namespaces: {}}, egress: [{name: to-b, action: Pass, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}}]}]}}
  - {apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: baseline}, spec: {tier: Baseline, priority: 0, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}}
"#;

/// The fixture's config.
pub fn config() -> Config {
    config_from(CONFIG)
}

/// A config from YAML.
pub fn config_from(yaml: &str) -> Config {
    Config::from_yaml_str(yaml, "/").unwrap_or_else(|e| panic!("{e}"))
}

/// The config's policies, compiled; a policy that does not compile fails the test.
pub fn policies(config: &Config) -> NetworkPolicySet {
    let nps = config.network_policies().iter().map(|d| {
        let (p, errors) = network_policy_fail_closed(d.document());
        assert!(errors.is_none(), "{errors:?}");
        p.unwrap()
    });
    let cnps = config.cluster_network_policies().iter().map(|d| {
        let (p, errors) = cluster_network_policy_fail_closed(d.document());
        assert!(errors.is_none(), "{errors:?}");
        p.unwrap()
    });
    NetworkPolicySet::new(nps.collect(), cnps.collect::<Vec<_>>())
}

/// `pods` pods over `namespaces` namespaces on nodes node-a/node-b, and `policies`
/// NetworkPolicies (each allowing ingress from a labelled app in its namespace on a port and a
/// named port), as YAML: the bench's scale.
pub fn scale_yaml(pods: usize, policies: usize, extra_pod: bool) -> String {
    let namespaces = 50;
    let mut y = String::from("trustDomain: example.org\nnodes:\n");
    y.push_str(
        "  - {name: node-a, address: 192.168.50.1}\n  - {name: node-b, address: 192.168.50.2}\n",
    );
    y.push_str("namespaces:\n");
    for n in 0..namespaces {
        y.push_str(&format!(
            "  - {{name: ns{n}, labels: {{team: t{}}}}}\n",
            n % 5
        ));
    }
    y.push_str("workloads:\n");
    let count = pods + usize::from(extra_pod);
    for i in 0..count {
        // Host parts 1..=250 of consecutive /24s: never .0, never repeated.
        let ip = format!("10.{}.{}.{}", 1 + i / 64000, (i / 250) % 256, i % 250 + 1);
        y.push_str(&format!(
            "  - {{name: p{i}, namespace: ns{}, ip: {ip}, node: node-{}, labels: {{app: app{}}}, ports: [{{name: http, port: 8080}}]}}\n",
            i % namespaces,
            if i % 2 == 0 { "a" } else { "b" },
            i % 20,
        ));
    }
    y.push_str("networkPolicies:\n");
    for j in 0..policies {
        y.push_str(&format!(
            "  - {{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: np{j}, namespace: ns{}}}, spec: {{podSelector: {{matchLabels: {{app: app{}}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: app{}}}}}}}, {{namespaceSelector: {{matchLabels: {{team: t{}}}}}}}], ports: [{{port: {}}}, {{port: http}}]}}]}}}}\n",
            j % namespaces,
            j % 20,
            (j + 1) % 20,
            j % 5,
            1000 + j,
        ));
    }
    y
}
