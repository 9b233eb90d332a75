//! The nemesis suite: faults injected into five real agents in network namespaces, and after
//! each heals, a check that the cluster came back whole within 10 s (see
//! `shoal_tests::nemesis`).
//!
//! - `nemesis_short` (in `cargo test`): every kind of fault once, in a fixed order.
//! - `nemesis_long` (ignored; run it by name): a random fault every 10 s for
//!   `SHOAL_NEMESIS_MINUTES` (10), from `SHOAL_NEMESIS_SEED` (random, printed): the same seed
//!   replays the same faults.
//!
//! Both need root (network namespaces, iptables, tmpfs); they skip with a printed reason
//! otherwise, unless `SHOAL_REQUIRE_ROOT=1`.

use std::time::{Duration, Instant};

use shoal_tests::nemesis::{Bed, Fault, RECOVERY_LIMIT, Rng, random_fault, ring};
use shoal_tests::running_as_root;

const AGENTS: usize = 5;

/// What one fault did: how long the cluster took to come back whole after the heal.
struct Outcome {
    fault: String,
    recovered: Duration,
    note: String,
}

/// Injects `fault`, holds it for `hold` with the writer running, heals it and waits for the
/// cluster to be whole again; panics if it is not within [`RECOVERY_LIMIT`].
fn run_fault(bed: &mut Bed, fault: &Fault, hold: Duration) -> Outcome {
    let deaths_before = bed.deaths().unwrap_or_default();
    let heal = bed
        .inject(fault)
        .unwrap_or_else(|e| panic!("injecting {}: {e}", fault.name()));
    std::thread::sleep(hold);
    let mut note = String::new();
    if matches!(fault, Fault::Loss(_) | Fault::Duplicate) {
        // Loss alone must not make anyone declare a healthy agent dead.
        let after = bed.deaths().unwrap_or_default();
        assert_eq!(
            deaths_before,
            after,
            "{}: deaths were declared (by agent: before {deaths_before:?}, after {after:?})",
            fault.name()
        );
        note.push_str("no death declared; ");
    }
    let healed_at = Instant::now();
    let refusal = bed
        .heal(heal)
        .unwrap_or_else(|e| panic!("healing {}: {e}", fault.name()));
    if refusal.is_none() && matches!(fault, Fault::TruncateState(..) | Fault::FlipState(_)) {
        // It started: the damage missed every page it reads (free space), or it repaired it.
        // Whether what it serves is right, the checks below say (its digest must match).
        note.push_str("started: the damage missed the live pages; ");
    }
    if let Some(said) = refusal {
        // A damaged state file: refused, with a message that says so.
        assert!(
            said.contains("corrupt") || said.contains("state.redb"),
            "{}: the agent exited without saying why:\n{said}",
            fault.name()
        );
        let line = said
            .lines()
            .find(|l| l.contains("state.redb"))
            .unwrap_or("")
            .trim();
        note.push_str(&format!("refused to start: {line}; "));
    }
    bed.wait(
        &format!("the cluster whole after {}", fault.name()),
        RECOVERY_LIMIT,
        Bed::whole,
    );
    let recovered = healed_at.elapsed();
    eprintln!("{}: whole again {recovered:?} after the heal", fault.name());
    Outcome {
        fault: fault.name(),
        recovered,
        note,
    }
}

fn report(outcomes: &[Outcome], bed: &Bed) {
    let ledger = bed.ledger.lock().unwrap();
    eprintln!(
        "writes: {} acknowledged, {} refused, {} unanswered",
        ledger.acked.len(),
        ledger.refused.len(),
        ledger.unknown.len()
    );
    for o in outcomes {
        eprintln!(
            "{:<45} whole again {:>6} ms after the heal  {}",
            o.fault,
            o.recovered.as_millis(),
            o.note
        );
    }
}

#[test]
fn nemesis_short() {
    if !running_as_root("nemesis_short", "network namespaces, iptables and tmpfs") {
        return;
    }
    let mut bed = Bed::start("nemesis-short", AGENTS);
    bed.start_writer(Duration::from_millis(200), 1);
    let minority = vec![3, 4];
    let majority = vec![0, 1, 2];
    let mut faults = vec![
        Fault::Kill(vec![1]),
        Fault::Kill(minority.clone()),
        Fault::Kill((0..AGENTS).collect()),
        Fault::Pause(2),
        Fault::Partition(vec![vec![4], vec![0, 1, 2, 3]]),
        Fault::Partition(vec![majority, minority]),
        Fault::Partition(ring(AGENTS)),
        Fault::Loss(20),
        Fault::Duplicate,
        Fault::ClockBump(3, 2_000),
        Fault::ClockDrift(0, -200_000),
        Fault::DiskFull(1),
        Fault::KillDuringRuntimeOps(2),
        Fault::TruncateState(4, 50),
        Fault::FlipState(3),
    ];
    if bed.net.can_delay() {
        faults.push(Fault::Delay(100));
    } else {
        eprintln!("nemesis_short: no delay fault: this kernel has no netem (tc qdisc netem)");
    }
    let mut outcomes = Vec::new();
    for fault in &faults {
        // Longer than the suspicion timeout, so that pauses and partitions declare deaths.
        outcomes.push(run_fault(&mut bed, fault, Duration::from_secs(4)));
    }
    bed.stop_writer();
    bed.wait("the last writes everywhere", RECOVERY_LIMIT, Bed::whole);
    report(&outcomes, &bed);
    let ledger = bed.ledger.lock().unwrap();
    assert!(ledger.acked.len() > 50, "too few writes were acknowledged");
}

#[test]
#[ignore = "ten minutes of faults: run it by name"]
fn nemesis_long() {
    if !running_as_root("nemesis_long", "network namespaces, iptables and tmpfs") {
        return;
    }
    let seed = std::env::var("SHOAL_NEMESIS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let minutes: u64 = std::env::var("SHOAL_NEMESIS_MINUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    eprintln!("nemesis_long: seed {seed} (SHOAL_NEMESIS_SEED={seed} replays it), {minutes} min");
    let mut bed = Bed::start("nemesis-long", AGENTS);
    bed.start_writer(Duration::from_millis(200), seed);
    let can_delay = bed.net.can_delay();
    let mut rng = Rng(seed);
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let mut outcomes = Vec::new();
    while Instant::now() < end {
        let round = Instant::now();
        let fault = random_fault(&mut rng, AGENTS, can_delay);
        eprintln!("nemesis_long: {}", fault.name());
        outcomes.push(run_fault(&mut bed, &fault, Duration::from_secs(4)));
        // One fault every 10 s, or at once when recovering took longer.
        std::thread::sleep(Duration::from_secs(10).saturating_sub(round.elapsed()));
    }
    bed.stop_writer();
    bed.wait("the last writes everywhere", RECOVERY_LIMIT, Bed::whole);
    report(&outcomes, &bed);
}
