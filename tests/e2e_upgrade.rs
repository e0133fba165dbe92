//! Root tier: upgrading the node proxy in place (`nodemesh proxy` started again on a node whose
//! proxy runs: it takes the listening sockets over the handoff socket in the state directory).
//! On the real-node testbed (kube-proxy's rules, WireGuard inside the proxies), traffic runs
//! through both swaps — node-b's proxy (the server side) and then node-a's (the client side) —
//! and must not notice: an `iperf3 -t 30` transfer, a long-lived HTTP/2 request whose body
//! the server echoes chunk by chunk every 50 ms (h2c, carried by HBONE), a UDP echo carried by WireGuard every
//! 20 ms, and a client opening a new connection in a loop. The capture rules are never
//! touched and the old processes exit once their last connection ends. Every test runs once
//! per capture backend; with `NODEMESH_E2E=1` a missing privilege or tool is a failure.
#![allow(clippy::unwrap_used)] // Test code: a panic is a failed test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nodemesh_redirect::Backend;
use nodemesh_testbed::{MeshOptions, Netns, Testbed, apps, scenario};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");
const IPERF_PORT: &str = "5201";
/// How long the traffic runs; both swaps happen inside it.
const TRAFFIC: Duration = Duration::from_secs(30);
/// UDP echoes are sent this often; the loss budget is one second of them.
const UDP_INTERVAL: Duration = Duration::from_millis(20);

fn mesh(backend: Backend) -> Testbed {
    scenario::wireguard_mesh(scenario::shop_for_tcp(backend), BINARY, backend)
}

/// The node's capture rules as the tools print them, counters and comments left out: equal
/// before and after means nothing was removed, added or re-created (nft's handles change when
/// a rule is re-created).
fn capture_rules(node: &Netns, backend: Backend) -> String {
    let text = match backend {
        Backend::Iptables => node.exec(&["iptables-save"]).unwrap(),
        Backend::Nftables => node.exec(&["nft", "-a", "list", "ruleset"]).unwrap(),
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let l = match l.find(" counter packets ") {
                Some(at) => &l[..at],
                None => l,
            };
            // iptables chain headers carry counters: `:CHAIN ACCEPT [12:3400]`.
            match (l.starts_with(':'), l.rfind(" [")) {
                (true, Some(at)) => &l[..at],
                _ => l,
            }
            .to_owned()
        })
        .filter(|l| l.contains("nodemesh") || l.contains("NODEMESH") || l.contains("tproxy"))
        // The network-policy firewall is not capture: a new proxy replaces that table in one
        // transaction (same rules, new handle).
        .map(|l| {
            if l.starts_with("table inet nodemesh-netpol") {
                "table inet nodemesh-netpol".to_owned()
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// [`capture_rules`] once the proxy has installed them (its readiness does not wait for them):
/// the capture chains are present and two reads 200 ms apart agree.
fn settled_capture_rules(node: &Netns, backend: Backend) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = capture_rules(node, backend);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = capture_rules(node, backend);
        if now == last && now.contains("NODEMESH-PREROUTING") {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "capture rules of {} never settled:\n{now}",
            node.name()
        );
        last = now;
    }
}

/// What one traffic stream saw.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    failures: Vec<String>,
}

/// The port of the HTTP/2 echo server in web-b.
const H2_PORT: u16 = 9443;

/// Serves h2c (HTTP/2 with prior knowledge) on `listener` until `stop`: every request's body is
/// sent back as its response body, chunk by chunk as it arrives.
async fn h2_echo_server(listener: std::net::TcpListener, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((tcp, _))) =
            tokio::time::timeout(Duration::from_millis(100), listener.accept()).await
        else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut conn) = h2::server::handshake(tcp).await else {
                return;
            };
            while let Some(Ok((request, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    let Ok(mut send) = respond.send_response(http::Response::new(()), false) else {
                        return;
                    };
                    while let Some(Ok(chunk)) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        if send.send_data(chunk, false).is_err() {
                            return;
                        }
                    }
                    let _ = send.send_data(bytes::Bytes::new(), true);
                });
            }
        });
    }
}

/// Sends a numbered 64-byte DATA chunk every 50 ms on one long HTTP/2 request and checks that
/// each comes back on the response.
async fn long_stream(target: SocketAddr, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let opened = async {
        let tcp = tokio::net::TcpStream::connect(target).await?;
        let (client, conn) = h2::client::handshake(tcp)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let mut client = client.ready().await.map_err(std::io::Error::other)?;
        let request = http::Request::post(format!("http://{target}/echo"))
            .body(())
            .unwrap();
        let (response, send) = client
            .send_request(request, false)
            .map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>((response, send))
    };
    let (response, mut send) = match opened.await {
        Ok(opened) => opened,
        Err(e) => {
            seen.failures
                .push(format!("open the HTTP/2 stream to {target}: {e}"));
            return seen;
        }
    };
    let mut body: Option<h2::RecvStream> = None;
    let mut response = Some(response);
    let mut back = Vec::with_capacity(64);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut chunk = [b'.'; 64];
        chunk[..8].copy_from_slice(&i.to_be_bytes());
        back.clear();
        let step = async {
            send.send_data(bytes::Bytes::copy_from_slice(&chunk), false)
                .map_err(std::io::Error::other)?;
            if let Some(response) = response.take() {
                let response = response.await.map_err(std::io::Error::other)?;
                body = Some(response.into_body());
            }
            let Some(body) = body.as_mut() else {
                return Err(std::io::Error::other("no response body"));
            };
            while back.len() < chunk.len() {
                match body.data().await {
                    Some(Ok(data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        back.extend_from_slice(&data);
                    }
                    Some(Err(e)) => return Err(std::io::Error::other(e)),
                    None => return Err(std::io::Error::other("the response ended")),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(5), step).await {
            Ok(Ok(())) if back == chunk => seen.ok += 1,
            Ok(Ok(())) => seen.failures.push(format!("echo {i} came back different")),
            Ok(Err(e)) => {
                seen.failures.push(format!("echo {i}: {e}"));
                return seen;
            }
            Err(_) => {
                seen.failures.push(format!("echo {i}: no answer in 5 s"));
                return seen;
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = send.send_data(bytes::Bytes::new(), true);
    seen
}

/// What the UDP echo saw: datagrams sent, answered, and when the unanswered ones were sent.
struct Echoes {
    sent: u64,
    answered: u64,
    /// The spans of unanswered datagrams, in seconds since the first was sent.
    lost: Vec<(f32, f32)>,
}

/// Sends a numbered datagram every [`UDP_INTERVAL`] until `stop`.
async fn udp_stream(target: SocketAddr, stop: Arc<AtomicBool>) -> Echoes {
    let socket = Arc::new(tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap());
    socket.connect(target).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (socket, done) = (Arc::clone(&socket), Arc::clone(&done));
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Relaxed) {
                // An error (ICMP unreachable while a route is replaced) is one more loss.
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(100), socket.recv(&mut buf)).await
                    && n >= 8
                {
                    seen.insert(u64::from_be_bytes(buf[..8].try_into().unwrap()));
                }
            }
            seen
        })
    };
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(UDP_INTERVAL);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // A send may fail while the tunnel's route is being replaced: that datagram is lost.
        let _ = socket.send(&sent.to_be_bytes()).await;
        sent += 1;
    }
    // Late answers still count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let seen = receiver.await.unwrap();
    let at = |seq: u64| (seq as u128 * UDP_INTERVAL.as_millis()) as f32 / 1000.0;
    let mut lost: Vec<(f32, f32)> = Vec::new();
    let mut last_lost = None;
    for seq in (0..sent).filter(|s| !seen.contains(s)) {
        match (last_lost, lost.last_mut()) {
            (Some(prev), Some(span)) if prev + 1 == seq => span.1 = at(seq),
            _ => lost.push((at(seq), at(seq))),
        }
        last_lost = Some(seq);
    }
    Echoes {
        sent,
        answered: seen.len() as u64,
        lost,
    }
}

/// Opens a new HTTP connection to `target` every 50 ms.
/// Each failure is told with when its call started (seconds since the traffic began).
async fn new_connections(target: SocketAddr, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let at = start.elapsed().as_secs_f32();
        match apps::http(target, "GET", "/", Vec::new(), Duration::from_secs(5)).await {
            Ok(r) if r.status == 200 => seen.ok += 1,
            Ok(r) => seen
                .failures
                .push(format!("{at:.1} s: status {}", r.status)),
            Err(e) => seen.failures.push(format!("{at:.1} s: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

fn swap_keeps_every_connection(backend: Backend) {
    if !nodemesh_test_support::root_tier("swap_keeps_every_connection", backend.tools()) {
        return;
    }
    let mut bed = mesh(backend);
    let web = bed.pod_ip("web-b").unwrap();
    let web_ns = bed.pod("web-b").unwrap().clone();
    bed.start_process(
        "iperf/web-b",
        &web_ns,
        &["iperf3", "-s", "-1", "--forceflush", "-p", IPERF_PORT],
    )
    .unwrap();
    bed.await_log("iperf/web-b", "Server listening").unwrap();
    let h2_listener = web_ns
        .run(move || std::net::TcpListener::bind((web, H2_PORT)))
        .unwrap()
        .unwrap();
    let h2_stop = Arc::new(AtomicBool::new(false));
    let h2_server = {
        let stop = Arc::clone(&h2_stop);
        web_ns
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(h2_echo_server(h2_listener, stop))
            })
            .unwrap()
    };
    let nodes = ["node-a", "node-b"].map(|n| bed.node(n).unwrap().clone());
    let rules_before = nodes.clone().map(|n| settled_capture_rules(&n, backend));

    let client = bed.pod("frontend-a").unwrap().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let iperf = {
        let client = client.clone();
        let web = web.to_string();
        std::thread::spawn(move || {
            client.exec(&[
                "iperf3",
                "-c",
                &web,
                "-p",
                IPERF_PORT,
                "-t",
                &TRAFFIC.as_secs().to_string(),
                "-J",
            ])
        })
    };
    let echo = {
        let stop = Arc::clone(&stop);
        let target = SocketAddr::from((web, apps::ECHO_PORT));
        client.spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let udp = tokio::spawn(udp_stream(target, Arc::clone(&stop)));
                    let loop_ = tokio::spawn(new_connections(
                        SocketAddr::from((web, apps::HTTP_PORT)),
                        Arc::clone(&stop),
                    ));
                    let stream = long_stream(SocketAddr::from((web, H2_PORT)), stop).await;
                    (stream, udp.await.unwrap(), loop_.await.unwrap())
                })
        })
    }
    .unwrap();

    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    bed.upgrade_proxy("node-b", &[]).unwrap_or_else(|e| {
        panic!(
            "node-b's new proxy did not take over: {e}\n--- old ---\n{}",
            bed.log_tail("proxy/node-b/old", 30)
        )
    });
    let swapped_b = start.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    bed.upgrade_proxy("node-a", &[]).unwrap_or_else(|e| {
        panic!(
            "node-a's new proxy did not take over: {e}\n--- old ---\n{}",
            bed.log_tail("proxy/node-a/old", 30)
        )
    });
    let swapped_a = start.elapsed();
    assert!(
        swapped_a < TRAFFIC,
        "the swaps took {swapped_a:?}, past the traffic"
    );
    std::thread::sleep(TRAFFIC.saturating_sub(start.elapsed()) + Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (stream, udp, loop_) = echo.join().unwrap();
    let Echoes { sent, answered, .. } = udp;
    h2_stop.store(true, Ordering::Relaxed);
    h2_server.join().unwrap();
    let iperf = iperf.join().unwrap();

    for node in ["node-a", "node-b"] {
        let key = format!("proxy/{node}");
        assert!(
            bed.is_running(&key),
            "{node}'s new proxy exited after taking over\n{}",
            bed.log_tail(&key, 30)
        );
    }
    let logs = || {
        let refused: Vec<String> = ["node-a", "node-b"]
            .iter()
            .flat_map(|n| bed.flow_log(n))
            .filter(|r| r["verdict"] != "allow")
            .take(10)
            .map(|r| r.to_string())
            .collect();
        format!(
            "--- refused flows ---\n{}\n--- node-b old ---\n{}\n--- node-b new ---\n{}\n--- node-a old ---\n{}\n--- node-a new ---\n{}",
            refused.join("\n"),
            bed.log_tail("proxy/node-b/old", 20),
            bed.log_tail("proxy/node-b", 20),
            bed.log_tail("proxy/node-a/old", 20),
            bed.log_tail("proxy/node-a", 40)
        )
    };
    eprintln!(
        "long HTTP/2 stream {} ok {:?}; new connections {} ok {:?}; UDP {answered} of {sent}, \
         unanswered {:?} s; swaps at {:.1} s (node-b) and {:.1} s (node-a)",
        stream.ok,
        stream.failures,
        loop_.ok,
        loop_.failures,
        udp.lost,
        swapped_b.as_secs_f32(),
        swapped_a.as_secs_f32(),
    );
    let report = match &iperf {
        Ok(json) => serde_json::from_str::<serde_json::Value>(json).unwrap(),
        Err(e) => panic!("iperf3 failed across the swaps: {e}\n{}", logs()),
    };
    assert!(
        report.get("error").is_none(),
        "iperf3: {}\n{}",
        report["error"],
        logs()
    );
    let received = report["end"]["sum_received"]["bytes"].as_f64().unwrap();
    let seconds = report["end"]["sum_received"]["seconds"].as_f64().unwrap();
    eprintln!(
        "iperf3 across both swaps: {:.1} Gbit/s over {seconds:.1} s",
        received * 8.0 / seconds / 1e9
    );
    assert!(
        seconds >= TRAFFIC.as_secs_f64() - 1.0,
        "iperf3 ran {seconds} s"
    );
    assert!(
        // One echo per 50 ms plus its round trip: well over 200 in 30 s on a busy machine.
        stream.failures.is_empty() && stream.ok > 200,
        "long stream: {} echoes, failures {:?}\n{}",
        stream.ok,
        stream.failures,
        logs()
    );
    assert!(
        loop_.failures.is_empty() && loop_.ok > 100,
        "new connections: {} ok, failures {:?}\n{}",
        loop_.ok,
        loop_.failures,
        logs()
    );
    let lost = sent - answered;
    let budget = (Duration::from_secs(1).as_millis() / UDP_INTERVAL.as_millis()) as u64;
    eprintln!("UDP through WireGuard: {answered} of {sent} answered");
    assert!(
        lost <= budget,
        "{lost} of {sent} UDP echoes lost, more than one second's worth ({budget})\n{}",
        logs()
    );

    for node in ["node-a", "node-b"] {
        let old = format!("proxy/{node}/old");
        assert!(
            bed.await_exit(&old, Duration::from_secs(20)),
            "{node}'s old proxy still runs after its connections ended\n{}",
            bed.log_tail(&old, 20)
        );
    }
    let rules_after = nodes.clone().map(|n| capture_rules(&n, backend));
    assert_eq!(
        rules_before, rules_after,
        "the swaps touched the capture rules"
    );
    // The new proxies serve on: a fresh call to the Service across the mesh works.
    let vip = scenario::web_vip(&bed).unwrap();
    match scenario::call(&bed, "frontend-a", vip, "GET", "/", "").unwrap() {
        Ok(reply) => assert!(
            reply.status == 200 && reply.field("pod") == Some("web-b"),
            "after the swaps: {} from {:?}",
            reply.status,
            reply.field("pod")
        ),
        Err(e) => panic!("after the swaps, GET {vip}/ failed: {e}"),
    }
    drop(bed.stop_proxy("node-a", Signal::SIGTERM));
}

/// SIGKILL of the running proxy in the middle of a handoff (it has offered its sockets, the new
/// one has not accepted yet), then of the next old one while it drains after a handoff, with a
/// mesh client calling across the nodes in a loop throughout: calls may fail while a process
/// dies, but no call's marker ever crosses the underlay in plaintext, and the new proxy, which
/// holds the listening sockets either way, serves on.
fn a_kill_mid_swap_fails_closed(backend: Backend) {
    if !nodemesh_test_support::root_tier("a_kill_mid_swap_fails_closed", backend.tools()) {
        return;
    }
    let mut bed = Testbed::build(scenario::shop_for(backend)).unwrap();
    let mut opts = MeshOptions::new(BINARY);
    opts.backend = backend;
    bed.start_mesh(&opts).unwrap();
    let capture = bed.capture_underlay().unwrap();
    let m = scenario::marker(&bed, "swap");
    let target = scenario::pod_http(&bed, "web-b").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = {
        let (stop, path) = (Arc::clone(&stop), format!("/?m={m}"));
        bed.pod("frontend-a")
            .unwrap()
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move {
                        let mut seen = Seen::default();
                        while !stop.load(Ordering::Relaxed) {
                            let quick = Duration::from_secs(3);
                            match apps::http(target, "GET", &path, Vec::new(), quick).await {
                                Ok(r) if r.status == 200 => seen.ok += 1,
                                Ok(r) => seen.failures.push(format!("status {}", r.status)),
                                Err(e) => seen.failures.push(e.to_string()),
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        seen
                    })
            })
            .unwrap()
    };
    std::thread::sleep(Duration::from_secs(1));
    // Mid-handoff: the new process holds the sockets but has not said it accepts.
    bed.upgrade_proxy_until("node-b", &[], "taking over")
        .unwrap();
    let ended = bed
        .stop_process("proxy/node-b/old", Signal::SIGKILL)
        .unwrap();
    eprintln!("old proxy killed mid-handoff: {ended}");
    bed.await_log("proxy/node-b", "took over")
        .unwrap_or_else(|e| panic!("the new proxy did not carry on after the old one died: {e}"));
    std::thread::sleep(Duration::from_secs(2));
    // After a handoff, while the old one drains.
    bed.upgrade_proxy("node-b", &[]).unwrap();
    bed.stop_process("proxy/node-b/old", Signal::SIGKILL)
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let seen = calls.join().unwrap();
    let captured = capture.finish().unwrap();
    eprintln!(
        "calls across the kills: {} ok, {} failed {:?}",
        seen.ok,
        seen.failures.len(),
        seen.failures
    );
    assert!(seen.ok > 20, "only {} calls went through", seen.ok);
    let plain = captured.containing(m.as_bytes());
    assert!(
        plain.is_empty(),
        "{} frames carried the marker in plaintext across the underlay",
        plain.len()
    );
    match scenario::call(&bed, "frontend-a", target, "GET", "/", "").unwrap() {
        Ok(r) => assert_eq!(r.status, 200),
        Err(e) => panic!(
            "the surviving proxy does not serve: {e}\n{}",
            bed.log_tail("proxy/node-b", 30)
        ),
    }
}

/// The readiness answer of `node`'s proxy (whichever process holds the port).
fn readiness(bed: &Testbed, node: &str) -> Option<u16> {
    let target = SocketAddr::from(([127, 0, 0, 1], 15021));
    let quick = Duration::from_secs(2);
    let reply = bed
        .node(node)
        .unwrap()
        .block_on(
            async move { apps::http(target, "GET", "/healthz/ready", Vec::new(), quick).await },
        )
        .unwrap();
    reply.ok().map(|r| r.status)
}

/// A new process that dies after the offer and before it accepts (SIGKILL) leaves the running
/// proxy serving: it calls the handoff off, answers ready again, and a later upgrade works.
fn a_new_proxy_dying_mid_swap_leaves_the_old_serving(backend: Backend) {
    if !nodemesh_test_support::root_tier(
        "a_new_proxy_dying_mid_swap_leaves_the_old_serving",
        backend.tools(),
    ) {
        return;
    }
    let mut bed = Testbed::build(scenario::shop_for(backend)).unwrap();
    let mut opts = MeshOptions::new(BINARY);
    opts.backend = backend;
    bed.start_mesh(&opts).unwrap();
    let target = scenario::pod_http(&bed, "web-b").unwrap();
    bed.upgrade_proxy_until("node-b", &[], "taking over")
        .unwrap();
    bed.stop_process("proxy/node-b", Signal::SIGKILL).unwrap();
    bed.await_log("proxy/node-b/old", "serving on")
        .unwrap_or_else(|e| panic!("the running proxy did not call the handoff off: {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while readiness(&bed, "node-b") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the running proxy never answered ready again\n{}",
            bed.log_tail("proxy/node-b/old", 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..5 {
        match scenario::call(&bed, "frontend-a", target, "GET", "/", "").unwrap() {
            Ok(r) => assert_eq!(r.status, 200, "call {i} after the new process died"),
            Err(e) => panic!(
                "call {i}: the running proxy does not serve after the new one died: {e}\n{}",
                bed.log_tail("proxy/node-b/old", 20)
            ),
        }
    }
    // The running proxy is still the one to hand over from.
    let running = bed.rename_process("proxy/node-b/old", "proxy/node-b");
    assert!(running, "no running proxy on node-b");
    bed.upgrade_proxy("node-b", &[]).unwrap();
    match scenario::call(&bed, "frontend-a", target, "GET", "/", "").unwrap() {
        Ok(r) => assert_eq!(r.status, 200),
        Err(e) => panic!("after the second upgrade: {e}"),
    }
}

/// A running proxy without the handoff (an older version: no handoff socket in its state
/// directory, its ports in use) is replaced the classic way: the new process says so, the old
/// one drains and exits, and the new one serves.
fn a_proxy_without_the_handoff_is_replaced_the_classic_way(backend: Backend) {
    if !nodemesh_test_support::root_tier(
        "a_proxy_without_the_handoff_is_replaced_the_classic_way",
        backend.tools(),
    ) {
        return;
    }
    let mut bed = Testbed::build(scenario::shop_for(backend)).unwrap();
    let mut opts = MeshOptions::new(BINARY);
    opts.backend = backend;
    bed.start_mesh(&opts).unwrap();
    let socket = bed.dir().join("node-b").join("handoff.sock");
    std::fs::remove_file(&socket).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the proxy serves no handoff socket?)",
            socket.display()
        )
    });
    bed.upgrade_proxy_until("node-b", &[], "the classic way")
        .unwrap();
    assert!(
        bed.await_exit("proxy/node-b/old", Duration::from_secs(30)),
        "the old proxy did not drain and exit\n{}",
        bed.log_tail("proxy/node-b/old", 20)
    );
    bed.await_log("proxy/node-b", "nodemesh proxy: outbound")
        .unwrap_or_else(|e| panic!("the new proxy did not start after the old one left: {e}"));
    let target = scenario::pod_http(&bed, "web-b").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match scenario::call(&bed, "frontend-a", target, "GET", "/", "").unwrap() {
            Ok(r) if r.status == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "the new proxy does not serve: {other:?}\n{}",
                bed.log_tail("proxy/node-b", 30)
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        socket.exists(),
        "the new proxy serves no handoff socket for the next upgrade"
    );
}

/// A takeover whose WireGuard cannot come up at once does not cost the node its proxy. Here the
/// new proxy is told another WireGuard port, which the test holds. The new proxy serves HBONE on
/// and tries again every second. Once the port is free, it brings its device up. (Before, the new
/// proxy exited: the node had no proxy until something restarted it.)
fn a_takeover_without_wireguard_serves_on(backend: Backend) {
    if !nodemesh_test_support::root_tier("a_takeover_without_wireguard_serves_on", backend.tools())
    {
        return;
    }
    const PORT: u16 = 51821;
    let mut bed = mesh(backend);
    let node = bed.node("node-a").unwrap().clone();
    let taken = node
        .run(|| std::net::UdpSocket::bind(("0.0.0.0", PORT)))
        .unwrap()
        .unwrap();
    bed.upgrade_proxy("node-a", &["--wireguard-port", &PORT.to_string()])
        .unwrap();
    bed.await_log("proxy/node-a", "trying again in")
        .unwrap_or_else(|e| panic!("the new proxy did not retry WireGuard: {e}"));
    assert!(
        bed.is_running("proxy/node-a"),
        "the new proxy exited without WireGuard\n{}",
        bed.log_tail("proxy/node-a", 30)
    );
    let target = scenario::pod_http(&bed, "web-b").unwrap();
    match scenario::call(&bed, "frontend-a", target, "GET", "/", "").unwrap() {
        Ok(r) => assert_eq!(r.status, 200, "HBONE while WireGuard is down"),
        Err(e) => panic!(
            "HBONE while WireGuard is down: {e}\n{}",
            bed.log_tail("proxy/node-a", 30)
        ),
    }
    drop(taken);
    bed.await_log("proxy/node-a", "WireGuard is up after all")
        .unwrap_or_else(|e| panic!("WireGuard never came up once the port was free: {e}"));
    let link = node.exec(&["ip", "link", "show", "nodemesh-wg0"]);
    assert!(link.is_ok(), "no WireGuard interface: {link:?}");
    assert!(bed.is_running("proxy/node-a"));
}

nodemesh_test_support::per_backend!(
    swap_keeps_every_connection,
    a_takeover_without_wireguard_serves_on,
    a_kill_mid_swap_fails_closed,
    a_new_proxy_dying_mid_swap_leaves_the_old_serving,
    a_proxy_without_the_handoff_is_replaced_the_classic_way
);
