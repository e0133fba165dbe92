//! The node's X25519 key in its state directory: created once, kept across restarts, rotated on
//! demand; only ever readable by its owner.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use gotatun::x25519;
use nodemesh_config::WireguardPublicKey;

use crate::error::WireguardError;

/// The key file's name in the state directory: the base64 private key, as `wg genkey` writes it.
pub const KEY_FILE: &str = "wireguard.key";

/// A WireGuard private key. Its `Debug` form never shows the key.
#[derive(Clone)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The matching public key.
    pub fn public_key(&self) -> WireguardPublicKey {
        let public = x25519::PublicKey::from(&self.secret());
        WireguardPublicKey::from_bytes(public.to_bytes())
    }

    /// The key as the WireGuard implementation takes it.
    pub(crate) fn secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }

    fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        let len = bytes.len();
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("decodes to {len} bytes, expected 32"))?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

/// The node's key file in a state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    /// The key store of state directory `dir` (created when a key is first written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The key file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// Reads the key; an error if it is missing, malformed or readable by others.
    pub fn load(&self) -> Result<PrivateKey, WireguardError> {
        let path = self.path();
        let meta = fs::metadata(&path).map_err(|source| WireguardError::KeyIo {
            action: "read the private key",
            path: path.clone(),
            error: source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(WireguardError::KeyPermissions { path, mode });
        }
        let text = fs::read_to_string(&path).map_err(|source| WireguardError::KeyIo {
            action: "read the private key",
            path: path.clone(),
            error: source,
        })?;
        PrivateKey::from_base64(&text)
            .map_err(|reason| WireguardError::KeyMalformed { path, reason })
    }

    /// Reads the key, creating a new one first when there is none. Returns whether it was
    /// created.
    pub fn load_or_create(&self) -> Result<(PrivateKey, bool), WireguardError> {
        match fs::symlink_metadata(self.path()) {
            Ok(_) => Ok((self.load()?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = PrivateKey::generate();
                self.store(&key)?;
                Ok((key, true))
            }
            Err(source) => Err(WireguardError::KeyIo {
                action: "read the private key",
                path: self.path(),
                error: source,
            }),
        }
    }

    /// Replaces the key with a new random one and returns it.
    pub fn rotate(&self) -> Result<PrivateKey, WireguardError> {
        let key = PrivateKey::generate();
        self.store(&key)?;
        Ok(key)
    }

    /// Writes `key` atomically (a mode-0600 temporary file renamed over the key file).
    fn store(&self, key: &PrivateKey) -> Result<(), WireguardError> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| WireguardError::KeyIo {
                action,
                path,
                error: source,
            }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io("create the state directory", &self.dir))?;
        let tmp = self
            .dir
            .join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("write the private key", &tmp))?;
        writeln!(file, "{}", key.to_base64())
            .and_then(|()| file.sync_all())
            .map_err(io("write the private key", &tmp))?;
        fs::rename(&tmp, self.path()).map_err(io("write the private key", &self.path()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("state"));
        let (first, created) = store.load_or_create().unwrap();
        assert!(created);
        let (again, created) = store.load_or_create().unwrap();
        assert!(!created);
        assert_eq!(first.public_key(), again.public_key());
        let mode = fs::metadata(store.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(dir.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn rotation_changes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let (old, _) = store.load_or_create().unwrap();
        let new = store.rotate().unwrap();
        assert_ne!(old.public_key(), new.public_key());
        assert_eq!(store.load().unwrap().public_key(), new.public_key());
    }

    #[test]
    fn a_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        store.load_or_create().unwrap();
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o644)).unwrap();
        let err = store.load().unwrap_err();
        assert!(
            matches!(err, WireguardError::KeyPermissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("must not be readable"), "{err}");
        assert!(store.load_or_create().is_err());
    }

    #[test]
    fn a_malformed_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path());
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(store.path())
            .unwrap();
        f.write_all(b"c2hvcnQ=\n").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("decodes to 5 bytes"), "{err}");
    }

    #[test]
    fn matches_a_known_vector() {
        // RFC 7748 section 6.1: Alice's private and public key.
        let private: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let key = PrivateKey(private);
        assert_eq!(key.public_key().as_bytes()[..4], [0x85, 0x20, 0xf0, 0x09]);
        assert!(!format!("{key:?}").contains(&key.to_base64()));
    }
}
