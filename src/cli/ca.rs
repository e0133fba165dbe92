//! `nodemesh ca`: run the in-cluster CA, manage its root, issue certificates offline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use nodemesh_ca::{LifetimePolicy, RootSource, ServeOptions};
use nodemesh_identity::{SpiffeId, SystemClock, TrustDomain};

/// Default state directory of the CA.
const DEFAULT_STATE_DIR: &str = "/var/lib/nodemesh/ca";

/// The CA: issues SPIFFE X.509-SVIDs to node proxies over Istio's certificate API.
#[derive(Debug, clap::Subcommand)]
#[allow(clippy::large_enum_variant)] // Parsed once at start-up; boxing would only add noise.
pub enum CaCommand {
    /// Serve gRPC (TLS, Istio's `IstioCertificateService`) and HTTP (`/trust-bundle`,
    /// `/healthz/ready`). Creates the state directory and a root on first start.
    Serve(ServeArgs),
    /// Create the state directory and a ten-year root, unless one exists.
    Init(RootArgs),
    /// Add a new root and sign with it at once (`stage-root` then `activate-root`): new
    /// certificates come from it, the old root stays in the trust bundle so certificates it
    /// signed keep verifying. A running server picks this up by itself.
    RotateRoot(RootArgs),
    /// Add a new root to the trust bundle without signing with it yet, so every peer can trust
    /// it before the first certificate it signs appears. Then wait for the bundle to reach every
    /// node and run `activate-root`.
    StageRoot(RootArgs),
    /// Sign with the staged root; the previous root stays in the trust bundle until
    /// `retire-root`. A running server picks this up by itself.
    ActivateRoot(RootArgs),
    /// Remove the previous root from the trust bundle. Refused while certificates it issued may
    /// still be valid (the CA records, per root, when its last certificate expires).
    RetireRoot(RetireArgs),
    /// Issue a certificate offline, straight from the state directory (for tests and bootstrap).
    /// Writes `cert-chain.pem`, `key.pem` (0600) and `root-cert.pem` (the trust bundle) to `--out`.
    Issue(IssueArgs),
}

/// Flags of `nodemesh ca serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where callers and workload placement come from: the standalone files, or the
    /// Kubernetes API (TokenReview, pods; root in the Secret nodemesh-ca-root).
    #[arg(long, value_enum, default_value_t = super::Source::File)]
    source: super::Source,
    /// The standalone YAML: trust domain and which workloads run on which node.
    #[arg(long, value_name = "FILE", required_if_eq("source", "file"))]
    config: Option<PathBuf>,
    /// Node tokens: one `TOKEN NODE-NAME` per line, `#` comments allowed.
    #[arg(long, value_name = "FILE", required_if_eq("source", "file"))]
    tokens: Option<PathBuf>,
    /// Kubernetes: the CA's namespace (Secret, ConfigMap, default caller).
    #[arg(long, env = "POD_NAMESPACE", default_value = "nodemesh-system")]
    namespace: String,
    /// Kubernetes: ServiceAccounts allowed to call, `namespace/name`; repeat or separate with
    /// commas [default: <namespace>/nodemesh-proxy]. Add `istio-system/ztunnel` for Istio.
    #[arg(long, value_delimiter = ',')]
    allowed_callers: Vec<nodemesh_kube::ca::CallerRef>,
    /// Kubernetes: the SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// State directory (root-cert.pem, root-key.pem, trust-bundle.pem); with Kubernetes, a
    /// private copy of the Secret (an in-memory volume).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// gRPC (TLS) listen address.
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Plain HTTP listen address.
    #[arg(long, default_value = "0.0.0.0:15014")]
    http_listen: SocketAddr,
    /// DNS names and IPs the serving certificate carries; repeat or separate with commas.
    #[arg(long, value_delimiter = ',', default_values_t = [
        "localhost".to_string(), "127.0.0.1".to_string(), "nodemesh-ca.nodemesh-system.svc".to_string(),
    ])]
    serving_names: Vec<String>,
    /// Use this root certificate instead of the state directory's (with --root-key).
    #[arg(long, value_name = "FILE", requires = "root_key")]
    root_cert: Option<PathBuf>,
    /// The key of --root-cert (must not be readable by group or others).
    #[arg(long, value_name = "FILE", requires = "root_cert")]
    root_key: Option<PathBuf>,
    /// Leaf lifetime when a request asks for none.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    default_lifetime: Duration,
    /// Longest leaf lifetime; longer requests are clamped.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    max_lifetime: Duration,
    /// How long a gRPC client has, after TLS, to send the HTTP/2 preface and SETTINGS before
    /// the connection is closed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    preface_timeout: Duration,
}

/// Flags of `nodemesh ca init`, `rotate-root`, `stage-root`, `activate-root`.
#[derive(Debug, clap::Args)]
pub struct RootArgs {
    /// State directory (root-cert.pem, root-key.pem, trust-bundle.pem).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Trust domain the root serves.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
}

/// Flags of `nodemesh ca retire-root`.
#[derive(Debug, clap::Args)]
pub struct RetireArgs {
    #[command(flatten)]
    root: RootArgs,
    /// Retire even though certificates of the old root may still be valid (they stop
    /// verifying once peers re-read the bundle).
    #[arg(long)]
    force: bool,
}

/// Flags of `nodemesh ca issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// State directory holding the root.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The SPIFFE ID to certify, `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[arg(long)]
    identity: SpiffeId,
    /// Directory to write cert-chain.pem, key.pem and root-cert.pem to (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Certificate lifetime, between 1m and 7d (longer is refused, never shortened).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    lifetime: Duration,
}

/// Runs a `nodemesh ca` subcommand.
pub async fn run(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Serve(args) => serve(args).await,
        CaCommand::Init(args) => {
            let created = RootSource::state_dir(&args.state_dir)
                .init(&args.trust_domain, SystemTime::now())?;
            let what = if created {
                "created a new root in"
            } else {
                "kept the existing root in"
            };
            println!("{what} {}", args.state_dir.display());
            Ok(())
        }
        CaCommand::RotateRoot(args) => {
            RootSource::state_dir(&args.state_dir)
                .rotate_root(&args.trust_domain, SystemTime::now())?;
            println!(
                "rotated: new certificates come from the new root; {} holds the old and new roots; run `nodemesh ca retire-root` once the old root's certificates have expired",
                bundle_file(&args.state_dir).display()
            );
            Ok(())
        }
        CaCommand::StageRoot(args) => {
            let root = RootSource::state_dir(&args.state_dir)
                .stage_root(&args.trust_domain, SystemTime::now())?;
            println!(
                "staged root {}: {} now holds it next to the signing root; once every node has this bundle, run `nodemesh ca activate-root`",
                nodemesh_ca::rotation::describe_root(&root),
                bundle_file(&args.state_dir).display()
            );
            Ok(())
        }
        CaCommand::ActivateRoot(args) => {
            let root = RootSource::state_dir(&args.state_dir).activate_root(&args.trust_domain)?;
            println!(
                "activated root {}: new certificates come from it; once every workload has renewed and the previous root's certificates have expired, run `nodemesh ca retire-root`",
                nodemesh_ca::rotation::describe_root(&root)
            );
            Ok(())
        }
        CaCommand::RetireRoot(args) => {
            let retired = RootSource::state_dir(&args.root.state_dir).retire_root(
                &args.root.trust_domain,
                SystemTime::now(),
                args.force,
            )?;
            if retired.is_empty() {
                println!(
                    "nothing to retire: the bundle holds no root but the signing (and staged) one"
                );
            }
            for root in &retired {
                println!(
                    "retired root {} from {}",
                    nodemesh_ca::rotation::describe_root(root),
                    bundle_file(&args.root.state_dir).display()
                );
            }
            Ok(())
        }
        CaCommand::Issue(args) => issue(args),
    }
}

fn bundle_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join(nodemesh_ca::state::TRUST_BUNDLE)
}

async fn serve(args: ServeArgs) -> Result<()> {
    let lifetimes = LifetimePolicy::with_bounds(args.default_lifetime, args.max_lifetime)
        .context("--default-lifetime, --max-lifetime")?;
    if args.preface_timeout.is_zero() {
        bail!("--preface-timeout must be above zero");
    }
    let (root, callers) = match (args.source, args.config, args.tokens) {
        (super::Source::File, Some(config_file), Some(tokens_file)) => (
            RootSource {
                state_dir: args.state_dir,
                supplied: args.root_cert.zip(args.root_key),
            },
            nodemesh_ca::Callers::Files {
                config_file,
                tokens_file,
            },
        ),
        (super::Source::File, ..) => bail!("--source file needs --config and --tokens"),
        (super::Source::Kubernetes, ..) => {
            let allowed = if args.allowed_callers.is_empty() {
                vec![
                    format!("{}/nodemesh-proxy", args.namespace)
                        .parse()
                        .map_err(anyhow::Error::msg)?,
                ]
            } else {
                args.allowed_callers
            };
            super::kube::ca_callers(super::kube::CaKube {
                namespace: args.namespace,
                state_dir: args.state_dir,
                trust_domain: args.trust_domain,
                allowed,
            })
            .await?
        }
    };
    let opts = ServeOptions {
        root,
        callers,
        grpc_listen: args.listen,
        http_listen: args.http_listen,
        serving_names: args.serving_names,
        lifetimes,
        reload_interval: Duration::from_secs(2),
        preface_timeout: args.preface_timeout,
    };
    let ca = nodemesh_ca::start(opts, Arc::new(SystemClock)).await?;
    println!(
        "nodemesh CA: gRPC on {}, HTTP on {}",
        ca.grpc_addr, ca.http_addr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    ca.shutdown().await;
    Ok(())
}

fn issue(args: IssueArgs) -> Result<()> {
    let root = RootSource::state_dir(&args.state_dir);
    nodemesh_ca::offline::issue(&root, &args.identity, args.lifetime, SystemTime::now())?
        .write_to(&args.out)?;
    println!(
        "wrote cert-chain.pem, key.pem and root-cert.pem for {} to {}",
        args.identity,
        args.out.display()
    );
    Ok(())
}
