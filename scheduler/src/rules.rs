//! The few numeric rules every part of the crate (fast placement, reference
//! placement, checker) must agree on exactly. Integer arithmetic only, so all
//! members compute the same figures.

/// Most replicas a node may hold: `(1 + ε)` times the average load `m / n`,
/// rounded down, but never below `ceil(m / n)`, so that `n` nodes can always
/// hold `m` replicas (the bound must be reachable, or bounded-load hashing
/// would leave replicas unplaced for no reason).
pub(crate) fn load_bound(replicas: u64, holding_nodes: u64, epsilon_permille: u32) -> u32 {
    if holding_nodes == 0 {
        return 0;
    }
    let ceil_avg = replicas.div_ceil(holding_nodes);
    let relaxed = (u128::from(replicas) * (1000 + u128::from(epsilon_permille))
        / (1000 * u128::from(holding_nodes))) as u64;
    clamp_u32(ceil_avg.max(relaxed))
}

/// Load below which an alive node pulls, from other alive nodes, replicas
/// that prefer it to where they run: the rounded-up average. Pulling only
/// below the average (not up to the bound) is what stops one move from
/// triggering a chain of them, and gives a new node about its fair share.
pub(crate) fn pull_target(replicas: u64, holding_nodes: u64) -> u32 {
    if holding_nodes == 0 {
        return 0;
    }
    clamp_u32(replicas.div_ceil(holding_nodes))
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

fn clamp_u32(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_bound_is_one_plus_epsilon_of_the_average_when_that_is_reachable() {
        assert_eq!(load_bound(100_000, 1000, 100), 110);
        assert_eq!(load_bound(1000, 10, 250), 125);
    }

    #[test]
    fn load_bound_never_falls_below_the_rounded_up_average() {
        assert_eq!(load_bound(11, 10, 100), 2);
        assert_eq!(load_bound(5, 10, 0), 1);
        assert_eq!(load_bound(0, 10, 100), 0);
        assert_eq!(load_bound(7, 0, 100), 0);
    }

    #[test]
    fn spread_limit_is_one_with_enough_nodes_and_even_otherwise() {
        assert_eq!(spread_limit(true, 3, 5), 1);
        assert_eq!(spread_limit(true, 7, 3), 3);
        assert_eq!(spread_limit(true, 7, 0), 7);
        assert_eq!(spread_limit(false, 7, 3), u32::MAX);
    }
}
