//! The admin API (`/config_dump`, `/certs`, `/policy/explain`, `/quitquitquit`), metrics and
//! readiness: [`AdminServer`] serves them on its own thread (`server`), this module answers them
//! from a running proxy.

mod handle;
mod query;
mod response;
mod server;

pub use handle::AdminHandle;
pub use query::parse_query;
pub use response::{AdminResponse, PROMETHEUS_CONTENT_TYPE};
pub use server::{
    AdminError, AdminListeners, AdminServer, AdminState, CertInfo, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
};

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use nodemesh_policy::TrafficQuery;
use tokio::sync::watch;

use crate::ctx::Ctx;

struct State {
    ctx: Arc<Ctx>,
    quit: watch::Sender<bool>,
}

impl AdminState for State {
    fn config_dump(&self) -> serde_json::Value {
        let state = self.ctx.store.load();
        serde_json::json!({
            "node": state.node(),
            "config": serde_json::to_value(state.config()).unwrap_or_default(),
            "policyProblems": state.policy_problems().iter().map(|p| serde_json::json!({
                "policy": p.policy, "errors": p.errors,
            })).collect::<Vec<_>>(),
            "certificates": self.certs().iter().map(|c| c.identity.clone()).collect::<Vec<_>>(),
        })
    }

    fn certs(&self) -> Vec<CertInfo> {
        self.ctx
            .certs
            .all()
            .into_iter()
            .filter_map(|(id, creds)| {
                let c = creds?;
                Some(CertInfo {
                    identity: id.to_string(),
                    serial: c.info().serial.clone(),
                    not_after: c.info().not_after,
                })
            })
            .collect()
    }

    fn policy_explain(&self, query: &str) -> AdminResponse {
        match explain(&self.ctx, query) {
            Ok(v) => AdminResponse::json(StatusCode::OK, &v),
            Err(e) => AdminResponse::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }

    fn metrics(&self) -> String {
        let mut out = self.ctx.metrics().render();
        out.push_str(&self.ctx.store.health().render(std::time::SystemTime::now()));
        out
    }

    fn quit(&self) {
        self.quit.send_replace(true);
    }
}

/// `/policy/explain` with the parameters of `nodemesh policy check`: `destination-namespace`,
/// `destination-labels` (k=v,...), `destination-port`, `destination-ip`, `source-principal`,
/// `source-namespace`, `source-ip`, `method`, `path`, `host`, `header` (repeatable `Name: value`).
fn explain(ctx: &Ctx, query: &str) -> Result<serde_json::Value, String> {
    let params = parse_query(query);
    let query = TrafficQuery::from_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| e.to_string())?;
    let state = ctx.store.load();
    let conn = query.connection();
    let explanation = state.policies().explain(&conn, query.request().as_ref());
    let mut json = explanation.to_json();
    if let Some(network) = explain_network(&state, &conn) {
        if network["verdict"] == "deny" {
            json["verdict"] = "deny".into();
        }
        json["network"] = network;
    }
    Ok(json)
}

/// The network policies' decision on the connection, when there are network policies and the
/// query names both addresses (a principal makes the source a mesh client, matched by that
/// identity).
fn explain_network(
    state: &nodemesh_state::MeshState,
    conn: &nodemesh_policy::Connection<'_>,
) -> Option<serde_json::Value> {
    if state.network_policies().is_empty() {
        return None;
    }
    let (ip, destination) = (conn.source.ip?, conn.destination.ip?);
    let identity = conn.source.principal.map(|p| {
        let p = p.strip_prefix("spiffe://").unwrap_or(p);
        nodemesh_identity::SpiffeId::new(&format!("spiffe://{p}"))
    });
    let identity = match identity {
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return None,
        None => None,
    };
    let source = match &identity {
        Some(identity) => nodemesh_state::FlowSource::Verified { ip, identity },
        None => nodemesh_state::FlowSource::Address(ip),
    };
    let port = conn.destination.port;
    let protocol = nodemesh_policy::netpol::Protocol::Tcp;
    Some(
        state
            .decide_network(source, destination, protocol, port)
            .to_json(protocol, port),
    )
}

/// The admin, metrics and readiness servers of a running proxy.
#[derive(Debug)]
pub struct ProxyAdmin {
    handle: AdminHandle,
    quit: watch::Receiver<bool>,
}

impl ProxyAdmin {
    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.handle.admin_addr()
    }

    /// Where metrics are served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.handle.metrics_addr()
    }

    /// Where readiness is served.
    pub fn readiness_addr(&self) -> SocketAddr {
        self.handle.readiness_addr()
    }

    /// The listening sockets, for the process that takes over (see
    /// [`AdminHandle::listener_fds`]).
    pub fn listener_fds(&self) -> [(&'static str, SocketAddr, std::os::fd::BorrowedFd<'_>); 3] {
        self.handle.listener_fds()
    }

    /// Stops serving (the listening sockets close once no other process holds them).
    pub fn shutdown(self) {
        self.handle.shutdown();
    }

    /// Resolves when `/quitquitquit` is called.
    pub async fn quit_requested(&self) {
        let mut quit = self.quit.clone();
        let _ = quit.wait_for(|q| *q).await;
    }
}

/// Starts the admin servers answering for `ctx`, ready per `ready`
/// ([`ProxyHandle::serve_admin`](crate::ProxyHandle::serve_admin)).
pub(crate) fn spawn(
    ctx: Arc<Ctx>,
    ready: watch::Receiver<bool>,
    servers: AdminServer,
    listeners: Option<AdminListeners>,
) -> Result<ProxyAdmin, AdminError> {
    let (quit_tx, quit) = watch::channel(false);
    let state = Arc::new(State { ctx, quit: quit_tx });
    let handle = match listeners {
        Some(listeners) => servers.spawn_on(listeners, state, ready)?,
        None => servers.spawn(state, ready)?,
    };
    Ok(ProxyAdmin { handle, quit })
}
