//! Istio-compatible `AuthorizationPolicy` for nodemesh: the wire model, compilation to a
//! validated form, and a pure evaluation engine the node proxy calls on every connection (L4)
//! and, where a policy needs it, every HTTP request (L7).
//!
//! ```text
//! YAML / Kubernetes --(model)--> AuthorizationPolicySpec --(compile)--> Policy
//!     Policy... --> PolicySet::new --> decide_connection / decide_request / explain --> Decision
//! name=value pairs --(TrafficQuery::from_pairs)--> connection() / request() --^
//! ```
//!
//! The engine does no I/O. Semantics are Istio's, with these stricter points: request paths are
//! normalized with merged slashes and escaped slashes are refused; methods match
//! case-insensitively; `requestPrincipals` and `request.auth.*` never hold (no JWT
//! authentication); on a stream that is not HTTP, L7 fields are false in ALLOW rules and true in
//! DENY rules; a policy that does not compile fails closed.

pub mod compile;
pub mod decision;
pub mod engine;
pub mod error;
pub mod explain;
pub mod lint;
pub mod load;
pub mod matcher;
pub mod model;
pub mod netpol;
pub mod path;
pub mod policy;
pub mod query;
pub mod request;
mod rule;
pub mod status;
pub mod suggest;

pub use compile::{compile, compile_fail_closed, fail_closed_unparsable};
pub use decision::{Decision, DryRunOutcome, Reason, Verdict};
pub use engine::{DEFAULT_ROOT_NAMESPACE, EngineOptions, PolicySet};
pub use error::{CompileError, CompileErrorKind, CompileErrors};
pub use explain::Explanation;
pub use load::{Problem, load_files};
#[cfg(feature = "crd")]
pub use model::AuthorizationPolicy;
pub use model::{Action, AuthorizationPolicySpec, PolicyDocument};
pub use path::{InvalidPath, PathOptions};
pub use policy::{Policy, PolicyRef};
pub use query::{FieldProblem, TrafficField, TrafficQuery, TrafficQueryError};
pub use request::{Connection, Destination, Headers, HttpRequest, Labels, Peer};
