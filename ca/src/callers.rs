//! Who may call the CA: the standalone files, or an external authenticator (Kubernetes
//! TokenReview) that also knows where workloads run.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use nodemesh_identity::{SpiffeId, TrustDomain};

/// Why an external authenticator refused a token; the reason is logged and returned to the
/// caller as `Unauthenticated`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct AuthError {
    /// What is wrong, e.g. `token audience is not nodemesh-ca`.
    pub reason: String,
}

impl AuthError {
    /// A refusal for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// The boxed future [`Authenticator::authenticate`] returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<String, AuthError>> + Send + 'a>>;

/// Authenticates callers and authorizes identities by node (e.g. TokenReview plus an index of
/// running pods).
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// The node of the caller presenting `token`, or why it is refused.
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;

    /// Whether a workload with `identity` runs on `node`.
    fn runs_on(&self, node: &str, identity: &SpiffeId) -> bool;

    /// When `identity` does not run on `node`, but pods that could be taken for it do and get no
    /// identity (mirror pods, pods without a service account), which ones and why: the refusal
    /// says so. `None` (the default) when there is nothing more to say.
    fn unidentified(&self, node: &str, identity: &SpiffeId) -> Option<String> {
        let _ = (node, identity);
        None
    }
}

/// Where callers and workload placement come from.
#[derive(Debug, Clone)]
pub enum Callers {
    /// Standalone: the YAML (trust domain, which workloads run where) and the tokens file.
    Files {
        /// The standalone YAML.
        config_file: PathBuf,
        /// `TOKEN NODE-NAME` per line.
        tokens_file: PathBuf,
    },
    /// An external authenticator (Kubernetes).
    External {
        /// The SPIFFE trust domain.
        trust_domain: TrustDomain,
        /// Authenticates tokens and knows where workloads run.
        authenticator: Arc<dyn Authenticator>,
    },
}
