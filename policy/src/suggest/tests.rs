#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;

fn workload(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        ips: vec![ip.parse().unwrap()],
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        in_mesh: true,
    }
}

/// shop: web-1, web-2 (one group), client; front: ui; shop/bare without labels.
fn directory() -> Directory {
    Directory::new([
        workload(
            "shop",
            "web-1",
            "10.0.1.1",
            &[("app", "web"), ("pod-template-hash", "aaa")],
        ),
        workload(
            "shop",
            "web-2",
            "10.0.1.2",
            &[("app", "web"), ("pod-template-hash", "bbb")],
        ),
        workload("shop", "client", "10.0.1.3", &[("app", "client")]),
        workload("front", "ui", "10.0.2.1", &[("app", "ui")]),
        workload("shop", "bare", "10.0.1.9", &[("pod-template-hash", "ccc")]),
    ])
}

fn line(
    src_ip: &str,
    src_id: Option<&str>,
    dst_ip: &str,
    port: u16,
    verdict: &str,
    time: &str,
) -> String {
    json!({
        "time": time, "direction": "inbound",
        "src": {"workload": null, "namespace": null, "identity": src_id, "ip": src_ip, "port": 40000},
        "dst": {"workload": null, "namespace": null, "identity": null, "ip": dst_ip, "port": port},
        "service": null, "verdict": verdict, "policy": null, "reason": null,
        "bytes_sent": 1, "bytes_received": 1, "duration_ms": 1,
    })
    .to_string()
}

const T: &str = "2025-01-02T03:04:05.678Z";

fn flows(lines: &[String]) -> Vec<Flow> {
    let (flows, errors) = parse_flow_log(&lines.join("\n"));
    assert!(errors.is_empty(), "{errors:?}");
    flows
}

fn run(lines: &[String], options: &SuggestOptions) -> Suggestion {
    let dir = directory();
    let mut s = Suggester::new(&dir, options);
    for f in flows(lines) {
        s.add(&f);
    }
    s.finish()
}

fn find<'a>(docs: &'a [Value], kind: &str, ns: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind && d["metadata"]["namespace"] == ns && d["metadata"]["name"] == name
        })
        .unwrap_or_else(|| panic!("no {kind} {ns}/{name} in {docs:#?}"))
}

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";
const UI: &str = "spiffe://cluster.local/ns/front/sa/ui";

#[test]
fn groups_replicas_and_merges_sources_of_the_same_ports() {
    let s = run(
        &[
            line("10.0.1.3", Some(CLIENT), "10.0.1.1", 8080, "allow", T),
            line("10.0.1.3", Some(CLIENT), "10.0.1.2", 8080, "allow", T),
            line("10.0.1.3", Some(CLIENT), "10.0.1.2", 9090, "allow", T),
            // The same connection logged on the other node too.
            line("10.0.1.3", Some(CLIENT), "10.0.1.1", 8080, "allow", T),
        ],
        &SuggestOptions {
            kinds: Kinds::Network,
            ..Default::default()
        },
    );
    assert_eq!(s.documents.len(), 1, "{:#?}", s.documents);
    let np = find(
        &s.documents,
        "NetworkPolicy",
        "shop",
        "web-ingress-suggested",
    );
    assert_eq!(np["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(
        np["spec"],
        json!({
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 9090}],
            }],
        })
    );
    assert_eq!(s.stats.flows, 4);
    assert_eq!(s.stats.admitted, 4);
}

#[test]
fn cross_namespace_source_gets_a_namespace_selector_and_outsiders_an_ip_block() {
    let s = run(
        &[
            line("10.0.2.1", Some(UI), "10.0.1.1", 8080, "allow", T),
            line("192.0.2.7", None, "10.0.1.1", 8080, "allow", T),
            line("10.0.1.3", Some(CLIENT), "10.0.1.1", 9090, "allow", T),
        ],
        &SuggestOptions::default(),
    );
    let np = find(
        &s.documents,
        "NetworkPolicy",
        "shop",
        "web-ingress-suggested",
    );
    assert_eq!(
        np["spec"]["ingress"],
        json!([
            {
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "front"}},
                     "podSelector": {"matchLabels": {"app": "ui"}}},
                    {"ipBlock": {"cidr": "192.0.2.7/32"}},
                ],
                "ports": [{"protocol": "TCP", "port": 8080}],
            },
            {
                "from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                "ports": [{"protocol": "TCP", "port": 9090}],
            },
        ])
    );
    let ap = find(
        &s.documents,
        "AuthorizationPolicy",
        "shop",
        "web-ingress-suggested",
    );
    assert_eq!(ap["apiVersion"], "security.nodemesh.io/v1");
    assert_eq!(
        ap["spec"],
        json!({
            "action": "ALLOW",
            "selector": {"matchLabels": {"app": "web"}},
            "rules": [
                {"from": [{"source": {"principals": ["cluster.local/ns/front/sa/ui"]}},
                          {"source": {"ipBlocks": ["192.0.2.7"]}}],
                 "to": [{"operation": {"ports": ["8080"]}}]},
                {"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}],
                 "to": [{"operation": {"ports": ["9090"]}}]},
            ],
        })
    );
    assert!(ap["metadata"].get("annotations").is_none(), "{ap}");
}

#[test]
fn dry_run_marks_authorization_policies_only() {
    let options = SuggestOptions {
        dry_run: true,
        ..Default::default()
    };
    let s = run(
        &[line("10.0.1.3", Some(CLIENT), "10.0.1.1", 8080, "allow", T)],
        &options,
    );
    let ap = find(
        &s.documents,
        "AuthorizationPolicy",
        "shop",
        "web-ingress-suggested",
    );
    assert_eq!(
        ap["metadata"]["annotations"],
        json!({"nodemesh.io/dry-run": "true"})
    );
    let np = find(
        &s.documents,
        "NetworkPolicy",
        "shop",
        "web-ingress-suggested",
    );
    assert!(np["metadata"].get("annotations").is_none(), "{np}");
}

#[test]
fn window_keeps_since_inclusive_until_exclusive() {
    let lines = [
        line(
            "10.0.1.3",
            Some(CLIENT),
            "10.0.1.1",
            1001,
            "allow",
            "2025-01-02T02:59:59.999Z",
        ),
        line(
            "10.0.1.3",
            Some(CLIENT),
            "10.0.1.1",
            1002,
            "allow",
            "2025-01-02T03:00:00.000Z",
        ),
        line(
            "10.0.1.3",
            Some(CLIENT),
            "10.0.1.1",
            1003,
            "allow",
            "2025-01-02T03:59:59.999Z",
        ),
        line(
            "10.0.1.3",
            Some(CLIENT),
            "10.0.1.1",
            1004,
            "allow",
            "2025-01-02T04:00:00.000Z",
        ),
    ];
    let options = SuggestOptions {
        kinds: Kinds::Network,
        since: Some(parse_time("2025-01-02T03:00:00Z").unwrap()),
        // The same instant as 04:00Z, written with an offset.
        until: Some(parse_time("2025-01-02T05:00:00+01:00").unwrap()),
        ..Default::default()
    };
    let s = run(&lines, &options);
    let np = find(
        &s.documents,
        "NetworkPolicy",
        "shop",
        "web-ingress-suggested",
    );
    assert_eq!(
        np["spec"]["ingress"][0]["ports"],
        json!([{"protocol": "TCP", "port": 1002}, {"protocol": "TCP", "port": 1003}])
    );
    assert_eq!((s.stats.admitted, s.stats.outside_window), (2, 2));
    let header = s.header(&options, 0).join("\n");
    assert!(
        header
            .contains("window: from 2025-01-02T03:00:00Z to 2025-01-02T04:00:00Z (outside it: 2)"),
        "{header}"
    );
}

#[test]
fn denied_flows_count_only_when_asked_and_refused_never() {
    let lines = [
        line("10.0.1.3", Some(CLIENT), "10.0.1.1", 8080, "deny", T),
        line("10.0.1.3", Some(CLIENT), "10.0.1.1", 9090, "refused", T),
    ];
    let s = run(&lines, &SuggestOptions::default());
    assert!(s.documents.is_empty(), "{:#?}", s.documents);
    assert_eq!(
        (s.stats.denied, s.stats.refused, s.stats.admitted),
        (1, 1, 0)
    );
    let s = run(
        &lines,
        &SuggestOptions {
            include_denied: true,
            kinds: Kinds::Network,
            ..Default::default()
        },
    );
    let np = find(
        &s.documents,
        "NetworkPolicy",
        "shop",
        "web-ingress-suggested",
    );
    assert_eq!(
        np["spec"]["ingress"][0]["ports"],
        json!([{"protocol": "TCP", "port": 8080}])
    );
    assert_eq!(
        (s.stats.denied, s.stats.refused, s.stats.admitted),
        (0, 1, 1)
    );
}

#[test]
fn malformed_lines_are_counted_with_their_number() {
    let good = line("10.0.1.3", Some(CLIENT), "10.0.1.1", 8080, "allow", T);
    let text = [
        good.as_str(),
        "",
        "{not json",
        &good.replace(T, "yesterday"),
        &good.replace("\"allow\"", "\"maybe\""),
        r#"{"verdict":"allow"}"#,
        good.as_str(),
    ]
    .join("\n");
    let (flows, errors) = parse_flow_log(&text);
    assert_eq!(flows.len(), 2);
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [3, 4, 5, 6], "{errors:?}");
    assert!(
        errors[1]
            .message
            .starts_with("time: \"yesterday\" is not an RFC 3339 time"),
        "{errors:?}"
    );
    assert!(
        errors[2].message.contains("unknown variant `maybe`"),
        "{errors:?}"
    );
    assert!(
        errors[3]
            .to_string()
            .starts_with("line 6: missing field `time`"),
        "{errors:?}"
    );
}

#[test]
fn unlabelled_workloads_are_warned_about_and_never_selected_alone() {
    let s = run(
        &[
            line("10.0.1.3", Some(CLIENT), "10.0.1.9", 8080, "allow", T),
            line("10.0.1.9", None, "10.0.1.1", 8080, "allow", T),
        ],
        &SuggestOptions {
            kinds: Kinds::Network,
            ..Default::default()
        },
    );
    // No policy for shop/bare; as a source it is named by its address.
    assert_eq!(s.documents.len(), 1, "{:#?}", s.documents);
    let np = find(
        &s.documents,
        "NetworkPolicy",
        "shop",
        "web-ingress-suggested",
    );
    assert_eq!(
        np["spec"]["ingress"][0]["from"],
        json!([{"ipBlock": {"cidr": "10.0.1.9/32"}}])
    );
    assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
    assert!(
        s.warnings[0].starts_with("shop/bare: no labels besides pod-unique ones"),
        "{:?}",
        s.warnings
    );
    assert!(
        s.warnings[0].contains("(destination: no policy selects it)"),
        "{:?}",
        s.warnings
    );
    assert!(
        s.warnings[1].contains("(source: peers name it by address)"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn plaintext_source_outside_the_mesh_is_an_address_in_authorization_policies() {
    let mut dir = directory();
    dir = Directory::new(dir.all().cloned().map(|mut w| {
        w.in_mesh = w.name != "client";
        w
    }));
    let options = SuggestOptions {
        kinds: Kinds::Authorization,
        ..Default::default()
    };
    let f = flows(&[line("10.0.1.3", Some(CLIENT), "10.0.1.1", 8080, "allow", T)]);
    let docs = suggest(&f, &dir, &options);
    assert_eq!(docs.len(), 1);
    assert_eq!(
        docs[0]["spec"]["rules"][0]["from"],
        json!([{"source": {"ipBlocks": ["10.0.1.3"]}}])
    );
}

#[test]
fn egress_and_default_deny() {
    let options = SuggestOptions {
        kinds: Kinds::Network,
        egress: true,
        default_deny: true,
        ..Default::default()
    };
    let s = run(
        &[
            line("10.0.2.1", Some(UI), "10.0.1.1", 8080, "allow", T),
            line("10.0.2.1", Some(UI), "203.0.113.5", 443, "passthrough", T),
        ],
        &options,
    );
    let names: Vec<(String, String)> = s
        .documents
        .iter()
        .map(|d| {
            (
                d["metadata"]["namespace"].as_str().unwrap().to_owned(),
                d["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let n = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        names,
        [
            n("shop", "web-ingress-suggested"),
            n("front", "ui-egress-suggested"),
            n("front", "default-deny-suggested"),
            n("shop", "default-deny-suggested"),
        ]
    );
    let eg = &s.documents[1]["spec"];
    assert_eq!(eg["policyTypes"], json!(["Egress"]));
    assert_eq!(
        eg["egress"][0],
        json!({"to": [{"ipBlock": {"cidr": "203.0.113.5/32"}}], "ports": [{"protocol": "TCP", "port": 443}]})
    );
    assert_eq!(
        eg["egress"][1]["to"][0],
        json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
               "podSelector": {"matchLabels": {"app": "web"}}})
    );
    assert_eq!(
        eg["egress"][2]["ports"],
        json!([{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}])
    );
    assert_eq!(
        s.documents[3]["spec"],
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
    );
    assert_eq!(s.stats.outside_destination, 1);
}

#[test]
fn selector_excludes_wider_groups_and_names_stay_unique() {
    let dir = Directory::new([
        workload("shop", "web-1", "10.0.1.1", &[("app", "web")]),
        workload(
            "shop",
            "canary-1",
            "10.0.1.2",
            &[("app", "web"), ("track", "canary")],
        ),
        workload("shop", "client", "10.0.1.3", &[("app", "client")]),
    ]);
    let f = flows(&[
        line("10.0.1.3", Some(CLIENT), "10.0.1.1", 8080, "allow", T),
        line("10.0.1.3", Some(CLIENT), "10.0.1.2", 9090, "allow", T),
    ]);
    let options = SuggestOptions {
        kinds: Kinds::Network,
        ..Default::default()
    };
    let docs = suggest(&f, &dir, &options);
    assert_eq!(docs.len(), 2);
    let web = Group {
        namespace: "shop".into(),
        labels: [("app".into(), "web".into())].into(),
    };
    let canary = Group {
        namespace: "shop".into(),
        labels: [
            ("app".into(), "web".into()),
            ("track".into(), "canary".into()),
        ]
        .into(),
    };
    let web_name = format!("web-{}-ingress-suggested", web.digest());
    let np = find(&docs, "NetworkPolicy", "shop", &web_name);
    assert_eq!(
        np["spec"]["podSelector"],
        json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "track", "operator": "DoesNotExist"}]})
    );
    let np = find(
        &docs,
        "NetworkPolicy",
        "shop",
        &format!("web-{}-ingress-suggested", canary.digest()),
    );
    assert_eq!(
        np["spec"]["podSelector"],
        json!({"matchLabels": {"app": "web", "track": "canary"}})
    );
    assert_ne!(web.digest(), canary.digest());
}

#[test]
fn output_is_deterministic_yaml() {
    let lines = [
        line("10.0.2.1", Some(UI), "10.0.1.1", 8080, "allow", T),
        line("10.0.1.3", Some(CLIENT), "10.0.1.1", 8080, "allow", T),
        line(
            "10.0.1.1",
            Some("spiffe://cluster.local/ns/shop/sa/web"),
            "10.0.2.1",
            3000,
            "allow",
            T,
        ),
    ];
    let options = SuggestOptions {
        dry_run: true,
        ..Default::default()
    };
    let a = run(&lines, &options);
    let mut reversed = lines.to_vec();
    reversed.reverse();
    let b = run(&reversed, &options);
    assert_eq!(a, b);
    let yaml = to_yaml(&a.header(&options, 3), &a.documents).unwrap();
    assert!(
        yaml.starts_with("# Suggested by `nodemesh policy suggest`"),
        "{yaml}"
    );
    assert!(
        yaml.contains("# flows read: 3, counted: 3, skipped lines: 3\n"),
        "{yaml}"
    );
    assert_eq!(yaml.matches("\n---\n").count(), 4, "{yaml}");
    // Strings that look like other scalars stay strings.
    assert!(
        yaml.contains("nodemesh.io/dry-run: \"true\"")
            || yaml.contains("nodemesh.io/dry-run: 'true'"),
        "{yaml}"
    );
    assert!(
        yaml.contains("- \"8080\"") || yaml.contains("- '8080'"),
        "{yaml}"
    );
}

#[test]
fn suggested_authorization_policies_compile_and_decide_as_observed() {
    use crate::{Connection, Destination, EngineOptions, Peer, PolicySet, Verdict};

    let options = SuggestOptions {
        kinds: Kinds::Authorization,
        ..Default::default()
    };
    let s = run(
        &[
            line("10.0.2.1", Some(UI), "10.0.1.1", 8080, "allow", T),
            line("192.0.2.7", None, "10.0.1.1", 9090, "allow", T),
        ],
        &options,
    );
    let yaml = to_yaml(&s.header(&options, 0), &s.documents).unwrap();
    let files = [("suggested.yaml".to_owned(), yaml)];
    assert_eq!(crate::lint::lint_texts(&files), [], "{}", files[0].1);
    let set = PolicySet::new(
        crate::load::load_texts(&files).unwrap(),
        EngineOptions::default(),
    );
    let labels: std::collections::BTreeMap<String, String> = [("app".into(), "web".into())].into();
    let decide = |principal: Option<&str>, ip: &str, port: u16| {
        let conn = Connection {
            source: Peer {
                principal,
                namespace: principal.and_then(|p| p.split('/').nth(2)),
                ip: Some(ip.parse().unwrap()),
            },
            destination: Destination {
                namespace: "shop",
                labels: &labels,
                ip: Some("10.0.1.1".parse().unwrap()),
                port,
            },
        };
        set.decide_connection(&conn).verdict
    };
    let ui = Some("cluster.local/ns/front/sa/ui");
    // Exactly the observed flows pass.
    assert_eq!(decide(ui, "10.0.2.1", 8080), Verdict::Allow);
    assert_eq!(decide(None, "192.0.2.7", 9090), Verdict::Allow);
    assert_eq!(decide(ui, "10.0.2.1", 9090), Verdict::Deny);
    assert_eq!(decide(None, "192.0.2.7", 8080), Verdict::Deny);
    assert_eq!(
        decide(Some("cluster.local/ns/shop/sa/client"), "10.0.1.3", 8080),
        Verdict::Deny
    );
}
