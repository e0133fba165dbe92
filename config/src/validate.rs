//! Cross-checks between entries: duplicates, references to nodes, workload IPs against podCIDRs,
//! Service VIPs against everything else.
//!
//! Entries are registered one by one as they are read, with whichever of their fields parsed, so a
//! broken field never hides another field's cross-check error.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::reader::{Errors, field};

/// A node as far as the checks need it.
struct SeenNode {
    path: String,
    pod_cidr: Option<Ipv4Net>,
}

/// A workload IP's owner, for messages.
struct SeenWorkload {
    path: String,
    key: String,
}

/// What has been registered so far. Nodes come first, then namespaces, workloads, services.
#[derive(Default)]
pub(crate) struct Checks {
    /// Some node's name could not be read: a reference to an unknown node may mean that one.
    nodes_unknown: bool,
    nodes: HashMap<String, SeenNode>,
    node_addresses: HashMap<Ipv4Addr, String>,
    pod_cidrs: Vec<(Ipv4Net, String, String)>,
    namespaces: HashMap<String, String>,
    workloads: HashMap<(String, String), String>,
    workload_ips: HashMap<Ipv4Addr, SeenWorkload>,
    services: HashMap<(String, String), String>,
    service_ports: HashMap<(Ipv4Addr, u16), String>,
}

/// Records `key` in `seen` at `path`, or returns the path it was first seen at.
fn first_seen<K: std::hash::Hash + Eq>(
    seen: &mut HashMap<K, String>,
    key: K,
    path: &str,
) -> Option<String> {
    match seen.entry(key) {
        Entry::Occupied(e) => Some(e.get().clone()),
        Entry::Vacant(e) => {
            e.insert(path.to_owned());
            None
        }
    }
}

impl Checks {
    /// Notes that the nodes, or one node's name, could not be read: references to undefined
    /// nodes are not reported then, as they would only repeat that error.
    pub(crate) fn nodes_unknown(&mut self) {
        self.nodes_unknown = true;
    }

    /// Registers node `at` (e.g. `nodes[2]`) by its name as written: unique name and address,
    /// podCIDRs that do not overlap.
    pub(crate) fn node(
        &mut self,
        errs: &mut Errors,
        at: &str,
        name: &str,
        address: Option<Ipv4Addr>,
        pod_cidr: Option<Ipv4Net>,
    ) {
        match self.nodes.entry(name.to_owned()) {
            Entry::Occupied(e) => errs.push(
                &field(at, "name"),
                format!("duplicate node name {name:?} (first at {})", e.get().path),
            ),
            Entry::Vacant(e) => {
                e.insert(SeenNode {
                    path: at.to_owned(),
                    pod_cidr,
                });
            }
        }
        if let Some(address) = address
            && let Some(first) = first_seen(&mut self.node_addresses, address, at)
        {
            errs.push(
                &field(at, "address"),
                format!("duplicate node address {address} (first at {first})"),
            );
        }
        if let Some(net) = pod_cidr {
            for (other, other_node, other_path) in &self.pod_cidrs {
                if net.contains(&other.network()) || other.contains(&net.network()) {
                    errs.push(
                        &field(at, "podCIDR"),
                        format!(
                            "{net} overlaps {other}, the podCIDR of node {other_node:?} ({other_path})"
                        ),
                    );
                }
            }
            self.pod_cidrs.push((net, name.to_owned(), at.to_owned()));
        }
    }

    /// Registers namespace `at`: unique name.
    pub(crate) fn namespace(&mut self, errs: &mut Errors, at: &str, name: Option<&str>) {
        if let Some(name) = name
            && let Some(first) = first_seen(&mut self.namespaces, name.to_owned(), at)
        {
            errs.push(
                &field(at, "name"),
                format!("duplicate namespace {name:?} (first at {first})"),
            );
        }
    }

    /// Registers workload `at`: unique (namespace, name) and IP, an existing node, an IP inside
    /// its node's podCIDR and in no other node's, not a node's own address.
    pub(crate) fn workload(
        &mut self,
        errs: &mut Errors,
        at: &str,
        namespace: Option<&str>,
        name: Option<&str>,
        ip: Option<Ipv4Addr>,
        node: Option<&str>,
    ) {
        let key = match (namespace, name) {
            (Some(namespace), Some(name)) => {
                let key = (namespace.to_owned(), name.to_owned());
                if let Some(first) = first_seen(&mut self.workloads, key, at) {
                    errs.push(
                        &field(at, "name"),
                        format!("duplicate workload {namespace}/{name} (first at {first})"),
                    );
                }
                format!("{namespace}/{name}")
            }
            _ => at.to_owned(),
        };
        if let Some(node) = node {
            match self.nodes.get(node) {
                None if self.nodes_unknown => {}
                None => errs.push(&field(at, "node"), format!("no node {node:?}")),
                Some(seen) => {
                    if let Some(ip) = ip {
                        self.check_pod_ip(errs, at, ip, node, seen.pod_cidr);
                    }
                }
            }
        }
        let Some(ip) = ip else { return };
        if let Some(owner) = self.node_addresses.get(&ip) {
            errs.push(
                &field(at, "ip"),
                format!("{ip} is the address of a node ({owner})"),
            );
        }
        match self.workload_ips.entry(ip) {
            Entry::Occupied(e) => errs.push(
                &field(at, "ip"),
                format!(
                    "duplicate workload IP {ip} (first at {}, {})",
                    e.get().path,
                    e.get().key
                ),
            ),
            Entry::Vacant(e) => {
                e.insert(SeenWorkload {
                    path: at.to_owned(),
                    key,
                });
            }
        }
    }

    fn check_pod_ip(
        &self,
        errs: &mut Errors,
        at: &str,
        ip: Ipv4Addr,
        node: &str,
        pod_cidr: Option<Ipv4Net>,
    ) {
        match pod_cidr {
            Some(net) if !net.contains(&ip) => errs.push(
                &field(at, "ip"),
                format!("{ip} is outside podCIDR {net} of node {node:?}"),
            ),
            Some(_) => {}
            None => {
                if let Some((net, other, _)) = self.pod_cidrs.iter().find(|(n, ..)| n.contains(&ip))
                {
                    errs.push(
                        &field(at, "ip"),
                        format!(
                            "{ip} lies in podCIDR {net} of node {other:?}, not of node {node:?}"
                        ),
                    );
                }
            }
        }
    }

    /// Registers Service `at` with its ports (`(path, port)`): unique (namespace, name) and
    /// VIP:port, a VIP that is no workload IP, node address or pod IP.
    pub(crate) fn service(
        &mut self,
        errs: &mut Errors,
        at: &str,
        namespace: Option<&str>,
        name: Option<&str>,
        vip: Option<Ipv4Addr>,
        ports: &[(String, u16)],
    ) {
        if let (Some(namespace), Some(name)) = (namespace, name) {
            let key = (namespace.to_owned(), name.to_owned());
            if let Some(first) = first_seen(&mut self.services, key, at) {
                errs.push(
                    &field(at, "name"),
                    format!("duplicate service {namespace}/{name} (first at {first})"),
                );
            }
        }
        let Some(vip) = vip else { return };
        let vip_path = field(at, "vip");
        if let Some(w) = self.workload_ips.get(&vip) {
            errs.push(
                &vip_path,
                format!("{vip} is the IP of workload {} ({})", w.key, w.path),
            );
        }
        if let Some(owner) = self.node_addresses.get(&vip) {
            errs.push(
                &vip_path,
                format!("{vip} is the address of a node ({owner})"),
            );
        }
        if let Some((net, node, _)) = self.pod_cidrs.iter().find(|(n, ..)| n.contains(&vip)) {
            errs.push(
                &vip_path,
                format!("{vip} lies in podCIDR {net} of node {node:?}: a VIP must be outside every pod network"),
            );
        }
        for (path, port) in ports {
            if let Some(first) = first_seen(&mut self.service_ports, (vip, *port), path) {
                errs.push(path, format!("duplicate {vip}:{port} (first at {first})"));
            }
        }
    }
}
