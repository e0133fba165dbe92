//! Where an outbound connection goes, decided without I/O.

use std::net::SocketAddr;

use nodemesh_identity::SpiffeId;
use nodemesh_state::MeshState;

use crate::addr::{ClientAddr, OrigDstAddr};
use crate::observe::RefusalReason;
use crate::pending::PendingPods;

/// Where an outbound connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// HBONE to a mesh pod on another node.
    Hbone {
        /// The client workload's identity.
        source: SpiffeId,
        /// The destination workload's identity.
        destination: SpiffeId,
        /// `<pod ip>:<port>` to CONNECT to.
        target: SocketAddr,
    },
    /// A mesh pod on this node: handled by the inbound side in-process.
    Local {
        /// The client workload's identity.
        source: SpiffeId,
        /// `<pod ip>:<port>`.
        target: SocketAddr,
    },
    /// Outside the mesh: plain TCP.
    Passthrough {
        /// Where to connect.
        target: SocketAddr,
    },
}

impl Route {
    /// The pod or address the connection goes to.
    pub fn target(&self) -> SocketAddr {
        match self {
            Route::Hbone { target, .. }
            | Route::Local { target, .. }
            | Route::Passthrough { target } => *target,
        }
    }
}

/// A classified connection: its route and the Service it called, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Where it goes.
    pub route: Route,
    /// `name.namespace` of the Service whose VIP was called.
    pub service: Option<String>,
}

/// Classifies a connection from `src` to `orig_dst`; `Err` is the refusal reason. A source
/// that is no local mesh workload is refused, and so is a destination the state does not know
/// inside the pod network or among the node's `pending` captured pods.
pub fn classify(
    state: &MeshState,
    src: ClientAddr,
    orig_dst: OrigDstAddr,
    own_listeners: &[SocketAddr],
    pending: &PendingPods,
) -> Result<Routed, RefusalReason> {
    if own_listeners.contains(&orig_dst.0) {
        return Err(RefusalReason::Loop);
    }
    let source = state
        .workload(src.ip())
        .filter(|w| state.is_local(w) && state.in_mesh(w))
        .ok_or(RefusalReason::UnknownSource)?;
    let (target, service) = if state.service(orig_dst.0).is_some() {
        let picked = state
            .pick_endpoint(orig_dst.0)
            .ok_or(RefusalReason::NoEndpoint)?;
        (
            SocketAddr::new(picked.endpoint.ip().into(), picked.port),
            Some(format!(
                "{}.{}",
                picked.service.name, picked.service.namespace
            )),
        )
    } else if state.is_service_vip(orig_dst.0.ip()) {
        // kube-proxy has no rule for it either: passing it through would reach nothing, or
        // whatever else answers on the VIP.
        return Err(RefusalReason::UndeclaredServicePort);
    } else {
        (orig_dst.0, None)
    };
    let route = match state.workload(target.ip()) {
        Some(w) if state.in_mesh(w) && state.is_local(w) => Route::Local {
            source: source.identity.clone(),
            target,
        },
        Some(w) if state.in_mesh(w) => Route::Hbone {
            source: source.identity.clone(),
            destination: w.identity.clone(),
            target,
        },
        Some(_) => Route::Passthrough { target },
        None if state.in_pod_network(target.ip()) || pending.contains(target.ip()) => {
            return Err(RefusalReason::UnknownDestination);
        }
        None => Route::Passthrough { target },
    };
    Ok(Routed { route, service })
}
