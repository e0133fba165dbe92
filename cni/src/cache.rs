//! What the proxy and the plugin share through the state directory: the proxy's view of the
//! node's namespaces ([`NodeCache`]) and the plugin's record of a pod it captured
//! ([`PodRecord`]). JSON, so a human can read both.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use nodemesh_redirect::Backend;
use serde::{Deserialize, Serialize};

/// The version of [`NodeCache`]'s layout.
pub const CACHE_VERSION: u32 = 1;

/// The proxy's view of the node, written by the proxy whenever its state changes
/// (`<state-dir>/cni/namespaces.json`) and read by the plugin on every ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeCache {
    /// [`CACHE_VERSION`].
    pub version: u32,
    /// The node the proxy serves.
    pub node: String,
    /// The tools that install the capture rules (the proxy's `--capture-backend`).
    #[serde(with = "backend_text")]
    pub backend: Backend,
    /// Every namespace the proxy knows, in the mesh or not.
    pub namespaces: BTreeMap<String, NamespaceEntry>,
}

/// One namespace as the proxy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceEntry {
    /// Labelled `nodemesh.io/mesh=enabled`: its pods are captured.
    pub mesh: bool,
    /// How the namespace treats plaintext from outside the mesh.
    pub mtls_mode: MtlsMode,
}

/// A namespace's mTLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Plaintext from outside the mesh is refused.
    Strict,
    /// Plaintext from outside the mesh is accepted.
    Permissive,
}

/// A pod the plugin captured on ADD (`<state-dir>/cni/pods/<container-id>.json`), until DEL:
/// the proxy keeps its address in the capture set while the state does not know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRecord {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// The pod's IPv4 address, from `prevResult`.
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address, from `prevResult` (dual-stack): put into the IPv6 guard's set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// `K8S_POD_NAMESPACE`.
    pub namespace: String,
    /// `K8S_POD_NAME`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The unit tests' node: `shop` in the mesh, `legacy` not, both strict, iptables.
#[cfg(test)]
pub(crate) fn shop_and_legacy() -> NodeCache {
    let entry = |mesh| NamespaceEntry {
        mesh,
        mtls_mode: MtlsMode::Strict,
    };
    NodeCache {
        version: CACHE_VERSION,
        node: "node-a".into(),
        backend: Backend::Iptables,
        namespaces: [
            ("shop".into(), entry(true)),
            ("legacy".into(), entry(false)),
        ]
        .into(),
    }
}

/// [`Backend`] as its name (`iptables`, `nftables`).
mod backend_text {
    use nodemesh_redirect::Backend;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(backend: &Backend, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(backend)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Backend, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_cache_round_trips_and_names_a_bad_backend() {
        let cache = NodeCache {
            version: CACHE_VERSION,
            node: "node-a".into(),
            backend: Backend::Nftables,
            namespaces: [(
                "shop".to_owned(),
                NamespaceEntry {
                    mesh: true,
                    mtls_mode: MtlsMode::Permissive,
                },
            )]
            .into(),
        };
        let text = serde_json::to_string(&cache).unwrap();
        assert!(text.contains(r#""backend":"nftables""#), "{text}");
        assert!(text.contains(r#""mtlsMode":"permissive""#), "{text}");
        assert_eq!(serde_json::from_str::<NodeCache>(&text).unwrap(), cache);
        let bad = text.replace("nftables", "ebpf");
        let err = serde_json::from_str::<NodeCache>(&bad).unwrap_err();
        assert!(err.to_string().contains("ebpf"), "{err}");
    }
}
