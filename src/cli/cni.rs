//! `nodemesh cni`: put the CNI plugin on a node (the chart's init container runs `install`) and
//! take it off again. The plugin chains after the node's network plugin: its entry goes at the
//! end of the `plugins` of the conflist the runtime loads, never into a file of its own.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nodemesh_cni::{PLUGIN_TYPE, conflist};

/// Install or remove the CNI plugin on this node.
#[derive(Debug, clap::Subcommand)]
pub enum CniCommand {
    /// Copy `nodemesh-cni` into the runtime's CNI bin directory and insert its entry at the end
    /// of the plugins of the node's conflist (the first config of the directory, the one the
    /// runtime loads), waiting for the network plugin to write it. Running it twice changes
    /// nothing.
    Install(InstallArgs),
    /// Remove the entry from the node's conflist and the plugin from the bin directory.
    Uninstall(Dirs),
}

/// Where the runtime looks for CNI configs and plugins (host paths, or their mounts).
#[derive(Debug, clap::Args)]
pub struct Dirs {
    /// The runtime's CNI config directory.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The runtime's CNI plugin directory.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
}

/// What `install` puts where.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    dirs: Dirs,
    /// The proxy's state directory as the plugin sees it on the node (it holds the namespace
    /// cache the proxy writes).
    #[arg(long, value_name = "DIR", default_value = nodemesh_cni::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The plugin binary to copy [default: nodemesh-cni beside this program].
    #[arg(long, value_name = "FILE")]
    plugin: Option<PathBuf>,
    /// How long to wait for the network plugin's conflist.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    wait: Duration,
}

/// Runs a `nodemesh cni` command; errors print as `error: ...` and exit 1.
pub fn run(cmd: CniCommand) -> ExitCode {
    let outcome = match cmd {
        CniCommand::Install(args) => install(&args),
        CniCommand::Uninstall(dirs) => uninstall(&dirs),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn install(args: &InstallArgs) -> Result<()> {
    let plugin = match &args.plugin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locating this program")?
            .with_file_name(PLUGIN_TYPE),
    };
    let target = args.dirs.bin_dir.join(PLUGIN_TYPE);
    copy_atomic(&plugin, &target)?;
    println!("nodemesh cni: {} installed", target.display());
    let file = wait_for_conflist(&args.dirs.conf_dir, args.wait)?;
    let entry = conflist::entry(&args.state_dir);
    let changed = edit(&file, |name, list| conflist::insert(name, list, &entry))?;
    let what = if changed {
        "entry inserted"
    } else {
        "entry already in place"
    };
    println!("nodemesh cni: {}: {what}", file.display());
    Ok(())
}

fn uninstall(dirs: &Dirs) -> Result<()> {
    if let Some(file) = find_conflist(&dirs.conf_dir)? {
        let changed = edit(&file, conflist::remove)?;
        let what = if changed { "entry removed" } else { "no entry" };
        println!("nodemesh cni: {}: {what}", file.display());
    }
    let target = dirs.bin_dir.join(PLUGIN_TYPE);
    match std::fs::remove_file(&target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", target.display()))
        }
        _ => Ok(()),
    }
}

/// The config the runtime loads from `dir`, if there is one yet.
fn find_conflist(dir: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    Ok(conflist::pick(names.iter().map(String::as_str)).map(|n| dir.join(n)))
}

fn wait_for_conflist(dir: &Path, wait: Duration) -> Result<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(file) = find_conflist(dir)? {
            return Ok(file);
        }
        if Instant::now() >= deadline {
            bail!(
                "no CNI config in {} after {} (has the network plugin run on this node?)",
                dir.display(),
                humantime::format_duration(wait)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Rewrites the JSON file `path` with `change` (`None`: leave it); says whether it changed.
fn edit<F>(path: &Path, change: F) -> Result<bool>
where
    F: FnOnce(
        &str,
        &serde_json::Value,
    ) -> Result<Option<serde_json::Value>, conflist::ConflistError>,
{
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let list: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let name = path.display().to_string();
    let Some(new) = change(&name, &list)? else {
        return Ok(false);
    };
    let mut bytes = serde_json::to_vec_pretty(&new)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)?;
    Ok(true)
}

/// Copies `from` to `to` (mode 0755) through a temporary file renamed over it, so a runtime
/// never runs a half-written plugin.
fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_atomic(to, &bytes)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", to.display()))
}

/// Writes `path` whole through `.<name>.nodemesh-tmp` beside it (a name no runtime loads),
/// keeping the old file's permissions.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.nodemesh-tmp"));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions())
            .with_context(|| format!("chmod {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const KINDNET: &str = r#"{
  "cniVersion": "0.4.0",
  "name": "kindnet",
  "plugins": [
    {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

    struct Node {
        tmp: tempfile::TempDir,
    }

    impl Node {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            for dir in ["net.d", "bin"] {
                std::fs::create_dir(tmp.path().join(dir)).unwrap();
            }
            std::fs::write(tmp.path().join("nodemesh-cni"), b"#!/bin/sh\n").unwrap();
            Self { tmp }
        }

        fn path(&self, p: &str) -> PathBuf {
            self.tmp.path().join(p)
        }

        fn args(&self) -> InstallArgs {
            InstallArgs {
                dirs: self.dirs(),
                state_dir: "/var/lib/nodemesh".into(),
                plugin: Some(self.path("nodemesh-cni")),
                wait: Duration::from_millis(600),
            }
        }

        fn dirs(&self) -> Dirs {
            Dirs {
                conf_dir: self.path("net.d"),
                bin_dir: self.path("bin"),
            }
        }

        fn conflist(&self) -> serde_json::Value {
            let text = std::fs::read(self.path("net.d/10-kindnet.conflist")).unwrap();
            serde_json::from_slice(&text).unwrap()
        }
    }

    #[test]
    fn install_chains_into_the_existing_conflist_only() {
        let node = Node::new();
        std::fs::write(node.path("net.d/10-kindnet.conflist"), KINDNET).unwrap();
        std::fs::write(node.path("net.d/99-loopback.conf"), "{}").unwrap();
        install(&node.args()).unwrap();
        let list = node.conflist();
        let plugins = list["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[2]["type"], "nodemesh-cni");
        assert_eq!(plugins[2]["stateDir"], "/var/lib/nodemesh");
        let files: Vec<_> = std::fs::read_dir(node.path("net.d")).unwrap().collect();
        assert_eq!(files.len(), 2, "no second config file, no temporary left");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(node.path("bin/nodemesh-cni"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        install(&node.args()).unwrap();
        assert_eq!(node.conflist(), list, "twice changes nothing");
        uninstall(&node.dirs()).unwrap();
        let original: serde_json::Value = serde_json::from_str(KINDNET).unwrap();
        assert_eq!(node.conflist(), original);
        assert!(!node.path("bin/nodemesh-cni").exists());
    }

    #[test]
    fn install_waits_for_the_network_plugin_then_gives_up() {
        let node = Node::new();
        let err = install(&node.args()).unwrap_err();
        assert!(format!("{err:#}").contains("no CNI config"), "{err:#}");
        std::fs::write(node.path("net.d/10-bridge.conf"), r#"{"type": "bridge"}"#).unwrap();
        let err = install(&node.args()).unwrap_err();
        assert!(
            format!("{err:#}").contains("10-bridge.conf: plugins"),
            "{err:#}"
        );
    }
}
