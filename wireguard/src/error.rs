//! [`WireguardError`]: what failed while reading keys, planning peers, running the device or
//! installing the routing, and why.

use std::path::PathBuf;
use std::process::ExitStatus;

/// An error of the WireGuard layer: bad input refused up front, or a system call or tool that
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireguardError {
    /// The key file or state directory could not be read or written.
    #[error("cannot {action} {}: {error}", path.display())]
    KeyIo {
        /// What was being done (`read the private key`, `create the state directory`).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The private key file may be read by others than its owner.
    #[error(
        "private key {} has mode {mode:03o}: it must not be readable by group or others (chmod 600 it, or rotate the key)",
        path.display()
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The private key file does not hold a base64 X25519 key.
    #[error("private key {} is malformed: {reason}", path.display())]
    KeyMalformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The node list cannot be turned into peers (overlapping pod CIDRs, bad keys, no such node).
    #[error("{path}: {reason}")]
    Config {
        /// Where in the config (`nodes[2].podCIDR`), or `--node`.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The config file could not be loaded.
    #[error(transparent)]
    Load(#[from] nodemesh_config::LoadError),
    /// The config lacks what WireGuard needs (every node's podCIDR and key).
    #[error("the config lacks what WireGuard needs:\n{0}")]
    NotReady(nodemesh_config::ConfigErrors),
    /// `/dev/net/tun` is missing or the TUN device cannot be created.
    #[error(
        "cannot create the TUN device {name:?} (is /dev/net/tun present, and are we root?): {error}"
    )]
    Tun {
        /// The interface name asked for.
        name: String,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The WireGuard UDP port is taken or cannot be bound.
    #[error("cannot bind the WireGuard UDP port {port}: {error}")]
    UdpPort {
        /// The port.
        port: u16,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The userspace WireGuard device failed.
    #[error("the WireGuard device failed to {action}: {reason}")]
    Device {
        /// What it was doing.
        action: &'static str,
        /// The device's error.
        reason: String,
    },
    /// The control socket could not be served or queried.
    #[error("control socket {}: cannot {action}: {error}", path.display())]
    Control {
        /// The socket's path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// The control socket answered something we cannot read.
    #[error("control socket {}: unexpected answer: {reason}", path.display())]
    ControlAnswer {
        /// The socket's path.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// A tool routing needs is not installed.
    #[error("{tool} is not installed (looked in PATH, /usr/sbin, /sbin): install {package}")]
    MissingTool {
        /// The program looked for.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A tool could not be started.
    #[error("cannot run {tool} to {action}: {error}")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// What it was run for.
        action: String,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("{tool} failed to {action} ({status}): {stderr}")]
    Failed {
        /// The program.
        tool: &'static str,
        /// What it was run for.
        action: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
}
