//! Root rotation in the state directory, in three steps so no peer ever sees a leaf of a root it
//! does not trust:
//!
//! 1. [`RootSource::stage_root`]: a new root joins the trust bundle (`next-root-cert.pem`,
//!    `next-root-key.pem`); the old root still signs. Wait until every peer has the new bundle.
//! 2. [`RootSource::activate_root`]: the staged root signs; the old one stays in the bundle so
//!    the leaves it signed keep verifying. Workloads renew from the new root.
//! 3. [`RootSource::retire_root`]: the old root leaves the bundle, refused while the
//!    [ledger](crate::ledger) says a leaf it issued may still be valid.
//!
//! [`RootSource::rotate_root`] does 1 and 2 at once, for peers that re-read the bundle promptly.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use nodemesh_identity::{TrustBundle, TrustDomain};
use rustls_pki_types::CertificateDer;

use crate::issuer::{Authority, generate_root, root_trust_domain};
use crate::ledger::{self, LEDGER, fingerprint};
use crate::state::{
    RootSource, StateError, bundle_pem, check_key_matches, io_err, pem_cert,
    read_bundle_if_present, read_cert, read_private_key, write_atomic,
};

/// File name of a staged root certificate (in the bundle, not signing yet).
pub const NEXT_ROOT_CERT: &str = "next-root-cert.pem";
/// File name of a staged root key (mode 0600).
pub const NEXT_ROOT_KEY: &str = "next-root-key.pem";
/// How long after the signing root changed a previous root may not be retired: a running CA
/// re-reads its files every few seconds and may sign with the previous root until then.
pub const ACTIVATION_GRACE: Duration = Duration::from_secs(60);

/// A root for messages: its common name and the start of its SHA-256 fingerprint.
pub fn describe_root(root: &CertificateDer<'_>) -> String {
    let fp = fingerprint(root);
    let cn = x509_parser::parse_x509_certificate(root)
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_owned))
        });
    match cn {
        Some(cn) => format!("{cn:?} (sha256 {})", &fp[..16]),
        None => format!("sha256 {}", &fp[..16]),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl RootSource {
    /// The staged root certificate and key files.
    pub fn staged_files(&self) -> (PathBuf, PathBuf) {
        (
            self.state_dir.join(NEXT_ROOT_CERT),
            self.state_dir.join(NEXT_ROOT_KEY),
        )
    }

    /// The ledger file.
    pub fn ledger_file(&self) -> PathBuf {
        self.state_dir.join(LEDGER)
    }

    fn own_root(&self) -> Result<(), StateError> {
        match &self.supplied {
            Some((cert, _)) => Err(StateError::SuppliedRoot { cert: cert.clone() }),
            None => Ok(()),
        }
    }

    /// Adds a new root to the trust bundle without signing with it. Refused while a root is
    /// staged already or the bundle still holds a previous root. Returns the staged root.
    pub fn stage_root(
        &self,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<CertificateDer<'static>, StateError> {
        self.own_root()?;
        // Never build on a state directory that does not load.
        self.load(trust_domain)?;
        let (cert_path, _) = self.root_files();
        let (next_cert, next_key) = self.staged_files();
        let bundle_path = self.bundle_file();
        let mut bundle = read_bundle_if_present(&bundle_path)?;
        if next_cert.exists() {
            let staged = read_cert(&next_cert)?;
            if bundle.contains(&staged) {
                return Err(StateError::AlreadyStaged { staged: next_cert });
            }
            // A staging interrupted before the bundle was written: finish it.
            bundle.push(staged.clone());
            write_atomic(&bundle_path, bundle_pem(&bundle).as_bytes(), 0o644)?;
            return Ok(staged);
        }
        let signing = read_cert(&cert_path)?;
        if let Some(previous) = bundle.iter().find(|r| **r != signing) {
            return Err(StateError::PreviousRootInBundle {
                bundle: bundle_path,
                root: describe_root(previous),
            });
        }
        let (cert_pem, key_pem) = generate_root(trust_domain, now)?;
        let staged = pem_cert(&next_cert, &cert_pem)?;
        write_atomic(&next_key, key_pem.as_bytes(), 0o600)?;
        write_atomic(&next_cert, cert_pem.as_bytes(), 0o644)?;
        bundle.push(staged.clone());
        write_atomic(&bundle_path, bundle_pem(&bundle).as_bytes(), 0o644)?;
        Ok(staged)
    }

    /// Makes the staged root the signing root; the previous one stays in the bundle until
    /// [`RootSource::retire_root`]. Returns the new signing root.
    pub fn activate_root(
        &self,
        trust_domain: &TrustDomain,
    ) -> Result<CertificateDer<'static>, StateError> {
        self.own_root()?;
        self.load(trust_domain)?;
        let (cert_path, key_path) = self.root_files();
        let (next_cert, next_key) = self.staged_files();
        if !next_cert.exists() {
            return Err(StateError::NothingStaged { staged: next_cert });
        }
        let key_pem = read_private_key(&next_key)?;
        let staged = read_cert(&next_cert)?;
        if let Some(root_domain) = root_trust_domain(&staged)
            && root_domain != trust_domain.as_str()
        {
            return Err(StateError::ForeignTrustDomain {
                root: next_cert,
                root_domain,
                asked: trust_domain.to_string(),
            });
        }
        let bundle_path = self.bundle_file();
        let roots = read_bundle_if_present(&bundle_path)?;
        if !roots.contains(&staged) {
            return Err(StateError::RootNotInBundle {
                bundle: bundle_path,
                root: next_cert,
            });
        }
        let bundle = TrustBundle::from_der(roots).map_err(|e| StateError::BadFile {
            path: bundle_path,
            reason: e.to_string(),
        })?;
        let authority = Authority::new(trust_domain.clone(), staged.clone(), &key_pem, bundle)?;
        check_key_matches(&authority, &key_pem, &next_cert)?;
        let cert_pem = std::fs::read_to_string(&next_cert).map_err(io_err(&next_cert))?;
        write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
        write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
        for staged_file in [&next_key, &next_cert] {
            std::fs::remove_file(staged_file).map_err(io_err(staged_file))?;
        }
        Ok(staged)
    }

    /// Stages a new root and activates it at once: new certificates come from it, the previous
    /// root stays in the bundle. Refused while the bundle still holds an older root.
    pub fn rotate_root(
        &self,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<(), StateError> {
        self.stage_root(trust_domain, now)?;
        self.activate_root(trust_domain)?;
        Ok(())
    }

    /// The time by which, per the ledger, every leaf `root` issued has expired (`None`: no record).
    pub fn leaves_expire_by(
        &self,
        root: &CertificateDer<'_>,
    ) -> Result<Option<SystemTime>, StateError> {
        Ok(ledger::read(&self.ledger_file())?
            .get(&fingerprint(root))
            .copied())
    }

    /// Removes from the bundle every root that neither signs nor is staged. Unless `force`,
    /// refused while a leaf such a root issued may still be valid at `now` (per the ledger, or
    /// because the ledger does not know it), or within [`ACTIVATION_GRACE`] of the signing root
    /// changing. Returns the roots removed (none when there was nothing to retire).
    pub fn retire_root(
        &self,
        trust_domain: &TrustDomain,
        now: SystemTime,
        force: bool,
    ) -> Result<Vec<CertificateDer<'static>>, StateError> {
        self.load(trust_domain)?;
        let (cert_path, _) = self.root_files();
        let signing = read_cert(&cert_path)?;
        let (next_cert, _) = self.staged_files();
        let staged = match self.supplied {
            None if next_cert.exists() => Some(read_cert(&next_cert)?),
            _ => None,
        };
        let bundle_path = self.bundle_file();
        let (keep, retire): (Vec<_>, Vec<_>) = read_bundle_if_present(&bundle_path)?
            .into_iter()
            .partition(|r| *r == signing || staged.as_ref() == Some(r));
        if retire.is_empty() {
            return Ok(retire);
        }
        if !force {
            let changed = std::fs::metadata(&cert_path)
                .and_then(|m| m.modified())
                .map_err(io_err(&cert_path))?;
            if now < changed + ACTIVATION_GRACE {
                return Err(StateError::RecentlyActivated {
                    cert: cert_path,
                    changed: rfc3339(changed),
                    until: rfc3339(changed + ACTIVATION_GRACE),
                });
            }
            let ledger_path = self.ledger_file();
            let ledger = ledger::read(&ledger_path)?;
            for root in &retire {
                match ledger.get(&fingerprint(root)) {
                    Some(until) if *until > now => {
                        return Err(StateError::RootStillLive {
                            root: describe_root(root),
                            until: rfc3339(*until),
                            ledger: ledger_path,
                        });
                    }
                    Some(_) => {}
                    None => {
                        return Err(StateError::RootUnrecorded {
                            root: describe_root(root),
                            ledger: ledger_path,
                            changed: rfc3339(changed),
                        });
                    }
                }
            }
        }
        write_atomic(&bundle_path, bundle_pem(&keep).as_bytes(), 0o644)?;
        Ok(retire)
    }
}
