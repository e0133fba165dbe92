//! Plain HTTP on 15014: `GET /trust-bundle` (PEM) and `GET /healthz/ready`. Nothing secret is
//! served here, and proxies never take trust from it.

use std::convert::Infallible;
use std::sync::Arc;

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

/// Serves HTTP/1.1 until `stop` turns true.
pub(crate) async fn serve_http(
    listener: TcpListener,
    snapshot: watch::Receiver<Arc<CaSnapshot>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "HTTP accept failed");
                    continue;
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
