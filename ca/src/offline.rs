//! Offline issuance: an SVID signed straight from the state directory's root, without a running
//! CA (for tests and bootstrap), written as `cert-chain.pem`, `key.pem` and `root-cert.pem`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nodemesh_identity::{
    BundleError, KeyError, SpiffeId, der_to_pem, generate_csr, private_key_to_pem,
};

use crate::csr::{CsrError, check_csr};
use crate::issuer::{LifetimeError, LifetimePolicy, SignError};
use crate::state::{RootSource, StateError};

/// The chain file: leaf first, root last (mode 0644).
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The private key file, PKCS#8 PEM (mode 0600).
pub const KEY: &str = "key.pem";
/// The trust bundle file (mode 0644).
pub const ROOT_CERT: &str = "root-cert.pem";

/// Why an offline certificate could not be issued or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfflineError {
    /// The root cannot be loaded.
    #[error("loading the root from {} (run `nodemesh ca init` first?)", dir.display())]
    Root {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: StateError,
    },
    /// The identity is of another trust domain than the root's.
    #[error("{identity} is not of trust domain {root_domain:?}, the one the root in {} serves", dir.display())]
    ForeignTrustDomain {
        /// The identity asked for.
        identity: SpiffeId,
        /// The root's trust domain.
        root_domain: String,
        /// The state directory.
        dir: PathBuf,
    },
    /// The lifetime is refused by the [`LifetimePolicy`].
    #[error("certificate lifetime")]
    Lifetime(#[source] LifetimeError),
    /// The key or CSR could not be generated.
    #[error("generating the key")]
    Key(#[source] KeyError),
    /// The generated CSR failed the CA's own checks (for example, another trust domain).
    #[error("checking the CSR")]
    Csr(#[source] CsrError),
    /// Signing failed.
    #[error("signing the certificate")]
    Sign(#[source] SignError),
    /// The certificate could not be recorded in the state directory's ledger.
    #[error("recording the certificate in the ledger")]
    Ledger(#[source] StateError),
    /// The key could not be encoded.
    #[error("encoding the key")]
    Encode(#[source] BundleError),
    /// A file or directory could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A freshly issued SVID with its key and the trust bundle, PEM-encoded.
pub struct OfflineSvid {
    /// The certified identity.
    pub identity: SpiffeId,
    /// The chain, leaf first, root last.
    pub chain_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
    /// Every root a peer must trust.
    pub bundle_pem: String,
}

impl std::fmt::Debug for OfflineSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineSvid")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Issues an SVID for `identity` from `root` at `now`, with a fresh key. `lifetime` follows the
/// default [`LifetimePolicy`] as a request's `validity_duration` does: zero means the default
/// (24 h), below the minimum (1 min) or above the maximum (7 days) is refused. An identity of
/// another trust domain than the root's is refused.
pub fn issue(
    root: &RootSource,
    identity: &SpiffeId,
    lifetime: Duration,
    now: SystemTime,
) -> Result<OfflineSvid, OfflineError> {
    let trust_domain = identity.trust_domain();
    let authority = root.load(&trust_domain).map_err(|source| match source {
        StateError::ForeignTrustDomain { root_domain, .. } => OfflineError::ForeignTrustDomain {
            identity: identity.clone(),
            root_domain,
            dir: root.state_dir.clone(),
        },
        source => OfflineError::Root {
            dir: root.state_dir.clone(),
            source,
        },
    })?;
    let seconds = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX);
    let validity = LifetimePolicy::default()
        .window_exact(seconds, now)
        .map_err(OfflineError::Lifetime)?;
    let csr = generate_csr(identity).map_err(OfflineError::Key)?;
    let checked = check_csr(&csr.csr_pem, &trust_domain).map_err(OfflineError::Csr)?;
    let chain = authority
        .issue(&checked, validity)
        .map_err(OfflineError::Sign)?;
    // Recorded, so `retire-root` knows this leaf, before it is handed out.
    crate::ledger::Ledger::open(root.ledger_file())
        .and_then(|ledger| ledger.record(authority.root(), validity.not_after))
        .map_err(OfflineError::Ledger)?;
    Ok(OfflineSvid {
        identity: identity.clone(),
        chain_pem: chain.iter().map(|c| der_to_pem(c)).collect(),
        key_pem: private_key_to_pem(&csr.key).map_err(OfflineError::Encode)?,
        bundle_pem: authority.bundle().to_pem(),
    })
}

impl OfflineSvid {
    /// Writes [`CERT_CHAIN`], [`KEY`] (0600) and [`ROOT_CERT`] to `dir`, creating it if missing
    /// and replacing files already there (so an old key's looser mode never survives).
    pub fn write_to(&self, dir: &Path) -> Result<(), OfflineError> {
        std::fs::create_dir_all(dir).map_err(|source| OfflineError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write_file(&dir.join(CERT_CHAIN), &self.chain_pem, 0o644)?;
        write_file(&dir.join(KEY), &self.key_pem, 0o600)?;
        write_file(&dir.join(ROOT_CERT), &self.bundle_pem, 0o644)
    }
}

fn write_file(path: &Path, data: &str, mode: u32) -> Result<(), OfflineError> {
    let err = |source| OfflineError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(data.as_bytes()))
        .map_err(err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt as _;

    use nodemesh_identity::{SvidUsage, TrustBundle, verify_svid};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;

    use super::*;

    fn root(dir: &Path) -> RootSource {
        nodemesh_identity::install_default_provider();
        let root = RootSource::state_dir(dir.join("ca"));
        root.init(&"cluster.local".parse().unwrap(), SystemTime::now())
            .unwrap();
        root
    }

    fn web() -> SpiffeId {
        SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap()
    }

    #[test]
    fn issues_a_verifying_svid_for_the_lifetime_asked() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let svid = issue(&root(dir.path()), &web(), Duration::from_secs(3600), now).unwrap();
        let chain: Vec<_> = CertificateDer::pem_slice_iter(svid.chain_pem.as_bytes())
            .map(Result::unwrap)
            .collect();
        assert_eq!(chain.len(), 2, "leaf and root");
        let bundle = TrustBundle::from_pem(&svid.bundle_pem).unwrap();
        let info = verify_svid(&chain, &bundle, now, SvidUsage::Server).unwrap();
        assert_eq!(info.id, web());
        let lifetime = info.not_after.duration_since(info.not_before).unwrap();
        // Whole seconds in the certificate: allow one of rounding.
        let expected = 3600 + crate::issuer::BACKDATE.as_secs();
        assert!(lifetime.as_secs().abs_diff(expected) <= 1, "{lifetime:?}");
        assert!(svid.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn lifetimes_follow_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let root = root(dir.path());
        let now = SystemTime::now();
        let err = issue(&root, &web(), Duration::from_secs(30), now).unwrap_err();
        assert!(
            matches!(
                err,
                OfflineError::Lifetime(LifetimeError::TooShort { requested: 30, .. })
            ),
            "{err:?}"
        );
        let lifetime = |svid: OfflineSvid| {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(svid.chain_pem.as_bytes())
                .map(Result::unwrap)
                .collect();
            let bundle = TrustBundle::from_pem(&svid.bundle_pem).unwrap();
            let info = verify_svid(&chain, &bundle, now, SvidUsage::Client).unwrap();
            info.not_after.duration_since(now).unwrap().as_secs()
        };
        let week = issue(&root, &web(), Duration::from_secs(7 * 86_400), now).unwrap();
        assert!(
            lifetime(week).abs_diff(7 * 86_400) <= 1,
            "7 days is allowed"
        );
        let err = issue(&root, &web(), Duration::from_secs(8 * 86_400), now).unwrap_err();
        assert!(
            matches!(
                err,
                OfflineError::Lifetime(LifetimeError::TooLong {
                    requested: 691_200,
                    max: 604_800
                })
            ),
            "{err:?}"
        );
        let OfflineError::Lifetime(cause) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            cause.to_string(),
            "lifetime 691200s is above the maximum of 604800s (7 days)"
        );
        let zero = issue(&root, &web(), Duration::ZERO, now).unwrap();
        assert!(
            lifetime(zero).abs_diff(86_400) <= 1,
            "zero means the default"
        );
    }

    #[test]
    fn an_identity_of_another_trust_domain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = root(dir.path());
        let foreign = SpiffeId::new("spiffe://other.example/ns/shop/sa/web").unwrap();
        let err = issue(
            &root,
            &foreign,
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, OfflineError::ForeignTrustDomain { root_domain, .. } if root_domain == "cluster.local"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "spiffe://other.example/ns/shop/sa/web is not of trust domain \"cluster.local\", the one the root in {} serves",
                dir.path().join("ca").display()
            )
        );
    }

    #[test]
    fn every_root_has_its_own_subject() {
        let dir = tempfile::tempdir().unwrap();
        let subject = |sub: &str| {
            let root = root(&dir.path().join(sub));
            let pem = std::fs::read_to_string(root.root_files().0).unwrap();
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            assert_eq!(
                crate::issuer::root_trust_domain(&der).as_deref(),
                Some("cluster.local")
            );
            cert.subject().to_string()
        };
        assert_ne!(subject("a"), subject("b"));
    }

    #[test]
    fn a_missing_root_names_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootSource::state_dir(dir.path().join("nothing"));
        let err = issue(&root, &web(), Duration::from_secs(3600), SystemTime::now()).unwrap_err();
        let OfflineError::Root { dir: named, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(named, &dir.path().join("nothing"));
        assert!(
            err.to_string().contains("run `nodemesh ca init` first?"),
            "{err}"
        );
    }

    #[test]
    fn files_are_written_with_their_modes_replacing_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let svid = issue(
            &root(dir.path()),
            &web(),
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
        let out = dir.path().join("out/nested");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(KEY), "old").unwrap();
        std::fs::set_permissions(out.join(KEY), std::fs::Permissions::from_mode(0o644)).unwrap();
        svid.write_to(&out).unwrap();
        let mode = |name: &str| {
            std::fs::metadata(out.join(name))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode(KEY) & 0o777, 0o600);
        assert_eq!(mode(CERT_CHAIN) & 0o777, 0o644 & !umask());
        assert_eq!(
            std::fs::read_to_string(out.join(KEY)).unwrap(),
            svid.key_pem
        );
        assert_eq!(
            std::fs::read_to_string(out.join(CERT_CHAIN)).unwrap(),
            svid.chain_pem
        );
        assert_eq!(
            std::fs::read_to_string(out.join(ROOT_CERT)).unwrap(),
            svid.bundle_pem
        );
        let err = svid.write_to(&out.join(KEY)).unwrap_err();
        assert!(
            matches!(err, OfflineError::Write { ref path, .. } if path == &out.join(KEY)),
            "{err:?}"
        );
    }

    /// The process's umask, read back from a file created with 0o777.
    fn umask() -> u32 {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o777)
            .open(&probe)
            .unwrap();
        !std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777
    }
}
