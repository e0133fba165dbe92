//! Execute: run a [`Plan`]'s actions on a [`Host`], in order, stopping at the first failure.

use crate::error::RedirectError;
use crate::host::{Host, Tool};
use crate::observe::IP_FORWARD;
use crate::plan::{Action, Plan};
use crate::rules::NFT_TABLE;

/// What [`crate::apply`] or [`crate::remove`] changed: the names of the parts, empty when there
/// was nothing to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// The parts changed, in the order they were changed.
    pub changed: Vec<String>,
}

/// Runs every action of `plan` on `host`; on success, reports the parts the plan changes.
pub fn execute(host: &Host, plan: &Plan) -> Result<ApplyReport, RedirectError> {
    for action in &plan.actions {
        run(host, action)?;
    }
    Ok(ApplyReport {
        changed: plan.changed.clone(),
    })
}

fn run(host: &Host, action: &Action) -> Result<(), RedirectError> {
    match action {
        Action::EnableIpForward { was } => {
            let wrote = host.sh(&format!("echo 1 > {IP_FORWARD}"), "set ip_forward")?;
            if !wrote.ok {
                return Err(RedirectError::IpForward {
                    value: was.clone(),
                    stderr: wrote.stderr.trim().to_owned(),
                });
            }
        }
        Action::DeleteIpRule(args) => {
            let args = args.iter().map(String::as_str);
            ip(host, ["rule", "del"], args, "delete an ip rule")?;
        }
        Action::AddIpRule(args) => {
            let args = args.iter().map(String::as_str);
            ip(host, ["rule", "add"], args, "add the ip rule")?;
        }
        Action::FlushRoutes { table } => {
            let table = table.to_string();
            ip(
                host,
                ["route", "flush"],
                ["table", &table],
                "flush our routes",
            )?;
        }
        Action::AddLocalRoute { table } => {
            let table = table.to_string();
            let args = ["local", "0.0.0.0/0", "dev", "lo", "table", &table];
            ip(host, ["route", "replace"], args, "add the local route")?;
        }
        Action::ReplaceIpset(input) => {
            host.run(
                Tool::Ipset,
                &["restore"],
                Some(input),
                "replace the pod set",
            )?;
        }
        Action::DestroyIpset(set) => {
            host.run(Tool::Ipset, &["destroy", set], None, "delete our set")?;
        }
        Action::WriteChains(input) => {
            let action = "install our chains";
            host.run(Tool::IptablesRestore, &["--noflush"], Some(input), action)?;
        }
        Action::DeleteChains(input) => {
            let action = "delete our chains";
            host.run(Tool::IptablesRestore, &["--noflush"], Some(input), action)?;
        }
        Action::WriteNftTable(script) => {
            host.run(Tool::Nft, &["-f", "-"], Some(script), "install our table")?;
        }
        Action::WriteNftSet(script) => {
            host.run(Tool::Nft, &["-f", "-"], Some(script), "replace the pod set")?;
        }
        Action::DeleteNftTable => {
            let args = ["delete", "table", "ip", NFT_TABLE];
            host.run(Tool::Nft, &args, None, "delete our table")?;
        }
        Action::WriteChains6(input) => {
            let action = "install the IPv6 guard";
            host.run(Tool::Ip6tablesRestore, &["--noflush"], Some(input), action)?;
        }
        Action::DeleteChains6(input) => {
            let action = "delete the IPv6 guard";
            host.run(Tool::Ip6tablesRestore, &["--noflush"], Some(input), action)?;
        }
        Action::WriteNft6Table(script) => {
            host.run(
                Tool::Nft,
                &["-f", "-"],
                Some(script),
                "install the IPv6 guard",
            )?;
        }
        Action::WriteNft6Set(script) => {
            let action = "replace the IPv6 pod set";
            host.run(Tool::Nft, &["-f", "-"], Some(script), action)?;
        }
        Action::DeleteNft6Table => {
            let args = ["delete", "table", "ip6", NFT_TABLE];
            host.run(Tool::Nft, &args, None, "delete the IPv6 guard")?;
        }
    }
    Ok(())
}

/// `ip -4 OBJECT COMMAND ARGS`.
fn ip<'a>(
    host: &Host,
    [object, command]: [&'a str; 2],
    args: impl IntoIterator<Item = &'a str>,
    action: &str,
) -> Result<(), RedirectError> {
    let mut argv = vec!["-4", object, command];
    argv.extend(args);
    host.run(Tool::Ip, &argv, None, action).map(drop)
}
