//! The edges of a [`Suggester`](super::Suggester) as Kubernetes objects (JSON values), and those
//! as one multi-document YAML.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::workloads::{Group, Workloads, group_names};
use super::{AuthSource, Edges, NetPeer, SuggestOptions};

/// The label every suggested object carries (`kubectl delete networkpolicy,authorizationpolicy
/// -l nodemesh.io/suggested=true` removes them).
pub const SUGGESTED_LABEL: &str = "nodemesh.io/suggested";
/// The label Kubernetes gives every namespace, its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Everything to write, allows first and default-denies last, each part sorted by namespace
/// and name.
pub(super) fn documents(
    directory: &impl Workloads,
    options: &SuggestOptions,
    ingress: &Edges<NetPeer>,
    egress: &Edges<NetPeer>,
    authz: &Edges<AuthSource>,
    warnings: &mut Vec<String>,
) -> Vec<Value> {
    let all_groups: BTreeSet<Group> = directory.all().filter_map(Group::of).collect();
    let names = group_names(ingress.keys().chain(egress.keys()).chain(authz.keys()));
    let name = |g: &Group| names.get(g).cloned().unwrap_or_else(|| g.base_name());
    let selector = |g: &Group| selector(g, &all_groups);
    let network = options.kinds.network();
    let mut parts: [Vec<(String, String, Value)>; 4] = Default::default();
    if network {
        for (g, peers) in ingress {
            let rules: Vec<Value> = by_ports(peers)
                .into_iter()
                .map(|(ports, peers)| {
                    let from: Vec<Value> = peers
                        .iter()
                        .map(|p| net_peer(p, &g.namespace, &selector))
                        .collect();
                    json!({"from": from, "ports": net_ports(&ports, "TCP")})
                })
                .collect();
            let spec =
                json!({"podSelector": selector(g), "policyTypes": ["Ingress"], "ingress": rules});
            let n = format!("{}-ingress-suggested", name(g));
            parts[0].push(network_policy(&n, &g.namespace, spec));
        }
    }
    if network && options.egress {
        for (g, peers) in egress {
            let mut rules: Vec<Value> = by_ports(peers)
                .into_iter()
                .map(|(ports, peers)| {
                    let to: Vec<Value> = peers
                        .iter()
                        .map(|p| net_peer(p, &g.namespace, &selector))
                        .collect();
                    json!({"to": to, "ports": net_ports(&ports, "TCP")})
                })
                .collect();
            if !options.no_egress_dns {
                rules.push(json!({
                    "to": [{
                        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                }));
            }
            let spec =
                json!({"podSelector": selector(g), "policyTypes": ["Egress"], "egress": rules});
            let n = format!("{}-egress-suggested", name(g));
            parts[1].push(network_policy(&n, &g.namespace, spec));
        }
    }
    if options.kinds.authorization() {
        for (g, sources) in authz {
            let wider: Vec<&Group> = all_groups
                .iter()
                .filter(|h| *h != g && h.namespace == g.namespace && contains(h, g))
                .collect();
            for h in wider {
                warnings.push(format!(
                    "{}: the AuthorizationPolicy of group {} also selects the workloads labelled {} (an AuthorizationPolicy selector has matchLabels only)",
                    g.namespace,
                    name(g),
                    labels_text(h)
                ));
            }
            let rules: Vec<Value> = by_ports(sources)
                .into_iter()
                .map(|(ports, sources)| authz_rule(&ports, &sources))
                .collect();
            let mut metadata = metadata(&format!("{}-ingress-suggested", name(g)), &g.namespace);
            if options.dry_run {
                metadata["annotations"] = json!({"nodemesh.io/dry-run": "true"});
            }
            let doc = json!({
                "apiVersion": "security.nodemesh.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": metadata,
                "spec": {"action": "ALLOW", "selector": {"matchLabels": g.labels}, "rules": rules},
            });
            parts[2].push((g.namespace.clone(), name(g), doc));
        }
    }
    if network && options.default_deny {
        let mut namespaces: BTreeSet<&str> = ingress.keys().map(|g| g.namespace.as_str()).collect();
        let mut types = vec!["Ingress"];
        if options.egress {
            namespaces.extend(egress.keys().map(|g| g.namespace.as_str()));
            types.push("Egress");
        }
        for ns in namespaces {
            let spec = json!({"podSelector": {}, "policyTypes": types});
            parts[3].push(network_policy("default-deny-suggested", ns, spec));
        }
    }
    warnings.sort();
    warnings.dedup();
    parts
        .into_iter()
        .flat_map(|mut part| {
            part.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
            part.into_iter().map(|(_, _, doc)| doc)
        })
        .collect()
}

/// Peers grouped by the exact set of ports they used (one rule each).
fn by_ports<P: Clone + Ord>(peers: &BTreeMap<P, BTreeSet<u16>>) -> BTreeMap<BTreeSet<u16>, Vec<P>> {
    let mut out: BTreeMap<BTreeSet<u16>, Vec<P>> = BTreeMap::new();
    for (peer, ports) in peers {
        out.entry(ports.clone()).or_default().push(peer.clone());
    }
    out
}

fn metadata(name: &str, namespace: &str) -> Value {
    json!({"name": name, "namespace": namespace, "labels": {SUGGESTED_LABEL: "true"}})
}

fn network_policy(name: &str, namespace: &str, spec: Value) -> (String, String, Value) {
    let doc = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(name, namespace),
        "spec": spec,
    });
    (namespace.to_owned(), name.to_owned(), doc)
}

/// Whether `wider`'s labels include every label of `g`.
fn contains(wider: &Group, g: &Group) -> bool {
    g.labels.iter().all(|(k, v)| wider.labels.get(k) == Some(v))
}

fn labels_text(g: &Group) -> String {
    let pairs: Vec<String> = g.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

/// The pod selector of `g`: its labels, and `DoesNotExist` for a label of every other group
/// of its namespace whose labels include all of `g`'s, so that it picks `g`'s workloads only.
fn selector(g: &Group, all: &BTreeSet<Group>) -> Value {
    let excluded: BTreeSet<&str> = all
        .iter()
        .filter(|h| *h != g && h.namespace == g.namespace && contains(h, g))
        .filter_map(|h| h.labels.keys().find(|k| !g.labels.contains_key(*k)))
        .map(String::as_str)
        .collect();
    let mut sel = json!({"matchLabels": g.labels});
    if !excluded.is_empty() {
        let exprs: Vec<Value> = excluded
            .into_iter()
            .map(|k| json!({"key": k, "operator": "DoesNotExist"}))
            .collect();
        sel["matchExpressions"] = Value::Array(exprs);
    }
    sel
}

fn cidr(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn net_peer(p: &NetPeer, own: &str, selector: &impl Fn(&Group) -> Value) -> Value {
    match p {
        NetPeer::Group(g) if g.namespace == own => json!({"podSelector": selector(g)}),
        NetPeer::Group(g) => json!({
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: g.namespace}},
            "podSelector": selector(g),
        }),
        NetPeer::Address(ip) => json!({"ipBlock": {"cidr": cidr(*ip)}}),
    }
}

fn net_ports(ports: &BTreeSet<u16>, protocol: &str) -> Vec<Value> {
    ports
        .iter()
        .map(|p| json!({"protocol": protocol, "port": p}))
        .collect()
}

fn authz_rule(ports: &BTreeSet<u16>, sources: &[AuthSource]) -> Value {
    let mut principals = Vec::new();
    let mut ips = Vec::new();
    for s in sources {
        match s {
            AuthSource::Principal(p) => principals.push(p.clone()),
            AuthSource::Address(ip) => ips.push(ip.to_string()),
        }
    }
    let mut from = Vec::new();
    if !principals.is_empty() {
        from.push(json!({"source": {"principals": principals}}));
    }
    if !ips.is_empty() {
        from.push(json!({"source": {"ipBlocks": ips}}));
    }
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    json!({"from": from, "to": [{"operation": {"ports": ports}}]})
}

/// One YAML stream for `kubectl apply -f`: `header` as `#` comment lines, then every document
/// after a `---`.
pub fn to_yaml(
    header: &[String],
    documents: &[Value],
) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for line in header {
        let _ = writeln!(out, "# {line}");
    }
    for doc in documents {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(doc)?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}
