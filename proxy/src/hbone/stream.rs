//! One CONNECT stream as a byte stream: `h2`'s send and receive halves behind `AsyncRead` and
//! `AsyncWrite`, with no task, channel or buffer of its own between the relay and HTTP/2.
//!
//! Reads hand out the DATA frames `h2` received, and give their flow-control credit back as the
//! bytes are taken; the relay takes them whole and gives `h2` its own chunks ([`RelayIo`]).
//! Writes pass as much as the stream's window allows now; the rest waits for
//! credit, so a slow reader on the far side holds the writer back (no unbounded queue).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::relay::RelayIo;

/// A CONNECT stream's bytes.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not read yet.
    unread: Bytes,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream")
            .field("unread", &self.unread.len())
            .finish_non_exhaustive()
    }
}

impl H2Stream {
    /// The stream whose halves are `send` and `recv`.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
        }
    }

    /// Waits for send credit for up to `want` bytes (> 0) and returns how much there is.
    fn poll_credit(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(want);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(credit)) => return Poll::Ready(Ok(credit.min(want))),
                // The stream is no longer open for sending: why is in the reset.
                None | Some(Err(_)) => return self.poll_reset_error(cx),
            }
        }
    }

    /// Sends `data` (at most what the window allows now), returning how much was taken.
    fn poll_send(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_credit(cx, data.len()))?;
        Poll::Ready(
            self.send
                .send_data(Bytes::copy_from_slice(&data[..n]), false)
                .map(|()| n)
                .or_else(|_| self.reset_error(cx)),
        )
    }

    /// Waits until received bytes are unread: `false` at the end of the stream.
    fn poll_unread(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        while self.unread.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(false)),
                Some(Ok(data)) => self.unread = data,
                Some(Err(error)) => {
                    return Poll::Ready(match error.reason() {
                        // The peer ended the stream without an error: end of the bytes.
                        Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(false),
                        Some(Reason::STREAM_CLOSED) => {
                            Err(io::Error::new(io::ErrorKind::BrokenPipe, error))
                        }
                        _ => Err(to_io(error)),
                    });
                }
            }
        }
        Poll::Ready(Ok(true))
    }

    /// Takes `n` unread bytes; their flow-control credit goes back to the peer, so it sends no
    /// faster than we read.
    fn take(&mut self, n: usize) -> Bytes {
        let _ = self.recv.flow_control().release_capacity(n);
        self.unread.split_to(n)
    }

    /// The error a write meets on a stream the peer reset.
    fn poll_reset_error<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let reason = ready!(self.send.poll_reset(cx));
        Poll::Ready(Err(match reason {
            Ok(Reason::NO_ERROR | Reason::CANCEL | Reason::STREAM_CLOSED) => {
                io::ErrorKind::BrokenPipe.into()
            }
            Ok(reason) => io::Error::other(h2::Error::from(reason)),
            Err(error) => to_io(error),
        }))
    }

    /// [`Self::poll_reset_error`] when the reset is expected to be known already.
    fn reset_error<T>(&mut self, cx: &mut Context<'_>) -> io::Result<T> {
        match self.poll_reset_error(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if ready!(this.poll_unread(cx))? {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.take(n));
        }
        Poll::Ready(Ok(()))
    }
}

/// The relay takes DATA frames as they came and hands its chunks to `h2` as they are: no copy.
impl RelayIo for H2Stream {
    const READS_INTO_BUFFER: bool = false;

    fn poll_recv_chunk(
        &mut self,
        cx: &mut Context<'_>,
        _: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if !ready!(self.poll_unread(cx))? {
            return Poll::Ready(Ok(None));
        }
        Poll::Ready(Ok(Some(self.take(self.unread.len()))))
    }

    fn poll_send_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        if chunk.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let n = ready!(self.poll_credit(cx, chunk.len()))?;
        let front = chunk.split_to(n);
        Poll::Ready(
            self.send
                .send_data(front, false)
                .or_else(|_| self.reset_error(cx)),
        )
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, buf)
    }

    /// HTTP/2 writes out what it was given as its connection is driven: nothing to flush here.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the stream (END_STREAM): the peer reads end of file; reading goes on.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => match ready!(this.send.poll_reset(cx)) {
                // Already ended, or the peer is done with it: nothing left to end.
                Ok(Reason::NO_ERROR) => Poll::Ready(Ok(())),
                _ => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            },
        }
    }
}

/// An `h2` error as an I/O error (the I/O error itself when it is one).
fn to_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        error
            .into_io()
            .unwrap_or_else(|| io::ErrorKind::Other.into())
    } else {
        io::Error::other(error)
    }
}
