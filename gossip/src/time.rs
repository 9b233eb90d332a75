//! Time as the core sees it: passed in by the caller, never read from a clock.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point on the caller's monotonic clock, in microseconds since an arbitrary origin.
///
/// The production driver maps `std::time::Instant` onto it; the simulator uses virtual time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(pub u64);

impl Instant {
    /// Microseconds since the origin.
    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_add(d.as_micros().min(u64::MAX as u128) as u64),
        )
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(
            self.0
                .saturating_sub(d.as_micros().min(u64::MAX as u128) as u64),
        )
    }
}

/// Both clocks at one moment: the monotonic one drives timers, the wall clock (milliseconds
/// since the Unix epoch, possibly skewed on laptops) feeds the hybrid logical clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for timers.
    pub mono: Instant,
    /// Wall-clock time in milliseconds since the Unix epoch, for the hybrid logical clock.
    pub wall_ms: u64,
}

impl Now {
    /// A moment from its two readings.
    pub fn new(mono: Instant, wall_ms: u64) -> Self {
        Now { mono, wall_ms }
    }
}
