//! Wiring: start (state, certificates, listeners), the accept loops that hand each connection to
//! its side, drain. What the proxy is told is [`options`]; what keeps it in step is [`tasks`].

mod accept;
mod listeners;
mod options;
mod tasks;

pub use listeners::InheritedListeners;
pub use options::{ProxyOptions, StartError, StateSource};

use self::accept::{accept_loop, bound, dispatch};
use self::listeners::Listeners;

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nodemesh_identity::{Clock, SystemClock};
use nodemesh_net::marks;
use nodemesh_state::{FileSource, MeshStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, AdminError, AdminListeners, AdminServer, ProxyAdmin};
use crate::bounds::{Bounds, Listener};
use crate::certs::{CaSettings, CertManager};
use crate::ctx::Ctx;
use crate::flow::FlowSink;
use crate::hbone::HboneClient;
use crate::inbound;
use crate::observe::{DrainOutcome, DrainTrigger, FlowLog, Metrics};
use crate::socket::ConnectOptions;
use crate::tls::TlsConfigs;

/// Addresses the proxy listens on.
#[derive(Debug, Clone)]
pub struct Listening {
    /// Outbound capture.
    pub outbound: SocketAddr,
    /// HBONE.
    pub inbound: Vec<SocketAddr>,
    /// Inbound plaintext.
    pub inbound_plaintext: Vec<SocketAddr>,
}

/// A running proxy.
#[derive(Debug)]
pub struct ProxyHandle {
    /// Where it listens.
    pub listening: Listening,
    ctx: Arc<Ctx>,
    trigger: DrainTrigger,
    ready: watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
    drain_timeout: Duration,
    /// Copies of the capture and HBONE listening sockets, for an upgrade's handoff.
    listener_fds: Vec<(Listener, SocketAddr, OwnedFd)>,
    /// Set while an upgrade's handoff is under way: readiness then reports not ready, so the
    /// new process's pod is not taken for ready on this one's answers.
    hold_readiness: Arc<AtomicBool>,
}

impl ProxyHandle {
    /// Starts a proxy: loads the config, binds every listener, starts fetching certificates.
    pub async fn start(opts: ProxyOptions) -> Result<Self, StartError> {
        Self::start_with(opts, None).await
    }

    /// [`start`](Self::start), on listening sockets taken over from a running process
    /// instead of bound afresh when `inherited` is given (their addresses win over the
    /// options'). Accepting on them waits until the proxy is [ready](Self::ready).
    pub async fn start_with(
        opts: ProxyOptions,
        inherited: Option<InheritedListeners>,
    ) -> Result<Self, StartError> {
        let (store, file_source) = match &opts.source {
            StateSource::File(path) => {
                let mut source = FileSource::new(path, &opts.node);
                let state = source.load()?;
                (Arc::new(MeshStore::new(state)), Some(source))
            }
            StateSource::Store(store) => (Arc::clone(store), None),
        };
        store.enforce_network_policies(opts.network_policy);
        let state = store.load();
        let ca = state
            .config()
            .require_ca()
            .map_err(|e| StartError::NoCa(e.to_string()))?
            .clone();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let certs = Arc::new(CertManager::new(
            CaSettings {
                address: ca.address.to_string(),
                token: opts.ca_token.clone(),
                token_file: opts.ca_token_file.clone(),
            },
            ca.root_cert.clone(),
            clock,
            opts.backoff,
        )?);
        let tls = Arc::new(TlsConfigs::new(
            Arc::clone(&certs),
            state.config().trust_domain().clone(),
        ));
        drop(state);
        let connect = ConnectOptions {
            mark: opts.mark_sockets.then_some(marks::PROXY.value),
            timeout: opts.connect_timeout,
        };
        let metrics = Arc::new(Metrics::new());
        let flow_log = FlowLog::start(&opts.flow_log, &metrics)?;
        let (trigger, drain) = crate::observe::drain::channel();

        let gated = inherited.is_some();
        let listeners = match inherited {
            Some(inherited) => Listeners::inherit(inherited)?,
            None => Listeners::bind(&opts)?,
        };
        let listener_fds = listeners.dup()?;
        let listening = listeners.addresses()?;
        let mut own_listeners = vec![listening.outbound];
        own_listeners.extend(&listening.inbound);
        own_listeners.extend(&listening.inbound_plaintext);

        let (conns, open_table) = crate::conns::Conns::new();
        let ctx = Arc::new(Ctx {
            hbone: HboneClient::new(Arc::clone(&tls), connect),
            store,
            certs,
            tls,
            connect,
            flows: FlowSink::new(metrics, flow_log),
            drain,
            preserve_source_ip: opts.preserve_source_ip,
            outbound_from_pod_ip: opts.outbound_from_pod_ip,
            hbone_port: opts.hbone_port,
            l7_limits: opts.l7_limits,
            own_listeners,
            pending: opts.pending_pods.clone(),
            conns,
            bounds: Bounds::new(&opts.bounds),
        });
        let memory = Arc::clone(&ctx.bounds.memory);
        ctx.metrics()
            .watch_buffers(move || (memory.used(), memory.limit()));
        tasks::reconcile(&ctx).await;

        let (ready_tx, ready) = watch::channel(false);
        let gate = gated.then(|| ready.clone());
        let mut running = Vec::new();
        let mut accept = |listener, side| {
            running.push(tokio::spawn(accept_loop(
                Arc::clone(&ctx),
                listener,
                side,
                gate.clone(),
            )));
        };
        accept(listeners.outbound, Listener::Outbound);
        for l in listeners.hbone {
            accept(l, Listener::Hbone);
        }
        for l in listeners.plaintext {
            accept(l, Listener::Plaintext);
        }
        if let Some(source) = file_source {
            running.push(tokio::spawn(
                source.watch(Arc::clone(&ctx.store), opts.reload_interval),
            ));
        }
        running.push(tokio::spawn(inbound::follow_policy(
            Arc::clone(&ctx),
            open_table,
        )));
        running.push(tokio::spawn(tasks::follow_state(
            Arc::clone(&ctx),
            opts.reload_interval,
        )));
        running.push(tokio::spawn(tasks::trim_heap(tasks::TRIM_INTERVAL)));
        let hold_readiness = Arc::new(AtomicBool::new(false));
        running.push(tokio::spawn(tasks::track_readiness(
            Arc::clone(&ctx),
            ready_tx,
            Arc::clone(&hold_readiness),
        )));
        Ok(Self {
            listening,
            ctx,
            trigger,
            ready,
            tasks: running,
            drain_timeout: opts.drain_timeout,
            listener_fds,
            hold_readiness,
        })
    }

    /// The proxy's view of the mesh.
    pub fn store(&self) -> &Arc<MeshStore> {
        &self.ctx.store
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.ctx.metrics()
    }

    /// The certificates of the node's workloads.
    pub fn certs(&self) -> &Arc<CertManager> {
        &self.ctx.certs
    }

    /// The proxy's bounds and what they hold now.
    pub fn bounds(&self) -> &Bounds {
        &self.ctx.bounds
    }

    /// The HBONE connection pool.
    pub fn hbone(&self) -> &HboneClient {
        &self.ctx.hbone
    }

    /// Starts the admin (`admin_addr`), metrics and readiness servers of this proxy, on their
    /// own thread.
    pub fn serve_admin(
        &self,
        admin_addr: SocketAddr,
        metrics_addr: SocketAddr,
        readiness_addr: SocketAddr,
    ) -> Result<ProxyAdmin, AdminError> {
        self.serve_admin_with(AdminServer {
            admin_addr,
            metrics_addr,
            readiness_addr,
            ..AdminServer::default()
        })
    }

    /// [`serve_admin`](Self::serve_admin) with every setting of the servers (bounds, timeouts).
    pub fn serve_admin_with(&self, servers: AdminServer) -> Result<ProxyAdmin, AdminError> {
        admin::spawn(Arc::clone(&self.ctx), self.ready(), servers, None)
    }

    /// [`serve_admin_with`](Self::serve_admin_with) on listening sockets taken over from a
    /// running process.
    pub fn serve_admin_on(
        &self,
        servers: AdminServer,
        listeners: AdminListeners,
    ) -> Result<ProxyAdmin, AdminError> {
        admin::spawn(
            Arc::clone(&self.ctx),
            self.ready(),
            servers,
            Some(listeners),
        )
    }

    /// The capture and HBONE listening sockets with their side and address: what an upgrade
    /// hands to the new process.
    pub fn listener_fds(&self) -> impl Iterator<Item = (Listener, SocketAddr, BorrowedFd<'_>)> {
        self.listener_fds
            .iter()
            .map(|(side, addr, fd)| (*side, *addr, fd.as_fd()))
    }

    /// While `hold` is set, readiness reports not ready whatever the certificates say (an
    /// upgrade's handoff is under way).
    pub fn hold_readiness(&self, hold: bool) {
        self.hold_readiness.store(hold, Ordering::Relaxed);
    }

    /// Connections in flight (each holds the drain open).
    pub fn connections(&self) -> usize {
        self.trigger.guards_held()
    }

    /// Becomes true once every local workload has a certificate and the listeners are up.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Handles an outbound connection whose original destination is `orig_dst`: the path the
    /// outbound listener takes after accept (tests without capture enter here).
    pub fn outbound_entry(&self, stream: tokio::net::TcpStream, orig_dst: SocketAddr) {
        self.enter(Listener::Outbound, stream, orig_dst);
    }

    /// Handles a plaintext connection to a local pod whose original destination is `orig_dst`:
    /// the path the inbound plaintext listener takes after accept.
    pub fn inbound_plaintext_entry(&self, stream: tokio::net::TcpStream, orig_dst: SocketAddr) {
        self.enter(Listener::Plaintext, stream, orig_dst);
    }

    fn enter(&self, side: Listener, stream: tokio::net::TcpStream, orig_dst: SocketAddr) {
        let Ok(peer) = stream.peer_addr() else { return };
        let Some(permit) = bound(&self.ctx, side, &stream, peer, Some(orig_dst)) else {
            return inbound::reset(stream);
        };
        let ctx = Arc::clone(&self.ctx);
        let guard = ctx.drain.guard();
        tokio::spawn(async move {
            dispatch(ctx, side, stream, peer, Some(orig_dst)).await;
            drop((permit, guard));
        });
    }

    /// Drains: stop accepting, GOAWAY on HBONE, wait for in-flight connections up to the drain
    /// timeout, then stop everything.
    pub async fn drain(self) -> DrainOutcome {
        let timeout = self.drain_timeout;
        self.drain_for(timeout).await
    }

    /// [`drain`](Self::drain) with another deadline: after an upgrade's handoff, the old
    /// process relays its connections until they end or `timeout` passes.
    pub async fn drain_for(mut self, timeout: Duration) -> DrainOutcome {
        // The new process holds the listening sockets; these copies only keep them open.
        self.listener_fds.clear();
        let outcome = self.trigger.drain(timeout).await;
        self.ctx.flows.log().flush().await;
        for task in self.tasks {
            task.abort();
        }
        outcome
    }
}
