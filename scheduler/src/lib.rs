//! Leader-free placement for shoal.
//!
//! Every member runs [`place`] on the same replicated [`ClusterView`] and the
//! same [`Workload`]s and gets the same [`Placement`], so no leader decides
//! where replicas run. Placement is a pure function: no I/O, no clock, no
//! randomness, no process-seeded hashing; inputs are put in canonical order
//! (nodes by id, workloads by id, replicas by workload then ordinal) before
//! anything else, so the order they arrive in cannot matter.
//!
//! # Rules
//!
//! A node is *holding* when alive or suspect (it keeps replicas it runs) and
//! *accepting* when alive (it can be given new ones). A replica is
//! *eligible* for an accepting node whose labels match the workload's
//! selector and whose allocatable resources cover the request. Each node has
//! 128 points on a hash ring; a replica's *preference* is the order in which
//! a clockwise walk from its own point meets its eligible nodes. A replica's
//! *score* on a node is a rendezvous hash of the pair.
//!
//! The load of a node is the number of replicas on it; resources are a
//! separate, hard constraint. With `m` replicas that some holding node could
//! run (or that a volume pins) and `n` holding nodes:
//!
//! - the *bound* is `ceil((1+ε)·m/n)`, the capacity of bounded-load
//!   consistent hashing, rounded up so it is always reachable and does not
//!   drop when one node joins a large cluster. It is a preference, not a
//!   constraint: a node goes over it only with replicas that no eligible
//!   node under it can take, and a replica is never refused because of it;
//! - the *average* is `ceil(m/n)`;
//! - the *pull threshold* is `ceil((1-ε)·m/n)`, the bound's mirror, capped at
//!   `bound - 1`;
//! - a spread workload of `k` replicas with `e` eligible nodes may have
//!   `ceil(k/e)` replicas on a node: one while `e ≥ k`, as even as possible
//!   otherwise.
//!
//! A node is *open* to a replica when it is eligible, under the bound, has
//! the replica's request free and spread to spare. Placement runs seven
//! phases, each in canonical order:
//!
//! 1. *Pinned*: a stateful replica whose volume is on a holding node goes
//!    there if the selector matches and it fits, whatever spread and bound
//!    say (its data is there); else it is unschedulable. Stateful replicas
//!    whose volume node is dead, left or unknown are placed like others and
//!    flagged to start on a fresh volume.
//! 2. *Keep*: a replica stays on the holding node that runs it if that node
//!    matches, has room and spread allows (a node keeps its best-scoring
//!    replicas first). Suspect nodes keep theirs: no flapping on suspicion.
//! 3. *Relieve*: a node over the bound hands its lowest-scoring replicas to
//!    the least loaded alive node below the average that can take them:
//!    when a join lowers the bound, the new node absorbs what must move.
//! 4. *Pull*: an alive node below the pull threshold takes, from other alive
//!    nodes, replicas that prefer it to where they run (never a second
//!    replica of a spread workload), until none is left. This is how a new
//!    node gets its consistent-hash share; the threshold, well below the
//!    average, keeps one move from unlocking a chain of others.
//! 5. *Shed*: a node still over the bound drops its lowest-scoring unpinned
//!    replicas down to the bound.
//! 6. *Place*: every replica still unplaced, those of workloads with the
//!    fewest spare slots first (narrow selectors, tight spread), walks its
//!    preference to the first open node (bounded-load consistent hashing,
//!    Mirrokni, Thorup and Zadimoghaddam 2018).
//! 7. *Overflow*: a replica that found no open node stays on the holding
//!    node that runs it if that node matches, has room and spread allows
//!    (what phase 5 shed it from, typically: nothing is gained by moving it
//!    to another node over the bound). Then those still waiting go to the
//!    least loaded eligible node with room and spread to spare, the
//!    earliest in their preference among equals; with none, a replica is
//!    unschedulable, with a per-node account of why (status, selector, cpu,
//!    memory, spread). Whenever this takes a node over the bound, the node
//!    *displaces* its lowest-scoring unpinned replica that has an open node
//!    to the first one in that replica's preference, and is back where it
//!    was: replicas that can only run there push flexible ones elsewhere,
//!    and a node stays over the bound only while it holds nothing that
//!    could go under it. Displacing frees resources and spread, so the
//!    phase repeats while replicas wait and it displaced something.
//!
//! # Invariants
//!
//! [`Placement::check`] verifies, for any input: capacity is never exceeded,
//! selectors always match, no node exceeds a workload's spread limit (except
//! by replicas pinned to it), replicas only land on alive nodes (or stay on
//! suspect ones that run them), a node over the bound holds no unpinned
//! replica that has an open node elsewhere, and an unschedulable replica
//! really has no node with room and spread to spare.
//!
//! The tests also hold these laws: the result does not depend on input
//! order; placing a view whose running replicas are its own previous
//! placement changes nothing (stability, so members never chase each
//! other); no replica is unschedulable while an alive node matching it has
//! room and spread to spare; losing or adding a node moves only the
//! replicas that must move (those of a node that left, those a new node
//! takes), except for what the bound and spread themselves ask for: what a
//! changed bound or spread limit forces off a node (or lets go from a node
//! over the bound to one under it), knock-on moves into nodes that just gave
//! a replica away, pulls by nodes under a pull threshold that a departure
//! lifted past the old bound, and replicas displaced from a node that took
//! one with nowhere under the bound to go; two members whose views differ by
//! one node disagree only about replicas in those same categories.
//! [`reference::place_reference`] states the same rules naively, and the
//! tests hold [`place_with`] to exactly its output, also on crowded clusters
//! where overflow and displacement are the rule.
//!
//! Stability holds because the final state is one the next run's phases
//! accept as it is. Keep keeps everything. Relieve moves only to nodes
//! below the average, hence open, and no node over the bound holds a
//! replica with an open node. A pull needs an open node too (under the pull
//! threshold, room, no replica of the workload there); phase 4 stops at a
//! fixed point, and afterwards nodes under the bound only fill up while
//! nodes over it never drop below it, so pulls only get harder; replicas
//! placed in phases 6 and 7 went to their first open node, or had none.
//! Shed drops replicas that have no open node, and phase 7 returns each to
//! the node it was shed from before any other replica may take the room.
//!
//! # Limits
//!
//! A node over the bound keeps replicas that have nowhere under the bound
//! to go, but placement never moves replicas to free *resources*: a replica
//! is unschedulable when every eligible node is short of cpu or memory, even
//! if moving flexible replicas elsewhere would make room (no
//! defragmentation or preemption).
#![warn(missing_docs)]

mod check;
mod engine;
mod hash;
mod placement;
pub mod reference;
mod rules;
mod types;

pub use check::{CheckError, Violation};
pub use placement::{Decision, NoNodeReport, Placement, Reason, VolumeProblem};
pub use types::{
    ClusterView, IdError, Labels, Node, NodeId, NodeStatus, Options, ReplicaId, Replicas,
    Resources, ViewError, Workload, WorkloadId,
};

/// Places every replica of `workloads` on the nodes of `view`, with default
/// [`Options`] (ε = 0.1).
pub fn place(view: &ClusterView, workloads: &[Workload]) -> Placement {
    place_with(view, workloads, Options::default())
}

/// Places every replica of `workloads` on the nodes of `view`; see the crate
/// documentation for the rules.
pub fn place_with(view: &ClusterView, workloads: &[Workload], options: Options) -> Placement {
    engine::place(view, workloads, options, &mut Placer::default())
}

/// Places as [`place_with`] does, keeping for the next call what depends on the nodes only
/// (the hash ring: 128 points per node, sorted), so that placing again on the same nodes skips
/// building it. The result is always the one [`place_with`] gives.
#[derive(Debug, Default)]
pub struct Placer {
    /// The ring of every node that accepts replicas, and what it was built from.
    ring: Option<KeptRing>,
}

/// A ring and what it was built from: each node's hash and whether it accepts, in the view's
/// order; then the ring's points (point, node index), sorted.
type KeptRing = (Vec<(u64, bool)>, Vec<(u64, u32)>);

impl Placer {
    /// Places every replica of `workloads` on the nodes of `view`.
    pub fn place(
        &mut self,
        view: &ClusterView,
        workloads: &[Workload],
        options: Options,
    ) -> Placement {
        engine::place(view, workloads, options, self)
    }

    /// The ring for these nodes (hash, accepting), built or kept.
    pub(crate) fn ring(&mut self, nodes: Vec<(u64, bool)>) -> Vec<(u64, u32)> {
        if let Some((key, ring)) = &self.ring {
            if *key == nodes {
                return ring.clone();
            }
        }
        let mut ring = Vec::new();
        for (i, (hash, accepting)) in nodes.iter().enumerate() {
            if *accepting {
                for v in 0..hash::VNODES {
                    ring.push((hash::vnode_point(*hash, v), i as u32));
                }
            }
        }
        ring.sort_unstable();
        self.ring = Some((nodes, ring.clone()));
        ring
    }
}
