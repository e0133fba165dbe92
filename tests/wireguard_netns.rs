//! Root tier of `nodemesh wireguard`: a testbed of two nodes with a pod each (network namespaces
//! of the test's own, unique names per run, on the testbed's underlay bridge), built without
//! routes between the pod networks, so only what a test adds carries pod traffic: plaintext
//! routes ([`Testbed::route_pod_networks`]), `nodemesh wireguard up`, or Debian's
//! `wireguard-go` configured with `wg`. The testbed's underlay capture shows what crossed.
//!
//! Runs when root with the tools installed (`scripts/install-deps`). Without them the tests print
//! a skip line and pass, unless `NODEMESH_E2E=1`, where a skip is a failure. The testbed removes
//! namespaces and processes, a guard wireguard's machine-wide control sockets, even when a test
//! fails.
//!
//! (Here rather than in `wireguard/tests/`: the tests run the `nodemesh` binary, which Cargo
//! builds only for the root package's tests.)
#![allow(clippy::unwrap_used)] // Test code: a panic is a failed test.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nodemesh_test_support::process::sh;
use nodemesh_test_support::{Need, root_tier};
use nodemesh_testbed::{
    ClusterSpec, FrameInfo, NodeSpec, PacketCapture, PodRouting, PodSpec, Testbed, Transport, apps,
};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");
const WG_PORT: u16 = 51820;

/// What the tests need besides root and WireGuard's routing tools.
const NEEDS: [Need; 5] = [
    Need::program("ping", "iputils-ping"),
    Need::program("wireguard-go", "wireguard-go"),
    Need::program("wg", "wireguard-tools"),
    Need::program("unshare", "util-linux"),
    Need::Device("/dev/net/tun"),
];

/// Whether the root tier runs here; panics when it must run and cannot.
fn runs(test: &str) -> bool {
    let routing = nodemesh_wireguard::command::ROUTING_TOOLS.map(Need::from);
    root_tier(test, routing.into_iter().chain(NEEDS))
}

/// node-a with pod-a, node-b with pod-b; no routes between their pod networks.
fn build() -> Testbed {
    let node = |name: &str, pod: &str| NodeSpec {
        name: name.into(),
        pods: vec![PodSpec::new(pod, "default", "default")],
    };
    Testbed::build(ClusterSpec {
        nodes: vec![node("node-a", "pod-a"), node("node-b", "pod-b")],
        pod_routing: PodRouting::None,
        ..ClusterSpec::default()
    })
    .unwrap()
}

/// Removes wireguard's control sockets (machine-wide) of a test's interfaces when dropped.
struct Sockets(Vec<PathBuf>);

impl Sockets {
    fn of(bed: &Testbed) -> Self {
        Self(
            ["node-a", "node-b"]
                .map(|n| PathBuf::from(format!("/var/run/wireguard/{}.sock", ifname(bed, n))))
                .to_vec(),
        )
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for sock in &self.0 {
            let _ = std::fs::remove_file(sock);
        }
    }
}

/// A short interface name unique to this run (wireguard-go's socket is machine-wide).
fn ifname(bed: &Testbed, node: &str) -> String {
    format!("{}{}", bed.prefix(), node.trim_start_matches("node-"))
}

fn address(bed: &Testbed, node: &str) -> Ipv4Addr {
    bed.plan().node(node).unwrap().address
}

fn pod_cidr(bed: &Testbed, node: &str) -> String {
    format!("{}/24", bed.plan().node(node).unwrap().pod_cidr)
}

fn pod_ip(bed: &Testbed, pod: &str) -> String {
    bed.pod_ip(pod).unwrap().to_string()
}

/// The state directory (key, control socket) of `name`.
fn state(bed: &Testbed, name: &str) -> PathBuf {
    bed.dir().join(format!("state-{name}"))
}

/// Prints the public key of `state-<name>`, creating the key.
fn pubkey(bed: &Testbed, name: &str) -> String {
    let dir = state(bed, name);
    sh(&[
        BINARY,
        "wireguard",
        "pubkey",
        "--state-dir",
        dir.to_str().unwrap(),
    ])
    .trim()
    .to_owned()
}

/// Writes `file` in the testbed's directory: a standalone config with `nodes`, each its name,
/// pod CIDR and WireGuard key (its address from the plan), and no workloads.
fn write_config(bed: &Testbed, file: &str, nodes: &[(&str, &str, &str)]) -> PathBuf {
    let mut yaml = String::from("nodes:\n");
    for (name, cidr, key) in nodes {
        let address = address(bed, name);
        yaml.push_str(&format!(
            "  - {{name: {name}, address: {address}, podCIDR: {cidr}, wireguardPublicKey: \"{key}\"}}\n"
        ));
    }
    yaml.push_str("workloads: []\n");
    let path = bed.dir().join(file);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Both nodes with their own pod networks and keys, in `nodemesh.yaml`.
fn both(bed: &Testbed, ka: &str, kb: &str) -> PathBuf {
    let a = pod_cidr(bed, "node-a");
    let b = pod_cidr(bed, "node-b");
    write_config(
        bed,
        "nodemesh.yaml",
        &[("node-a", &a, ka), ("node-b", &b, kb)],
    )
}

fn up_args(bed: &Testbed, node: &str, config: &Path) -> Vec<String> {
    let dir = state(bed, node);
    [
        BINARY,
        "wireguard",
        "up",
        "--config",
        config.to_str().unwrap(),
        "--node",
        node,
        "--state-dir",
        dir.to_str().unwrap(),
        "--interface",
        &ifname(bed, node),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `nodemesh wireguard up` for `node` in its namespace, as the process `up/<node>`; waits
/// until it is up.
fn up(bed: &mut Testbed, node: &str, config: &Path) {
    let args = up_args(bed, node, config);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ns = bed.node(node).unwrap().clone();
    let key = format!("up/{node}");
    bed.start_process(&key, &ns, &args).unwrap();
    if let Err(e) = bed.await_log(&key, "wireguard up:") {
        panic!("{node} did not come up: {e}");
    }
}

/// Stops `node`'s `up` with SIGTERM; it must exit on its own.
fn stop(bed: &mut Testbed, node: &str) {
    let ended = bed
        .stop_process(&format!("up/{node}"), Signal::SIGTERM)
        .unwrap();
    assert!(
        !ended.contains("killed after"),
        "up did not stop on SIGTERM: {ended}"
    );
}

/// Runs `up` (behind the `wrap` command, if any) expecting it to fail; returns its stderr.
fn up_fails(bed: &Testbed, node: &str, config: &Path, wrap: &[&str]) -> String {
    let out = bed
        .node(node)
        .unwrap()
        .command("timeout")
        .arg("20")
        .args(wrap)
        .args(up_args(bed, node, config))
        .output()
        .unwrap();
    assert!(!out.status.success(), "up succeeded: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn status(bed: &Testbed, name: &str) -> String {
    let dir = state(bed, name);
    sh(&[
        BINARY,
        "wireguard",
        "status",
        "--state-dir",
        dir.to_str().unwrap(),
    ])
}

/// Pings `dst` from `pod` until it answers (true) or `wait` passes (false).
fn reaches(bed: &Testbed, pod: &str, dst: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let ns = bed.pod(pod).unwrap();
    loop {
        if ns.exec(&["ping", "-c", "1", "-W", "1", dst]).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Pings `dst` from `pod` with the first 16 bytes of `marker` as the payload pattern.
fn ping_marked(bed: &Testbed, pod: &str, dst: &str, marker: &str, count: &str) -> bool {
    let hex: String = marker
        .bytes()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let argv = ["ping", "-c", count, "-i", "0.2", "-W", "2", "-p", &hex, dst];
    bed.pod(pod).unwrap().exec(&argv).is_ok()
}

/// Starts wireguard-go as node-b's WireGuard, with node-a as its peer; returns its public key.
fn wireguard_go_b(bed: &mut Testbed, a_pub: &str) -> String {
    let ifname = ifname(bed, "node-b");
    let b = bed.node("node-b").unwrap().clone();
    bed.start_process(
        "wireguard-go",
        &b,
        &[
            "env",
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
            "wireguard-go",
            "-f",
            &ifname,
        ],
    )
    .unwrap();
    let sock = format!("/var/run/wireguard/{ifname}.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&sock).exists() {
        assert!(Instant::now() < deadline, "wireguard-go did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let key_file = bed.dir().join("b.key");
    let private = sh(&["wg", "genkey"]);
    std::fs::write(&key_file, &private).unwrap();
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    pubkey
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let b_pub = String::from_utf8(pubkey.wait_with_output().unwrap().stdout).unwrap();
    let endpoint = format!("{}:{WG_PORT}", address(bed, "node-a"));
    let a_pods = pod_cidr(bed, "node-a");
    b.exec(&[
        "wg",
        "set",
        &ifname,
        "listen-port",
        &WG_PORT.to_string(),
        "private-key",
        key_file.to_str().unwrap(),
        "peer",
        a_pub,
        "endpoint",
        &endpoint,
        "allowed-ips",
        &a_pods,
    ])
    .unwrap();
    b.exec(&["ip", "link", "set", &ifname, "mtu", "1420", "up"])
        .unwrap();
    b.exec(&["ip", "route", "add", &a_pods, "dev", &ifname])
        .unwrap();
    b_pub.trim().to_owned()
}

/// Everything routing-related of a node's namespace, to compare before and after.
fn snapshot(bed: &Testbed, node: &str) -> String {
    let ns = bed.node(node).unwrap();
    let exec = |argv: &[&str]| ns.exec(argv).unwrap();
    let mangle = exec(&["iptables-save", "-t", "mangle"]);
    let mangle: Vec<_> = mangle
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l))
        .collect();
    let links = exec(&["ip", "-o", "link", "show"]);
    let links: Vec<_> = links
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim())
        .collect();
    format!(
        "{}\n{}\n{}\n{}",
        exec(&["ip", "-4", "rule", "list"]),
        exec(&["ip", "-4", "route", "show", "table", "all"]),
        mangle.join("\n"),
        links.join(" "),
    )
}

fn is_wireguard(f: &FrameInfo) -> bool {
    matches!(
        f.transport,
        Transport::Udp(WG_PORT, _) | Transport::Udp(_, WG_PORT)
    )
}

/// IGMP: the underlay bridge's own ports announcing their multicast groups (from 0.0.0.0),
/// not traffic between the nodes.
fn is_igmp(f: &FrameInfo) -> bool {
    f.transport == Transport::Other(2)
}

/// Stops `capture` and asserts the underlay carried none of `markers` (in any frame) and no
/// IPv4 but WireGuard (UDP to or from port 51820) and the bridge's IGMP; returns how many
/// WireGuard frames it saw.
fn assert_nothing_but_wireguard(capture: PacketCapture, markers: &[&str]) -> usize {
    let captured = capture.finish().unwrap();
    assert!(captured.complete(), "the capture dropped frames");
    for marker in markers {
        assert!(
            !captured.contains(marker.as_bytes()),
            "plaintext marker {marker} on the underlay"
        );
    }
    let others: Vec<FrameInfo> = captured
        .ipv4()
        .filter(|f| !is_wireguard(f) && !is_igmp(f))
        .collect();
    assert!(
        others.is_empty(),
        "non-WireGuard IP packets on the underlay: {others:?}"
    );
    captured.ipv4().filter(is_wireguard).count()
}

/// Like [`assert_nothing_but_wireguard`], and some WireGuard was seen.
fn assert_only_wireguard(capture: PacketCapture, marker: &str) {
    let wg = assert_nothing_but_wireguard(capture, &[marker]);
    assert!(wg > 0, "no WireGuard packets captured");
}

/// UDP, ICMP and TCP from pod-a to pod-b's app, each carrying `marker`; asserts each arrived
/// intact.
fn exchange(bed: &mut Testbed, marker: &str) {
    bed.start_apps(Path::new(BINARY)).unwrap();
    let target = SocketAddr::from((bed.pod_ip("pod-b").unwrap(), apps::ECHO_PORT));
    let payload = format!("{marker}\n").into_bytes();
    let timeout = Duration::from_secs(5);
    let (udp, tcp) = bed
        .pod("pod-a")
        .unwrap()
        .block_on(async move {
            let udp = apps::udp_echo(target, &payload, timeout).await;
            let tcp = apps::echo(target, &payload, timeout).await;
            (udp, tcp)
        })
        .unwrap();
    let text = |r: Result<Vec<u8>, apps::CallError>| String::from_utf8(r.unwrap()).unwrap();
    assert_eq!(text(udp).trim(), marker, "UDP echo through the tunnel");
    assert_eq!(text(tcp).trim(), marker, "TCP echo through the tunnel");
    let pod_b = pod_ip(bed, "pod-b");
    assert!(
        ping_marked(bed, "pod-a", &pod_b, marker, "3"),
        "ping through the tunnel"
    );
}

#[test]
fn nodemesh_to_nodemesh_carries_udp_icmp_tcp_encrypted() {
    if !runs("nodemesh_to_nodemesh_carries_udp_icmp_tcp_encrypted") {
        return;
    }
    let mut bed = build();
    let _sockets = Sockets::of(&bed);
    bed.route_pod_networks().unwrap();
    let (ka, kb) = (pubkey(&bed, "node-a"), pubkey(&bed, "node-b"));
    let config = both(&bed, &ka, &kb);
    up(&mut bed, "node-a", &config);
    up(&mut bed, "node-b", &config);
    let capture = bed.capture_underlay().unwrap();
    let (pod_a, pod_b) = (pod_ip(&bed, "pod-a"), pod_ip(&bed, "pod-b"));
    assert!(
        reaches(&bed, "pod-a", &pod_b, Duration::from_secs(10)),
        "pod-a cannot reach pod-b"
    );
    let marker = format!("NODEMESH-PLAINTEXT-{}", bed.prefix());
    exchange(&mut bed, &marker);
    assert!(
        reaches(&bed, "pod-b", &pod_a, Duration::from_secs(5)),
        "pod-b cannot reach pod-a"
    );
    assert_only_wireguard(capture, &marker);

    let status = status(&bed, "node-a");
    assert!(status.contains(&format!("peer: {kb}")), "{status}");
    assert!(
        status.contains("latest handshake:") && !status.contains("never"),
        "{status}"
    );
    assert!(status.contains(&format!("public key: {ka}")), "{status}");
    // MTU 1420 on the tunnel.
    let link = bed
        .node("node-a")
        .unwrap()
        .exec(&["ip", "link", "show", &ifname(&bed, "node-a")])
        .unwrap();
    assert!(link.contains("mtu 1420"), "{link}");
}

#[test]
fn interoperates_with_wireguard_go() {
    if !runs("interoperates_with_wireguard_go") {
        return;
    }
    let mut bed = build();
    let _sockets = Sockets::of(&bed);
    let ka = pubkey(&bed, "node-a");
    let kb = wireguard_go_b(&mut bed, &ka);
    let config = both(&bed, &ka, &kb);
    up(&mut bed, "node-a", &config);
    let capture = bed.capture_underlay().unwrap();
    let (pod_a, pod_b) = (pod_ip(&bed, "pod-a"), pod_ip(&bed, "pod-b"));
    assert!(
        reaches(&bed, "pod-a", &pod_b, Duration::from_secs(10)),
        "nodemesh -> wireguard-go"
    );
    assert!(
        reaches(&bed, "pod-b", &pod_a, Duration::from_secs(5)),
        "wireguard-go -> nodemesh"
    );
    let marker = format!("NODEMESH-INTEROP-{}", bed.prefix());
    exchange(&mut bed, &marker);
    assert_only_wireguard(capture, &marker);
    let handshakes = bed
        .node("node-b")
        .unwrap()
        .exec(&["wg", "show", &ifname(&bed, "node-b"), "latest-handshakes"])
        .unwrap();
    assert!(handshakes.starts_with(&ka), "{handshakes}");
    assert!(
        !handshakes.trim().ends_with("\t0"),
        "wg saw no handshake: {handshakes}"
    );
    let status = status(&bed, "node-a");
    assert!(!status.contains("never"), "{status}");
}

#[test]
fn a_wrong_key_never_handshakes_and_leaks_nothing() {
    if !runs("a_wrong_key_never_handshakes_and_leaks_nothing") {
        return;
    }
    let mut bed = build();
    let _sockets = Sockets::of(&bed);
    bed.route_pod_networks().unwrap();
    let (ka, kb) = (pubkey(&bed, "node-a"), pubkey(&bed, "node-b"));
    let wrong = pubkey(&bed, "z");
    let (a, b) = (pod_cidr(&bed, "node-a"), pod_cidr(&bed, "node-b"));
    let config_a = write_config(
        &bed,
        "a.yaml",
        &[("node-a", &a, &ka), ("node-b", &b, &wrong)],
    );
    let config_b = both(&bed, &ka, &kb);
    up(&mut bed, "node-a", &config_a);
    up(&mut bed, "node-b", &config_b);
    let capture = bed.capture_underlay().unwrap();
    let pod_b = pod_ip(&bed, "pod-b");
    assert!(
        !reaches(&bed, "pod-a", &pod_b, Duration::from_secs(4)),
        "reached pod-b with a wrong key"
    );
    let marker = format!("NODEMESH-WRONGKEY-{}", bed.prefix());
    let _ = ping_marked(&bed, "pod-a", &pod_b, &marker, "2");
    assert_nothing_but_wireguard(capture, &[&marker]);
    let status = status(&bed, "node-a");
    assert!(status.contains("latest handshake: never"), "{status}");
}

#[test]
fn removal_rotation_restart_and_down() {
    if !runs("removal_rotation_restart_and_down") {
        return;
    }
    let mut bed = build();
    let _sockets = Sockets::of(&bed);
    let baseline = snapshot(&bed, "node-a");
    bed.route_pod_networks().unwrap();
    let with_routes = snapshot(&bed, "node-a");
    let (ka, kb) = (pubkey(&bed, "node-a"), pubkey(&bed, "node-b"));
    let config = both(&bed, &ka, &kb);
    up(&mut bed, "node-a", &config);
    up(&mut bed, "node-b", &config);
    let pod_b = pod_ip(&bed, "pod-b");
    assert!(reaches(&bed, "pod-a", &pod_b, Duration::from_secs(10)));

    // Rotation: the running node switches to its new key; node-b refuses it until its config
    // has the new key, then the tunnel comes back.
    let state_a = state(&bed, "node-a");
    let new_ka = sh(&[
        BINARY,
        "wireguard",
        "rotate-key",
        "--state-dir",
        state_a.to_str().unwrap(),
    ]);
    let new_ka = new_ka.trim().to_owned();
    assert_ne!(new_ka, ka);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !reaches(&bed, "pod-a", &pod_b, Duration::from_secs(3)),
        "old key still accepted"
    );
    both(&bed, &new_ka, &kb);
    assert!(
        reaches(&bed, "pod-a", &pod_b, Duration::from_secs(15)),
        "no tunnel with the new key"
    );

    // Restart keeps the key; while down, traffic is dropped (fail closed), not sent in plaintext.
    stop(&mut bed, "node-a");
    assert_eq!(pubkey(&bed, "node-a"), new_ka, "restart changed the key");
    let capture = bed.capture_underlay().unwrap();
    let marker = format!("NODEMESH-DOWN-{}", bed.prefix());
    assert!(
        !ping_marked(&bed, "pod-a", &pod_b, &marker, "2"),
        "pod-b reached with the device stopped"
    );
    assert_nothing_but_wireguard(capture, &[&marker]);
    up(&mut bed, "node-a", &config);
    assert!(
        reaches(&bed, "pod-a", &pod_b, Duration::from_secs(10)),
        "no tunnel after restart"
    );

    // Removing node-b's peer stops traffic to it, still without plaintext.
    let a = pod_cidr(&bed, "node-a");
    write_config(&bed, "nodemesh.yaml", &[("node-a", &a, &new_ka)]);
    std::thread::sleep(Duration::from_secs(2));
    let capture = bed.capture_underlay().unwrap();
    assert!(
        !reaches(&bed, "pod-a", &pod_b, Duration::from_secs(2)),
        "removed peer still reached"
    );
    assert_nothing_but_wireguard(capture, &[]);
    let status = status(&bed, "node-a");
    assert!(status.contains("peers: 0"), "{status}");

    // `down` removes exactly what `up` installed.
    stop(&mut bed, "node-a");
    let ifname = ifname(&bed, "node-a");
    bed.node("node-a")
        .unwrap()
        .exec(&[
            BINARY,
            "wireguard",
            "down",
            "--state-dir",
            state_a.to_str().unwrap(),
            "--interface",
            &ifname,
        ])
        .unwrap();
    assert_eq!(snapshot(&bed, "node-a"), with_routes);
    assert_ne!(baseline, with_routes);
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing() {
    if !runs("bad_input_fails_clearly_and_leaves_nothing") {
        return;
    }
    let bed = build();
    let _sockets = Sockets::of(&bed);
    let before = snapshot(&bed, "node-a");
    let (ka, kb) = (pubkey(&bed, "node-a"), pubkey(&bed, "node-b"));
    let (a, b) = (pod_cidr(&bed, "node-a"), pod_cidr(&bed, "node-b"));

    let config = write_config(
        &bed,
        "nodemesh.yaml",
        &[("node-a", &a, &ka), ("node-b", &b, "not-a-key")],
    );
    let err = up_fails(&bed, "node-a", &config, &[]);
    assert!(err.contains("nodes[1].wireguardPublicKey"), "{err}");

    let config = write_config(
        &bed,
        "nodemesh.yaml",
        &[("node-a", "10.200.0.0/16", &ka), ("node-b", &b, &kb)],
    );
    let err = up_fails(&bed, "node-a", &config, &[]);
    assert!(
        err.contains("nodes[1].podCIDR") && err.contains("overlaps"),
        "{err}"
    );
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1,
        "{err}"
    );

    let config = both(&bed, &ka, &kb);
    // No /dev/net/tun: hidden under an empty read-only tmpfs in a mount namespace of its own
    // (tun-rs creates a missing device node when it can).
    let hide_tun = [
        "unshare",
        "-m",
        "sh",
        "-c",
        "mount -t tmpfs -o ro,nodev none /dev/net && exec \"$@\"",
        "sh",
    ];
    let err = up_fails(&bed, "node-a", &config, &hide_tun);
    assert!(err.contains("TUN device"), "{err}");

    // The UDP port taken by another socket in the node.
    let holder = bed
        .node("node-a")
        .unwrap()
        .run(|| std::net::UdpSocket::bind(("0.0.0.0", WG_PORT)))
        .unwrap()
        .unwrap();
    let err = up_fails(&bed, "node-a", &config, &[]);
    drop(holder);
    assert!(err.contains("UDP port 51820"), "{err}");

    // A group-readable key.
    use std::os::unix::fs::PermissionsExt as _;
    let key = state(&bed, "node-a").join("wireguard.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = up_fails(&bed, "node-a", &config, &[]);
    assert!(err.contains("must not be readable"), "{err}");

    assert_eq!(
        snapshot(&bed, "node-a"),
        before,
        "bad input left something behind"
    );
}

/// Keeps calling the TCP echo at `target` from `pod` with `payload` until it answers (the app
/// may still be starting) or `wait` passes; returns the answer.
fn echo_when_ready(bed: &Testbed, pod: &str, target: SocketAddr, payload: &str) -> String {
    let payload = format!("{payload}\n").into_bytes();
    let answer = bed
        .pod(pod)
        .unwrap()
        .block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match apps::echo(target, &payload, Duration::from_secs(2)).await {
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    done => break done,
                }
            }
        })
        .unwrap();
    String::from_utf8(answer.unwrap()).unwrap()
}

/// What older versions installed: every TCP to or from port 15008 marked before routing.
const OLD_PREROUTING: &str = "*mangle\n:NMWG-PREROUTING - [0:0]\n-A PREROUTING -j NMWG-PREROUTING\n\
    -A NMWG-PREROUTING -p tcp -m tcp --dport 15008 -j MARK --set-xmark 0x222/0xfff\n\
    -A NMWG-PREROUTING -p tcp -m tcp --sport 15008 -j MARK --set-xmark 0x222/0xfff\nCOMMIT\n";

/// Port 15008 is HBONE's only between proxies: TCP between pods to port 15008 (here pods outside
/// the mesh, no proxy runs) crosses the underlay only inside WireGuard, even with plaintext
/// routes between the pod networks in place, and on nodes upgraded from a version that exempted
/// any TCP to or from port 15008.
#[test]
fn tcp_between_pods_to_port_15008_goes_through_the_tunnel() {
    if !runs("tcp_between_pods_to_port_15008_goes_through_the_tunnel") {
        return;
    }
    let mut bed = build();
    let _sockets = Sockets::of(&bed);
    bed.route_pod_networks().unwrap();
    let (ka, kb) = (pubkey(&bed, "node-a"), pubkey(&bed, "node-b"));
    let config = both(&bed, &ka, &kb);
    let old = bed.dir().join("old-prerouting.rules");
    std::fs::write(&old, OLD_PREROUTING).unwrap();
    for node in ["node-a", "node-b"] {
        let ns = bed.node(node).unwrap();
        ns.exec(&["iptables-restore", "--noflush", old.to_str().unwrap()])
            .unwrap();
    }
    up(&mut bed, "node-a", &config);
    up(&mut bed, "node-b", &config);
    let mangle = bed
        .node("node-a")
        .unwrap()
        .exec(&["iptables-save", "-t", "mangle"])
        .unwrap();
    assert!(!mangle.contains("NMWG-PREROUTING"), "{mangle}");
    let pod_b = bed.pod("pod-b").unwrap().clone();
    let argv = [
        BINARY,
        "testbed-app",
        "--name",
        "pod-b",
        "--http",
        "0.0.0.0:8081",
        "--echo",
        "0.0.0.0:15008",
    ];
    bed.start_process("app15008/pod-b", &pod_b, &argv).unwrap();
    let pod_b_ip = pod_ip(&bed, "pod-b");
    assert!(
        reaches(&bed, "pod-a", &pod_b_ip, Duration::from_secs(10)),
        "no tunnel"
    );
    let capture = bed.capture_underlay().unwrap();
    let marker = format!("NODEMESH-PORT15008-{}", bed.prefix());
    let target = SocketAddr::from((bed.pod_ip("pod-b").unwrap(), 15008));
    let answer = echo_when_ready(&bed, "pod-a", target, &marker);
    assert_eq!(answer.trim(), marker, "TCP echo pod-a -> pod-b:15008");
    assert_only_wireguard(capture, &marker);
}

/// Sends `payload` over UDP from `src` (an address of the underlay namespace) to `dst`.
fn send_from_underlay(bed: &Testbed, src: Ipv4Addr, dst: SocketAddr, payload: &'static [u8]) {
    bed.underlay()
        .run(move || {
            let socket = std::net::UdpSocket::bind((src, 0))?;
            socket.send_to(payload, dst).map(drop)
        })
        .unwrap()
        .unwrap();
}

/// Whether a TCP connection from `src` (an address of the underlay namespace) to `dst`
/// completes within two seconds.
fn connects_from_underlay(bed: &Testbed, src: Ipv4Addr, dst: SocketAddr) -> bool {
    bed.underlay()
        .block_on(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((src, 0)))?;
            tokio::time::timeout(Duration::from_secs(2), socket.connect(dst))
                .await
                .map_err(std::io::Error::other)?
                .map(drop)
        })
        .unwrap()
        .is_ok()
}

/// What arrives at `socket` within two seconds.
fn received(socket: &std::net::UdpSocket) -> Option<Vec<u8>> {
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 1500];
    socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

/// Anti-spoofing: a host on the underlay that claims a pod address of node-b reaches no pod of
/// node-a (nor node-a's own pod-network address), since such packets must come out of the
/// tunnel; the same host under its own address does, and HBONE to node-a itself (mTLS
/// authenticates it; it leaves from pod addresses outside the tunnel) is still admitted.
#[test]
fn spoofed_remote_pod_sources_from_the_underlay_are_dropped() {
    if !runs("spoofed_remote_pod_sources_from_the_underlay_are_dropped") {
        return;
    }
    let mut bed = build();
    let _sockets = Sockets::of(&bed);
    let (ka, kb) = (pubkey(&bed, "node-a"), pubkey(&bed, "node-b"));
    let config = both(&bed, &ka, &kb);
    up(&mut bed, "node-a", &config);
    let node_a = bed.node("node-a").unwrap().clone();
    // Not rp_filter's job (it is off on many nodes): off here, so only our rules can drop.
    for key in ["all", "default", "uplink"] {
        node_a
            .sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")
            .unwrap();
    }
    let a_addr = address(&bed, "node-a");
    let [o1, o2, o3, _] = a_addr.octets();
    let attacker = Ipv4Addr::new(o1, o2, o3, 250);
    let pod_a: Ipv4Addr = bed.pod_ip("pod-a").unwrap();
    let pod_b: Ipv4Addr = bed.pod_ip("pod-b").unwrap();
    let underlay = bed.underlay();
    underlay
        .ip(&["addr", "add", &format!("{attacker}/24"), "dev", "br0"])
        .unwrap();
    underlay
        .ip(&["addr", "add", &format!("{pod_b}/32"), "dev", "br0"])
        .unwrap();
    // The testbed's underlay routes every pod network to its node already (as a VPC does).
    underlay
        .ip(&[
            "route",
            "replace",
            &pod_cidr(&bed, "node-a"),
            "via",
            &a_addr.to_string(),
        ])
        .unwrap();
    // Answers to pod-b's address that skip the tunnel (HBONE's) go to the attacker.
    node_a
        .ip(&[
            "route",
            "add",
            &format!("{pod_b}/32"),
            "via",
            &attacker.to_string(),
        ])
        .unwrap();
    let pod_ns = bed.pod("pod-a").unwrap();
    let udp = pod_ns
        .run(|| std::net::UdpSocket::bind(("0.0.0.0", 7777)))
        .unwrap()
        .unwrap();
    // A pod's own port 15008 is no HBONE: only the proxy's is.
    let _pod_listener = pod_ns
        .run(|| std::net::TcpListener::bind(("0.0.0.0", 15008)))
        .unwrap()
        .unwrap();
    let node_listeners: Vec<_> = [15008, 15009]
        .map(|port| {
            node_a
                .run(move || std::net::TcpListener::bind(("0.0.0.0", port)))
                .unwrap()
                .unwrap()
        })
        .into();

    send_from_underlay(&bed, attacker, (pod_a, 7777).into(), b"control");
    assert_eq!(
        received(&udp).as_deref(),
        Some(&b"control"[..]),
        "the underlay host's own datagram did not arrive: the test is broken"
    );
    assert!(
        connects_from_underlay(&bed, attacker, (pod_a, 15008).into()),
        "the underlay host's own TCP did not arrive: the test is broken"
    );
    send_from_underlay(&bed, pod_b, (pod_a, 7777).into(), b"spoofed");
    assert_eq!(
        received(&udp),
        None,
        "a datagram claiming pod-b's address from the underlay reached pod-a"
    );
    assert!(
        !connects_from_underlay(&bed, pod_b, (pod_a, 15008).into()),
        "TCP claiming pod-b's address from the underlay reached pod-a's port 15008"
    );
    let gateway = bed.plan().node("node-a").unwrap().gateway;
    assert!(
        !connects_from_underlay(&bed, pod_b, (gateway, 15009).into()),
        "TCP claiming pod-b's address from the underlay reached node-a's {gateway}:15009"
    );
    assert!(
        connects_from_underlay(&bed, pod_b, (gateway, 15008).into()),
        "HBONE from pod-b's address to node-a {gateway}:15008 was not admitted"
    );
    drop(node_listeners);
}

/// A node's WireGuard layer run in-process in its namespace until dropped.
struct InProcess {
    stop: Option<std::sync::mpsc::Sender<()>>,
    task: Option<nodemesh_testbed::NetnsTask<()>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take() {
            let _ = task.join();
        }
    }
}

/// Brings node `node` up in its namespace from `nodes` (what `proxy --wireguard` does with the
/// Kubernetes node list), with its key in `state-<node>`; or the error.
fn up_in_process(
    bed: &Testbed,
    node: &str,
    nodes: Vec<nodemesh_wireguard::NodeEntry>,
) -> Result<InProcess, String> {
    let mut options = nodemesh_wireguard::NodeOptions::new(state(bed, node));
    options.interface = ifname(bed, node);
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let name = node.to_owned();
    let task = bed
        .node(node)
        .unwrap()
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                match nodemesh_wireguard::WireguardNode::up(&nodes, &name, options).await {
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                    }
                    Ok(running) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
                        running.shutdown().await;
                    }
                }
            });
        })
        .unwrap();
    let mut running = InProcess {
        stop: Some(stop),
        task: Some(task),
    };
    match ready.recv() {
        Ok(Ok(())) => Ok(running),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            running.stop = None;
            Err("the WireGuard thread ended early".into())
        }
    }
}

/// The node list as the Kubernetes source publishes it: node-b without a podCIDR, pod-b on it.
fn nodes_without_b_cidr(bed: &Testbed, local: &str) -> Vec<nodemesh_wireguard::NodeEntry> {
    let (a, b) = (address(bed, "node-a"), address(bed, "node-b"));
    let yaml = format!(
        "nodes:\n  - {{name: node-a, address: {a}, podCIDR: {}}}\n  - {{name: node-b, address: {b}}}\n\
         workloads:\n  - {{name: pod-a, namespace: default, ip: {}, node: node-a}}\n  \
         - {{name: pod-b, namespace: default, ip: {}, node: node-b}}\n",
        pod_cidr(bed, "node-a"),
        pod_ip(bed, "pod-a"),
        pod_ip(bed, "pod-b"),
    );
    let config = nodemesh_config::Config::from_yaml_str(&yaml, bed.dir()).unwrap();
    let (key, _) = nodemesh_wireguard::KeyStore::new(state(bed, local))
        .load_or_create()
        .unwrap();
    nodemesh_wireguard::published_nodes(&config, local, key.public_key(), |_| {
        nodemesh_wireguard::PrivateKey::generate().public_key()
    })
}

/// A node without a podCIDR in the cluster's node list is not skipped: the known pods on it are
/// dropped (its traffic would otherwise leave in plaintext), and that node itself refuses to
/// bring WireGuard up, naming the field.
#[test]
fn a_node_without_pod_cidr_fails_closed() {
    if !runs("a_node_without_pod_cidr_fails_closed") {
        return;
    }
    let bed = build();
    let _sockets = Sockets::of(&bed);
    bed.route_pod_networks().unwrap();
    let pod_b = pod_ip(&bed, "pod-b");
    assert!(
        reaches(&bed, "pod-a", &pod_b, Duration::from_secs(5)),
        "no plaintext route to pod-b: the test is broken"
    );
    let running = up_in_process(&bed, "node-a", nodes_without_b_cidr(&bed, "node-a")).unwrap();
    let capture = bed.capture_underlay().unwrap();
    let marker = format!("NODEMESH-NOCIDR-{}", bed.prefix());
    assert!(
        !ping_marked(&bed, "pod-a", &pod_b, &marker, "2"),
        "pod-b on a node without podCIDR reached"
    );
    assert_nothing_but_wireguard(capture, &[&marker]);
    let table = bed
        .node("node-a")
        .unwrap()
        .exec(&["ip", "-4", "route", "show", "table", "134"])
        .unwrap();
    assert!(table.contains(&format!("unreachable {pod_b} ")), "{table}");
    drop(running);

    let err = up_in_process(&bed, "node-b", nodes_without_b_cidr(&bed, "node-b"))
        .err()
        .unwrap();
    assert!(
        err.contains("podCIDR") && err.contains("\"node-b\" (this node)"),
        "{err}"
    );
}

/// A stopped device has let go of its interface and its UDP port by the time `stop` returns, so
/// a process taking over from an old proxy creates both at once. (The old device's tasks used to
/// drop them a moment later; a takeover that came in between failed to bring WireGuard up.)
/// Twenty rounds of start, handshakes in flight, stop, each checked the moment stop returns.
#[test]
fn a_stopped_device_has_released_its_interface_and_port() {
    use nodemesh_wireguard::PrivateKey;
    use nodemesh_wireguard::device::UserspaceDevice;
    use nodemesh_wireguard::peers::{PeerSet, PeerSpec};
    if !runs("a_stopped_device_has_released_its_interface_and_port") {
        return;
    }
    let bed = build();
    let _sockets = Sockets::of(&bed);
    let name = ifname(&bed, "node-a");
    let peer = PeerSpec {
        node: "node-b".into(),
        public_key: PrivateKey::generate().public_key(),
        endpoint: std::net::SocketAddrV4::new(address(&bed, "node-b"), WG_PORT),
        pod_cidr: pod_cidr(&bed, "node-b").parse().unwrap(),
    };
    let peers = PeerSet::from([(*peer.public_key.as_bytes(), peer)]);
    let rounds = bed
        .node("node-a")
        .unwrap()
        .run(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let key = PrivateKey::generate();
                for round in 0..20 {
                    let device = UserspaceDevice::start(&name, WG_PORT, &key, &peers, None)
                        .await
                        .unwrap_or_else(|e| panic!("round {round}: start: {e}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    device.stop().await;
                    let interface = nix::net::if_::if_nametoindex(name.as_str());
                    let port = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, WG_PORT));
                    if interface.is_ok() || port.is_err() {
                        return Err(format!(
                            "round {round}: after stop, interface {name} {}, port {WG_PORT} {}",
                            if interface.is_ok() {
                                "still there"
                            } else {
                                "gone"
                            },
                            if port.is_err() { "still bound" } else { "free" },
                        ));
                    }
                }
                Ok(20)
            })
        })
        .unwrap();
    assert_eq!(rounds, Ok(20));
}
