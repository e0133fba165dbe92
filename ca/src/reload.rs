//! Picks up changed files (a rotated root, new tokens, moved workloads) without a restart. A bad
//! new file is logged and the last good state keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nodemesh_identity::Clock;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::server::{SERVING_CERT_LIFETIME, ServeOptions, load_snapshot, serving_key};
use crate::service::CaSnapshot;

/// A cheap fingerprint of a set of files: modification time and length of each.
#[derive(Debug)]
pub struct FileWatch {
    files: Vec<PathBuf>,
    last: Vec<Option<(SystemTime, u64)>>,
}

impl FileWatch {
    /// Watches `files`, taking their current state as the baseline.
    pub fn new(files: Vec<PathBuf>) -> Self {
        let last = files.iter().map(|f| stamp(f.as_path())).collect();
        Self { files, last }
    }

    /// Whether any file changed since the last call (or creation).
    pub fn changed(&mut self) -> bool {
        let now: Vec<_> = self.files.iter().map(|f| stamp(f.as_path())).collect();
        let changed = now != self.last;
        self.last = now;
        changed
    }
}

fn stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Polls the watched files and republishes the snapshot and serving certificate.
pub(crate) struct Reloader {
    pub(crate) opts: ServeOptions,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) snapshot: watch::Sender<Arc<CaSnapshot>>,
    pub(crate) serving: watch::Sender<Arc<CertifiedKey>>,
    pub(crate) files: FileWatch,
}

impl Reloader {
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut serving_issued = self.clock.now();
        let mut tick = tokio::time::interval(self.opts.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = crate::server::stopped(&mut stop) => return,
            }
            // Re-issue the serving certificate at half-life even when nothing changed.
            let serving_due = self
                .clock
                .now()
                .duration_since(serving_issued)
                .unwrap_or(Duration::ZERO)
                >= SERVING_CERT_LIFETIME / 2;
            if !self.files.changed() && !serving_due {
                continue;
            }
            match load_snapshot(&self.opts) {
                Ok((snapshot, _)) => {
                    let root_changed =
                        snapshot.authority.root() != self.snapshot.borrow().authority.root();
                    if root_changed || serving_due {
                        match serving_key(
                            &snapshot.authority,
                            &self.opts.serving_names,
                            self.clock.now(),
                        ) {
                            Ok(key) => {
                                self.serving.send_replace(key);
                                serving_issued = self.clock.now();
                            }
                            Err(error) => {
                                tracing::error!(%error, "cannot re-issue the serving certificate")
                            }
                        }
                    }
                    tracing::info!(
                        roots = snapshot.authority.bundle().roots().len(),
                        root_changed,
                        "CA state reloaded"
                    );
                    self.snapshot.send_replace(Arc::new(snapshot));
                }
                Err(error) => {
                    tracing::error!(%error, "reload refused; the last good state keeps serving");
                }
            }
        }
    }
}
