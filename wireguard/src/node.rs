//! [`WireguardNode`]: a node's whole WireGuard layer (key, device, control socket, routing)
//! brought up in one call, reconfigured incrementally, shut down leaving the routing in place.

use std::path::PathBuf;

use nodemesh_config::WireguardPublicKey;

use crate::control::{ControlSocket, SOCKET_FILE};
use crate::device::{UserspaceDevice, WireguardDevice as _};
use crate::error::WireguardError;
use crate::keys::{KeyStore, PrivateKey};
use crate::peers::{DEFAULT_PORT, Desired, NodeEntry, PeerChange, diff};
use crate::routing::{self, Routing};

/// The WireGuard interface's default name.
pub const DEFAULT_INTERFACE: &str = "nodemesh-wg0";

/// Where and how a node runs WireGuard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOptions {
    /// The state directory: the key and the control socket.
    pub state_dir: PathBuf,
    /// The TUN interface's name.
    pub interface: String,
    /// The UDP port, the same on every node.
    pub port: u16,
}

impl NodeOptions {
    /// The defaults ([`DEFAULT_INTERFACE`], [`DEFAULT_PORT`]) with state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            interface: DEFAULT_INTERFACE.into(),
            port: DEFAULT_PORT,
        }
    }

    /// The control socket's path.
    pub fn control_socket(&self) -> PathBuf {
        self.state_dir.join(SOCKET_FILE)
    }
}

/// A node's running WireGuard layer.
pub struct WireguardNode {
    options: NodeOptions,
    key: PrivateKey,
    desired: Desired,
    /// None only after a restart failed: [`WireguardNode::failed`] then returns at once.
    running: Option<Running>,
}

/// The device and the control socket it serves.
struct Running {
    device: UserspaceDevice,
    control: ControlSocket,
}

impl Running {
    async fn start(
        options: &NodeOptions,
        key: &PrivateKey,
        desired: &Desired,
    ) -> Result<Self, WireguardError> {
        let (control, uapi) = ControlSocket::bind(&options.control_socket())?;
        match UserspaceDevice::start(
            &options.interface,
            options.port,
            key,
            &desired.peers,
            Some(uapi),
        )
        .await
        {
            Ok(device) => Ok(Self { device, control }),
            Err(e) => {
                control.close();
                Err(e)
            }
        }
    }

    async fn stop(self) {
        self.control.close();
        self.device.stop().await;
    }
}

impl WireguardNode {
    /// Brings up node `local` of `nodes`: the key (created if absent), the device with a peer
    /// per other node, the control socket, then the routing.
    ///
    /// Bad input (the node list, the key, the tools, the TUN device, the port) is found before
    /// routing is touched, and a failure leaves no interface, socket, rule or route of this run.
    pub async fn up(
        nodes: &[NodeEntry],
        local: &str,
        options: NodeOptions,
    ) -> Result<Self, WireguardError> {
        let desired = Desired::plan(nodes, local, options.port)?;
        let (key, created) = KeyStore::new(&options.state_dir).load_or_create()?;
        if created {
            tracing::info!(public_key = %key.public_key(), "created the node's WireGuard key");
        }
        warn_on_stale_key(&desired, &key);
        warn_on_unassigned(&desired);
        routing::preflight()?;
        let running = Running::start(&options, &key, &desired).await?;
        let node = Self {
            options,
            key,
            desired,
            running: Some(running),
        };
        let had_routing = routing::installed().map(|i| !i.is_empty()).unwrap_or(true);
        if let Err(e) = routing::apply(&node.routing()) {
            // Leave nothing half-done: routing that was not there before goes again.
            if !had_routing {
                let _ = routing::remove(&node.options.interface);
            }
            node.shutdown().await;
            return Err(e);
        }
        tracing::info!(
            interface = %node.options.interface,
            port = node.options.port,
            peers = node.desired.peers.len(),
            public_key = %node.key.public_key(),
            "WireGuard is up"
        );
        Ok(node)
    }

    fn routing(&self) -> Routing {
        Routing {
            dev: self.options.interface.clone(),
            local: self.desired.local_cidr,
            cidrs: self.desired.remote_cidrs().into_iter().collect(),
            unassigned: self.desired.unassigned_pods(),
            source: self.desired.local_cidr.hosts().next(),
        }
    }

    /// Moves to a new node list: only the peers that changed are touched, then the routing.
    /// Returns the peer changes made.
    pub async fn reconfigure(
        &mut self,
        nodes: &[NodeEntry],
    ) -> Result<Vec<PeerChange>, WireguardError> {
        let desired = Desired::plan(nodes, &self.desired.local.name, self.options.port)?;
        let changes = diff(&self.desired.peers, &desired.peers);
        warn_on_stale_key(&desired, &self.key);
        if desired.unassigned != self.desired.unassigned {
            warn_on_unassigned(&desired);
        }
        let first_peers = self.desired.peers.is_empty() && !desired.peers.is_empty();
        self.desired = desired;
        match &self.running {
            Some(running) if !first_peers => running.device.apply(&changes).await?,
            _ => self.restart().await?,
        }
        routing::apply(&self.routing())?;
        for change in &changes {
            tracing::info!("{change}");
        }
        Ok(changes)
    }

    /// Re-reads the key file; when the key was rotated, the device switches to it. Returns
    /// whether it changed.
    pub async fn reload_key(&mut self) -> Result<bool, WireguardError> {
        let key = KeyStore::new(&self.options.state_dir).load()?;
        if key.public_key() == self.key.public_key() {
            return Ok(false);
        }
        self.key = key;
        self.restart().await?;
        routing::apply(&self.routing())?;
        tracing::info!(public_key = %self.key.public_key(), "switched to the rotated WireGuard key");
        Ok(true)
    }

    /// Stops the device and starts a new one with the current key and peers (the interface is
    /// gone for a moment: its routes too, and the unreachable routes drop traffic meanwhile).
    async fn restart(&mut self) -> Result<(), WireguardError> {
        if let Some(running) = self.running.take() {
            // Returns once the interface and the port are free again.
            running.stop().await;
        }
        self.running = Some(Running::start(&self.options, &self.key, &self.desired).await?);
        Ok(())
    }

    /// The node's public key.
    pub fn public_key(&self) -> WireguardPublicKey {
        self.key.public_key()
    }

    /// The configuration being run.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The options it runs with.
    pub fn options(&self) -> &NodeOptions {
        &self.options
    }

    /// Waits until the device fails for good (its interface deleted, its socket broken).
    pub async fn failed(&mut self) {
        if let Some(running) = &mut self.running {
            running.device.failed().await;
        }
    }

    /// Stops the device and the control socket. The routing stays, so traffic to remote pods is
    /// dropped until the node is up again (only [`routing::remove`] deletes it).
    pub async fn shutdown(self) {
        if let Some(running) = self.running {
            running.stop().await;
        }
    }
}

fn warn_on_stale_key(desired: &Desired, key: &PrivateKey) {
    if desired.local.public_key != key.public_key() {
        tracing::warn!(
            node = %desired.local.name,
            configured = %desired.local.public_key,
            actual = %key.public_key(),
            "the config lists another WireGuard key for this node: peers will refuse us until it is updated"
        );
    }
}

fn warn_on_unassigned(desired: &Desired) {
    for (node, pods) in &desired.unassigned {
        tracing::warn!(
            node = %node,
            known_pods = pods.len(),
            "the node has no podCIDR: WireGuard cannot reach its pods, so the known ones are dropped (never sent in plaintext) until it has one"
        );
    }
}
