//! The data plane over loopback, compared in one run: direct TCP, HBONE mTLS with one stream, with
//! 8 concurrent streams on one pooled connection, new tunnels per second on a warm pool, and a
//! 1 KiB request/response round trip. Uses the in-process mesh of the integration tests.
#![allow(missing_docs, clippy::unwrap_used)]

use nodemesh_test_support::mesh as support;

use std::net::SocketAddr;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHUNK: usize = 256 * 1024;

/// Pushes `total` bytes through `s` to the echo server and reads them back.
async fn pump(mut s: TcpStream, total: usize) {
    let (mut r, mut w) = s.split();
    let buf = vec![7u8; CHUNK];
    let write = async {
        let mut left = total;
        while left > 0 {
            let n = left.min(CHUNK);
            w.write_all(&buf[..n]).await.unwrap();
            left -= n;
        }
        w.shutdown().await.unwrap();
    };
    let read = async {
        let mut rbuf = vec![0u8; CHUNK];
        let mut got = 0;
        while got < total {
            let n = r.read(&mut rbuf).await.unwrap();
            assert!(n > 0);
            got += n;
        }
    };
    tokio::join!(write, read);
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mesh = rt.block_on(Mesh::start(""));
    let echo = mesh.addr("2.21", ECHO);
    let web = mesh.web();
    let total = 64 * 1024 * 1024;

    let mut g = c.benchmark_group("throughput_64MiB");
    g.throughput(Throughput::Bytes(total as u64))
        .sample_size(10);
    g.bench_function("direct_tcp", |b| {
        b.to_async(&rt)
            .iter(|| async { pump(TcpStream::connect(echo).await.unwrap(), total).await })
    });
    g.bench_function("hbone_1_stream", |b| {
        b.to_async(&rt)
            .iter(|| async { pump(dial(&mesh.a, &web, echo).await, total).await })
    });
    g.bench_function("hbone_8_streams", |b| {
        b.to_async(&rt).iter(|| async {
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let s = dial(&mesh.a, &web, echo).await;
                tasks.push(tokio::spawn(pump(s, total / 8)));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    });
    g.finish();

    let name: SocketAddr = mesh.addr("2.21", NAME);
    c.bench_function("hbone_new_tunnel_warm_pool", |b| {
        b.to_async(&rt).iter(|| async {
            let s = dial(&mesh.a, &web, name).await;
            assert!(!read_all(s).await.is_empty());
        })
    });
    c.bench_function("direct_new_connection", |b| {
        b.to_async(&rt).iter(|| async {
            let s = TcpStream::connect(name).await.unwrap();
            assert!(!read_all(s).await.is_empty());
        })
    });

    for (label, hbone) in [("rr_1KiB_direct", false), ("rr_1KiB_hbone", true)] {
        c.bench_function(label, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let web = web.clone();
                let mesh = &mesh;
                async move {
                    let mut s = if hbone {
                        dial(&mesh.a, &web, echo).await
                    } else {
                        TcpStream::connect(echo).await.unwrap()
                    };
                    s.set_nodelay(true).unwrap();
                    let msg = [1u8; 1024];
                    let mut back = [0u8; 1024];
                    let start = Instant::now();
                    for _ in 0..iters {
                        s.write_all(&msg).await.unwrap();
                        s.read_exact(&mut back).await.unwrap();
                    }
                    start.elapsed()
                }
            })
        });
    }
}

/// Resident memory of this process, in bytes (Linux).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(0)
        * 4096
}

/// RSS growth per idle proxied connection, over 1,000 connections held open through both
/// proxies (client socket, both proxies' state, the HBONE stream, the echo server's task: the
/// whole path in one process). Printed, not timed.
fn idle_connection_memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mesh = rt.block_on(Mesh::start(""));
    let echo = mesh.addr("2.21", ECHO);
    let web = mesh.web();
    let per_connection = rt.block_on(async {
        // Warm up the pool and allocator first.
        let mut warm = Vec::new();
        for _ in 0..100 {
            warm.push(dial(&mesh.a, &web, echo).await);
        }
        for s in &mut warm {
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
        }
        let before = rss();
        let mut held = Vec::new();
        for _ in 0..1000 {
            let mut s = dial(&mesh.a, &web, echo).await;
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            held.push(s);
        }
        let after = rss();
        drop(held);
        drop(warm);
        (after.saturating_sub(before)) / 1000
    });
    eprintln!(
        "idle_connection_memory: {} bytes of RSS per idle proxied connection (whole path, 1,000 connections)",
        per_connection
    );
    let _ = c;
}

criterion_group!(benches, bench, idle_connection_memory);
criterion_main!(benches);
