//! Why a tunnel could not be opened: local failures, network failures and the peer's answers are
//! different variants, each with the refusal it counts as.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::observe::RefusalReason;
use crate::tls::TlsError;

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HboneError {
    /// Local: no certificate for the source workload.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Local: the CONNECT request could not be built.
    #[error("cannot build the CONNECT request")]
    Request(#[source] http::Error),
    /// Network: the TCP connect to the peer failed.
    #[error("connect to {addr}")]
    Connect {
        /// The HBONE address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (wrong identity, untrusted chain, ...); the rustls error, and
    /// under it the SPIFFE verifier's, is the source.
    #[error("TLS handshake with {addr}")]
    Handshake {
        /// The HBONE address.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake did not finish in time.
    #[error("TLS handshake with {addr} timed out after {after:?}")]
    HandshakeTimeout {
        /// The HBONE address.
        addr: SocketAddr,
        /// The deadline.
        after: Duration,
    },
    /// The dial this tunnel waited for (another tunnel's, to the same peer) failed.
    #[error("the dial to {addr} this tunnel waited for failed: {cause}")]
    Shared {
        /// The HBONE address.
        addr: SocketAddr,
        /// The refusal the dial counted as.
        reason: RefusalReason,
        /// The dial's error chain.
        cause: std::sync::Arc<str>,
    },
    /// HTTP/2 failed.
    #[error("HTTP/2")]
    Http(#[from] h2::Error),
    /// The peer answered the CONNECT with a non-200 status (401 policy, 503 unavailable...).
    #[error("peer answered {0}")]
    Status(StatusCode),
}

impl HboneError {
    /// The refusal this failure counts as on the source side.
    pub fn refusal(&self) -> RefusalReason {
        match self {
            HboneError::Tls(_) => RefusalReason::NoCertificate,
            HboneError::Request(_) => RefusalReason::Internal,
            HboneError::Shared { reason, .. } => *reason,
            HboneError::Connect { source, .. } if crate::socket::is_timeout(source) => {
                RefusalReason::ConnectTimeout
            }
            HboneError::Connect { .. } | HboneError::Http(_) => RefusalReason::UpstreamConnect,
            HboneError::Handshake { .. } | HboneError::HandshakeTimeout { .. } => {
                RefusalReason::TlsHandshake
            }
            HboneError::Status(s) => match *s {
                StatusCode::UNAUTHORIZED => RefusalReason::Policy,
                // The peer found our CONNECT malformed.
                StatusCode::BAD_REQUEST => RefusalReason::BadRequest,
                _ => RefusalReason::UpstreamConnect,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_failures_never_look_like_peer_answers() {
        let local = http::Request::builder()
            .uri("\0")
            .body(())
            .expect_err("an invalid URI");
        assert_eq!(
            HboneError::Request(local).refusal(),
            RefusalReason::Internal
        );
        assert_eq!(
            HboneError::Status(StatusCode::BAD_REQUEST).refusal(),
            RefusalReason::BadRequest
        );
        assert_eq!(
            HboneError::Status(StatusCode::UNAUTHORIZED).refusal(),
            RefusalReason::Policy
        );
        assert_eq!(
            HboneError::Status(StatusCode::SERVICE_UNAVAILABLE).refusal(),
            RefusalReason::UpstreamConnect
        );
    }

    #[test]
    fn a_connect_that_ran_out_of_time_is_told_from_one_that_was_refused() {
        let addr = SocketAddr::from(([10, 0, 0, 1], 15008));
        let connect = |kind| HboneError::Connect {
            addr,
            source: std::io::Error::from(kind),
        };
        assert_eq!(
            connect(std::io::ErrorKind::TimedOut).refusal(),
            RefusalReason::ConnectTimeout
        );
        assert_eq!(
            connect(std::io::ErrorKind::ConnectionRefused).refusal(),
            RefusalReason::UpstreamConnect
        );
    }
}
