//! Steps that check what a real node adds to the shop (see [`crate::scenario`]): kube-proxy's
//! DNAT of ClusterIPs and NodePorts, Services whose endpoints are not pods, and a non-mesh pod
//! next to mesh pods. Each returns an [`Outcome`], like the demo's steps.

use std::net::SocketAddr;

use nodemesh_redirect::Backend;

use crate::cluster::Testbed;
use crate::error::TestbedError;
use crate::mesh::HOST_NETWORK_PORT;
use crate::scenario::{Outcome, WEB_NODE_PORT, call, find_flow, web_vip};

/// The shop's Service `name` at its port.
fn service_addr(bed: &Testbed, name: &str) -> Result<SocketAddr, TestbedError> {
    let service = bed
        .plan()
        .service(name)
        .ok_or_else(|| TestbedError::Spec(format!("no Service {name:?}")))?;
    Ok(SocketAddr::from((service.vip, service.port)))
}

/// `node`'s address at the `web` NodePort.
fn node_port(bed: &Testbed, node: &str) -> Result<SocketAddr, TestbedError> {
    let node = bed
        .plan()
        .node(node)
        .ok_or_else(|| TestbedError::Spec(format!("no node {node:?}")))?;
    Ok(SocketAddr::from((node.address, WEB_NODE_PORT)))
}

/// Step: a mesh pod calling the `web` NodePort, on its own node and on the other, goes through
/// the mesh (node-b's proxy sees frontend's identity), not through kube-proxy in plaintext.
pub fn mesh_pod_calls_a_node_port(bed: &Testbed) -> Result<Outcome, TestbedError> {
    let mut out = Outcome::new("frontend-a -> web NodePort on node-a and node-b goes through mTLS");
    for node in ["node-a", "node-b"] {
        let target = node_port(bed, node)?;
        let path = format!("/?nodeport={node}");
        match call(bed, "frontend-a", target, "GET", &path, "")? {
            Ok(reply) => out.check(
                reply.status == 200 && reply.field("pod") == Some("web-b"),
                format!(
                    "GET {target}{path}: {} from {:?}",
                    reply.status,
                    reply.field("pod")
                ),
            ),
            Err(e) => out.check(false, format!("GET {target}: {e}")),
        }
        let inbound = find_flow(bed, "node-b", |r| {
            r["direction"] == "inbound" && r["path"] == path.as_str()
        });
        let source = inbound
            .as_ref()
            .and_then(|r| r["src"]["identity"].as_str())
            .unwrap_or("none")
            .to_owned();
        out.check(
            source == "spiffe://cluster.local/ns/shop/sa/frontend",
            format!("node-b flow log: source identity {source}"),
        );
    }
    Ok(out)
}

/// Step: a pod outside the mesh calling the ClusterIP and the NodePort of a mesh pod on its own
/// node never reaches it in plaintext: kube-proxy DNATs after capture looked, so the nftables
/// backend captures the connection after DNAT (STRICT refuses it, flow-logged) and the
/// iptables backend drops it in the forward path.
pub fn dnat_to_a_local_mesh_pod_is_refused(
    bed: &Testbed,
    backend: Backend,
) -> Result<Outcome, TestbedError> {
    let mut out =
        Outcome::new("legacy-b -> web ClusterIP / NodePort (DNAT to web-b on node-b) is refused");
    for target in [web_vip(bed)?, node_port(bed, "node-b")?] {
        match call(bed, "legacy-b", target, "GET", "/", "")? {
            Ok(reply) => out.check(
                false,
                format!(
                    "{target} answered {} from {:?} (must not)",
                    reply.status,
                    reply.field("pod")
                ),
            ),
            Err(e) => out.check(true, format!("{target}: no answer ({e})")),
        }
    }
    if backend == Backend::Nftables {
        let legacy = bed.pod_ip("legacy-b")?.to_string();
        let record = find_flow(bed, "node-b", |r| {
            r["reason"] == "strict_mtls" && r["src"]["ip"] == legacy.as_str()
        });
        out.check(
            record.is_some(),
            "node-b flow log: captured after DNAT, refused with reason strict_mtls",
        );
    }
    Ok(out)
}

/// Step: Services whose endpoints are not pods are reached as passthrough under the Service's
/// name (`kubernetes` → the API server on the underlay, `node-exporter` → a hostNetwork server
/// on a node), and a port the Service does not declare is refused.
pub fn endpoints_outside_the_mesh(bed: &Testbed) -> Result<Outcome, TestbedError> {
    let mut out = Outcome::new(
        "frontend-a -> kubernetes and node-exporter (endpoints that are not pods) pass through",
    );
    for (service, served_by) in [("kubernetes", "apiserver"), ("node-exporter", "hostnet-")] {
        let target = service_addr(bed, service)?;
        match call(bed, "frontend-a", target, "GET", "/", "")? {
            Ok(reply) => out.check(
                reply.status == 200 && reply.field("pod").is_some_and(|p| p.starts_with(served_by)),
                format!(
                    "{service} {target}: {} from {:?}",
                    reply.status,
                    reply.field("pod")
                ),
            ),
            Err(e) => out.check(false, format!("{service} {target}: {e}")),
        }
        let name = match service {
            "kubernetes" => "kubernetes.default",
            _ => "node-exporter.monitoring",
        };
        let record = find_flow(bed, "node-a", |r| {
            r["verdict"] == "passthrough" && r["service"] == name
        });
        out.check(
            record.is_some(),
            format!("node-a flow log: passthrough, service {name}"),
        );
    }
    let api = service_addr(bed, "kubernetes")?;
    let undeclared = SocketAddr::new(api.ip(), HOST_NETWORK_PORT);
    match call(bed, "frontend-a", undeclared, "GET", "/", "")? {
        Ok(reply) => out.check(
            false,
            format!("{undeclared} answered {} (must not)", reply.status),
        ),
        Err(e) => out.check(true, format!("{undeclared}: no answer ({e})")),
    }
    let record = find_flow(bed, "node-a", |r| r["reason"] == "undeclared_service_port");
    out.check(
        record.is_some(),
        "node-a flow log: a VIP port the Service does not declare is refused",
    );
    Ok(out)
}
