//! The placement rules written as plainly as possible: no indexes, no ring,
//! no shortcuts, loads recounted from scratch at every question. Quadratic
//! and worse; it exists so the fast implementation can be tested against it
//! on small inputs (the fast one must return exactly the same placement).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::hash;
use crate::placement::{Decision, NoNodeReport, Placement, Reason, VolumeProblem};
use crate::rules;
use crate::types::{ClusterView, Node, Options, Replicas, Workload, WorkloadId};

struct Rep<'a> {
    workload: &'a Workload,
    ordinal: u32,
    point: u64,
    pinned: Option<usize>,
}

struct State<'a> {
    nodes: Vec<&'a Node>,
    hashes: Vec<u64>,
    reps: Vec<Rep<'a>>,
    at: Vec<Option<usize>>,
    spread_limit: BTreeMap<&'a WorkloadId, u32>,
}

impl State<'_> {
    fn load(&self, x: usize) -> u32 {
        self.at.iter().filter(|&&a| a == Some(x)).count() as u32
    }

    fn used(&self, x: usize) -> (u64, u64) {
        let mut used = (0, 0);
        for (r, a) in self.reps.iter().zip(&self.at) {
            if *a == Some(x) {
                used.0 += r.workload.requests.cpu_millis;
                used.1 += r.workload.requests.memory_bytes;
            }
        }
        used
    }

    fn cpu_fits(&self, x: usize, r: usize) -> bool {
        self.used(x).0 + self.reps[r].workload.requests.cpu_millis
            <= self.nodes[x].allocatable.cpu_millis
    }

    fn memory_fits(&self, x: usize, r: usize) -> bool {
        self.used(x).1 + self.reps[r].workload.requests.memory_bytes
            <= self.nodes[x].allocatable.memory_bytes
    }

    fn fits(&self, x: usize, r: usize) -> bool {
        self.cpu_fits(x, r) && self.memory_fits(x, r)
    }

    fn same_workload_on(&self, x: usize, r: usize) -> u32 {
        let id = &self.reps[r].workload.id;
        self.reps
            .iter()
            .zip(&self.at)
            .filter(|(o, a)| **a == Some(x) && o.workload.id == *id)
            .count() as u32
    }

    fn spread_ok(&self, x: usize, r: usize) -> bool {
        self.same_workload_on(x, r) < self.spread_limit[&self.reps[r].workload.id]
    }

    fn matches(&self, x: usize, r: usize) -> bool {
        self.nodes[x].matches(&self.reps[r].workload.node_selector)
    }

    fn eligible(&self, x: usize, r: usize) -> bool {
        let node = self.nodes[x];
        node.status.accepts_replicas()
            && self.matches(x, r)
            && node.allocatable.covers(&self.reps[r].workload.requests)
    }

    fn score(&self, r: usize, x: usize) -> u64 {
        hash::score(self.reps[r].point, self.hashes[x])
    }

    /// Eligible nodes by clockwise distance from the replica's point to the
    /// node's nearest ring point (ties by node order): the order a walk
    /// along the ring meets them.
    fn preference(&self, r: usize) -> Vec<usize> {
        let point = self.reps[r].point;
        let mut nodes: Vec<(u64, usize)> = (0..self.nodes.len())
            .filter(|&x| self.eligible(x, r))
            .map(|x| {
                let distance = (0..hash::VNODES)
                    .map(|v| hash::vnode_point(self.hashes[x], v).wrapping_sub(point))
                    .min()
                    .expect("VNODES > 0");
                (distance, x)
            })
            .collect();
        nodes.sort();
        nodes.into_iter().map(|(_, x)| x).collect()
    }
}

/// Computes the same placement as [`crate::place_with`], naively.
///
/// Slow (roughly cubic); meant for tests on a handful of nodes and a few
/// dozen replicas.
pub fn place_reference(view: &ClusterView, workloads: &[Workload], options: Options) -> Placement {
    let nodes: Vec<&Node> = view.nodes().collect();
    let hashes: Vec<u64> = nodes.iter().map(|n| hash::node_hash(&n.id)).collect();
    let mut groups: BTreeMap<&WorkloadId, Vec<&Workload>> = BTreeMap::new();
    for w in workloads {
        groups.entry(&w.id).or_default().push(w);
    }
    let mut reps = Vec::new();
    for group in groups.values().filter(|g| g.len() == 1) {
        let w = group[0];
        let whash = hash::workload_hash(&w.id);
        for ordinal in w.replicas.ordinals() {
            let pinned = w.replicas.volume(ordinal).and_then(|id| {
                nodes
                    .iter()
                    .position(|n| n.id == *id && n.status.holds_replicas())
            });
            reps.push(Rep {
                workload: w,
                ordinal,
                point: hash::replica_point(whash, ordinal),
                pinned,
            });
        }
    }
    let at = vec![None; reps.len()];
    let mut s = State {
        nodes,
        hashes,
        reps,
        at,
        spread_limit: BTreeMap::new(),
    };
    let all_nodes = 0..s.nodes.len();
    let all_reps = 0..s.reps.len();

    let holding = s.nodes.iter().filter(|n| n.status.holds_replicas()).count() as u64;
    let counted = all_reps
        .clone()
        .filter(|&r| {
            s.reps[r].pinned.is_some()
                || all_nodes.clone().any(|x| {
                    s.nodes[x].status.holds_replicas()
                        && s.matches(x, r)
                        && s.nodes[x].allocatable.covers(&s.reps[r].workload.requests)
                })
        })
        .count() as u64;
    let cap = rules::load_bound(counted, holding, options.epsilon_permille);
    let target = rules::average_ceil(counted, holding);
    let pull_below = rules::pull_below(counted, holding, options.epsilon_permille);
    for r in all_reps.clone() {
        let w = s.reps[r].workload;
        let count = s.reps.iter().filter(|o| o.workload.id == w.id).count() as u64;
        let eligible = all_nodes.clone().filter(|&x| s.eligible(x, r)).count() as u64;
        let limit = rules::spread_limit(w.spread, count, eligible);
        s.spread_limit.insert(&w.id, limit);
    }

    // Who runs what now: the highest-scoring holding node among claimants.
    let current: Vec<Option<usize>> = all_reps
        .clone()
        .map(|r| {
            if s.reps[r].pinned.is_some() {
                return None;
            }
            let id = s.reps[r].workload.id.replica(s.reps[r].ordinal);
            all_nodes
                .clone()
                .filter(|&x| s.nodes[x].status.holds_replicas() && s.nodes[x].running.contains(&id))
                .max_by_key(|&x| (s.score(r, x), Reverse(x)))
        })
        .collect();

    // Pinned replicas first, on their volume's node.
    let mut volume_failed = vec![false; s.reps.len()];
    for x in all_nodes.clone() {
        let mut pinned: Vec<usize> = all_reps
            .clone()
            .filter(|&r| s.reps[r].pinned == Some(x))
            .collect();
        pinned.sort_by_key(|&r| (Reverse(s.score(r, x)), r));
        for r in pinned {
            if s.matches(x, r) && s.fits(x, r) {
                s.at[r] = Some(x);
            } else {
                volume_failed[r] = true;
            }
        }
    }

    // Keep running replicas where they are valid.
    for x in all_nodes.clone() {
        let mut running: Vec<usize> = all_reps
            .clone()
            .filter(|&r| current[r] == Some(x))
            .collect();
        running.sort_by_key(|&r| (Reverse(s.score(r, x)), r));
        for r in running {
            if s.matches(x, r) && s.fits(x, r) && s.spread_ok(x, r) {
                s.at[r] = Some(x);
            }
        }
    }

    // Nodes over the bound hand replicas, lowest scores first, to the least
    // loaded node below the target that can take them.
    let shed_order = |s: &State<'_>, x: usize| {
        let mut held: Vec<usize> = (0..s.reps.len())
            .filter(|&r| s.at[r] == Some(x) && s.reps[r].pinned.is_none())
            .collect();
        held.sort_by_key(|&r| (s.score(r, x), Reverse(r)));
        held
    };
    for x in all_nodes.clone() {
        if s.load(x) <= cap {
            continue;
        }
        for r in shed_order(&s, x) {
            if s.load(x) <= cap {
                break;
            }
            let best = all_nodes
                .clone()
                .filter(|&y| {
                    y != x
                        && s.eligible(y, r)
                        && s.load(y) < target
                        && s.fits(y, r)
                        && s.spread_ok(y, r)
                })
                .min_by_key(|&y| (s.load(y), Reverse(s.score(r, y)), y));
            if let Some(y) = best {
                s.at[r] = Some(y);
            }
        }
    }

    // Alive nodes well below the average pull replicas that prefer them.
    let mut by_point: Vec<usize> = all_reps.clone().collect();
    by_point.sort_by_key(|&r| (s.reps[r].point, r));
    loop {
        let mut moved = false;
        for &r in &by_point {
            let Some(x) = s.at[r] else { continue };
            if s.reps[r].pinned.is_some() || !s.nodes[x].status.accepts_replicas() {
                continue;
            }
            let preference = s.preference(r);
            let better = preference.iter().take_while(|&&y| y != x);
            for &y in better {
                let doubles_up = s.reps[r].workload.spread && s.same_workload_on(y, r) > 0;
                if s.load(y) < pull_below && s.fits(y, r) && !doubles_up {
                    s.at[r] = Some(y);
                    moved = true;
                    break;
                }
            }
        }
        if !moved {
            break;
        }
    }

    // Shed what is still over the bound, lowest scores first.
    for x in all_nodes.clone() {
        for r in shed_order(&s, x) {
            if s.load(x) > cap {
                s.at[r] = None;
            }
        }
    }

    // Everything else, least slack first: the first node along the ring
    // under the bound with room and spread to spare.
    let open = |s: &State<'_>, r: usize| {
        s.preference(r)
            .into_iter()
            .find(|&y| s.load(y) < cap && s.fits(y, r) && s.spread_ok(y, r))
    };
    let slack = |r: usize| {
        let w = s.reps[r].workload;
        let count = s.reps.iter().filter(|o| o.workload.id == w.id).count() as u64;
        let eligible = all_nodes.clone().filter(|&x| s.eligible(x, r)).count() as u64;
        rules::slack(count, eligible, s.spread_limit[&w.id], cap)
    };
    let mut by_constraint = by_point.clone();
    by_constraint.sort_by_key(|&r| (slack(r), s.reps[r].point, r));
    let mut waiting = Vec::new();
    for &r in &by_constraint {
        if s.at[r].is_some() || s.reps[r].pinned.is_some() {
            continue;
        }
        match open(&s, r) {
            Some(y) => s.at[r] = Some(y),
            None => waiting.push(r),
        }
    }

    // The bound is a preference. What no node under it can take stays where
    // it runs if it can; the rest goes to the least loaded node with room
    // (the earliest in its preference among equals). A node this takes over
    // the bound hands its lowest-scoring replica that could go under it to
    // the first such node in that replica's preference. Again while that
    // frees room for replicas still waiting.
    let make_way = |s: &mut State<'_>, x: usize| {
        if s.load(x) <= cap {
            return false;
        }
        for r in shed_order(s, x) {
            if let Some(y) = open(s, r) {
                s.at[r] = Some(y);
                return true;
            }
        }
        false
    };
    while !waiting.is_empty() {
        let mut displaced = false;
        for &r in &waiting {
            if let Some(x) = current[r] {
                if s.matches(x, r) && s.fits(x, r) && s.spread_ok(x, r) {
                    s.at[r] = Some(x);
                    displaced |= make_way(&mut s, x);
                }
            }
        }
        waiting.retain(|&r| s.at[r].is_none());
        for &r in &waiting {
            let least = s
                .preference(r)
                .into_iter()
                .filter(|&y| s.fits(y, r) && s.spread_ok(y, r))
                .min_by_key(|&y| s.load(y));
            if let Some(y) = least {
                s.at[r] = Some(y);
                displaced |= make_way(&mut s, y);
            }
        }
        waiting.retain(|&r| s.at[r].is_none());
        if !displaced {
            break;
        }
    }

    let mut out: BTreeMap<WorkloadId, BTreeMap<u32, Decision>> = groups
        .keys()
        .map(|id| ((*id).clone(), BTreeMap::new()))
        .collect();
    for r in all_reps {
        let w = s.reps[r].workload;
        let decision = if let Some(x) = s.at[r] {
            let node = &s.nodes[x].id;
            Decision::Run {
                node: node.clone(),
                fresh_volume: matches!(w.replicas, Replicas::Stateful(_))
                    && w.replicas.volume(s.reps[r].ordinal) != Some(node),
            }
        } else if volume_failed[r] {
            let x = s.reps[r].pinned.expect("volume failures are pinned");
            let (cpu, mem) = s.used(x);
            let alloc = s.nodes[x].allocatable;
            let problem = if !s.matches(x, r) {
                VolumeProblem::SelectorMismatch {
                    selector: w.node_selector.clone(),
                }
            } else if !s.cpu_fits(x, r) {
                VolumeProblem::InsufficientCpu {
                    free_millis: alloc.cpu_millis - cpu,
                    requested_millis: w.requests.cpu_millis,
                }
            } else {
                VolumeProblem::InsufficientMemory {
                    free_bytes: alloc.memory_bytes - mem,
                    requested_bytes: w.requests.memory_bytes,
                }
            };
            Decision::Unschedulable(Reason::VolumeNode {
                node: s.nodes[x].id.clone(),
                problem,
            })
        } else {
            let limit = s.spread_limit[&w.id];
            let mut report = NoNodeReport {
                nodes: s.nodes.len() as u32,
                not_ready: 0,
                selector_mismatch: 0,
                insufficient_cpu: 0,
                insufficient_memory: 0,
                spread: 0,
                selector: w.node_selector.clone(),
                requests: w.requests,
                spread_limit: (limit != u32::MAX).then_some(limit),
            };
            for x in 0..s.nodes.len() {
                if !s.nodes[x].status.accepts_replicas() {
                    report.not_ready += 1;
                } else if !s.matches(x, r) {
                    report.selector_mismatch += 1;
                } else if !s.cpu_fits(x, r) {
                    report.insufficient_cpu += 1;
                } else if !s.memory_fits(x, r) {
                    report.insufficient_memory += 1;
                } else if !s.spread_ok(x, r) {
                    report.spread += 1;
                }
            }
            Decision::Unschedulable(Reason::NoNode(report))
        };
        out.entry(w.id.clone())
            .or_default()
            .insert(s.reps[r].ordinal, decision);
    }
    for (id, group) in groups.iter().filter(|(_, g)| g.len() > 1) {
        let decisions = out.entry((*id).clone()).or_default();
        for w in group {
            for ordinal in w.replicas.ordinals() {
                decisions.insert(
                    ordinal,
                    Decision::Unschedulable(Reason::DuplicateWorkload {
                        copies: group.len() as u32,
                    }),
                );
            }
        }
    }
    Placement {
        options,
        load_bound: cap,
        workloads: out,
    }
}
