//! Capture rules in sync with the mesh: the node's rules compared with what its mesh workloads
//! (and the CNI plugin's pods the proxy adopts) need, with the drift named part by part.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use nodemesh_config::Config;
use nodemesh_redirect::{Backend, Host, ItemState, RuleSet, Status};

use super::report::Item;

/// The item's name.
pub const NAME: &str = "capture rules in sync";

/// The rules `node`'s proxy keeps installed: its in-mesh workloads, plus the CNI plugin's pods
/// the config does not know yet (the proxy adopts them; see `nodemesh proxy --manage-redirect`).
pub fn desired(config: &Config, node: &str, backend: Backend, state_dir: &Path) -> RuleSet {
    let mut addrs: BTreeSet<IpAddr> = config
        .mesh_workloads_on_node(node)
        .flat_map(|w| w.addrs())
        .collect();
    if let Ok(records) = nodemesh_cni::StateDir::new(state_dir).records() {
        for r in records
            .iter()
            .filter(|r| config.workload_by_ip(r.ip).is_none())
        {
            addrs.insert(IpAddr::V4(r.ip));
            addrs.extend(r.ipv6.map(IpAddr::V6));
        }
    }
    RuleSet::new(backend, []).with_addrs(addrs)
}

/// Reads what is installed on this host.
pub fn observe(rules: &RuleSet) -> Result<Status, String> {
    nodemesh_redirect::status(&Host::local(), rules).map_err(|e| e.to_string())
}

/// The item: in sync, or every part that is missing or drifted.
pub fn evaluate(status: &Result<Status, String>, install: &str) -> Item {
    let status = match status {
        Ok(status) => status,
        Err(why) => {
            return Item::fail(
                NAME,
                format!("cannot read the rules: {why}"),
                "run `nodemesh check` as root on the node, with the backend's tools installed",
            );
        }
    };
    if status.in_sync() {
        let parts = status.items().len();
        return Item::ok(
            NAME,
            format!(
                "{} backend, {parts} parts as the mesh needs",
                status.backend
            ),
        );
    }
    if status.nothing_installed() {
        return Item::fail(
            NAME,
            format!(
                "not installed ({} backend): mesh traffic is not captured",
                status.backend
            ),
            format!("start the proxy with --manage-redirect, or run `{install}`"),
        );
    }
    let drift: Vec<String> = status
        .items()
        .into_iter()
        .filter_map(|i| match &i.state {
            ItemState::InSync => None,
            ItemState::Missing => Some(format!("{}: missing", i.name)),
            ItemState::Drift(how) => Some(format!("{}: {how}", i.name)),
        })
        .collect();
    Item::fail(
        NAME,
        format!("drift ({} backend): {}", status.backend, drift.join("; ")),
        format!(
            "something else changed the rules: `{install}` puts them back (the proxy does too on its next change or restart)"
        ),
    )
}

#[cfg(test)]
pub(super) mod tests {
    use nodemesh_redirect::Item as Part;

    use super::*;
    use crate::cli::check::report::Status as Outcome;

    fn part(name: &str, state: ItemState) -> Part {
        Part {
            name: name.into(),
            state,
        }
    }

    /// A status with every part in sync (and IPv6 parts when `ipv6`).
    pub(crate) fn in_sync(ipv6: bool) -> Status {
        Status {
            backend: Backend::Iptables,
            ip_forward: part("ip_forward", ItemState::InSync),
            ip_rule: part("ip rule pref 100", ItemState::InSync),
            route: part("route table 133", ItemState::InSync),
            pod_set: part("ipset nodemesh-pods", ItemState::InSync),
            capture: part("chains mangle NODEMESH-PREROUTING", ItemState::InSync),
            nat: part("chains nat NODEMESH-NAT", ItemState::InSync),
            forward: part("chains filter NODEMESH-FORWARD", ItemState::InSync),
            ipv6_pod_set: ipv6.then(|| part("ipset nodemesh-pods6", ItemState::InSync)),
            ipv6_forward: ipv6
                .then(|| part("chains ip6 filter NODEMESH-FORWARD", ItemState::InSync)),
        }
    }

    #[test]
    fn in_sync_is_ok() {
        let item = evaluate(&Ok(in_sync(true)), "x");
        assert_eq!(item.status, Outcome::Ok, "{item:?}");
        assert_eq!(item.detail, "iptables backend, 9 parts as the mesh needs");
    }

    #[test]
    fn drift_names_each_part_and_the_fix() {
        let mut st = in_sync(false);
        st.capture.state = ItemState::Drift("1 rule(s) missing, 0 unexpected".into());
        st.pod_set.state = ItemState::Drift("missing [10.1.1.11], unexpected []".into());
        let item = evaluate(
            &Ok(st),
            "nodemesh redirect install --config c.yaml --node a",
        );
        assert_eq!(item.status, Outcome::Fail);
        assert_eq!(
            item.detail,
            "drift (iptables backend): ipset nodemesh-pods: missing [10.1.1.11], unexpected []; \
             chains mangle NODEMESH-PREROUTING: 1 rule(s) missing, 0 unexpected"
        );
        assert!(
            item.hint
                .unwrap()
                .contains("nodemesh redirect install --config c.yaml --node a")
        );
    }

    #[test]
    fn nothing_installed_says_so() {
        let mut st = in_sync(false);
        for p in [
            &mut st.ip_rule,
            &mut st.route,
            &mut st.pod_set,
            &mut st.capture,
            &mut st.nat,
            &mut st.forward,
        ] {
            p.state = ItemState::Missing;
        }
        let item = evaluate(&Ok(st), "x");
        assert_eq!(item.status, Outcome::Fail);
        assert!(item.detail.starts_with("not installed"), "{item:?}");
        let item = evaluate(&Err("ipset: not found".into()), "x");
        assert!(item.detail.contains("ipset: not found"));
    }
}
