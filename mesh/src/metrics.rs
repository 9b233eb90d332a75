//! Counters of the mesh, per service and per node, and their serializable snapshot.
//!
//! Counters are atomics updated on the data path without locks; the per-service maps are
//! locked only to look a service up once per proxied connection. The maps are bounded: past
//! [`MAX_SERVICES`] distinct ids (a member could send any id in its headers), further services
//! are counted together under [`OTHER_SERVICE`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// Most distinct service ids tracked per direction.
pub const MAX_SERVICES: usize = 1024;
/// The id under which services past [`MAX_SERVICES`] are counted.
pub const OTHER_SERVICE: &str = "(other)";

const EXACT: usize = 8;
const MAX_EXP: u32 = 40;
const BUCKETS: usize = EXACT + (MAX_EXP as usize - 2) * 4;

/// A lock-free log-linear histogram of microsecond values: exact below 8 µs, then four buckets
/// per power of two (at most 25% relative error), saturating at about 2^41 µs (25 days).
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    fn index(value: u64) -> usize {
        if value < EXACT as u64 {
            return value as usize;
        }
        let exp = (63 - value.leading_zeros()).min(MAX_EXP);
        let value = value.min((1u64 << (MAX_EXP + 1)) - 1);
        let sub = ((value >> (exp - 2)) & 3) as usize;
        EXACT + (exp as usize - 3) * 4 + sub
    }

    /// Largest value that falls into bucket `index`.
    fn upper_bound(index: usize) -> u64 {
        if index < EXACT {
            return index as u64;
        }
        let exp = (index - EXACT) / 4 + 3;
        let sub = ((index - EXACT) % 4) as u64;
        ((4 + sub) << (exp - 2)) + (1u64 << (exp - 2)) - 1
    }

    pub(crate) fn record(&self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Self::index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// Number of recorded values and the estimates of the given quantiles (upper bucket
    /// bounds, in µs; 0 when empty).
    pub(crate) fn quantiles<const N: usize>(&self, qs: [f64; N]) -> (u64, [u64; N]) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let mut out = [0u64; N];
        if total == 0 {
            return (0, out);
        }
        for (slot, q) in out.iter_mut().zip(qs) {
            let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    *slot = Self::upper_bound(i);
                    break;
                }
            }
        }
        (total, out)
    }
}

/// Live counters of one service in one direction.
#[derive(Default)]
pub(crate) struct ServiceCounters {
    pub(crate) opened: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) active: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) local: AtomicU64,
    pub(crate) resets: AtomicU64,
    pub(crate) bytes_to_service: AtomicU64,
    pub(crate) bytes_from_service: AtomicU64,
    pub(crate) connect: Histogram,
}

impl ServiceCounters {
    fn snapshot(&self) -> ServiceMetrics {
        let (connects, [p50, p99]) = self.connect.quantiles([0.5, 0.99]);
        ServiceMetrics {
            opened: self.opened.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            local: self.local.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            bytes_to_service: self.bytes_to_service.load(Ordering::Relaxed),
            bytes_from_service: self.bytes_from_service.load(Ordering::Relaxed),
            connects,
            connect_p50_us: p50,
            connect_p99_us: p99,
        }
    }
}

/// Counters of one service in one direction (see [`MeshMetrics`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceMetrics {
    /// Connections established (status OK, or a local endpoint connected).
    pub opened: u64,
    /// Connections that could not be established (after all retries, on the requester side).
    pub failed: u64,
    /// Connections open now.
    pub active: u64,
    /// Establishment attempts that failed and were retried on another endpoint.
    pub retries: u64,
    /// Of `opened`, connections to an endpoint on this node (no QUIC hop).
    pub local: u64,
    /// Connections that ended with a reset (either side, or the peer connection lost).
    pub resets: u64,
    /// Payload bytes from clients towards the service's endpoints.
    pub bytes_to_service: u64,
    /// Payload bytes from the service's endpoints back to clients.
    pub bytes_from_service: u64,
    /// Number of connect latencies recorded.
    pub connects: u64,
    /// Median connect latency, µs (requester: choice to established; server: TCP connect).
    pub connect_p50_us: u64,
    /// 99th percentile connect latency, µs.
    pub connect_p99_us: u64,
}

/// A snapshot of the mesh's counters, for autoscaling and dashboards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MeshMetrics {
    /// Per service, connections this node proxied as the requester.
    pub outbound: BTreeMap<String, ServiceMetrics>,
    /// Per service, streams this node served for other nodes.
    pub inbound: BTreeMap<String, ServiceMetrics>,
    /// QUIC connections dialed.
    pub dials: u64,
    /// Dials that failed (timeout, handshake, wrong identity).
    pub dial_failures: u64,
    /// Incoming QUIC connections whose handshake failed (bad certificate, wrong ALPN, timeout).
    pub handshake_failures: u64,
    /// Authenticated connections from peers that are not cluster members, closed at once.
    pub refused_non_members: u64,
    /// Connections closed because their peer left the members (or was declared dead).
    pub closed_for_membership: u64,
    /// Streams whose header was garbage (reset, nothing connected).
    pub bad_headers: u64,
    /// Streams with a header version this agent does not speak.
    pub unsupported_versions: u64,
    /// Streams asking for a destination this node does not serve.
    pub not_allowed: u64,
    /// Streams whose destination could not be connected (refused or failed).
    pub connect_failures: u64,
    /// Peer connections this node holds now (dialed by it, and accepted).
    pub peer_connections: u64,
    /// Services counted under the overflow id because the per-direction limit was reached.
    pub services_overflowed: u64,
}

/// All counters of a mesh.
#[derive(Default)]
pub(crate) struct Metrics {
    outbound: Mutex<HashMap<String, Arc<ServiceCounters>>>,
    inbound: Mutex<HashMap<String, Arc<ServiceCounters>>>,
    pub(crate) dials: AtomicU64,
    pub(crate) dial_failures: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) refused_non_members: AtomicU64,
    pub(crate) closed_for_membership: AtomicU64,
    pub(crate) bad_headers: AtomicU64,
    pub(crate) unsupported_versions: AtomicU64,
    pub(crate) not_allowed: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) peer_connections: AtomicU64,
    pub(crate) services_overflowed: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Subtracts one from a gauge.
pub(crate) fn dec(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}

impl Metrics {
    pub(crate) fn outbound(&self, service: &str) -> Arc<ServiceCounters> {
        self.lookup(&self.outbound, service)
    }

    pub(crate) fn inbound(&self, service: &str) -> Arc<ServiceCounters> {
        self.lookup(&self.inbound, service)
    }

    fn lookup(
        &self,
        map: &Mutex<HashMap<String, Arc<ServiceCounters>>>,
        service: &str,
    ) -> Arc<ServiceCounters> {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(service) {
            return Arc::clone(c);
        }
        let key = if map.len() >= MAX_SERVICES {
            inc(&self.services_overflowed);
            OTHER_SERVICE
        } else {
            service
        };
        Arc::clone(map.entry(key.to_owned()).or_default())
    }

    pub(crate) fn snapshot(&self) -> MeshMetrics {
        let snap = |map: &Mutex<HashMap<String, Arc<ServiceCounters>>>| {
            map.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), v.snapshot()))
                .collect()
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MeshMetrics {
            outbound: snap(&self.outbound),
            inbound: snap(&self.inbound),
            dials: load(&self.dials),
            dial_failures: load(&self.dial_failures),
            handshake_failures: load(&self.handshake_failures),
            refused_non_members: load(&self.refused_non_members),
            closed_for_membership: load(&self.closed_for_membership),
            bad_headers: load(&self.bad_headers),
            unsupported_versions: load(&self.unsupported_versions),
            not_allowed: load(&self.not_allowed),
            connect_failures: load(&self.connect_failures),
            peer_connections: load(&self.peer_connections),
            services_overflowed: load(&self.services_overflowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_cover_values_within_a_quarter() {
        let mut last = 0;
        for v in (0..10_000u64).chain([1 << 20, (1 << 20) + 12_345, 1 << 40, u64::MAX]) {
            let i = Histogram::index(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            assert!(i >= last || v >= 1 << 40, "indexes are monotonic");
            last = i;
            let upper = Histogram::upper_bound(i);
            if v < 1 << (MAX_EXP + 1) {
                assert!(upper >= v, "{v} -> bucket {i} up to {upper}");
                assert!(upper - v <= v / 4 + 1, "{v} -> bucket {i} up to {upper}");
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let h = Histogram::default();
        assert_eq!(h.quantiles([0.5]), (0, [0]));
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us * 10));
        }
        let (n, [p50, p99]) = h.quantiles([0.5, 0.99]);
        assert_eq!(n, 100);
        assert!((500..=640).contains(&p50), "{p50}");
        assert!((990..=1_280).contains(&p99), "{p99}");
    }

    #[test]
    fn service_maps_are_bounded() {
        let m = Metrics::default();
        for i in 0..MAX_SERVICES + 10 {
            inc(&m.inbound(&format!("svc-{i}")).opened);
        }
        let snap = m.snapshot();
        assert_eq!(snap.inbound.len(), MAX_SERVICES + 1);
        assert_eq!(snap.inbound[OTHER_SERVICE].opened, 10);
        assert_eq!(snap.services_overflowed, 10);
        // Known services are still found after the limit.
        inc(&m.inbound("svc-0").opened);
        assert_eq!(m.snapshot().inbound["svc-0"].opened, 2);
    }
}
