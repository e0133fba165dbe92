//! `nodemesh proxy`: the node proxy.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use nodemesh_handoff::Role;
use nodemesh_identity::Backoff;
use nodemesh_proxy::admin::ProxyAdmin;
use nodemesh_proxy::bounds::BoundsConfig;
use nodemesh_proxy::observe::FlowLogTarget;
use nodemesh_proxy::{ProxyHandle, ProxyOptions, StateSource};

use super::upgrade::{self, Addresses, Start};

/// Run the node proxy: capture listeners, HBONE mTLS, inline L4/L7 authorization.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Where the mesh comes from: the standalone YAML, or the Kubernetes API (watchers).
    #[arg(long, value_enum, default_value_t = super::Source::File)]
    source: super::Source,
    /// The standalone YAML (shared by all nodes); reloaded when it changes.
    #[arg(long, value_name = "FILE", required_if_eq("source", "file"))]
    config: Option<PathBuf>,
    /// Kubernetes: also enforce Istio's `security.istio.io` v1 and v1beta1 AuthorizationPolicies.
    #[arg(long)]
    istio_policies: bool,
    /// Kubernetes: the CA's gRPC address.
    #[arg(long, default_value = "https://nodemesh-ca.nodemesh-system.svc:15012")]
    ca_address: http::Uri,
    /// Kubernetes: the trust bundle (the ConfigMap nodemesh-trust-bundle, mounted); re-read
    /// when it changes.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/run/nodemesh/trust/trust-bundle.pem"
    )]
    trust_bundle: PathBuf,
    /// Kubernetes: the SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: nodemesh_identity::TrustDomain,
    /// Kubernetes: the root namespace (its policies apply mesh-wide).
    #[arg(long, default_value = nodemesh_config::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// Kubernetes: the mTLS mode of mesh namespaces without the label `nodemesh.io/mtls-mode`.
    #[arg(long, value_enum, default_value_t = MtlsMode::Strict)]
    default_mtls_mode: MtlsMode,
    /// Kubernetes: refuse pods whose IP lies outside their node's `spec.podCIDR` (and pods of
    /// nodes without one), so a compromised node cannot claim other nodes' pod IPs.
    /// `--pod-cidr-check=false` only for IPAMs that ignore `spec.podCIDR` (Calico's): then any
    /// node can claim any IP.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pod_cidr_check: bool,
    /// Kubernetes: publish this WireGuard public key (base64) as the Node annotation
    /// `nodemesh.io/wireguard-public-key`.
    #[arg(long, value_name = "KEY")]
    wireguard_public_key: Option<String>,
    /// This node's name in the config.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// State directory (the CA token, WireGuard keys, and with `--manage-redirect` the CNI
    /// plugin's namespace cache and pod records under `cni/`).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/nodemesh")]
    state_dir: PathBuf,
    /// This node's CA token [default: <state-dir>/ca-token].
    #[arg(long, value_name = "FILE")]
    ca_token_file: Option<PathBuf>,
    /// Outbound capture listener.
    #[arg(long, default_value = "127.0.0.1:15001")]
    outbound_addr: SocketAddr,
    /// HBONE listener.
    #[arg(long, default_value = "0.0.0.0:15008")]
    inbound_addr: SocketAddr,
    /// Inbound plaintext capture listener.
    #[arg(long, default_value = "127.0.0.1:15006")]
    inbound_plaintext_addr: SocketAddr,
    /// Bind the inbound listeners on these IPs (this node's pod IPs) instead of their address;
    /// repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    inbound_bind: Vec<IpAddr>,
    /// Admin API (config_dump, certs, policy/explain, quitquitquit); keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Prometheus metrics.
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    /// Readiness (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// Connections each of the admin, metrics and readiness listeners serves at once (each its
    /// own bound: a saturated metrics port never starves readiness).
    #[arg(long, value_name = "N", default_value_t = nodemesh_proxy::admin::DEFAULT_MAX_CONNECTIONS)]
    admin_max_connections: usize,
    /// How long an admin, metrics or readiness connection is kept before it is closed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    admin_idle_timeout: Duration,
    /// Connections the outbound listener (15001) holds open at once; past it, new ones are
    /// reset and counted refused `overloaded`.
    #[arg(long, value_name = "N", default_value_t = BoundsConfig::default().outbound_connections)]
    max_outbound_connections: usize,
    /// Connections the HBONE listener (15008) holds open at once (peers pool their tunnels).
    #[arg(long, value_name = "N", default_value_t = BoundsConfig::default().hbone_connections)]
    max_hbone_connections: usize,
    /// Connections the inbound plaintext listener (15006) holds open at once.
    #[arg(long, value_name = "N", default_value_t = BoundsConfig::default().plaintext_connections)]
    max_plaintext_connections: usize,
    /// Connections one source IP holds open on one listener at once.
    #[arg(long, value_name = "N", default_value_t = BoundsConfig::default().connections_per_source)]
    max_connections_per_source: usize,
    /// HBONE connections between accept and their HTTP/2 preface (TLS included) at once.
    #[arg(long, value_name = "N", default_value_t = BoundsConfig::default().hbone_handshakes)]
    max_hbone_handshakes: usize,
    /// How long an HBONE client has after TLS to send the HTTP/2 preface and SETTINGS.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    h2_preface_timeout: Duration,
    /// Buffer memory the proxy accounts for (relay and HBONE TLS read buffers), in MiB; past
    /// it, new connections are refused `overloaded` and open ones keep their small buffers.
    #[arg(long, value_name = "MIB", default_value_t = BoundsConfig::default().memory_budget >> 20)]
    memory_budget_mib: usize,
    #[command(flatten)]
    deadlines: super::deadlines::DeadlineArgs,
    /// Data-plane worker threads [default: one per core].
    #[arg(long)]
    worker_threads: Option<usize>,
    /// How long a drain (SIGTERM) waits for in-flight connections.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// After handing its sockets to a new `nodemesh proxy` (an upgrade or restart), how long
    /// this process keeps relaying the connections it holds before it closes them and exits.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    upgrade_deadline: Duration,
    /// After a handoff and its drain, wait for SIGTERM before exiting: in a container, so it
    /// is not restarted as the old version while its pod is being replaced.
    #[arg(long)]
    linger_after_handoff: bool,
    /// Flow log: `stdout`, a file path, or `off`.
    #[arg(long, default_value = "stdout")]
    flow_log: FlowLogTarget,
    /// Connect to pods from the client pod's IP (needs the capture rules' routing).
    #[arg(long)]
    preserve_source_ip: bool,
    /// Make outbound connections (HBONE to peer proxies, passthrough) from the node's address
    /// instead of the client pod's. The default, the pod's IP, lets the far side, cloud
    /// metadata servers and host firewalls see which pod called.
    #[arg(long)]
    outbound_from_node_ip: bool,
    /// Listen without IP_TRANSPARENT and do not mark sockets: for running without capture
    /// (tests, debugging). Never in production.
    #[arg(long)]
    no_capture: bool,
    /// Also run WireGuard to the other nodes for everything HBONE does not carry, as `nodemesh
    /// wireguard up` does (key in the state directory). From a file, every node needs podCIDR and
    /// wireguardPublicKey; from Kubernetes, the key is published on this node's Node and peers
    /// follow the other Nodes' annotations. The routing stays when the proxy stops (fail closed).
    #[arg(long)]
    wireguard: bool,
    /// The WireGuard UDP port, the same on every node.
    #[arg(long, default_value_t = nodemesh_wireguard::DEFAULT_PORT, requires = "wireguard")]
    wireguard_port: u16,
    /// Install this node's capture rules and keep them in step with its mesh workloads. The
    /// rules outlive the proxy (traffic fails closed while it is down); `nodemesh redirect
    /// remove` deletes them.
    #[arg(long, conflicts_with = "no_capture")]
    manage_redirect: bool,
    /// The tools `--manage-redirect` uses: `iptables` (with ipset) or `nftables`.
    #[arg(long, default_value = "iptables", requires = "manage_redirect")]
    capture_backend: nodemesh_redirect::Backend,
    /// NetworkPolicies and ClusterNetworkPolicies: `enforce` them (mesh TCP in the proxy, on
    /// the original port and the verified identity; everything else in the node firewall that
    /// `--manage-redirect` installs), or leave them `off` to a CNI that enforces them (Calico,
    /// Cilium: then allow port 15008 between pods there, see SECURITY.md).
    #[arg(long, value_enum, default_value = "enforce")]
    network_policy: NetworkPolicyMode,
}

/// Who enforces NetworkPolicies (`--network-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum NetworkPolicyMode {
    /// nodemesh does.
    Enforce,
    /// Another component (the CNI) does.
    Off,
}

/// How mesh namespaces treat plaintext from outside the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MtlsMode {
    /// Refuse it.
    Strict,
    /// Accept it.
    Permissive,
}

/// Runs the proxy until SIGTERM or Ctrl-C, then drains.
pub fn run(args: ProxyArgs) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("nodemesh-data");
    if let Some(n) = args.worker_threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ProxyArgs) -> Result<()> {
    let token_file = args
        .ca_token_file
        .clone()
        .unwrap_or_else(|| args.state_dir.join("ca-token"));
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| {
            format!(
                "reading the CA token {} (pass --ca-token-file)",
                token_file.display()
            )
        })?
        .trim()
        .to_owned();
    // With --wireguard, this node's key (created on first use); in Kubernetes mode the source
    // publishes it on the Node.
    let wireguard_key = if args.wireguard {
        let (key, _) = nodemesh_wireguard::KeyStore::new(&args.state_dir)
            .load_or_create()
            .context("the WireGuard key")?;
        Some(key.public_key())
    } else {
        None
    };
    // Kept alive for as long as the proxy runs: dropping it stops the watchers.
    let mut kube_source = None;
    let source = match (args.source, args.config) {
        (super::Source::File, Some(path)) => StateSource::File(path),
        (super::Source::File, None) => anyhow::bail!("--source file needs --config"),
        (super::Source::Kubernetes, _) => {
            let source = super::kube::proxy_source(super::kube::ProxyKube {
                settings: nodemesh_kube::mesh::MeshSettings {
                    node: args.node.clone(),
                    trust_domain: args.trust_domain,
                    root_namespace: args.root_namespace,
                    ca: nodemesh_config::Ca::new(args.ca_address, args.trust_bundle),
                    default_permissive: args.default_mtls_mode == MtlsMode::Permissive,
                    pod_cidr_check: args.pod_cidr_check,
                },
                istio_policies: args.istio_policies,
                wireguard_public_key: args
                    .wireguard_public_key
                    .or_else(|| wireguard_key.map(|k| k.to_string())),
            })
            .await?;
            let store = std::sync::Arc::clone(source.store());
            kube_source = Some(source);
            StateSource::Store(store)
        }
    };
    let wireguard_list = match wireguard_key {
        Some(key) => {
            let list = match &source {
                StateSource::File(path) => nodemesh_wireguard::NodeList::File(path.clone()),
                StateSource::Store(store) => {
                    let (store, node) = (std::sync::Arc::clone(store), args.node.clone());
                    let mut stand_ins = std::collections::HashMap::new();
                    nodemesh_wireguard::NodeList::Current(Box::new(move || {
                        Ok(nodemesh_wireguard::published_nodes(
                            store.load().config(),
                            &node,
                            key,
                            |name| {
                                *stand_ins.entry(name.to_owned()).or_insert_with(|| {
                                    nodemesh_wireguard::PrivateKey::generate().public_key()
                                })
                            },
                        ))
                    }))
                }
            };
            Some(list)
        }
        None => None,
    };
    // The CNI plugin's pods the state does not know yet: kept by `--manage-redirect`.
    let pending_pods = nodemesh_proxy::PendingPods::default();
    let node = args.node.clone();
    let wireguard_node = args.node.clone();
    let opts = ProxyOptions {
        source,
        network_policy: args.network_policy == NetworkPolicyMode::Enforce,
        node: args.node,
        ca_token: token,
        ca_token_file: (args.source == super::Source::Kubernetes).then(|| token_file.clone()),
        outbound_addr: args.outbound_addr,
        inbound_addr: args.inbound_addr,
        inbound_plaintext_addr: args.inbound_plaintext_addr,
        inbound_binds: args.inbound_bind,
        hbone_port: nodemesh_proxy::hbone::HBONE_PORT,
        connect_timeout: args.deadlines.connect_timeout(),
        l7_limits: args.deadlines.l7_limits(),
        drain_timeout: args.drain_timeout,
        flow_log: args.flow_log,
        preserve_source_ip: args.preserve_source_ip,
        outbound_from_pod_ip: !args.no_capture && !args.outbound_from_node_ip,
        transparent: !args.no_capture,
        mark_sockets: !args.no_capture,
        reload_interval: Duration::from_secs(1),
        backoff: Backoff::default(),
        pending_pods: pending_pods.clone(),
        bounds: BoundsConfig {
            outbound_connections: args.max_outbound_connections,
            hbone_connections: args.max_hbone_connections,
            plaintext_connections: args.max_plaintext_connections,
            connections_per_source: args.max_connections_per_source,
            hbone_handshakes: args.max_hbone_handshakes,
            h2_preface_timeout: args.h2_preface_timeout,
            memory_budget: args.memory_budget_mib.saturating_mul(1 << 20),
        },
    };
    let servers = nodemesh_proxy::admin::AdminServer {
        admin_addr: args.admin_addr,
        metrics_addr: args.metrics_addr,
        readiness_addr: args.readiness_addr,
        max_connections: args.admin_max_connections,
        idle_timeout: args.admin_idle_timeout,
    };
    let handoff_path = upgrade::socket_path(&args.state_dir);
    let (proxy, admin, handoff, took_over) =
        match upgrade::prepare(&args.state_dir, &addresses(&opts, &servers)).await {
            Start::Takeover(taken) => {
                let (proxy, admin, handoff) = take_over(*taken, opts, servers).await?;
                (proxy, admin, handoff, true)
            }
            start => {
                let classic = match start {
                    Start::Classic(why) => Some(why),
                    _ if upgrade::admin_in_use(args.admin_addr) => Some(
                        "it serves no handoff socket (an older version, or another --state-dir)"
                            .to_owned(),
                    ),
                    _ => None,
                };
                if let Some(why) = classic {
                    let patience = args.drain_timeout + CLASSIC_MARGIN;
                    upgrade::replace_classically(args.admin_addr, &why, patience).await?;
                }
                let (proxy, admin, handoff) = start_fresh(opts, servers, &handoff_path).await?;
                (proxy, admin, handoff, false)
            }
        };
    // From here on this process owns the node: WireGuard, the capture rules, the firewall.
    let mut wireguard = match wireguard_list {
        Some(list) => {
            let mut options = nodemesh_wireguard::NodeOptions::new(&args.state_dir);
            options.port = args.wireguard_port;
            if took_over {
                // The old process stops its device once we have taken over; an older version
                // reports it stopped a moment before its interface and port are free.
                nodemesh_wireguard::device::await_released(
                    &options.interface,
                    options.port,
                    nodemesh_wireguard::device::RELEASE_PATIENCE,
                )
                .await;
                // This process serves the node now: it must not exit for want of WireGuard.
                Some(Wireguard::ComingUp(nodemesh_wireguard::Retrying::start(
                    list,
                    &wireguard_node,
                    options,
                )))
            } else {
                let handle =
                    nodemesh_wireguard::WireguardHandle::start_from(list, &wireguard_node, options)
                        .await
                        .context("cannot bring WireGuard up")?;
                Some(Wireguard::Up(handle))
            }
        }
        None => None,
    };
    let mut managers = Vec::new();
    if args.manage_redirect {
        let keep_in_step = super::capture::manage(
            proxy.store().clone(),
            args.capture_backend,
            args.state_dir.clone(),
            pending_pods,
        )
        .await?;
        managers.push(tokio::spawn(keep_in_step));
        if args.network_policy == NetworkPolicyMode::Enforce {
            let follow = super::node_firewall::manage(proxy.store().clone(), node).await?;
            managers.push(tokio::spawn(follow));
        } else {
            super::node_firewall::remove().await?;
        }
        managers.push(tokio::spawn(super::ipv6_guard::report_drops(
            nodemesh_redirect::Host::local(),
            args.capture_backend,
            proxy.metrics().ipv6_dropped(),
        )));
    }
    let mut handoff = upgrade::HandoffServer::new(handoff, &handoff_path, &proxy, &admin)?;
    eprintln!(
        "nodemesh proxy: outbound {}, HBONE {:?}, plaintext {:?}, admin {}, metrics {}, readiness {}",
        proxy.listening.outbound,
        proxy.listening.inbound,
        proxy.listening.inbound_plaintext,
        admin.admin_addr(),
        admin.metrics_addr(),
        admin.readiness_addr(),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let accepted = tokio::select! {
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
        () = admin.quit_requested() => None,
        accepted = handoff.next_accepted(&proxy) => Some(accepted),
    };
    let Some(accepted) = accepted else {
        tracing::info!("draining");
        let outcome = proxy.drain().await;
        tracing::info!(?outcome, "drained");
        drop(kube_source);
        if let Some(wireguard) = wireguard {
            wireguard.shutdown().await.context("WireGuard")?;
        }
        return Ok(());
    };
    // A new process accepts on every socket: hand the node over, then relay what is left.
    drop(handoff);
    if let Some(wireguard) = wireguard.take()
        && let Err(error) = wireguard.shutdown().await
    {
        tracing::error!(%error, "handoff: stopping WireGuard");
    }
    for manager in managers {
        manager.abort();
    }
    tokio::task::spawn_blocking(move || admin.shutdown())
        .await
        .context("stopping the admin servers")?;
    let connections = proxy.connections();
    let mut drain = tokio::spawn(proxy.drain_for(args.upgrade_deadline));
    if let Err(error) = tokio::task::spawn_blocking(move || accepted.released(connections))
        .await
        .context("the handoff task")?
    {
        tracing::warn!(%error, "handoff: could not confirm the release to the new process");
    }
    eprintln!(
        "nodemesh proxy: handed over to a new process; relaying {connections} connections until they end (at most {})",
        humantime::format_duration(args.upgrade_deadline)
    );
    tracing::info!(connections, deadline = ?args.upgrade_deadline, "handoff: no longer accepting; relaying the connections left");
    let mut terminated = false;
    let outcome = loop {
        tokio::select! {
            outcome = &mut drain => break outcome.context("the drain task")?,
            _ = term.recv() => {
                // The pod's deletion: its grace period covers the upgrade deadline.
                terminated = true;
                tracing::info!("SIGTERM after a handoff: the connections left keep their deadline");
            }
        }
    };
    tracing::info!(?outcome, "handoff: drained; exiting");
    eprintln!("nodemesh proxy: the last connection ended ({outcome:?})");
    drop(kube_source);
    if args.linger_after_handoff && !terminated {
        eprintln!("nodemesh proxy: waiting for SIGTERM (--linger-after-handoff)");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    Ok(())
}

/// How much longer than its drain timeout a running proxy replaced the classic way may take
/// to exit.
const CLASSIC_MARGIN: Duration = Duration::from_secs(10);

/// What this process would listen on, by role, for checking an offer.
fn addresses(opts: &ProxyOptions, servers: &nodemesh_proxy::admin::AdminServer) -> Addresses {
    Addresses(BTreeMap::from([
        (Role::Outbound, vec![opts.outbound_addr]),
        (Role::Hbone, opts.listen_addrs(opts.inbound_addr)),
        (
            Role::Plaintext,
            opts.listen_addrs(opts.inbound_plaintext_addr),
        ),
        (Role::Admin, vec![servers.admin_addr]),
        (Role::Metrics, vec![servers.metrics_addr]),
        (Role::Readiness, vec![servers.readiness_addr]),
    ]))
}

/// Binds everything afresh.
async fn start_fresh(
    opts: ProxyOptions,
    servers: nodemesh_proxy::admin::AdminServer,
    handoff_path: &std::path::Path,
) -> Result<(
    ProxyHandle,
    ProxyAdmin,
    Option<std::os::unix::net::UnixListener>,
)> {
    let handoff = upgrade::bind_handoff(handoff_path);
    let proxy = ProxyHandle::start(opts).await?;
    let admin = proxy.serve_admin_with(servers)?;
    Ok((proxy, admin, handoff))
}

/// Starts on the running process's sockets: accepts once every certificate is loaded, then
/// tells the running process, which stops accepting.
async fn take_over(
    taken: upgrade::Taken,
    opts: ProxyOptions,
    servers: nodemesh_proxy::admin::AdminServer,
) -> Result<(
    ProxyHandle,
    ProxyAdmin,
    Option<std::os::unix::net::UnixListener>,
)> {
    let upgrade::Taken {
        proxy: inherited,
        admin: admin_listeners,
        pending,
    } = taken;
    let (pid, binary) = pending.from();
    eprintln!(
        "nodemesh proxy: taking over from the running proxy (pid {pid}, {binary}); it serves until this one is ready"
    );
    let proxy = match ProxyHandle::start_with(opts, Some(inherited)).await {
        Ok(proxy) => proxy,
        Err(error) => {
            pending.abort(&error.to_string());
            return Err(error.into());
        }
    };
    if let Err(error) = upgrade::await_ready(&proxy).await {
        pending.abort(&format!("{error:#}"));
        return Err(error.context("the running proxy keeps serving"));
    }
    let (connections, handoff) = pending.accepting().await;
    let admin = proxy.serve_admin_on(servers, admin_listeners)?;
    match connections {
        Some(n) => eprintln!(
            "nodemesh proxy: took over from pid {pid} ({binary}); it relays its {n} connections until they end"
        ),
        None => eprintln!(
            "nodemesh proxy: took over the sockets of pid {pid} ({binary}), which did not confirm; serving"
        ),
    }
    tracing::info!(pid, %binary, ?connections, "handoff: took over the listening sockets");
    Ok((proxy, admin, Some(handoff)))
}

/// This process's WireGuard: up, or (after a takeover whose start failed) still coming up.
enum Wireguard {
    Up(nodemesh_wireguard::WireguardHandle),
    ComingUp(nodemesh_wireguard::Retrying),
}

impl Wireguard {
    /// Stops the device, or the attempts to bring it up; the routing stays (fail closed).
    async fn shutdown(self) -> Result<(), nodemesh_wireguard::WireguardError> {
        match self {
            Self::Up(handle) => handle.shutdown().await,
            Self::ComingUp(retrying) => retrying.shutdown().await,
        }
    }
}
