//! A TLS handshake with the CA's gRPC port as a proxy makes it: the node's trust bundle as
//! roots, the host of `ca.address` as the name, ALPN `h2`. Blocking, within [`http::TIMEOUT`].

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use nodemesh_identity::TrustBundle;
use rustls::pki_types::ServerName;

use super::http;

/// Why the CA's gRPC port could not be reached as a proxy reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No TCP connection.
    Connect(String),
    /// Connected, but the handshake failed (an unknown issuer, a name the certificate lacks).
    Tls(String),
}

/// Connects to `addr` and completes a handshake that verifies the server as `host` against
/// `bundle_pem`.
pub fn handshake(addr: SocketAddr, host: &str, bundle_pem: &str) -> Result<(), Refused> {
    let tls = |e: String| Refused::Tls(e);
    let bundle =
        TrustBundle::from_pem(bundle_pem).map_err(|e| tls(format!("the trust bundle: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for root in bundle.roots() {
        roots
            .add(root.clone())
            .map_err(|e| tls(format!("the trust bundle: {e}")))?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| tls(format!("{host}: {e}")))?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| tls(e.to_string()))?;
    let mut tcp = TcpStream::connect_timeout(&addr, http::TIMEOUT)
        .map_err(|e| Refused::Connect(e.to_string()))?;
    tcp.set_read_timeout(Some(http::TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(http::TIMEOUT)))
        .map_err(|e| Refused::Connect(e.to_string()))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| tls(e.to_string()))?;
    }
    Ok(())
}
