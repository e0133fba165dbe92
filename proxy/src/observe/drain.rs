//! Graceful drain: one trigger, many watchers, guards held by in-flight work.
//!
//! Listeners wait on [`DrainWatch::signaled`] and stop accepting; each connection holds a
//! [`DrainGuard`] for as long as it runs. [`DrainTrigger::drain`] signals every watcher and waits
//! until every guard is gone or the deadline passes; after a timed-out drain,
//! [`DrainWatch::forced`] resolves so the stragglers can close at once.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use nodemesh_proxy::observe::drain;
//!
//! let (trigger, watch) = drain::channel();
//! let guard = watch.guard();
//! tokio::spawn(async move {
//!     // ... finish the in-flight stream ...
//!     drop(guard);
//! });
//! assert!(trigger.drain(Duration::from_secs(5)).await.is_clean());
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use tokio::sync::watch;

/// Where the drain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    Draining,
    Forced,
}

/// Creates a drain trigger and its first watcher.
pub fn channel() -> (DrainTrigger, DrainWatch) {
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (guards_tx, guards_rx) = watch::channel(0usize);
    let trigger = DrainTrigger {
        phase: phase_tx,
        guards: guards_rx,
    };
    let watch = DrainWatch {
        phase: phase_rx,
        guards: guards_tx.into(),
    };
    (trigger, watch)
}

/// Starts the drain. Dropping it without draining counts as a forced drain for every watcher.
pub struct DrainTrigger {
    phase: watch::Sender<Phase>,
    guards: watch::Receiver<usize>,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum DrainOutcome {
    /// Every guard was dropped before the deadline.
    Clean,
    /// The deadline passed with `remaining` guards still held; watchers were told to force-close.
    TimedOut {
        /// Guards still held at the deadline.
        remaining: usize,
    },
}

impl DrainOutcome {
    /// Whether every guard was released before the deadline.
    pub fn is_clean(self) -> bool {
        self == DrainOutcome::Clean
    }
}

impl DrainTrigger {
    /// Signals every watcher, then waits until no guard is held or `timeout` passes. After a
    /// timeout, [`DrainWatch::forced`] resolves for everyone.
    pub async fn drain(mut self, timeout: Duration) -> DrainOutcome {
        self.phase.send_replace(Phase::Draining);
        // The guards' sender lives in every watch and guard; if all are gone, so are the guards.
        let waited = {
            let idle = self.guards.wait_for(|held| *held == 0);
            tokio::time::timeout(timeout, async { idle.await.map(|_| ()) }).await
        };
        let outcome = match waited {
            Ok(_) => DrainOutcome::Clean,
            Err(_) => DrainOutcome::TimedOut {
                remaining: *self.guards.borrow(),
            },
        };
        if !outcome.is_clean() {
            self.phase.send_replace(Phase::Forced);
        }
        outcome
    }

    /// How many guards are held right now.
    pub fn guards_held(&self) -> usize {
        *self.guards.borrow()
    }
}

impl Drop for DrainTrigger {
    fn drop(&mut self) {
        // A trigger that goes away without a clean drain leaves nobody to wait for the stragglers.
        if *self.phase.borrow() == Phase::Running {
            self.phase.send_replace(Phase::Forced);
        }
    }
}

impl fmt::Debug for DrainTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainTrigger")
            .field("phase", &*self.phase.borrow())
            .field("guards", &*self.guards.borrow())
            .finish()
    }
}

/// Watches for the drain. Cheap to clone; holding one does not delay the drain (a [`DrainGuard`]
/// does).
#[derive(Clone)]
pub struct DrainWatch {
    phase: watch::Receiver<Phase>,
    guards: std::sync::Arc<watch::Sender<usize>>,
}

impl DrainWatch {
    /// Resolves once the drain has started (or the trigger is gone).
    pub async fn signaled(&self) {
        self.wait_for(Phase::Draining).await;
    }

    /// Resolves once the drain deadline has passed with work still in flight (or the trigger is
    /// gone): remaining connections should close now.
    pub async fn forced(&self) {
        self.wait_for(Phase::Forced).await;
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining || self.phase.has_changed().is_err()
    }

    /// Takes a guard: the drain waits for it to be dropped (until its deadline).
    pub fn guard(&self) -> DrainGuard {
        self.guards.send_modify(|held| *held += 1);
        DrainGuard {
            guards: self.guards.clone(),
        }
    }

    async fn wait_for(&self, phase: Phase) {
        let mut rx = self.phase.clone();
        // An error means the trigger is gone: nothing will ever be waited for.
        let _ = rx.wait_for(|now| *now >= phase).await;
    }
}

impl fmt::Debug for DrainWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainWatch")
            .field("phase", &*self.phase.borrow())
            .finish()
    }
}

/// Held by in-flight work; the drain waits until every guard is dropped.
#[must_use = "the drain only waits while the guard is held"]
pub struct DrainGuard {
    guards: std::sync::Arc<watch::Sender<usize>>,
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        self.guards
            .send_modify(|held| *held = held.saturating_sub(1));
    }
}

impl fmt::Debug for DrainGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DrainGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn drain_without_guards_is_clean_and_immediate() {
        let (trigger, watch) = channel();
        let start = Instant::now();
        assert_eq!(
            trigger.drain(Duration::from_secs(5)).await,
            DrainOutcome::Clean
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(watch.is_draining());
        // The trigger is gone after a clean drain: forced resolves too, nothing waits any more.
        watch.forced().await;
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_every_guard() {
        let (trigger, watch) = channel();
        for secs in [1u64, 3] {
            let guard = watch.guard();
            let watch = watch.clone();
            tokio::spawn(async move {
                watch.signaled().await;
                tokio::time::sleep(Duration::from_secs(secs)).await;
                drop(guard);
            });
        }
        assert_eq!(trigger.guards_held(), 2);
        let start = Instant::now();
        let outcome = trigger.drain(Duration::from_secs(10)).await;
        assert_eq!(outcome, DrainOutcome::Clean);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_honours_the_deadline_and_forces() {
        let (trigger, watch) = channel();
        let _stuck = watch.guard();
        let forced = tokio::spawn({
            let watch = watch.clone();
            async move {
                watch.forced().await;
                Instant::now()
            }
        });
        let start = Instant::now();
        let outcome = trigger.drain(Duration::from_secs(5)).await;
        assert_eq!(outcome, DrainOutcome::TimedOut { remaining: 1 });
        assert!(!outcome.is_clean());
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(forced.await.unwrap() - start, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn watchers_do_not_hold_the_drain() {
        let (trigger, watch) = channel();
        let _clones: Vec<DrainWatch> = (0..3).map(|_| watch.clone()).collect();
        assert!(!watch.is_draining());
        let signaled = tokio::spawn({
            let watch = watch.clone();
            async move { watch.signaled().await }
        });
        assert!(trigger.drain(Duration::from_secs(1)).await.is_clean());
        signaled.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_trigger_forces_watchers() {
        let (trigger, watch) = channel();
        drop(trigger);
        watch.signaled().await;
        watch.forced().await;
        assert!(watch.is_draining());
    }
}
