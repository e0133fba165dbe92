//! [`Reconciler`]: a node's capture rules kept in step with its changing set of mesh pods.
//!
//! The rules are installed before [`Reconciler::start`] returns (the caller's start-up step: an
//! error is the caller's to report), then re-applied whenever the pod set changes; a failed
//! update is retried. The rules are never removed here: a stopped or crashed proxy leaves capture
//! in place, so captured traffic finds no listener and is refused (fail closed). Only
//! [`crate::remove`] deletes them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::apply::apply;
use crate::error::RedirectError;
use crate::execute::ApplyReport;
use crate::host::Host;
use crate::rules::RuleSet;

/// What installs capture rules for the [`Reconciler`]: the real tools on a [`Host`], or a stand-in
/// in tests. Called on a blocking thread (the tools are processes).
pub trait Installer: Send + Sync + 'static {
    /// Brings `rules` in place, changing only what differs.
    fn install(&self, rules: &RuleSet) -> Result<ApplyReport, RedirectError>;
}

impl Installer for Host {
    /// [`crate::apply`] on this host.
    fn install(&self, rules: &RuleSet) -> Result<ApplyReport, RedirectError> {
        apply(self, rules)
    }
}

/// Keeps the capture rules of an [`Installer`] in step with a desired pod set (module docs).
#[derive(Debug)]
pub struct Reconciler<I> {
    installer: Arc<I>,
    template: RuleSet,
    retry: Duration,
}

impl<I: Installer> Reconciler<I> {
    /// How long a failed update waits before it is retried, unless told otherwise.
    pub const RETRY: Duration = Duration::from_secs(2);

    /// Installs `template` (backend, ports, marks, table) with the desired pods in its place.
    pub fn new(installer: I, template: RuleSet) -> Self {
        Self {
            installer: Arc::new(installer),
            template,
            retry: Self::RETRY,
        }
    }

    /// Waits `retry` after a failed update instead of [`Reconciler::RETRY`].
    pub fn with_retry(self, retry: Duration) -> Self {
        Self { retry, ..self }
    }

    /// Installs the rules for `desired()` now, then returns the task that keeps them in step:
    /// each time `changes` changes it asks `desired()` again and applies a set that differs from
    /// the one installed. The task ends when the sender of `changes` is gone.
    pub async fn start<F, T>(
        self,
        mut desired: F,
        changes: watch::Receiver<T>,
    ) -> Result<impl Future<Output = ()> + Send + 'static, RedirectError>
    where
        F: FnMut() -> BTreeSet<IpAddr> + Send + 'static,
        T: Send + Sync + 'static,
    {
        let rules = self.template.with_addrs(desired());
        let report = self.install(&rules).await?;
        tracing::info!(
            pods = rules.pods().len(),
            ipv6_guarded = rules.pods6().len(),
            changed = ?report.changed,
            "capture rules in place"
        );
        Ok(self.keep_in_step(desired, changes, rules))
    }

    async fn keep_in_step<F, T>(
        self,
        mut desired: F,
        mut changes: watch::Receiver<T>,
        mut current: RuleSet,
    ) where
        F: FnMut() -> BTreeSet<IpAddr> + Send + 'static,
        T: Send + Sync + 'static,
    {
        loop {
            let addrs = desired();
            if addrs != current.addrs() {
                let rules = self.template.with_addrs(addrs);
                match self.install(&rules).await {
                    Ok(report) => {
                        tracing::info!(
                            pods = rules.pods().len(),
                            ipv6_guarded = rules.pods6().len(),
                            changed = ?report.changed,
                            "capture rules updated"
                        );
                        current = rules;
                    }
                    Err(error) => {
                        tracing::error!(%error, "capture rules not updated; retrying");
                        tokio::time::sleep(self.retry).await;
                        continue;
                    }
                }
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    async fn install(&self, rules: &RuleSet) -> Result<ApplyReport, RedirectError> {
        let (installer, rules) = (self.installer.clone(), rules.clone());
        tokio::task::spawn_blocking(move || installer.install(&rules))
            .await
            .map_err(|source| RedirectError::Task { source })?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::mpsc;

    use super::*;
    use crate::rules::Backend;

    /// Records every install it is asked for; fails the ones whose number (from 0) is listed.
    struct Fake {
        attempts: mpsc::UnboundedSender<(BTreeSet<IpAddr>, bool)>,
        count: AtomicUsize,
        fail: Vec<usize>,
    }

    impl Installer for Fake {
        fn install(&self, rules: &RuleSet) -> Result<ApplyReport, RedirectError> {
            let fails = self
                .fail
                .contains(&self.count.fetch_add(1, Ordering::Relaxed));
            let _ = self.attempts.send((rules.addrs(), !fails));
            if fails {
                return Err(RedirectError::BadAddress {
                    input: "injected failure".into(),
                });
            }
            Ok(ApplyReport {
                changed: vec!["ipset nodemesh-pods".into()],
            })
        }
    }

    type Attempts = mpsc::UnboundedReceiver<(BTreeSet<IpAddr>, bool)>;

    fn fake(fail: &[usize]) -> (Reconciler<Fake>, Attempts) {
        let (attempts, seen) = mpsc::unbounded_channel();
        let fake = Fake {
            attempts,
            count: AtomicUsize::new(0),
            fail: fail.to_vec(),
        };
        let template = RuleSet::new(Backend::Nftables, []);
        let reconciler = Reconciler::new(fake, template).with_retry(Duration::from_millis(10));
        (reconciler, seen)
    }

    fn pods(last: &[u8]) -> BTreeSet<IpAddr> {
        last.iter()
            .map(|&n| std::net::Ipv4Addr::new(10, 0, 0, n).into())
            .collect()
    }

    /// The desired set from a watch channel, reporting each time it is asked.
    fn desired_from(
        rx: &watch::Receiver<BTreeSet<IpAddr>>,
    ) -> (
        impl FnMut() -> BTreeSet<IpAddr> + Send + 'static,
        mpsc::UnboundedReceiver<()>,
    ) {
        let (asked_tx, asked) = mpsc::unbounded_channel();
        let rx = rx.clone();
        let desired = move || {
            let _ = asked_tx.send(());
            rx.borrow().clone()
        };
        (desired, asked)
    }

    async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time")
            .expect("sender alive")
    }

    #[tokio::test]
    async fn installs_before_start_returns() {
        let (reconciler, mut attempts) = fake(&[]);
        let (tx, rx) = watch::channel(pods(&[1, 2]));
        let (desired, _asked) = desired_from(&rx);
        let task = reconciler.start(desired, rx).await.unwrap();
        assert_eq!(attempts.try_recv().unwrap(), (pods(&[1, 2]), true));
        drop((tx, task));
    }

    #[tokio::test]
    async fn a_failed_first_install_is_the_callers_error() {
        let (reconciler, mut attempts) = fake(&[0]);
        let (_tx, rx) = watch::channel(pods(&[1]));
        let (desired, _asked) = desired_from(&rx);
        let err = reconciler.start(desired, rx).await.err().unwrap();
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert_eq!(attempts.try_recv().unwrap(), (pods(&[1]), false));
        assert!(attempts.try_recv().is_err(), "not retried by start");
    }

    #[tokio::test]
    async fn a_change_is_applied_and_a_failed_update_retried() {
        let (reconciler, mut attempts) = fake(&[1]);
        let (tx, rx) = watch::channel(pods(&[1]));
        let (desired, _asked) = desired_from(&rx);
        let task = tokio::spawn(reconciler.start(desired, rx).await.unwrap());
        assert_eq!(next(&mut attempts).await, (pods(&[1]), true));
        tx.send(pods(&[1, 2])).unwrap();
        assert_eq!(next(&mut attempts).await, (pods(&[1, 2]), false));
        assert_eq!(next(&mut attempts).await, (pods(&[1, 2]), true));
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends with its sender")
            .unwrap();
        assert!(attempts.try_recv().is_err(), "nothing after success");
    }

    #[tokio::test]
    async fn an_identical_set_is_not_applied() {
        let (reconciler, mut attempts) = fake(&[]);
        let (tx, rx) = watch::channel(pods(&[1]));
        let (desired, mut asked) = desired_from(&rx);
        let _task = tokio::spawn(reconciler.start(desired, rx).await.unwrap());
        assert_eq!(next(&mut attempts).await, (pods(&[1]), true));
        next(&mut asked).await; // start
        next(&mut asked).await; // the task's first look
        // The state changed, but not the pods: asked again, nothing applied.
        tx.send(pods(&[1])).unwrap();
        next(&mut asked).await;
        tx.send(pods(&[1, 3])).unwrap();
        next(&mut asked).await;
        // The next install is the new set: the identical one was never applied.
        assert_eq!(next(&mut attempts).await, (pods(&[1, 3]), true));
    }
}
