//! Wire types to compiled policies, once, with every error named by policy, field and reason.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{CompileError, CompileErrorKind, CompileErrors, MAX_RULES};
use crate::matcher::{ServiceAccount, StringMatch};
use crate::model::{
    Action, AuthorizationPolicySpec, Condition, DRY_RUN_ANNOTATIONS, Operation, PolicyDocument,
    Source,
};
use crate::path::PathPattern;
use crate::policy::{Body, Policy, PolicyRef, Selector};
use crate::rule::{Clause, Rule, Test};

/// Compiles one policy. All errors are reported, not only the first.
pub fn compile(
    id: PolicyRef,
    annotations: &BTreeMap<String, String>,
    spec: &AuthorizationPolicySpec,
) -> Result<Policy, CompileErrors> {
    match compile_fail_closed(id, annotations, spec) {
        (policy, None) => Ok(policy),
        (_, Some(errors)) => Err(errors),
    }
}

/// Compiles one policy; when it does not compile, returns a policy that fails closed (an ALLOW
/// policy that matches nothing, a DENY or CUSTOM policy that matches everything) for the workloads
/// its selector picks, together with the errors. This is what the proxy loads, so one bad policy
/// never takes the others down and never widens access.
pub fn compile_fail_closed(
    id: PolicyRef,
    annotations: &BTreeMap<String, String>,
    spec: &AuthorizationPolicySpec,
) -> (Policy, Option<CompileErrors>) {
    let mut c = Compiler {
        id,
        errors: Vec::new(),
    };
    let dry_run = c.dry_run(annotations);
    let selector = Selector(
        spec.selector
            .iter()
            .flat_map(|s| s.match_labels.iter())
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect(),
    );
    if spec.action == Action::Custom {
        c.error("spec.action", CompileErrorKind::CustomAction);
    }
    if spec.target_ref.is_some() {
        c.error("spec.targetRef", CompileErrorKind::TargetRef);
    }
    if !spec.target_refs.is_empty() {
        c.error("spec.targetRefs", CompileErrorKind::TargetRef);
    }
    if spec.rules.len() > MAX_RULES {
        c.error(
            "spec.rules",
            CompileErrorKind::TooManyRules {
                count: spec.rules.len(),
            },
        );
    }
    let rules: Vec<Rule> = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| c.rule(&format!("spec.rules[{i}]"), r))
        .collect();

    let Compiler { id, errors } = c;
    if errors.is_empty() {
        let l7 = rules.iter().any(Rule::is_l7);
        let policy = Policy {
            id,
            action: spec.action,
            selector,
            dry_run,
            body: Body::Rules {
                rules: rules.into(),
                l7,
            },
        };
        (policy, None)
    } else {
        let policy = Policy {
            id,
            action: spec.action,
            selector,
            dry_run,
            body: Body::Invalid {
                reasons: errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.kind))
                    .collect(),
            },
        };
        (policy, Some(CompileErrors(errors)))
    }
}

/// The fail-closed stand-in for a policy object whose spec does not even parse (read from
/// Kubernetes, where one bad object must not stop the others): its `action` and
/// `selector.matchLabels` are read leniently; an unreadable action counts as DENY, so the
/// policy denies everything it may select rather than allowing anything.
pub fn fail_closed_unparsable(id: PolicyRef, spec: &serde_json::Value, reason: String) -> Policy {
    let action = match spec.get("action") {
        None => Action::Allow,
        Some(serde_json::Value::String(a)) if a == "ALLOW" => Action::Allow,
        Some(serde_json::Value::String(a)) if a == "AUDIT" => Action::Audit,
        Some(_) => Action::Deny,
    };
    let selector = spec
        .pointer("/selector/matchLabels")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (Box::<str>::from(k.as_str()), v.into_boxed_str())
                })
                .collect()
        })
        .unwrap_or_default();
    Policy {
        id,
        action,
        selector: Selector(selector),
        dry_run: false,
        body: Body::Invalid {
            reasons: vec![reason].into(),
        },
    }
}

impl PolicyDocument {
    /// `namespace/name`, when the document has a namespace.
    pub fn policy_ref(&self) -> Option<PolicyRef> {
        self.metadata
            .namespace
            .as_deref()
            .map(|ns| PolicyRef::new(ns, self.metadata.name.as_str()))
    }

    /// Compiles the document's policy (`metadata.namespace` is required).
    pub fn compile(&self) -> Result<Policy, CompileErrors> {
        match self.policy_ref() {
            Some(id) => compile(id, &self.metadata.annotations, &self.spec),
            None => Err(CompileErrors(vec![CompileError {
                policy: PolicyRef::new("", self.metadata.name.as_str()),
                field: "metadata.namespace".to_owned(),
                kind: CompileErrorKind::MissingNamespace,
            }])),
        }
    }
}

#[cfg(feature = "crd")]
impl crate::model::AuthorizationPolicy {
    /// `namespace/name` of a Kubernetes object (empty strings where the object has none).
    pub fn policy_ref(&self) -> PolicyRef {
        PolicyRef::new(
            self.metadata.namespace.clone().unwrap_or_default(),
            self.metadata.name.clone().unwrap_or_default(),
        )
    }

    /// Compiles the object, failing closed (see [`compile_fail_closed`]).
    pub fn compile_fail_closed(&self) -> (Policy, Option<CompileErrors>) {
        let empty = BTreeMap::new();
        let annotations = self.metadata.annotations.as_ref().unwrap_or(&empty);
        compile_fail_closed(self.policy_ref(), annotations, &self.spec)
    }
}

struct Compiler {
    id: PolicyRef,
    errors: Vec<CompileError>,
}

/// Collects the clauses of one source, operation or condition.
struct Group<'c> {
    c: &'c mut Compiler,
    base: &'c str,
    out: Vec<Clause>,
}

impl Group<'_> {
    /// Adds a clause for `base.name` when the list is non-empty and valid.
    fn add<T>(
        &mut self,
        name: &str,
        negated: bool,
        values: &[String],
        parse: impl Fn(&str) -> Result<T, CompileErrorKind>,
        test: impl FnOnce(Box<[T]>) -> Test,
    ) {
        let field = format!("{}.{name}", self.base);
        if let Some(parsed) = self.c.list(&field, values, parse) {
            self.out.push(Clause {
                field: field.into(),
                negated,
                test: test(parsed),
            });
        }
    }
}

/// Go's `strconv.ParseBool`, which Istio uses for its dry-run annotation.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

fn pattern(v: &str, fold_case: bool) -> Result<StringMatch, CompileErrorKind> {
    StringMatch::parse(v, fold_case).map_err(|error| CompileErrorKind::BadPattern {
        value: v.to_owned(),
        error,
    })
}

fn principal(v: &str) -> Result<StringMatch, CompileErrorKind> {
    if v.starts_with("spiffe://") {
        return Err(CompileErrorKind::SpiffePrefix {
            value: v.to_owned(),
        });
    }
    pattern(v, false)
}

fn net(v: &str) -> Result<IpNet, CompileErrorKind> {
    let bad = || CompileErrorKind::BadCidr {
        value: v.to_owned(),
    };
    if v.contains('/') {
        v.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| bad())
    } else {
        v.parse::<IpAddr>().map(IpNet::from).map_err(|_| bad())
    }
}

fn port(v: &str) -> Result<u16, CompileErrorKind> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(CompileErrorKind::BadPort {
            value: v.to_owned(),
        }),
    }
}

/// `ns/sa`, or `sa` in the policy's own namespace `own`.
fn service_account(own: &str, v: &str) -> Result<ServiceAccount, CompileErrorKind> {
    let bad = || CompileErrorKind::BadServiceAccount {
        value: v.to_owned(),
    };
    let (ns, sa) = v.split_once('/').unwrap_or((own, v));
    if ns.is_empty() || sa.is_empty() || sa.contains('/') || v.contains('*') {
        return Err(bad());
    }
    Ok(ServiceAccount {
        namespace: ns.into(),
        name: sa.into(),
    })
}

fn path(v: &str) -> Result<PathPattern, CompileErrorKind> {
    PathPattern::parse(v).map_err(|error| CompileErrorKind::BadPath {
        value: v.to_owned(),
        error,
    })
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The attribute a `when` key names.
enum Key {
    SourceIp,
    Namespace,
    Principal,
    ServiceAccount,
    DestinationIp,
    DestinationPort,
    Sni,
    Header(String),
    RequestAuth,
}

fn parse_key(key: &str) -> Option<Key> {
    Some(match key {
        "source.ip" | "remote.ip" => Key::SourceIp,
        "source.namespace" => Key::Namespace,
        "source.principal" => Key::Principal,
        "source.serviceAccount" => Key::ServiceAccount,
        "destination.ip" => Key::DestinationIp,
        "destination.port" => Key::DestinationPort,
        "connection.sni" => Key::Sni,
        "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter" => {
            Key::RequestAuth
        }
        k => {
            if let Some(name) = k
                .strip_prefix("request.headers[")
                .and_then(|r| r.strip_suffix(']'))
            {
                // Pseudo-headers (`:path`, ...) are not headers here: use paths/methods/hosts.
                return is_token(name).then(|| Key::Header(name.to_ascii_lowercase()));
            }
            let claim = k
                .strip_prefix("request.auth.claims[")
                .and_then(|r| r.strip_suffix(']'))?;
            if claim.is_empty() {
                return None;
            }
            Key::RequestAuth
        }
    })
}

impl Compiler {
    fn error(&mut self, field: &str, kind: CompileErrorKind) {
        self.errors.push(CompileError {
            policy: self.id.clone(),
            field: field.to_owned(),
            kind,
        });
    }

    fn dry_run(&mut self, annotations: &BTreeMap<String, String>) -> bool {
        for key in DRY_RUN_ANNOTATIONS {
            if let Some(v) = annotations.get(key) {
                return match parse_bool(v) {
                    Some(b) => b,
                    None => {
                        self.error(
                            &format!("metadata.annotations[{key}]"),
                            CompileErrorKind::BadDryRun { value: v.clone() },
                        );
                        false
                    }
                };
            }
        }
        false
    }

    /// Parses every value of a list; `None` when the list is empty or any value is bad (each bad
    /// value is recorded as an error at `field[i]`).
    fn list<T>(
        &mut self,
        field: &str,
        values: &[String],
        parse: impl Fn(&str) -> Result<T, CompileErrorKind>,
    ) -> Option<Box<[T]>> {
        if values.is_empty() {
            return None;
        }
        let mut out = Vec::with_capacity(values.len());
        let mut ok = true;
        for (i, v) in values.iter().enumerate() {
            match parse(v) {
                Ok(t) => out.push(t),
                Err(kind) => {
                    ok = false;
                    self.error(&format!("{field}[{i}]"), kind);
                }
            }
        }
        ok.then(|| out.into())
    }

    /// Records an empty `source`/`operation`; the group is dropped (the policy is invalid anyway).
    fn empty(&mut self, field: &str, kind: CompileErrorKind) -> Box<[Clause]> {
        self.error(field, kind);
        Box::default()
    }

    fn rule(&mut self, base: &str, rule: &crate::model::Rule) -> Rule {
        let from = rule
            .from
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let field = format!("{base}.from[{i}].source");
                match f.source.as_ref().filter(|s| **s != Source::default()) {
                    Some(s) => self.source(&field, s),
                    None => self.empty(&field, CompileErrorKind::EmptySource),
                }
            })
            .collect();
        let to = rule
            .to
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let field = format!("{base}.to[{i}].operation");
                match t.operation.as_ref().filter(|o| **o != Operation::default()) {
                    Some(o) => self.operation(&field, o),
                    None => self.empty(&field, CompileErrorKind::EmptyOperation),
                }
            })
            .collect();
        let mut when = Vec::new();
        for (i, cond) in rule.when.iter().enumerate() {
            self.condition(&mut when, &format!("{base}.when[{i}]"), cond);
        }
        Rule {
            from,
            to,
            when: when.into(),
        }
    }

    fn group<'c>(&'c mut self, base: &'c str) -> Group<'c> {
        Group {
            c: self,
            base,
            out: Vec::new(),
        }
    }

    fn source(&mut self, base: &str, s: &Source) -> Box<[Clause]> {
        let has_sa = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
        let has_principals = !s.principals.is_empty() || !s.not_principals.is_empty();
        if has_sa && has_principals {
            let name = if s.service_accounts.is_empty() {
                "notServiceAccounts"
            } else {
                "serviceAccounts"
            };
            self.error(
                &format!("{base}.{name}"),
                CompileErrorKind::ServiceAccountsWithPrincipals,
            );
        }
        let own = self.id.namespace.clone();
        let sa = |v: &str| service_account(&own, v);
        let any = |v: &str| pattern(v, false);
        let jwt = |_| Test::RequestAuth;
        let mut g = self.group(base);
        g.add(
            "principals",
            false,
            &s.principals,
            principal,
            Test::Principal,
        );
        g.add(
            "notPrincipals",
            true,
            &s.not_principals,
            principal,
            Test::Principal,
        );
        g.add("requestPrincipals", false, &s.request_principals, any, jwt);
        g.add(
            "notRequestPrincipals",
            true,
            &s.not_request_principals,
            any,
            jwt,
        );
        g.add("namespaces", false, &s.namespaces, any, Test::Namespace);
        g.add(
            "notNamespaces",
            true,
            &s.not_namespaces,
            any,
            Test::Namespace,
        );
        g.add("ipBlocks", false, &s.ip_blocks, net, Test::SourceIp);
        g.add("notIpBlocks", true, &s.not_ip_blocks, net, Test::SourceIp);
        g.add(
            "remoteIpBlocks",
            false,
            &s.remote_ip_blocks,
            net,
            Test::SourceIp,
        );
        g.add(
            "notRemoteIpBlocks",
            true,
            &s.not_remote_ip_blocks,
            net,
            Test::SourceIp,
        );
        g.add(
            "serviceAccounts",
            false,
            &s.service_accounts,
            sa,
            Test::ServiceAccount,
        );
        g.add(
            "notServiceAccounts",
            true,
            &s.not_service_accounts,
            sa,
            Test::ServiceAccount,
        );
        g.out.into()
    }

    fn operation(&mut self, base: &str, op: &Operation) -> Box<[Clause]> {
        let ci = |v: &str| pattern(v, true);
        let mut g = self.group(base);
        g.add("hosts", false, &op.hosts, ci, Test::Host);
        g.add("notHosts", true, &op.not_hosts, ci, Test::Host);
        g.add("ports", false, &op.ports, port, Test::DestinationPort);
        g.add("notPorts", true, &op.not_ports, port, Test::DestinationPort);
        g.add("methods", false, &op.methods, ci, Test::Method);
        g.add("notMethods", true, &op.not_methods, ci, Test::Method);
        g.add("paths", false, &op.paths, path, Test::Path);
        g.add("notPaths", true, &op.not_paths, path, Test::Path);
        g.out.into()
    }

    fn condition(&mut self, out: &mut Vec<Clause>, base: &str, cond: &Condition) {
        let Some(key) = parse_key(&cond.key) else {
            self.error(
                &format!("{base}.key"),
                CompileErrorKind::UnknownKey {
                    key: cond.key.clone(),
                },
            );
            return;
        };
        if cond.values.is_empty() && cond.not_values.is_empty() {
            self.error(base, CompileErrorKind::EmptyCondition);
            return;
        }
        let own = self.id.namespace.clone();
        let sa = |v: &str| service_account(&own, v);
        let any = |v: &str| pattern(v, false);
        let ci = |v: &str| pattern(v, true);
        let mut g = self.group(base);
        for (name, negated, values) in [
            ("values", false, &cond.values),
            ("notValues", true, &cond.not_values),
        ] {
            match &key {
                Key::SourceIp => g.add(name, negated, values, net, Test::SourceIp),
                Key::DestinationIp => g.add(name, negated, values, net, Test::DestinationIp),
                Key::DestinationPort => g.add(name, negated, values, port, Test::DestinationPort),
                Key::Principal => g.add(name, negated, values, principal, Test::Principal),
                Key::Namespace => g.add(name, negated, values, any, Test::Namespace),
                Key::ServiceAccount => g.add(name, negated, values, sa, Test::ServiceAccount),
                Key::Sni => g.add(name, negated, values, ci, Test::Sni),
                Key::RequestAuth => g.add(name, negated, values, any, |_| Test::RequestAuth),
                Key::Header(h) => g.add(name, negated, values, any, |values| Test::Header {
                    name: h.as_str().into(),
                    values,
                }),
            }
        }
        out.append(&mut g.out);
    }
}
