//! Freed heap goes back to the kernel after a burst ends. glibc returns memory only from the top
//! of its heaps: after a thousand connections close, or a bulk transfer's HTTP/2 windows drain,
//! the pages they used stay resident, scattered between live allocations, until the process asks
//! for them to be released (`malloc_trim`). [`TrimPolicy`] (sans IO) says when, from the
//! resident memory no allocation uses ([`slack_bytes`]); [`trim`] releases it.

/// Slack worth a trim: 2 MiB, a hundred idle connections' worth or one bulk transfer's.
pub const MIN_SLACK: usize = 2 * 1024 * 1024;

/// Decides when to trim: when the slack rose by [`MIN_SLACK`] above its lowest since the last
/// trim, or above what that trim left ([`TrimPolicy::trimmed`]): pages shared with live
/// allocations, which no trim releases, never trigger another.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrimPolicy {
    low: Option<usize>,
}

impl TrimPolicy {
    /// Takes the slack now; `true` when the heap should be trimmed.
    pub fn observe(&mut self, slack: usize) -> bool {
        let low = self.low.map_or(slack, |low| low.min(slack));
        self.low = Some(low);
        slack - low >= MIN_SLACK
    }

    /// Takes the slack right after a trim: the new low point. (Read a second later, under load,
    /// the slack has grown back and would hide what the next burst leaves.)
    pub fn trimmed(&mut self, slack: usize) {
        self.low = Some(slack);
    }
}

/// Resident anonymous memory that no allocation uses: the process's anonymous RSS less the
/// allocator's bytes in use (`/proc/self/status`, `mallinfo2`: tens of microseconds). `None`
/// where either cannot be read.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn slack_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let anon = status_bytes(&status, "RssAnon")?;
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's statistics.
    #[allow(unsafe_code)]
    let info = unsafe { libc::mallinfo2() };
    Some(anon.saturating_sub(info.uordblks + info.hblkhd))
}

/// A size field (`VmRSS`, `RssAnon`, ...) of a `/proc/<pid>/status` text, in bytes; `None`
/// when it is missing or not a size in kB.
pub fn status_bytes(status: &str, field: &str) -> Option<usize> {
    let value = status.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })?;
    let mut words = value.split_whitespace();
    let kib: usize = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
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

/// Other allocators return memory by themselves: nothing to measure.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn slack_bytes() -> Option<usize> {
    None
}

/// Other allocators return memory by themselves: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn reads_size_fields_of_proc_status() {
        let status = "Name:\tnodemesh\nVmRSS:\t   20480 kB\nRssAnon:\t    1536 kB\nRssFile:\tx kB\nThreads:\t4\n";
        assert_eq!(status_bytes(status, "VmRSS"), Some(20480 * 1024));
        assert_eq!(status_bytes(status, "RssAnon"), Some(1536 * 1024));
        assert_eq!(
            status_bytes(status, "Rss"),
            None,
            "a prefix of a field is not the field"
        );
        assert_eq!(status_bytes(status, "RssFile"), None, "not a number");
        assert_eq!(status_bytes(status, "Threads"), None, "not a size");
        assert_eq!(status_bytes(status, "VmSwap"), None, "missing");
    }

    #[test]
    fn trims_when_the_slack_rose_enough() {
        let mut policy = TrimPolicy::default();
        assert!(!policy.observe(MIB), "the first look sets the low point");
        assert!(!policy.observe(2 * MIB), "1 MiB more: not worth it");
        assert!(policy.observe(3 * MIB), "2 MiB more than the low point");
        policy.trimmed(MIB / 2);
        assert!(!policy.observe(2 * MIB), "measured from what the trim left");
        assert!(policy.observe(3 * MIB));
    }

    #[test]
    fn what_a_trim_cannot_release_does_not_trim_again() {
        let mut policy = TrimPolicy::default();
        policy.observe(0);
        assert!(policy.observe(10 * MIB));
        policy.trimmed(5 * MIB);
        for _ in 0..5 {
            assert!(
                !policy.observe(5 * MIB),
                "5 MiB stayed: it is the new low point"
            );
        }
        assert!(policy.observe(7 * MIB), "and 2 MiB above it trims again");
    }

    #[test]
    fn a_heap_that_keeps_its_slack_is_left_alone() {
        let mut policy = TrimPolicy::default();
        for slack in [5 * MIB, 6 * MIB, 5 * MIB, 6 * MIB, 5 * MIB] {
            assert!(!policy.observe(slack));
        }
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_slack_is_read() {
        assert!(slack_bytes().is_some());
    }
}
