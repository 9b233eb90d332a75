//! Freed memory goes back to the operating system (in its own test binary: the resident size
//! it measures is the whole process's).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn freed_memory_goes_back_to_the_system() {
    use shoal_agent::memory::give_back;

    fn rss_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
    // Many small blocks from another thread (its own arena), touched, then freed while one
    // block allocated after them lives on: the arena's top cannot shrink past it, and glibc
    // keeps the freed pages below it mapped (as when a workload's records go while newer
    // state stays).
    let (held, pin) = std::thread::spawn(|| {
        let blocks: Vec<Vec<u8>> = (0..200_000).map(|i| vec![i as u8; 500]).collect();
        let pin = vec![1u8; 500];
        let held = rss_kb();
        drop(blocks);
        (held, pin)
    })
    .join()
    .expect("thread");
    let after_free = rss_kb();
    assert!(
        after_free + 50_000 > held,
        "glibc kept the freed pages: {held} kB held, {after_free} kB after the free"
    );
    assert!(give_back(), "free pages were released");
    let after_trim = rss_kb();
    assert!(
        after_trim + 50_000 < after_free,
        "{held} kB held, {after_free} kB after the free, {after_trim} kB after the trim"
    );
    drop(pin);
}
