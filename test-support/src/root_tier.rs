//! [`root_tier`]: whether a test of the root tier (network namespaces, capture rules, TUN
//! devices, real processes) runs here.
//!
//! Without `NODEMESH_E2E=1` a missing privilege or tool skips the test with a line saying
//! why; with it (CI, a release check) the same is a failure that says what to install.

use std::path::{Path, PathBuf};

/// Something a root-tier test needs besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A program, looked up in `PATH`, then `/usr/local/sbin`, `/usr/sbin`, `/sbin`.
    Program {
        /// Its name, e.g. `wg`.
        name: &'static str,
        /// The Debian package that provides it, e.g. `wireguard-tools`.
        package: &'static str,
    },
    /// A device node, e.g. `/dev/net/tun`.
    Device(&'static str),
    /// A file outside `PATH`, e.g. a CNI plugin in `/usr/lib/cni`.
    File {
        /// Its path.
        path: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
}

impl Need {
    /// A program and the Debian package that provides it.
    pub const fn program(name: &'static str, package: &'static str) -> Self {
        Self::Program { name, package }
    }

    /// Why it is not met here, if it is not.
    fn unmet(self) -> Option<String> {
        match self {
            Self::Program { name, package } => find_program(name)
                .is_none()
                .then(|| format!("`{name}` not found (install the Debian package {package})")),
            Self::Device(path) => (!Path::new(path).exists())
                .then(|| format!("no {path} (load the kernel module that provides it)")),
            Self::File { path, package } => (!Path::new(path).exists())
                .then(|| format!("no {path} (install the Debian package {package})")),
        }
    }
}

impl From<nodemesh_redirect::Tool> for Need {
    fn from(tool: nodemesh_redirect::Tool) -> Self {
        Self::program(tool.name(), tool.package())
    }
}

impl From<&nodemesh_redirect::Tool> for Need {
    fn from(tool: &nodemesh_redirect::Tool) -> Self {
        Self::from(*tool)
    }
}

/// Whether the root-tier test `test` runs here: root and every one of `needs`. Otherwise it
/// prints a skip line and returns `false`, unless `NODEMESH_E2E=1`, where it panics naming what
/// is missing and what to install (`scripts/install-deps` installs every tool).
pub fn root_tier<N: Into<Need>>(test: &str, needs: impl IntoIterator<Item = N>) -> bool {
    let forced = std::env::var("NODEMESH_E2E").is_ok_and(|v| v == "1");
    let mut unmet: Vec<String> = needs.into_iter().filter_map(|n| n.into().unmet()).collect();
    if !nix::unistd::geteuid().is_root() {
        unmet.insert(0, "not root (run as root, e.g. with sudo)".to_owned());
    }
    if unmet.is_empty() {
        return true;
    }
    let unmet = unmet.join("; ");
    assert!(
        !forced,
        "{test}: NODEMESH_E2E=1 but cannot run: {unmet}; scripts/install-deps installs the tools"
    );
    eprintln!("skip {test}: {unmet} (set NODEMESH_E2E=1 to make this a failure)");
    false
}

fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(sbin)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_present_program_and_device_are_met() {
        assert_eq!(Need::program("sh", "dash").unmet(), None);
        assert_eq!(Need::Device("/dev/null").unmet(), None);
    }

    #[test]
    fn a_missing_program_names_its_package() {
        let unmet = Need::program("nodemesh-no-such-tool", "no-such-package").unmet();
        assert!(unmet.is_some_and(|u| u.contains("no-such-package")));
        assert!(Need::Device("/dev/nodemesh-none").unmet().is_some());
    }

    #[test]
    fn redirect_tools_carry_their_package() {
        assert_eq!(
            Need::from(nodemesh_redirect::Tool::Nft),
            Need::program("nft", "nftables")
        );
    }
}
