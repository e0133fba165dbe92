//! A real TLS 1.3 handshake over loopback TCP between two SPIFFE identities, with the verifiers
//! nodemesh uses for HBONE.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use nodemesh_identity::{
    CredentialStore, Credentials, SpiffeId, TrustBundle, TrustDomain, WatchedCertResolver,
    client_config, crypto_provider, peer_identity, placeholder_server_name, server_config,
};
use nodemesh_test_support::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/db";
const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn store(ca: &TestCa, id: &str) -> Arc<CredentialStore> {
    let id = SpiffeId::new(id).unwrap();
    let (chain, key) = ca.svid(id.as_str());
    let creds = Credentials::new(&id, chain, key, &crypto_provider()).unwrap();
    let store = Arc::new(CredentialStore::new(id));
    store.replace(Arc::new(creds));
    store
}

/// Serves one connection; returns the client identity the server saw, or the handshake error.
async fn serve_once(
    listener: TcpListener,
    server: Arc<CredentialStore>,
    bundle: TrustBundle,
) -> Result<SpiffeId, String> {
    let (_, bundle_rx) = watch::channel(Arc::new(bundle));
    let config = server_config(
        crypto_provider(),
        Arc::new(WatchedCertResolver::new(server.subscribe())),
        TrustDomain::new("cluster.local").unwrap(),
        bundle_rx,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tcp, _) = listener.accept().await.unwrap();
    let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
    let peer = peer_identity(tls.get_ref().1.peer_certificates()).ok_or("no peer identity")?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
    tls.shutdown().await.ok();
    Ok(peer)
}

async fn connect(
    client: Arc<CredentialStore>,
    bundle: TrustBundle,
    expected: &str,
    addr: std::net::SocketAddr,
) -> Result<SpiffeId, String> {
    let (_, bundle_rx) = watch::channel(Arc::new(bundle));
    let config = client_config(
        crypto_provider(),
        Arc::new(WatchedCertResolver::new(client.subscribe())),
        SpiffeId::new(expected).unwrap(),
        bundle_rx,
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(placeholder_server_name(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    assert_eq!(&buf, b"pong");
    peer_identity(tls.get_ref().1.peer_certificates()).ok_or_else(|| "no server identity".into())
}

#[tokio::test]
async fn each_side_sees_the_others_identity() {
    let ca = TestCa::new("root");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_once(listener, store(&ca, SERVER), ca.bundle()));
    let seen_server = connect(store(&ca, CLIENT), ca.bundle(), SERVER, addr)
        .await
        .unwrap();
    assert_eq!(seen_server.as_str(), SERVER);
    assert_eq!(server.await.unwrap().unwrap().as_str(), CLIENT);
}

#[tokio::test]
async fn client_expecting_another_identity_fails() {
    let ca = TestCa::new("root");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_once(listener, store(&ca, SERVER), ca.bundle()));
    let err = connect(
        store(&ca, CLIENT),
        ca.bundle(),
        "spiffe://cluster.local/ns/shop/sa/cache",
        addr,
    )
    .await
    .unwrap_err();
    assert!(err.contains("UnexpectedIdentity"), "{err}");
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn client_from_a_foreign_trust_domain_is_refused() {
    let ca = TestCa::new("root");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_once(listener, store(&ca, SERVER), ca.bundle()));
    // Same root (so the chain verifies), other trust domain: only the trust-domain check stops it.
    let client = connect(
        store(&ca, "spiffe://evil.example/ns/shop/sa/web"),
        ca.bundle(),
        SERVER,
        addr,
    )
    .await;
    let server_err = server.await.unwrap().unwrap_err();
    assert!(server_err.contains("WrongTrustDomain"), "{server_err}");
    assert!(client.is_err());
}

#[tokio::test]
async fn client_with_an_untrusted_root_is_refused() {
    let ca = TestCa::new("root");
    let rogue = TestCa::new("rogue");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_once(listener, store(&ca, SERVER), ca.bundle()));
    let both = TrustBundle::from_der(vec![ca.cert.clone(), rogue.cert.clone()]).unwrap();
    let client = connect(store(&rogue, CLIENT), both, SERVER, addr).await;
    assert!(server.await.unwrap().unwrap_err().contains("Untrusted"));
    assert!(client.is_err());
}

/// A resumed TLS session would authenticate the peer by the chain stored from the first
/// handshake, without verifying it again (an expired SVID or a removed root kept working). Two
/// dials with the same client and server configs: the second is a full handshake on both ends.
#[tokio::test]
async fn a_second_dial_is_a_full_handshake_on_both_ends() {
    use rustls::HandshakeKind;

    let ca = TestCa::new("root");
    let (_, server_bundle) = watch::channel(Arc::new(ca.bundle()));
    let server = store(&ca, SERVER);
    let server_config = server_config(
        crypto_provider(),
        Arc::new(WatchedCertResolver::new(server.subscribe())),
        TrustDomain::new("cluster.local").unwrap(),
        server_bundle,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let (_, client_bundle) = watch::channel(Arc::new(ca.bundle()));
    let client = store(&ca, CLIENT);
    let client_config = client_config(
        crypto_provider(),
        Arc::new(WatchedCertResolver::new(client.subscribe())),
        SpiffeId::new(SERVER).unwrap(),
        client_bundle,
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            // Written after the handshake: a server that issues tickets sends them here.
            tls.write_all(b"pong").await.unwrap();
            kinds.push(tls.get_ref().1.handshake_kind());
            tls.shutdown().await.ok();
        }
        kinds
    });
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect(placeholder_server_name(), tcp)
            .await
            .unwrap();
        tls.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.ok();
    }
    let full = Some(HandshakeKind::Full);
    assert_eq!(kinds, [full, full], "client side");
    assert_eq!(serving.await.unwrap(), [full, full], "server side");
}
