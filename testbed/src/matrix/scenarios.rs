//! The scenarios of the matrix: the upstream suite's core cases (`test/e2e/network/netpol`,
//! `network_policy.go`) and the ClusterNetworkPolicy tiers, each a list of steps with the
//! policies to apply and the matrix to expect.
//!
//! [`available`] runs on today's config (no policy, an AuthorizationPolicy); [`network`] and
//! [`cluster_network`] need `networkPolicies:` / `clusterNetworkPolicies:` enforced.

use serde_json::{Value, json};

use super::model::{ALL_PORTS, Model, PodId, PortProtocol, TCP_80, TCP_81, UDP_80, UDP_PORTS, pod};
use super::reachability::Reachability;

/// A scenario: steps applied one after the other on the same testbed.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name.
    pub name: &'static str,
    /// TCP connections opened before the first step and kept open through all of them.
    pub held: Vec<(PodId, PodId, PortProtocol)>,
    /// The steps.
    pub steps: Vec<Step>,
}

/// One step: the whole policy state to apply, and what to expect then.
#[derive(Debug, Clone)]
pub struct Step {
    /// What the step does.
    pub what: String,
    /// AuthorizationPolicy documents.
    pub policies: Vec<Value>,
    /// NetworkPolicy documents.
    pub network_policies: Vec<Value>,
    /// ClusterNetworkPolicy documents.
    pub cluster_network_policies: Vec<Value>,
    /// The matrix to expect.
    pub expected: Reachability,
    /// For each held connection (in order), whether it must still answer after this step.
    pub held_alive: Vec<bool>,
}

impl Step {
    /// A step applying `network_policies` alone.
    pub fn network(what: &str, network_policies: Vec<Value>, expected: Reachability) -> Self {
        Self {
            what: what.to_owned(),
            policies: Vec::new(),
            network_policies,
            cluster_network_policies: Vec::new(),
            expected,
            held_alive: Vec::new(),
        }
    }

    /// A step applying ClusterNetworkPolicies and NetworkPolicies.
    pub fn cluster(
        what: &str,
        cluster_network_policies: Vec<Value>,
        network_policies: Vec<Value>,
        expected: Reachability,
    ) -> Self {
        Self {
            cluster_network_policies,
            ..Self::network(what, network_policies, expected)
        }
    }
}

fn single(name: &'static str, step: Step) -> Scenario {
    Scenario {
        name,
        held: Vec::new(),
        steps: vec![step],
    }
}

/// A NetworkPolicy document.
pub fn network_policy(name: &str, namespace: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
}

/// A ClusterNetworkPolicy document (network-policy-api v1alpha2).
pub fn cluster_network_policy(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn pod_is(p: &str) -> Value {
    json!({"matchLabels": {"pod": p}})
}

fn ns_is(ns: &str) -> Value {
    json!({"matchLabels": {"ns": ns}})
}

/// The scenarios today's config carries: no policy, and an AuthorizationPolicy change.
pub fn available(_model: &Model) -> Vec<Scenario> {
    vec![no_policies(), authorization_policy_applied()]
}

/// No policy: everything reaches everything.
pub fn no_policies() -> Scenario {
    single(
        "no policies",
        Step::network(
            "everything reaches everything",
            Vec::new(),
            Reachability::new(true),
        ),
    )
}

/// A config change through the YAML: an AuthorizationPolicy denying TCP 81 to every pod of `x`
/// (all in the mesh), then removed again. The proxy sees TCP only: UDP is untouched.
pub fn authorization_policy_applied() -> Scenario {
    let deny_81 = json!({
        "apiVersion": "security.nodemesh.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-81", "namespace": "x"},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["81"]}}]}]},
    });
    let mut denied = Reachability::new(true);
    denied.expect_to_namespace("x", &[TCP_81], false);
    Scenario {
        name: "authorization policy applied and removed",
        held: Vec::new(),
        steps: vec![
            Step {
                policies: vec![deny_81],
                ..Step::network("x denies TCP 81 (AuthorizationPolicy)", Vec::new(), denied)
            },
            Step::network("removed again", Vec::new(), Reachability::new(true)),
        ],
    }
}

/// The upstream suite's NetworkPolicy cases.
pub fn network(model: &Model) -> Vec<Scenario> {
    vec![
        deny_all_ingress(),
        deny_all_egress(),
        allow_from_namespace_by_label(),
        allow_from_pod_in_same_namespace(),
        namespace_and_pod_selectors_and_vs_or(),
        ip_block_with_except(model),
        egress_ip_block_with_except(model),
        named_ports(),
        end_port_ranges(),
        egress_to_a_port_only(),
        policy_updated_while_traffic_flows(),
        policy_deleted(),
    ]
}

/// "should support a 'default-deny-ingress' policy": nothing reaches `x`.
pub fn deny_all_ingress() -> Scenario {
    let mut r = Reachability::new(true);
    r.expect_to_namespace("x", &ALL_PORTS, false);
    single(
        "deny-all ingress",
        Step::network(
            "x: podSelector {}, policyTypes [Ingress]",
            vec![network_policy(
                "deny-ingress",
                "x",
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
            )],
            r,
        ),
    )
}

/// "should support a 'default-deny-all' policy" (egress half; no DNS here): `x` reaches
/// nothing.
pub fn deny_all_egress() -> Scenario {
    let mut r = Reachability::new(true);
    r.expect_from_namespace("x", &ALL_PORTS, false);
    single(
        "deny-all egress",
        Step::network(
            "x: podSelector {}, policyTypes [Egress]",
            vec![network_policy(
                "deny-egress",
                "x",
                json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            )],
            r,
        ),
    )
}

/// "should enforce policy to allow traffic only from a different namespace, based on
/// NamespaceSelector": `x/a` admits `y` only.
pub fn allow_from_namespace_by_label() -> Scenario {
    let mut r = Reachability::new(true);
    r.expect_to(pod("x/a"), &ALL_PORTS, false);
    r.expect_where(&ALL_PORTS, true, |f, t| {
        t == pod("x/a") && f.namespace() == "y"
    });
    single(
        "allow from namespace by label",
        Step::network(
            "x/a admits namespaceSelector ns=y",
            vec![network_policy(
                "allow-from-y",
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("y")}]}]}),
            )],
            r,
        ),
    )
}

/// "should enforce policy to allow traffic from pods within server namespace based on
/// PodSelector": `x/a` admits `x/b` only (not `y/b`: a podSelector alone is the policy's
/// namespace).
pub fn allow_from_pod_in_same_namespace() -> Scenario {
    let mut r = Reachability::new(true);
    r.expect_to(pod("x/a"), &ALL_PORTS, false);
    r.expect(pod("x/b"), pod("x/a"), &ALL_PORTS, true);
    single(
        "allow from pod by label in the same namespace",
        Step::network(
            "x/a admits podSelector pod=b",
            vec![network_policy(
                "allow-from-b",
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is("b")}]}]}),
            )],
            r,
        ),
    )
}

/// "should enforce policy based on PodSelector and NamespaceSelector" (one peer: AND) and
/// "... PodSelector or NamespaceSelector" (two peers: OR).
pub fn namespace_and_pod_selectors_and_vs_or() -> Scenario {
    let mut and = Reachability::new(true);
    and.expect_to(pod("x/a"), &ALL_PORTS, false);
    and.expect(pod("y/b"), pod("x/a"), &ALL_PORTS, true);
    let mut or = Reachability::new(true);
    or.expect_to(pod("x/a"), &ALL_PORTS, false);
    or.expect_where(&ALL_PORTS, true, |f, t| {
        t == pod("x/a") && (f.namespace() == "y" || f == pod("x/b"))
    });
    let policy = |from: Value| {
        vec![network_policy(
            "allow-selected",
            "x",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": from}]}),
        )]
    };
    Scenario {
        name: "namespaceSelector and podSelector: AND vs OR",
        held: Vec::new(),
        steps: vec![
            Step::network(
                "one peer {namespaceSelector ns=y, podSelector pod=b}: y/b only",
                policy(json!([{"namespaceSelector": ns_is("y"), "podSelector": pod_is("b")}])),
                and,
            ),
            Step::network(
                "two peers [namespaceSelector ns=y], [podSelector pod=b]: y/* and x/b",
                policy(json!([{"namespaceSelector": ns_is("y")}, {"podSelector": pod_is("b")}])),
                or,
            ),
        ],
    }
}

/// "should allow ingress access from namespace on one named port"'s ipBlock sibling: `x/a`
/// admits the pod networks except `y/a`.
pub fn ip_block_with_except(model: &Model) -> Scenario {
    let mut r = Reachability::new(true);
    r.expect(pod("y/a"), pod("x/a"), &ALL_PORTS, false);
    single(
        "ipBlock with except (ingress)",
        Step::network(
            "x/a admits 10.200.0.0/16 except y/a",
            vec![network_policy(
                "allow-cidr-except",
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"ipBlock": {
                    "cidr": "10.200.0.0/16", "except": [model.cidr(pod("y/a"))],
                }}]}]}),
            )],
            r,
        ),
    )
}

/// "should enforce except clause while egress access to server in CIDR block": `x/a` may send
/// to the pod networks except `z/b`.
pub fn egress_ip_block_with_except(model: &Model) -> Scenario {
    let mut r = Reachability::new(true);
    r.expect(pod("x/a"), pod("z/b"), &ALL_PORTS, false);
    single(
        "ipBlock with except (egress)",
        Step::network(
            "x/a sends to 10.200.0.0/16 except z/b",
            vec![network_policy(
                "egress-cidr-except",
                "x",
                json!({"podSelector": pod_is("a"), "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {
                    "cidr": "10.200.0.0/16", "except": [model.cidr(pod("z/b"))],
                }}]}]}),
            )],
            r,
        ),
    )
}

/// "should allow ingress access on one named port" (TCP and UDP): `x/a` admits its ports
/// named `serve-81-tcp` and `serve-80-udp` only. Needs `workloads[].ports`.
pub fn named_ports() -> Scenario {
    let mut r = Reachability::new(true);
    r.expect_to(pod("x/a"), &ALL_PORTS, false);
    r.expect_to(pod("x/a"), &[TCP_81, UDP_80], true);
    single(
        "named ports",
        Step::network(
            "x/a admits serve-81-tcp and serve-80-udp",
            vec![network_policy(
                "allow-named",
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"ports": [
                    {"port": TCP_81.port_name()},
                    {"protocol": "UDP", "port": UDP_80.port_name()},
                ]}]}),
            )],
            r,
        ),
    )
}

/// "should support allow-all policy" with `endPort`: a range 79–80 admits TCP 80 alone, then
/// 80–81 both TCP ports; UDP never.
pub fn end_port_ranges() -> Scenario {
    let policy = |start: u16, end: u16| {
        vec![network_policy(
            "allow-range",
            "x",
            json!({"podSelector": pod_is("a"), "ingress": [{"ports": [
                {"protocol": "TCP", "port": start, "endPort": end},
            ]}]}),
        )]
    };
    let mut first = Reachability::new(true);
    first.expect_to(pod("x/a"), &ALL_PORTS, false);
    first.expect_to(pod("x/a"), &[TCP_80], true);
    let mut second = Reachability::new(true);
    second.expect_to(pod("x/a"), &UDP_PORTS, false);
    Scenario {
        name: "endPort ranges",
        held: Vec::new(),
        steps: vec![
            Step::network("x/a admits TCP 79-80", policy(79, 80), first),
            Step::network("x/a admits TCP 80-81", policy(80, 81), second),
        ],
    }
}

/// "should enforce egress policy allowing traffic to a server on a specific port": `x/a` may
/// send to TCP 80 only, to anyone.
pub fn egress_to_a_port_only() -> Scenario {
    let mut r = Reachability::new(true);
    r.expect_from(pod("x/a"), &ALL_PORTS, false);
    r.expect_from(pod("x/a"), &[TCP_80], true);
    single(
        "egress to a port only",
        Step::network(
            "x/a sends to TCP 80 only",
            vec![network_policy(
                "egress-80",
                "x",
                json!({"podSelector": pod_is("a"), "policyTypes": ["Egress"],
                       "egress": [{"ports": [{"protocol": "TCP", "port": 80}]}]}),
            )],
            r,
        ),
    )
}

/// "should allow ingress access from updated pod": `x/a` admits `x/b`, then `x/c` instead;
/// a connection `x/b` → `x/a` held open through both is closed by the update.
pub fn policy_updated_while_traffic_flows() -> Scenario {
    let policy = |from: &str| {
        vec![network_policy(
            "allow-one",
            "x",
            json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"podSelector": pod_is(from)}]}]}),
        )]
    };
    let only = |from: &str| {
        let mut r = Reachability::new(true);
        r.expect_to(pod("x/a"), &ALL_PORTS, false);
        r.expect(pod(from), pod("x/a"), &ALL_PORTS, true);
        r
    };
    Scenario {
        name: "policy updated while traffic flows",
        held: vec![(pod("x/b"), pod("x/a"), TCP_80)],
        steps: vec![
            Step {
                held_alive: vec![true],
                ..Step::network("x/a admits x/b", policy("b"), only("x/b"))
            },
            Step {
                held_alive: vec![false],
                ..Step::network("x/a admits x/c instead", policy("c"), only("x/c"))
            },
        ],
    }
}

/// "should not allow access by TCP when a policy specifies only UDP"'s cleanup: deny-all
/// ingress to `x`, then the policy deleted: everything reaches everything again.
pub fn policy_deleted() -> Scenario {
    let mut denied = Reachability::new(true);
    denied.expect_to_namespace("x", &ALL_PORTS, false);
    Scenario {
        name: "policy deleted",
        held: Vec::new(),
        steps: vec![
            Step::network(
                "x: deny-all ingress",
                vec![network_policy(
                    "deny-ingress",
                    "x",
                    json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
                )],
                denied,
            ),
            Step::network("deleted", Vec::new(), Reachability::new(true)),
        ],
    }
}

/// The ClusterNetworkPolicy tiers.
pub fn cluster_network(_model: &Model) -> Vec<Scenario> {
    vec![
        admin_deny_overrides_allow(),
        admin_pass_delegates(),
        baseline_deny_where_unselected(),
    ]
}

/// Admin Deny from `y` to `x` wins over a NetworkPolicy in `x` admitting every namespace.
pub fn admin_deny_overrides_allow() -> Scenario {
    let mut r = Reachability::new(true);
    r.expect_where(&ALL_PORTS, false, |f, t| {
        f.namespace() == "y" && t.namespace() == "x"
    });
    single(
        "Admin Deny overrides a namespace Allow",
        Step::cluster(
            "Admin deny y -> x; NetworkPolicy in x admits all namespaces",
            vec![cluster_network_policy(
                "admin-deny-y-to-x",
                json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": ns_is("x")},
                       "ingress": [{"name": "deny-y", "action": "Deny", "from": [{"namespaces": ns_is("y")}]}]}),
            )],
            vec![network_policy(
                "allow-all-namespaces",
                "x",
                json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
            )],
            r,
        ),
    )
}

/// Admin Pass from `y` (priority 10) skips an Admin Deny from `y` (priority 20) and leaves the
/// decision to NetworkPolicy: `x/a` admits `y/b` only (and is isolated), `x/b` and `x/c` are
/// selected by no NetworkPolicy and admit everyone.
pub fn admin_pass_delegates() -> Scenario {
    let mut r = Reachability::new(true);
    r.expect_to(pod("x/a"), &ALL_PORTS, false);
    r.expect(pod("y/b"), pod("x/a"), &ALL_PORTS, true);
    single(
        "Admin Pass delegates to NetworkPolicy",
        Step::cluster(
            "Admin pass y -> x (10), Admin deny y -> x (20); x/a admits y/b",
            vec![
                cluster_network_policy(
                    "admin-pass-y",
                    json!({"tier": "Admin", "priority": 10, "subject": {"namespaces": ns_is("x")},
                           "ingress": [{"name": "pass-y", "action": "Pass", "from": [{"namespaces": ns_is("y")}]}]}),
                ),
                cluster_network_policy(
                    "admin-deny-y",
                    json!({"tier": "Admin", "priority": 20, "subject": {"namespaces": ns_is("x")},
                           "ingress": [{"name": "deny-y", "action": "Deny", "from": [{"namespaces": ns_is("y")}]}]}),
                ),
            ],
            vec![network_policy(
                "allow-y-b",
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [
                    {"namespaceSelector": ns_is("y"), "podSelector": pod_is("b")},
                ]}]}),
            )],
            r,
        ),
    )
}

/// Baseline Deny of all ingress to `x` applies to `x/b` and `x/c`, but not to `x/a`, which a
/// NetworkPolicy selects (admitting `z`): only `z` → `x/a` reaches `x`.
pub fn baseline_deny_where_unselected() -> Scenario {
    let mut r = Reachability::new(true);
    r.expect_to_namespace("x", &ALL_PORTS, false);
    r.expect_where(&ALL_PORTS, true, |f, t| {
        t == pod("x/a") && f.namespace() == "z"
    });
    single(
        "Baseline Deny only where no NetworkPolicy selects the pod",
        Step::cluster(
            "Baseline deny all -> x; x/a admits z",
            vec![cluster_network_policy(
                "baseline-deny-x",
                json!({"tier": "Baseline", "priority": 10, "subject": {"namespaces": ns_is("x")},
                       "ingress": [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]}),
            )],
            vec![network_policy(
                "allow-z",
                "x",
                json!({"podSelector": pod_is("a"), "ingress": [{"from": [{"namespaceSelector": ns_is("z")}]}]}),
            )],
            r,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let ips = PodId::all()
            .enumerate()
            .map(|(i, p)| (p, std::net::Ipv4Addr::new(10, 200, 1, 11 + i as u8)))
            .collect();
        Model {
            layout: super::super::Layout::default(),
            ips,
        }
    }

    #[test]
    fn every_scenario_has_documents_of_the_right_kinds_and_unique_names() {
        let model = model();
        let all: Vec<Scenario> =
            [available(&model), network(&model), cluster_network(&model)].concat();
        let mut names = std::collections::BTreeSet::new();
        for s in &all {
            assert!(names.insert(s.name), "scenario {:?} twice", s.name);
            assert!(!s.steps.is_empty(), "{}", s.name);
            for step in &s.steps {
                assert!(
                    step.held_alive.len() <= s.held.len(),
                    "{} / {}",
                    s.name,
                    step.what
                );
                for doc in &step.network_policies {
                    assert_eq!(doc["kind"], "NetworkPolicy", "{}", s.name);
                    assert!(doc["metadata"]["namespace"].is_string(), "{}", s.name);
                }
                for doc in &step.cluster_network_policies {
                    assert_eq!(doc["kind"], "ClusterNetworkPolicy", "{}", s.name);
                    assert!(
                        ["Admin", "Baseline"].contains(&doc["spec"]["tier"].as_str().unwrap_or(""))
                    );
                }
            }
        }
    }

    #[test]
    fn expectations_deny_what_the_policies_name() {
        let deny = deny_all_ingress();
        let r = &deny.steps[0].expected;
        assert_eq!(r.expected((pod("x/b"), pod("x/a"), TCP_80)), Some(false));
        assert_eq!(r.expected((pod("x/a"), pod("y/a"), TCP_80)), Some(true));
        let base = baseline_deny_where_unselected();
        let r = &base.steps[0].expected;
        assert_eq!(r.expected((pod("z/c"), pod("x/a"), UDP_80)), Some(true));
        assert_eq!(r.expected((pod("z/c"), pod("x/b"), UDP_80)), Some(false));
        assert_eq!(r.expected((pod("y/a"), pod("x/a"), UDP_80)), Some(false));
    }
}
