//! Bounds under pod churn (issue 13): 10,000 pods are added to the state, traffic reaches many
//! of them (an HBONE pool slot and Istio series per destination pod), then the pods are deleted.
//! The pool's slots and the per-pod series go back to the baseline, and so does the process's
//! memory, within a generous bound.
//!
//! One real CA and two real proxies in process, as in `nodemesh_test_support::mesh`, on their
//! own loopback network 127.200.0.0/16: node-a runs the client pod, node-b the churning pods
//! (a /17 pod CIDR); both read one standalone YAML that the test rewrites.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nodemesh_proxy::{ProxyHandle, ProxyOptions, StateSource};
use nodemesh_test_support::ca::{LocalCa, config_line};
use nodemesh_test_support::mesh::{dial, echo_roundtrip, proxy_options};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

/// Pods added to the state and deleted again.
const PODS: usize = 10_000;
/// How many of them a connection reaches (each keeps one pooled HBONE connection, two sockets).
const REACHED: usize = 2_000;
/// Connections under way at once.
const PARALLEL: usize = 32;

/// The IP of churning pod `i` on node-b: 127.200.128.1 onwards, 250 a /24.
fn pod_ip(i: usize) -> String {
    format!("127.200.{}.{}", 128 + i / 250, 1 + i % 250)
}

/// The standalone YAML (after the `ca:` line) with the first `pods` churning pods.
fn config(pods: usize) -> String {
    let mut out = String::from(
        r#"
nodes:
  - {name: node-a, address: 127.200.0.1, podCIDR: 127.200.1.0/24}
  - {name: node-b, address: 127.200.0.2, podCIDR: 127.200.128.0/17}
namespaces:
  - {name: churn, labels: {nodemesh.io/mesh: enabled}}
workloads:
  - {name: client-1, namespace: churn, serviceAccount: client, ip: 127.200.1.11, node: node-a, labels: {app: client}}
  - {name: keep-1, namespace: churn, serviceAccount: pod, ip: 127.200.255.250, node: node-b, labels: {app: pod}}
"#,
    );
    for i in 0..pods {
        out.push_str(&format!(
            "  - {{name: pod-{i}, namespace: churn, serviceAccount: pod, ip: {}, node: node-b, labels: {{app: pod}}}}\n",
            pod_ip(i)
        ));
    }
    out
}

/// Resident memory of this process, in KiB (`VmRSS` of /proc/self/status).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Memory the allocator holds for live allocations, in KiB (glibc's `mallinfo2`: arena bytes in
/// use plus mmapped blocks).
#[allow(unsafe_code)]
fn heap_in_use_kib() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    ((info.uordblks + info.hblkhd) / 1024) as u64
}

/// Hands memory the allocator keeps but no allocation uses back to the system, so RSS shows
/// what is live rather than what glibc's arenas retain after a burst.
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe { libc::malloc_trim(0) };
}

/// What is bounded: pool slots on node-a, Istio series on both nodes, memory (RSS before and
/// after trimming the allocator, and the heap in use).
#[derive(Debug, Clone, Copy)]
struct Figures {
    slots: usize,
    series_a: usize,
    series_b: usize,
    rss_kib: u64,
    trimmed_rss_kib: u64,
    heap_kib: u64,
}

fn figures(a: &ProxyHandle, b: &ProxyHandle) -> Figures {
    let rss_kib = rss_kib();
    trim();
    Figures {
        slots: a.hbone().slots(),
        series_a: a.metrics().istio_series(),
        series_b: b.metrics().istio_series(),
        rss_kib,
        trimmed_rss_kib: self::rss_kib(),
        heap_kib: heap_in_use_kib(),
    }
}

/// Polls `done` every 50 ms until it holds, up to `limit`.
async fn until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One echo server on every loopback address, standing in for every churning pod.
async fn echo_everywhere() -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// Opens one connection from client-1 to each of `pods`, `PARALLEL` at a time, and checks each
/// echoes through node-b.
async fn reach(a: &ProxyHandle, pods: std::ops::Range<usize>, port: u16) {
    let pods: Vec<usize> = pods.collect();
    for chunk in pods.chunks(PARALLEL) {
        let mut calls = tokio::task::JoinSet::new();
        for &i in chunk {
            let dst: SocketAddr = format!("{}:{port}", pod_ip(i)).parse().unwrap();
            let stream = dial(a, "127.200.1.11", dst).await;
            calls.spawn(async move { (i, echo_roundtrip(stream, b"churn").await) });
        }
        while let Some(done) = calls.join_next().await {
            let (i, echoed) = done.unwrap();
            assert_eq!(echoed, b"churn", "pod-{i} did not echo through the mesh");
        }
    }
}

fn options(config: &std::path::Path, node: &str) -> ProxyOptions {
    ProxyOptions {
        // Reloads rarely enough that parsing 10,000 pods does not dominate, often enough to
        // follow the test quickly.
        reload_interval: Duration::from_millis(200),
        ..proxy_options(StateSource::File(config.to_path_buf()), node)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_slots_series_and_memory_return_to_baseline_after_10000_pods_churn() {
    let files = LocalCa::new(&config(0), &["node-a", "node-b"]);
    let ca = files.start().await;
    let ca_line = config_line(&ca);
    let write = |pods: usize| {
        // Written aside and renamed: a reload never reads half a file.
        let tmp = files.dir.path().join("mesh.yaml.new");
        std::fs::write(&tmp, format!("{ca_line}{}", config(pods))).unwrap();
        std::fs::rename(&tmp, &files.config).unwrap();
    };
    write(0);
    let port = echo_everywhere().await;

    // node-b takes HBONE on every loopback address (its pods are all of 127.200.128.0/17).
    let b = ProxyHandle::start(ProxyOptions {
        inbound_addr: "0.0.0.0:0".parse().unwrap(),
        ..options(&files.config, "node-b")
    })
    .await
    .unwrap();
    let a = ProxyHandle::start(ProxyOptions {
        hbone_port: b.listening.inbound[0].port(),
        ..options(&files.config, "node-a")
    })
    .await
    .unwrap();
    for p in [&a, &b] {
        let mut ready = p.ready();
        tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r))
            .await
            .unwrap()
            .unwrap();
    }
    let workloads = |p: &ProxyHandle| p.store().load().config().workloads().len();

    // Warm up with a few pods (allocator arenas, TLS caches), then delete them: the baseline.
    write(PARALLEL);
    until(Duration::from_secs(10), "the warm-up pods", || {
        workloads(&a) == 2 + PARALLEL && workloads(&b) == 2 + PARALLEL
    })
    .await;
    reach(&a, 0..PARALLEL, port).await;
    write(0);
    until(Duration::from_secs(10), "the warm-up pods to go", || {
        workloads(&a) == 2
            && workloads(&b) == 2
            && a.hbone().slots() == 0
            && a.metrics().istio_series() == 0
            && b.metrics().istio_series() == 0
    })
    .await;
    let before = figures(&a, &b);

    // 10,000 pods arrive; one connection each to the first REACHED of them.
    let started = Instant::now();
    write(PODS);
    until(
        Duration::from_secs(30),
        "10,000 pods in both states",
        || workloads(&a) == 2 + PODS && workloads(&b) == 2 + PODS,
    )
    .await;
    reach(&a, 0..REACHED, port).await;
    let peak = figures(&a, &b);
    assert_eq!(peak.slots, REACHED, "one pool slot per destination pod");
    assert_eq!(peak.series_a, REACHED, "one source-side series per pod");
    assert_eq!(
        peak.series_b, REACHED,
        "one destination-side series per pod"
    );

    // Every churning pod is deleted.
    write(0);
    until(Duration::from_secs(30), "the pods to go", || {
        workloads(&a) == 2 && workloads(&b) == 2
    })
    .await;
    until(
        Duration::from_secs(10),
        "slots and series back to baseline",
        || {
            let now = figures(&a, &b);
            now.slots == before.slots
                && now.series_a == before.series_a
                && now.series_b == before.series_b
        },
    )
    .await;
    let grown = peak.trimmed_rss_kib.saturating_sub(before.trimmed_rss_kib);
    assert!(
        grown > 8 * 1024,
        "the peak should cost memory to be a meaningful check: grew {grown} KiB"
    );
    // The pruned pool's connection tasks close on their own time: poll the bound.
    let bound = before.trimmed_rss_kib + grown / 4;
    let settled = Instant::now();
    let mut after = figures(&a, &b);
    while after.trimmed_rss_kib > bound && settled.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = figures(&a, &b);
    }
    eprintln!(
        "churn of {PODS} pods ({REACHED} reached) in {:?}:\n  before {before:?}\n  peak   {peak:?}\n  after  {after:?}",
        started.elapsed()
    );
    assert!(
        after.trimmed_rss_kib <= bound,
        "memory did not come back: {} KiB of {grown} KiB kept after the churn",
        after.trimmed_rss_kib.saturating_sub(before.trimmed_rss_kib)
    );
    // Untrimmed, glibc keeps part of the burst in its arenas; it must not grow past the peak.
    assert!(
        after.rss_kib <= peak.rss_kib + 8 * 1024,
        "memory grew after the pods were deleted: {after:?} after {peak:?}"
    );
    let heap_grown = peak.heap_kib.saturating_sub(before.heap_kib);
    assert!(
        after.heap_kib <= before.heap_kib + heap_grown / 4,
        "live heap did not come back: {after:?} after {peak:?}"
    );
    let text = a.metrics().render() + &b.metrics().render();
    assert!(
        !text.contains("pod-"),
        "a deleted pod's series is still rendered"
    );
    drop(ca);
    let _ = (a.drain().await, b.drain().await);
}
