//! The replicated cluster state: a state-based CRDT map from [`Key`]s to [`Entry`]s, with
//! anti-entropy fingerprints.
//!
//! # Role
//!
//! Every node holds one [`Store`]. Gossip disseminates `(Key, Entry)` pairs and anti-entropy
//! repairs what dissemination missed; both end in [`Store::merge`]. Three kinds of keys share
//! the map, each entry a last-writer-wins register whose writer order ([`Version`]) depends on
//! the kind: SWIM membership records ([`Key::Member`], SWIM precedence), entries only their
//! owner writes ([`Key::Owned`], the owner's counter) and objects anyone writes
//! ([`Key::Object`], hybrid logical clock, then writer id).
//!
//! # Algebra
//!
//! For each key the store keeps the greatest entry merged so far under the total order
//! [`Entry::cmp_precedence`] (see [`Marker`] for why the order includes `written_at` and a value
//! hash). A map of such registers, joined key by key, is a join-semilattice: `merge` is
//! commutative, associative and idempotent, so two stores that merged the same set of entries,
//! in any order, grouping or with any repetitions, are equal, entry for entry and fingerprint
//! for fingerprint. Deletion is a write of a tombstone (`value: None`) with a greater version.
//!
//! [`Store::gc`] is the one operation outside the lattice: it forgets tombstones and departed
//! members older than a horizon. Nodes that gc with the same horizon stay equal; the
//! [`MergeGuard`] keeps a forgotten entry from being resurrected by a peer that still holds an
//! older version of it.
//!
//! # Fingerprints
//!
//! The key space is split into a fixed tree of `64 × 64` leaves by the key hash (see
//! [`leaf_of`] and the canonical encoding below). Invariants, maintained on every change in
//! `O(1)` (the old item hash XORed out, the new one XORed in; never recomputed by scanning):
//! - a leaf's fingerprint is the XOR of the item hashes ([`digest_of`]) of the entries in it;
//! - a top bucket's fingerprint is the XOR of its 64 leaves';
//! - [`Store::fingerprint`] is the XOR of the 64 top buckets'.
//!
//! Equal stores have equal fingerprints on every node, build and platform: the hashes are xxh3
//! with fixed seeds over a fixed byte layout.
//!
//! # Canonical encoding
//!
//! All integers are little-endian; `str(s)` is `len(s)` as a `u64` then the UTF-8 bytes. The
//! layout does not go through serde, so a serde or wire-format change cannot silently change
//! fingerprints; a unit test pins golden values.
//!
//! | part        | layout |
//! |-------------|--------|
//! | key         | `Member`: `0x00`, id (32 bytes) · `Owned`: `0x01`, owner (32 bytes), `str(name)` · `Object`: `0x02`, `str(kind)`, `str(namespace)`, `str(name)` |
//! | version     | `Member`: `0x00`, incarnation `u64`, rank `u8` · `Owned`: `0x01`, version `u64` · `Object`: `0x02`, hlc, writer (32 bytes) |
//! | hlc         | `wall_ms` `u64`, `logical` `u32` |
//! | value       | tombstone: `0x00` · value: `0x01`, value hash `u64` |
//!
//! - key hash = `xxh3_64_with_seed(key, u64::from_be_bytes(*b"SHOALKEY"))`; its 6 high bits are
//!   the top bucket, the next 6 the leaf within it;
//! - value hash = `xxh3_64_with_seed(value bytes, u64::from_be_bytes(*b"SHOALVAL"))`;
//! - item hash = `xxh3_64_with_seed(key ‖ version ‖ written_at ‖ value,
//!   u64::from_be_bytes(*b"SHOALITM"))`.
//!
//! # Costs
//!
//! With `n` entries: [`Store::get`] and [`Store::merge`] of a stale or duplicate entry are one
//! `O(log n)` map lookup plus hashing the value; a merge that applies also hashes the key
//! (one small allocation) and updates the indexes in `O(log n)`. [`Store::leaf_items`] and
//! [`Store::leaf_digest`] cost `O(log n)` per item in the leaf. [`Store::gc`] costs
//! `O(log n)` per entry removed (collectable entries are kept in their own index ordered by
//! `written_at`). Fingerprint reads are `O(1)`. Keys are shared between the map and its
//! indexes (`Arc`), so each key is stored once; the fixed fingerprint tree costs 32 KiB per
//! store.

mod canonical;
mod entry;
mod key;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::fmt;
use std::mem;
use std::ops::Bound;
use std::sync::Arc;

use serde::Serialize;
use thiserror::Error;

pub use self::canonical::{
    LEAVES_PER_BUCKET, TOP_BUCKETS, digest_of, key_hash, leaf_of, leaf_of_key_hash,
};
use self::canonical::{hashes, value_hash};
use self::entry::cmp_with;
pub use self::entry::{Entry, Marker, Version};
pub use self::key::{Key, KeyKind, ObjectKey};
use crate::hlc::Hlc;
use crate::id::NodeId;

/// Size of `value`'s postcard encoding.
fn postcard_len<T: Serialize + ?Sized>(value: &T) -> usize {
    // The size flavor never fails, and postcard only fails to serialize sequences of unknown
    // length, which the store's types do not contain.
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .expect("postcard can size every store type")
}

/// A caller error in [`Store::merge`]. The store is unchanged when it is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The entry's version is of a different kind than its key (e.g. an object version for a
    /// membership key).
    #[error("a {version:?} version cannot be stored under a {key:?} key")]
    VersionKindMismatch {
        /// The key's kind.
        key: KeyKind,
        /// The version's kind.
        version: KeyKind,
    },
    /// An object entry whose `written_at` differs from its version's `hlc`.
    #[error("object entry written at {written_at} but versioned at {hlc}")]
    ObjectClockMismatch {
        /// The version's hybrid logical clock.
        hlc: Hlc,
        /// The entry's `written_at`.
        written_at: Hlc,
    },
}

/// The resurrection guard of [`Store::merge`].
///
/// When `horizon` is set, an entry for a key the store does not hold whose `written_at` is
/// older than `horizon` is refused ([`MergeOutcome::RefusedResurrection`]). Reasoning: once
/// tombstones (and departed members) older than the horizon have been collected by
/// [`Store::gc`], a key we do not hold may be one that was deleted and forgotten; a peer that
/// missed the deletion (partitioned, or restored from an old snapshot) still holds the entry
/// the tombstone had superseded, which was necessarily written before the tombstone, hence
/// before the horizon. Without the guard, merging it would bring the deleted key back. An
/// entry written after the horizon cannot be such a leftover: its tombstone, if any, would not
/// have been collected yet.
///
/// The caller passes `horizon = now - tombstone_grace` (see [`Hlc::saturating_sub_ms`]), the
/// same horizon it passes to `gc` or a later one, once it has completed its first full sync;
/// `None` before, since a node that has not yet synced legitimately lacks old entries.
///
/// A member's record of life (alive, suspect) is never refused: see `claims_life`.
///
/// Caveats, all inherent to collecting tombstones after a grace period:
/// - A live entry written before the horizon that never reached this node (a partition longer
///   than the grace period) is refused too. Writers whose entries must survive such partitions
///   should rewrite them more often than the grace period.
/// - A peer that keeps an entry this node refuses (the resurrection case itself, or the case
///   above) stays different from this node in that leaf, and anti-entropy keeps offering the
///   entry, until the peer drops it. Tombstone GC assumes every node syncs within the grace
///   period.
/// - With a horizon, the result can depend on arrival order in one corner case: for a key not
///   held, a greater entry written before the horizon and a lesser one written after it (only
///   possible for membership records, whose versions come from different writers than their
///   `written_at`). If the lesser arrives first, the key is then held and the greater applies
///   when it arrives again, so anti-entropy still converges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MergeGuard {
    /// Entries for keys the store does not hold written before this stamp are refused; `None`
    /// accepts everything.
    pub horizon: Option<Hlc>,
}

impl MergeGuard {
    /// No guard: accept entries of any age (before the first full sync).
    pub const NONE: MergeGuard = MergeGuard { horizon: None };

    /// A guard refusing unknown keys' entries written before `horizon`.
    pub const fn with_horizon(horizon: Hlc) -> MergeGuard {
        MergeGuard {
            horizon: Some(horizon),
        }
    }
}

/// What [`Store::merge`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The entry was stored: the key was new (`previous` is `None`) or the entry superseded
    /// `previous`. This is news worth disseminating further.
    Applied {
        /// The entry it replaced, if the key was held.
        previous: Option<Entry>,
    },
    /// The store already holds a greater entry for the key; nothing changed.
    Stale,
    /// The store already holds this exact entry; nothing changed.
    Duplicate,
    /// The key is not held and the entry is older than the guard's horizon: refused as a
    /// probable resurrection of a collected tombstone (see [`MergeGuard`]); nothing changed.
    RefusedResurrection,
}

impl MergeOutcome {
    /// `true` for [`MergeOutcome::Applied`].
    pub fn is_applied(&self) -> bool {
        matches!(self, MergeOutcome::Applied { .. })
    }
}

/// A held entry with its cached hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot {
    entry: Entry,
    key_hash: u64,
    value_hash: u64,
    item_hash: u64,
}

/// A key in an index. Always `Some` in the index; `None` sorts before every key and is only
/// used to build range bounds without allocating.
type IndexKey = Option<Arc<Key>>;

/// Number of leaves in the fingerprint tree.
const LEAVES: usize = TOP_BUCKETS * LEAVES_PER_BUCKET;

/// The replicated state of one node. See the [module docs](self) for the algebra, the
/// fingerprint invariants and costs.
///
/// Two stores are equal (`==`) if and only if they hold the same entries (everything else is
/// derived from them).
#[derive(Clone, PartialEq, Eq)]
pub struct Store {
    /// The entries, in key order.
    entries: BTreeMap<Arc<Key>, Slot>,
    /// `(key hash, key)` of every entry: the keys of a leaf are a contiguous range.
    by_hash: BTreeSet<(u64, IndexKey)>,
    /// `(written_at, key)` of every entry `gc` may collect: tombstones of owned entries and
    /// objects, and departed (dead or left) members.
    collectable: BTreeSet<(Hlc, IndexKey)>,
    /// Leaf fingerprints, leaf `(top, sub)` at `top * LEAVES_PER_BUCKET + sub`.
    leaves: Box<[u64]>,
    /// Top bucket fingerprints.
    tops: [u64; TOP_BUCKETS],
    /// XOR of all item hashes.
    total: u64,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("len", &self.len())
            .field("fingerprint", &format_args!("{:016x}", self.total))
            .field("entries", &DebugEntries(self))
            .finish()
    }
}

struct DebugEntries<'a>(&'a Store);

impl fmt::Debug for DebugEntries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

/// Whether `gc` may ever collect this entry (independently of its age).
/// A member's record saying it is alive or suspect: exempt from the resurrection guard. Its
/// `written_at` comes from the member's own clock, which may be far behind (the member is then
/// told so, and refuses writes, but must still be a member to hear it). Should it be a stale
/// copy of a departed member's record, the member is probed, declared dead again and collected
/// in time: a record of death is collectable, one of life never is.
fn claims_life(key: &Key, entry: &Entry) -> bool {
    matches!(
        (key, entry.version),
        (Key::Member(_), Version::Member { rank, .. }) if rank < Version::DEAD
    )
}

fn is_collectable(key: &Key, entry: &Entry) -> bool {
    match (key, entry.version) {
        (Key::Member(_), Version::Member { rank, .. }) => rank >= Version::DEAD,
        (Key::Member(_), _) => false,
        _ => entry.value.is_none(),
    }
}

/// Checks the caller's side of the contract of [`Store::merge`].
fn check(key: &Key, entry: &Entry) -> Result<(), StoreError> {
    if key.kind() != entry.version.kind() {
        return Err(StoreError::VersionKindMismatch {
            key: key.kind(),
            version: entry.version.kind(),
        });
    }
    match entry.version {
        Version::Object { hlc, .. } if hlc != entry.written_at => {
            Err(StoreError::ObjectClockMismatch {
                hlc,
                written_at: entry.written_at,
            })
        }
        _ => Ok(()),
    }
}

/// A range of the `by_hash` index.
type HashRange = (Bound<(u64, IndexKey)>, Bound<(u64, IndexKey)>);

/// The `by_hash` range of leaf `(top, sub)`, or `None` if it is out of range.
fn leaf_bounds(top: u8, sub: u8) -> Option<HashRange> {
    if usize::from(top) >= TOP_BUCKETS || usize::from(sub) >= LEAVES_PER_BUCKET {
        return None;
    }
    let lo = (u64::from(top) << 58) | (u64::from(sub) << 52);
    let hi = match lo.checked_add(1 << 52) {
        Some(hi) => Bound::Excluded((hi, None)),
        None => Bound::Unbounded,
    };
    Some((Bound::Included((lo, None)), hi))
}

impl Store {
    /// An empty store (all fingerprints zero).
    pub fn new() -> Store {
        Store {
            entries: BTreeMap::new(),
            by_hash: BTreeSet::new(),
            collectable: BTreeSet::new(),
            leaves: vec![0; LEAVES].into_boxed_slice(),
            tops: [0; TOP_BUCKETS],
            total: 0,
        }
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` if the store holds no entry (not even a tombstone).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry held for `key` (possibly a tombstone).
    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key).map(|slot| &slot.entry)
    }

    /// All entries, tombstones included, in key order (members, then owned entries, then
    /// objects; see [`Key`]).
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.entries.iter().map(|(key, slot)| (&**key, &slot.entry))
    }

    /// Entries from `lower` on, in key order.
    fn range_from(&self, lower: &Key) -> btree_map::Range<'_, Arc<Key>, Slot> {
        self.entries
            .range::<Key, _>((Bound::Included(lower), Bound::Unbounded))
    }

    /// Membership records, tombstones included, by node id.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, &Entry)> {
        self.entries.iter().map_while(|(key, slot)| match **key {
            Key::Member(id) => Some((id, &slot.entry)),
            _ => None,
        })
    }

    /// The entries `owner` owns, tombstones included, as `(name, entry)` in name order.
    pub fn owned_by(&self, owner: NodeId) -> impl Iterator<Item = (&str, &Entry)> {
        self.range_from(&Key::owned(owner, String::new()))
            .map_while(move |(key, slot)| match &**key {
                Key::Owned { owner: o, name } if *o == owner => Some((name.as_str(), &slot.entry)),
                _ => None,
            })
    }

    /// The objects of `kind`, tombstones included, in the given namespace or in all
    /// namespaces (`None`), in [`ObjectKey`] order.
    pub fn range_objects<'a>(
        &'a self,
        kind: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Entry)> {
        let lower = Key::object(kind, namespace.unwrap_or_default(), String::new());
        self.range_from(&lower)
            .map_while(move |(key, slot)| match &**key {
                Key::Object(o)
                    if o.kind == kind && namespace.is_none_or(|ns| o.namespace == ns) =>
                {
                    Some((o, &slot.entry))
                }
                _ => None,
            })
    }

    /// Joins `entry` into the register of `key`: keeps whichever of the held entry and `entry`
    /// is greater under [`Entry::cmp_precedence`], subject to `guard` when `key` is not held
    /// (see [`MergeGuard`]). Commutative, associative and idempotent (see the module docs).
    ///
    /// # Errors
    ///
    /// A version of the wrong kind for the key, or an object entry whose `written_at` is not
    /// its version's `hlc`, is a caller error: the store is left unchanged and the error
    /// returned.
    pub fn merge(
        &mut self,
        key: Key,
        entry: Entry,
        guard: MergeGuard,
    ) -> Result<MergeOutcome, StoreError> {
        check(&key, &entry)?;
        let value_hash = value_hash(&entry.value);
        let Some((held_key, slot)) = self
            .entries
            .range_mut::<Key, _>((Bound::Included(&key), Bound::Included(&key)))
            .next()
        else {
            return Ok(self.insert_new(key, entry, value_hash, guard));
        };
        match cmp_with(&entry, value_hash, &slot.entry, slot.value_hash) {
            Ordering::Less => return Ok(MergeOutcome::Stale),
            Ordering::Equal => return Ok(MergeOutcome::Duplicate),
            Ordering::Greater => {}
        }
        let (key_hash, item_hash) = hashes(&key, &entry, value_hash);
        debug_assert_eq!(key_hash, slot.key_hash);
        let old_item_hash = mem::replace(&mut slot.item_hash, item_hash);
        slot.value_hash = value_hash;
        let previous = mem::replace(&mut slot.entry, entry);
        let new_collectable = is_collectable(&key, &slot.entry).then_some(slot.entry.written_at);
        let held_key = Arc::clone(held_key);
        if is_collectable(&key, &previous) {
            self.collectable
                .remove(&(previous.written_at, Some(Arc::clone(&held_key))));
        }
        if let Some(written_at) = new_collectable {
            self.collectable.insert((written_at, Some(held_key)));
        }
        self.toggle(key_hash, old_item_hash ^ item_hash);
        Ok(MergeOutcome::Applied {
            previous: Some(previous),
        })
    }

    /// `merge` of a key the store does not hold.
    fn insert_new(
        &mut self,
        key: Key,
        entry: Entry,
        value_hash: u64,
        guard: MergeGuard,
    ) -> MergeOutcome {
        if guard.horizon.is_some_and(|h| entry.written_at < h) && !claims_life(&key, &entry) {
            return MergeOutcome::RefusedResurrection;
        }
        let (key_hash, item_hash) = hashes(&key, &entry, value_hash);
        let collectable = is_collectable(&key, &entry);
        let key = Arc::new(key);
        self.by_hash.insert((key_hash, Some(Arc::clone(&key))));
        if collectable {
            self.collectable
                .insert((entry.written_at, Some(Arc::clone(&key))));
        }
        self.entries.insert(
            key,
            Slot {
                entry,
                key_hash,
                value_hash,
                item_hash,
            },
        );
        self.toggle(key_hash, item_hash);
        MergeOutcome::Applied { previous: None }
    }

    /// XORs `delta` into the fingerprints on the path of `key_hash`.
    fn toggle(&mut self, key_hash: u64, delta: u64) {
        let (top, sub) = leaf_of_key_hash(key_hash);
        let (top, sub) = (usize::from(top), usize::from(sub));
        self.leaves[top * LEAVES_PER_BUCKET + sub] ^= delta;
        self.tops[top] ^= delta;
        self.total ^= delta;
    }

    /// Removes `key`'s entry and its index and fingerprint contributions; `false` if not held.
    fn remove(&mut self, key: &Key) -> bool {
        let Some((key, slot)) = self.entries.remove_entry(key) else {
            return false;
        };
        if is_collectable(&key, &slot.entry) {
            self.collectable
                .remove(&(slot.entry.written_at, Some(Arc::clone(&key))));
        }
        self.by_hash.remove(&(slot.key_hash, Some(key)));
        self.toggle(slot.key_hash, slot.item_hash);
        true
    }

    /// Garbage-collects what is older than `horizon` (an HLC, typically
    /// `now - tombstone_grace`):
    /// - tombstones of owned entries and objects written before `horizon`;
    /// - membership records of dead or left members (rank `>= Version::DEAD`) written before
    ///   `horizon`, together with every entry the departed member owned (a node gone for
    ///   longer than the grace period is forgotten).
    ///
    /// Membership records are collected by rank only, never as tombstones; objects are never
    /// collected with their writer. Returns the number of entries removed. Fingerprints and indexes stay consistent. After
    /// gc, merge with a [`MergeGuard`] whose horizon is at least this one so the collected
    /// entries are not resurrected.
    pub fn gc(&mut self, horizon: Hlc) -> Vec<Key> {
        let keep = self.collectable.split_off(&(horizon, None));
        let expired = mem::replace(&mut self.collectable, keep);
        let mut removed = Vec::new();
        for (_, key) in expired {
            let Some(key) = key else { continue };
            if let Key::Member(id) = *key {
                let owned: Vec<Arc<Key>> = self
                    .range_from(&Key::owned(id, String::new()))
                    .map_while(|(k, _)| match &**k {
                        Key::Owned { owner, .. } if *owner == id => Some(Arc::clone(k)),
                        _ => None,
                    })
                    .collect();
                for k in owned {
                    if self.remove(&k) {
                        removed.push((*k).clone());
                    }
                }
            }
            if self.remove(&key) {
                removed.push((*key).clone());
            }
        }
        removed
    }

    /// Entries strictly after `after` (from the first when `None`), in key order: for sending
    /// the state in chunks.
    pub fn iter_after<'a>(
        &'a self,
        after: Option<&Key>,
    ) -> impl Iterator<Item = (&'a Key, &'a Entry)> + 'a {
        let lower = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        self.entries
            .range::<Key, _>((lower, Bound::Unbounded))
            .map(|(k, slot)| (&**k, &slot.entry))
    }

    /// Number of items under the fingerprints: the same as [`Store::len`]. Compare it along
    /// with [`Store::fingerprint`] for a quick "in sync?" check.
    pub fn item_count(&self) -> usize {
        self.entries.len()
    }

    /// XOR of all item hashes (equivalently, of the root fingerprints): equal on two stores
    /// holding the same entries.
    pub fn fingerprint(&self) -> u64 {
        self.total
    }

    /// The 64 top-level bucket fingerprints; bucket `top` covers the keys whose hash's 6 high
    /// bits are `top`.
    pub fn root_fingerprints(&self) -> [u64; TOP_BUCKETS] {
        self.tops
    }

    /// The 64 leaf fingerprints of top bucket `top` (`sub` = index). A `top` out of `0..64`
    /// names no bucket: all zeros.
    pub fn bucket_fingerprints(&self, top: u8) -> [u64; LEAVES_PER_BUCKET] {
        let mut out = [0; LEAVES_PER_BUCKET];
        let top = usize::from(top);
        if top < TOP_BUCKETS {
            out.copy_from_slice(
                &self.leaves[top * LEAVES_PER_BUCKET..(top + 1) * LEAVES_PER_BUCKET],
            );
        }
        out
    }

    /// The fingerprint of leaf `(top, sub)`; zero out of range.
    pub fn leaf_fingerprint(&self, top: u8, sub: u8) -> u64 {
        let (top, sub) = (usize::from(top), usize::from(sub));
        if top < TOP_BUCKETS && sub < LEAVES_PER_BUCKET {
            self.leaves[top * LEAVES_PER_BUCKET + sub]
        } else {
            0
        }
    }

    /// `(key hash, key)` of the entries in leaf `(top, sub)`, in key hash order (then key
    /// order); empty out of range.
    fn leaf_keys(&self, top: u8, sub: u8) -> impl Iterator<Item = (u64, &Slot, &Key)> {
        leaf_bounds(top, sub)
            .into_iter()
            .flat_map(|bounds| self.by_hash.range(bounds))
            .filter_map(|(_, key)| {
                let (key, slot) = self.entries.get_key_value(&**key.as_ref()?)?;
                Some((slot.key_hash, slot, &**key))
            })
    }

    /// The entries in leaf `(top, sub)` (see [`leaf_of`]), tombstones included, in key hash
    /// order; empty if `top` or `sub` is out of `0..64`.
    pub fn leaf_items(&self, top: u8, sub: u8) -> impl Iterator<Item = (&Key, &Entry)> {
        self.leaf_keys(top, sub)
            .map(|(_, slot, key)| (key, &slot.entry))
    }

    /// The anti-entropy digest of leaf `(top, sub)`: `(key hash, item hash)` of each entry, in
    /// the order of [`Store::leaf_items`] (sorted by key hash). Compare a remote digest entry
    /// with [`digest_of`] of the local entry for the key.
    pub fn leaf_digest(&self, top: u8, sub: u8) -> Vec<(u64, u64)> {
        self.leaf_keys(top, sub)
            .map(|(key_hash, slot, _)| (key_hash, slot.item_hash))
            .collect()
    }

    /// [`Store::leaf_items`] together with each item's digest `(key hash, item hash)` (what
    /// [`digest_of`] returns, read from a cache instead of recomputed).
    pub fn leaf_items_with_digest(
        &self,
        top: u8,
        sub: u8,
    ) -> impl Iterator<Item = ((u64, u64), &Key, &Entry)> {
        self.leaf_keys(top, sub)
            .map(|(key_hash, slot, key)| ((key_hash, slot.item_hash), key, &slot.entry))
    }

    /// Test-only: checks every derived structure against a recomputation from the entries.
    #[cfg(test)]
    fn assert_consistent(&self) {
        let mut leaves = vec![0u64; LEAVES];
        let mut by_hash = BTreeSet::new();
        let mut collectable = BTreeSet::new();
        for (key, slot) in &self.entries {
            let (key_hash, item_hash) = digest_of(key, &slot.entry);
            assert_eq!(key_hash, slot.key_hash, "{key}");
            assert_eq!(item_hash, slot.item_hash, "{key}");
            assert_eq!(value_hash(&slot.entry.value), slot.value_hash, "{key}");
            let (top, sub) = leaf_of(key);
            leaves[usize::from(top) * LEAVES_PER_BUCKET + usize::from(sub)] ^= item_hash;
            by_hash.insert((key_hash, Some(Arc::clone(key))));
            if is_collectable(key, &slot.entry) {
                collectable.insert((slot.entry.written_at, Some(Arc::clone(key))));
            }
        }
        assert_eq!(&*self.leaves, &leaves[..], "leaf fingerprints");
        let mut total = 0;
        for top in 0..TOP_BUCKETS {
            let t = leaves[top * LEAVES_PER_BUCKET..(top + 1) * LEAVES_PER_BUCKET]
                .iter()
                .fold(0, |a, b| a ^ b);
            assert_eq!(self.tops[top], t, "top bucket {top}");
            total ^= t;
        }
        assert_eq!(self.total, total, "total fingerprint");
        assert_eq!(self.by_hash, by_hash, "by_hash index");
        assert_eq!(self.collectable, collectable, "collectable index");
    }
}
