//! The admin (15000), metrics (15020) and readiness (15021) HTTP/1.1 servers.
//!
//! They run on their own single-threaded tokio runtime on a dedicated OS thread, so a slow scrape
//! or a large `/config_dump` never takes a data-plane worker. The proxy plugs its state in through
//! [`AdminState`]; readiness follows a `watch::Receiver<bool>`.
//!
//! | listener | path | answer |
//! |---|---|---|
//! | admin | `GET /config_dump` | [`AdminState::config_dump`] as JSON |
//! | admin | `GET /certs` | [`AdminState::certs`] as a JSON list of `{identity, serial, not_after}` |
//! | admin | `GET /policy/explain?...` | [`AdminState::policy_explain`] with the raw query string |
//! | admin | `POST /quitquitquit` | calls [`AdminState::quit`] (start draining), answers `200` |
//! | metrics | `GET /metrics` | [`AdminState::metrics`], Prometheus text |
//! | readiness | `GET /healthz/ready` | `200` when the watch says ready, else `503` |
//!
//! Anything else is `404` (`405` for a known path with the wrong method).

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::observe::rfc3339_millis;

use super::handle::AdminHandle;
use super::response::{AdminResponse, PROMETHEUS_CONTENT_TYPE};
/// Default connections served at once per listener; more wait in the accept queue.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default time a connection is kept before it is closed (after its current response).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to finish writing a response once a connection is being closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin servers ask the proxy. Called on the admin thread: implementations must not
/// block for long (read snapshots, e.g. from an `ArcSwap`).
pub trait AdminState: Send + Sync + 'static {
    /// The proxy's current state for `/config_dump`.
    fn config_dump(&self) -> serde_json::Value;
    /// The certificates held for local workloads, for `/certs`.
    fn certs(&self) -> Vec<CertInfo>;
    /// Answers `/policy/explain`; `query` is the raw query string (see [`parse_query`](super::parse_query)), with
    /// parameters named like `nodemesh policy check`'s flags.
    fn policy_explain(&self, query: &str) -> AdminResponse;
    /// The Prometheus text for `/metrics` (usually [`Metrics::render`](crate::observe::Metrics::render)).
    fn metrics(&self) -> String;
    /// `/quitquitquit` was called: start draining.
    fn quit(&self);
}

/// One certificate in `/certs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// The SPIFFE ID.
    pub identity: String,
    /// The serial number, hex.
    pub serial: String,
    /// When it expires (serialized as RFC 3339 UTC).
    #[serde(serialize_with = "serialize_time")]
    pub not_after: SystemTime,
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339_millis(*t))
}

/// What went wrong starting the admin servers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// A listener could not bind.
    #[error("cannot bind the {listener} listener on {addr}: {source}")]
    Bind {
        /// `admin`, `metrics` or `readiness`.
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The admin runtime or thread could not be started.
    #[error("cannot start the admin runtime: {0}")]
    Runtime(#[source] io::Error),
}

/// Where the three servers listen; port 0 picks a free port (see [`AdminHandle`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminServer {
    /// Admin API, `127.0.0.1:15000` by default.
    pub admin_addr: SocketAddr,
    /// Prometheus metrics, `0.0.0.0:15020` by default.
    pub metrics_addr: SocketAddr,
    /// Readiness, `0.0.0.0:15021` by default.
    pub readiness_addr: SocketAddr,
    /// Connections served at once by each listener (its own bound, so a saturated metrics port
    /// never starves readiness); more wait in the accept queue.
    pub max_connections: usize,
    /// A connection is closed this long after it was accepted, once its current response is
    /// written (bounded by a write timeout), so idle keep-alive connections free their slot.
    pub idle_timeout: Duration,
}

impl Default for AdminServer {
    fn default() -> Self {
        AdminServer {
            admin_addr: (Ipv4Addr::LOCALHOST, 15000).into(),
            metrics_addr: (Ipv4Addr::UNSPECIFIED, 15020).into(),
            readiness_addr: (Ipv4Addr::UNSPECIFIED, 15021).into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Admin,
    Metrics,
    Readiness,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Metrics => "metrics",
            Role::Readiness => "readiness",
        }
    }
}

struct Context {
    state: Arc<dyn AdminState>,
    ready: watch::Receiver<bool>,
    idle_timeout: Duration,
}

/// The three listening sockets, bound already (by this process, or inherited from the one it
/// takes over from).
#[derive(Debug)]
pub struct AdminListeners {
    /// The admin API's.
    pub admin: StdTcpListener,
    /// Metrics'.
    pub metrics: StdTcpListener,
    /// Readiness'.
    pub readiness: StdTcpListener,
}

impl AdminServer {
    /// Binds the three listeners and serves them on a dedicated thread with its own runtime.
    /// The servers stop when the handle is shut down or dropped.
    pub fn spawn(
        &self,
        state: Arc<dyn AdminState>,
        ready: watch::Receiver<bool>,
    ) -> Result<AdminHandle, AdminError> {
        let bind = |role: Role, addr: SocketAddr| {
            StdTcpListener::bind(addr).map_err(|source| AdminError::Bind {
                listener: role.name(),
                addr,
                source,
            })
        };
        let listeners = AdminListeners {
            admin: bind(Role::Admin, self.admin_addr)?,
            metrics: bind(Role::Metrics, self.metrics_addr)?,
            readiness: bind(Role::Readiness, self.readiness_addr)?,
        };
        self.spawn_on(listeners, state, ready)
    }

    /// Serves the three servers on `listeners` (the addresses in `self` are not used).
    pub fn spawn_on(
        &self,
        listeners: AdminListeners,
        state: Arc<dyn AdminState>,
        ready: watch::Receiver<bool>,
    ) -> Result<AdminHandle, AdminError> {
        let prepare = |role: Role, listener: StdTcpListener, asked: SocketAddr| {
            let error = |source| AdminError::Bind {
                listener: role.name(),
                addr: asked,
                source,
            };
            listener.set_nonblocking(true).map_err(error)?;
            let local = listener.local_addr().map_err(error)?;
            let dup = listener.as_fd().try_clone_to_owned().map_err(error)?;
            Ok::<_, AdminError>((role, listener, local, dup))
        };
        let [admin, metrics, readiness] = [
            prepare(Role::Admin, listeners.admin, self.admin_addr)?,
            prepare(Role::Metrics, listeners.metrics, self.metrics_addr)?,
            prepare(Role::Readiness, listeners.readiness, self.readiness_addr)?,
        ];
        let addrs = [admin.2, metrics.2, readiness.2];
        let fds = [admin.3, metrics.3, readiness.3];
        let listeners = [
            (admin.0, admin.1),
            (metrics.0, metrics.1),
            (readiness.0, readiness.1),
        ];

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("nodemesh-admin")
            .build()
            .map_err(AdminError::Runtime)?;
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let ctx = Arc::new(Context {
            state,
            ready,
            idle_timeout: self.idle_timeout,
        });
        let max_connections = self.max_connections.max(1);
        let thread = std::thread::Builder::new()
            .name("nodemesh-admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    for (role, listener) in listeners {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let slots = Arc::new(Semaphore::new(max_connections));
                                tokio::spawn(accept_loop(role, listener, slots, ctx.clone()));
                            }
                            Err(error) => {
                                tracing::error!(%error, listener = role.name(), "admin: cannot listen");
                            }
                        }
                    }
                    // Stop when told to or when the handle is gone.
                    let _ = stop_rx.wait_for(|stop| *stop).await;
                });
                // Dropping the runtime here cancels every accept loop and connection.
            })
            .map_err(AdminError::Runtime)?;

        Ok(AdminHandle {
            admin_addr: addrs[0],
            metrics_addr: addrs[1],
            readiness_addr: addrs[2],
            fds,
            stop: stop_tx,
            thread: Some(thread),
        })
    }
}

/// Accepts on one listener while it has a free slot in `slots` (its own bound).
async fn accept_loop(role: Role, listener: TcpListener, slots: Arc<Semaphore>, ctx: Arc<Context>) {
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, listener = role.name(), "admin: accept failed");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(|req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(route(role, &req, &ctx)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => Some(result),
                () = tokio::time::sleep(ctx.idle_timeout) => None,
            };
            let result = match result {
                Some(result) => result,
                None => {
                    // Close once the current response is out; a client that never reads it
                    // loses the connection after the write timeout.
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(WRITE_TIMEOUT, conn).await {
                        Ok(result) => result,
                        Err(_) => return,
                    }
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, listener = role.name(), "admin: connection ended");
            }
        });
    }
}

fn route(role: Role, req: &Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let method = req.method();
    let expect = |allowed: Method| -> Option<Response<Full<Bytes>>> {
        (method != allowed).then(|| {
            let mut response =
                AdminResponse::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
                    .into_response();
            if let Ok(value) = header::HeaderValue::from_str(allowed.as_str()) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            response
        })
    };
    match (role, path) {
        (Role::Admin, "/config_dump") => expect(Method::GET).unwrap_or_else(|| {
            AdminResponse::json(StatusCode::OK, &ctx.state.config_dump()).into_response()
        }),
        (Role::Admin, "/certs") => expect(Method::GET).unwrap_or_else(|| {
            let certs = serde_json::to_value(ctx.state.certs()).unwrap_or_default();
            AdminResponse::json(StatusCode::OK, &certs).into_response()
        }),
        (Role::Admin, "/policy/explain") => expect(Method::GET).unwrap_or_else(|| {
            let query = req.uri().query().unwrap_or("");
            ctx.state.policy_explain(query).into_response()
        }),
        (Role::Admin, "/quitquitquit") => expect(Method::POST).unwrap_or_else(|| {
            tracing::info!("admin: /quitquitquit, draining");
            ctx.state.quit();
            AdminResponse::text(StatusCode::OK, "OK\n").into_response()
        }),
        (Role::Metrics, "/metrics") => expect(Method::GET).unwrap_or_else(|| {
            let mut response = AdminResponse::text(StatusCode::OK, ctx.state.metrics());
            response.content_type = PROMETHEUS_CONTENT_TYPE;
            response.into_response()
        }),
        (Role::Readiness, "/healthz/ready") => expect(Method::GET).unwrap_or_else(|| {
            if *ctx.ready.borrow() {
                AdminResponse::text(StatusCode::OK, "ready\n").into_response()
            } else {
                AdminResponse::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
            }
        }),
        _ => AdminResponse::text(StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}
