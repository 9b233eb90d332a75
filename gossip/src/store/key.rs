//! Keys of the replicated store.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::NodeId;

/// The kind of a [`Key`] (or of a [`Version`](super::Version)): which writer rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyKind {
    /// [`Key::Member`]: SWIM membership records.
    Member,
    /// [`Key::Owned`]: entries only their owner writes.
    Owned,
    /// [`Key::Object`]: objects any node may write.
    Object,
}

/// The name of an object any node may write: a deployment, a service, ...
///
/// Ordered by (`kind`, `namespace`, `name`), so all objects of one kind, and within it of one
/// namespace, are contiguous in the store's key order. Displayed as `kind/namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    /// The object's kind, e.g. `deployment`.
    pub kind: String,
    /// The namespace the object lives in.
    pub namespace: String,
    /// The object's name, unique within (`kind`, `namespace`).
    pub name: String,
}

impl ObjectKey {
    /// An object key from its parts.
    pub fn new(
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> ObjectKey {
        ObjectKey {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    /// `kind/namespace/name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// A key of the replicated store.
///
/// The derived order is the store's canonical key order: all `Member` keys (by node id), then
/// all `Owned` keys (by owner, then name), then all `Object` keys (by [`ObjectKey`] order).
/// Variant and field order are therefore part of the contract (and of the postcard wire
/// encoding): do not reorder them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Key {
    /// A node's membership record (SWIM state). Any node may write it (to suspect or declare
    /// dead); versions are [`Version::Member`](super::Version::Member).
    Member(NodeId),
    /// An entry owned by a node (its address, capacity, pod status, ...). Only the owner writes
    /// it; versions are [`Version::Owned`](super::Version::Owned).
    Owned {
        /// The node that owns (and alone writes) the entry.
        owner: NodeId,
        /// The entry's name, unique per owner.
        name: String,
    },
    /// An object any node may write; versions are [`Version::Object`](super::Version::Object).
    Object(ObjectKey),
}

impl Key {
    /// A [`Key::Owned`] from its parts.
    pub fn owned(owner: NodeId, name: impl Into<String>) -> Key {
        Key::Owned {
            owner,
            name: name.into(),
        }
    }

    /// A [`Key::Object`] from its parts.
    pub fn object(
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Key {
        Key::Object(ObjectKey::new(kind, namespace, name))
    }

    /// Which writer rule applies to this key.
    pub fn kind(&self) -> KeyKind {
        match self {
            Key::Member(_) => KeyKind::Member,
            Key::Owned { .. } => KeyKind::Owned,
            Key::Object(_) => KeyKind::Object,
        }
    }

    /// Size in bytes of the key's postcard encoding (how it travels in gossip messages).
    pub fn encoded_len(&self) -> usize {
        super::postcard_len(self)
    }
}

impl fmt::Display for Key {
    /// `member/<id>`, `owned/<owner>/<name>` or `object/<kind>/<namespace>/<name>`, with node ids
    /// shortened as by [`NodeId`]'s `Display`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Member(id) => write!(f, "member/{id}"),
            Key::Owned { owner, name } => write!(f, "owned/{owner}/{name}"),
            Key::Object(key) => write!(f, "object/{key}"),
        }
    }
}
