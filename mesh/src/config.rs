//! Configuration of a mesh and the values its API speaks in (members, endpoints, services).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use libp2p_identity::{Keypair, PeerId};

use crate::wire::MAX_SERVICE_LEN;

/// What a mesh needs to start.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// The node identity (Ed25519). Its peer id is what other agents check our certificate
    /// against, and what they must hold in their members to accept us.
    pub keypair: Keypair,
    /// UDP address of this node's mesh endpoint (port 0 picks a free one; see
    /// [`crate::Mesh::local_addr`]).
    pub listen: SocketAddr,
    /// Timeouts, windows and limits.
    pub tuning: Tuning,
}

impl MeshConfig {
    /// A config with default tuning.
    pub fn new(keypair: Keypair, listen: SocketAddr) -> MeshConfig {
        MeshConfig {
            keypair,
            listen,
            tuning: Tuning::default(),
        }
    }
}

/// Timeouts, windows and limits of the mesh. The defaults suit a LAN of laptops and small
/// servers; tests shorten the timeouts.
#[derive(Clone, Debug)]
pub struct Tuning {
    /// Keep-alive sent on an otherwise silent peer connection. Must be well under
    /// `idle_timeout`. Default 1 s.
    pub keep_alive_interval: Duration,
    /// A peer connection with nothing received for this long is closed, and its streams reset:
    /// this is how a dead peer is noticed without membership news. Default 4 s (four
    /// keep-alives), the effective value being the smaller of both sides'.
    pub idle_timeout: Duration,
    /// Longest QUIC handshake when dialing or accepting. Default 3 s.
    pub handshake_timeout: Duration,
    /// After a failed dial, how long requests for that peer fail at once instead of dialing
    /// again. Default 1 s.
    pub dial_backoff: Duration,
    /// Longest TCP connect to an endpoint (by the serving agent, or directly to a local
    /// endpoint). Default 2 s.
    pub connect_timeout: Duration,
    /// Longest wait for the status byte after the header is sent; covers the serving agent's
    /// connect, so keep it above `connect_timeout`. Default 3 s.
    pub status_timeout: Duration,
    /// Longest wait for a stream's header on the serving side. Default 5 s.
    pub header_timeout: Duration,
    /// Establishment attempts per proxied connection (one endpoint each). Default 3.
    pub max_attempts: NonZeroU32,
    /// Longest total time spent establishing one proxied connection, all attempts included.
    /// Default 6 s.
    pub establish_timeout: Duration,
    /// Streams a peer may have open at once on one connection to this node. Default 4096.
    pub max_concurrent_streams: u32,
    /// Unacknowledged bytes a peer may send on one stream (QUIC stream receive window).
    /// Default 8 MiB: far above the bandwidth-delay product of a LAN, so a stream is limited by
    /// the reader, not by flow control.
    pub stream_receive_window: u32,
    /// Unacknowledged bytes a peer may send on all streams of a connection. Default 32 MiB.
    pub receive_window: u32,
    /// Unacknowledged bytes this node may have in flight on a connection. Default 32 MiB.
    pub send_window: u64,
    /// Requested UDP socket send and receive buffers (the kernel caps them at
    /// `net.core.wmem_max` / `rmem_max`). Default 4 MiB.
    pub udp_buffer_bytes: usize,
    /// Largest UDP payload that path MTU discovery probes for. Default 1452 (Ethernet); raise
    /// on jumbo-frame networks.
    pub mtu_upper_bound: u16,
    /// Incoming connections whose handshake is in progress at once; more are refused.
    /// Default 256.
    pub max_handshakes: u32,
}

impl Tuning {
    /// Checks the values that would make the mesh misbehave rather than merely perform badly.
    pub fn validate(&self) -> Result<(), String> {
        if self.keep_alive_interval.is_zero() || self.keep_alive_interval >= self.idle_timeout {
            return Err(format!(
                "keep_alive_interval {:?} must be above zero and below idle_timeout {:?}",
                self.keep_alive_interval, self.idle_timeout
            ));
        }
        if self.max_concurrent_streams == 0 {
            return Err("max_concurrent_streams must be above zero".to_owned());
        }
        if self.stream_receive_window < 1024
            || self.receive_window < 1024
            || self.send_window < 1024
        {
            return Err("flow-control windows must be at least 1 KiB".to_owned());
        }
        if self.establish_timeout.is_zero() {
            return Err("establish_timeout must be above zero".to_owned());
        }
        Ok(())
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            keep_alive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            handshake_timeout: Duration::from_secs(3),
            dial_backoff: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            status_timeout: Duration::from_secs(3),
            header_timeout: Duration::from_secs(5),
            max_attempts: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            establish_timeout: Duration::from_secs(6),
            max_concurrent_streams: 4096,
            stream_receive_window: 8 << 20,
            receive_window: 32 << 20,
            send_window: 32 << 20,
            udp_buffer_bytes: 4 << 20,
            mtu_upper_bound: 1452,
            max_handshakes: 256,
        }
    }
}

/// The current cluster members and their mesh addresses. The mesh accepts connections only
/// from peers in here, dials only peers in here, and closes its connections to a peer that
/// leaves it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    peers: BTreeMap<PeerId, SocketAddr>,
}

impl Members {
    /// No members.
    pub fn new() -> Members {
        Members::default()
    }

    /// Adds or moves a member; returns its previous mesh address.
    pub fn insert(&mut self, peer: PeerId, mesh_addr: SocketAddr) -> Option<SocketAddr> {
        self.peers.insert(peer, mesh_addr)
    }

    /// Removes a member; returns its mesh address.
    pub fn remove(&mut self, peer: &PeerId) -> Option<SocketAddr> {
        self.peers.remove(peer)
    }

    /// Whether `peer` is a member.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// The mesh address of `peer`, if it is a member.
    pub fn mesh_addr(&self, peer: &PeerId) -> Option<SocketAddr> {
        self.peers.get(peer).copied()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Members and their mesh addresses, in peer id order.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &SocketAddr)> {
        self.peers.iter()
    }
}

impl FromIterator<(PeerId, SocketAddr)> for Members {
    fn from_iter<I: IntoIterator<Item = (PeerId, SocketAddr)>>(iter: I) -> Self {
        Members {
            peers: iter.into_iter().collect(),
        }
    }
}

/// One ready endpoint of a service: a pod's address as seen on the node that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// The node that runs the endpoint.
    pub node: PeerId,
    /// The endpoint's TCP address on that node (pod ip:port).
    pub addr: SocketAddr,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.addr, self.node)
    }
}

/// The id of a service, carried in stream headers for the serving agent's metrics (by
/// convention `namespace/name`). At most 255 bytes; cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey(Arc<str>);

impl ServiceKey {
    /// A service id; `None` when longer than 255 bytes.
    pub fn new(id: impl Into<Arc<str>>) -> Option<ServiceKey> {
        let id = id.into();
        (id.len() <= MAX_SERVICE_LEN).then_some(ServiceKey(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tuning_is_valid_and_nonsense_is_named() {
        assert_eq!(Tuning::default().validate(), Ok(()));
        let bad = Tuning {
            keep_alive_interval: Duration::from_secs(5),
            ..Tuning::default()
        };
        assert!(bad.validate().unwrap_err().contains("keep_alive_interval"));
        let bad = Tuning {
            max_concurrent_streams: 0,
            ..Tuning::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("max_concurrent_streams")
        );
    }

    #[test]
    fn service_keys_are_limited_to_255_bytes() {
        assert_eq!(
            ServiceKey::new("default/web").unwrap().as_str(),
            "default/web"
        );
        assert!(ServiceKey::new("x".repeat(255)).is_some());
        assert!(ServiceKey::new("x".repeat(256)).is_none());
    }
}
