//! Certificate renewal with a fake clock: renewal at half-life, retry with backoff while the CA is
//! down, and the old certificate served until a new one arrives.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use nodemesh_identity::{
    Backoff, CertificateIssuer, Clock, CredentialStore, SpiffeId, TokioClock, crypto_provider,
    run_renewal,
};
use nodemesh_test_support::TestCa;

const DAY: Duration = Duration::from_secs(86_400);

/// A CA stand-in that signs with the fake clock's time and can be switched off.
struct FakeCa {
    ca: TestCa,
    clock: TokioClock,
    up: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

impl CertificateIssuer for FakeCa {
    async fn issue(
        &self,
        csr_pem: String,
    ) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.up.load(Ordering::SeqCst) {
            return Err("connection refused".into());
        }
        Ok(self.ca.sign_csr(&csr_pem, self.clock.now(), DAY))
    }
}

#[tokio::test(start_paused = true)]
async fn renews_at_half_life_retries_and_keeps_the_old_cert() {
    // Round the start to whole seconds: certificates carry second precision.
    let start = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        );
    let clock = TokioClock::starting_at(start);
    let up = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let issuer = FakeCa {
        ca: TestCa::new("root"),
        clock,
        up: up.clone(),
        calls: calls.clone(),
    };
    let id = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let store = Arc::new(CredentialStore::new(id));
    let backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
    let task = tokio::spawn(run_renewal(
        store.clone(),
        issuer,
        crypto_provider(),
        Arc::new(clock),
        backoff,
    ));

    // First issue happens at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let first = store.current().unwrap();
    assert_eq!(first.info().not_before, start);

    // Just before half-life: no renewal yet.
    tokio::time::sleep(DAY / 2 - Duration::from_secs(2)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // At half-life with the CA down: retries with growing delays, old cert still served.
    up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "renewal attempted at half-life"
    );
    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    let failed = calls.load(Ordering::SeqCst);
    // Backoff 1,2,4,...,60 s (jittered down to half): in 10 minutes between 10 and 30 attempts,
    // far from the 600 a fixed 1 s retry would make, and more than 3.
    assert!((10..=30).contains(&failed), "{failed} attempts");
    assert!(
        Arc::ptr_eq(&store.current().unwrap(), &first),
        "old certificate keeps serving"
    );
    assert!(store.valid_at(clock.now()).is_some());

    // CA back: the next retry installs a new certificate from the current time.
    up.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let second = store.current().unwrap();
    assert!(!Arc::ptr_eq(&second, &first));
    assert!(second.info().not_before > first.info().not_before + DAY / 2);
    let after_renewal = calls.load(Ordering::SeqCst);

    // Nothing more until the new certificate's half-life.
    tokio::time::sleep(DAY / 2 - Duration::from_secs(120)).await;
    assert_eq!(calls.load(Ordering::SeqCst), after_renewal);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(calls.load(Ordering::SeqCst), after_renewal + 1);
    task.abort();
}

#[test]
fn backoff_grows_exponentially_with_jitter_and_a_cap() {
    let b = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };
    for attempt in 0..40 {
        let ceiling = Duration::from_secs(1u64 << attempt.min(6)).min(Duration::from_secs(60));
        let d = b.delay(attempt);
        assert!(d <= ceiling && d >= ceiling / 2, "attempt {attempt}: {d:?}");
    }
}
