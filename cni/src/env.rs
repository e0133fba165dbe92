//! [`Invocation`]: what the runtime says in the environment (`CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`), checked per command as the spec asks.

use std::fmt;

use crate::error::CniError;

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Add the container to the network.
    Add,
    /// Remove it (idempotent: an unknown container is success).
    Del,
    /// Check that it is still as ADD left it.
    Check,
    /// Report the spec versions spoken.
    Version,
}

impl Command {
    /// The name in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Kubernetes pod the runtime names in `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
}

impl PodArgs {
    /// Parses `CNI_ARGS`: `KEY=VALUE` pairs separated by `;`, unknown keys ignored.
    pub fn parse(args: &str) -> Result<Self, CniError> {
        let mut pod = Self::default();
        for pair in args.split(';').filter(|p| !p.is_empty()) {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(CniError::BadEnv {
                    var: "CNI_ARGS",
                    reason: format!("{pair:?} is not KEY=VALUE"),
                });
            };
            let value = (!value.is_empty()).then(|| value.to_owned());
            match key {
                "K8S_POD_NAMESPACE" => pod.namespace = value,
                "K8S_POD_NAME" => pod.name = value,
                _ => {}
            }
        }
        Ok(pod)
    }
}

/// One call of the plugin, as the environment describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (required but for VERSION).
    pub container_id: String,
    /// `CNI_NETNS` (required for ADD and CHECK; DEL may come without it).
    pub netns: Option<String>,
    /// `CNI_IFNAME` (required but for VERSION).
    pub ifname: String,
    /// `CNI_ARGS`.
    pub pod: PodArgs,
}

impl Invocation {
    /// Reads the invocation from the process environment.
    pub fn from_env() -> Result<Self, CniError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the invocation from `var` (the environment, or a map in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let set = |name: &str| var(name).filter(|v| !v.is_empty());
        let command = match set("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            other => {
                return Err(CniError::UnknownCommand {
                    value: other.unwrap_or_default().to_owned(),
                });
            }
        };
        let pod = PodArgs::parse(&var("CNI_ARGS").unwrap_or_default())?;
        if command == Command::Version {
            return Ok(Self {
                command,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
                pod,
            });
        }
        let required = |name: &'static str| {
            set(name).ok_or(CniError::MissingEnv {
                var: name,
                command: command.as_str(),
            })
        };
        let container_id = required("CNI_CONTAINERID")?;
        check_container_id(&container_id)?;
        let netns = match command {
            Command::Del => set("CNI_NETNS"),
            _ => Some(required("CNI_NETNS")?),
        };
        let ifname = required("CNI_IFNAME")?;
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            pod,
        })
    }

    /// `K8S_POD_NAMESPACE`, required to decide membership.
    pub fn namespace(&self) -> Result<&str, CniError> {
        self.pod.namespace.as_deref().ok_or(CniError::BadEnv {
            var: "CNI_ARGS",
            reason: "K8S_POD_NAMESPACE is missing: nodemesh-cni serves Kubernetes pods and \
                     decides by namespace"
                .into(),
        })
    }
}

/// The spec's container ID: letters, digits, `_`, `.` and `-`, not starting with `.` or `-` (so
/// it is also a safe file name).
fn check_container_id(id: &str) -> Result<(), CniError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if id.chars().all(ok_char) && !id.starts_with(['.', '-']) && id.len() <= 256 {
        Ok(())
    } else {
        Err(CniError::BadEnv {
            var: "CNI_CONTAINERID",
            reason: format!("{id:?} has characters other than letters, digits, '_', '.' and '-'"),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=u",
        ),
    ];

    #[test]
    fn add_reads_every_variable() {
        let inv = Invocation::from_vars(vars(ADD)).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.container_id, "abc123");
        assert_eq!(inv.netns.as_deref(), Some("/var/run/netns/pod"));
        assert_eq!(inv.ifname, "eth0");
        assert_eq!(inv.namespace().unwrap(), "shop");
        assert_eq!(inv.pod.name.as_deref(), Some("web-1"));
    }

    #[test]
    fn a_missing_variable_is_named() {
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != missing).collect();
            let err = Invocation::from_vars(vars(&pairs)).unwrap_err();
            assert!(err.to_string().starts_with(missing), "{err}");
            assert_eq!(err.code(), 4);
        }
    }

    #[test]
    fn del_needs_no_netns_and_version_nothing() {
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(Invocation::from_vars(vars(&del)).unwrap().netns, None);
        let version = Invocation::from_vars(vars(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(version.command, Command::Version);
    }

    #[test]
    fn bad_command_container_id_and_args_are_refused() {
        let err = Invocation::from_vars(vars(&[("CNI_COMMAND", "GET")])).unwrap_err();
        assert!(err.to_string().contains("\"GET\""), "{err}");
        let mut bad_id: Vec<_> = ADD.to_vec();
        bad_id[1] = ("CNI_CONTAINERID", "../../etc/passwd");
        let err = Invocation::from_vars(vars(&bad_id)).unwrap_err();
        assert!(err.to_string().starts_with("CNI_CONTAINERID"), "{err}");
        assert!(PodArgs::parse("K8S_POD_NAMESPACE").is_err());
        let no_ns = PodArgs::parse("K8S_POD_NAME=a").unwrap();
        let inv = Invocation {
            pod: no_ns,
            ..Invocation::from_vars(vars(ADD)).unwrap()
        };
        assert!(
            inv.namespace()
                .unwrap_err()
                .to_string()
                .contains("K8S_POD_NAMESPACE")
        );
    }
}
