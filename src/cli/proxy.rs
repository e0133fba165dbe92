//! `nodemesh proxy`: the node proxy.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use nodemesh_identity::Backoff;
use nodemesh_proxy::bounds::BoundsConfig;
use nodemesh_proxy::observe::FlowLogTarget;
use nodemesh_proxy::{ProxyHandle, ProxyOptions, StateSource};

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
    let wireguard = match wireguard_key {
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
            let mut options = nodemesh_wireguard::NodeOptions::new(&args.state_dir);
            options.port = args.wireguard_port;
            let handle = nodemesh_wireguard::WireguardHandle::start_from(list, &args.node, options)
                .await
                .context("cannot bring WireGuard up")?;
            Some(handle)
        }
        None => None,
    };
    // The CNI plugin's pods the state does not know yet: kept by `--manage-redirect`.
    let pending_pods = nodemesh_proxy::PendingPods::default();
    let node = args.node.clone();
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
    let proxy = ProxyHandle::start(opts).await?;
    if args.manage_redirect {
        let keep_in_step = super::capture::manage(
            proxy.store().clone(),
            args.capture_backend,
            args.state_dir.clone(),
            pending_pods,
        )
        .await?;
        tokio::spawn(keep_in_step);
        if args.network_policy == NetworkPolicyMode::Enforce {
            let follow = super::node_firewall::manage(proxy.store().clone(), node).await?;
            tokio::spawn(follow);
        } else {
            super::node_firewall::remove().await?;
        }
        tokio::spawn(super::ipv6_guard::report_drops(
            nodemesh_redirect::Host::local(),
            args.capture_backend,
            proxy.metrics().ipv6_dropped(),
        ));
    }
    let admin = proxy.serve_admin_with(nodemesh_proxy::admin::AdminServer {
        admin_addr: args.admin_addr,
        metrics_addr: args.metrics_addr,
        readiness_addr: args.readiness_addr,
        max_connections: args.admin_max_connections,
        idle_timeout: args.admin_idle_timeout,
    })?;
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
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = admin.quit_requested() => {}
    }
    tracing::info!("draining");
    let outcome = proxy.drain().await;
    tracing::info!(?outcome, "drained");
    drop(kube_source);
    if let Some(wireguard) = wireguard {
        wireguard.shutdown().await.context("WireGuard")?;
    }
    Ok(())
}
