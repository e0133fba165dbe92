//! The issuance ledger: per root, a time by which every leaf it issued has expired, kept in the
//! state directory ([`LEDGER`]) so that `retire-root` knows, across restarts, until when an old
//! root must stay in the trust bundle.
//!
//! The CA records a leaf before handing it out. To avoid a disk write per certificate it records
//! [`RECORD_AHEAD`] beyond the leaf's notAfter and writes again only when a leaf outlives that,
//! so the recorded time is never earlier than any leaf's notAfter (fail closed: retirement may be
//! refused up to [`RECORD_AHEAD`] longer than strictly needed, never allowed too early).
//!
//! The file is one `<SHA-256 of the root certificate, hex> <unix seconds>` line per root, after
//! a `#` comment; it is replaced atomically, merged with what is on disk (an offline `ca issue`
//! records there too), keeping the later time of each root.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::hash::HashAlgorithm;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::state::{StateError, write_atomic};

/// File name of the ledger in the state directory.
pub const LEDGER: &str = "issued-until";
/// How far beyond a leaf's notAfter the ledger records, so most leaves need no disk write.
pub const RECORD_AHEAD: Duration = Duration::from_secs(600);

/// The SHA-256 fingerprint of a certificate, lowercase hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let provider = nodemesh_identity::crypto_provider();
    let sha256 = provider
        .cipher_suites
        .iter()
        .find_map(|suite| {
            let hash = suite.tls13()?.common.hash_provider;
            (hash.algorithm() == HashAlgorithm::SHA256).then_some(hash)
        })
        // The provider is ours (aws-lc-rs with its default suites): SHA-256 is always there.
        .unwrap_or_else(|| unreachable!("the crypto provider has no SHA-256 TLS 1.3 suite"));
    sha256
        .hash(cert)
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Reads the ledger at `path`: fingerprint to the time its leaves are all expired by. A missing
/// file is an empty ledger.
pub fn read(path: &Path) -> Result<BTreeMap<String, SystemTime>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| StateError::BadFile {
            path: path.to_owned(),
            reason: format!("line {}: {reason}", n + 1),
        };
        let (fp, secs) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected `<fingerprint> <unix seconds>`"))?;
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the fingerprint is not 64 hex digits"));
        }
        let secs: u64 = secs
            .trim()
            .parse()
            .map_err(|_| bad("the time is not unix seconds"))?;
        out.insert(fp.to_owned(), UNIX_EPOCH + Duration::from_secs(secs));
    }
    Ok(out)
}

/// The ledger of a running CA: what is on disk, written through on every extension. Requests
/// the record covers only read it; extensions (rare) are serialized by the watch's write side.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    recorded: watch::Sender<BTreeMap<String, SystemTime>>,
}

impl Ledger {
    /// Opens the ledger at `path` (missing is empty; unreadable or malformed is an error, so a
    /// CA never starts by forgetting what it issued).
    pub fn open(path: PathBuf) -> Result<Self, StateError> {
        let recorded = read(&path)?;
        Ok(Self {
            path,
            recorded: watch::Sender::new(recorded),
        })
    }

    /// Makes sure the ledger says `root` has leaves until at least `not_after`, writing it to
    /// disk if it did not. Call before the leaf is handed out; an error means the leaf must not be.
    pub fn record(
        &self,
        root: &CertificateDer<'_>,
        not_after: SystemTime,
    ) -> Result<(), StateError> {
        let fp = fingerprint(root);
        let covered = |recorded: &BTreeMap<String, SystemTime>| {
            recorded.get(&fp).is_some_and(|t| *t >= not_after)
        };
        if covered(&self.recorded.borrow()) {
            return Ok(());
        }
        let until = UNIX_EPOCH + Duration::from_secs(unix(not_after + RECORD_AHEAD) + 1);
        let mut result = Ok(());
        self.recorded.send_if_modified(|recorded| {
            if covered(recorded) {
                return false;
            }
            match self.extend(recorded, &fp, until) {
                Ok(next) => {
                    *recorded = next;
                    true
                }
                Err(e) => {
                    result = Err(e);
                    false
                }
            }
        });
        result
    }

    /// Writes `recorded` with `fp` extended to `until`, merged with what is on disk (another
    /// writer, an offline `ca issue`, may have recorded since), keeping the later time of each.
    fn extend(
        &self,
        recorded: &BTreeMap<String, SystemTime>,
        fp: &str,
        until: SystemTime,
    ) -> Result<BTreeMap<String, SystemTime>, StateError> {
        let mut next = read(&self.path)?;
        for (fp, t) in recorded.iter().chain([(&fp.to_owned(), &until)]) {
            let entry = next.entry(fp.clone()).or_insert(*t);
            *entry = (*entry).max(*t);
        }
        let mut text = String::from(
            "# nodemesh CA: per root (SHA-256 of its certificate), a unix time by which every leaf it issued has expired\n",
        );
        for (fp, until) in &next {
            let _ = writeln!(text, "{fp} {}", unix(*until));
        }
        write_atomic(&self.path, text.as_bytes(), 0o644)?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn root() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap()
            .der()
            .clone()
    }

    #[test]
    fn records_ahead_and_writes_only_when_a_leaf_outlives_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER);
        let ledger = Ledger::open(path.clone()).unwrap();
        let (a, b) = (root(), root());
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000);
        ledger.record(&a, t).unwrap();
        let on_disk = read(&path).unwrap();
        let until = on_disk[&fingerprint(&a)];
        assert!(until >= t + RECORD_AHEAD, "{until:?}");
        // A leaf within the record: no write.
        std::fs::remove_file(&path).unwrap();
        ledger.record(&a, t + RECORD_AHEAD / 2).unwrap();
        assert!(!path.exists(), "no write for a leaf the record covers");
        // Beyond it, or another root: written, both roots kept.
        ledger.record(&a, t + 2 * RECORD_AHEAD).unwrap();
        ledger.record(&b, t).unwrap();
        let on_disk = read(&path).unwrap();
        assert!(on_disk[&fingerprint(&a)] >= t + 3 * RECORD_AHEAD);
        assert!(on_disk[&fingerprint(&b)] >= t + RECORD_AHEAD);
        // Reopened (a restart), it remembers.
        let again = Ledger::open(path.clone()).unwrap();
        std::fs::remove_file(&path).unwrap();
        again.record(&b, t).unwrap();
        assert!(!path.exists(), "the reopened ledger knew b's record");
    }

    #[test]
    fn a_malformed_ledger_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER);
        std::fs::write(&path, "# comment\n\nabc 12\n").unwrap();
        let err = Ledger::open(path.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: line 3: the fingerprint is not 64 hex digits",
                path.display()
            )
        );
        std::fs::write(&path, format!("{} soon\n", "a".repeat(64))).unwrap();
        let err = Ledger::open(path.clone()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("line 1: the time is not unix seconds"),
            "{err}"
        );
    }

    #[test]
    fn fingerprints_are_sha256_hex() {
        let fp = fingerprint(&CertificateDer::from(b"abc".to_vec()));
        assert_eq!(
            fp,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
