//! Giving freed memory back to the operating system.
//!
//! The agent's memory follows what the cluster runs: a few tens of kilobytes per replica for
//! its records, plans and supervisor state. When workloads go, that memory is freed, but
//! glibc's allocator keeps freed pages of its per-thread arenas mapped (only the top of the
//! main heap is returned by itself), so the agent's resident size would stay at its high-water
//! mark: after 2,000 pods were deleted, 145 MB resident of which 84 MB was free. When what the
//! agent holds has shrunk, `malloc_trim(0)` returns every free page of every arena; it costs
//! a walk over the free chunks (about a millisecond per 100 MB) and is skipped on other
//! allocators.

use std::time::{Duration, Instant};

use tracing::debug;

/// How often freed memory is given back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Gives free heap pages back to the operating system; returns whether any were.
pub fn give_back() -> bool {
    let start = Instant::now();
    let released = trim();
    debug!(
        released,
        took_us = start.elapsed().as_micros() as u64,
        "freed memory given back"
    );
    released
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks and releases the allocator's own free lists; it is
    // thread-safe (it takes each arena's lock) and has no preconditions.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

/// Decides when a trim is worth it: when what the agent holds (objects and pod records) has
/// shrunk by at least a tenth, and by at least [`MIN_SHRINK`] items, since its peak after the
/// last trim. An idle or growing agent never trims (a trim gives back pages that the next
/// allocations would fault in again).
#[derive(Debug, Default)]
pub struct TrimPolicy {
    peak: usize,
}

/// The fewest items gone before a trim.
pub const MIN_SHRINK: usize = 100;

impl TrimPolicy {
    /// The agent holds `size` items now; returns whether to trim.
    pub fn observe(&mut self, size: usize) -> bool {
        self.peak = self.peak.max(size);
        let gone = self.peak - size;
        if gone >= MIN_SHRINK && gone * 10 >= self.peak {
            self.peak = size;
            true
        } else {
            false
        }
    }
}

/// Every [`TRIM_INTERVAL`], gives freed memory back (off the async workers) when `size` (what
/// the agent holds) has shrunk enough ([`TrimPolicy`]).
pub(crate) async fn give_back_when_shrunk(size: impl Fn() -> usize + Send + 'static) {
    let mut policy = TrimPolicy::default();
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if policy.observe(size()) {
            let _ = tokio::task::spawn_blocking(give_back).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_real_shrink() {
        let mut p = TrimPolicy::default();
        // Idle and growing: never.
        assert!(!p.observe(0));
        assert!(!p.observe(0));
        assert!(!p.observe(5_000));
        assert!(!p.observe(4_990), "10 items are noise");
        assert!(!p.observe(4_600), "400 of 5,000 is less than a tenth");
        assert!(p.observe(4_000), "a fifth gone");
        assert!(!p.observe(4_000), "once per shrink");
        assert!(!p.observe(3_700));
        assert!(p.observe(0), "everything gone");
        assert!(!p.observe(50));
        assert!(!p.observe(0), "50 items are too few to bother");
    }
}
