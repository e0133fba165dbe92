//! The network-policy decision a proxy makes per new connection, through the state (workload
//! look-ups included), with 1,000 NetworkPolicies and 1,000 pods.
//!
//! Two shapes: 100 namespaces of 10 policies and 10 pods each, and one namespace holding all
//! 1,000 policies (each selecting one `app`), where only the label index keeps the cost flat.
//! Five Admin ClusterNetworkPolicies that match nothing are evaluated first. The connection is
//! admitted by a policy's last rule, so the whole path is paid.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_main};
use nodemesh_config::Config;
use nodemesh_policy::Verdict;
use nodemesh_policy::netpol::Protocol;
use nodemesh_state::{FlowSource, MeshState};

/// A config with `namespaces` namespaces holding `per_namespace` pods and policies each: pod
/// `app-i` is selected by policy `p-i`, which admits `app-(i+1)` on 8080 after two rules that
/// do not match.
fn config(namespaces: usize, per_namespace: usize) -> String {
    let mut y = String::from(
        "nodes:\n  - {name: node-a, address: 10.0.0.1, podCIDR: 10.128.0.0/9}\nnamespaces:\n",
    );
    for n in 0..namespaces {
        let _ = writeln!(y, "  - {{name: ns-{n}, labels: {{team: t{n}}}}}");
    }
    y.push_str("workloads:\n");
    for n in 0..namespaces {
        for i in 0..per_namespace {
            let k = n * per_namespace + i;
            let _ = writeln!(
                y,
                "  - {{name: w-{i}, namespace: ns-{n}, ip: 10.{}.{}.{}, node: node-a, labels: {{app: app-{i}, tier: back}}}}",
                128 + k / 65536,
                (k / 256) % 256,
                k % 256
            );
        }
    }
    y.push_str("networkPolicies:\n");
    for n in 0..namespaces {
        for i in 0..per_namespace {
            let _ = writeln!(
                y,
                "  - {{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: p-{i}, namespace: ns-{n}}}, spec: {{podSelector: {{matchLabels: {{app: app-{i}}}}}, ingress: [{{from: [{{ipBlock: {{cidr: 192.0.2.0/24}}}}]}}, {{from: [{{namespaceSelector: {{matchLabels: {{team: nobody}}}}}}]}}, {{from: [{{podSelector: {{matchLabels: {{app: app-{}}}}}}}], ports: [{{port: 8080}}]}}]}}}}",
                (i + 1) % per_namespace
            );
        }
    }
    y.push_str("clusterNetworkPolicies:\n");
    for c in 0..5 {
        let _ = writeln!(
            y,
            "  - {{apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {{name: c-{c}}}, spec: {{tier: Admin, priority: {c}, subject: {{namespaces: {{matchLabels: {{team: t{c}}}}}}}, ingress: [{{action: Deny, from: [{{namespaces: {{matchLabels: {{team: blocked}}}}}}]}}]}}}}"
        );
    }
    y
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("network_policy_decision");
    for (label, namespaces, per_namespace) in [("100ns_x_10", 100, 10), ("1ns_x_1000", 1, 1000)] {
        let config = Config::from_yaml_str(&config(namespaces, per_namespace), "/").expect("valid");
        let state = MeshState::new(config, "node-a").expect("state");
        assert!(
            state.policy_problems().is_empty(),
            "{:?}",
            state.policy_problems()
        );
        // Pod w-1 of the last namespace calls w-0 (selected by p-0, which admits app-1).
        let k = (namespaces - 1) * per_namespace;
        let ip = |k: usize| -> IpAddr {
            format!("10.{}.{}.{}", 128 + k / 65536, (k / 256) % 256, k % 256)
                .parse()
                .expect("ip")
        };
        let (src, dst) = (ip(k + 1), ip(k));
        let decide = || state.decide_network(FlowSource::Address(src), dst, Protocol::Tcp, 8080);
        assert_eq!(decide().verdict, Verdict::Allow);
        assert_eq!(
            state
                .decide_network(FlowSource::Address(src), dst, Protocol::Tcp, 9090)
                .verdict,
            Verdict::Deny
        );
        group.bench_function(label, |b| b.iter(|| black_box(decide().verdict)));
    }
    group.finish();
}

mod group {
    //! The criterion entry points.
    #![allow(missing_docs)]
    use super::bench;
    criterion::criterion_group!(benches, bench);
}
criterion_main!(group::benches);
