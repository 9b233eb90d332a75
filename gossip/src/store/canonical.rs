//! The canonical byte encoding of keys and entries, and the hashes anti-entropy compares.
//!
//! Anti-entropy compares hashes computed on different nodes, builds and architectures, so they
//! must be a pure function of the key and entry. The layout and seeds are documented in the
//! [store module docs](super#canonical-encoding); changing any of them changes every
//! fingerprint, and nodes running both encodings would see each other as permanently out of
//! sync. The golden test in the store tests pins them.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::entry::{Entry, Version};
use super::key::Key;
use crate::hlc::Hlc;

/// Seed of the key hash (ASCII `SHOALKEY`).
const KEY_SEED: u64 = u64::from_be_bytes(*b"SHOALKEY");
/// Seed of the value hash (ASCII `SHOALVAL`).
const VALUE_SEED: u64 = u64::from_be_bytes(*b"SHOALVAL");
/// Seed of the item hash (ASCII `SHOALITM`).
const ITEM_SEED: u64 = u64::from_be_bytes(*b"SHOALITM");

/// Number of top-level buckets of the fingerprint tree (indexed by the key hash's 6 high bits).
pub const TOP_BUCKETS: usize = 64;
/// Number of leaves in each top-level bucket (indexed by the key hash's next 6 bits).
pub const LEAVES_PER_BUCKET: usize = 64;

/// The hash of a value (see the module docs); `0` for a tombstone.
pub(super) fn value_hash(value: &Option<Vec<u8>>) -> u64 {
    match value {
        None => 0,
        Some(bytes) => xxh3_64_with_seed(bytes, VALUE_SEED),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_hlc(out: &mut Vec<u8>, hlc: Hlc) {
    out.extend_from_slice(&hlc.wall_ms.to_le_bytes());
    out.extend_from_slice(&hlc.logical.to_le_bytes());
}

/// Appends the canonical encoding of `key` to `out`.
pub(super) fn put_key(out: &mut Vec<u8>, key: &Key) {
    match key {
        Key::Member(id) => {
            out.push(0);
            out.extend_from_slice(id.as_bytes());
        }
        Key::Owned { owner, name } => {
            out.push(1);
            out.extend_from_slice(owner.as_bytes());
            put_str(out, name);
        }
        Key::Object(o) => {
            out.push(2);
            put_str(out, &o.kind);
            put_str(out, &o.namespace);
            put_str(out, &o.name);
        }
    }
}

fn put_version(out: &mut Vec<u8>, version: &Version) {
    match *version {
        Version::Member { incarnation, rank } => {
            out.push(0);
            out.extend_from_slice(&incarnation.to_le_bytes());
            out.push(rank);
        }
        Version::Owned { version } => {
            out.push(1);
            out.extend_from_slice(&version.to_le_bytes());
        }
        Version::Object { hlc, writer } => {
            out.push(2);
            put_hlc(out, hlc);
            out.extend_from_slice(writer.as_bytes());
        }
    }
}

fn key_len(key: &Key) -> usize {
    match key {
        Key::Member(_) => 1 + 32,
        Key::Owned { name, .. } => 1 + 32 + 8 + name.len(),
        Key::Object(o) => 1 + 3 * 8 + o.kind.len() + o.namespace.len() + o.name.len(),
    }
}

/// The key hash of `key`.
pub fn key_hash(key: &Key) -> u64 {
    let mut buf = Vec::with_capacity(key_len(key));
    put_key(&mut buf, key);
    xxh3_64_with_seed(&buf, KEY_SEED)
}

/// `(key hash, item hash)` of an entry whose value hash is already known.
pub(super) fn hashes(key: &Key, entry: &Entry, value_hash: u64) -> (u64, u64) {
    // Longest version (object: tag, hlc, writer) + hlc + value part.
    let mut buf = Vec::with_capacity(key_len(key) + (1 + 12 + 32) + 12 + 9);
    put_key(&mut buf, key);
    let key_hash = xxh3_64_with_seed(&buf, KEY_SEED);
    put_version(&mut buf, &entry.version);
    put_hlc(&mut buf, entry.written_at);
    match entry.value {
        None => buf.push(0),
        Some(_) => {
            buf.push(1);
            buf.extend_from_slice(&value_hash.to_le_bytes());
        }
    }
    (key_hash, xxh3_64_with_seed(&buf, ITEM_SEED))
}

/// The anti-entropy digest of one item: `(key hash, item hash)`, as listed by
/// [`Store::leaf_digest`](super::Store::leaf_digest). A peer compares a remote digest with its
/// own entry for the key: equal item hashes mean equal entries (up to a 64-bit collision).
pub fn digest_of(key: &Key, entry: &Entry) -> (u64, u64) {
    hashes(key, entry, value_hash(&entry.value))
}

/// The fingerprint-tree leaf a key hash belongs to: `(top, sub)`, each in `0..64` (the hash's
/// 6 high bits, then the next 6).
pub fn leaf_of_key_hash(key_hash: u64) -> (u8, u8) {
    ((key_hash >> 58) as u8, ((key_hash >> 52) & 0x3f) as u8)
}

/// The fingerprint-tree leaf `key` belongs to: `(top, sub)`, each in `0..64`.
pub fn leaf_of(key: &Key) -> (u8, u8) {
    leaf_of_key_hash(key_hash(key))
}
