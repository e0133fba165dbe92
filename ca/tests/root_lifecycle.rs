//! The root on disk: created once, reloaded across restarts, rotated under a running server, and
//! refused when its key is exposed.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use common::*;
use nodemesh_identity::{SvidUsage, TrustBundle, TrustDomain, generate_csr, verify_svid};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

fn chain(pems: &[String]) -> Vec<CertificateDer<'static>> {
    pems.iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
        .collect()
}

async fn issue(f: &LocalCa, ca: &nodemesh_ca::RunningCa) -> Vec<CertificateDer<'static>> {
    let csr = generate_csr(&id(WEB)).unwrap();
    chain(
        &f.client(ca, TOKEN_A)
            .create_certificate(csr.csr_pem, 0, None)
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn root_is_created_private_and_persists_across_restarts() {
    let f = fixture();
    let ca = f.start().await;
    let root = std::fs::read_to_string(f.state("root-cert.pem")).unwrap();
    let key_mode = std::fs::metadata(f.state("root-key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let dir_mode = std::fs::metadata(&f.opts.root.state_dir)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    let first = issue(&f, &ca).await;
    ca.shutdown().await;

    let ca = f.start().await;
    assert_eq!(
        std::fs::read_to_string(f.state("root-cert.pem")).unwrap(),
        root,
        "same root after restart"
    );
    let second = issue(&f, &ca).await;
    assert_eq!(first[1], second[1], "issued by the same root");
    ca.shutdown().await;
}

#[tokio::test]
async fn rotation_on_a_running_server_keeps_old_certificates_valid() {
    let f = fixture();
    let ca = f.start().await;
    let old = issue(&f, &ca).await;
    let td = TrustDomain::default();
    f.opts.root.rotate_root(&td, SystemTime::now()).unwrap();
    let new_root = CertificateDer::from_pem_file(f.state("root-cert.pem")).unwrap();
    assert_ne!(new_root, old[1]);

    // The server picks the new root up without a restart.
    let mut new = issue(&f, &ca).await;
    for _ in 0..50 {
        if new[1] == new_root {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        new = issue(&f, &ca).await;
    }
    assert_eq!(new[1], new_root, "new certificates come from the new root");
    let bundle = TrustBundle::from_pem(&f.bundle_pem()).unwrap();
    assert_eq!(bundle.roots().len(), 2);
    for c in [&old, &new] {
        verify_svid(&c[..1], &bundle, SystemTime::now(), SvidUsage::Server).unwrap();
    }
    ca.shutdown().await;
}

#[tokio::test]
async fn exposed_root_key_is_refused() {
    let f = fixture();
    let ca = f.start().await;
    ca.shutdown().await;
    std::fs::set_permissions(
        f.state("root-key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = nodemesh_ca::start(
        f.opts.clone(),
        std::sync::Arc::new(nodemesh_identity::SystemClock),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("readable by group or others"),
        "{err}"
    );
}
