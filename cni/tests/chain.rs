//! Root tier: `nodemesh-cni` chained after Debian's `ptp` + `host-local`, called exactly as a
//! container runtime calls a conflist (test support's [`Chain`]), on a node namespace with the
//! capture rules installed and no proxy running. Once per capture backend.
//!
//! A new pod of a mesh namespace is in the capture set when ADD returns, and its first TCP
//! connection to another pod is captured (no proxy listens, so it never completes) instead of
//! reaching that pod in plaintext, while a pod outside the mesh reaches it; CHECK passes; an
//! unknown namespace, or a node without capture rules, makes ADD fail with a CNI error; DEL
//! takes the pod out of the set. Runs as root with `ip`, the backend's tools and
//! `containernetworking-plugins`; otherwise skipped, unless `NODEMESH_E2E=1`.
#![allow(clippy::unwrap_used)] // Test code: a panic is a failed test.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodemesh_cni::{MtlsMode, NamespaceEntry, NodeCache, StateDir};
use nodemesh_redirect::{Backend, Host, RuleSet};
use nodemesh_test_support::Need;
use nodemesh_test_support::cni::{Chain, Sandbox};
use nodemesh_testbed::Netns;

const PLUGIN: &str = env!("CARGO_BIN_EXE_nodemesh-cni");
const DEBIAN_CNI: &str = "/usr/lib/cni";

fn needs(backend: Backend) -> Vec<Need> {
    let mut needs: Vec<Need> = backend.tools().iter().map(Need::from).collect();
    for plugin in ["/usr/lib/cni/ptp", "/usr/lib/cni/host-local"] {
        needs.push(Need::File {
            path: plugin,
            package: "containernetworking-plugins",
        });
    }
    needs
}

/// A node namespace and pod namespaces, deleted on drop (capture rules go with the node).
struct Node {
    netns: Vec<Netns>,
    _tmp: tempfile::TempDir,
    state_dir: PathBuf,
    chain: Chain,
}

impl Drop for Node {
    fn drop(&mut self) {
        for ns in self.netns.iter().rev() {
            let _ = ns.destroy();
        }
    }
}

impl Node {
    /// The node `nmcni-<tag>` with pod namespaces `nmcni-<tag>-<pod>`, pods from `subnet` via
    /// ptp + host-local, then nodemesh-cni; the proxy's cache lists `shop` (mesh) and `legacy`.
    fn new(tag: &str, subnet: &str, pods: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let state_dir = tmp.path().join("state");
        let mut netns = vec![Netns::create(&format!("nmcni-{tag}")).unwrap()];
        for pod in pods {
            netns.push(Netns::create(&format!("nmcni-{tag}-{pod}")).unwrap());
        }
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("nmcni-{tag}"),
            "plugins": [
                {"type": "ptp", "ipMasq": false, "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": tmp.path().join("ipam"),
                }},
                {"type": "nodemesh-cni", "stateDir": state_dir},
            ],
        });
        let plugin_dir = Path::new(PLUGIN).parent().unwrap().to_owned();
        let chain =
            Chain::new(conflist, [PathBuf::from(DEBIAN_CNI), plugin_dir]).in_netns(netns[0].name());
        Self {
            netns,
            _tmp: tmp,
            state_dir,
            chain,
        }
    }

    fn host(&self) -> Host {
        Host::netns(self.netns[0].name())
    }

    fn pod_netns(&self, pod: &str) -> &Netns {
        let name = format!("{}-{pod}", self.netns[0].name());
        self.netns.iter().find(|n| n.name() == name).unwrap()
    }

    fn sandbox(&self, pod: &str, namespace: &str) -> Sandbox {
        Sandbox::new(self.pod_netns(pod).name(), namespace, pod)
    }

    /// What the proxy would have written: `shop` in the mesh, `legacy` not.
    fn write_cache(&self, backend: Backend) {
        let entry = |mesh| NamespaceEntry {
            mesh,
            mtls_mode: MtlsMode::Strict,
        };
        let cache = NodeCache {
            version: nodemesh_cni::CACHE_VERSION,
            node: "node-a".into(),
            backend,
            namespaces: [
                ("shop".into(), entry(true)),
                ("legacy".into(), entry(false)),
            ]
            .into(),
        };
        StateDir::new(&self.state_dir).write_cache(&cache).unwrap();
    }

    fn captured(&self, backend: Backend, ip: Ipv4Addr) -> bool {
        nodemesh_redirect::has_pod(&self.host(), backend, ip.into()).unwrap()
    }
}

/// The pod's IPv4 address in a CNI result.
fn ip_of(result: &serde_json::Value) -> Ipv4Addr {
    nodemesh_cni::pod_ipv4(result)
        .unwrap()
        .expect("an IPv4 address")
}

/// Connects from inside `netns` to `to` within a second.
fn connect(netns: &Netns, to: SocketAddr) -> std::io::Result<TcpStream> {
    netns
        .run(move || TcpStream::connect_timeout(&to, Duration::from_secs(1)))
        .unwrap()
}

/// The peers of every connection that reached `listener` (it is drained).
fn arrived(listener: &TcpListener) -> Vec<Ipv4Addr> {
    listener.set_nonblocking(true).unwrap();
    let mut peers = Vec::new();
    while let Ok((_, peer)) = listener.accept() {
        if let SocketAddr::V4(v4) = peer {
            peers.push(*v4.ip());
        }
    }
    peers
}

fn new_pod_is_captured_before_it_runs(backend: Backend, tag: &str, subnet: &str) {
    if !nodemesh_test_support::root_tier("new_pod_is_captured_before_it_runs", needs(backend)) {
        return;
    }
    let node = Node::new(tag, subnet, &["server", "plain", "mesh", "other"]);
    nodemesh_redirect::apply(&node.host(), &RuleSet::new(backend, [])).unwrap();
    node.write_cache(backend);

    let server = node.chain.add(&node.sandbox("server", "legacy")).unwrap();
    let plain = node.chain.add(&node.sandbox("plain", "legacy")).unwrap();
    let mesh_pod = node.sandbox("mesh", "shop");
    let mesh = node.chain.add(&mesh_pod).unwrap();
    let (server_ip, mesh_ip) = (ip_of(&server), ip_of(&mesh));
    // The result is ptp's, passed through: nodemesh-cni makes no interfaces of its own.
    assert!(
        mesh["interfaces"].as_array().is_some_and(|i| !i.is_empty()),
        "{mesh}"
    );
    assert!(
        node.captured(backend, mesh_ip),
        "in the capture set when ADD returned"
    );
    assert!(
        !node.captured(backend, server_ip),
        "a pod outside the mesh is not"
    );
    let records = StateDir::new(&node.state_dir).records().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].ip, records[0].namespace.as_str()),
        (mesh_ip, "shop")
    );
    node.chain.check(&mesh_pod, &mesh).unwrap();

    let listener = node
        .pod_netns("server")
        .run(|| TcpListener::bind("0.0.0.0:8080"))
        .unwrap()
        .unwrap();
    let to = SocketAddr::from((server_ip, 8080));
    connect(node.pod_netns("plain"), to).expect("a pod outside the mesh reaches the server");
    let first = connect(node.pod_netns("mesh"), to);
    assert!(
        first.is_err(),
        "captured with no proxy: never connected: {first:?}"
    );
    assert_eq!(
        arrived(&listener),
        [ip_of(&plain)],
        "nothing from the mesh pod reached the server in plaintext"
    );

    let unknown = node.chain.add(&node.sandbox("other", "brand-new"));
    let failure = unknown.expect_err("an unknown namespace fails ADD");
    assert_eq!(failure.plugin, "nodemesh-cni");
    assert_eq!(failure.error["code"], 11, "{:?}", failure.error);
    let msg = failure.error["msg"].as_str().unwrap();
    assert!(msg.contains("\"brand-new\""), "{msg}");
    assert_eq!(failure.error["cniVersion"], "1.0.0");
    // The runtime cleans up a failed ADD with DEL, releasing the address.
    node.chain
        .del(&node.sandbox("other", "brand-new"), None)
        .unwrap();

    node.chain.del(&mesh_pod, Some(&mesh)).unwrap();
    assert!(
        !node.captured(backend, mesh_ip),
        "DEL takes it out of the set"
    );
    assert!(StateDir::new(&node.state_dir).records().unwrap().is_empty());
    node.chain.del(&mesh_pod, Some(&mesh)).unwrap();

    // A node whose capture rules are gone (the proxy never ran): a mesh pod is not started.
    nodemesh_redirect::remove(&node.host(), &RuleSet::new(backend, [])).unwrap();
    let failure = node.chain.add(&mesh_pod).expect_err("no capture, no pod");
    let msg = failure.error["msg"].as_str().unwrap();
    assert!(msg.contains("capture is not installed"), "{msg}");
    node.chain.del(&mesh_pod, None).unwrap();
}

#[test]
fn new_pod_is_captured_before_it_runs_iptables() {
    new_pod_is_captured_before_it_runs(Backend::Iptables, "ipt", "10.251.1.0/24");
}

#[test]
fn new_pod_is_captured_before_it_runs_nftables() {
    new_pod_is_captured_before_it_runs(Backend::Nftables, "nft", "10.251.2.0/24");
}
