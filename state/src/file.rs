//! The standalone YAML as a state source.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nodemesh_config::Config;

use crate::{MeshState, MeshStore, StateError};

/// Keeps a [`MeshStore`] fed from the standalone YAML: re-reads it when it changes; a bad new
/// file is refused with its errors and the last good state keeps serving.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    node: String,
    stamp: Option<(std::time::SystemTime, u64)>,
}

impl FileSource {
    /// A source for `path` as seen by `node`.
    pub fn new(path: impl Into<PathBuf>, node: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            node: node.into(),
            stamp: None,
        }
    }

    /// Loads the file now.
    pub fn load(&mut self) -> Result<MeshState, StateError> {
        self.stamp = file_stamp(&self.path);
        let config = Config::from_file(&self.path)?;
        MeshState::new(config, &self.node)
    }

    /// Polls the file every `interval` and publishes good new versions until `stop` is dropped.
    pub async fn watch(mut self, store: Arc<MeshStore>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if file_stamp(&self.path) == self.stamp {
                continue;
            }
            match self.load() {
                Ok(state) => {
                    tracing::info!(file = %self.path.display(), "config reloaded");
                    store.publish(state);
                }
                Err(error) => {
                    tracing::error!(file = %self.path.display(), %error, "config reload refused; the last good config keeps serving");
                }
            }
        }
    }
}

fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
