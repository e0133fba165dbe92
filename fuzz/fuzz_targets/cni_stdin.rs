//! What a container runtime hands the CNI plugin: the `CNI_*` environment and the network config
//! on stdin (with the network plugin's `prevResult`). Parsing and the ADD decision must never
//! panic, and what they accept must be safe to act on.
//!
//! Input: `NAME=VALUE` lines (the environment; any names, so variables can be missing, empty or
//! repeated: the last wins), a blank line, then stdin. Plain text rather than `Arbitrary`, so
//! `fuzz/seeds/cni_stdin/` holds real invocations that steer the fuzzer into deep JSON. The same
//! stdin is also read as the node cache (`namespaces.json`) and as a conflist (`cni install`).
//!
//! Checked: an accepted container ID names a file inside `pods/`; an accepted config has a
//! supported version; a planned capture records the first IPv4 of `prevResult` for a mesh
//! namespace and its record survives the JSON round trip the proxy reads it through; the
//! result carries the config's version; every error has a spec code and an error object;
//! `insert` then `remove` of our conflist entry is idempotent and leaves no entry of ours.

#![no_main]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nodemesh_cni::{
    CACHE_VERSION, CniError, Command, Invocation, MtlsMode, NamespaceEntry, NetConf, NodeCache,
    PodRecord, SUPPORTED_VERSIONS, StateDir, conflist, plan_add, pod_ipv4,
};

/// `shop` in the mesh, `legacy` outside; the stale record shares a likely address.
fn node() -> (NodeCache, Vec<PodRecord>) {
    let entry = |mesh| NamespaceEntry {
        mesh,
        mtls_mode: MtlsMode::Strict,
    };
    let cache = NodeCache {
        version: CACHE_VERSION,
        node: "node-a".into(),
        backend: nodemesh_redirect::Backend::Iptables,
        namespaces: [
            ("shop".to_owned(), entry(true)),
            ("legacy".to_owned(), entry(false)),
        ]
        .into(),
    };
    let stale = PodRecord {
        container_id: "old".into(),
        ip: Ipv4Addr::new(10, 1, 0, 5),
        ipv6: None,
        namespace: "shop".into(),
        pod: None,
    };
    (cache, vec![stale])
}

fn check_error(e: &CniError, version: &str) {
    let code = e.code();
    assert!(
        matches!(code, 1 | 4..=7 | 11 | 100 | 101),
        "code {code} for {e}"
    );
    let json = e.to_json(version);
    assert_eq!(json["code"], code);
    assert!(json["msg"].as_str().is_some_and(|m| !m.is_empty()));
}

fuzz_target!(|data: &[u8]| {
    let (head, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let vars: HashMap<String, String> = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let inv = Invocation::from_vars(|name| vars.get(name).cloned());
    if let Ok(inv) = &inv
        && inv.command != Command::Version
    {
        let dir = StateDir::new("/s");
        let record = dir.record_path(&inv.container_id);
        assert_eq!(
            record.parent(),
            Some(dir.pods_dir().as_path()),
            "{record:?}"
        );
        assert!(!inv.container_id.is_empty() && !inv.ifname.is_empty());
    }
    let conf = NetConf::parse(stdin);
    match &conf {
        Ok(c) => assert!(SUPPORTED_VERSIONS.contains(&c.cni_version.as_str())),
        Err(e) => check_error(e, "1.0.0"),
    }
    if let (Ok(inv), Ok(conf)) = (&inv, &conf) {
        let (cache, records) = node();
        match plan_add(
            inv,
            conf,
            &cache,
            Path::new("/s/cni/namespaces.json"),
            &records,
        ) {
            Ok(plan) => {
                assert_eq!(
                    plan.result["cniVersion"].as_str(),
                    Some(conf.cni_version.as_str())
                );
                let ip = pod_ipv4(&plan.result).expect("a planned result has readable addresses");
                if let Some(rec) = &plan.capture {
                    assert_eq!(Some(rec.ip), ip);
                    assert_eq!(rec.namespace, "shop");
                    assert_eq!(rec.container_id, inv.container_id);
                    let text = serde_json::to_vec(rec).expect("a record serializes");
                    let back: PodRecord = serde_json::from_slice(&text).expect("and reads back");
                    assert_eq!(&back, rec);
                }
                for s in &plan.stale {
                    assert_eq!(Some(s.ip), ip);
                    assert_ne!(s.container_id, inv.container_id);
                }
            }
            Err(e) => check_error(&e, &conf.cni_version),
        }
    }
    if let Ok(cache) = serde_json::from_slice::<NodeCache>(stdin) {
        let text = serde_json::to_vec(&cache).expect("a cache serializes");
        assert_eq!(serde_json::from_slice::<NodeCache>(&text).ok(), Some(cache));
    }
    if let Ok(list) = serde_json::from_slice::<serde_json::Value>(stdin) {
        let ours = conflist::entry(Path::new("/var/lib/nodemesh"));
        if let Ok(inserted) = conflist::insert("f", &list, &ours) {
            let with = inserted.unwrap_or_else(|| list.clone());
            assert_eq!(
                with["plugins"].as_array().and_then(|p| p.last()),
                Some(&ours)
            );
            assert_eq!(
                conflist::insert("f", &with, &ours),
                Ok(None),
                "insert is idempotent"
            );
            let without = conflist::remove("f", &with)
                .expect("it has plugins")
                .expect("and ours");
            assert_eq!(
                conflist::remove("f", &without),
                Ok(None),
                "remove leaves none of ours"
            );
        }
    }
});
