//! [`Chain`]: a CNI conflist run the way a container runtime runs it (libcni's order, config and
//! environment), for tests: Debian has no `cnitool`.
//!
//! ADD runs the plugins in order, each with `name` and `cniVersion` of the list and, from the
//! second on, the previous plugin's result as `prevResult`; CHECK and DEL pass the cached ADD
//! result as `prevResult`, DEL in reverse order. Plugins are found by `type` in the CNI path and
//! run in a named network namespace (the node's), with `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`) and `CNI_PATH`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// A conflist and where its plugins are.
#[derive(Debug, Clone)]
pub struct Chain {
    conflist: Value,
    cni_path: Vec<PathBuf>,
    netns: Option<String>,
}

/// The pod a command is for.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's network namespace (`/run/netns/NAME`).
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`.
    pub name: String,
}

impl Sandbox {
    /// The pod `name` in `namespace` whose network namespace is the named `netns`, interface
    /// `eth0`, container ID `<netns>-id`.
    pub fn new(netns: &str, namespace: &str, name: &str) -> Self {
        Self {
            container_id: format!("{netns}-id"),
            netns: Path::new("/run/netns").join(netns),
            ifname: "eth0".into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// A plugin that failed: which, its exit status, and the error object it printed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The plugin's `type`.
    pub plugin: String,
    /// Its exit status.
    pub status: std::process::ExitStatus,
    /// Its stdout as JSON (the spec's error object), `Null` when not JSON.
    pub error: Value,
    /// Its stderr.
    pub stderr: String,
}

impl Chain {
    /// `conflist`'s plugins, found in the directories `cni_path`, run in this network namespace.
    pub fn new(conflist: Value, cni_path: impl IntoIterator<Item = PathBuf>) -> Self {
        Self {
            conflist,
            cni_path: cni_path.into_iter().collect(),
            netns: None,
        }
    }

    /// Runs the plugins inside the named network namespace (`ip netns exec NAME`).
    pub fn in_netns(self, name: &str) -> Self {
        Self {
            netns: Some(name.into()),
            ..self
        }
    }

    /// ADD: the last plugin's result.
    pub fn add(&self, pod: &Sandbox) -> Result<Value, Failure> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            prev = Some(self.call("ADD", &plugin, pod, prev.as_ref())?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK with the cached ADD `result`.
    pub fn check(&self, pod: &Sandbox, result: &Value) -> Result<(), Failure> {
        for plugin in self.plugins() {
            self.call("CHECK", &plugin, pod, Some(result))?;
        }
        Ok(())
    }

    /// DEL with the cached ADD `result` (if ADD got that far), plugins in reverse order.
    pub fn del(&self, pod: &Sandbox, result: Option<&Value>) -> Result<(), Failure> {
        for plugin in self.plugins().into_iter().rev() {
            self.call("DEL", &plugin, pod, result)?;
        }
        Ok(())
    }

    fn plugins(&self) -> Vec<Value> {
        self.conflist["plugins"]
            .as_array()
            .cloned()
            .expect("the conflist has plugins")
    }

    fn call(
        &self,
        command: &str,
        plugin: &Value,
        pod: &Sandbox,
        prev: Option<&Value>,
    ) -> Result<Value, Failure> {
        let kind = plugin["type"]
            .as_str()
            .expect("a plugin has a type")
            .to_owned();
        let mut conf = plugin.clone();
        conf["name"] = self.conflist["name"].clone();
        conf["cniVersion"] = self.conflist["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let program = self
            .cni_path
            .iter()
            .map(|d| d.join(&kind))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {kind} not in {:?}", self.cni_path));
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&program);
                cmd
            }
            None => Command::new(&program),
        };
        let cni_path = std::env::join_paths(&self.cni_path).expect("a CNI path");
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
            pod.namespace, pod.name, pod.container_id
        );
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", &pod.netns)
            .env("CNI_IFNAME", &pod.ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {kind}: {e}"));
        let stdin = serde_json::to_vec(&conf).expect("a config");
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(&stdin)
            .expect("config written");
        let out = child.wait_with_output().expect("plugin finished");
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(Failure {
                plugin: kind,
                status: out.status,
                error: stdout,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }
}
