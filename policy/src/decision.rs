//! What the engine answers: a verdict and why.

use std::fmt;

use serde::Serialize;

use crate::path::InvalidPath;
use crate::policy::PolicyRef;

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The connection or request may proceed.
    Allow,
    /// The connection or request is refused.
    Deny,
}

impl Verdict {
    /// `"allow"` or `"deny"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the verdict is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// No DENY policy matched and no ALLOW policy applies.
    NoAllowPolicy,
    /// Rule `rule` of the deciding ALLOW policy matched.
    AllowMatched {
        /// Index in `spec.rules`.
        rule: usize,
    },
    /// Rule `rule` of the deciding DENY policy matched.
    DenyMatched {
        /// Index in `spec.rules`.
        rule: usize,
    },
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
    /// The deciding DENY (or CUSTOM) policy did not compile and denies everything it selects.
    InvalidPolicy,
    /// The request path was refused before any policy was evaluated.
    InvalidPath(InvalidPath),
}

impl Reason {
    /// A stable code for logs, metrics and JSON output.
    pub fn code(self) -> &'static str {
        match self {
            Reason::NoAllowPolicy => "no_allow_policy",
            Reason::AllowMatched { .. } => "allow_matched",
            Reason::DenyMatched { .. } => "deny_matched",
            Reason::NoAllowMatched => "no_allow_matched",
            Reason::InvalidPolicy => "invalid_policy",
            Reason::InvalidPath(_) => "invalid_path",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoAllowPolicy => {
                f.write_str("no DENY policy matched and no ALLOW policy applies")
            }
            Reason::AllowMatched { rule } => write!(f, "rule {rule} of an ALLOW policy matched"),
            Reason::DenyMatched { rule } => write!(f, "rule {rule} of a DENY policy matched"),
            Reason::NoAllowMatched => f.write_str("ALLOW policies apply and none matched"),
            Reason::InvalidPolicy => {
                f.write_str("a DENY policy that does not compile denies everything it selects")
            }
            Reason::InvalidPath(e) => write!(f, "invalid path: {e}"),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

/// What a dry-run policy would have done had it been enforced (with the enforced ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DryRunOutcome<'e> {
    /// The dry-run policy.
    pub policy: &'e PolicyRef,
    /// The verdict if it were enforced.
    pub would_be: Verdict,
}

/// The engine's answer for one connection or request. Borrows policy names from the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision<'e> {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The policy that decided, when one did.
    #[serde(rename = "policy")]
    pub deciding_policy: Option<&'e PolicyRef>,
    /// Why.
    pub reason: Reason,
    /// Some applicable policy has L7 fields: HTTP requests on this connection must be decided one
    /// by one with [`crate::PolicySet::decide_request`]; if the stream is not HTTP, this decision
    /// (made with L7 conditions false in ALLOW rules and true in DENY rules) stands.
    #[serde(rename = "needsL7")]
    pub needs_l7: bool,
    /// Dry-run policies that apply, and what each would have done.
    pub dry_run: Vec<DryRunOutcome<'e>>,
    /// AUDIT policies that matched.
    pub audit: Vec<&'e PolicyRef>,
}

impl Decision<'_> {
    /// The decision as the JSON object `nodemesh policy check --output json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
        };
        write!(f, "{verdict}: {}", self.reason)?;
        if let Some(p) = self.deciding_policy {
            write!(f, " (policy {p})")?;
        }
        if self.needs_l7 {
            f.write_str(
                "\nneeds L7: applicable policies have HTTP fields; requests are decided one by one",
            )?;
        }
        for d in &self.dry_run {
            write!(f, "\ndry-run: {} would {}", d.policy, d.would_be)?;
        }
        for a in &self.audit {
            write!(f, "\naudit: {a}")?;
        }
        Ok(())
    }
}
