//! Arbitrary bytes as a policy file: parsing, compiling and linting must never panic, and what
//! loads must evaluate.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nodemesh_policy::lint::lint_texts;
use nodemesh_policy::load::parse_file;
use nodemesh_policy::{Connection, Destination, EngineOptions, Peer, PolicySet, compile_fail_closed};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (docs, _problems) = parse_file("fuzz.yaml", text);
    let policies: Vec<_> = docs
        .iter()
        .filter_map(|d| {
            let id = d.document.policy_ref()?;
            Some(compile_fail_closed(id, &d.document.metadata.annotations, &d.document.spec).0)
        })
        .collect();
    for p in lint_texts(&[("fuzz.yaml".to_owned(), text.to_owned())]) {
        let _ = p.to_string();
    }
    let set = PolicySet::new(policies, EngineOptions::default());
    let labels: Vec<(&str, &str)> = vec![("app", "web")];
    let conn = Connection {
        source: Peer {
            principal: Some("cluster.local/ns/client/sa/curl"),
            namespace: None,
            ip: "10.0.1.1".parse().ok(),
        },
        destination: Destination {
            namespace: "shop",
            labels: &labels,
            ip: "10.0.2.2".parse().ok(),
            port: 8080,
        },
    };
    let d = set.decide_connection(&conn);
    let e = set.explain(&conn, None);
    assert_eq!(d.verdict, e.verdict);
    let _ = e.to_string();
});
