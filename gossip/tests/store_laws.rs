//! Property tests of the store's algebra: merge is commutative, associative and idempotent
//! (entries *and* fingerprints), incremental fingerprints equal fingerprints recomputed from
//! scratch, gc keeps them consistent, and the per-key join agrees with `crdts::LWWReg`.

use std::collections::BTreeMap;

use crdts::{CvRDT, LWWReg};
use proptest::prelude::*;
use shoal_gossip::NodeId;
use shoal_gossip::hlc::Hlc;
use shoal_gossip::store::{
    Entry, Key, LEAVES_PER_BUCKET, MergeGuard, MergeOutcome, ObjectKey, Store, TOP_BUCKETS,
    Version, digest_of, leaf_of,
};

type Op = (Key, Entry);

fn node(i: u8) -> NodeId {
    NodeId([i; 32])
}

/// A small key universe, so that operations collide on keys.
fn key() -> impl Strategy<Value = Key> {
    prop_oneof![
        (0u8..4).prop_map(|i| Key::Member(node(i))),
        (0u8..3, prop::sample::select(vec!["a", "b"])).prop_map(|(o, n)| Key::owned(node(o), n)),
        (
            prop::sample::select(vec!["deployment", "service"]),
            prop::sample::select(vec!["x", "y"]),
            prop::sample::select(vec!["1", "2"]),
        )
            .prop_map(|(k, ns, n)| Key::Object(ObjectKey::new(k, ns, n))),
    ]
}

fn hlc() -> impl Strategy<Value = Hlc> {
    (0u64..4, 0u32..3).prop_map(|(w, l)| Hlc::new(w, l))
}

/// Values from a small set (so equal versions with different values, and exact duplicates,
/// both happen), tombstones included.
fn value() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        1 => Just(None),
        3 => prop::sample::select(vec![&b""[..], b"a", b"b", b"longer value"])
            .prop_map(|v| Some(v.to_vec())),
    ]
}

/// An entry of the right kind for `key`.
fn entry_for(key: &Key) -> BoxedStrategy<Entry> {
    match key {
        Key::Member(_) => (0u64..3, 0u8..4, hlc(), value())
            .prop_map(|(inc, rank, at, v)| Entry::member(inc, rank, at, v))
            .boxed(),
        Key::Owned { .. } => (0u64..4, hlc(), value())
            .prop_map(|(ver, at, v)| Entry::owned(ver, at, v))
            .boxed(),
        // Few HLCs and writers: concurrent writes with equal HLCs by different writers, and by
        // the same writer with different values, are common.
        Key::Object(_) => (hlc(), 0u8..3, value())
            .prop_map(|(at, w, v)| Entry::object(at, node(w), v))
            .boxed(),
    }
}

fn op() -> impl Strategy<Value = Op> {
    key().prop_flat_map(|k| {
        let e = entry_for(&k);
        (Just(k), e)
    })
}

fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..max)
}

fn apply(store: &mut Store, ops: &[Op]) {
    for (k, e) in ops {
        store
            .merge(k.clone(), e.clone(), MergeGuard::NONE)
            .expect("generated entries are well-formed");
    }
}

fn store_of(ops: &[Op]) -> Store {
    let mut s = Store::new();
    apply(&mut s, ops);
    s
}

/// `a ∪ b`: every entry of `b` merged into a copy of `a`.
fn union(a: &Store, b: &Store) -> Store {
    let mut out = a.clone();
    for (k, e) in b.iter() {
        out.merge(k.clone(), e.clone(), MergeGuard::NONE).unwrap();
    }
    out
}

/// Every observable of the store: entries, all fingerprints, the digests of non-empty leaves.
type Snapshot = (
    Vec<Op>,
    u64,
    usize,
    [u64; TOP_BUCKETS],
    Vec<[u64; LEAVES_PER_BUCKET]>,
);

fn snapshot(s: &Store) -> Snapshot {
    (
        s.iter().map(|(k, e)| (k.clone(), e.clone())).collect(),
        s.fingerprint(),
        s.item_count(),
        s.root_fingerprints(),
        (0..TOP_BUCKETS as u8)
            .map(|t| s.bucket_fingerprints(t))
            .collect(),
    )
}

/// Recomputes every fingerprint and leaf digest from the entries alone and checks the store's
/// incrementally maintained ones against them.
fn check_fingerprints(s: &Store) -> Result<(), TestCaseError> {
    let mut leaves = vec![[0u64; LEAVES_PER_BUCKET]; TOP_BUCKETS];
    let mut digests: BTreeMap<(u8, u8), Vec<(u64, u64)>> = BTreeMap::new();
    for (k, e) in s.iter() {
        let (top, sub) = leaf_of(k);
        let d = digest_of(k, e);
        leaves[usize::from(top)][usize::from(sub)] ^= d.1;
        digests.entry((top, sub)).or_default().push(d);
    }
    let mut total = 0;
    for (top, bucket) in leaves.iter().enumerate() {
        let t = bucket.iter().fold(0, |a, b| a ^ b);
        prop_assert_eq!(s.root_fingerprints()[top], t);
        prop_assert_eq!(&s.bucket_fingerprints(top as u8), bucket);
        total ^= t;
    }
    prop_assert_eq!(s.fingerprint(), total);
    let mut listed = 0;
    for ((top, sub), mut expected) in digests {
        expected.sort_unstable();
        let digest = s.leaf_digest(top, sub);
        prop_assert_eq!(&digest, &expected);
        let items: Vec<((u64, u64), &Key, &Entry)> = s.leaf_items_with_digest(top, sub).collect();
        prop_assert_eq!(items.len(), digest.len());
        for (d, k, e) in items {
            prop_assert_eq!(d, digest_of(k, e));
        }
        listed += digest.len();
    }
    prop_assert_eq!(listed, s.len());
    prop_assert_eq!(s.item_count(), s.len());
    Ok(())
}

/// `ops` with some of its elements repeated.
fn with_duplicates(ops: Vec<Op>) -> impl Strategy<Value = Vec<Op>> {
    let n = ops.len();
    prop::collection::vec(0..n.max(1), 0..=n).prop_map(move |picks| {
        let mut out = ops.clone();
        if n > 0 {
            out.extend(picks.into_iter().map(|i| ops[i].clone()));
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any order, with any repetitions, gives the same store: commutativity and idempotence of
    /// single merges.
    #[test]
    fn order_and_duplicates_do_not_matter(
        (ops, permuted) in ops(40)
            .prop_flat_map(|ops| (Just(ops.clone()), with_duplicates(ops).prop_shuffle()))
    ) {
        let a = store_of(&ops);
        let b = store_of(&permuted);
        check_fingerprints(&a)?;
        check_fingerprints(&b)?;
        prop_assert_eq!(snapshot(&a), snapshot(&b));
        prop_assert_eq!(&a, &b);
        // Re-merging everything changes nothing, and reports no news.
        let mut again = a.clone();
        for (k, e) in &ops {
            let out = again.merge(k.clone(), e.clone(), MergeGuard::NONE).unwrap();
            prop_assert!(!out.is_applied(), "{:?}", out);
        }
        prop_assert_eq!(&again, &a);
    }

    /// Store-level laws on three replicas that saw different subsets.
    #[test]
    fn union_is_commutative_associative_idempotent(
        all in ops(60),
        assignment in prop::collection::vec(0u8..3, 60),
    ) {
        let part = |r: u8| -> Vec<Op> {
            all.iter().zip(&assignment).filter(|(_, a)| **a == r).map(|(op, _)| op.clone()).collect()
        };
        let (a, b, c) = (store_of(&part(0)), store_of(&part(1)), store_of(&part(2)));
        let ab = union(&a, &b);
        let ba = union(&b, &a);
        prop_assert_eq!(snapshot(&ab), snapshot(&ba));
        let ab_c = union(&ab, &c);
        let a_bc = union(&a, &union(&b, &c));
        prop_assert_eq!(snapshot(&ab_c), snapshot(&a_bc));
        prop_assert_eq!(snapshot(&union(&a, &a)), snapshot(&a));
        prop_assert_eq!(snapshot(&union(&ab, &a)), snapshot(&ab));
        // And all equal the store that saw everything in one sequence.
        prop_assert_eq!(snapshot(&ab_c), snapshot(&store_of(&all)));
        check_fingerprints(&ab_c)?;
    }

    /// gc keeps fingerprints consistent, leaves what a store that never saw the collected
    /// entries would hold, and is deterministic across replicas that merged in different orders.
    #[test]
    fn gc_is_consistent(
        (ops, permuted) in ops(40).prop_flat_map(|ops| (Just(ops.clone()), Just(ops).prop_shuffle())),
        horizon in hlc(),
    ) {
        let mut a = store_of(&ops);
        let mut b = store_of(&permuted);
        let before = a.len();
        let mut removed = a.gc(horizon);
        let mut removed_b = b.gc(horizon);
        removed.sort();
        removed_b.sort();
        prop_assert_eq!(&removed_b, &removed);
        prop_assert_eq!(a.len(), before - removed.len());
        for key in &removed {
            prop_assert!(a.get(key).is_none(), "reported removed but still held");
        }
        prop_assert_eq!(snapshot(&a), snapshot(&b));
        check_fingerprints(&a)?;
        // Nothing collectable is left behind, nor anything a departed member owned.
        let is_gone = |e: &Entry| {
            e.written_at < horizon
                && matches!(e.version, Version::Member { rank, .. } if rank >= Version::DEAD)
        };
        let full = store_of(&ops);
        let departed: Vec<NodeId> =
            full.members().filter(|(_, e)| is_gone(e)).map(|(id, _)| id).collect();
        for (k, e) in a.iter() {
            match k {
                Key::Member(_) => prop_assert!(!is_gone(e), "{}", k),
                Key::Owned { owner, .. } => prop_assert!(!departed.contains(owner), "{}", k),
                Key::Object(_) => {}
            }
            if !matches!(k, Key::Member(_)) {
                prop_assert!(!(e.is_tombstone() && e.written_at < horizon), "{}", k);
            }
        }
        // Everything else is still there.
        for (k, e) in full.iter() {
            let collectable = match k {
                Key::Member(_) => is_gone(e),
                Key::Owned { owner, .. } => {
                    departed.contains(owner) || (e.is_tombstone() && e.written_at < horizon)
                }
                Key::Object(_) => e.is_tombstone() && e.written_at < horizon,
            };
            prop_assert_eq!(a.get(k).is_some(), !collectable, "{}", k);
        }
        let survivors: Vec<Op> = a.iter().map(|(k, e)| (k.clone(), e.clone())).collect();
        prop_assert_eq!(snapshot(&store_of(&survivors)), snapshot(&a));
        // gc is idempotent.
        prop_assert!(a.gc(horizon).is_empty());
    }

    /// The per-key join is `crdts::LWWReg` over (value, marker) whenever the markers differ
    /// (and the store is well-defined where they do not).
    #[test]
    fn join_agrees_with_crdts_lwwreg(
        (key, a, b) in key().prop_flat_map(|k| (Just(k.clone()), entry_for(&k), entry_for(&k)))
    ) {
        let reg = |e: &Entry| LWWReg { val: e.value.clone(), marker: e.marker() };
        for (x, y) in [(&a, &b), (&b, &a)] {
            let mut s = Store::new();
            s.merge(key.clone(), x.clone(), MergeGuard::NONE).unwrap();
            let out = s.merge(key.clone(), y.clone(), MergeGuard::NONE).unwrap();
            let held = s.get(&key).unwrap();
            if x == y {
                prop_assert_eq!(out, MergeOutcome::Duplicate);
            }
            if x.marker() != y.marker() {
                let mut r = reg(x);
                prop_assert!(r.validate_merge(&reg(y)).is_ok());
                r.merge(reg(y));
                prop_assert_eq!(&r.val, &held.value);
                prop_assert_eq!(r.marker, held.marker());
            }
        }
    }
}
