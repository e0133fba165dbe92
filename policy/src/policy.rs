//! A compiled policy: who it is, which workloads it selects, and its rules (or, when it did not
//! compile, how it fails closed).

use std::fmt;

use crate::model::Action;
use crate::request::Labels;
use crate::rule::{EvalCtx, Rule};

/// A policy's identity, `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    /// Namespace of the policy.
    pub namespace: String,
    /// Name of the policy.
    pub name: String,
}

impl PolicyRef {
    /// A reference to `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl serde::Serialize for PolicyRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `matchLabels`: every pair must be on the workload. Empty selects every workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(pub(crate) Box<[(Box<str>, Box<str>)]>);

impl Selector {
    /// Whether the selector matches a workload's labels.
    #[inline]
    pub fn matches(&self, labels: &dyn Labels) -> bool {
        self.0
            .iter()
            .all(|(k, v)| labels.label(k).is_some_and(|l| l == &**v))
    }

    /// Whether it selects every workload.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(all workloads)");
        }
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// The body of a compiled policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// Compiled rules; `l7` when any rule needs HTTP attributes.
    Rules { rules: Box<[Rule]>, l7: bool },
    /// The policy did not compile: an ALLOW or AUDIT policy matches nothing, a DENY (or CUSTOM)
    /// policy matches everything. The reasons are kept for `explain`.
    Invalid { reasons: Box<[String]> },
}

/// How a policy matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PolicyMatch {
    /// No rule matched.
    No,
    /// Rule `n` matched.
    Rule(usize),
    /// An invalid DENY/CUSTOM policy, which matches everything.
    FailClosed,
}

/// A validated policy, ready for the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub(crate) id: PolicyRef,
    pub(crate) action: Action,
    pub(crate) selector: Selector,
    pub(crate) dry_run: bool,
    pub(crate) body: Body,
}

impl Policy {
    /// `namespace/name`.
    pub fn id(&self) -> &PolicyRef {
        &self.id
    }

    /// The policy's action (CUSTOM only for a policy that failed to compile).
    pub fn action(&self) -> Action {
        self.action
    }

    /// The workload selector.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// Whether the policy is dry-run (evaluated and reported, never enforced).
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether the policy compiled; an invalid one fails closed.
    pub fn is_valid(&self) -> bool {
        matches!(self.body, Body::Rules { .. })
    }

    /// Whether the policy has L7 fields (methods, paths, hosts, request principals, headers).
    pub fn needs_l7(&self) -> bool {
        matches!(self.body, Body::Rules { l7: true, .. })
    }

    /// Evaluates the policy's rules.
    #[inline]
    pub(crate) fn evaluate(&self, ctx: &EvalCtx<'_>) -> PolicyMatch {
        match &self.body {
            Body::Rules { rules, .. } => rules
                .iter()
                .position(|r| r.matches(ctx, self.action))
                .map_or(PolicyMatch::No, PolicyMatch::Rule),
            Body::Invalid { .. } => match self.action {
                Action::Deny | Action::Custom => PolicyMatch::FailClosed,
                Action::Allow | Action::Audit => PolicyMatch::No,
            },
        }
    }
}

impl Policy {
    /// Whether rule `index` has L7 clauses.
    pub(crate) fn rule_is_l7(&self, index: usize) -> bool {
        match &self.body {
            Body::Rules { rules, .. } => rules.get(index).is_some_and(Rule::is_l7),
            Body::Invalid { .. } => false,
        }
    }
}
