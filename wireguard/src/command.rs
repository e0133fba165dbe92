//! Running the routing tools (`ip`, `iptables-restore`, `iptables-save`) in this network
//! namespace.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::WireguardError;

pub use nodemesh_redirect::Tool;

/// Every tool routing uses.
pub const ROUTING_TOOLS: [Tool; 3] = [Tool::Ip, Tool::IptablesRestore, Tool::IptablesSave];

/// The program's path (found the way capture finds its tools), or which package to install.
pub fn locate(tool: Tool) -> Result<PathBuf, WireguardError> {
    tool.locate().map_err(|_| WireguardError::MissingTool {
        tool: tool.name(),
        package: tool.package(),
    })
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    status: std::process::ExitStatus,
    stderr: String,
}

/// Runs `tool args` with `stdin`, failed or not.
pub(crate) fn try_run(
    tool: Tool,
    args: &[&str],
    stdin: Option<&str>,
    action: &str,
) -> Result<Ran, WireguardError> {
    let spawn_err = |source| WireguardError::Spawn {
        tool: tool.name(),
        action: action.to_owned(),
        error: source,
    };
    let mut child = Command::new(locate(tool)?)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    Ok(Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        status: out.status,
    })
}

/// Runs `tool args` with `stdin`; a non-zero exit is an error. Returns its output.
pub(crate) fn run(
    tool: Tool,
    args: &[&str],
    stdin: Option<&str>,
    action: &str,
) -> Result<String, WireguardError> {
    let ran = try_run(tool, args, stdin, action)?;
    if ran.ok {
        Ok(ran.stdout)
    } else {
        Err(WireguardError::Failed {
            tool: tool.name(),
            action: action.to_owned(),
            status: ran.status,
            stderr: ran.stderr,
        })
    }
}
