//! Plain HTTP on 15014: `GET /trust-bundle` (PEM) and `GET /healthz/ready`. Nothing secret is
//! served here, and proxies never take trust from it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::service::CaSnapshot;

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Answers one HTTP request from the current snapshot.
pub fn route(snapshot: &CaSnapshot, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match path {
        "/trust-bundle" => respond(
            StatusCode::OK,
            "application/x-pem-file",
            snapshot.authority.bundle().to_pem(),
        ),
        "/healthz/ready" => respond(StatusCode::OK, "text/plain", "ready\n"),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /trust-bundle or /healthz/ready\n",
        ),
    }
}

/// How long to wait after each failed accept in a row: 10 ms, doubling up to 1 s.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    /// The first wait.
    pub const INITIAL: Duration = Duration::from_millis(10);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(1);

    /// The wait after one more failure.
    pub fn failed(&mut self) -> Duration {
        let wait = Self::INITIAL.saturating_mul(1 << self.failures.min(16));
        self.failures = self.failures.saturating_add(1);
        wait.min(Self::MAX)
    }

    /// An accept succeeded: the next failure waits [`AcceptBackoff::INITIAL`] again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Serves HTTP/1.1 until `stop` turns true.
pub(crate) async fn serve_http(
    listener: TcpListener,
    snapshot: watch::Receiver<Arc<CaSnapshot>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    backoff.reset();
                    conn
                }
                Err(error) => {
                    // Out of descriptors, say: waiting lets connections close; retrying at once
                    // would spin a core and flood the log.
                    let wait = backoff.failed();
                    tracing::warn!(%error, retry_in = ?wait, "HTTP accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => continue,
                        () = crate::server::stopped(&mut stop) => return,
                    }
                }
            },
            () = crate::server::stopped(&mut stop) => return,
        };
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let current = Arc::clone(&snapshot.borrow());
                let response = route(&current, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(error) = conn.await {
                tracing::debug!(%error, "HTTP connection error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_and_a_success_resets() {
        let mut b = AcceptBackoff::default();
        let waits: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.failed(), AcceptBackoff::INITIAL);
    }
}
