//! A pod as the proxy and the CA believe it (no I/O): which IPv4 it claims (from all of
//! `status.podIPs`), whether it is terminating, and its identity, which mirror pods and pods
//! without a service account do not get.
//!
//! Mirror pods are created by their node's kubelet for static pods; a compromised node can
//! create one in any namespace. Their service account is always empty (the API server refuses
//! mirror pods that name one), so mapping empty to `default` would let any node obtain
//! `ns/<any>/sa/default` certificates. They get no identity, and neither does any other pod
//! without a `serviceAccountName` (the ServiceAccount admission plugin sets it on every other
//! pod).

use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use nodemesh_config::{ContainerPort, Protocol, Workload, WorkloadFields};
use nodemesh_identity::TrustDomain;

use crate::convert::object_key;

/// The annotation the kubelet puts on the mirror pod of a static pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Why a pod gets no identity (no workload entry in the proxy, no certificate from the CA).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoIdentity {
    /// The pod carries `kubernetes.io/config.mirror`: its node made it, and nodes are not trusted
    /// with identities.
    #[error("a mirror (static) pod, made by its node ({MIRROR_POD_ANNOTATION})")]
    MirrorPod,
    /// `spec.serviceAccountName` is missing or empty.
    #[error("no spec.serviceAccountName")]
    NoServiceAccount,
    /// Namespace and service account make no valid SPIFFE ID.
    #[error("no valid SPIFFE ID: {0}")]
    InvalidIdentity(String),
}

/// The service account a pod's identity is made of, or why it has none.
pub fn service_account(pod: &Pod) -> Result<&str, NoIdentity> {
    let mirror = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_POD_ANNOTATION));
    if mirror {
        return Err(NoIdentity::MirrorPod);
    }
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|sa| !sa.is_empty())
        .ok_or(NoIdentity::NoServiceAccount)
}

/// The pod's IPv4: the first IPv4 of `status.podIPs` (so an IPv6-first dual-stack pod keeps
/// its IPv4), else `status.podIP` when it is IPv4. IPv6 addresses carry no identity for now.
pub fn ipv4(status: &PodStatus) -> Option<Ipv4Addr> {
    status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .find_map(|ip| ip.parse().ok())
}

/// The pod's first IPv6 in `status.podIPs` (or `status.podIP`), on a dual-stack node: not
/// meshed, guarded (the node drops IPv6 forwarded to or from it).
pub fn ipv6(status: &PodStatus) -> Option<Ipv6Addr> {
    status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .find_map(|ip| ip.parse().ok())
}

/// A running pod's claim on an IP, with its identity if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodClaim {
    /// `namespace/name`.
    pub pod: String,
    /// The node it is bound to.
    pub node: String,
    /// The IPv4 it claims.
    pub ip: Ipv4Addr,
    /// `metadata.deletionTimestamp` is set: it is going and does not contest its IP.
    pub terminating: bool,
    /// The workload it becomes, or why it has no identity.
    pub workload: Result<Workload, NoIdentity>,
}

/// A pod's claim: `None` for pods outside the proxy's view (no IPv4 pod IP yet, host network,
/// not scheduled, finished).
pub fn claim(pod: &Pod, trust_domain: &TrustDomain) -> Option<PodClaim> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = ipv4(status)?;
    let node = spec.node_name.clone()?;
    let name = pod.metadata.name.clone()?;
    let namespace = pod.metadata.namespace.clone()?;
    let workload = service_account(pod).and_then(|sa| {
        let fields = WorkloadFields {
            name,
            namespace,
            service_account: sa.to_owned(),
            ip,
            ipv6: ipv6(status),
            node: node.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports: container_ports(spec),
        };
        Workload::new(trust_domain, fields).map_err(|e| NoIdentity::InvalidIdentity(e.to_string()))
    });
    Some(PodClaim {
        pod: object_key(&pod.metadata),
        node,
        ip,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        workload,
    })
}

/// The container ports of a pod's containers, by which NetworkPolicies name ports; a port that
/// is out of range or repeats a name or `(port, protocol)` is skipped.
pub fn container_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<ContainerPort> {
    let mut ports: Vec<ContainerPort> = Vec::new();
    for p in spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
    {
        let Ok(number) = u16::try_from(p.container_port) else {
            continue;
        };
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(_) => continue,
        };
        let taken = ports.iter().any(|q| {
            (q.port == number && q.protocol == protocol) || (p.name.is_some() && q.name == p.name)
        });
        if number != 0 && !taken {
            ports.push(ContainerPort::new(p.name.clone(), number, protocol));
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn td() -> TrustDomain {
        "cluster.local".parse().unwrap()
    }

    fn pod(meta: Value, spec: Value, status: Value) -> Pod {
        let mut full = json!({"nodeName": "node-a", "serviceAccountName": "web",
                              "containers": [{"name": "c"}]});
        for (k, v) in spec.as_object().unwrap() {
            full[k] = v.clone();
        }
        let mut metadata = json!({"name": "p", "namespace": "shop"});
        for (k, v) in meta.as_object().unwrap() {
            metadata[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": metadata, "spec": full, "status": status}))
            .unwrap()
    }

    fn running(ip: &str) -> Value {
        json!({"phase": "Running", "podIP": ip})
    }

    #[test]
    fn a_pod_with_a_service_account_is_a_workload() {
        let c = claim(&pod(json!({}), json!({}), running("10.1.1.5")), &td()).unwrap();
        assert_eq!(c.pod, "shop/p");
        assert_eq!(c.node, "node-a");
        assert!(!c.terminating);
        let w = c.workload.unwrap();
        assert_eq!(w.identity.as_str(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(w.ip.to_string(), "10.1.1.5");
    }

    #[test]
    fn mirror_pods_and_pods_without_a_service_account_get_no_identity() {
        let mirror = pod(
            json!({"annotations": {MIRROR_POD_ANNOTATION: "abc"}}),
            json!({"serviceAccountName": null}),
            running("10.1.1.5"),
        );
        assert_eq!(service_account(&mirror), Err(NoIdentity::MirrorPod));
        let c = claim(&mirror, &td()).unwrap();
        assert_eq!(c.workload, Err(NoIdentity::MirrorPod), "never sa/default");
        assert_eq!(c.ip.to_string(), "10.1.1.5", "it still claims its IP");
        // Even a mirror pod that names a service account (the API server refuses those).
        let named = pod(
            json!({"annotations": {MIRROR_POD_ANNOTATION: ""}}),
            json!({}),
            running("10.1.1.5"),
        );
        assert_eq!(service_account(&named), Err(NoIdentity::MirrorPod));
        for sa in [json!(null), json!("")] {
            let p = pod(
                json!({}),
                json!({"serviceAccountName": sa}),
                running("10.1.1.5"),
            );
            assert_eq!(
                claim(&p, &td()).unwrap().workload,
                Err(NoIdentity::NoServiceAccount)
            );
        }
        let bad = pod(
            json!({}),
            json!({"serviceAccountName": ".."}),
            running("10.1.1.5"),
        );
        assert!(matches!(
            claim(&bad, &td()).unwrap().workload,
            Err(NoIdentity::InvalidIdentity(_))
        ));
    }

    #[test]
    fn the_ipv4_comes_from_all_pod_ips() {
        let dual_v6_first = json!({"phase": "Running", "podIP": "fd00::5",
                                   "podIPs": [{"ip": "fd00::5"}, {"ip": "10.1.1.5"}]});
        let c = claim(&pod(json!({}), json!({}), dual_v6_first), &td()).unwrap();
        assert_eq!(c.ip.to_string(), "10.1.1.5", "IPv6 first keeps the IPv4");
        let v6 = c.workload.as_ref().unwrap().ipv6;
        assert_eq!(
            v6,
            Some("fd00::5".parse().unwrap()),
            "and its IPv6 is kept, to be guarded"
        );
        let dual_v4_first = json!({"phase": "Running", "podIP": "10.1.1.6",
                                   "podIPs": [{"ip": "10.1.1.6"}, {"ip": "fd00::6"}]});
        let c = claim(&pod(json!({}), json!({}), dual_v4_first), &td()).unwrap();
        assert_eq!(c.ip.to_string(), "10.1.1.6");
        let only_v6 =
            json!({"phase": "Running", "podIP": "fd00::7", "podIPs": [{"ip": "fd00::7"}]});
        assert!(claim(&pod(json!({}), json!({}), only_v6), &td()).is_none());
        let legacy = running("10.1.1.8");
        assert_eq!(
            claim(&pod(json!({}), json!({}), legacy), &td())
                .unwrap()
                .ip
                .to_string(),
            "10.1.1.8",
            "podIP alone (no podIPs) still counts"
        );
    }

    #[test]
    fn pods_outside_the_view_are_skipped() {
        assert!(
            claim(
                &pod(json!({}), json!({"hostNetwork": true}), running("10.1.1.5")),
                &td()
            )
            .is_none()
        );
        let done = json!({"phase": "Succeeded", "podIP": "10.1.1.5"});
        assert!(claim(&pod(json!({}), json!({}), done), &td()).is_none());
        let pending = json!({"phase": "Pending"});
        assert!(claim(&pod(json!({}), json!({}), pending), &td()).is_none());
        let unscheduled = pod(json!({}), json!({"nodeName": null}), running("10.1.1.5"));
        assert!(claim(&unscheduled, &td()).is_none());
        let going = pod(
            json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}),
            json!({}),
            running("10.1.1.5"),
        );
        assert!(claim(&going, &td()).unwrap().terminating);
        let gone = pod(
            json!({"deletionTimestamp": "2026-01-01T00:00:00Z"}),
            json!({}),
            json!({"phase": "Running"}),
        );
        assert!(claim(&gone, &td()).is_none(), "terminating without an IP");
    }
}
