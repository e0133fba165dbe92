//! The nodemesh node proxy: pod-to-pod TCP inside HBONE (HTTP/2 CONNECT over mutual TLS), with
//! inline L4/L7 authorization, metrics, flow logs, an admin API and graceful drain.
//!
//! One connection's path, top to bottom (the tree shows it):
//!
//! ```text
//!  app            accept on 15001 / 15008 / 15006, hand each connection to its side
//!   │
//!   ├─ outbound/  15001: classify (pure: Route) ──► HBONE to the pod's node (hbone::HboneClient)
//!   │                                          ├──► plain TCP outside the mesh
//!   │                                          └──► a pod on this node: inbound, in-process
//!   ├─ inbound/   hbone.rs 15008: TLS (cert by local IP), h2, CONNECT (hbone::request)
//!   │             plaintext.rs 15006
//!   │               └──► admit.rs decide (pure: Admission | Refused, one snapshot)
//!   │                    ──► dial the pod ──► relay (L4) | l7.rs: each HTTP request (l7/)
//!   └─ admin/     15000 / 15020 / 15021, on their own thread
//!
//!  ctx            what every connection shares (state, certificates, pool, flows, conns:
//!                 the open connections, re-decided on every change of the state)
//!  flow           one FlowGuard per connection: metrics + one flow-log line, on drop
//!  bounds         connection caps, handshakes in progress, the buffer budget (sans IO)
//!  heap           freed memory back to the kernel after a burst of connections (sans-IO policy)
//!  hbone/ l7/ observe/ tls certs socket relay addr   the parts below
//! ```
//!
//! Sans-IO parts: [`outbound::classify`], [`inbound::decide`], [`hbone::request`] (what a
//! CONNECT must look like), [`hbone::pool`] (which connection a stream takes), [`l7::classify`].
//! The workload state is `nodemesh-state`'s.

pub mod addr;
pub mod admin;
mod app;
pub mod bounds;
pub mod certs;
pub mod conns;
mod ctx;
pub mod flow;
pub mod hbone;
pub mod heap;
pub mod inbound;
pub mod l7;
pub mod observe;
pub mod outbound;
mod pending;
pub mod relay;
pub mod socket;
pub mod tls;

pub use app::{InheritedListeners, Listening, ProxyHandle, ProxyOptions, StartError, StateSource};
pub use pending::PendingPods;
