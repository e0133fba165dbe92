//! Property tests: monotonicity of ALLOW and DENY, independence from policy order, and that an
//! L4 decision the engine calls final really holds for every HTTP request.

use std::collections::BTreeMap;
use std::net::IpAddr;

use nodemesh_policy::model::{
    Action, AuthorizationPolicySpec, Condition, Operation, Rule, RuleFrom, RuleTo, Source,
    WorkloadSelector,
};
use nodemesh_policy::path::{PathOptions, normalize};
use nodemesh_policy::{
    Connection, Decision, Destination, EngineOptions, HttpRequest, Peer, Policy, PolicyRef,
    PolicySet, Reason, Verdict, compile_fail_closed,
};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/client/sa/curl",
    "cluster.local/ns/client/*",
    "*/sa/web",
    "*",
    "cluster.local/ns/shop/sa/web",
];
const NAMESPACES: &[&str] = &["client", "shop", "cli*", "*"];
const IPS: &[&str] = &["10.0.1.0/24", "10.0.1.1", "10.0.0.0/8", "192.168.0.0/16"];
const PORTS: &[&str] = &["80", "8080", "9090"];
const METHODS: &[&str] = &["GET", "POST", "delete"];
const PATHS: &[&str] = &["/admin*", "/api/{*}", "/public/{**}", "*.png", "/", "*"];
const HOSTS: &[&str] = &["web.shop", "*.shop", "admin.example.com"];
const KEYS: &[(&str, &[&str])] = &[
    ("source.ip", &["10.0.1.0/24", "10.9.9.9"]),
    ("source.namespace", &["client", "shop"]),
    ("destination.port", &["8080", "80"]),
    ("request.headers[x-user]", &["alice", "adm*"]),
    ("connection.sni", &["web.shop"]),
    ("request.auth.claims[iss]", &["https://issuer"]),
];

fn list(values: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        3 => Just(Vec::new()),
        1 => subsequence(values, 1..=values.len().min(2)).prop_map(|v| v.into_iter().map(String::from).collect()),
    ]
}

fn source() -> impl Strategy<Value = Source> {
    (
        list(PRINCIPALS),
        list(PRINCIPALS),
        list(NAMESPACES),
        list(NAMESPACES),
        list(IPS),
        list(IPS),
        list(&["*"]),
    )
        .prop_map(|(p, np, n, nn, ip, nip, rp)| Source {
            principals: p,
            not_principals: np,
            namespaces: n,
            not_namespaces: nn,
            ip_blocks: ip,
            not_ip_blocks: nip,
            not_request_principals: rp,
            ..Source::default()
        })
        .prop_filter("non-empty source", |s| *s != Source::default())
}

fn operation() -> impl Strategy<Value = Operation> {
    (
        list(PORTS),
        list(PORTS),
        list(METHODS),
        list(METHODS),
        list(PATHS),
        list(PATHS),
        list(HOSTS),
    )
        .prop_map(|(p, np, m, nm, pa, npa, h)| Operation {
            ports: p,
            not_ports: np,
            methods: m,
            not_methods: nm,
            paths: pa,
            not_paths: npa,
            hosts: h,
            ..Operation::default()
        })
        .prop_filter("non-empty operation", |o| *o != Operation::default())
}

fn condition() -> impl Strategy<Value = Condition> {
    (select(KEYS), any::<bool>(), 0usize..2).prop_map(|((key, values), negate, i)| {
        let v = vec![values[i % values.len()].to_owned()];
        let (values, not_values) = if negate {
            (Vec::new(), v)
        } else {
            (v, Vec::new())
        };
        Condition {
            key: (*key).to_owned(),
            values,
            not_values,
        }
    })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(source(), 0..=2),
        prop::collection::vec(operation(), 0..=2),
        prop::collection::vec(condition(), 0..=1),
    )
        .prop_map(|(from, to, when)| Rule {
            from: from
                .into_iter()
                .map(|s| RuleFrom { source: Some(s) })
                .collect(),
            to: to
                .into_iter()
                .map(|o| RuleTo { operation: Some(o) })
                .collect(),
            when,
        })
}

fn selector() -> impl Strategy<Value = Option<WorkloadSelector>> {
    prop_oneof![
        2 => Just(None),
        1 => select(&["web", "db"][..]).prop_map(|app| Some(WorkloadSelector {
            match_labels: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        })),
    ]
}

fn spec(action: impl Strategy<Value = Action>) -> impl Strategy<Value = AuthorizationPolicySpec> {
    (action, selector(), prop::collection::vec(rule(), 0..=3)).prop_map(
        |(action, selector, rules)| AuthorizationPolicySpec {
            action,
            selector,
            rules,
            ..AuthorizationPolicySpec::default()
        },
    )
}

fn any_action() -> impl Strategy<Value = Action> {
    prop_oneof![4 => Just(Action::Allow), 3 => Just(Action::Deny), 1 => Just(Action::Audit)]
}

/// A policy in one of the namespaces that matter, possibly dry-run.
fn policy(
    name: String,
    action: impl Strategy<Value = Action>,
    dry_run: impl Strategy<Value = bool>,
) -> impl Strategy<Value = Policy> {
    (
        select(&["shop", "other", "nodemesh-system"][..]),
        spec(action),
        dry_run,
    )
        .prop_map(move |(ns, spec, dry)| {
            let mut annotations = BTreeMap::new();
            if dry {
                annotations.insert("nodemesh.io/dry-run".to_owned(), "true".to_owned());
            }
            compile_fail_closed(PolicyRef::new(ns, name.clone()), &annotations, &spec).0
        })
}

fn policies() -> impl Strategy<Value = Vec<Policy>> {
    (0usize..6).prop_flat_map(|n| {
        (0..n)
            .map(|i| policy(format!("p{i}"), any_action(), prop::bool::weighted(0.15)))
            .collect::<Vec<_>>()
    })
}

/// Method, path, host and headers.
type Http = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(String, String)>,
);

#[derive(Clone, Debug)]
struct Traffic {
    principal: Option<&'static str>,
    src_ip: IpAddr,
    dst_ns: &'static str,
    labels: Vec<(String, String)>,
    port: u16,
    http: Option<Http>,
}

fn traffic() -> impl Strategy<Value = Traffic> {
    let http = (
        select(&["GET", "POST", "DELETE", "get"][..]),
        select(
            &[
                "/admin",
                "/api/v1",
                "/public/a/b",
                "/x.png",
                "/",
                "/a/../admin",
                "//admin",
            ][..],
        ),
        select(&["web.shop", "admin.example.com:80", "db.other"][..]),
        select(&["alice", "admin", "bob"][..]),
    )
        .prop_map(|(m, p, h, user)| (m, p, h, vec![("x-user".to_owned(), user.to_owned())]));
    (
        select(
            &[
                None,
                Some("cluster.local/ns/client/sa/curl"),
                Some("cluster.local/ns/shop/sa/web"),
            ][..],
        ),
        select(&["10.0.1.1", "10.0.1.7", "192.168.3.4"][..]),
        select(&["shop", "other"][..]),
        select(&["web", "db"][..]),
        select(&[80u16, 8080, 9090][..]),
        prop::option::of(http),
    )
        .prop_map(|(principal, ip, dst_ns, app, port, http)| Traffic {
            principal,
            src_ip: ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            dst_ns,
            labels: vec![("app".to_owned(), app.to_owned())],
            port,
            http,
        })
}

impl Traffic {
    fn connection(&self) -> Connection<'_> {
        Connection {
            source: Peer {
                principal: self.principal,
                namespace: None,
                ip: Some(self.src_ip),
            },
            destination: Destination {
                namespace: self.dst_ns,
                labels: &self.labels,
                ip: Some(IpAddr::from([10, 0, 2, 2])),
                port: self.port,
            },
        }
    }

    fn decide<'e>(&self, set: &'e PolicySet) -> Decision<'e> {
        match &self.http {
            Some((method, path, host, headers)) => set.decide_request(
                &self.connection(),
                &HttpRequest {
                    method,
                    path,
                    host,
                    headers,
                },
            ),
            None => set.decide_connection(&self.connection()),
        }
    }
}

fn set(policies: Vec<Policy>) -> PolicySet {
    PolicySet::new(policies, EngineOptions::default())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Adding an ALLOW policy never turns an allow into a deny for traffic it matches.
    #[test]
    fn adding_a_matching_allow_keeps_allow(
        base in policies(),
        extra in policy("added".to_owned(), Just(Action::Allow), Just(false)),
        t in traffic(),
    ) {
        let alone = set(vec![extra.clone()]);
        let matches = matches!(t.decide(&alone).reason, Reason::AllowMatched { .. });
        let before = set(base.clone());
        let mut with = base;
        with.push(extra);
        let after = set(with);
        if matches && t.decide(&before).verdict == Verdict::Allow {
            prop_assert_eq!(t.decide(&after).verdict, Verdict::Allow);
        }
    }

    /// Adding a DENY policy never turns a deny into an allow.
    #[test]
    fn adding_a_deny_keeps_deny(
        base in policies(),
        extra in policy("added".to_owned(), Just(Action::Deny), any::<bool>()),
        t in traffic(),
    ) {
        let before = set(base.clone());
        let mut with = base;
        with.push(extra);
        let after = set(with);
        if t.decide(&before).verdict == Verdict::Deny {
            prop_assert_eq!(t.decide(&after).verdict, Verdict::Deny);
        }
    }

    /// The decision (verdict, deciding policy, reason, dry-run and audit lists) does not depend on
    /// the order policies are given in.
    #[test]
    fn evaluation_is_independent_of_order(
        (original, shuffled) in policies().prop_flat_map(|p| (Just(p.clone()), Just(p).prop_shuffle())),
        t in traffic(),
    ) {
        let a = set(original);
        let b = set(shuffled);
        prop_assert_eq!(t.decide(&a), t.decide(&b));
    }

    /// When the connection decision says no L7 is needed, every HTTP request on the connection
    /// gets the same verdict; and a connection allowed at L4 has every request allowed.
    #[test]
    fn l4_decision_is_final_without_l7(p in policies(), t in traffic()) {
        let s = set(p);
        let conn = t.connection();
        let l4 = s.decide_connection(&conn);
        if let Some((method, path, host, headers)) = &t.http {
            let req = HttpRequest { method, path, host, headers };
            let l7 = s.decide_request(&conn, &req);
            if !matches!(l7.reason, Reason::InvalidPath(_)) {
                if !l4.needs_l7 {
                    prop_assert_eq!(l4.verdict, l7.verdict);
                }
                // The non-HTTP reading (L7 fields false in ALLOW rules, true in DENY rules) is
                // the strictest: what it allows, every HTTP request is allowed too.
                if l4.verdict == Verdict::Allow {
                    prop_assert_eq!(l7.verdict, Verdict::Allow);
                }
            }
        }
    }

    /// `explain` tells the same verdict and deciding policy as the engine.
    #[test]
    fn explain_agrees_with_decide(p in policies(), t in traffic()) {
        let s = set(p);
        let conn = t.connection();
        let (d, e) = match &t.http {
            Some((method, path, host, headers)) => {
                let req = HttpRequest { method, path, host, headers };
                (s.decide_request(&conn, &req), s.explain(&conn, Some(&req)))
            }
            None => (s.decide_connection(&conn), s.explain(&conn, None)),
        };
        prop_assert_eq!(d.verdict, e.verdict);
        prop_assert_eq!(d.deciding_policy.cloned(), e.policy.clone());
        // Every applicable enforced DENY marked as matched in the trace means a deny.
        let any_deny = e.policies.iter().any(|p| {
            p.matched && !p.dry_run && matches!(p.action, Action::Deny | Action::Custom)
        });
        if any_deny {
            prop_assert_eq!(d.verdict, Verdict::Deny);
        }
    }

    /// Normalizing a normalized path changes nothing, so no second decoding pass can reveal a
    /// different path to the application than the one policies saw.
    #[test]
    fn normalization_is_idempotent(
        raw in "/[a-z/.%2eEfFcC5\\\\?#]{0,24}",
        decode in any::<bool>(),
    ) {
        let o = PathOptions { decode_escaped_slashes: decode };
        if let Ok(once) = normalize(&raw, o) {
            let twice = normalize(&once, o).map(|p| p.into_owned());
            prop_assert_eq!(twice.as_deref(), Ok(&*once));
            prop_assert!(!once.contains("//") && !once.contains("/./") && !once.contains("/../"));
        }
    }
}
