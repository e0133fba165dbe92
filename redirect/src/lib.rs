//! Capture rules of the nodemesh node proxy (DESIGN.md "Capture").
//!
//! A [`RuleSet`] is pure data: the mesh pod IPs of one node, the capture ports, the marks, the
//! routing table and the backend. It renders to `iptables-restore` and `ipset restore` input or
//! to an `nft -f` script with no I/O, so the layout is golden-tested. [`apply`], [`remove`] and
//! [`status`] run the real tools (`iptables-restore`, `ipset`, `nft`, `ip`) on a [`Host`]: the
//! current network namespace or a named one (`ip netns exec NAME ...`).
//!
//! Every rule lives in chains of our own (`NODEMESH-*`, or the nft table `ip nodemesh`); the mesh
//! pods are a set (`hash:ip` ipset or an nft set) replaced in place, so a pod coming or going
//! never rebuilds the chains.

mod apply;
mod error;
mod host;
mod rules;

pub use apply::{ApplyReport, Item, ItemState, Status, apply, remove, status};
pub use error::RedirectError;
pub use host::{Host, Tool};
pub use rules::{
    Backend, CHAIN_DIVERT, CHAIN_PREROUTING, IPSET_NAME, IPSET_STAGING, Mark, Marks, NFT_SET,
    NFT_TABLE, Ports, RuleSet,
};
