//! Counters of the network layer, and a rate limiter for warnings caused by remote input.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::lock;

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters, updated lock-free from every task.
        #[derive(Debug, Default)]
        pub(super) struct Counters {
            $(pub(super) $name: AtomicU64,)*
        }

        /// A snapshot of the network layer's counters (all monotonic except
        /// `connections_open`).
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub(crate) struct NetMetrics {
            $($(#[$doc])* pub(crate) $name: u64,)*
        }

        impl Counters {
            pub(super) fn snapshot(&self) -> NetMetrics {
                let mut m = NetMetrics {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                };
                m.connections_open = m
                    .connections_established
                    .saturating_sub(m.connections_closed);
                m
            }
        }
    };
}

counters! {
    /// Gossip frames written to a stream (handed to QUIC or yamux; delivery is not confirmed).
    frames_sent,
    /// Payload bytes of those frames, before sealing.
    bytes_sent,
    /// Gossip frames that opened and were delivered as `NetEvent::Message`.
    frames_received,
    /// Payload bytes of those frames.
    bytes_received,
    /// Messages dropped because the destination's queue was full.
    dropped_queue_full,
    /// Messages dropped because the address could not be parsed (or the node id was not a
    /// valid Ed25519 key) and no connection to the peer existed.
    dropped_bad_addr,
    /// Messages dropped because they exceed the largest frame payload.
    dropped_oversize,
    /// Messages dropped because the peer could not be reached (dial or stream failure).
    dropped_unreachable,
    /// Messages dropped because the number of destinations with a queue was at its limit.
    dropped_too_many_peers,
    /// Messages dropped because the transport was shutting down.
    dropped_shutdown,
    /// `Discovered` and `PeerRefused` events dropped because the event queue was full
    /// (messages are never dropped there: readers wait).
    dropped_events,
    /// Frames (gossip or request) refused because the tag did not verify (wrong cluster key,
    /// another protocol's frame, or tampering).
    refused_auth,
    /// Frames refused because they were shorter than a header and a tag.
    refused_truncated,
    /// Frames refused because their length prefix exceeded 64 KiB.
    refused_oversize,
    /// Frames refused because of an unknown version byte.
    refused_version,
    /// Peers disconnected and banned for a while after repeated refused frames.
    peers_refused,
    /// Refusal notices from peers about this node's frames (and attempts to reach a peer that
    /// refused it recently and now denies its connections).
    refused_by_peers,
    /// Connections denied at establishment: banned peer, or a key type other than Ed25519.
    connections_denied,
    /// Connections established (after the TLS or noise handshake).
    connections_established,
    /// Established connections closed.
    connections_closed,
    /// Connections closed because the peer connected anew (a restart with the same identity,
    /// or a connection lost on its side only); included in `connections_closed`.
    connections_superseded,
    /// Connections open now (established minus closed).
    connections_open,
    /// Inbound connection attempts that failed before establishment (handshake errors,
    /// garbage bytes, timeouts).
    incoming_errors,
    /// Outbound connection attempts that failed on every address.
    dial_failures,
    /// First-choice addresses (normally QUIC) that failed, after which the next (TCP) was
    /// tried.
    dial_fallbacks,
    /// Outbound streams opened.
    streams_opened,
    /// Inbound streams accepted.
    streams_accepted,
    /// Inbound streams dropped because too many were open.
    streams_rejected,
    /// Outbound streams that failed to open or broke while writing.
    stream_errors,
    /// Requests written to a peer (`NetHandle::request`).
    requests_sent,
    /// Incoming requests taken by the application.
    requests_received,
    /// Incoming requests refused: over the limits, not taken in time (or nobody serves them),
    /// malformed, or from a peer without the cluster key (those frames also count in
    /// `refused_*`).
    requests_refused,
    /// Outgoing requests that failed: unreachable, refused, timed out, or whose response broke
    /// or ended with an error (not those the application stopped reading).
    requests_failed,
    /// Response payload bytes written to requesters.
    response_bytes_sent,
    /// Response payload bytes received from responders.
    response_bytes_received,
}

/// Lets a warning through at most once per interval and counts what it held back, so a flood
/// of bad input cannot flood the log.
#[derive(Debug)]
pub(super) struct WarnLimiter {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl WarnLimiter {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed since the last warning)` if a warning may be logged now.
    pub(super) fn check(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_what_it_suppresses() {
        let limiter = WarnLimiter::new(Duration::from_millis(50));
        assert_eq!(limiter.check(), Some(0));
        for _ in 0..100 {
            assert_eq!(limiter.check(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.check(), Some(100));
    }

    #[test]
    fn snapshot_derives_open_connections() {
        let c = Counters::default();
        c.connections_established.store(5, Ordering::Relaxed);
        c.connections_closed.store(2, Ordering::Relaxed);
        assert_eq!(c.snapshot().connections_open, 3);
    }
}
