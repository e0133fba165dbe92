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

/// Issues until a chain comes from `root` (a running CA picks up files within 100 ms), for at
/// most 10 s.
async fn issue_from(
    f: &LocalCa,
    ca: &nodemesh_ca::RunningCa,
    root: &CertificateDer<'static>,
) -> Vec<CertificateDer<'static>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let chain = issue(f, ca).await;
        if &chain[1] == root {
            return chain;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new root never signed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn roots_of(pem: &str) -> Vec<CertificateDer<'static>> {
    TrustBundle::from_pem(pem).unwrap().roots().to_vec()
}

#[tokio::test]
async fn a_staged_root_is_trusted_before_it_signs() {
    let f = fixture();
    let ca = f.start().await;
    let td = TrustDomain::default();
    let old = CertificateDer::from_pem_file(f.state("root-cert.pem")).unwrap();
    let staged = f.opts.root.stage_root(&td, SystemTime::now()).unwrap();
    assert_eq!(roots_of(&f.bundle_pem()), vec![old.clone(), staged.clone()]);
    // The running server publishes the bundle with both roots, and still signs with the old one.
    until_served(ca.http_addr, "the staged root is served", |roots| {
        roots.contains(&staged)
    })
    .await;
    assert_eq!(
        issue(&f, &ca).await[1],
        old,
        "the staged root does not sign yet"
    );
    let err = f.opts.root.stage_root(&td, SystemTime::now()).unwrap_err();
    assert!(
        matches!(err, nodemesh_ca::StateError::AlreadyStaged { .. }),
        "{err}"
    );

    assert_eq!(f.opts.root.activate_root(&td).unwrap(), staged);
    assert!(!f.state("next-root-cert.pem").exists());
    assert!(!f.state("next-root-key.pem").exists());
    issue_from(&f, &ca, &staged).await;
    assert_eq!(roots_of(&f.bundle_pem()), vec![old, staged]);
    // A further rotation waits for the old root's retirement.
    let err = f.opts.root.rotate_root(&td, SystemTime::now()).unwrap_err();
    assert!(err.to_string().contains("retire it first"), "{err}");
    ca.shutdown().await;
}

#[tokio::test]
async fn retire_is_refused_while_a_leaf_of_the_old_root_lives() {
    let f = fixture();
    let ca = f.start().await;
    let td = TrustDomain::default();
    let old_leaf = issue(&f, &ca).await;
    let old_expires = nodemesh_identity::inspect_leaf(&old_leaf[0])
        .unwrap()
        .not_after;
    // A restart keeps the record.
    ca.shutdown().await;
    let ca = f.start().await;
    f.opts.root.stage_root(&td, SystemTime::now()).unwrap();
    let new_root = f.opts.root.activate_root(&td).unwrap();
    issue_from(&f, &ca, &new_root).await;

    let now = SystemTime::now();
    let err = f.opts.root.retire_root(&td, now, false).unwrap_err();
    assert!(
        matches!(err, nodemesh_ca::StateError::RecentlyActivated { .. }),
        "right after activation a running CA may still sign with the old root: {err}"
    );
    let later = now + nodemesh_ca::rotation::ACTIVATION_GRACE + Duration::from_secs(1);
    let err = f.opts.root.retire_root(&td, later, false).unwrap_err();
    let nodemesh_ca::StateError::RootStillLive {
        until: until_text, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert!(err.to_string().contains("--force"), "{err}");
    let expires_by = f.opts.root.leaves_expire_by(&old_leaf[1]).unwrap().unwrap();
    assert!(
        expires_by >= old_expires,
        "{expires_by:?} < {old_expires:?}"
    );
    assert!(
        expires_by <= old_expires + nodemesh_ca::ledger::RECORD_AHEAD + Duration::from_secs(1),
        "recorded {expires_by:?}, leaf expires {old_expires:?}"
    );
    assert_eq!(
        until_text,
        &humantime::format_rfc3339_seconds(expires_by).to_string()
    );
    let err = f
        .opts
        .root
        .retire_root(&td, expires_by - Duration::from_secs(1), false)
        .unwrap_err();
    assert!(
        matches!(err, nodemesh_ca::StateError::RootStillLive { .. }),
        "{err}"
    );
    assert_eq!(
        roots_of(&f.bundle_pem()).len(),
        2,
        "refusals change nothing"
    );

    // Once the last leaf of the old root has expired, it goes.
    let retired = f.opts.root.retire_root(&td, expires_by, false).unwrap();
    assert_eq!(retired, vec![old_leaf[1].clone()]);
    assert_eq!(roots_of(&f.bundle_pem()), vec![new_root.clone()]);
    until_served(
        ca.http_addr,
        "the running server serves the new bundle",
        |roots| roots == [new_root.clone()],
    )
    .await;
    // It keeps issuing, from the new root, verifying against the one-root bundle.
    let leaf = issue(&f, &ca).await;
    let bundle = TrustBundle::from_pem(&f.bundle_pem()).unwrap();
    verify_svid(&leaf[..1], &bundle, SystemTime::now(), SvidUsage::Client).unwrap();
    // Nothing left to retire.
    assert!(
        f.opts
            .root
            .retire_root(&td, expires_by, false)
            .unwrap()
            .is_empty()
    );
    ca.shutdown().await;
}

#[tokio::test]
async fn an_unrecorded_old_root_needs_force() {
    let f = fixture();
    let ca = f.start().await;
    let td = TrustDomain::default();
    let _ = issue(&f, &ca).await;
    ca.shutdown().await;
    f.opts.root.rotate_root(&td, SystemTime::now()).unwrap();
    // A state directory from before the ledger.
    std::fs::remove_file(f.state("issued-until")).unwrap();
    let later = SystemTime::now() + Duration::from_secs(30 * 86_400);
    let err = f.opts.root.retire_root(&td, later, false).unwrap_err();
    assert!(
        matches!(err, nodemesh_ca::StateError::RootUnrecorded { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--max-lifetime"), "{err}");
    let retired = f
        .opts
        .root
        .retire_root(&td, SystemTime::now(), true)
        .unwrap();
    assert_eq!(retired.len(), 1);
    assert_eq!(roots_of(&f.bundle_pem()).len(), 1);
}
