//! The buffer bytes one proxy accounts for: relays' buffers and other per-connection memory,
//! against one limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The buffer bytes one proxy accounts for, against a budget. Charges are unconditional (a
/// connection let in gets its first buffers); growing is allowed only within the budget; new
/// connections are refused while the budget is used up ([`MemoryBudget::exhausted`]).
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// A budget nothing exhausts (relays outside a proxy).
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX)
    }

    /// Accounts for `bytes` whatever the budget: the returned charge gives them back on drop.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        Charge {
            budget: Arc::clone(self),
            bytes,
        }
    }

    /// Whether the budget is used up: new connections are refused.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.limit
    }

    /// Bytes accounted for now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The budget.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Bytes accounted against a [`MemoryBudget`], given back on drop.
#[derive(Debug)]
#[must_use = "dropping the charge gives the bytes back"]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl Charge {
    /// Accounts for `more` bytes, if the budget has room for them.
    pub fn try_grow(&mut self, more: usize) -> bool {
        let limit = self.budget.limit;
        let grown = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_add(more).filter(|&m| m <= limit)
            })
            .is_ok();
        if grown {
            self.bytes += more;
        }
        grown
    }

    /// Bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}
