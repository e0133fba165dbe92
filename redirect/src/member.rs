//! One pod in or out of the installed pod set, and whether capture is installed at all: what a
//! CNI plugin does for a single new pod, without rebuilding the set (the proxy's
//! [`crate::Reconciler`] replaces the whole set; [`crate::apply`] installs everything).

use std::net::Ipv4Addr;

use crate::apply::status;
use crate::error::RedirectError;
use crate::host::{Host, Tool};
use crate::observe::{Firewall, observe_firewall};
use crate::rules::{Backend, IPSET_NAME, NFT_SET, NFT_TABLE, RuleSet};
use crate::status::ItemState;

/// The parts of the capture rules that are missing on `host` for `backend` (empty when capture
/// is installed): the ip rule, the local route, the pod set or the capture chains. Pod set members and
/// rule details are not compared (a set with other pods, or rules of another version, are
/// installed).
pub fn missing_parts(host: &Host, backend: Backend) -> Result<Vec<String>, RedirectError> {
    let status = status(host, &RuleSet::new(backend, []))?;
    Ok([
        &status.ip_rule,
        &status.route,
        &status.pod_set,
        &status.capture,
    ]
    .into_iter()
    .filter(|item| item.state == ItemState::Missing)
    .map(|item| item.name.clone())
    .collect())
}

/// Whether `ip` is in the installed pod set (`false` when the set does not exist).
pub fn has_pod(host: &Host, backend: Backend, ip: Ipv4Addr) -> Result<bool, RedirectError> {
    let members = match observe_firewall(host, backend)? {
        Firewall::Iptables(state) => state.members,
        Firewall::Nftables(state) => state.members,
    };
    Ok(members.is_some_and(|m| m.contains(&ip)))
}

/// Adds `ip` to the installed pod set (already there is fine); the set must exist.
pub fn add_pod(host: &Host, backend: Backend, ip: Ipv4Addr) -> Result<(), RedirectError> {
    let ip = ip.to_string();
    let action = "add a pod to the pod set";
    let ran = match backend {
        Backend::Iptables => host.run(
            Tool::Ipset,
            &["add", IPSET_NAME, &ip, "-exist"],
            None,
            action,
        ),
        Backend::Nftables => {
            let script = format!("add element ip {NFT_TABLE} {NFT_SET} {{ {ip} }}\n");
            host.run(Tool::Nft, &["-f", "-"], Some(&script), action)
        }
    };
    ran.map(drop)
}

/// Removes `ip` from the installed pod set; absent, or no set at all, is fine.
pub fn remove_pod(host: &Host, backend: Backend, ip: Ipv4Addr) -> Result<(), RedirectError> {
    if !has_pod(host, backend, ip)? {
        return Ok(());
    }
    let ip = ip.to_string();
    let action = "remove a pod from the pod set";
    let ran = match backend {
        Backend::Iptables => host.run(
            Tool::Ipset,
            &["del", IPSET_NAME, &ip, "-exist"],
            None,
            action,
        ),
        Backend::Nftables => {
            let script = format!("delete element ip {NFT_TABLE} {NFT_SET} {{ {ip} }}\n");
            host.run(Tool::Nft, &["-f", "-"], Some(&script), action)
        }
    };
    ran.map(drop)
}
