//! The WireGuard device behind a small trait: the userspace one (gotatun on a tun-rs TUN) is the
//! one we run. A kernel device configured through netlink would implement the same trait where
//! the `wireguard` module exists; our hosts have none, so it is not written yet.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use gotatun::device::uapi::UapiServer;
use gotatun::device::{Device, DeviceBuilder, Peer};
use gotatun::x25519;
use ipnetwork::{IpNetwork, Ipv4Network};

use crate::error::WireguardError;
use crate::keys::PrivateKey;
use crate::peers::{PeerChange, PeerSet, PeerSpec};
use crate::tun::{MTU, Tun, TunWriter};
use crate::udp::FastUdp;

/// A running WireGuard device whose peers can be changed one by one.
pub trait WireguardDevice: Send + Sync {
    /// The interface's name.
    fn name(&self) -> &str;
    /// Applies peer changes; peers not named keep their sessions. (A device started without
    /// peers has no UDP socket yet: restart it with its first peers instead.)
    fn apply(
        &self,
        changes: &[PeerChange],
    ) -> impl Future<Output = Result<(), WireguardError>> + Send;
    /// Replaces the private key (sessions re-handshake with the new key). gotatun reports its
    /// socket rebind as a fatal error, so [`crate::WireguardNode`] restarts the device instead.
    fn set_private_key(
        &self,
        key: &PrivateKey,
    ) -> impl Future<Output = Result<(), WireguardError>> + Send;
}

type Transports = (FastUdp, TunWriter, Tun);

/// The userspace device: gotatun's data path (batched UDP, per-peer sessions, timers) reading
/// and writing IP packets on a TUN interface.
pub struct UserspaceDevice {
    name: String,
    port: u16,
    device: Device<Transports>,
}

/// Persistent keepalive, in seconds. Besides keeping NAT bindings, it makes a freshly started
/// device handshake with every peer at once, so a peer still holding the session of a replaced
/// proxy switches to the new one within a round trip instead of after its rekey timeout.
pub const KEEPALIVE_SECS: u16 = 25;

fn gotatun_peer(spec: &PeerSpec) -> Peer {
    let net = Ipv4Network::new(spec.pod_cidr.network(), spec.pod_cidr.prefix_len())
        .map(IpNetwork::V4)
        .unwrap_or_else(|_| IpNetwork::V4(Ipv4Network::from(spec.pod_cidr.network())));
    let mut peer = Peer::new(x25519::PublicKey::from(*spec.public_key.as_bytes()))
        .with_endpoint(SocketAddr::V4(spec.endpoint))
        .with_allowed_ip(net);
    peer.keepalive = Some(KEEPALIVE_SECS);
    peer
}

fn device_error(action: &'static str) -> impl FnOnce(gotatun::device::Error) -> WireguardError {
    move |e| WireguardError::Device {
        action,
        reason: e.to_string(),
    }
}

impl UserspaceDevice {
    /// Creates TUN interface `name` (MTU [`MTU`]), binds UDP `port` and starts the device with
    /// `peers`. Checks the port before creating the interface, so a port in use leaves nothing.
    pub async fn start(
        name: &str,
        port: u16,
        key: &PrivateKey,
        peers: &PeerSet,
        uapi: Option<UapiServer>,
    ) -> Result<Self, WireguardError> {
        // gotatun binds only once it has a peer: find a taken port now, before any change.
        drop(
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|source| {
                WireguardError::UdpPort {
                    port,
                    error: source,
                }
            })?,
        );
        let tun = Tun::create(name, MTU)?;
        let mut builder = DeviceBuilder::new()
            .with_udp(FastUdp::new())
            .with_ip_pair(tun.writer(), tun)
            .with_private_key(key.secret())
            .with_listen_port(port)
            .with_peers(peers.values().map(gotatun_peer));
        if let Some(uapi) = uapi {
            builder = builder.with_uapi(uapi);
        }
        let device = builder.build().await.map_err(|e| match e {
            gotatun::device::Error::Bind(source, _) => WireguardError::UdpPort {
                port,
                error: source,
            },
            other => device_error("start")(other),
        })?;
        Ok(Self {
            name: name.to_owned(),
            port,
            device,
        })
    }

    /// Stops the device and waits (up to [`RELEASE_PATIENCE`]) until its TUN interface is gone
    /// and its UDP port is free, so that a device started next, here or in the process taking
    /// over, finds both: gotatun's stop returns while its cancelled tasks still hold them.
    pub async fn stop(self) {
        let Self { name, port, device } = self;
        device.stop().await;
        if !await_released(&name, port, RELEASE_PATIENCE).await {
            tracing::warn!(interface = %name, port, "the stopped WireGuard device still holds its interface or port");
        }
    }

    /// Waits until the device fails for good (e.g. its interface was deleted).
    pub async fn failed(&mut self) {
        self.device.wait().await;
    }
}

/// How long a stopped device's interface and port may take to be let go of.
pub const RELEASE_PATIENCE: Duration = Duration::from_secs(5);

/// Waits up to `patience` until no interface is named `name` and UDP `port` can be bound, as a
/// device that stopped (in this process or in the one handing over) leaves them. Whether both
/// are free.
pub async fn await_released(name: &str, port: u16, patience: Duration) -> bool {
    let start = Instant::now();
    loop {
        let free = nix::net::if_::if_nametoindex(name).is_err()
            && UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok();
        if free || start.elapsed() >= patience {
            return free;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl WireguardDevice for UserspaceDevice {
    fn name(&self) -> &str {
        &self.name
    }

    async fn apply(&self, changes: &[PeerChange]) -> Result<(), WireguardError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.device
            .write(async |d| {
                for change in changes {
                    match change {
                        PeerChange::Add(spec) => {
                            d.add_peer(gotatun_peer(spec));
                        }
                        PeerChange::Remove(spec) => {
                            let key = x25519::PublicKey::from(*spec.public_key.as_bytes());
                            d.remove_peer(&key).await;
                        }
                        PeerChange::Update { to, .. } => {
                            let key = x25519::PublicKey::from(*to.public_key.as_bytes());
                            let peer = gotatun_peer(to);
                            d.modify_peer(&key, |p| {
                                p.set_endpoint(peer.endpoint);
                                p.clear_allowed_ips();
                                p.add_allowed_ips(peer.allowed_ips.clone());
                            })
                            .await;
                        }
                    }
                }
            })
            .await
            .map_err(device_error("change its peers"))?;
        Ok(())
    }

    async fn set_private_key(&self, key: &PrivateKey) -> Result<(), WireguardError> {
        self.device
            .set_private_key(key.secret())
            .await
            .map_err(device_error("change its key"))
    }
}
