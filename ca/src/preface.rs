//! A deadline for the HTTP/2 connection preface and the client's first SETTINGS frame after TLS,
//! so a client that completes TLS and then stays silent (or trickles bytes) is closed instead of
//! holding a connection and a descriptor forever.
//!
//! [`PrefaceDeadline`] wraps the TLS stream handed to tonic: until the 24-byte preface and the
//! whole first frame (its 9-byte header and the length it announces) have been read, a read that
//! would wait past the deadline fails with `TimedOut`, and hyper closes the connection. hyper
//! itself checks that the bytes are a preface and a SETTINGS frame; this only counts them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;
/// A frame header: length (3), type, flags, stream id (4).
const FRAME_HEADER_LEN: usize = 9;
/// The preface and the first frame's header.
const HEAD_LEN: usize = PREFACE_LEN + FRAME_HEADER_LEN;

/// A stream whose first bytes (the HTTP/2 preface and first frame) must arrive before a deadline.
#[derive(Debug)]
pub(crate) struct PrefaceDeadline<S> {
    inner: S,
    /// Running until the preface and first frame are in; `None` afterwards.
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    /// The first [`HEAD_LEN`] bytes read, to learn the first frame's length.
    head: [u8; HEAD_LEN],
    /// Bytes read so far (counted up to `needed`).
    seen: usize,
    /// Bytes that must be read before the deadline: the head, then the head and the frame.
    needed: usize,
}

impl<S> PrefaceDeadline<S> {
    /// Wraps `inner`; the deadline starts now.
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            timeout,
            head: [0; HEAD_LEN],
            seen: 0,
            needed: HEAD_LEN,
        }
    }

    /// Counts freshly read bytes; stops the deadline once the preface and first frame are in.
    fn observe(&mut self, new: &[u8]) {
        if self.deadline.is_none() {
            return;
        }
        if self.seen < HEAD_LEN {
            let take = new.len().min(HEAD_LEN - self.seen);
            self.head[self.seen..self.seen + take].copy_from_slice(&new[..take]);
        }
        let before = self.seen;
        self.seen = self.seen.saturating_add(new.len());
        if before < HEAD_LEN && self.seen >= HEAD_LEN {
            let len = &self.head[PREFACE_LEN..PREFACE_LEN + 3];
            let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
            self.needed = HEAD_LEN + len;
        }
        if self.seen >= self.needed {
            self.deadline = None;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefaceDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                let new = filled.get(before..).unwrap_or_default();
                this.observe(new);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no HTTP/2 preface and SETTINGS within {:?} of the TLS handshake",
                        this.timeout
                    ),
                )))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefaceDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The wrapped stream's connection facts (peer address, TLS), so `remote_addr()` keeps working.
impl<S: Connected> Connected for PrefaceDeadline<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The preface and an empty SETTINGS frame.
    fn hello(settings_len: usize) -> Vec<u8> {
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let len = u32::try_from(settings_len).unwrap().to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], 0x4, 0, 0, 0, 0, 0]);
        out.extend(std::iter::repeat_n(0u8, settings_len));
        out
    }

    #[tokio::test(start_paused = true)]
    async fn silence_fails_the_read_at_the_deadline() {
        let (_client, server) = tokio::io::duplex(1024);
        let mut s = PrefaceDeadline::new(server, Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        let err = s.read(&mut [0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_preface_does_not_restart_the_deadline() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut s = PrefaceDeadline::new(server, Duration::from_secs(10));
        let bytes = hello(6);
        let reader = tokio::spawn(async move {
            let mut buf = [0; 64];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        });
        let start = tokio::time::Instant::now();
        // One byte every 2 s: the whole head would take far longer than the deadline. Once the
        // reader has failed, writes fail too.
        for b in &bytes {
            if client.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            start.elapsed() <= Duration::from_secs(12),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_once_the_first_frame_is_in() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut s = PrefaceDeadline::new(server, Duration::from_secs(10));
        let bytes = hello(6);
        // All but the last payload byte: the deadline still runs.
        client.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        let mut buf = vec![0; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(n, bytes.len() - 1);
        assert!(s.deadline.is_some(), "the frame is not complete yet");
        client.write_all(&bytes[bytes.len() - 1..]).await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        assert!(s.deadline.is_none(), "preface and SETTINGS are in");
        // Idle afterwards is not this deadline's business.
        let idle = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await;
        assert!(idle.is_err(), "still waiting after 60 s: {idle:?}");
    }
}
