#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::Verdict;
use crate::request::Labels;

struct TestPod {
    namespace: &'static str,
    labels: BTreeMap<String, String>,
    namespace_labels: BTreeMap<String, String>,
    ports: Vec<(&'static str, u16, Protocol)>,
}

impl Pod for TestPod {
    fn namespace(&self) -> &str {
        self.namespace
    }
    fn labels(&self) -> &dyn Labels {
        &self.labels
    }
    fn namespace_labels(&self) -> &dyn Labels {
        &self.namespace_labels
    }
    fn has_named_port(&self, name: &str, port: u16, protocol: Protocol) -> bool {
        self.ports.contains(&(name, port, protocol))
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(namespace: &'static str, name: &str) -> TestPod {
    TestPod {
        namespace,
        labels: labels(&[("pod", name)]),
        namespace_labels: labels(&[
            ("ns", namespace),
            ("kubernetes.io/metadata.name", namespace),
        ]),
        ports: vec![
            ("serve-80-tcp", 80, Protocol::Tcp),
            ("serve-81-udp", 81, Protocol::Udp),
        ],
    }
}

/// YAML 1.2 booleans, as the config reader parses (`y` is a string, not `true`).
fn yaml(text: &str) -> serde_json::Value {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    serde_saphyr::from_str_with_options(text, options).unwrap()
}

fn np(yaml_text: &str) -> NetworkPolicy {
    let doc = yaml(yaml_text);
    compile_network_policy(&doc).unwrap()
}

fn cnp(yaml_text: &str) -> ClusterNetworkPolicy {
    let doc = yaml(yaml_text);
    compile_cluster_network_policy(&doc).unwrap()
}

fn errors(yaml_text: &str) -> Vec<String> {
    let doc = yaml(yaml_text);
    let e = if doc["kind"] == "NetworkPolicy" {
        compile_network_policy(&doc).err()
    } else {
        compile_cluster_network_policy(&doc).err()
    };
    e.unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn flow<'a>(src: &'a TestPod, dst: &'a TestPod, protocol: Protocol, port: u16) -> Flow<'a> {
    Flow {
        source: Endpoint {
            ip: ip("10.0.0.1"),
            pod: Some(src),
            node: None,
        },
        destination: Endpoint {
            ip: ip("10.0.0.2"),
            pod: Some(dst),
            node: None,
        },
        protocol,
        port,
    }
}

const DENY_ALL_X: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny-all, namespace: x}, spec: {podSelector: {}}}";

#[test]
fn a_pod_selected_for_ingress_is_default_deny_and_others_are_not() {
    let set = NetworkPolicySet::new(vec![np(DENY_ALL_X)], []);
    let (xa, ya) = (pod("x", "a"), pod("y", "a"));
    let d = set.decide(&flow(&ya, &xa, Protocol::Tcp, 80));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.egress.verdict, Verdict::Allow, "egress is not isolated");
    let f = flow(&ya, &xa, Protocol::Tcp, 9090);
    assert_eq!(
        set.decide(&f).ingress.describe(f.protocol, f.port),
        "denied by default-deny x/deny-all (ingress): no rule admits TCP port 9090"
    );
    assert_eq!(
        set.decide(&flow(&xa, &ya, Protocol::Udp, 80)).verdict,
        Verdict::Allow
    );
}

#[test]
fn policies_add_up_and_selectors_combine_as_and_within_a_peer_and_or_across_peers() {
    let and = np(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: and, namespace: x}, spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]}}",
    );
    let or = np(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: or, namespace: x}, spec: {podSelector: {matchLabels: {pod: b}}, ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]}}",
    );
    let set = NetworkPolicySet::new(vec![and, or], []);
    let (xa, xb, yb, ya, xc) = (
        pod("x", "a"),
        pod("x", "b"),
        pod("y", "b"),
        pod("y", "a"),
        pod("x", "c"),
    );
    let allowed = |s, d| set.decide(&flow(s, d, Protocol::Tcp, 80)).verdict == Verdict::Allow;
    assert!(allowed(&yb, &xa), "y/b matches both selectors");
    assert!(!allowed(&ya, &xa), "y/a: namespace only");
    assert!(!allowed(&xb, &xa), "x/b: pod only");
    assert!(allowed(&ya, &xb), "OR: namespace y");
    assert!(allowed(&xb, &xb), "OR: pod b of x");
    assert!(!allowed(&xc, &xb));
    assert!(allowed(&xc, &xc), "x/c is selected by neither");
}

#[test]
fn ports_named_ranges_and_protocols() {
    let p = np(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: p, namespace: x}, spec: {podSelector: {}, ingress: [{ports: [{port: serve-80-tcp}, {protocol: UDP, port: 1000, endPort: 1010}, {protocol: SCTP}]}]}}",
    );
    let set = NetworkPolicySet::new(vec![p], []);
    let (xa, ya) = (pod("x", "a"), pod("y", "a"));
    let ok = |proto, port| set.decide(&flow(&ya, &xa, proto, port)).verdict == Verdict::Allow;
    assert!(ok(Protocol::Tcp, 80), "named port on the destination pod");
    assert!(!ok(Protocol::Tcp, 81));
    assert!(!ok(Protocol::Udp, 80), "the name is declared for TCP");
    assert!(ok(Protocol::Udp, 1000) && ok(Protocol::Udp, 1010));
    assert!(!ok(Protocol::Udp, 1011) && !ok(Protocol::Tcp, 1005));
    assert!(ok(Protocol::Sctp, 5));
    assert!(!ok(Protocol::Icmp, 0), "ports never admit ICMP");
}

#[test]
fn ip_blocks_with_exceptions_and_unbelieved_addresses() {
    let p = np(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: p, namespace: x}, spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.128/25]}}]}]}}",
    );
    let set = NetworkPolicySet::new(vec![p], []);
    let xa = pod("x", "a");
    let from = |addr: Option<IpAddr>| {
        let f = Flow {
            source: Endpoint {
                ip: addr,
                pod: None,
                node: None,
            },
            destination: Endpoint {
                ip: ip("10.0.0.2"),
                pod: Some(&xa),
                node: None,
            },
            protocol: Protocol::Tcp,
            port: 80,
        };
        set.decide(&f).verdict
    };
    assert_eq!(from(ip("10.0.0.5")), Verdict::Allow);
    assert_eq!(from(ip("10.0.0.200")), Verdict::Deny);
    assert_eq!(from(ip("10.0.1.5")), Verdict::Deny);
    assert_eq!(
        from(None),
        Verdict::Deny,
        "an address not believed matches no block"
    );
}

#[test]
fn egress_is_decided_on_the_source_pod() {
    let p = np(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: e, namespace: x}, spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}}",
    );
    let set = NetworkPolicySet::new(vec![p], []);
    let (xa, yb) = (pod("x", "a"), pod("y", "b"));
    assert_eq!(
        set.decide(&flow(&xa, &yb, Protocol::Tcp, 80)).verdict,
        Verdict::Allow
    );
    let d = set.decide(&flow(&xa, &yb, Protocol::Tcp, 81));
    assert_eq!(d.egress.verdict, Verdict::Deny);
    assert_eq!(d.ingress.verdict, Verdict::Allow);
    assert_eq!(
        set.decide(&flow(&yb, &xa, Protocol::Tcp, 81)).verdict,
        Verdict::Allow,
        "ingress not isolated"
    );
}

const ADMIN_DENY_Y: &str = "{apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: deny-from-y}, spec: {tier: Admin, priority: 10, subject: {namespaces: {matchLabels: {ns: x}}}, ingress: [{action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}]}]}}";
const ALLOW_ALL_X: &str = "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: allow-all, namespace: x}, spec: {podSelector: {}, ingress: [{}]}}";

#[test]
fn admin_deny_overrides_a_namespace_allow_and_pass_delegates() {
    let set = NetworkPolicySet::new(vec![np(ALLOW_ALL_X)], [cnp(ADMIN_DENY_Y)]);
    let (xa, ya, za) = (pod("x", "a"), pod("y", "a"), pod("z", "a"));
    let d = set.decide(&flow(&ya, &xa, Protocol::Tcp, 80));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(matches!(d.ingress.basis, Basis::Cluster { .. }));
    assert_eq!(
        set.decide(&flow(&za, &xa, Protocol::Tcp, 80)).verdict,
        Verdict::Allow
    );

    let pass = cnp(
        "{apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: pass-y}, spec: {tier: Admin, priority: 5, subject: {namespaces: {}}, ingress: [{action: Pass, from: [{namespaces: {matchLabels: {ns: y}}}]}]}}",
    );
    let set = NetworkPolicySet::new(vec![np(ALLOW_ALL_X)], [cnp(ADMIN_DENY_Y), pass]);
    let d = set.decide(&flow(&ya, &xa, Protocol::Tcp, 80));
    assert_eq!(
        d.verdict,
        Verdict::Allow,
        "Pass at priority 5 skips the Deny at 10"
    );
    assert!(matches!(d.ingress.basis, Basis::Admitted { .. }) && d.ingress.passed.is_some());
}

#[test]
fn baseline_applies_only_where_no_network_policy_selects_the_pod() {
    let baseline = cnp(
        "{apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: baseline-deny}, spec: {tier: Baseline, priority: 0, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}}",
    );
    let only_x_a = np(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: a, namespace: x}, spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{}]}}",
    );
    let set = NetworkPolicySet::new(vec![only_x_a], [baseline]);
    let (xa, xb, ya) = (pod("x", "a"), pod("x", "b"), pod("y", "a"));
    assert_eq!(
        set.decide(&flow(&ya, &xa, Protocol::Tcp, 80)).verdict,
        Verdict::Allow
    );
    assert_eq!(
        set.decide(&flow(&ya, &xb, Protocol::Tcp, 80)).verdict,
        Verdict::Deny
    );
}

#[test]
fn cluster_peers_of_a_newer_version_fail_closed_by_action() {
    let deny = cnp(
        "{apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: d}, spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{domainNames: [example.com]}]}]}}",
    );
    let accept = cnp(
        "{apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: a}, spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{futureThing: {}}]}]}}",
    );
    assert_eq!(deny.egress[0].peers, vec![Peer::Any]);
    assert_eq!(accept.egress[0].peers, vec![Peer::None]);
}

#[test]
fn compile_errors_name_the_field() {
    assert_eq!(
        errors(
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: p, namespace: x}, spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}, policyTypes: [Ingres], ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}, {}, {ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}, podSelector: {}}], ports: [{port: 0}, {port: http, endPort: 90}, {protocol: ICMP}]}]}}"
        ),
        vec![
            "spec.podSelector.matchExpressions[0].values: required (non-empty) for operator In",
            "spec.policyTypes[0]: \"Ingres\" is not one of: Ingress, Egress",
            "spec.ingress[0].from[0].ipBlock.cidr: \"10.0.0.1/8\" has host bits set (did you mean 10.0.0.0/8?)",
            "spec.ingress[0].from[1]: set podSelector, namespaceSelector or ipBlock",
            "spec.ingress[0].from[2].ipBlock: cannot be combined with podSelector or namespaceSelector",
            "spec.ingress[0].ports[0].port: 0 is not a port in 1..=65535",
            "spec.ingress[0].ports[1].endPort: requires a numeric port, not a port name",
            "spec.ingress[0].ports[2].protocol: \"ICMP\" is not one of: TCP, UDP, SCTP",
        ]
    );
    assert_eq!(
        errors(
            "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: p, namespace: x}, spec: {podSelector: {}, ingres: []}}"
        ),
        vec![
            "spec.ingres: unknown field `ingres`, expected one of `podSelector`, `policyTypes`, `ingress`, `egress`"
        ]
    );
    assert_eq!(
        errors(
            "{apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: c}, spec: {tier: Top, priority: 1001, subject: {}, ingress: [{action: Allow, from: [{namespaces: {}}]}, {action: Deny, from: [{networks: [10.0.0.0/8]}]}, {action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 90, end: 80}}}}]}]}}"
        ),
        vec![
            "spec.tier: \"Top\" is not one of: Admin, Baseline",
            "spec.priority: 1001 is not in 0..=1000",
            "spec.subject: set exactly one of namespaces, pods",
            "spec.ingress[0].action: \"Allow\" is not one of: Accept, Deny, Pass",
            "spec.ingress[1].from[0]: ingress peers are namespaces or pods",
            "spec.ingress[2].protocols[0].tcp.destinationPort.range.end: 80 is below start 90",
        ]
    );
}

#[test]
fn a_policy_that_does_not_compile_isolates_its_pods() {
    let doc = yaml(
        "{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: bad, namespace: x}, spec: {podSelector: {matchLabels: {pod: a}}, ingress: [{ports: [{port: 0}]}]}}",
    );
    let (policy, errors) = network_policy_fail_closed(&doc);
    assert!(errors.is_some());
    let set = NetworkPolicySet::new(vec![policy.unwrap()], []);
    let (xa, xb, ya) = (pod("x", "a"), pod("x", "b"), pod("y", "a"));
    assert_eq!(
        set.decide(&flow(&ya, &xa, Protocol::Tcp, 80)).verdict,
        Verdict::Deny
    );
    assert_eq!(
        set.decide(&flow(&xa, &ya, Protocol::Tcp, 80)).verdict,
        Verdict::Deny,
        "egress too"
    );
    assert_eq!(
        set.decide(&flow(&ya, &xb, Protocol::Tcp, 80)).verdict,
        Verdict::Allow
    );
}

#[test]
fn nodes_and_networks_peers_match_egress_destinations() {
    let p = cnp(
        "{apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: n}, spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{nodes: {matchLabels: {role: control}}}]}, {action: Deny, to: [{networks: [192.0.2.0/24, 198.51.100.0/24]}]}]}}",
    );
    let set = NetworkPolicySet::new(vec![], [p]);
    let xa = pod("x", "a");
    let control = labels(&[("role", "control")]);
    let to = |addr: &str, node: Option<&dyn Labels>| {
        let f = Flow {
            source: Endpoint {
                ip: ip("10.0.0.1"),
                pod: Some(&xa),
                node: None,
            },
            destination: Endpoint {
                ip: ip(addr),
                pod: None,
                node,
            },
            protocol: Protocol::Tcp,
            port: 443,
        };
        set.decide(&f).verdict
    };
    assert_eq!(to("10.200.0.1", Some(&control)), Verdict::Deny);
    assert_eq!(
        to("10.200.0.2", Some(&labels(&[("role", "worker")]))),
        Verdict::Allow
    );
    assert_eq!(to("198.51.100.7", None), Verdict::Deny);
    assert_eq!(to("203.0.113.1", None), Verdict::Allow);
}

#[test]
fn lint_flags_what_can_never_match() {
    let text = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}, matchExpressions: [{key: app, operator: NotIn, values: [a]}]}
  policyTypes: [Ingress]
  egress: [{}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: c}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {}}
  egress:
  - {name: all-pods, action: Deny, to: [{namespaces: {}}]}
  - {name: shadowed, action: Accept, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}]}
  - {name: reached, action: Accept, to: [{networks: [192.0.2.0/24]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}
---
apiVersion: security.nodemesh.io/v1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: x}
spec: {action: DENY}
";
    let problems: Vec<String> = crate::lint::lint_texts(&[("f.yaml".into(), text.into())])
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        vec![
            "f.yaml: x/p: spec.egress: ignored: spec.policyTypes does not list Egress",
            "f.yaml: x/p: spec.podSelector: selector app=a,app notin (a) can never match (contradicting requirements)",
            "f.yaml: c: spec.egress[1]: rule shadowed is never reached: rule all-pods before it matches all its traffic",
            "f.yaml: x/bad: spec.ingress[0].ports[0].port: 0 is not a port in 1..=65535",
            "f.yaml: x/ap: spec.rules: DENY policy without rules never matches",
        ]
    );
}
