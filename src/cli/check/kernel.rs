//! Kernel features and userspace tools capture needs: the TPROXY target and the socket match
//! (for the backend in use), the tools the backend runs, `/dev/net/tun` (WireGuard) and
//! `net.ipv4.ip_forward`. [`observe`] reads the node; [`evaluate`] is pure.
//!
//! TPROXY and the socket match are looked up in `/proc/net/ip_tables_{targets,matches}` (what
//! the kernel has registered); when absent there (a module not loaded yet) or with nftables,
//! they are tried for real in a throwaway network namespace (`unshare --net`), which loads what
//! is needed and leaves nothing behind.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nodemesh_redirect::Backend;

use super::report::Item;

/// What a probe of one kernel feature found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Listed by the kernel as registered.
    Registered,
    /// A rule using it was accepted in a throwaway namespace.
    Works,
    /// A rule using it was refused; the tool's words.
    Refused(String),
    /// It could not be tried; why.
    Unknown(String),
}

/// One tool the backend runs, and where it was found on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolFact {
    /// The program.
    pub name: &'static str,
    /// The Debian package that has it.
    pub package: &'static str,
    /// Where it is, if anywhere.
    pub found: Option<PathBuf>,
}

/// What was seen of the node's kernel and tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFacts {
    /// The capture backend these are for.
    pub backend: Backend,
    /// The TPROXY target (`xt_TPROXY`, or nft's `tproxy`).
    pub tproxy: Probe,
    /// The socket match (`xt_socket`, or nft's `socket transparent`).
    pub socket_match: Probe,
    /// The backend's tools.
    pub tools: Vec<ToolFact>,
    /// Whether `/dev/net/tun` exists.
    pub tun: bool,
    /// `net.ipv4.ip_forward`, or why it could not be read.
    pub ip_forward: Result<String, String>,
    /// Whether WireGuard is expected (then the TUN device is required).
    pub wireguard: bool,
    /// Before install (`--pre`): forwarding off is expected then, installing capture turns it
    /// on.
    pub before_install: bool,
}

/// Reads the node: `/proc`, `PATH`, `/dev/net/tun`, and probes in a throwaway namespace.
pub fn observe(backend: Backend, wireguard: bool, before_install: bool) -> KernelFacts {
    let tools = backend
        .tools()
        .iter()
        .map(|t| ToolFact {
            name: t.name(),
            package: t.package(),
            found: which(t.name()),
        })
        .collect();
    let (tproxy, socket_match) = match backend {
        Backend::Iptables => (
            registered("/proc/net/ip_tables_targets", "TPROXY").unwrap_or_else(|| {
                try_iptables(&[
                    "-p",
                    "tcp",
                    "-j",
                    "TPROXY",
                    "--on-ip",
                    "127.0.0.1",
                    "--on-port",
                    "15001",
                    "--tproxy-mark",
                    "0x111/0xfff",
                ])
            }),
            registered("/proc/net/ip_tables_matches", "socket").unwrap_or_else(|| {
                try_iptables(&["-p", "tcp", "-m", "socket", "--transparent", "-j", "ACCEPT"])
            }),
        ),
        Backend::Nftables => (
            try_nft("meta l4proto tcp tproxy to 127.0.0.1:15001"),
            try_nft("meta l4proto tcp socket transparent 1 accept"),
        ),
    };
    KernelFacts {
        backend,
        tproxy,
        socket_match,
        tools,
        tun: Path::new("/dev/net/tun").exists(),
        ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("/proc/sys/net/ipv4/ip_forward: {e}")),
        wireguard,
        before_install,
    }
}

/// `Some(Registered)` when `name` is a line of the kernel's list `path`.
fn registered(path: &str, name: &str) -> Option<Probe> {
    let list = std::fs::read_to_string(path).ok()?;
    list.lines()
        .any(|l| l.trim() == name)
        .then_some(Probe::Registered)
}

/// Where `program` is on `PATH`, where the proxy looks for it too.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Adds one mangle PREROUTING rule in a throwaway network namespace.
fn try_iptables(rule: &[&str]) -> Probe {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "--",
        "iptables",
        "-w",
        "-t",
        "mangle",
        "-A",
        "PREROUTING",
    ])
    .args(rule);
    outcome(cmd.output())
}

/// Loads a table with one prerouting rule in a throwaway network namespace.
fn try_nft(rule: &str) -> Probe {
    let text = format!(
        "table ip nodemesh_check {{\n chain probe {{\n  type filter hook prerouting priority mangle; policy accept;\n  {rule}\n }}\n}}\n"
    );
    let child = Command::new("unshare")
        .args(["--net", "--", "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Probe::Unknown(format!("cannot run unshare --net nft: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take()
        && let Err(e) = stdin.write_all(text.as_bytes())
    {
        return Probe::Unknown(format!("writing to nft: {e}"));
    }
    outcome(child.wait_with_output())
}

fn outcome(output: std::io::Result<std::process::Output>) -> Probe {
    match output {
        Err(e) => Probe::Unknown(format!("cannot run unshare --net: {e}")),
        Ok(out) if out.status.success() => Probe::Works,
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr
                .lines()
                .next()
                .unwrap_or("no message")
                .trim()
                .to_owned();
            Probe::Refused(first)
        }
    }
}

/// The kernel items, in reading order.
pub fn evaluate(facts: &KernelFacts) -> Vec<Item> {
    let (tproxy_module, socket_module) = match facts.backend {
        Backend::Iptables => ("xt_TPROXY", "xt_socket"),
        Backend::Nftables => ("nft_tproxy", "nft_socket"),
    };
    let mut items = vec![
        probe_item("kernel: TPROXY target", &facts.tproxy, tproxy_module),
        probe_item("kernel: socket match", &facts.socket_match, socket_module),
        tools_item(facts),
    ];
    const TUN: &str = "kernel: /dev/net/tun";
    items.push(match (facts.tun, facts.wireguard) {
        (true, _) => Item::ok(TUN, "present"),
        (false, true) => Item::fail(
            TUN,
            "missing; WireGuard needs it",
            "load the tun module (`modprobe tun`) or give the proxy's container /dev/net/tun",
        ),
        (false, false) => Item::warn(
            TUN,
            "missing; only WireGuard (--wireguard) needs it",
            "load the tun module (`modprobe tun`) before enabling WireGuard",
        ),
    });
    const FORWARD: &str = "kernel: net.ipv4.ip_forward";
    items.push(match &facts.ip_forward {
        Ok(v) if v == "1" => Item::ok(FORWARD, "1"),
        Ok(v) if facts.before_install => Item::ok(
            FORWARD,
            format!("{v}; installing the capture rules turns it on"),
        ),
        Ok(v) => Item::warn(
            FORWARD,
            format!("{v}; capture needs 1"),
            "installing the capture rules turns it on; or `sysctl -w net.ipv4.ip_forward=1`",
        ),
        Err(e) => Item::fail(FORWARD, e.clone(), "run on a Linux node with /proc mounted"),
    });
    items
}

fn probe_item(name: &str, probe: &Probe, module: &str) -> Item {
    match probe {
        Probe::Registered => Item::ok(name, format!("{module} registered")),
        Probe::Works => Item::ok(name, format!("{module} works (tried in a throwaway netns)")),
        Probe::Refused(why) => Item::fail(
            name,
            format!("refused: {why}"),
            format!(
                "this kernel lacks {module}: load it (`modprobe {module}`) or use a kernel built with it"
            ),
        ),
        Probe::Unknown(why) => Item::warn(
            name,
            format!("not tried: {why}"),
            "run `nodemesh check` as root with util-linux's unshare installed",
        ),
    }
}

fn tools_item(facts: &KernelFacts) -> Item {
    let name = format!("tools: {} backend", facts.backend);
    let missing: Vec<&ToolFact> = facts.tools.iter().filter(|t| t.found.is_none()).collect();
    if missing.is_empty() {
        let names: Vec<&str> = facts.tools.iter().map(|t| t.name).collect();
        return Item::ok(name, names.join(", "));
    }
    let mut packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    packages.dedup();
    let names: Vec<&str> = missing.iter().map(|t| t.name).collect();
    Item::fail(
        name,
        format!("missing: {}", names.join(", ")),
        format!(
            "install the Debian package(s) {} (the proxy runs them from PATH)",
            packages.join(" ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::report::Status;

    fn healthy(backend: Backend) -> KernelFacts {
        KernelFacts {
            backend,
            tproxy: Probe::Registered,
            socket_match: Probe::Works,
            tools: backend
                .tools()
                .iter()
                .map(|t| ToolFact {
                    name: t.name(),
                    package: t.package(),
                    found: Some(PathBuf::from("/usr/sbin").join(t.name())),
                })
                .collect(),
            tun: true,
            ip_forward: Ok("1".into()),
            wireguard: true,
            before_install: false,
        }
    }

    #[test]
    fn a_healthy_node_is_all_ok() {
        for backend in [Backend::Iptables, Backend::Nftables] {
            let items = evaluate(&healthy(backend));
            assert_eq!(items.len(), 5);
            assert!(items.iter().all(|i| i.status == Status::Ok), "{items:?}");
        }
    }

    #[test]
    fn a_refused_target_names_the_module() {
        let mut facts = healthy(Backend::Nftables);
        facts.tproxy = Probe::Refused("Error: Could not process rule".into());
        let item = &evaluate(&facts)[0];
        assert_eq!(item.status, Status::Fail);
        assert!(
            item.hint.as_ref().unwrap().contains("nft_tproxy"),
            "{item:?}"
        );
    }

    #[test]
    fn missing_tools_name_their_packages() {
        let mut facts = healthy(Backend::Iptables);
        for t in &mut facts.tools {
            if t.name == "ipset" || t.name == "iptables-save" {
                t.found = None;
            }
        }
        let item = &evaluate(&facts)[2];
        assert_eq!(item.status, Status::Fail);
        assert_eq!(item.detail, "missing: iptables-save, ipset");
        assert_eq!(
            item.hint.as_deref(),
            Some("install the Debian package(s) iptables ipset (the proxy runs them from PATH)")
        );
    }

    #[test]
    fn tun_fails_only_with_wireguard_and_forwarding_off_warns() {
        let mut facts = healthy(Backend::Iptables);
        facts.tun = false;
        facts.ip_forward = Ok("0".into());
        assert_eq!(evaluate(&facts)[3].status, Status::Fail);
        assert_eq!(evaluate(&facts)[4].status, Status::Warn);
        facts.wireguard = false;
        assert_eq!(evaluate(&facts)[3].status, Status::Warn);
        facts.before_install = true;
        assert_eq!(
            evaluate(&facts)[4].status,
            Status::Ok,
            "install turns it on"
        );
    }
}
