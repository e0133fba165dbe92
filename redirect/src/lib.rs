//! Capture rules of the nodemesh node proxy (DESIGN.md "Capture").
//!
//! A [`RuleSet`] is pure data: the mesh pod IPs of one node, the capture ports, the marks, the
//! routing table and the backend (defaults from [`nodemesh_net`]). It renders to
//! `iptables-restore` and `ipset restore` input or to an `nft -f` script with no I/O, so the
//! layout is golden-tested.
//!
//! Changing a host is three steps: [`observe()`] runs the tools (`iptables-save`, `ipset`, `nft`,
//! `ip`) on a [`Host`] — the current network namespace or a named one (`ip netns exec NAME ...`)
//! — into an [`Observed`]; [`plan()`] (pure) turns that and the desired rules into a [`Plan`] of
//! [`Action`]s, and [`compare`] into a [`Status`]; [`execute()`] runs the plan. [`apply`],
//! [`remove`] and [`status`] are those steps in one call, and the [`Reconciler`] keeps a host's
//! rules in step with a changing pod set (feature `reconciler`, the one part that needs tokio);
//! [`add_pod`] and [`remove_pod`] change one member of the installed set (the CNI plugin).
//!
//! Every rule lives in chains of our own (`NODEMESH-*`, or the nft table `ip nodemesh`); the mesh
//! pods are a set (`hash:ip` ipset or an nft set) replaced in place, so a pod coming or going
//! never rebuilds the chains. Their IPv6 addresses, which nodemesh does not mesh, are guarded
//! by [`ipv6`]: IPv6 forwarded to or from them is dropped and counted.

mod apply;
mod error;
mod execute;
mod host;
mod iptables;
pub mod ipv6;
mod member;
mod nft;
mod observe;
mod plan;
#[cfg(feature = "reconciler")]
mod reconcile;
mod rules;
mod status;

pub use apply::{apply, remove, status};
pub use error::RedirectError;
pub use execute::{ApplyReport, execute};
pub use host::{Host, Tool};
pub use iptables::IptablesTable;
pub use ipv6::{IPSET6_NAME, ipv6_dropped};
pub use member::{add_pod, has_pod, missing_parts, remove_pod};
pub use nft::NftChain;
pub use observe::{
    Firewall, IptablesState, NftState, Observed, TableState, observe, observe_firewall,
};
pub use plan::{Action, Plan, plan, plan_removal};
#[cfg(feature = "reconciler")]
pub use reconcile::{Installer, Reconciler};
pub use rules::{
    Backend, CHAIN_DIVERT, CHAIN_DNAT, CHAIN_FORWARD, CHAIN_NAT, CHAIN_PREROUTING, IPSET_NAME,
    IPSET_STAGING, Marks, NFT_SET, NFT_TABLE, Ports, RuleSet,
};
pub use status::{Item, ItemState, Status, compare};
