//! Compile errors: each names the policy, the field path and the reason.

use std::fmt;

use crate::matcher::PatternError;
use crate::path::PathPatternError;
use crate::policy::PolicyRef;

/// The most rules one policy may have.
pub const MAX_RULES: usize = 512;

/// One reason a policy does not compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompileErrorKind {
    /// `action: CUSTOM`.
    #[error("action CUSTOM is not supported: nodemesh has no external authorizer")]
    CustomAction,
    /// `targetRef` / `targetRefs` (waypoint bindings).
    #[error("targetRef/targetRefs bind waypoints, which nodemesh does not have; use selector")]
    TargetRef,
    /// More than [`MAX_RULES`] rules.
    #[error("{count} rules; at most {MAX_RULES} are allowed")]
    TooManyRules {
        /// How many rules the policy has.
        count: usize,
    },
    /// An IP address or CIDR that does not parse.
    #[error("invalid IP address or CIDR {value:?}")]
    BadCidr {
        /// The value as written.
        value: String,
    },
    /// A port that is not a number in 1..=65535.
    #[error("invalid port {value:?}: expected a number in 1..=65535")]
    BadPort {
        /// The value as written.
        value: String,
    },
    /// A string pattern that cannot be compiled.
    #[error("invalid match {value:?}: {}", pattern_reason(*.error))]
    BadPattern {
        /// The value as written.
        value: String,
        /// Why.
        error: PatternError,
    },
    /// A path pattern that cannot be compiled.
    #[error("invalid path {value:?}: {error}")]
    BadPath {
        /// The value as written.
        value: String,
        /// Why.
        error: PathPatternError,
    },
    /// A principal written with `spiffe://`, which Istio's syntax never matches.
    #[error("principal {value:?} must be written without spiffe:// (e.g. cluster.local/ns/a/sa/b)")]
    SpiffePrefix {
        /// The value as written.
        value: String,
    },
    /// `serviceAccounts`/`notServiceAccounts` together with `principals`/`notPrincipals`.
    #[error("serviceAccounts cannot be mixed with principals in one source")]
    ServiceAccountsWithPrincipals,
    /// A service account that is neither `ns/sa` nor `sa`.
    #[error("invalid service account {value:?}: expected ns/sa or sa, without wildcards")]
    BadServiceAccount {
        /// The value as written.
        value: String,
    },
    /// A `when` key we do not know.
    #[error("unknown condition key {key:?}")]
    UnknownKey {
        /// The key as written.
        key: String,
    },
    /// A `when` entry with neither `values` nor `notValues`.
    #[error("values and notValues are both empty")]
    EmptyCondition,
    /// A `from` entry without `source`, or with an empty one.
    #[error("source is missing or sets no field")]
    EmptySource,
    /// A `to` entry without `operation`, or with an empty one.
    #[error("operation is missing or sets no field")]
    EmptyOperation,
    /// A dry-run annotation whose value is not a boolean.
    #[error("dry-run annotation value {value:?} is not a boolean")]
    BadDryRun {
        /// The value as written.
        value: String,
    },
    /// A policy without `metadata.namespace` (files only).
    #[error("missing namespace")]
    MissingNamespace,
}

fn pattern_reason(e: PatternError) -> &'static str {
    match e {
        PatternError::Empty => "empty value",
        PatternError::MisplacedWildcard => "`*` is only allowed as the first or last character",
    }
}

/// A compile error: which policy, which field, why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{policy}: {field}: {kind}")]
pub struct CompileError {
    /// The policy.
    pub policy: PolicyRef,
    /// The field path, e.g. `spec.rules[2].to[0].operation.paths[1]`.
    pub field: String,
    /// The reason.
    #[source]
    pub kind: CompileErrorKind,
}

/// Every compile error of one policy (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileErrors(pub Vec<CompileError>);

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileErrors {}
