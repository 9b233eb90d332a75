//! Stable hashing: every member must derive the same ring and the same
//! preferences from the same ids, on any platform and in any process, so
//! nothing here may depend on a per-process random seed.

use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::types::{NodeId, WorkloadId};

/// Points each node puts on the ring. More points even out the share of the
/// ring each node owns (relative spread about `1/sqrt(VNODES)`), which keeps
/// first-choice loads near the average so that the load bound rarely has to
/// push replicas along; the cost is ring size and build time.
pub(crate) const VNODES: u32 = 128;

const NODE_SEED: u64 = 0x7368_6f61_6c2d_6e64; // "shoal-nd"
const WORKLOAD_SEED: u64 = 0x7368_6f61_6c2d_776c; // "shoal-wl"
const ORDINAL_SALT: u64 = 0x7368_6f61_6c2d_6f72; // "shoal-or"
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finalizer: a bijective mixer good enough to turn structured
/// inputs (counters, xors of hashes) into independent-looking points.
#[inline]
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hash of a node id, the seed of its ring points and scores.
pub(crate) fn node_hash(id: &NodeId) -> u64 {
    xxh3_64_with_seed(id.as_str().as_bytes(), NODE_SEED)
}

/// Hash of a workload id. The parts are separated by 0xff, a byte UTF-8
/// never produces, so distinct ids cannot collide by concatenation.
pub(crate) fn workload_hash(id: &WorkloadId) -> u64 {
    let mut bytes =
        Vec::with_capacity(id.kind().len() + id.namespace().len() + id.name().len() + 2);
    bytes.extend_from_slice(id.kind().as_bytes());
    bytes.push(0xff);
    bytes.extend_from_slice(id.namespace().as_bytes());
    bytes.push(0xff);
    bytes.extend_from_slice(id.name().as_bytes());
    xxh3_64_with_seed(&bytes, WORKLOAD_SEED)
}

/// Position of a node's `v`-th virtual node on the ring.
#[inline]
pub(crate) fn vnode_point(node_hash: u64, v: u32) -> u64 {
    mix64(node_hash.wrapping_add(u64::from(v).wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// Position of a replica on the ring: where its walk for a node starts.
#[inline]
pub(crate) fn replica_point(workload_hash: u64, ordinal: u32) -> u64 {
    mix64(workload_hash ^ mix64(u64::from(ordinal) ^ ORDINAL_SALT))
}

/// Rendezvous score of a replica on a node: which replicas a node keeps
/// first when it cannot keep them all, and which claim wins when several
/// nodes report running the same replica. Independent of the ring, so the
/// choice does not favour replicas near the node's points.
#[inline]
pub(crate) fn score(replica_point: u64, node_hash: u64) -> u64 {
    mix64(replica_point ^ node_hash.rotate_left(29))
}

/// A fast deterministic hasher for in-memory maps that are never iterated
/// (FxHash's multiply-rotate). Fixed, so lookups behave the same in every
/// process; not DoS resistant, which does not matter for ids that come from
/// the cluster's own replicated state.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_K: u64 = 0xf135_7aea_2e62_a9c5;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(26) ^ word).wrapping_mul(FX_K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ (rest.len() as u64) << 56);
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        mix64(self.hash)
    }
}

/// Build hasher for [`FxHasher`] maps.
pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;
