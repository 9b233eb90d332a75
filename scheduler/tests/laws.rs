//! Properties placement must have on any input: agreement with the naive
//! reference, the checker's invariants, determinism, stability, minimal
//! movement, and bounded disagreement between divergent views.

mod common;

use std::collections::BTreeSet;

use common::*;
use proptest::prelude::*;
use shoal_scheduler::reference::place_reference;
use shoal_scheduler::{
    ClusterView, Node, NodeId, NodeStatus, Options, Placer, Reason, Resources, place_with,
};

const SMALL: Shape = Shape {
    nodes: 1..=6,
    workloads: 1..=4,
    max_replicas: 6,
    roomy: false,
    ample: false,
    running: true,
};

const MEDIUM: Shape = Shape {
    nodes: 1..=12,
    workloads: 1..=6,
    max_replicas: 12,
    roomy: false,
    ample: false,
    running: true,
};

/// Few nodes, many replicas, resources that never bind: bounds of a handful
/// of replicas, which selectors and spread keep overflowing, so that
/// overflow (phase 7) runs often and displaces flexible replicas.
const CROWDED: Shape = Shape {
    nodes: 2..=5,
    workloads: 2..=6,
    max_replicas: 12,
    roomy: false,
    ample: true,
    running: true,
};

/// At least six alive nodes with room to spare and nothing running: the
/// regime where the movement laws hold exactly (with fewer nodes, one
/// departure moves the average past the old bound, and then nodes at that
/// bound rightly take replicas that preferred them).
const ROOMY: Shape = Shape {
    nodes: 6..=12,
    workloads: 1..=6,
    max_replicas: 12,
    roomy: true,
    ample: true,
    running: false,
};

/// `cases` per property, unless `PROPTEST_CASES` asks for a deeper run.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(160))]

    #[test]
    fn fast_placement_equals_the_naive_reference(s in scenario(SMALL)) {
        let fast = place_with(&s.view, &s.workloads, s.options);
        let naive = place_reference(&s.view, &s.workloads, s.options);
        prop_assert_eq!(fast, naive);
    }

    #[test]
    fn fast_placement_equals_the_naive_reference_when_crowded(
        s in prop_oneof![scenario(CROWDED), scenario(Shape { ample: false, ..CROWDED })],
    ) {
        let fast = place_with(&s.view, &s.workloads, s.options);
        let naive = place_reference(&s.view, &s.workloads, s.options);
        prop_assert_eq!(&fast, &naive);
        // And once it runs, with one node more: relieve, pull, shed, and
        // the overflow they leave.
        let (mut v, _) = settle(&s.view, &s.workloads, s.options);
        v.insert(Node::new("late", Resources::new(1000, 2 * GI)).with_label("disk", "ssd"));
        let fast = place_with(&v, &s.workloads, s.options);
        let naive = place_reference(&v, &s.workloads, s.options);
        prop_assert_eq!(fast, naive);
    }

    #[test]
    fn a_placer_that_keeps_its_ring_places_as_a_fresh_one(
        a in scenario(MEDIUM),
        b in scenario(MEDIUM),
    ) {
        // The same placer through views that share their nodes, then others, then the first
        // again, with one node's status flipped: each result is the fresh computation's.
        let mut placer = Placer::default();
        let (settled, _) = settle(&a.view, &a.workloads, a.options);
        let mut flipped = settled.clone();
        let first = flipped.nodes().next().map(|n| n.id.clone());
        if let Some(id) = first {
            let n = flipped.node_mut(&id).expect("exists");
            n.status = match n.status {
                NodeStatus::Alive => NodeStatus::Dead,
                _ => NodeStatus::Alive,
            };
        }
        for (view, workloads, options) in [
            (&a.view, &a.workloads, a.options),
            (&settled, &a.workloads, a.options),
            (&b.view, &b.workloads, b.options),
            (&a.view, &a.workloads, a.options),
            (&flipped, &a.workloads, a.options),
        ] {
            let kept = placer.place(view, workloads, options);
            prop_assert_eq!(kept, place_with(view, workloads, options));
        }
    }

    #[test]
    fn fast_placement_equals_the_naive_reference_in_steady_state(s in scenario(SMALL)) {
        // Exercises keep, relieve and pull on states placement itself
        // produced, with one node's status flipped.
        let (mut v, _) = settle(&s.view, &s.workloads, s.options);
        let first = v.nodes().next().map(|n| n.id.clone());
        if let Some(first) = first {
            let n = v.node_mut(&first).expect("exists");
            n.status = match n.status {
                NodeStatus::Alive => NodeStatus::Dead,
                _ => NodeStatus::Alive,
            };
        }
        v.insert(Node::new("late", Resources::new(4000, 4 * GI)));
        let fast = place_with(&v, &s.workloads, s.options);
        let naive = place_reference(&v, &s.workloads, s.options);
        prop_assert_eq!(fast, naive);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn placement_never_breaks_capacity_selectors_spread_or_bound(
        s in prop_oneof![scenario(MEDIUM), scenario(CROWDED)],
    ) {
        let p = place_with(&s.view, &s.workloads, s.options);
        if let Err(e) = p.check(&s.view, &s.workloads) {
            return Err(TestCaseError::fail(e.to_string()));
        }
    }

    #[test]
    fn no_replica_is_unschedulable_while_an_eligible_node_has_room(
        s in prop_oneof![scenario(MEDIUM), scenario(CROWDED)],
        flip in any::<prop::sample::Index>(),
    ) {
        // On the generated state, and on a steady state with one node's
        // status flipped (replicas to move, a bound that changes). Recounted
        // here from the placement alone, without the crate's checker.
        let (mut steady, _) = settle(&s.view, &s.workloads, s.options);
        let ids: Vec<NodeId> = steady.nodes().map(|n| n.id.clone()).collect();
        if !ids.is_empty() {
            let n = steady.node_mut(flip.get(&ids)).expect("exists");
            n.status = match n.status {
                NodeStatus::Alive => NodeStatus::Dead,
                _ => NodeStatus::Alive,
            };
        }
        for view in [&s.view, &steady] {
            let p = place_with(view, &s.workloads, s.options);
            let usage = Usage::of(&p, &s.workloads);
            let limits = spread_limits(view, &s.workloads);
            for (replica, reason) in p.unschedulable() {
                let Some(w) = s.workloads.iter().find(|w| w.id == replica.workload) else {
                    continue;
                };
                let volume = w
                    .replicas
                    .volume(replica.ordinal)
                    .and_then(|id| view.node(id))
                    .filter(|n| n.status.holds_replicas());
                let room = |n: &Node| n.matches(&w.node_selector) && usage.fits(n, w);
                match (reason, volume) {
                    (Reason::DuplicateWorkload { .. }, _) => {}
                    (Reason::VolumeNode { node, .. }, Some(v)) => {
                        prop_assert_eq!(node, &v.id);
                        prop_assert!(!room(v), "{} unschedulable, its volume node {} has room", replica, v.id);
                    }
                    (Reason::NoNode(report), None) => {
                        prop_assert_eq!(
                            report.nodes,
                            report.not_ready
                                + report.selector_mismatch
                                + report.insufficient_cpu
                                + report.insufficient_memory
                                + report.spread,
                            "{}: every node has a reason", replica
                        );
                        for n in view.nodes() {
                            prop_assert!(
                                !(n.status.accepts_replicas()
                                    && room(n)
                                    && usage.of_workload(&n.id, &w.id) < limits[&w.id]),
                                "{} unschedulable ({}), yet {} has room for it", replica, reason, n.id
                            );
                        }
                    }
                    (reason, _) => prop_assert!(false, "{}: unexpected reason {}", replica, reason),
                }
            }
        }
    }

    #[test]
    fn input_order_does_not_change_the_placement(
        s in scenario(MEDIUM),
        seed in any::<u64>(),
    ) {
        let p = place_with(&s.view, &s.workloads, s.options);
        let mut shuffled = s.workloads.clone();
        // A seeded Fisher-Yates: any permutation will do.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let nodes: Vec<Node> = s.view.nodes().rev().cloned().collect();
        let rebuilt = ClusterView::new(nodes).expect("unique ids");
        prop_assert_eq!(&p, &place_with(&rebuilt, &shuffled, s.options));
        prop_assert_eq!(&p, &place_with(&s.view, &s.workloads, s.options));
    }

    #[test]
    fn placing_its_own_result_again_changes_nothing(
        s in prop_oneof![scenario(MEDIUM), scenario(CROWDED)],
    ) {
        let (v, p) = settle(&s.view, &s.workloads, s.options);
        prop_assert_eq!(place_with(&v, &s.workloads, s.options), p);
    }

    #[test]
    fn losing_a_node_moves_only_its_replicas(
        s in prop_oneof![scenario(MEDIUM), scenario(CROWDED)],
        pick in any::<prop::sample::Index>(),
        dead in any::<bool>(),
    ) {
        // From a steady state that placement produced from scratch.
        let mut start = s.view.clone();
        for id in s.view.nodes().map(|n| n.id.clone()).collect::<Vec<_>>() {
            start.node_mut(&id).expect("exists").running.clear();
        }
        let (v, before) = settle(&start, &s.workloads, s.options);
        let ids: Vec<NodeId> = v.nodes().map(|n| n.id.clone()).collect();
        prop_assume!(!ids.is_empty());
        let gone = pick.get(&ids).clone();
        let mut after_view = v.clone();
        if dead {
            after_view.node_mut(&gone).expect("exists").status = NodeStatus::Dead;
        } else {
            after_view.remove(&gone);
        }
        let after = place_with(&after_view, &s.workloads, s.options);
        let before_loads = before.loads();
        let pull = pull_threshold(&after_view, &s.workloads, s.options.epsilon_permille);
        let overflowed = overflowed_into(&after_view, &s.workloads, &before, &after);
        let vacated = vacated(&before, &after);
        for (replica, from, to) in moved(&before, &after) {
            // A node over the bound holds only what could go nowhere under
            // it; once something can (a lower bound, a looser spread limit),
            // it goes.
            let forced_by_bound = before_loads[&from] > after.load_bound;
            // With few nodes a departure lifts the pull threshold past the
            // old bound: nodes under it then pull, as they should, and so
            // do nodes that drop under it by giving a replica away (they
            // can be over the old bound, with what had nowhere else to go).
            let pulled = pull > u64::from(before.load_bound)
                && (u64::from(before_loads.get(&to).copied().unwrap_or(0)) < pull
                    || vacated.contains(&to));
            // The departed node's replicas that only `from` could take
            // pushed it over the bound: it hands on what can go under it.
            let displaced = overflowed.contains(&from);
            prop_assert!(
                from == gone || forced_by_bound || pulled || displaced,
                "{} moved {} -> {} though only {} left", replica, from, to, gone
            );
        }
    }

    #[test]
    fn adding_a_node_moves_replicas_only_onto_it(
        s in scenario(ROOMY),
        zone_a in any::<bool>(),
    ) {
        let (v, before) = settle(&s.view, &s.workloads, s.options);
        let new = NodeId::new("newcomer");
        let mut grown = v.clone();
        grown.insert(
            Node::new(new.clone(), Resources::new(1_000_000, 1024 * GI))
                .with_label("zone", if zone_a { "a" } else { "b" }),
        );
        let after = place_with(&grown, &s.workloads, s.options);
        let before_loads = before.loads();
        let limits_before = spread_limits(&v, &s.workloads);
        let limits_after = spread_limits(&grown, &s.workloads);
        let vacated = vacated(&before, &after);
        let overflowed = overflowed_into(&grown, &s.workloads, &before, &after);
        for (replica, from, to) in moved(&before, &after) {
            let forced_by_bound = before_loads[&from] > after.load_bound;
            let forced_by_spread =
                limits_after[&replica.workload] < limits_before[&replica.workload];
            // A lower bound or tighter spread left replicas only nodes at
            // the bound: they overflowed onto `from`, which hands on what
            // can go under the bound.
            let displaced = overflowed.contains(&from);
            if to == new || forced_by_bound || forced_by_spread || displaced {
                continue;
            }
            prop_assert!(
                vacated.contains(&to),
                "{} moved {} -> {}, neither onto the new node nor into a vacated one",
                replica, from, to
            );
        }
    }

    #[test]
    fn views_differing_by_one_member_disagree_only_about_it(
        s in prop_oneof![scenario(MEDIUM), scenario(CROWDED)],
        pick in any::<prop::sample::Index>(),
    ) {
        // Two members: one has learnt of a new node, the other has not.
        let mut start = s.view.clone();
        for id in s.view.nodes().map(|n| n.id.clone()).collect::<Vec<_>>() {
            start.node_mut(&id).expect("exists").running.clear();
        }
        let (a, _) = settle(&start, &s.workloads, s.options);
        let member = NodeId::new("member");
        let mut b = a.clone();
        let template = pick.get(&a.nodes().cloned().collect::<Vec<_>>().into_iter().chain([
            Node::new("x", Resources::new(4000, 4 * GI)),
        ]).collect::<Vec<_>>()).clone();
        let mut joined = template.clone();
        joined.id = member.clone();
        joined.status = NodeStatus::Alive;
        joined.running.clear();
        b.insert(joined);
        let pa = place_with(&a, &s.workloads, s.options);
        let pb = place_with(&b, &s.workloads, s.options);
        let loads_a = pa.loads();
        let vacated = vacated(&pa, &pb);
        let eps = s.options.epsilon_permille;
        let (pull_a, pull_b) = (
            pull_threshold(&a, &s.workloads, eps),
            pull_threshold(&b, &s.workloads, eps),
        );
        let limits_a = spread_limits(&a, &s.workloads);
        let limits_b = spread_limits(&b, &s.workloads);
        let overflowed = overflowed_into(&b, &s.workloads, &pa, &pb);
        for (replica, decision) in pb.decisions() {
            let (na, nb) = (pa.node_of(&replica), decision.node());
            if na == nb {
                continue;
            }
            let involves_member = nb == Some(&member);
            let forced_by_bound = na.is_some_and(|n| loads_a[n] > pb.load_bound);
            let forced_by_spread = limits_b[&replica.workload] < limits_a[&replica.workload];
            // A replica one member could not place and the other can (or
            // the reverse) once the bound moves: the bound involves the
            // member too, through the node count.
            let bound_moved = pa.load_bound != pb.load_bound && (na.is_none() || nb.is_none());
            let knock_on = nb.is_some_and(|n| vacated.contains(n));
            let pulled = pull_b > pull_a
                && nb.is_some_and(|n| u64::from(loads_a.get(n).copied().unwrap_or(0)) < pull_b);
            // Replicas that only some node could take pushed it over the
            // bound in one view: it hands on what can go under it, which may
            // be a replica it had pulled (its consistent-hash share).
            let displaced = overflowed
                .iter()
                .any(|x| eligible(&b, &replica.workload, &s.workloads, x));
            prop_assert!(
                involves_member
                    || forced_by_bound
                    || forced_by_spread
                    || bound_moved
                    || pulled
                    || knock_on
                    || displaced,
                "members disagree on {}: {:?} vs {:?}", replica, na, nb
            );
        }
    }

    #[test]
    fn without_pressure_views_differing_by_one_node_disagree_only_on_its_replicas(
        s in scenario(ROOMY),
    ) {
        // Pure consistent hashing: no bound in reach, no spread, ample room.
        let options = Options { epsilon_permille: 1_000_000 };
        let workloads: Vec<_> = s.workloads.iter().cloned().map(|w| w.with_spread(false)).collect();
        let a = &s.view;
        let mut b = a.clone();
        let member = NodeId::new("member");
        b.insert(Node::new(member.clone(), Resources::new(1_000_000, 1024 * GI)));
        let pa = place_with(a, &workloads, options);
        let pb = place_with(&b, &workloads, options);
        let differ: BTreeSet<_> = pb
            .decisions()
            .filter(|(r, d)| pa.decision(r) != Some(*d))
            .map(|(r, _)| r)
            .collect();
        let on_member: BTreeSet<_> = pb
            .assignments()
            .filter(|(_, n)| **n == member)
            .map(|(r, _)| r)
            .collect();
        prop_assert_eq!(differ, on_member);
    }
}
