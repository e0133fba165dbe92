//! nodemesh-test-support: what nodemesh's tests and benches share, as a dev-dependency.
//!
//! | module | what | feature |
//! | --- | --- | --- |
//! | [`root_tier`] | whether a root-tier test runs here (skip, or fail with `NODEMESH_E2E=1`) | always |
//! | [`per_backend!`] | one `#[test]` per capture backend for a root-tier test | always |
//! | [`process`] | `nodemesh` as a child process: its startup line, HTTP GETs, kill on drop | always |
//! | `certs` | `TestCa`: a self-signed root made on the fly that signs any leaf | `certs` |
//! | `ca` | `LocalCa`: the real CA on loopback, fed by files | `ca` |
//! | `mesh` | `Mesh`: the CA and two real proxies in process, pods on loopback | `mesh` |
//! | `cni` | `Chain`: a CNI conflist run as a container runtime runs it | `cni` |
//! | `kube` | `FakeApi`: the Kubernetes list/watch API for the real kube client; its CA | `kube` |
//! | `wait` | `eventually`: polling until something holds | `wait` |
//!
//! Only `kube` pulls kube-rs and k8s-openapi, only `mesh` and `kube` the proxy.
// Test support: a panic is a failed test, so `unwrap` is how a step fails.
#![allow(clippy::unwrap_used)]

#[cfg(feature = "ca")]
pub mod ca;
#[cfg(feature = "certs")]
mod certs;
#[cfg(feature = "cni")]
pub mod cni;
#[cfg(feature = "kube")]
pub mod kube;
#[cfg(feature = "mesh")]
pub mod mesh;
mod per_backend;
pub mod process;
mod root_tier;
#[cfg(feature = "wait")]
pub mod wait;

#[cfg(feature = "certs")]
pub use certs::TestCa;
pub use root_tier::{Need, root_tier};
