//! The walk over a standalone YAML document: every section, every field, every cross-check, with
//! all mistakes collected on the way.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use nodemesh_identity::{SpiffeId, TrustDomain};
use nodemesh_policy::DEFAULT_ROOT_NAMESPACE;
use serde_json::Value;

use crate::config::{Config, Parts};
use crate::error::{ConfigError, ConfigErrors};
use crate::model::{
    Ca, ContainerPort, DEFAULT_SERVICE_ACCOUNT, Labels, MESH_LABEL, MTLS_MODE_LABEL, Namespace,
    Node, Protocol, RawPolicy, Service, ServicePort, Workload,
};
use crate::names::{dns1035_label, dns1123_label, dns1123_subdomain, port_name};
use crate::reader::{self, Errors, Fields, field};
use crate::validate::Checks;
use crate::values::{self, k8s_name};

const TOP_KEYS: &[&str] = &[
    "trustDomain",
    "rootNamespace",
    "ca",
    "nodes",
    "namespaces",
    "workloads",
    "services",
    "policies",
    "networkPolicies",
    "clusterNetworkPolicies",
];
const CA_KEYS: &[&str] = &["address", "rootCert"];
const NODE_KEYS: &[&str] = &["name", "address", "podCIDR", "wireguardPublicKey", "labels"];
const NAMESPACE_KEYS: &[&str] = &["name", "labels"];
const WORKLOAD_KEYS: &[&str] = &[
    "name",
    "namespace",
    "serviceAccount",
    "ip",
    "ipv6",
    "node",
    "labels",
    "ports",
];
const CONTAINER_PORT_KEYS: &[&str] = &["name", "port", "protocol"];
const SERVICE_KEYS: &[&str] = &["name", "namespace", "vip", "ports", "selector", "endpoints"];
const PORT_KEYS: &[&str] = &["port", "targetPort", "nodePort", "name", "protocol"];

/// The values our own labels may take on a namespace.
const NAMESPACE_LABELS: &[(&str, &[&str])] = &[
    (MESH_LABEL, &["enabled", "disabled"]),
    (MTLS_MODE_LABEL, &["strict", "permissive"]),
];
/// The values our own labels may take on a pod.
const WORKLOAD_LABELS: &[(&str, &[&str])] = &[(MESH_LABEL, &["enabled", "disabled"])];

/// Parses and validates a standalone YAML document; relative paths are resolved against
/// `base_dir`.
pub(crate) fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let tree = yaml_tree(text).map_err(|e| ConfigErrors(vec![e]))?;
    let mut errs = Errors::default();
    let parts = document(&mut errs, &tree, base_dir);
    errs.finish(parts).map(Config::from_parts)
}

/// The YAML as a generic tree. YAML 1.2 booleans only (`on` stays a string), no octal guesses.
fn yaml_tree(text: &str) -> Result<Value, ConfigError> {
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let message = e.render_with_formatter(&serde_saphyr::UserMessageFormatter);
        ConfigError::new("", format!("invalid YAML: {message}"))
    })
}

fn document(errs: &mut Errors, value: &Value, base_dir: &Path) -> Option<Parts> {
    let f = Fields::open(errs, "", value, TOP_KEYS)?;
    let trust_domain = f
        .optional(errs, "trustDomain", values::trust_domain)
        .unwrap_or_default();
    let root_namespace = f
        .optional(errs, "rootNamespace", k8s_name(dns1123_label))
        .unwrap_or_else(|| DEFAULT_ROOT_NAMESPACE.to_owned());
    let ca = f.optional(errs, "ca", |e, p, v| ca(e, p, v, base_dir));
    let mut checks = Checks::default();
    let nodes = f.required(errs, "nodes", |e, p, v| {
        each(e, p, v, |e, p, v| node(e, p, v, &mut checks))
    });
    if nodes.is_none() {
        checks.nodes_unknown();
    }
    let namespaces = f.optional(errs, "namespaces", |e, p, v| {
        each(e, p, v, |e, p, v| namespace(e, p, v, &mut checks))
    });
    let workloads = f.required(errs, "workloads", |e, p, v| {
        each(e, p, v, |e, p, v| {
            workload(e, p, v, &trust_domain, &mut checks)
        })
    });
    let services = f.optional(errs, "services", |e, p, v| {
        each(e, p, v, |e, p, v| service(e, p, v, &mut checks))
    });
    let policies = f.optional(errs, "policies", |e, p, v| {
        each(e, p, v, |e, p, v| {
            document_of(e, p, v, "an AuthorizationPolicy")
        })
    });
    let network_policies = f.optional(errs, "networkPolicies", |e, p, v| {
        each(e, p, v, |e, p, v| document_of(e, p, v, "a NetworkPolicy"))
    });
    let cluster_network_policies = f.optional(errs, "clusterNetworkPolicies", |e, p, v| {
        each(e, p, v, |e, p, v| {
            document_of(e, p, v, "a ClusterNetworkPolicy")
        })
    });
    Some(Parts {
        trust_domain,
        root_namespace,
        ca,
        nodes: nodes?,
        namespaces: namespaces.unwrap_or_default(),
        workloads: workloads?,
        services: services.unwrap_or_default(),
        policies: policies.unwrap_or_default(),
        network_policies: network_policies.unwrap_or_default(),
        cluster_network_policies: cluster_network_policies.unwrap_or_default(),
    })
}

/// Reads every item of the list at `path` with `item`, keeping those that read cleanly.
fn each<T>(
    errs: &mut Errors,
    path: &str,
    value: &Value,
    mut item: impl FnMut(&mut Errors, &str, &Value) -> Option<T>,
) -> Option<Vec<T>> {
    let items = reader::list(errs, path, value)?;
    Some(
        items
            .into_iter()
            .filter_map(|(path, value)| item(errs, &path, value))
            .collect(),
    )
}

fn ca(errs: &mut Errors, at: &str, value: &Value, base_dir: &Path) -> Option<Ca> {
    let f = Fields::open(errs, at, value, CA_KEYS)?;
    let address = f.required(errs, "address", values::https_url);
    let root_cert = f.required(errs, "rootCert", values::file_path(base_dir));
    Some(Ca {
        address: address?,
        root_cert: root_cert?,
    })
}

fn node(errs: &mut Errors, at: &str, value: &Value, checks: &mut Checks) -> Option<Node> {
    let Some(f) = Fields::open(errs, at, value, NODE_KEYS) else {
        checks.nodes_unknown();
        return None;
    };
    let name = f.required(errs, "name", k8s_name(dns1123_subdomain));
    let address = f.required(errs, "address", values::ipv4);
    let pod_cidr = f.optional(errs, "podCIDR", values::ipv4_net);
    let wireguard_public_key = f.optional(errs, "wireguardPublicKey", values::wireguard_key);
    let labels = f.optional(errs, "labels", values::labels);
    // Register the name as written even when it is invalid, so that references to it do not
    // add a second error.
    match f.peek_str("name") {
        Some(written) => checks.node(errs, at, written, address, pod_cidr),
        None => checks.nodes_unknown(),
    }
    Some(Node {
        name: name?,
        address: address?,
        pod_cidr,
        wireguard_public_key,
        labels: labels.unwrap_or_default(),
    })
}

fn namespace(errs: &mut Errors, at: &str, value: &Value, checks: &mut Checks) -> Option<Namespace> {
    let f = Fields::open(errs, at, value, NAMESPACE_KEYS)?;
    let name = f.required(errs, "name", k8s_name(dns1123_label));
    let labels = f.optional(errs, "labels", |e, p, v| {
        our_labels(e, p, v, NAMESPACE_LABELS)
    });
    checks.namespace(errs, at, name.as_deref());
    Some(Namespace {
        name: name?,
        labels: labels.unwrap_or_default(),
    })
}

fn workload(
    errs: &mut Errors,
    at: &str,
    value: &Value,
    trust_domain: &TrustDomain,
    checks: &mut Checks,
) -> Option<Workload> {
    let f = Fields::open(errs, at, value, WORKLOAD_KEYS)?;
    let name = f.required(errs, "name", k8s_name(dns1123_subdomain));
    let namespace = f.required(errs, "namespace", k8s_name(dns1123_label));
    let service_account = f
        .optional(errs, "serviceAccount", k8s_name(dns1123_subdomain))
        .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned());
    let ip = f.required(errs, "ip", values::ipv4);
    let ipv6 = f.optional(errs, "ipv6", values::ipv6);
    let node = f.required(errs, "node", reader::string);
    let labels = f.optional(errs, "labels", |e, p, v| {
        our_labels(e, p, v, WORKLOAD_LABELS)
    });
    let ports = f.optional(errs, "ports", container_ports);
    checks.workload(
        errs,
        at,
        namespace.as_deref(),
        name.as_deref(),
        ip,
        node.as_deref(),
    );
    let namespace = namespace?;
    let identity = errs.check(
        at,
        SpiffeId::workload(trust_domain, &namespace, &service_account)
            .map_err(|e| format!("no valid SPIFFE ID: {e}")),
    )?;
    Some(Workload {
        name: name?,
        namespace,
        service_account,
        ip: ip?,
        ipv6,
        node: node?,
        labels: labels.unwrap_or_default(),
        ports: ports.unwrap_or_default(),
        identity,
    })
}

fn service(errs: &mut Errors, at: &str, value: &Value, checks: &mut Checks) -> Option<Service> {
    let f = Fields::open(errs, at, value, SERVICE_KEYS)?;
    let name = f.required(errs, "name", k8s_name(dns1035_label));
    let namespace = f.required(errs, "namespace", k8s_name(dns1123_label));
    let vip = f.required(errs, "vip", values::ipv4);
    let ports = f.required(errs, "ports", service_ports);
    let selector = f.optional(errs, "selector", values::labels);
    let endpoints = f.optional(errs, "endpoints", endpoint_ips);
    if endpoints.is_some() && f.has("selector") {
        errs.push(
            &f.path("endpoints"),
            "a service has either a selector or explicit endpoints, not both",
        );
    }
    let port_paths: Vec<(String, u16)> = ports
        .iter()
        .flatten()
        .map(|(path, p)| (field(path, "port"), p.port))
        .collect();
    checks.service(
        errs,
        at,
        namespace.as_deref(),
        name.as_deref(),
        vip,
        &port_paths,
    );
    Some(Service {
        name: name?,
        namespace: namespace?,
        vip: vip?,
        ports: ports?.into_iter().map(|(_, p)| p).collect(),
        selector: selector.unwrap_or_default(),
        endpoints,
    })
}

/// Reads a Service's explicit endpoints: IPv4 addresses (the API server, hostNetwork pods,
/// anything outside the mesh), each once.
fn endpoint_ips(errs: &mut Errors, at: &str, value: &Value) -> Option<Vec<Ipv4Addr>> {
    let items = reader::list(errs, at, value)?;
    let mut ips = Vec::new();
    for (path, value) in items {
        let Some(ip) = values::ipv4(errs, &path, value) else {
            continue;
        };
        if ips.contains(&ip) {
            errs.push(&path, format!("duplicate endpoint {ip}"));
        } else {
            ips.push(ip);
        }
    }
    Some(ips)
}

/// Reads a Service's ports with their paths: at least one, named when more than one, names
/// unique.
fn service_ports(errs: &mut Errors, at: &str, value: &Value) -> Option<Vec<(String, ServicePort)>> {
    let items = reader::list(errs, at, value)?;
    if items.is_empty() {
        errs.push(at, "a service needs at least one port");
        return None;
    }
    let several = items.len() > 1;
    let mut names: HashMap<String, String> = HashMap::new();
    let mut ports = Vec::new();
    for (path, value) in items {
        let Some(f) = Fields::open(errs, &path, value, PORT_KEYS) else {
            continue;
        };
        let port = f.required(errs, "port", values::port);
        let target_port = f.optional(errs, "targetPort", values::port);
        let node_port = f.optional(errs, "nodePort", values::port);
        let name = f.optional(errs, "name", k8s_name(port_name));
        let protocol = f.optional(errs, "protocol", protocol).unwrap_or_default();
        if several && !f.has("name") {
            errs.push(
                &f.path("name"),
                "required when a service has more than one port",
            );
        }
        if let Some(name) = &name
            && let Some(first) = names.insert(name.clone(), path.clone())
        {
            errs.push(
                &f.path("name"),
                format!("duplicate port name {name:?} (first at {first})"),
            );
        }
        if let Some(port) = port {
            let target_port = target_port.unwrap_or(port);
            let p = ServicePort {
                port,
                target_port,
                node_port,
                name,
                protocol,
            };
            ports.push((path, p));
        }
    }
    Some(ports)
}

/// Reads a pod's container ports: names unique, each `(port, protocol)` once.
fn container_ports(errs: &mut Errors, at: &str, value: &Value) -> Option<Vec<ContainerPort>> {
    let items = reader::list(errs, at, value)?;
    let mut ports: Vec<ContainerPort> = Vec::new();
    for (path, value) in items {
        let Some(f) = Fields::open(errs, &path, value, CONTAINER_PORT_KEYS) else {
            continue;
        };
        let name = f.optional(errs, "name", k8s_name(port_name));
        let port = f.required(errs, "port", values::port);
        let protocol = f
            .optional(errs, "protocol", any_protocol)
            .unwrap_or_default();
        let Some(port) = port else { continue };
        if let Some(name) = &name
            && ports.iter().any(|p| p.name.as_ref() == Some(name))
        {
            errs.push(&f.path("name"), format!("duplicate port name {name:?}"));
            continue;
        }
        if ports
            .iter()
            .any(|p| p.port == port && p.protocol == protocol)
        {
            errs.push(&f.path("port"), format!("duplicate port {port}/{protocol}"));
            continue;
        }
        ports.push(ContainerPort::new(name, port, protocol));
    }
    Some(ports)
}

/// Reads a container port's protocol: `TCP`, `UDP` or `SCTP`.
fn any_protocol(errs: &mut Errors, path: &str, value: &Value) -> Option<Protocol> {
    match reader::string(errs, path, value)?.as_str() {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        other => {
            errs.push(
                path,
                format!("protocol {other:?} is not one of: TCP, UDP, SCTP"),
            );
            None
        }
    }
}

fn protocol(errs: &mut Errors, path: &str, value: &Value) -> Option<Protocol> {
    match reader::string(errs, path, value)?.as_str() {
        "TCP" => Some(Protocol::Tcp),
        other => {
            errs.push(
                path,
                format!("protocol {other:?} is not supported (only \"TCP\" for now)"),
            );
            None
        }
    }
}

/// Reads labels, and checks the values of our own `nodemesh.io/` labels in `known`.
fn our_labels(
    errs: &mut Errors,
    path: &str,
    value: &Value,
    known: &[(&str, &[&str])],
) -> Option<Labels> {
    let labels = values::labels(errs, path, value)?;
    for (key, allowed) in known {
        if let Some(v) = labels.get(*key)
            && !allowed.contains(&v.as_str())
        {
            errs.push(
                &reader::entry(path, key),
                format!("{v:?} is not one of: {}", allowed.join(", ")),
            );
        }
    }
    Some(labels)
}

/// Keeps a policy document raw (the policy engine compiles it); it must be a mapping.
fn document_of(errs: &mut Errors, path: &str, value: &Value, what: &str) -> Option<RawPolicy> {
    if value.is_object() {
        Some(RawPolicy::new(value.clone()))
    } else {
        errs.push(
            path,
            format!(
                "expected a mapping ({what} document), found {}",
                reader::kind(value)
            ),
        );
        None
    }
}
