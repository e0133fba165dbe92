//! [`RelayIo`]: how the relay reads from and writes to one end. A plain byte stream is read into
//! the relay's buffer and written from it; an end that receives and sends owned chunks (an
//! HTTP/2 stream's DATA frames) hands its chunks over and takes the relay's as they are, so no
//! byte is copied between the socket on one side and HTTP/2 on the other.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

/// One end of a relay. The defaults suit any byte stream: reads go into the relay's buffer,
/// writes copy out of the chunk.
pub trait RelayIo: AsyncRead + AsyncWrite + Unpin {
    /// Whether reads go into the relay's buffer (`false`: the end hands out chunks of its own,
    /// and the relay holds no read buffer for it).
    const READS_INTO_BUFFER: bool = true;

    /// The next bytes received as one chunk; `None` at the end of the stream. The default reads
    /// into the free capacity of `buf` and splits what was read off it.
    fn poll_recv_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(self), cx, buf))?;
        Poll::Ready(Ok((n > 0).then(|| buf.split().freeze())))
    }

    /// Sends from the front of `chunk` as much as can go now, and advances it past that. The
    /// default writes a copy of the bytes.
    fn poll_send_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        let n = ready!(Pin::new(&mut *self).poll_write(cx, chunk))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        chunk.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl RelayIo for tokio::net::TcpStream {}

impl RelayIo for tokio::io::DuplexStream {}
