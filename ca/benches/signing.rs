//! What one certificate costs the CA: CSR checks (parse + signature), signing, and both together.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::SystemTime;

use criterion::{Criterion, criterion_group, criterion_main};
use nodemesh_ca::csr::check_csr;
use nodemesh_ca::{LifetimePolicy, RootSource};
use nodemesh_identity::{SpiffeId, TrustDomain, generate_csr};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::default();
    let source = RootSource::state_dir(dir.path().join("ca"));
    source.init(&td, SystemTime::now()).unwrap();
    let authority = source.load(&td).unwrap();
    let id = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let csr = generate_csr(&id).unwrap().csr_pem;
    let checked = check_csr(&csr, &td).unwrap();
    let day = 86_400;

    c.bench_function("csr_check", |b| b.iter(|| check_csr(&csr, &td).unwrap()));
    c.bench_function("svid_sign", |b| {
        b.iter(|| {
            authority
                .issue(
                    &checked,
                    LifetimePolicy::default()
                        .window(day, SystemTime::now())
                        .unwrap(),
                )
                .unwrap()
        })
    });
    c.bench_function("csr_check_and_sign", |b| {
        b.iter(|| {
            let checked = check_csr(&csr, &td).unwrap();
            authority
                .issue(
                    &checked,
                    LifetimePolicy::default()
                        .window(day, SystemTime::now())
                        .unwrap(),
                )
                .unwrap()
        })
    });
    c.bench_function("csr_generate_client_side", |b| {
        b.iter(|| generate_csr(&id).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
