//! The pods of the in-process mesh: loopback addresses served by an echo, a name and an HTTP
//! server, and the clients the tests call them with.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Echo port (half-close aware).
pub const ECHO: u16 = 8080;
/// Name port: writes the pod's IP, then closes.
pub const NAME: u16 = 9090;
/// HTTP port: answers every request `200` with its path.
pub const HTTP: u16 = 8081;

/// A keep-alive HTTP/1.1 server on :8081 that answers every request `200` with its path.
async fn start_http(ip: &str) {
    let http = TcpListener::bind((ip, HTTP)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = http.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut s = tokio::io::BufReader::new(s);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        use tokio::io::AsyncBufReadExt;
                        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
                        path.len()
                    );
                    if s.get_mut().write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Echo on :8080 (half-close aware), name on :9090 (writes the pod IP, then closes), HTTP on :8081.
pub async fn start_pod(ip: &str) {
    start_http(ip).await;
    let echo = TcpListener::bind((ip, ECHO)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = echo.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let name = TcpListener::bind((ip, NAME)).await.unwrap();
    let ip = ip.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = name.accept().await else {
                return;
            };
            let ip = ip.clone();
            tokio::spawn(async move {
                let _ = s.write_all(ip.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

/// `ip:port` as a socket address.
pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Sends `data`, half-closes, and reads everything back.
pub async fn echo_roundtrip(mut s: TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut out = Vec::with_capacity(data.len());
    let read = r.read_to_end(&mut out);
    let (_, n) = tokio::join!(write, read);
    n.unwrap();
    out
}

/// Reads until EOF; returns what came (empty when the proxy refused).
pub async fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}
