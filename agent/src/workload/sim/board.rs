//! How pod records travel in the simulation: one shared board per side of the network,
//! instead of each node's gossip store.
//!
//! A record a node publishes reaches the board of its side after the record delay, at the next
//! tick of the board's clock (so every node of a side sees the same records at the same
//! moment, and nodes whose membership and objects agree plan from identical inputs). A
//! partition gives each side a copy of the board, and records written on one side stay on it;
//! after a heal, the boards merge one anti-entropy interval later. Merging keeps, per record,
//! the owner's latest write (the owner's counter, as the store's owned entries are ordered), so
//! it is commutative, associative and idempotent like the store's.
//!
//! Why not the gossip store: see the module documentation of [`super`].

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_gossip::NodeId;

use crate::workload::snapshot::{RecordKey, Snapshot};
use crate::workload::stored::PodRecord;

/// One side's records.
#[derive(Clone, Default)]
pub(super) struct Board {
    /// The records, in a snapshot with no members nor objects (persistent maps: cloning it
    /// for a plan is O(1)).
    pub(super) snapshot: Snapshot,
    /// Raised by every change.
    pub(super) version: u64,
    /// Every record's latest write: the owner's counter and the value (`None`: removed).
    writes: BTreeMap<RecordKey, (u64, Option<Arc<PodRecord>>)>,
}

impl Board {
    /// Applies a write if it is newer than what the board holds; returns whether it was.
    fn apply(&mut self, key: RecordKey, counter: u64, value: Option<Arc<PodRecord>>) -> bool {
        if self.writes.get(&key).is_some_and(|(c, _)| *c >= counter) {
            return false;
        }
        self.snapshot
            .set_record(key.0, key.1.clone(), value.as_deref().cloned());
        self.writes.insert(key, (counter, value));
        self.version += 1;
        true
    }
}

/// The boards, and which one each node reads.
pub(super) struct Boards {
    boards: Vec<Board>,
    group_of: Vec<usize>,
}

impl Boards {
    /// One board that `nodes` nodes read.
    pub(super) fn new(nodes: usize) -> Boards {
        Boards {
            boards: vec![Board::default()],
            group_of: vec![0; nodes],
        }
    }

    /// The board node `i` reads.
    pub(super) fn of(&self, i: usize) -> (usize, &Board) {
        let g = self.group_of[i];
        (g, &self.boards[g])
    }

    /// Whether any node reads another board than node 0's.
    pub(super) fn is_split(&self) -> bool {
        self.boards.len() > 1
    }

    /// A record written by `owner` (node `writer`) reaches the board of the writer's side.
    /// Returns the group whose board changed.
    pub(super) fn write(
        &mut self,
        writer: usize,
        owner: NodeId,
        name: String,
        counter: u64,
        value: Option<Arc<PodRecord>>,
    ) -> Option<usize> {
        let g = self.group_of[writer];
        self.boards[g]
            .apply((owner, name), counter, value)
            .then_some(g)
    }

    /// The network splits into these groups (one per node): each group starts with a copy of
    /// the board its first node read.
    pub(super) fn split(&mut self, groups: &[u32]) {
        let mut first: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, g) in groups.iter().enumerate() {
            first.entry(*g).or_insert(i);
        }
        let index: BTreeMap<u32, usize> = first.keys().enumerate().map(|(k, g)| (*g, k)).collect();
        let boards = first
            .values()
            .map(|&i| {
                let mut b = self.boards[self.group_of[i]].clone();
                b.version += 1;
                b
            })
            .collect();
        self.boards = boards;
        self.group_of = groups.iter().map(|g| index[g]).collect();
    }

    /// Every board merges into one that every node reads.
    pub(super) fn merge(&mut self) {
        let mut boards = std::mem::take(&mut self.boards).into_iter();
        let mut merged = boards.next().unwrap_or_default();
        for other in boards {
            for (key, (counter, value)) in other.writes {
                merged.apply(key, counter, value);
            }
        }
        merged.version += 1;
        self.boards = vec![merged];
        self.group_of.iter_mut().for_each(|g| *g = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Arc<PodRecord> {
        let mut pod = crate::manifest::Pod::default();
        pod.metadata.name = name.into();
        Arc::new(PodRecord {
            format: crate::workload::stored::FORMAT,
            pod,
            status: Default::default(),
            replica: crate::workload::stored::ReplicaRef {
                workload: "pod/default/x".into(),
                ordinal: 0,
            },
            deployment: None,
            template_hash: None,
            ready_since_ms: None,
            events: Vec::new(),
            run: 0,
        })
    }

    #[test]
    fn sides_keep_their_own_writes_until_they_merge_by_owner_counter() {
        let a = NodeId([1; 32]);
        let b = NodeId([2; 32]);
        let mut boards = Boards::new(2);
        boards.write(0, a, "pod/default/x".into(), 1, Some(record("x1")));
        boards.split(&[0, 1]);
        assert!(boards.is_split());
        boards.write(0, a, "pod/default/x".into(), 2, Some(record("x2")));
        boards.write(1, b, "pod/default/y".into(), 1, Some(record("y")));
        // A stale write is refused.
        assert_eq!(boards.write(0, a, "pod/default/x".into(), 1, None), None);
        assert_eq!(boards.of(0).1.snapshot.record_count(), 1);
        assert_eq!(boards.of(1).1.snapshot.record_count(), 2);
        boards.merge();
        let (_, board) = boards.of(1);
        let names: Vec<&str> = board
            .snapshot
            .records()
            .map(|(_, r)| r.pod.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["x2", "y"]);
    }
}
