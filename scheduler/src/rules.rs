//! The few numeric rules every part of the crate (fast placement, reference
//! placement, checker) must agree on exactly. Integer arithmetic only, so all
//! members compute the same figures.

/// Most replicas a node may hold: `ceil((1 + ε) · m / n)`, the capacity of
/// "Consistent Hashing with Bounded Loads". Rounding up keeps the bound
/// reachable (`n` nodes can always hold `m` replicas) and, as important for
/// movement, keeps it from dropping by one whenever a single node joins a
/// large cluster: with a rounded-down bound every node at the bound would
/// have to shed a replica. The price is that a node may exceed `(1 + ε)`
/// times the average by less than one replica.
pub(crate) fn load_bound(replicas: u64, holding_nodes: u64, epsilon_permille: u32) -> u32 {
    if holding_nodes == 0 {
        return 0;
    }
    let scaled = u128::from(replicas) * (1000 + u128::from(epsilon_permille));
    let bound = scaled.div_ceil(1000 * u128::from(holding_nodes));
    u32::try_from(bound).unwrap_or(u32::MAX)
}

/// The rounded-up average load: nodes over the bound hand replicas they
/// must shed to nodes below it.
pub(crate) fn average_ceil(replicas: u64, holding_nodes: u64) -> u32 {
    if holding_nodes == 0 {
        return 0;
    }
    clamp_u32(replicas.div_ceil(holding_nodes))
}

/// Load below which an alive node pulls replicas that prefer it:
/// `ceil((1 - ε) · m / n)`, the mirror of the bound, and always below the
/// bound itself. A node that has just joined is far below it and pulls about
/// its share; a node that has only given one replica away is not, which is
/// what keeps one move from unlocking a chain of others (a node that was at
/// the bound, and so was passed over by replicas that preferred it, must not
/// start pulling them back because it lost one).
pub(crate) fn pull_below(replicas: u64, holding_nodes: u64, epsilon_permille: u32) -> u32 {
    if holding_nodes == 0 || epsilon_permille >= 1000 {
        return 0;
    }
    let scaled = u128::from(replicas) * (1000 - u128::from(epsilon_permille));
    let low = scaled.div_ceil(1000 * u128::from(holding_nodes));
    let bound = load_bound(replicas, holding_nodes, epsilon_permille);
    u32::try_from(low)
        .unwrap_or(u32::MAX)
        .min(bound.saturating_sub(1))
}

/// Most replicas of one spread workload a node may run: one while there are
/// at least as many eligible nodes as replicas, otherwise as even as
/// possible, `ceil(replicas / eligible)`. Unlimited without spread.
pub(crate) fn spread_limit(spread: bool, replicas: u64, eligible_nodes: u64) -> u32 {
    if !spread {
        return u32::MAX;
    }
    clamp_u32(replicas.div_ceil(eligible_nodes.max(1)).max(1))
}

/// Spare slots a workload has: how many more replicas its eligible nodes
/// could take, were they empty, than it asks for. Unplaced replicas of the
/// workloads with the least slack choose first, so that a replica that could
/// go almost anywhere never takes the last slot of one that could not (a
/// narrow selector, or spread over barely enough nodes).
pub(crate) fn slack(replicas: u64, eligible_nodes: u64, spread_limit: u32, load_bound: u32) -> u64 {
    let per_node = u64::from(spread_limit.min(load_bound));
    (eligible_nodes * per_node).saturating_sub(replicas)
}

fn clamp_u32(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_bound_is_one_plus_epsilon_of_the_average_rounded_up() {
        assert_eq!(load_bound(100_000, 1000, 100), 110);
        assert_eq!(load_bound(100_000, 1001, 100), 110);
        assert_eq!(load_bound(1000, 10, 250), 125);
        assert_eq!(load_bound(11, 10, 100), 2);
        assert_eq!(load_bound(5, 10, 0), 1);
    }

    #[test]
    fn load_bound_is_zero_without_replicas_or_nodes() {
        assert_eq!(load_bound(0, 10, 100), 0);
        assert_eq!(load_bound(7, 0, 100), 0);
    }

    #[test]
    fn pull_threshold_mirrors_the_bound_below_the_average() {
        assert_eq!(pull_below(100_000, 1000, 100), 90);
        assert_eq!(pull_below(100_000, 1001, 100), 90);
        assert_eq!(pull_below(10, 10, 100), 1);
        assert_eq!(pull_below(10, 10, 0), 0);
        assert_eq!(pull_below(20, 10, 100), 2);
        assert_eq!(pull_below(1000, 10, 0), 99);
        assert_eq!(pull_below(10, 10, 1000), 0);
        assert_eq!(average_ceil(11, 10), 2);
    }

    #[test]
    fn spread_limit_is_one_with_enough_nodes_and_even_otherwise() {
        assert_eq!(spread_limit(true, 3, 5), 1);
        assert_eq!(spread_limit(true, 7, 3), 3);
        assert_eq!(spread_limit(true, 7, 0), 7);
        assert_eq!(spread_limit(false, 7, 3), u32::MAX);
    }
}
