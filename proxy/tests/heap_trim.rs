//! After a burst of connections ends, the proxies give the memory it used back to the kernel.
//! glibc alone keeps it: a thousand closed connections leave their pages resident, scattered
//! between live allocations. Measured on the process's RSS over the in-process mesh (both
//! proxies, the CA, real TLS and HTTP/2 between them, the client and a hold server).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use nodemesh_test_support::mesh::{Mesh, open_idle};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A port of pod 2.21 (node-b) that nothing else serves.
const HOLD: u16 = 7071;
/// Connections in the burst.
const BURST: usize = 1000;

/// This process's resident memory, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    nodemesh_proxy::heap::status_bytes(&status, "VmRSS").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_of_a_burst_of_connections_goes_back_when_it_ends() {
    let mesh = Mesh::start("").await;
    let web = mesh.web();
    // The server keeps what it accepts (after its byte) until told to let go of all of it.
    let listener = TcpListener::bind(mesh.addr("2.21", HOLD)).await.unwrap();
    let (arrived, mut got) = mpsc::channel(BURST);
    let (release, mut released) = mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut kept = Vec::new();
        loop {
            tokio::select! {
                Some(()) = released.recv() => kept.clear(),
                accepted = listener.accept() => {
                    let Ok((mut s, _)) = accepted else { return };
                    let mut byte = [0u8; 1];
                    if s.read_exact(&mut byte).await.is_ok() {
                        kept.push(s);
                        let _ = arrived.send(()).await;
                    }
                }
            }
        }
    });
    // Warm with a burst of the same size: the pooled HBONE connections it takes (a hundred
    // streams each) stay open for the next one, as do certificates and the runtime's tables.
    drop(open_idle(&mesh.a, &web, mesh.addr("2.21", HOLD), &mut got, BURST).await);
    release.send(()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = rss();
    let burst = open_idle(&mesh.a, &web, mesh.addr("2.21", HOLD), &mut got, BURST).await;
    let during = rss();
    let grown = during.saturating_sub(before);
    println!("RSS before the burst {before} B, during {during} B (+{grown})");
    // Had the warm-up burst's memory stayed resident, this one would reuse it and not grow.
    assert!(
        grown > 2 * 1024 * 1024,
        "a burst of {BURST} connections grew RSS by only {grown} B: the warm-up burst's memory \
         was never given back"
    );
    drop(burst);
    release.send(()).await.unwrap();
    // The proxies look every second; their relays end as the closes arrive.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut after = rss();
    while after > before + grown / 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss();
    }
    println!(
        "RSS after the burst ended: {after} B ({} of the growth kept)",
        after.saturating_sub(before) * 100 / grown
    );
    assert!(
        after <= before + grown / 2,
        "a burst of {BURST} connections ended, yet RSS is {after} B: {before} B before, \
         {during} B during"
    );
}
