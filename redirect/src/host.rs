//! [`Host`]: where the tools run (this network namespace or a named one), and how.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::RedirectError;

/// A program capture needs, with the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tool {
    /// `ip` (iproute2): rules, routes, namespaces.
    Ip,
    /// `iptables-restore` (iptables).
    IptablesRestore,
    /// `iptables-save` (iptables).
    IptablesSave,
    /// `ip6tables-restore` (iptables).
    Ip6tablesRestore,
    /// `ip6tables-save` (iptables).
    Ip6tablesSave,
    /// `ipset` (ipset).
    Ipset,
    /// `nft` (nftables).
    Nft,
}

impl Tool {
    /// The program's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::IptablesRestore => "iptables-restore",
            Self::IptablesSave => "iptables-save",
            Self::Ip6tablesRestore => "ip6tables-restore",
            Self::Ip6tablesSave => "ip6tables-save",
            Self::Ipset => "ipset",
            Self::Nft => "nft",
        }
    }

    /// The Debian package that provides it.
    pub fn package(self) -> &'static str {
        match self {
            Self::Ip => "iproute2",
            Self::IptablesRestore
            | Self::IptablesSave
            | Self::Ip6tablesRestore
            | Self::Ip6tablesSave => "iptables",
            Self::Ipset => "ipset",
            Self::Nft => "nftables",
        }
    }

    /// The program's absolute path, looked up in `PATH` then `/usr/sbin`, `/sbin`.
    pub fn locate(self) -> Result<PathBuf, RedirectError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
            .map(|dir| dir.join(self.name()))
            .find(|p| is_executable(p))
            .ok_or(RedirectError::MissingTool {
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

/// What a finished command printed, and whether it succeeded.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) status: std::process::ExitStatus,
}

/// Where capture rules are read and written: this process's network namespace, or a named one
/// entered per command with `ip netns exec NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    netns: Option<String>,
}

impl Host {
    /// This process's network namespace.
    pub fn local() -> Self {
        Self { netns: None }
    }

    /// The named network namespace (as listed by `ip netns list`).
    pub fn netns(name: impl Into<String>) -> Self {
        Self {
            netns: Some(name.into()),
        }
    }

    /// The namespace's name, if not this process's own.
    pub fn netns_name(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Checks that the namespace can be entered (always true for [`Host::local`]).
    pub(crate) fn check(&self) -> Result<(), RedirectError> {
        let Some(name) = &self.netns else {
            return Ok(());
        };
        let ran = self.run_program(Path::new("true"), &[], None, "enter the namespace")?;
        if ran.ok {
            Ok(())
        } else {
            Err(RedirectError::NoNetns {
                name: name.clone(),
                stderr: ran.stderr.trim().to_owned(),
            })
        }
    }

    /// Runs `tool args` (input on stdin) and returns what it printed, failed or not.
    pub(crate) fn try_run(
        &self,
        tool: Tool,
        args: &[&str],
        stdin: Option<&str>,
        action: &str,
    ) -> Result<Ran, RedirectError> {
        let program = tool.locate()?;
        self.run_program(&program, args, stdin, action)
    }

    /// Runs `tool args` (input on stdin); a non-zero exit is an error.
    pub(crate) fn run(
        &self,
        tool: Tool,
        args: &[&str],
        stdin: Option<&str>,
        action: &str,
    ) -> Result<String, RedirectError> {
        let ran = self.try_run(tool, args, stdin, action)?;
        ok_or_failed(ran, tool.name(), action)
    }

    /// Runs `sh -c script` in the namespace.
    pub(crate) fn sh(&self, script: &str, action: &str) -> Result<Ran, RedirectError> {
        self.run_program(Path::new("/bin/sh"), &["-c", script], None, action)
    }

    fn run_program(
        &self,
        program: &Path,
        args: &[&str],
        stdin: Option<&str>,
        action: &str,
    ) -> Result<Ran, RedirectError> {
        let mut cmd = match &self.netns {
            None => Command::new(program),
            Some(name) => {
                let ip = Tool::Ip.locate()?;
                let mut cmd = Command::new(ip);
                cmd.args(["netns", "exec", name]).arg(program);
                cmd
            }
        };
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| RedirectError::Spawn {
            tool: program.display().to_string(),
            action: action.to_owned(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        Ok(Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            status: out.status,
        })
    }
}

pub(crate) fn ok_or_failed(ran: Ran, tool: &str, action: &str) -> Result<String, RedirectError> {
    if ran.ok {
        Ok(ran.stdout)
    } else {
        Err(RedirectError::Failed {
            tool: tool.to_owned(),
            action: action.to_owned(),
            status: ran.status,
            stderr: ran.stderr.trim().to_owned(),
        })
    }
}
