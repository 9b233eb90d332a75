//! Output types: where each replica runs, or why it cannot.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{Bytes, Labels, Millicores, NodeId, Options, ReplicaId, Resources, WorkloadId};

/// The outcome of placement: a decision for every replica asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The options it was computed with.
    pub options: Options,
    /// The load bound in force, `ceil((1+ε)·m/n)`: a node holds more
    /// replicas only when those over it are pinned to it by their volume or
    /// could run on no eligible node under the bound (see
    /// [`Placement::check`]). A preference, never a reason to refuse a
    /// replica.
    pub load_bound: u32,
    /// Decisions by workload, then by ordinal.
    pub workloads: BTreeMap<WorkloadId, BTreeMap<u32, Decision>>,
}

/// What happens to one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run it on `node`.
    Run {
        /// The node that runs it.
        node: NodeId,
        /// A stateful replica whose volume is not on `node` (it never had
        /// one, or its node is dead or gone): start it on a fresh volume.
        fresh_volume: bool,
    },
    /// No node can run it.
    Unschedulable(Reason),
}

impl Decision {
    /// The node that runs the replica, if any.
    pub fn node(&self) -> Option<&NodeId> {
        match self {
            Decision::Run { node, .. } => Some(node),
            Decision::Unschedulable(_) => None,
        }
    }
}

/// Why a replica is unschedulable, in terms a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No node can take it; counts say why, one reason per node (the first
    /// that applies, in the order of the fields).
    NoNode(NoNodeReport),
    /// Its volume pins it to a node that cannot run it.
    VolumeNode {
        /// The node holding the volume.
        node: NodeId,
        /// What that node lacks.
        problem: VolumeProblem,
    },
    /// Several workloads carry this id; none of them is placed until the
    /// conflict is resolved, since any winner would be arbitrary.
    DuplicateWorkload {
        /// How many workloads carry the id.
        copies: u32,
    },
}

/// Per-node breakdown of why no node can run a replica. Counts add up to
/// `nodes`: each node is counted under the first reason that applies. The
/// load bound is never among them: a node at or over it still takes a
/// replica that no node under it can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoNodeReport {
    /// Nodes in the view.
    pub nodes: u32,
    /// Nodes not alive (suspect, dead or left).
    pub not_ready: u32,
    /// Nodes whose labels do not match the selector.
    pub selector_mismatch: u32,
    /// Nodes with less cpu free than requested.
    pub insufficient_cpu: u32,
    /// Nodes with less memory free than requested.
    pub insufficient_memory: u32,
    /// Nodes already running as many replicas of the workload as spread
    /// allows.
    pub spread: u32,
    /// The workload's selector.
    pub selector: Labels,
    /// The workload's per-replica request.
    pub requests: Resources,
    /// Replicas of the workload allowed per node, if it spreads.
    pub spread_limit: Option<u32>,
}

/// What the node holding a stateful replica's volume lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeProblem {
    /// Its labels no longer match the workload's selector.
    SelectorMismatch {
        /// The selector.
        selector: Labels,
    },
    /// Not enough cpu free.
    InsufficientCpu {
        /// Cpu free on the node, in millicores.
        free_millis: u64,
        /// Cpu requested, in millicores.
        requested_millis: u64,
    },
    /// Not enough memory free.
    InsufficientMemory {
        /// Memory free on the node, in bytes.
        free_bytes: u64,
        /// Memory requested, in bytes.
        requested_bytes: u64,
    },
}

pub(crate) struct SelectorText<'a>(pub(crate) &'a Labels);

impl fmt::Display for SelectorText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoNode(report) => report.fmt(f),
            Reason::VolumeNode { node, problem } => {
                write!(f, "its volume is on node {node}, which ")?;
                match problem {
                    VolumeProblem::SelectorMismatch { selector } => {
                        write!(f, "does not match selector {}", SelectorText(selector))?;
                    }
                    VolumeProblem::InsufficientCpu {
                        free_millis,
                        requested_millis,
                    } => write!(
                        f,
                        "has {} cpu free of the {} requested",
                        Millicores(*free_millis),
                        Millicores(*requested_millis)
                    )?,
                    VolumeProblem::InsufficientMemory {
                        free_bytes,
                        requested_bytes,
                    } => write!(
                        f,
                        "has {} memory free of the {} requested",
                        Bytes(*free_bytes),
                        Bytes(*requested_bytes)
                    )?,
                }
                f.write_str(" (free resources there, or delete the volume to let it move)")
            }
            Reason::DuplicateWorkload { copies } => write!(
                f,
                "{copies} workloads carry this id; rename or remove all but one"
            ),
        }
    }
}

impl fmt::Display for NoNodeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("the cluster has no nodes");
        }
        write!(f, "0/{} nodes can run it", self.nodes)?;
        let mut sep = ": ";
        let mut part = |f: &mut fmt::Formatter<'_>, count: u32, text: fmt::Arguments<'_>| {
            if count == 0 {
                return Ok(());
            }
            let r = write!(f, "{sep}{count} {text}");
            sep = ", ";
            r
        };
        let one = |n: u32, singular: &'static str, plural: &'static str| {
            if n == 1 { singular } else { plural }
        };
        let n = self.not_ready;
        part(f, n, format_args!("{} not ready", one(n, "is", "are")))?;
        let n = self.selector_mismatch;
        part(
            f,
            n,
            format_args!(
                "{} not match selector {}",
                one(n, "does", "do"),
                SelectorText(&self.selector)
            ),
        )?;
        let n = self.insufficient_cpu;
        part(
            f,
            n,
            format_args!(
                "{} less than {} cpu free",
                one(n, "has", "have"),
                Millicores(self.requests.cpu_millis)
            ),
        )?;
        let n = self.insufficient_memory;
        part(
            f,
            n,
            format_args!(
                "{} less than {} memory free",
                one(n, "has", "have"),
                Bytes(self.requests.memory_bytes)
            ),
        )?;
        let n = self.spread;
        part(
            f,
            n,
            format_args!(
                "already {} {} replica{} of it (spread)",
                one(n, "runs", "run"),
                self.spread_limit.unwrap_or(0),
                if self.spread_limit == Some(1) {
                    ""
                } else {
                    "s"
                }
            ),
        )?;
        Ok(())
    }
}

impl Placement {
    /// The decision for one replica, if it was asked for.
    pub fn decision(&self, replica: &ReplicaId) -> Option<&Decision> {
        self.workloads.get(&replica.workload)?.get(&replica.ordinal)
    }

    /// The decisions for one workload's replicas, by ordinal.
    pub fn workload(&self, id: &WorkloadId) -> Option<&BTreeMap<u32, Decision>> {
        self.workloads.get(id)
    }

    /// The node that runs `replica`, if it is placed.
    pub fn node_of(&self, replica: &ReplicaId) -> Option<&NodeId> {
        self.decision(replica).and_then(Decision::node)
    }

    /// Every decision, in replica order.
    pub fn decisions(&self) -> impl Iterator<Item = (ReplicaId, &Decision)> + '_ {
        self.workloads.iter().flat_map(|(workload, ordinals)| {
            ordinals
                .iter()
                .map(move |(&ordinal, decision)| (workload.replica(ordinal), decision))
        })
    }

    /// Every placed replica with its node, in replica order.
    pub fn assignments(&self) -> impl Iterator<Item = (ReplicaId, &NodeId)> + '_ {
        self.decisions()
            .filter_map(|(replica, decision)| decision.node().map(|node| (replica, node)))
    }

    /// Every unschedulable replica with its reason, in replica order.
    pub fn unschedulable(&self) -> impl Iterator<Item = (ReplicaId, &Reason)> + '_ {
        self.decisions()
            .filter_map(|(replica, decision)| match decision {
                Decision::Unschedulable(reason) => Some((replica, reason)),
                Decision::Run { .. } => None,
            })
    }

    /// Number of decisions (replicas asked for).
    pub fn len(&self) -> usize {
        self.workloads.values().map(BTreeMap::len).sum()
    }

    /// Whether there is no decision at all.
    pub fn is_empty(&self) -> bool {
        self.workloads.values().all(BTreeMap::is_empty)
    }

    /// Replicas placed on each node (nodes with none are absent).
    pub fn loads(&self) -> BTreeMap<&NodeId, u32> {
        let mut loads = BTreeMap::new();
        for ordinals in self.workloads.values() {
            for decision in ordinals.values() {
                if let Some(node) = decision.node() {
                    *loads.entry(node).or_insert(0) += 1;
                }
            }
        }
        loads
    }

    /// Replicas placed here on a different node than in `before` (replicas
    /// newly placed or newly unschedulable do not count: they did not move).
    pub fn moved_since(&self, before: &Placement) -> usize {
        self.workloads
            .iter()
            .filter_map(|(workload, ordinals)| Some((ordinals, before.workloads.get(workload)?)))
            .map(|(now, then)| {
                now.iter()
                    .filter(|(ordinal, decision)| {
                        match (decision.node(), then.get(ordinal).and_then(Decision::node)) {
                            (Some(a), Some(b)) => a != b,
                            _ => false,
                        }
                    })
                    .count()
            })
            .sum()
    }
}
