//! A small blocking HTTP/1.1 GET for the plain endpoints the checks read (the proxy's readiness
//! and admin ports, the CA's 15014): one request per connection, a deadline on everything.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long connecting, sending and reading may take, each.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// The most of an answer that is read.
const MAX_RESPONSE: u64 = 4 << 20;

/// An answer: status, headers (names lowercase) and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers, in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (after `Content-Length`, or to the end of the connection).
    pub body: String,
}

impl Response {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` from `addr`; the error is a sentence for an item's detail.
pub fn get(addr: SocketAddr, path: &str) -> Result<Response, String> {
    let mut tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| format!("{addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: sending GET {path}: {e}"))?;
    let mut raw = Vec::new();
    tcp.take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{addr}: reading the answer to GET {path}: {e}"))?;
    parse(&raw).map_err(|e| format!("{addr}: GET {path}: {e}"))
}

/// Parses a whole HTTP/1.x answer (no chunked bodies: the servers read here send lengths).
pub fn parse(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or("the answer has no end of headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut response = Response {
        status,
        headers,
        body: rest.to_owned(),
    };
    if let Some(len) = response
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
        && len < response.body.len()
    {
        response.body.truncate(len);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 6\r\nDate: Thu, 03 Dec 2026 05:37:48 GMT\r\n\r\nnot ok trailing";
        let r = parse(raw).unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("date"), Some("Thu, 03 Dec 2026 05:37:48 GMT"));
        assert_eq!(r.body, "not ok");
    }

    #[test]
    fn refuses_what_is_not_http() {
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
