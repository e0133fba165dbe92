//! The pods' applications: an HTTP server that says who it is and who called it, and a TCP
//! echo server; and the clients the demo and tests call them with. Run the servers in a pod with
//! `nodemesh testbed-app` (a real process in the pod's namespace); run the clients inside a pod
//! with [`crate::Netns::block_on`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The HTTP port of every pod's app.
pub const HTTP_PORT: u16 = 8080;
/// The TCP echo port of every pod's app.
pub const ECHO_PORT: u16 = 9000;
/// Largest request body the HTTP server reads.
const MAX_BODY: usize = 1 << 20;

/// Serves HTTP on `http` and echo on `echo` (TCP and UDP) until the process ends. The HTTP
/// answer is one line: `pod=NAME peer=IP:PORT method=M path=P bytes=N`.
pub async fn serve(name: String, http: SocketAddr, echo: SocketAddr) -> std::io::Result<()> {
    let http = TcpListener::bind(http).await?;
    let udp = tokio::net::UdpSocket::bind(echo).await?;
    let echo = TcpListener::bind(echo).await?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&buf[..n], from).await;
        }
    });
    let name: std::sync::Arc<str> = name.into();
    tokio::spawn(async move {
        loop {
            if let Ok((mut stream, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        }
    });
    loop {
        let (stream, peer) = http.accept().await?;
        let name = name.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(name.clone(), peer, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    name: std::sync::Arc<str>,
    peer: SocketAddr,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => {
            return Ok(hyper::Response::builder()
                .status(413)
                .body(Full::new(Bytes::from_static(b"body too large\n")))
                .unwrap_or_default());
        }
    };
    let line = format!("pod={name} peer={peer} method={method} path={path} bytes={bytes}\n");
    Ok(hyper::Response::new(Full::new(Bytes::from(line))))
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

impl Reply {
    /// The value of `key=` in the app's answer line (`pod`, `peer`, `method`, ...).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.body
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The TCP connection could not be made.
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, std::io::Error),
    /// The connection was made but closed or reset before an answer.
    #[error("no answer from {0}: {1}")]
    NoAnswer(SocketAddr, String),
    /// Nothing happened in time.
    #[error("no answer from {0} within {1:?}")]
    Timeout(SocketAddr, Duration),
}

/// Sends one HTTP/1.1 request (`Connection: close`) to `target` and reads the answer.
pub async fn http(
    target: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Reply, CallError> {
    let call = async {
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| CallError::Connect(target, e))?;
        let no_answer = |e: hyper::Error| CallError::NoAnswer(target, e.to_string());
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(no_answer)?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", target.to_string())
            .header("connection", "close")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CallError::NoAnswer(target, e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(no_answer)?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(no_answer)?
            .to_bytes();
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(CallError::Timeout(target, timeout)))
}

/// Sends `payload` to the echo server at `target`, half-closes, and returns what came back.
pub async fn echo(
    target: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let call = async {
        let mut stream = TcpStream::connect(target)
            .await
            .map_err(|e| CallError::Connect(target, e))?;
        let io = |e: std::io::Error| CallError::NoAnswer(target, e.to_string());
        let (mut r, mut w) = stream.split();
        let send = async {
            w.write_all(payload).await?;
            w.shutdown().await
        };
        let mut back = Vec::with_capacity(payload.len());
        let recv = r.read_to_end(&mut back);
        let (sent, received) = tokio::join!(send, recv);
        sent.map_err(io)?;
        received.map_err(io)?;
        Ok(back)
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(CallError::Timeout(target, timeout)))
}

/// Sends `payload` as one UDP datagram to the echo server at `target` and returns the answer.
pub async fn udp_echo(
    target: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CallError> {
    let call = async {
        let io = |e: std::io::Error| CallError::NoAnswer(target, e.to_string());
        let socket = tokio::net::UdpSocket::bind("0.0.0.0:0").await.map_err(io)?;
        socket.send_to(payload, target).await.map_err(io)?;
        let mut buf = vec![0u8; 65536];
        let n = socket.recv(&mut buf).await.map_err(io)?;
        buf.truncate(n);
        Ok(buf)
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or(Err(CallError::Timeout(target, timeout)))
}
