//! `nodemesh redirect`: install, remove and check the node's capture rules (TPROXY).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use nodemesh_config::Config;
use nodemesh_redirect::{Backend, Host, RuleSet};

/// Install, remove or check the capture rules of a node: TPROXY rules in chains of our own
/// (`NODEMESH-*` or the nft table `ip nodemesh`), the node's mesh pod IPs in a set, `ip rule pref
/// 100 fwmark 0x111/0xfff lookup 133` and the local route of table 133.
///
/// The rules outlive the proxy: a stopped proxy leaves capture in place, so traffic fails closed.
#[derive(Debug, clap::Subcommand)]
pub enum RedirectCommand {
    /// Install or update the rules; only what differs is changed (running it twice changes
    /// nothing). Exit status: 0 done, 2 error (nothing is touched on bad input).
    Install(RedirectArgs),
    /// Delete every chain, set, ip rule and route we made (no config needed). Exit status: 0
    /// done, 2 error.
    Remove(RemoveArgs),
    /// Show what is installed and whether it matches the config. Exit status: 0 in sync,
    /// 1 drift or not installed, 2 error.
    Status(RedirectArgs),
}

/// Where the rules go and what they capture.
#[derive(Debug, clap::Args)]
pub struct RedirectArgs {
    /// The standalone YAML; the node's in-mesh workloads are captured.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// This node's name in the config.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The tools that install the rules: `iptables` (with ipset) or `nftables`.
    #[arg(long, default_value = "iptables")]
    backend: Backend,
    /// Work in this network namespace (`ip netns exec NAME`) instead of the current one.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
}

/// Where the rules are removed from.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The backend whose rules to remove first (the other backend's leftovers go too).
    #[arg(long, default_value = "iptables")]
    backend: Backend,
    /// Work in this network namespace (`ip netns exec NAME`) instead of the current one.
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// Accepted for symmetry with `install`; removal does not depend on the config.
    #[arg(long, value_name = "FILE", hide = true)]
    config: Option<PathBuf>,
    /// Accepted for symmetry with `install`; removal does not depend on the node.
    #[arg(long, env = "NODE_NAME", hide = true)]
    node: Option<String>,
}

impl RedirectArgs {
    fn host(&self) -> Host {
        self.netns.as_ref().map_or_else(Host::local, Host::netns)
    }
}

/// Runs a `nodemesh redirect` subcommand and returns the process's exit status.
pub fn run(cmd: RedirectCommand) -> ExitCode {
    match try_run(cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn try_run(cmd: RedirectCommand) -> Result<ExitCode> {
    match cmd {
        RedirectCommand::Install(args) => {
            let rules = rule_set(&args.config, &args.node, args.backend)?;
            let report = nodemesh_redirect::apply(&args.host(), &rules)
                .context("cannot install the capture rules")?;
            if report.changed.is_empty() {
                println!(
                    "capture rules already in sync ({} pods)",
                    rules.pods().len()
                );
            } else {
                println!(
                    "capture rules installed ({} pods); changed: {}",
                    rules.pods().len(),
                    report.changed.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RedirectCommand::Remove(args) => {
            // Removal deletes our chains, sets, rule and route by name: no pod list needed.
            let rules = RuleSet::new(args.backend, []);
            let host = args.netns.as_ref().map_or_else(Host::local, Host::netns);
            let report = nodemesh_redirect::remove(&host, &rules)
                .context("cannot remove the capture rules")?;
            if report.changed.is_empty() {
                println!("no capture rules were installed");
            } else {
                println!("capture rules removed: {}", report.changed.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        RedirectCommand::Status(args) => {
            let rules = rule_set(&args.config, &args.node, args.backend)?;
            let status = nodemesh_redirect::status(&args.host(), &rules)
                .context("cannot read the capture rules")?;
            println!("{status}");
            Ok(if status.in_sync() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// The desired rules of `node`: its in-mesh workloads' IPs.
fn rule_set(config: &Path, node: &str, backend: Backend) -> Result<RuleSet> {
    // The error names the file and every mistake in it; its source would repeat the OS error.
    let config = Config::from_file(config).map_err(|e| anyhow!("{e}"))?;
    rules_for_node(&config, node, backend)
}

fn rules_for_node(config: &Config, node: &str, backend: Backend) -> Result<RuleSet> {
    if config.node(node).is_none() {
        bail!("no node {node:?} in the config");
    }
    let addrs = config.mesh_workloads_on_node(node).flat_map(|w| w.addrs());
    Ok(RuleSet::new(backend, []).with_addrs(addrs))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const YAML: &str = "
nodes:
  - {name: node-a, address: 10.200.0.1}
  - {name: node-b, address: 10.200.0.2}
namespaces:
  - {name: shop, labels: {nodemesh.io/mesh: enabled}}
workloads:
  - {name: web-1, namespace: shop, ip: 10.200.1.11, node: node-a}
  - {name: web-2, namespace: shop, ip: 10.200.2.11, node: node-b}
  - {name: legacy, namespace: shop, ip: 10.200.1.12, node: node-a, labels: {nodemesh.io/mesh: disabled}}
  - {name: other, namespace: outside, ip: 10.200.1.13, node: node-a}
";

    #[test]
    fn captures_only_in_mesh_pods_of_the_node() {
        let config = Config::from_yaml_str(YAML, ".").unwrap();
        let rules = rules_for_node(&config, "node-a", Backend::Nftables).unwrap();
        assert_eq!(
            rules.pods().iter().copied().collect::<Vec<_>>(),
            vec![Ipv4Addr::new(10, 200, 1, 11)]
        );
        assert_eq!(rules.backend, Backend::Nftables);
    }

    #[test]
    fn unknown_node_is_an_error() {
        let config = Config::from_yaml_str(YAML, ".").unwrap();
        let err = rules_for_node(&config, "node-z", Backend::Iptables).unwrap_err();
        assert!(err.to_string().contains("node-z"), "{err}");
    }
}
