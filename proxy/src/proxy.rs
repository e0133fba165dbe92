//! Wiring: state, certificates, listeners, background reloads, drain.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use nodemesh_identity::{Backoff, Clock, SystemClock};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::certs::{CaSettings, CertManager};
use crate::hbone::client::HboneClient;
use crate::observe::{DrainOutcome, DrainTrigger, DrainWatch, FlowLog, FlowLogTarget, Metrics};
use crate::report::Flow;
use crate::socket::{self, ConnectOptions, PROXY_MARK};
use crate::state::{FileSource, StateError, WorkloadStore};
use crate::tls::TlsConfigs;

/// Where the proxy's view of the mesh comes from.
#[derive(Debug, Clone)]
pub enum StateSource {
    /// The standalone YAML, re-read when it changes.
    File(PathBuf),
    /// A store another source keeps fed (the Kubernetes watchers); it must hold a first full
    /// state already.
    Store(Arc<WorkloadStore>),
}

/// Everything `nodemesh proxy` is told.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Where the state comes from.
    pub source: StateSource,
    /// This node's name.
    pub node: String,
    /// This node's CA token.
    pub ca_token: String,
    /// The file `ca_token` came from, re-read when it rotates (projected tokens); `None` keeps
    /// `ca_token` for good.
    pub ca_token_file: Option<PathBuf>,
    /// Outbound capture listener (15001).
    pub outbound_addr: SocketAddr,
    /// HBONE listener (15008); with `inbound_binds`, only its port is used.
    pub inbound_addr: SocketAddr,
    /// Inbound plaintext capture listener (15006); with `inbound_binds`, only its port is used.
    pub inbound_plaintext_addr: SocketAddr,
    /// Bind the inbound listeners on these IPs (the node's pod IPs) instead of one wildcard.
    pub inbound_binds: Vec<IpAddr>,
    /// Port peers' HBONE listeners are reached on (15008).
    pub hbone_port: u16,
    /// How long a drain waits for in-flight connections.
    pub drain_timeout: Duration,
    /// Where flow-log lines go.
    pub flow_log: FlowLogTarget,
    /// Connect to pods from the client pod's IP.
    pub preserve_source_ip: bool,
    /// Set `IP_TRANSPARENT` on listeners (capture needs it; tests without root do not).
    pub transparent: bool,
    /// Mark the proxy's sockets with `SO_MARK 0x539`.
    pub mark_sockets: bool,
    /// How often the config and trust bundle files are checked for changes.
    pub reload_interval: Duration,
    /// Renewal backoff.
    pub backoff: Backoff,
}

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// The config has no `ca` section.
    #[error("{0} (nodemesh proxy needs the CA's address and trust bundle)")]
    NoCa(String),
    /// Certificates cannot be managed.
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The flow log cannot be opened.
    #[error(transparent)]
    FlowLog(#[from] crate::observe::FlowLogError),
}

/// State shared by every connection of one proxy.
#[derive(Debug)]
pub struct Ctx {
    /// Workloads, services, policies.
    pub store: Arc<WorkloadStore>,
    /// Certificates of local workloads.
    pub certs: Arc<CertManager>,
    /// TLS configs.
    pub tls: Arc<TlsConfigs>,
    /// The HBONE pool.
    pub hbone: HboneClient,
    /// Outgoing socket options.
    pub connect: ConnectOptions,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Flow log.
    pub flow_log: FlowLog,
    /// Drain signal.
    pub drain: DrainWatch,
    /// Connect to pods from the client's IP.
    pub preserve_source_ip: bool,
    /// Port of peers' HBONE listeners.
    pub hbone_port: u16,
    own_listeners: ArcSwap<Vec<SocketAddr>>,
}

impl Ctx {
    /// The proxy's own listener addresses (a connection to one of them is a loop).
    pub fn own_listeners(&self) -> Arc<Vec<SocketAddr>> {
        self.own_listeners.load_full()
    }

    /// Writes the flow-log line of a finished connection.
    pub fn report_flow(&self, flow: &Flow) {
        if self.flow_log.is_enabled() {
            self.flow_log.record(flow.to_record());
        }
    }
}

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
}

fn bind(addr: SocketAddr, transparent: bool) -> Result<TcpListener, StartError> {
    socket::listen(addr, transparent).map_err(|source| StartError::Bind { addr, source })
}

impl ProxyHandle {
    /// Starts a proxy: loads the config, binds every listener, starts fetching certificates.
    pub async fn start(opts: ProxyOptions) -> Result<Self, StartError> {
        let (store, file_source) = match &opts.source {
            StateSource::File(path) => {
                let mut source = FileSource::new(path, &opts.node);
                let state = source.load()?;
                (Arc::new(WorkloadStore::new(state)), Some(source))
            }
            StateSource::Store(store) => (Arc::clone(store), None),
        };
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
        let trust_domain = state.config().trust_domain().clone();
        drop(state);
        let tls = Arc::new(TlsConfigs::new(Arc::clone(&certs), trust_domain));
        let connect = ConnectOptions {
            mark: opts.mark_sockets.then_some(PROXY_MARK),
        };
        let metrics = Arc::new(Metrics::new());
        let flow_log = FlowLog::start(&opts.flow_log, &metrics)?;
        let (trigger, drain) = crate::observe::drain::channel();

        let outbound = bind(opts.outbound_addr, opts.transparent)?;
        let inbound_addrs = per_bind(opts.inbound_addr, &opts.inbound_binds);
        let plain_addrs = per_bind(opts.inbound_plaintext_addr, &opts.inbound_binds);
        let inbound: Vec<TcpListener> = inbound_addrs
            .iter()
            .map(|a| bind(*a, opts.transparent))
            .collect::<Result<_, _>>()?;
        let plaintext: Vec<TcpListener> = plain_addrs
            .iter()
            .map(|a| bind(*a, opts.transparent))
            .collect::<Result<_, _>>()?;
        let local = |l: &TcpListener| {
            l.local_addr().map_err(|source| StartError::Bind {
                addr: opts.outbound_addr,
                source,
            })
        };
        let listening = Listening {
            outbound: local(&outbound)?,
            inbound: inbound.iter().map(local).collect::<Result<_, _>>()?,
            inbound_plaintext: plaintext.iter().map(local).collect::<Result<_, _>>()?,
        };
        let mut own = vec![listening.outbound];
        own.extend(&listening.inbound);
        own.extend(&listening.inbound_plaintext);

        let ctx = Arc::new(Ctx {
            hbone: HboneClient::new(Arc::clone(&tls), connect),
            store,
            certs,
            tls,
            connect,
            metrics,
            flow_log,
            drain,
            preserve_source_ip: opts.preserve_source_ip,
            hbone_port: opts.hbone_port,
            own_listeners: ArcSwap::from_pointee(own),
        });
        reconcile(&ctx).await;

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(accept_loop(
            Arc::clone(&ctx),
            outbound,
            Listener::Outbound,
        )));
        for l in inbound {
            tasks.push(tokio::spawn(accept_loop(
                Arc::clone(&ctx),
                l,
                Listener::Hbone,
            )));
        }
        for l in plaintext {
            tasks.push(tokio::spawn(accept_loop(
                Arc::clone(&ctx),
                l,
                Listener::Plaintext,
            )));
        }
        if let Some(source) = file_source {
            tasks.push(tokio::spawn(
                source.watch(Arc::clone(&ctx.store), opts.reload_interval),
            ));
        }
        tasks.push(tokio::spawn(follow_state(
            Arc::clone(&ctx),
            opts.reload_interval,
        )));
        let (ready_tx, ready) = watch::channel(false);
        tasks.push(tokio::spawn(track_readiness(Arc::clone(&ctx), ready_tx)));
        Ok(Self {
            listening,
            ctx,
            trigger,
            ready,
            tasks,
            drain_timeout: opts.drain_timeout,
        })
    }

    /// Shared state (metrics, store, certificates), for the admin API and tests.
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Becomes true once every local workload has a certificate and the listeners are up.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Handles an outbound connection whose original destination is `orig_dst`: the path the
    /// outbound listener takes after accept (tests without capture enter here).
    pub fn outbound_entry(&self, stream: tokio::net::TcpStream, orig_dst: SocketAddr) {
        let Ok(src) = stream.peer_addr() else { return };
        let ctx = Arc::clone(&self.ctx);
        let guard = ctx.drain.guard();
        tokio::spawn(async move {
            crate::outbound::handle(Arc::clone(&ctx), stream, src, orig_dst).await;
            drop(guard);
        });
    }

    /// Handles a plaintext connection to a local pod whose original destination is `orig_dst`:
    /// the path the inbound plaintext listener takes after accept.
    pub fn inbound_plaintext_entry(&self, stream: tokio::net::TcpStream, orig_dst: SocketAddr) {
        let Ok(src) = stream.peer_addr() else { return };
        let ctx = Arc::clone(&self.ctx);
        let guard = ctx.drain.guard();
        tokio::spawn(async move {
            crate::inbound::serve_plaintext(&ctx, stream, src, orig_dst).await;
            drop(guard);
        });
    }

    /// Drains: stop accepting, GOAWAY on HBONE, wait for in-flight connections up to the drain
    /// timeout, then stop everything.
    pub async fn drain(self) -> DrainOutcome {
        let outcome = self.trigger.drain(self.drain_timeout).await;
        self.ctx.flow_log.flush().await;
        for task in self.tasks {
            task.abort();
        }
        outcome
    }
}

fn per_bind(addr: SocketAddr, binds: &[IpAddr]) -> Vec<SocketAddr> {
    if binds.is_empty() {
        vec![addr]
    } else {
        binds
            .iter()
            .map(|ip| SocketAddr::new(*ip, addr.port()))
            .collect()
    }
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy)]
enum Listener {
    Outbound,
    Hbone,
    Plaintext,
}

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, kind: Listener) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(?kind, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = ctx.drain.signaled() => return,
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::clone(&ctx);
        let guard = ctx.drain.guard();
        tokio::spawn(async move {
            match kind {
                Listener::Outbound => match stream.local_addr() {
                    Ok(orig_dst) => {
                        crate::outbound::handle(Arc::clone(&ctx), stream, peer, orig_dst).await
                    }
                    Err(error) => tracing::debug!(%error, "no original destination"),
                },
                Listener::Hbone => {
                    crate::hbone::server::serve_connection(Arc::clone(&ctx), stream, peer).await
                }
                Listener::Plaintext => match stream.local_addr() {
                    Ok(orig_dst) => {
                        crate::inbound::serve_plaintext(&ctx, stream, peer, orig_dst).await
                    }
                    Err(error) => tracing::debug!(%error, "no original destination"),
                },
            }
            drop(guard);
        });
    }
}

/// Brings certificates and TLS caches in line with the local mesh workloads.
async fn reconcile(ctx: &Ctx) {
    let state = ctx.store.load();
    let wanted: HashSet<_> = state
        .local_mesh_workloads()
        .map(|w| w.identity.clone())
        .collect();
    for problem in state.policy_problems() {
        tracing::error!(policy = %problem.policy, errors = ?problem.errors, "policy does not compile; it fails closed");
    }
    ctx.metrics
        .policy_compile_errors(state.policy_problems().len());
    ctx.certs.reconcile(&wanted).await;
    ctx.tls.retain(|id| wanted.contains(id));
}

/// Reacts to state changes and re-reads the trust bundle.
async fn follow_state(ctx: Arc<Ctx>, interval: Duration) {
    let mut changes = ctx.store.subscribe();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() { return; }
                reconcile(&ctx).await;
            }
            _ = tick.tick() => {
                match ctx.certs.reload_bundle() {
                    Ok(true) => tracing::info!("trust bundle reloaded"),
                    Ok(false) => {}
                    Err(error) => tracing::error!(%error, "trust bundle reload refused; keeping the old bundle"),
                }
                match ctx.certs.reload_token() {
                    Ok(true) => tracing::info!("CA token reloaded"),
                    Ok(false) => {}
                    Err(error) => tracing::warn!(%error, "CA token reload failed; keeping the old token"),
                }
                for (id, creds) in ctx.certs.all() {
                    if let Some(c) = creds {
                        let expiry = c.info().not_after.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                        ctx.metrics.certificate_expiry(id.as_str(), expiry.as_secs_f64());
                    }
                }
            }
        }
    }
}

async fn track_readiness(ctx: Arc<Ctx>, ready: watch::Sender<bool>) {
    loop {
        let now = ctx.certs.all_ready();
        ready.send_if_modified(|r| std::mem::replace(r, now) != now);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
