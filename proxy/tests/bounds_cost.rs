//! What idle and stalled tunnels cost: 400 tunnels web-1 -> db-1 held open, first idle (one
//! byte echoed), then stalled (each client sends 256 KiB and never reads). Prints the process's
//! RSS growth and the bytes each proxy accounts for. A measurement, not a check:
//! `cargo test -p nodemesh-proxy --test bounds_cost -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

use nodemesh_test_support::mesh as support;

use std::time::Duration;

use nodemesh_proxy::ProxyHandle;
use support::{ECHO, Mesh, dial};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TUNNELS: usize = 400;

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn accounted(proxy: &ProxyHandle) -> u64 {
    proxy
        .metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("nodemesh_buffer_bytes ")?.parse().ok())
        .unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn idle_and_stalled_tunnels_cost() {
    let mesh = Mesh::start("").await;
    let db = mesh.addr("2.21", ECHO);
    let mut warm = dial(&mesh.a, &mesh.web(), db).await;
    warm.write_all(b"w").await.unwrap();
    warm.read_exact(&mut [0u8; 1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, a0, b0) = (rss(), accounted(&mesh.a), accounted(&mesh.b));

    let mut held = Vec::with_capacity(TUNNELS);
    for _ in 0..TUNNELS {
        let mut s = dial(&mesh.a, &mesh.web(), db).await;
        s.write_all(b"x").await.unwrap();
        s.read_exact(&mut [0u8; 1]).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss1, a1, b1) = (rss(), accounted(&mesh.a), accounted(&mesh.b));
    println!(
        "{TUNNELS} idle tunnels: RSS +{:.1} MiB ({:.1} KiB each); accounted node-a +{:.1} MiB, node-b +{:.1} MiB",
        mib(rss1 - rss0),
        (rss1 - rss0) as f64 / 1024.0 / TUNNELS as f64,
        mib(a1.saturating_sub(a0)),
        mib(b1.saturating_sub(b0)),
    );

    let mut writers = Vec::new();
    for mut s in held {
        writers.push(tokio::spawn(async move {
            let chunk = vec![9u8; 256 * 1024];
            let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await;
            s
        }));
    }
    let mut held = Vec::new();
    for w in writers {
        held.push(w.await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss2, a2, b2) = (rss(), accounted(&mesh.a), accounted(&mesh.b));
    println!(
        "{TUNNELS} stalled tunnels: RSS +{:.1} MiB ({:.1} KiB each); accounted node-a +{:.1} MiB, node-b +{:.1} MiB",
        mib(rss2 - rss0),
        (rss2 - rss0) as f64 / 1024.0 / TUNNELS as f64,
        mib(a2.saturating_sub(a0)),
        mib(b2.saturating_sub(b0)),
    );
    drop(held);
}
