//! Scenarios of the whole cluster, as data: gossip, planner and supervisors together, each
//! node planning from its own view.

use std::time::Duration;

use super::scenario::{Cond, Op, Scenario};
use super::standard::{Standard, deployment_yaml, run};
use super::{ClusterConfig, ClusterSim};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn web(replicas: u64) -> Op {
    Op::Apply {
        node: 0,
        yaml: deployment_yaml("web", replicas),
    }
}

fn run_ok(scenario: Scenario) -> ClusterSim {
    match scenario.run() {
        Ok(sim) => sim,
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn a_killed_node_has_every_replica_rescheduled_with_exact_counts() {
    let sim = run_ok(Scenario::lan(
        6,
        1,
        vec![
            web(12),
            Op::Expect(Cond::Settled, secs(10)),
            Op::Kill(2),
            Op::Expect(Cond::Settled, secs(20)),
            // And it stays so.
            Op::Hold(Cond::Settled, secs(5)),
        ],
    ));
    let kill = &sim.truth().kills[0];
    assert!(kill.lost > 0, "the killed node ran replicas");
    assert!(kill.done.is_some(), "its replicas serve elsewhere");
    // Every replica started once, and once more for each one lost: nothing else moved.
    assert_eq!(sim.truth().starts, sim.truth().minimum_starts());
}

#[test]
fn a_partition_and_heal_converge_to_exactly_the_replicas() {
    run_ok(Scenario::lan(
        6,
        2,
        vec![
            web(8),
            Op::Expect(Cond::Settled, secs(10)),
            Op::Partition(vec![vec![0, 1, 2]]),
            // Each side declares the other dead and runs every replica itself.
            Op::Expect(Cond::Serving("web".into(), 16), secs(30)),
            Op::Heal,
            Op::Expect(Cond::Settled, secs(60)),
            Op::Hold(Cond::Settled, secs(5)),
        ],
    ));
}

#[test]
fn scaling_up_and_down_runs_exactly_the_replicas_asked_for() {
    run_ok(Scenario::lan(
        5,
        3,
        vec![
            web(4),
            Op::Expect(Cond::Settled, secs(10)),
            Op::Scale {
                node: 3,
                deployment: "web".into(),
                replicas: 11,
            },
            Op::Expect(Cond::Settled, secs(10)),
            Op::Scale {
                node: 1,
                deployment: "web".into(),
                replicas: 2,
            },
            Op::Expect(Cond::Settled, secs(10)),
            Op::Hold(Cond::Settled, secs(3)),
        ],
    ));
}

#[test]
fn a_rolling_update_never_dips_below_replicas_minus_max_unavailable() {
    // 8 replicas, maxUnavailable 25%: at least 6 serve at every moment.
    run_ok(Scenario::lan(
        5,
        4,
        vec![
            web(8),
            Op::Expect(Cond::Settled, secs(10)),
            Op::Rollout {
                node: 4,
                deployment: "web".into(),
                revision: "2".into(),
            },
            Op::Hold(Cond::Serving("web".into(), 6), secs(20)),
            Op::Expect(Cond::Settled, secs(20)),
        ],
    ));
}

#[test]
fn a_restarted_node_comes_back_empty_and_the_count_stays_exact() {
    run_ok(Scenario::lan(
        5,
        5,
        vec![
            web(10),
            Op::Expect(Cond::Settled, secs(10)),
            Op::Kill(1),
            Op::Expect(Cond::Settled, secs(20)),
            Op::Restart(1),
            Op::Wait(secs(5)),
            Op::Expect(Cond::Settled, secs(20)),
        ],
    ));
}

fn small_run(seed: u64) -> Standard {
    Standard {
        cluster: ClusterConfig::lan(12, seed),
        deployments: 3,
        replicas: 30,
        kill: 2,
        kill_every: secs(4),
        converge_timeout: secs(30),
        settle_timeout: secs(30),
        partition: None,
    }
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let report = |seed| {
        let mut r = run(&small_run(seed)).expect("runs");
        r.plan_wall_ms = 0.0;
        r
    };
    let first = report(7);
    assert!(first.settled, "{first:?}");
    assert_eq!(first.kills, 2);
    assert_eq!(first.not_rescheduled, 0);
    assert_eq!(report(7), first);
}
