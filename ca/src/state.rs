//! The CA's state directory: `root-cert.pem`, `root-key.pem` (0600) and `trust-bundle.pem`.
//!
//! `init` creates a root when there is none; [`crate::rotation`] stages, activates and retires
//! roots. Files are replaced atomically (write to a temporary file, then rename), bundle first, so
//! a running server that reloads mid-rotation never sees a root that is missing from the bundle.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nodemesh_identity::{TrustBundle, TrustDomain, der_to_pem};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::issuer::{Authority, SignError, generate_root, root_trust_domain};

/// File name of the signing root certificate.
pub const ROOT_CERT: &str = "root-cert.pem";
/// File name of the signing root key (mode 0600).
pub const ROOT_KEY: &str = "root-key.pem";
/// File name of the trust bundle (every root peers must trust).
pub const TRUST_BUNDLE: &str = "trust-bundle.pem";
/// How many roots the bundle holds at most: the signing root and one other (staged, or
/// previous and not yet retired).
pub const BUNDLE_ROOTS: usize = 2;

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The root key can be read by group or others.
    #[error(
        "{path}: private key is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A certificate or bundle file does not parse.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The root cert is missing from the trust bundle.
    #[error("{bundle}: does not contain the signing root {root}")]
    RootNotInBundle {
        /// The bundle file.
        bundle: PathBuf,
        /// The root file.
        root: PathBuf,
    },
    /// The root was made for another trust domain than the one asked for.
    #[error("{root}: the root serves trust domain {root_domain:?}, not {asked:?}")]
    ForeignTrustDomain {
        /// The root file.
        root: PathBuf,
        /// The trust domain the root names.
        root_domain: String,
        /// The trust domain asked for.
        asked: String,
    },
    /// The key and certificate do not fit together, or signing failed.
    #[error("root certificate and key are unusable: {0}")]
    Sign(#[from] SignError),
    /// A rotation step that needs the state directory's own root, asked of a supplied one.
    #[error(
        "{cert}: the root is supplied by the operator; rotate it by supplying a new one (stage, activate and retire-root work on the state directory's root)"
    )]
    SuppliedRoot {
        /// The supplied root certificate.
        cert: PathBuf,
    },
    /// A root is already staged.
    #[error(
        "{staged}: a root is already staged; activate it (`nodemesh ca activate-root`) before staging another"
    )]
    AlreadyStaged {
        /// The staged root certificate.
        staged: PathBuf,
    },
    /// Nothing is staged to activate.
    #[error("{staged}: no root is staged; stage one first (`nodemesh ca stage-root`)")]
    NothingStaged {
        /// Where a staged root certificate would be.
        staged: PathBuf,
    },
    /// A new root cannot be added while the bundle still holds the previous one.
    #[error(
        "{bundle}: still holds the previous root {root}; retire it first (`nodemesh ca retire-root`) so the bundle keeps at most two roots"
    )]
    PreviousRootInBundle {
        /// The bundle file.
        bundle: PathBuf,
        /// The previous root (common name and fingerprint).
        root: String,
    },
    /// Retiring a root now would break leaves it issued that may still be valid.
    #[error(
        "root {root} may have issued leaves valid until {until} (recorded in {ledger}); retiring it now would make them fail verification. Retry after {until}, once every workload has renewed from the new root, or pass --force if you know no such leaf is in use"
    )]
    RootStillLive {
        /// The root (common name and fingerprint).
        root: String,
        /// When its last recorded leaf expires (RFC 3339).
        until: String,
        /// The ledger file.
        ledger: PathBuf,
    },
    /// The ledger has no record of a root to retire, so its leaves' lifetime is unknown.
    #[error(
        "root {root} has no record in {ledger} (the CA ran without one, or the state directory was lost), so leaves it issued may still be valid for up to the CA's --max-lifetime after the signing root changed at {changed}; pass --force once that has passed"
    )]
    RootUnrecorded {
        /// The root (common name and fingerprint).
        root: String,
        /// The ledger file.
        ledger: PathBuf,
        /// When the signing root last changed (RFC 3339).
        changed: String,
    },
    /// The signing root changed so recently that a running CA may still sign with the old one.
    #[error(
        "{cert}: the signing root changed at {changed}; a running CA may still sign with the previous root until it reloads. Retry after {until}"
    )]
    RecentlyActivated {
        /// The signing root certificate.
        cert: PathBuf,
        /// When it changed (RFC 3339).
        changed: String,
        /// When retiring is possible (RFC 3339).
        until: String,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the root lives: the state directory, or an operator-supplied cert and key.
#[derive(Debug, Clone)]
pub struct RootSource {
    /// The state directory (always holds `trust-bundle.pem`).
    pub state_dir: PathBuf,
    /// An operator-supplied root certificate and key, used instead of the state dir's.
    pub supplied: Option<(PathBuf, PathBuf)>,
}

impl RootSource {
    /// The root in `state_dir`.
    pub fn state_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: dir.into(),
            supplied: None,
        }
    }

    /// The root certificate and key files.
    pub fn root_files(&self) -> (PathBuf, PathBuf) {
        match &self.supplied {
            Some((cert, key)) => (cert.clone(), key.clone()),
            None => (
                self.state_dir.join(ROOT_CERT),
                self.state_dir.join(ROOT_KEY),
            ),
        }
    }

    /// The trust bundle file.
    pub fn bundle_file(&self) -> PathBuf {
        self.state_dir.join(TRUST_BUNDLE)
    }

    /// Creates the state directory (0700) and a ten-year root if there is none, or writes the
    /// bundle for a supplied root. Existing roots are kept. Returns whether a root was created.
    pub fn init(&self, trust_domain: &TrustDomain, now: SystemTime) -> Result<bool, StateError> {
        create_private_dir(&self.state_dir)?;
        let (cert_path, key_path) = self.root_files();
        let bundle_path = self.bundle_file();
        if self.supplied.is_none() && !cert_path.exists() && !key_path.exists() {
            let (cert_pem, key_pem) = generate_root(trust_domain, now)?;
            let mut bundle = read_bundle_if_present(&bundle_path)?;
            bundle.push(pem_cert(&cert_path, &cert_pem)?);
            write_atomic(&bundle_path, bundle_pem(&bundle).as_bytes(), 0o644)?;
            write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
            write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
            return Ok(true);
        }
        let root = read_cert(&cert_path)?;
        let mut bundle = read_bundle_if_present(&bundle_path)?;
        if !bundle.contains(&root) {
            bundle.push(root);
            write_atomic(&bundle_path, bundle_pem(&bundle).as_bytes(), 0o644)?;
        }
        Ok(false)
    }

    /// Loads the signing authority: checks the key's permissions, that key and cert match, that
    /// the bundle holds the root, and that a root `init` made names `trust_domain` (an
    /// operator-supplied root names none).
    pub fn load(&self, trust_domain: &TrustDomain) -> Result<Authority, StateError> {
        let (cert_path, key_path) = self.root_files();
        let bundle_path = self.bundle_file();
        let key_pem = read_private_key(&key_path)?;
        let root = read_cert(&cert_path)?;
        if let Some(root_domain) = root_trust_domain(&root)
            && root_domain != trust_domain.as_str()
        {
            return Err(StateError::ForeignTrustDomain {
                root: cert_path,
                root_domain,
                asked: trust_domain.to_string(),
            });
        }
        let roots = read_bundle_if_present(&bundle_path)?;
        if !roots.contains(&root) {
            return Err(StateError::RootNotInBundle {
                bundle: bundle_path,
                root: cert_path,
            });
        }
        let bundle = TrustBundle::from_der(roots).map_err(|e| StateError::BadFile {
            path: bundle_path,
            reason: e.to_string(),
        })?;
        let authority = Authority::new(trust_domain.clone(), root, &key_pem, bundle)?;
        check_key_matches(&authority, &key_pem, &cert_path)?;
        Ok(authority)
    }
}

pub(crate) fn check_key_matches(
    authority: &Authority,
    key_pem: &str,
    cert_path: &Path,
) -> Result<(), StateError> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(SignError::from)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(authority.root()).map_err(|e| StateError::BadFile {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(StateError::BadFile {
            path: cert_path.to_owned(),
            reason: "root certificate does not match the root key".into(),
        });
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    Ok(())
}

pub(crate) fn read_private_key(path: &Path) -> Result<String, StateError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StateError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(io_err(path))
}

pub(crate) fn read_cert(path: &Path) -> Result<CertificateDer<'static>, StateError> {
    let pem = fs::read_to_string(path).map_err(io_err(path))?;
    pem_cert(path, &pem)
}

pub(crate) fn pem_cert(path: &Path, pem: &str) -> Result<CertificateDer<'static>, StateError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| StateError::BadFile {
        path: path.to_owned(),
        reason: format!("not a PEM certificate: {e}"),
    })
}

pub(crate) fn read_bundle_if_present(
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, StateError> {
    match fs::read_to_string(path) {
        Ok(pem) => CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StateError::BadFile {
                path: path.to_owned(),
                reason: format!("not PEM certificates: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

pub(crate) fn bundle_pem(roots: &[CertificateDer<'_>]) -> String {
    roots.iter().map(|c| der_to_pem(c)).collect()
}

/// Writes `data` to `path` atomically with `mode`: a temporary file in the same directory, fsync,
/// rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), StateError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(data).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}
