//! The nodemesh CA: issues SPIFFE X.509-SVIDs over Istio's certificate API
//! (`istio.v1.auth.IstioCertificateService`), so nodemesh proxies and Istio's ztunnel alike can
//! use it.
//!
//! The signing logic ([`csr`], [`issuer`], [`authz`], [`service::handle_request`]) does no I/O;
//! [`server`], [`http`] and [`client`] bring the sockets, [`state`] and [`offline`] the files.

pub mod authcache;
pub mod authz;
pub mod callers;
pub mod client;
pub mod csr;
pub mod http;
pub mod issuer;
pub mod ledger;
pub mod offline;
mod preface;
mod reload;
pub mod rotation;
pub mod server;
pub mod service;
pub mod state;
mod too_large;

/// Generated protobuf and gRPC code for Istio's certificate service.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("istio.v1.auth");
}

pub use callers::{AuthError, AuthFuture, Authenticator, Callers};
pub use client::{CaClient, ClientError, IdentityIssuer};
pub use issuer::{Authority, LifetimePolicy, LifetimePolicyError, Validity};
pub use offline::{OfflineError, OfflineSvid};
pub use server::{RunningCa, ServeError, ServeOptions, start};
pub use state::{RootSource, StateError};
