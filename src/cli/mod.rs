//! The subcommands of `nodemesh`, one module each.

pub mod ca;
pub mod capture;
pub mod config;
pub mod demo;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod wireguard;
