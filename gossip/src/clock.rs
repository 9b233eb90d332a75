//! How far this node's wall clock is from its peers', and whether it may stamp writes.
//!
//! Object writes are ordered by hybrid logical clocks, which follow the largest wall clock they
//! have seen. A node whose wall clock runs ahead stamps its writes in the future, and they win
//! over writes made later elsewhere: an acknowledged write is undone by a clock. A node whose
//! clock runs more than the tombstone grace behind stamps new objects so old that its peers
//! take them for resurrections of deleted ones and refuse them. So a node stamps object writes
//! only while its clock agrees with most of the cluster's.
//!
//! **Measuring.** Every acknowledgement of a direct probe carries the responder's wall clock
//! at the moment it answered. The prober knows when it sent the ping and when the ack came (on
//! its monotonic clock), and takes the peer's offset as
//! `peer_wall - (our_wall_at_receipt - rtt / 2)`, within `rtt / 2`. Each member is probed
//! once per round of the protocol, so every offset is refreshed every few seconds.
//!
//! **Our own jumps.** Between measurements this node's wall clock may be stepped (NTP, a
//! suspended laptop, an operator) while it hears from nobody, say in a partition. A sample
//! keeps both clocks' readings when it was taken; how far the wall clock moved beyond the
//! monotonic one since is how far this node jumped, and is taken off every sample's offset.
//! So a node whose clock jumps while it is alone refuses writes at once.
//!
//! **The rule** ([`ClockOffsets::verdict`]): this node agrees with a peer when their offset is
//! within `max_offset`. Counting itself, it may write only while it agrees with more than
//! half of the members it has measured (CockroachDB's rule, whose nodes stop when fewer than
//! half of the others are within the maximum offset). In a cluster of two whose clocks differ,
//! neither may write: there is no majority to say which clock is right. A node that has peers
//! it believes alive but has measured none of them yet (just started or joined) waits for a
//! first measurement, a probe round at most. A node that has measured no one and sees no live
//! peer writes as its clock says: it is alone, and its writes can only race its own.
//!
//! Cost: one map entry per measured member; a verdict walks the samples once (O(members)),
//! and is asked for once per write request and once per second for the status.

use std::collections::HashMap;

use crate::id::NodeId;
use crate::time::{Instant, Now};

/// One measurement of a peer's clock.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// The peer's wall clock minus ours, in milliseconds, when measured.
    offset_ms: i64,
    /// The round trip of the probe that measured it: the offset is known within half of it.
    rtt_ms: u64,
    /// Our clocks when it was taken.
    mono: Instant,
    wall_ms: u64,
}

/// The offsets of the members this node has measured.
#[derive(Debug, Default)]
pub struct ClockOffsets {
    samples: HashMap<NodeId, Sample>,
}

/// Whether this node may stamp object writes, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClockVerdict {
    /// It may: its clock agrees with most measured members, or it is alone.
    Agrees,
    /// It has live peers but has not measured any of their clocks yet.
    NotCompared,
    /// Its clock is off: it agrees with `agree` of the `measured + 1` members (itself
    /// included), and its offset from them is `skew_ms` (ours minus theirs, the median).
    Off {
        /// This node's clock minus the cluster's (the median of the measured offsets).
        skew_ms: i64,
        /// Members whose clocks agree with ours within the maximum offset, ourselves included.
        agree: usize,
        /// Members measured (not counting ourselves).
        measured: usize,
    },
}

/// This node's clock as seen against its peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockStatus {
    /// Whether it may stamp writes.
    pub verdict: ClockVerdict,
    /// This node's clock minus the cluster's: the median of the measured offsets; `None`
    /// before any measurement.
    pub skew_ms: Option<i64>,
    /// How many members' offsets are known.
    pub measured: usize,
}

/// An object write this node refused to stamp, with its clock's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockRefusal(pub ClockStatus);

impl std::fmt::Display for ClockRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.verdict {
            ClockVerdict::NotCompared => write!(
                f,
                "this node has not compared its clock with its peers' yet; retry in a moment"
            ),
            ClockVerdict::Off {
                skew_ms,
                agree,
                measured,
            } => write!(
                f,
                "this node's clock is {} {} the cluster's and agrees with only {agree} of {} \
                 members; writes stamped by it could undo later ones. Fix its time (NTP) or \
                 write through another node",
                human_ms(skew_ms.unsigned_abs()),
                if skew_ms >= 0 { "ahead of" } else { "behind" },
                measured + 1,
            ),
            ClockVerdict::Agrees => write!(f, "this node's clock agrees with the cluster's"),
        }
    }
}

impl std::error::Error for ClockRefusal {}

/// A duration for people: `850ms`, `4.2s`, `5m0s`, `26h0m`.
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..59_950 => format!("{:.1}s", ms as f64 / 1_000.0),
        59_950..3_599_500 => {
            let secs = (ms + 500) / 1_000;
            format!("{}m{}s", secs / 60, secs % 60)
        }
        _ => {
            let minutes = (ms + 30_000) / 60_000;
            format!("{}h{}m", minutes / 60, minutes % 60)
        }
    }
}

impl ClockOffsets {
    /// Records that `peer`'s clock read `peer_wall_ms` when it answered a ping sent at `sent`;
    /// the answer arrived `now`.
    pub fn record(&mut self, peer: NodeId, peer_wall_ms: u64, sent: Instant, now: Now) {
        let rtt_ms = now.mono.saturating_since(sent).as_millis() as u64;
        let ours_then = now.wall_ms as i64 - (rtt_ms / 2) as i64;
        self.samples.insert(
            peer,
            Sample {
                offset_ms: peer_wall_ms as i64 - ours_then,
                rtt_ms,
                mono: now.mono,
                wall_ms: now.wall_ms,
            },
        );
    }

    /// Forgets a member (it left, or was removed).
    pub fn forget(&mut self, peer: NodeId) {
        self.samples.remove(&peer);
    }

    /// The peer's clock minus ours now, in milliseconds, with the round trip it was measured
    /// over; `None` if it was never measured.
    pub fn offset_of(&self, peer: NodeId, now: Now) -> Option<(i64, u64)> {
        self.samples.get(&peer).map(|s| s.now(now))
    }

    /// Every measured member's clock minus ours now, in milliseconds, with the round trip it
    /// was measured over.
    pub fn offsets(&self, now: Now) -> impl Iterator<Item = (NodeId, (i64, u64))> + '_ {
        self.samples.iter().map(move |(id, s)| (*id, s.now(now)))
    }

    /// How many members have been measured.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no member has been measured.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// This node's clock against its peers: see the [module docs](self) for the rule.
    /// `live_peers` is whether some other member is believed alive.
    pub fn status(&self, now: Now, max_offset_ms: u64, live_peers: bool) -> ClockStatus {
        // Ours minus each member's. Half the round trip is how uncertain an offset is; it
        // counts in the node's favour.
        let mut skews: Vec<i64> = Vec::with_capacity(self.samples.len());
        let mut agree = 1;
        for sample in self.samples.values() {
            let (offset, rtt_ms) = sample.now(now);
            skews.push(-offset);
            if offset.unsigned_abs() <= max_offset_ms + rtt_ms / 2 {
                agree += 1;
            }
        }
        let measured = skews.len();
        skews.sort_unstable();
        let skew_ms = (measured > 0).then(|| skews[measured / 2]);
        let verdict = if measured == 0 {
            if live_peers {
                ClockVerdict::NotCompared
            } else {
                ClockVerdict::Agrees
            }
        } else if 2 * agree > measured + 1 {
            ClockVerdict::Agrees
        } else {
            ClockVerdict::Off {
                skew_ms: skew_ms.unwrap_or_default(),
                agree,
                measured,
            }
        };
        ClockStatus {
            verdict,
            skew_ms,
            measured,
        }
    }
}

impl Sample {
    /// The peer's clock minus ours at `now`, and the round trip it was measured over: the
    /// measured offset less how far our wall clock moved beyond our monotonic clock since
    /// (a step of our own clock, positive when it jumped ahead).
    fn now(&self, now: Now) -> (i64, u64) {
        let wall = now.wall_ms as i64 - self.wall_ms as i64;
        let mono = now.mono.saturating_since(self.mono).as_millis() as i64;
        (self.offset_ms - (wall - mono), self.rtt_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const WALL: u64 = 1_800_000_000_000;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn at(mono: Instant, wall_ms: u64) -> Now {
        Now::new(mono, wall_ms)
    }

    /// Measures `peer` as `offset_ms` ahead of us over a 10 ms round trip at `now`.
    fn measure(c: &mut ClockOffsets, peer: u8, offset_ms: i64, now: Now) {
        let sent = now.mono - Duration::from_millis(10);
        let peer_wall = (now.wall_ms as i64 - 5 + offset_ms) as u64;
        c.record(id(peer), peer_wall, sent, now);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(4_249), "4.2s");
        assert_eq!(human_ms(59_999), "1m0s");
        assert_eq!(human_ms(299_998), "5m0s");
        assert_eq!(human_ms(300_003), "5m0s");
        assert_eq!(human_ms(93_599_998), "26h0m");
        assert_eq!(human_ms(5_400_000), "1h30m");
    }

    #[test]
    fn a_peer_offset_is_measured_within_half_the_round_trip() {
        let mut c = ClockOffsets::default();
        let now = at(Instant(0) + Duration::from_secs(100), WALL);
        // The ping left 40 ms ago; the peer, 300 ms ahead, answered halfway.
        c.record(
            id(1),
            WALL - 20 + 300,
            now.mono - Duration::from_millis(40),
            now,
        );
        assert_eq!(c.offset_of(id(1), now), Some((300, 40)));
        assert_eq!(c.offset_of(id(2), now), None);
    }

    #[test]
    fn a_node_agreeing_with_most_members_writes_and_the_odd_one_out_does_not() {
        let now = at(Instant(0) + Duration::from_secs(100), WALL);
        // We are right; one of four peers is 5 minutes ahead.
        let mut good = ClockOffsets::default();
        for (peer, offset) in [(1, 20), (2, -30), (3, 5), (4, 300_000)] {
            measure(&mut good, peer, offset, now);
        }
        let status = good.status(now, 500, true);
        assert_eq!(status.verdict, ClockVerdict::Agrees);
        assert_eq!(status.measured, 4);
        assert_eq!(good.offset_of(id(4), now), Some((300_000, 10)));
        // The one 5 minutes ahead sees everyone 5 minutes behind.
        let mut ahead = ClockOffsets::default();
        for peer in 1..=4 {
            measure(&mut ahead, peer, -300_000, now);
        }
        let status = ahead.status(now, 500, true);
        assert_eq!(
            status.verdict,
            ClockVerdict::Off {
                skew_ms: 300_000,
                agree: 1,
                measured: 4
            }
        );
        // 26 hours behind: the same.
        let mut behind = ClockOffsets::default();
        measure(&mut behind, 1, 26 * 3_600_000, now);
        measure(&mut behind, 2, 26 * 3_600_000, now);
        assert!(matches!(
            behind.status(now, 500, true).verdict,
            ClockVerdict::Off { skew_ms, .. } if skew_ms == -26 * 3_600_000
        ));
    }

    #[test]
    fn two_nodes_whose_clocks_differ_both_stop_writing() {
        let now = at(Instant(0) + Duration::from_secs(100), WALL);
        let mut a = ClockOffsets::default();
        measure(&mut a, 2, 300_000, now);
        assert!(matches!(
            a.status(now, 500, true).verdict,
            ClockVerdict::Off {
                agree: 1,
                measured: 1,
                ..
            }
        ));
        let mut b = ClockOffsets::default();
        measure(&mut b, 1, 100, now);
        assert_eq!(b.status(now, 500, true).verdict, ClockVerdict::Agrees);
    }

    #[test]
    fn a_node_alone_writes_and_one_with_unmeasured_live_peers_waits() {
        let now = at(Instant(0) + Duration::from_secs(1), WALL);
        let c = ClockOffsets::default();
        assert_eq!(c.status(now, 500, false).verdict, ClockVerdict::Agrees);
        assert_eq!(c.status(now, 500, true).verdict, ClockVerdict::NotCompared);
        assert_eq!(c.status(now, 500, true).skew_ms, None);
    }

    #[test]
    fn a_jump_of_our_own_clock_counts_without_hearing_from_anyone() {
        let t0 = at(Instant(0) + Duration::from_secs(100), WALL);
        let mut c = ClockOffsets::default();
        for peer in 1..=2 {
            measure(&mut c, peer, 0, t0);
        }
        assert_eq!(c.status(t0, 500, true).verdict, ClockVerdict::Agrees);
        // A minute later by the monotonic clock, the wall clock reads 5 minutes later.
        let later = at(t0.mono + Duration::from_secs(60), WALL + 60_000);
        assert_eq!(c.status(later, 500, false).verdict, ClockVerdict::Agrees);
        let jumped = at(t0.mono + Duration::from_secs(60), WALL + 360_000);
        assert_eq!(c.offset_of(id(1), jumped), Some((-300_000, 10)));
        assert!(matches!(
            c.status(jumped, 500, false).verdict,
            ClockVerdict::Off {
                skew_ms: 300_000,
                ..
            }
        ));
        // Forgotten members no longer count.
        c.forget(id(1));
        c.forget(id(2));
        assert!(c.is_empty());
        assert_eq!(c.status(jumped, 500, false).verdict, ClockVerdict::Agrees);
    }
}
