//! The start of an HTTP/2 connection, read before the HTTP/2 server takes over, so a client
//! that completes TLS and then stays silent is closed after a deadline: [`check`] (sans IO)
//! says whether bytes hold the client preface and a first SETTINGS frame; [`read`] reads them
//! and hands back a stream that replays them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
/// A client's first SETTINGS comes before it knows ours: at most the default frame size.
const MAX_FIRST_FRAME: usize = 16_384;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Too few bytes yet; nothing wrong so far.
    Incomplete,
    /// The preface and a whole SETTINGS frame: the first `n` bytes.
    Complete(usize),
    /// Not an HTTP/2 client's start.
    Invalid(&'static str),
}

/// Checks the first bytes of a connection: the preface, then a SETTINGS frame on stream 0
/// without ACK, of a valid length.
pub fn check(bytes: &[u8]) -> Start {
    let head = bytes.len().min(PREFACE.len());
    if bytes[..head] != PREFACE[..head] {
        return Start::Invalid("not the HTTP/2 client preface");
    }
    let Some(frame) = bytes.get(PREFACE.len()..PREFACE.len() + FRAME_HEADER) else {
        return Start::Incomplete;
    };
    let length = usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
    let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
    if frame[3] != SETTINGS {
        return Start::Invalid("the first frame is not SETTINGS");
    }
    if frame[4] & ACK != 0 || stream != 0 || length % 6 != 0 || length > MAX_FIRST_FRAME {
        return Start::Invalid("a malformed first SETTINGS frame");
    }
    let total = PREFACE.len() + FRAME_HEADER + length;
    if bytes.len() >= total {
        Start::Complete(total)
    } else {
        Start::Incomplete
    }
}

/// Why [`read`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum PrefaceError {
    /// The connection failed or closed first.
    #[error("the connection ended before the HTTP/2 preface: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not an HTTP/2 client's.
    #[error("{0}")]
    Invalid(&'static str),
}

/// Reads the preface and the first SETTINGS frame from `stream`; returns it wrapped so the
/// HTTP/2 server reads them again first.
pub async fn read<S>(mut stream: S) -> Result<Replay<S>, PrefaceError>
where
    S: AsyncRead + Unpin,
{
    let mut bytes = Vec::with_capacity(PREFACE.len() + FRAME_HEADER + 64);
    loop {
        match check(&bytes) {
            Start::Complete(_) => break,
            Start::Invalid(why) => return Err(PrefaceError::Invalid(why)),
            Start::Incomplete => {}
        }
        if stream.read_buf(&mut bytes).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(Replay {
        head: bytes,
        pos: 0,
        inner: stream,
    })
}

/// A stream whose first bytes were read already: they are read again first. Writes go
/// straight through.
#[derive(Debug)]
pub struct Replay<S> {
    head: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.head.len() {
            let n = buf.remaining().min(this.head.len() - this.pos);
            buf.put_slice(&this.head[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.head.len() {
                this.head = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn settings(length: usize, flags: u8, stream: u32) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        out.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
        out.push(SETTINGS);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend(std::iter::repeat_n(0, length));
        out
    }

    #[test]
    fn a_preface_and_settings_are_complete_byte_by_byte() {
        let start = settings(12, 0, 0);
        for n in 0..start.len() {
            assert_eq!(check(&start[..n]), Start::Incomplete, "{n} bytes");
        }
        assert_eq!(check(&start), Start::Complete(start.len()));
        let mut more = start.clone();
        more.extend_from_slice(b"next frame");
        assert_eq!(check(&more), Start::Complete(start.len()));
    }

    #[test]
    fn anything_else_is_invalid() {
        assert!(matches!(check(b"GET / HTTP/1.1\r\n"), Start::Invalid(_)));
        assert!(matches!(check(b"PRX"), Start::Invalid(_)));
        let mut ping = settings(0, 0, 0);
        ping[PREFACE.len() + 3] = 0x6;
        assert!(matches!(check(&ping), Start::Invalid(_)));
        for bad in [
            settings(0, ACK, 0),
            settings(0, 0, 1),
            settings(7, 0, 0),
            settings(MAX_FIRST_FRAME + 6, 0, 0),
        ] {
            assert!(matches!(check(&bad), Start::Invalid(_)));
        }
    }

    #[tokio::test]
    async fn read_replays_what_it_read_then_the_rest() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut sent = settings(6, 0, 0);
        sent.extend_from_slice(b"and then");
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        let mut replay = read(server).await.unwrap();
        let mut got = Vec::new();
        replay.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn read_fails_on_eof_and_garbage() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(&PREFACE[..10]).await.unwrap();
        drop(client);
        assert!(matches!(read(server).await, Err(PrefaceError::Io(_))));
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"\x16\x03\x01 hello").await.unwrap();
        assert!(matches!(read(server).await, Err(PrefaceError::Invalid(_))));
    }
}
