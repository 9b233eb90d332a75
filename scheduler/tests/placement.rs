//! Behaviour of placement on hand-written clusters.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use shoal_scheduler::{
    ClusterView, Decision, Node, NodeId, NodeStatus, Options, Placement, Reason, Resources,
    Violation, Workload, WorkloadId, place, place_with,
};

fn nodes(n: usize) -> Vec<Node> {
    (0..n).map(|i| big_node(&format!("n{i}"))).collect()
}

fn placed_nodes(p: &Placement, w: &WorkloadId) -> Vec<NodeId> {
    p.workloads[w]
        .values()
        .filter_map(|d| d.node().cloned())
        .collect()
}

#[test]
fn every_replica_is_placed_and_the_checker_agrees() {
    let v = view(nodes(5));
    let ws = vec![
        Workload::deployment(wid("web"), 4, small()),
        Workload::deployment(wid("api"), 3, small()),
    ];
    let p = place(&v, &ws);
    assert_eq!(p.len(), 7);
    assert_eq!(p.assignments().count(), 7);
    p.check(&v, &ws).expect("valid placement");
}

#[test]
fn spread_puts_replicas_on_distinct_nodes_while_enough_exist() {
    let v = view(nodes(5));
    let ws = vec![Workload::deployment(wid("web"), 5, small())];
    let p = place(&v, &ws);
    let distinct: BTreeSet<_> = placed_nodes(&p, &wid("web")).into_iter().collect();
    assert_eq!(distinct.len(), 5);
}

#[test]
fn spread_evens_out_when_replicas_outnumber_nodes() {
    let v = view(nodes(3));
    let ws = vec![Workload::deployment(wid("web"), 7, small())];
    let p = place_with(
        &v,
        &ws,
        Options {
            epsilon_permille: 500,
        },
    );
    let mut per_node: BTreeMap<NodeId, u32> = BTreeMap::new();
    for n in placed_nodes(&p, &wid("web")) {
        *per_node.entry(n).or_default() += 1;
    }
    assert_eq!(per_node.values().sum::<u32>(), 7);
    assert!(per_node.values().all(|&c| c <= 3), "{per_node:?}");
}

#[test]
fn capacity_is_never_exceeded_and_the_rest_is_unschedulable_with_a_reason() {
    let v = view((0..3).map(|i| Node::new(format!("n{i}"), Resources::new(2000, 4 * GI))));
    let big = Resources::new(1500, GI);
    let ws = vec![Workload::deployment(wid("heavy"), 5, big).with_spread(false)];
    let p = place_with(
        &v,
        &ws,
        Options {
            epsilon_permille: 1000,
        },
    );
    p.check(&v, &ws).expect("valid");
    assert_eq!(p.assignments().count(), 3);
    let (_, reason) = p.unschedulable().next().expect("two are unschedulable");
    assert_eq!(
        reason.to_string(),
        "0/3 nodes can run it: 3 have less than 1500m cpu free"
    );
}

#[test]
fn unschedulable_reason_counts_each_node_under_its_first_problem() {
    let v = view([
        Node::new("a", Resources::new(3000, 8 * GI)).with_label("disk", "ssd"),
        Node::new("b", Resources::new(1000, 8 * GI)).with_label("disk", "ssd"),
        Node::new("c", Resources::new(4000, 8 * GI)),
        Node::new("d", Resources::new(4000, 8 * GI)),
        Node::new("e", Resources::new(4000, 8 * GI))
            .with_label("disk", "ssd")
            .with_status(NodeStatus::Dead),
    ]);
    let ws = vec![
        Workload::deployment(wid("db"), 2, Resources::new(2000, GI)).with_selector("disk", "ssd"),
    ];
    let p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    // The bound (1 replica) is never a reason: only a has room for one.
    assert_eq!(p.load_bound, 1);
    let reasons: Vec<String> = p.unschedulable().map(|(_, r)| r.to_string()).collect();
    assert_eq!(
        reasons,
        [
            "0/5 nodes can run it: 1 is not ready, 2 do not match selector disk=ssd, \
          2 have less than 2000m cpu free"
        ]
    );
}

fn gpu_cluster() -> ClusterView {
    view([
        big_node("n0").with_label("gpu", "yes"),
        big_node("n1"),
        big_node("n2"),
    ])
}

#[test]
fn a_narrow_selector_runs_all_its_replicas_past_the_load_bound() {
    // 5 replicas over 3 nodes: the bound is ceil(1.1 * 5 / 3) = 2, but only
    // the gpu node can run them and it has room for all 5.
    let v = gpu_cluster();
    let ws = vec![Workload::deployment(wid("train"), 5, small()).with_selector("gpu", "yes")];
    let p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    assert_eq!(p.load_bound, 2);
    assert_eq!(p.unschedulable().count(), 0, "{p:?}");
    assert_eq!(placed_nodes(&p, &wid("train")), vec![NodeId::new("n0"); 5]);
    let (running, p) = settle(&v, &ws, Options::default());
    assert_eq!(place(&running, &ws), p, "stable");
}

#[test]
fn a_node_over_the_bound_holds_only_what_could_go_nowhere_else() {
    // 6 gpu replicas and 6 flexible ones over 3 nodes: bound 5. The gpu
    // node takes the gpu replicas, the others go elsewhere.
    let v = gpu_cluster();
    let ws = vec![
        Workload::deployment(wid("train"), 6, small()).with_selector("gpu", "yes"),
        Workload::deployment(wid("web"), 6, small()).with_spread(false),
    ];
    let p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    assert_eq!(p.load_bound, 5);
    assert_eq!(p.unschedulable().count(), 0);
    assert!(
        placed_nodes(&p, &wid("web"))
            .iter()
            .all(|n| n.as_str() != "n0"),
        "{p:?}"
    );
    assert_eq!(p.loads()[&NodeId::new("n0")], 6);

    // Also when the flexible replicas were there first: the gpu workload
    // arrives in a running cluster, and web replicas on n0 make way.
    let web = vec![Workload::deployment(wid("web"), 6, small()).with_spread(false)];
    let (running, before) = settle(&v, &web, Options::default());
    assert!(before.loads().get(&NodeId::new("n0")).copied().unwrap_or(0) > 0);
    let after = place(&running, &ws);
    after.check(&running, &ws).expect("valid");
    assert_eq!(after.unschedulable().count(), 0);
    assert_eq!(after.loads()[&NodeId::new("n0")], 6, "{after:?}");
    let (again, after) = settle(&running, &ws, Options::default());
    assert_eq!(place(&again, &ws), after, "stable");
}

#[test]
fn over_the_bound_the_least_loaded_node_takes_the_overflow() {
    // Two gpu nodes and 10 replicas only they can run: the bound is 3, and
    // each replica past it goes to the less loaded of the two.
    let v = view([
        big_node("g0").with_label("gpu", "yes"),
        big_node("g1").with_label("gpu", "yes"),
        big_node("n2"),
        big_node("n3"),
    ]);
    let ws = vec![
        Workload::deployment(wid("train"), 10, small())
            .with_selector("gpu", "yes")
            .with_spread(false),
    ];
    let p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    assert_eq!(p.load_bound, 3);
    let loads = p.loads();
    assert_eq!(
        (loads[&NodeId::new("g0")], loads[&NodeId::new("g1")]),
        (5, 5),
        "{loads:?}"
    );
}

#[test]
fn selectors_are_always_honoured() {
    let mut ns = nodes(6);
    for n in ns.iter_mut().take(2) {
        n.labels.insert("gpu".into(), "yes".into());
    }
    let v = view(ns);
    let ws = vec![
        Workload::deployment(wid("train"), 2, small()).with_selector("gpu", "yes"),
        Workload::deployment(wid("web"), 6, small()),
    ];
    let p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    for n in placed_nodes(&p, &wid("train")) {
        assert!(n == NodeId::new("n0") || n == NodeId::new("n1"), "{n}");
    }
}

#[test]
fn bounded_load_holds_on_a_larger_cluster() {
    let v = view(nodes(40));
    let ws: Vec<Workload> = (0..50)
        .map(|i| Workload::deployment(wid(&format!("w{i}")), 1 + i % 30, small()))
        .collect();
    let total: u32 = ws.iter().map(|w| w.replicas.len() as u32).sum();
    let p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    let max = p.loads().values().copied().max().unwrap_or(0);
    let bound = (f64::from(total) * 1.1 / 40.0).ceil() as u32;
    assert_eq!(p.load_bound, bound);
    assert!(max <= bound, "max {max} over bound {bound}");
}

#[test]
fn suspect_node_keeps_its_replicas_but_gets_no_new_ones() {
    let v = view(nodes(4));
    let ws = vec![Workload::deployment(wid("web"), 4, small())];
    let (mut running, before) = settle(&v, &ws, Options::default());
    let suspect = before
        .node_of(&wid("web").replica(0))
        .expect("placed")
        .clone();
    running.node_mut(&suspect).expect("exists").status = NodeStatus::Suspect;
    let ws_more = vec![
        Workload::deployment(wid("web"), 4, small()),
        Workload::deployment(wid("new"), 8, small()).with_spread(false),
    ];
    let after = place(&running, &ws_more);
    after.check(&running, &ws_more).expect("valid");
    assert_eq!(after.moved_since(&before), 0);
    assert!(!placed_nodes(&after, &wid("new")).contains(&suspect));
}

#[test]
fn dead_and_left_nodes_lose_their_replicas() {
    for status in [NodeStatus::Dead, NodeStatus::Left] {
        let v = view(nodes(4));
        let ws = vec![Workload::deployment(wid("web"), 3, small())];
        let (mut running, before) = settle(&v, &ws, Options::default());
        let lost = before
            .node_of(&wid("web").replica(1))
            .expect("placed")
            .clone();
        running.node_mut(&lost).expect("exists").status = status;
        let after = place(&running, &ws);
        after.check(&running, &ws).expect("valid");
        assert!(!placed_nodes(&after, &wid("web")).contains(&lost));
        assert_eq!(after.assignments().count(), 3);
        assert_eq!(after.moved_since(&before), 1, "only the lost replica moves");
    }
}

fn stateful(volumes: &[(u32, Option<&str>)]) -> Workload {
    Workload::stateful(
        sid("db"),
        volumes
            .iter()
            .map(|&(o, n)| (o, n.map(NodeId::new)))
            .collect(),
        small(),
    )
}

#[test]
fn stateful_replica_stays_with_its_volume_while_its_node_lives() {
    let v = view(nodes(6));
    let ws = vec![stateful(&[(0, Some("n4")), (1, Some("n2")), (2, None)])];
    let p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    assert_eq!(
        p.decision(&sid("db").replica(0)),
        Some(&Decision::Run {
            node: NodeId::new("n4"),
            fresh_volume: false
        })
    );
    assert_eq!(p.node_of(&sid("db").replica(1)), Some(&NodeId::new("n2")));
    let Some(Decision::Run { node, fresh_volume }) = p.decision(&sid("db").replica(2)) else {
        panic!("ordinal 2 should run");
    };
    assert!(*fresh_volume, "no volume yet");
    assert!(
        node.as_str() != "n4" && node.as_str() != "n2",
        "ordinals are spread"
    );

    // A suspect volume node keeps its replica too.
    let mut suspect = v.clone();
    suspect.node_mut(&NodeId::new("n4")).expect("exists").status = NodeStatus::Suspect;
    assert_eq!(
        place(&suspect, &ws).node_of(&sid("db").replica(0)),
        Some(&NodeId::new("n4"))
    );
}

#[test]
fn stateful_replica_moves_to_a_fresh_volume_when_its_node_dies() {
    let mut v = view(nodes(5));
    v.node_mut(&NodeId::new("n3")).expect("exists").status = NodeStatus::Dead;
    let ws = vec![stateful(&[
        (0, Some("n3")),
        (1, Some("n1")),
        (7, Some("vanished")),
    ])];
    let p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    for ordinal in [0, 7] {
        let Some(Decision::Run {
            node,
            fresh_volume: true,
        }) = p.decision(&sid("db").replica(ordinal))
        else {
            panic!("ordinal {ordinal} should run on a fresh volume: {p:?}");
        };
        assert_ne!(node.as_str(), "n3");
    }
}

#[test]
fn volume_node_that_cannot_run_its_replica_makes_it_unschedulable() {
    let v = view([Node::new("small", Resources::new(500, GI)), big_node("big")]);
    let ws = vec![Workload::stateful(
        sid("db"),
        [(0, Some(NodeId::new("small")))].into_iter().collect(),
        Resources::new(1000, GI),
    )];
    let p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    let Some(Decision::Unschedulable(reason @ Reason::VolumeNode { .. })) =
        p.decision(&sid("db").replica(0))
    else {
        panic!("pinned replica must not move: {p:?}");
    };
    assert_eq!(
        reason.to_string(),
        "its volume is on node small, which has 500m cpu free of the 1000m requested \
         (free resources there, or delete the volume to let it move)"
    );
}

#[test]
fn an_unrelated_workload_does_not_move_when_another_is_added() {
    let v = view(nodes(8));
    let mut ws = vec![Workload::deployment(wid("web"), 12, small())];
    let (running, before) = settle(&v, &ws, Options::default());
    ws.push(Workload::deployment(wid("batch"), 5, small()));
    let after = place(&running, &ws);
    after.check(&running, &ws).expect("valid");
    assert_eq!(after.moved_since(&before), 0);
    assert_eq!(after.assignments().count(), 17);
}

#[test]
fn a_new_node_takes_about_its_share_and_only_replicas_move_onto_it() {
    let v = view(nodes(20));
    let ws: Vec<Workload> = (0..40)
        .map(|i| Workload::deployment(wid(&format!("w{i}")), 10, small()))
        .collect();
    let (mut running, before) = settle(&v, &ws, Options::default());
    running.insert(big_node("joiner"));
    let after = place(&running, &ws);
    after.check(&running, &ws).expect("valid");
    let onto = after
        .loads()
        .get(&NodeId::new("joiner"))
        .copied()
        .unwrap_or(0);
    // 400 replicas over 21 nodes: about 19 each.
    assert!((10..=21).contains(&onto), "joiner got {onto}");
    // The bound drops from 22 to 21: nodes at 22 must give one away, and
    // they give it to the joiner.
    let forced: u32 = before
        .loads()
        .values()
        .map(|&l| l.saturating_sub(after.load_bound))
        .sum();
    assert!(forced > 0);
    let elsewhere = moved(&before, &after)
        .into_iter()
        .filter(|(_, _, to)| to.as_str() != "joiner")
        .count();
    assert!(
        elsewhere as u32 <= forced,
        "{elsewhere} moved elsewhere, {forced} forced"
    );
    assert!(after.moved_since(&before) as u32 <= onto + forced);
}

#[test]
fn replicas_claimed_by_two_nodes_are_resolved_the_same_way_everywhere() {
    let mut v = view(nodes(4));
    let r = wid("web").replica(0);
    for n in ["n1", "n3"] {
        v.node_mut(&NodeId::new(n))
            .expect("exists")
            .running
            .insert(r.clone());
    }
    let ws = vec![Workload::deployment(wid("web"), 1, small())];
    let p = place(&v, &ws);
    let chosen = p.node_of(&r).expect("placed").clone();
    assert!(
        chosen.as_str() == "n1" || chosen.as_str() == "n3",
        "kept on a claimant"
    );
    let reversed = ClusterView::new(v.nodes().rev().cloned()).expect("unique");
    assert_eq!(place(&reversed, &ws).node_of(&r), Some(&chosen));
}

#[test]
fn duplicate_workload_ids_are_unschedulable_until_resolved() {
    let v = view(nodes(3));
    let ws = vec![
        Workload::deployment(wid("web"), 2, small()),
        Workload::deployment(wid("web"), 1, small()),
        Workload::deployment(wid("ok"), 1, small()),
    ];
    let p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    assert_eq!(p.workloads[&wid("web")].len(), 2);
    assert!(p.workloads[&wid("web")].values().all(|d| matches!(
        d,
        Decision::Unschedulable(Reason::DuplicateWorkload { copies: 2 })
    )));
    assert!(p.node_of(&wid("ok").replica(0)).is_some());
}

#[test]
fn checker_reports_broken_invariants() {
    let v = view([
        Node::new("a", Resources::new(1000, GI)),
        Node::new("b", Resources::new(1000, GI)).with_status(NodeStatus::Dead),
    ]);
    let ws = vec![Workload::deployment(wid("web"), 2, Resources::new(600, MI)).with_spread(false)];
    let mut p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    let web = p.workloads.get_mut(&wid("web")).expect("present");
    web.insert(
        0,
        Decision::Run {
            node: NodeId::new("a"),
            fresh_volume: false,
        },
    );
    web.insert(
        1,
        Decision::Run {
            node: NodeId::new("b"),
            fresh_volume: false,
        },
    );
    web.insert(
        9,
        Decision::Run {
            node: NodeId::new("a"),
            fresh_volume: false,
        },
    );
    let errors = p.check(&v, &ws).expect_err("broken").0;
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, Violation::NodeNotReady { .. })),
        "{errors:?}"
    );
    assert!(
        !errors
            .iter()
            .any(|e| matches!(e, Violation::OverLoadBound { .. })),
        "b is not alive: no replica on a could go under the bound there: {errors:?}"
    );
    assert!(
        errors.iter().any(|e| matches!(e, Violation::Unexpected(_))),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, Violation::OverCapacity { .. })),
        "{errors:?}"
    );
}

#[test]
fn checker_allows_the_bound_to_be_passed_only_when_nothing_could_go_under_it() {
    let v = view(nodes(3));
    let ws = vec![Workload::deployment(wid("web"), 3, small()).with_spread(false)];
    let mut p = place(&v, &ws);
    p.check(&v, &ws).expect("valid");
    assert_eq!(p.load_bound, 2);
    for decision in p
        .workloads
        .get_mut(&wid("web"))
        .expect("present")
        .values_mut()
    {
        *decision = Decision::Run {
            node: NodeId::new("n0"),
            fresh_volume: false,
        };
    }
    let errors = p.check(&v, &ws).expect_err("n0 over the bound").0;
    assert!(
        matches!(
            &errors[..],
            [Violation::OverLoadBound { node, load: 3, bound: 2, .. }] if node.as_str() == "n0"
        ),
        "{errors:?}"
    );

    // With n1 and n2 unable to take a replica (a selector they lack), the
    // same placement is right.
    let mut labelled = view(nodes(3));
    labelled
        .node_mut(&NodeId::new("n0"))
        .expect("exists")
        .labels
        .insert("gpu".into(), "yes".into());
    let gpu = vec![
        Workload::deployment(wid("web"), 3, small())
            .with_spread(false)
            .with_selector("gpu", "yes"),
    ];
    p.check(&labelled, &gpu)
        .expect("nowhere under the bound to go");
    assert_eq!(place(&labelled, &gpu), p);
}

#[test]
fn types_round_trip_through_json() {
    let mut v = view(nodes(3));
    v.node_mut(&NodeId::new("n1")).expect("exists").status = NodeStatus::Suspect;
    let ws = vec![
        Workload::deployment(wid("web"), 3, small()).with_selector("zone", "a"),
        stateful(&[(0, Some("n2")), (3, None)]),
    ];
    let p = place(&v, &ws);
    let v2: ClusterView = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
    let ws2: Vec<Workload> = serde_json::from_str(&serde_json::to_string(&ws).unwrap()).unwrap();
    let json = serde_json::to_string(&p).unwrap();
    assert!(
        json.contains("\"statefulset/default/db\""),
        "ids key JSON maps: {json}"
    );
    let p2: Placement = serde_json::from_str(&json).unwrap();
    assert_eq!((v2, ws2, p2), (v, ws, p));
    let dup = r#"[{"id":"a","status":"alive","allocatable":{"cpu_millis":1,"memory_bytes":1}},
                  {"id":"a","status":"dead","allocatable":{"cpu_millis":1,"memory_bytes":1}}]"#;
    assert!(serde_json::from_str::<ClusterView>(dup).is_err());
}

#[test]
fn workload_ids_reject_ambiguous_parts() {
    assert!(WorkloadId::new("deployment", "default", "web").is_ok());
    assert!(WorkloadId::new("deployment", "", "web").is_err());
    assert!(WorkloadId::new("deployment", "a/b", "web").is_err());
    let id: WorkloadId = "deployment/default/web".parse().unwrap();
    assert_eq!(id.to_string(), "deployment/default/web");
    assert!("deployment/web".parse::<WorkloadId>().is_err());
}
