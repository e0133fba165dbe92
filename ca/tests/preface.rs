//! The gRPC listener closes clients that finish TLS and then never start HTTP/2, within the
//! preface deadline, while serving everyone else.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nodemesh_identity::generate_csr;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many silent clients.
const SILENT: usize = 50;
/// The deadline the test's CA runs with.
const DEADLINE: Duration = Duration::from_secs(2);

/// A TLS client (ALPN h2) trusting `bundle_pem`.
fn connector(bundle_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(nodemesh_identity::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Reads until the server closes (EOF or an error); returns how long that took.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(mut s: S) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return start.elapsed(),
            // The server's own SETTINGS come first; keep reading.
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn silent_clients_after_tls_are_closed_at_the_preface_deadline() {
    let mut f = fixture();
    f.opts.preface_timeout = DEADLINE;
    let ca = f.start().await;
    let tls = connector(&f.bundle_pem());
    let name = ServerName::try_from("127.0.0.1").unwrap();

    let mut silent = Vec::new();
    for _ in 0..SILENT {
        let tcp = tokio::net::TcpStream::connect(ca.grpc_addr).await.unwrap();
        let stream = tls.connect(name.clone(), tcp).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        silent.push(tokio::spawn(until_closed(stream)));
    }

    // Meanwhile a well-behaved client is served.
    let csr = generate_csr(&id(WEB)).unwrap();
    let chain = f
        .client(&ca, TOKEN_A)
        .create_certificate(csr.csr_pem, 0, None)
        .await
        .unwrap();
    assert_eq!(chain.len(), 2);

    for conn in silent {
        let closed_after = tokio::time::timeout(DEADLINE * 3, conn)
            .await
            .expect("a silent client was not closed within 3x the preface deadline")
            .unwrap();
        // Closed by the deadline, not earlier for another reason.
        assert!(
            closed_after >= DEADLINE - Duration::from_millis(300),
            "closed after {closed_after:?}, before the {DEADLINE:?} deadline"
        );
    }

    // A client that sends only half the preface is closed too.
    let tcp = tokio::net::TcpStream::connect(ca.grpc_addr).await.unwrap();
    let mut stream = tls.connect(name.clone(), tcp).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let closed_after = tokio::time::timeout(DEADLINE * 3, until_closed(stream))
        .await
        .expect("a half preface was not closed within 3x the preface deadline");
    assert!(closed_after >= DEADLINE - Duration::from_millis(300));

    ca.shutdown().await;
}
