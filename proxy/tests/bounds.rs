//! Resource bounds on the in-process mesh: past a listener's cap, a source's cap, the HBONE
//! handshakes in progress or the buffer budget, a new connection is reset at once and counted
//! `overloaded` (metric and flow log) while connections under the bounds go on; an HBONE client
//! that completes TLS and never starts HTTP/2 is closed after the preface deadline.
#![allow(clippy::unwrap_used)]

use nodemesh_test_support::mesh as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodemesh_proxy::bounds::Listener;
use nodemesh_proxy::observe::FlowLogTarget;
use nodemesh_proxy::{ProxyHandle, ProxyOptions};
use serde_json::Value;
use support::{ECHO, Mesh, dial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Polls `f` every 20 ms until it holds; panics naming `what` after 10 s.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_file(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("flows-{node}.json"))
}

/// A mesh writing flow logs into the returned folder; `tweak` adjusts one node's options.
async fn start(tweak: impl Fn(&mut ProxyOptions) + 'static) -> (Mesh, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mesh = Mesh::start_with("", move |o| {
        o.flow_log = FlowLogTarget::File(log_file(&path, &o.node));
        tweak(o);
    })
    .await;
    (mesh, dir)
}

fn metric(proxy: &ProxyHandle, series: &str) -> u64 {
    proxy
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn refused(proxy: &ProxyHandle, reason: &str) -> u64 {
    metric(
        proxy,
        &format!("nodemesh_connections_refused_total{{reason=\"{reason}\"}}"),
    )
}

fn buffer_bytes(proxy: &ProxyHandle) -> u64 {
    metric(proxy, "nodemesh_buffer_bytes")
}

fn flow_reasons(dir: &Path, node: &str) -> Vec<String> {
    std::fs::read_to_string(log_file(dir, node))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| v["reason"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until `node` has refused `n` connections `overloaded`, in its metrics and its flow log.
async fn overloaded(dir: &Path, proxy: &ProxyHandle, node: &str, n: u64) {
    eventually(&format!("{node} counts {n} overloaded"), || {
        refused(proxy, "overloaded") == n
    })
    .await;
    eventually(&format!("{node} logs {n} overloaded"), || {
        flow_reasons(dir, node)
            .iter()
            .filter(|r| *r == "overloaded")
            .count() as u64
            == n
    })
    .await;
}

/// Sends `data` and reads it back, leaving the connection open.
async fn ping(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).await.unwrap();
    let mut back = vec![0; data.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back, data);
}

/// Asserts that `s` is closed (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("{n} bytes on a refused connection"),
        Err(_) => panic!("still open after {within:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_cap_refuses_the_next_connection_overloaded() {
    let (mesh, logs) = start(|o| {
        if o.node == "node-a" {
            o.bounds.outbound_connections = 3;
        }
    })
    .await;
    let (a, db) = (&mesh.a, mesh.addr("2.21", ECHO));
    let mut held = Vec::new();
    for (i, src) in ["1.11", "1.12", "1.11"].into_iter().enumerate() {
        let mut s = dial(a, &mesh.ip(src), db).await;
        ping(&mut s, &[i as u8; 3]).await;
        held.push(s);
    }
    // The fourth, from either source, is reset at once.
    let mut fourth = dial(a, &mesh.ip("1.12"), db).await;
    closed_within(&mut fourth, Duration::from_secs(2)).await;
    overloaded(logs.path(), a, "node-a", 1).await;
    // The three go on; once one closes, a new connection is let in.
    for s in &mut held {
        ping(s, b"still").await;
    }
    drop(held.pop());
    eventually("a connection given back", || {
        a.bounds().open(Listener::Outbound) == 2
    })
    .await;
    let mut again = dial(a, &mesh.web(), db).await;
    ping(&mut again, b"again").await;
    assert_eq!(refused(a, "overloaded"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_cap_refuses_one_source_and_not_the_others() {
    let (mesh, logs) = start(|o| {
        if o.node == "node-a" {
            o.bounds.connections_per_source = 2;
        }
    })
    .await;
    let (a, db) = (&mesh.a, mesh.addr("2.21", ECHO));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = dial(a, &mesh.web(), db).await;
        ping(&mut s, b"web").await;
        held.push(s);
    }
    let mut third = dial(a, &mesh.web(), db).await;
    closed_within(&mut third, Duration::from_secs(2)).await;
    overloaded(logs.path(), a, "node-a", 1).await;
    // Another pod on the node is not held back by web-1's connections.
    let mut other = dial(a, &mesh.ip("1.12"), db).await;
    ping(&mut other, b"local").await;
    for s in &mut held {
        ping(s, b"still").await;
    }
    assert_eq!(refused(a, "overloaded"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_are_bounded_apart() {
    let (mesh, logs) = start(|o| {
        if o.node == "node-b" {
            o.bounds.hbone_handshakes = 2;
        }
    })
    .await;
    let (a, b, db) = (&mesh.a, &mesh.b, mesh.addr("2.21", ECHO));
    // An established tunnel (its HBONE connection is past its handshake).
    let mut tunnel = dial(a, &mesh.web(), db).await;
    ping(&mut tunnel, b"before").await;
    // Two clients that never start TLS take both handshake slots...
    let hbone = mesh.addr("2.21", 15008);
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(hbone).await.unwrap());
    }
    eventually("two handshakes in progress", || {
        b.bounds().handshakes.held() == 2
    })
    .await;
    // ...so a third is reset at once (not after the TLS handshake timeout).
    let started = Instant::now();
    // On loopback the reset may come before the connect's completion is seen.
    if let Ok(mut third) = TcpStream::connect(hbone).await {
        closed_within(&mut third, Duration::from_secs(3)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    overloaded(logs.path(), b, "node-b", 1).await;
    // Established connections go on, and a slot given back serves a new handshake.
    ping(&mut tunnel, b"during").await;
    drop(silent.pop());
    eventually("a handshake slot given back", || {
        b.bounds().handshakes.held() == 1
    })
    .await;
    // local-1 -> db-1 needs a new HBONE connection (another source identity).
    let mut fresh = dial(a, &mesh.ip("1.12"), db).await;
    ping(&mut fresh, b"fresh").await;
    assert_eq!(refused(b, "overloaded"), 1);
}

/// A TLS client with web-1's certificate that completes the handshake with db-1's proxy.
async fn tls_to_db(mesh: &Mesh) -> tokio_rustls::client::TlsStream<TcpStream> {
    use nodemesh_identity::{
        SpiffeId, WatchedCertResolver, client_config, crypto_provider, placeholder_server_name,
    };
    let web = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let db = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/db").unwrap();
    let store = mesh.a.certs().store(&web).unwrap();
    let mut config = client_config(
        crypto_provider(),
        Arc::new(WatchedCertResolver::new(store.subscribe())),
        db,
        mesh.a.certs().bundle(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(mesh.addr("2.21", 15008)).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(placeholder_server_name(), tcp)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_after_tls_are_closed_at_the_preface_deadline() {
    const DEADLINE: Duration = Duration::from_millis(1500);
    let (mesh, _logs) = start(|o| {
        if o.node == "node-b" {
            o.bounds.h2_preface_timeout = DEADLINE;
        }
    })
    .await;
    let b = &mesh.b;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tls_to_db(&mesh).await);
    }
    // A good client is served meanwhile.
    let mut good = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
    ping(&mut good, b"served").await;
    for s in &mut silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(DEADLINE * 4, s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "a silent peer is closed within the deadline: {read:?}"
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= DEADLINE - Duration::from_millis(100),
        "closed at the deadline, not before: {elapsed:?}"
    );
    eventually("five preface refusals counted", || {
        refused(b, "bad_request") == 5
    })
    .await;
    // The good client's connection was not touched.
    ping(&mut good, b"still").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_budget_refuses_new_connections_and_keeps_open_ones() {
    use nodemesh_proxy::hbone::TLS_READ_BUFFER;
    use nodemesh_proxy::relay::INITIAL_BUFFER;
    // Room for one HBONE connection and two idle relays.
    let budget = TLS_READ_BUFFER + 2 * (2 * INITIAL_BUFFER);
    let (mesh, logs) = start(move |o| {
        if o.node == "node-b" {
            o.bounds.memory_budget = budget;
        }
    })
    .await;
    let (a, b, db) = (&mesh.a, &mesh.b, mesh.addr("2.21", ECHO));
    let mut first = dial(a, &mesh.web(), db).await;
    ping(&mut first, b"one").await;
    let one = (TLS_READ_BUFFER + 2 * INITIAL_BUFFER) as u64;
    eventually("one tunnel accounted", || buffer_bytes(b) == one).await;
    let mut second = dial(a, &mesh.web(), db).await;
    ping(&mut second, b"two").await;
    eventually("budget used up", || buffer_bytes(b) == budget as u64).await;
    // A new tunnel is refused; the open ones go on.
    let mut third = dial(a, &mesh.web(), db).await;
    closed_within(&mut third, Duration::from_secs(5)).await;
    overloaded(logs.path(), b, "node-b", 1).await;
    ping(&mut first, b"still").await;
    ping(&mut second, b"still").await;
    // Buffers given back make room again.
    drop(first);
    eventually("a relay's buffers given back", || buffer_bytes(b) == one).await;
    let mut fourth = dial(a, &mesh.web(), db).await;
    ping(&mut fourth, b"four").await;
    assert_eq!(refused(b, "overloaded"), 1);
}
