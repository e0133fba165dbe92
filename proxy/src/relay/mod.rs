//! Bidirectional byte relay: half-close passed on both ways, one read buffer per direction reused
//! for every chunk. Buffers start small ([`INITIAL_BUFFER`]), are held only while bytes flow (an
//! idle connection holds none) and grow once to [`RELAY_BUFFER`] when a read fills them (large
//! reads for throughput), if the proxy's [`MemoryBudget`] (its buffer bytes, relays' and others')
//! has room; every byte of them is accounted there. An end that speaks in owned chunks (an
//! HTTP/2 stream, see [`RelayIo`]) needs no buffer: its chunks pass through uncopied.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};

mod budget;
mod end;

pub use budget::{Charge, MemoryBudget};
pub use end::RelayIo;

/// Largest buffer per direction: large enough for TLS records and big TCP reads.
pub const RELAY_BUFFER: usize = 64 * 1024;

/// First buffer per direction: what an idle connection costs (1 KiB: 4 KiB cost 52 KiB of RSS
/// per idle connection over both proxies, 1 KiB 38 KiB; `scripts/bench-netns`).
pub const INITIAL_BUFFER: usize = 1024;

/// Bytes moved by a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the downstream (client) side to the upstream side.
    pub downstream_to_upstream: u64,
    /// From the upstream side to the downstream side.
    pub upstream_to_downstream: u64,
}

/// One direction: take a chunk from the reader, write it all out, again; at EOF, flush and shut
/// the writer down (half-close).
#[derive(Debug)]
struct Pipe {
    /// The read buffer of a reader that reads into one (empty until bytes come). Chunks are
    /// split off its front; the rest of its capacity takes the next read.
    buf: BytesMut,
    /// The buffer's size now: [`INITIAL_BUFFER`], or [`RELAY_BUFFER`] once grown.
    size: usize,
    /// Read and not written yet.
    chunk: Bytes,
    /// The last read filled the buffer: grow it before the next one.
    filled: bool,
    read_done: bool,
    need_flush: bool,
    done: bool,
    moved: u64,
}

impl Pipe {
    fn new() -> Self {
        Self {
            // Allocated for the first read (see `poll_copy`).
            buf: BytesMut::new(),
            size: INITIAL_BUFFER,
            chunk: Bytes::new(),
            filled: false,
            read_done: false,
            need_flush: false,
            done: false,
            moved: 0,
        }
    }

    /// Makes room for the next read: grows the buffer to [`RELAY_BUFFER`] after a read that
    /// filled it (if the budget allows), and takes a fresh (or reclaimed) buffer when less than
    /// half of one is left. Nothing is zeroed: reads fill the capacity as it is.
    fn make_room(&mut self, charge: &mut Charge) {
        if self.filled {
            self.filled = false;
            let more = RELAY_BUFFER - self.size;
            if more > 0 && charge.try_grow(more) {
                self.size = RELAY_BUFFER;
            }
        }
        if self.buf.capacity() < self.size / 2 {
            // Reclaims the allocation in place when every chunk split off it is gone.
            self.buf.reserve(self.size);
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        charge: &mut Charge,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: RelayIo + ?Sized,
        W: RelayIo + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.chunk.is_empty() && !self.read_done {
                let room = if R::READS_INTO_BUFFER {
                    self.make_room(charge);
                    self.buf.capacity()
                } else {
                    usize::MAX
                };
                match reader.poll_recv_chunk(cx, &mut self.buf) {
                    Poll::Pending => {
                        // Nothing to read now. A first buffer that never grew goes back until
                        // bytes come (an idle connection holds none), at the price of one
                        // 1 KiB allocation per burst of a small-message connection, served by
                        // the allocator's thread cache; a grown one is kept for the next burst.
                        if self.size == INITIAL_BUFFER {
                            self.buf = BytesMut::new();
                        }
                        // Push out what was written.
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(Some(chunk))) => {
                        self.filled = chunk.len() >= room;
                        self.chunk = chunk;
                    }
                    Poll::Ready(Ok(None)) => self.read_done = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
            while !self.chunk.is_empty() {
                let before = self.chunk.len();
                ready!(writer.poll_send_chunk(cx, &mut self.chunk))?;
                self.moved += (before - self.chunk.len()) as u64;
                self.need_flush = true;
            }
            // Let go of the written chunk: its buffer can be reclaimed for the next read.
            self.chunk = Bytes::new();
            if self.read_done {
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Copies both ways until both directions are closed. When one side finishes writing, the other
/// side's write half is shut down (half-close), and the reverse direction keeps flowing. The
/// buffers are accounted against `budget` while the relay runs.
pub async fn relay_in<D, U>(
    budget: &Arc<MemoryBudget>,
    downstream: &mut D,
    upstream: &mut U,
) -> io::Result<Transferred>
where
    D: RelayIo + ?Sized,
    U: RelayIo + ?Sized,
{
    let mut charge = budget.charge(2 * INITIAL_BUFFER);
    let (mut down, mut up) = (Pipe::new(), Pipe::new());
    poll_fn(|cx| {
        let d = down.poll_copy(cx, &mut charge, &mut *downstream, &mut *upstream)?;
        let u = up.poll_copy(cx, &mut charge, &mut *upstream, &mut *downstream)?;
        match (d, u) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok::<(), io::Error>(())),
            _ => Poll::Pending,
        }
    })
    .await?;
    Ok(Transferred {
        downstream_to_upstream: down.moved,
        upstream_to_downstream: up.moved,
    })
}

/// [`relay_in`] with buffers no proxy accounts for.
pub async fn relay<D, U>(downstream: &mut D, upstream: &mut U) -> io::Result<Transferred>
where
    D: RelayIo + ?Sized,
    U: RelayIo + ?Sized,
{
    relay_in(&MemoryBudget::unlimited(), downstream, upstream).await
}

/// [`relay_in`], for callers that only count: a relay that ends with an error is logged and
/// counts as nothing moved.
pub async fn relay_logged_in<D, U>(
    budget: &Arc<MemoryBudget>,
    downstream: &mut D,
    upstream: &mut U,
) -> Transferred
where
    D: RelayIo + ?Sized,
    U: RelayIo + ?Sized,
{
    relay_in(budget, downstream, upstream)
        .await
        .unwrap_or_else(|error| {
            tracing::debug!(%error, "relay ended with an error");
            Transferred::default()
        })
}

/// [`relay_logged_in`] with buffers no proxy accounts for.
pub async fn relay_logged<D, U>(downstream: &mut D, upstream: &mut U) -> Transferred
where
    D: RelayIo + ?Sized,
    U: RelayIo + ?Sized,
{
    relay_logged_in(&MemoryBudget::unlimited(), downstream, upstream).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn budget_charges_always_grows_within_and_gives_back() {
        let budget = MemoryBudget::new(100);
        let mut a = budget.charge(60);
        assert!(!budget.exhausted());
        assert!(!a.try_grow(50), "growth past the budget is refused");
        assert!(a.try_grow(40));
        assert!(budget.exhausted());
        let b = budget.charge(10);
        assert_eq!((budget.used(), a.bytes(), b.bytes()), (110, 100, 10));
        drop(a);
        assert_eq!(budget.used(), 10);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn buffers_start_small_and_grow_when_reads_fill_them() {
        let budget = MemoryBudget::new(1024 * 1024);
        let (mut client, mut down) = tokio::io::duplex(256 * 1024);
        let (mut up, mut server) = tokio::io::duplex(256 * 1024);
        let relay = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { relay_in(&budget, &mut down, &mut up).await.unwrap() }
        });
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(budget.used(), 2 * INITIAL_BUFFER, "idle: two small buffers");
        // A burst fills the small buffer: the client-to-server one grows, the other does not.
        let burst = vec![7u8; 512 * 1024];
        let writer = tokio::spawn(async move {
            client.write_all(&burst).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 512 * 1024, "half-close passed on after the data");
        assert_eq!(budget.used(), RELAY_BUFFER + INITIAL_BUFFER);
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut client = writer.await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(
            back, b"bye",
            "the reverse direction flows after the half-close"
        );
        let moved = relay.await.unwrap();
        assert_eq!(
            (moved.downstream_to_upstream, moved.upstream_to_downstream),
            (4 + 512 * 1024, 3)
        );
        assert_eq!(budget.used(), 0, "a finished relay gives its bytes back");
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer_and_a_grown_one_keeps_it() {
        let budget = MemoryBudget::unlimited();
        let mut charge = budget.charge(2 * INITIAL_BUFFER);
        let (mut client, mut reader) = tokio::io::duplex(256 * 1024);
        let (mut writer, mut server) = tokio::io::duplex(256 * 1024);
        let mut pipe = Pipe::new();
        let mut step = |pipe: &mut Pipe, reader: &mut tokio::io::DuplexStream| {
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let _ = pipe.poll_copy(&mut cx, &mut charge, reader, &mut writer);
        };
        step(&mut pipe, &mut reader);
        assert_eq!(pipe.buf.capacity(), 0, "nothing read yet: no buffer");
        client.write_all(b"ping").await.unwrap();
        step(&mut pipe, &mut reader);
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        assert_eq!(
            pipe.buf.capacity(),
            0,
            "idle again: the small buffer went back"
        );
        client
            .write_all(&vec![1u8; 4 * INITIAL_BUFFER])
            .await
            .unwrap();
        step(&mut pipe, &mut reader);
        assert_eq!(
            (pipe.size, pipe.buf.capacity() >= RELAY_BUFFER / 2),
            (RELAY_BUFFER, true),
            "a read that filled it grew it, and it stays"
        );
    }

    #[tokio::test]
    async fn buffers_stay_small_when_the_budget_has_no_room() {
        let budget = MemoryBudget::new(2 * INITIAL_BUFFER);
        let (mut client, mut down) = tokio::io::duplex(256 * 1024);
        let (mut up, mut server) = tokio::io::duplex(256 * 1024);
        let relay = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { relay_in(&budget, &mut down, &mut up).await.unwrap() }
        });
        let burst = vec![7u8; 256 * 1024];
        let writer = tokio::spawn(async move {
            client.write_all(&burst).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let mut all = Vec::new();
        server.read_to_end(&mut all).await.unwrap();
        assert_eq!(
            all.len(),
            256 * 1024,
            "the connection goes on with small buffers"
        );
        assert_eq!(budget.used(), 2 * INITIAL_BUFFER);
        server.shutdown().await.unwrap();
        writer.await.unwrap();
        relay.await.unwrap();
        assert_eq!(budget.used(), 0);
    }
}
