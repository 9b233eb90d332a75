//! Builders and proptest strategies shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use proptest::prelude::*;
use shoal_scheduler::{
    ClusterView, Node, NodeId, NodeStatus, Options, Placement, Replicas, Resources, Workload,
    WorkloadId, place_with,
};

pub const GI: u64 = 1 << 30;
pub const MI: u64 = 1 << 20;

pub fn wid(name: &str) -> WorkloadId {
    WorkloadId::new("deployment", "default", name).expect("valid id")
}

pub fn sid(name: &str) -> WorkloadId {
    WorkloadId::new("statefulset", "default", name).expect("valid id")
}

pub fn big_node(name: &str) -> Node {
    Node::new(name, Resources::new(64_000, 256 * GI))
}

pub fn view(nodes: impl IntoIterator<Item = Node>) -> ClusterView {
    ClusterView::new(nodes).expect("unique node ids")
}

pub fn small() -> Resources {
    Resources::new(100, 128 * MI)
}

/// The view once `placement` is carried out.
pub fn applied(view: &ClusterView, placement: &Placement) -> ClusterView {
    let mut v = view.clone();
    v.apply(placement);
    v
}

/// Places, then records the placement as running: the steady state.
pub fn settle(
    view: &ClusterView,
    workloads: &[Workload],
    options: Options,
) -> (ClusterView, Placement) {
    let p = place_with(view, workloads, options);
    (applied(view, &p), p)
}

/// Replicas whose node differs between two placements (both placed).
pub fn moved(
    before: &Placement,
    after: &Placement,
) -> Vec<(shoal_scheduler::ReplicaId, NodeId, NodeId)> {
    after
        .assignments()
        .filter_map(|(r, to)| {
            let from = before.node_of(&r)?;
            (from != to).then(|| (r.clone(), from.clone(), to.clone()))
        })
        .collect()
}

/// Number of replicas the rules count for the bound (those with a holding
/// node that could run them, or pinned by a volume), recomputed here
/// independently of the crate.
pub fn counted(view: &ClusterView, workloads: &[Workload]) -> u64 {
    let mut n = 0;
    for w in workloads {
        let holdable = view.nodes().any(|x| {
            x.status.holds_replicas()
                && x.matches(&w.node_selector)
                && x.allocatable.covers(&w.requests)
        });
        for o in w.replicas.ordinals() {
            let pinned = w
                .replicas
                .volume(o)
                .and_then(|id| view.node(id))
                .is_some_and(|x| x.status.holds_replicas());
            if holdable || pinned {
                n += 1;
            }
        }
    }
    n
}

pub fn holding(view: &ClusterView) -> u64 {
    view.nodes().filter(|n| n.status.holds_replicas()).count() as u64
}

/// `min(ceil((1 - ε) m / n), bound - 1)`: nodes below it pull.
pub fn pull_threshold(view: &ClusterView, workloads: &[Workload], eps: u32) -> u64 {
    let (m, n) = (counted(view, workloads), holding(view));
    if n == 0 || eps >= 1000 {
        return 0;
    }
    let bound = (m * u64::from(1000 + eps)).div_ceil(1000 * n);
    (m * u64::from(1000 - eps))
        .div_ceil(1000 * n)
        .min(bound.saturating_sub(1))
}

/// Spread limit of each workload in a view.
pub fn spread_limits(view: &ClusterView, workloads: &[Workload]) -> BTreeMap<WorkloadId, u64> {
    workloads
        .iter()
        .map(|w| {
            let e = view
                .nodes()
                .filter(|x| {
                    x.status.accepts_replicas()
                        && x.matches(&w.node_selector)
                        && x.allocatable.covers(&w.requests)
                })
                .count() as u64;
            let k = w.replicas.len() as u64;
            let limit = if w.spread {
                k.div_ceil(e.max(1)).max(1)
            } else {
                u64::MAX
            };
            (w.id.clone(), limit)
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub view: ClusterView,
    pub workloads: Vec<Workload>,
    pub options: Options,
}

fn status() -> impl Strategy<Value = NodeStatus> {
    prop_oneof![
        14 => Just(NodeStatus::Alive),
        2 => Just(NodeStatus::Suspect),
        1 => Just(NodeStatus::Dead),
        1 => Just(NodeStatus::Left),
    ]
}

/// Knobs for generated scenarios.
#[derive(Debug, Clone)]
pub struct Shape {
    pub nodes: std::ops::RangeInclusive<usize>,
    pub workloads: std::ops::RangeInclusive<usize>,
    pub max_replicas: u32,
    /// Only alive nodes, no selectors, resources that never bind.
    pub roomy: bool,
    /// Resources that never bind (statuses and selectors as usual): only
    /// selectors and spread push replicas past the bound.
    pub ample: bool,
    /// Generate running replicas (otherwise nothing runs yet).
    pub running: bool,
}

pub fn scenario(shape: Shape) -> impl Strategy<Value = Scenario> {
    let roomy = shape.roomy;
    let ample = shape.ample || roomy;
    let node = (
        if roomy {
            Just(NodeStatus::Alive).boxed()
        } else {
            status().boxed()
        },
        prop::sample::select(vec![500u64, 1000, 2000, 4000]),
        prop::sample::select(vec![GI, 2 * GI, 4 * GI]),
        any::<bool>(),
        any::<bool>(),
    );
    let nodes = prop::collection::vec(node, shape.nodes.clone());
    let workload = (
        any::<bool>(),
        0..=shape.max_replicas,
        prop::sample::select(vec![0u64, 100, 250, 700, 1500]),
        prop::sample::select(vec![0u64, 128 * MI, 512 * MI, GI]),
        0..4u8,
        any::<bool>(),
        prop::collection::vec(0..12usize, 0..=shape.max_replicas as usize),
        0..10u8,
    );
    let workloads = prop::collection::vec(workload, shape.workloads.clone());
    let running = if shape.running {
        prop::collection::vec((0..8usize, 0..16u32, 0..16usize), 0..40).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    let eps = prop::sample::select(vec![0u32, 100, 100, 250, 1000]);
    (nodes, workloads, running, eps).prop_map(move |(nodes, workloads, running, eps)| {
        let nodes: Vec<Node> = nodes
            .into_iter()
            .enumerate()
            .map(|(i, (status, cpu, mem, zone_a, ssd))| {
                let (cpu, mem) = if ample {
                    (1_000_000, 1024 * GI)
                } else {
                    (cpu, mem)
                };
                let mut n = Node::new(format!("n{i}"), Resources::new(cpu, mem))
                    .with_status(status)
                    .with_label("zone", if zone_a { "a" } else { "b" });
                if ssd {
                    n = n.with_label("disk", "ssd");
                }
                n
            })
            .collect();
        let node_count = nodes.len();
        let workloads: Vec<Workload> = workloads
            .into_iter()
            .enumerate()
            .map(
                |(i, (stateful, count, cpu, mem, selector, spread, volumes, dup))| {
                    // Now and then two workloads share an id.
                    let name = if dup == 0 && i > 0 {
                        format!("w{}", i - 1)
                    } else {
                        format!("w{i}")
                    };
                    let requests = Resources::new(cpu, mem);
                    let mut w = if stateful {
                        let ordinals: BTreeMap<u32, Option<NodeId>> = (0..count)
                            .map(|o| {
                                let v = volumes.get(o as usize).copied().unwrap_or(11);
                                let volume = if v < node_count {
                                    Some(NodeId::new(format!("n{v}")))
                                } else if v == 10 {
                                    Some(NodeId::new("gone"))
                                } else {
                                    None
                                };
                                // Sparse ordinals, as after a partial scale-down.
                                (o * 2 - o % 2, volume)
                            })
                            .collect();
                        Workload::stateful(sid(&name), ordinals, requests)
                    } else {
                        Workload::deployment(wid(&name), count, requests)
                    };
                    w.spread = spread;
                    if !roomy {
                        match selector {
                            1 => w = w.with_selector("zone", "a"),
                            2 => w = w.with_selector("disk", "ssd"),
                            _ => {}
                        }
                    }
                    w
                },
            )
            .collect();
        let mut view = ClusterView::new(nodes).expect("unique ids");
        for (wi, ordinal, ni) in running {
            let (Some(w), true) = (workloads.get(wi % workloads.len().max(1)), node_count > 0)
            else {
                continue;
            };
            let id = NodeId::new(format!("n{}", ni % node_count));
            let ordinal = match &w.replicas {
                Replicas::Count(_) => ordinal,
                Replicas::Stateful(_) => ordinal * 2 - ordinal % 2,
            };
            if let Some(n) = view.node_mut(&id) {
                n.running.insert(w.id.replica(ordinal));
            }
        }
        Scenario {
            view,
            workloads,
            options: Options {
                epsilon_permille: eps,
            },
        }
    })
}

/// Nodes that some replica placed on them in `before` has left in `after`:
/// where knock-on moves may land (a replica that spread or resources had
/// pushed past such a node may return to it once it is vacated).
pub fn vacated(before: &Placement, after: &Placement) -> std::collections::BTreeSet<NodeId> {
    before
        .assignments()
        .filter(|(r, n)| after.node_of(r) != Some(*n))
        .map(|(_, n)| n.clone())
        .collect()
}

/// Nodes that, in `after`, run a replica they did not run in `before` and
/// that had nowhere under the bound to go: no other alive node matching its
/// selector, under the bound, with its request free and spread to spare.
/// Such a node is over the bound by that replica, so it hands on replicas
/// that can go under it (displacement): moves off these nodes are knock-on
/// effects of overflow. Recomputed here from the placement alone.
pub fn overflowed_into(
    view: &ClusterView,
    workloads: &[Workload],
    before: &Placement,
    after: &Placement,
) -> std::collections::BTreeSet<NodeId> {
    let usage = Usage::of(after, workloads);
    let limits = spread_limits(view, workloads);
    let by_id: BTreeMap<&WorkloadId, &Workload> = workloads.iter().map(|w| (&w.id, w)).collect();
    after
        .assignments()
        .filter(|(r, x)| before.node_of(r) != Some(*x))
        .filter(|(r, x)| {
            let w = by_id[&r.workload];
            !view.nodes().any(|y| {
                y.id != **x
                    && y.status.accepts_replicas()
                    && y.matches(&w.node_selector)
                    && usage.load(&y.id) < after.load_bound
                    && usage.fits(y, w)
                    && usage.of_workload(&y.id, &w.id) < limits[&w.id]
            })
        })
        .map(|(_, x)| x.clone())
        .collect()
}

/// What a placement puts on each node: load, requests, replicas per
/// workload.
#[derive(Default)]
pub struct Usage {
    per_node: BTreeMap<NodeId, (u32, u64, u64)>,
    per_workload: BTreeMap<(NodeId, WorkloadId), u64>,
}

impl Usage {
    pub fn of(p: &Placement, workloads: &[Workload]) -> Self {
        let by_id: BTreeMap<&WorkloadId, &Workload> =
            workloads.iter().map(|w| (&w.id, w)).collect();
        let mut u = Usage::default();
        for (r, x) in p.assignments() {
            let w = by_id[&r.workload];
            let e = u.per_node.entry(x.clone()).or_default();
            e.0 += 1;
            e.1 += w.requests.cpu_millis;
            e.2 += w.requests.memory_bytes;
            *u.per_workload
                .entry((x.clone(), r.workload.clone()))
                .or_default() += 1;
        }
        u
    }

    pub fn load(&self, node: &NodeId) -> u32 {
        self.per_node.get(node).map_or(0, |e| e.0)
    }

    /// Whether `node` has one more replica of `w`'s request free.
    pub fn fits(&self, node: &Node, w: &Workload) -> bool {
        let (_, cpu, mem) = self.per_node.get(&node.id).copied().unwrap_or_default();
        cpu + w.requests.cpu_millis <= node.allocatable.cpu_millis
            && mem + w.requests.memory_bytes <= node.allocatable.memory_bytes
    }

    pub fn of_workload(&self, node: &NodeId, w: &WorkloadId) -> u64 {
        self.per_workload
            .get(&(node.clone(), w.clone()))
            .copied()
            .unwrap_or(0)
    }
}

/// Whether a replica of workload `id` is eligible on `node`: alive, matching
/// the selector, allocatable covering the request.
pub fn eligible(
    view: &ClusterView,
    id: &WorkloadId,
    workloads: &[Workload],
    node: &NodeId,
) -> bool {
    let (Some(w), Some(n)) = (workloads.iter().find(|w| w.id == *id), view.node(node)) else {
        return false;
    };
    n.status.accepts_replicas() && n.matches(&w.node_selector) && n.allocatable.covers(&w.requests)
}
