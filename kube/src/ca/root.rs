//! The CA root on Kubernetes: kept in the Secret `nodemesh-ca-root` (created if absent), copied
//! into the CA's private state directory where the file-based machinery serves from it, and the
//! trust bundle published in the ConfigMap `nodemesh-trust-bundle` for the proxies (which mount
//! it). The key never leaves the Secret and the state directory, and is never logged.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use nodemesh_ca::RootSource;
use nodemesh_ca::state::{ROOT_CERT, ROOT_KEY, TRUST_BUNDLE};
use nodemesh_identity::TrustDomain;

/// The Secret holding the root certificate, key and bundle.
pub const ROOT_SECRET: &str = "nodemesh-ca-root";
/// The ConfigMap publishing the trust bundle.
pub const BUNDLE_CONFIGMAP: &str = "nodemesh-trust-bundle";

/// Why the root cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// The API refused or failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The Secret lacks a key.
    #[error("Secret {secret} has no {key:?}")]
    Incomplete {
        /// The Secret.
        secret: String,
        /// The missing key.
        key: &'static str,
    },
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] nodemesh_ca::StateError),
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the root lives in the cluster.
#[derive(Debug, Clone)]
pub struct RootStore {
    /// The CA's namespace.
    pub namespace: String,
    /// The CA's private state directory (an in-memory emptyDir in the chart).
    pub state_dir: PathBuf,
}

/// Whether the root was found or created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootOrigin {
    /// Read from the existing Secret.
    Secret,
    /// Created now and stored in a new Secret.
    Created,
}

impl RootStore {
    /// Makes the state directory hold the Secret's root (creating root and Secret if there is
    /// none), then publishes the bundle ConfigMap. Two CA replicas racing to create the Secret
    /// both end up with the one that was stored first.
    pub async fn ensure(
        &self,
        client: kube::Client,
        trust_domain: &TrustDomain,
        now: SystemTime,
    ) -> Result<(RootSource, RootOrigin), RootError> {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let source = RootSource::state_dir(&self.state_dir);
        let what = |w: &str| format!("{w} Secret {}/{ROOT_SECRET}", self.namespace);
        let existing = secrets
            .get_opt(ROOT_SECRET)
            .await
            .map_err(|source| RootError::Api {
                what: what("reading"),
                source,
            })?;
        let origin =
            match existing {
                Some(secret) => {
                    self.write_files(&secret)?;
                    RootOrigin::Secret
                }
                None => {
                    source.init(trust_domain, now)?;
                    let secret = self.secret_from_files()?;
                    match secrets.create(&PostParams::default(), &secret).await {
                        Ok(_) => RootOrigin::Created,
                        Err(kube::Error::Api(status)) if status.code == 409 => {
                            // Another replica stored its root first: use that one.
                            let theirs = secrets.get(ROOT_SECRET).await.map_err(|source| {
                                RootError::Api {
                                    what: what("reading"),
                                    source,
                                }
                            })?;
                            self.write_files(&theirs)?;
                            RootOrigin::Secret
                        }
                        Err(source) => {
                            return Err(RootError::Api {
                                what: what("creating"),
                                source,
                            });
                        }
                    }
                }
            };
        source.init(trust_domain, now)?;
        self.publish_bundle(client).await?;
        Ok((source, origin))
    }

    /// Writes the bundle into the ConfigMap (server-side apply: created or updated).
    pub async fn publish_bundle(&self, client: kube::Client) -> Result<(), RootError> {
        let path = self.state_dir.join(TRUST_BUNDLE);
        let bundle = std::fs::read_to_string(&path).map_err(|source| RootError::Io {
            path: path.clone(),
            source,
        })?;
        let maps: Api<ConfigMap> = Api::namespaced(client, &self.namespace);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(BUNDLE_CONFIGMAP.to_owned()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(TRUST_BUNDLE.to_owned(), bundle)])),
            ..ConfigMap::default()
        };
        let mut value = serde_json::to_value(&cm).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".into(), "v1".into());
            map.insert("kind".into(), "ConfigMap".into());
        }
        maps.patch(
            BUNDLE_CONFIGMAP,
            &PatchParams::apply("nodemesh-ca").force(),
            &Patch::Apply(&value),
        )
        .await
        .map_err(|source| RootError::Api {
            what: format!("publishing ConfigMap {}/{BUNDLE_CONFIGMAP}", self.namespace),
            source,
        })?;
        tracing::info!(namespace = %self.namespace, configmap = BUNDLE_CONFIGMAP, "trust bundle published");
        Ok(())
    }

    fn secret_from_files(&self) -> Result<Secret, RootError> {
        let mut data = BTreeMap::new();
        for file in [ROOT_CERT, ROOT_KEY, TRUST_BUNDLE] {
            let path = self.state_dir.join(file);
            let bytes = std::fs::read(&path).map_err(|source| RootError::Io { path, source })?;
            data.insert(file.to_owned(), ByteString(bytes));
        }
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(ROOT_SECRET.to_owned()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_owned()),
            data: Some(data),
            ..Secret::default()
        })
    }

    fn write_files(&self, secret: &Secret) -> Result<(), RootError> {
        let data = secret.data.clone().unwrap_or_default();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.state_dir)
            .map_err(|source| RootError::Io {
                path: self.state_dir.clone(),
                source,
            })?;
        for (file, mode) in [(TRUST_BUNDLE, 0o644), (ROOT_KEY, 0o600), (ROOT_CERT, 0o644)] {
            let bytes = data.get(file).ok_or(RootError::Incomplete {
                secret: ROOT_SECRET.to_owned(),
                key: file,
            })?;
            write_file(&self.state_dir.join(file), &bytes.0, mode)?;
        }
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RootError> {
    let io = |source| RootError::Io {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)
}
