//! Shared helpers: a tiny traffic language and policy loading for table-driven tests.

#![allow(dead_code)]

use std::net::IpAddr;

use nodemesh_policy::load::parse_file;
use nodemesh_policy::{
    Connection, Decision, Destination, EngineOptions, HttpRequest, Peer, Policy, PolicySet,
    compile_fail_closed,
};

/// Adds `apiVersion`/`kind` to documents that lack them, so tables stay short.
pub fn expand(policies: &str) -> String {
    policies
        .split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            if d.contains("apiVersion") {
                d.to_owned()
            } else {
                format!("apiVersion: security.nodemesh.io/v1\nkind: AuthorizationPolicy\n{d}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Parses policies and compiles them the way the proxy does: invalid ones fail closed.
pub fn policies(yaml: &str) -> Vec<Policy> {
    let (docs, problems) = parse_file("test.yaml", &expand(yaml));
    assert!(
        problems.is_empty(),
        "unexpected parse problems: {problems:?}"
    );
    docs.iter()
        .map(|d| {
            let id = d.document.policy_ref().expect("namespace");
            compile_fail_closed(id, &d.document.metadata.annotations, &d.document.spec).0
        })
        .collect()
}

/// Traffic described as `key=value` tokens (see the conformance table).
pub struct Traffic {
    pub principal: Option<String>,
    pub namespace: Option<String>,
    pub src_ip: Option<IpAddr>,
    pub dst_ns: String,
    pub labels: Vec<(String, String)>,
    pub port: u16,
    pub dst_ip: Option<IpAddr>,
    pub method: Option<String>,
    pub path: String,
    pub host: String,
    pub headers: Vec<(String, String)>,
    pub root: Option<String>,
}

impl Traffic {
    pub fn parse(spec: &str) -> Self {
        let mut t = Traffic {
            principal: Some("cluster.local/ns/client/sa/curl".into()),
            namespace: None,
            src_ip: Some("10.0.1.1".parse().expect("ip")),
            dst_ns: "shop".into(),
            labels: vec![("app".into(), "web".into())],
            port: 8080,
            dst_ip: Some("10.0.2.2".parse().expect("ip")),
            method: None,
            path: "/".into(),
            host: "web.shop".into(),
            headers: Vec::new(),
            root: None,
        };
        for tok in spec.split_whitespace() {
            let (k, v) = tok.split_once('=').unwrap_or((tok, ""));
            let opt = |v: &str| (v != "none").then(|| v.to_owned());
            match k {
                "principal" => t.principal = opt(v),
                "ns" => t.namespace = opt(v),
                "srcip" => t.src_ip = opt(v).map(|v| v.parse().expect("srcip")),
                "to" => t.dst_ns = v.into(),
                "labels" => {
                    t.labels = v
                        .split(',')
                        .filter(|p| !p.is_empty())
                        .map(|p| {
                            let (k, v) = p.split_once('=').expect("label k=v");
                            (k.into(), v.into())
                        })
                        .collect()
                }
                "port" => t.port = v.parse().expect("port"),
                "dstip" => t.dst_ip = opt(v).map(|v| v.parse().expect("dstip")),
                "method" => t.method = Some(v.into()),
                "path" => t.path = v.into(),
                "host" => t.host = v.into(),
                "hdr" => {
                    let (n, v) = v.split_once(':').expect("hdr name:value");
                    t.headers.push((n.into(), v.into()));
                }
                "root" => t.root = Some(v.into()),
                other => panic!("unknown traffic token {other:?}"),
            }
        }
        t
    }

    pub fn options(&self) -> EngineOptions {
        let mut o = EngineOptions::default();
        if let Some(r) = &self.root {
            o.root_namespace = r.clone();
        }
        o
    }

    pub fn connection(&self) -> Connection<'_> {
        Connection {
            source: Peer {
                principal: self.principal.as_deref(),
                namespace: self.namespace.as_deref(),
                ip: self.src_ip,
            },
            destination: Destination {
                namespace: &self.dst_ns,
                labels: &self.labels,
                ip: self.dst_ip,
                port: self.port,
            },
        }
    }

    pub fn request(&self) -> Option<HttpRequest<'_>> {
        self.method.as_deref().map(|m| HttpRequest {
            method: m,
            path: &self.path,
            host: &self.host,
            headers: &self.headers,
        })
    }

    pub fn decide<'e>(&self, set: &'e PolicySet) -> Decision<'e> {
        match self.request() {
            Some(r) => set.decide_request(&self.connection(), &r),
            None => set.decide_connection(&self.connection()),
        }
    }
}

/// Checks a decision against `allow|deny [by=ns/name|-] [reason=code] [l7|l4] [dry=ns/name:verdict]...
/// [audit=ns/name]...`. Dry-run and audit lists must be exactly as given (empty by default).
pub fn assert_expect(name: &str, d: &Decision<'_>, expect: &str) {
    let mut toks = expect.split_whitespace();
    let verdict = toks.next().expect("verdict");
    assert_eq!(d.verdict.as_str(), verdict, "{name}: verdict ({d:?})");
    let mut dry = Vec::new();
    let mut audit = Vec::new();
    for tok in toks {
        let (k, v) = tok.split_once('=').unwrap_or((tok, ""));
        match k {
            "by" => {
                let by = d.deciding_policy.map_or("-".to_owned(), |p| p.to_string());
                assert_eq!(by, v, "{name}: deciding policy ({d:?})");
            }
            "reason" => assert_eq!(d.reason.code(), v, "{name}: reason ({d:?})"),
            "l7" => assert!(d.needs_l7, "{name}: expected needs_l7 ({d:?})"),
            "l4" => assert!(!d.needs_l7, "{name}: expected no needs_l7 ({d:?})"),
            "dry" => dry.push(v.to_owned()),
            "audit" => audit.push(v.to_owned()),
            other => panic!("{name}: unknown expectation {other:?}"),
        }
    }
    let got_dry: Vec<String> = d
        .dry_run
        .iter()
        .map(|o| format!("{}:{}", o.policy, o.would_be))
        .collect();
    assert_eq!(got_dry, dry, "{name}: dry-run ({d:?})");
    let got_audit: Vec<String> = d.audit.iter().map(|p| p.to_string()).collect();
    assert_eq!(got_audit, audit, "{name}: audit ({d:?})");
}
