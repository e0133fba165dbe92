//! The node's CNI config, edited for `nodemesh cni install` (pure): which file a runtime loads
//! ([`pick`]), our entry at the end of its `plugins` ([`insert`]), and out again ([`remove`]).
//! Never a second file: a runtime loads only the first config of its directory, so a file of
//! our own would replace the network instead of chaining after it.

use std::path::Path;

use serde_json::Value;

use crate::PLUGIN_TYPE;

/// Why a conflist cannot take our entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConflistError {
    /// The file is not a JSON object.
    #[error("{file}: not a JSON object")]
    NotAnObject {
        /// The file.
        file: String,
    },
    /// A single-plugin `.conf` (no `plugins` list): it cannot chain.
    #[error("{file}: plugins: missing (a single-plugin config cannot chain; use a .conflist)")]
    NoPlugins {
        /// The file.
        file: String,
    },
    /// `plugins` is not a list of objects.
    #[error("{file}: plugins: not a list of objects")]
    BadPlugins {
        /// The file.
        file: String,
    },
}

/// Our entry: `{"type": "nodemesh-cni", "stateDir": <state_dir>}`.
pub fn entry(state_dir: &Path) -> Value {
    serde_json::json!({
        "type": PLUGIN_TYPE,
        "stateDir": state_dir.to_string_lossy(),
    })
}

/// The config a runtime loads from a directory holding `names`: the first, in byte order, of
/// those ending in `.conflist`, `.conf` or `.json` (as libcni sorts them).
pub fn pick<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .filter(|n| {
            [".conflist", ".conf", ".json"]
                .iter()
                .any(|e| n.ends_with(e))
        })
        .min()
}

/// `conflist` with `entry` as the last plugin (an entry of ours elsewhere, or different, is
/// replaced); `None` when it is already so.
pub fn insert(file: &str, conflist: &Value, entry: &Value) -> Result<Option<Value>, ConflistError> {
    let plugins = plugins(file, conflist)?;
    if plugins.last() == Some(entry) && plugins.iter().filter(|p| is_ours(p)).count() == 1 {
        return Ok(None);
    }
    let mut kept: Vec<Value> = plugins.iter().filter(|p| !is_ours(p)).cloned().collect();
    kept.push(entry.clone());
    Ok(Some(with_plugins(conflist, kept)))
}

/// `conflist` without entries of ours; `None` when it has none.
pub fn remove(file: &str, conflist: &Value) -> Result<Option<Value>, ConflistError> {
    let plugins = plugins(file, conflist)?;
    if !plugins.iter().any(is_ours) {
        return Ok(None);
    }
    let kept = plugins.iter().filter(|p| !is_ours(p)).cloned().collect();
    Ok(Some(with_plugins(conflist, kept)))
}

fn plugins<'a>(file: &str, conflist: &'a Value) -> Result<&'a Vec<Value>, ConflistError> {
    let file = file.to_owned();
    let obj = conflist
        .as_object()
        .ok_or(ConflistError::NotAnObject { file: file.clone() })?;
    let plugins = obj
        .get("plugins")
        .ok_or(ConflistError::NoPlugins { file: file.clone() })?;
    match plugins.as_array() {
        Some(list) if list.iter().all(Value::is_object) => Ok(list),
        _ => Err(ConflistError::BadPlugins { file }),
    }
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn with_plugins(conflist: &Value, plugins: Vec<Value>) -> Value {
    let mut out = conflist.clone();
    if let Some(obj) = out.as_object_mut() {
        obj.insert("plugins".into(), Value::Array(plugins));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    /// A conflist as kubeadm + the bridge plugin, or kind's ptp, write them.
    fn sample() -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": "kindnet",
            "plugins": [
                {"type": "ptp", "ipMasq": false,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        })
    }

    #[test]
    fn insert_puts_ours_last_once() {
        let ours = entry(Path::new("/var/lib/nodemesh"));
        let once = insert("10-kindnet.conflist", &sample(), &ours)
            .unwrap()
            .unwrap();
        let plugins = once["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[2], ours);
        assert_eq!(plugins[0]["type"], "ptp");
        assert_eq!(once["name"], "kindnet");
        assert_eq!(insert("f", &once, &ours).unwrap(), None, "idempotent");
    }

    #[test]
    fn an_old_or_misplaced_entry_is_replaced() {
        let old = entry(Path::new("/old"));
        let mut misplaced = sample();
        misplaced["plugins"].as_array_mut().unwrap().insert(0, old);
        let ours = entry(Path::new("/var/lib/nodemesh"));
        let fixed = insert("f", &misplaced, &ours).unwrap().unwrap();
        let plugins = fixed["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 3);
        assert_eq!(plugins[2], ours);
        assert!(plugins[..2].iter().all(|p| p["type"] != PLUGIN_TYPE));
    }

    #[test]
    fn remove_undoes_insert() {
        let ours = entry(Path::new("/var/lib/nodemesh"));
        let with = insert("f", &sample(), &ours).unwrap().unwrap();
        assert_eq!(remove("f", &with).unwrap(), Some(sample()));
        assert_eq!(remove("f", &sample()).unwrap(), None);
    }

    #[test]
    fn configs_that_cannot_chain_are_named() {
        let ours = entry(Path::new("/s"));
        let single = json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"});
        let err = insert("10-bridge.conf", &single, &ours).unwrap_err();
        assert_eq!(
            err,
            ConflistError::NoPlugins {
                file: "10-bridge.conf".into()
            }
        );
        assert!(err.to_string().contains("10-bridge.conf: plugins"), "{err}");
        let bad = json!({"plugins": [1]});
        assert!(matches!(
            insert("f", &bad, &ours),
            Err(ConflistError::BadPlugins { .. })
        ));
        assert!(matches!(
            insert("f", &json!([]), &ours),
            Err(ConflistError::NotAnObject { .. })
        ));
    }

    #[test]
    fn the_first_config_in_byte_order_is_the_runtime_s() {
        let names = [
            "99-loopback.conf",
            "10-calico.conflist",
            ".10-a.conflist.tmp",
            "README",
        ];
        assert_eq!(pick(names), Some("10-calico.conflist"));
        assert_eq!(pick(["README", "x.yaml"]), None);
    }
}
