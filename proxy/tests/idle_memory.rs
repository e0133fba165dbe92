//! What an idle connection costs the proxies' heap, measured by a counting global allocator over
//! the in-process mesh (both proxies, the CA, real TLS and HTTP/2 between them): a tunnel that
//! carried one byte and went quiet keeps its task, its HTTP/2 stream and its sockets, and no
//! relay buffer, no dial or handshake state, no HTTP server.
#![allow(clippy::unwrap_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use nodemesh_test_support::mesh::{Mesh, open_idle};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

struct Counting;

/// Heap bytes allocated and not freed, over the whole process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A port of pod 2.21 (node-b) that nothing else serves.
const HOLD: u16 = 7070;
/// Connections measured.
const HELD: usize = 200;
/// Heap per idle connection over the whole path (both proxies, the client's and the server's
/// sockets), debug build: 35.7 KB when the connection tasks held their dial, TLS, admission and
/// HTTP-server state for life and hyper kept a task and a channel per stream; 10.4 KB now.
const BOUND: usize = 14 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_costs_the_proxies_little_heap() {
    let mesh = Mesh::start("").await;
    let web = mesh.web();
    // The server keeps what it accepts (after its byte), without a task per connection.
    let listener = TcpListener::bind(mesh.addr("2.21", HOLD)).await.unwrap();
    let (arrived, mut got) = tokio::sync::mpsc::channel(HELD);
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut byte = [0u8; 1];
            if s.read_exact(&mut byte).await.is_ok() {
                kept.push(s);
                let _ = arrived.send(()).await;
            }
        }
    });
    // Warm: the pooled HBONE connection, certificates, the allocator's and runtime's tables.
    let warm = open_idle(&mesh.a, &web, mesh.addr("2.21", HOLD), &mut got, 50).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = LIVE.load(Ordering::Relaxed);
    let held = open_idle(&mesh.a, &web, mesh.addr("2.21", HOLD), &mut got, HELD).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = LIVE.load(Ordering::Relaxed);
    let per_connection = usize::try_from(after - before).unwrap_or(0) / HELD;
    println!("heap per idle connection, whole path: {per_connection} bytes");
    assert!(
        per_connection < BOUND,
        "an idle connection holds {per_connection} bytes of heap (bound {BOUND})"
    );
    drop((warm, held));
}
