//! [`run`]: one CNI command, from the invocation and stdin to what is printed: the decisions of
//! [`crate::decide`], the files of [`StateDir`], the set of a [`CaptureSet`].

use std::net::IpAddr;

use crate::cache::PodRecord;
use crate::capture::CaptureSet;
use crate::conf::{NetConf, SUPPORTED_VERSIONS, pod_ipv4};
use crate::decide::{Membership, membership, plan_add, record_of};
use crate::env::{Command, Invocation};
use crate::error::CniError;
use crate::node::StateDir;

/// What a successful command prints on stdout.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A result (ADD) or the version information (VERSION).
    Json(serde_json::Value),
    /// Nothing (DEL, CHECK).
    Nothing,
}

/// Runs one command. ADD records a mesh pod and puts its address into the capture set before it
/// returns the previous result; DEL undoes that (an unknown container is success); CHECK
/// verifies it; VERSION lists [`SUPPORTED_VERSIONS`].
pub fn run(inv: &Invocation, stdin: &[u8], capture: &dyn CaptureSet) -> Result<Output, CniError> {
    let conf = match inv.command {
        Command::Version => return Ok(version()),
        _ => NetConf::parse(stdin)?,
    };
    let dir = StateDir::new(conf.state_dir());
    match inv.command {
        Command::Add => add(inv, &conf, &dir, capture),
        Command::Del => del(inv, &dir, capture),
        Command::Check => check(inv, &conf, &dir, capture),
        Command::Version => Ok(version()),
    }
}

/// VERSION's answer: read no config, touch nothing.
fn version() -> Output {
    Output::Json(serde_json::json!({
        "cniVersion": "1.0.0",
        "supportedVersions": SUPPORTED_VERSIONS,
    }))
}

fn add(
    inv: &Invocation,
    conf: &NetConf,
    dir: &StateDir,
    capture: &dyn CaptureSet,
) -> Result<Output, CniError> {
    let cache = dir.read_cache()?;
    let _lock = dir.lock()?;
    let plan = plan_add(inv, conf, &cache, &dir.cache_path(), &dir.records()?)?;
    for stale in &plan.stale {
        dir.remove_record(&stale.container_id)?;
    }
    match (&plan.capture, plan.stale.first()) {
        (Some(record), _) => {
            let missing = capture.missing_parts(cache.backend)?;
            if !missing.is_empty() {
                return Err(CniError::NoCapture {
                    missing: missing.join(", "),
                });
            }
            // Recorded first: a proxy replacing the set after this keeps the address.
            dir.write_record(record)?;
            if let Err(e) = addrs(record).try_for_each(|ip| capture.add(cache.backend, ip)) {
                let _ = dir.remove_record(&record.container_id);
                return Err(e.into());
            }
        }
        (None, Some(stale)) => {
            for ip in addrs(stale) {
                capture.remove(cache.backend, ip)?;
            }
        }
        (None, None) => {}
    }
    Ok(Output::Json(plan.result))
}

/// A record's addresses: its IPv4 (captured), and its IPv6 (guarded) if it has one.
fn addrs(record: &PodRecord) -> impl Iterator<Item = IpAddr> {
    let v6 = record.ipv6.map(IpAddr::V6);
    std::iter::once(IpAddr::V4(record.ip)).chain(v6)
}

fn del(inv: &Invocation, dir: &StateDir, capture: &dyn CaptureSet) -> Result<Output, CniError> {
    let _lock = dir.lock()?;
    let records = dir.records()?;
    let Some(record) = record_of(&records, &inv.container_id) else {
        return Ok(Output::Nothing);
    };
    // Without the proxy's cache there is no backend to name, and nothing of ours to change.
    if let Ok(cache) = dir.read_cache() {
        for ip in addrs(record) {
            capture.remove(cache.backend, ip)?;
        }
    }
    dir.remove_record(&record.container_id)?;
    Ok(Output::Nothing)
}

fn check(
    inv: &Invocation,
    conf: &NetConf,
    dir: &StateDir,
    capture: &dyn CaptureSet,
) -> Result<Output, CniError> {
    let result = conf.result()?;
    let cache = dir.read_cache()?;
    if membership(&cache, &dir.cache_path(), inv.namespace()?)? == Membership::Outside {
        return Ok(Output::Nothing);
    }
    let ip = pod_ipv4(&result)?.ok_or(CniError::NoIpv4)?;
    let records = dir.records()?;
    let Some(record) = record_of(&records, &inv.container_id).filter(|r| r.ip == ip) else {
        return Err(CniError::NotRecorded {
            container: inv.container_id.clone(),
            path: dir.record_path(&inv.container_id),
        });
    };
    for ip in addrs(record) {
        if !capture.contains(cache.backend, ip)? {
            return Err(CniError::NotCaptured {
                container: inv.container_id.clone(),
                ip,
            });
        }
    }
    Ok(Output::Nothing)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use nodemesh_redirect::{Backend, RedirectError};

    use super::*;
    use crate::env::PodArgs;

    /// A capture set in memory; `installed: false` is a node whose proxy never ran.
    struct Fake {
        installed: bool,
        set: RefCell<BTreeSet<IpAddr>>,
    }

    impl Fake {
        fn new(installed: bool) -> Self {
            Self {
                installed,
                set: RefCell::default(),
            }
        }
    }

    impl CaptureSet for Fake {
        fn missing_parts(&self, _: Backend) -> Result<Vec<String>, RedirectError> {
            Ok(if self.installed {
                vec![]
            } else {
                vec!["chains".into()]
            })
        }
        fn contains(&self, _: Backend, ip: IpAddr) -> Result<bool, RedirectError> {
            Ok(self.set.borrow().contains(&ip))
        }
        fn add(&self, _: Backend, ip: IpAddr) -> Result<(), RedirectError> {
            self.set.borrow_mut().insert(ip);
            Ok(())
        }
        fn remove(&self, _: Backend, ip: IpAddr) -> Result<(), RedirectError> {
            self.set.borrow_mut().remove(&ip);
            Ok(())
        }
    }

    struct Node {
        _tmp: tempfile::TempDir,
        dir: StateDir,
        stdin: String,
    }

    fn node(address: &str) -> Node {
        node_with(&format!(r#"[{{"address": "{address}"}}]"#))
    }

    /// A node whose runtime passes `ips` (a JSON list) in `prevResult`.
    fn node_with(ips: &str) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path());
        dir.write_cache(&crate::cache::shop_and_legacy()).unwrap();
        let stdin = format!(
            r#"{{"cniVersion": "1.0.0", "name": "pods", "type": "nodemesh-cni",
              "stateDir": {:?},
              "prevResult": {{"cniVersion": "1.0.0", "ips": {ips}}}}}"#,
            tmp.path()
        );
        Node {
            _tmp: tmp,
            dir,
            stdin,
        }
    }

    fn inv(command: Command, id: &str, namespace: &str) -> Invocation {
        Invocation {
            command,
            container_id: id.into(),
            netns: Some("/var/run/netns/p".into()),
            ifname: "eth0".into(),
            pod: PodArgs {
                namespace: Some(namespace.into()),
                name: Some("p".into()),
            },
        }
    }

    const IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
    const IP_ANY: IpAddr = IpAddr::V4(IP);

    #[test]
    fn add_captures_check_verifies_del_undoes() {
        let n = node("10.1.0.5/24");
        let set = Fake::new(true);
        let out = run(&inv(Command::Add, "c1", "shop"), n.stdin.as_bytes(), &set).unwrap();
        let Output::Json(result) = out else {
            panic!("ADD prints a result")
        };
        assert_eq!(result["ips"][0]["address"], "10.1.0.5/24");
        assert!(set.set.borrow().contains(&IP_ANY));
        assert_eq!(n.dir.records().unwrap()[0].ip, IP);
        let check = run(&inv(Command::Check, "c1", "shop"), n.stdin.as_bytes(), &set);
        assert_eq!(check.unwrap(), Output::Nothing);
        set.set.borrow_mut().clear();
        let check = run(&inv(Command::Check, "c1", "shop"), n.stdin.as_bytes(), &set);
        assert!(matches!(check, Err(CniError::NotCaptured { .. })));
        set.set.borrow_mut().insert(IP_ANY);
        run(&inv(Command::Del, "c1", "shop"), n.stdin.as_bytes(), &set).unwrap();
        assert!(set.set.borrow().is_empty());
        assert!(n.dir.records().unwrap().is_empty());
        let again = run(&inv(Command::Del, "c1", "shop"), n.stdin.as_bytes(), &set);
        assert_eq!(again.unwrap(), Output::Nothing, "DEL twice is success");
    }

    #[test]
    fn a_dual_stack_pods_ipv6_is_guarded_from_add_to_del() {
        let n = node_with(r#"[{"address": "10.1.0.5/24"}, {"address": "fd00:1::5/128"}]"#);
        let set = Fake::new(true);
        run(&inv(Command::Add, "c1", "shop"), n.stdin.as_bytes(), &set).unwrap();
        let v6: IpAddr = "fd00:1::5".parse().unwrap();
        assert_eq!(
            *set.set.borrow(),
            [IP_ANY, v6].into(),
            "both families, before the pod runs"
        );
        assert_eq!(
            n.dir.records().unwrap()[0].ipv6,
            Some("fd00:1::5".parse().unwrap())
        );
        set.set.borrow_mut().remove(&v6);
        let check = run(&inv(Command::Check, "c1", "shop"), n.stdin.as_bytes(), &set);
        assert!(matches!(check, Err(CniError::NotCaptured { ip, .. }) if ip == v6));
        set.set.borrow_mut().insert(v6);
        run(&inv(Command::Del, "c1", "shop"), n.stdin.as_bytes(), &set).unwrap();
        assert!(set.set.borrow().is_empty(), "DEL takes both out");
    }

    #[test]
    fn add_outside_the_mesh_touches_nothing() {
        let n = node("10.1.0.5/24");
        let set = Fake::new(false);
        run(&inv(Command::Add, "c1", "legacy"), n.stdin.as_bytes(), &set).unwrap();
        assert!(set.set.borrow().is_empty());
        assert!(n.dir.records().unwrap().is_empty());
        let check = run(
            &inv(Command::Check, "c1", "legacy"),
            n.stdin.as_bytes(),
            &set,
        );
        assert_eq!(check.unwrap(), Output::Nothing);
    }

    #[test]
    fn add_fails_without_capture_or_cache_or_a_known_namespace() {
        let n = node("10.1.0.5/24");
        let err = run(
            &inv(Command::Add, "c1", "shop"),
            n.stdin.as_bytes(),
            &Fake::new(false),
        );
        assert!(matches!(err, Err(CniError::NoCapture { .. })), "{err:?}");
        assert!(
            n.dir.records().unwrap().is_empty(),
            "no record of a failed ADD"
        );
        let err = run(
            &inv(Command::Add, "c1", "new"),
            n.stdin.as_bytes(),
            &Fake::new(true),
        );
        assert!(
            matches!(err, Err(CniError::UnknownNamespace { .. })),
            "{err:?}"
        );
        std::fs::remove_file(n.dir.cache_path()).unwrap();
        let err = run(
            &inv(Command::Add, "c1", "shop"),
            n.stdin.as_bytes(),
            &Fake::new(true),
        );
        assert!(matches!(err, Err(CniError::NoCache { .. })), "{err:?}");
    }

    #[test]
    fn a_reused_address_of_a_pod_outside_the_mesh_leaves_the_set() {
        let n = node("10.1.0.5/24");
        let set = Fake::new(true);
        run(&inv(Command::Add, "old", "shop"), n.stdin.as_bytes(), &set).unwrap();
        run(
            &inv(Command::Add, "new", "legacy"),
            n.stdin.as_bytes(),
            &set,
        )
        .unwrap();
        assert!(set.set.borrow().is_empty());
        assert!(n.dir.records().unwrap().is_empty());
    }

    #[test]
    fn version_lists_the_supported_versions() {
        let version = Invocation {
            command: Command::Version,
            ..inv(Command::Version, "", "")
        };
        let Output::Json(v) = run(&version, b"", &Fake::new(false)).unwrap() else {
            panic!("VERSION prints")
        };
        assert_eq!(v["supportedVersions"][3], "1.0.0");
    }
}
