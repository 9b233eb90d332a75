//! The fast implementation of the placement rules stated in the crate
//! documentation. Everything is indexed (nodes by position in id order,
//! replicas by position in (workload id, ordinal) order) so the rules run on
//! plain vectors; [`crate::reference`] states the same rules naively and the
//! tests hold the two to identical output.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use crate::hash::{self, FxBuild};
use crate::placement::{Decision, NoNodeReport, Placement, Reason, VolumeProblem};
use crate::rules;
use crate::types::{ClusterView, Labels, Node, Options, Resources, Workload, WorkloadId};

const NONE: u32 = u32::MAX;

/// Workload ids given more than once: the id, the union of their ordinals,
/// and how many workloads carry it.
type Duplicates<'a> = Vec<(&'a WorkloadId, Vec<u32>, u32)>;

struct NodeRt<'a> {
    node: &'a Node,
    hash: u64,
    holding: bool,
    accepting: bool,
    used_cpu: u64,
    used_mem: u64,
    load: u32,
}

struct WorkRt<'a> {
    w: &'a Workload,
    /// Index of its first replica in `reps`; its replicas are contiguous.
    first: u32,
    count: u32,
    /// Index into `sel`: which nodes match its selector.
    selector: u32,
    /// Index into `rings`: the ring of its eligible nodes.
    ring: u32,
    spread_limit: u32,
    /// Number of eligible nodes.
    eligible: u32,
    /// See [`rules::slack`]: the less, the earlier its unplaced replicas
    /// choose.
    slack: u64,
    /// A replica of it found no node under the bound with room and spread
    /// to spare. From phase 6 on, nodes under the bound only fill up, so
    /// every later replica would find none either.
    no_open: bool,
    /// In phase 7, a replica of it found no node with room and spread to
    /// spare at all, and nothing has been displaced since.
    full: bool,
}

struct Rep {
    w: u32,
    ordinal: u32,
    point: u64,
    /// Node its volume pins it to.
    pinned: u32,
    /// Node that runs it now, per the view (after resolving double claims).
    current: u32,
    /// Node it is assigned to so far.
    at: u32,
    volume_failed: bool,
}

struct Engine<'a> {
    nodes: Vec<NodeRt<'a>>,
    works: Vec<WorkRt<'a>>,
    reps: Vec<Rep>,
    /// Per distinct selector, whether each node matches it.
    sel: Vec<Vec<bool>>,
    /// Ring points (point, node) of the eligible nodes of each class; ring 0
    /// holds every alive node.
    rings: Vec<Vec<(u64, u32)>>,
    /// The nodes of each ring, ascending.
    members: Vec<Vec<u32>>,
    /// In phase 7, unpinned replicas per node as (score, Reverse(index)),
    /// which sorts in shed order; `by_node_sorted` says which are sorted.
    by_node: Vec<Vec<(u64, Reverse<u32>)>>,
    by_node_sorted: Vec<bool>,
    /// Replicas of a spread workload per node, keyed `workload << 32 | node`.
    spread_count: HashMap<u64, u32, FxBuild>,
    /// The load bound.
    cap: u32,
    /// Rounded-up average: relieved replicas go to nodes below it.
    target: u32,
    /// Nodes below this pull.
    pull_below: u32,
}

pub(crate) fn place(
    view: &ClusterView,
    workloads: &[Workload],
    options: Options,
    placer: &mut crate::Placer,
) -> Placement {
    let (mut engine, duplicates) = Engine::new(view, workloads, options, placer);
    engine.place_pinned();
    engine.keep_running();
    engine.relieve_over_bound();
    engine.pull_to_underloaded();
    engine.shed_over_bound();
    let waiting = engine.place_pending();
    engine.overflow(waiting);
    engine.output(options, duplicates)
}

fn key(w: u32, node: u32) -> u64 {
    (u64::from(w) << 32) | u64::from(node)
}

impl<'a> Engine<'a> {
    fn new(
        view: &'a ClusterView,
        workloads: &'a [Workload],
        options: Options,
        placer: &mut crate::Placer,
    ) -> (Self, Duplicates<'a>) {
        let nodes: Vec<NodeRt<'a>> = view
            .nodes()
            .map(|node| NodeRt {
                node,
                hash: hash::node_hash(&node.id),
                holding: node.status.holds_replicas(),
                accepting: node.status.accepts_replicas(),
                used_cpu: 0,
                used_mem: 0,
                load: 0,
            })
            .collect();
        let node_index: HashMap<&str, u32, FxBuild> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.node.id.as_str(), i as u32))
            .collect();

        // Canonical workload order, whatever the input order; ids given more
        // than once are set aside.
        let mut order: Vec<&Workload> = workloads.iter().collect();
        order.sort_by(|a, b| a.id.cmp(&b.id));
        let mut valid: Vec<&Workload> = Vec::with_capacity(order.len());
        let mut duplicates = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let mut j = i + 1;
            while j < order.len() && order[j].id == order[i].id {
                j += 1;
            }
            if j - i == 1 {
                valid.push(order[i]);
            } else {
                let mut ordinals: Vec<u32> = order[i..j]
                    .iter()
                    .flat_map(|w| w.replicas.ordinals())
                    .collect();
                ordinals.sort_unstable();
                ordinals.dedup();
                duplicates.push((&order[i].id, ordinals, (j - i) as u32));
            }
            i = j;
        }

        let ring0 = placer.ring(nodes.iter().map(|n| (n.hash, n.accepting)).collect());
        let accepting = nodes.iter().filter(|n| n.accepting).count() as u64;
        let holding = nodes.iter().filter(|n| n.holding).count() as u64;
        // Below these, every node's allocatable covers the request, so the
        // common case (no selector, modest request) skips a per-node scan.
        let min_alloc_accepting = min_alloc(&nodes, |n| n.accepting);
        let min_alloc_holding = min_alloc(&nodes, |n| n.holding);
        let nodes_len = nodes.len();
        let accepting_nodes: Vec<bool> = nodes.iter().map(|n| n.accepting).collect();

        let mut engine = Engine {
            nodes,
            works: Vec::with_capacity(valid.len()),
            reps: Vec::new(),
            sel: vec![Vec::new()],
            rings: vec![ring0],
            members: vec![
                (0..nodes_len as u32)
                    .filter(|&i| accepting_nodes[i as usize])
                    .collect(),
            ],
            by_node: Vec::new(),
            by_node_sorted: Vec::new(),
            spread_count: HashMap::default(),
            cap: 0,
            target: 0,
            pull_below: 0,
        };
        let mut selector_index: BTreeMap<&Labels, u32> = BTreeMap::new();
        let mut class_index: BTreeMap<Vec<u64>, u32> = BTreeMap::new();
        let mut replicas_counted = 0u64;

        for (wi, w) in valid.iter().enumerate() {
            let selector = if w.node_selector.is_empty() {
                0
            } else {
                *selector_index.entry(&w.node_selector).or_insert_with(|| {
                    engine.sel.push(
                        engine
                            .nodes
                            .iter()
                            .map(|n| n.node.matches(&w.node_selector))
                            .collect(),
                    );
                    (engine.sel.len() - 1) as u32
                })
            };
            let req = w.requests;
            let (ring, eligible) =
                if selector == 0 && min_alloc_accepting.is_some_and(|m| m.covers(&req)) {
                    (0, accepting)
                } else {
                    let mut bits = vec![0u64; engine.nodes.len().div_ceil(64)];
                    let mut count = 0;
                    for (i, n) in engine.nodes.iter().enumerate() {
                        if n.accepting
                            && engine.matches(selector, i as u32)
                            && n.node.allocatable.covers(&req)
                        {
                            bits[i / 64] |= 1 << (i % 64);
                            count += 1;
                        }
                    }
                    let ring = if count == accepting {
                        0
                    } else {
                        *class_index.entry(bits).or_insert_with_key(|bits| {
                            let filtered = engine.rings[0]
                                .iter()
                                .filter(|&&(_, node)| {
                                    bits[node as usize / 64] & (1 << (node % 64)) != 0
                                })
                                .copied()
                                .collect();
                            engine.rings.push(filtered);
                            engine.members.push(
                                (0..engine.nodes.len() as u32)
                                    .filter(|&i| bits[i as usize / 64] & (1 << (i % 64)) != 0)
                                    .collect(),
                            );
                            (engine.rings.len() - 1) as u32
                        })
                    };
                    (ring, count)
                };
            let holdable = if selector == 0 && min_alloc_holding.is_some_and(|m| m.covers(&req)) {
                holding > 0
            } else {
                engine.nodes.iter().enumerate().any(|(i, n)| {
                    n.holding
                        && engine.matches(selector, i as u32)
                        && n.node.allocatable.covers(&req)
                })
            };

            let whash = hash::workload_hash(&w.id);
            let first = engine.reps.len() as u32;
            for ordinal in w.replicas.ordinals() {
                let pinned = w
                    .replicas
                    .volume(ordinal)
                    .and_then(|id| node_index.get(id.as_str()).copied())
                    .filter(|&i| engine.nodes[i as usize].holding)
                    .unwrap_or(NONE);
                if holdable || pinned != NONE {
                    replicas_counted += 1;
                }
                engine.reps.push(Rep {
                    w: wi as u32,
                    ordinal,
                    point: hash::replica_point(whash, ordinal),
                    pinned,
                    current: NONE,
                    at: NONE,
                    volume_failed: false,
                });
            }
            let count = engine.reps.len() as u32 - first;
            engine.works.push(WorkRt {
                w,
                first,
                count,
                selector,
                ring,
                spread_limit: rules::spread_limit(w.spread, u64::from(count), eligible),
                eligible: eligible as u32,
                slack: 0,
                no_open: false,
                full: false,
            });
        }
        engine.cap = rules::load_bound(replicas_counted, holding, options.epsilon_permille);
        engine.target = rules::average_ceil(replicas_counted, holding);
        engine.pull_below = rules::pull_below(replicas_counted, holding, options.epsilon_permille);
        for work in &mut engine.works {
            work.slack = rules::slack(
                u64::from(work.count),
                u64::from(work.eligible),
                work.spread_limit,
                engine.cap,
            );
        }
        engine.resolve_claims(&valid);
        (engine, duplicates)
    }

    fn matches(&self, selector: u32, node: u32) -> bool {
        selector == 0 || self.sel[selector as usize][node as usize]
    }

    /// Records which node runs each replica. Claims from nodes that do not
    /// hold replicas are void; when several holding nodes claim one replica
    /// (a transient state), the highest score wins, so every member picks
    /// the same one.
    fn resolve_claims(&mut self, valid: &[&'a Workload]) {
        let by_id: HashMap<&WorkloadId, u32, FxBuild> = valid
            .iter()
            .enumerate()
            .map(|(i, w)| (&w.id, i as u32))
            .collect();
        for ni in 0..self.nodes.len() {
            if !self.nodes[ni].holding {
                continue;
            }
            let node: &'a Node = self.nodes[ni].node;
            let node_hash = self.nodes[ni].hash;
            let mut last: Option<(&WorkloadId, u32)> = None;
            for replica in &node.running {
                // `running` is sorted by workload, so consecutive replicas
                // mostly share the lookup.
                let wi = match last {
                    Some((id, wi)) if *id == replica.workload => wi,
                    _ => match by_id.get(&replica.workload) {
                        Some(&wi) => {
                            last = Some((&replica.workload, wi));
                            wi
                        }
                        None => continue,
                    },
                };
                let Some(ri) = self.replica_index(wi, replica.ordinal) else {
                    continue;
                };
                let rep = &mut self.reps[ri as usize];
                if rep.pinned != NONE {
                    continue;
                }
                let ni = ni as u32;
                if rep.current == NONE
                    || hash::score(rep.point, node_hash)
                        > hash::score(rep.point, self.nodes[rep.current as usize].hash)
                {
                    rep.current = ni;
                }
            }
        }
    }

    fn replica_index(&self, wi: u32, ordinal: u32) -> Option<u32> {
        let work = &self.works[wi as usize];
        let reps = &self.reps[work.first as usize..(work.first + work.count) as usize];
        match &work.w.replicas {
            crate::types::Replicas::Count(n) => (ordinal < *n).then_some(work.first + ordinal),
            crate::types::Replicas::Stateful(_) => reps
                .binary_search_by_key(&ordinal, |r| r.ordinal)
                .ok()
                .map(|i| work.first + i as u32),
        }
    }

    fn fits(&self, node: u32, req: &Resources) -> bool {
        let n = &self.nodes[node as usize];
        n.used_cpu.saturating_add(req.cpu_millis) <= n.node.allocatable.cpu_millis
            && n.used_mem.saturating_add(req.memory_bytes) <= n.node.allocatable.memory_bytes
    }

    fn spread_count(&self, w: u32, node: u32) -> u32 {
        if self.works[w as usize].spread_limit == u32::MAX {
            return 0;
        }
        self.spread_count.get(&key(w, node)).copied().unwrap_or(0)
    }

    fn spread_ok(&self, w: u32, node: u32) -> bool {
        self.spread_count(w, node) < self.works[w as usize].spread_limit
    }

    fn assign(&mut self, r: u32, node: u32) {
        let rep = &mut self.reps[r as usize];
        debug_assert_eq!(rep.at, NONE);
        rep.at = node;
        let w = rep.w;
        let work = &self.works[w as usize];
        let req = work.w.requests;
        let spread = work.spread_limit != u32::MAX;
        let n = &mut self.nodes[node as usize];
        n.used_cpu += req.cpu_millis;
        n.used_mem += req.memory_bytes;
        n.load += 1;
        if spread {
            *self.spread_count.entry(key(w, node)).or_insert(0) += 1;
        }
    }

    fn unassign(&mut self, r: u32) {
        let rep = &mut self.reps[r as usize];
        let node = rep.at;
        rep.at = NONE;
        let w = rep.w;
        let work = &self.works[w as usize];
        let req = work.w.requests;
        let spread = work.spread_limit != u32::MAX;
        let n = &mut self.nodes[node as usize];
        n.used_cpu -= req.cpu_millis;
        n.used_mem -= req.memory_bytes;
        n.load -= 1;
        if spread {
            *self.spread_count.get_mut(&key(w, node)).expect("counted") -= 1;
        }
    }

    /// Phase 1: replicas pinned by their volume go first, ignoring spread
    /// and the load bound (data locality outranks balance), so that nothing
    /// unpinned can take the resources they need.
    fn place_pinned(&mut self) {
        let mut pinned: Vec<(u32, Reverse<u64>, u32)> = self
            .reps
            .iter()
            .enumerate()
            .filter(|(_, r)| r.pinned != NONE)
            .map(|(i, r)| {
                let score = hash::score(r.point, self.nodes[r.pinned as usize].hash);
                (r.pinned, Reverse(score), i as u32)
            })
            .collect();
        pinned.sort_unstable();
        for (node, _, r) in pinned {
            let work = &self.works[self.reps[r as usize].w as usize];
            let req = work.w.requests;
            if self.matches(work.selector, node) && self.fits(node, &req) {
                self.assign(r, node);
            } else {
                self.reps[r as usize].volume_failed = true;
            }
        }
    }

    /// Phase 2: every replica stays where it runs if that node still holds
    /// replicas, matches, has room and spread allows; each node keeps its
    /// highest-scoring replicas first. The load bound is applied later, after
    /// underloaded nodes have had a chance to relieve overloaded ones.
    fn keep_running(&mut self) {
        let mut running: Vec<(u32, Reverse<u64>, u32)> = self
            .reps
            .iter()
            .enumerate()
            .filter(|(_, r)| r.current != NONE)
            .map(|(i, r)| {
                let score = hash::score(r.point, self.nodes[r.current as usize].hash);
                (r.current, Reverse(score), i as u32)
            })
            .collect();
        running.sort_unstable();
        for (node, _, r) in running {
            let w = self.reps[r as usize].w;
            let work = &self.works[w as usize];
            let req = work.w.requests;
            if self.matches(work.selector, node) && self.fits(node, &req) && self.spread_ok(w, node)
            {
                self.assign(r, node);
            }
        }
    }

    /// Phase 3: nodes over the load bound hand their lowest-scoring unpinned
    /// replicas, which must move anyway, to the least loaded alive node below
    /// the average that can take them (best score on ties). When the bound
    /// drops because a node joined, that is the new node: the replicas the
    /// smaller bound forces out go where they were needed anyway, instead of
    /// moving once for the bound and once more for the new node.
    fn relieve_over_bound(&mut self) {
        let (cap, target) = (self.cap, self.target);
        if !self.nodes.iter().any(|n| n.load > cap) {
            return;
        }
        for (x, r) in self.over_bound_in_shed_order() {
            if self.nodes[x as usize].load <= cap {
                continue;
            }
            let w = self.reps[r as usize].w;
            let work = &self.works[w as usize];
            let (req, selector) = (work.w.requests, work.selector);
            let point = self.reps[r as usize].point;
            let best = (0..self.nodes.len() as u32)
                .filter(|&y| {
                    let n = &self.nodes[y as usize];
                    y != x
                        && n.accepting
                        && n.load < target
                        && self.matches(selector, y)
                        && n.node.allocatable.covers(&req)
                        && self.fits(y, &req)
                        && self.spread_ok(w, y)
                })
                .min_by_key(|&y| {
                    let n = &self.nodes[y as usize];
                    (n.load, Reverse(hash::score(point, n.hash)), y)
                });
            if let Some(y) = best {
                self.unassign(r);
                self.assign(r, y);
            }
        }
    }

    /// Unpinned replicas of nodes over the bound, by node, lowest score
    /// first (the reverse of the order nodes keep them in).
    fn over_bound_in_shed_order(&self) -> Vec<(u32, u32)> {
        let cap = self.cap;
        let mut over: Vec<(u32, u64, Reverse<u32>)> = self
            .reps
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.at != NONE && r.pinned == NONE && self.nodes[r.at as usize].load > cap
            })
            .map(|(i, r)| {
                let score = hash::score(r.point, self.nodes[r.at as usize].hash);
                (r.at, score, Reverse(i as u32))
            })
            .collect();
        over.sort_unstable();
        over.into_iter().map(|(x, _, Reverse(r))| (x, r)).collect()
    }

    /// Phase 4: alive nodes below [`rules::pull_below`] pull replicas that
    /// rank them above the alive node they run on, until no such move
    /// remains. A node joins with nothing, so this is how it gets its
    /// consistent-hash share.
    ///
    /// A pull never gives a node a second replica of a spread workload:
    /// replicas that spread pushed past a node they prefer would otherwise
    /// all return when a departure loosens the limit (`ceil(k/e)` grows as
    /// `e` shrinks), moving replicas unrelated to the departed node. So a
    /// new node pulls at most one replica of each spread workload; it gets
    /// more only from the other phases.
    ///
    /// Every condition for a pull only gets harder to meet as the later
    /// phases add replicas, which is what makes the result a fixed point:
    /// placing again from it pulls nothing.
    fn pull_to_underloaded(&mut self) {
        let target = self.pull_below;
        if !self.nodes.iter().any(|n| n.accepting && n.load < target) {
            return;
        }
        // For each candidate, the nodes it prefers to where it runs, best
        // first. A move only ever goes up that list, which shortens it.
        struct Candidate {
            point: u64,
            r: u32,
            start: u32,
            len: u32,
        }
        let mut arena: Vec<u32> = Vec::new();
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut seen = vec![0u32; self.nodes.len()];
        let mut stamp = 0u32;
        for (r, rep) in self.reps.iter().enumerate() {
            if rep.at == NONE || rep.pinned != NONE || !self.nodes[rep.at as usize].accepting {
                continue;
            }
            let ring = &self.rings[self.works[rep.w as usize].ring as usize];
            let start = ring.partition_point(|&(p, _)| p < rep.point);
            if ring[start % ring.len()].1 == rep.at {
                continue;
            }
            stamp += 1;
            let begin = arena.len() as u32;
            for i in 0..ring.len() {
                let node = ring[(start + i) % ring.len()].1;
                if node == rep.at {
                    break;
                }
                if seen[node as usize] != stamp {
                    seen[node as usize] = stamp;
                    arena.push(node);
                }
            }
            candidates.push(Candidate {
                point: rep.point,
                r: r as u32,
                start: begin,
                len: arena.len() as u32 - begin,
            });
        }
        candidates.sort_unstable_by_key(|c| (c.point, c.r));
        loop {
            let mut moved = false;
            for c in &mut candidates {
                let rep = &self.reps[c.r as usize];
                let w = rep.w;
                let req = self.works[w as usize].w.requests;
                for i in 0..c.len {
                    let y = arena[(c.start + i) as usize];
                    if self.nodes[y as usize].load < target
                        && self.fits(y, &req)
                        && self.spread_count(w, y) == 0
                    {
                        self.unassign(c.r);
                        self.assign(c.r, y);
                        c.len = i;
                        moved = true;
                        break;
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Phase 5: nodes still over the load bound shed their lowest-scoring
    /// unpinned replicas down to the bound. Those with no open node go back
    /// in phase 7.
    fn shed_over_bound(&mut self) {
        let cap = self.cap;
        if !self.nodes.iter().any(|n| n.load > cap) {
            return;
        }
        for (x, r) in self.over_bound_in_shed_order() {
            if self.nodes[x as usize].load > cap {
                self.unassign(r);
            }
        }
    }

    /// Phase 6: everything still unplaced walks its ring to the first
    /// eligible node under the bound with room and spread to spare:
    /// bounded-load consistent hashing. Workloads with the least slack go
    /// first, then replicas in ring order. Returns the replicas that found
    /// no such node, in that order.
    fn place_pending(&mut self) -> Vec<u32> {
        let mut pending: Vec<(u64, u64, u32)> = self
            .reps
            .iter()
            .enumerate()
            .filter(|(_, r)| r.at == NONE && r.pinned == NONE)
            .map(|(i, r)| (self.works[r.w as usize].slack, r.point, i as u32))
            .collect();
        pending.sort_unstable();
        let cap = self.cap;
        let mut open = self
            .nodes
            .iter()
            .filter(|n| n.accepting && n.load < cap)
            .count();
        let mut waiting = Vec::new();
        for (_, _, r) in pending {
            let w = self.reps[r as usize].w;
            if open == 0 || self.works[w as usize].no_open {
                self.works[w as usize].no_open = true;
                waiting.push(r);
                continue;
            }
            match self.first_open(r) {
                Some(y) => {
                    self.assign(r, y);
                    if self.nodes[y as usize].load == cap {
                        open -= 1;
                    }
                }
                None => {
                    self.works[w as usize].no_open = true;
                    waiting.push(r);
                }
            }
        }
        waiting
    }

    /// The first node on the replica's ring walk that is under the bound,
    /// has room and spread to spare: where bounded-load consistent hashing
    /// puts it.
    fn first_open(&self, r: u32) -> Option<u32> {
        let rep = &self.reps[r as usize];
        let w = rep.w;
        let work = &self.works[w as usize];
        if work.no_open {
            return None;
        }
        let req = work.w.requests;
        let ring = &self.rings[work.ring as usize];
        let start = ring.partition_point(|&(p, _)| p < rep.point);
        (0..ring.len())
            .map(|i| ring[(start + i) % ring.len()].1)
            .find(|&y| {
                self.nodes[y as usize].load < self.cap && self.fits(y, &req) && self.spread_ok(w, y)
            })
    }

    /// Phase 7, *overflow*: the bound is a preference, not a constraint.
    ///
    /// A replica no node under the bound can take first tries to stay on the
    /// holding node that runs it, if that node matches, has room and spread
    /// allows (what phase 5 shed it from, typically). Then, those still
    /// waiting go to the least loaded eligible node with room and spread to
    /// spare, the earliest on their ring walk among equals; with none, they
    /// are unschedulable. The returns come first so that no other replica
    /// takes the room a shed replica leaves behind.
    ///
    /// Whenever this takes a node over the bound, the node *displaces* its
    /// lowest-scoring unpinned replica that has an open node to the first
    /// such node on its ring walk, and is back where it was. A node thus
    /// stays over the bound only while it holds nothing that could go under
    /// it, and overflow keeps landing where flexible replicas can make way.
    ///
    /// Displacing frees resources and spread, which may let a replica that
    /// found no room take one: the passes repeat while replicas wait and a
    /// pass displaced something (each pass but the last places a replica).
    fn overflow(&mut self, mut waiting: Vec<u32>) {
        if waiting.is_empty() {
            return;
        }
        // Unpinned replicas by node, shed order once sorted. Replicas that
        // overflow are left out: they have no open node, so are never
        // displaced.
        self.by_node = vec![Vec::new(); self.nodes.len()];
        self.by_node_sorted = vec![false; self.nodes.len()];
        for (r, rep) in self.reps.iter().enumerate() {
            if rep.at != NONE && rep.pinned == NONE {
                let score = hash::score(rep.point, self.nodes[rep.at as usize].hash);
                self.by_node[rep.at as usize].push((score, Reverse(r as u32)));
            }
        }
        let mut full: Vec<u32> = Vec::new();
        loop {
            let mut displaced = false;
            waiting.retain(|&r| {
                let rep = &self.reps[r as usize];
                let (x, w) = (rep.current, rep.w);
                if x == NONE {
                    return true;
                }
                let work = &self.works[w as usize];
                if !(self.matches(work.selector, x)
                    && self.fits(x, &work.w.requests)
                    && self.spread_ok(w, x))
                {
                    return true;
                }
                self.assign(r, x);
                displaced |= self.make_way(x, &mut full);
                false
            });
            waiting.retain(|&r| {
                let w = self.reps[r as usize].w;
                if self.works[w as usize].full {
                    return true;
                }
                match self.least_loaded(r) {
                    Some(y) => {
                        self.assign(r, y);
                        displaced |= self.make_way(y, &mut full);
                        false
                    }
                    None => {
                        self.works[w as usize].full = true;
                        full.push(w);
                        true
                    }
                }
            });
            if !displaced || waiting.is_empty() {
                break;
            }
        }
    }

    /// If `x` is over the bound, moves its lowest-scoring unpinned replica
    /// that has an open node to the first one on its ring walk. Returns
    /// whether one moved; if so, the workloads in `full` may fit on `x` now.
    fn make_way(&mut self, x: u32, full: &mut Vec<u32>) -> bool {
        if self.nodes[x as usize].load <= self.cap {
            return false;
        }
        let xi = x as usize;
        if !self.by_node_sorted[xi] {
            self.by_node[xi].sort_unstable();
            self.by_node_sorted[xi] = true;
        }
        let mut list = std::mem::take(&mut self.by_node[xi]);
        debug_assert!(
            list.iter()
                .all(|&(_, Reverse(f))| self.reps[f as usize].at == x)
        );
        let mut moved = None;
        for (i, &(_, Reverse(f))) in list.iter().enumerate() {
            match self.first_open(f) {
                Some(y) => {
                    moved = Some((i, f, y));
                    break;
                }
                None => {
                    let w = self.reps[f as usize].w;
                    self.works[w as usize].no_open = true;
                }
            }
        }
        let Some((i, f, y)) = moved else {
            self.by_node[xi] = list;
            return false;
        };
        list.remove(i);
        self.by_node[xi] = list;
        self.unassign(f);
        self.assign(f, y);
        let score = hash::score(self.reps[f as usize].point, self.nodes[y as usize].hash);
        self.by_node[y as usize].push((score, Reverse(f)));
        self.by_node_sorted[y as usize] = false;
        for w in full.drain(..) {
            self.works[w as usize].full = false;
        }
        true
    }

    /// The least loaded node on the replica's ring with room and spread to
    /// spare, the earliest on its walk among equally loaded ones: the
    /// lowest such load over the ring's nodes, then a walk to the first node
    /// with room at that load.
    fn least_loaded(&self, r: u32) -> Option<u32> {
        let rep = &self.reps[r as usize];
        let (w, point) = (rep.w, rep.point);
        let ring_index = self.works[w as usize].ring as usize;
        let req = self.works[w as usize].w.requests;
        let members = &self.members[ring_index];
        let takes = |y: u32| self.fits(y, &req) && self.spread_ok(w, y);
        let least = members
            .iter()
            .filter(|&&y| takes(y))
            .map(|&y| self.nodes[y as usize].load)
            .min()?;
        let ring = &self.rings[ring_index];
        let start = ring.partition_point(|&(p, _)| p < point);
        (0..ring.len())
            .map(|i| ring[(start + i) % ring.len()].1)
            .find(|&y| self.nodes[y as usize].load == least && takes(y))
    }

    fn no_node_report(&self, wi: u32) -> NoNodeReport {
        let work = &self.works[wi as usize];
        let req = work.w.requests;
        let mut report = NoNodeReport {
            nodes: self.nodes.len() as u32,
            not_ready: 0,
            selector_mismatch: 0,
            insufficient_cpu: 0,
            insufficient_memory: 0,
            spread: 0,
            selector: work.w.node_selector.clone(),
            requests: req,
            spread_limit: (work.spread_limit != u32::MAX).then_some(work.spread_limit),
        };
        for (i, n) in self.nodes.iter().enumerate() {
            let i = i as u32;
            let alloc = n.node.allocatable;
            if !n.accepting {
                report.not_ready += 1;
            } else if !self.matches(work.selector, i) {
                report.selector_mismatch += 1;
            } else if n.used_cpu.saturating_add(req.cpu_millis) > alloc.cpu_millis {
                report.insufficient_cpu += 1;
            } else if n.used_mem.saturating_add(req.memory_bytes) > alloc.memory_bytes {
                report.insufficient_memory += 1;
            } else if !self.spread_ok(wi, i) {
                report.spread += 1;
            }
        }
        report
    }

    fn volume_problem(&self, r: &Rep) -> VolumeProblem {
        let work = &self.works[r.w as usize];
        let n = &self.nodes[r.pinned as usize];
        let req = work.w.requests;
        let alloc = n.node.allocatable;
        if !self.matches(work.selector, r.pinned) {
            VolumeProblem::SelectorMismatch {
                selector: work.w.node_selector.clone(),
            }
        } else if n.used_cpu.saturating_add(req.cpu_millis) > alloc.cpu_millis {
            VolumeProblem::InsufficientCpu {
                free_millis: alloc.cpu_millis.saturating_sub(n.used_cpu),
                requested_millis: req.cpu_millis,
            }
        } else {
            VolumeProblem::InsufficientMemory {
                free_bytes: alloc.memory_bytes.saturating_sub(n.used_mem),
                requested_bytes: req.memory_bytes,
            }
        }
    }

    fn output(self, options: Options, duplicates: Duplicates<'_>) -> Placement {
        let mut workloads = BTreeMap::new();
        for (wi, work) in self.works.iter().enumerate() {
            let stateful = work.w.replicas.is_stateful();
            let mut report: Option<NoNodeReport> = None;
            let reps = &self.reps[work.first as usize..(work.first + work.count) as usize];
            let decisions = reps
                .iter()
                .map(|r| {
                    let decision = if r.at != NONE {
                        let node = &self.nodes[r.at as usize].node.id;
                        Decision::Run {
                            node: node.clone(),
                            fresh_volume: stateful
                                && work.w.replicas.volume(r.ordinal) != Some(node),
                        }
                    } else if r.volume_failed {
                        Decision::Unschedulable(Reason::VolumeNode {
                            node: self.nodes[r.pinned as usize].node.id.clone(),
                            problem: self.volume_problem(r),
                        })
                    } else {
                        let report = report.get_or_insert_with(|| self.no_node_report(wi as u32));
                        Decision::Unschedulable(Reason::NoNode(report.clone()))
                    };
                    (r.ordinal, decision)
                })
                .collect();
            workloads.insert(work.w.id.clone(), decisions);
        }
        for (id, ordinals, copies) in duplicates {
            let decisions = ordinals
                .into_iter()
                .map(|o| {
                    (
                        o,
                        Decision::Unschedulable(Reason::DuplicateWorkload { copies }),
                    )
                })
                .collect();
            workloads.insert(id.clone(), decisions);
        }
        Placement {
            options,
            load_bound: self.cap,
            workloads,
        }
    }
}

fn min_alloc(nodes: &[NodeRt<'_>], filter: impl Fn(&NodeRt<'_>) -> bool) -> Option<Resources> {
    nodes.iter().filter(|n| filter(n)).fold(None, |acc, n| {
        let a = n.node.allocatable;
        Some(match acc {
            None => a,
            Some(m) => Resources::new(
                a.cpu_millis.min(m.cpu_millis),
                a.memory_bytes.min(m.memory_bytes),
            ),
        })
    })
}
