//! Scenario tests of the real protocol on the deterministic simulator.
//!
//! Each scenario is data (`Op`s); a failure prints its step and seed, and
//! `SHOAL_SIM_SEED=<seed>` replays it (or tries another seed).

use std::time::Duration;

use shoal_gossip::MemberState::{Alive, Dead, Left, Suspect};
use shoal_gossip::scenario::{Cond, Op, Scenario};
use shoal_gossip::sim::{Plan, Sim, SimConfig};
use shoal_gossip::{Key, ObjectKey};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn run(scenario: Scenario) -> Sim {
    match scenario.run() {
        Ok(sim) => sim,
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn nodes_join_through_any_member_and_converge() {
    let sim = run(Scenario::lan(
        3,
        11,
        vec![
            Op::Write {
                node: 0,
                name: "before".into(),
                len: 50,
            },
            Op::AddNodes(5),
            Op::Expect(Cond::Converged, secs(10)),
            // The joiners pulled the state written before they came.
            Op::Expect(Cond::HasObject("before".into()), secs(5)),
            Op::Expect(Cond::StoresEqual, secs(10)),
        ],
    ));
    assert_eq!(sim.up_nodes().len(), 8);
    for i in 3..8 {
        assert!(
            sim.node(i).unwrap().is_synced(),
            "n{i} finished bulk catch-up"
        );
    }
}

#[test]
fn crashed_node_is_declared_dead_by_everyone() {
    run(Scenario::lan(
        20,
        12,
        vec![
            Op::Wait(secs(2)),
            Op::Crash(7),
            Op::Expect(Cond::SeenAs(7, Dead), secs(10)),
            Op::Expect(Cond::Converged, secs(5)),
        ],
    ));
}

#[test]
fn short_pause_is_refuted_without_being_declared_dead() {
    run(Scenario::lan(
        20,
        13,
        vec![
            Op::Wait(secs(2)),
            Op::Pause(4),
            // Long enough to be probed and suspected, shorter than the suspicion timeout.
            Op::Expect(Cond::NotSeenAs(4, Alive), secs(5)),
            Op::Resume(4),
            Op::Expect(Cond::SeenAs(4, Alive), secs(5)),
        ],
    ));
}

#[test]
fn paused_node_declared_dead_comes_back_by_itself_and_catches_up() {
    let sim = run(Scenario::lan(
        10,
        14,
        vec![
            Op::Wait(secs(2)),
            Op::Pause(3),
            Op::Expect(Cond::SeenAs(3, Dead), secs(30)),
            Op::Write {
                node: 0,
                name: "during-pause".into(),
                len: 64,
            },
            Op::Wait(secs(30)),
            Op::Resume(3),
            Op::Expect(Cond::Converged, secs(15)),
            Op::Expect(Cond::HasObject("during-pause".into()), secs(10)),
        ],
    ));
    assert!(
        sim.node(3).unwrap().incarnation() > 0,
        "it refuted its death"
    );
}

#[test]
fn partition_longer_than_suspicion_heals_by_itself() {
    run(Scenario::lan(
        12,
        15,
        vec![
            Op::Wait(secs(2)),
            Op::Partition(vec![(0..6).collect(), (6..12).collect()]),
            // Each side declares the other dead.
            Op::Expect(Cond::SeenAsBy((6..12).collect(), 0, Dead), secs(30)),
            Op::Expect(Cond::SeenAsBy((0..6).collect(), 11, Dead), secs(30)),
            Op::Write {
                node: 1,
                name: "left-side".into(),
                len: 10,
            },
            Op::Write {
                node: 7,
                name: "right-side".into(),
                len: 10,
            },
            Op::Wait(secs(60)),
            Op::Heal,
            // Dead members are probed every 2 s, so the sides find each other within seconds.
            Op::Expect(Cond::Converged, secs(10)),
            Op::Expect(Cond::HasObject("left-side".into()), secs(10)),
            Op::Expect(Cond::HasObject("right-side".into()), secs(10)),
            Op::Expect(Cond::StoresEqual, secs(20)),
        ],
    ));
}

#[test]
fn graceful_leave_is_seen_within_a_second() {
    run(Scenario::lan(
        30,
        16,
        vec![
            Op::Wait(secs(2)),
            Op::Leave(9),
            // Well under a second: the announcement is pushed, not left to anti-entropy.
            Op::Expect(Cond::SeenAs(9, Left), Duration::from_millis(200)),
        ],
    ));
}

#[test]
fn restart_with_persisted_state_rejoins_with_higher_incarnation() {
    let sim = run(Scenario::lan(
        8,
        17,
        vec![
            Op::Write {
                node: 2,
                name: "kept".into(),
                len: 10,
            },
            Op::Wait(secs(2)),
            Op::Crash(5),
            Op::Expect(Cond::SeenAs(5, Dead), secs(15)),
            Op::Restart {
                node: 5,
                keep_state: true,
            },
            Op::Expect(Cond::SeenAs(5, Alive), secs(10)),
            Op::Expect(Cond::Converged, secs(10)),
        ],
    ));
    let node = sim.node(5).unwrap();
    assert!(node.incarnation() >= 1);
    assert!(
        node.store()
            .iter()
            .any(|(k, _)| k.to_string().contains("kept"))
    );
}

#[test]
fn restart_without_state_refutes_its_old_death() {
    run(Scenario::lan(
        8,
        18,
        vec![
            Op::Wait(secs(2)),
            Op::Crash(1),
            Op::Expect(Cond::SeenAs(1, Dead), secs(15)),
            Op::Restart {
                node: 1,
                keep_state: false,
            },
            Op::Expect(Cond::Converged, secs(10)),
        ],
    ));
}

#[test]
fn writes_reach_everyone_under_heavy_loss() {
    run(Scenario::lan(
        40,
        19,
        vec![
            Op::Loss(0.3),
            Op::Write {
                node: 0,
                name: "lossy".into(),
                len: 200,
            },
            Op::Expect(Cond::HasObject("lossy".into()), secs(10)),
            Op::Delete {
                node: 5,
                name: "lossy".into(),
            },
            Op::Expect(Cond::NoObject("lossy".into()), secs(10)),
        ],
    ));
}

#[test]
fn large_object_is_fragmented_and_reassembled_everywhere() {
    let sim = run(Scenario::lan(
        10,
        20,
        vec![
            Op::Write {
                node: 0,
                name: "big".into(),
                len: 20_000,
            },
            Op::Expect(Cond::HasObject("big".into()), secs(5)),
        ],
    ));
    assert!(
        sim.max_message_bytes() <= 1200,
        "{}",
        sim.max_message_bytes()
    );
}

#[test]
fn every_message_fits_a_minimum_quic_datagram() {
    let plan = Plan {
        seconds: secs(30),
        writes_per_s: 5.0,
        value_bytes: 900,
        kill: 3,
        slow: 1,
        partition: Some((secs(10), secs(18))),
    };
    let mut config = SimConfig::lan(60, 31);
    config.loss = 0.05;
    let report = Sim::run_standard(config, &plan);
    assert!(report.max_message_bytes <= 1200, "{report:?}");
    assert_eq!(report.undelivered, 0, "{report:?}");
}

#[test]
fn missed_update_is_repaired_by_anti_entropy_after_gossip_gave_up() {
    run(Scenario::lan(
        10,
        21,
        vec![
            Op::Partition(vec![vec![9]]),
            Op::Write {
                node: 0,
                name: "missed".into(),
                len: 10,
            },
            // Long enough for every retransmission to be spent, shorter than suspicion.
            Op::Wait(Duration::from_millis(1500)),
            Op::Heal,
            Op::Expect(Cond::HasObject("missed".into()), secs(10)),
        ],
    ));
}

#[test]
fn slow_node_does_not_get_healthy_nodes_declared_dead() {
    let mut scenario = Scenario::lan(
        20,
        22,
        vec![Op::Slow(3), Op::Hold(Cond::NotSeenAs(0, Dead), secs(60))],
    );
    scenario.config.loss = 0.05;
    let sim = run(scenario);
    for i in (0..20).filter(|&i| i != 3) {
        for j in (0..20).filter(|&j| j != 3 && j != i) {
            assert_ne!(sim.view(i, j), Some(Dead), "n{i} sees healthy n{j} dead");
        }
    }
}

#[test]
fn same_seed_gives_the_same_run_bit_for_bit() {
    let plan = Plan {
        seconds: secs(20),
        writes_per_s: 2.0,
        value_bytes: 100,
        kill: 2,
        slow: 1,
        partition: None,
    };
    let mut config = SimConfig::lan(30, 99);
    config.loss = 0.05;
    let a = Sim::run_standard(config.clone(), &plan);
    let b = Sim::run_standard(config.clone(), &plan);
    assert_eq!(a, b);
    config.seed = 100;
    let c = Sim::run_standard(config, &plan);
    assert_ne!(a, c, "another seed gives another run");
}

#[test]
fn garbage_bytes_are_counted_and_change_nothing() {
    let mut sim = Sim::new(SimConfig::lan(3, 23));
    sim.run_for(secs(1));
    let before = sim.node(0).unwrap().store().fingerprint();
    let members_before: Vec<_> = sim.node(0).unwrap().members().cloned().collect();
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![1],
        vec![1, 0xff, 0xff, 0xff],
        vec![2, 1, 2, 3],
        vec![0xff; 2000],
        (0..=255).collect(),
    ];
    for bytes in &inputs {
        sim.inject(0, "attacker", bytes);
    }
    let node = sim.node(0).unwrap();
    assert_eq!(node.stats().decode_errors, inputs.len() as u64);
    assert_eq!(node.store().fingerprint(), before);
    let members_after: Vec<_> = node.members().cloned().collect();
    assert_eq!(members_after, members_before);
}

#[test]
fn suspicion_is_visible_before_death() {
    run(Scenario::lan(
        10,
        24,
        vec![
            Op::Wait(secs(1)),
            Op::Crash(2),
            Op::Expect(Cond::SomeoneSeesAs(2, Suspect), secs(5)),
            Op::Expect(Cond::SeenAs(2, Dead), secs(15)),
        ],
    ));
}

#[test]
fn a_node_left_alone_keeps_nothing_queued_and_its_writes_reach_later_members() {
    let mut sim = Sim::new(SimConfig::lan(2, 31));
    sim.run_for(secs(2));
    sim.crash(1);
    sim.run_for(secs(10));
    for i in 0..500 {
        sim.write_named(0, &format!("alone-{i}"), Some(vec![7; 200]))
            .expect("its clock agrees with the one member it measured");
    }
    sim.run_for(secs(1));
    let alone = sim.node(0).expect("up");
    assert_eq!(alone.queued_updates(), 0, "nobody to send to");
    assert_eq!(alone.store().len(), 500 + 2, "the writes are kept");
    // A node that comes back gets every write by anti-entropy.
    sim.restart(1, None, 0);
    sim.run_for(secs(20));
    let back = sim.node(1).expect("up");
    for i in [0, 250, 499] {
        let key = shoal_gossip::Key::Object(shoal_gossip::ObjectKey::new(
            "sim",
            "default",
            format!("alone-{i}"),
        ));
        assert!(back.store().get(&key).is_some(), "alone-{i} reached n1");
    }
}

#[test]
fn a_burst_of_writes_reaches_nearly_every_node_at_once() {
    // One `apply` of many objects: 60 writes of 500 bytes at once, two to a message. A gossip
    // round that carries one message per member drains such a burst a message per round.
    let mut sim = Sim::new(SimConfig::lan(200, 41));
    sim.run_for(secs(2));
    let names: Vec<String> = (0..60).map(|i| format!("burst-{i}")).collect();
    for name in &names {
        sim.write_named(0, name, Some(vec![7; 500]))
            .expect("the clocks were compared in 2 s");
    }
    let started = sim.now();
    let holding = |sim: &Sim| {
        (0..sim.len())
            .filter(|&i| {
                let node = sim.node(i).expect("up");
                names.iter().all(|name| {
                    let key = ObjectKey::new("sim", "default", name);
                    node.store().get(&Key::Object(key)).is_some()
                })
            })
            .count()
    };
    sim.run_for(Duration::from_millis(300));
    let early = holding(&sim);
    // One message per member and round left 180 of the 200 with the whole burst by then.
    assert!(
        early >= 190,
        "{early} of 200 nodes hold the burst after 300 ms"
    );
    // The few that every push missed get the rest from anti-entropy.
    while holding(&sim) < sim.len() {
        assert!(
            sim.now().saturating_since(started) < secs(5),
            "{} of 200 nodes hold the burst after 5 s",
            holding(&sim)
        );
        sim.run_for(Duration::from_millis(20));
    }
}

#[test]
fn a_node_whose_clock_is_off_refuses_writes_and_no_later_write_is_undone() {
    const MINUTES_5: i64 = 5 * 60_000;
    const HOURS_26: i64 = 26 * 3_600_000;
    let sim = run(Scenario::lan(
        5,
        51,
        vec![
            // Started 5 minutes ahead: its peers' clocks disagree with it from the first
            // probes, and it refuses to stamp a write that would beat later ones.
            Op::Clock {
                node: 4,
                offset_ms: MINUTES_5,
            },
            Op::Wait(secs(3)),
            Op::WriteRefused {
                node: 4,
                name: "ahead".into(),
            },
            Op::Write {
                node: 0,
                name: "fine".into(),
                len: 10,
            },
            Op::Expect(Cond::HasObject("fine".into()), secs(5)),
            // 26 hours behind: its writes would be taken for resurrections everywhere.
            Op::Clock {
                node: 3,
                offset_ms: -HOURS_26,
            },
            Op::WriteRefused {
                node: 3,
                name: "behind".into(),
            },
            // Back on time, it writes again once a probe round has measured it.
            Op::Clock {
                node: 3,
                offset_ms: 0,
            },
            Op::Wait(secs(5)),
            Op::Write {
                node: 3,
                name: "on-time".into(),
                len: 10,
            },
            Op::Expect(Cond::HasObject("on-time".into()), secs(5)),
            // Alone in a partition, a node whose clock is then stepped 5 minutes ahead knows
            // it without hearing from anyone: its own jump counts against every measurement.
            Op::Partition(vec![vec![0, 1, 2, 3], vec![4]]),
            Op::Clock {
                node: 2,
                offset_ms: 0,
            },
            Op::Wait(secs(10)),
            Op::Partition(vec![vec![0, 1, 3, 4], vec![2]]),
            Op::Wait(secs(1)),
            Op::Clock {
                node: 2,
                offset_ms: MINUTES_5,
            },
            Op::WriteRefused {
                node: 2,
                name: "scale-to-3".into(),
            },
            Op::Write {
                node: 0,
                name: "scale-to-9".into(),
                len: 9,
            },
            Op::Heal,
            Op::Expect(Cond::HasObject("scale-to-9".into()), secs(10)),
            Op::Expect(Cond::NoObject("scale-to-3".into()), secs(1)),
        ],
    ));
    let refused = sim.node(4).expect("up").stats().writes_refused_clock;
    assert!(refused >= 1, "the node ahead counted its refusals");
}

#[test]
fn two_nodes_whose_clocks_differ_both_refuse_writes() {
    // With two members there is no majority to say whose clock is right.
    run(Scenario::lan(
        2,
        52,
        vec![
            Op::Clock {
                node: 1,
                offset_ms: 60_000,
            },
            Op::Wait(secs(3)),
            Op::WriteRefused {
                node: 0,
                name: "a".into(),
            },
            Op::WriteRefused {
                node: 1,
                name: "b".into(),
            },
            Op::Clock {
                node: 1,
                offset_ms: 100,
            },
            Op::Wait(secs(3)),
            Op::Write {
                node: 0,
                name: "a".into(),
                len: 1,
            },
            Op::Write {
                node: 1,
                name: "b".into(),
                len: 1,
            },
            Op::Expect(Cond::HasObject("b".into()), secs(5)),
        ],
    ));
}
