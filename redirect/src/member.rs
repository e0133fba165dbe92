//! One pod in or out of the installed pod set, and whether capture is installed at all: what a
//! CNI plugin does for a single new pod, without rebuilding the set (the proxy's
//! [`crate::Reconciler`] replaces the whole set; [`crate::apply`] installs everything).

use std::net::IpAddr;

use crate::apply::status;
use crate::error::RedirectError;
use crate::host::{Host, Tool};
use crate::ipv6::IPSET6_NAME;
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

/// Whether `ip` is in the installed pod set of its family — the capture set (IPv4) or the IPv6
/// guard's set — (`false` when the set does not exist).
pub fn has_pod(host: &Host, backend: Backend, ip: IpAddr) -> Result<bool, RedirectError> {
    Ok(match (observe_firewall(host, backend)?, ip) {
        (Firewall::Iptables(s), IpAddr::V4(ip)) => s.members.is_some_and(|m| m.contains(&ip)),
        (Firewall::Iptables(s), IpAddr::V6(ip)) => s.members6.is_some_and(|m| m.contains(&ip)),
        (Firewall::Nftables(s), IpAddr::V4(ip)) => s.members.is_some_and(|m| m.contains(&ip)),
        (Firewall::Nftables(s), IpAddr::V6(ip)) => s.members6.is_some_and(|m| m.contains(&ip)),
    })
}

/// Adds `ip` to the installed pod set of its family (already there is fine); the set must exist.
pub fn add_pod(host: &Host, backend: Backend, ip: IpAddr) -> Result<(), RedirectError> {
    change(
        host,
        backend,
        ip,
        ["add", "add"],
        "add a pod to the pod set",
    )
}

/// Removes `ip` from the installed pod set of its family; absent, or no set at all, is fine.
pub fn remove_pod(host: &Host, backend: Backend, ip: IpAddr) -> Result<(), RedirectError> {
    if !has_pod(host, backend, ip)? {
        return Ok(());
    }
    change(
        host,
        backend,
        ip,
        ["del", "delete"],
        "remove a pod from the pod set",
    )
}

/// `ipset VERB SET IP` or nft's `VERB element FAMILY nodemesh pods { IP }`, for `ip`'s family.
fn change(
    host: &Host,
    backend: Backend,
    ip: IpAddr,
    [ipset_verb, nft_verb]: [&str; 2],
    action: &str,
) -> Result<(), RedirectError> {
    let (ipset, family) = match ip {
        IpAddr::V4(_) => (IPSET_NAME, "ip"),
        IpAddr::V6(_) => (IPSET6_NAME, "ip6"),
    };
    let ip = ip.to_string();
    let ran = match backend {
        Backend::Iptables => host.run(
            Tool::Ipset,
            &[ipset_verb, ipset, &ip, "-exist"],
            None,
            action,
        ),
        Backend::Nftables => {
            let script = format!("{nft_verb} element {family} {NFT_TABLE} {NFT_SET} {{ {ip} }}\n");
            host.run(Tool::Nft, &["-f", "-"], Some(&script), action)
        }
    };
    ran.map(drop)
}
