//! Root rotation under load: clients request certificates continuously over real gRPC + TLS
//! while the root goes old → both (staged, then activated) → new (retired), following the trust
//! bundle file as proxies do. No request may fail, and every chain issued must verify against
//! the bundle the client held when it asked and against the bundle on disk when it got the answer.
//!
//! Figures are printed (run with `--nocapture`).
#![allow(clippy::unwrap_used)]
// Test bookkeeping shared by the clients, not a data path.
#![allow(clippy::disallowed_types)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nodemesh_ca::{CaClient, RunningCa};
use nodemesh_identity::{SvidUsage, TrustBundle, TrustDomain, generate_csr, verify_svid};
use nodemesh_test_support::ca::LocalCa;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::sync::watch;

use common::{id, until_served};

/// Workloads per node (two nodes).
const PER_NODE: usize = 8;
/// Concurrent clients.
const WORKERS: usize = 4;
/// How often a client re-reads the bundle file: slower than the CA re-reads its files
/// (100 ms), as a proxy's mounted ConfigMap lags the CA's state in a cluster.
const BUNDLE_POLL: Duration = Duration::from_secs(1);

fn identity(i: usize) -> String {
    format!("spiffe://cluster.local/ns/shop/sa/w{i}")
}

fn fixture() -> LocalCa {
    let mut yaml = String::from(
        "nodes:\n  - {name: node-a, address: 10.0.0.1}\n  - {name: node-b, address: 10.0.0.2}\n\
         namespaces:\n  - {name: shop, labels: {nodemesh.io/mesh: enabled}}\nworkloads:\n",
    );
    for i in 0..2 * PER_NODE {
        let node = if i < PER_NODE { "node-a" } else { "node-b" };
        yaml.push_str(&format!(
            "  - {{name: w{i}-1, namespace: shop, serviceAccount: w{i}, ip: 10.1.0.{}, node: {node}}}\n",
            i + 10
        ));
    }
    LocalCa::new(&yaml, &["node-a", "node-b"])
}

/// What a node's clients hold: the bundle they trust and a CA client per node built on it.
struct Held {
    pem: String,
    bundle: TrustBundle,
    nodes: [CaClient; 2],
}

fn held(ca: &RunningCa, pem: String) -> Arc<Held> {
    let address = format!("https://127.0.0.1:{}", ca.grpc_addr.port());
    let client = |node: &str| {
        CaClient::new(&address, &pem, &nodemesh_test_support::ca::node_token(node)).unwrap()
    };
    Arc::new(Held {
        bundle: TrustBundle::from_pem(&pem).unwrap(),
        nodes: [client("node-a"), client("node-b")],
        pem,
    })
}

#[derive(Default)]
struct Stats {
    done: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Per identity, the root of its newest certificate.
    newest: Mutex<HashMap<usize, CertificateDer<'static>>>,
    /// Per root, how many chains it signed.
    per_root: Mutex<HashMap<CertificateDer<'static>, u64>>,
}

impl Stats {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

async fn worker(
    n: usize,
    bundle_file: std::path::PathBuf,
    clients: watch::Receiver<Arc<Held>>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) {
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        let target = i % (2 * PER_NODE);
        i += WORKERS;
        let held = Arc::clone(&clients.borrow());
        let csr = generate_csr(&id(&identity(target))).unwrap();
        let node = usize::from(target >= PER_NODE);
        let result = held.nodes[node]
            .create_certificate(csr.csr_pem, 3600, None)
            .await;
        let pems = match result {
            Ok(pems) => pems,
            Err(e) => {
                stats.fail(format!("request for w{target}: {e}"));
                continue;
            }
        };
        let chain: Vec<_> = pems
            .iter()
            .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
            .collect();
        let now = SystemTime::now();
        if let Err(e) = verify_svid(&chain[..1], &held.bundle, now, SvidUsage::Client) {
            stats.fail(format!(
                "w{target}: against the bundle held when asking: {e}"
            ));
        }
        let on_disk =
            TrustBundle::from_pem(&std::fs::read_to_string(&bundle_file).unwrap()).unwrap();
        if let Err(e) = verify_svid(&chain[..1], &on_disk, now, SvidUsage::Client) {
            stats.fail(format!("w{target}: against the bundle on disk: {e}"));
        }
        let root = chain[chain.len() - 1].clone();
        *stats
            .per_root
            .lock()
            .unwrap()
            .entry(root.clone())
            .or_default() += 1;
        stats.newest.lock().unwrap().insert(target, root);
        stats.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Re-reads the bundle file every [`BUNDLE_POLL`] and rebuilds the clients when it changed.
async fn follow_bundle(
    f: Arc<LocalCa>,
    ca: Arc<RunningCa>,
    tx: watch::Sender<Arc<Held>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(BUNDLE_POLL).await;
        let pem = f.bundle_pem();
        if pem != tx.borrow().pem {
            tx.send_replace(held(&ca, pem));
        }
    }
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request() {
    let f = Arc::new(fixture());
    let ca = Arc::new(f.start().await);
    let td = TrustDomain::default();
    let old_root = CertificateDer::from_pem_file(f.state("root-cert.pem")).unwrap();
    let (tx, rx) = watch::channel(held(&ca, f.bundle_pem()));
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let follower = tokio::spawn(follow_bundle(
        Arc::clone(&f),
        Arc::clone(&ca),
        tx,
        Arc::clone(&stop),
    ));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            tokio::spawn(worker(
                n,
                f.state("trust-bundle.pem"),
                rx.clone(),
                Arc::clone(&stats),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let done = || stats.done.load(Ordering::Relaxed);
    let warm = done();
    wait_for("warm-up", Duration::from_secs(30), || done() >= warm + 200).await;

    // 1. Stage: both roots in the bundle; wait until the clients hold it.
    let staged_at = done();
    let new_root = f.opts.root.stage_root(&td, SystemTime::now()).unwrap();
    let spread = wait_for(
        "clients hold the staged bundle",
        Duration::from_secs(10),
        || rx.borrow().bundle.roots().contains(&new_root),
    )
    .await;
    until_served(ca.http_addr, "the CA serves the staged bundle", |r| {
        r.len() == 2
    })
    .await;
    wait_for(
        "load with both roots trusted",
        Duration::from_secs(30),
        || done() >= staged_at + 200,
    )
    .await;

    // 2. Activate: every identity renews from the new root.
    let activated_at = done();
    f.opts.root.activate_root(&td).unwrap();
    let renewal = wait_for(
        "every identity renewed from the new root",
        Duration::from_secs(30),
        || {
            let newest = stats.newest.lock().unwrap();
            newest.len() == 2 * PER_NODE && newest.values().all(|r| *r == new_root)
        },
    )
    .await;

    // 3. Retire: refused now (old leaves live), accepted once the ledger says they expired.
    let now = SystemTime::now();
    assert!(f.opts.root.retire_root(&td, now, false).is_err());
    let expires_by = f.opts.root.leaves_expire_by(&old_root).unwrap().unwrap();
    let retired_at = done();
    let retired = f.opts.root.retire_root(&td, expires_by, false).unwrap();
    assert_eq!(retired, vec![old_root.clone()]);
    wait_for(
        "clients hold the new-root bundle",
        Duration::from_secs(10),
        || rx.borrow().bundle.roots() == [new_root.clone()],
    )
    .await;
    until_served(ca.http_addr, "the CA serves the new bundle", |r| {
        r == [new_root.clone()]
    })
    .await;
    wait_for("load after retirement", Duration::from_secs(30), || {
        done() >= retired_at + 200
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    follower.await.unwrap();
    let elapsed = started.elapsed();
    let total = done();
    let failures = stats.failures.lock().unwrap().clone();
    let per_root = stats.per_root.lock().unwrap().clone();
    let (by_old, by_new) = (
        per_root.get(&old_root).copied().unwrap_or(0),
        per_root.get(&new_root).copied().unwrap_or(0),
    );
    eprintln!(
        "rotation under load: {total} requests in {elapsed:.1?} ({:.0}/s, {WORKERS} clients, {} identities), {} failed; \
         {by_old} chains from the old root, {by_new} from the new; staged bundle reached the clients in {spread:.1?}; \
         every identity renewed from the new root {renewal:.1?} after activation (activated after {} requests, retired after {})",
        total as f64 / elapsed.as_secs_f64(),
        2 * PER_NODE,
        failures.len(),
        activated_at,
        retired_at,
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(by_old + by_new, total);
    assert!(by_old > 0 && by_new > 0);
    Arc::try_unwrap(ca).unwrap().shutdown().await;
}
