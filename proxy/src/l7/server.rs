//! The HTTP server inside a tunnel: every request is authorized, allowed ones are forwarded to
//! the pod over one shared connection.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nodemesh_policy::{HttpRequest, Reason, Verdict};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::body::{Activity, Finish, L7Body};
use super::context::{L7Context, RequestRecord};
use super::headers::{
    is_websocket_upgrade, raw_path, request_authority, strip_hop_by_hop, to_upstream,
};
use super::sniff::{HttpProtocol, Rewind, sniff};
use super::upstream::{ConnectFuture, Upstream};
use crate::observe::ResponseFlags;

/// The body of a request denied by policy, as Istio's proxies send it.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// What became of a tunnelled stream.
// Returned once per tunnel and moved once: boxing the stream would cost more than it saves.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum L7Outcome<S> {
    /// The stream was HTTP and has been served to its end.
    Served(L7Summary),
    /// The stream is not HTTP: decide it at L4 ([`NotHttp::decide`]) and, if allowed, relay
    /// its bytes (the ones already read are replayed first).
    NotHttp(NotHttp<S>),
}

/// A stream that is not HTTP, handed back untouched.
#[derive(Debug)]
pub struct NotHttp<S> {
    /// The stream, replaying what was peeked.
    pub stream: Rewind<S>,
    /// The context it came with.
    pub context: L7Context,
}

impl<S> NotHttp<S> {
    /// The L4 decision that stands for a non-HTTP stream (see [`L7Context::decide_connection`]).
    pub fn decide(&self) -> super::context::ConnectionDecision {
        self.context.decide_connection()
    }
}

/// Bytes copied through an upgraded (WebSocket) connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpgradedBytes {
    /// From the client to the pod.
    pub from_client: u64,
    /// From the pod to the client.
    pub from_pod: u64,
}

/// What happened on a served HTTP stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Summary {
    /// HTTP/1 or h2c.
    pub protocol: HttpProtocol,
    /// Requests received (each was reported through [`L7Context::on_request`]).
    pub requests: u64,
    /// Requests answered by the proxy itself with 400 or 403.
    pub denied: u64,
    /// Set when the connection was upgraded (WebSocket) and then relayed raw.
    pub upgraded: Option<UpgradedBytes>,
}

/// Why serving a tunnel ended badly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum L7Error {
    /// Reading the first bytes of the stream failed.
    #[error("reading the first bytes of the tunnel failed: {0}")]
    Sniff(#[source] io::Error),
    /// The client's HTTP connection failed: a malformed request (answered 400 by the server),
    /// a request head too slow or too large, or an I/O error.
    #[error("client HTTP connection failed after {} requests: {source}", summary.requests)]
    Downstream {
        /// What hyper reported.
        #[source]
        source: hyper::Error,
        /// What was served before.
        summary: L7Summary,
    },
}

impl L7Error {
    /// What was served before the failure, when serving had begun.
    pub fn summary(&self) -> Option<&L7Summary> {
        match self {
            L7Error::Sniff(_) => None,
            L7Error::Downstream { summary, .. } => Some(summary),
        }
    }

    /// Whether the client was too slow sending a request head.
    pub fn is_timeout(&self) -> bool {
        matches!(self, L7Error::Downstream { source, .. } if source.is_timeout())
    }
}

/// Sniffs `stream` and, when it is HTTP/1 or h2c, serves it with [`serve_http`]; otherwise hands
/// it back as [`L7Outcome::NotHttp`].
///
/// `connect` opens a TCP connection to the destination pod (the caller binds source addresses
/// and sets socket marks); it is called lazily and again when the pod closed the connection.
pub async fn serve_l7<S, C>(stream: S, ctx: L7Context, connect: C) -> Result<L7Outcome<S>, L7Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Fn() -> ConnectFuture + Send + Sync + 'static,
{
    let (protocol, stream) = sniff(stream, ctx.limits.sniff_timeout)
        .await
        .map_err(L7Error::Sniff)?;
    match protocol {
        None => Ok(L7Outcome::NotHttp(NotHttp {
            stream,
            context: ctx,
        })),
        Some(protocol) => serve_http(stream, protocol, ctx, connect)
            .await
            .map(L7Outcome::Served),
    }
}

/// Serves an HTTP stream already known to be `protocol`: every request is decided with
/// [`nodemesh_policy::PolicySet::decide_request`]; denied ones are answered `403`
/// ([`DENIED_BODY`]), invalid paths `400`, allowed ones forwarded to the pod, and an allowed
/// WebSocket upgrade that the pod accepts is relayed raw. Returns when the client's
/// connection ends.
pub async fn serve_http<S, C>(
    stream: S,
    protocol: HttpProtocol,
    ctx: L7Context,
    connect: C,
) -> Result<L7Summary, L7Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Fn() -> ConnectFuture + Send + Sync + 'static,
{
    let limits = ctx.limits;
    let (upgrades_tx, mut upgrades_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        protocol,
        upstream: Upstream::new(connect, protocol),
        activity: Activity::new(),
        requests: AtomicU64::new(0),
        denied: AtomicU64::new(0),
        upgrades: upgrades_tx,
        ctx,
    });
    let service = {
        let shared = Arc::clone(&shared);
        service_fn(move |req| {
            let shared = Arc::clone(&shared);
            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
        })
    };
    let io = TokioIo::new(stream);
    let result = match protocol {
        HttpProtocol::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_header_size(limits.max_header_bytes)
                // A head that never ends must not grow the buffer much past the limit either.
                .max_buf_size(limits.max_header_bytes.saturating_add(8192))
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                () = shared.activity.idle_for(limits.idle_timeout) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        HttpProtocol::H2c => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_concurrent_streams)
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                () = shared.activity.idle_for(limits.idle_timeout) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };

    // The connection is done: no request can start another upgrade.
    let mut upgraded = None;
    while let Ok(task) = upgrades_rx.try_recv() {
        match task.await {
            Ok(Ok((from_client, from_pod))) => {
                upgraded = Some(UpgradedBytes {
                    from_client,
                    from_pod,
                });
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
                upgraded.get_or_insert_with(UpgradedBytes::default);
            }
            Err(e) => tracing::warn!(error = %e, "upgraded connection task failed"),
        }
    }
    let summary = L7Summary {
        protocol,
        requests: shared.requests.load(Ordering::Relaxed),
        denied: shared.denied.load(Ordering::Relaxed),
        upgraded,
    };
    match result {
        Ok(()) => Ok(summary),
        Err(source) => Err(L7Error::Downstream { source, summary }),
    }
}

type UpgradeTask = JoinHandle<io::Result<(u64, u64)>>;

/// State shared by the requests of one tunnel.
struct Shared<C> {
    ctx: L7Context,
    protocol: HttpProtocol,
    upstream: Upstream<C>,
    activity: Arc<Activity>,
    requests: AtomicU64,
    denied: AtomicU64,
    upgrades: mpsc::UnboundedSender<UpgradeTask>,
}

impl<C> Shared<C> {
    /// An answer of the proxy's own.
    fn local(
        &self,
        status: StatusCode,
        body: &'static str,
        mut finish: Finish,
    ) -> Response<L7Body> {
        if matches!(status, StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN) {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        finish.record.status = status.as_u16();
        let mut resp = Response::new(L7Body::full(Bytes::from_static(body.as_bytes()), finish));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    }
}

async fn handle<C>(shared: &Shared<C>, mut req: Request<Incoming>) -> Response<L7Body>
where
    C: Fn() -> ConnectFuture + Send + Sync + 'static,
{
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let ctx = &shared.ctx;
    // Reported when the response ends, or now if this future is dropped: the client left.
    let mut finish = Finish::new(
        RequestRecord {
            protocol: shared.protocol,
            method: req.method().as_str().to_owned(),
            path: raw_path(req.uri()).to_owned(),
            authority: String::new(),
            status: 0,
            verdict: Verdict::Deny,
            policy: None,
            reason: "bad_request",
            response_flags: ResponseFlags::DownstreamConnectionTermination,
            duration: Duration::ZERO,
        },
        Instant::now(),
        Arc::clone(&ctx.on_request),
        shared.activity.begin(),
    );
    let record = &mut finish.record;
    match request_authority(&req) {
        Ok(a) => record.authority = a,
        Err(body) => {
            record.response_flags = ResponseFlags::None;
            return shared.local(StatusCode::BAD_REQUEST, body, finish);
        }
    }

    let decision = ctx.decide_request(&HttpRequest {
        method: req.method().as_str(),
        path: raw_path(req.uri()),
        host: &record.authority,
        headers: req.headers(),
    });
    let (verdict, reason, path_options) = (decision.verdict, decision.reason, decision.path);
    record.policy = decision.policy;
    record.verdict = verdict;
    record.reason = reason.code();
    if matches!(reason, Reason::InvalidPath(_)) {
        record.response_flags = ResponseFlags::None;
        return shared.local(StatusCode::BAD_REQUEST, "bad request: invalid path", finish);
    }
    if verdict == Verdict::Deny {
        record.response_flags = ResponseFlags::None;
        return shared.local(StatusCode::FORBIDDEN, DENIED_BODY, finish);
    }

    let websocket = shared.protocol == HttpProtocol::Http1 && is_websocket_upgrade(req.headers());
    let on_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let upstream_req = to_upstream(
        req,
        shared.protocol,
        websocket,
        &record.authority,
        ctx,
        path_options,
    );
    let Some(upstream_req) = upstream_req else {
        record.reason = "bad_request";
        record.response_flags = ResponseFlags::None;
        return shared.local(StatusCode::BAD_REQUEST, "bad request", finish);
    };

    let mut resp = match shared.upstream.forward(upstream_req, &ctx.limits).await {
        Ok(resp) => resp,
        Err(failure) => {
            finish.record.response_flags = failure.flags;
            return shared.local(failure.status, failure.body, finish);
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Whatever happens next, the pod connection is no longer HTTP.
        shared.upstream.forget().await;
        let Some(downstream) = on_upgrade else {
            finish.record.response_flags = ResponseFlags::UpstreamProtocolError;
            let body = "upstream switched protocols unasked";
            return shared.local(StatusCode::BAD_GATEWAY, body, finish);
        };
        let upstream = hyper::upgrade::on(&mut resp);
        let _ = shared
            .upgrades
            .send(tokio::spawn(relay_upgraded(downstream, upstream)));
        finish.record.status = resp.status().as_u16();
        finish.record.response_flags = ResponseFlags::None;
        let (parts, _empty) = resp.into_parts();
        return Response::from_parts(parts, L7Body::full(Bytes::new(), finish));
    }

    strip_hop_by_hop(resp.headers_mut(), false);
    finish.record.status = resp.status().as_u16();
    finish.record.response_flags = ResponseFlags::None;
    resp.map(|body| L7Body::upstream(body, finish))
}

/// Copies bytes both ways between the upgraded client and pod connections.
async fn relay_upgraded(downstream: OnUpgrade, upstream: OnUpgrade) -> io::Result<(u64, u64)> {
    let (downstream, upstream) =
        tokio::try_join!(downstream, upstream).map_err(io::Error::other)?;
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await
}
