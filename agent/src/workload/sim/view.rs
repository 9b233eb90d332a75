//! One node's view of what it plans from, as its own gossip node has told it: the members
//! with the state it sees them in, and the objects that have reached its store.
//!
//! Decoded objects are shared between nodes: [`Interner`] decodes each (key, version) once,
//! and every node that holds that version points at the same value. Each view keeps a
//! fingerprint of its members and one of its objects, maintained in O(1) per change (XOR of
//! 128-bit hashes of the elements), so the planner's cache finds nodes whose inputs are equal
//! without comparing them in full first.

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_gossip::{Entry, Key, MemberState, Node, NodeId, ObjectKey, Version};
use xxhash_rust::xxh3::xxh3_128;

use crate::workload::projector::wants_object;
use crate::workload::snapshot::Object;
use crate::workload::stored::StoredObject;

/// One version of an object, decoded once for every node that holds it.
#[derive(Debug)]
pub(super) struct Interned {
    pub(super) version: Version,
    /// `None` when the value does not decode (left out of the snapshot, as the projector does).
    pub(super) object: Option<Arc<Object>>,
    fingerprint: u128,
}

/// Decoded objects by key and version.
#[derive(Default)]
pub(super) struct Interner {
    by_version: BTreeMap<(ObjectKey, Version), Arc<Interned>>,
    /// Values that failed to decode.
    pub(super) undecodable: u64,
}

impl Interner {
    /// The decoded value of this version of `key`; `None` for a tombstone or a kind the
    /// projector does not carry.
    pub(super) fn get(&mut self, key: &ObjectKey, entry: &Entry) -> Option<Arc<Interned>> {
        if !wants_object(&key.kind) {
            return None;
        }
        let bytes = entry.value.as_ref()?;
        let slot = (key.clone(), entry.version);
        if let Some(found) = self.by_version.get(&slot) {
            return Some(found.clone());
        }
        let object = StoredObject::decode(bytes)
            .ok()
            .and_then(|stored| Object::new(stored).ok())
            .map(Arc::new);
        if object.is_none() {
            self.undecodable += 1;
        }
        let fingerprint = xxh3_128(format!("{key}\u{0}{:?}", entry.version).as_bytes());
        let interned = Arc::new(Interned {
            version: entry.version,
            object,
            fingerprint,
        });
        self.by_version.insert(slot, interned.clone());
        Some(interned)
    }
}

fn member_fingerprint(id: &NodeId, state: MemberState) -> u128 {
    let mut bytes = [0u8; 33];
    bytes[..32].copy_from_slice(id.as_bytes());
    bytes[32] = state.rank();
    xxh3_128(&bytes)
}

/// What one node plans from, apart from the pod records.
#[derive(Clone, Debug, Default)]
pub(super) struct View {
    members: BTreeMap<NodeId, MemberState>,
    members_fp: u128,
    objects: BTreeMap<ObjectKey, Arc<Interned>>,
    objects_fp: u128,
    /// Objects whose planning depends on the time (a Deployment with `minReadySeconds`).
    timed: usize,
}

impl View {
    /// The view a gossip node holds now (after a restart, or at the start).
    pub(super) fn of_node<R: rand::Rng>(node: &Node<R>, interner: &mut Interner) -> View {
        let mut view = View::default();
        for m in node.members() {
            view.set_member(m.id, m.state);
        }
        for (key, entry) in node.store().iter() {
            if let Key::Object(key) = key {
                let value = interner.get(key, entry);
                view.set_object(key.clone(), value);
            }
        }
        view
    }

    /// Sets a member's state; returns whether it changed.
    pub(super) fn set_member(&mut self, id: NodeId, state: MemberState) -> bool {
        match self.members.insert(id, state) {
            Some(old) if old == state => false,
            old => {
                if let Some(old) = old {
                    self.members_fp ^= member_fingerprint(&id, old);
                }
                self.members_fp ^= member_fingerprint(&id, state);
                true
            }
        }
    }

    /// Sets (or with `None` removes) an object; returns whether it changed.
    pub(super) fn set_object(&mut self, key: ObjectKey, value: Option<Arc<Interned>>) -> bool {
        let old = match value {
            Some(new) => {
                if self
                    .objects
                    .get(&key)
                    .is_some_and(|old| old.version == new.version)
                {
                    return false;
                }
                self.objects_fp ^= new.fingerprint;
                self.timed += usize::from(is_timed(&new));
                self.objects.insert(key, new)
            }
            None => self.objects.remove(&key),
        };
        if let Some(old) = &old {
            self.objects_fp ^= old.fingerprint;
            self.timed -= usize::from(is_timed(old));
        }
        true
    }

    pub(super) fn members(&self) -> &BTreeMap<NodeId, MemberState> {
        &self.members
    }

    pub(super) fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<Interned>)> {
        self.objects.iter()
    }

    /// The version of `key` this node holds (`None`: none, or deleted).
    pub(super) fn version_of(&self, key: &ObjectKey) -> Option<Version> {
        self.objects.get(key).map(|o| o.version)
    }

    /// Fingerprints of the members and of the objects.
    pub(super) fn fingerprints(&self) -> (u128, u128) {
        (self.members_fp, self.objects_fp)
    }

    /// Whether the plan depends on the time, not only on the state.
    pub(super) fn is_timed(&self) -> bool {
        self.timed > 0
    }

    /// Whether the objects are the same versions as `other`'s.
    pub(super) fn same_objects(&self, other: &View) -> bool {
        self.objects.len() == other.objects.len()
            && self
                .objects
                .iter()
                .zip(&other.objects)
                .all(|((ka, a), (kb, b))| ka == kb && a.version == b.version)
    }

    /// The same test the reconciler makes ([`crate::workload::supervisor::snapshot_synced`]),
    /// on the view: it holds this node, and another live member or no other member at all.
    /// Every member's node info is known in the simulation.
    pub(super) fn synced(&self, me: &NodeId) -> bool {
        self.members.contains_key(me)
            && (self.members.len() == 1
                || self.members.iter().any(|(id, s)| id != me && s.is_live()))
    }
}

fn is_timed(interned: &Interned) -> bool {
    interned
        .object
        .as_deref()
        .and_then(Object::deployment)
        .is_some_and(|(d, _)| d.spec.min_ready_seconds > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    #[test]
    fn fingerprints_follow_content_not_history() {
        let mut a = View::default();
        let mut b = View::default();
        a.set_member(id(1), MemberState::Alive);
        a.set_member(id(2), MemberState::Suspect);
        a.set_member(id(2), MemberState::Dead);
        b.set_member(id(2), MemberState::Dead);
        b.set_member(id(1), MemberState::Suspect);
        assert_ne!(a.fingerprints(), b.fingerprints());
        assert!(b.set_member(id(1), MemberState::Alive));
        assert!(!b.set_member(id(1), MemberState::Alive));
        assert_eq!(a.fingerprints(), b.fingerprints());
        assert_eq!(a.members(), b.members());
    }
}
