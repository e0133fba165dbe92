//! [`RedirectError`]: what failed while checking, applying or removing capture rules, and why.

use std::process::ExitStatus;

/// An error of the capture rules: bad input refused up front, or a tool that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectError {
    /// A mesh pod address that is not an IP address.
    #[error("pod address {input:?} is not an IPv4 or IPv6 address")]
    BadAddress {
        /// The text given.
        input: String,
    },
    /// A backend name other than `iptables` or `nftables`.
    #[error("unknown backend {input:?}: expected iptables or nftables")]
    UnknownBackend {
        /// The text given.
        input: String,
    },
    /// A tool the backend needs is not installed.
    #[error("{tool} is not installed (looked in PATH, /usr/sbin, /sbin): install {package}")]
    MissingTool {
        /// The program looked for.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// The network namespace to work in does not exist or cannot be entered.
    #[error("network namespace {name:?} cannot be entered: {stderr}")]
    NoNetns {
        /// The namespace's name.
        name: String,
        /// What `ip netns exec` said.
        stderr: String,
    },
    /// A tool could not be started.
    #[error("cannot run {tool} to {action}: {source}")]
    Spawn {
        /// The program.
        tool: String,
        /// What it was run for.
        action: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("{tool} failed to {action} ({status}): {stderr}")]
    Failed {
        /// The program.
        tool: String,
        /// What it was run for.
        action: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A tool's output was not what we expected.
    #[error("cannot read the output of {tool}: {reason}")]
    Output {
        /// The program.
        tool: String,
        /// What was wrong with it.
        reason: String,
    },
    /// An [`Installer`](crate::Installer)'s own step before the tools failed (e.g. reading
    /// the pods a CNI plugin captured): nothing was changed.
    #[error("capture rules not changed: {reason}")]
    Installer {
        /// Why.
        reason: String,
    },
    /// The blocking task running the tools panicked or was cancelled.
    #[cfg(feature = "reconciler")]
    #[error("the task running the capture tools did not finish: {source}")]
    Task {
        /// Why it did not finish.
        source: tokio::task::JoinError,
    },
    /// IPv4 forwarding is off and cannot be turned on.
    #[error(
        "net.ipv4.ip_forward is {value} and cannot be set to 1 (is /proc/sys read-only?): {stderr}"
    )]
    IpForward {
        /// The current value.
        value: String,
        /// Why writing failed.
        stderr: String,
    },
}
