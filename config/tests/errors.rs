//! Validation: every rule has a test, and a file with many mistakes reports all of them at once,
//! each at its path.

use nodemesh_config::Config;

/// The errors of `yaml`, one `path: reason` string each (empty when valid).
fn errors(yaml: &str) -> Vec<String> {
    match Config::from_yaml_str(yaml, "/etc/nodemesh") {
        Ok(_) => Vec::new(),
        Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
    }
}

/// Asserts `yaml` has exactly the errors `expected`, in this order.
#[track_caller]
fn assert_errors(yaml: &str, expected: &[&str]) {
    assert_eq!(errors(yaml), expected, "for:\n{yaml}");
}

/// Two nodes (node-a with a podCIDR, node-b without), one workload on node-a, then `extra`.
fn with(extra: &str) -> String {
    format!(
        "nodes:\n  - {{name: node-a, address: 10.200.0.1, podCIDR: 10.200.1.0/24}}\n  - {{name: node-b, address: 10.200.0.2}}\nworkloads:\n  - {{name: web-1, namespace: shop, ip: 10.200.1.11, node: node-a, labels: {{app: web}}}}\n{extra}"
    )
}

#[test]
fn base_is_valid() {
    assert_errors(&with(""), &[]);
}

#[test]
fn ten_different_mistakes_are_all_reported() {
    let yaml = r#"
trustDomain: Cluster.Local
ca: {address: "http://10.200.0.1:15012", rootCert: ca/trust-bundle.pem}
nodes:
  - {name: node-a, address: 10.200.0.1, podCIDR: 10.200.1.0/24}
  - {name: node-a, address: 10.200.0.2, podCIDR: 10.200.1.128/25}
  - {name: node-c, address: 10.200.0.3, podCidr: 10.200.3.0/24}
namespaces:
  - {name: Shop}
workloads:
  - {name: web-1, namespace: shop, ip: 10.200.1.11, node: node-a, labels: {app: web}}
  - {name: web-2, namespace: shop, ip: 10.200.1.11, node: node-a}
  - {name: web-3, namespace: shop, ip: 10.200.9.9, node: node-z}
  - {name: web-4, namespace: shop, ip: 10.200.1.14, node: node-a, labels: {app: -web}}
services:
  - {name: web, namespace: shop, vip: 10.96.0.10, ports: [{port: 70000}], selector: {app: web}}
policies:
  - just a string
"#;
    assert_errors(
        yaml,
        &[
            r#"trustDomain: "Cluster.Local" is not a trust domain: trust domain has invalid character 'C': only lowercase letters, digits, '.', '-' and '_' are allowed"#,
            r#"ca.address: "http://10.200.0.1:15012" must be an https:// URL"#,
            r#"nodes[1].name: duplicate node name "node-a" (first at nodes[0])"#,
            r#"nodes[1].podCIDR: 10.200.1.128/25 overlaps 10.200.1.0/24, the podCIDR of node "node-a" (nodes[0])"#,
            r#"nodes[2].podCidr: unknown key (did you mean "podCIDR"?)"#,
            r#"namespaces[0].name: "Shop" has invalid character 'S': a DNS-1123 label has only lowercase letters, digits, '-'"#,
            r#"workloads[1].ip: duplicate workload IP 10.200.1.11 (first at workloads[0], shop/web-1)"#,
            r#"workloads[2].node: no node "node-z""#,
            r#"workloads[3].labels["app"]: label value "-web": must start and end with a letter or digit"#,
            r#"services[0].ports[0].port: port 70000 is out of range 1..=65535"#,
            r#"policies[0]: expected a mapping (an AuthorizationPolicy document), found a string"#,
        ],
    );
}

#[test]
fn yaml_syntax_error_has_line_and_column() {
    assert_errors(
        "nodes: [\nworkloads: []\n",
        &["invalid YAML: unclosed bracket '[' at line 1, column 8"],
    );
}

#[test]
fn duplicate_yaml_keys_are_refused() {
    let got = errors("nodes: []\nworkloads: []\nnodes: []\n");
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("invalid YAML: duplicate mapping key `nodes`")
            && got[0].ends_with("at line 3, column 1"),
        "{got:?}"
    );
}

#[test]
fn document_must_be_a_mapping() {
    assert_errors("", &["expected a mapping, found nothing"]);
    assert_errors("- 1\n", &["expected a mapping, found a list"]);
}

#[test]
fn required_fields() {
    assert_errors("{}", &["nodes: required", "workloads: required"]);
    assert_errors(
        "ca: {}\nnodes: [{}]\nworkloads: [{}]\nservices: [{}]\n",
        &[
            "ca.address: required",
            "ca.rootCert: required",
            "nodes[0].name: required",
            "nodes[0].address: required",
            "workloads[0].name: required",
            "workloads[0].namespace: required",
            "workloads[0].ip: required",
            "workloads[0].node: required",
            "services[0].name: required",
            "services[0].namespace: required",
            "services[0].vip: required",
            "services[0].ports: required",
        ],
    );
    assert_errors(
        &with(
            "services: [{name: web, namespace: shop, vip: 10.96.0.1, ports: [{targetPort: 80}]}]",
        ),
        &["services[0].ports[0].port: required"],
    );
    assert_errors(
        &with("services: [{name: web, namespace: shop, vip: 10.96.0.1, ports: []}]"),
        &["services[0].ports: a service needs at least one port"],
    );
}

#[test]
fn unknown_keys_at_every_level() {
    let yaml = r#"
colour: blue
ca: {address: "https://ca:15012", rootCert: a.pem, token: x}
nodes: [{name: node-a, address: 10.200.0.1, zone: z}]
namespaces: [{name: shop, annotations: {}}]
workloads: [{name: w, namespace: shop, ip: 10.1.1.1, node: node-a, service_account: sa}]
services: [{name: s, namespace: shop, vip: 10.96.0.1, type: ClusterIP, ports: [{port: 80, appProtocol: http}]}]
"#;
    assert_errors(
        yaml,
        &[
            "colour: unknown key (expected one of: trustDomain, rootNamespace, ca, nodes, namespaces, workloads, services, policies, networkPolicies, clusterNetworkPolicies)",
            "ca.token: unknown key (expected one of: address, rootCert)",
            "nodes[0].zone: unknown key (expected one of: name, address, podCIDR, wireguardPublicKey, labels)",
            "namespaces[0].annotations: unknown key (expected one of: name, labels)",
            r#"workloads[0].service_account: unknown key (did you mean "serviceAccount"?)"#,
            "services[0].type: unknown key (expected one of: name, namespace, vip, ports, selector, endpoints)",
            "services[0].ports[0].appProtocol: unknown key (expected one of: port, targetPort, nodePort, name, protocol)",
        ],
    );
}

#[test]
fn explicit_endpoints_are_addresses_each_once_and_exclude_a_selector() {
    let yaml = r#"
nodes: [{name: node-a, address: 10.200.0.1}]
workloads: []
services:
  - {name: a, namespace: default, vip: 10.96.0.1, ports: [{port: 443, targetPort: 6443, nodePort: 99999}], endpoints: [10.200.0.250, api, 10.200.0.250]}
  - {name: b, namespace: default, vip: 10.96.0.2, ports: [{port: 80}], selector: {app: b}, endpoints: [10.0.0.1]}
"#;
    assert_errors(
        yaml,
        &[
            "services[0].ports[0].nodePort: port 99999 is out of range 1..=65535",
            "services[0].endpoints[1]: \"api\" is not an IPv4 address",
            "services[0].endpoints[2]: duplicate endpoint 10.200.0.250",
            "services[1].endpoints: a service has either a selector or explicit endpoints, not both",
        ],
    );
}

#[test]
fn type_errors_are_collected_with_paths() {
    let yaml = r#"
trustDomain: 3
nodes: {name: node-a}
workloads:
  - {name: [w], namespace: true, ip: 10, node: node-a, labels: [app]}
  - 7
services: [{name: s, namespace: n, vip: 10.96.0.1, ports: [{port: "80"}], selector: x}]
policies: {}
"#;
    assert_errors(
        yaml,
        &[
            "trustDomain: expected a string, found a number (quote it)",
            "nodes: expected a list, found a mapping",
            "workloads[0].name: expected a string, found a list",
            "workloads[0].namespace: expected a string, found a boolean (quote it)",
            "workloads[0].ip: expected a string, found a number (quote it)",
            "workloads[0].labels: expected a mapping, found a list",
            "workloads[1]: expected a mapping, found a number",
            "services[0].ports[0].port: expected a number, found a string",
            "services[0].selector: expected a mapping, found a string",
            "policies: expected a list, found a mapping",
        ],
    );
}

#[test]
fn yaml_1_1_booleans_and_octals_stay_strings() {
    let c = Config::from_yaml_str(
        &with("namespaces: [{name: shop, labels: {flag: on, code: \"010\", other: yes}}]"),
        "/",
    )
    .expect("valid");
    let labels = c.namespace_labels("shop");
    assert_eq!(labels.get("flag").map(String::as_str), Some("on"));
    assert_eq!(labels.get("other").map(String::as_str), Some("yes"));
}

#[test]
fn duplicate_node_names_and_addresses() {
    assert_errors(
        "nodes:\n  - {name: a, address: 10.0.0.1}\n  - {name: a, address: 10.0.0.1}\nworkloads: []\n",
        &[
            r#"nodes[1].name: duplicate node name "a" (first at nodes[0])"#,
            "nodes[1].address: duplicate node address 10.0.0.1 (first at nodes[0])",
        ],
    );
}

#[test]
fn overlapping_pod_cidrs() {
    assert_errors(
        "nodes:\n  - {name: a, address: 10.0.0.1, podCIDR: 10.1.0.0/24}\n  - {name: b, address: 10.0.0.2, podCIDR: 10.0.0.0/8}\nworkloads: []\n",
        &[
            r#"nodes[1].podCIDR: 10.0.0.0/8 overlaps 10.1.0.0/24, the podCIDR of node "a" (nodes[0])"#,
        ],
    );
    assert_errors(
        "nodes:\n  - {name: a, address: 10.0.0.1, podCIDR: 10.1.0.0/24}\n  - {name: b, address: 10.0.0.2, podCIDR: 10.1.1.0/24}\nworkloads: []\n",
        &[],
    );
}

#[test]
fn pod_cidr_must_be_a_canonical_ipv4_network() {
    assert_errors(
        "nodes: [{name: a, address: 10.0.0.1, podCIDR: 10.1.0.5/24}]\nworkloads: []\n",
        &[r#"nodes[0].podCIDR: "10.1.0.5/24" has host bits set (did you mean "10.1.0.0/24"?)"#],
    );
    assert_errors(
        "nodes: [{name: a, address: 10.0.0.1, podCIDR: 'fd00::/64'}]\nworkloads: []\n",
        &[r#"nodes[0].podCIDR: "fd00::/64" is IPv6: only IPv4 is supported for now"#],
    );
}

#[test]
fn ipv6_is_refused() {
    assert_errors(
        "nodes: [{name: a, address: 'fd00::1'}]\nworkloads: []\n",
        &[r#"nodes[0].address: "fd00::1" is IPv6: only IPv4 is supported for now"#],
    );
}

#[test]
fn a_workloads_ipv6_must_be_ipv6() {
    let yaml = |v6: &str| {
        format!(
            "nodes: [{{name: a, address: 10.0.0.1}}]\n\
             workloads: [{{name: w, namespace: n, ip: 10.1.0.5, node: a, ipv6: '{v6}'}}]\n"
        )
    };
    assert_errors(
        &yaml("10.1.0.6"),
        &[r#"workloads[0].ipv6: "10.1.0.6" is IPv4: `ip` holds the IPv4 address"#],
    );
    assert_errors(
        &yaml("fd00::x"),
        &[r#"workloads[0].ipv6: "fd00::x" is not an IPv6 address"#],
    );
    let config = nodemesh_config::Config::from_yaml_str(&yaml("fd00:1::5"), ".").unwrap();
    assert_eq!(
        config.workloads()[0].ipv6,
        Some("fd00:1::5".parse().unwrap())
    );
}

#[test]
fn wireguard_key_must_be_32_bytes_of_base64() {
    assert_errors(
        "nodes: [{name: a, address: 10.0.0.1, wireguardPublicKey: aGVsbG8=}]\nworkloads: []\n",
        &[
            "nodes[0].wireguardPublicKey: not a WireGuard public key: decodes to 5 bytes, expected 32",
        ],
    );
    assert_eq!(
        errors("nodes: [{name: a, address: 10.0.0.1, wireguardPublicKey: '%%%'}]\nworkloads: []\n")
            .len(),
        1
    );
}

#[test]
fn duplicate_workloads_and_ips() {
    assert_errors(
        &with(
            "  - {name: web-1, namespace: shop, ip: 10.200.1.12, node: node-a}\n  - {name: web-1, namespace: other, ip: 10.200.1.11, node: node-a}\n",
        ),
        &[
            "workloads[1].name: duplicate workload shop/web-1 (first at workloads[0])",
            "workloads[2].ip: duplicate workload IP 10.200.1.11 (first at workloads[0], shop/web-1)",
        ],
    );
}

#[test]
fn undefined_node() {
    assert_errors(
        &with("  - {name: w, namespace: shop, ip: 10.9.0.1, node: node-z}\n"),
        &[r#"workloads[1].node: no node "node-z""#],
    );
}

#[test]
fn workload_ip_against_pod_cidrs() {
    assert_errors(
        &with("  - {name: w, namespace: shop, ip: 10.200.2.1, node: node-a}\n"),
        &[r#"workloads[1].ip: 10.200.2.1 is outside podCIDR 10.200.1.0/24 of node "node-a""#],
    );
    // node-b has no podCIDR: any IP goes, except one inside another node's podCIDR.
    assert_errors(
        &with("  - {name: w, namespace: shop, ip: 10.77.0.1, node: node-b}\n"),
        &[],
    );
    assert_errors(
        &with("  - {name: w, namespace: shop, ip: 10.200.1.50, node: node-b}\n"),
        &[
            r#"workloads[1].ip: 10.200.1.50 lies in podCIDR 10.200.1.0/24 of node "node-a", not of node "node-b""#,
        ],
    );
    assert_errors(
        &with("  - {name: w, namespace: shop, ip: 10.200.0.2, node: node-b}\n"),
        &["workloads[1].ip: 10.200.0.2 is the address of a node (nodes[1])"],
    );
}

#[test]
fn kubernetes_names() {
    assert_errors(
        "rootNamespace: Nodemesh\nnodes: [{name: -a, address: 10.0.0.1}]\nnamespaces: [{name: a.b}]\nworkloads: [{name: W, namespace: shop, serviceAccount: web_sa, ip: 10.1.0.1, node: -a}]\nservices: [{name: 1web, namespace: shop, vip: 10.96.0.1, ports: [{port: 80}]}]\n",
        &[
            r#"rootNamespace: "Nodemesh" has invalid character 'N': a DNS-1123 label has only lowercase letters, digits, '-'"#,
            r#"nodes[0].name: "-a" must start and end with a letter or digit, around every '.' too (a DNS-1123 subdomain)"#,
            r#"namespaces[0].name: "a.b" has invalid character '.': a DNS-1123 label has only lowercase letters, digits, '-'"#,
            r#"workloads[0].name: "W" has invalid character 'W': a DNS-1123 subdomain has only lowercase letters, digits, '-' and '.'"#,
            r#"workloads[0].serviceAccount: "web_sa" has invalid character '_': a DNS-1123 subdomain has only lowercase letters, digits, '-' and '.'"#,
            r#"services[0].name: "1web" must start with a lowercase letter (a DNS-1035 label)"#,
        ],
    );
    // Real node names are subdomains.
    assert_errors(
        "nodes: [{name: ip-10-0-0-1.ec2.internal, address: 10.0.0.1}]\nworkloads: []\n",
        &[],
    );
}

#[test]
fn label_syntax() {
    assert_errors(
        &with(
            "namespaces: [{name: shop, labels: {Example.com/app: x, app: 'a b', ok: '', long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}}]\n",
        ),
        &[
            r#"namespaces[0].labels["Example.com/app"]: label key prefix: "Example.com" has invalid character 'E': a DNS-1123 subdomain has only lowercase letters, digits, '-' and '.'"#,
            r#"namespaces[0].labels["app"]: label value "a b": invalid character ' ' (only letters, digits, '-', '_' and '.')"#,
            r#"namespaces[0].labels["long"]: label value "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": longer than 63 characters"#,
        ],
    );
}

#[test]
fn our_own_labels_take_known_values() {
    assert_errors(
        &with(
            "namespaces: [{name: shop, labels: {nodemesh.io/mesh: enable, nodemesh.io/mtls-mode: lax}}]\n",
        ),
        &[
            r#"namespaces[0].labels["nodemesh.io/mesh"]: "enable" is not one of: enabled, disabled"#,
            r#"namespaces[0].labels["nodemesh.io/mtls-mode"]: "lax" is not one of: strict, permissive"#,
        ],
    );
}

#[test]
fn duplicate_namespaces() {
    assert_errors(
        &with("namespaces: [{name: shop}, {name: shop}]\n"),
        &[r#"namespaces[1].name: duplicate namespace "shop" (first at namespaces[0])"#],
    );
}

#[test]
fn ports_in_range() {
    assert_errors(
        &with(
            "services: [{name: web, namespace: shop, vip: 10.96.0.1, ports: [{port: 0, targetPort: 65536}]}]\n",
        ),
        &[
            "services[0].ports[0].port: port 0 is out of range 1..=65535",
            "services[0].ports[0].targetPort: port 65536 is out of range 1..=65535",
        ],
    );
    assert_errors(
        &with(
            "services: [{name: web, namespace: shop, vip: 10.96.0.1, ports: [{port: 1, targetPort: 65535}]}]\n",
        ),
        &[],
    );
}

#[test]
fn service_ports_names_and_protocol() {
    assert_errors(
        &with(
            "services: [{name: web, namespace: shop, vip: 10.96.0.1, ports: [{port: 80, name: http}, {port: 81}, {port: 82, name: http, protocol: UDP}]}]\n",
        ),
        &[
            "services[0].ports[1].name: required when a service has more than one port",
            r#"services[0].ports[2].protocol: protocol "UDP" is not supported (only "TCP" for now)"#,
            r#"services[0].ports[2].name: duplicate port name "http" (first at services[0].ports[0])"#,
        ],
    );
}

#[test]
fn duplicate_services_and_vip_ports() {
    assert_errors(
        &with(
            "services:\n  - {name: web, namespace: shop, vip: 10.96.0.1, ports: [{port: 80}]}\n  - {name: web, namespace: shop, vip: 10.96.0.2, ports: [{port: 80}]}\n  - {name: api, namespace: shop, vip: 10.96.0.1, ports: [{name: a, port: 80}, {name: b, port: 80}]}\n",
        ),
        &[
            "services[1].name: duplicate service shop/web (first at services[0])",
            "services[2].ports[0].port: duplicate 10.96.0.1:80 (first at services[0].ports[0].port)",
            "services[2].ports[1].port: duplicate 10.96.0.1:80 (first at services[0].ports[0].port)",
        ],
    );
}

#[test]
fn vip_collisions() {
    assert_errors(
        &with(
            "services:\n  - {name: a, namespace: shop, vip: 10.200.1.11, ports: [{port: 80}]}\n  - {name: b, namespace: shop, vip: 10.200.0.2, ports: [{port: 80}]}\n",
        ),
        &[
            "services[0].vip: 10.200.1.11 is the IP of workload shop/web-1 (workloads[0])",
            r#"services[0].vip: 10.200.1.11 lies in podCIDR 10.200.1.0/24 of node "node-a": a VIP must be outside every pod network"#,
            "services[1].vip: 10.200.0.2 is the address of a node (nodes[1])",
        ],
    );
}

#[test]
fn ca_address_must_be_https() {
    for (address, reason) in [
        (
            "127.0.0.1:15012",
            r#""127.0.0.1:15012" must be an https:// URL"#,
        ),
        (
            "https://ca:15012/v1",
            r#""https://ca:15012/v1" must have no path or query"#,
        ),
    ] {
        assert_errors(
            &with(&format!("ca: {{address: '{address}', rootCert: a.pem}}\n")),
            &[&format!("ca.address: {reason}")],
        );
    }
    assert_errors(
        &with("ca: {address: 'https://ca:15012', rootCert: ''}\n"),
        &["ca.rootCert: must not be empty"],
    );
}

#[test]
fn policies_must_be_mappings() {
    assert_errors(
        &with("policies: [{kind: AuthorizationPolicy}, [1], 3]\n"),
        &[
            "policies[1]: expected a mapping (an AuthorizationPolicy document), found a list",
            "policies[2]: expected a mapping (an AuthorizationPolicy document), found a number",
        ],
    );
}

#[test]
fn one_broken_field_hides_no_cross_check() {
    // Bad name and namespace, yet the undefined node and the duplicate IP are still reported.
    assert_errors(
        &with("  - {name: W, namespace: 7, ip: 10.200.1.11, node: node-z}\n"),
        &[
            r#"workloads[1].name: "W" has invalid character 'W': a DNS-1123 subdomain has only lowercase letters, digits, '-' and '.'"#,
            "workloads[1].namespace: expected a string, found a number (quote it)",
            r#"workloads[1].node: no node "node-z""#,
            "workloads[1].ip: duplicate workload IP 10.200.1.11 (first at workloads[0], shop/web-1)",
        ],
    );
}

#[test]
fn unreadable_nodes_add_no_reference_errors() {
    assert_errors(
        "nodes: [7]\nworkloads: [{name: w, namespace: shop, ip: 10.1.0.1, node: node-a}]\n",
        &["nodes[0]: expected a mapping, found a number"],
    );
}

#[test]
fn trust_domain_shapes_spiffe_ids() {
    let c = Config::from_yaml_str(&format!("trustDomain: example.org\n{}", with("")), "/")
        .expect("valid");
    assert_eq!(
        c.spiffe_id(&c.workloads()[0]).as_str(),
        "spiffe://example.org/ns/shop/sa/default"
    );
}

#[test]
fn require_ca_and_wireguard_name_their_paths() {
    let c = Config::from_yaml_str(&with(""), "/").expect("valid");
    assert_eq!(
        c.require_ca().map_err(|e| e.to_string()),
        Err("ca: required by nodemesh proxy (address and rootCert of the CA)".to_owned())
    );
    let errs: Vec<String> = match c.require_wireguard() {
        Ok(_) => Vec::new(),
        Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
    };
    assert_eq!(
        errs,
        [
            "nodes[0].wireguardPublicKey: required by --wireguard",
            "nodes[1].podCIDR: required by --wireguard",
            "nodes[1].wireguardPublicKey: required by --wireguard",
        ]
    );
}

#[test]
fn container_ports_are_checked() {
    assert_errors(
        "nodes: [{name: node-a, address: 10.200.0.1}]\nworkloads: [{name: w, namespace: shop, ip: 10.1.1.9, node: node-a, ports: [{name: http, port: 80}, {name: http, port: 81}, {port: 80, protocol: TCP}, {port: 53, protocol: ICMP}, {name: x, port: 0}]}]",
        &[
            r#"workloads[0].ports[1].name: duplicate port name "http""#,
            "workloads[0].ports[2].port: duplicate port 80/TCP",
            r#"workloads[0].ports[3].protocol: protocol "ICMP" is not one of: TCP, UDP, SCTP"#,
            "workloads[0].ports[4].port: port 0 is out of range 1..=65535",
        ],
    );
}

#[test]
fn network_policies_must_be_mappings() {
    assert_errors(
        &with("networkPolicies: [x]\nclusterNetworkPolicies: [[]]"),
        &[
            "networkPolicies[0]: expected a mapping (a NetworkPolicy document), found a string",
            "clusterNetworkPolicies[0]: expected a mapping (a ClusterNetworkPolicy document), found a list",
        ],
    );
}
