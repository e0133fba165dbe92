//! `explain`: every applicable policy, rule and clause with whether it matched and why not.
//!
//! Walks the same compiled clauses as the engine, so the story always agrees with the verdict.

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::decision::{Decision, Verdict};
use crate::engine::PolicySet;
use crate::model::Action;
use crate::path::normalize;
use crate::policy::{Body, Policy, PolicyRef};
use crate::request::{Connection, HttpRequest};
use crate::rule::{Clause, EvalCtx, RequestCtx, Rule, Test};

/// The full story of one decision.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// Whether an HTTP request was evaluated (otherwise: a stream that is not HTTP).
    pub http: bool,
    /// The normalized request path, when there is a request and its path is valid.
    pub normalized_path: Option<String>,
    /// Every policy that applies, in evaluation order.
    pub policies: Vec<PolicyTrace>,
    /// Policies of the destination's and the root namespace whose selector did not match.
    pub not_selected: Vec<NotSelected>,
    /// The decision.
    pub verdict: Verdict,
    /// The deciding policy, if any.
    pub policy: Option<PolicyRef>,
    /// Why, as a sentence.
    pub reason: String,
    /// Whether HTTP requests need deciding one by one.
    pub needs_l7: bool,
    /// Dry-run policies and what they would have done.
    pub dry_run: Vec<(PolicyRef, Verdict)>,
    /// AUDIT policies that matched.
    pub audit: Vec<PolicyRef>,
}

/// A policy that was considered but does not select the destination.
#[derive(Clone, Debug, Serialize)]
pub struct NotSelected {
    /// The policy.
    pub policy: PolicyRef,
    /// Its selector.
    pub selector: String,
}

/// One applicable policy.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTrace {
    /// The policy.
    pub policy: PolicyRef,
    /// Its action.
    pub action: Action,
    /// Whether it is dry-run.
    pub dry_run: bool,
    /// Its selector.
    pub selector: String,
    /// Whether it matched (for an invalid DENY policy: always).
    pub matched: bool,
    /// Compile errors, when the policy is invalid and fails closed.
    pub invalid: Vec<String>,
    /// Each rule.
    pub rules: Vec<RuleTrace>,
}

/// One rule of a policy.
#[derive(Clone, Debug, Serialize)]
pub struct RuleTrace {
    /// Index in `spec.rules`.
    pub index: usize,
    /// Whether the rule matched.
    pub matched: bool,
    /// The `from` entries (one must match; none given: any source).
    pub from: Vec<GroupTrace>,
    /// The `to` entries (one must match; none given: any operation).
    pub to: Vec<GroupTrace>,
    /// The `when` conditions (all must hold).
    pub when: Vec<ClauseTrace>,
}

/// One `from` or `to` entry.
#[derive(Clone, Debug, Serialize)]
pub struct GroupTrace {
    /// Whether every clause held.
    pub matched: bool,
    /// The clauses.
    pub clauses: Vec<ClauseTrace>,
}

/// One field test.
#[derive(Clone, Debug, Serialize)]
pub struct ClauseTrace {
    /// The field path.
    pub field: String,
    /// Whether it held.
    pub holds: bool,
    /// What was compared with what.
    pub detail: String,
}

impl PolicySet {
    /// Explains the decision for a connection, or for one HTTP request on it.
    pub fn explain(&self, conn: &Connection<'_>, req: Option<&HttpRequest<'_>>) -> Explanation {
        let decision = match req {
            Some(r) => self.decide_request(conn, r),
            None => self.decide_connection(conn),
        };
        let path = req.and_then(|r| normalize(r.path, self.options().path).ok());
        let rctx = match (req, &path) {
            (Some(r), Some(p)) => Some(RequestCtx {
                method: r.method,
                path: p,
                host: r.host,
                headers: r.headers,
            }),
            _ => None,
        };
        let ctx = crate::engine::eval_ctx(conn, rctx);
        let traced = req.is_none() || rctx.is_some();
        let policies = if traced {
            self.applicable(&conn.destination)
                .map(|p| trace_policy(p, &ctx))
                .collect()
        } else {
            Vec::new()
        };
        let not_selected = self
            .considered(&conn.destination)
            .filter(|p| !p.selector.matches(conn.destination.labels))
            .map(|p| NotSelected {
                policy: p.id.clone(),
                selector: p.selector.to_string(),
            })
            .collect();
        explanation(
            decision,
            req.is_some(),
            path.map(|p| p.into_owned()),
            policies,
            not_selected,
        )
    }
}

impl Explanation {
    /// The explanation as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn explanation(
    d: Decision<'_>,
    http: bool,
    normalized_path: Option<String>,
    policies: Vec<PolicyTrace>,
    not_selected: Vec<NotSelected>,
) -> Explanation {
    Explanation {
        http,
        normalized_path,
        policies,
        not_selected,
        verdict: d.verdict,
        policy: d.deciding_policy.cloned(),
        reason: d.reason.to_string(),
        needs_l7: d.needs_l7,
        dry_run: d
            .dry_run
            .iter()
            .map(|o| (o.policy.clone(), o.would_be))
            .collect(),
        audit: d.audit.into_iter().cloned().collect(),
    }
}

fn trace_policy(p: &Policy, ctx: &EvalCtx<'_>) -> PolicyTrace {
    let (rules, invalid, matched) = match &p.body {
        Body::Rules { rules, .. } => {
            let rules: Vec<RuleTrace> = rules
                .iter()
                .enumerate()
                .map(|(i, r)| trace_rule(i, r, ctx, p.action))
                .collect();
            let matched = rules.iter().any(|r| r.matched);
            (rules, Vec::new(), matched)
        }
        Body::Invalid { reasons } => (
            Vec::new(),
            reasons.to_vec(),
            matches!(p.action, Action::Deny | Action::Custom),
        ),
    };
    PolicyTrace {
        policy: p.id.clone(),
        action: p.action,
        dry_run: p.dry_run,
        selector: p.selector.to_string(),
        matched,
        invalid,
        rules,
    }
}

fn trace_rule(index: usize, r: &Rule, ctx: &EvalCtx<'_>, action: Action) -> RuleTrace {
    let group = |g: &[Clause]| {
        let clauses: Vec<ClauseTrace> = g.iter().map(|c| trace_clause(c, ctx, action)).collect();
        GroupTrace {
            matched: clauses.iter().all(|c| c.holds),
            clauses,
        }
    };
    let from: Vec<GroupTrace> = r.from.iter().map(|g| group(g)).collect();
    let to: Vec<GroupTrace> = r.to.iter().map(|g| group(g)).collect();
    let when: Vec<ClauseTrace> = r
        .when
        .iter()
        .map(|c| trace_clause(c, ctx, action))
        .collect();
    let matched = r.matches(ctx, action);
    RuleTrace {
        index,
        matched,
        from,
        to,
        when,
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    let mut s = String::from("[");
    for (i, t) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{t}");
    }
    s.push(']');
    s
}

fn quoted(v: Option<&str>, none: &str) -> String {
    v.map_or_else(|| none.to_owned(), |v| format!("{v:?}"))
}

/// The attribute value and the alternatives of a test, for humans.
fn describe(test: &Test, ctx: &EvalCtx<'_>) -> (String, String) {
    let req = ctx.request.as_ref();
    match test {
        Test::Principal(ms) => (
            format!(
                "source principal {}",
                quoted(ctx.principal, "(none: plaintext)")
            ),
            list(ms),
        ),
        Test::Namespace(ms) => (
            format!("source namespace {}", quoted(ctx.namespace, "(none)")),
            list(ms),
        ),
        Test::SourceIp(nets) => (
            format!(
                "source ip {}",
                ctx.src_ip
                    .map_or("(unknown)".to_owned(), |ip| ip.to_string())
            ),
            list(nets),
        ),
        Test::ServiceAccount(sas) => (
            format!(
                "source service account {}",
                ctx.service_account
                    .map_or("(none)".to_owned(), |(ns, sa)| format!("{ns}/{sa}"))
            ),
            list(sas),
        ),
        Test::DestinationIp(nets) => (
            format!(
                "destination ip {}",
                ctx.dst_ip
                    .map_or("(unknown)".to_owned(), |ip| ip.to_string())
            ),
            list(nets),
        ),
        Test::DestinationPort(ports) => (format!("destination port {}", ctx.dst_port), list(ports)),
        Test::Sni(ms) => ("SNI (none: HBONE has no SNI)".to_owned(), list(ms)),
        Test::RequestAuth => (
            "request principal (none: no JWT authentication)".to_owned(),
            "[...]".to_owned(),
        ),
        Test::Host(ms) => (
            format!("host {}", quoted(req.map(|r| r.host), "(none)")),
            list(ms),
        ),
        Test::Method(ms) => (
            format!("method {}", quoted(req.map(|r| r.method), "(none)")),
            list(ms),
        ),
        Test::Path(ps) => (
            format!("normalized path {}", quoted(req.map(|r| r.path), "(none)")),
            list(ps),
        ),
        Test::Header { name, values } => {
            let value = req.and_then(|r| r.headers.joined(name)).map_or_else(
                || "(absent)".to_owned(),
                |v| format!("{:?}", String::from_utf8_lossy(&v)),
            );
            (format!("header {name} {value}"), list(values))
        }
    }
}

fn trace_clause(c: &Clause, ctx: &EvalCtx<'_>, action: Action) -> ClauseTrace {
    let holds = c.holds(ctx, action);
    let detail = if ctx.request.is_none() && c.test.is_l7() {
        if action == Action::Allow {
            "not an HTTP stream: an L7 field never holds in an ALLOW rule".to_owned()
        } else {
            format!("not an HTTP stream: an L7 field always holds in a {action} rule")
        }
    } else {
        let (attr, alternatives) = describe(&c.test, ctx);
        let matched = c.test.matches(ctx);
        let verb = match (c.negated, matched) {
            (false, true) => "matches one of",
            (false, false) => "matches none of",
            (true, true) => "matches one of the excluded",
            (true, false) => "matches none of the excluded",
        };
        format!("{attr} {verb} {alternatives}")
    };
    ClauseTrace {
        field: c.field.to_string(),
        holds,
        detail,
    }
}

fn mark(b: bool) -> &'static str {
    if b { "[match]   " } else { "[no match]" }
}

fn write_clause(f: &mut fmt::Formatter<'_>, indent: &str, c: &ClauseTrace) -> fmt::Result {
    let m = if c.holds { "[holds]" } else { "[fails]" };
    writeln!(f, "{indent}{m} {}: {}", c.field, c.detail)
}

fn write_groups(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    empty: &str,
    groups: &[GroupTrace],
) -> fmt::Result {
    if groups.is_empty() {
        writeln!(f, "        {name}: {empty}")?;
    }
    for (i, g) in groups.iter().enumerate() {
        writeln!(f, "        {} {name}[{i}]", mark(g.matched))?;
        for c in &g.clauses {
            write_clause(f, "            ", c)?;
        }
    }
    Ok(())
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.http, &self.normalized_path) {
            (false, _) => writeln!(
                f,
                "stream: not HTTP (L7 fields: false in ALLOW rules, true in DENY rules)"
            )?,
            (true, Some(p)) => writeln!(f, "request: HTTP, normalized path {p:?}")?,
            (true, None) => writeln!(f, "request: HTTP, path refused before any policy")?,
        }
        if self.policies.is_empty() {
            writeln!(f, "no policy applies")?;
        }
        for p in &self.policies {
            let dry = if p.dry_run { " (dry-run)" } else { "" };
            writeln!(
                f,
                "{} policy {} {}{dry}, selector {}",
                mark(p.matched),
                p.policy,
                p.action,
                p.selector
            )?;
            if !p.invalid.is_empty() {
                let effect = match p.action {
                    Action::Deny | Action::Custom => "denies everything it selects",
                    Action::Allow => "allows nothing",
                    Action::Audit => "reports nothing",
                };
                writeln!(f, "    invalid, fails closed ({effect}):")?;
                for e in &p.invalid {
                    writeln!(f, "      {e}")?;
                }
            } else if p.rules.is_empty() {
                writeln!(f, "    no rules: matches nothing")?;
            }
            for r in &p.rules {
                writeln!(f, "    {} rule {}", mark(r.matched), r.index)?;
                write_groups(f, "from", "any source", &r.from)?;
                write_groups(f, "to", "any operation", &r.to)?;
                for c in &r.when {
                    write_clause(f, "        ", c)?;
                }
            }
        }
        for n in &self.not_selected {
            writeln!(
                f,
                "not applied: {} (selector {} does not match)",
                n.policy, n.selector
            )?;
        }
        for (p, v) in &self.dry_run {
            writeln!(f, "dry-run: {p} would {v}")?;
        }
        for a in &self.audit {
            writeln!(f, "audit: {a}")?;
        }
        if self.needs_l7 {
            writeln!(
                f,
                "needs L7: applicable policies have HTTP fields; requests are decided one by one"
            )?;
        }
        let verdict = match self.verdict {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
        };
        write!(f, "verdict: {verdict}: {}", self.reason)?;
        if let Some(p) = &self.policy {
            write!(f, " (policy {p})")?;
        }
        writeln!(f)
    }
}
