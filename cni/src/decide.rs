//! The plugin's decisions, without I/O: is the pod's namespace in the mesh, and what ADD does.

use std::path::Path;

use crate::cache::{NodeCache, PodRecord};
use crate::conf::{NetConf, pod_ipv4, pod_ipv6};
use crate::env::Invocation;
use crate::error::CniError;

/// Whether a pod's namespace is in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Its pods are captured.
    Mesh,
    /// Its pods are left alone.
    Outside,
}

/// The membership of `namespace` in the proxy's cache (read from `cache_path`); a namespace the
/// cache does not list is an error: the plugin does not guess.
pub fn membership(
    cache: &NodeCache,
    cache_path: &Path,
    namespace: &str,
) -> Result<Membership, CniError> {
    match cache.namespaces.get(namespace) {
        Some(ns) if ns.mesh => Ok(Membership::Mesh),
        Some(_) => Ok(Membership::Outside),
        None => Err(CniError::UnknownNamespace {
            namespace: namespace.to_owned(),
            path: cache_path.to_owned(),
        }),
    }
}

/// What an ADD does.
#[derive(Debug, Clone, PartialEq)]
pub struct AddPlan {
    /// The result to print: `prevResult`, passed through.
    pub result: serde_json::Value,
    /// A mesh pod: record it, then put its address into the capture set.
    pub capture: Option<PodRecord>,
    /// Records of other containers that claim the new pod's address (their DEL never came,
    /// and IPAM gave the address out again): dropped, and when the new pod is not captured,
    /// the address leaves the capture set.
    pub stale: Vec<PodRecord>,
}

/// Decides an ADD from the invocation, the config, the proxy's cache (read from `cache_path`)
/// and the plugin's current records.
pub fn plan_add(
    inv: &Invocation,
    conf: &NetConf,
    cache: &NodeCache,
    cache_path: &Path,
    records: &[PodRecord],
) -> Result<AddPlan, CniError> {
    let result = conf.result()?;
    let namespace = inv.namespace()?;
    let member = membership(cache, cache_path, namespace)?;
    let ip = pod_ipv4(&result)?;
    let stale = ip.map_or_else(Vec::new, |ip| {
        records
            .iter()
            .filter(|r| r.ip == ip && r.container_id != inv.container_id)
            .cloned()
            .collect()
    });
    let capture = match (member, ip) {
        (Membership::Outside, _) => None,
        (Membership::Mesh, None) => return Err(CniError::NoIpv4),
        (Membership::Mesh, Some(ip)) => Some(PodRecord {
            container_id: inv.container_id.clone(),
            ip,
            ipv6: pod_ipv6(&result)?,
            namespace: namespace.to_owned(),
            pod: inv.pod.name.clone(),
        }),
    };
    Ok(AddPlan {
        result,
        capture,
        stale,
    })
}

/// The record of `container_id`, if ADD made one.
pub fn record_of<'a>(records: &'a [PodRecord], container_id: &str) -> Option<&'a PodRecord> {
    records.iter().find(|r| r.container_id == container_id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::Ipv4Addr;

    use super::*;
    use crate::env::{Command, PodArgs};

    fn cache() -> NodeCache {
        crate::cache::shop_and_legacy()
    }

    fn add(namespace: &str) -> Invocation {
        Invocation {
            command: Command::Add,
            container_id: "c1".into(),
            netns: Some("/var/run/netns/p".into()),
            ifname: "eth0".into(),
            pod: PodArgs {
                namespace: Some(namespace.into()),
                name: Some("web-1".into()),
            },
        }
    }

    fn conf(address: &str) -> NetConf {
        let text = format!(
            r#"{{"cniVersion": "1.0.0", "name": "pods", "type": "nodemesh-cni",
              "prevResult": {{"cniVersion": "1.0.0", "ips": [{{"address": "{address}"}}]}}}}"#
        );
        NetConf::parse(text.as_bytes()).unwrap()
    }

    fn record(id: &str, ip: [u8; 4]) -> PodRecord {
        PodRecord {
            container_id: id.into(),
            ip: Ipv4Addr::from(ip),
            ipv6: None,
            namespace: "shop".into(),
            pod: None,
        }
    }

    const PATH: &str = "/s/cni/namespaces.json";

    #[test]
    fn a_mesh_pod_is_captured_and_its_result_passed_through() {
        let conf = conf("10.1.0.5/24");
        let plan = plan_add(&add("shop"), &conf, &cache(), PATH.as_ref(), &[]).unwrap();
        assert_eq!(
            plan.capture,
            Some(PodRecord {
                pod: Some("web-1".into()),
                container_id: "c1".into(),
                ..record("c1", [10, 1, 0, 5])
            })
        );
        assert_eq!(plan.result, conf.result().unwrap());
        assert!(plan.stale.is_empty());
    }

    #[test]
    fn a_pod_outside_the_mesh_is_not_captured() {
        let plan = plan_add(
            &add("legacy"),
            &conf("10.1.0.5/24"),
            &cache(),
            PATH.as_ref(),
            &[],
        );
        assert_eq!(plan.unwrap().capture, None);
    }

    #[test]
    fn an_unknown_namespace_fails_add() {
        let err = plan_add(
            &add("new"),
            &conf("10.1.0.5/24"),
            &cache(),
            PATH.as_ref(),
            &[],
        )
        .unwrap_err();
        assert!(matches!(err, CniError::UnknownNamespace { .. }), "{err}");
        assert!(err.to_string().contains(PATH), "{err}");
    }

    #[test]
    fn a_mesh_pod_without_ipv4_fails_add() {
        let err = plan_add(
            &add("shop"),
            &conf("fd00::5/64"),
            &cache(),
            PATH.as_ref(),
            &[],
        );
        assert!(matches!(err, Err(CniError::NoIpv4)));
        let outside = plan_add(
            &add("legacy"),
            &conf("fd00::5/64"),
            &cache(),
            PATH.as_ref(),
            &[],
        );
        assert!(outside.is_ok(), "nothing to capture outside the mesh");
    }

    #[test]
    fn records_claiming_the_address_are_stale() {
        let records = [
            record("old", [10, 1, 0, 5]),
            record("other", [10, 1, 0, 6]),
            record("c1", [10, 1, 0, 5]),
        ];
        let plan = plan_add(
            &add("legacy"),
            &conf("10.1.0.5/24"),
            &cache(),
            PATH.as_ref(),
            &records,
        )
        .unwrap();
        assert_eq!(plan.stale, [record("old", [10, 1, 0, 5])]);
        assert_eq!(record_of(&records, "other"), Some(&records[1]));
        assert_eq!(record_of(&records, "none"), None);
    }
}
