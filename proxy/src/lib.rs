//! The nodemesh node proxy: pod-to-pod TCP inside HBONE (HTTP/2 CONNECT over mutual TLS), with
//! inline L4/L7 authorization, metrics, flow logs, an admin API and graceful drain.
//!
//! Sans-IO parts: [`state`] (what the mesh looks like), [`outbound::classify`] (where a
//! connection goes), [`hbone::request`] (what a CONNECT must look like). The rest moves bytes.

pub mod admin;
pub mod certs;
pub mod hbone;
pub mod inbound;
pub mod l7;
mod l7_glue;
pub mod observe;
pub mod outbound;
pub mod proxy;
pub mod relay;
pub mod report;
pub mod socket;
pub mod state;
pub mod tls;

pub use proxy::{Ctx, Listening, ProxyHandle, ProxyOptions, StartError, StateSource};
