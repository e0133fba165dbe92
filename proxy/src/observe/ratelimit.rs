//! Log lines an attacker can trigger, bounded: [`LogLimit`] lets a few through per period and
//! counts the rest, and the next line let through says how many were held back.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A rate limit for one log site (a `static`): at most `burst` lines per `period`.
#[derive(Debug)]
pub struct LogLimit {
    period_ms: u64,
    burst: u64,
    /// The current window's start, in milliseconds since the process's first look.
    window: AtomicU64,
    /// Lines in the current window, let through or not.
    seen: AtomicU64,
    /// Lines held back since the last one let through.
    held: AtomicU64,
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl LogLimit {
    /// At most `burst` lines per `period`.
    pub const fn new(period: Duration, burst: u64) -> Self {
        Self {
            period_ms: period.as_millis() as u64,
            burst,
            window: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// Ten lines a second: what every attacker-triggered log site uses.
    pub const fn per_second() -> Self {
        Self::new(Duration::from_secs(1), 10)
    }

    /// Whether to log now: `Some(held back since the last line)` or `None` (counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(now_ms())
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let window = self.window.load(Ordering::Relaxed);
        if now.saturating_sub(window) >= self.period_ms
            && self
                .window
                .compare_exchange(window, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.seen.store(0, Ordering::Relaxed);
        }
        if self.seen.fetch_add(1, Ordering::Relaxed) < self.burst {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_and_reported_with_the_next_window() {
        let limit = LogLimit::new(Duration::from_secs(1), 3);
        let first: Vec<_> = (0..10).map(|_| limit.admit_at(5)).collect();
        assert_eq!(first[..3], [Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        // Still the same window.
        assert_eq!(limit.admit_at(999), None);
        // The next window's first line carries the eight held back.
        assert_eq!(limit.admit_at(1_005), Some(8));
        assert_eq!(limit.admit_at(1_006), Some(0));
    }

    #[test]
    fn under_the_limit_nothing_is_held_back() {
        let limit = LogLimit::new(Duration::from_millis(100), 2);
        for t in 0..20 {
            assert_eq!(limit.admit_at(t * 100), Some(0));
        }
    }
}
