//! The evaluation engine: a set of compiled policies indexed by namespace, deciding connections
//! (L4) and HTTP requests (L7). Pure: no I/O, no clock, no allocation on the common path.

use std::collections::HashMap;

use crate::decision::{Decision, DryRunOutcome, Reason, Verdict};
use crate::matcher::{principal_form, principal_parts};
use crate::model::Action;
use crate::path::{PathOptions, normalize};
use crate::policy::{Policy, PolicyMatch};
use crate::request::{Connection, Destination, HttpRequest};
use crate::rule::{EvalCtx, RequestCtx};

/// The default root namespace, whose policies apply mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "nodemesh-system";

/// Engine settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Policies in this namespace apply to every namespace (subject to their selector).
    pub root_namespace: String,
    /// Request path normalization.
    pub path: PathOptions,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            root_namespace: DEFAULT_ROOT_NAMESPACE.to_owned(),
            path: PathOptions::default(),
        }
    }
}

/// An immutable set of compiled policies, indexed by namespace.
///
/// Deciding costs the policies of the destination's namespace and of the root namespace only;
/// policies elsewhere in the mesh are never looked at. Build a new set when policies change.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    policies: Box<[Policy]>,
    by_namespace: HashMap<Box<str>, Box<[u32]>>,
    /// The root namespace's entry of `by_namespace`, looked up once.
    root: Box<[u32]>,
    options: EngineOptions,
}

impl PolicySet {
    /// Builds the set. Policies are ordered by `namespace/name`, so results never depend on the
    /// order they are given in.
    pub fn new(policies: impl IntoIterator<Item = Policy>, options: EngineOptions) -> Self {
        let mut policies: Vec<Policy> = policies.into_iter().collect();
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        let mut index: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            // More than u32::MAX policies cannot be held in memory anyway; saturating keeps it total.
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            index
                .entry(p.id.namespace.as_str().into())
                .or_default()
                .push(i);
        }
        let root = index
            .get(options.root_namespace.as_str())
            .cloned()
            .unwrap_or_default()
            .into();
        Self {
            policies: policies.into(),
            by_namespace: index.into_iter().map(|(k, v)| (k, v.into())).collect(),
            root,
            options,
        }
    }

    /// Every policy, ordered by `namespace/name`.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The settings the set was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Indices of the destination namespace's policies, then of the root namespace's.
    #[inline]
    fn candidates(&self, dest: &Destination<'_>) -> impl Iterator<Item = &u32> {
        let own = self.by_namespace.get(dest.namespace).map_or(&[][..], |v| v);
        let root = if dest.namespace == self.options.root_namespace {
            &[][..]
        } else {
            &self.root[..]
        };
        own.iter().chain(root)
    }

    /// Policies of the destination's namespace and of the root namespace, selected or not.
    pub(crate) fn considered<'s>(
        &'s self,
        dest: &Destination<'_>,
    ) -> impl Iterator<Item = &'s Policy> {
        self.candidates(dest)
            .filter_map(|&i| self.policies.get(i as usize))
    }

    /// Policies that apply to a destination workload: those of its namespace whose selector
    /// matches, then those of the root namespace whose selector matches.
    pub fn applicable<'s>(&'s self, dest: &Destination<'s>) -> impl Iterator<Item = &'s Policy> {
        let labels = dest.labels;
        self.considered(dest)
            .filter(move |p| p.selector.matches(labels))
    }

    /// Whether connections to this destination need HTTP-level decisions.
    pub fn needs_l7(&self, dest: &Destination<'_>) -> bool {
        self.applicable(dest).any(Policy::needs_l7)
    }

    /// Decides a connection (L4). When [`Decision::needs_l7`] is set and the stream turns out to
    /// be HTTP, decide each request with [`PolicySet::decide_request`]; otherwise this stands.
    pub fn decide_connection<'e>(&'e self, conn: &Connection<'_>) -> Decision<'e> {
        let ctx = eval_ctx(conn, None);
        self.decide(&conn.destination, &ctx)
    }

    /// Decides one HTTP request. A path the normalizer refuses is denied (the proxy answers 400).
    pub fn decide_request<'e>(
        &'e self,
        conn: &Connection<'_>,
        req: &HttpRequest<'_>,
    ) -> Decision<'e> {
        let path = match normalize(req.path, self.options.path) {
            Ok(p) => p,
            Err(e) => {
                return Decision {
                    verdict: Verdict::Deny,
                    deciding_policy: None,
                    reason: Reason::InvalidPath(e),
                    needs_l7: true,
                    dry_run: Vec::new(),
                    audit: Vec::new(),
                };
            }
        };
        let rctx = RequestCtx {
            method: req.method,
            path: &path,
            host: req.host,
            headers: req.headers,
        };
        let ctx = eval_ctx(conn, Some(rctx));
        self.decide(&conn.destination, &ctx)
    }

    fn decide<'e>(&'e self, dest: &Destination<'_>, ctx: &EvalCtx<'_>) -> Decision<'e> {
        let mut deny: Option<(&Policy, PolicyMatch)> = None;
        let mut allow_applies = false;
        let mut allow: Option<(&Policy, usize)> = None;
        let mut needs_l7 = false;
        let mut audit = Vec::new();
        let mut dry: Vec<(&Policy, bool)> = Vec::new();

        let labels = dest.labels;
        for &i in self.candidates(dest) {
            let Some(p) = self.policies.get(i as usize) else {
                continue;
            };
            if !p.selector.matches(labels) {
                continue;
            }
            needs_l7 |= p.needs_l7();
            if p.dry_run {
                dry.push((p, p.evaluate(ctx) != PolicyMatch::No));
                continue;
            }
            match p.action {
                Action::Deny | Action::Custom => {
                    if deny.is_none() {
                        let m = p.evaluate(ctx);
                        if m != PolicyMatch::No {
                            deny = Some((p, m));
                        }
                    }
                }
                Action::Allow => {
                    allow_applies = true;
                    if allow.is_none()
                        && deny.is_none()
                        && let PolicyMatch::Rule(r) = p.evaluate(ctx)
                    {
                        allow = Some((p, r));
                    }
                }
                Action::Audit => {
                    if p.evaluate(ctx) != PolicyMatch::No {
                        audit.push(&p.id);
                    }
                }
            }
        }

        let (verdict, deciding, reason) = match (deny, allow) {
            (Some((p, m)), _) => {
                let reason = match m {
                    PolicyMatch::Rule(rule) => {
                        // A DENY rule without L7 clauses denies every request alike: no need to
                        // look at HTTP.
                        if !p.rule_is_l7(rule) {
                            needs_l7 = false;
                        }
                        Reason::DenyMatched { rule }
                    }
                    _ => {
                        needs_l7 = false;
                        Reason::InvalidPolicy
                    }
                };
                (Verdict::Deny, Some(&p.id), reason)
            }
            (None, Some((p, rule))) => (Verdict::Allow, Some(&p.id), Reason::AllowMatched { rule }),
            (None, None) if !allow_applies => (Verdict::Allow, None, Reason::NoAllowPolicy),
            (None, None) => (Verdict::Deny, None, Reason::NoAllowMatched),
        };

        let dry_run = dry
            .into_iter()
            .map(|(p, matched)| DryRunOutcome {
                policy: &p.id,
                would_be: would_be(p.action, matched, verdict, deny.is_some(), allow_applies),
            })
            .collect();

        Decision {
            verdict,
            deciding_policy: deciding,
            reason,
            needs_l7,
            dry_run,
            audit,
        }
    }
}

/// The verdict had a dry-run policy been enforced alongside the enforced ones.
fn would_be(
    action: Action,
    matched: bool,
    enforced: Verdict,
    denied_by_deny: bool,
    allow_applies: bool,
) -> Verdict {
    match action {
        Action::Deny | Action::Custom if matched => Verdict::Deny,
        Action::Allow if denied_by_deny => Verdict::Deny,
        Action::Allow if matched => Verdict::Allow,
        // An unmatched ALLOW would make the workload deny-by-default.
        Action::Allow if !allow_applies => Verdict::Deny,
        _ => enforced,
    }
}

/// Resolves the attributes of a connection once.
pub(crate) fn eval_ctx<'a>(conn: &Connection<'a>, request: Option<RequestCtx<'a>>) -> EvalCtx<'a> {
    let principal = conn.source.principal.map(principal_form);
    let service_account = principal.and_then(principal_parts);
    EvalCtx {
        principal,
        service_account,
        namespace: conn.source.namespace.or(service_account.map(|(ns, _)| ns)),
        src_ip: conn.source.ip,
        dst_ip: conn.destination.ip,
        dst_port: conn.destination.port,
        request,
    }
}
