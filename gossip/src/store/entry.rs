//! Entries (versioned values) of the replicated store and their join order.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use super::canonical::value_hash;
use super::key::KeyKind;
use crate::hlc::Hlc;
use crate::id::NodeId;

/// The writer order of an entry; which variant applies depends on the key's kind.
///
/// Versions are only meaningfully compared between entries of the same key, hence of the same
/// kind (the store rejects a version whose kind does not match its key). The derived order is
/// nevertheless total (variant first, then fields in declaration order), which is what gives
/// each variant its rule:
/// - `Member`: higher `incarnation` wins; at equal incarnation, higher `rank` wins
///   ([`Version::ALIVE`] < [`Version::SUSPECT`] < [`Version::DEAD`] < [`Version::LEFT`]), which
///   is SWIM's precedence (a node refutes suspicion by bumping its incarnation).
/// - `Owned`: the owner's counter, strictly increasing per key; higher wins.
/// - `Object`: last writer wins by hybrid logical clock; equal clocks are broken by writer id.
///
/// Field and variant order are part of the contract: do not reorder them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Version {
    /// A membership record's SWIM precedence.
    Member {
        /// The member's incarnation number; only the member itself increments it.
        incarnation: u64,
        /// The SWIM state: [`Version::ALIVE`], [`Version::SUSPECT`], [`Version::DEAD`] or
        /// [`Version::LEFT`]. Other values order after `LEFT` and are kept (for forward
        /// compatibility), but have no meaning here; ranks `>= DEAD` count as gone for
        /// [`Store::gc`](super::Store::gc).
        rank: u8,
    },
    /// An owned entry's version.
    Owned {
        /// The owner's counter for this key, strictly increasing with each write.
        version: u64,
    },
    /// An object's version: when and by whom it was written.
    Object {
        /// The writer's hybrid logical clock at the write.
        hlc: Hlc,
        /// The writing node; breaks ties between equal `hlc`s.
        writer: NodeId,
    },
}

impl Version {
    /// Member rank: the member is alive.
    pub const ALIVE: u8 = 0;
    /// Member rank: the member is suspected to have failed.
    pub const SUSPECT: u8 = 1;
    /// Member rank: the member was declared dead.
    pub const DEAD: u8 = 2;
    /// Member rank: the member left the cluster voluntarily.
    pub const LEFT: u8 = 3;

    /// The kind of key this version belongs to.
    pub fn kind(&self) -> KeyKind {
        match self {
            Version::Member { .. } => KeyKind::Member,
            Version::Owned { .. } => KeyKind::Owned,
            Version::Object { .. } => KeyKind::Object,
        }
    }
}

/// One key's state: a last-writer-wins register.
///
/// Replicas join entries of the same key by taking the maximum under the total order of
/// [`Entry::cmp_precedence`]; since that is a max under a total order, the join is commutative,
/// associative and idempotent, so replicas that have seen the same set of entries hold the same
/// entry whatever the order, grouping or repetition of deliveries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The writer order; its kind must match the key's.
    pub version: Version,
    /// When the writer wrote the entry (its HLC). Drives tombstone garbage collection and the
    /// resurrection guard. For objects it must equal the version's `hlc`.
    pub written_at: Hlc,
    /// The value, opaque bytes (callers postcard-encode their records); `None` is a tombstone:
    /// the key was deleted.
    pub value: Option<Vec<u8>>,
}

/// The register marker of an entry: everything the join order looks at except the value bytes
/// themselves.
///
/// Ordered by (`version`, `written_at`, `tombstone`, `value_hash`), in that order (derived; field
/// order matters). This is the marker of a `crdts::LWWReg`, made total over distinct entries:
/// `LWWReg` keeps its own value when markers are equal, so if two different entries could carry
/// equal markers (same version, different values, e.g. two nodes writing the same SWIM state
/// about a third, or a writer reusing a version), the node that saw `a` first would keep `a` and
/// the one that saw `b` first would keep `b`, and merge would not commute. Including
/// `written_at`, the tombstone flag and a hash of the value makes such ties practically
/// impossible (a tombstone wins a tie with a value: deletes win); the one case left, a 64-bit
/// xxh3 collision between two values, is broken by comparing the value bytes (see
/// [`Entry::cmp_precedence`]), so the order is total over distinct entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Marker {
    /// The entry's version.
    pub version: Version,
    /// The entry's `written_at`.
    pub written_at: Hlc,
    /// `true` for a tombstone (`value == None`).
    pub tombstone: bool,
    /// xxh3 of the value bytes (`0` for a tombstone); see the store's canonical encoding.
    pub value_hash: u64,
}

impl Entry {
    /// A membership record: [`Version::Member`] with the given incarnation and rank, written at
    /// `written_at`.
    pub fn member(incarnation: u64, rank: u8, written_at: Hlc, value: Option<Vec<u8>>) -> Entry {
        Entry {
            version: Version::Member { incarnation, rank },
            written_at,
            value,
        }
    }

    /// An owned entry at the owner's counter `version`, written at `written_at`.
    pub fn owned(version: u64, written_at: Hlc, value: Option<Vec<u8>>) -> Entry {
        Entry {
            version: Version::Owned { version },
            written_at,
            value,
        }
    }

    /// An object written by `writer` at `hlc` (which is also its `written_at`).
    pub fn object(hlc: Hlc, writer: NodeId, value: Option<Vec<u8>>) -> Entry {
        Entry {
            version: Version::Object { hlc, writer },
            written_at: hlc,
            value,
        }
    }

    /// `true` if the entry is a tombstone (the key was deleted).
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The entry's register marker (hashes the value).
    pub fn marker(&self) -> Marker {
        self.marker_with(value_hash(&self.value))
    }

    pub(super) fn marker_with(&self, value_hash: u64) -> Marker {
        Marker {
            version: self.version,
            written_at: self.written_at,
            tombstone: self.value.is_none(),
            value_hash,
        }
    }

    /// The join order: [`Marker`] order, then (only on an xxh3 collision) the value bytes.
    /// `Equal` if and only if the entries are identical. The store keeps the greatest entry
    /// it has seen for each key.
    pub fn cmp_precedence(&self, other: &Entry) -> Ordering {
        cmp_with(
            self,
            value_hash(&self.value),
            other,
            value_hash(&other.value),
        )
    }

    /// Size in bytes of the entry's postcard encoding (how it travels in gossip messages).
    pub fn encoded_len(&self) -> usize {
        super::postcard_len(self)
    }
}

/// [`Entry::cmp_precedence`] with the value hashes already computed.
pub(super) fn cmp_with(a: &Entry, a_hash: u64, b: &Entry, b_hash: u64) -> Ordering {
    a.marker_with(a_hash)
        .cmp(&b.marker_with(b_hash))
        .then_with(|| a.value.cmp(&b.value))
}
