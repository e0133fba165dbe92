//! [`NetConf`]: the network config on stdin (this plugin's entry of the conflist, with the
//! runtime's `name`, `cniVersion` and the previous plugin's `prevResult`), and the pod's IPv4
//! address in that result ([`pod_ipv4`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::CniError;

/// The spec versions this plugin speaks (`prevResult` has `ips[].address` in all of them).
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The network config a runtime passes on stdin. Fields this plugin does not use (the
/// runtime's `runtimeConfig`, `args`, ...) are allowed and ignored, as the spec asks.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version of this config, and of the result returned.
    pub cni_version: String,
    /// The network's name.
    #[serde(default)]
    pub name: String,
    /// The plugin type ([`crate::PLUGIN_TYPE`]).
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The proxy's state directory, holding `cni/namespaces.json` [default:
    /// [`crate::DEFAULT_STATE_DIR`]].
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The previous plugin's result (ADD and CHECK in a chain).
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

impl NetConf {
    /// Parses the config; an error names the field. The version must be one of
    /// [`SUPPORTED_VERSIONS`].
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let de = &mut serde_json::Deserializer::from_slice(stdin);
        let conf: Self = serde_path_to_error::deserialize(de).map_err(|e| CniError::Config {
            path: e.path().to_string(),
            reason: e.inner().to_string(),
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::Version {
                version: conf.cni_version,
            });
        }
        Ok(conf)
    }

    /// The state directory named, or the default.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_STATE_DIR))
    }

    /// The result ADD returns: the previous result, passed through, in this config's version.
    pub fn result(&self) -> Result<serde_json::Value, CniError> {
        let mut result = self.prev_result.clone().ok_or(CniError::NoPrevResult)?;
        if let Some(obj) = result.as_object_mut() {
            obj.insert("cniVersion".into(), self.cni_version.clone().into());
        }
        Ok(result)
    }
}

/// The pod's IPv4 address in a result: the first IPv4 of `ips[].address` (`"10.1.0.5/24"`);
/// `None` when it has only IPv6. A malformed entry is an error naming it.
pub fn pod_ipv4(result: &serde_json::Value) -> Result<Option<Ipv4Addr>, CniError> {
    pod_addrs(result).map(|(v4, _)| v4)
}

/// The pod's IPv6 address in a result (the first IPv6 of `ips[].address`), if it has one.
pub fn pod_ipv6(result: &serde_json::Value) -> Result<Option<Ipv6Addr>, CniError> {
    pod_addrs(result).map(|(_, v6)| v6)
}

/// The first IPv4 and the first IPv6 of `ips[].address`; every entry is checked.
fn pod_addrs(result: &serde_json::Value) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), CniError> {
    let bad = |path: String, reason: &str| CniError::Config {
        path: format!("prevResult.{path}"),
        reason: reason.to_owned(),
    };
    let Some(ips) = result.get("ips") else {
        return Ok((None, None));
    };
    let (mut v4, mut v6) = (None, None);
    let ips = ips
        .as_array()
        .ok_or_else(|| bad("ips".into(), "not a list"))?;
    for (i, ip) in ips.iter().enumerate() {
        let path = format!("ips[{i}].address");
        let address = ip
            .get("address")
            .ok_or_else(|| bad(path.clone(), "required"))?
            .as_str()
            .ok_or_else(|| bad(path.clone(), "not a string"))?;
        let (addr, prefix) = address
            .split_once('/')
            .ok_or_else(|| bad(path.clone(), "not ADDRESS/PREFIX"))?;
        let parsed: IpAddr = addr
            .parse()
            .map_err(|_| bad(path.clone(), "not an IP address"))?;
        let max = if parsed.is_ipv4() { 32 } else { 128 };
        if !prefix.parse::<u8>().is_ok_and(|p| p <= max) {
            return Err(bad(path, "bad prefix length"));
        }
        match parsed {
            IpAddr::V4(ip) => v4 = v4.or(Some(ip)),
            IpAddr::V6(ip) => v6 = v6.or(Some(ip)),
        }
    }
    Ok((v4, v6))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    const CONF: &str = r#"{"cniVersion": "1.0.0", "name": "pods", "type": "nodemesh-cni",
        "stateDir": "/s", "runtimeConfig": {"x": 1},
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
          "ips": [{"address": "fd00::5/64"}, {"address": "10.1.0.5/24", "interface": 0}]}}"#;

    #[test]
    fn parses_a_chained_config() {
        let conf = NetConf::parse(CONF.as_bytes()).unwrap();
        assert_eq!(conf.state_dir(), PathBuf::from("/s"));
        let prev = conf.prev_result.clone().unwrap();
        assert_eq!(pod_ipv4(&prev).unwrap(), Some(Ipv4Addr::new(10, 1, 0, 5)));
    }

    #[test]
    fn the_result_is_prev_result_in_the_config_s_version() {
        let text = CONF.replace(
            r#""cniVersion": "1.0.0", "name""#,
            r#""cniVersion": "0.4.0", "name""#,
        );
        let conf = NetConf::parse(text.as_bytes()).unwrap();
        let result = conf.result().unwrap();
        assert_eq!(result["cniVersion"], "0.4.0");
        assert_eq!(result["ips"], conf.prev_result.unwrap()["ips"]);
    }

    #[test]
    fn errors_name_the_field() {
        let err = NetConf::parse(br#"{"cniVersion": 1}"#).unwrap_err();
        assert!(err.to_string().contains("cniVersion"), "{err}");
        let err = NetConf::parse(br#"{"name": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("cniVersion"), "{err}");
        let err = NetConf::parse(br#"{"cniVersion": "9.9.9"}"#).unwrap_err();
        assert_eq!(err.code(), 1);
        let err = NetConf::parse(br#"{"cniVersion": "1.0.0", "stateDir": 5}"#).unwrap_err();
        assert!(err.to_string().contains("stateDir"), "{err}");
        assert!(NetConf::parse(b"not json").is_err());
    }

    #[test]
    fn bad_addresses_are_named_by_index() {
        for (ips, field) in [
            (json!([{"address": "10.1.0.5"}]), "ips[0].address"),
            (json!([{"address": "10.1.0.5/24"}, {}]), "ips[1].address"),
            (
                json!([{"address": "fd00::1/64"}, {"address": "x/24"}]),
                "ips[1].address",
            ),
            (json!([{"address": "10.1.0.5/33"}]), "ips[0].address"),
            (json!([{"gateway": "10.1.0.1"}]), "ips[0].address"),
            (json!({"address": "10.1.0.5/24"}), "prevResult.ips"),
        ] {
            let result = pod_ipv4(&json!({ "ips": ips }));
            if field.is_empty() {
                assert!(result.is_ok(), "the first IPv4 decides");
            } else {
                let err = result.unwrap_err();
                assert!(err.to_string().contains(field), "{err}");
            }
        }
        assert_eq!(
            pod_ipv4(&json!({"ips": [{"address": "fd00::1/64"}]})).unwrap(),
            None
        );
        assert_eq!(pod_ipv4(&json!({})).unwrap(), None);
        let dual = json!({"ips": [{"address": "fd00::5/128"}, {"address": "10.1.0.5/24"}]});
        assert_eq!(pod_ipv6(&dual).unwrap(), Some("fd00::5".parse().unwrap()));
        assert_eq!(pod_ipv4(&dual).unwrap(), Some(Ipv4Addr::new(10, 1, 0, 5)));
    }

    #[test]
    fn result_without_prev_result_is_an_error() {
        let conf = NetConf::parse(br#"{"cniVersion": "1.0.0"}"#).unwrap();
        assert!(matches!(conf.result(), Err(CniError::NoPrevResult)));
    }
}
