//! Which pods' IP claims are believed (no I/O). A pod's IP is written by its node's kubelet, so
//! a compromised node could claim any IP for a pod of its own and take over that IP's identity.
//! Two rules keep a node to its own pod network:
//!
//! 1. With the podCIDR check on (the default), a pod's IP must lie in its node's `podCIDR`; a
//!    pod of a node without a known podCIDR is refused too (fail closed; IPAMs that ignore
//!    `spec.podCIDR`, like Calico's, need `--pod-cidr-check=false`). A refused claim contests
//!    nothing, so a node cannot knock out other nodes' pods by claiming their IPs.
//! 2. An IP claimed by more than one live pod belongs to none of them: every claimant is
//!    unknown (its traffic refused) until only one is left. Terminating pods do not contest an
//!    IP (its next pod may already hold it); they keep it only while no live pod claims it.
//!
//! The claimant that is left becomes a workload if it has an identity
//! (see [`crate::pod::NoIdentity`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nodemesh_config::{Node, Workload};

use crate::pod::{NoIdentity, PodClaim};

/// A claim refused by the podCIDR check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutsidePodCidr {
    /// The IP claimed.
    pub ip: Ipv4Addr,
    /// The pod's node.
    pub node: String,
    /// The node's podCIDR; `None` when the node is unknown or has none.
    pub cidr: Option<Ipv4Net>,
}

/// Every pod not believed, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Pods (`namespace/name`) whose IP is not in their node's podCIDR.
    pub outside_pod_cidr: BTreeMap<String, OutsidePodCidr>,
    /// IPs claimed by several pods, with every claimant (all refused).
    pub duplicate_ips: BTreeMap<Ipv4Addr, Vec<String>>,
    /// Pods left as their IP's only claimant but without an identity, with the reason.
    pub no_identity: BTreeMap<String, (Ipv4Addr, NoIdentity)>,
}

/// The believed workloads (one per IP, by IP) and the refused pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// Workloads whose claims hold.
    pub workloads: Vec<Workload>,
    /// What was refused and why.
    pub refusals: Refusals,
}

/// Decides which `claims` hold, given the `nodes` and whether the podCIDR check is on.
pub fn admit<'a>(
    claims: impl IntoIterator<Item = &'a PodClaim>,
    nodes: &[Node],
    pod_cidr_check: bool,
) -> Admission {
    let cidrs: BTreeMap<&str, Option<Ipv4Net>> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.pod_cidr))
        .collect();
    let mut refusals = Refusals::default();
    let mut by_ip: BTreeMap<Ipv4Addr, Vec<&PodClaim>> = BTreeMap::new();
    for c in claims {
        if pod_cidr_check {
            let cidr = cidrs.get(c.node.as_str()).copied().flatten();
            if !cidr.is_some_and(|net| net.contains(&c.ip)) {
                let refusal = OutsidePodCidr {
                    ip: c.ip,
                    node: c.node.clone(),
                    cidr,
                };
                refusals.outside_pod_cidr.insert(c.pod.clone(), refusal);
                continue;
            }
        }
        by_ip.entry(c.ip).or_default().push(c);
    }
    let mut workloads = Vec::new();
    for (ip, claimants) in by_ip {
        let live: Vec<&PodClaim> = claimants
            .iter()
            .copied()
            .filter(|c| !c.terminating)
            .collect();
        let contest = if live.is_empty() { claimants } else { live };
        let [only] = contest.as_slice() else {
            let mut pods: Vec<String> = contest.iter().map(|c| c.pod.clone()).collect();
            pods.sort();
            refusals.duplicate_ips.insert(ip, pods);
            continue;
        };
        match &only.workload {
            Ok(w) => workloads.push(w.clone()),
            Err(why) => {
                refusals
                    .no_identity
                    .insert(only.pod.clone(), (ip, why.clone()));
            }
        }
    }
    Admission {
        workloads,
        refusals,
    }
}

impl Refusals {
    /// How many pods are refused for each reason: outside their podCIDR, sharing an IP,
    /// without an identity.
    pub fn counts(&self) -> [usize; 3] {
        [
            self.outside_pod_cidr.len(),
            self.duplicate_ips.values().map(Vec::len).sum(),
            self.no_identity.len(),
        ]
    }

    /// Logs what changed since `before`: one line per newly refused pod (per IP for shared
    /// IPs), one per pod or IP no longer refused.
    pub fn log_since(&self, before: &Refusals) {
        for (pod, r) in &self.outside_pod_cidr {
            if before.outside_pod_cidr.get(pod) == Some(r) {
                continue;
            }
            match r.cidr {
                Some(cidr) => tracing::warn!(
                    pod, ip = %r.ip, node = %r.node, %cidr,
                    "pod refused: its IP is outside its node's podCIDR; it has no identity and its traffic is refused"
                ),
                None => tracing::warn!(
                    pod, ip = %r.ip, node = %r.node,
                    "pod refused: its node has no known podCIDR (IPAMs that ignore spec.podCIDR need --pod-cidr-check=false); it has no identity and its traffic is refused"
                ),
            }
        }
        for (ip, pods) in &self.duplicate_ips {
            if before.duplicate_ips.get(ip) != Some(pods) {
                tracing::warn!(%ip, pods = %pods.join(", "),
                    "IP claimed by several pods: all of them refused until one is left");
            }
        }
        for (pod, (ip, why)) in &self.no_identity {
            if before.no_identity.get(pod).is_none_or(|(_, w)| w != why) {
                tracing::info!(pod, %ip, reason = %why, "pod has no identity: not in the mesh");
            }
        }
        for pod in before.outside_pod_cidr.keys() {
            if !self.outside_pod_cidr.contains_key(pod) {
                tracing::info!(pod, "pod no longer refused for its podCIDR");
            }
        }
        for ip in before.duplicate_ips.keys() {
            if !self.duplicate_ips.contains_key(ip) {
                tracing::info!(%ip, "IP no longer claimed by several pods");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodemesh_config::WorkloadFields;

    fn node(name: &str, cidr: Option<&str>) -> Node {
        Node::new(
            name,
            "10.0.0.1".parse().unwrap(),
            cidr.map(|c| c.parse().unwrap()),
            None,
        )
    }

    fn claim(name: &str, node: &str, ip: &str) -> PodClaim {
        let ip: Ipv4Addr = ip.parse().unwrap();
        let fields = WorkloadFields {
            name: name.into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            ip,
            ipv6: None,
            node: node.into(),
            labels: Default::default(),
            ports: Vec::new(),
        };
        PodClaim {
            pod: format!("shop/{name}"),
            node: node.into(),
            ip,
            terminating: false,
            workload: Ok(Workload::new(&"cluster.local".parse().unwrap(), fields).unwrap()),
        }
    }

    fn names(a: &Admission) -> Vec<&str> {
        a.workloads.iter().map(|w| w.name.as_str()).collect()
    }

    fn nodes() -> Vec<Node> {
        vec![
            node("node-a", Some("10.1.1.0/24")),
            node("node-b", Some("10.1.2.0/24")),
        ]
    }

    #[test]
    fn ips_outside_the_nodes_pod_cidr_are_refused_unless_the_check_is_off() {
        let claims = [
            claim("own", "node-a", "10.1.1.5"),
            claim("stolen", "node-a", "10.1.2.5"),
            claim("nowhere", "node-a", "192.168.0.5"),
        ];
        let on = admit(&claims, &nodes(), true);
        assert_eq!(names(&on), ["own"]);
        assert_eq!(
            on.refusals.outside_pod_cidr["shop/stolen"],
            OutsidePodCidr {
                ip: "10.1.2.5".parse().unwrap(),
                node: "node-a".into(),
                cidr: Some("10.1.1.0/24".parse().unwrap()),
            }
        );
        assert!(on.refusals.outside_pod_cidr.contains_key("shop/nowhere"));
        assert_eq!(on.refusals.counts(), [2, 0, 0]);
        let off = admit(&claims, &nodes(), false);
        assert_eq!(names(&off), ["own", "stolen", "nowhere"]);
        assert_eq!(off.refusals, Refusals::default());
    }

    #[test]
    fn pods_of_a_node_without_a_pod_cidr_fail_closed() {
        let claims = [
            claim("p", "node-c", "10.1.3.5"),
            claim("q", "gone", "10.1.4.5"),
        ];
        let nodes = [node("node-c", None)];
        let on = admit(&claims, &nodes, true);
        assert!(on.workloads.is_empty());
        assert_eq!(on.refusals.outside_pod_cidr["shop/p"].cidr, None);
        assert_eq!(
            on.refusals.outside_pod_cidr["shop/q"].cidr, None,
            "unknown node"
        );
        assert_eq!(names(&admit(&claims, &nodes, false)), ["p", "q"]);
    }

    #[test]
    fn a_refused_claim_does_not_contest_the_owners_ip() {
        // node-b claims node-a's pod IP: only node-b's pod is refused.
        let claims = [
            claim("owner", "node-a", "10.1.1.5"),
            claim("thief", "node-b", "10.1.1.5"),
        ];
        let a = admit(&claims, &nodes(), true);
        assert_eq!(names(&a), ["owner"]);
        assert!(a.refusals.duplicate_ips.is_empty());
        assert!(a.refusals.outside_pod_cidr.contains_key("shop/thief"));
    }

    #[test]
    fn a_shared_ip_makes_every_claimant_unknown() {
        let claims = [
            claim("z", "node-a", "10.1.1.5"),
            claim("a", "node-a", "10.1.1.5"),
            claim("other", "node-a", "10.1.1.6"),
        ];
        for check in [true, false] {
            let a = admit(&claims, &nodes(), check);
            assert_eq!(names(&a), ["other"], "neither key order wins");
            let ip: Ipv4Addr = "10.1.1.5".parse().unwrap();
            assert_eq!(a.refusals.duplicate_ips[&ip], ["shop/a", "shop/z"]);
            assert_eq!(a.refusals.counts(), [0, 2, 0]);
        }
        // A pod without an identity contests the IP as well.
        let mut mirror = claim("mirror", "node-a", "10.1.1.5");
        mirror.workload = Err(NoIdentity::MirrorPod);
        let a = admit([&claims[0], &mirror], &nodes(), true);
        assert!(a.workloads.is_empty());
    }

    #[test]
    fn terminating_pods_do_not_contest_an_ip() {
        let mut old = claim("old", "node-a", "10.1.1.5");
        old.terminating = true;
        let new = claim("new", "node-a", "10.1.1.5");
        let a = admit([&old, &new], &nodes(), true);
        assert_eq!(names(&a), ["new"]);
        assert!(a.refusals.duplicate_ips.is_empty());
        // Alone, a terminating pod keeps its IP while it drains.
        assert_eq!(names(&admit([&old], &nodes(), true)), ["old"]);
        // Two terminating pods and no live one: still ambiguous.
        let mut older = claim("older", "node-a", "10.1.1.5");
        older.terminating = true;
        let a = admit([&old, &older], &nodes(), true);
        assert!(a.workloads.is_empty());
        assert_eq!(a.refusals.counts(), [0, 2, 0]);
        // Two live pods and a terminating one: the live ones are refused, the terminating one
        // is no claimant.
        let twin = claim("twin", "node-a", "10.1.1.5");
        let a = admit([&old, &new, &twin], &nodes(), true);
        let ip: Ipv4Addr = "10.1.1.5".parse().unwrap();
        assert_eq!(a.refusals.duplicate_ips[&ip], ["shop/new", "shop/twin"]);
    }

    #[test]
    fn pods_without_an_identity_are_no_workloads() {
        let mut mirror = claim("etcd", "node-a", "10.1.1.7");
        mirror.workload = Err(NoIdentity::MirrorPod);
        let a = admit([&mirror], &nodes(), true);
        assert!(a.workloads.is_empty());
        assert_eq!(
            a.refusals.no_identity["shop/etcd"],
            ("10.1.1.7".parse().unwrap(), NoIdentity::MirrorPod)
        );
        assert_eq!(a.refusals.counts(), [0, 0, 1]);
    }
}
