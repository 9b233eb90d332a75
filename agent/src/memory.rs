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
//!
//! Two more savings for a long-running daemon: the binary's code is read in page by page as it
//! runs, and the code run only while starting is let go once the agent has settled
//! ([`drop_startup_code`]); and the agent's threads share two malloc arenas
//! ([`limit_arenas`]). Together they took an idle agent from about 16 MB resident to 14 MB.

use std::time::{Duration, Instant};

use tracing::debug;

/// How often freed memory is given back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(10);
/// How long after its start the agent lets go of its start-up code ([`drop_startup_code`]).
const STARTUP: Duration = Duration::from_secs(20);

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
    let started = Instant::now();
    let mut code_dropped = false;
    loop {
        tick.tick().await;
        if !code_dropped && started.elapsed() >= STARTUP {
            code_dropped = true;
            let dropped = tokio::task::spawn_blocking(drop_startup_code)
                .await
                .unwrap_or(0);
            debug!(dropped, "code run only at start-up let go");
        }
        if policy.observe(size()) {
            let _ = tokio::task::spawn_blocking(give_back).await;
        }
    }
}

/// This program's own mappings: (start, length, whether executable).
fn own_mappings() -> Vec<(usize, usize, bool)> {
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return Vec::new();
    };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in maps.lines() {
        // `start-end perms offset dev inode path`
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if fields.nth(3).map(std::path::Path::new) != Some(exe.as_path()) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        if let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) {
            out.push((start, end - start, perms.starts_with("r-x")));
        }
    }
    out
}

/// Reads this program's own file pages in as they are used, without read-ahead: a fault on
/// the binary brings in the page it needs rather than a window around it. Call it first thing.
/// Returns how many bytes of mappings were advised.
pub fn map_own_code_sparsely() -> usize {
    own_mappings()
        .into_iter()
        .filter(|&(start, len, _)| advise(start, len, Advice::Random))
        .map(|(_, len, _)| len)
        .sum()
}

/// Lets go of the code pages this process has mapped so far: they stay in the page cache
/// (shared with every other process running the binary), and the ones still in use are
/// mapped again by the next call into them, a minor fault each. An agent runs most of its
/// code once, while it starts (command line, storage, transport, TLS and API set-up): about
/// two thirds of an idle agent's resident memory was code it would not run again. Only
/// read-only executable mappings are dropped; nothing of the program's data is touched.
/// Returns how many bytes of mappings were dropped.
pub fn drop_startup_code() -> usize {
    own_mappings()
        .into_iter()
        .filter(|&(start, len, exec)| exec && advise(start, len, Advice::DontNeed))
        .map(|(_, len, _)| len)
        .sum()
}

enum Advice {
    Random,
    DontNeed,
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn advise(start: usize, len: usize, advice: Advice) -> bool {
    let advice = match advice {
        Advice::Random => libc::MADV_RANDOM,
        Advice::DontNeed => libc::MADV_DONTNEED,
    };
    // SAFETY: the range is one of this process's own file mappings as the kernel lists it,
    // page aligned. MADV_RANDOM only changes how later faults are served. MADV_DONTNEED is
    // only used on read-only executable mappings of the binary, whose pages are never written:
    // dropped, they read back from the file unchanged on the next access.
    unsafe { libc::madvise(start as *mut libc::c_void, len, advice) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn advise(_start: usize, _len: usize, _advice: Advice) -> bool {
    false
}

/// How many malloc arenas the agent's threads share. glibc gives threads arenas of their own
/// (up to 8 per core), and each keeps its freed pages mapped: an idle agent held about a
/// megabyte more in them. The agent's few threads (two workers, membership, persistence)
/// share two; its allocation rate under load is too low for the arena locks to contend
/// (3,000 pods started in 15 s cost no more CPU).
const ARENAS: i32 = 2;

/// Limits the allocator's arenas to [`ARENAS`]; call before any thread starts. Returns
/// whether the allocator took the limit (glibc only).
pub fn limit_arenas() -> bool {
    set_arena_max(ARENAS)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(arenas: i32) -> bool {
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes effect for arenas
    // created from now on.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) -> bool {
    false
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

    #[test]
    #[cfg(target_os = "linux")]
    fn the_binary_keeps_running_after_its_code_is_let_go() {
        let mappings = own_mappings();
        assert!(
            mappings.iter().any(|&(_, _, exec)| exec),
            "the test binary has executable mappings: {mappings:?}"
        );
        assert!(map_own_code_sparsely() > 0);
        let dropped = drop_startup_code();
        assert!(dropped > 0, "no code was let go");
        // The code runs on from the file: a call into anything, formatting and collections.
        let mut p = TrimPolicy::default();
        assert!(!p.observe(5_000));
        assert!(p.observe(0));
        assert_eq!(format!("{:?}", vec![1, 2, 3]), "[1, 2, 3]");
        assert_eq!(drop_startup_code(), dropped, "the same mappings, again");
    }
}
