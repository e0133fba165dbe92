//! Readers for the typed values of a config: names, addresses, networks, ports, keys, URLs,
//! paths and labels. Each reports what is wrong at the value's path and returns `None` then.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use nodemesh_identity::TrustDomain;
use serde_json::Value;

use crate::model::{Labels, WireguardPublicKey};
use crate::names;
use crate::reader::{self, Errors};

/// Reads a string that must pass the name rule `rule` (see [`names`]).
pub(crate) fn k8s_name(
    rule: fn(&str) -> Result<(), String>,
) -> impl Fn(&mut Errors, &str, &Value) -> Option<String> {
    move |errs, path, value| {
        let s = reader::string(errs, path, value)?;
        errs.check(path, rule(&s))?;
        Some(s)
    }
}

/// Reads an IPv4 address.
pub(crate) fn ipv4(errs: &mut Errors, path: &str, value: &Value) -> Option<Ipv4Addr> {
    let s = reader::string(errs, path, value)?;
    let parsed = match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(format!("{s:?} is IPv6: only IPv4 is supported for now")),
        Err(_) => Err(format!("{s:?} is not an IPv4 address")),
    };
    errs.check(path, parsed)
}

/// Reads an IPv6 address.
pub(crate) fn ipv6(errs: &mut Errors, path: &str, value: &Value) -> Option<Ipv6Addr> {
    let s = reader::string(errs, path, value)?;
    let parsed = match s.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => Ok(ip),
        Ok(IpAddr::V4(_)) => Err(format!("{s:?} is IPv4: `ip` holds the IPv4 address")),
        Err(_) => Err(format!("{s:?} is not an IPv6 address")),
    };
    errs.check(path, parsed)
}

/// Reads an IPv4 network in CIDR form with no host bits set (`10.200.1.0/24`).
pub(crate) fn ipv4_net(errs: &mut Errors, path: &str, value: &Value) -> Option<Ipv4Net> {
    let s = reader::string(errs, path, value)?;
    let parsed = match s.parse::<IpNet>() {
        Ok(IpNet::V4(net)) if net.network() != net.addr() => Err(format!(
            "{s:?} has host bits set (did you mean \"{}\"?)",
            net.trunc()
        )),
        Ok(IpNet::V4(net)) => Ok(net),
        Ok(IpNet::V6(_)) => Err(format!("{s:?} is IPv6: only IPv4 is supported for now")),
        Err(_) => Err(format!(
            "{s:?} is not an IPv4 network in CIDR form (like 10.200.1.0/24)"
        )),
    };
    errs.check(path, parsed)
}

/// Reads a TCP port, 1..=65535.
pub(crate) fn port(errs: &mut Errors, path: &str, value: &Value) -> Option<u16> {
    let n = reader::unsigned(errs, path, value)?;
    let port = u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| format!("port {n} is out of range 1..=65535"));
    errs.check(path, port)
}

/// Reads a WireGuard public key: base64 of 32 bytes.
pub(crate) fn wireguard_key(
    errs: &mut Errors,
    path: &str,
    value: &Value,
) -> Option<WireguardPublicKey> {
    let s = reader::string(errs, path, value)?;
    errs.check(
        path,
        s.parse::<WireguardPublicKey>()
            .map_err(|e| format!("not a WireGuard public key: {e}")),
    )
}

/// Reads a SPIFFE trust domain (`cluster.local`).
pub(crate) fn trust_domain(errs: &mut Errors, path: &str, value: &Value) -> Option<TrustDomain> {
    let s = reader::string(errs, path, value)?;
    errs.check(
        path,
        TrustDomain::new(&s).map_err(|e| format!("{s:?} is not a trust domain: {e}")),
    )
}

/// Reads an `https` URL with a host and no path, query or credentials
/// (`https://127.0.0.1:15012`).
pub(crate) fn https_url(errs: &mut Errors, path: &str, value: &Value) -> Option<http::Uri> {
    let s = reader::string(errs, path, value)?;
    let checked = match s.parse::<http::Uri>() {
        Err(e) => Err(format!("{s:?} is not a URL: {e}")),
        Ok(uri) if uri.scheme_str() != Some("https") => {
            Err(format!("{s:?} must be an https:// URL"))
        }
        Ok(uri) if uri.host().is_none_or(str::is_empty) => Err(format!("{s:?} has no host")),
        Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => {
            Err(format!("{s:?} must not carry credentials"))
        }
        Ok(uri) if !matches!(uri.path(), "" | "/") || uri.query().is_some() => {
            Err(format!("{s:?} must have no path or query"))
        }
        Ok(uri) => Ok(uri),
    };
    errs.check(path, checked)
}

/// Reads a file path; a relative one is taken relative to `base_dir` (the YAML's directory).
pub(crate) fn file_path(
    base_dir: &Path,
) -> impl Fn(&mut Errors, &str, &Value) -> Option<PathBuf> + '_ {
    move |errs, path, value| {
        let s = reader::string(errs, path, value)?;
        if s.is_empty() {
            errs.push(path, "must not be empty");
            return None;
        }
        Some(base_dir.join(s))
    }
}

/// Reads labels (or a selector): a mapping of valid Kubernetes label keys to string values.
pub(crate) fn labels(errs: &mut Errors, path: &str, value: &Value) -> Option<Labels> {
    let mut labels = Labels::new();
    for (entry_path, key, value) in reader::map(errs, path, value)? {
        let key_ok = errs.check(&entry_path, names::label_key(key)).is_some();
        let Some(value) = reader::string(errs, &entry_path, value) else {
            continue;
        };
        if errs
            .check(&entry_path, names::label_value(&value))
            .is_some()
            && key_ok
        {
            labels.insert(key.clone(), value);
        }
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    type Read<'a, T> = &'a dyn Fn(&mut Errors, &str, &Value) -> Option<T>;

    fn run<T>(read: Read<'_, T>, v: Value) -> Result<T, String> {
        let mut errs = Errors::default();
        let got = read(&mut errs, "p", &v);
        errs.finish(got).map_err(|e| e.to_string())
    }

    #[test]
    fn addresses_and_networks() {
        assert_eq!(
            run(&ipv4, json!("10.0.0.1")),
            Ok(Ipv4Addr::new(10, 0, 0, 1))
        );
        assert_eq!(
            run(&ipv4, json!("fd00::1")),
            Err("p: \"fd00::1\" is IPv6: only IPv4 is supported for now".into())
        );
        assert_eq!(
            run(&ipv4, json!("10.0.0.256")),
            Err("p: \"10.0.0.256\" is not an IPv4 address".into())
        );
        assert!(run(&ipv4_net, json!("10.1.0.0/16")).is_ok());
        assert_eq!(
            run(&ipv4_net, json!("10.1.2.3/16")),
            Err("p: \"10.1.2.3/16\" has host bits set (did you mean \"10.1.0.0/16\"?)".into())
        );
        assert!(run(&ipv4_net, json!("10.1.0.0")).is_err());
        assert!(run(&ipv4_net, json!("fd00::/64")).is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(run(&port, json!(1)), Ok(1));
        assert_eq!(run(&port, json!(65535)), Ok(65535));
        assert_eq!(
            run(&port, json!(0)),
            Err("p: port 0 is out of range 1..=65535".into())
        );
        assert!(run(&port, json!(65536)).is_err());
        assert!(run(&port, json!(-1)).is_err());
        assert!(run(&port, json!(80.5)).is_err());
        assert!(run(&port, json!("80")).is_err());
    }

    #[test]
    fn urls() {
        assert!(run(&https_url, json!("https://127.0.0.1:15012")).is_ok());
        assert!(run(&https_url, json!("https://ca.nodemesh-system.svc:15012/")).is_ok());
        for bad in [
            "http://127.0.0.1:15012",
            "127.0.0.1:15012",
            "https://user@ca:15012",
            "https://ca:15012/x",
            "https://ca:15012?q=1",
            "not a url",
        ] {
            assert!(run(&https_url, json!(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_report_each_bad_entry() {
        let v = json!({"app": "web", "bad key": "x", "tier": "-x", "n": 1});
        let mut errs = Errors::default();
        let got = labels(&mut errs, "l", &v);
        assert_eq!(
            got.map(|l| l.into_keys().collect::<Vec<_>>()),
            Some(vec!["app".to_owned()])
        );
        let got: Vec<String> = match errs.finish(Some(())) {
            Ok(()) => vec![],
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        };
        assert_eq!(
            got,
            [
                r#"l["bad key"]: label key "bad key": invalid character ' ' (only letters, digits, '-', '_' and '.')"#,
                r#"l["n"]: expected a string, found a number (quote it)"#,
                r#"l["tier"]: label value "-x": must start and end with a letter or digit"#,
            ]
        );
    }
}
