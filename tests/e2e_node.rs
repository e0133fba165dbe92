//! Root tier: the mesh on a testbed that looks like a real node — kube-proxy's Service rules on
//! every node (iptables mode with the iptables capture backend, nftables mode with the nftables
//! backend), a pod outside the mesh next to mesh pods, Services whose endpoints are not pods (the
//! API server on the underlay, a hostNetwork server on each node), a metadata server on every
//! node. Every test runs once per capture backend; with `NODEMESH_E2E=1` a missing privilege or
//! tool is a failure.
#![allow(clippy::unwrap_used)] // Test code: a panic is a failed test.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nodemesh_redirect::Backend;
use nodemesh_testbed::{ClusterSpec, MeshOptions, Netns, Testbed, apps, real_node, scenario};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");

fn options(backend: Backend) -> MeshOptions {
    let mut opts = MeshOptions::new(BINARY);
    opts.backend = backend;
    opts
}

fn mesh(spec: ClusterSpec, backend: Backend) -> Testbed {
    let mut bed = Testbed::build(spec).unwrap();
    if let Err(e) = bed.start_mesh(&options(backend)) {
        panic!("mesh did not start: {e}");
    }
    bed
}

/// Measured before the fix: with kube-proxy's rules, a captured SYN to a ClusterIP was DNAT'd
/// anyway (nat runs after mangle), the client's ACK still carried the VIP, and 10 of 10 calls
/// timed out. Now ten calls to the VIP succeed with the Service named in node-a's outbound
/// flow log; a NodePort from a mesh pod goes through mTLS; endpoints that are not pods are
/// passthrough and an undeclared VIP port is refused.
fn service_calls_work_with_kube_proxy(backend: Backend) {
    if !nodemesh_test_support::root_tier("service_calls_work_with_kube_proxy", backend.tools()) {
        return;
    }
    let bed = mesh(scenario::shop_for(backend), backend);
    let vip = scenario::web_vip(&bed).unwrap();
    for i in 0..10 {
        let reply = scenario::call(&bed, "frontend-a", vip, "GET", "/", "")
            .unwrap()
            .unwrap_or_else(|e| panic!("call {i} to {vip}: {e}"));
        assert_eq!(reply.status, 200);
    }
    for step in [
        scenario::allowed_via_service,
        real_node::mesh_pod_calls_a_node_port,
        real_node::endpoints_outside_the_mesh,
    ] {
        scenario::assert_ok(&bed, &step(&bed).unwrap());
    }
}

/// kube-proxy DNATs a ClusterIP or NodePort call from legacy-b (outside the mesh) to web-b on
/// the same node after capture has looked at it. STRICT: refused either way. PERMISSIVE: the
/// nftables backend captures it after DNAT and checks it against policy (the shop's policies
/// deny a caller without identity; with none loaded it is allowed), flow-logged as inbound
/// plaintext; the iptables backend cannot TPROXY after DNAT and drops it (SECURITY.md).
fn dnat_to_a_mesh_pod_is_captured_or_refused(backend: Backend) {
    if !nodemesh_test_support::root_tier(
        "dnat_to_a_mesh_pod_is_captured_or_refused",
        backend.tools(),
    ) {
        return;
    }
    let bed = mesh(scenario::shop_for(backend), backend);
    scenario::assert_ok(
        &bed,
        &real_node::dnat_to_a_local_mesh_pod_is_refused(&bed, backend).unwrap(),
    );
    drop(bed);

    let mut spec = scenario::shop_for(backend);
    let shop = spec
        .namespaces
        .iter_mut()
        .find(|n| n.name == "shop")
        .unwrap();
    shop.labels
        .insert("nodemesh.io/mtls-mode".into(), "permissive".into());
    let mut bed = mesh(spec, backend);
    let vip = scenario::web_vip(&bed).unwrap();
    let legacy = bed.pod_ip("legacy-b").unwrap().to_string();
    let by_legacy =
        |r: &serde_json::Value| r["direction"] == "inbound" && r["src"]["ip"] == legacy.as_str();
    let denied = scenario::call(&bed, "legacy-b", vip, "GET", "/?permissive=policy", "").unwrap();
    assert!(
        !denied.as_ref().is_ok_and(|r| r.status == 200),
        "the shop's policies let only frontend reach web: {denied:?}"
    );
    if backend == Backend::Nftables {
        let record =
            scenario::find_flow(&bed, "node-b", |r| by_legacy(r) && r["verdict"] == "deny");
        assert!(
            record.is_some(),
            "node-b flow log: legacy-b denied by policy after DNAT"
        );
    }
    bed.set_policies(Vec::new()).unwrap();
    // The proxies reload the file within a second or so.
    let deadline = Instant::now() + Duration::from_secs(10);
    let allowed = loop {
        let answer =
            scenario::call(&bed, "legacy-b", vip, "GET", "/?permissive=allow", "").unwrap();
        let done = answer.as_ref().is_ok_and(|r| r.status == 200) || backend == Backend::Iptables;
        if done || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    match backend {
        Backend::Nftables => {
            let reply = allowed.unwrap();
            assert_eq!((reply.status, reply.field("pod")), (200, Some("web-b")));
            let record =
                scenario::find_flow(&bed, "node-b", |r| by_legacy(r) && r["verdict"] == "allow");
            let record = record.expect("node-b flow log: legacy-b allowed as inbound plaintext");
            assert_eq!(record["src"]["workload"], "legacy-b", "{record}");
        }
        Backend::Iptables => assert!(allowed.is_err(), "the forward guard drops it: {allowed:?}"),
    }
}

/// `TcpExtTCPSynRetrans` of a namespace, from its `/proc/net/netstat`.
fn syn_retransmits(ns: &Netns) -> u64 {
    let text = ns.exec(&["cat", "/proc/net/netstat"]).unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPSynRetrans")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap()
}

/// The capture's socket rule used to match a new SYN that hit one of the proxy's TIME_WAIT
/// sockets, which accepted it without TPROXY; it found no listener and the client retried a
/// second later. batch-a makes 5,000 sequential HTTP/1.1 `Connection: close` calls to
/// frontend-a (the server closes first, so the proxy's sockets end in TIME_WAIT) from a
/// 100-port range, so nearly every SYN reuses a 4-tuple the proxy holds in TIME_WAIT: zero
/// retransmitted SYNs.
fn new_connections_do_not_stall_on_time_wait(backend: Backend) {
    if !nodemesh_test_support::root_tier(
        "new_connections_do_not_stall_on_time_wait",
        backend.tools(),
    ) {
        return;
    }
    let bed = mesh(scenario::shop_for(backend), backend);
    let client = bed.pod("batch-a").unwrap().clone();
    client
        .sysctl("net.ipv4.ip_local_port_range", "40000 40099")
        .unwrap();
    let target = scenario::pod_http(&bed, "frontend-a").unwrap();
    let before = syn_retransmits(&client);
    let started = Instant::now();
    let done = client
        .run(move || -> Result<usize, String> {
            for i in 0..5_000 {
                let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    .map_err(|e| format!("connection {i}: {e}"))?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: frontend\r\nConnection: close\r\n\r\n")
                    .map_err(|e| format!("connection {i}: write: {e}"))?;
                let mut reply = Vec::new();
                stream
                    .read_to_end(&mut reply)
                    .map_err(|e| format!("connection {i}: read: {e}"))?;
                if !reply.starts_with(b"HTTP/1.1 200") {
                    return Err(format!(
                        "connection {i}: {}",
                        String::from_utf8_lossy(&reply)
                    ));
                }
                if i % 250 == 249 && started.elapsed() > Duration::from_secs(120) {
                    return Err(format!("only {i} connections in 120 s: stalls"));
                }
            }
            Ok(5_000)
        })
        .unwrap();
    let retransmits = syn_retransmits(&client) - before;
    assert_eq!(done, Ok(5_000));
    assert_eq!(
        retransmits,
        0,
        "retransmitted SYNs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Only SYNs are diverted, so once a captured flow's proxy socket is gone (crash, reset) the
/// flow's later segments used to be routed to the real destination — in plaintext across the
/// underlay. Here node-a's proxy is SIGKILLed while frontend-a streams to web-b, then a data
/// segment of that flow is sent from frontend-a by hand: the forward guard drops both, and no
/// byte of the stream's marker crosses the underlay in plaintext.
fn a_killed_proxy_leaks_no_in_flight_plaintext(backend: Backend) {
    if !nodemesh_test_support::root_tier(
        "a_killed_proxy_leaks_no_in_flight_plaintext",
        backend.tools(),
    ) {
        return;
    }
    let mut bed = mesh(scenario::shop_for(backend), backend);
    let marker = scenario::marker(&bed, "in-flight");
    let target = SocketAddr::from((bed.pod_ip("web-b").unwrap(), apps::ECHO_PORT));
    let capture = bed.capture_underlay().unwrap();
    let client = bed.pod("frontend-a").unwrap().clone();
    let payload = marker.clone().into_bytes();
    let upload = client
        .spawn(move || {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
            let local = stream.local_addr().unwrap();
            stream
                .set_write_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let until = Instant::now() + Duration::from_secs(3);
            let mut sent = 0usize;
            while Instant::now() < until {
                match stream.write(&payload) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (local, sent)
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    bed.stop_proxy("node-a", Signal::SIGKILL).unwrap();
    let (local, sent) = upload.join().unwrap();
    assert!(sent > 0, "the upload started");
    let SocketAddr::V4(local) = local else {
        panic!("{local}")
    };
    let SocketAddr::V4(target) = target else {
        panic!("{target}")
    };
    let frontend = bed.pod("frontend-a").unwrap().clone();
    for seq in 0..5u32 {
        frontend
            .inject_tcp(local, target, 1_000_000 + seq * 100, marker.as_bytes())
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let captured = capture.finish().unwrap();
    assert!(captured.complete(), "the capture kept up");
    assert!(
        !captured.contains(marker.as_bytes()),
        "in-flight bytes of a captured flow crossed the underlay in plaintext: {:?}",
        captured.containing(marker.as_bytes())
    );
}

/// An AuthorizationPolicy on web allowing only `ipBlocks`.
fn allow_ip_block(block: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "security.nodemesh.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "web-by-ip", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"ipBlocks": [block]}}]}],
        },
    })
}

/// Outbound connections used to leave from the node's address. Now HBONE to the peer proxy
/// leaves from the client pod's IP (the underlay shows port-15008 frames from frontend-a's IP and
/// none from node-a's), the cloud metadata server and a pod outside the mesh see frontend-a's IP
/// as the peer, and on the far side an `ipBlocks` ALLOW for the pod's IP admits it while one for
/// node-a's address does not.
fn traffic_leaves_from_the_pod(backend: Backend) {
    if !nodemesh_test_support::root_tier("traffic_leaves_from_the_pod", backend.tools()) {
        return;
    }
    let mut bed = mesh(scenario::shop_for(backend), backend);
    let frontend = bed.pod_ip("frontend-a").unwrap();
    let node_a = bed.plan().node("node-a").unwrap().address;
    let peer_of = |bed: &Testbed, target: SocketAddr| {
        let reply = scenario::call(bed, "frontend-a", target, "GET", "/", "")
            .unwrap()
            .unwrap_or_else(|e| panic!("{target}: {e}"));
        let peer: SocketAddr = reply.field("peer").unwrap().parse().unwrap();
        peer.ip()
    };
    let metadata = SocketAddr::from((nodemesh_testbed::METADATA, 80));
    assert_eq!(
        peer_of(&bed, metadata),
        frontend,
        "the metadata server's view"
    );
    let legacy = scenario::pod_http(&bed, "legacy-b").unwrap();
    assert_eq!(peer_of(&bed, legacy), frontend, "a pod outside the mesh");

    let capture = bed.capture_underlay().unwrap();
    let vip = scenario::web_vip(&bed).unwrap();
    let reply = scenario::call(&bed, "frontend-a", vip, "GET", "/", "")
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
    let captured = capture.finish().unwrap();
    let web = bed.pod_ip("web-b").unwrap();
    let hbone = |from| {
        captured
            .between(from, web)
            .iter()
            .filter(|(t, _)| matches!(t, nodemesh_testbed::Transport::Tcp(_, 15008)))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    assert!(hbone(frontend) > 0, "HBONE frames from frontend-a's IP");
    assert_eq!(hbone(node_a), 0, "HBONE frames from node-a's address");

    bed.set_policies(vec![allow_ip_block(&format!("{frontend}/32"))])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let reply = scenario::call(&bed, "frontend-a", vip, "GET", "/", "")
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200, "ipBlocks of the pod's IP admits it");
    bed.set_policies(vec![allow_ip_block(&format!("{node_a}/32"))])
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let refused = scenario::call(&bed, "frontend-a", vip, "GET", "/", "").unwrap();
    assert!(
        !refused.as_ref().is_ok_and(|r| r.status == 200),
        "ipBlocks of the node's address must not admit the pod: {refused:?}"
    );
}

/// `insert_failed` of `conntrack -S` in a namespace, summed over CPUs.
fn conntrack_insert_failed(ns: &Netns) -> u64 {
    let text = ns.exec(&["conntrack", "-S"]).unwrap();
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("insert_failed="))
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

/// A transparent bind to the pod's IP could collide with the captured flow's own conntrack
/// entry (same pod IP, same destination). 10,000 passthrough connections, 200 at a time, from
/// one pod to one ip:port (legacy-b's echo) complete, with no conntrack insert failure on
/// either node.
fn pod_source_binds_do_not_collide_in_conntrack(backend: Backend) {
    if !nodemesh_test_support::root_tier(
        "pod_source_binds_do_not_collide_in_conntrack",
        backend.tools(),
    ) {
        return;
    }
    let bed = mesh(scenario::shop_for(backend), backend);
    let nodes = ["node-a", "node-b"].map(|n| bed.node(n).unwrap().clone());
    let before = nodes.each_ref().map(conntrack_insert_failed);
    let target = SocketAddr::from((bed.pod_ip("legacy-b").unwrap(), apps::ECHO_PORT));
    let failures = bed
        .pod("frontend-a")
        .unwrap()
        .block_on(async move {
            let mut failures = Vec::new();
            for round in 0..50 {
                let calls = (0..200).map(|i| async move {
                    let payload = format!("{round}-{i}");
                    let back =
                        apps::echo(target, payload.as_bytes(), Duration::from_secs(10)).await;
                    match back {
                        Ok(b) if b == payload.as_bytes() => None,
                        other => Some(format!("{payload}: {other:?}")),
                    }
                });
                failures.extend(
                    futures_util::future::join_all(calls)
                        .await
                        .into_iter()
                        .flatten(),
                );
            }
            failures
        })
        .unwrap();
    assert!(
        failures.is_empty(),
        "{} of 10,000 failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let after = nodes.each_ref().map(conntrack_insert_failed);
    assert_eq!(after, before, "conntrack insert_failed on node-a, node-b");
}

/// A TCP connect from `from`'s namespace to `to`, within two seconds: whether it connected.
fn tcp_connects(from: &Netns, to: SocketAddr) -> bool {
    from.run(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok())
        .unwrap()
}

/// A UDP datagram from `from` to `to` and back from an echo in `at`: whether it came back.
fn udp_echoes(from: &Netns, at: &Netns, to: SocketAddr) -> bool {
    let echo = at
        .spawn(move || {
            let socket = std::net::UdpSocket::bind(to).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let mut buf = [0u8; 64];
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], peer);
            }
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let back = from
        .run(move || {
            let socket = std::net::UdpSocket::bind("[::]:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            socket.send_to(b"ping", to).unwrap();
            let mut buf = [0u8; 64];
            socket
                .recv_from(&mut buf)
                .is_ok_and(|(n, _)| &buf[..n] == b"ping")
        })
        .unwrap();
    echo.join().unwrap();
    back
}

/// A TCP listener on `[::]:port` in `ns` that accepts until the test ends.
fn listen6(ns: &Netns, port: u16) {
    let listener = ns
        .run(move || std::net::TcpListener::bind(("::", port)).unwrap())
        .unwrap();
    std::thread::spawn(move || for _ in listener.incoming() {});
}

/// `node`'s proxy metrics (`GET /metrics` on 15020 inside the node's namespace).
fn metrics(bed: &Testbed, node: &str) -> String {
    bed.node(node)
        .unwrap()
        .run(|| {
            let mut s = TcpStream::connect(("127.0.0.1", 15020)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            text
        })
        .unwrap()
}

/// The value of the unlabelled metric `name` in a Prometheus text page.
fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// nodemesh meshes IPv4; on a dual-stack node a mesh pod's IPv6 address was a way around mTLS
/// and policy (every packet was forwarded in plaintext). Now IPv6 forwarded to or from a mesh
/// pod is dropped — TCP and UDP, across nodes and on the same node — counted in
/// `nodemesh_ipv6_dropped_packets_total` and logged once; IPv6 between pods outside the mesh
/// still works (so the testbed's IPv6 does), and so does the mesh over IPv4.
fn ipv6_of_mesh_pods_is_dropped_and_counted(backend: Backend) {
    if !nodemesh_test_support::root_tier(
        "ipv6_of_mesh_pods_is_dropped_and_counted",
        backend.tools(),
    ) {
        return;
    }
    let spec = ClusterSpec {
        dual_stack: true,
        ..scenario::shop_for(backend)
    };
    let bed = mesh(spec, backend);
    let pod = |name: &str| bed.pod(name).unwrap().clone();
    let v6 = |name: &str, port: u16| SocketAddr::from((bed.pod_ip6(name).unwrap(), port));
    for name in ["web-b", "legacy-b", "frontend-a"] {
        listen6(&pod(name), 7600);
    }
    assert!(
        tcp_connects(&pod("legacy-a"), v6("legacy-b", 7600)),
        "IPv6 between pods outside the mesh, across nodes"
    );
    assert!(
        udp_echoes(&pod("legacy-a"), &pod("legacy-b"), v6("legacy-b", 7601)),
        "UDP over IPv6 outside the mesh"
    );
    for (from, to) in [
        ("frontend-a", "web-b"),
        ("legacy-b", "web-b"),
        ("legacy-a", "web-b"),
        ("frontend-a", "legacy-b"),
        ("legacy-b", "frontend-a"),
    ] {
        assert!(
            !tcp_connects(&pod(from), v6(to, 7600)),
            "{from} -> {to} over IPv6 bypassed the mesh"
        );
    }
    assert!(
        !udp_echoes(&pod("legacy-a"), &pod("web-b"), v6("web-b", 7601)),
        "UDP over IPv6 to a mesh pod"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let dropped =
        |node: &str| metric_value(&metrics(&bed, node), "nodemesh_ipv6_dropped_packets_total");
    while dropped("node-b").unwrap_or(0.0) == 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        dropped("node-b").unwrap_or(0.0) > 0.0,
        "node-b counts the drops: {:?}",
        dropped("node-b")
    );
    let log = std::fs::read_to_string(bed.dir().join("proxy-node-b.log")).unwrap();
    let lines = log
        .matches("IPv6 traffic to or from mesh pods dropped")
        .count();
    assert_eq!(lines, 1, "one log line, however many drops:\n{log}");
    scenario::assert_ok(&bed, &scenario::allowed_via_service(&bed).unwrap());
}

nodemesh_test_support::per_backend!(
    ipv6_of_mesh_pods_is_dropped_and_counted,
    service_calls_work_with_kube_proxy,
    dnat_to_a_mesh_pod_is_captured_or_refused,
    new_connections_do_not_stall_on_time_wait,
    a_killed_proxy_leaks_no_in_flight_plaintext,
    traffic_leaves_from_the_pod,
    pod_source_binds_do_not_collide_in_conntrack,
);
