//! X.509-SVID validation: one valid case and every way an SVID can be wrong, each with its own error.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use nodemesh_identity::{SvidError, SvidUsage, verify_svid};
use nodemesh_test_support::TestCa;
use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose, SanType};

const ID: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn check(ca: &TestCa, params: rcgen::CertificateParams) -> Result<String, SvidError> {
    let (chain, _) = ca.sign(params);
    verify_svid(&chain, &ca.bundle(), SystemTime::now(), SvidUsage::Client)
        .map(|i| i.id.to_string())
}

#[test]
fn valid_svid_yields_its_identity() {
    let ca = TestCa::new("root");
    assert_eq!(check(&ca, TestCa::svid_params(ID)).unwrap(), ID);
    // Leaf alone (without the root appended) verifies too.
    let (chain, _) = ca.svid(ID);
    let info = verify_svid(
        &chain[..1],
        &ca.bundle(),
        SystemTime::now(),
        SvidUsage::Server,
    )
    .unwrap();
    assert_eq!(info.id.as_str(), ID);
}

#[test]
fn two_uri_sans_are_rejected() {
    let ca = TestCa::new("root");
    let mut p = TestCa::svid_params(ID);
    p.subject_alt_names.push(SanType::URI(
        "spiffe://cluster.local/ns/x/sa/y".try_into().unwrap(),
    ));
    assert_eq!(check(&ca, p), Err(SvidError::MultipleUriSans(2)));
}

#[test]
fn missing_uri_san_is_rejected() {
    let ca = TestCa::new("root");
    let mut p = TestCa::svid_params(ID);
    p.subject_alt_names = vec![SanType::DnsName("web.shop.svc".try_into().unwrap())];
    assert_eq!(check(&ca, p), Err(SvidError::NoUriSan));
}

#[test]
fn malformed_spiffe_uri_is_rejected() {
    let ca = TestCa::new("root");
    let mut p = TestCa::svid_params(ID);
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://Cluster.local/ns/a/sa/b".try_into().unwrap(),
    )];
    assert!(matches!(check(&ca, p), Err(SvidError::BadSpiffeId { .. })));
}

#[test]
fn ca_leaf_is_rejected() {
    let ca = TestCa::new("root");
    let mut p = TestCa::svid_params(ID);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    assert_eq!(check(&ca, p), Err(SvidError::LeafIsCa));
}

#[test]
fn expired_leaf_is_rejected() {
    let ca = TestCa::new("root");
    let mut p = TestCa::svid_params(ID);
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(2);
    p.not_after = now - time::Duration::days(1);
    assert!(matches!(check(&ca, p), Err(SvidError::Expired { .. })));
}

#[test]
fn not_yet_valid_leaf_is_rejected() {
    let ca = TestCa::new("root");
    let mut p = TestCa::svid_params(ID);
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::hours(1);
    p.not_after = now + time::Duration::days(1);
    assert!(matches!(check(&ca, p), Err(SvidError::NotYetValid { .. })));
}

#[test]
fn validity_follows_the_injected_clock() {
    let ca = TestCa::new("root");
    let (chain, _) = ca.svid(ID);
    let later = SystemTime::now() + Duration::from_secs(2 * 86_400);
    let earlier = SystemTime::now() - Duration::from_secs(2 * 3600);
    assert!(matches!(
        verify_svid(&chain, &ca.bundle(), later, SvidUsage::Client),
        Err(SvidError::Expired { .. })
    ));
    assert!(matches!(
        verify_svid(&chain, &ca.bundle(), earlier, SvidUsage::Client),
        Err(SvidError::NotYetValid { .. })
    ));
}

#[test]
fn unknown_root_is_rejected() {
    let ca = TestCa::new("root");
    let other = TestCa::new("other root");
    let (chain, _) = other.svid(ID);
    assert!(matches!(
        verify_svid(&chain, &ca.bundle(), SystemTime::now(), SvidUsage::Client),
        Err(SvidError::Untrusted(_))
    ));
}

#[test]
fn missing_digital_signature_is_rejected() {
    let ca = TestCa::new("root");
    let mut p = TestCa::svid_params(ID);
    p.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
    assert_eq!(check(&ca, p), Err(SvidError::MissingDigitalSignature));
    let mut p = TestCa::svid_params(ID);
    p.key_usages = vec![];
    assert_eq!(check(&ca, p), Err(SvidError::MissingDigitalSignature));
}

#[test]
fn cert_signing_key_usage_is_rejected() {
    let ca = TestCa::new("root");
    let mut p = TestCa::svid_params(ID);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    assert_eq!(check(&ca, p), Err(SvidError::ForbiddenKeyUsage));
}

#[test]
fn wrong_extended_key_usage_is_rejected() {
    let ca = TestCa::new("root");
    let mut p = TestCa::svid_params(ID);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    assert!(matches!(check(&ca, p), Err(SvidError::Untrusted(_))));
}

#[test]
fn empty_chain_and_garbage_are_rejected() {
    let ca = TestCa::new("root");
    assert_eq!(
        verify_svid(&[], &ca.bundle(), SystemTime::now(), SvidUsage::Client),
        Err(SvidError::EmptyChain)
    );
    let garbage = rustls::pki_types::CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02, 0x03]);
    assert!(matches!(
        verify_svid(
            &[garbage],
            &ca.bundle(),
            SystemTime::now(),
            SvidUsage::Client
        ),
        Err(SvidError::Malformed(_))
    ));
}
