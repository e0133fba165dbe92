//! [`CniError`]: why the plugin failed, with the CNI error code a runtime reads.

use std::path::PathBuf;

use nodemesh_redirect::RedirectError;

/// Why a CNI command failed. Printed as the spec's error object ([`CniError::to_json`]) on
/// stdout, with a non-zero exit: on ADD the runtime does not start the pod.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CniError {
    /// `CNI_COMMAND` is not one of the four commands.
    #[error("CNI_COMMAND: {value:?} is not ADD, DEL, CHECK or VERSION")]
    UnknownCommand {
        /// The value given.
        value: String,
    },
    /// A variable the command needs is not set (or empty).
    #[error("{var}: required for {command}")]
    MissingEnv {
        /// The variable.
        var: &'static str,
        /// The command.
        command: &'static str,
    },
    /// A variable is set but unusable.
    #[error("{var}: {reason}")]
    BadEnv {
        /// The variable (or `CNI_ARGS` key).
        var: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The network config on stdin does not parse.
    #[error("network config (stdin): {path}: {reason}")]
    Config {
        /// The field, as a JSON path (`.` for the document).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The config's `cniVersion` is not one this plugin speaks.
    #[error("cniVersion: {version:?} is not supported (supported: {})", crate::SUPPORTED_VERSIONS.join(", "))]
    Version {
        /// The version asked for.
        version: String,
    },
    /// ADD or CHECK without `prevResult`: this plugin only runs after a network plugin.
    #[error("prevResult: required (nodemesh-cni is chained after the network plugin)")]
    NoPrevResult,
    /// `prevResult` has no IPv4 address to capture.
    #[error("prevResult.ips: no IPv4 address (nodemesh captures IPv4 pods)")]
    NoIpv4,
    /// The proxy's cache does not exist or cannot be read.
    #[error("{path}: {reason} (nodemesh proxy writes it: has it run on this node?)")]
    NoCache {
        /// The cache file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// The pod's namespace is not in the proxy's cache: mesh membership is unknown.
    #[error(
        "CNI_ARGS K8S_POD_NAMESPACE: namespace {namespace:?} is not in {path} (the proxy has not \
         seen it yet); the pod is not started until it has"
    )]
    UnknownNamespace {
        /// The namespace.
        namespace: String,
        /// The cache file.
        path: PathBuf,
    },
    /// The capture rules are not installed on this node, so the pod could not be captured.
    #[error(
        "capture is not installed on this node (missing: {missing}): nodemesh proxy \
         --manage-redirect installs it; the pod is not started without it"
    )]
    NoCapture {
        /// The missing parts, comma-separated.
        missing: String,
    },
    /// The capture tools failed.
    #[error("capture: {0}")]
    Capture(#[from] RedirectError),
    /// A file of the state directory cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A file of the state directory does not parse.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// CHECK: a mesh pod's address is not captured.
    #[error("container {container}: pod IP {ip} is not in the capture set")]
    NotCaptured {
        /// The container ID.
        container: String,
        /// The pod's address.
        ip: std::net::IpAddr,
    },
    /// CHECK: a mesh pod was never recorded by ADD.
    #[error("container {container}: no record of ADD in {path}")]
    NotRecorded {
        /// The container ID.
        container: String,
        /// Where the record should be.
        path: PathBuf,
    },
}

impl CniError {
    /// The error code of the CNI spec: 1 incompatible version, 4 invalid environment variables,
    /// 5 I/O failure, 6 failed to decode content, 7 invalid network config, 11 try again later
    /// (the proxy has not caught up); 100 and up are this plugin's own (not captured).
    pub fn code(&self) -> u32 {
        match self {
            Self::Version { .. } => 1,
            Self::UnknownCommand { .. } | Self::MissingEnv { .. } | Self::BadEnv { .. } => 4,
            Self::Capture(_) | Self::Io { .. } => 5,
            Self::Config { .. } | Self::BadFile { .. } => 6,
            Self::NoPrevResult | Self::NoIpv4 => 7,
            Self::NoCache { .. } | Self::UnknownNamespace { .. } | Self::NoCapture { .. } => 11,
            Self::NotCaptured { .. } => 100,
            Self::NotRecorded { .. } => 101,
        }
    }

    /// The spec's error object: `{"cniVersion", "code", "msg", "details"}`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let details = std::error::Error::source(self)
            .map(|s| s.to_string())
            .unwrap_or_default();
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": details,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_error_object_has_the_spec_s_keys() {
        let e = CniError::UnknownNamespace {
            namespace: "shop".into(),
            path: "/s/cni/namespaces.json".into(),
        };
        let json = e.to_json("1.0.0");
        assert_eq!(json["cniVersion"], "1.0.0");
        assert_eq!(json["code"], 11);
        assert!(json["msg"].as_str().unwrap().contains("\"shop\""));
        assert!(json["details"].is_string());
        assert_eq!(CniError::NoPrevResult.code(), 7);
    }
}
