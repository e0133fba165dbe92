//! Compiled rules: flat lists of clauses that test one attribute each.
//!
//! A rule matches when one of its `from` groups matches (or it has none), one of its `to`
//! groups matches (or it has none), and every `when` clause holds. A group matches when every
//! clause in it holds. Each `principals`, `notPrincipals`, `when[].values`, ... becomes one
//! clause, so evaluation and `explain` walk the same structure.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::matcher::{ServiceAccount, StringMatch};
use crate::model::Action;
use crate::path::PathPattern;
use crate::request::Headers;

/// The attributes of one evaluation, resolved once per decision.
#[derive(Clone, Copy)]
pub(crate) struct EvalCtx<'a> {
    /// Peer principal without `spiffe://`.
    pub principal: Option<&'a str>,
    /// `(namespace, service account)` from the principal.
    pub service_account: Option<(&'a str, &'a str)>,
    /// Peer namespace.
    pub namespace: Option<&'a str>,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    pub dst_port: u16,
    /// Present when evaluating an HTTP request; `None` for a stream that is not HTTP.
    pub request: Option<RequestCtx<'a>>,
}

/// The HTTP attributes of one request.
#[derive(Clone, Copy)]
pub(crate) struct RequestCtx<'a> {
    pub method: &'a str,
    /// Normalized path.
    pub path: &'a str,
    /// Host as sent.
    pub host: &'a str,
    pub headers: &'a dyn Headers,
}

/// What a clause tests. Every list holds alternatives: the test passes when one matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Test {
    Principal(Box<[StringMatch]>),
    Namespace(Box<[StringMatch]>),
    SourceIp(Box<[IpNet]>),
    ServiceAccount(Box<[ServiceAccount]>),
    DestinationIp(Box<[IpNet]>),
    DestinationPort(Box<[u16]>),
    /// `connection.sni`: never set, we have no SNI.
    Sni(Box<[StringMatch]>),
    /// `requestPrincipals` and `request.auth.*`: no JWT authentication, never matches (L7).
    RequestAuth,
    /// Case-insensitive, with and without a `:port` (L7).
    Host(Box<[StringMatch]>),
    /// Case-insensitive (L7).
    Method(Box<[StringMatch]>),
    /// On the normalized path (L7).
    Path(Box<[PathPattern]>),
    /// `request.headers[name]`: the header's values joined by `,` match (L7), as in Envoy.
    Header {
        name: Box<str>,
        values: Box<[StringMatch]>,
    },
}

impl Test {
    /// Whether the test needs HTTP attributes.
    pub fn is_l7(&self) -> bool {
        matches!(
            self,
            Test::RequestAuth
                | Test::Host(_)
                | Test::Method(_)
                | Test::Path(_)
                | Test::Header { .. }
        )
    }

    /// Whether the attribute matches one of the alternatives. L7 tests on a context without a
    /// request return false (callers handle that case first).
    pub fn matches(&self, ctx: &EvalCtx<'_>) -> bool {
        match self {
            Test::Principal(ms) => ctx
                .principal
                .is_some_and(|p| ms.iter().any(|m| m.matches(p.as_bytes()))),
            Test::Namespace(ms) => ctx
                .namespace
                .is_some_and(|n| ms.iter().any(|m| m.matches(n.as_bytes()))),
            Test::SourceIp(nets) => ctx
                .src_ip
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            Test::ServiceAccount(sas) => ctx
                .service_account
                .is_some_and(|(ns, sa)| sas.iter().any(|s| &*s.namespace == ns && &*s.name == sa)),
            Test::DestinationIp(nets) => ctx
                .dst_ip
                .is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))),
            Test::DestinationPort(ports) => ports.contains(&ctx.dst_port),
            Test::Sni(_) | Test::RequestAuth => false,
            Test::Host(ms) => ctx.request.is_some_and(|r| {
                let bare = crate::matcher::host_without_port(r.host);
                ms.iter()
                    .any(|m| m.matches_ci(r.host.as_bytes()) || m.matches_ci(bare.as_bytes()))
            }),
            Test::Method(ms) => ctx
                .request
                .is_some_and(|r| ms.iter().any(|m| m.matches_ci(r.method.as_bytes()))),
            Test::Path(ps) => ctx
                .request
                .is_some_and(|r| ps.iter().any(|p| p.matches(r.path))),
            Test::Header { name, values } => ctx.request.is_some_and(|r| {
                r.headers
                    .joined(name)
                    .is_some_and(|v| values.iter().any(|m| m.matches(&v)))
            }),
        }
    }
}

/// One test, possibly negated (`notPrincipals`, `notValues`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Clause {
    /// Where the clause comes from, e.g. `spec.rules[0].from[1].source.notPrincipals`.
    pub field: Box<str>,
    pub negated: bool,
    pub test: Test,
}

impl Clause {
    /// Whether the clause holds. On a stream that is not HTTP an L7 clause is false in ALLOW
    /// rules and true in DENY (and AUDIT) rules: fail closed either way.
    #[inline]
    pub fn holds(&self, ctx: &EvalCtx<'_>, action: Action) -> bool {
        if ctx.request.is_none() && self.test.is_l7() {
            return action != Action::Allow;
        }
        self.test.matches(ctx) != self.negated
    }
}

/// A compiled rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Alternatives; each an AND of clauses. Empty: any source.
    pub from: Box<[Box<[Clause]>]>,
    /// Alternatives; each an AND of clauses. Empty: any operation.
    pub to: Box<[Box<[Clause]>]>,
    /// All must hold.
    pub when: Box<[Clause]>,
}

impl Rule {
    /// Whether the rule matches.
    #[inline]
    pub fn matches(&self, ctx: &EvalCtx<'_>, action: Action) -> bool {
        let group = |g: &[Clause]| g.iter().all(|c| c.holds(ctx, action));
        (self.from.is_empty() || self.from.iter().any(|g| group(g)))
            && (self.to.is_empty() || self.to.iter().any(|g| group(g)))
            && self.when.iter().all(|c| c.holds(ctx, action))
    }

    /// Whether any clause needs HTTP attributes.
    pub fn is_l7(&self) -> bool {
        self.clauses().any(|c| c.test.is_l7())
    }

    /// Every clause of the rule.
    pub fn clauses(&self) -> impl Iterator<Item = &Clause> {
        self.from
            .iter()
            .chain(self.to.iter())
            .flat_map(|g| g.iter())
            .chain(self.when.iter())
    }
}
