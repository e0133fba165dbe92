//! `nodemesh wireguard`: the node's key, its userspace WireGuard device and the routing that
//! sends remote pod networks through it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use nodemesh_wireguard::{
    DEFAULT_INTERFACE, DEFAULT_PORT, KeyStore, NodeOptions, WireguardHandle, control, routing,
};
use tokio::signal::unix::{SignalKind, signal};

/// Node-to-node encryption of everything HBONE does not carry: keys, device, routing, status.
#[derive(Debug, clap::Subcommand)]
pub enum WireguardCommand {
    /// Print the node's public key (for `nodes[].wireguardPublicKey`), creating the key if absent.
    Pubkey(StateArgs),
    /// Replace the node's key with a new one and print the new public key. A running `up`
    /// switches to it within a second; peers need the new key in their config.
    RotateKey(StateArgs),
    /// Run the userspace WireGuard device in the foreground until SIGTERM or Ctrl-C, with the
    /// routing of remote pod networks through it. The config is re-read when it changes. The
    /// routing stays after exit, so traffic to remote pods is dropped, never sent in plaintext.
    Up(UpArgs),
    /// Delete every rule, route and chain `up` installed (and a leftover interface).
    Down(DownArgs),
    /// Show the running device's peers, last handshakes and bytes. The control socket
    /// `<state-dir>/wireguard.sock` speaks WireGuard's configuration protocol: linked as
    /// `/var/run/wireguard/<interface>.sock`, `wg show` reads it too.
    Status(StateArgs),
}

/// The state directory (key, control socket).
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// State directory: the key `wireguard.key` (0600) and the control socket.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/nodemesh")]
    state_dir: PathBuf,
}

/// What `up` runs.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    state: StateArgs,
    /// The standalone YAML: every node's address, podCIDR and wireguardPublicKey.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// This node's name in the config.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The TUN interface's name.
    #[arg(long, default_value = DEFAULT_INTERFACE)]
    interface: String,
    /// The WireGuard UDP port (the same on every node).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    listen_port: u16,
}

/// What `down` removes.
#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    state: StateArgs,
    /// The standalone YAML (accepted for symmetry with `up`; everything of ours is removed).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's name in the config (accepted for symmetry with `up`).
    #[arg(long, env = "NODE_NAME")]
    node: Option<String>,
    /// The TUN interface's name.
    #[arg(long, default_value = DEFAULT_INTERFACE)]
    interface: String,
}

/// Runs a `nodemesh wireguard` subcommand.
pub async fn run(cmd: WireguardCommand) -> Result<()> {
    match cmd {
        WireguardCommand::Pubkey(args) => {
            let (key, created) = KeyStore::new(&args.state_dir).load_or_create()?;
            if created {
                eprintln!(
                    "created {}",
                    KeyStore::new(&args.state_dir).path().display()
                );
            }
            println!("{}", key.public_key());
        }
        WireguardCommand::RotateKey(args) => {
            let key = KeyStore::new(&args.state_dir).rotate()?;
            println!("{}", key.public_key());
        }
        WireguardCommand::Up(args) => up(args).await?,
        WireguardCommand::Down(args) => {
            let found =
                routing::remove(&args.interface).context("cannot remove the WireGuard routing")?;
            if found.is_empty() {
                println!("no WireGuard routing was installed");
            } else {
                println!(
                    "WireGuard routing removed ({} pod networks)",
                    found.rules.len().max(found.unreachable.len())
                );
            }
        }
        WireguardCommand::Status(args) => {
            let path = NodeOptions::new(&args.state_dir).control_socket();
            let status = control::query(&path)?;
            print!("{status}");
        }
    }
    Ok(())
}

async fn up(args: UpArgs) -> Result<()> {
    let options = NodeOptions {
        state_dir: args.state.state_dir,
        interface: args.interface,
        port: args.listen_port,
    };
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let handle = WireguardHandle::start(&args.config, &args.node, options).await?;
    println!(
        "wireguard up: {} ({} peers)",
        handle.public_key(),
        handle.initial_peers()
    );
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => if handle.is_finished() { break },
        }
    }
    handle.shutdown().await?;
    Ok(())
}
