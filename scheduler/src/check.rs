//! The invariant checker: verifies a placement against the view and the
//! workloads it claims to be for, without trusting how it was computed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::placement::{Decision, Placement, Reason};
use crate::rules;
use crate::types::{ClusterView, Node, NodeId, NodeStatus, ReplicaId, Workload, WorkloadId};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A replica asked for has no decision.
    #[error("{0} has no decision")]
    Missing(ReplicaId),
    /// A decision for a replica nobody asked for.
    #[error("{0} was not asked for")]
    Unexpected(ReplicaId),
    /// Placed on a node absent from the view.
    #[error("{replica} placed on unknown node {node}")]
    UnknownNode {
        /// The replica.
        replica: ReplicaId,
        /// The node.
        node: NodeId,
    },
    /// Placed on a node that may not take it: not alive, and not a suspect
    /// node already running it.
    #[error("{replica} placed on {node}, which is {status:?} and does not run it")]
    NodeNotReady {
        /// The replica.
        replica: ReplicaId,
        /// The node.
        node: NodeId,
        /// The node's status.
        status: NodeStatus,
    },
    /// Placed on a node whose labels do not match the selector.
    #[error("{replica} placed on {node}, which does not match its selector")]
    SelectorMismatch {
        /// The replica.
        replica: ReplicaId,
        /// The node.
        node: NodeId,
    },
    /// A replica pinned by its volume placed elsewhere.
    #[error("{replica} placed on {node}, but its volume is on {volume_node}")]
    NotOnVolumeNode {
        /// The replica.
        replica: ReplicaId,
        /// Where it was placed.
        node: NodeId,
        /// Where its volume is.
        volume_node: NodeId,
    },
    /// The fresh-volume flag is wrong.
    #[error("{replica}: fresh_volume should be {expected}")]
    FreshVolume {
        /// The replica.
        replica: ReplicaId,
        /// The right value.
        expected: bool,
    },
    /// A node's replicas request more than it has.
    #[error("{node} is over capacity: {used_cpu_millis}m cpu / {used_memory_bytes} bytes used")]
    OverCapacity {
        /// The node.
        node: NodeId,
        /// Cpu requested by its replicas.
        used_cpu_millis: u64,
        /// Memory requested by its replicas.
        used_memory_bytes: u64,
    },
    /// The placement's recorded load bound is not the one the rules give.
    #[error("load bound is {recorded}, rules give {expected}")]
    WrongLoadBound {
        /// What the placement says.
        recorded: u32,
        /// What it should be.
        expected: u32,
    },
    /// A node holds more than the load bound, although one of its unpinned
    /// replicas could run on an eligible node under the bound.
    #[error(
        "{node} holds {load} replicas, over the bound {bound}, yet {replica} could run on {under}, which is under it"
    )]
    OverLoadBound {
        /// The node.
        node: NodeId,
        /// Its replica count.
        load: u32,
        /// The load bound.
        bound: u32,
        /// An unpinned replica on the node.
        replica: ReplicaId,
        /// An eligible node under the bound that could run it.
        under: NodeId,
    },
    /// A node runs more replicas of a spread workload than allowed.
    #[error("{node} runs {count} replicas of {workload}, over the spread limit {limit}")]
    Spread {
        /// The workload.
        workload: WorkloadId,
        /// The node.
        node: NodeId,
        /// Replicas of the workload on the node.
        count: u32,
        /// The limit (or its pinned count, if higher).
        limit: u32,
    },
    /// Declared unschedulable although a node could run it.
    #[error("{replica} is unschedulable, yet {node} could run it")]
    CouldRun {
        /// The replica.
        replica: ReplicaId,
        /// A node that could.
        node: NodeId,
    },
    /// The reason given does not fit the replica.
    #[error("{replica}: wrong reason {reason}")]
    WrongReason {
        /// The replica.
        replica: ReplicaId,
        /// The reason given.
        reason: String,
    },
}

/// Every invariant a placement breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CheckError(pub Vec<Violation>);

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "placement breaks {} invariant(s)", self.0.len())?;
        for v in &self.0 {
            write!(f, "\n  - {v}")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct NodeTally {
    cpu: u64,
    memory: u64,
    load: u32,
    pinned: u32,
    per_workload: BTreeMap<WorkloadId, WorkloadTally>,
}

/// Replicas of one workload on one node.
#[derive(Default)]
struct WorkloadTally {
    count: u32,
    pinned: u32,
    /// Its lowest unpinned ordinal there, if any.
    unpinned: Option<u32>,
}

impl Placement {
    /// Checks the invariants placement promises, for this view and these
    /// workloads:
    ///
    /// - every replica asked for has exactly one decision, and nothing else;
    /// - a replica runs on a node of the view that is alive, or suspect and
    ///   already running it, or holding its volume; the node matches its
    ///   selector; a replica whose volume is on an alive or suspect node runs
    ///   there or nowhere;
    /// - no node's replicas request more cpu or memory than it has;
    /// - the load bound is the one the rules give, and it is honoured
    ///   wherever it can be: a node may hold more than the bound `B` only if
    ///   none of its unpinned replicas has an *open alternative*, that is a
    ///   node other than its own that is alive, matches its selector, holds
    ///   fewer than `B` replicas, has the cpu and memory it requests free
    ///   (after everything placed there) and runs fewer replicas of its
    ///   workload than the spread limit (pinned replicas count in the load
    ///   but never need an alternative);
    /// - no node runs more replicas of a spread workload than its limit;
    /// - an unschedulable replica could run on no alive node as things stand
    ///   (selector, free resources, spread: the bound is no reason), and its
    ///   reason fits (a per-node account gives every node of the view a
    ///   reason).
    pub fn check(&self, view: &ClusterView, workloads: &[Workload]) -> Result<(), CheckError> {
        let mut violations = Vec::new();
        let mut groups: BTreeMap<&WorkloadId, Vec<&Workload>> = BTreeMap::new();
        for w in workloads {
            groups.entry(&w.id).or_default().push(w);
        }

        for (id, decisions) in &self.workloads {
            let asked: BTreeSet<u32> = groups
                .get(id)
                .map(|g| g.iter().flat_map(|w| w.replicas.ordinals()).collect())
                .unwrap_or_default();
            for ordinal in decisions.keys() {
                if !asked.contains(ordinal) {
                    violations.push(Violation::Unexpected(id.replica(*ordinal)));
                }
            }
        }
        for (id, group) in &groups {
            for w in group {
                for ordinal in w.replicas.ordinals() {
                    if self.decision(&id.replica(ordinal)).is_none() {
                        violations.push(Violation::Missing(id.replica(ordinal)));
                    }
                }
            }
        }

        let holding = view.nodes().filter(|n| n.status.holds_replicas()).count() as u64;
        let pinned_node = |w: &Workload, ordinal: u32| -> Option<&Node> {
            w.replicas
                .volume(ordinal)
                .and_then(|id| view.node(id))
                .filter(|n| n.status.holds_replicas())
        };
        let mut counted = 0u64;
        let mut spread_limits: BTreeMap<&WorkloadId, u32> = BTreeMap::new();
        for (id, group) in &groups {
            let [w] = group.as_slice() else { continue };
            let holdable = view.nodes().any(|n| {
                n.status.holds_replicas()
                    && n.matches(&w.node_selector)
                    && n.allocatable.covers(&w.requests)
            });
            counted += w
                .replicas
                .ordinals()
                .filter(|&o| holdable || pinned_node(w, o).is_some())
                .count() as u64;
            let eligible = view
                .nodes()
                .filter(|n| {
                    n.status.accepts_replicas()
                        && n.matches(&w.node_selector)
                        && n.allocatable.covers(&w.requests)
                })
                .count() as u64;
            spread_limits.insert(
                id,
                rules::spread_limit(w.spread, w.replicas.len() as u64, eligible),
            );
        }
        let bound = rules::load_bound(counted, holding, self.options.epsilon_permille);
        if bound != self.load_bound {
            violations.push(Violation::WrongLoadBound {
                recorded: self.load_bound,
                expected: bound,
            });
        }

        // Per-replica rules that need no totals, and the totals themselves.
        let mut tally: BTreeMap<&NodeId, NodeTally> = BTreeMap::new();
        for (id, group) in &groups {
            let Some(decisions) = self.workloads.get(*id) else {
                continue;
            };
            let [w] = group.as_slice() else {
                for (ordinal, decision) in decisions {
                    if !matches!(decision, Decision::Unschedulable(Reason::DuplicateWorkload { copies }) if *copies as usize == group.len())
                    {
                        violations.push(Violation::WrongReason {
                            replica: id.replica(*ordinal),
                            reason: format!("{decision:?} for a duplicated id"),
                        });
                    }
                }
                continue;
            };
            for (&ordinal, decision) in decisions {
                let replica = id.replica(ordinal);
                let Decision::Run {
                    node: node_id,
                    fresh_volume,
                } = decision
                else {
                    continue;
                };
                let Some(node) = view.node(node_id) else {
                    violations.push(Violation::UnknownNode {
                        replica,
                        node: node_id.clone(),
                    });
                    continue;
                };
                let pinned = pinned_node(w, ordinal);
                if let Some(volume_node) = pinned {
                    if volume_node.id != *node_id {
                        violations.push(Violation::NotOnVolumeNode {
                            replica: replica.clone(),
                            node: node_id.clone(),
                            volume_node: volume_node.id.clone(),
                        });
                    }
                } else if !(node.status.accepts_replicas()
                    || node.status.holds_replicas() && node.running.contains(&replica))
                {
                    violations.push(Violation::NodeNotReady {
                        replica: replica.clone(),
                        node: node_id.clone(),
                        status: node.status,
                    });
                }
                if !node.matches(&w.node_selector) {
                    violations.push(Violation::SelectorMismatch {
                        replica: replica.clone(),
                        node: node_id.clone(),
                    });
                }
                let expected =
                    w.replicas.is_stateful() && w.replicas.volume(ordinal) != Some(node_id);
                if *fresh_volume != expected {
                    violations.push(Violation::FreshVolume { replica, expected });
                }
                let t = tally.entry(node_id).or_default();
                t.cpu += w.requests.cpu_millis;
                t.memory += w.requests.memory_bytes;
                t.load += 1;
                let is_pinned = u32::from(pinned.is_some());
                t.pinned += is_pinned;
                let pw = t.per_workload.entry((*id).clone()).or_default();
                pw.count += 1;
                pw.pinned += is_pinned;
                if pinned.is_none() && pw.unpinned.is_none() {
                    pw.unpinned = Some(ordinal);
                }
            }
        }

        for (node_id, t) in &tally {
            let Some(node) = view.node(node_id) else {
                continue;
            };
            if t.cpu > node.allocatable.cpu_millis || t.memory > node.allocatable.memory_bytes {
                violations.push(Violation::OverCapacity {
                    node: (*node_id).clone(),
                    used_cpu_millis: t.cpu,
                    used_memory_bytes: t.memory,
                });
            }
            for (workload, wt) in &t.per_workload {
                let limit = spread_limits[workload].max(wt.pinned);
                if wt.count > limit {
                    violations.push(Violation::Spread {
                        workload: workload.clone(),
                        node: (*node_id).clone(),
                        count: wt.count,
                        limit,
                    });
                }
            }
        }

        // Over the bound only with replicas that have nowhere under it to
        // go. Replicas of one workload on one node share their alternatives,
        // so one per workload is asked about.
        let empty = NodeTally::default();
        let free_for = |n: &Node, w: &Workload| {
            let t = tally.get(&n.id).unwrap_or(&empty);
            t.cpu + w.requests.cpu_millis <= n.allocatable.cpu_millis
                && t.memory + w.requests.memory_bytes <= n.allocatable.memory_bytes
        };
        let spread_room = |n: &Node, id: &WorkloadId| {
            let t = tally.get(&n.id).unwrap_or(&empty);
            t.per_workload.get(id).map_or(0, |c| c.count) < spread_limits[id]
        };
        for (node_id, t) in &tally {
            if t.load <= bound {
                continue;
            }
            for (workload, wt) in &t.per_workload {
                let (Some(ordinal), Some([w])) =
                    (wt.unpinned, groups.get(workload).map(Vec::as_slice))
                else {
                    continue;
                };
                let under = view.nodes().find(|y| {
                    y.id != **node_id
                        && y.status.accepts_replicas()
                        && y.matches(&w.node_selector)
                        && tally.get(&y.id).map_or(0, |ty| ty.load) < bound
                        && free_for(y, w)
                        && spread_room(y, workload)
                });
                if let Some(y) = under {
                    violations.push(Violation::OverLoadBound {
                        node: (*node_id).clone(),
                        load: t.load,
                        bound,
                        replica: workload.replica(ordinal),
                        under: y.id.clone(),
                    });
                }
            }
        }

        // Unschedulable replicas: no node could take them as things stand.
        for (id, group) in &groups {
            let [w] = group.as_slice() else { continue };
            let Some(decisions) = self.workloads.get(*id) else {
                continue;
            };
            for (&ordinal, decision) in decisions {
                let Decision::Unschedulable(reason) = decision else {
                    continue;
                };
                let replica = id.replica(ordinal);
                let fits = |node: &Node| free_for(node, w);
                match (reason, pinned_node(w, ordinal)) {
                    (Reason::VolumeNode { node, .. }, Some(volume_node))
                        if *node == volume_node.id =>
                    {
                        if volume_node.matches(&w.node_selector) && fits(volume_node) {
                            violations.push(Violation::CouldRun {
                                replica,
                                node: node.clone(),
                            });
                        }
                    }
                    (Reason::NoNode(report), None) => {
                        let counted = report.not_ready
                            + report.selector_mismatch
                            + report.insufficient_cpu
                            + report.insufficient_memory
                            + report.spread;
                        if report.nodes as usize != view.len() || counted != report.nodes {
                            violations.push(Violation::WrongReason {
                                replica: replica.clone(),
                                reason: format!(
                                    "{reason}: accounts for {counted} of {} nodes, the view has {}",
                                    report.nodes,
                                    view.len()
                                ),
                            });
                        }
                        let could = view.nodes().find(|n| {
                            n.status.accepts_replicas()
                                && n.matches(&w.node_selector)
                                && fits(n)
                                && spread_room(n, id)
                        });
                        if let Some(n) = could {
                            violations.push(Violation::CouldRun {
                                replica,
                                node: n.id.clone(),
                            });
                        }
                    }
                    (reason, _) => violations.push(Violation::WrongReason {
                        replica,
                        reason: reason.to_string(),
                    }),
                }
            }
        }

        if violations.is_empty() {
            Ok(())
        } else {
            Err(CheckError(violations))
        }
    }
}
