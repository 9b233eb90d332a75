//! Hybrid logical clocks (Kulkarni et al., "Logical Physical Clocks", 2014).
//!
//! An [`Hlc`] is a timestamp `(wall_ms, logical)`: the largest physical time (milliseconds since
//! the Unix epoch) the stamping node had seen, plus a counter that orders events within that
//! millisecond. Timestamps compare lexicographically, are close to physical time, and respect
//! causality: if event `a` happened before event `b` (same node, or `a` was sent and then observed
//! by `b`'s node), then `a`'s stamp is less than `b`'s.
//!
//! [`HlcClock`] is one node's clock. It is sans-IO: it never reads a clock; the caller passes the
//! current physical time into [`HlcClock::now`] and [`HlcClock::observe`].
//!
//! Invariants of an [`HlcClock`]:
//! - every stamp it returns (from `now` or `observe`) is strictly greater than every stamp it
//!   returned before, even if physical time goes backwards (NTP steps, suspended laptops);
//! - after `observe(remote, _)`, the next stamp is strictly greater than `remote`;
//! - the logical counter never overflows: at `u32::MAX` the clock moves to the next millisecond
//!   (`wall_ms + 1`, `logical = 0`), which is still strictly greater.
//!
//! The one exception is the end of the timestamp space: once the clock reaches [`Hlc::MAX`] it
//! stays there. At one millisecond per `u32::MAX` events that takes longer than the universe has
//! existed; it is handled by saturating, not by panicking.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Default bound on how far a remote stamp may be ahead of local physical time before
/// [`HlcClock::observe`] reports it as skewed: one minute, in milliseconds.
pub const DEFAULT_MAX_SKEW_MS: u64 = 60_000;

/// A hybrid logical clock timestamp.
///
/// Ordered lexicographically by (`wall_ms`, `logical`) (the derived order; field order matters).
/// [`Default`] is the zero stamp, less than every stamp an [`HlcClock`] hands out.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Physical component: milliseconds since the Unix epoch (the largest physical time the
    /// stamping clock had seen, which may be a peer's).
    pub wall_ms: u64,
    /// Logical component: orders stamps that share `wall_ms`.
    pub logical: u32,
}

impl Hlc {
    /// The zero stamp (`0`, `0`), the same as [`Hlc::default`].
    pub const ZERO: Hlc = Hlc {
        wall_ms: 0,
        logical: 0,
    };

    /// The largest stamp. A clock that reaches it stays there (see the module docs).
    pub const MAX: Hlc = Hlc {
        wall_ms: u64::MAX,
        logical: u32::MAX,
    };

    /// A stamp with the given components.
    pub const fn new(wall_ms: u64, logical: u32) -> Hlc {
        Hlc { wall_ms, logical }
    }

    /// The first stamp of millisecond `wall_ms` (`logical = 0`): every stamp taken at or after
    /// physical time `wall_ms` compares `>=` to it. Use it to turn a physical time into a bound,
    /// e.g. a garbage-collection horizon.
    pub const fn from_wall_ms(wall_ms: u64) -> Hlc {
        Hlc {
            wall_ms,
            logical: 0,
        }
    }

    /// The smallest stamp strictly greater than `self`: `logical + 1`, or, when `logical` is
    /// `u32::MAX`, the first stamp of the next millisecond. Saturates at [`Hlc::MAX`].
    pub const fn successor(self) -> Hlc {
        if self.logical < u32::MAX {
            Hlc {
                wall_ms: self.wall_ms,
                logical: self.logical + 1,
            }
        } else if self.wall_ms < u64::MAX {
            Hlc {
                wall_ms: self.wall_ms + 1,
                logical: 0,
            }
        } else {
            Hlc::MAX
        }
    }

    /// `self` moved `ms` milliseconds into the past, at the start of that millisecond
    /// (`logical = 0`); saturates at zero. `now.saturating_sub_ms(grace)` is the horizon
    /// "older than `grace` milliseconds before `now`".
    pub const fn saturating_sub_ms(self, ms: u64) -> Hlc {
        Hlc::from_wall_ms(self.wall_ms.saturating_sub(ms))
    }
}

impl fmt::Display for Hlc {
    /// `wall_ms.logical`, e.g. `1700000000000.3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms, self.logical)
    }
}

/// What [`HlcClock::observe`] did with a remote stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The stamp of the receive event: greater than both the remote stamp and every stamp the
    /// clock returned before. It is also the clock's new [`HlcClock::last`].
    pub stamp: Hlc,
    /// How far the remote stamp's `wall_ms` was ahead of the local physical time, in
    /// milliseconds (`0` if it was not ahead).
    pub ahead_ms: u64,
    /// `true` if `ahead_ms` exceeds the clock's `max_skew_ms`. The clock advanced past the
    /// remote stamp anyway; the caller should count or log this (a peer's clock, or ours, is
    /// off).
    pub skewed: bool,
}

/// One node's hybrid logical clock. See the [module docs](self) for its invariants.
///
/// Skew policy: [`observe`](HlcClock::observe) always advances past a remote stamp, however
/// far in the future it is, and only *reports* excessive skew. Refusing or clamping would
/// preserve our clock's closeness to physical time, but at the cost of liveness: a node with a
/// fast clock (laptops drift and get suspended) could then write entries that no one else can
/// ever supersede, and causality (a write made after seeing another must order after it) would
/// break. The price of advancing is that a far-future stamp pulls this clock (and, through
/// gossip, the cluster's) ahead of physical time; stamps then advance by the logical counter
/// until physical time catches up. They stay unique and ordered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HlcClock {
    last: Hlc,
    max_skew_ms: u64,
}

impl Default for HlcClock {
    fn default() -> Self {
        Self::new()
    }
}

impl HlcClock {
    /// A clock that has handed out no stamp yet (`last() == Hlc::ZERO`), with the default
    /// skew bound [`DEFAULT_MAX_SKEW_MS`].
    pub const fn new() -> HlcClock {
        HlcClock {
            last: Hlc::ZERO,
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
        }
    }

    /// A clock that resumes after `last`: every stamp it returns is greater than `last`. Use
    /// it on restart with the last stamp the node persisted, so a restart with a clock that
    /// went backwards does not reuse stamps.
    pub const fn resume(last: Hlc) -> HlcClock {
        HlcClock {
            last,
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
        }
    }

    /// Sets the skew bound, in milliseconds, above which [`observe`](HlcClock::observe)
    /// reports a remote stamp as skewed.
    pub const fn with_max_skew_ms(mut self, max_skew_ms: u64) -> HlcClock {
        self.max_skew_ms = max_skew_ms;
        self
    }

    /// The skew bound in milliseconds.
    pub const fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
    }

    /// The last stamp handed out (by `now` or `observe`), or the stamp passed to `resume`;
    /// [`Hlc::ZERO`] for a new clock.
    pub const fn last(&self) -> Hlc {
        self.last
    }

    /// Stamps a local or send event at physical time `physical_ms` (milliseconds since the Unix
    /// epoch). The result is strictly greater than every stamp returned before (unless the clock
    /// is at [`Hlc::MAX`]), and equals `(physical_ms, 0)` whenever physical time is ahead of
    /// the clock.
    pub fn now(&mut self, physical_ms: u64) -> Hlc {
        let next = if physical_ms > self.last.wall_ms {
            Hlc::from_wall_ms(physical_ms)
        } else {
            self.last.successor()
        };
        self.last = next;
        next
    }

    /// Records the receipt of a message stamped `remote` at physical time `physical_ms`
    /// (milliseconds since the Unix epoch), per the HLC receive rule: the receive event's
    /// stamp is greater than `remote` and than every stamp returned before, so every later
    /// [`now`](HlcClock::now) is too. Reports how far `remote` was ahead of `physical_ms`; the
    /// clock advances even when that exceeds the skew bound (see the type docs).
    pub fn observe(&mut self, remote: Hlc, physical_ms: u64) -> Observed {
        let ahead_ms = remote.wall_ms.saturating_sub(physical_ms);
        let stamp = if physical_ms > self.last.wall_ms && physical_ms > remote.wall_ms {
            Hlc::from_wall_ms(physical_ms)
        } else {
            // Physical time is not ahead of both: continue from the larger of the two stamps.
            // `successor` handles the logical overflow by moving to the next millisecond.
            self.last.max(remote).successor()
        };
        self.last = stamp;
        Observed {
            stamp,
            ahead_ms,
            skewed: ahead_ms > self.max_skew_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_lexicographic() {
        assert!(Hlc::new(1, u32::MAX) < Hlc::new(2, 0));
        assert!(Hlc::new(2, 0) < Hlc::new(2, 1));
        assert_eq!(Hlc::default(), Hlc::ZERO);
        assert_eq!(Hlc::new(5, 7).to_string(), "5.7");
    }

    #[test]
    fn now_follows_physical_time() {
        let mut c = HlcClock::new();
        assert_eq!(c.now(100), Hlc::new(100, 0));
        assert_eq!(c.now(100), Hlc::new(100, 1));
        assert_eq!(c.now(105), Hlc::new(105, 0));
        assert_eq!(c.last(), Hlc::new(105, 0));
    }

    #[test]
    fn monotonic_when_physical_time_goes_backwards() {
        let mut c = HlcClock::new();
        let mut prev = c.now(1_000);
        for physical in [999, 500, 0, 1_000, 1_001, 3, 1_001] {
            let t = c.now(physical);
            assert!(t > prev, "{t} after {prev} at physical {physical}");
            prev = t;
        }
        assert_eq!(prev, Hlc::new(1_001, 2));
    }

    #[test]
    fn logical_overflow_bumps_wall() {
        let mut c = HlcClock::resume(Hlc::new(10, u32::MAX - 1));
        assert_eq!(c.now(5), Hlc::new(10, u32::MAX));
        assert_eq!(c.now(5), Hlc::new(11, 0));
        assert_eq!(c.now(5), Hlc::new(11, 1));

        let mut c = HlcClock::new();
        let o = c.observe(Hlc::new(20, u32::MAX), 20);
        assert_eq!(o.stamp, Hlc::new(21, 0));
    }

    #[test]
    fn saturates_at_max() {
        let mut c = HlcClock::resume(Hlc::MAX);
        assert_eq!(c.now(0), Hlc::MAX);
        assert_eq!(c.observe(Hlc::MAX, u64::MAX).stamp, Hlc::MAX);
        assert_eq!(Hlc::MAX.successor(), Hlc::MAX);
    }

    #[test]
    fn observe_moves_past_future_remote() {
        let mut c = HlcClock::new();
        c.now(1_000);
        let remote = Hlc::new(5_000, 42);
        let o = c.observe(remote, 1_001);
        assert!(o.stamp > remote);
        assert_eq!(o.stamp, Hlc::new(5_000, 43));
        assert_eq!(o.ahead_ms, 3_999);
        assert!(!o.skewed);
        assert_eq!(c.last(), o.stamp);
        let next = c.now(1_002);
        assert!(next > remote && next > o.stamp);
    }

    #[test]
    fn observe_of_past_remote_keeps_local_order() {
        let mut c = HlcClock::new();
        let t = c.now(1_000);
        c.now(1_000);
        let o = c.observe(Hlc::new(900, 7), 1_000);
        assert_eq!(o.stamp, Hlc::new(1_000, 2));
        assert!(o.stamp > t);
        assert_eq!(o.ahead_ms, 0);
        // Physical time ahead of both: the stamp is physical time.
        let o = c.observe(Hlc::new(900, 7), 2_000);
        assert_eq!(o.stamp, Hlc::new(2_000, 0));
        // Same wall as ours and the remote: the larger logical wins, plus one.
        let o = c.observe(Hlc::new(2_000, 9), 1_500);
        assert_eq!(o.stamp, Hlc::new(2_000, 10));
    }

    #[test]
    fn skew_is_flagged_but_clock_still_advances() {
        let mut c = HlcClock::new().with_max_skew_ms(1_000);
        assert_eq!(c.max_skew_ms(), 1_000);
        let o = c.observe(Hlc::new(11_000, 0), 10_000);
        assert_eq!(o.ahead_ms, 1_000);
        assert!(!o.skewed, "exactly at the bound is not skewed");
        let far = Hlc::new(100_000, 3);
        let o = c.observe(far, 10_000);
        assert!(o.skewed);
        assert_eq!(o.ahead_ms, 90_000);
        assert!(c.now(10_001) > far);
        assert_eq!(HlcClock::new().max_skew_ms(), DEFAULT_MAX_SKEW_MS);
    }

    #[test]
    fn resume_continues_after_persisted_stamp() {
        let mut c = HlcClock::resume(Hlc::new(5_000, 3));
        assert_eq!(c.now(4_000), Hlc::new(5_000, 4));
    }

    #[test]
    fn helpers() {
        assert_eq!(Hlc::new(100, 5).saturating_sub_ms(30), Hlc::new(70, 0));
        assert_eq!(Hlc::new(10, 5).saturating_sub_ms(30), Hlc::ZERO);
        assert_eq!(Hlc::from_wall_ms(9), Hlc::new(9, 0));
    }

    proptest::proptest! {
        /// Any interleaving of local events and receipts, with physical time jumping around:
        /// stamps strictly increase and every stamp after a receipt exceeds the remote stamp.
        #[test]
        fn stamps_strictly_increase(
            steps in proptest::collection::vec(
                (0u64..50, proptest::option::of((0u64..60, 0u32..4))),
                1..100,
            )
        ) {
            let mut c = HlcClock::new();
            let mut prev = c.last();
            for (physical, remote) in steps {
                let t = match remote {
                    None => c.now(physical),
                    Some((wall, logical)) => {
                        let remote = Hlc::new(wall, logical);
                        let o = c.observe(remote, physical);
                        proptest::prop_assert!(o.stamp > remote);
                        proptest::prop_assert_eq!(o.ahead_ms, wall.saturating_sub(physical));
                        o.stamp
                    }
                };
                proptest::prop_assert!(t > prev, "{} after {}", t, prev);
                proptest::prop_assert!(t.wall_ms >= physical);
                proptest::prop_assert_eq!(c.last(), t);
                prev = t;
            }
        }
    }

    #[test]
    fn serde_roundtrip() {
        let t = Hlc::new(1_700_000_000_000, 12);
        let bytes = postcard::to_stdvec(&t).unwrap();
        assert_eq!(postcard::from_bytes::<Hlc>(&bytes).unwrap(), t);
    }
}
