//! The standalone nodemesh config: one YAML file, shared by all nodes, that lists the nodes,
//! namespaces, workloads, Services and AuthorizationPolicies of a cluster without Kubernetes.
//!
//! [`Config::from_file`] parses and validates it in full and reports *every* mistake at once,
//! each naming its path (`workloads[3].node: no node "node-z"`). Unknown keys are errors. Nothing
//! here opens a socket; the only I/O is reading the file.
//!
//! ```
//! let yaml = r#"
//! nodes: [{name: node-a, address: 10.200.0.1, podCIDR: 10.200.1.0/24}]
//! namespaces: [{name: shop, labels: {nodemesh.io/mesh: enabled}}]
//! workloads: [{name: web-1, namespace: shop, ip: 10.200.1.11, node: node-a}]
//! "#;
//! let config = nodemesh_config::Config::from_yaml_str(yaml, "/etc/nodemesh").unwrap();
//! let web = config.workload_by_ip("10.200.1.11".parse().unwrap()).unwrap();
//! assert!(config.in_mesh(web));
//! assert_eq!(config.spiffe_id(web).as_str(), "spiffe://cluster.local/ns/shop/sa/default");
//! ```

mod build;
mod config;
mod error;
mod model;
mod names;
mod parse;
mod reader;
mod summary;
mod validate;
mod values;

pub use build::WorkloadFields;
pub use config::{Config, NAMESPACE_NAME_LABEL, Parts, WireguardNode};
pub use error::{ConfigError, ConfigErrors, LoadError};
pub use model::{
    Ca, ContainerPort, DEFAULT_SERVICE_ACCOUNT, Endpoint, Labels, MESH_LABEL, MTLS_MODE_LABEL,
    Namespace, Node, Protocol, RawPolicy, Service, ServicePort, WireguardKeyError,
    WireguardPublicKey, Workload,
};
/// The default of `rootNamespace`: the policy engine's root namespace.
pub use nodemesh_policy::DEFAULT_ROOT_NAMESPACE;
pub use summary::Summary;
