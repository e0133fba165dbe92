//! Root tier: bulk content through both encrypted paths, checked end to end. On the real-node
//! testbed (kube-proxy's rules, WireGuard inside the proxies) 1 GiB goes from frontend-a to web-b
//! through HBONE (both proxies, mTLS) and 1 GiB from legacy-a to legacy-b (outside the mesh)
//! through WireGuard; a sink in the server pod answers the SHA-256 of what it read, which must be
//! the client's. Every 64 KiB chunk carries its number, so a lost, repeated or reordered chunk
//! changes the digest. With `NODEMESH_E2E=1` a missing privilege or tool is a failure.
#![allow(clippy::unwrap_used)] // Test code: a panic is a failed test.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{Context, SHA256};
use nodemesh_redirect::Backend;
use nodemesh_testbed::{Testbed, scenario};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BINARY: &str = env!("CARGO_BIN_EXE_nodemesh");
/// The sink's port in the server pods.
const SINK_PORT: u16 = 9555;
const CHUNK: usize = 64 * 1024;
/// 1 GiB.
const CHUNKS: u64 = 16 * 1024;
/// Generous: the slowest path (userspace WireGuard in a debug build) runs at a few hundred Mbit/s.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(240);

/// Reads one connection to its end and answers the SHA-256 of what came.
async fn sink(listener: std::net::TcpListener) {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut digest = Context::new(&SHA256);
    let mut buf = vec![0u8; CHUNK];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => digest.update(&buf[..n]),
        }
    }
    let _ = tcp.write_all(digest.finish().as_ref()).await;
    let _ = tcp.shutdown().await;
}

/// Sends 1 GiB of numbered chunks to `target`, half-closes, and returns (the digest sent, the
/// digest the sink answered, the rate in Gbit/s).
async fn send_gib(target: SocketAddr) -> std::io::Result<(Vec<u8>, Vec<u8>, f64)> {
    let pattern: Vec<u8> = (0..16 * CHUNK)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect();
    let mut tcp = tokio::net::TcpStream::connect(target).await?;
    let mut digest = Context::new(&SHA256);
    let mut chunk = vec![0u8; CHUNK];
    let start = Instant::now();
    for i in 0..CHUNKS {
        let at = (i as usize % 16) * CHUNK;
        chunk.copy_from_slice(&pattern[at..at + CHUNK]);
        chunk[..8].copy_from_slice(&i.to_be_bytes());
        digest.update(&chunk);
        tcp.write_all(&chunk).await?;
    }
    tcp.shutdown().await?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await?;
    let gbit = (CHUNKS * CHUNK as u64 * 8) as f64 / start.elapsed().as_secs_f64() / 1e9;
    Ok((digest.finish().as_ref().to_vec(), answer, gbit))
}

/// Runs a sink in `server` and sends 1 GiB to it from `client`; panics unless the digests agree.
fn relay_gib(bed: &Testbed, client: &str, server: &str, path: &str) {
    let ip = bed.pod_ip(server).unwrap();
    let listener = bed
        .pod(server)
        .unwrap()
        .run(move || std::net::TcpListener::bind((ip, SINK_PORT)))
        .unwrap()
        .unwrap();
    let sink = bed
        .pod(server)
        .unwrap()
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(sink(listener))
        })
        .unwrap();
    let target = SocketAddr::from((ip, SINK_PORT));
    let sent = bed
        .pod(client)
        .unwrap()
        .block_on(async move { tokio::time::timeout(TRANSFER_TIMEOUT, send_gib(target)).await })
        .unwrap();
    let (ours, theirs, gbit) = match sent {
        Ok(Ok(sent)) => sent,
        Ok(Err(e)) => panic!("{client} -> {server} through {path}: {e}"),
        Err(_) => panic!("{client} -> {server} through {path}: not done in {TRANSFER_TIMEOUT:?}"),
    };
    sink.join().unwrap();
    eprintln!("1 GiB {client} -> {server} through {path}: {gbit:.2} Gbit/s");
    assert_eq!(
        theirs, ours,
        "{client} -> {server} through {path}: the sink's SHA-256 differs from what was sent"
    );
}

/// The tunnel device's transmitted bytes on `node`.
fn tunnel_tx_bytes(bed: &Testbed, node: &str) -> u64 {
    let out = bed
        .node(node)
        .unwrap()
        .exec(&["ip", "-s", "-j", "link", "show", "nodemesh-wg0"])
        .unwrap();
    let links: serde_json::Value = serde_json::from_str(&out).unwrap();
    links[0]["stats64"]["tx"]["bytes"].as_u64().unwrap()
}

#[test]
fn a_gib_keeps_its_content_through_hbone_and_wireguard() {
    let backend = Backend::Nftables;
    if !nodemesh_test_support::root_tier(
        "a_gib_keeps_its_content_through_hbone_and_wireguard",
        backend.tools(),
    ) {
        return;
    }
    let bed = scenario::wireguard_mesh(scenario::shop_for_tcp(backend), BINARY, backend);

    let before = tunnel_tx_bytes(&bed, "node-a");
    relay_gib(&bed, "frontend-a", "web-b", "HBONE");
    let hbone_tunnel = tunnel_tx_bytes(&bed, "node-a") - before;
    let flow = scenario::find_flow(&bed, "node-a", |r| {
        r["direction"] == "outbound"
            && r["dst"]["port"] == SINK_PORT
            && r["bytes_received"].as_u64() >= Some(CHUNKS * CHUNK as u64)
    });
    assert!(
        flow.is_some(),
        "node-a's flow log has no outbound record of the GiB to web-b: it did not go through the proxy"
    );
    assert!(
        hbone_tunnel < 64 * 1024 * 1024,
        "HBONE went through the tunnel too ({hbone_tunnel} bytes): it is TLS already"
    );

    let before = tunnel_tx_bytes(&bed, "node-a");
    relay_gib(&bed, "legacy-a", "legacy-b", "WireGuard");
    let tunnel = tunnel_tx_bytes(&bed, "node-a") - before;
    assert!(
        tunnel >= CHUNKS * CHUNK as u64,
        "only {tunnel} bytes left through the tunnel device: the GiB did not go through WireGuard"
    );
}
