//! Keeps a workload's credentials fresh: renew at half-life, retry with jittered exponential
//! backoff while the CA is unreachable, and keep serving the old certificate until a new one lands.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;

use crate::clock::Clock;
use crate::credentials::{CredentialStore, Credentials, CredentialsError};
use crate::keys::{KeyError, generate_csr};

/// Why one issuance attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    /// No key or CSR could be generated.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The CA refused or could not be reached.
    #[error("CA request failed: {0}")]
    Issuer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The CA answered with something that is not a usable SVID for us.
    #[error("CA answer is unusable: {0}")]
    Credentials(#[from] CredentialsError),
}

/// Something that turns a CSR into a PEM certificate chain (leaf first): the CA client, or a
/// fake in tests.
pub trait CertificateIssuer: Send + Sync {
    /// Asks for a certificate for the identity in `csr_pem`.
    fn issue(
        &self,
        csr_pem: String,
    ) -> impl Future<Output = Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>>> + Send;
}

/// Jittered exponential backoff: attempt `n` waits between half and all of
/// `min(initial * 2^n, max)`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay ceiling before jitter for the first retry.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let jitter: f64 = rand::random_range(0.5..=1.0);
        ceiling.mul_f64(jitter)
    }
}

/// When the credentials in `store` should be renewed: at half-life, or now if there are none
/// or they are already expired.
pub fn renewal_due(store: &CredentialStore, now: SystemTime) -> SystemTime {
    match store.current() {
        Some(c) if c.is_valid_at(now) => c.info().half_life(),
        _ => now,
    }
}

/// Fetches and installs fresh credentials for the store's identity, once.
pub async fn renew_once<I: CertificateIssuer>(
    store: &CredentialStore,
    issuer: &I,
    provider: &CryptoProvider,
) -> Result<Arc<Credentials>, RenewError> {
    let csr = generate_csr(store.id())?;
    let chain = issuer
        .issue(csr.csr_pem)
        .await
        .map_err(RenewError::Issuer)?;
    let creds = Arc::new(Credentials::from_pem(
        store.id(),
        &chain,
        csr.key,
        provider,
    )?);
    store.replace(Arc::clone(&creds));
    Ok(creds)
}

/// Renews the store's credentials forever: at half-life, retrying with `backoff` on failure.
/// The old credentials stay in the store until new ones arrive. Cancel by dropping the future.
pub async fn run_renewal<I: CertificateIssuer>(
    store: Arc<CredentialStore>,
    issuer: I,
    provider: Arc<CryptoProvider>,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
) {
    loop {
        let due = renewal_due(&store, clock.now());
        if let Ok(wait) = due.duration_since(clock.now()) {
            tokio::time::sleep(wait).await;
        }
        let mut attempt = 0;
        loop {
            match renew_once(&store, &issuer, &provider).await {
                Ok(creds) => {
                    tracing::info!(identity = %store.id(), not_after = ?creds.info().not_after, "certificate renewed");
                    break;
                }
                Err(error) => {
                    let delay = backoff.delay(attempt);
                    tracing::warn!(identity = %store.id(), %error, retry_in = ?delay, "certificate renewal failed");
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }
}
