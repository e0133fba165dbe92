//! [`CaptureSet`]: the node's capture set as the plugin changes it, one pod at a time; on a node,
//! [`LocalCapture`] (`ipset` or `nft` in the current network namespace, through
//! `nodemesh-redirect`).

use std::net::IpAddr;

use nodemesh_redirect::{Backend, Host, RedirectError};

/// One pod in or out of the capture set of a backend, and whether capture is installed.
pub trait CaptureSet {
    /// The parts of the capture rules that are missing (empty: installed).
    fn missing_parts(&self, backend: Backend) -> Result<Vec<String>, RedirectError>;
    /// Whether `ip` is in the set of its family (capture for IPv4, the IPv6 guard's for IPv6).
    fn contains(&self, backend: Backend, ip: IpAddr) -> Result<bool, RedirectError>;
    /// Adds `ip` (already there is fine).
    fn add(&self, backend: Backend, ip: IpAddr) -> Result<(), RedirectError>;
    /// Removes `ip` (absent is fine).
    fn remove(&self, backend: Backend, ip: IpAddr) -> Result<(), RedirectError>;
}

/// The capture set of the network namespace the plugin runs in (the node's).
#[derive(Debug, Clone, Default)]
pub struct LocalCapture {
    host: Host,
}

impl LocalCapture {
    /// The capture set of `host` (a named namespace in tests).
    pub fn on(host: Host) -> Self {
        Self { host }
    }
}

impl CaptureSet for LocalCapture {
    fn missing_parts(&self, backend: Backend) -> Result<Vec<String>, RedirectError> {
        nodemesh_redirect::missing_parts(&self.host, backend)
    }

    fn contains(&self, backend: Backend, ip: IpAddr) -> Result<bool, RedirectError> {
        nodemesh_redirect::has_pod(&self.host, backend, ip)
    }

    fn add(&self, backend: Backend, ip: IpAddr) -> Result<(), RedirectError> {
        nodemesh_redirect::add_pod(&self.host, backend, ip)
    }

    fn remove(&self, backend: Backend, ip: IpAddr) -> Result<(), RedirectError> {
        nodemesh_redirect::remove_pod(&self.host, backend, ip)
    }
}
