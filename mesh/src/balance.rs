//! Endpoint choice: power of two choices on active streams, with a preference for local
//! endpoints that never outweighs load.
//!
//! Pure: a function of the candidates' loads and an injected RNG, no clock and no I/O, so it is
//! tested exactly (`proptest` for its laws, a seeded distribution test).
//!
//! Rule: draw two distinct candidates and take the one with fewer active streams. When some
//! candidates are local (same node: no QUIC hop), the first draw is a local one and the second
//! any other candidate, and the local one wins ties: a local endpoint is preferred exactly when it
//! is not more loaded than the alternative it was compared with. Among equals the first draw
//! wins, which is itself uniformly random, so equal loads spread evenly.

use rand::{Rng, RngExt};

/// How loaded one candidate endpoint is, as this requester sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Streams this requester has open (or is establishing) to the endpoint.
    pub active: u32,
    /// The endpoint runs on this node (connected directly, without the mesh).
    pub local: bool,
}

/// Picks one of `loads` (an index into it); `None` only when `loads` is empty.
pub fn choose<R: Rng + ?Sized>(loads: &[Load], rng: &mut R) -> Option<usize> {
    let n = loads.len();
    match n {
        0 => return None,
        1 => return Some(0),
        _ => {}
    }
    let locals = loads.iter().filter(|l| l.local).count();
    let (first, second) = if locals > 0 && locals < n {
        // First draw among the locals, second among all the others.
        let first = nth_matching(loads, rng.random_range(0..locals), |l| l.local);
        let mut second = rng.random_range(0..n - 1);
        if second >= first {
            second += 1;
        }
        (first, second)
    } else {
        let first = rng.random_range(0..n);
        let mut second = rng.random_range(0..n - 1);
        if second >= first {
            second += 1;
        }
        (first, second)
    };
    let (a, b) = (loads[first], loads[second]);
    Some(
        if b.active < a.active || (b.active == a.active && b.local && !a.local) {
            second
        } else {
            first
        },
    )
}

fn nth_matching(loads: &[Load], nth: usize, pred: impl Fn(&Load) -> bool) -> usize {
    loads
        .iter()
        .enumerate()
        .filter(|(_, l)| pred(l))
        .nth(nth)
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn remote(active: u32) -> Load {
        Load {
            active,
            local: false,
        }
    }

    #[test]
    fn empty_and_single() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(choose(&[], &mut rng), None);
        assert_eq!(choose(&[remote(9)], &mut rng), Some(0));
    }

    #[test]
    fn equal_loads_spread_evenly() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let loads = [remote(0); 3];
        let mut hits = [0u32; 3];
        for _ in 0..30_000 {
            hits[choose(&loads, &mut rng).unwrap()] += 1;
        }
        for h in hits {
            assert!((9_000..11_000).contains(&h), "{hits:?}");
        }
    }

    #[test]
    fn least_loaded_wins_whenever_drawn() {
        // Candidate 0 is drawn in 4 of the 6 ordered pairs and wins each of them.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let loads = [remote(0), remote(10), remote(10)];
        let hits = (0..30_000)
            .filter(|_| choose(&loads, &mut rng) == Some(0))
            .count();
        assert!((19_000..21_000).contains(&hits), "{hits}");
    }

    #[test]
    fn held_connections_stay_balanced() {
        // Long-lived connections arriving one by one: the spread stays within a few streams.
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut loads = [remote(0); 5];
        for _ in 0..1_000 {
            let i = choose(&loads, &mut rng).unwrap();
            loads[i].active += 1;
        }
        let max = loads.iter().map(|l| l.active).max().unwrap();
        let min = loads.iter().map(|l| l.active).min().unwrap();
        assert!(max - min <= 3, "{loads:?}");
    }

    #[test]
    fn local_preferred_only_when_not_more_loaded() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let local = Load {
            active: 2,
            local: true,
        };
        // Not more loaded than any alternative: always chosen.
        for _ in 0..1_000 {
            assert_eq!(choose(&[remote(2), local, remote(3)], &mut rng), Some(1));
        }
        // More loaded than every alternative: never chosen.
        for _ in 0..1_000 {
            assert_ne!(choose(&[remote(1), local, remote(0)], &mut rng), Some(1));
        }
    }

    proptest! {
        #[test]
        fn never_picks_a_non_candidate(
            loads in proptest::collection::vec((0u32..50, any::<bool>()), 0..20),
            seed in any::<u64>(),
        ) {
            let loads: Vec<Load> =
                loads.into_iter().map(|(active, local)| Load { active, local }).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            match choose(&loads, &mut rng) {
                None => prop_assert!(loads.is_empty()),
                Some(i) => {
                    prop_assert!(i < loads.len());
                    // Power of two choices never takes the most loaded of several candidates
                    // when it is strictly the most loaded.
                    let max = loads.iter().map(|l| l.active).max().unwrap();
                    let at_max = loads.iter().filter(|l| l.active == max).count();
                    if loads.len() >= 2 && at_max == 1 {
                        prop_assert!(loads[i].active < max);
                    }
                }
            }
        }

        #[test]
        fn a_chosen_remote_beats_or_ties_a_local(
            remote_loads in proptest::collection::vec(0u32..5, 1..6),
            local_load in 0u32..5,
            seed in any::<u64>(),
        ) {
            let mut loads: Vec<Load> = remote_loads.iter().map(|&a| remote(a)).collect();
            loads.push(Load { active: local_load, local: true });
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let i = choose(&loads, &mut rng).unwrap();
            if !loads[i].local {
                prop_assert!(loads[i].active < local_load);
            }
        }
    }
}
