//! Scenarios of the whole cluster, as data.

use std::time::Duration;

use super::scenario::{Cond, Op, Scenario};
use super::standard::deployment_yaml;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn a_deployment_converges_to_its_replicas() {
    let scenario = Scenario::lan(
        5,
        1,
        vec![
            Op::Apply {
                node: 0,
                yaml: deployment_yaml("web", 7),
            },
            Op::Expect(Cond::Settled, secs(10)),
        ],
    );
    if let Err(e) = scenario.run() {
        panic!("{e}");
    }
}

#[test]
fn debug_fifty() {
    let mut sim = super::ClusterSim::new(super::ClusterConfig::lan(50, 1));
    for k in 0..5 {
        sim.apply(k, &deployment_yaml(&format!("d{k}"), 40)).unwrap();
    }
    sim.run_for(secs(10));
    let t = &sim.truth;
    eprintln!("serving {} total {}", t.serving_pods, t.pods_total);
    let mut per: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for (_, p) in t.pods() {
        per.entry(p.replica.workload.clone()).or_default().push(p.replica.ordinal);
    }
    for (w, mut o) in per { o.sort(); eprintln!("{w}: {} {:?}", o.len(), o); }
    let i = 0;
    let node = &sim.nodes[i];
    let (g, board) = sim.boards.of(i);
    let mut cache = super::planner::PlanCache::default();
    let p = cache.plan(&node.view, (g, board.version, &board.snapshot), &sim.facts, None, 0);
    for u in &p.plan.unschedulable { eprintln!("unsched {:?} {}", u.ordinals, u.reason); }
    eprintln!("placed {}", p.plan.pods().count());
    for (i, n) in sim.nodes.iter().enumerate() { let d = n.desired.len(); let r = n.rt.pod_uids().len(); if d != r { eprintln!("n{i} desired {d} runtime {r}"); } }
}
