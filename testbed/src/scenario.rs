//! The demo's shop: two nodes, each with two pods in the mesh namespace `shop` and one in the
//! plain namespace `legacy`, kube-proxy's rules on both; a Service `web` (with a NodePort) in
//! front of the web pod, `kubernetes` in front of the API server and `node-exporter` in front
//! of a hostNetwork server on every node (endpoints that are not pods); policies that allow
//! frontend -> web, deny `POST /admin*` on web, and allow only web -> db. Each demo step is a
//! function that does something in the cluster and checks what happened, so `nodemesh demo`
//! prints the outcomes and the root test tier asserts them.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::apps::{self, CallError, HTTP_PORT};
use crate::cluster::Testbed;
use crate::error::TestbedError;
use crate::kube_proxy::KubeProxyMode;
use crate::mesh::HOST_NETWORK_PORT;
use crate::plan::{
    API_SERVER, API_SERVER_PORT, ClusterSpec, Labels, NamespaceSpec, NodeSpec, PodSpec,
    ServiceSpec, node_address,
};

/// How long a demo call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The shop cluster.
pub fn shop() -> ClusterSpec {
    let mesh: Labels = [("nodemesh.io/mesh".to_owned(), "enabled".to_owned())].into();
    let pod =
        |name: &str, ns: &str, sa: &str, app: &str| PodSpec::new(name, ns, sa).label("app", app);
    ClusterSpec {
        nodes: vec![
            NodeSpec {
                name: "node-a".into(),
                pods: vec![
                    pod("frontend-a", "shop", "frontend", "frontend"),
                    pod("batch-a", "shop", "batch", "batch"),
                    pod("legacy-a", "legacy", "default", "legacy"),
                ],
            },
            NodeSpec {
                name: "node-b".into(),
                pods: vec![
                    pod("web-b", "shop", "web", "web"),
                    pod("db-b", "shop", "db", "db"),
                    pod("legacy-b", "legacy", "default", "legacy"),
                ],
            },
        ],
        namespaces: vec![
            NamespaceSpec {
                name: "shop".into(),
                labels: mesh,
            },
            NamespaceSpec {
                name: "legacy".into(),
                labels: Labels::new(),
            },
        ],
        services: vec![
            ServiceSpec {
                node_port: Some(WEB_NODE_PORT),
                ..ServiceSpec::new(
                    "web",
                    "shop",
                    80,
                    HTTP_PORT,
                    [("app".to_owned(), "web".to_owned())].into(),
                )
            },
            // Endpoints that are not pods: the API server, and a hostNetwork DaemonSet.
            ServiceSpec {
                endpoints: vec![API_SERVER],
                ..ServiceSpec::new("kubernetes", "default", 443, API_SERVER_PORT, Labels::new())
            },
            ServiceSpec {
                endpoints: (0..2).map(node_address).collect(),
                ..ServiceSpec::new(
                    "node-exporter",
                    "monitoring",
                    HOST_NETWORK_PORT,
                    HOST_NETWORK_PORT,
                    Labels::new(),
                )
            },
        ],
        policies: shop_policies(),
        kube_proxy: Some(KubeProxyMode::Iptables),
        ..ClusterSpec::default()
    }
}

/// The shop with kube-proxy in the mode that goes with the capture `backend`.
pub fn shop_for(backend: nodemesh_redirect::Backend) -> ClusterSpec {
    ClusterSpec {
        kube_proxy: Some(KubeProxyMode::matching(backend)),
        ..shop()
    }
}

/// [`shop_for`] without `web-deny-admin`, for raw TCP to web (iperf3, echo, bulk sinks): a DENY
/// with HTTP conditions refuses every non-HTTP connection to what it selects (Istio's
/// semantics).
pub fn shop_for_tcp(backend: nodemesh_redirect::Backend) -> ClusterSpec {
    let mut spec = shop_for(backend);
    spec.policies
        .retain(|p| p["metadata"]["name"] != "web-deny-admin");
    spec
}

/// Builds `spec` and starts its mesh with WireGuard between the nodes; panics with the proxy's
/// log when it does not come up (tests).
pub fn wireguard_mesh(
    spec: ClusterSpec,
    binary: &str,
    backend: nodemesh_redirect::Backend,
) -> Testbed {
    let mut bed = Testbed::build(spec).unwrap_or_else(|e| panic!("testbed: {e}"));
    let mut opts = crate::MeshOptions::new(binary);
    opts.backend = backend;
    opts.wireguard = true;
    if let Err(e) = bed.start_mesh(&opts) {
        panic!(
            "mesh did not start: {e}\n--- proxy node-a ---\n{}",
            bed.log_tail("proxy/node-a", 25)
        );
    }
    bed
}

/// The NodePort of the shop's `web` Service.
pub const WEB_NODE_PORT: u16 = 30080;

/// The shop's AuthorizationPolicies.
pub fn shop_policies() -> Vec<Value> {
    let policy = |name: &str, spec: Value| {
        json!({
            "apiVersion": "security.nodemesh.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": spec,
        })
    };
    vec![
        policy(
            "web-allow-frontend",
            json!({
                "selector": {"matchLabels": {"app": "web"}},
                "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]}],
            }),
        ),
        policy(
            "web-deny-admin",
            json!({
                "selector": {"matchLabels": {"app": "web"}},
                "action": "DENY",
                "rules": [{"to": [{"operation": {"methods": ["POST"], "paths": ["/admin", "/admin/*"]}}]}],
            }),
        ),
        policy(
            "db-allow-web",
            json!({
                "selector": {"matchLabels": {"app": "db"}},
                "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/web"]}}]}],
            }),
        ),
    ]
}

/// What a step showed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What the step does.
    pub step: String,
    /// Whether everything behaved.
    pub ok: bool,
    /// What was seen (one line per fact).
    pub details: Vec<String>,
}

impl Outcome {
    /// A step that has seen nothing wrong yet.
    pub fn new(step: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            ok: true,
            details: Vec::new(),
        }
    }

    /// Records a fact that must hold.
    pub fn check(&mut self, holds: bool, what: impl Into<String>) {
        let what = what.into();
        self.details
            .push(format!("{} {what}", if holds { "ok  " } else { "FAIL" }));
        self.ok &= holds;
    }

    fn note(&mut self, what: impl Into<String>) {
        self.details.push(format!("     {}", what.into()));
    }
}

/// Panics (for tests) unless `outcome` is ok, with its details and the proxies' last log lines.
pub fn assert_ok(bed: &Testbed, outcome: &Outcome) {
    assert!(
        outcome.ok,
        "step failed: {}\n{}\n--- proxy node-a ---\n{}\n--- proxy node-b ---\n{}",
        outcome.step,
        outcome.details.join("\n"),
        bed.log_tail("proxy/node-a", 25),
        bed.log_tail("proxy/node-b", 25),
    );
}

/// A marker unique to the run, put in request paths and bodies so the underlay capture can
/// show it never crossed in plaintext.
pub fn marker(bed: &Testbed, what: &str) -> String {
    format!("NMMARK-{}-{what}", bed.prefix())
}

/// Calls `target` over HTTP from inside `pod`.
pub fn call(
    bed: &Testbed,
    pod: &str,
    target: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Result<apps::Reply, CallError>, TestbedError> {
    let (method, path, body) = (method.to_owned(), path.to_owned(), body.as_bytes().to_vec());
    bed.pod(pod)?
        .block_on(async move { apps::http(target, &method, &path, body, CALL_TIMEOUT).await })
}

/// The `web` Service's address.
pub fn web_vip(bed: &Testbed) -> Result<SocketAddr, TestbedError> {
    let web = bed
        .plan()
        .service("web")
        .ok_or_else(|| TestbedError::Spec("no Service \"web\"".into()))?;
    Ok(SocketAddr::from((web.vip, web.port)))
}

/// `pod:8080`.
pub fn pod_http(bed: &Testbed, pod: &str) -> Result<SocketAddr, TestbedError> {
    Ok(SocketAddr::from((bed.pod_ip(pod)?, HTTP_PORT)))
}

/// The newest flow record of `node` matching `pred`, waiting briefly for it to be written.
pub fn find_flow(bed: &Testbed, node: &str, pred: impl Fn(&Value) -> bool) -> Option<Value> {
    for _ in 0..40 {
        if let Some(found) = bed.flow_log(node).into_iter().rev().find(|r| pred(r)) {
            return Some(found);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

fn path_of(r: &Value) -> &str {
    r["path"].as_str().unwrap_or_default()
}

/// Step: frontend-a calls the `web` Service VIP across nodes and gets web-b's answer; node-b's
/// flow log names both SPIFFE identities.
pub fn allowed_via_service(bed: &Testbed) -> Result<Outcome, TestbedError> {
    let mut out = Outcome::new("frontend-a -> web Service VIP (node-a -> node-b) is allowed");
    let path = format!("/?m={}", marker(bed, "allowed"));
    let vip = web_vip(bed)?;
    match call(bed, "frontend-a", vip, "GET", &path, "")? {
        Ok(reply) => {
            out.check(
                reply.status == 200,
                format!("GET {vip}/ answered {}", reply.status),
            );
            out.check(
                reply.field("pod") == Some("web-b"),
                format!("served by {}", reply.field("pod").unwrap_or("?")),
            );
        }
        Err(e) => out.check(false, format!("GET {vip}/: {e}")),
    }
    let record = find_flow(bed, "node-b", |r| {
        r["direction"] == "inbound" && path_of(r) == path
    });
    match record {
        Some(r) => {
            let src = r["src"]["identity"].as_str().unwrap_or("?").to_owned();
            let dst = r["dst"]["identity"].as_str().unwrap_or("?").to_owned();
            out.check(
                src == "spiffe://cluster.local/ns/shop/sa/frontend",
                format!("node-b flow log: source {src}"),
            );
            out.check(
                dst == "spiffe://cluster.local/ns/shop/sa/web",
                format!("node-b flow log: destination {dst}"),
            );
        }
        None => out.check(false, "node-b flow log has the request"),
    }
    // kube-proxy's DNAT did not touch the captured call: the outbound side saw the VIP.
    let outbound = find_flow(bed, "node-a", |r| {
        r["direction"] == "outbound" && r["service"] == "web.shop"
    });
    out.check(
        outbound.is_some(),
        "node-a flow log: the outbound connection names the Service web.shop",
    );
    Ok(out)
}

/// Step: L7 policy in the node proxy: `POST /admin` is denied with 403, `GET /` allowed.
pub fn l7_deny(bed: &Testbed) -> Result<Outcome, TestbedError> {
    let mut out = Outcome::new("L7: POST /admin is denied (403), GET / is allowed (200)");
    let vip = web_vip(bed)?;
    let body = marker(bed, "admin-body");
    match call(bed, "frontend-a", vip, "POST", "/admin", &body)? {
        Ok(reply) => out.check(
            reply.status == 403,
            format!("POST /admin answered {}", reply.status),
        ),
        Err(e) => out.check(false, format!("POST /admin: {e}")),
    }
    match call(bed, "frontend-a", vip, "GET", "/", "")? {
        Ok(reply) => out.check(
            reply.status == 200,
            format!("GET / answered {}", reply.status),
        ),
        Err(e) => out.check(false, format!("GET /: {e}")),
    }
    let record = find_flow(bed, "node-b", |r| {
        r["method"] == "POST" && path_of(r) == "/admin"
    });
    match record {
        Some(r) => out.check(
            r["verdict"] == "deny" && r["policy"] == "shop/web-deny-admin",
            format!(
                "node-b flow log: verdict {} by {}",
                r["verdict"], r["policy"]
            ),
        ),
        None => out.check(false, "node-b flow log has the denied request"),
    }
    Ok(out)
}

/// Step: frontend may not call db at all: the connection is refused before any HTTP.
pub fn l4_deny(bed: &Testbed) -> Result<Outcome, TestbedError> {
    let mut out = Outcome::new("L4: frontend-a -> db-b is refused (only web may call db)");
    let db = pod_http(bed, "db-b")?;
    let path = format!("/?m={}", marker(bed, "l4"));
    match call(bed, "frontend-a", db, "GET", &path, "")? {
        Ok(reply) => out.check(false, format!("db-b answered {} (must not)", reply.status)),
        Err(e) => out.check(true, format!("no answer: {e}")),
    }
    let record = find_flow(bed, "node-b", |r| {
        r["direction"] == "inbound" && r["dst"]["workload"] == "db-b" && r["verdict"] == "deny"
    });
    match record {
        Some(r) => out.check(
            r["src"]["identity"] == "spiffe://cluster.local/ns/shop/sa/frontend",
            format!(
                "node-b flow log: deny {} -> {}",
                r["src"]["identity"], r["dst"]["identity"]
            ),
        ),
        None => out.check(false, "node-b flow log has the denied connection"),
    }
    Ok(out)
}

/// Step: a pod outside the mesh may not talk plaintext to a STRICT mesh pod.
pub fn strict_refuses_plaintext(bed: &Testbed) -> Result<Outcome, TestbedError> {
    let mut out = Outcome::new("STRICT mTLS: legacy-a (not in the mesh) -> web-b is refused");
    let web = pod_http(bed, "web-b")?;
    match call(bed, "legacy-a", web, "GET", "/", "")? {
        Ok(reply) => out.check(false, format!("web-b answered {} (must not)", reply.status)),
        Err(e) => out.check(true, format!("no answer: {e}")),
    }
    let record = find_flow(bed, "node-b", |r| r["reason"] == "strict_mtls");
    out.check(
        record.is_some(),
        "node-b flow log: refused, reason strict_mtls",
    );
    Ok(out)
}

/// Step: mesh traffic to a non-mesh pod passes through as plain TCP and is flow-logged.
pub fn passthrough_to_non_mesh(bed: &Testbed) -> Result<Outcome, TestbedError> {
    let mut out = Outcome::new("frontend-a -> legacy-b (outside the mesh) passes as plain TCP");
    let legacy = pod_http(bed, "legacy-b")?;
    match call(bed, "frontend-a", legacy, "GET", "/", "")? {
        Ok(reply) => out.check(
            reply.status == 200,
            format!("legacy-b answered {}", reply.status),
        ),
        Err(e) => out.check(false, format!("legacy-b: {e}")),
    }
    let record = find_flow(bed, "node-a", |r| {
        r["verdict"] == "passthrough" && r["dst"]["ip"] == legacy.ip().to_string()
    });
    out.check(record.is_some(), "node-a flow log: verdict passthrough");
    Ok(out)
}

/// Sends `marker` in plaintext from node-a to node-b's underlay address (UDP), so a capture can
/// prove it sees payloads.
pub fn send_control(bed: &Testbed, marker: &str) -> Result<(), TestbedError> {
    let to = SocketAddr::from((bed.plan().nodes[1].address, 9));
    let payload = marker.as_bytes().to_vec();
    bed.node(&bed.plan().nodes[0].name)?
        .run(move || std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.send_to(&payload, to)))?
        .map(drop)
        .map_err(|source| TestbedError::Netns {
            netns: "node".into(),
            what: "send the control datagram",
            source,
        })
}

/// Step: the underlay carried the mesh calls only as TLS: no mesh marker in any frame, HBONE
/// frames (TCP 15008) present, and the control marker (plaintext on purpose) seen, which proves
/// the capture sees payloads.
pub fn underlay_encrypted(
    captured: &crate::packets::Captured,
    control: &str,
    mesh_markers: &[String],
) -> Outcome {
    use crate::packets::Transport;
    let mut out = Outcome::new("the underlay saw only TLS for mesh traffic");
    out.note(format!(
        "{} frames captured on the underlay bridge",
        captured.len()
    ));
    out.check(
        !captured.containing(control.as_bytes()).is_empty(),
        "control: a plaintext datagram between the nodes is visible in the capture",
    );
    let hbone = captured
        .ipv4()
        .filter(|f| {
            matches!(
                f.transport,
                Transport::Tcp(15008, _) | Transport::Tcp(_, 15008)
            )
        })
        .count();
    out.check(
        hbone > 0,
        format!("{hbone} HBONE frames (TCP port 15008, TLS)"),
    );
    for m in mesh_markers {
        let seen = captured.containing(m.as_bytes());
        out.check(
            seen.is_empty(),
            format!("marker {m} never in plaintext ({} frames)", seen.len()),
        );
    }
    out
}

/// Step: with node-b's proxy stopped by `signal`, calls to node-b's mesh pods fail and nothing
/// crosses in plaintext; after a restart they work again.
pub fn proxy_down_fails_closed(
    bed: &mut Testbed,
    signal: nix::sys::signal::Signal,
) -> Result<Vec<Outcome>, TestbedError> {
    let mut down = Outcome::new(format!(
        "node-b proxy stopped ({signal}): calls fail closed"
    ));
    let ended = bed.stop_proxy("node-b", signal)?;
    down.note(format!("proxy exited: {ended}"));
    let rules = bed.node("node-b")?.exec(&["ip", "rule", "show"])?;
    down.check(
        rules.contains("lookup 133"),
        "capture rules stay in place (ip rule ... lookup 133)",
    );
    let capture = bed.capture_underlay()?;
    let m = marker(bed, "down");
    let vip = web_vip(bed)?;
    let quick = Duration::from_secs(2);
    let path = format!("/?m={m}");
    let calls = [
        ("frontend-a", vip, "via the Service"),
        (
            "legacy-a",
            pod_http(bed, "web-b")?,
            "plaintext from outside the mesh",
        ),
    ];
    for (pod, target, how) in calls {
        let path = path.clone();
        let reply = bed
            .pod(pod)?
            .block_on(async move { apps::http(target, "GET", &path, Vec::new(), quick).await })?;
        match reply {
            Ok(r) => down.check(
                false,
                format!("{pod} -> {target} ({how}) answered {}", r.status),
            ),
            Err(e) => down.check(true, format!("{pod} -> {target} ({how}): {e}")),
        }
    }
    let captured = capture.finish()?;
    down.check(
        captured.containing(m.as_bytes()).is_empty(),
        "nothing crossed the underlay in plaintext",
    );
    let mut up = Outcome::new("node-b proxy restarted: calls work again");
    bed.restart_proxy("node-b")?;
    match call(bed, "frontend-a", vip, "GET", "/", "")? {
        Ok(r) => up.check(r.status == 200, format!("GET {vip}/ answered {}", r.status)),
        Err(e) => up.check(false, format!("GET {vip}/: {e}")),
    }
    Ok(vec![down, up])
}

/// Step (with WireGuard on): what HBONE does not carry — UDP, ICMP and TCP of pods outside the
/// mesh — still crosses between nodes, and the underlay shows it only as WireGuard (UDP 51820):
/// no frame with a pod address, no marker.
pub fn wireguard_carries_the_rest(bed: &Testbed) -> Result<Outcome, TestbedError> {
    use crate::packets::Transport;
    let mut out =
        Outcome::new("UDP, ping and non-mesh TCP between nodes cross only inside WireGuard");
    let capture = bed.capture_underlay()?;
    let m = marker(bed, "wireguard");
    let udp_target = SocketAddr::from((bed.pod_ip("web-b")?, apps::ECHO_PORT));
    let payload = m.clone().into_bytes();
    let back = bed
        .pod("frontend-a")?
        .block_on(async move { apps::udp_echo(udp_target, &payload, CALL_TIMEOUT).await })?;
    match back {
        Ok(b) => out.check(
            b == m.as_bytes(),
            format!("UDP echo frontend-a -> {udp_target}"),
        ),
        Err(e) => out.check(false, format!("UDP echo frontend-a -> {udp_target}: {e}")),
    }
    let web_ip = bed.pod_ip("web-b")?.to_string();
    let ping = bed.pod("frontend-a")?.exec(&[
        "ping",
        "-c",
        "2",
        "-i",
        "0.2",
        "-W",
        "2",
        "-p",
        "4e4d4d41524b",
        &web_ip,
    ]);
    out.check(ping.is_ok(), format!("ping frontend-a -> {web_ip}"));
    let legacy = pod_http(bed, "legacy-b")?;
    let path = format!("/?m={m}");
    match call(bed, "legacy-a", legacy, "GET", &path, "")? {
        Ok(r) => out.check(
            r.status == 200,
            format!("legacy-a -> legacy-b plain TCP answered {}", r.status),
        ),
        Err(e) => out.check(false, format!("legacy-a -> legacy-b plain TCP: {e}")),
    }
    let captured = capture.finish()?;
    let pods: Vec<std::net::Ipv4Addr> = bed
        .plan()
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|p| p.ip))
        .collect();
    let bare = captured
        .ipv4()
        .filter(|f| pods.contains(&f.src) || pods.contains(&f.dst))
        .filter(|f| {
            !matches!(
                f.transport,
                Transport::Tcp(15008, _) | Transport::Tcp(_, 15008)
            )
        })
        .count();
    out.check(
        bare == 0,
        format!("{bare} frames to or from a pod outside WireGuard (HBONE aside)"),
    );
    let wg = captured
        .ipv4()
        .filter(|f| {
            matches!(
                f.transport,
                Transport::Udp(51820, _) | Transport::Udp(_, 51820)
            )
        })
        .count();
    out.check(
        wg > 0,
        format!("{wg} WireGuard frames (UDP 51820) between the nodes"),
    );
    out.check(
        captured.containing(m.as_bytes()).is_empty(),
        format!("marker {m} never in plaintext"),
    );
    Ok(out)
}
