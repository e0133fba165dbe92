//! The CA server: gRPC over TLS (15012) and plain HTTP (15014), reloading its root, tokens and
//! workload placement when their files change, without a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nodemesh_config::Config;
use nodemesh_identity::{Clock, TrustDomain};
use nodemesh_net::timeouts::TLS_HANDSHAKE;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::authz::{NodeIndex, Tokens};
use crate::callers::Callers;
use crate::http::serve_http;
use crate::issuer::{Authority, LifetimePolicy};
use crate::ledger::Ledger;
use crate::preface::PrefaceDeadline;
use crate::proto::istio_certificate_service_server::IstioCertificateServiceServer;
use crate::reload::{FileWatch, Reloader};
use crate::service::{CaSnapshot, CertificateService};
use crate::state::{RootSource, StateError};

/// Lifetime of the CA's own serving certificate; it is re-issued at half-life and on root change.
pub const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// How long a client has, after TLS, to send the HTTP/2 preface and its first SETTINGS frame.
pub const PREFACE_TIMEOUT: Duration = nodemesh_net::timeouts::HTTP2_PREFACE;
/// Largest gRPC message accepted (a CSR is capped far lower; see [`crate::csr::MAX_CSR_LEN`]).
pub const MAX_MESSAGE_LEN: usize = 2 * 1024 * 1024;

/// Everything `nodemesh ca serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where the root is kept.
    pub root: RootSource,
    /// Who may call, and which workloads run on which node.
    pub callers: Callers,
    /// gRPC (TLS) listen address.
    pub grpc_listen: SocketAddr,
    /// Plain HTTP listen address.
    pub http_listen: SocketAddr,
    /// DNS names and IPs the serving certificate carries.
    pub serving_names: Vec<String>,
    /// Leaf lifetimes.
    pub lifetimes: LifetimePolicy,
    /// How often files are checked for changes.
    pub reload_interval: Duration,
    /// How long a client has, after TLS, to send the HTTP/2 preface and first SETTINGS before
    /// the connection is closed ([`PREFACE_TIMEOUT`] in production).
    pub preface_timeout: Duration,
}

/// Why the CA cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The standalone YAML is unreadable or invalid.
    #[error("{0}")]
    Config(String),
    /// The tokens file is unreadable or invalid.
    #[error("{path}: {reason}")]
    Tokens {
        /// The tokens file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The state directory or root is unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The serving certificate could not be made.
    #[error("serving certificate: {0}")]
    ServingCert(String),
}

/// Reads the config, tokens and root into one snapshot.
pub(crate) fn load_snapshot(opts: &ServeOptions) -> Result<(CaSnapshot, TrustDomain), ServeError> {
    let (config_file, tokens_file) = match &opts.callers {
        Callers::Files {
            config_file,
            tokens_file,
        } => (config_file, tokens_file),
        Callers::External { trust_domain, .. } => {
            let authority = opts.root.load(trust_domain)?;
            let snapshot = CaSnapshot {
                authority,
                tokens: Tokens::default(),
                nodes: NodeIndex::default(),
            };
            return Ok((snapshot, trust_domain.clone()));
        }
    };
    let config = Config::from_file(config_file).map_err(|e| ServeError::Config(e.to_string()))?;
    let tokens_text = std::fs::read_to_string(tokens_file).map_err(|e| ServeError::Tokens {
        path: tokens_file.clone(),
        reason: e.to_string(),
    })?;
    let tokens = Tokens::parse(&tokens_text).map_err(|e| ServeError::Tokens {
        path: tokens_file.clone(),
        reason: e.to_string(),
    })?;
    for node in tokens.nodes() {
        if config.node(node).is_none() {
            tracing::warn!(node, file = %tokens_file.display(), "token for a node that is not in the config");
        }
    }
    let trust_domain = config.trust_domain().clone();
    let nodes = NodeIndex::new(
        config
            .workloads()
            .iter()
            .map(|w| (w.node.as_str(), w.identity.clone())),
    );
    let authority = opts.root.load(&trust_domain)?;
    Ok((
        CaSnapshot {
            authority,
            tokens,
            nodes,
        },
        trust_domain,
    ))
}

/// The trust domain: given, or read from the standalone YAML.
fn trust_domain(opts: &ServeOptions) -> Result<TrustDomain, ServeError> {
    match &opts.callers {
        Callers::Files { config_file, .. } => Config::from_file(config_file)
            .map(|c| c.trust_domain().clone())
            .map_err(|e| ServeError::Config(e.to_string())),
        Callers::External { trust_domain, .. } => Ok(trust_domain.clone()),
    }
}

/// Issues a serving certificate in rustls form.
pub(crate) fn serving_key(
    authority: &Authority,
    names: &[String],
    now: SystemTime,
) -> Result<Arc<CertifiedKey>, ServeError> {
    let (chain, key) = authority
        .issue_serving(names, SERVING_CERT_LIFETIME, now)
        .map_err(|e| ServeError::ServingCert(e.to_string()))?;
    let provider = nodemesh_identity::crypto_provider();
    CertifiedKey::from_der(
        chain,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        &provider,
    )
    .map(Arc::new)
    .map_err(|e| ServeError::ServingCert(e.to_string()))
}

/// Serves the newest serving certificate.
#[derive(Debug)]
struct ServingCert(watch::Receiver<Arc<CertifiedKey>>);

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.borrow()))
    }
}

/// A running CA; dropping it does not stop it, [`RunningCa::shutdown`] does.
#[derive(Debug)]
pub struct RunningCa {
    /// The bound gRPC address (useful with port 0).
    pub grpc_addr: SocketAddr,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningCa {
    /// Stops accepting, lets in-flight requests finish, and waits for the tasks.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Waits until the server stops (it only stops on [`RunningCa::shutdown`] or a fatal error).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Initialises the state directory if needed, binds both listeners and starts serving.
pub async fn start(opts: ServeOptions, clock: Arc<dyn Clock>) -> Result<RunningCa, ServeError> {
    // The trust domain comes from the config; read it before touching the state dir.
    let trust_domain = trust_domain(&opts)?;
    if opts.root.init(&trust_domain, clock.now())? {
        tracing::info!(dir = %opts.root.state_dir.display(), "created a new root CA");
    }
    let (snapshot, _) = load_snapshot(&opts)?;
    let serving = serving_key(&snapshot.authority, &opts.serving_names, clock.now())?;
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(snapshot));
    let (serving_tx, serving_rx) = watch::channel(serving);
    let (stop_tx, stop_rx) = watch::channel(false);

    let grpc = TcpListener::bind(opts.grpc_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.grpc_listen,
            source,
        })?;
    let http = TcpListener::bind(opts.http_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.http_listen,
            source,
        })?;
    let grpc_addr = grpc.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.grpc_listen,
        source,
    })?;
    let http_addr = http.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.http_listen,
        source,
    })?;

    let mut tls = rustls::ServerConfig::builder_with_provider(nodemesh_identity::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::ServingCert(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ServingCert(serving_rx)));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    nodemesh_identity::disable_resumption(&mut tls);
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let authenticator = match &opts.callers {
        Callers::External { authenticator, .. } => Some(Arc::clone(authenticator)),
        Callers::Files { .. } => None,
    };
    let ledger = Arc::new(Ledger::open(opts.root.ledger_file())?);
    let service = CertificateService::new(snapshot_rx.clone(), opts.lifetimes, Arc::clone(&clock))
        .with_authenticator(authenticator)
        .with_ledger(Some(ledger));
    let (conn_tx, conn_rx) = mpsc::channel::<Result<Conn, std::io::Error>>(64);
    let mut stop = stop_rx.clone();
    let grpc_server = tokio::spawn(async move {
        let svc =
            IstioCertificateServiceServer::new(service).max_decoding_message_size(MAX_MESSAGE_LEN);
        let result = tonic::transport::Server::builder()
            .add_service(crate::too_large::TooLargeIsExhausted(svc))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(conn_rx),
                async move { stopped(&mut stop).await },
            )
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "gRPC server failed");
        }
    });
    let accept = tokio::spawn(accept_tls(
        grpc,
        acceptor,
        opts.preface_timeout,
        conn_tx,
        stop_rx.clone(),
    ));
    let http_task = tokio::spawn(serve_http(http, snapshot_rx.clone(), stop_rx.clone()));
    let reloader = Reloader {
        opts: opts.clone(),
        clock,
        snapshot: snapshot_tx,
        serving: serving_tx,
        files: FileWatch::new(watched_files(&opts)),
    };
    let reload_task = tokio::spawn(reloader.run(stop_rx));
    tracing::info!(%grpc_addr, %http_addr, "CA serving");
    Ok(RunningCa {
        grpc_addr,
        http_addr,
        stop: stop_tx,
        tasks: vec![grpc_server, accept, http_task, reload_task],
    })
}

fn watched_files(opts: &ServeOptions) -> Vec<PathBuf> {
    let (cert, key) = opts.root.root_files();
    let mut files = vec![cert, key, opts.root.bundle_file()];
    if let Callers::Files {
        config_file,
        tokens_file,
    } = &opts.callers
    {
        files.push(config_file.clone());
        files.push(tokens_file.clone());
    }
    files
}

/// A connection as tonic gets it: TLS done, the HTTP/2 preface still due.
type Conn = PrefaceDeadline<TlsStream<TcpStream>>;

/// Accepts TCP connections and hands each finished TLS handshake to tonic. Handshakes run in
/// their own tasks under a timeout, so a slow or hostile client holds up nobody else; after TLS
/// the client has `preface_timeout` to start HTTP/2.
async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    preface_timeout: Duration,
    conns: mpsc::Sender<Result<Conn, std::io::Error>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => return,
        };
        let acceptor = acceptor.clone();
        let conns = conns.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = conns
                        .send(Ok(PrefaceDeadline::new(tls, preface_timeout)))
                        .await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
