//! One `apply` becomes visible whole: the objects a request writes together are held back
//! from a node's view until the node holds all of them.
//!
//! The objects of one apply reach the other nodes over several gossip messages. A node that
//! planned from the first of them would place the workloads it knows as if the others did not
//! exist, and since placement balances the load of every workload together (bounded loads), a
//! placement made from part of an apply differs from the whole's: pods start on one node and
//! then move to the node the whole apply gives them. So every object a request writes carries
//! its [`Batch`] (an id, how many objects it holds, when it was written), and a node's view
//! takes a new object version of a batch only once it holds every object of that batch, all
//! at once, as if the apply had arrived in one message.
//!
//! A batch may never come whole: one of its objects can be written again (or deleted) before
//! it arrives. So a batch is held at most [`HOLD`] from when its first object reached this
//! node, and a version written longer than [`HOLD`] ago is taken at once (a node that starts
//! or comes back takes what its store holds, without waiting). Until then the view keeps the
//! version it had (or none): holding back never shows a node anything that was not written.
//!
//! Cost: one map entry per batch in flight and one per held object; every object is looked at
//! once on arrival and once on release.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_gossip::ObjectKey;

/// How long a batch is held at most, from its first object's arrival (and how old a batch's
/// version must be to pass at once). Long enough for gossip to deliver an apply of thousands
/// of objects, and for anti-entropy to repair what the push missed.
pub(crate) const HOLD_MS: u64 = 5_000;

/// The objects one request wrote together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Batch {
    /// Random, unique to the request.
    pub(crate) id: u64,
    /// Objects written in it.
    pub(crate) size: u32,
    /// When it was written, ms since the Unix epoch (by the writer's clock).
    pub(crate) at_ms: u64,
}

/// A batch some of whose objects arrived.
struct Pending<V> {
    size: u32,
    /// Hold its objects until then at most (ms since the Unix epoch, this node's clock).
    until_ms: u64,
    /// The objects of the batch this node holds, with the versions held back.
    held: BTreeMap<ObjectKey, V>,
}

/// Holds object versions back until their batch is whole. `V` is whatever a view keeps of an
/// object.
pub(crate) struct BatchGate<V> {
    pending: BTreeMap<u64, Pending<V>>,
    /// The batch each held key waits for.
    waiting: BTreeMap<ObjectKey, u64>,
    /// Batches released whole, and released because their time was up.
    pub(crate) released_whole: u64,
    pub(crate) released_late: u64,
}

impl<V> Default for BatchGate<V> {
    fn default() -> Self {
        BatchGate {
            pending: BTreeMap::new(),
            waiting: BTreeMap::new(),
            released_whole: 0,
            released_late: 0,
        }
    }
}

impl<V> BatchGate<V> {
    /// A new version of `key` arrived (`value` is `None` for a deletion, which never waits):
    /// returns what the view takes now, in order: nothing while the version waits for its
    /// batch, the version alone when it belongs to no batch (or an old one), the whole batch
    /// when this completes it.
    pub(crate) fn offer(
        &mut self,
        key: ObjectKey,
        batch: Option<Batch>,
        value: Option<V>,
        now_ms: u64,
    ) -> Vec<(ObjectKey, Option<V>)> {
        // A newer version replaces the one held back: the older one is never shown.
        if let Some(id) = self.waiting.remove(&key) {
            if let Some(pending) = self.pending.get_mut(&id) {
                pending.held.remove(&key);
                if pending.held.is_empty() {
                    self.pending.remove(&id);
                }
            }
        }
        let batch = batch.filter(|b| b.size > 1 && now_ms < b.at_ms.saturating_add(HOLD_MS));
        let (batch, value) = match (batch, value) {
            (Some(batch), Some(value)) => (batch, value),
            (_, value) => return vec![(key, value)],
        };
        let pending = self.pending.entry(batch.id).or_insert_with(|| Pending {
            size: batch.size,
            until_ms: now_ms.saturating_add(HOLD_MS),
            held: BTreeMap::new(),
        });
        self.waiting.insert(key.clone(), batch.id);
        pending.held.insert(key, value);
        if pending.held.len() < pending.size as usize {
            return Vec::new();
        }
        self.released_whole += 1;
        self.release(batch.id)
    }

    /// Releases every batch whose time is up: what the view takes now.
    pub(crate) fn expire(&mut self, now_ms: u64) -> Vec<(ObjectKey, Option<V>)> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.until_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in due {
            self.released_late += 1;
            out.extend(self.release(id));
        }
        out
    }

    /// When the next batch's time is up, if any is held.
    pub(crate) fn next_deadline_ms(&self) -> Option<u64> {
        self.pending.values().map(|p| p.until_ms).min()
    }

    /// Objects held back now.
    pub(crate) fn held(&self) -> usize {
        self.waiting.len()
    }

    fn release(&mut self, id: u64) -> Vec<(ObjectKey, Option<V>)> {
        let Some(pending) = self.pending.remove(&id) else {
            return Vec::new();
        };
        pending
            .held
            .into_iter()
            .map(|(key, value)| {
                self.waiting.remove(&key);
                (key, Some(value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("deployment", "default", name)
    }

    fn batch(id: u64, size: u32) -> Option<Batch> {
        Some(Batch {
            id,
            size,
            at_ms: 1_000,
        })
    }

    fn names(out: &[(ObjectKey, Option<u32>)]) -> Vec<(String, Option<u32>)> {
        out.iter().map(|(k, v)| (k.name.clone(), *v)).collect()
    }

    #[test]
    fn a_batch_is_taken_whole_when_its_last_object_arrives() {
        let mut gate = BatchGate::default();
        assert!(gate.offer(key("a"), batch(7, 3), Some(1), 1_010).is_empty());
        assert!(gate.offer(key("c"), batch(7, 3), Some(3), 1_020).is_empty());
        assert_eq!(gate.held(), 2);
        // Objects of no batch (and deletions) pass at once meanwhile.
        assert_eq!(
            names(&gate.offer(key("x"), None, Some(9), 1_025)),
            [("x".into(), Some(9))]
        );
        assert_eq!(
            names(&gate.offer(key("b"), batch(7, 3), Some(2), 1_030)),
            [
                ("a".into(), Some(1)),
                ("b".into(), Some(2)),
                ("c".into(), Some(3))
            ]
        );
        assert_eq!(gate.held(), 0);
        assert_eq!(gate.next_deadline_ms(), None);
        assert_eq!((gate.released_whole, gate.released_late), (1, 0));
    }

    #[test]
    fn a_batch_that_never_comes_whole_is_released_when_its_time_is_up() {
        let mut gate = BatchGate::default();
        assert!(gate.offer(key("a"), batch(7, 3), Some(1), 1_010).is_empty());
        assert!(gate.offer(key("b"), batch(7, 3), Some(2), 1_500).is_empty());
        assert_eq!(gate.next_deadline_ms(), Some(1_010 + HOLD_MS));
        assert!(gate.expire(1_009 + HOLD_MS).is_empty());
        assert_eq!(
            names(&gate.expire(1_010 + HOLD_MS)),
            [("a".into(), Some(1)), ("b".into(), Some(2))]
        );
        assert_eq!(gate.held(), 0);
        assert_eq!((gate.released_whole, gate.released_late), (0, 1));
    }

    #[test]
    fn a_newer_version_replaces_the_one_held_and_old_batches_pass_at_once() {
        let mut gate = BatchGate::default();
        assert!(gate.offer(key("a"), batch(7, 2), Some(1), 1_010).is_empty());
        // Written again outside the batch: the held version is never shown.
        assert_eq!(
            names(&gate.offer(key("a"), None, Some(5), 1_020)),
            [("a".into(), Some(5))]
        );
        assert_eq!(gate.held(), 0);
        assert_eq!(gate.next_deadline_ms(), None);
        // Deleted while held: the deletion passes, the held version goes.
        assert!(gate.offer(key("b"), batch(8, 2), Some(1), 1_030).is_empty());
        assert_eq!(
            names(&gate.offer(key("b"), batch(8, 2), None, 1_040)),
            [("b".into(), None)]
        );
        assert_eq!(gate.held(), 0);
        // A batch written long ago (a node starting from its store) is not waited for.
        assert_eq!(
            names(&gate.offer(key("c"), batch(9, 2), Some(3), 1_000 + HOLD_MS)),
            [("c".into(), Some(3))]
        );
    }
}
