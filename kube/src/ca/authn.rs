//! Caller authentication by TokenReview: the caller presents a projected ServiceAccount token
//! with audience `nodemesh-ca`; the API server vouches for it, names its ServiceAccount and the
//! pod (and, since Kubernetes 1.30, the node) it is bound to. The caller's node is that pod's
//! node as the pod index knows it, so a token of a pod that has gone is refused.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::Api;
use kube::api::PostParams;
use nodemesh_ca::{AuthError, AuthFuture, Authenticator};
use nodemesh_identity::SpiffeId;

use super::placement::PodPlacement;

/// The audience the CA accepts tokens for.
pub const CA_AUDIENCE: &str = "nodemesh-ca";

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const NODE_NAME: &str = "authentication.kubernetes.io/node-name";
const SA_PREFIX: &str = "system:serviceaccount:";

/// A ServiceAccount allowed to call the CA, `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallerRef {
    /// Namespace.
    pub namespace: String,
    /// ServiceAccount name.
    pub name: String,
}

impl std::str::FromStr for CallerRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!(
                "{s:?} is not NAMESPACE/SERVICEACCOUNT (e.g. nodemesh-system/nodemesh-proxy)"
            )),
        }
    }
}

impl fmt::Display for CallerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Authenticates CA callers with TokenReview and authorizes identities by node with the pod
/// index.
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    allowed: Vec<CallerRef>,
    pods: Arc<PodPlacement>,
}

impl fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// Accepts tokens of the `allowed` ServiceAccounts, locating their pods in `pods`.
    pub fn new(client: kube::Client, allowed: Vec<CallerRef>, pods: Arc<PodPlacement>) -> Self {
        Self {
            client,
            allowed,
            pods,
        }
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: Some(vec![CA_AUDIENCE.to_owned()]),
                },
                ..TokenReview::default()
            };
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let reviewed = api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| AuthError::new(format!("TokenReview failed: {e}")))?;
            let status = reviewed.status.unwrap_or_default();
            decide(&status, &self.allowed, &self.pods)
        })
    }

    fn runs_on(&self, node: &str, identity: &SpiffeId) -> bool {
        self.pods.runs_on(node, identity)
    }

    fn unidentified(&self, node: &str, identity: &SpiffeId) -> Option<String> {
        self.pods.unidentified(node, identity)
    }
}

fn claim<'a>(extra: &'a BTreeMap<String, Vec<String>>, key: &str) -> Option<&'a str> {
    extra.get(key)?.first().map(String::as_str)
}

/// Decides a reviewed token (no I/O): the caller's node, or why it is refused.
pub fn decide(
    status: &TokenReviewStatus,
    allowed: &[CallerRef],
    pods: &PodPlacement,
) -> Result<String, AuthError> {
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().unwrap_or("no reason given");
        return Err(AuthError::new(format!(
            "token rejected by TokenReview: {why}"
        )));
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == CA_AUDIENCE))
    {
        return Err(AuthError::new(format!(
            "token audience is not {CA_AUDIENCE}"
        )));
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((ns, sa)) = username
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(AuthError::new(format!(
            "{username:?} is not a ServiceAccount"
        )));
    };
    let caller = CallerRef {
        namespace: ns.to_owned(),
        name: sa.to_owned(),
    };
    if !allowed.contains(&caller) {
        return Err(AuthError::new(format!(
            "ServiceAccount {caller} is not an allowed caller"
        )));
    }
    let extra = user.extra.unwrap_or_default();
    let (Some(pod_name), Some(pod_uid)) = (claim(&extra, POD_NAME), claim(&extra, POD_UID)) else {
        return Err(AuthError::new(
            "token is not bound to a pod (use a projected ServiceAccount token)",
        ));
    };
    let Some(place) = pods.pod(ns, pod_name) else {
        return Err(AuthError::new(format!(
            "the token's pod {ns}/{pod_name} has gone"
        )));
    };
    if place.uid != pod_uid {
        return Err(AuthError::new(format!(
            "the token's pod {ns}/{pod_name} (uid {pod_uid}) has gone; a new pod has its name"
        )));
    }
    if place.service_account != sa {
        return Err(AuthError::new(format!(
            "the token's pod {ns}/{pod_name} runs as {}, not {sa}",
            place.service_account
        )));
    }
    if let Some(node) = claim(&extra, NODE_NAME)
        && node != place.node
    {
        return Err(AuthError::new(format!(
            "the token's node claim {node:?} differs from its pod's node {:?}",
            place.node
        )));
    }
    Ok(place.node)
}
