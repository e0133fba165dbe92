//! A client of the CA's gRPC API (ours or Istio's): TLS verified against the trust bundle, with a
//! bearer token.

use std::time::Duration;

use nodemesh_identity::{CertificateIssuer, SpiffeId};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::proto::IstioCertificateRequest;
use crate::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::service::IMPERSONATED_IDENTITY;

/// Why the CA could not be reached or configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The address is not a valid `https://host:port` URL.
    #[error("CA address {address:?} is invalid: {reason}")]
    Address {
        /// The address given.
        address: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The token is not a valid header value.
    #[error("CA token contains characters not allowed in an HTTP header")]
    Token,
    /// The CA answered with an error status.
    #[error("CA refused: {0}")]
    Status(#[from] tonic::Status),
}

/// A connection to the CA; cheap to clone.
#[derive(Debug, Clone)]
pub struct CaClient {
    inner: IstioCertificateServiceClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

impl CaClient {
    /// A client of the CA at `address` (`https://host:port`), trusting `bundle_pem`, sending
    /// `token`. Connects lazily, so a CA that is down now does not fail start-up.
    pub fn new(address: &str, bundle_pem: &str, token: &str) -> Result<Self, ClientError> {
        let bad = |reason: String| ClientError::Address {
            address: address.to_owned(),
            reason,
        };
        let uri: http::Uri = address
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https".into()));
        }
        let host = uri
            .host()
            .ok_or_else(|| bad("no host".into()))?
            .trim_matches(['[', ']'])
            .to_owned();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(bundle_pem))
            .domain_name(host);
        let channel = Endpoint::from(uri)
            .tls_config(tls)
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .connect_lazy();
        let authorization = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Token)?;
        Ok(Self {
            inner: IstioCertificateServiceClient::new(channel),
            authorization,
        })
    }

    /// Sends one `CreateCertificate` request; returns the PEM chain, leaf first.
    pub async fn create_certificate(
        &self,
        csr_pem: String,
        validity_seconds: i64,
        impersonated: Option<&SpiffeId>,
    ) -> Result<Vec<String>, ClientError> {
        let metadata = impersonated.map(|id| prost_types::Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(id.to_string())),
                },
            )]
            .into(),
        });
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: csr_pem,
            validity_duration: validity_seconds,
            metadata,
        });
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        let response = self.inner.clone().create_certificate(request).await?;
        Ok(response.into_inner().cert_chain)
    }

    /// An issuer for one identity, for [`nodemesh_identity::run_renewal`].
    pub fn issuer_for(&self, identity: SpiffeId, validity: Duration) -> IdentityIssuer {
        IdentityIssuer {
            client: self.clone(),
            identity,
            validity,
        }
    }
}

/// Asks the CA for certificates of one identity, with `ImpersonatedIdentity` set.
#[derive(Debug, Clone)]
pub struct IdentityIssuer {
    client: CaClient,
    identity: SpiffeId,
    validity: Duration,
}

impl CertificateIssuer for IdentityIssuer {
    async fn issue(
        &self,
        csr_pem: String,
    ) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
        let seconds = i64::try_from(self.validity.as_secs()).unwrap_or(i64::MAX);
        Ok(self
            .client
            .create_certificate(csr_pem, seconds, Some(&self.identity))
            .await?)
    }
}
