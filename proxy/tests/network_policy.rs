//! NetworkPolicies on mesh TCP, in process (no root): the real CA, two proxies, pods on loopback
//! addresses (see `nodemesh_test_support::mesh`), HBONE between them.
#![allow(clippy::unwrap_used)]

use nodemesh_test_support::mesh as support;

use nodemesh_identity::SpiffeId;
use nodemesh_proxy::hbone::request::Caller;
use nodemesh_proxy::hbone::{HboneError, PoolKey};
use support::*;
use tokio::io::AsyncReadExt;

/// db admits only pods `app: local`, and only on the port that answers its name.
const ONLY_LOCAL: &str = r#"
networkPolicies:
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: db-from-local, namespace: shop}
    spec:
      podSelector: {matchLabels: {app: db}}
      ingress: [{from: [{podSelector: {matchLabels: {app: local}}}], ports: [{port: 9090}]}]
"#;

fn status(result: Result<impl Sized, HboneError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(HboneError::Status(s)) => s.as_u16(),
        Err(other) => panic!("{other}"),
    }
}

/// The selector matches the verified source, not its address: web's certificate sent from
/// local-1's address (a neighbour forging the admitted pod's IP) is refused, local's own
/// certificate from its address is let in on 9090 and not on 8080 (the port filtered is the
/// original one, not 15008), and the refusal is counted as `network_policy`.
#[tokio::test]
async fn selectors_match_the_verified_identity_on_the_original_port() {
    let mesh = Mesh::start(ONLY_LOCAL).await;
    let key = |sa: &str, from: &str| PoolKey {
        source: SpiffeId::new(&format!("spiffe://cluster.local/ns/shop/sa/{sa}")).unwrap(),
        destination: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/db").unwrap(),
        addr: mesh.addr("2.21", 15008),
        source_ip: Some(mesh.ip(from).parse().unwrap()),
    };
    let caller = |host: &str, workload: &'static str| Caller {
        addr: mesh.addr(host, 1234),
        namespace: "shop",
        workload,
    };
    let open = |key: PoolKey, port: u16, caller: Caller<'static>| {
        let hbone = mesh.a.hbone();
        let target = mesh.addr("2.21", port);
        async move { hbone.open(&key, target, &caller).await }
    };
    // local, from its own address, on the admitted port: db-1 answers its address.
    let mut tunnel = open(key("local", "1.12"), NAME, caller("1.12", "local-1"))
        .await
        .unwrap();
    let mut got = Vec::new();
    tunnel.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, mesh.ip("2.21").as_bytes());
    let other_port = open(key("local", "1.12"), ECHO, caller("1.12", "local-1")).await;
    assert_eq!(status(other_port), 401);
    // web's certificate from local-1's address: not local-1.
    let forged = open(key("web", "1.12"), NAME, caller("1.12", "local-1")).await;
    assert_eq!(status(forged), 401);
    // web from its own address: not selected.
    let web = open(key("web", "1.11"), NAME, caller("1.11", "web-1")).await;
    assert_eq!(status(web), 401);
    let metrics = mesh.b.metrics().render();
    assert!(
        metrics.contains(r#"nodemesh_connections_refused_total{reason="network_policy"} 3"#),
        "{metrics}"
    );
}
