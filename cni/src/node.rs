//! [`StateDir`]: the plugin's and the proxy's files in the proxy's state directory, written
//! atomically (a temporary file renamed into place), and the lock that orders their changes of
//! the capture set ([`NodeLock`]).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::cache::{NodeCache, PodRecord};
use crate::error::CniError;

/// `<state-dir>/cni`: `namespaces.json` (the proxy's [`NodeCache`]), `pods/<id>.json` (the
/// plugin's [`PodRecord`]s) and `lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    dir: PathBuf,
}

/// Held while the capture set and the records change together: the plugin holds it from its
/// record to its set change, the proxy from reading the records to replacing the set, so
/// neither undoes the other. Released on drop.
#[derive(Debug)]
pub struct NodeLock {
    _file: File,
}

impl StateDir {
    /// The `cni` directory of the proxy's state directory `state_dir`.
    pub fn new(state_dir: impl AsRef<Path>) -> Self {
        Self {
            dir: state_dir.as_ref().join("cni"),
        }
    }

    /// `<state-dir>/cni/namespaces.json`.
    pub fn cache_path(&self) -> PathBuf {
        self.dir.join("namespaces.json")
    }

    /// `<state-dir>/cni/pods`.
    pub fn pods_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }

    /// Where the record of `container_id` is kept.
    pub fn record_path(&self, container_id: &str) -> PathBuf {
        self.pods_dir().join(format!("{container_id}.json"))
    }

    /// Takes the lock (creating the directory), waiting for the other side to release it.
    pub fn lock(&self) -> Result<NodeLock, CniError> {
        let path = self.dir.join("lock");
        let io = |source| CniError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        Ok(NodeLock { _file: file })
    }

    /// The proxy's cache; missing or unreadable is [`CniError::NoCache`].
    pub fn read_cache(&self) -> Result<NodeCache, CniError> {
        let path = self.cache_path();
        let no_cache = |reason: String| CniError::NoCache {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read(&path).map_err(|e| no_cache(e.to_string()))?;
        serde_json::from_slice(&text).map_err(|e| no_cache(e.to_string()))
    }

    /// Writes the cache when it differs from the one on disk; says whether it wrote.
    pub fn write_cache(&self, cache: &NodeCache) -> Result<bool, CniError> {
        let path = self.cache_path();
        let text = to_json(cache);
        if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            return Ok(false);
        }
        write_atomic(&path, text.as_bytes())?;
        Ok(true)
    }

    /// Every record, in container ID order; a missing directory is none. A record that does not
    /// parse is an error naming its file.
    pub fn records(&self) -> Result<Vec<PodRecord>, CniError> {
        let dir = self.pods_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(CniError::Io { path: dir, source }),
        };
        let mut records = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|source| CniError::Io {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read(&path).map_err(|source| CniError::Io {
                path: path.clone(),
                source,
            })?;
            let record: PodRecord =
                serde_json::from_slice(&text).map_err(|e| CniError::BadFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            records.push(record);
        }
        records.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        Ok(records)
    }

    /// Writes the record of a captured pod.
    pub fn write_record(&self, record: &PodRecord) -> Result<(), CniError> {
        let path = self.record_path(&record.container_id);
        write_atomic(&path, to_json(record).as_bytes())
    }

    /// Deletes the record of `container_id`; absent is fine.
    pub fn remove_record(&self, container_id: &str) -> Result<(), CniError> {
        let path = self.record_path(container_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CniError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serializing these plain structs cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// Writes `path` whole or not at all: a temporary file beside it, synced, renamed over it.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CniError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CniError::Io { path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::Ipv4Addr;

    use nodemesh_redirect::Backend;

    use super::*;

    fn record(id: &str, last: u8) -> PodRecord {
        PodRecord {
            container_id: id.into(),
            ip: Ipv4Addr::new(10, 1, 0, last),
            ipv6: None,
            namespace: "shop".into(),
            pod: Some("web".into()),
        }
    }

    #[test]
    fn records_are_written_listed_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        assert!(
            dir.records().unwrap().is_empty(),
            "no directory is no records"
        );
        dir.write_record(&record("b", 2)).unwrap();
        dir.write_record(&record("a", 1)).unwrap();
        std::fs::write(dir.pods_dir().join(".a.json.tmp"), "partial").unwrap();
        assert_eq!(dir.records().unwrap(), [record("a", 1), record("b", 2)]);
        dir.remove_record("a").unwrap();
        dir.remove_record("a").unwrap();
        assert_eq!(dir.records().unwrap(), [record("b", 2)]);
        std::fs::write(dir.record_path("bad"), "{").unwrap();
        let err = dir.records().unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");
    }

    #[test]
    fn the_cache_is_written_only_when_it_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        let err = dir.read_cache().unwrap_err();
        assert!(matches!(err, CniError::NoCache { .. }), "{err}");
        let cache = NodeCache {
            version: 1,
            node: "n".into(),
            backend: Backend::Iptables,
            namespaces: Default::default(),
        };
        assert!(dir.write_cache(&cache).unwrap());
        assert!(!dir.write_cache(&cache).unwrap());
        assert_eq!(dir.read_cache().unwrap(), cache);
        let _held = dir.lock().unwrap();
    }
}
