//! Decision time with 10, 1,000 and 10,000 policies in the mesh.
//!
//! Every namespace holds 10 policies (7 ALLOW, 2 DENY, 1 AUDIT) and the root namespace 2 DENY
//! policies, so the destination always has the same 12 candidates: the cost of a decision must
//! not grow with the policies of other namespaces. The traffic is allowed by the last ALLOW
//! policy, so every candidate is evaluated.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{BenchmarkId, Criterion, criterion_main};
use nodemesh_policy::model::{
    Action, AuthorizationPolicySpec, Operation, Rule, RuleFrom, RuleTo, Source, WorkloadSelector,
};
use nodemesh_policy::{
    Connection, Destination, EngineOptions, HttpRequest, Peer, Policy, PolicyRef, PolicySet,
    Verdict, compile,
};

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn spec(
    action: Action,
    app: &str,
    principal: &str,
    ports: &[&str],
    methods: &[&str],
) -> AuthorizationPolicySpec {
    AuthorizationPolicySpec {
        action,
        selector: Some(WorkloadSelector {
            match_labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        }),
        rules: vec![Rule {
            from: vec![RuleFrom {
                source: Some(Source {
                    principals: strings(&[principal, "cluster.local/ns/batch/*"]),
                    not_ip_blocks: strings(&["192.168.0.0/16"]),
                    ..Source::default()
                }),
            }],
            to: vec![RuleTo {
                operation: Some(Operation {
                    ports: strings(ports),
                    methods: strings(methods),
                    ..Operation::default()
                }),
            }],
            when: Vec::new(),
        }],
        ..AuthorizationPolicySpec::default()
    }
}

fn namespace_policies(ns: &str, l7: bool) -> Vec<Policy> {
    let methods: &[&str] = if l7 { &["GET", "HEAD"] } else { &[] };
    let mut out = Vec::new();
    let mut add = |name: String, spec: AuthorizationPolicySpec| {
        let p = compile(PolicyRef::new(ns, name), &BTreeMap::new(), &spec);
        out.push(p.unwrap_or_else(|e| panic!("bench policy does not compile: {e}")));
    };
    for i in 0..6 {
        // ALLOW policies for the workload whose rules do not match the caller.
        let who = format!("cluster.local/ns/other-{i}/sa/app");
        add(
            format!("allow-{i}"),
            spec(Action::Allow, "web", &who, &["8080", "9090"], methods),
        );
    }
    for i in 0..2 {
        add(
            format!("deny-{i}"),
            spec(
                Action::Deny,
                "web",
                "cluster.local/ns/evil/sa/x",
                &["8080"],
                &[],
            ),
        );
    }
    add(
        "audit".to_owned(),
        spec(Action::Audit, "db", "*", &["5432"], &[]),
    );
    // The ALLOW that matches (sorted last).
    add(
        "z-allow".to_owned(),
        spec(
            Action::Allow,
            "web",
            "cluster.local/ns/client/sa/curl",
            &["8080"],
            methods,
        ),
    );
    out
}

fn mesh(total: usize, l7: bool) -> PolicySet {
    let mut policies = Vec::with_capacity(total + 2);
    for n in 0..total.div_ceil(10) {
        policies.extend(namespace_policies(&format!("ns-{n}"), l7));
    }
    policies.truncate(total);
    for i in 0..2 {
        let spec = spec(
            Action::Deny,
            "web",
            "cluster.local/ns/evil/sa/y",
            &["22"],
            &[],
        );
        let id = PolicyRef::new("nodemesh-system", format!("mesh-deny-{i}"));
        policies.extend(compile(id, &BTreeMap::new(), &spec).ok());
    }
    PolicySet::new(policies, EngineOptions::default())
}

fn bench(c: &mut Criterion) {
    let labels = vec![("app".to_owned(), "web".to_owned())];
    let conn = Connection {
        source: Peer {
            principal: Some("spiffe://cluster.local/ns/client/sa/curl"),
            namespace: None,
            ip: Some(IpAddr::from([10, 0, 1, 1])),
        },
        destination: Destination {
            namespace: "ns-0",
            labels: &labels,
            ip: Some(IpAddr::from([10, 0, 2, 2])),
            port: 8080,
        },
    };
    let headers: Vec<(&str, &str)> = vec![("user-agent", "curl/8"), ("accept", "*/*")];
    let req = HttpRequest {
        method: "GET",
        path: "/api/v1/items?page=2",
        host: "web.ns-0:8080",
        headers: &headers,
    };

    let mut g = c.benchmark_group("l4_decision");
    for total in [10usize, 1_000, 10_000] {
        let set = mesh(total, false);
        assert_eq!(set.decide_connection(&conn).verdict, Verdict::Allow);
        g.bench_with_input(BenchmarkId::from_parameter(total), &set, |b, set| {
            b.iter(|| set.decide_connection(black_box(&conn)).verdict)
        });
    }
    g.finish();

    let mut g = c.benchmark_group("l7_decision");
    for total in [10usize, 1_000, 10_000] {
        let set = mesh(total, true);
        assert_eq!(set.decide_request(&conn, &req).verdict, Verdict::Allow);
        g.bench_with_input(BenchmarkId::from_parameter(total), &set, |b, set| {
            b.iter(|| {
                set.decide_request(black_box(&conn), black_box(&req))
                    .verdict
            })
        });
    }
    g.finish();
}

mod group {
    //! The criterion entry points.
    #![allow(missing_docs)]
    use super::bench;
    criterion::criterion_group!(benches, bench);
}
criterion_main!(group::benches);
