//! Time for the agent: the wall clock, and the [`Clock`] that maps tokio's clock and the wall
//! clock onto the sans-IO cores' [`Now`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_gossip::Now;
use tokio::time::Instant as TokioInstant;

/// Maps the tokio clock and the wall clock onto a sans-IO core's [`Now`] (the gossip node's,
/// the pod supervisor's).
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) origin: TokioInstant,
    /// Added to the wall clock (fault tests move a node's clock with it; 0 otherwise).
    pub(crate) offset_ms: i64,
    /// How fast the wall clock drifts from the real one, in parts per million of the time since
    /// `origin` (fault tests make a node's clock drift with it; 0 otherwise).
    pub(crate) drift_ppm: i64,
}

impl Clock {
    /// A clock with no fault: the real wall clock.
    pub(crate) fn real() -> Clock {
        Clock {
            origin: TokioInstant::now(),
            offset_ms: 0,
            drift_ppm: 0,
        }
    }

    pub(crate) fn now(&self) -> Now {
        let elapsed = self.origin.elapsed();
        let drift_ms =
            (elapsed.as_millis() as i128 * i128::from(self.drift_ppm) / 1_000_000) as i64;
        Now::new(
            shoal_gossip::Instant(elapsed.as_micros() as u64),
            wall_ms().saturating_add_signed(self.offset_ms.saturating_add(drift_ms)),
        )
    }

    pub(crate) fn instant(&self, at: shoal_gossip::Instant) -> TokioInstant {
        self.origin + Duration::from_micros(at.as_micros())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
