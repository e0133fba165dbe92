//! The relay allocates per connection, never per chunk: moving 64 MiB costs no more allocations
//! than moving 1 MiB. A counting global allocator measures it.
#![allow(clippy::unwrap_used, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator and only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Relays `total` bytes client -> relay -> server and back over in-memory pipes; returns the
/// allocations made while doing so.
async fn allocations_for(total: usize) -> usize {
    let (mut client, mut relay_down) = tokio::io::duplex(256 * 1024);
    let (mut relay_up, mut server) = tokio::io::duplex(256 * 1024);
    let chunk = vec![1u8; 64 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let relay = async {
        nodemesh_proxy::relay::relay(&mut relay_down, &mut relay_up)
            .await
            .unwrap()
    };
    let ends = async {
        let mut sent = 0;
        let mut echoed = 0;
        while sent < total {
            client.write_all(&chunk).await.unwrap();
            sent += chunk.len();
            let mut got = 0;
            while got < chunk.len() {
                got += server.read(&mut sink[..chunk.len() - got]).await.unwrap();
            }
            server.write_all(&sink).await.unwrap();
            let mut back = 0;
            while back < chunk.len() {
                back += client.read(&mut sink[..chunk.len() - back]).await.unwrap();
            }
            echoed += back;
        }
        client.shutdown().await.unwrap();
        server.shutdown().await.unwrap();
        echoed
    };
    let (moved, echoed) = tokio::join!(relay, ends);
    assert_eq!(moved.downstream_to_upstream as usize, total);
    assert_eq!(echoed, total);
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[tokio::test(flavor = "current_thread")]
async fn relay_allocates_per_connection_not_per_chunk() {
    let small = allocations_for(1024 * 1024).await;
    let large = allocations_for(64 * 1024 * 1024).await;
    // 1,024 round trips of 64 KiB more must not add allocations (a few for buffers at most).
    assert!(
        large <= small + 4,
        "1 MiB: {small} allocations, 64 MiB: {large}"
    );
}
