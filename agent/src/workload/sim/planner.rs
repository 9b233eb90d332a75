//! Planning in the simulation: the agent's planner, called through [`plan_cluster`], with the
//! plans of identical inputs shared.
//!
//! [`plan`] is a pure function of the snapshot, the forfeited node and (only when a Deployment
//! has `minReadySeconds`) the time. Nodes whose views hold the same members in the same
//! states, the same object versions and the same board version have the same snapshot, so one
//! plan serves them all: the cache is keyed by the views' fingerprints and the board version,
//! and a hit is confirmed by comparing the members and object versions in full, so sharing is
//! exact, never an approximation. Entries of board versions that can no longer be read are
//! dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shoal_gossip::NodeId;

use super::view::View;
use crate::node_info::NodeInfo;
use crate::workload::plan::{Plan, Planner};
use crate::workload::snapshot::{MemberSnap, Snapshot};

/// What every node knows of every member apart from its state: name, address, node info (the
/// simulation's nodes never change theirs).
#[derive(Clone, Debug)]
pub(super) struct MemberFacts {
    pub(super) name: String,
    pub(super) addr: String,
    pub(super) info: NodeInfo,
}

/// Plans kept at most.
const MAX_ENTRIES: usize = 256;
/// Views (members and objects) and planners kept at most.
const MAX_VIEWS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    members: u128,
    objects: u128,
    board: (usize, u64),
    forfeit: Option<NodeId>,
    now_ms: Option<u64>,
}

/// A plan and the snapshot it was made from.
pub(super) struct Planned {
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) plan: Arc<Plan>,
    view: View,
}

/// Plans by input, and how often they were computed or shared.
#[derive(Default)]
pub(super) struct PlanCache {
    entries: BTreeMap<Key, Planned>,
    /// Plans computed.
    pub(super) computed: u64,
    /// Plans handed to a node from the cache.
    pub(super) shared: u64,
    /// Wall-clock time spent planning, in seconds (not part of the deterministic result).
    pub(super) seconds: f64,
    /// Distinct member views and board versions plans were computed for.
    pub(super) member_views: BTreeSet<u128>,
    pub(super) board_versions: BTreeSet<(usize, u64)>,
    /// The members and the objects of each view planned for, each as a snapshot built once,
    /// so that their revisions stay the same from plan to plan.
    member_parts: BTreeMap<u128, (View, Snapshot)>,
    object_parts: BTreeMap<u128, (View, Snapshot)>,
    /// The agent's planner, one per member view, board and forfeit: each sees its board's
    /// versions one after another and redoes only what changed, as an agent's does (objects
    /// are decoded once and shared, so a planner tells an object it already knows).
    planners: BTreeMap<(u128, usize, Option<NodeId>), Planner>,
}

impl PlanCache {
    /// The plan for a node with this view, reading `board` (its group, version and records),
    /// computed or shared.
    pub(super) fn plan(
        &mut self,
        view: &View,
        board: (usize, u64, &Snapshot),
        facts: &BTreeMap<NodeId, MemberFacts>,
        forfeit: Option<&NodeId>,
        now_ms: u64,
    ) -> &Planned {
        let (group, version, records) = board;
        let (members, objects) = view.fingerprints();
        // The forfeit only leaves out the forfeited node's records: with none on the board it
        // changes nothing, and a node that just started shares the plan of the others.
        let forfeit = forfeit.filter(|me| records.records_of(me).next().is_some());
        let key = Key {
            members,
            objects,
            board: (group, version),
            forfeit: forfeit.copied(),
            now_ms: view.is_timed().then_some(now_ms),
        };
        let hit = self
            .entries
            .get(&key)
            .is_some_and(|p| p.view.members() == view.members() && p.view.same_objects(view));
        if hit {
            self.shared += 1;
        } else {
            // Old board versions are never asked for again; beyond that, the cache is
            // emptied when full (it only saves work, never changes a result).
            if self.entries.len() >= MAX_ENTRIES {
                self.entries
                    .retain(|k, _| k.board.0 != group || k.board.1 >= version);
                if self.entries.len() >= MAX_ENTRIES {
                    self.entries.clear();
                }
            }
            let started = std::time::Instant::now();
            if self
                .member_parts
                .get(&members)
                .is_none_or(|(v, _)| v.members() != view.members())
            {
                if self.member_parts.len() >= MAX_VIEWS {
                    self.member_parts.clear();
                }
                let mut part = Snapshot::default();
                part.set_members(view.members().iter().filter_map(|(id, state)| {
                    let f = facts.get(id)?;
                    Some(MemberSnap {
                        id: *id,
                        name: f.name.clone(),
                        addr: f.addr.clone(),
                        state: *state,
                        info: Some(f.info.clone()),
                    })
                }));
                self.member_parts.insert(members, (view.clone(), part));
            }
            if !self
                .object_parts
                .get(&objects)
                .is_some_and(|(v, _)| v.same_objects(view))
            {
                if self.object_parts.len() >= MAX_VIEWS {
                    self.object_parts.clear();
                }
                let mut part = Snapshot::default();
                for (key, interned) in view.objects() {
                    part.set_shared_object(key.clone(), interned.object.clone());
                }
                self.object_parts.insert(objects, (view.clone(), part));
            }
            let mut snapshot = records.clone();
            if let Some((_, part)) = self.member_parts.get(&members) {
                snapshot.share_members(part);
            }
            if let Some((_, part)) = self.object_parts.get(&objects) {
                snapshot.share_objects(part);
            }
            if self.planners.len() >= MAX_VIEWS {
                self.planners.clear();
            }
            let plan = self
                .planners
                .entry((members, group, forfeit.copied()))
                .or_default()
                .plan(&snapshot, forfeit, now_ms);
            self.seconds += started.elapsed().as_secs_f64();
            self.computed += 1;
            self.member_views.insert(members);
            self.board_versions.insert((group, version));
            self.entries.insert(
                key,
                Planned {
                    snapshot: Arc::new(snapshot),
                    plan,
                    view: view.clone(),
                },
            );
        }
        &self.entries[&key]
    }
}
