//! [`WireguardHandle`]: a [`WireguardNode`] run from a config file in the background, kept in
//! step with the file and the key file (checked every second) until shut down. This is what
//! `nodemesh wireguard up` and `nodemesh proxy --wireguard` run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nodemesh_config::{Config, WireguardPublicKey};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::WireguardError;
use crate::node::{NodeOptions, WireguardNode};
use crate::peers::{NodeEntry, nodes_of};

/// How often the config file and the key file are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Where a running node reads the node list from, every [`RELOAD_INTERVAL`].
pub enum NodeList {
    /// A standalone config file: a bad new file is refused, the last good one keeps running.
    File(PathBuf),
    /// Whatever the function returns now (e.g. the Kubernetes source's current state).
    Current(Box<dyn FnMut() -> Result<Vec<NodeEntry>, WireguardError> + Send>),
}

impl std::fmt::Debug for NodeList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Current(_) => f.write_str("Current(..)"),
        }
    }
}

/// A running node, reconfigured in the background as its node list and key change.
pub struct WireguardHandle {
    public_key: WireguardPublicKey,
    peers: usize,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), WireguardError>>,
}

fn load(path: &Path) -> Result<(Vec<NodeEntry>, Vec<u8>), WireguardError> {
    let text = std::fs::read(path).map_err(|source| nodemesh_config::LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let config = Config::from_file(path)?;
    Ok((nodes_of(&config)?, text))
}

impl WireguardHandle {
    /// Brings node `node` of the config file `config` up (see [`WireguardNode::up`]); errors
    /// are those of bringing it up. A changed file is applied incrementally; a bad new file is
    /// logged and refused, the last good one keeps running. A rotated key is picked up.
    pub async fn start(
        config: impl Into<PathBuf>,
        node: &str,
        options: NodeOptions,
    ) -> Result<Self, WireguardError> {
        Self::start_from(NodeList::File(config.into()), node, options).await
    }

    /// Brings node `node` up from `list`, and keeps it in step with the list and its key.
    pub async fn start_from(
        list: NodeList,
        node: &str,
        options: NodeOptions,
    ) -> Result<Self, WireguardError> {
        Self::try_start(list, node, options)
            .await
            .map_err(|(_, e)| e)
    }

    /// [`WireguardHandle::start_from`], giving the list back with the error.
    async fn try_start(
        mut list: NodeList,
        node: &str,
        options: NodeOptions,
    ) -> Result<Self, (NodeList, WireguardError)> {
        let read = match &mut list {
            NodeList::File(path) => load(path),
            NodeList::Current(current) => current().map(|nodes| (nodes, Vec::new())),
        };
        let (nodes, seen) = match read {
            Ok(read) => read,
            Err(e) => return Err((list, e)),
        };
        let running = match WireguardNode::up(&nodes, node, options).await {
            Ok(running) => running,
            Err(e) => return Err((list, e)),
        };
        let public_key = running.public_key();
        let peers = running.desired().peers.len();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keep_in_step(running, list, nodes, seen, stopped));
        Ok(Self {
            public_key,
            peers,
            stop: Some(stop),
            task,
        })
    }

    /// The node's public key when it came up.
    pub fn public_key(&self) -> WireguardPublicKey {
        self.public_key
    }

    /// How many peers it came up with.
    pub fn initial_peers(&self) -> usize {
        self.peers
    }

    /// Whether it stopped by itself (the device failed); [`WireguardHandle::shutdown`] says why.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the device; the routing stays (fail closed). Returns the device's failure, if it
    /// failed before.
    pub async fn shutdown(mut self) -> Result<(), WireguardError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(WireguardError::Device {
                action: "run",
                reason: e.to_string(),
            }),
        }
    }
}

/// How often [`Retrying`] tries again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// A node's WireGuard brought up in the background, tried again every [`RETRY_INTERVAL`] while
/// it fails (each failure logged), then kept in step as [`WireguardHandle`] does. For a process
/// that already serves the node (it took over from another) and must not exit for want of
/// WireGuard: until the device is up, the routing's unreachable routes drop the traffic to
/// remote pods (fail closed).
pub struct Retrying {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Option<WireguardHandle>>,
}

impl Retrying {
    /// Starts trying to bring node `node` up from `list`.
    pub fn start(list: NodeList, node: &str, options: NodeOptions) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let node = node.to_owned();
        let task = tokio::spawn(async move {
            let mut list = list;
            for attempt in 1u32.. {
                match WireguardHandle::try_start(list, &node, options.clone()).await {
                    Ok(handle) => {
                        if attempt > 1 {
                            tracing::info!(attempt, "WireGuard is up after all");
                        }
                        return Some(handle);
                    }
                    Err((back, error)) => {
                        list = back;
                        tracing::error!(attempt, %error, "cannot bring WireGuard up; trying again in {RETRY_INTERVAL:?} (traffic to remote pods outside HBONE is dropped meanwhile)");
                    }
                }
                tokio::select! {
                    _ = &mut stopped => return None,
                    () = tokio::time::sleep(RETRY_INTERVAL) => {}
                }
            }
            None
        });
        Self { stop, task }
    }

    /// Stops trying, or stops the device once up (see [`WireguardHandle::shutdown`]).
    pub async fn shutdown(self) -> Result<(), WireguardError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Some(handle)) => handle.shutdown().await,
            Ok(None) => Ok(()),
            Err(e) => Err(WireguardError::Device {
                action: "come up",
                reason: e.to_string(),
            }),
        }
    }
}

async fn keep_in_step(
    mut node: WireguardNode,
    mut list: NodeList,
    mut applied: Vec<NodeEntry>,
    mut seen: Vec<u8>,
    mut stopped: oneshot::Receiver<()>,
) -> Result<(), WireguardError> {
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    let result = loop {
        tokio::select! {
            _ = &mut stopped => break Ok(()),
            () = node.failed() => break Err(WireguardError::Device {
                action: "keep running (its interface or socket is gone)",
                reason: "fatal device error".into(),
            }),
            _ = tick.tick() => {
                if let Some(nodes) = changed_nodes(&mut list, &mut seen)
                    && nodes != applied
                {
                    match node.reconfigure(&nodes).await {
                        Ok(_) => applied = nodes,
                        Err(e) => tracing::error!("cannot apply the new node list: {e}"),
                    }
                }
                if let Err(e) = node.reload_key().await {
                    tracing::error!("cannot reload the key: {e}");
                }
            }
        }
    };
    node.shutdown().await;
    tracing::info!("WireGuard device stopped; routing left in place (fail closed)");
    result
}

/// The node list if it may have changed since the last look (a file only when its bytes did);
/// errors are logged and the last good list keeps running.
fn changed_nodes(list: &mut NodeList, seen: &mut Vec<u8>) -> Option<Vec<NodeEntry>> {
    match list {
        NodeList::File(config) => match std::fs::read(&*config) {
            Ok(text) if text != *seen => {
                *seen = text;
                load(config)
                    .map(|(nodes, _)| nodes)
                    .map_err(|e| tracing::error!("refusing the new config: {e}"))
                    .ok()
            }
            Ok(_) => None,
            Err(e) => {
                tracing::error!("cannot read {}: {e}", config.display());
                None
            }
        },
        NodeList::Current(current) => current()
            .map_err(|e| tracing::error!("cannot read the node list: {e}"))
            .ok(),
    }
}
