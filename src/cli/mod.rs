//! The subcommands of `nodemesh`, one module each.

pub mod ca;
pub mod capture;
pub mod check;
pub mod cni;
pub mod config;
pub mod deadlines;
pub mod demo;
pub mod ipv6_guard;
pub mod kube;
pub mod node_firewall;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod upgrade;

/// Where a command learns about the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The standalone files.
    File,
    /// The Kubernetes API.
    Kubernetes,
}
pub mod wireguard;
