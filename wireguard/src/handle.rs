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
        mut list: NodeList,
        node: &str,
        options: NodeOptions,
    ) -> Result<Self, WireguardError> {
        let (nodes, seen) = match &mut list {
            NodeList::File(path) => load(path)?,
            NodeList::Current(current) => (current()?, Vec::new()),
        };
        let running = WireguardNode::up(&nodes, node, options).await?;
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
