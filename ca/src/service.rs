//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: authenticate the node, authorize the
//! identity, check the CSR and lifetime, sign.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use nodemesh_identity::{Clock, SpiffeId, der_to_pem};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::authcache::{AuthCache, CachedRefusal};
use crate::authz::{NodeIndex, Tokens, bearer_token};
use crate::callers::{AuthError, Authenticator};
use crate::csr::{CsrError, check_csr};
use crate::issuer::{Authority, LifetimeError, LifetimePolicy, SignError};
use crate::ledger::Ledger;
use crate::proto::istio_certificate_service_server::IstioCertificateService;
use crate::proto::{IstioCertificateRequest, IstioCertificateResponse};

/// The metadata key ztunnel sets to the identity it asks for on a workload's behalf.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// Everything a request is checked against; replaced as a whole when files change.
#[derive(Debug)]
pub struct CaSnapshot {
    /// The signing root and the trust bundle.
    pub authority: Authority,
    /// Bearer tokens of the nodes.
    pub tokens: Tokens,
    /// Which identities run on which node.
    pub nodes: NodeIndex,
}

/// Why a request was refused, with the gRPC code it maps to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No token, or a token of no node (`Unauthenticated`).
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// The external authenticator refused the token (`Unauthenticated`).
    #[error("unauthenticated: {0}")]
    Refused(#[from] AuthError),
    /// The caller's address has caused too many refused token reviews lately
    /// (`ResourceExhausted`).
    #[error("too many unauthenticated requests from this address; retry in {}s", retry_after.as_secs())]
    Throttled {
        /// When another review is possible.
        retry_after: std::time::Duration,
    },
    /// The identity does not run on the caller's node (`PermissionDenied`).
    #[error("identity does not run on node {node:?}")]
    ForeignIdentity {
        /// The caller's node.
        node: String,
    },
    /// The identity does not run on the caller's node; pods there that could be taken for it get
    /// no identity (mirror pods, pods without a service account) (`PermissionDenied`).
    #[error("identity does not run on node {node:?}: {reason}")]
    NoIdentity {
        /// The caller's node.
        node: String,
        /// Which pods and why, from [`Authenticator::unidentified`].
        reason: String,
    },
    /// `ImpersonatedIdentity` differs from the CSR's identity (`InvalidArgument`).
    #[error("metadata ImpersonatedIdentity {impersonated:?} differs from the CSR's URI SAN")]
    ImpersonationMismatch {
        /// What the metadata said.
        impersonated: String,
    },
    /// The CSR is malformed (`InvalidArgument`).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The lifetime is not acceptable (`InvalidArgument`).
    #[error(transparent)]
    Lifetime(#[from] LifetimeError),
    /// Signing failed (`Internal`).
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The issued leaf could not be recorded in the ledger, so it is not handed out (`Internal`).
    #[error("recording the issued certificate in the ledger: {0}")]
    Ledger(String),
}

impl From<&Refusal> for tonic::Code {
    fn from(r: &Refusal) -> Self {
        match r {
            Refusal::Unauthenticated(_) | Refusal::Refused(_) => tonic::Code::Unauthenticated,
            Refusal::ForeignIdentity { .. } | Refusal::NoIdentity { .. } => {
                tonic::Code::PermissionDenied
            }
            Refusal::ImpersonationMismatch { .. } | Refusal::Csr(_) | Refusal::Lifetime(_) => {
                tonic::Code::InvalidArgument
            }
            Refusal::Throttled { .. } => tonic::Code::ResourceExhausted,
            Refusal::Sign(_) | Refusal::Ledger(_) => tonic::Code::Internal,
        }
    }
}

/// What a request resolved to, for the log line: the node that asked and the identity it asked for.
#[derive(Debug, Default)]
pub struct RequestFacts {
    /// The caller's node, once authenticated.
    pub node: Option<String>,
    /// The identity asked for, once the CSR parsed.
    pub identity: Option<String>,
}

/// Decides one request (no I/O): returns the PEM chain, leaf first, root last.
pub fn handle_request(
    snapshot: &CaSnapshot,
    authorization: Option<&str>,
    request: &IstioCertificateRequest,
    lifetimes: &LifetimePolicy,
    now: SystemTime,
    facts: &mut RequestFacts,
) -> Result<Vec<String>, Refusal> {
    let token = authorization
        .and_then(bearer_token)
        .ok_or(Refusal::Unauthenticated(
            "missing `authorization: Bearer <token>`",
        ))?;
    let node = snapshot
        .tokens
        .authenticate(token)
        .ok_or(Refusal::Unauthenticated("unknown token"))?;
    facts.node = Some(node.to_owned());
    let authorize = |node: &str, id: &SpiffeId| {
        if snapshot.nodes.runs_on(node, id) {
            Ok(())
        } else {
            Err(Refusal::ForeignIdentity {
                node: node.to_owned(),
            })
        }
    };
    handle_authenticated(snapshot, node, &authorize, request, lifetimes, now, facts)
}

/// Decides one request of a caller already authenticated as `node` (no I/O); `authorize` says
/// whether an identity may be issued to a node, or why not.
pub fn handle_authenticated(
    snapshot: &CaSnapshot,
    node: &str,
    authorize: &dyn Fn(&str, &SpiffeId) -> Result<(), Refusal>,
    request: &IstioCertificateRequest,
    lifetimes: &LifetimePolicy,
    now: SystemTime,
    facts: &mut RequestFacts,
) -> Result<Vec<String>, Refusal> {
    facts.node = Some(node.to_owned());
    let csr = check_csr(&request.csr, snapshot.authority.trust_domain())?;
    facts.identity = Some(csr.identity.to_string());
    if let Some(impersonated) = impersonated_identity(request)
        && impersonated != csr.identity.as_str()
    {
        return Err(Refusal::ImpersonationMismatch {
            impersonated: impersonated.to_owned(),
        });
    }
    let validity = lifetimes.window(request.validity_duration, now)?;
    authorize(node, &csr.identity)?;
    let chain = snapshot.authority.issue(&csr, validity)?;
    Ok(chain.iter().map(|c| der_to_pem(c)).collect())
}

fn impersonated_identity(request: &IstioCertificateRequest) -> Option<&str> {
    use prost_types::value::Kind;
    match request
        .metadata
        .as_ref()?
        .fields
        .get(IMPERSONATED_IDENTITY)?
        .kind
        .as_ref()?
    {
        Kind::StringValue(s) => Some(s),
        _ => Some(""),
    }
}

/// The tonic service: reads the newest snapshot for each request.
#[derive(Debug, Clone)]
pub struct CertificateService {
    snapshot: watch::Receiver<Arc<CaSnapshot>>,
    lifetimes: LifetimePolicy,
    clock: Arc<dyn Clock>,
    authenticator: Option<Arc<dyn Authenticator>>,
    /// Reviews of the authenticator, cached (shared by the service's clones).
    reviews: Arc<AuthCache>,
    /// Where issued leaves are recorded before they are handed out.
    ledger: Option<Arc<Ledger>>,
}

impl CertificateService {
    /// A service answering from `snapshot`.
    pub fn new(
        snapshot: watch::Receiver<Arc<CaSnapshot>>,
        lifetimes: LifetimePolicy,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            snapshot,
            lifetimes,
            clock,
            authenticator: None,
            reviews: Arc::default(),
            ledger: None,
        }
    }

    /// Records every issued leaf (its root and notAfter) in `ledger` before handing it out.
    pub fn with_ledger(mut self, ledger: Option<Arc<Ledger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Decides a request, then records the leaf in the ledger (if any) before it leaves.
    async fn decide(
        &self,
        peer: Option<IpAddr>,
        authorization: Option<&str>,
        message: &IstioCertificateRequest,
        facts: &mut RequestFacts,
    ) -> Result<Vec<String>, Refusal> {
        let chain = self
            .decide_unrecorded(peer, authorization, message, facts)
            .await?;
        if let Some(ledger) = &self.ledger {
            record(ledger, &chain)?;
        }
        Ok(chain)
    }

    /// Authenticates callers and authorizes by node with `authenticator` instead of the
    /// snapshot's tokens and node index.
    pub fn with_authenticator(mut self, authenticator: Option<Arc<dyn Authenticator>>) -> Self {
        self.authenticator = authenticator;
        self
    }

    async fn decide_unrecorded(
        &self,
        peer: Option<IpAddr>,
        authorization: Option<&str>,
        message: &IstioCertificateRequest,
        facts: &mut RequestFacts,
    ) -> Result<Vec<String>, Refusal> {
        let snapshot = Arc::clone(&self.snapshot.borrow());
        let now = self.clock.now();
        let Some(auth) = &self.authenticator else {
            return handle_request(
                &snapshot,
                authorization,
                message,
                &self.lifetimes,
                now,
                facts,
            );
        };
        let token = authorization
            .and_then(bearer_token)
            .ok_or(Refusal::Unauthenticated(
                "missing `authorization: Bearer <token>`",
            ))?;
        let node = self
            .reviews
            .authenticate(auth.as_ref(), token, peer, now)
            .await
            .map_err(|refusal| match refusal {
                CachedRefusal::Refused(e) => Refusal::Refused(e),
                CachedRefusal::Throttled { retry_after } => Refusal::Throttled { retry_after },
            })?;
        let authorize = |node: &str, id: &SpiffeId| {
            if auth.runs_on(node, id) {
                return Ok(());
            }
            let node = node.to_owned();
            Err(match auth.unidentified(&node, id) {
                Some(reason) => Refusal::NoIdentity { node, reason },
                None => Refusal::ForeignIdentity { node },
            })
        };
        handle_authenticated(
            &snapshot,
            &node,
            &authorize,
            message,
            &self.lifetimes,
            now,
            facts,
        )
    }
}

/// Records a freshly issued PEM chain (leaf first, root last) in `ledger`.
fn record(ledger: &Ledger, chain: &[String]) -> Result<(), Refusal> {
    let fail = |e: &dyn std::fmt::Display| Refusal::Ledger(e.to_string());
    let der = |pem: &String| CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| fail(&e));
    let (Some(leaf), Some(root)) = (chain.first(), chain.last()) else {
        return Err(Refusal::Ledger("the issued chain is empty".into()));
    };
    let not_after = nodemesh_identity::inspect_leaf(&der(leaf)?)
        .map_err(|e| fail(&e))?
        .not_after;
    ledger.record(&der(root)?, not_after).map_err(|e| fail(&e))
}

#[tonic::async_trait]
impl IstioCertificateService for CertificateService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let peer = request.remote_addr().map(|a| a.ip());
        let message = request.into_inner();
        let mut facts = RequestFacts::default();
        let result = self
            .decide(peer, authorization.as_deref(), &message, &mut facts)
            .await;
        let node = facts.node.as_deref().unwrap_or("-");
        let identity = facts.identity.as_deref().unwrap_or("-");
        match result {
            Ok(cert_chain) => {
                tracing::info!(node, identity, "certificate issued");
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(refusal) => {
                let code = tonic::Code::from(&refusal);
                tracing::warn!(node, identity, reason = %refusal, ?code, "certificate request refused");
                Err(Status::new(code, refusal.to_string()))
            }
        }
    }
}
