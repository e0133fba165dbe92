//! Lint of NetworkPolicy and ClusterNetworkPolicy documents in policy files: compile errors, and
//! parts that can never match (rules a policy type ignores, selectors that contradict
//! themselves, ClusterNetworkPolicy rules behind a rule that matches everything).

use super::compile::{compile_cluster_network_policy, compile_network_policy};
use super::model::{ClusterRule, LabelSelector, Namespaces, Peer, PodSet, Requirement, Rule};
use super::wire::{CLUSTER_NETWORK_POLICY_KIND, NETWORK_POLICY_KIND};
use crate::load::{Problem, ProblemKind, Subject, split_documents};
use crate::policy::PolicyRef;

/// The document's `kind`, read from YAML (YAML 1.2 booleans, as the config reader).
fn document(text: &str) -> Option<serde_json::Value> {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).ok()
}

fn kind(doc: &serde_json::Value) -> Option<&str> {
    doc.get("kind").and_then(|k| k.as_str())
}

/// Whether a document's text is a NetworkPolicy or a ClusterNetworkPolicy.
pub(crate) fn is_network_policy(text: &str) -> bool {
    document(text).is_some_and(|d| {
        matches!(
            kind(&d),
            Some(NETWORK_POLICY_KIND | CLUSTER_NETWORK_POLICY_KIND)
        )
    })
}

/// Every problem of the NetworkPolicy and ClusterNetworkPolicy documents of one file.
pub(crate) fn lint_file(file: &str, text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (index, (line, piece)) in split_documents(text).into_iter().enumerate() {
        let padded = format!("{}{piece}", "\n".repeat(line));
        let Some(doc) = document(&padded) else {
            continue;
        };
        let text_at = |ptr: &str| doc.pointer(ptr).and_then(|v| v.as_str()).map(str::to_owned);
        let (name, namespace) = (text_at("/metadata/name"), text_at("/metadata/namespace"));
        let mut push = |subject: &Subject, field: String, kind: ProblemKind| {
            problems.push(Problem {
                file: file.to_owned(),
                subject: subject.clone(),
                field,
                kind,
            });
        };
        match kind(&doc) {
            Some(NETWORK_POLICY_KIND) => {
                let subject = match (namespace, name) {
                    (Some(ns), Some(n)) => Subject::Policy(PolicyRef::new(ns, n)),
                    _ => Subject::Document(index + 1),
                };
                match compile_network_policy(&doc) {
                    Err(errors) => errors
                        .into_iter()
                        .for_each(|e| push(&subject, e.field, ProblemKind::Network(e.reason))),
                    Ok(p) => {
                        let ignored = |key: &str, kept: bool| {
                            (!kept && doc.pointer(&format!("/spec/{key}")).is_some()).then(|| {
                                format!("ignored: spec.policyTypes does not list {}", capital(key))
                            })
                        };
                        for (key, kept) in [
                            ("ingress", p.ingress.is_some()),
                            ("egress", p.egress.is_some()),
                        ] {
                            if let Some(why) = ignored(key, kept) {
                                push(
                                    &subject,
                                    format!("spec.{key}"),
                                    ProblemKind::NetworkNeverMatches(why),
                                );
                            }
                        }
                        if let Some(why) = contradiction(&p.pod_selector) {
                            push(
                                &subject,
                                "spec.podSelector".into(),
                                ProblemKind::NetworkNeverMatches(why),
                            );
                        }
                        for (key, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
                            for (i, r) in rules.iter().flatten().enumerate() {
                                for (field, why) in rule_contradictions(r) {
                                    push(
                                        &subject,
                                        format!("spec.{key}[{i}]{field}"),
                                        ProblemKind::NetworkNeverMatches(why),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            Some(CLUSTER_NETWORK_POLICY_KIND) => {
                let subject = name.map_or(Subject::Document(index + 1), Subject::Cluster);
                match compile_cluster_network_policy(&doc) {
                    Err(errors) => errors
                        .into_iter()
                        .for_each(|e| push(&subject, e.field, ProblemKind::Network(e.reason))),
                    Ok(p) => {
                        if let Some(why) = pod_set_contradiction(&p.subject) {
                            push(
                                &subject,
                                "spec.subject".into(),
                                ProblemKind::NetworkNeverMatches(why),
                            );
                        }
                        for (key, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
                            for (field, why) in unreachable(rules) {
                                push(
                                    &subject,
                                    format!("spec.{key}{field}"),
                                    ProblemKind::NetworkNeverMatches(why),
                                );
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    problems
}

fn capital(key: &str) -> &'static str {
    if key == "ingress" {
        "Ingress"
    } else {
        "Egress"
    }
}

/// Why a selector can never match, if it cannot: two requirements on one key that no value
/// satisfies together.
pub fn contradiction(s: &LabelSelector) -> Option<String> {
    for (i, a) in s.requirements.iter().enumerate() {
        for b in &s.requirements[i + 1..] {
            let clash = match (a, b) {
                (Requirement::In(k, vs), Requirement::In(k2, ws)) if k == k2 => {
                    !vs.iter().any(|v| ws.contains(v))
                }
                (Requirement::In(k, vs), Requirement::NotIn(k2, ws))
                | (Requirement::NotIn(k2, ws), Requirement::In(k, vs))
                    if k == k2 =>
                {
                    vs.iter().all(|v| ws.contains(v))
                }
                (Requirement::In(k, _) | Requirement::Exists(k), Requirement::DoesNotExist(k2))
                | (Requirement::DoesNotExist(k2), Requirement::In(k, _) | Requirement::Exists(k)) => {
                    k == k2
                }
                _ => false,
            };
            if clash {
                return Some(format!(
                    "selector {s} can never match (contradicting requirements)"
                ));
            }
        }
    }
    None
}

fn pod_set_contradiction(p: &PodSet) -> Option<String> {
    let ns = match &p.namespaces {
        Namespaces::Selected(s) => contradiction(s),
        Namespaces::Named(_) => None,
    };
    ns.or_else(|| contradiction(&p.pods))
}

fn rule_contradictions(r: &Rule) -> Vec<(String, String)> {
    r.peers
        .iter()
        .enumerate()
        .filter_map(|(j, peer)| match peer {
            Peer::Pods(set) => pod_set_contradiction(set).map(|why| (format!(".peers[{j}]"), why)),
            _ => None,
        })
        .collect()
}

/// Whether every flow that `peer` matches is matched by `earlier` too.
fn covers(earlier: &Peer, peer: &Peer) -> bool {
    let all_pods = |p: &Peer| {
        matches!(p, Peer::Pods(set) if set.pods.is_everything()
            && matches!(&set.namespaces, Namespaces::Selected(s) if s.is_everything()))
    };
    match earlier {
        Peer::Any => true,
        Peer::Block(b) => {
            b.net.prefix_len() == 0 && b.except.is_empty() && !matches!(peer, Peer::Any)
        }
        _ if all_pods(earlier) => matches!(peer, Peer::Pods(_)),
        _ => matches!(peer, Peer::None),
    }
}

/// ClusterNetworkPolicy rules that an earlier rule without ports shadows for every peer (first
/// match wins, so they are never reached).
fn unreachable(rules: &[ClusterRule]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (j, r) in rules.iter().enumerate() {
        let shadow = rules[..j].iter().find(|e| {
            e.ports.is_empty() && r.peers.iter().all(|p| e.peers.iter().any(|q| covers(q, p)))
        });
        if let Some(e) = shadow {
            out.push((
                format!("[{j}]"),
                format!(
                    "rule {} is never reached: rule {} before it matches all its traffic",
                    r.name, e.name
                ),
            ));
        }
    }
    out
}
