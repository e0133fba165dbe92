//! Wire documents to the compiled model, with every mistake reported as `field: reason`, and a
//! fail-closed stand-in for a document that does not compile.

use std::fmt;

use ipnet::IpNet;

use super::model::{
    Action, Block, ClusterNetworkPolicy, ClusterRule, LabelSelector, Namespaces, NetworkPolicy,
    Peer, PodSet, PortMatch, Protocol, Requirement, Rule, Tier,
};
use super::wire;
use crate::policy::PolicyRef;

/// The most rules a ClusterNetworkPolicy may have per direction, and peers or protocols per rule.
pub const MAX_CLUSTER_ITEMS: usize = 25;
/// The highest ClusterNetworkPolicy priority.
pub const MAX_PRIORITY: i64 = 1000;

/// One mistake in a network policy document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetpolError {
    /// The field, as a path (`spec.ingress[0].from[1].ipBlock.cidr`).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for NetpolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

#[derive(Default)]
struct Errors(Vec<NetpolError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(NetpolError {
            field: field.into(),
            reason: reason.into(),
        });
    }
}

/// Reads a JSON document as `T`, naming the field serde stopped at.
fn read<T: serde::de::DeserializeOwned>(doc: &serde_json::Value) -> Result<T, NetpolError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        NetpolError {
            field: if path == "." { String::new() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}

fn header(errs: &mut Errors, api_version: &str, kind: &str, want: (&str, &str)) {
    if api_version != want.0 {
        errs.push(
            "apiVersion",
            format!("{api_version:?}, expected {:?}", want.0),
        );
    }
    if kind != want.1 {
        errs.push("kind", format!("{kind:?}, expected {:?}", want.1));
    }
}

/// Compiles a NetworkPolicy document (`networking.k8s.io/v1`).
pub fn compile_network_policy(doc: &serde_json::Value) -> Result<NetworkPolicy, Vec<NetpolError>> {
    let doc: wire::NetworkPolicyDocument = read(doc).map_err(|e| vec![e])?;
    let mut errs = Errors::default();
    header(
        &mut errs,
        &doc.api_version,
        &doc.kind,
        (wire::NETWORK_POLICY_API_VERSION, wire::NETWORK_POLICY_KIND),
    );
    let name = doc.metadata.name.clone().unwrap_or_default();
    let namespace = doc.metadata.namespace.clone().unwrap_or_default();
    if name.is_empty() {
        errs.push("metadata.name", "required");
    }
    if namespace.is_empty() {
        errs.push("metadata.namespace", "required");
    }
    let spec = &doc.spec;
    let pod_selector = selector(&mut errs, "spec.podSelector", &spec.pod_selector);
    let (ingress_type, egress_type) = match &spec.policy_types {
        None => (true, spec.egress.is_some()),
        Some(types) => {
            let mut seen = (false, false);
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => seen.0 = true,
                    "Egress" => seen.1 = true,
                    other => errs.push(
                        format!("spec.policyTypes[{i}]"),
                        format!("{other:?} is not one of: Ingress, Egress"),
                    ),
                }
            }
            seen
        }
    };
    let ingress: Vec<Rule> = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("spec.ingress[{i}]");
            rule(
                &mut errs,
                &at,
                "from",
                &namespace,
                r.from.as_deref(),
                r.ports.as_deref(),
            )
        })
        .collect();
    let egress: Vec<Rule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("spec.egress[{i}]");
            rule(
                &mut errs,
                &at,
                "to",
                &namespace,
                r.to.as_deref(),
                r.ports.as_deref(),
            )
        })
        .collect();
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(NetworkPolicy {
        id: PolicyRef::new(namespace, name),
        pod_selector,
        ingress: ingress_type.then_some(ingress),
        egress: egress_type.then_some(egress),
        failed: false,
    })
}

/// Compiles a NetworkPolicy document, or stands in for it failing closed: when it does not
/// compile, it isolates the pods it selects (every pod of its namespace when its selector is
/// unreadable) in both directions and admits nothing. `None` when the document names no
/// namespace (it can apply to no pod); the errors say why either way.
pub fn network_policy_fail_closed(
    doc: &serde_json::Value,
) -> (Option<NetworkPolicy>, Option<Vec<NetpolError>>) {
    match compile_network_policy(doc) {
        Ok(p) => (Some(p), None),
        Err(errors) => {
            let text = |ptr: &str| doc.pointer(ptr).and_then(|v| v.as_str()).map(str::to_owned);
            let Some(namespace) = text("/metadata/namespace").filter(|n| !n.is_empty()) else {
                return (None, Some(errors));
            };
            let name = text("/metadata/name").unwrap_or_else(|| "<unnamed>".to_owned());
            let pod_selector = doc
                .pointer("/spec/podSelector")
                .and_then(|v| serde_json::from_value::<wire::LabelSelector>(v.clone()).ok())
                .and_then(|s| {
                    let mut errs = Errors::default();
                    let s = selector(&mut errs, "", &s);
                    errs.0.is_empty().then_some(s)
                })
                .unwrap_or_default();
            let policy = NetworkPolicy {
                id: PolicyRef::new(namespace, name),
                pod_selector,
                ingress: Some(Vec::new()),
                egress: Some(Vec::new()),
                failed: true,
            };
            (Some(policy), Some(errors))
        }
    }
}

fn rule(
    errs: &mut Errors,
    at: &str,
    peers_key: &str,
    namespace: &str,
    peers: Option<&[wire::Peer]>,
    ports: Option<&[wire::PolicyPort]>,
) -> Rule {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| peer(errs, &format!("{at}.{peers_key}[{i}]"), namespace, p))
        .collect();
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, p)| policy_port(errs, &format!("{at}.ports[{i}]"), p))
        .collect();
    Rule { peers, ports }
}

fn peer(errs: &mut Errors, at: &str, namespace: &str, p: &wire::Peer) -> Option<Peer> {
    match (&p.pod_selector, &p.namespace_selector, &p.ip_block) {
        (None, None, None) => {
            errs.push(at, "set podSelector, namespaceSelector or ipBlock");
            None
        }
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            errs.push(
                format!("{at}.ipBlock"),
                "cannot be combined with podSelector or namespaceSelector",
            );
            None
        }
        (None, None, Some(block)) => {
            ip_block(errs, &format!("{at}.ipBlock"), block).map(Peer::Block)
        }
        (pods, namespaces, None) => {
            let pods = pods
                .as_ref()
                .map(|s| selector(errs, &format!("{at}.podSelector"), s))
                .unwrap_or_default();
            let namespaces = match namespaces {
                Some(s) => {
                    Namespaces::Selected(selector(errs, &format!("{at}.namespaceSelector"), s))
                }
                None => Namespaces::Named(namespace.to_owned()),
            };
            Some(Peer::Pods(PodSet { namespaces, pods }))
        }
    }
}

fn ip_block(errs: &mut Errors, at: &str, b: &wire::IpBlock) -> Option<Block> {
    let net = cidr(errs, &format!("{at}.cidr"), &b.cidr)?;
    let mut except = Vec::new();
    for (i, e) in b.except.iter().flatten().enumerate() {
        let path = format!("{at}.except[{i}]");
        if let Some(e) = cidr(errs, &path, e) {
            if !net.contains(&e) || e == net {
                errs.push(path, format!("{e} is not strictly inside {net}"));
            } else {
                except.push(e);
            }
        }
    }
    Some(Block { net, except })
}

fn cidr(errs: &mut Errors, at: &str, value: &str) -> Option<IpNet> {
    match value.parse::<IpNet>() {
        Ok(net) if net.trunc() == net => Some(net),
        Ok(net) => {
            errs.push(
                at,
                format!(
                    "{value:?} has host bits set (did you mean {}?)",
                    net.trunc()
                ),
            );
            None
        }
        Err(_) => {
            errs.push(at, format!("{value:?} is not a CIDR such as 10.0.0.0/8"));
            None
        }
    }
}

fn protocol(errs: &mut Errors, at: &str, value: Option<&str>) -> Option<Protocol> {
    match value.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        other => {
            errs.push(at, format!("{other:?} is not one of: TCP, UDP, SCTP"));
            None
        }
    }
}

fn port_number(errs: &mut Errors, at: &str, n: i64) -> Option<u16> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            errs.push(at, format!("{n} is not a port in 1..=65535"));
            None
        }
    }
}

/// Whether `name` is an IANA service name, as Kubernetes requires of named ports.
fn is_port_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--")
}

fn port_name(errs: &mut Errors, at: &str, name: &str) -> Option<String> {
    if is_port_name(name) {
        Some(name.to_owned())
    } else {
        errs.push(
            at,
            format!("{name:?} is neither a port number nor a port name (lowercase letters, digits and '-', at most 15)"),
        );
        None
    }
}

fn policy_port(errs: &mut Errors, at: &str, p: &wire::PolicyPort) -> Option<PortMatch> {
    let protocol = protocol(errs, &format!("{at}.protocol"), p.protocol.as_deref())?;
    match (&p.port, p.end_port) {
        (None, Some(_)) => {
            errs.push(format!("{at}.endPort"), "requires port");
            None
        }
        (None, None) => Some(PortMatch::Numbers {
            protocol,
            first: 1,
            last: u16::MAX,
        }),
        (Some(wire::IntOrString::String(name)), end) => {
            if end.is_some() {
                errs.push(
                    format!("{at}.endPort"),
                    "requires a numeric port, not a port name",
                );
                return None;
            }
            let name = port_name(errs, &format!("{at}.port"), name)?;
            Some(PortMatch::Named {
                protocol: Some(protocol),
                name,
            })
        }
        (Some(wire::IntOrString::Int(n)), end) => {
            let first = port_number(errs, &format!("{at}.port"), *n)?;
            let last = match end {
                None => first,
                Some(e) => {
                    let last = port_number(errs, &format!("{at}.endPort"), e)?;
                    if last < first {
                        errs.push(
                            format!("{at}.endPort"),
                            format!("{last} is below port {first}"),
                        );
                        return None;
                    }
                    last
                }
            };
            Some(PortMatch::Numbers {
                protocol,
                first,
                last,
            })
        }
    }
}

/// Whether `key` is a valid label key (`[prefix/]name`, name ≤ 63 of alphanumerics, `-_.`).
fn is_label_key(key: &str) -> bool {
    let name = key.rsplit_once('/').map_or(key, |(prefix, name)| {
        if prefix.is_empty() || prefix.len() > 253 {
            ""
        } else {
            name
        }
    });
    is_label_value(name) && !name.is_empty()
}

fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && (b.is_empty()
            || (b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()))
}

fn selector(errs: &mut Errors, at: &str, s: &wire::LabelSelector) -> LabelSelector {
    let mut requirements = Vec::new();
    let join = |k: &str| {
        if at.is_empty() {
            k.to_owned()
        } else {
            format!("{at}.{k}")
        }
    };
    for (k, v) in s.match_labels.iter().flatten() {
        let path = format!("{}[{k:?}]", join("matchLabels"));
        if !is_label_key(k) {
            errs.push(&path, format!("{k:?} is not a valid label key"));
        } else if !is_label_value(v) {
            errs.push(&path, format!("{v:?} is not a valid label value"));
        }
        requirements.push(Requirement::In(k.clone(), vec![v.clone()]));
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let path = format!("{}[{i}]", join("matchExpressions"));
        if !is_label_key(&e.key) {
            errs.push(
                format!("{path}.key"),
                format!("{:?} is not a valid label key", e.key),
            );
        }
        let values = e.values.clone().unwrap_or_default();
        let key = e.key.clone();
        let r = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                errs.push(
                    format!("{path}.values"),
                    format!("required (non-empty) for operator {}", e.operator),
                );
                continue;
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                errs.push(
                    format!("{path}.values"),
                    format!("must be empty for operator {}", e.operator),
                );
                continue;
            }
            "In" => Requirement::In(key, values),
            "NotIn" => Requirement::NotIn(key, values),
            "Exists" => Requirement::Exists(key),
            "DoesNotExist" => Requirement::DoesNotExist(key),
            other => {
                errs.push(
                    format!("{path}.operator"),
                    format!("{other:?} is not one of: In, NotIn, Exists, DoesNotExist"),
                );
                continue;
            }
        };
        requirements.push(r);
    }
    LabelSelector { requirements }
}

/// Compiles a ClusterNetworkPolicy document (`policy.networking.k8s.io/v1alpha2`).
pub fn compile_cluster_network_policy(
    doc: &serde_json::Value,
) -> Result<ClusterNetworkPolicy, Vec<NetpolError>> {
    let doc: wire::ClusterNetworkPolicyDocument = read(doc).map_err(|e| vec![e])?;
    let mut errs = Errors::default();
    header(
        &mut errs,
        &doc.api_version,
        &doc.kind,
        (
            wire::CLUSTER_NETWORK_POLICY_API_VERSION,
            wire::CLUSTER_NETWORK_POLICY_KIND,
        ),
    );
    let name = doc.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        errs.push("metadata.name", "required");
    }
    let spec = &doc.spec;
    let tier = tier(&mut errs, &spec.tier);
    let priority = priority(&mut errs, spec.priority);
    let subject = subject(&mut errs, &spec.subject);
    let ingress = cluster_rules(&mut errs, "spec.ingress", "from", &spec.ingress, false);
    let egress = cluster_rules(&mut errs, "spec.egress", "to", &spec.egress, true);
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(ClusterNetworkPolicy {
        name,
        tier: tier.unwrap_or(Tier::Admin),
        priority: priority.unwrap_or(0),
        subject: subject.unwrap_or_else(everyone),
        ingress,
        egress,
    })
}

/// Compiles a ClusterNetworkPolicy document, or stands in for it failing closed: one rule per
/// direction that denies all traffic of its subject (of every pod when the subject is
/// unreadable), in its tier and at its priority when those read. `None` when the document
/// has no name; the errors say why either way.
pub fn cluster_network_policy_fail_closed(
    doc: &serde_json::Value,
) -> (Option<ClusterNetworkPolicy>, Option<Vec<NetpolError>>) {
    match compile_cluster_network_policy(doc) {
        Ok(p) => (Some(p), None),
        Err(errors) => {
            let Some(name) = doc
                .pointer("/metadata/name")
                .and_then(|v| v.as_str())
                .filter(|n| !n.is_empty())
            else {
                return (None, Some(errors));
            };
            let mut scratch = Errors::default();
            let tier = doc
                .pointer("/spec/tier")
                .and_then(|v| v.as_str())
                .and_then(|t| tier(&mut scratch, t))
                .unwrap_or(Tier::Admin);
            let priority = doc
                .pointer("/spec/priority")
                .and_then(serde_json::Value::as_i64)
                .and_then(|p| priority(&mut scratch, p))
                .unwrap_or(0);
            let subject = doc
                .pointer("/spec/subject")
                .and_then(|v| serde_json::from_value::<wire::ClusterSubject>(v.clone()).ok())
                .and_then(|s| {
                    let mut errs = Errors::default();
                    subject(&mut errs, &s).filter(|_| errs.0.is_empty())
                })
                .unwrap_or_else(everyone);
            let deny_all = |direction: &str| ClusterRule {
                name: format!("{direction} (failed closed: the policy does not compile)"),
                action: Action::Deny,
                peers: vec![Peer::Any],
                ports: Vec::new(),
            };
            let policy = ClusterNetworkPolicy {
                name: name.to_owned(),
                tier,
                priority,
                subject,
                ingress: vec![deny_all("ingress")],
                egress: vec![deny_all("egress")],
            };
            (Some(policy), Some(errors))
        }
    }
}

fn everyone() -> PodSet {
    PodSet {
        namespaces: Namespaces::Selected(LabelSelector::default()),
        pods: LabelSelector::default(),
    }
}

fn tier(errs: &mut Errors, t: &str) -> Option<Tier> {
    match t {
        "Admin" => Some(Tier::Admin),
        "Baseline" => Some(Tier::Baseline),
        other => {
            errs.push(
                "spec.tier",
                format!("{other:?} is not one of: Admin, Baseline"),
            );
            None
        }
    }
}

fn priority(errs: &mut Errors, p: i64) -> Option<u16> {
    match u16::try_from(p) {
        Ok(p) if i64::from(p) <= MAX_PRIORITY => Some(p),
        _ => {
            errs.push("spec.priority", format!("{p} is not in 0..={MAX_PRIORITY}"));
            None
        }
    }
}

fn namespaced_pod(errs: &mut Errors, at: &str, p: &wire::NamespacedPod) -> PodSet {
    PodSet {
        namespaces: Namespaces::Selected(selector(
            errs,
            &format!("{at}.namespaceSelector"),
            &p.namespace_selector,
        )),
        pods: selector(errs, &format!("{at}.podSelector"), &p.pod_selector),
    }
}

fn subject(errs: &mut Errors, s: &wire::ClusterSubject) -> Option<PodSet> {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Some(PodSet {
            namespaces: Namespaces::Selected(selector(errs, "spec.subject.namespaces", ns)),
            pods: LabelSelector::default(),
        }),
        (None, Some(p)) => Some(namespaced_pod(errs, "spec.subject.pods", p)),
        _ => {
            errs.push("spec.subject", "set exactly one of namespaces, pods");
            None
        }
    }
}

fn cluster_rules(
    errs: &mut Errors,
    at: &str,
    peers_key: &str,
    rules: &[wire::ClusterRule],
    egress: bool,
) -> Vec<ClusterRule> {
    if rules.len() > MAX_CLUSTER_ITEMS {
        errs.push(
            at,
            format!(
                "{} rules; at most {MAX_CLUSTER_ITEMS} are allowed",
                rules.len()
            ),
        );
    }
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let action = match r.action.as_str() {
            "Accept" => Action::Accept,
            "Deny" => Action::Deny,
            "Pass" => Action::Pass,
            other => {
                errs.push(
                    format!("{at}.action"),
                    format!("{other:?} is not one of: Accept, Deny, Pass"),
                );
                continue;
            }
        };
        if r.name.as_ref().is_some_and(|n| n.chars().count() > 100) {
            errs.push(format!("{at}.name"), "longer than 100 characters");
        }
        let (peers, other_key, other) = if egress {
            (&r.to, "from", &r.from)
        } else {
            (&r.from, "to", &r.to)
        };
        if other.is_some() {
            errs.push(
                format!("{at}.{other_key}"),
                format!(
                    "not allowed in {} rules",
                    if egress { "egress" } else { "ingress" }
                ),
            );
        }
        let peers = match peers.as_deref() {
            None | Some([]) => {
                errs.push(format!("{at}.{peers_key}"), "required (at least one peer)");
                continue;
            }
            Some(p) if p.len() > MAX_CLUSTER_ITEMS => {
                errs.push(
                    format!("{at}.{peers_key}"),
                    format!("{} peers; at most {MAX_CLUSTER_ITEMS}", p.len()),
                );
                continue;
            }
            Some(p) => p
                .iter()
                .enumerate()
                .filter_map(|(j, p)| {
                    cluster_peer(errs, &format!("{at}.{peers_key}[{j}]"), p, action, egress)
                })
                .flatten()
                .collect(),
        };
        let ports = match r.protocols.as_deref() {
            None => Vec::new(),
            Some([]) => {
                errs.push(
                    format!("{at}.protocols"),
                    "empty; omit it to match all traffic",
                );
                continue;
            }
            Some(p) => p
                .iter()
                .enumerate()
                .filter_map(|(j, p)| cluster_protocol(errs, &format!("{at}.protocols[{j}]"), p))
                .collect(),
        };
        out.push(ClusterRule {
            name: r
                .name
                .clone()
                .unwrap_or_else(|| at.trim_start_matches("spec.").to_owned()),
            action,
            peers,
            ports,
        });
    }
    out
}

/// A peer with no field this version knows fails closed: an Accept rule matches nothing
/// through it, a Deny or Pass rule everything (network-policy-api's rule).
fn cluster_peer(
    errs: &mut Errors,
    at: &str,
    p: &wire::ClusterPeer,
    action: Action,
    egress: bool,
) -> Option<Vec<Peer>> {
    let fail_closed = || match action {
        Action::Accept => Peer::None,
        Action::Deny | Action::Pass => Peer::Any,
    };
    let set = [
        p.namespaces.is_some(),
        p.pods.is_some(),
        p.nodes.is_some(),
        p.networks.is_some(),
        p.domain_names.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set > 1 {
        errs.push(
            at,
            "set exactly one of namespaces, pods, nodes, networks, domainNames",
        );
        return None;
    }
    if !egress && (p.nodes.is_some() || p.networks.is_some() || p.domain_names.is_some()) {
        errs.push(at, "ingress peers are namespaces or pods");
        return None;
    }
    if let Some(ns) = &p.namespaces {
        return Some(vec![Peer::Pods(PodSet {
            namespaces: Namespaces::Selected(selector(errs, &format!("{at}.namespaces"), ns)),
            pods: LabelSelector::default(),
        })]);
    }
    if let Some(pods) = &p.pods {
        return Some(vec![Peer::Pods(namespaced_pod(
            errs,
            &format!("{at}.pods"),
            pods,
        ))]);
    }
    if let Some(nodes) = &p.nodes {
        return Some(vec![Peer::Nodes(selector(
            errs,
            &format!("{at}.nodes"),
            nodes,
        ))]);
    }
    if let Some(networks) = &p.networks {
        if networks.is_empty() || networks.len() > MAX_CLUSTER_ITEMS {
            errs.push(
                format!("{at}.networks"),
                format!("1 to {MAX_CLUSTER_ITEMS} CIDRs"),
            );
            return None;
        }
        // A rule's peers are ORed: several CIDRs are one peer each.
        return Some(
            networks
                .iter()
                .enumerate()
                .filter_map(|(i, n)| cidr(errs, &format!("{at}.networks[{i}]"), n))
                .map(|net| {
                    Peer::Block(Block {
                        net,
                        except: Vec::new(),
                    })
                })
                .collect(),
        );
    }
    // domainNames (not supported) or a field of a newer API version.
    Some(vec![fail_closed()])
}

fn cluster_protocol(errs: &mut Errors, at: &str, p: &wire::ClusterProtocol) -> Option<PortMatch> {
    let set = [
        p.tcp.is_some(),
        p.udp.is_some(),
        p.sctp.is_some(),
        p.destination_named_port.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if set != 1 {
        errs.push(
            at,
            "set exactly one of tcp, udp, sctp, destinationNamedPort",
        );
        return None;
    }
    if let Some(name) = &p.destination_named_port {
        let name = port_name(errs, &format!("{at}.destinationNamedPort"), name)?;
        return Some(PortMatch::Named {
            protocol: None,
            name,
        });
    }
    let (protocol, key, m) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(m), _, _) => (Protocol::Tcp, "tcp", m),
        (_, Some(m), _) => (Protocol::Udp, "udp", m),
        (_, _, Some(m)) => (Protocol::Sctp, "sctp", m),
        _ => return None,
    };
    let at = format!("{at}.{key}.destinationPort");
    let Some(port) = &m.destination_port else {
        errs.push(at, "required");
        return None;
    };
    match (port.number, &port.range) {
        (Some(n), None) => {
            let n = port_number(errs, &format!("{at}.number"), n)?;
            Some(PortMatch::Numbers {
                protocol,
                first: n,
                last: n,
            })
        }
        (None, Some(r)) => {
            let first = port_number(errs, &format!("{at}.range.start"), r.start)?;
            let last = port_number(errs, &format!("{at}.range.end"), r.end)?;
            if last < first {
                errs.push(
                    format!("{at}.range.end"),
                    format!("{last} is below start {first}"),
                );
                return None;
            }
            Some(PortMatch::Numbers {
                protocol,
                first,
                last,
            })
        }
        _ => {
            errs.push(at, "set exactly one of number, range");
            None
        }
    }
}
