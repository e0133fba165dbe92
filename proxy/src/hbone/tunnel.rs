//! An open CONNECT tunnel on a pooled HBONE connection: the bytes to and from the destination
//! pod, and the guard that counts it on its connection.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::H2Stream;
use crate::relay::RelayIo;

/// An open CONNECT tunnel: raw bytes to and from the destination pod.
pub struct Tunnel {
    pub(super) io: H2Stream,
    pub(super) _guard: StreamGuard,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

/// Counts an open stream on its pooled connection; on drop, the count falls and the
/// connection's last use is stamped.
pub(super) struct StreamGuard {
    pub(super) streams: Arc<AtomicUsize>,
    pub(super) last_used: Arc<AtomicU64>,
    pub(super) epoch: Instant,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
        self.last_used
            .store(millis(self.epoch.elapsed()), Ordering::Relaxed);
    }
}

/// `d` in whole milliseconds, saturating.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl AsyncRead for Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl RelayIo for Tunnel {
    const READS_INTO_BUFFER: bool = H2Stream::READS_INTO_BUFFER;

    fn poll_recv_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<std::io::Result<Option<Bytes>>> {
        self.io.poll_recv_chunk(cx, buf)
    }

    fn poll_send_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<std::io::Result<()>> {
        self.io.poll_send_chunk(cx, chunk)
    }
}
