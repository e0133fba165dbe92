//! A full SPIFFE mTLS handshake (TLS 1.3, ECDSA P-256, both verifiers), in memory: what every
//! new HBONE connection costs in CPU, without socket noise. Also SVID validation alone.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use nodemesh_identity::{
    CredentialStore, Credentials, SpiffeId, SvidUsage, TrustDomain, WatchedCertResolver,
    client_config, crypto_provider, placeholder_server_name, server_config, verify_svid,
};
use nodemesh_test_support::TestCa;
use rustls::{ClientConnection, ServerConnection};
use tokio::sync::watch;

fn store(ca: &TestCa, id: &str) -> Arc<CredentialStore> {
    let (chain, key) = ca.svid(id);
    let id = SpiffeId::new(id).unwrap();
    let creds = Credentials::new(&id, chain, key, &crypto_provider()).unwrap();
    let store = Arc::new(CredentialStore::new(id));
    store.replace(Arc::new(creds));
    store
}

/// Moves TLS records between the two sides until neither has anything to send.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection, buf: &mut Vec<u8>) {
    loop {
        let mut moved = false;
        while client.wants_write() {
            buf.clear();
            client.write_tls(buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            moved = true;
        }
        while server.wants_write() {
            buf.clear();
            server.write_tls(buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn bench(c: &mut Criterion) {
    let root = TestCa::new("bench root");
    let bundle = root.bundle();
    let (_tx, bundle_rx) = watch::channel(Arc::new(bundle.clone()));
    let server_id = "spiffe://cluster.local/ns/shop/sa/db";
    let server_store = store(&root, server_id);
    let client_store = store(&root, "spiffe://cluster.local/ns/shop/sa/web");
    let client_cfg = Arc::new(
        client_config(
            crypto_provider(),
            Arc::new(WatchedCertResolver::new(client_store.subscribe())),
            SpiffeId::new(server_id).unwrap(),
            bundle_rx.clone(),
        )
        .unwrap(),
    );
    let server_cfg = Arc::new(
        server_config(
            crypto_provider(),
            Arc::new(WatchedCertResolver::new(server_store.subscribe())),
            TrustDomain::default(),
            bundle_rx,
        )
        .unwrap(),
    );
    let mut buf = Vec::with_capacity(16 * 1024);
    c.bench_function("mtls_handshake_tls13_p256", |b| {
        b.iter(|| {
            let mut client =
                ClientConnection::new(Arc::clone(&client_cfg), placeholder_server_name()).unwrap();
            let mut server = ServerConnection::new(Arc::clone(&server_cfg)).unwrap();
            pump(&mut client, &mut server, &mut buf);
            assert!(!client.is_handshaking() && !server.is_handshaking());
        })
    });
    let chain = server_store.current().unwrap().certified_key().cert.clone();
    c.bench_function("verify_svid_chain", |b| {
        b.iter(|| verify_svid(&chain, &bundle, SystemTime::now(), SvidUsage::Server).unwrap())
    });
    c.bench_function("spiffe_id_parse", |b| {
        b.iter(|| {
            SpiffeId::new(std::hint::black_box(
                "spiffe://cluster.local/ns/shop/sa/web",
            ))
            .unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
