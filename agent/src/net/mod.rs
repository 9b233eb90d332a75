//! The agent's network layer: carries the gossip core's messages between nodes over libp2p.
//!
//! # Role
//! The gossip core ([`shoal_gossip::Node`]) is sans-IO: it emits `Transmit { to, addr, bytes }`
//! and consumes `handle_message(src_addr, bytes)`. This module moves those byte strings:
//! [`NetHandle::send`] takes a `Transmit`'s fields, and [`NetEvent::Message`] is what to feed
//! `handle_message`. It also reports peers found by mDNS ([`NetEvent::Discovered`]).
//!
//! One libp2p `Swarm`, driven by one tokio task, owns the connections. QUIC
//! (`/ip4/H/udp/P/quic-v1`) is the primary transport; TCP (`/ip4/H/tcp/P`, noise + yamux) is
//! the fallback where UDP is blocked. Both listen on the same port number (QUIC binds first,
//! TCP then takes the port QUIC got, or is skipped with a warning). A peer with no connection
//! is dialed on QUIC first and on TCP only once the QUIC attempt has failed. The node identity
//! is an Ed25519 libp2p keypair whose public key is the gossip [`NodeId`], so the peer id that
//! TLS (QUIC) or noise (TCP) authenticates *is* the sender's node id.
//!
//! Messages travel on `/shoal/gossip/1` streams (libp2p-stream): each destination has a
//! writer task with a bounded queue and one long-lived outbound stream, reopened after an
//! error; each inbound stream has a reader task. Replies go through the existing connection
//! to the peer id; an address is needed only to dial.
//!
//! A gossip stream carries frames one way only, except for **refusal notices**: a reader that
//! refuses a frame answers, on the same stream, with one frame sealed for the writer whose
//! payload is `[1, reason]` (1 tag did not verify, 2 unknown version, 3 truncated, 4 oversize).
//! A writer whose peer has another cluster key cannot open the notice either, and so learns
//! that the keys differ ([`NetEvent::RefusedBy`]); a peer without the key learns nothing new
//! from it. Older readers send none, and writers ignore notices of a kind they do not know.
//!
//! # Frame format
//! A stream carries frames back to back:
//!
//! ```text
//! len: u32 BE     length of what follows; at least 31, at most 65,536
//! version: u8     1
//! port: u16 BE    the sender's listen port (a reply address for TCP, whose source port is
//!                 ephemeral)
//! nonce: [u8; 12] random
//! ciphertext      ChaCha20-Poly1305(payload), same length as the payload
//! tag: [u8; 16]
//! ```
//!
//! Key: HKDF-SHA256 with salt `"shoal cluster key v1"` and the 32-byte cluster key as input,
//! expanded with info `"shoal/gossip/1" || " frame key" || sender NodeId || receiver NodeId`:
//! one key per direction of each pair of nodes. Associated data: `"shoal/gossip/1" || sender
//! NodeId || receiver NodeId || version || port`. A frame therefore opens only at the receiver
//! it was sealed for, coming from the sender that sealed it: it cannot be replayed to another
//! node or reflected back. Nonces are random (96 bits) rather than counters so that the many
//! streams, connections and restarts of one pair never have to coordinate a counter; under a
//! per-direction key a repeat is negligible (below 2^-32 after 2^32 frames of one direction).
//! Replays inside one direction need an on-path attacker, which TLS and noise already stop.
//!
//! # Request streams
//! Besides gossip, agents ask each other for things that are not replicated state (the logs of
//! a pod that runs elsewhere): [`NetHandle::request`] opens one `/shoal/request/1` stream per
//! request on the same connections, and the peer's application takes it from [`Requests`]. The
//! frames are the ones above, sealed under keys derived with the label `"shoal/request/1"`
//! instead of `"shoal/gossip/1"`, so a frame of one protocol never opens in the other. Each
//! payload starts with a kind byte: the requester sends the request (`RequestPart`s, then
//! `RequestEnd`; at most 64 KiB); the responder answers `Accept` once its application took the
//! request, then `Data` chunks and `End` (or `Fail` with a message), or `Refuse` with a reason
//! (no shared key, banned, busy, not served in time, malformed). Either side sends `Ping`s on a
//! quiet stream, and one that hears nothing for three keep-alive intervals gives up, so a
//! `logs -f` to a peer that vanished ends instead of hanging. Limits: 16 open requests per
//! peer and 256 in all, then `Busy`; a response is read at most a few chunks ahead of its
//! consumer (back-pressure through QUIC flow control); dropping a response resets the stream,
//! which the responder sees at its next write or through [`IncomingRequest::closed`].
//!
//! # Invariants
//! - Every byte string sent is sealed; a frame that fails to open is dropped, counted per
//!   reason, logged at most once per interval, and after [`Tuning::refuse_after`] such frames
//!   the peer is disconnected and denied for [`Tuning::refuse_ban`]. So a node without the
//!   cluster key learns nothing and changes nothing.
//! - No input from the network can panic this module; bad bytes are dropped and counted.
//! - Nothing is unbounded: queues per destination, number of destinations, events, inbound
//!   streams and frame sizes all have limits. [`NetHandle::send`] never blocks; overload drops
//!   messages (counted), which gossip tolerates. Readers do wait for room in the event queue,
//!   which pushes back on the senders through stream flow control instead of losing messages.
//! - The cluster key is never logged (only its fingerprint).

mod addr;
mod frame;
mod key;
mod metrics;
mod request;
#[cfg(test)]
mod request_tests;
#[cfg(test)]
mod tests;
mod transport;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use shoal_gossip::NodeId;
use tokio::sync::mpsc;

#[cfg(test)]
pub(crate) use addr::node_id_of;
pub(crate) use addr::{parse_dial_addr, peer_id_of};
#[cfg(test)]
pub(crate) use frame::MAX_PAYLOAD;
pub(crate) use key::ClusterKey;
pub(crate) use metrics::NetMetrics;
pub(crate) use request::{IncomingRequest, RequestError, Requests, ResponseStream};

/// Configuration of the network layer.
#[derive(Clone, Debug)]
pub(crate) struct NetConfig {
    /// Where to listen (QUIC and TCP on the same port; port 0 picks one).
    pub(crate) listen: SocketAddr,
    /// The node identity; must be Ed25519.
    pub(crate) keypair: Keypair,
    /// The cluster's shared secret.
    pub(crate) cluster_key: ClusterKey,
    /// Discover peers on the local network with mDNS.
    pub(crate) mdns: bool,
    /// Use QUIC (listen and dial). `false` means TCP only, for networks that block UDP.
    pub(crate) quic: bool,
    /// Limits and timeouts.
    pub(crate) tuning: Tuning,
}

impl NetConfig {
    /// A configuration with QUIC, without mDNS, and default tuning.
    pub(crate) fn new(listen: SocketAddr, keypair: Keypair, cluster_key: ClusterKey) -> Self {
        Self {
            listen,
            keypair,
            cluster_key,
            mdns: false,
            quic: true,
            tuning: Tuning::default(),
        }
    }
}

/// Limits and timeouts.
#[derive(Clone, Debug)]
pub(crate) struct Tuning {
    /// Messages queued per destination before new ones are dropped.
    pub(crate) peer_queue: usize,
    /// Bytes queued per destination (besides failure-detector messages) before new messages
    /// are dropped: a burst of state (an apply of a thousand objects, the largest object in
    /// fragments) fits, a peer that does not read holds at most this much.
    pub(crate) peer_queue_bytes: usize,
    /// Events queued for the caller; readers wait when it is full.
    pub(crate) event_queue: usize,
    /// Destinations with a writer at once; messages to more are dropped.
    pub(crate) max_peers: usize,
    /// Inbound streams open at once; more are dropped.
    pub(crate) max_inbound_streams: usize,
    /// Established connections at once; more are denied.
    pub(crate) max_connections: usize,
    /// A writer with nothing to send for this long closes its stream and exits. An inbound
    /// stream without a frame for three times this long is closed.
    pub(crate) writer_idle: Duration,
    /// A connection without streams for this long is closed.
    pub(crate) idle_timeout: Duration,
    /// Time allowed for a QUIC handshake: how long a QUIC dial to a host that drops UDP
    /// takes before the TCP fallback is tried.
    pub(crate) handshake_timeout: Duration,
    /// Refused frames from one connected peer before it is disconnected.
    pub(crate) refuse_after: u32,
    /// How long a disconnected peer is denied new connections.
    pub(crate) refuse_ban: Duration,
    /// Incoming requests open at once from one peer; more are refused as busy. QUIC's
    /// connection window is sized so that this many stalled responses cannot starve gossip.
    pub(crate) max_requests_per_peer: usize,
    /// Incoming requests open at once in all (also the most queued for the application);
    /// more are refused as busy.
    pub(crate) max_requests: usize,
    /// Longest [`NetHandle::request`] waits for the answer to begin (dial, stream, request,
    /// acceptance by the peer's application); also how long a responder waits for a request's
    /// frames to arrive.
    pub(crate) request_timeout: Duration,
    /// Longest an incoming request waits for the application to take it
    /// ([`Requests::recv`]) before it is refused as not served. Below `request_timeout`, so
    /// that the requester hears why rather than timing out.
    pub(crate) request_accept_timeout: Duration,
    /// A request stream with nothing to send for this long sends a keep-alive; one that
    /// receives nothing for three times this long (while it reads) is considered gone. Detects
    /// peers that vanished without closing anything, which yamux over TCP would not notice.
    pub(crate) request_keepalive: Duration,
    /// Longest [`NetHandle::shutdown`] waits to flush queued messages.
    pub(crate) shutdown_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            peer_queue: 4096,
            peer_queue_bytes: 8 << 20,
            event_queue: 1024,
            max_peers: 1024,
            max_inbound_streams: 2048,
            max_connections: 2048,
            writer_idle: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(5),
            refuse_after: 3,
            refuse_ban: Duration::from_secs(60),
            max_requests_per_peer: 16,
            max_requests: 256,
            request_timeout: Duration::from_secs(10),
            request_accept_timeout: Duration::from_secs(5),
            request_keepalive: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(2),
        }
    }
}

/// Something the network layer reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NetEvent {
    /// A message from an authenticated member of the cluster. Feed it to
    /// `Node::handle_message(&addr, &bytes, now)`.
    Message {
        /// The sender, as authenticated by the transport and the cluster key.
        from: NodeId,
        /// `host:port` to reach the sender at: its connection's remote host and the listen
        /// port it announces. Empty in the unlikely case the connection's address is unknown;
        /// replies still reach the sender through its connection.
        addr: String,
        /// The message.
        bytes: Vec<u8>,
    },
    /// mDNS found a node on the local network (one event per node, when first seen).
    Discovered {
        /// `host:port` to send a join to.
        addr: String,
    },
    /// A peer refused this node's frames and said so on this node's own stream: another
    /// cluster key (its notice did not open here either), or a frame it could not read. Also
    /// reported when a peer that refused this node recently now denies its connections.
    RefusedBy {
        /// The peer.
        peer: PeerId,
        /// The address this node sent to (as given to [`NetHandle::send`]), or the peer id.
        addr: String,
        /// Why, for people: starts with `cluster key mismatch` when the keys differ.
        reason: String,
    },
    /// Nothing answered at an address this node sent to without knowing the node there (a
    /// join).
    Unreachable {
        /// The address, as given to [`NetHandle::send`].
        addr: String,
        /// Why.
        reason: String,
    },
    /// A peer was disconnected and banned for a while after sending frames that did not open.
    PeerRefused {
        /// The peer.
        peer: PeerId,
        /// Why its last refused frame was refused.
        reason: &'static str,
    },
}

/// Why the network layer could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetError {
    /// The keypair is not Ed25519, so it cannot be a gossip node id.
    #[error("the node keypair must be Ed25519")]
    NotEd25519,
    /// The libp2p transport could not be built.
    #[error("cannot build the libp2p transport: {0}")]
    Transport(String),
    /// A listener could not be opened.
    #[error("cannot listen on {addr} for {what}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Which of the agent's sockets wanted it.
        what: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// The handle to a running network layer. Clones share it.
#[derive(Clone)]
pub(crate) struct NetHandle {
    shared: Arc<transport::Shared>,
}

/// Starts the network layer: builds the swarm, binds QUIC then TCP, spawns the tasks. Returns
/// the handle and the receiver of events, which the caller must keep draining.
///
/// Must be called from within a tokio runtime. Call [`NetHandle::shutdown`] to stop: dropping
/// the handles does not stop the tasks.
pub(crate) async fn start(
    config: NetConfig,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    let (shared, events) = transport::start(config).await?;
    Ok((NetHandle { shared }, events))
}

impl NetHandle {
    /// Sends `bytes` (at most [`MAX_PAYLOAD`]) to `to` if known, else to whatever node
    /// answers at `addr` (a join). `addr` is `host:port` or a multiaddr; with `to` known it is
    /// only used when there is no connection to `to` yet. Never blocks: the message is queued
    /// for the destination's writer, or dropped and counted if that queue is full or the
    /// address is unusable.
    pub(crate) fn send(&self, to: Option<NodeId>, addr: &str, bytes: Vec<u8>) {
        self.shared.send(to, addr, bytes);
    }

    /// The addresses actually listened on (port 0 resolved; one per interface for a wildcard
    /// listen address).
    pub(crate) fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.shared.listen_addrs).clone()
    }

    /// The bound socket address: the QUIC one (the TCP one has the same port), or the TCP one
    /// when QUIC is off. Port 0 resolved.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        *lock(&self.shared.local_addr)
    }

    /// This node's peer id.
    pub(crate) fn local_peer_id(&self) -> PeerId {
        self.shared.local_peer
    }

    /// This node's gossip id.
    pub(crate) fn local_node_id(&self) -> NodeId {
        self.shared.local_id
    }

    /// Opens a request stream to `to` (dialing `addr`, `host:port` or a multiaddr, if there is
    /// no connection), sends `request` (at most [`request::MAX_REQUEST`] bytes) and returns the answer
    /// once the peer's application has taken the request. Waits at most
    /// [`Tuning::request_timeout`] for that; the answer's data may come much later (a quiet
    /// `logs -f`). Fails with [`RequestError::TooLarge`], `Unreachable` (no connection or no
    /// stream), `Refused` (different cluster key, banned, busy, not served, malformed) or
    /// `Timeout`.
    pub(crate) async fn request(
        &self,
        to: NodeId,
        addr: &str,
        request: Vec<u8>,
    ) -> Result<ResponseStream, RequestError> {
        request::request(&self.shared, to, addr, request).await
    }

    /// Takes the receiver of incoming requests; `None` after the first call. Until it is
    /// taken, and after it is dropped, incoming requests are refused as not served.
    pub(crate) fn requests(&self) -> Option<Requests> {
        self.shared.inbox.take()
    }

    /// A snapshot of the counters.
    pub(crate) fn metrics(&self) -> NetMetrics {
        self.shared.counters.snapshot()
    }

    /// Stops the network layer: writers flush what is queued (waiting at most
    /// [`Tuning::shutdown_timeout`]), then connections are closed and the tasks end. Messages
    /// sent afterwards through other clones are dropped and counted.
    pub(crate) async fn shutdown(self) {
        self.shared.shutdown().await;
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent
/// at each step, so a panic elsewhere does not make it unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
