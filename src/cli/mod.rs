//! The subcommands of `nodemesh`, one module each.

pub mod ca;
pub mod config;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod wireguard;
