//! `nodemesh check`: a checklist of what the node needs for the mesh to work, read top to
//! bottom, each item `ok`, `warn` or `fail` with a hint for what to do next. It reads the same
//! config and state directory as the node's `nodemesh proxy` (or, with `--source kubernetes`,
//! the API's objects and the proxy's own view from its admin `/config_dump`), asks the running
//! proxy and the CA over their plain HTTP ports, and shakes hands with the CA's gRPC port as a
//! proxy would; it changes nothing.
//!
//! Each concern has its module: what it observes (I/O, here or in `observe` functions and the
//! `*_probe`/`kube` modules) apart from how that turns into items (pure `evaluate` functions,
//! unit-tested). "Now" comes from an injectable [`Clock`], shifted only by tests.

pub mod ca;
pub mod ca_probe;
pub mod capture;
pub mod certs;
pub mod clock;
pub mod cluster;
pub mod dump;
pub mod handoff;
pub mod http;
pub mod ipv6;
pub mod kernel;
pub mod kube;
pub mod policy;
pub mod ready;
pub mod report;
pub mod tls;
pub mod wireguard;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use nodemesh_config::Config;
use nodemesh_redirect::{Backend, Host};

use self::clock::{Clock, OffsetClock, SignedDuration};
use self::report::{Item, Report};

/// Check the node: kernel features and tools, capture rules in sync with the mesh, the proxy's
/// readiness and certificates, the CA (reachable, same trust bundle, clock skew), WireGuard
/// handshakes, policies, the IPv6 stance. Exit status: 0 all ok, 1 warnings only, 2 any
/// failure.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Only the checks that apply before install: kernel features, tools and (with `--config`)
    /// the clock against the CA.
    #[arg(long)]
    pre: bool,
    /// How to print the checklist.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Where the mesh comes from: the standalone YAML, or the Kubernetes API (then also the
    /// CRDs, the DaemonSet, the CA Deployment and the Nodes' WireGuard keys).
    #[arg(long, value_enum, default_value_t = super::Source::File)]
    source: super::Source,
    /// The standalone YAML the node's proxy reads.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Kubernetes: the release namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "nodemesh-system")]
    namespace: String,
    /// Kubernetes: the proxy DaemonSet's name.
    #[arg(long, default_value = "nodemesh-proxy")]
    daemonset: String,
    /// Kubernetes: the CA Deployment's name.
    #[arg(long, default_value = "nodemesh-ca")]
    ca_deployment: String,
    /// This node's name in the config.
    #[arg(long, env = "NODE_NAME", required_unless_present = "pre")]
    node: Option<String>,
    /// The proxy's state directory (the CNI plugin's pods, the WireGuard control socket).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/nodemesh")]
    state_dir: PathBuf,
    /// The capture backend the proxy uses: `iptables` (with ipset) or `nftables`.
    #[arg(long, default_value = "iptables")]
    capture_backend: Backend,
    /// The proxy's admin API (for `/certs`).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// The proxy's readiness port.
    #[arg(long, default_value = "127.0.0.1:15021")]
    readiness_addr: SocketAddr,
    /// The CA's plain HTTP port [default: the config's CA host, port 15014].
    #[arg(long, value_name = "ADDR")]
    ca_http_addr: Option<SocketAddr>,
    /// Expect WireGuard, as the proxy's `--wireguard` [default: when the state directory has
    /// its control socket].
    #[arg(long)]
    wireguard: bool,
    /// A certificate expiring sooner than this is a warning.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    cert_expiry_warning: Duration,
    /// Test only: shift this command's clock (`10m`, `-2h`) to fake a skewed node clock.
    #[arg(
        long,
        hide = true,
        env = "NODEMESH_CHECK_CLOCK_OFFSET",
        hide_env = true,
        default_value = "0s",
        allow_hyphen_values = true
    )]
    clock_offset: SignedDuration,
}

/// How the checklist is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For a person: one line per item, hints below.
    Text,
    /// `{"status", "items": [{name, status, detail, hint}]}`.
    Json,
}

/// Runs the checks, prints them, and exits 0 (all ok), 1 (warnings) or 2 (failures).
pub fn run(args: CheckArgs) -> ExitCode {
    let clock = OffsetClock {
        offset: args.clock_offset,
    };
    let report = Report {
        items: gather(&args, &clock),
    };
    match args.output {
        Output::Text => print!("{}", report.to_text()),
        Output::Json => println!("{:#}", report.to_json()),
    }
    ExitCode::from(report.exit_code())
}

/// Every item, in reading order.
fn gather(args: &CheckArgs, clock: &dyn Clock) -> Vec<Item> {
    let expect_wireguard = args.wireguard || wireguard_socket(args).exists();
    let mut items = kernel::evaluate(&kernel::observe(
        args.capture_backend,
        expect_wireguard,
        args.pre,
    ));
    let config = args
        .config
        .as_ref()
        .map(|path| (path, Config::from_file(path).map_err(|e| e.to_string())));
    if args.pre {
        match config {
            Some((_, Ok(config))) => {
                items.push(ca_probe::clock_item(args.ca_http_addr, &config, clock))
            }
            Some((path, Err(e))) => items.push(Item::fail(
                clock::NAME,
                format!("not measured: {e}"),
                format!("fix {} (`nodemesh config check`)", path.display()),
            )),
            None => items.push(Item::ok(
                clock::NAME,
                "not measured: no --config, so no CA to compare with",
            )),
        }
        return items;
    }
    let Some(node) = args.node.as_deref() else {
        // clap requires it without --pre.
        return items;
    };
    if args.source == super::Source::Kubernetes {
        items.extend(kubernetes_items(args, node, clock));
        return items;
    }
    let Some((path, config)) = config else {
        items.push(Item::fail(
            "config",
            "no --config",
            "pass the standalone YAML the proxy reads (--config), or --source kubernetes",
        ));
        return items;
    };
    let config = match config {
        Ok(c) if c.node(node).is_some() => c,
        Ok(_) => {
            items.push(Item::fail(
                "config",
                format!("{}: no node {node:?}", path.display()),
                "pass the node's name as in the config's nodes[] (--node or NODE_NAME)",
            ));
            return items;
        }
        Err(e) => {
            items.push(Item::fail(
                "config",
                e,
                "fix the file (`nodemesh config check` lists every mistake); the rest needs it",
            ));
            return items;
        }
    };
    items.push(Item::ok(
        "config",
        format!(
            "{}: node {node} with {} mesh workloads",
            path.display(),
            config.mesh_workloads_on_node(node).count()
        ),
    ));
    let install = format!(
        "nodemesh redirect install --config {} --node {node} --backend {}",
        path.display(),
        args.capture_backend
    );
    let mesh = Mesh {
        config: &config,
        node,
        compiled: policy::compile(&config, node),
        source: path.display().to_string(),
        install,
    };
    items.extend(mesh_items(args, &mesh, clock));
    let peers: Vec<_> = config
        .nodes()
        .iter()
        .filter(|n| n.name != node)
        .filter_map(|n| Some((n.name.clone(), n.wireguard_public_key?)))
        .collect();
    items.push(wireguard_item(args, expect_wireguard, &peers, clock));
    items
}

/// The mesh as this node's proxy sees it, for the node's items.
struct Mesh<'a> {
    config: &'a Config,
    node: &'a str,
    /// Its policies, compiled.
    compiled: policy::Compiled,
    /// Where the policies come from, for hints.
    source: String,
    /// The command that reinstalls the capture rules, for hints.
    install: String,
}

/// Policies, capture, IPv6, proxy ready, certificates and the CA items.
fn mesh_items(args: &CheckArgs, mesh: &Mesh<'_>, clock: &dyn Clock) -> Vec<Item> {
    let Mesh { config, node, .. } = *mesh;
    let local: Vec<_> = config.mesh_workloads_on_node(node).collect();
    let mut items = vec![policy::evaluate(&mesh.compiled, &mesh.source)];
    let rules = capture::desired(config, node, args.capture_backend, &args.state_dir);
    let status = capture::observe(&rules);
    items.push(capture::evaluate(&status, &mesh.install));
    let dropped = nodemesh_redirect::ipv6_dropped(&Host::local(), args.capture_backend).ok();
    let pods6 = local.iter().filter(|w| w.ipv6.is_some()).count();
    items.push(ipv6::evaluate(&status, pods6, dropped));
    items.push(ready::evaluate(
        args.readiness_addr,
        &http::get(args.readiness_addr, "/healthz/ready"),
    ));
    let socket = crate::cli::upgrade::socket_path(&args.state_dir);
    items.push(handoff::evaluate(&socket, handoff::observe(&socket)));
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for w in &local {
        expected
            .entry(config.spiffe_id(w).to_string())
            .or_default()
            .push(format!("{}/{}", w.namespace, w.name));
    }
    let held = http::get(args.admin_addr, "/certs").and_then(|r| match r.status {
        200 => certs::parse(&r.body),
        s => Err(format!("{}/certs: {s}", args.admin_addr)),
    });
    items.push(certs::evaluate(
        &expected,
        &held,
        clock.now(),
        args.cert_expiry_warning,
    ));
    items.extend(ca_probe::items(args.ca_http_addr, config, clock));
    items
}

/// Kubernetes mode: the cluster's objects, this node's proxy and its WireGuard peers (the other
/// Nodes' published keys).
fn kubernetes_items(args: &CheckArgs, node: &str, clock: &dyn Clock) -> Vec<Item> {
    let facts = kube::observe(&kube::Names {
        namespace: args.namespace.clone(),
        daemonset: args.daemonset.clone(),
        deployment: args.ca_deployment.clone(),
    });
    let keys = facts
        .nodes
        .as_deref()
        .map(cluster::node_keys)
        .map_err(Clone::clone);
    let expect_wireguard = args.wireguard || wireguard_socket(args).exists();
    let mut items = vec![
        cluster::crd(cluster::POLICY_CRD, &facts.policy_crd, true),
        cluster::crd(
            cluster::CLUSTER_NETWORK_POLICY_CRD,
            &facts.cluster_network_policy_crd,
            false,
        ),
        cluster::daemonset(&args.daemonset, &facts.daemonset),
        cluster::deployment(&args.ca_deployment, &facts.deployment),
        cluster::nodes(&keys, expect_wireguard),
    ];
    let view = http::get(args.admin_addr, "/config_dump").and_then(|r| match r.status {
        200 => dump::parse(&r.body),
        s => Err(format!("{}/config_dump: {s}", args.admin_addr)),
    });
    match view {
        Ok(view) => {
            let mesh = Mesh {
                config: &view.config,
                node,
                compiled: view.compiled,
                source: "the cluster's policies".to_owned(),
                install: "kubectl -n <namespace> delete pod <this node's nodemesh-proxy pod> (its successor reinstalls them)".to_owned(),
            };
            items.extend(mesh_items(args, &mesh, clock));
        }
        Err(why) => {
            items.push(Item::fail(
                dump::NAME,
                why,
                "start the node's proxy: in Kubernetes mode the node's items follow its view of the mesh (admin /config_dump, --admin-addr)",
            ));
            items.push(ready::evaluate(
                args.readiness_addr,
                &http::get(args.readiness_addr, "/healthz/ready"),
            ));
        }
    }
    let peers: Vec<_> = keys
        .iter()
        .flatten()
        .filter(|(name, _)| name != node)
        .filter_map(|(name, key)| Some((name.clone(), *key.as_ref().ok()?)))
        .collect();
    items.push(wireguard_item(args, expect_wireguard, &peers, clock));
    items
}

/// The WireGuard item: the device's peers against `peers` (every other node and its key).
fn wireguard_item(
    args: &CheckArgs,
    expected: bool,
    peers: &[(String, nodemesh_config::WireguardPublicKey)],
    clock: &dyn Clock,
) -> Item {
    if !expected {
        return Item::ok(
            wireguard::NAME,
            "not enabled (no --wireguard, no control socket in the state directory)",
        );
    }
    let device =
        nodemesh_wireguard::control::query(&wireguard_socket(args)).map_err(|e| e.to_string());
    wireguard::evaluate(peers, &device, clock.now())
}

fn wireguard_socket(args: &CheckArgs) -> PathBuf {
    nodemesh_wireguard::NodeOptions::new(&args.state_dir).control_socket()
}
