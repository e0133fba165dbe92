//! The CA over real gRPC + TLS on loopback: authentication, node authorization, CSR hygiene,
//! lifetimes, hostile input, and the HTTP side.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use nodemesh_identity::{SvidUsage, TrustBundle, generate_csr, inspect_leaf, verify_svid};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x509_parser::prelude::*;

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn node_gets_its_own_workload_identity() {
    let f = fixture();
    let ca = f.start().await;
    let csr = generate_csr(&id(WEB)).unwrap();
    let chain = f
        .client(&ca, TOKEN_A)
        .create_certificate(csr.csr_pem, 0, Some(&id(WEB)))
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf then root");
    let chain: Vec<_> = chain.iter().map(|p| der(p)).collect();
    let bundle = TrustBundle::from_pem(&f.bundle_pem()).unwrap();
    let info = verify_svid(&chain, &bundle, SystemTime::now(), SvidUsage::Client).unwrap();
    assert_eq!(info.id.as_str(), WEB);
    assert_eq!(chain[1], bundle.roots()[0], "root last");
    // Default lifetime: 24 h (plus the 60 s backdate).
    let lifetime = info.not_after.duration_since(info.not_before).unwrap();
    assert_eq!(lifetime, Duration::from_secs(86_400 + 60));
    ca.shutdown().await;
}

#[tokio::test]
async fn foreign_identity_is_permission_denied() {
    let f = fixture();
    let ca = f.start().await;
    let csr = generate_csr(&id(DB)).unwrap();
    let err = f
        .client(&ca, TOKEN_A)
        .create_certificate(csr.csr_pem, 0, None)
        .await
        .unwrap_err();
    let nodemesh_ca::ClientError::Status(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // The same request from node-b succeeds.
    let csr = generate_csr(&id(DB)).unwrap();
    f.client(&ca, TOKEN_B)
        .create_certificate(csr.csr_pem, 0, None)
        .await
        .unwrap();
    ca.shutdown().await;
}

#[tokio::test]
async fn bad_or_missing_token_is_unauthenticated() {
    let f = fixture();
    let ca = f.start().await;
    for token in ["not-a-valid-token-000000", ""] {
        let csr = generate_csr(&id(WEB)).unwrap();
        let client = nodemesh_ca::CaClient::new(
            &format!("https://127.0.0.1:{}", ca.grpc_addr.port()),
            &f.bundle_pem(),
            token,
        )
        .unwrap();
        let err = client
            .create_certificate(csr.csr_pem, 0, None)
            .await
            .unwrap_err();
        let nodemesh_ca::ClientError::Status(status) = err else {
            panic!("{err}")
        };
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
    }
    ca.shutdown().await;
}

#[tokio::test]
async fn impersonated_identity_must_match_the_csr() {
    let f = fixture();
    let ca = f.start().await;
    let csr = generate_csr(&id(WEB)).unwrap();
    let err = f
        .client(&ca, TOKEN_A)
        .create_certificate(csr.csr_pem, 0, Some(&id(DB)))
        .await
        .unwrap_err();
    let nodemesh_ca::ClientError::Status(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("ImpersonatedIdentity"),
        "{}",
        status.message()
    );
    ca.shutdown().await;
}

/// A CSR that asks for everything a leaf must not have.
fn greedy_csr(uris: &[&str]) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.subject_alt_names.push(rcgen::SanType::DnsName(
        "kubernetes.default.svc".try_into().unwrap(),
    ));
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("10.96.0.1".parse().unwrap()));
    params.serialize_request(&key).unwrap().pem().unwrap()
}

#[tokio::test]
async fn smuggled_fields_are_overwritten_and_lifetime_clamped() {
    let f = fixture();
    let ca = f.start().await;
    let hundred_years = 100 * 365 * 86_400;
    let chain = f
        .client(&ca, TOKEN_A)
        .create_certificate(greedy_csr(&[WEB]), hundred_years, None)
        .await
        .unwrap();
    let leaf = der(&chain[0]);
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert!(!cert.is_ca(), "CA flag overwritten");
    assert_eq!(
        cert.subject().iter_attributes().count(),
        0,
        "subject overwritten"
    );
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "SAN critical with an empty subject");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(WEB)],
        "only the SPIFFE ID"
    );
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 7 * 86_400 + 60, "clamped to 7 days");
    inspect_leaf(&leaf).unwrap();
    ca.shutdown().await;
}

#[tokio::test]
async fn csr_with_two_uri_sans_is_refused() {
    let f = fixture();
    let ca = f.start().await;
    let err = f
        .client(&ca, TOKEN_A)
        .create_certificate(greedy_csr(&[WEB, DB]), 0, None)
        .await
        .unwrap_err();
    let nodemesh_ca::ClientError::Status(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    ca.shutdown().await;
}

#[tokio::test]
async fn bad_lifetimes_are_invalid_argument() {
    let f = fixture();
    let ca = f.start().await;
    for seconds in [-1, 59] {
        let csr = generate_csr(&id(WEB)).unwrap();
        let err = f
            .client(&ca, TOKEN_A)
            .create_certificate(csr.csr_pem, seconds, None)
            .await
            .unwrap_err();
        let nodemesh_ca::ClientError::Status(status) = err else {
            panic!("{err}")
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{seconds}");
    }
    let csr = generate_csr(&id(WEB)).unwrap();
    let chain = f
        .client(&ca, TOKEN_A)
        .create_certificate(csr.csr_pem, 3600, None)
        .await
        .unwrap();
    let info = inspect_leaf(&der(&chain[0])).unwrap();
    assert_eq!(
        info.not_after.duration_since(info.not_before).unwrap(),
        Duration::from_secs(3660)
    );
    ca.shutdown().await;
}

#[tokio::test]
async fn hostile_csrs_are_refused_while_others_are_served() {
    let f = fixture();
    let ca = f.start().await;
    let client = f.client(&ca, TOKEN_A);
    let garbage: String = (0..4096)
        .map(|i| char::from(b'!' + (i * 7 % 90) as u8))
        .collect();
    let huge = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        "A".repeat(1 << 20)
    );
    let bad = vec![
        garbage,
        String::new(),
        huge,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into(),
    ];
    let mut tasks = Vec::new();
    for csr in bad {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            (false, c.create_certificate(csr, 0, None).await)
        }));
        let client = client.clone();
        let good = generate_csr(&id(WEB)).unwrap().csr_pem;
        tasks.push(tokio::spawn(async move {
            (true, client.create_certificate(good, 0, None).await)
        }));
    }
    for task in tasks {
        match task.await.unwrap() {
            (true, result) => assert_eq!(result.unwrap().len(), 2),
            (false, result) => {
                let err = result.unwrap_err();
                let nodemesh_ca::ClientError::Status(status) = err else {
                    panic!("{err}")
                };
                assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            }
        }
    }
    // A client that opens TCP and never finishes TLS does not block anyone.
    let _stalled = tokio::net::TcpStream::connect(ca.grpc_addr).await.unwrap();
    let csr = generate_csr(&id(WEB)).unwrap();
    client
        .create_certificate(csr.csr_pem, 0, None)
        .await
        .unwrap();
    ca.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: ca\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn http_serves_the_bundle_and_readiness() {
    let f = fixture();
    let ca = f.start().await;
    let bundle = http_get(ca.http_addr, "/trust-bundle").await;
    assert!(bundle.starts_with("HTTP/1.1 200"), "{bundle}");
    assert!(bundle.ends_with(&f.bundle_pem()), "{bundle}");
    let ready = http_get(ca.http_addr, "/healthz/ready").await;
    assert!(ready.starts_with("HTTP/1.1 200"));
    assert!(
        http_get(ca.http_addr, "/root-key.pem")
            .await
            .starts_with("HTTP/1.1 404")
    );
    ca.shutdown().await;
}

#[tokio::test]
async fn a_too_large_request_is_resource_exhausted() {
    let f = fixture();
    let ca = f.start().await;
    let huge = "A".repeat(nodemesh_ca::server::MAX_MESSAGE_LEN + 1);
    let err = f
        .client(&ca, TOKEN_A)
        .create_certificate(huge, 0, None)
        .await
        .unwrap_err();
    let nodemesh_ca::ClientError::Status(status) = err else {
        panic!("{err}")
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // The CA keeps serving.
    let csr = generate_csr(&id(WEB)).unwrap();
    f.client(&ca, TOKEN_A)
        .create_certificate(csr.csr_pem, 0, None)
        .await
        .unwrap();
    ca.shutdown().await;
}

/// Accepts [`TOKEN_A`] as node-a (where web runs), refuses every other token; counts reviews.
#[derive(Debug, Default)]
struct CountingReviews(std::sync::atomic::AtomicUsize);

impl nodemesh_ca::Authenticator for CountingReviews {
    fn authenticate<'a>(&'a self, token: &'a str) -> nodemesh_ca::AuthFuture<'a> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if token == TOKEN_A {
                Ok("node-a".to_owned())
            } else {
                Err(nodemesh_ca::AuthError::new("token rejected by TokenReview"))
            }
        })
    }

    fn runs_on(&self, node: &str, identity: &nodemesh_identity::SpiffeId) -> bool {
        node == "node-a" && identity.as_str() == WEB
    }
}

#[tokio::test]
async fn token_reviews_are_cached_and_bad_callers_throttled() {
    let mut f = fixture();
    let reviews = std::sync::Arc::new(CountingReviews::default());
    f.opts.callers = nodemesh_ca::Callers::External {
        trust_domain: "cluster.local".parse().unwrap(),
        authenticator: reviews.clone(),
    };
    let ca = f.start().await;
    let count = || reviews.0.load(std::sync::atomic::Ordering::SeqCst);
    let good = f.client(&ca, TOKEN_A);
    for _ in 0..5 {
        let csr = generate_csr(&id(WEB)).unwrap();
        good.create_certificate(csr.csr_pem, 0, None).await.unwrap();
    }
    assert_eq!(count(), 1, "one review for five requests with one token");

    // A flood of bad tokens from one address: a burst of reviews, then refusals without one.
    let mut codes = Vec::new();
    for i in 0..40 {
        let csr = generate_csr(&id(WEB)).unwrap();
        let client = f.client(&ca, &format!("bad-token-{i:04}-0123456789"));
        let err = client
            .create_certificate(csr.csr_pem, 0, None)
            .await
            .unwrap_err();
        let nodemesh_ca::ClientError::Status(status) = err else {
            panic!("{err}")
        };
        codes.push(status.code());
    }
    // The burst, plus one forgiven per second the loop took (real clock).
    let reviewed = count() - 1;
    let burst = nodemesh_ca::authcache::REFUSED_BURST as usize;
    assert!(
        (burst..20).contains(&reviewed),
        "{reviewed} reviews: {codes:?}"
    );
    assert_eq!(
        codes[..burst],
        vec![tonic::Code::Unauthenticated; burst][..]
    );
    let throttled = codes
        .iter()
        .filter(|c| **c == tonic::Code::ResourceExhausted)
        .count();
    assert_eq!(throttled, 40 - reviewed, "{codes:?}");
    // The known caller is still served from the cache.
    let csr = generate_csr(&id(WEB)).unwrap();
    good.create_certificate(csr.csr_pem, 0, None).await.unwrap();
    ca.shutdown().await;
}
