//! `nodemesh`: the command-line tool of the nodemesh node proxy, CA and policy engine.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// nodemesh: a per-node, sidecar-less mTLS proxy for Kubernetes.
///
/// Pod-to-pod TCP is wrapped in mutual TLS with SPIFFE identities issued by nodemesh's own CA and
/// authorized by Istio-compatible AuthorizationPolicies.
#[derive(Debug, Parser)]
#[command(name = "nodemesh", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
#[allow(clippy::large_enum_variant)] // Parsed once at start-up; boxing would only add noise.
enum Command {
    /// The in-cluster CA: serve it, manage its root, issue certificates offline.
    #[command(subcommand)]
    Ca(cli::ca::CaCommand),
    /// Check the node top to bottom: kernel, capture rules, proxy, certificates, CA, clock,
    /// WireGuard, policies, IPv6. Exit status: 0 all ok, 1 warnings, 2 failures.
    Check(cli::check::CheckArgs),
    /// Install or remove the CNI plugin that captures new pods before they run.
    #[command(subcommand)]
    Cni(cli::cni::CniCommand),
    /// Work with the standalone config file.
    #[command(subcommand)]
    Config(cli::config::ConfigCommand),
    /// Run the node proxy: capture listeners, HBONE mTLS, inline L4/L7 authorization.
    Proxy(cli::proxy::ProxyArgs),
    /// Check, explain and lint AuthorizationPolicies offline; suggest policies from flow logs.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
    /// Install, remove and check the node's capture rules (iptables or nftables TPROXY).
    #[command(subcommand)]
    Redirect(cli::redirect::RedirectCommand),
    /// Node-to-node WireGuard for everything HBONE does not carry: keys, device, routing.
    #[command(subcommand)]
    Wireguard(cli::wireguard::WireguardCommand),
    /// Build a mini-cluster from network namespaces and show the mesh at work (needs root).
    Demo(cli::demo::DemoArgs),
    /// A pod's HTTP and TCP echo server, for the demo and tests.
    #[command(hide = true)]
    TestbedApp(cli::demo::AppArgs),
    /// Print a CustomResourceDefinition the Helm chart ships (AuthorizationPolicy by default).
    #[command(hide = true)]
    Crd {
        /// Which CRD.
        #[arg(long, value_enum, default_value = "authorization-policy")]
        kind: cli::kube::CrdKind,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    nodemesh_identity::install_default_provider();
    match cli.command {
        Command::Check(args) => cli::check::run(args),
        Command::Cni(cmd) => cli::cni::run(cmd),
        Command::Config(cmd) => cli::config::run(cmd),
        Command::Policy(cmd) => cli::policy::run(cmd),
        Command::Ca(cmd) => run_async(cli::ca::run(cmd)),
        Command::Proxy(args) => cli::proxy::run(args),
        Command::Redirect(cmd) => cli::redirect::run(cmd),
        Command::Wireguard(cmd) => run_async(cli::wireguard::run(cmd)),
        Command::Demo(args) => cli::demo::run(args),
        Command::TestbedApp(args) => cli::demo::run_app(args),
        Command::Crd { kind } => match cli::kube::print_crd(kind) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Runs an async subcommand on a multi-threaded runtime; errors print as `error: ...` with their
/// causes and exit 1.
fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
