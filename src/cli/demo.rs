//! `nodemesh demo`: a mini-cluster out of network namespaces, with the CA, a proxy per node
//! with TPROXY capture and pods running small HTTP servers, and a walk through what the mesh
//! does: mTLS through a Service, L7 and L4 policy, STRICT mode, what the wire sees, and failing
//! closed when a proxy is down. `nodemesh testbed-app` is the pods' server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use nodemesh_redirect::Backend;
use nodemesh_testbed::scenario::{self, Outcome};
use nodemesh_testbed::{MeshOptions, Testbed, apps};

/// Run the demo: build a 2-node mini-cluster from network namespaces (root needed), start the
/// mesh in it and check, step by step, that it behaves. Exit status 0 only if every step did.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Capture backend of the proxies.
    #[arg(long, default_value = "iptables")]
    backend: Backend,
    /// Run without WireGuard between the nodes (it is on by default).
    #[arg(long)]
    no_wireguard: bool,
    /// Leave the cluster running at the end and print commands to poke around.
    #[arg(long)]
    keep: bool,
    /// Only remove what earlier `--keep` or interrupted runs left behind, then exit.
    #[arg(long, conflicts_with = "keep")]
    clean: bool,
}

/// Flags of the hidden `nodemesh testbed-app`.
#[derive(Debug, clap::Args)]
pub struct AppArgs {
    /// The pod's name, echoed in every answer.
    #[arg(long)]
    name: String,
    /// HTTP listen address.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], apps::HTTP_PORT)))]
    http: SocketAddr,
    /// TCP echo listen address.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], apps::ECHO_PORT)))]
    echo: SocketAddr,
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> ExitCode {
    if args.clean {
        return match nodemesh_testbed::destroy_all(nodemesh_testbed::NAME_PREFIX) {
            Ok(gone) => {
                println!("removed {} network namespaces", gone.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match demo(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a pod's app until killed.
pub fn run_app(args: AppArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = runtime
        .map_err(anyhow::Error::from)
        .and_then(|rt| Ok(rt.block_on(apps::serve(args.name, args.http, args.echo))?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: &DemoArgs) -> Result<bool> {
    let started = Instant::now();
    let binary = std::env::current_exe().context("finding the nodemesh binary")?;
    step("checking prerequisites (root, ip, iptables/nft)");
    nodemesh_testbed::check_prerequisites()?;
    for tool in args.backend.tools() {
        tool.locate().context("run scripts/install-deps")?;
    }
    step(&format!(
        "building 2 nodes x (2 shop pods + 1 legacy pod), an underlay, kube-proxy's {} rules, \
         Services web, kubernetes, node-exporter",
        args.backend
    ));
    let mut bed = Testbed::build(scenario::shop_for(args.backend))?;
    // Ctrl-C must not leave namespaces behind.
    let prefix = bed.prefix().to_owned();
    install_teardown_on_signal(prefix.clone());
    println!(
        "     namespaces {prefix}-*, files in {}",
        bed.dir().display()
    );
    step(if args.no_wireguard {
        "starting the CA, a proxy per node (capture: --manage-redirect) and the pods' apps"
    } else {
        "starting the CA, a proxy per node (capture: --manage-redirect; --wireguard) and the pods' apps"
    });
    let mut opts = MeshOptions::new(binary);
    opts.backend = args.backend;
    opts.wireguard = !args.no_wireguard;
    bed.start_mesh(&opts)?;
    println!("     ready after {:.1} s", started.elapsed().as_secs_f64());

    let mut outcomes = Vec::new();
    let capture = bed.capture_underlay()?;
    for check in [
        scenario::allowed_via_service,
        scenario::l7_deny,
        scenario::l4_deny,
        scenario::strict_refuses_plaintext,
        scenario::passthrough_to_non_mesh,
    ] {
        outcomes.push(show(check(&bed)?));
    }
    let control = scenario::marker(&bed, "control");
    scenario::send_control(&bed, &control)?;
    let captured = capture.finish()?;
    let markers = ["allowed", "admin-body", "l4"].map(|m| scenario::marker(&bed, m));
    outcomes.push(show(scenario::underlay_encrypted(
        &captured, &control, &markers,
    )));
    if !args.no_wireguard {
        outcomes.push(show(scenario::wireguard_carries_the_rest(&bed)?));
    }
    for outcome in scenario::proxy_down_fails_closed(&mut bed, Signal::SIGKILL)? {
        outcomes.push(show(outcome));
    }

    println!();
    println!("     summary");
    for o in &outcomes {
        println!("{:<4} {}", if o.ok { "PASS" } else { "FAIL" }, o.step);
    }
    let all_ok = outcomes.iter().all(|o| o.ok);
    println!(
        "\n{} in {:.1} s",
        if all_ok {
            "every step behaved"
        } else {
            "SOME STEPS FAILED"
        },
        started.elapsed().as_secs_f64()
    );
    if args.keep {
        print_keep_help(&bed);
        bed.keep();
    } else {
        step("tearing down");
        bed.teardown()?;
    }
    Ok(all_ok)
}

fn step(what: &str) {
    println!("==> {what}");
}

fn show(o: Outcome) -> Outcome {
    println!("--> {}", o.step);
    for d in &o.details {
        println!("    {d}");
    }
    o
}

fn print_keep_help(bed: &Testbed) {
    let p = bed.prefix();
    println!("\nthe cluster keeps running; try:");
    println!("  ip netns exec {p}-frontend-a curl -s http://10.96.0.10/");
    println!("  ip netns exec {p}-frontend-a curl -s -X POST http://10.96.0.10/admin");
    println!("  ip netns exec {p}-node-b curl -s localhost:15000/config_dump");
    println!("  ip netns exec {p}-node-b iptables-save -t mangle");
    println!("  tail -f {}", bed.flow_log_path("node-b").display());
    println!("remove it with: nodemesh demo --clean");
}

/// On SIGINT or SIGTERM, removes the testbed's namespaces (killing what runs in them) and exits.
fn install_teardown_on_signal(prefix: String) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("\ninterrupted: tearing down {prefix}-*");
        let _ = nodemesh_testbed::destroy_all(&format!("{prefix}-"));
        std::process::exit(130);
    });
}
