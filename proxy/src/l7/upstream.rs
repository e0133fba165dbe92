//! The one connection to the destination pod that a tunnel's allowed requests share.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::context::L7Limits;
use super::sniff::HttpProtocol;
use super::timed::TimedBody;
use crate::observe::ResponseFlags;

/// What a connector returns: a TCP connection to the destination pod.
pub type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The connector failed.
    #[error("connecting to the pod failed: {0}")]
    Connect(#[source] io::Error),
    /// The HTTP handshake with the pod failed.
    #[error("HTTP handshake with the pod failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// The pod connection failed while the request was sent or its response awaited.
    #[error("request to the pod failed: {0}")]
    Request(#[source] hyper::Error),
}

/// A request the pod did not answer, as the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The local answer's status.
    pub(crate) status: StatusCode,
    /// Its response flag.
    pub(crate) flags: ResponseFlags,
    /// Its body.
    pub(crate) body: &'static str,
}

impl Failure {
    const CONNECT: Failure = Failure {
        status: StatusCode::SERVICE_UNAVAILABLE,
        flags: ResponseFlags::UpstreamConnectFailure,
        body: "upstream connect error",
    };
    const TERMINATED: Failure = Failure {
        status: StatusCode::BAD_GATEWAY,
        flags: ResponseFlags::UpstreamConnectionTermination,
        body: "upstream request failed",
    };
    const TIMEOUT: Failure = Failure {
        status: StatusCode::GATEWAY_TIMEOUT,
        flags: ResponseFlags::UpstreamRequestTimeout,
        body: "upstream request timeout",
    };
    const BODY_STALLED: Failure = Failure {
        status: StatusCode::REQUEST_TIMEOUT,
        flags: ResponseFlags::StreamIdleTimeout,
        body: "request body timeout",
    };
}

enum Sender {
    H1(http1::SendRequest<TimedBody>),
    H2(http2::SendRequest<TimedBody>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// A lazily opened, reused connection to the pod; reopened when the pod closed it.
pub(crate) struct Upstream<C> {
    connect: C,
    protocol: HttpProtocol,
    slot: Mutex<Option<Sender>>,
}

impl<C> Upstream<C>
where
    C: Fn() -> ConnectFuture + Send + Sync + 'static,
{
    pub(crate) fn new(connect: C, protocol: HttpProtocol) -> Self {
        Self {
            connect,
            protocol,
            slot: Mutex::new(None),
        }
    }

    async fn open(&self) -> Result<Sender, UpstreamError> {
        let tcp = (self.connect)().await.map_err(UpstreamError::Connect)?;
        // Latency matters more than segment count for request/response traffic.
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(tcp);
        match self.protocol {
            HttpProtocol::Http1 => {
                let (sender, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(UpstreamError::Handshake)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "pod connection ended with an error");
                    }
                });
                Ok(Sender::H1(sender))
            }
            HttpProtocol::H2c => {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(io)
                    .await
                    .map_err(UpstreamError::Handshake)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "pod connection ended with an error");
                    }
                });
                Ok(Sender::H2(sender))
            }
        }
    }

    /// Sends `req` on the shared connection, opening it first if needed. A request the
    /// connection refused before writing it (the pod had just closed) is retried once on a
    /// new connection.
    async fn send(&self, mut req: Request<TimedBody>) -> Result<Response<Incoming>, UpstreamError> {
        let mut retried = false;
        loop {
            let mut slot = self.slot.lock().await;
            let mut sender = match slot.take() {
                Some(s) if !s.is_closed() => s,
                _ => self.open().await?,
            };
            if let Sender::H1(s) = &mut sender
                && s.ready().await.is_err()
            {
                sender = self.open().await?;
                if let Sender::H1(s) = &mut sender {
                    s.ready().await.map_err(UpstreamError::Request)?;
                }
            }
            // HTTP/1 requests of one tunnel are sequential (hyper serves them in order), so
            // the lock is only held while the connection is made ready.
            let pending = match &mut sender {
                Sender::H1(s) => futures_util::future::Either::Left(s.try_send_request(req)),
                Sender::H2(s) => futures_util::future::Either::Right(s.try_send_request(req)),
            };
            *slot = Some(sender);
            drop(slot);
            match pending.await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(back) if !retried => {
                        retried = true;
                        req = back;
                        self.forget().await;
                    }
                    _ => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
    }

    /// Forwards `req` under the deadlines of `limits`: the pod has `upstream_timeout` to send
    /// the response head (else 504 `UT`), and the client may pause at most `body_timeout`
    /// inside the request body (else 408 `SI`).
    pub(crate) async fn forward(
        &self,
        req: Request<Incoming>,
        limits: &L7Limits,
    ) -> Result<Response<Incoming>, Failure> {
        let stalled = Arc::new(AtomicBool::new(false));
        let req = req.map(|body| TimedBody::new(body, limits.body_timeout, Arc::clone(&stalled)));
        match tokio::time::timeout(limits.upstream_timeout, self.send(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            // The pod connection is mid-request: no later request may queue behind it.
            Err(_elapsed) => {
                tracing::debug!(after = ?limits.upstream_timeout, "the pod did not answer in time");
                self.forget().await;
                Err(Failure::TIMEOUT)
            }
            Ok(Err(_)) if stalled.load(Ordering::Acquire) => {
                self.forget().await;
                Err(Failure::BODY_STALLED)
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "forwarding a request to the pod failed");
                Err(match error {
                    UpstreamError::Connect(_) | UpstreamError::Handshake(_) => Failure::CONNECT,
                    UpstreamError::Request(_) => Failure::TERMINATED,
                })
            }
        }
    }

    /// Drops the shared connection (after an upgrade took it over).
    pub(crate) async fn forget(&self) {
        *self.slot.lock().await = None;
    }
}
