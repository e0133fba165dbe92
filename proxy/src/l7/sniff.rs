//! Is a tunnelled stream HTTP? Peek at its first bytes, then replay them.
//!
//! [`classify`] is a pure function on a byte prefix; [`sniff`] feeds it from a stream with a
//! deadline and hands the stream back wrapped in a [`Rewind`] that replays what was read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface a prior-knowledge (h2c) client starts with.
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest method token accepted before the first space. Longer tokens are "not HTTP": no
/// real method comes close, and it bounds how much is read before deciding.
pub const MAX_METHOD_LEN: usize = 32;

/// What a byte prefix says about a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// A request line: a method token followed by a space.
    Http1,
    /// The HTTP/2 prior-knowledge preface.
    H2c,
    /// Anything else.
    NotHttp,
    /// The prefix is too short to tell.
    NeedMore,
}

/// The HTTP flavour of a stream that is HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpProtocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge, in cleartext inside the tunnel.
    H2c,
}

impl HttpProtocol {
    /// `"http/1.1"` or `"h2c"`, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpProtocol::Http1 => "http/1.1",
            HttpProtocol::H2c => "h2c",
        }
    }
}

/// Whether `b` is an RFC 7230 `tchar` (a method token character).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Classifies the first bytes a client sent.
///
/// The h2c preface wins over the HTTP/1 reading of `PRI `: while the prefix is still a prefix of
/// the preface, more bytes are needed.
pub fn classify(prefix: &[u8]) -> Sniffed {
    if prefix.len() >= H2_PREFACE.len() {
        if prefix.starts_with(H2_PREFACE) {
            return Sniffed::H2c;
        }
    } else if !prefix.is_empty() && H2_PREFACE.starts_with(prefix) {
        return Sniffed::NeedMore;
    }
    for (i, &b) in prefix.iter().enumerate() {
        if b == b' ' {
            return if i == 0 {
                Sniffed::NotHttp
            } else {
                Sniffed::Http1
            };
        }
        if !is_tchar(b) || i >= MAX_METHOD_LEN {
            return Sniffed::NotHttp;
        }
    }
    Sniffed::NeedMore
}

/// Reads the first bytes of `stream` until [`classify`] decides, the client stops sending for
/// `timeout` (a server-first protocol: not HTTP), or the stream ends (not HTTP).
///
/// Returns the protocol (`None`: not HTTP) and the stream, which replays the bytes read.
pub async fn sniff<S>(
    mut stream: S,
    timeout: Duration,
) -> io::Result<(Option<HttpProtocol>, Rewind<S>)>
where
    S: AsyncRead + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(512);
    let verdict = loop {
        match classify(&buf) {
            Sniffed::Http1 => break Some(HttpProtocol::Http1),
            Sniffed::H2c => break Some(HttpProtocol::H2c),
            Sniffed::NotHttp => break None,
            Sniffed::NeedMore => {}
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            // Server-first, or a client that stalls mid-token.
            Err(_elapsed) => break None,
            Ok(Ok(0)) => break None,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((verdict, Rewind::new(buf.freeze(), stream)))
}

/// A stream that first yields bytes already read from it, then reads on. Writes go straight
/// through.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// Wraps `inner`, replaying `prefix` before reading from it.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }

    /// The bytes not replayed yet.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The bytes not replayed yet and the inner stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Release the buffer.
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

/// Read through the relay's buffer: the sniffed prefix first, then the stream.
impl<S: AsyncRead + AsyncWrite + Unpin> crate::relay::RelayIo for Rewind<S> {}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn request_lines_are_http1() {
        for p in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST ",
            b"PROPFIND /x",
            b"M-SEARCH * HTTP/1.1",
            b"get /",
            b"X ",
            b"PRI /not-the-preface HTTP/1.1",
        ] {
            assert_eq!(
                classify(p),
                Sniffed::Http1,
                "{:?}",
                String::from_utf8_lossy(p)
            );
        }
        let longest = [b"A".repeat(MAX_METHOD_LEN), b" /".to_vec()].concat();
        assert_eq!(classify(&longest), Sniffed::Http1);
    }

    #[test]
    fn preface_is_h2c() {
        assert_eq!(classify(H2_PREFACE), Sniffed::H2c);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 18, 4, 0]);
        assert_eq!(classify(&more), Sniffed::H2c);
    }

    #[test]
    fn short_prefixes_need_more() {
        assert_eq!(classify(b""), Sniffed::NeedMore);
        assert_eq!(classify(b"GE"), Sniffed::NeedMore);
        assert_eq!(classify(b"DELETE"), Sniffed::NeedMore);
        // `PRI ` would do for HTTP/1, but it may still become the preface.
        assert_eq!(classify(b"PRI "), Sniffed::NeedMore);
        assert_eq!(classify(&H2_PREFACE[..23]), Sniffed::NeedMore);
        assert_eq!(classify(&b"A".repeat(MAX_METHOD_LEN)), Sniffed::NeedMore);
    }

    #[test]
    fn everything_else_is_not_http() {
        for p in [
            &b" GET /"[..],
            b"\x16\x03\x01\x02\x00",    // TLS ClientHello
            b"SSH-2.0-OpenSSH_9.6\r\n", // `/` is no tchar
            b"GET\t/ HTTP/1.1",
            b"GET\r\n",
            b"\0\0\0\x08",
            b"G\xc3\xa9T /",
        ] {
            assert_eq!(
                classify(p),
                Sniffed::NotHttp,
                "{:?}",
                String::from_utf8_lossy(p)
            );
        }
        let too_long = [b"A".repeat(MAX_METHOD_LEN + 1), b" /".to_vec()].concat();
        assert_eq!(classify(&too_long), Sniffed::NotHttp);
    }

    #[test]
    fn damaged_preface_is_an_http1_token_when_it_has_a_space() {
        // `PRI * HTTP/2.0\r\n\r\nSX...`: not the preface, but `PRI ` is a request line start.
        let mut p = H2_PREFACE.to_vec();
        p[19] = b'X';
        assert_eq!(classify(&p), Sniffed::Http1);
    }

    #[tokio::test]
    async fn sniff_replays_what_it_read() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET").await.expect("write");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client
                .write_all(b" /x HTTP/1.1\r\n\r\n")
                .await
                .expect("write");
            client
        });
        let (proto, mut rewound) = sniff(server, Duration::from_secs(5)).await.expect("sniff");
        assert_eq!(proto, Some(HttpProtocol::Http1));
        let _client = writer.await.expect("join");
        let want = b"GET /x HTTP/1.1\r\n\r\n";
        let mut got = vec![0u8; want.len()];
        rewound.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, want);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_client_is_not_http_after_the_timeout() {
        let (_client, server) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let (proto, rewound) = sniff(server, Duration::from_millis(200))
            .await
            .expect("sniff");
        assert_eq!(proto, None);
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(rewound.prefix().is_empty());
    }

    #[tokio::test]
    async fn closed_stream_is_not_http_and_keeps_its_bytes() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"HEL").await.expect("write");
        drop(client);
        let (proto, rewound) = sniff(server, Duration::from_secs(5)).await.expect("sniff");
        assert_eq!(proto, None);
        assert_eq!(rewound.prefix(), b"HEL");
    }

    #[tokio::test]
    async fn rewind_writes_pass_through() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut rewound = Rewind::new(Bytes::from_static(b"ab"), server);
        rewound.write_all(b"pong").await.expect("write");
        let mut got = [0u8; 4];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"pong");
        client.write_all(b"cd").await.expect("write");
        let mut got = [0u8; 4];
        rewound.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"abcd");
    }
}
