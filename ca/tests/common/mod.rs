//! The CA on loopback with a two-node standalone config, for the gRPC tests.
#![allow(dead_code, clippy::unwrap_used)]

use nodemesh_identity::SpiffeId;
pub use nodemesh_test_support::ca::LocalCa;

pub const TOKEN_A: &str = "token-of-node-a-0123456789";
pub const TOKEN_B: &str = "token-of-node-b-0123456789";
pub const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
pub const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

/// A CA (not yet started) for node-a with web-1 and node-b with db-1, its tokens
/// [`TOKEN_A`] and [`TOKEN_B`].
pub fn fixture() -> LocalCa {
    LocalCa::new(
        r#"
nodes:
  - {name: node-a, address: 10.0.0.1}
  - {name: node-b, address: 10.0.0.2}
namespaces:
  - {name: shop, labels: {nodemesh.io/mesh: enabled}}
workloads:
  - {name: web-1, namespace: shop, serviceAccount: web, ip: 10.1.0.11, node: node-a}
  - {name: db-1, namespace: shop, serviceAccount: db, ip: 10.1.0.21, node: node-b}
"#,
        &["node-a", "node-b"],
    )
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}
