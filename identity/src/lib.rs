//! SPIFFE identities for nodemesh: IDs and trust domains, X.509-SVID validation, key and CSR
//! generation, rustls verifiers that check SPIFFE IDs, and a rotating credentials store.
//!
//! Nothing here opens a socket: the proxy and the CA bring the I/O.

mod bundle;
mod clock;
mod credentials;
mod keys;
mod renewal;
mod spiffe_id;
mod svid;
mod tls;
mod verifier;

pub use bundle::{BundleError, TrustBundle, der_to_pem, private_key_to_pem};
pub use clock::{Clock, SystemClock, TokioClock};
pub use credentials::{
    CredentialStore, Credentials, CredentialsError, CredentialsWatch, WatchedCertResolver,
};
pub use keys::{CsrBundle, KeyError, csr_for_key, generate_csr, generate_key};
pub use renewal::{Backoff, CertificateIssuer, RenewError, renew_once, renewal_due, run_renewal};
pub use spiffe_id::{
    MAX_SPIFFE_ID_LEN, MAX_TRUST_DOMAIN_LEN, SpiffeId, SpiffeIdError, TrustDomain,
};
pub use svid::{SvidError, SvidInfo, SvidUsage, inspect_leaf, verify_svid};
pub use tls::{
    client_config, crypto_provider, disable_resumption, install_default_provider, server_config,
};
pub use verifier::{
    BundleWatch, SpiffeClientVerifier, SpiffeServerVerifier, peer_identity, placeholder_server_name,
};
