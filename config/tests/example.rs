//! The shipped example file: it parses, its defaults are applied, the look-ups work, and it
//! round-trips through YAML and JSON.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nodemesh_config::{Config, LoadError, Protocol};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/standalone.yaml")
}

fn example() -> Config {
    match Config::from_file(example_path()) {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test IP")
}

#[test]
fn example_parses_in_full() {
    let c = example();
    assert_eq!(c.trust_domain().as_str(), "cluster.local");
    assert_eq!(c.root_namespace(), "nodemesh-system");
    assert_eq!(c.nodes().len(), 2);
    assert_eq!(c.namespaces().len(), 2);
    assert_eq!(c.workloads().len(), 5);
    assert_eq!(c.services().len(), 2);
    assert_eq!(c.policies().len(), 2);
    assert_eq!(c.policies()[0].name(), Some("cart-from-web"));
    let ca = c.require_ca().expect("example has a CA");
    assert_eq!(ca.address.to_string(), "https://10.200.0.1:15012/");
    let wg = c.require_wireguard().expect("example is WireGuard-ready");
    assert_eq!(wg.len(), 2);
    assert_eq!(wg[1].pod_cidr.to_string(), "10.200.2.0/24");
}

#[test]
fn relative_root_cert_is_resolved_against_the_yaml_directory() {
    let c = example();
    let expected = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ca/trust-bundle.pem");
    assert_eq!(c.require_ca().map(|ca| &ca.root_cert), Ok(&expected));

    let from_str = Config::from_yaml_str(
        "ca: {address: 'https://ca:15012', rootCert: b.pem}\nnodes: []\nworkloads: []\n",
        "/etc/nodemesh",
    )
    .expect("valid");
    assert_eq!(
        from_str.ca().map(|ca| ca.root_cert.clone()),
        Some(PathBuf::from("/etc/nodemesh/b.pem"))
    );
    let absolute = Config::from_yaml_str(
        "ca: {address: 'https://ca:15012', rootCert: /pki/b.pem}\nnodes: []\nworkloads: []\n",
        "/etc/nodemesh",
    )
    .expect("valid");
    assert_eq!(
        absolute.ca().map(|ca| ca.root_cert.clone()),
        Some(PathBuf::from("/pki/b.pem"))
    );
}

#[test]
fn example_round_trips_through_yaml() {
    let c = example();
    let yaml = c.to_yaml().expect("serializes");
    let back = Config::from_yaml_str(&yaml, "/somewhere/else")
        .unwrap_or_else(|e| panic!("re-parse failed:\n{e}\n---\n{yaml}"));
    assert_eq!(back, c);
    // And once more: serialization is stable.
    assert_eq!(back.to_yaml().expect("serializes"), yaml);
}

#[test]
fn example_round_trips_through_json() {
    let c = example();
    let json = serde_json::to_string_pretty(&c).expect("serializes");
    // JSON is YAML.
    let back = Config::from_yaml_str(&json, "/").unwrap_or_else(|e| panic!("{e}\n{json}"));
    assert_eq!(back, c);
}

#[test]
fn defaults_are_applied() {
    let c = example();
    let batch = c.workload_by_ip(ip("10.200.1.20")).expect("batch-1");
    assert_eq!(batch.service_account, "default");
    let cart = &c.services()[1];
    assert_eq!(cart.ports[0].target_port, 80);
    assert_eq!(cart.ports[0].protocol, Protocol::Tcp);
    assert_eq!(cart.ports[0].name, None);

    let minimal = Config::from_yaml_str("nodes: []\nworkloads: []\n", "/").expect("valid");
    assert_eq!(minimal.trust_domain().as_str(), "cluster.local");
    assert_eq!(minimal.root_namespace(), "nodemesh-system");
    assert!(minimal.ca().is_none());
    assert!(minimal.services().is_empty() && minimal.policies().is_empty());
}

#[test]
fn lookups() {
    let c = example();
    let web1 = c.workload_by_ip(ip("10.200.1.11")).expect("web-1");
    assert_eq!(web1.name, "web-1");
    assert!(c.workload_by_ip(ip("10.200.1.99")).is_none());
    assert_eq!(
        c.spiffe_id(web1).as_str(),
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(c.node("node-b").map(|n| n.address), Some(ip("10.200.0.2")));
    assert!(c.node("node-z").is_none());
    assert_eq!(
        c.node_of_pod_ip(ip("10.200.2.99")).map(|n| n.name.as_str()),
        Some("node-b")
    );
    let on_a: Vec<&str> = c
        .workloads_on_node("node-a")
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(on_a, ["web-1", "batch-1", "old-api-1"]);
    let mesh_on_a: Vec<&str> = c
        .mesh_workloads_on_node("node-a")
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(mesh_on_a, ["web-1", "old-api-1"]);
    assert_eq!(c.mesh_workloads_on_node("node-z").count(), 0);

    // Mesh membership: namespace label, pod opt-out.
    assert!(c.in_mesh(web1));
    let batch = c.workload_by_ip(ip("10.200.1.20")).expect("batch-1");
    assert!(!c.in_mesh(batch));
    assert!(c.is_permissive("legacy"));
    assert!(!c.is_permissive("shop"));
    assert!(!c.is_permissive("unlisted"));
    assert!(c.namespace_labels("unlisted").is_empty());
    // Kubernetes names every namespace by a label; so does the config, for network policies.
    assert_eq!(
        c.namespace_labels("legacy")
            .get("kubernetes.io/metadata.name"),
        Some(&"legacy".to_owned())
    );

    // Services: selector within the namespace; lookup by VIP and port.
    let web = &c.services()[0];
    let endpoints: Vec<&str> = c.service_endpoints(web).map(|w| w.name.as_str()).collect();
    assert_eq!(endpoints, ["web-1", "web-2"]);
    let (svc, port) = c.service_by_vip(ip("10.96.0.10"), 443).expect("web:443");
    assert_eq!((svc.name.as_str(), port.target_port), ("web", 8443));
    assert!(c.service_by_vip(ip("10.96.0.10"), 8080).is_none());
}

#[test]
fn unlisted_namespace_is_valid_and_outside_the_mesh() {
    let c = Config::from_yaml_str(
        "nodes: [{name: n, address: 10.0.0.1}]\nworkloads: [{name: w, namespace: other, ip: 10.1.0.1, node: n}]\n",
        "/",
    )
    .expect("valid");
    assert!(!c.in_mesh(&c.workloads()[0]));
}

#[test]
fn missing_file_names_the_file() {
    let err = Config::from_file("/nonexistent/cluster.yaml").expect_err("no such file");
    assert!(matches!(err, LoadError::Io { .. }));
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/cluster.yaml: "),
        "{err}"
    );
}

#[test]
fn invalid_file_names_the_file_and_every_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "nodes: 3\nworkloads: []\nextra: 1\n").expect("write");
    match Config::from_file(&path) {
        Err(LoadError::Invalid { path: p, errors }) => {
            assert_eq!(p, path);
            let got: Vec<String> = errors.into_iter().map(|e| e.to_string()).collect();
            assert_eq!(
                got,
                [
                    "extra: unknown key (expected one of: trustDomain, rootNamespace, ca, nodes, namespaces, workloads, services, policies, networkPolicies, clusterNetworkPolicies)",
                    "nodes: expected a list, found a number",
                ]
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn scalar_lookalike_strings_round_trip() {
    let yaml = r#"
trustDomain: example.org
rootNamespace: mesh-root
nodes: [{name: "123", address: 10.0.0.1, podCIDR: 10.1.0.0/16}]
namespaces: [{name: "true", labels: {a: "true", b: "123", c: "null", d: "", e: "0x1F", f: "1e3", h: "yes"}}]
workloads: [{name: "1e3", namespace: "true", serviceAccount: "0", ip: 10.1.0.1, node: "123"}]
policies: [{metadata: {name: "null"}, spec: {ports: ["80", 80], flag: true, tilde: "~", none: null}}]
"#;
    let c = Config::from_yaml_str(yaml, "/").unwrap_or_else(|e| panic!("{e}"));
    let out = c.to_yaml().expect("serializes");
    let back = Config::from_yaml_str(&out, "/").unwrap_or_else(|e| panic!("{e}\n---\n{out}"));
    assert_eq!(back, c, "{out}");
}
