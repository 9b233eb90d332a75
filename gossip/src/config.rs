//! Tuning of the gossip core.
//!
//! Every field has a unit and a reason; [`Config::lan`] gives the defaults for a busy LAN or
//! Wi-Fi (one-way latency up to ~10 ms, a few percent loss), which is what shoal's ad-hoc
//! clusters of laptops and small servers run on.

use std::num::NonZeroUsize;
use std::time::Duration;

/// Tuning of the gossip core. Build with [`Config::lan`] and adjust fields as needed.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// How often this node probes one member (SWIM protocol period), in clusters of up to 100
    /// members; larger clusters probe faster (see [`Config::probe_interval_for`]). Lower
    /// detects failures sooner at the cost of one ping/ack pair per period. Scaled up by the
    /// local health multiplier when this node itself seems unhealthy (Lifeguard). Default
    /// 400 ms: with `suspicion_mult` 2 it detects a crash in a 100-node cluster in about 2.5 s
    /// (p50) while 10% loss and slow nodes cause no false positives (see ARCHITECTURE.md for
    /// the curve).
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking others to probe indirectly. Must exceed
    /// the round trip time with some margin; scaled by the local health multiplier. Default 200 ms.
    pub probe_timeout: Duration,
    /// How many members are asked to probe a member that missed its direct ack (SWIM's k).
    /// More resists message loss on the direct path, at k extra messages per failed probe. Default 3.
    pub indirect_probes: usize,
    /// Suspicion timeout scale: the minimum suspicion timeout is
    /// `suspicion_mult * max(1, log10(n))` protocol periods. Lower detects sooner; below about
    /// 1.5 nodes that are merely slow (1 s late) start being declared dead. Default 2.
    pub suspicion_mult: f64,
    /// The suspicion timeout starts at `suspicion_max_mult` times the minimum and shrinks toward
    /// the minimum as independent confirmations arrive (Lifeguard). Default 4.
    pub suspicion_max_mult: u32,
    /// How many independent confirmations shrink a suspicion to its minimum timeout (Lifeguard's K;
    /// capped by the number of other members). Default 3.
    pub suspicion_confirmations: u32,
    /// Upper bound of the local health multiplier (Lifeguard's S). Probe intervals and timeouts
    /// are multiplied by `1 + health` while this node misses acks and nacks. Default 8.
    pub max_local_health: u32,
    /// How often queued updates are gossiped to `gossip_fanout` random members beyond what
    /// piggybacks on probes. Default 100 ms.
    pub gossip_interval: Duration,
    /// Members each periodic gossip round sends to. Default 3.
    pub gossip_fanout: usize,
    /// Messages a gossip round sends each of those members at most, while queued updates are
    /// waiting. Each update is still sent a bounded number of times in all (`retransmit_mult`):
    /// this sets how fast a burst of writes (one `apply` of many objects) drains, not how much
    /// is sent. With one message per member, a burst spreads at a message's worth of updates
    /// per round, and the last nodes learn its last objects seconds later. Default 8.
    pub gossip_round_messages: usize,
    /// Members a fresh update is pushed to at once, by its writer and by every node that learns it
    /// (infect-forward). This is what makes a change reach everyone in a few round trips. Default 4.
    pub eager_fanout: usize,
    /// Every update is sent about `retransmit_mult * ceil(log10(n + 1))` times by each node
    /// (eager pushes, gossip rounds and piggybacks together) before it leaves the queue. Default 3.
    pub retransmit_mult: u32,
    /// How often one dead (not left) member is probed, so that partitions heal by themselves
    /// once the network does. Default 2 s.
    pub dead_probe_interval: Duration,
    /// How often this node runs delta anti-entropy with one random member (fingerprint
    /// comparison, then only what differs). Default 2 s.
    pub anti_entropy_interval: Duration,
    /// Largest encoded message; bigger ones are fragmented. 1,200 bytes is the minimum QUIC
    /// datagram size, so ordinary messages fit any path. Default 1200.
    pub max_message_size: NonZeroUsize,
    /// A deletion (tombstone) is kept this long before it is collected; a node that has been
    /// away longer must resynchronise from scratch. Default 24 h.
    pub tombstone_grace: Duration,
    /// How often tombstones and long-dead members are collected. Default 60 s.
    pub gc_interval: Duration,
    /// First retry delay of an unanswered join; doubles up to `join_retry_max`. Default 500 ms.
    pub join_retry_min: Duration,
    /// Longest delay between join retries. Default 30 s.
    pub join_retry_max: Duration,
    /// A bulk catch-up request unanswered this long is retried (with another member if one is
    /// known). Default 1 s.
    pub bulk_request_timeout: Duration,
    /// How far this node's wall clock may be from most of its members' before it refuses to
    /// stamp object writes (see [`crate::clock`]). Default 500 ms.
    pub max_clock_offset: Duration,
    /// Incomplete fragmented messages are dropped after this long. Default 5 s.
    pub fragment_timeout: Duration,
    /// Largest reassembled message accepted, in bytes. Default 4 MiB.
    pub max_reassembled_size: usize,
}

impl Config {
    /// Defaults for a LAN or Wi-Fi cluster of about `expected_nodes` nodes. The size only
    /// matters for documentation today: everything that depends on it (suspicion timeouts,
    /// retransmissions) is recomputed from the live member count.
    pub fn lan(_expected_nodes: usize) -> Self {
        Config {
            probe_interval: Duration::from_millis(400),
            probe_timeout: Duration::from_millis(200),
            indirect_probes: 3,
            suspicion_mult: 2.0,
            suspicion_max_mult: 4,
            suspicion_confirmations: 3,
            max_local_health: 8,
            gossip_interval: Duration::from_millis(100),
            gossip_fanout: 3,
            gossip_round_messages: 8,
            eager_fanout: 4,
            retransmit_mult: 3,
            dead_probe_interval: Duration::from_secs(2),
            anti_entropy_interval: Duration::from_secs(2),
            max_message_size: NonZeroUsize::new(1200).expect("non-zero"),
            tombstone_grace: Duration::from_secs(24 * 3600),
            gc_interval: Duration::from_secs(60),
            join_retry_min: Duration::from_millis(500),
            join_retry_max: Duration::from_secs(30),
            bulk_request_timeout: Duration::from_secs(1),
            max_clock_offset: Duration::from_millis(500),
            fragment_timeout: Duration::from_secs(5),
            max_reassembled_size: 4 << 20,
        }
    }

    /// The number of times each node transmits an update, for a cluster of `n` members.
    pub fn retransmit_limit(&self, n: usize) -> u32 {
        let log = ((n + 1) as f64).log10().ceil().max(1.0) as u32;
        self.retransmit_mult.saturating_mul(log).max(1)
    }

    /// The protocol period in a cluster of `n` members: `probe_interval` up to 100 members,
    /// then `probe_interval * 2 / log10(n)` (267 ms at 1,000 members with the default 400 ms).
    ///
    /// The minimum suspicion timeout grows with `log10(n)` so that a refutation has time to
    /// spread; the time until some member first probes a crashed one does not depend on `n`
    /// (about 1.6 periods on average, with a geometric tail). Shortening the period in the
    /// same proportion keeps the minimum suspicion timeout at its 100-member value (what
    /// protects nodes that are merely slow) and detection time flat as the cluster grows,
    /// for one more ping per member and second at 1,000 members.
    pub fn probe_interval_for(&self, n: usize) -> Duration {
        let log = (n.max(1) as f64).log10();
        if log <= 2.0 {
            self.probe_interval
        } else {
            self.probe_interval.mul_f64(2.0 / log)
        }
    }

    /// Minimum suspicion timeout for a cluster of `n` members:
    /// `suspicion_mult * max(1, log10(n))` protocol periods (of [`Config::probe_interval_for`]).
    pub fn suspicion_min(&self, n: usize) -> Duration {
        let log = (n.max(1) as f64).log10().max(1.0);
        self.probe_interval_for(n)
            .mul_f64(self.suspicion_mult.max(0.0) * log)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::lan(16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_clusters_probe_faster_and_keep_the_minimum_suspicion_of_100_members() {
        let c = Config::lan(1000);
        assert_eq!(c.probe_interval_for(3), c.probe_interval);
        assert_eq!(c.probe_interval_for(100), c.probe_interval);
        let at_1000 = c.probe_interval_for(1000);
        assert!(at_1000 < c.probe_interval);
        assert_eq!(at_1000.as_millis(), 266);
        assert!(c.probe_interval_for(10_000) < at_1000);
        let at_100 = c.suspicion_min(100);
        for n in [101, 1000, 10_000] {
            let d = c.suspicion_min(n).as_secs_f64() - at_100.as_secs_f64();
            assert!(
                d.abs() < 1e-3,
                "n={n}: {:?} vs {at_100:?}",
                c.suspicion_min(n)
            );
        }
        assert!(c.suspicion_min(10) < at_100);
    }
}
