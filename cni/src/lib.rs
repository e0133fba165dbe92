//! nodemesh-cni: the CNI plugin that captures a new pod before it runs (CNI spec 1.0).
//!
//! A container runtime calls it last in the node's plugin chain (an entry `"type":
//! "nodemesh-cni"` at the end of the `plugins` of the node's conflist, put there by `nodemesh
//! cni install`), with the command and the container in the environment ([`Invocation`]) and the
//! network config with the network plugin's `prevResult` on stdin ([`NetConf`]).
//!
//! Membership comes from a node-local cache the proxy writes into its state directory
//! (`<state-dir>/cni/namespaces.json`, a [`NodeCache`]): every namespace the proxy knows, in the
//! mesh or not, and the capture backend. On ADD a pod of a mesh namespace is recorded
//! (`<state-dir>/cni/pods/<container-id>.json`, a [`PodRecord`]) and its IPv4 address added to
//! the capture set before ADD returns, so its first packet is captured even when no watcher has
//! seen the pod yet or the proxy is down; the proxy adopts recorded pods into the set it keeps.
//! A namespace missing from the cache, a missing cache, or capture rules that are not installed
//! make ADD fail, so the runtime does not start the pod (fail closed).
//!
//! The decisions are pure ([`decide`]); [`StateDir`] is the file IO, [`CaptureSet`] the
//! firewall IO (`ipset` / `nft` through `nodemesh-redirect`), and [`run`] puts them together.
//! [`conflist`] edits a conflist (pure) for `nodemesh cni install`.

mod cache;
mod capture;
mod conf;
pub mod conflist;
mod decide;
mod env;
mod error;
mod node;
mod run;

pub use cache::{CACHE_VERSION, MtlsMode, NamespaceEntry, NodeCache, PodRecord};
pub use capture::{CaptureSet, LocalCapture};
pub use conf::{NetConf, SUPPORTED_VERSIONS, pod_ipv4, pod_ipv6};
pub use decide::{AddPlan, Membership, membership, plan_add, record_of};
pub use env::{Command, Invocation, PodArgs};
pub use error::CniError;
pub use node::{NodeLock, StateDir};
pub use run::{Output, run};

/// The plugin's `type` in a conflist, and the name of its binary in the runtime's CNI path.
pub const PLUGIN_TYPE: &str = "nodemesh-cni";

/// The proxy's state directory when the plugin's config names none.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/nodemesh";
