//! Node-to-node fallback encryption of nodemesh: everything between pods on different nodes
//! that HBONE does not carry (UDP, ICMP, TCP of pods outside the mesh) goes through WireGuard.
//!
//! - [`keys`]: the node's X25519 key in its state directory (mode 0600, refused otherwise);
//! - [`peers`]: pure: the desired peers from the node list and the [`diff`] to apply;
//! - [`device`]: the userspace device (gotatun on a tun-rs TUN, MTU 1420), behind a trait;
//! - [`routing`]: `ip rule`/table 134 per DESIGN.md, failing closed; [`chains`]: our mangle
//!   chains (the proxy's HBONE exemption, anti-spoofing, MSS clamp);
//! - [`control`] and [`status`]: a unix socket speaking WireGuard's configuration protocol;
//! - [`WireguardNode`]: all of it brought up in one call; [`WireguardHandle`]: that, kept in step
//!   with the config file and key in the background (`nodemesh wireguard up`, `proxy --wireguard`).

pub mod chains;
pub mod command;
pub mod control;
pub mod device;
mod error;
mod handle;
pub mod keys;
mod node;
pub mod peers;
pub mod routing;
pub mod status;
mod tun;
mod udp;

pub use error::WireguardError;
pub use handle::{NodeList, RELOAD_INTERVAL, RETRY_INTERVAL, Retrying, WireguardHandle};
pub use keys::{KeyStore, PrivateKey};
pub use node::{DEFAULT_INTERFACE, NodeOptions, WireguardNode};
pub use peers::{
    DEFAULT_PORT, Desired, NodeEntry, PeerChange, PodNetwork, diff, nodes_of, published_nodes,
};
pub use status::{DeviceStatus, PeerStatus};
pub use tun::MTU;
