//! Freed heap goes back to the kernel after a burst of connections ends. glibc returns memory
//! only from the top of its heaps: after a thousand connections close, the pages they used stay
//! resident, scattered between live allocations, until the process asks for them to be released
//! (`malloc_trim`). [`TrimPolicy`] (sans IO) says when a burst has ended, from the bytes the
//! proxy's connections hold (their peak, [`MemoryBudget::take_peak`](crate::relay::MemoryBudget::take_peak),
//! and now); [`trim`] releases.

/// A burst smaller than this (bytes of connection buffers) is not worth a trim: 512 KiB is 256
/// idle connections, or eight busy ones.
pub const MIN_DROP: usize = 512 * 1024;

/// Decides when to trim: when the bytes held fell to half of their peak since the last trim (or
/// less), by at least [`MIN_DROP`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrimPolicy {
    peak: usize,
}

impl TrimPolicy {
    /// Takes the most bytes held since the last call (`peak`) and the bytes held now; `true`
    /// when the heap should be trimmed now.
    pub fn observe(&mut self, peak: usize, held: usize) -> bool {
        self.peak = self.peak.max(peak).max(held);
        let ended = self.peak - held >= MIN_DROP && held <= self.peak / 2;
        if ended {
            self.peak = held;
        }
        ended
    }
}

/// Releases the allocator's free pages to the kernel; whether any were released. It walks every
/// arena (about a millisecond for tens of MiB): call it off the data path.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and only releases memory the allocator holds free;
    // it is thread-safe (it locks each arena while it walks it).
    #[allow(unsafe_code)]
    let released = unsafe { libc::malloc_trim(0) };
    released == 1
}

/// Other allocators return memory by themselves: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_when_a_burst_has_ended() {
        let mut policy = TrimPolicy::default();
        assert!(!policy.observe(0, 0));
        assert!(
            !policy.observe(4 * MIN_DROP, 4 * MIN_DROP),
            "rising: no trim"
        );
        assert!(
            !policy.observe(3 * MIN_DROP, 3 * MIN_DROP),
            "still above half the peak"
        );
        assert!(
            policy.observe(MIN_DROP, MIN_DROP),
            "fell to a quarter: trim"
        );
        assert!(!policy.observe(MIN_DROP, MIN_DROP), "once per burst");
        assert!(
            !policy.observe(MIN_DROP / 2, MIN_DROP / 2),
            "a drop under MIN_DROP is not worth it"
        );
    }

    #[test]
    fn a_burst_between_two_looks_counts() {
        let mut policy = TrimPolicy::default();
        assert!(!policy.observe(0, 0));
        assert!(
            policy.observe(4 * MIN_DROP, 0),
            "it came and went between two looks"
        );
    }

    #[test]
    fn small_bursts_are_left_alone() {
        let mut policy = TrimPolicy::default();
        assert!(!policy.observe(MIN_DROP - 1, MIN_DROP - 1));
        assert!(!policy.observe(0, 0));
    }

    #[test]
    fn a_new_burst_after_a_trim_is_measured_from_where_it_started() {
        let mut policy = TrimPolicy::default();
        policy.observe(4 * MIN_DROP, 4 * MIN_DROP);
        assert!(policy.observe(0, 0));
        policy.observe(3 * MIN_DROP, 3 * MIN_DROP);
        assert!(policy.observe(MIN_DROP, MIN_DROP));
    }
}
