//! Running the routing tools (`ip`, `iptables-restore`, `iptables-save`) in this network
//! namespace.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::WireguardError;

/// A program routing needs, with the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// `ip` (iproute2).
    Ip,
    /// `iptables-restore` (iptables).
    IptablesRestore,
    /// `iptables-save` (iptables).
    IptablesSave,
}

impl Tool {
    /// Every tool routing uses.
    pub const ALL: [Tool; 3] = [Tool::Ip, Tool::IptablesRestore, Tool::IptablesSave];

    /// The program's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::IptablesRestore => "iptables-restore",
            Self::IptablesSave => "iptables-save",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Self::Ip => "iproute2",
            Self::IptablesRestore | Self::IptablesSave => "iptables",
        }
    }

    /// The program's path, looked up in `PATH`, then `/usr/sbin` and `/sbin`.
    pub fn locate(self) -> Result<PathBuf, WireguardError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(self.name()))
            .find(|p| is_executable(p))
            .ok_or(WireguardError::MissingTool {
                tool: self.name(),
                package: self.package(),
            })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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
    let mut child = Command::new(tool.locate()?)
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
