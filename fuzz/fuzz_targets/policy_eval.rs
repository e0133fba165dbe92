//! Arbitrary policies and arbitrary requests: compiling and evaluating must never panic, `explain`
//! must agree with the engine, and path normalization must be idempotent.

#![no_main]

use std::collections::BTreeMap;
use std::net::IpAddr;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use nodemesh_policy::model::{
    Action, AuthorizationPolicySpec, Condition, Operation, Rule, RuleFrom, RuleTo, Source,
    WorkloadSelector,
};
use nodemesh_policy::path::{PathOptions, normalize};
use nodemesh_policy::{
    Connection, Destination, EngineOptions, HttpRequest, Peer, PolicyRef, PolicySet,
    compile_fail_closed,
};

#[derive(Arbitrary, Debug)]
struct FuzzSource {
    principals: Vec<String>,
    not_principals: Vec<String>,
    namespaces: Vec<String>,
    ip_blocks: Vec<String>,
    not_ip_blocks: Vec<String>,
    service_accounts: Vec<String>,
    request_principals: Vec<String>,
}

#[derive(Arbitrary, Debug)]
struct FuzzOperation {
    hosts: Vec<String>,
    ports: Vec<String>,
    not_ports: Vec<String>,
    methods: Vec<String>,
    paths: Vec<String>,
    not_paths: Vec<String>,
}

#[derive(Arbitrary, Debug)]
struct FuzzRule {
    from: Vec<Option<FuzzSource>>,
    to: Vec<Option<FuzzOperation>>,
    when: Vec<(String, Vec<String>, Vec<String>)>,
}

#[derive(Arbitrary, Debug)]
struct FuzzPolicy {
    root: bool,
    action: u8,
    dry_run: Option<String>,
    selector: Option<(String, String)>,
    rules: Vec<FuzzRule>,
}

#[derive(Arbitrary, Debug)]
struct FuzzRequest {
    method: String,
    path: String,
    host: String,
    headers: Vec<(String, String)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    policies: Vec<FuzzPolicy>,
    principal: Option<String>,
    namespace: Option<String>,
    src_ip: [u8; 4],
    dst_port: u16,
    app: String,
    decode_escaped_slashes: bool,
    request: Option<FuzzRequest>,
}

fn source(s: FuzzSource) -> Source {
    Source {
        principals: s.principals,
        not_principals: s.not_principals,
        namespaces: s.namespaces,
        ip_blocks: s.ip_blocks,
        not_ip_blocks: s.not_ip_blocks,
        service_accounts: s.service_accounts,
        request_principals: s.request_principals,
        ..Source::default()
    }
}

fn operation(o: FuzzOperation) -> Operation {
    Operation {
        hosts: o.hosts,
        ports: o.ports,
        not_ports: o.not_ports,
        methods: o.methods,
        paths: o.paths,
        not_paths: o.not_paths,
        ..Operation::default()
    }
}

fn spec(p: FuzzPolicy) -> AuthorizationPolicySpec {
    AuthorizationPolicySpec {
        action: match p.action % 4 {
            0 => Action::Allow,
            1 => Action::Deny,
            2 => Action::Audit,
            _ => Action::Custom,
        },
        selector: p.selector.map(|(k, v)| WorkloadSelector {
            match_labels: BTreeMap::from([(k, v)]),
        }),
        rules: p
            .rules
            .into_iter()
            .map(|r| Rule {
                from: r.from.into_iter().map(|s| RuleFrom { source: s.map(source) }).collect(),
                to: r
                    .to
                    .into_iter()
                    .map(|o| RuleTo {
                        operation: o.map(operation),
                    })
                    .collect(),
                when: r
                    .when
                    .into_iter()
                    .map(|(key, values, not_values)| Condition {
                        key,
                        values,
                        not_values,
                    })
                    .collect(),
            })
            .collect(),
        ..AuthorizationPolicySpec::default()
    }
}

fuzz_target!(|input: Input| {
    let mut options = EngineOptions::default();
    options.path.decode_escaped_slashes = input.decode_escaped_slashes;
    let policies: Vec<_> = input
        .policies
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let ns = if p.root { "nodemesh-system" } else { "shop" };
            let mut annotations = BTreeMap::new();
            if let Some(v) = &p.dry_run {
                annotations.insert("nodemesh.io/dry-run".to_owned(), v.clone());
            }
            let id = PolicyRef::new(ns, format!("p{i}"));
            compile_fail_closed(id, &annotations, &spec(p)).0
        })
        .collect();
    let set = PolicySet::new(policies, options);
    let labels = vec![("app".to_owned(), input.app)];
    let conn = Connection {
        source: Peer {
            principal: input.principal.as_deref(),
            namespace: input.namespace.as_deref(),
            ip: Some(IpAddr::from(input.src_ip)),
        },
        destination: Destination {
            namespace: "shop",
            labels: &labels,
            ip: Some(IpAddr::from([10, 0, 2, 2])),
            port: input.dst_port,
        },
    };
    let l4 = set.decide_connection(&conn);
    assert_eq!(l4.verdict, set.explain(&conn, None).verdict);
    if let Some(r) = &input.request {
        let req = HttpRequest {
            method: &r.method,
            path: &r.path,
            host: &r.host,
            headers: &r.headers,
        };
        let d = set.decide_request(&conn, &req);
        let e = set.explain(&conn, Some(&req));
        assert_eq!(d.verdict, e.verdict);
        let _ = e.to_string();
        let _ = d.to_json();
        let o = PathOptions {
            decode_escaped_slashes: input.decode_escaped_slashes,
        };
        if let Ok(once) = normalize(&r.path, o) {
            let twice = normalize(&once, o).map(|p| p.into_owned());
            assert_eq!(twice.as_deref(), Ok(&*once), "normalization is not idempotent");
        }
    }
});
