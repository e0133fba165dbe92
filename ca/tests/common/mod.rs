//! The CA on loopback with a two-node standalone config, for the gRPC tests.
#![allow(dead_code, clippy::unwrap_used)]

use nodemesh_identity::SpiffeId;
pub use nodemesh_test_support::ca::LocalCa;

pub const TOKEN_A: &str = "token-of-node-a-0123456789";
pub const TOKEN_B: &str = "token-of-node-b-0123456789";
pub const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
pub const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

/// A CA (not yet started) for node-a with web-1 and node-b with db-1, its tokens
/// [`TOKEN_A`] and [`TOKEN_B`].
pub fn fixture() -> LocalCa {
    LocalCa::new(
        r#"
nodes:
  - {name: node-a, address: 10.0.0.1}
  - {name: node-b, address: 10.0.0.2}
namespaces:
  - {name: shop, labels: {nodemesh.io/mesh: enabled}}
workloads:
  - {name: web-1, namespace: shop, serviceAccount: web, ip: 10.1.0.11, node: node-a}
  - {name: db-1, namespace: shop, serviceAccount: db, ip: 10.1.0.21, node: node-b}
"#,
        &["node-a", "node-b"],
    )
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

/// The body of `GET /trust-bundle` on the CA's HTTP address.
pub async fn served_bundle(http: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    tcp.write_all(b"GET /trust-bundle HTTP/1.1\r\nhost: ca\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// Polls `GET /trust-bundle` every 50 ms, for at most 10 s, until its roots satisfy `want`.
pub async fn until_served(
    http: std::net::SocketAddr,
    what: &str,
    want: impl Fn(&[rustls_pki_types::CertificateDer<'static>]) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pem = served_bundle(http).await;
        let roots = nodemesh_identity::TrustBundle::from_pem(&pem).unwrap();
        if want(roots.roots()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
