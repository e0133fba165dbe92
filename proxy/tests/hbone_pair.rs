//! The data plane in process (no root): the real CA, two proxies, pods on loopback addresses.
//! See `support/mod.rs` for the layout.
#![allow(clippy::unwrap_used)]

use nodemesh_test_support::mesh as support;

use std::time::Duration;

use nodemesh_identity::SpiffeId;
use nodemesh_proxy::hbone::request::Caller;
use nodemesh_proxy::hbone::{HboneError, PoolKey};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn checksum(data: &[u8]) -> u64 {
    // FNV-1a: enough to catch a reordered or corrupted byte.
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_round_trip_intact_across_nodes() {
    let mesh = Mesh::start("").await;
    for size in [1usize, 64 * 1024, 256 * 1024 * 1024] {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
        let back = echo_roundtrip(client, &data).await;
        assert_eq!(back.len(), data.len(), "size {size}");
        assert_eq!(checksum(&back), checksum(&data), "size {size}");
    }
    // All of it over one pooled HBONE connection.
    let key = PoolKey {
        source: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap(),
        destination: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/db").unwrap(),
        addr: mesh.addr("2.21", 15008),
        source_ip: None,
    };
    assert_eq!(mesh.a.hbone().connections(&key).await, 1);
}

#[tokio::test]
async fn half_close_works_both_ways() {
    let mesh = Mesh::start("").await;
    // Client closes its write side first: the echo still sends everything back.
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
    assert_eq!(echo_roundtrip(client, b"hello").await, b"hello");
    // Server closes first (name server): the client still can write after reading EOF.
    let mut client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", NAME)).await;
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, mesh.ip("2.21").as_bytes());
    client.write_all(b"still open").await.unwrap();
}

#[tokio::test]
async fn service_vip_spreads_over_endpoints_and_refuses_without_any() {
    let mesh = Mesh::start("").await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let client = dial(&mesh.a, &mesh.web(), mesh.addr("3.10", 80)).await;
        seen.insert(String::from_utf8(read_all(client).await).unwrap());
    }
    let want: std::collections::HashSet<_> = [mesh.ip("2.21"), mesh.ip("2.22")].into();
    assert_eq!(seen, want);
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("3.11", 80)).await;
    assert!(read_all(client).await.is_empty());
    let metrics = mesh.a.metrics().render();
    assert!(
        metrics.contains(r#"nodemesh_connections_refused_total{reason="no_endpoint"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn identities_are_verified_on_both_sides() {
    let mesh = Mesh::start("").await;
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
    assert_eq!(echo_roundtrip(client, b"x").await, b"x");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The destination proxy saw web's identity.
    let metrics = mesh.b.metrics().render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains(r#"reporter="destination""#)
                && l.contains(r#"source_principal="spiffe://cluster.local/ns/shop/sa/web""#)
                && l.contains(r#"connection_security_policy="mutual_tls""#)),
        "{metrics}"
    );
    // A client that expects another identity refuses db's certificate.
    let key = PoolKey {
        source: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap(),
        destination: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/payments").unwrap(),
        addr: mesh.addr("2.21", 15008),
        source_ip: None,
    };
    let caller = Caller {
        addr: mesh.addr("1.11", 1234),
        namespace: "shop",
        workload: "web-1",
    };
    let err = mesh
        .a
        .hbone()
        .open(&key, mesh.addr("2.21", ECHO), &caller)
        .await
        .unwrap_err();
    assert!(matches!(err, HboneError::Handshake { .. }), "{err}");
}

#[tokio::test]
async fn connect_answers_400_401_and_503() {
    let deny = r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: no-web-to-db1-echo, namespace: shop}
    spec:
      action: DENY
      selector: {matchLabels: {app: db}}
      rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}], to: [{operation: {ports: ["8080"]}}]}]
"#;
    let mesh = Mesh::start(deny).await;
    let ctx = &mesh.a;
    let key = PoolKey {
        source: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap(),
        destination: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/db").unwrap(),
        addr: mesh.addr("2.21", 15008),
        source_ip: None,
    };
    let caller = Caller {
        addr: mesh.addr("1.11", 1234),
        namespace: "shop",
        workload: "web-1",
    };
    let status = |e: HboneError| match e {
        HboneError::Status(s) => s.as_u16(),
        other => panic!("{other}"),
    };
    // Denied by policy.
    assert_eq!(
        status(
            ctx.hbone()
                .open(&key, mesh.addr("2.21", ECHO), &caller)
                .await
                .unwrap_err()
        ),
        401
    );
    // Authority IP is not the pod the connection was made to.
    assert_eq!(
        status(
            ctx.hbone()
                .open(&key, mesh.addr("2.22", NAME), &caller)
                .await
                .unwrap_err()
        ),
        400
    );
    // Nothing listens on the pod's port.
    assert_eq!(
        status(
            ctx.hbone()
                .open(&key, mesh.addr("2.21", 7), &caller)
                .await
                .unwrap_err()
        ),
        503
    );
    // Allowed port works on the same pooled connection.
    let mut t = ctx
        .hbone()
        .open(&key, mesh.addr("2.21", NAME), &caller)
        .await
        .unwrap();
    let mut got = Vec::new();
    t.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, mesh.ip("2.21").as_bytes());
    assert_eq!(ctx.hbone().connections(&key).await, 1);
    // Through the outbound path the denied connection is closed without a byte.
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
    assert!(read_all(client).await.is_empty());
    let metrics = mesh.b.metrics().render();
    assert!(
        metrics.contains(r#"nodemesh_connections_refused_total{reason="policy"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"nodemesh_connections_refused_total{reason="bad_request"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_destinations_and_sources_are_refused() {
    let mesh = Mesh::start("").await;
    // An IP in node-b's pod network that is no workload.
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.99", ECHO)).await;
    assert!(read_all(client).await.is_empty());
    // A source that is no local mesh workload.
    let client = dial(&mesh.a, &mesh.ip("1.77"), mesh.addr("2.21", ECHO)).await;
    assert!(read_all(client).await.is_empty());
    let metrics = mesh.a.metrics().render();
    assert!(
        metrics.contains(r#"nodemesh_connections_refused_total{reason="unknown_destination"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"nodemesh_connections_refused_total{reason="unknown_source"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn same_node_traffic_goes_through_the_inbound_side_in_process() {
    let deny_local = r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: local-only-from-web, namespace: shop}
    spec:
      selector: {matchLabels: {app: local}}
      rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}], to: [{operation: {ports: ["9090"]}}]}]
"#;
    let mesh = Mesh::start(deny_local).await;
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("1.12", NAME)).await;
    assert_eq!(read_all(client).await, mesh.ip("1.12").as_bytes());
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("1.12", ECHO)).await;
    assert!(
        read_all(client).await.is_empty(),
        "policy applies in-process too"
    );
}

#[tokio::test]
async fn same_node_calls_need_a_valid_source_certificate() {
    let mut mesh = Mesh::start("").await;
    mesh.stop_ca().await;
    // A new workload on node-a while the CA is down: it never gets a certificate.
    let n = mesh.n;
    let with_new = base(n).replace(
        "workloads:\n",
        &format!("workloads:\n  - {{name: new-1, namespace: shop, serviceAccount: new, ip: 127.{n}.1.13, node: node-a}}\n"),
    );
    std::fs::write(&mesh.config, format!("{}{with_new}", mesh.ca_section)).unwrap();
    let new = mesh.ip("1.13");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mesh
        .a
        .store()
        .load()
        .workload(new.parse().unwrap())
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node-a never saw new-1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Uncertified: refused on the same node as over HBONE; certified web-1 still gets through.
    for dst in [mesh.addr("1.12", NAME), mesh.addr("2.21", NAME)] {
        let client = dial(&mesh.a, &new, dst).await;
        assert!(read_all(client).await.is_empty(), "new-1 reached {dst}");
    }
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("1.12", NAME)).await;
    assert_eq!(read_all(client).await, mesh.ip("1.12").as_bytes());
    let metrics = mesh.a.metrics().render();
    assert!(
        metrics.contains(r#"nodemesh_connections_refused_total{reason="no_certificate"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn forwarded_is_believed_only_from_the_named_pod_s_node() {
    // db accepts web only from web-1's address.
    let mesh = Mesh::start("").await;
    let only_web_1 = format!(
        r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {{name: db-from-web-1, namespace: shop}}
    spec:
      selector: {{matchLabels: {{app: db}}}}
      rules: [{{from: [{{source: {{principals: ["cluster.local/ns/shop/sa/web"], ipBlocks: ["{}/32"]}}}}]}}]
"#,
        mesh.web()
    );
    let mut reloaded = mesh.b.store().subscribe();
    mesh.write_policies(&only_web_1);
    while mesh.b.store().load().policies().policies().is_empty() {
        tokio::time::timeout(Duration::from_secs(10), reloaded.changed())
            .await
            .unwrap()
            .unwrap();
    }
    let key = PoolKey {
        source: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap(),
        destination: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/db").unwrap(),
        addr: mesh.addr("2.21", 15008),
        source_ip: None,
    };
    // web's certificate, `forwarded` naming web-1, from 127.0.0.1: no node's address, no pod of
    // node-a. Today's check (identity only) believed it and let the ipBlocks rule match.
    let caller = Caller {
        addr: mesh.addr("1.11", 1234),
        namespace: "shop",
        workload: "web-1",
    };
    let err = mesh
        .a
        .hbone()
        .open(&key, mesh.addr("2.21", ECHO), &caller)
        .await
        .err();
    assert!(
        matches!(err, Some(HboneError::Status(s)) if s.as_u16() == 401),
        "forwarded was believed: {err:?}"
    );
}

#[tokio::test]
async fn reload_adds_a_deny_and_a_bad_reload_keeps_the_old_state() {
    let mesh = Mesh::start("").await;
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", NAME)).await;
    assert!(!read_all(client).await.is_empty());
    mesh.write_policies(
        r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-all-db, namespace: shop}
    spec: {action: DENY, selector: {matchLabels: {app: db}}, rules: [{}]}
"#,
    );
    let mut refused = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", NAME)).await;
        if read_all(client).await.is_empty() {
            refused = true;
            break;
        }
    }
    assert!(refused, "the DENY from the reloaded file is enforced");
    // A malformed file is refused; the DENY stays in force.
    std::fs::write(&mesh.config, "nodes: [{name: node-a}]\nbogus: true\n").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", NAME)).await;
    assert!(read_all(client).await.is_empty());
}

#[tokio::test]
async fn drain_lets_in_flight_transfers_finish_and_refuses_new_ones() {
    let mesh = Mesh::start_with("", |o| o.drain_timeout = Duration::from_secs(120)).await;
    let data: Vec<u8> = (0..100 * 1024 * 1024)
        .map(|i: usize| (i % 253) as u8)
        .collect();
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
    let transfer = tokio::spawn(async move { echo_roundtrip(client, &data).await.len() });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let outbound = mesh.a.listening.outbound;
    let outcome = mesh.a.drain().await;
    assert!(outcome.is_clean(), "{outcome:?}");
    assert_eq!(transfer.await.unwrap(), 100 * 1024 * 1024);
    assert!(
        tokio::net::TcpStream::connect(outbound).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn metrics_and_flow_log_carry_labels_and_byte_counts() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let path = log.path().to_owned();
    let mesh = Mesh::start_with("", |o| {
        o.flow_log = nodemesh_proxy::observe::FlowLogTarget::File(path.clone())
    })
    .await;
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
    assert_eq!(echo_roundtrip(client, &[9u8; 1000]).await.len(), 1000);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let metrics = mesh.a.metrics().render();
    for name in [
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains(r#"reporter="source""#))
            .unwrap_or_else(|| panic!("no {name}: {metrics}"));
        for label in [
            r#"source_workload="web-1""#,
            r#"source_workload_namespace="shop""#,
            r#"source_app="web""#,
            r#"destination_workload="db-1""#,
            r#"destination_principal="spiffe://cluster.local/ns/shop/sa/db""#,
            r#"connection_security_policy="mutual_tls""#,
        ] {
            assert!(line.contains(label), "{label} missing in {line}");
        }
        assert!(line.ends_with(" 1000"), "{line}");
    }

    // Both proxies wrote to the same file: one outbound line (node-a), one inbound (node-b).
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let outbound = lines
        .iter()
        .find(|l| l["direction"] == "outbound")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(outbound["verdict"], "allow");
    assert_eq!(outbound["bytes_sent"], 1000);
    assert_eq!(outbound["bytes_received"], 1000);
    assert_eq!(outbound["src"]["workload"], "web-1");
    assert_eq!(
        outbound["src"]["identity"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(
        outbound["dst"]["identity"],
        "spiffe://cluster.local/ns/shop/sa/db"
    );
    assert_eq!(outbound["dst"]["port"], 8080);
    let inbound = lines
        .iter()
        .find(|l| l["direction"] == "inbound")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        inbound["src"]["identity"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert_eq!(inbound["bytes_received"], 1000);
    for key in ["time", "service", "policy", "reason", "duration_ms"] {
        assert!(outbound.get(key).is_some(), "{key} missing: {outbound}");
    }
}

#[tokio::test]
async fn ca_outage_keeps_existing_certificates_working() {
    let mut mesh = Mesh::start("").await;
    let grpc = mesh.stop_ca().await;
    assert!(
        tokio::net::TcpStream::connect(grpc).await.is_err(),
        "CA is down"
    );
    // Certificates in hand keep serving new connections, across nodes and in-process.
    for host in ["2.21", "1.12"] {
        let client = dial(&mesh.a, &mesh.web(), mesh.addr(host, ECHO)).await;
        assert_eq!(echo_roundtrip(client, b"still mtls").await, b"still mtls");
    }
    let metrics = mesh.b.metrics().render();
    assert!(
        !metrics.contains(r#"connection_security_policy="none""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn slow_loris_and_garbage_clients_do_not_stall_others() {
    let mesh = Mesh::start("").await;
    let hbone = mesh.addr("2.21", 15008);
    // Clients that connect and never finish (or never start) a TLS handshake...
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(hbone).await.unwrap());
    }
    // ...and one that sends garbage.
    let mut garbage = tokio::net::TcpStream::connect(hbone).await.unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 0, 0])
        .await
        .unwrap();
    // A well-behaved transfer goes through meanwhile.
    let data = vec![5u8; 8 * 1024 * 1024];
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
    let back = tokio::time::timeout(Duration::from_secs(20), echo_roundtrip(client, &data))
        .await
        .unwrap();
    assert_eq!(back.len(), data.len());
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), garbage.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        n < 16,
        "garbage gets at most an alert, then the connection closes"
    );
    drop(idle);
}

/// A peer with a valid certificate opens 1,000 CONNECT streams and resets each at once (the HTTP/2
/// "rapid reset" attack): the proxy neither crashes nor stalls a concurrent transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_flood_does_not_stall_others() {
    use nodemesh_identity::{
        WatchedCertResolver, client_config, crypto_provider, placeholder_server_name,
    };
    let mesh = Mesh::start("").await;
    let ctx = &mesh.a;
    let web = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let db = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/db").unwrap();
    let store = ctx.certs().store(&web).unwrap();
    let mut config = client_config(
        crypto_provider(),
        std::sync::Arc::new(WatchedCertResolver::new(store.subscribe())),
        db,
        ctx.certs().bundle(),
    )
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(mesh.addr("2.21", 15008))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(placeholder_server_name(), tcp)
        .await
        .unwrap();
    let (mut h2, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);

    let data = vec![3u8; 4 * 1024 * 1024];
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
    let transfer = tokio::spawn(async move { echo_roundtrip(client, &data).await.len() });

    let target = mesh.addr("2.21", ECHO).to_string();
    let mut sent = 0;
    for _ in 0..1000 {
        let Ok(ready) = h2.clone().ready().await else {
            break;
        };
        h2 = ready;
        let req = http::Request::builder()
            .method("CONNECT")
            .uri(target.as_str())
            .body(())
            .unwrap();
        let Ok((_, mut stream)) = h2.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    assert!(sent > 0);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(30), transfer)
            .await
            .unwrap()
            .unwrap(),
        4 * 1024 * 1024
    );
    // The proxy still serves new tunnels.
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", NAME)).await;
    assert_eq!(read_all(client).await, mesh.ip("2.21").as_bytes());
}

/// Certificates that live 4 s are renewed at 2 s: a transfer running across the renewal (and the
/// old certificate's expiry) completes, and new tunnels go over a new connection that presents
/// the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_during_a_long_transfer() {
    let lifetimes = nodemesh_ca::LifetimePolicy {
        default: Duration::from_secs(4),
        min: Duration::from_secs(1),
        max: Duration::from_secs(4),
        backdate: Duration::ZERO,
    };
    let mesh = Mesh::start_full("", lifetimes, |_| {}).await;
    let ctx = &mesh.a;
    let web = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let key = PoolKey {
        source: web.clone(),
        destination: SpiffeId::new("spiffe://cluster.local/ns/shop/sa/db").unwrap(),
        addr: mesh.addr("2.21", 15008),
        source_ip: None,
    };
    let first = ctx.certs().store(&web).unwrap().current().unwrap();

    // A slow transfer: 1 KiB every 50 ms for 6 s, echoed back.
    let mut client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
    let slow = tokio::spawn(async move {
        let chunk = [7u8; 1024];
        let mut back = vec![0u8; 1024];
        for _ in 0..120 {
            client.write_all(&chunk).await.unwrap();
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, chunk);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        120 * 1024
    });

    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = ctx.certs().store(&web).unwrap().current().unwrap();
    assert_ne!(
        first.info().serial,
        second.info().serial,
        "renewed at half-life"
    );
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", NAME)).await;
    assert_eq!(read_all(client).await, mesh.ip("2.21").as_bytes());
    assert_eq!(
        ctx.hbone().connections(&key).await,
        2,
        "a new connection with the new certificate"
    );
    assert_eq!(
        slow.await.unwrap(),
        120 * 1024,
        "the old connection carried on"
    );
}

#[tokio::test]
async fn admin_api_explains_policy_and_dumps_state() {
    let deny = r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-web, namespace: shop}
    spec: {action: DENY, rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]}]}
"#;
    let mesh = Mesh::start(deny).await;
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let admin = mesh.a.serve_admin(any, any, any).unwrap();
    let get = |addr: std::net::SocketAddr, path: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let explain = get(
        admin.admin_addr(),
        "/policy/explain?destination-namespace=shop&destination-port=8080&source-principal=cluster.local/ns/shop/sa/web".into(),
    )
    .await;
    assert!(explain.starts_with("HTTP/1.1 200"), "{explain}");
    assert!(
        explain.contains("\"deny\"") && explain.contains("deny-web"),
        "{explain}"
    );
    let bad = get(
        admin.admin_addr(),
        "/policy/explain?destination-port=x".into(),
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let dump = get(admin.admin_addr(), "/config_dump".into()).await;
    assert!(
        dump.contains("\"node\": \"node-a\"") && dump.contains("web-1"),
        "{dump}"
    );
    let certs = get(admin.admin_addr(), "/certs".into()).await;
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{certs}"
    );
    let ready = get(admin.readiness_addr(), "/healthz/ready".into()).await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
}

/// Sends one HTTP/1.1 request on `s` and returns the status and body of the answer.
async fn http_request(s: &mut tokio::net::TcpStream, method: &str, path: &str) -> (u16, String) {
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nhost: db.shop\r\ncontent-length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn l7_policy_is_enforced_per_request_in_the_node_proxy() {
    let l7 = r#"
policies:
  - apiVersion: security.nodemesh.io/v1
    kind: AuthorizationPolicy
    metadata: {name: public-get-only, namespace: shop}
    spec:
      selector: {matchLabels: {app: db}}
      rules:
        - from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]
          to: [{operation: {methods: ["GET"], paths: ["/public/*"]}}]
"#;
    let mesh = Mesh::start(l7).await;
    let mut s = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", HTTP)).await;
    assert_eq!(
        http_request(&mut s, "GET", "/public/x").await,
        (200, "/public/x".into())
    );
    assert_eq!(
        http_request(&mut s, "POST", "/public/x").await,
        (403, "RBAC: access denied".into())
    );
    assert_eq!(http_request(&mut s, "GET", "/admin").await.0, 403);
    assert_eq!(http_request(&mut s, "GET", "/public/../admin").await.0, 403);
    assert_eq!(
        http_request(&mut s, "GET", "/public/y").await,
        (200, "/public/y".into()),
        "same keep-alive connection"
    );
    // A non-HTTP stream to the same destination: L7 rules cannot match it, so ALLOW denies it.
    let client = dial(&mesh.a, &mesh.web(), mesh.addr("2.21", ECHO)).await;
    assert!(echo_roundtrip(client, b"\x00\x01binary").await.is_empty());
    let metrics = mesh.b.metrics().render();
    let requests = |code: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("istio_requests_total")
                    && l.contains(&format!("response_code=\"{code}\""))
            })
            .unwrap_or_else(|| panic!("no {code}: {metrics}"))
            .to_owned()
    };
    assert!(
        requests("200").ends_with(" 2") && requests("200").contains(r#"request_protocol="http""#)
    );
    assert!(requests("403").ends_with(" 3"));
}

#[tokio::test]
async fn plaintext_into_a_strict_namespace_is_refused() {
    let mesh = Mesh::start("").await;
    let capture = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(addr(&mesh.ip("0.1"), 0)).unwrap();
    let client = socket.connect(capture.local_addr().unwrap()).await.unwrap();
    let (accepted, _) = capture.accept().await.unwrap();
    mesh.b
        .inbound_plaintext_entry(accepted, mesh.addr("2.21", ECHO));
    assert!(read_all(client).await.is_empty());
    let metrics = mesh.b.metrics().render();
    assert!(
        metrics.contains(r#"nodemesh_connections_refused_total{reason="strict_mtls"} 1"#),
        "{metrics}"
    );
}
