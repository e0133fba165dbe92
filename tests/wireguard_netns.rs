//! Root tier of `nodemesh wireguard`: two nodes and a pod on each, every one a network namespace
//! of the test's own (unique names per run), an underlay veth between the nodes, real processes.
//!
//! Runs when root with the tools installed (`scripts/install-deps`). Without them the tests print
//! a skip line and pass, unless `NODEMESH_E2E=1`, where a skip is a failure. Namespaces, their
//! processes and wireguard-go's machine-wide control sockets are removed by a guard, even when a
//! test fails.
//!
//! (Here rather than in `wireguard/tests/`: the tests run the `nodemesh` binary, which Cargo
//! builds only for the root package's tests.)
#![allow(clippy::unwrap_used)] // Test helpers: a panic is a failed test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TOOLS: [&str; 9] = [
    "ip",
    "iptables-restore",
    "iptables-save",
    "tcpdump",
    "ping",
    "socat",
    "wireguard-go",
    "wg",
    "unshare",
];

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn has_tool(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(name).is_file())
}

/// Whether the root tier runs here; panics when it must run and cannot.
fn root_tier(test: &str) -> bool {
    let forced = std::env::var("NODEMESH_E2E").is_ok_and(|v| v == "1");
    let missing: Vec<_> = TOOLS.into_iter().filter(|t| !has_tool(t)).collect();
    let reason = if !is_root() {
        Some("not root".to_owned())
    } else if !missing.is_empty() {
        Some(format!("missing {missing:?} (run scripts/install-deps)"))
    } else if !Path::new("/dev/net/tun").exists() {
        Some("no /dev/net/tun".to_owned())
    } else {
        None
    };
    match reason {
        None => true,
        Some(reason) if forced => panic!("{test}: NODEMESH_E2E=1 but cannot run: {reason}"),
        Some(reason) => {
            eprintln!("skip {test}: {reason} (set NODEMESH_E2E=1 to make this a failure)");
            false
        }
    }
}

fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nodemesh() -> &'static str {
    env!("CARGO_BIN_EXE_nodemesh")
}

const NODE_A_UL: &str = "10.250.0.1";
const NODE_B_UL: &str = "10.250.0.2";
const POD_A: &str = "10.201.1.10";
const POD_B: &str = "10.201.2.10";

/// Two nodes, a pod on each, and everything started in them; all removed on drop.
struct Lab {
    id: String,
    namespaces: Vec<String>,
    wg_sockets: Vec<PathBuf>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            id,
            namespaces: Vec::new(),
            wg_sockets: Vec::new(),
            children: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        for role in ["a", "b", "pa", "pb"] {
            let name = lab.ns(role);
            sh(&["ip", "netns", "add", &name]);
            lab.namespaces.push(name.clone());
            sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        }
        let (a, b, pa, pb) = (lab.ns("a"), lab.ns("b"), lab.ns("pa"), lab.ns("pb"));
        for node in [&a, &b] {
            lab.exec(
                node,
                &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
            );
        }
        // Underlay: node-a ul0 <-> node-b ul0.
        sh(&[
            "ip", "-n", &a, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns",
            &b,
        ]);
        for (node, ip) in [(&a, NODE_A_UL), (&b, NODE_B_UL)] {
            sh(&[
                "ip",
                "-n",
                node,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "ul0",
            ]);
            sh(&["ip", "-n", node, "link", "set", "ul0", "up"]);
        }
        // A pod per node, routed by a /32 on the node and a default route via the node.
        for (node, pod, ip, gw) in [
            (&a, &pa, POD_A, "10.201.1.1"),
            (&b, &pb, POD_B, "10.201.2.1"),
        ] {
            sh(&[
                "ip", "-n", node, "link", "add", "p0", "type", "veth", "peer", "name", "eth0",
                "netns", pod,
            ]);
            sh(&[
                "ip",
                "-n",
                node,
                "addr",
                "add",
                &format!("{gw}/32"),
                "dev",
                "p0",
            ]);
            sh(&["ip", "-n", node, "link", "set", "p0", "up"]);
            sh(&[
                "ip",
                "-n",
                node,
                "route",
                "add",
                &format!("{ip}/32"),
                "dev",
                "p0",
            ]);
            sh(&[
                "ip",
                "-n",
                pod,
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
            sh(&["ip", "-n", pod, "route", "add", gw, "dev", "eth0"]);
            sh(&["ip", "-n", pod, "route", "add", "default", "via", gw]);
        }
        lab
    }

    /// The namespace name of a role (`a`, `b`: nodes; `pa`, `pb`: their pods).
    fn ns(&self, role: &str) -> String {
        format!("nmwg-{}-{role}", self.id)
    }

    /// A short interface name unique to this run (wireguard-go's socket is machine-wide).
    fn ifname(&self, role: &str) -> String {
        format!("nmwg{}{role}", self.id)
    }

    fn exec(&self, ns: &str, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(argv);
        sh(&full)
    }

    fn try_exec(&self, ns: &str, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .output()
            .unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Plain-text main-table routes between the pod networks: what would carry pod traffic in
    /// plaintext if WireGuard let it through.
    fn plaintext_routes(&self) {
        sh(&[
            "ip",
            "-n",
            &self.ns("a"),
            "route",
            "add",
            "10.201.2.0/24",
            "via",
            NODE_B_UL,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.ns("b"),
            "route",
            "add",
            "10.201.1.0/24",
            "via",
            NODE_A_UL,
        ]);
    }

    /// Prints the node's public key, creating its key in `state-<role>`.
    fn pubkey(&self, role: &str) -> String {
        let state = self.path(&format!("state-{role}"));
        sh(&[
            nodemesh(),
            "wireguard",
            "pubkey",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .trim()
        .to_owned()
    }

    fn write_config(&self, nodes: &[(&str, &str, &str, &str)]) -> PathBuf {
        let mut yaml = String::from("nodes:\n");
        for (name, address, cidr, key) in nodes {
            yaml.push_str(&format!(
                "  - {{name: {name}, address: {address}, podCIDR: {cidr}, wireguardPublicKey: \"{key}\"}}\n"
            ));
        }
        yaml.push_str("workloads: []\n");
        let path = self.path("nodemesh.yaml");
        fs::write(&path, yaml).unwrap();
        path
    }

    /// `nodemesh wireguard up` for node `role` in its namespace; waits until it is up.
    fn up(&mut self, role: &str, config: &Path) -> usize {
        let log = self.path(&format!("up-{role}-{}.log", self.children.len()));
        let child = self.spawn_up(role, config, &log);
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains("wireguard up:") {
                return self.children.len() - 1;
            }
            assert!(
                Instant::now() < deadline,
                "node {role} did not come up:\n{text}"
            );
            if let Some(status) = self.children.last_mut().unwrap().try_wait().unwrap() {
                panic!("node {role} exited ({status}):\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn up_args(&self, role: &str, config: &Path) -> Vec<String> {
        let state = self.path(&format!("state-{role}"));
        [
            nodemesh(),
            "wireguard",
            "up",
            "--config",
            config.to_str().unwrap(),
            "--node",
            &format!("node-{role}"),
            "--state-dir",
            state.to_str().unwrap(),
            "--interface",
            &self.ifname(role),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn spawn_up(&self, role: &str, config: &Path, log: &Path) -> Child {
        let out = fs::File::create(log).unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(self.up_args(role, config))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap()
    }

    /// Runs `up` (behind the `wrap` command, if any) expecting it to fail; returns its stderr.
    fn up_fails(&self, role: &str, config: &Path, wrap: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns(role), "timeout", "20"])
            .args(wrap)
            .args(self.up_args(role, config))
            .output()
            .unwrap();
        assert!(!out.status.success(), "up succeeded: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn stop(&mut self, index: usize) {
        let child = &mut self.children[index];
        sh(&["kill", "-TERM", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "up did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn status(&self, role: &str) -> String {
        let state = self.path(&format!("state-{role}"));
        sh(&[
            nodemesh(),
            "wireguard",
            "status",
            "--state-dir",
            state.to_str().unwrap(),
        ])
    }

    /// Pings `dst` from pod namespace `from` until it answers (true) or `wait` passes (false).
    fn reaches(&self, from: &str, dst: &str, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let out = self.try_exec(&self.ns(from), &["ping", "-c", "1", "-W", "1", dst]);
            if out.status.success() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts wireguard-go as node-b's WireGuard, with node-a as its peer.
    fn wireguard_go_b(&mut self, a_pub: &str) -> String {
        let b = self.ns("b");
        let ifname = self.ifname("b");
        self.wg_sockets
            .push(PathBuf::from(format!("/var/run/wireguard/{ifname}.sock")));
        let log = fs::File::create(self.path("wireguard-go.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &b, "wireguard-go", "-f", &ifname])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(&sock).exists() {
            assert!(Instant::now() < deadline, "wireguard-go did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let key_file = self.path("b.key");
        let private = sh(&["wg", "genkey"]);
        fs::write(&key_file, &private).unwrap();
        let mut pubkey = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        pubkey
            .stdin
            .take()
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        let b_pub = String::from_utf8(pubkey.wait_with_output().unwrap().stdout).unwrap();
        self.exec(
            &b,
            &[
                "wg",
                "set",
                &ifname,
                "listen-port",
                "51820",
                "private-key",
                key_file.to_str().unwrap(),
                "peer",
                a_pub,
                "endpoint",
                &format!("{NODE_A_UL}:51820"),
                "allowed-ips",
                "10.201.1.0/24",
            ],
        );
        self.exec(&b, &["ip", "link", "set", &ifname, "mtu", "1420", "up"]);
        self.exec(&b, &["ip", "route", "add", "10.201.1.0/24", "dev", &ifname]);
        b_pub.trim().to_owned()
    }

    /// Everything routing-related of a node namespace, to compare before and after.
    fn snapshot(&self, role: &str) -> String {
        let ns = self.ns(role);
        let mangle = self.exec(&ns, &["iptables-save", "-t", "mangle"]);
        let mangle: Vec<_> = mangle
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l))
            .collect();
        let links = self.exec(&ns, &["ip", "-o", "link", "show"]);
        let links: Vec<_> = links
            .lines()
            .map(|l| l.split(':').nth(1).unwrap_or("").trim())
            .collect();
        format!(
            "{}\n{}\n{}\n{}",
            self.exec(&ns, &["ip", "-4", "rule", "list"]),
            self.exec(&ns, &["ip", "-4", "route", "show", "table", "all"]),
            mangle.join("\n"),
            links.join(" "),
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // The processes' logs, to see why.
            for entry in fs::read_dir(self.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    let text = fs::read_to_string(entry.path()).unwrap_or_default();
                    eprintln!("--- {}\n{text}", entry.path().display());
                }
            }
        }
        for ns in &self.namespaces {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for sock in &self.wg_sockets {
            let _ = fs::remove_file(sock);
        }
    }
}

/// A packet capture on node-b's underlay interface.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(lab: &Lab) -> Self {
        let file = lab.path(&format!("ul-{}.pcap", Instant::now().elapsed().as_nanos()));
        let log = fs::File::create(lab.path("tcpdump.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns("b"),
                "tcpdump",
                "-i",
                "ul0",
                "-U",
                "-n",
                "-s",
                "0",
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(lab.path("tcpdump.log"))
            .unwrap_or_default()
            .contains("listening on")
        {
            assert!(Instant::now() < deadline, "tcpdump did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, file }
    }

    /// Stops the capture; returns its raw bytes and the summary of every IP packet that is not
    /// WireGuard (UDP to or from port 51820).
    fn finish(mut self) -> (Vec<u8>, String) {
        sh(&["kill", "-INT", &self.child.id().to_string()]);
        let _ = self.child.wait();
        let raw = fs::read(&self.file).unwrap();
        let others = Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.file)
            .args(["-n", "ip and not udp port 51820"])
            .output()
            .unwrap();
        (raw, String::from_utf8_lossy(&others.stdout).into_owned())
    }

    fn wireguard_packets(&self) -> usize {
        let out = Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.file)
            .args(["-n", "udp port 51820"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// UDP, ICMP and TCP from pod-a to pod-b, each carrying `marker`; asserts each arrived intact.
fn exchange(lab: &Lab, marker: &str) {
    let pb = lab.ns("pb");
    let pa = lab.ns("pa");
    // Echo servers in pod-b.
    let udp = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pb,
            "socat",
            "UDP4-RECVFROM:9000,fork",
            "EXEC:cat",
        ])
        .spawn()
        .unwrap();
    let tcp = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pb,
            "socat",
            "TCP4-LISTEN:8080,reuseaddr,fork",
            "EXEC:cat",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let echo = |addr: &str| {
        let mut child = Command::new("ip")
            .args([
                "netns", "exec", &pa, "socat", "-t", "2", "-T", "3", "-", addr,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{marker}\n").as_bytes())
            .unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    let udp_answer = echo(&format!("UDP4:{POD_B}:9000"));
    let tcp_answer = echo(&format!("TCP4:{POD_B}:8080"));
    let hex: String = marker
        .bytes()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let ping = lab.try_exec(
        &pa,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", "-p", &hex, POD_B],
    );
    for mut c in [udp, tcp] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert_eq!(udp_answer.trim(), marker, "UDP echo through the tunnel");
    assert_eq!(tcp_answer.trim(), marker, "TCP echo through the tunnel");
    assert!(ping.status.success(), "ping through the tunnel: {ping:?}");
}

/// Asserts a capture shows no marker and nothing but WireGuard between the nodes.
fn assert_only_wireguard(capture: Capture, marker: &str) {
    let wg = capture.wireguard_packets();
    let (raw, others) = capture.finish();
    assert!(
        !contains(&raw, marker.as_bytes()),
        "plaintext marker on the underlay"
    );
    assert!(
        others.trim().is_empty(),
        "non-WireGuard IP packets on the underlay:\n{others}"
    );
    assert!(wg > 0, "no WireGuard packets captured");
}

#[test]
fn nodemesh_to_nodemesh_carries_udp_icmp_tcp_encrypted() {
    if !root_tier("nodemesh_to_nodemesh_carries_udp_icmp_tcp_encrypted") {
        return;
    }
    let mut lab = Lab::new();
    lab.plaintext_routes();
    let (ka, kb) = (lab.pubkey("a"), lab.pubkey("b"));
    let config = lab.write_config(&[
        ("node-a", NODE_A_UL, "10.201.1.0/24", &ka),
        ("node-b", NODE_B_UL, "10.201.2.0/24", &kb),
    ]);
    lab.up("a", &config);
    lab.up("b", &config);
    let capture = Capture::start(&lab);
    assert!(
        lab.reaches("pa", POD_B, Duration::from_secs(10)),
        "pod-a cannot reach pod-b"
    );
    let marker = format!("NODEMESH-PLAINTEXT-{}", lab.id);
    exchange(&lab, &marker);
    assert!(
        lab.reaches("pb", POD_A, Duration::from_secs(5)),
        "pod-b cannot reach pod-a"
    );
    assert_only_wireguard(capture, &marker);

    let status = lab.status("a");
    assert!(status.contains(&format!("peer: {kb}")), "{status}");
    assert!(
        status.contains("latest handshake:") && !status.contains("never"),
        "{status}"
    );
    assert!(status.contains(&format!("public key: {ka}")), "{status}");
    // MTU 1420 on the tunnel.
    let link = lab.exec(&lab.ns("a"), &["ip", "link", "show", &lab.ifname("a")]);
    assert!(link.contains("mtu 1420"), "{link}");
}

#[test]
fn interoperates_with_wireguard_go() {
    if !root_tier("interoperates_with_wireguard_go") {
        return;
    }
    let mut lab = Lab::new();
    let ka = lab.pubkey("a");
    let kb = lab.wireguard_go_b(&ka);
    let config = lab.write_config(&[
        ("node-a", NODE_A_UL, "10.201.1.0/24", &ka),
        ("node-b", NODE_B_UL, "10.201.2.0/24", &kb),
    ]);
    lab.up("a", &config);
    let capture = Capture::start(&lab);
    assert!(
        lab.reaches("pa", POD_B, Duration::from_secs(10)),
        "nodemesh -> wireguard-go"
    );
    assert!(
        lab.reaches("pb", POD_A, Duration::from_secs(5)),
        "wireguard-go -> nodemesh"
    );
    let marker = format!("NODEMESH-INTEROP-{}", lab.id);
    exchange(&lab, &marker);
    assert_only_wireguard(capture, &marker);
    let handshakes = lab.exec(
        &lab.ns("b"),
        &["wg", "show", &lab.ifname("b"), "latest-handshakes"],
    );
    assert!(handshakes.starts_with(&ka), "{handshakes}");
    assert!(
        !handshakes.trim().ends_with("\t0"),
        "wg saw no handshake: {handshakes}"
    );
    let status = lab.status("a");
    assert!(!status.contains("never"), "{status}");
}

#[test]
fn a_wrong_key_never_handshakes_and_leaks_nothing() {
    if !root_tier("a_wrong_key_never_handshakes_and_leaks_nothing") {
        return;
    }
    let mut lab = Lab::new();
    lab.plaintext_routes();
    let (ka, kb) = (lab.pubkey("a"), lab.pubkey("b"));
    let wrong = lab.pubkey("z");
    let config_a = lab.write_config(&[
        ("node-a", NODE_A_UL, "10.201.1.0/24", &ka),
        ("node-b", NODE_B_UL, "10.201.2.0/24", &wrong),
    ]);
    let config_a = {
        let p = lab.path("a.yaml");
        fs::rename(&config_a, &p).unwrap();
        p
    };
    let config_b = lab.write_config(&[
        ("node-a", NODE_A_UL, "10.201.1.0/24", &ka),
        ("node-b", NODE_B_UL, "10.201.2.0/24", &kb),
    ]);
    lab.up("a", &config_a);
    lab.up("b", &config_b);
    let capture = Capture::start(&lab);
    assert!(
        !lab.reaches("pa", POD_B, Duration::from_secs(4)),
        "reached pod-b with a wrong key"
    );
    let marker = format!("NODEMESH-WRONGKEY-{}", lab.id);
    let hex: String = marker
        .bytes()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let _ = lab.try_exec(
        &lab.ns("pa"),
        &["ping", "-c", "2", "-W", "1", "-p", &hex, POD_B],
    );
    let (raw, others) = capture.finish();
    assert!(
        !contains(&raw, marker.as_bytes()),
        "plaintext marker on the underlay"
    );
    assert!(
        others.trim().is_empty(),
        "non-WireGuard IP packets:\n{others}"
    );
    let status = lab.status("a");
    assert!(status.contains("latest handshake: never"), "{status}");
}

#[test]
fn removal_rotation_restart_and_down() {
    if !root_tier("removal_rotation_restart_and_down") {
        return;
    }
    let mut lab = Lab::new();
    let baseline = lab.snapshot("a");
    lab.plaintext_routes();
    let with_routes = lab.snapshot("a");
    let (ka, kb) = (lab.pubkey("a"), lab.pubkey("b"));
    let both = |lab: &Lab, ka: &str| {
        lab.write_config(&[
            ("node-a", NODE_A_UL, "10.201.1.0/24", ka),
            ("node-b", NODE_B_UL, "10.201.2.0/24", &kb),
        ])
    };
    let config = both(&lab, &ka);
    let a = lab.up("a", &config);
    lab.up("b", &config);
    assert!(lab.reaches("pa", POD_B, Duration::from_secs(10)));

    // Rotation: the running node switches to its new key; node-b refuses it until its config
    // has the new key, then the tunnel comes back.
    let state_a = lab.path("state-a");
    let new_ka = sh(&[
        nodemesh(),
        "wireguard",
        "rotate-key",
        "--state-dir",
        state_a.to_str().unwrap(),
    ]);
    let new_ka = new_ka.trim().to_owned();
    assert_ne!(new_ka, ka);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !lab.reaches("pa", POD_B, Duration::from_secs(3)),
        "old key still accepted"
    );
    both(&lab, &new_ka);
    assert!(
        lab.reaches("pa", POD_B, Duration::from_secs(15)),
        "no tunnel with the new key"
    );

    // Restart keeps the key; while down, traffic is dropped (fail closed), not sent in plaintext.
    lab.stop(a);
    assert_eq!(lab.pubkey("a"), new_ka, "restart changed the key");
    let capture = Capture::start(&lab);
    let marker = format!("NODEMESH-DOWN-{}", lab.id);
    let hex: String = marker
        .bytes()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let ping = lab.try_exec(
        &lab.ns("pa"),
        &["ping", "-c", "2", "-W", "1", "-p", &hex, POD_B],
    );
    assert!(
        !ping.status.success(),
        "pod-b reached with the device stopped"
    );
    let (raw, others) = capture.finish();
    assert!(
        !contains(&raw, marker.as_bytes()),
        "plaintext while the device was down"
    );
    assert!(
        others.trim().is_empty(),
        "non-WireGuard IP packets:\n{others}"
    );
    let a = lab.up("a", &config);
    assert!(
        lab.reaches("pa", POD_B, Duration::from_secs(10)),
        "no tunnel after restart"
    );

    // Removing node-b's peer stops traffic to it, still without plaintext.
    lab.write_config(&[("node-a", NODE_A_UL, "10.201.1.0/24", &new_ka)]);
    std::thread::sleep(Duration::from_secs(2));
    let capture = Capture::start(&lab);
    assert!(
        !lab.reaches("pa", POD_B, Duration::from_secs(2)),
        "removed peer still reached"
    );
    let (_, others) = capture.finish();
    assert!(
        others.trim().is_empty(),
        "non-WireGuard IP packets:\n{others}"
    );
    let status = lab.status("a");
    assert!(status.contains("peers: 0"), "{status}");

    // `down` removes exactly what `up` installed.
    lab.stop(a);
    let state = state_a.to_str().unwrap().to_owned();
    let ifname = lab.ifname("a");
    lab.exec(
        &lab.ns("a"),
        &[
            nodemesh(),
            "wireguard",
            "down",
            "--state-dir",
            &state,
            "--interface",
            &ifname,
        ],
    );
    assert_eq!(lab.snapshot("a"), with_routes);
    assert_ne!(baseline, with_routes);
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing() {
    if !root_tier("bad_input_fails_clearly_and_leaves_nothing") {
        return;
    }
    let lab = Lab::new();
    let before = lab.snapshot("a");
    let (ka, kb) = (lab.pubkey("a"), lab.pubkey("b"));

    let config = lab.write_config(&[
        ("node-a", NODE_A_UL, "10.201.1.0/24", &ka),
        ("node-b", NODE_B_UL, "10.201.2.0/24", "not-a-key"),
    ]);
    let err = lab.up_fails("a", &config, &[]);
    assert!(err.contains("nodes[1].wireguardPublicKey"), "{err}");

    let config = lab.write_config(&[
        ("node-a", NODE_A_UL, "10.201.0.0/16", &ka),
        ("node-b", NODE_B_UL, "10.201.2.0/24", &kb),
    ]);
    let err = lab.up_fails("a", &config, &[]);
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

    let config = lab.write_config(&[
        ("node-a", NODE_A_UL, "10.201.1.0/24", &ka),
        ("node-b", NODE_B_UL, "10.201.2.0/24", &kb),
    ]);
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
    let err = lab.up_fails("a", &config, &hide_tun);
    assert!(err.contains("TUN device"), "{err}");

    // The UDP port taken by another process.
    let mut holder = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("a"),
            "socat",
            "UDP4-RECVFROM:51820",
            "-",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let err = lab.up_fails("a", &config, &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(err.contains("UDP port 51820"), "{err}");

    // A group-readable key.
    let key = lab.path("state-a").join("wireguard.key");
    sh(&["chmod", "640", key.to_str().unwrap()]);
    let err = lab.up_fails("a", &config, &[]);
    assert!(err.contains("must not be readable"), "{err}");

    assert_eq!(lab.snapshot("a"), before, "bad input left something behind");
}
