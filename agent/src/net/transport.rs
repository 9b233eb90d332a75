//! The tasks behind [`super::NetHandle`]: one swarm task (connections, dials, listeners, mDNS),
//! one writer task per destination and one reader task per inbound stream.
//!
//! Data flow: `send` queues a message for the destination's writer (spawned on demand, retired
//! when idle). The writer asks the swarm task for a connection (dialing QUIC, then TCP, if
//! there is none), opens one stream and writes sealed frames to it. Inbound streams are read
//! by reader tasks, which open frames and emit events. The [`Gate`] behaviour sees every
//! connection before any stream can use it: it records the remote host (for reply addresses),
//! and denies peers that are banned or not Ed25519.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::io::{ReadHalf, WriteHalf};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, DialError, FromSwarm, NetworkBehaviour, SwarmEvent, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{PeerId, Stream, StreamProtocol, Swarm, SwarmBuilder, mdns};
use shoal_gossip::NodeId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::addr::{
    host_of, host_port_of, is_loopback, is_quic, node_id_of, parse_dial_addr, peer_id_of,
    socket_multiaddrs,
};
use super::frame::{self, FrameKey, LEN_PREFIX, MAX_PAYLOAD, Proto, Refusal};
use super::key::ClusterKey;
use super::metrics::{Counters, WarnLimiter};
use super::request::{self, Inbox};
use super::{NetConfig, NetError, NetEvent, Tuning, lock};

/// The stream protocol of gossip frames.
pub(super) const PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/gossip/1");

/// Most messages written to a stream with one flush.
const MAX_BATCH: usize = 64;
/// Longest a writer waits for a connection (a dial is bounded by the handshake timeouts
/// anyway; this only guards against a lost reply).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a stream negotiation may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one batch write may block (a peer that stops reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `start` waits for a listener to report its address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown leaves connections open after the last write, so that data buffered in
/// QUIC or yamux reaches the wire before the connections close.
const LINGER: Duration = Duration::from_millis(150);
/// How long shutdown waits for connections to close.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Longest a refusal notice may take to write.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval of the warnings about refused frames.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// Most peers banned at once (the list is only a damper against reconnect loops).
const MAX_BANNED: usize = 4096;
/// Most addresses remembered per connected peer.
const MAX_ADDRS_PER_PEER: usize = 8;
/// Most inbound streams read at once per peer (a well-behaved peer has one per connection).
const MAX_INBOUND_PER_PEER: usize = 16;
/// Longest the rest of a frame may take once its length prefix has arrived.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames and bytes written with one flush: enough to amortise a burst, small enough that
/// the wire buffer stays small.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Buffers grown beyond this by one large frame are given back afterwards.
const KEEP_BUFFER: usize = 16 * 1024;
/// How long a host whose QUIC dial failed while TCP worked is dialed on TCP first.
const PREFER_TCP_FOR: Duration = Duration::from_secs(600);
/// Most hosts remembered as needing TCP.
const MAX_PREFER_TCP: usize = 4096;
/// QUIC receive window of one stream: how far a sender may run ahead of a reader that does not
/// read. Small enough that response streams with stalled readers cannot take the whole
/// connection window (which gossip on the same connection needs), large enough for megabytes
/// per second per stream on a LAN.
pub(super) const STREAM_WINDOW: u32 = 512 * 1024;
/// QUIC receive window of a connection (libp2p's default), raised if needed so that every
/// response stream one peer may hold open at once can stall with room to spare for gossip.
const CONNECTION_WINDOW: u32 = 15_000_000;
/// A new connection with a peer closes the peer's connections established at least this much
/// earlier. A peer that connects while an older connection exists has restarted (same
/// identity, same address) or lost that connection without this side noticing: a QUIC
/// connection to a killed process lives on here until its idle timeout (10 s), writes to it
/// vanish, and streams would keep being opened on it, so the failure detector would lose
/// pings and acks to a member that is back. Connections of a simultaneous dial from both
/// sides are established within a round trip of each other and both stay; since this bound
/// is well above any round trip, the two sides never close different connections of a pair.
const SUPERSEDE_AFTER: Duration = Duration::from_secs(1);

/// State shared by the handle and all tasks.
pub(super) struct Shared {
    pub(super) local_peer: PeerId,
    pub(super) local_id: NodeId,
    pub(super) cluster_key: ClusterKey,
    pub(super) tuning: Tuning,
    quic: bool,
    pub(super) counters: Counters,
    refusal_warn: WarnLimiter,
    ban_warn: WarnLimiter,
    listen_port: AtomicU16,
    pub(super) local_addr: Mutex<SocketAddr>,
    pub(super) listen_addrs: Mutex<Vec<Multiaddr>>,
    pub(super) peers: Mutex<PeerTable>,
    writers: Mutex<Writers>,
    commands: mpsc::Sender<Command>,
    events: mpsc::Sender<NetEvent>,
    pub(super) control: libp2p_stream::Control,
    runtime: tokio::runtime::Handle,
    inbound_permits: Arc<Semaphore>,
    /// Peers that refused this node's frames, by the address this node sent to: who, why,
    /// when (to say so again while they deny its connections).
    rejections: Mutex<HashMap<String, Rejection>>,
    /// Incoming requests: limits and the queue to the application.
    pub(super) inbox: Inbox,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A peer's refusal of this node's frames, as its notice said.
#[derive(Clone, Debug)]
struct Rejection {
    peer: PeerId,
    reason: String,
    at: Instant,
}

/// Most refusals remembered (one per address this node sent to).
const MAX_REJECTIONS: usize = 1024;

/// The reason given when a peer's refusal notice does not open with this node's key.
fn key_mismatch(fingerprint: &str) -> String {
    format!(
        "cluster key mismatch: the peer refuses this node's frames, and its answer does not \
         open with this node's key (fingerprint {fingerprint}); start both with the same \
         cluster key"
    )
}

/// Where a queued message goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Dest {
    /// A known peer.
    Peer(PeerId),
    /// Whatever node answers at this address (a join); resolved to a peer by dialing.
    Addr(String),
}

/// A queued message.
struct Outgoing {
    /// Where to dial if there is no connection.
    addr: String,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Writers {
    map: HashMap<Dest, WriterEntry>,
    next_id: u64,
    /// Set by shutdown: nothing new is queued.
    closed: bool,
}

struct WriterEntry {
    /// Tells a retiring writer whether the entry is still its own.
    id: u64,
    tx: LaneSenders,
    task: JoinHandle<()>,
}

/// Room in a writer's lane for failure-detector messages.
const URGENT_QUEUE: usize = 64;

/// The sending ends of a writer's two lanes.
struct LaneSenders {
    urgent: mpsc::Sender<Outgoing>,
    normal: mpsc::Sender<Outgoing>,
    /// Bytes queued in the normal lane, shared with the writer.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Most bytes the normal lane holds.
    max_bytes: usize,
}

/// A writer's queues. Failure-detector messages (pings, acks, ping requests, nacks) have a
/// lane of their own that the writer empties first, so a burst of state never delays an ack
/// or pushes it out of a full queue. The normal lane is bounded in messages and in bytes.
struct Lanes {
    urgent: mpsc::Receiver<Outgoing>,
    normal: mpsc::Receiver<Outgoing>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl Lanes {
    fn new(normal: usize, max_bytes: usize) -> (LaneSenders, Lanes) {
        let (urgent_tx, urgent) = mpsc::channel(URGENT_QUEUE);
        let (normal_tx, normal) = mpsc::channel(normal.max(1));
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (
            LaneSenders {
                urgent: urgent_tx,
                normal: normal_tx,
                queued: queued.clone(),
                max_bytes,
            },
            Lanes {
                urgent,
                normal,
                queued,
            },
        )
    }

    /// Counts an item out of the normal lane.
    fn taken(&self, item: Outgoing) -> Outgoing {
        self.queued.fetch_sub(item.bytes.len(), Ordering::Relaxed);
        item
    }

    /// The next item, urgent ones first; `None` once both lanes are closed and empty.
    async fn recv(&mut self) -> Option<Outgoing> {
        tokio::select! {
            biased;
            Some(item) = self.urgent.recv() => Some(item),
            item = self.normal.recv() => item.map(|i| self.taken(i)),
        }
    }

    fn try_recv(&mut self) -> Result<Outgoing, mpsc::error::TryRecvError> {
        self.urgent.try_recv().or_else(|_| {
            let item = self.normal.try_recv()?;
            Ok(self.taken(item))
        })
    }

    fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.normal.is_empty()
    }
}

impl LaneSenders {
    fn try_send(&self, item: Outgoing) -> Result<(), mpsc::error::TrySendError<Outgoing>> {
        if shoal_gossip::message::is_probe(&item.bytes) {
            return self.urgent.try_send(item);
        }
        let len = item.bytes.len();
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        // One message always fits an empty lane, whatever its size.
        if before > 0 && before + len > self.max_bytes {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            return Err(mpsc::error::TrySendError::Full(item));
        }
        self.normal.try_send(item).inspect_err(|_| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
        })
    }
}

/// What is known about connected peers.
#[derive(Default)]
pub(super) struct PeerTable {
    peers: HashMap<PeerId, PeerInfo>,
    /// Addresses (`host:port`, or the address string a join was sent to) of connected peers,
    /// so that a message sent by address to a connected node reuses its connection.
    by_addr: HashMap<String, PeerId>,
    /// Peers denied until the instant.
    banned: HashMap<PeerId, Instant>,
}

#[derive(Default)]
struct PeerInfo {
    /// Open connections: the remote host of each, and when it was established.
    conns: Vec<(ConnectionId, Option<String>, Instant)>,
    /// Keys of `by_addr` that point here.
    addrs: Vec<String>,
    /// Refused frames since the last one that opened.
    failures: u32,
    /// Inbound streams being read.
    inbound: usize,
}

impl PeerTable {
    pub(super) fn is_banned(&mut self, peer: &PeerId) -> bool {
        match self.banned.get(peer) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                self.banned.remove(peer);
                false
            }
            None => false,
        }
    }

    /// Bans `peer`; false if it already was.
    fn ban(&mut self, peer: PeerId, for_: Duration) -> bool {
        if self.is_banned(&peer) {
            return false;
        }
        let now = Instant::now();
        self.banned.retain(|_, until| *until > now);
        if self.banned.len() < MAX_BANNED {
            self.banned.insert(peer, now + for_);
        }
        true
    }

    fn connected(&mut self, conn: ConnectionId, peer: PeerId, host: Option<String>, at: Instant) {
        self.peers
            .entry(peer)
            .or_default()
            .conns
            .push((conn, host, at));
    }

    /// Takes out the connections with `peer` that `conn`, a connection just established with
    /// it, supersedes: those established at least [`SUPERSEDE_AFTER`] before it (each is
    /// taken once, to be closed).
    fn take_superseded(&mut self, peer: &PeerId, conn: ConnectionId) -> Vec<ConnectionId> {
        let Some(info) = self.peers.get_mut(peer) else {
            return Vec::new();
        };
        let Some(&(_, _, newest)) = info.conns.iter().find(|(c, _, _)| *c == conn) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        info.conns.retain(|&(c, _, at)| {
            let old = c != conn && at + SUPERSEDE_AFTER <= newest;
            if old {
                taken.push(c);
            }
            !old
        });
        taken
    }

    fn closed(&mut self, conn: ConnectionId, peer: PeerId) {
        let Some(info) = self.peers.get_mut(&peer) else {
            return;
        };
        info.conns.retain(|(c, _, _)| *c != conn);
        if info.conns.is_empty()
            && let Some(info) = self.peers.remove(&peer)
        {
            for addr in info.addrs {
                if self.by_addr.get(&addr) == Some(&peer) {
                    self.by_addr.remove(&addr);
                }
            }
        }
    }

    /// The remote host of the peer's most recent connection.
    fn host(&self, peer: &PeerId) -> Option<String> {
        self.peers
            .get(peer)?
            .conns
            .iter()
            .rev()
            .find_map(|(_, h, _)| h.clone())
    }

    /// Remembers that `addr` reaches `peer`, while `peer` is connected.
    fn note_addr(&mut self, peer: PeerId, addr: String) {
        let Some(info) = self.peers.get_mut(&peer) else {
            return;
        };
        if addr.is_empty() || info.addrs.contains(&addr) {
            return;
        }
        if info.addrs.len() >= MAX_ADDRS_PER_PEER {
            let old = info.addrs.remove(0);
            if self.by_addr.get(&old) == Some(&peer) {
                self.by_addr.remove(&old);
            }
        }
        info.addrs.push(addr.clone());
        self.by_addr.insert(addr, peer);
    }

    fn by_addr(&self, addr: &str) -> Option<PeerId> {
        self.by_addr.get(addr).copied()
    }

    /// Counts a refused frame; returns the count since the last good one (0 for a peer that
    /// is no longer connected: there is nothing left to disconnect).
    fn failure(&mut self, peer: PeerId) -> u32 {
        let Some(info) = self.peers.get_mut(&peer) else {
            return 0;
        };
        info.failures = info.failures.saturating_add(1);
        info.failures
    }

    /// Takes an inbound stream slot of `peer`; false if it has too many or is not connected.
    fn open_inbound(&mut self, peer: &PeerId) -> bool {
        match self.peers.get_mut(peer) {
            Some(info) if info.inbound < MAX_INBOUND_PER_PEER => {
                info.inbound += 1;
                true
            }
            _ => false,
        }
    }

    fn close_inbound(&mut self, peer: &PeerId) {
        if let Some(info) = self.peers.get_mut(peer) {
            info.inbound = info.inbound.saturating_sub(1);
        }
    }

    fn connection_count(&self) -> usize {
        self.peers.values().map(|i| i.conns.len()).sum()
    }

    pub(super) fn reset_failures(&mut self, peer: &PeerId) {
        if let Some(info) = self.peers.get_mut(peer) {
            info.failures = 0;
        }
    }
}

/// Requests to the swarm task.
enum Command {
    /// Reply with a connected peer: `peer` itself, or whoever answers at `addrs` (tried in
    /// order). `addr_key` names the destination of an address-only dial.
    Connect {
        peer: Option<PeerId>,
        addr_key: Option<String>,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<PeerId, DialFail>>,
    },
    /// Disconnect and ban a peer whose frames do not open.
    Refuse { peer: PeerId, reason: &'static str },
    /// Close all connections and stop.
    Shutdown { done: oneshot::Sender<()> },
}

/// Why no connection could be had.
#[derive(Debug)]
pub(super) enum DialFail {
    NoAddress,
    Banned,
    Failed(String),
}

impl std::fmt::Display for DialFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAddress => f.write_str("not connected and no usable address"),
            Self::Banned => f.write_str("peer is banned after refused frames"),
            Self::Failed(e) => f.write_str(e),
        }
    }
}

/// The swarm's behaviour: the gate first, so that a denied connection never reaches the others.
#[derive(libp2p::swarm::NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
pub(super) struct Behaviour {
    gate: Gate,
    stream: libp2p_stream::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Admits or denies established connections and tracks them in the peer table. Doing this in
/// a behaviour (rather than on `SwarmEvent::ConnectionEstablished`) means the table knows a
/// connection before any stream on it reaches a reader.
pub(super) struct Gate {
    shared: Arc<Shared>,
}

impl Gate {
    fn admit(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        remote: &Multiaddr,
        dialed: bool,
    ) -> Result<dummy::ConnectionHandler, ConnectionDenied> {
        let mut table = lock(&self.shared.peers);
        let denied = if node_id_of(&peer).is_none() {
            Some("not an Ed25519 peer")
        } else if table.is_banned(&peer) {
            Some("banned after refused frames")
        } else if table.connection_count() >= self.shared.tuning.max_connections {
            Some("too many connections")
        } else {
            None
        };
        if let Some(reason) = denied {
            self.shared
                .count(&self.shared.counters.connections_denied, 1);
            debug!(%peer, addr = %remote, reason, "connection denied");
            return Err(ConnectionDenied::new(reason));
        }
        table.connected(conn, peer, host_of(remote), Instant::now());
        if dialed && let Some(addr) = host_port_of(remote) {
            table.note_addr(peer, addr);
        }
        Ok(dummy::ConnectionHandler)
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(conn, peer, remote_addr, false)
    }

    fn handle_established_outbound_connection(
        &mut self,
        conn: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(conn, peer, addr, true)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            lock(&self.shared.peers).closed(closed.connection_id, closed.peer_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _conn: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Builds the swarm, binds the listeners and spawns the tasks.
pub(super) async fn start(
    config: NetConfig,
) -> Result<(Arc<Shared>, mpsc::Receiver<NetEvent>), NetError> {
    let NetConfig {
        listen,
        keypair,
        cluster_key,
        mdns,
        quic,
        tuning,
    } = config;
    let local_peer = keypair.public().to_peer_id();
    let local_id = node_id_of(&local_peer).ok_or(NetError::NotEd25519)?;
    let (commands, command_rx) = mpsc::channel(1024);
    let (events, event_rx) = mpsc::channel(tuning.event_queue.max(1));
    let stream = libp2p_stream::Behaviour::new();
    let mut control = stream.new_control();
    let incoming = control
        .accept(PROTOCOL)
        .map_err(|e| NetError::Transport(e.to_string()))?;
    let incoming_requests = control
        .accept(request::PROTOCOL)
        .map_err(|e| NetError::Transport(e.to_string()))?;
    let shared = Arc::new(Shared {
        local_peer,
        local_id,
        cluster_key,
        quic,
        counters: Counters::default(),
        refusal_warn: WarnLimiter::new(WARN_INTERVAL),
        ban_warn: WarnLimiter::new(WARN_INTERVAL),
        listen_port: AtomicU16::new(listen.port()),
        local_addr: Mutex::new(listen),
        listen_addrs: Mutex::new(Vec::new()),
        peers: Mutex::new(PeerTable::default()),
        writers: Mutex::new(Writers::default()),
        commands,
        events,
        control,
        runtime: tokio::runtime::Handle::current(),
        inbound_permits: Arc::new(Semaphore::new(tuning.max_inbound_streams.max(1))),
        rejections: Mutex::new(HashMap::new()),
        inbox: Inbox::new(&tuning),
        tasks: Mutex::new(Vec::new()),
        tuning,
    });
    let gate = Gate {
        shared: shared.clone(),
    };
    let mut swarm = build_swarm(&keypair, &shared.tuning, gate, stream, mdns)?;
    let tcp = bind(&mut swarm, &shared, listen, quic).await?;
    let driver = Driver {
        swarm,
        shared: shared.clone(),
        commands: command_rx,
        dials: HashMap::new(),
        dial_by_peer: HashMap::new(),
        dial_by_addr: HashMap::new(),
        prefer_tcp: HashMap::new(),
    };
    let swarm_task = tokio::spawn(driver.run());
    let accept_task = tokio::spawn(accept_streams(shared.clone(), incoming));
    let request_task = tokio::spawn(request::accept_requests(shared.clone(), incoming_requests));
    lock(&shared.tasks).extend([swarm_task, accept_task, request_task]);
    info!(
        peer = %local_peer,
        node = %local_id,
        addr = %*lock(&shared.local_addr),
        quic,
        tcp,
        mdns,
        key_fingerprint = %shared.cluster_key.fingerprint(),
        "network started"
    );
    Ok((shared, event_rx))
}

fn build_swarm(
    keypair: &Keypair,
    tuning: &Tuning,
    gate: Gate,
    stream: libp2p_stream::Behaviour,
    mdns: bool,
) -> Result<Swarm<Behaviour>, NetError> {
    let handshake_timeout = tuning.handshake_timeout;
    let idle_timeout = tuning.idle_timeout;
    let per_peer = u64::try_from(tuning.max_requests_per_peer).unwrap_or(u64::MAX);
    let connection_window = per_peer
        .saturating_add(4)
        .saturating_mul(u64::from(STREAM_WINDOW))
        .clamp(u64::from(CONNECTION_WINDOW), u64::from(u32::MAX));
    let connection_window = u32::try_from(connection_window).unwrap_or(u32::MAX);
    let local_peer = keypair.public().to_peer_id();
    let behaviour = move |_: &Keypair| Behaviour {
        gate,
        stream,
        mdns: Toggle::from(if mdns { make_mdns(local_peer) } else { None }),
    };
    let swarm_config = move |c: libp2p::swarm::Config| c.with_idle_connection_timeout(idle_timeout);
    let base = || {
        Ok::<_, NetError>(
            SwarmBuilder::with_existing_identity(keypair.clone())
                .with_tokio()
                .with_tcp(
                    libp2p::tcp::Config::default().nodelay(true),
                    libp2p::noise::Config::new,
                    libp2p::yamux::Config::default,
                )
                .map_err(|e| NetError::Transport(e.to_string()))?
                .with_quic_config(move |mut c| {
                    c.handshake_timeout = handshake_timeout;
                    c.max_stream_data = STREAM_WINDOW;
                    c.max_connection_data = connection_window;
                    c
                }),
        )
    };
    // The system resolver configuration may be missing (minimal containers); then only
    // `/dns/` addresses stop working, so carry on without it.
    let swarm = match base()?.with_dns() {
        Ok(builder) => {
            let Ok(builder) = builder.with_behaviour(behaviour);
            builder.with_swarm_config(swarm_config).build()
        }
        Err(e) => {
            warn!(error = %e, "no system DNS configuration; DNS names in addresses will not resolve");
            let Ok(builder) = base()?.with_behaviour(behaviour);
            builder.with_swarm_config(swarm_config).build()
        }
    };
    Ok(swarm)
}

fn make_mdns(local_peer: PeerId) -> Option<mdns::tokio::Behaviour> {
    match mdns::tokio::Behaviour::new(mdns::Config::default(), local_peer) {
        Ok(behaviour) => Some(behaviour),
        Err(e) => {
            warn!(error = %e, "mDNS unavailable; discovery disabled");
            None
        }
    }
}

/// Binds QUIC, then TCP on the port QUIC got. Returns whether TCP listens.
async fn bind(
    swarm: &mut Swarm<Behaviour>,
    shared: &Shared,
    listen: SocketAddr,
    quic: bool,
) -> Result<bool, NetError> {
    let listen_err = |addr: &Multiaddr, reason: String| NetError::Listen {
        addr: addr.to_string(),
        what: if addr
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::Tcp(_)))
        {
            "gossip over TCP (the fallback for peers without UDP)"
        } else {
            "gossip over QUIC (UDP)"
        },
        reason,
    };
    let mut port = listen.port();
    if quic {
        // libp2p's listener errors say nothing of the cause: try the socket first for a
        // message that does.
        if port != 0 {
            if let Err(e) = std::net::UdpSocket::bind(listen) {
                return Err(NetError::Listen {
                    addr: format!("UDP {listen}"),
                    what: "gossip over QUIC",
                    reason: explain_bind(&e),
                });
            }
        }
        let [quic_addr, _] = socket_multiaddrs(listen);
        let id = swarm
            .listen_on(quic_addr.clone())
            .map_err(|e| listen_err(&quic_addr, error_chain(&e)))?;
        let bound = wait_listening(swarm, shared, id)
            .await
            .map_err(|reason| listen_err(&quic_addr, reason))?;
        port = port_of(&bound).unwrap_or(port);
    }
    let [_, tcp_addr] = socket_multiaddrs(SocketAddr::new(listen.ip(), port));
    let tcp_probe = if port == 0 {
        Ok(())
    } else {
        std::net::TcpListener::bind(SocketAddr::new(listen.ip(), port))
            .map(drop)
            .map_err(|e| explain_bind(&e))
    };
    let tcp = match tcp_probe.and_then(|()| {
        swarm
            .listen_on(tcp_addr.clone())
            .map_err(|e| error_chain(&e))
    }) {
        Ok(id) => wait_listening(swarm, shared, id).await,
        Err(reason) => Err(reason),
    };
    let tcp = match tcp {
        Ok(bound) => {
            if !quic {
                port = port_of(&bound).unwrap_or(port);
            }
            true
        }
        Err(reason) if quic => {
            warn!(addr = %tcp_addr, %reason, "cannot listen on TCP; QUIC only (no fallback for peers without UDP)");
            false
        }
        Err(reason) => return Err(listen_err(&tcp_addr, reason)),
    };
    shared.listen_port.store(port, Ordering::Relaxed);
    *lock(&shared.local_addr) = SocketAddr::new(listen.ip(), port);
    Ok(tcp)
}

/// A bind error, with what usually causes it.
fn explain_bind(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "{error}: another process holds it (another shoal agent's gossip, or its service \
             mesh, which takes the gossip port + 2 unless --mesh-listen moves it); pick another \
             port with --listen"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("{error}: ports below 1024 need root or CAP_NET_BIND_SERVICE")
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{error}: no interface of this machine has that address")
        }
        _ => error.to_string(),
    }
}

/// An error and its sources, `a: b: c` (libp2p's errors often say nothing themselves).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.dedup();
    if parts.is_empty() {
        "no reason given".to_owned()
    } else {
        parts.join(": ")
    }
}

/// Drives the swarm until listener `id` reports an address.
async fn wait_listening(
    swarm: &mut Swarm<Behaviour>,
    shared: &Shared,
    id: libp2p::core::transport::ListenerId,
) -> Result<Multiaddr, String> {
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        let event = timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| "timed out waiting for the listener".to_owned())?;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                lock(&shared.listen_addrs).push(address.clone());
                if listener_id == id {
                    return Ok(address);
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if listener_id == id => {
                return Err(match reason {
                    Ok(()) => "listener closed".to_owned(),
                    Err(e) => error_chain(&e),
                });
            }
            SwarmEvent::ListenerError { listener_id, error } if listener_id == id => {
                return Err(error_chain(&error));
            }
            _ => {}
        }
    }
}

fn port_of(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Udp(port) | libp2p::multiaddr::Protocol::Tcp(port) => {
            Some(port)
        }
        _ => None,
    })
}

impl Shared {
    pub(super) fn count(&self, counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn listen_port(&self) -> u16 {
        self.listen_port.load(Ordering::Relaxed)
    }

    /// Keeps only the addresses of enabled transports.
    fn usable(&self, mut addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
        if !self.quic {
            addrs.retain(|a| !is_quic(a));
        }
        addrs
    }

    pub(super) fn send(self: &Arc<Self>, to: Option<NodeId>, addr: &str, bytes: Vec<u8>) {
        let c = &self.counters;
        if bytes.len() > MAX_PAYLOAD {
            self.count(&c.dropped_oversize, 1);
            debug!(
                len = bytes.len(),
                max = MAX_PAYLOAD,
                addr,
                "message too large, dropped"
            );
            return;
        }
        let addr = addr.trim();
        let dest = match to {
            Some(id) => match peer_id_of(id) {
                Some(peer) => Dest::Peer(peer),
                None => {
                    self.count(&c.dropped_bad_addr, 1);
                    debug!(node = %id, "node id is not an Ed25519 key, dropped");
                    return;
                }
            },
            None => {
                let known = lock(&self.peers).by_addr(addr);
                match known {
                    Some(peer) => Dest::Peer(peer),
                    None => match parse_dial_addr(addr) {
                        Ok(target) => match target.peer {
                            Some(peer) => Dest::Peer(peer),
                            None => Dest::Addr(addr.to_owned()),
                        },
                        Err(e) => {
                            self.count(&c.dropped_bad_addr, 1);
                            debug!(error = %e, "dropped");
                            return;
                        }
                    },
                }
            }
        };
        if dest == Dest::Peer(self.local_peer) {
            self.count(&c.dropped_bad_addr, 1);
            debug!("message to this node itself, dropped");
            return;
        }
        self.enqueue(
            dest,
            Outgoing {
                addr: addr.to_owned(),
                bytes,
            },
        );
    }

    /// Queues `item` for the writer of `dest`, spawning the writer if there is none.
    fn enqueue(self: &Arc<Self>, dest: Dest, item: Outgoing) {
        let c = &self.counters;
        let mut writers = lock(&self.writers);
        if writers.closed {
            self.count(&c.dropped_shutdown, 1);
            return;
        }
        let item = match writers.map.get(&dest) {
            Some(entry) => match entry.tx.try_send(item) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.count(&c.dropped_queue_full, 1);
                    return;
                }
                // The writer exited without retiring (it panicked); replace it.
                Err(mpsc::error::TrySendError::Closed(item)) => {
                    writers.map.remove(&dest);
                    item
                }
            },
            None => item,
        };
        if writers.map.len() >= self.tuning.max_peers {
            self.count(&c.dropped_too_many_peers, 1);
            return;
        }
        let (tx, rx) = Lanes::new(self.tuning.peer_queue, self.tuning.peer_queue_bytes);
        // Cannot fail: the channel is new and has room.
        let _ = tx.try_send(item);
        writers.next_id += 1;
        let id = writers.next_id;
        let task = match dest.clone() {
            Dest::Peer(peer) => self
                .runtime
                .spawn(write_to_peer(self.clone(), peer, id, rx)),
            Dest::Addr(addr) => self
                .runtime
                .spawn(write_to_addr(self.clone(), addr, id, rx)),
        };
        writers.map.insert(dest, WriterEntry { id, tx, task });
    }

    /// Removes writer `id` of `dest` if its queue is empty; false if more work arrived.
    fn retire(&self, dest: &Dest, id: u64, rx: &Lanes) -> bool {
        let mut writers = lock(&self.writers);
        if !rx.is_empty() {
            return false;
        }
        if writers.map.get(dest).is_some_and(|e| e.id == id) {
            writers.map.remove(dest);
        }
        true
    }

    /// Removes writer `id` of `dest` and returns what was still queued for it.
    fn retire_draining(&self, dest: &Dest, id: u64, rx: &mut Lanes) -> Vec<Outgoing> {
        let mut writers = lock(&self.writers);
        if writers.map.get(dest).is_some_and(|e| e.id == id) {
            writers.map.remove(dest);
        }
        let mut items = Vec::new();
        while let Ok(item) = rx.try_recv() {
            items.push(item);
        }
        items
    }

    /// Asks the swarm task for a connection.
    pub(super) async fn connect(
        &self,
        peer: Option<PeerId>,
        addr_key: Option<String>,
        addrs: Vec<Multiaddr>,
    ) -> Result<PeerId, DialFail> {
        let (reply, result) = oneshot::channel();
        let command = Command::Connect {
            peer,
            addr_key,
            addrs: self.usable(addrs),
            reply,
        };
        if self.commands.send(command).await.is_err() {
            return Err(DialFail::Failed("network stopped".into()));
        }
        match timeout(CONNECT_TIMEOUT, result).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(DialFail::Failed("network stopped".into())),
            Err(_) => Err(DialFail::Failed("timed out".into())),
        }
    }

    /// Counts and reports a frame that did not open (on any protocol); asks for the peer to be
    /// disconnected after too many.
    pub(super) fn refused(&self, peer: PeerId, refusal: Refusal) {
        let c = &self.counters;
        self.count(
            match refusal {
                Refusal::Auth => &c.refused_auth,
                Refusal::Truncated => &c.refused_truncated,
                Refusal::Oversize => &c.refused_oversize,
                Refusal::Version => &c.refused_version,
            },
            1,
        );
        let failures = lock(&self.peers).failure(peer);
        if let Some(suppressed) = self.refusal_warn.check() {
            warn!(%peer, reason = refusal.reason(), failures, suppressed, "refused a frame");
        }
        if failures >= self.tuning.refuse_after {
            let refuse = Command::Refuse {
                peer,
                reason: refusal.reason(),
            };
            // If the swarm task is busy, the next refused frame asks again.
            if self.commands.try_send(refuse).is_ok() {
                lock(&self.peers).reset_failures(&peer);
            }
        }
    }

    /// A peer refused this node's frames: counted, remembered by the address this node sent
    /// to, and reported.
    fn refused_by(&self, peer: PeerId, addr: &str, reason: String) {
        self.count(&self.counters.refused_by_peers, 1);
        let addr = if addr.is_empty() {
            peer.to_string()
        } else {
            addr.to_owned()
        };
        {
            let mut rejections = lock(&self.rejections);
            if rejections.len() >= MAX_REJECTIONS && !rejections.contains_key(&addr) {
                let oldest = rejections
                    .iter()
                    .min_by_key(|(_, r)| r.at)
                    .map(|(a, _)| a.clone());
                if let Some(oldest) = oldest {
                    rejections.remove(&oldest);
                }
            }
            rejections.insert(
                addr.clone(),
                Rejection {
                    peer,
                    reason: reason.clone(),
                    at: Instant::now(),
                },
            );
        }
        self.emit(NetEvent::RefusedBy { peer, addr, reason });
    }

    /// This node could not reach `addr` (or `peer`); if that peer refused it recently, it is
    /// most likely denying this node's connections now: reported as still refusing. True if
    /// it was.
    fn still_refused(&self, peer: Option<PeerId>, addr: &str) -> bool {
        let key = match (addr.is_empty(), peer) {
            (false, _) => addr.to_owned(),
            (true, Some(peer)) => peer.to_string(),
            (true, None) => return false,
        };
        let recent = lock(&self.rejections)
            .get(&key)
            .filter(|r| r.at.elapsed() < self.tuning.refuse_ban.saturating_mul(2))
            .cloned();
        let Some(last) = recent else {
            return false;
        };
        self.count(&self.counters.refused_by_peers, 1);
        self.emit(NetEvent::RefusedBy {
            peer: last.peer,
            addr: key,
            reason: format!(
                "{} (still: the peer denies this node's connections for a while after refusing \
                 its frames)",
                last.reason
            ),
        });
        true
    }

    fn emit(&self, event: NetEvent) {
        if self.events.try_send(event).is_err() {
            self.count(&self.counters.dropped_events, 1);
        }
    }

    pub(super) async fn shutdown(&self) {
        let deadline = Instant::now() + self.tuning.shutdown_timeout;
        self.inbox.close();
        let mut writers: Vec<JoinHandle<()>> = {
            let mut w = lock(&self.writers);
            w.closed = true;
            // Dropping each sender lets its writer drain the queue, close its stream and end.
            w.map.drain().map(|(_, entry)| entry.task).collect()
        };
        for task in &mut writers {
            if timeout_at(deadline, &mut *task).await.is_err() {
                task.abort();
            }
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + LINGER)).await;
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::Shutdown { done }).await.is_ok() {
            let _ = timeout(CLOSE_TIMEOUT * 2, stopped).await;
        }
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        info!(peer = %self.local_peer, "network stopped");
    }
}

/// Why no stream could be had.
pub(super) enum OpenFail {
    /// Not connected, and the address does not parse.
    BadAddr,
    /// The peer is banned here after refused frames.
    Banned,
    /// Dial failed, or the stream could not be negotiated.
    Unreachable(String),
}

/// The writer of one peer: one stream, reopened after errors, fed from the queue.
async fn write_to_peer(shared: Arc<Shared>, peer: PeerId, id: u64, mut rx: Lanes) {
    let dest = Dest::Peer(peer);
    let c = &shared.counters;
    let Some(remote) = node_id_of(&peer) else {
        // `send` only builds peer ids from node ids.
        return;
    };
    let key = FrameKey::derive(
        &shared.cluster_key,
        Proto::Gossip,
        &shared.local_id,
        &remote,
    );
    let mut control = shared.control.clone();
    // The writing half of the stream, and the task that reads its other half for refusal
    // notices.
    let mut stream: Option<(WriteHalf<Stream>, JoinHandle<()>)> = None;
    let mut dial_addr = String::new();
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut wire: Vec<u8> = Vec::new();
    loop {
        match timeout(shared.tuning.writer_idle, rx.recv()).await {
            Ok(Some(item)) => batch.push(item),
            Ok(None) => break,
            Err(_) => {
                if shared.retire(&dest, id, &rx) {
                    break;
                }
                continue;
            }
        }
        let mut batch_bytes = batch[0].bytes.len();
        while batch.len() < MAX_BATCH && batch_bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(item) => {
                    batch_bytes += item.bytes.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        if let Some(item) = batch.iter().rev().find(|i| !i.addr.is_empty()) {
            dial_addr.clone_from(&item.addr);
        }
        let n = batch.len() as u64;
        let payload = batch_bytes as u64;
        if wire.capacity() > KEEP_BUFFER.max(MAX_BATCH_BYTES) {
            wire = Vec::new();
        }
        wire.clear();
        let port = shared.listen_port();
        for item in batch.drain(..) {
            key.seal_into(port, &item.bytes, &mut wire);
        }
        // Two attempts: a stream that broke since the last batch (peer restarted, connection
        // timed out) is only noticed when writing, and deserves one reopen. A frame written
        // partly before the break may then arrive twice; gossip messages are idempotent.
        for attempt in 0..2 {
            if stream.is_none() {
                match open_stream(&shared, &mut control, peer, &dial_addr, PROTOCOL).await {
                    Ok(s) => {
                        let (rd, wr) = s.split();
                        let notices = shared.runtime.spawn(read_notices(
                            shared.clone(),
                            peer,
                            remote,
                            dial_addr.clone(),
                            rd,
                        ));
                        stream = Some((wr, notices));
                    }
                    Err(OpenFail::BadAddr) => {
                        shared.count(&c.dropped_bad_addr, n);
                        debug!(%peer, addr = %dial_addr, "not connected and address unusable, dropped");
                        break;
                    }
                    Err(OpenFail::Banned) => {
                        shared.count(&c.dropped_unreachable, n);
                        debug!(%peer, "peer banned, dropped");
                        break;
                    }
                    Err(OpenFail::Unreachable(reason)) => {
                        shared.count(&c.dropped_unreachable, n);
                        debug!(%peer, addr = %dial_addr, %reason, dropped = n, "peer unreachable");
                        shared.still_refused(Some(peer), &dial_addr);
                        break;
                    }
                }
            }
            let Some((s, _)) = stream.as_mut() else { break };
            let written = timeout(WRITE_TIMEOUT, async {
                s.write_all(&wire).await?;
                s.flush().await
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    shared.count(&c.frames_sent, n);
                    shared.count(&c.bytes_sent, payload);
                    break;
                }
                Ok(Err(e)) => {
                    shared.count(&c.stream_errors, 1);
                    debug!(%peer, error = %e, attempt, "stream broke");
                }
                Err(_) => {
                    shared.count(&c.stream_errors, 1);
                    debug!(%peer, attempt, "stream write timed out");
                }
            }
            if let Some((_, notices)) = stream.take() {
                notices.abort();
            }
            if attempt == 1 {
                shared.count(&c.dropped_unreachable, n);
            }
        }
    }
    if let Some((mut s, notices)) = stream {
        let _ = timeout(WRITE_TIMEOUT, s.close()).await;
        notices.abort();
    }
}

/// Reads the other half of an outbound gossip stream, where the peer writes only refusal
/// notices (see the module docs of `net`), until the stream ends or the writer drops it.
async fn read_notices(
    shared: Arc<Shared>,
    peer: PeerId,
    remote: NodeId,
    addr: String,
    mut rd: ReadHalf<Stream>,
) {
    let key = FrameKey::derive(
        &shared.cluster_key,
        Proto::Gossip,
        &remote,
        &shared.local_id,
    );
    let mut prefix = [0u8; LEN_PREFIX];
    loop {
        if rd.read_exact(&mut prefix).await.is_err() {
            return;
        }
        let Ok(len) = frame::check_len(prefix) else {
            return;
        };
        let mut body = vec![0; len];
        if !matches!(
            timeout(FRAME_TIMEOUT, rd.read_exact(&mut body)).await,
            Ok(Ok(()))
        ) {
            return;
        }
        let reason = match key.open(&body) {
            Ok((_, payload)) => match payload.as_slice() {
                [frame::NOTICE_REFUSED, code] => format!(
                    "the peer refuses this node's frames: {}",
                    Refusal::from_code(*code)
                        .map_or("a reason this version does not know", Refusal::reason)
                ),
                // A notice of a newer kind.
                _ => continue,
            },
            Err(Refusal::Auth) => key_mismatch(&shared.cluster_key.fingerprint()),
            Err(_) => return,
        };
        debug!(%peer, %addr, %reason, "a peer refused this node's frames");
        shared.refused_by(peer, &addr, reason);
    }
}

/// Answers a refused frame on its own stream with a notice sealed for its writer (see the
/// module docs of `net`). Best effort: a writer that stopped reading is not waited for.
async fn send_refusal_notice(shared: &Shared, to: &NodeId, stream: &mut Stream, refusal: Refusal) {
    let key = FrameKey::derive(&shared.cluster_key, Proto::Gossip, &shared.local_id, to);
    let mut wire = Vec::new();
    key.seal_into(
        shared.listen_port(),
        &[frame::NOTICE_REFUSED, refusal.code()],
        &mut wire,
    );
    let _ = timeout(NOTICE_TIMEOUT, async {
        stream.write_all(&wire).await?;
        stream.flush().await
    })
    .await;
}

/// Connects if needed (dialing `addr`) and opens a `protocol` stream to `peer`.
pub(super) async fn open_stream(
    shared: &Shared,
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    addr: &str,
    protocol: StreamProtocol,
) -> Result<Stream, OpenFail> {
    let c = &shared.counters;
    let addrs = parse_dial_addr(addr).map(|t| t.addrs);
    let bad_addr = addrs.is_err();
    match shared
        .connect(Some(peer), None, addrs.unwrap_or_default())
        .await
    {
        Ok(_) => {}
        Err(DialFail::NoAddress) if bad_addr => return Err(OpenFail::BadAddr),
        Err(DialFail::Banned) => return Err(OpenFail::Banned),
        Err(e) => return Err(OpenFail::Unreachable(e.to_string())),
    }
    match timeout(OPEN_TIMEOUT, control.open_stream(peer, protocol)).await {
        Ok(Ok(stream)) => {
            shared.count(&c.streams_opened, 1);
            Ok(stream)
        }
        Ok(Err(e)) => {
            shared.count(&c.stream_errors, 1);
            Err(OpenFail::Unreachable(e.to_string()))
        }
        Err(_) => {
            shared.count(&c.stream_errors, 1);
            Err(OpenFail::Unreachable("stream negotiation timed out".into()))
        }
    }
}

/// The writer of an address whose node is unknown: dials it, then hands the queued messages
/// to the writer of the peer that answered and retires. Later sends to the address go to that
/// peer directly while it stays connected.
async fn write_to_addr(shared: Arc<Shared>, addr: String, id: u64, mut rx: Lanes) {
    let target = parse_dial_addr(&addr);
    let result = match target {
        Ok(target) => {
            shared
                .connect(target.peer, Some(addr.clone()), target.addrs)
                .await
        }
        Err(e) => Err(DialFail::Failed(e.to_string())),
    };
    let items = shared.retire_draining(&Dest::Addr(addr.clone()), id, &mut rx);
    match result {
        Ok(peer) if peer != shared.local_peer => {
            for item in items {
                shared.enqueue(Dest::Peer(peer), item);
            }
        }
        Ok(_) => {
            shared.count(&shared.counters.dropped_bad_addr, items.len() as u64);
            debug!(%addr, "address is this node itself, dropped");
        }
        Err(e) => {
            shared.count(&shared.counters.dropped_unreachable, items.len() as u64);
            debug!(%addr, reason = %e, dropped = items.len(), "address unreachable");
            if !shared.still_refused(None, &addr) {
                shared.emit(NetEvent::Unreachable {
                    addr,
                    reason: e.to_string(),
                });
            }
        }
    }
}

/// Hands each inbound stream to its own reader task.
async fn accept_streams(shared: Arc<Shared>, mut incoming: libp2p_stream::IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        let permit = match shared.inbound_permits.clone().try_acquire_owned() {
            Ok(permit) if lock(&shared.peers).open_inbound(&peer) => permit,
            _ => {
                shared.count(&shared.counters.streams_rejected, 1);
                debug!(%peer, "too many inbound streams, dropped one");
                continue;
            }
        };
        shared.count(&shared.counters.streams_accepted, 1);
        tokio::spawn(read_stream(shared.clone(), peer, stream, permit));
    }
}

/// Reads frames from one inbound stream until it ends.
async fn read_stream(
    shared: Arc<Shared>,
    peer: PeerId,
    mut stream: Stream,
    _permit: OwnedSemaphorePermit,
) {
    // The gate denies peers without a node id; this only guards the slot accounting.
    if let Some(from) = node_id_of(&peer) {
        read_frames(&shared, peer, from, &mut stream).await;
    }
    lock(&shared.peers).close_inbound(&peer);
}

async fn read_frames(shared: &Shared, peer: PeerId, from: NodeId, stream: &mut Stream) {
    let c = &shared.counters;
    let key = FrameKey::derive(&shared.cluster_key, Proto::Gossip, &from, &shared.local_id);
    let host = lock(&shared.peers).host(&peer);
    // Peers close idle streams after their writer_idle; one idle for much longer is held open
    // by something else and only occupies a slot.
    let idle = shared.tuning.writer_idle.saturating_mul(3);
    let mut noted_port = None;
    let mut prefix = [0u8; LEN_PREFIX];
    let mut body = Vec::new();
    loop {
        if !matches!(
            timeout(idle, stream.read_exact(&mut prefix)).await,
            Ok(Ok(()))
        ) {
            break;
        }
        let len = match frame::check_len(prefix) {
            Ok(len) => len,
            Err(refusal) => {
                // Framing is lost: nothing after this can be trusted to start a frame.
                shared.refused(peer, refusal);
                send_refusal_notice(shared, &from, stream, refusal).await;
                break;
            }
        };
        if body.capacity() > KEEP_BUFFER.max(len) {
            body = Vec::new();
        }
        body.resize(len, 0);
        if !matches!(
            timeout(FRAME_TIMEOUT, stream.read_exact(&mut body)).await,
            Ok(Ok(()))
        ) {
            break;
        }
        match key.open(&body) {
            Ok((port, bytes)) => {
                lock(&shared.peers).reset_failures(&peer);
                let addr = host
                    .as_deref()
                    .map_or_else(String::new, |h| format!("{h}:{port}"));
                if noted_port != Some(port) {
                    noted_port = Some(port);
                    lock(&shared.peers).note_addr(peer, addr.clone());
                }
                shared.count(&c.frames_received, 1);
                shared.count(&c.bytes_received, bytes.len() as u64);
                let event = NetEvent::Message { from, addr, bytes };
                if shared.events.send(event).await.is_err() {
                    break;
                }
            }
            Err(refusal) => {
                shared.refused(peer, refusal);
                send_refusal_notice(shared, &from, stream, refusal).await;
            }
        }
    }
}

/// An outbound connection attempt: addresses tried one after the other.
struct Dial {
    peer: Option<PeerId>,
    addr_key: Option<String>,
    remaining: VecDeque<Multiaddr>,
    waiters: Vec<oneshot::Sender<Result<PeerId, DialFail>>>,
    errors: Vec<String>,
    /// The address being dialed.
    current: Option<Multiaddr>,
    /// A QUIC attempt of this dial failed.
    quic_failed: bool,
}

/// The swarm task.
struct Driver {
    swarm: Swarm<Behaviour>,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    dials: HashMap<ConnectionId, Dial>,
    dial_by_peer: HashMap<PeerId, ConnectionId>,
    dial_by_addr: HashMap<String, ConnectionId>,
    /// `host:port`s where QUIC failed and TCP then worked (UDP blocked on the way): dialed on
    /// TCP first until the instant, instead of waiting out a QUIC handshake every time.
    prefer_tcp: HashMap<String, Instant>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { done }) => {
                        self.close().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        self.close().await;
                        return;
                    }
                },
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Connect {
                peer,
                addr_key,
                addrs,
                reply,
            } => self.connect(peer, addr_key, addrs, reply),
            Command::Refuse { peer, reason } => self.refuse(peer, reason),
            Command::Shutdown { .. } => {}
        }
    }

    fn connect(
        &mut self,
        peer: Option<PeerId>,
        addr_key: Option<String>,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<PeerId, DialFail>>,
    ) {
        if let Some(peer) = peer {
            if lock(&self.shared.peers).is_banned(&peer) {
                let _ = reply.send(Err(DialFail::Banned));
                return;
            }
            if self.swarm.is_connected(&peer) {
                let _ = reply.send(Ok(peer));
                return;
            }
            if let Some(dial) = self
                .dial_by_peer
                .get(&peer)
                .and_then(|c| self.dials.get_mut(c))
            {
                dial.waiters.push(reply);
                return;
            }
        } else if let Some(key) = &addr_key {
            let known = lock(&self.shared.peers).by_addr(key);
            if let Some(peer) = known
                && self.swarm.is_connected(&peer)
            {
                let _ = reply.send(Ok(peer));
                return;
            }
            if let Some(dial) = self
                .dial_by_addr
                .get(key)
                .and_then(|c| self.dials.get_mut(c))
            {
                dial.waiters.push(reply);
                return;
            }
        }
        if addrs.is_empty() {
            let _ = reply.send(Err(DialFail::NoAddress));
            return;
        }
        let mut addrs = addrs;
        if self.prefers_tcp(&addrs) {
            // Stable: the order among TCP (and among QUIC) addresses is kept.
            addrs.sort_by_key(is_quic);
        }
        self.dial_next(Dial {
            peer,
            addr_key,
            remaining: addrs.into(),
            waiters: vec![reply],
            errors: Vec::new(),
            current: None,
            quic_failed: false,
        });
    }

    fn prefers_tcp(&mut self, addrs: &[Multiaddr]) -> bool {
        let now = Instant::now();
        self.prefer_tcp.retain(|_, until| *until > now);
        addrs
            .iter()
            .filter(|a| is_quic(a))
            .filter_map(host_port_of)
            .any(|hp| self.prefer_tcp.contains_key(&hp))
    }

    /// Learns from how a dial that had a failed QUIC attempt ended.
    fn learn_transport(&mut self, dial: &Dial, connected: &Multiaddr) {
        let Some(host_port) = host_port_of(connected) else {
            return;
        };
        if is_quic(connected) {
            self.prefer_tcp.remove(&host_port);
        } else if dial.quic_failed && self.prefer_tcp.len() < MAX_PREFER_TCP {
            debug!(addr = %host_port, "QUIC failed where TCP works; TCP first for a while");
            self.prefer_tcp
                .insert(host_port, Instant::now() + PREFER_TCP_FOR);
        }
    }

    /// Dials the next address of `dial`, or fails it if none is left.
    fn dial_next(&mut self, mut dial: Dial) {
        while let Some(addr) = dial.remaining.pop_front() {
            let opts = match dial.peer {
                Some(peer) => DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .condition(PeerCondition::Always)
                    .build(),
                None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
            };
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    debug!(peer = ?dial.peer, %addr, "dialing");
                    dial.current = Some(addr);
                    if let Some(peer) = dial.peer {
                        self.dial_by_peer.insert(peer, id);
                    }
                    if let Some(key) = &dial.addr_key {
                        self.dial_by_addr.insert(key.clone(), id);
                    }
                    self.dials.insert(id, dial);
                    return;
                }
                Err(e) => {
                    dial.quic_failed |= is_quic(&addr);
                    dial.errors.push(format!("{addr}: {e}"));
                    if !dial.remaining.is_empty() {
                        self.shared.count(&self.shared.counters.dial_fallbacks, 1);
                    }
                }
            }
        }
        self.shared.count(&self.shared.counters.dial_failures, 1);
        let reason = dial.errors.join("; ");
        debug!(peer = ?dial.peer, addr = ?dial.addr_key, %reason, "dial failed");
        for waiter in dial.waiters {
            let _ = waiter.send(Err(DialFail::Failed(reason.clone())));
        }
    }

    fn take_dial(&mut self, id: ConnectionId) -> Option<Dial> {
        let dial = self.dials.remove(&id)?;
        if let Some(peer) = dial.peer
            && self.dial_by_peer.get(&peer) == Some(&id)
        {
            self.dial_by_peer.remove(&peer);
        }
        if let Some(key) = &dial.addr_key
            && self.dial_by_addr.get(key) == Some(&id)
        {
            self.dial_by_addr.remove(key);
        }
        Some(dial)
    }

    fn refuse(&mut self, peer: PeerId, reason: &'static str) {
        if !lock(&self.shared.peers).ban(peer, self.shared.tuning.refuse_ban) {
            return;
        }
        let _ = self.swarm.disconnect_peer_id(peer);
        self.shared.count(&self.shared.counters.peers_refused, 1);
        // Limited too: new peer ids cost an attacker nothing.
        if let Some(suppressed) = self.shared.ban_warn.check() {
            warn!(
                %peer,
                reason,
                ban_secs = self.shared.tuning.refuse_ban.as_secs(),
                suppressed,
                "disconnected a peer whose frames do not open (another cluster key?)"
            );
        }
        self.shared.emit(NetEvent::PeerRefused { peer, reason });
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let shared = self.shared.clone();
        let c = &shared.counters;
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                shared.count(&c.connections_established, 1);
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                let superseded = lock(&shared.peers).take_superseded(&peer_id, connection_id);
                for old in superseded {
                    shared.count(&c.connections_superseded, 1);
                    debug!(peer = %peer_id, connection = %old, "closing a connection superseded by a new one");
                    self.swarm.close_connection(old);
                }
                let mut finished = Vec::new();
                if let Some(dial) = self.take_dial(connection_id) {
                    self.learn_transport(&dial, endpoint.get_remote_address());
                    finished.push(dial);
                }
                // A connection from the peer itself also ends a dial to it.
                if let Some(&other) = self.dial_by_peer.get(&peer_id) {
                    finished.extend(self.take_dial(other));
                }
                for dial in finished {
                    if let Some(key) = dial.addr_key {
                        lock(&shared.peers).note_addr(peer_id, key);
                    }
                    for waiter in dial.waiters {
                        let _ = waiter.send(Ok(peer_id));
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                shared.count(&c.connections_closed, 1);
                debug!(peer = %peer_id, cause = ?cause, "disconnected");
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                let Some(mut dial) = self.take_dial(connection_id) else {
                    return;
                };
                // Retrying another transport cannot help when the peer itself is the problem.
                if matches!(
                    error,
                    DialError::Denied { .. }
                        | DialError::LocalPeerId { .. }
                        | DialError::WrongPeerId { .. }
                ) {
                    dial.remaining.clear();
                }
                dial.errors.push(error.to_string());
                dial.quic_failed |= dial.current.as_ref().is_some_and(is_quic);
                if let Some(next) = dial.remaining.front() {
                    shared.count(&c.dial_fallbacks, 1);
                    debug!(peer = ?dial.peer, %error, %next, "dial failed, trying the fallback");
                }
                self.dial_next(dial);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                shared.count(&c.incoming_errors, 1);
                debug!(addr = %send_back_addr, %error, "inbound connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                lock(&shared.listen_addrs).push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                lock(&shared.listen_addrs).retain(|a| *a != address);
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                warn!(?addresses, ?reason, "listener closed");
                lock(&shared.listen_addrs).retain(|a| !addresses.contains(a));
            }
            SwarmEvent::ListenerError { error, .. } => {
                warn!(%error, "listener error");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                self.on_discovered(found);
            }
            _ => {}
        }
    }

    /// Reports each newly discovered peer once, with the address most likely to work from
    /// here: QUIC before TCP, and a loopback address only if it has nothing else (a remote
    /// host's loopback address would be our own).
    fn on_discovered(&mut self, found: Vec<(PeerId, Multiaddr)>) {
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addr) in found {
            by_peer.entry(peer).or_default().push(addr);
        }
        for (peer, addrs) in by_peer {
            if peer == self.shared.local_peer
                || self.swarm.is_connected(&peer)
                || lock(&self.shared.peers).is_banned(&peer)
            {
                continue;
            }
            let best = self
                .shared
                .usable(addrs)
                .into_iter()
                .filter(|a| host_port_of(a).is_some())
                .min_by_key(|a| (is_loopback(a), !is_quic(a)));
            if let Some(addr) = best.as_ref().and_then(host_port_of) {
                info!(%peer, %addr, "discovered by mDNS");
                self.shared.emit(NetEvent::Discovered { addr });
            }
        }
    }

    /// Closes every connection, giving them a moment to say goodbye, and fails pending dials.
    async fn close(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while self.swarm.network_info().num_peers() > 0 {
            match timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(SwarmEvent::ConnectionClosed { .. }) => {
                    self.shared
                        .count(&self.shared.counters.connections_closed, 1);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for (_, dial) in self.dials.drain() {
            for waiter in dial.waiters {
                let _ = waiter.send(Err(DialFail::Failed("network stopped".into())));
            }
        }
    }
}

#[cfg(test)]
mod peer_table_tests {
    use super::*;

    fn conn(id: usize) -> ConnectionId {
        ConnectionId::new_unchecked(id)
    }

    #[test]
    fn new_connection_supersedes_older_ones_but_not_a_simultaneous_dial() {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let mut table = PeerTable::default();
        let t0 = Instant::now();
        table.connected(conn(1), peer, None, t0);
        table.connected(conn(2), other, None, t0);
        // The peer's own dial crossing ours: both stay.
        table.connected(conn(3), peer, None, t0 + Duration::from_millis(300));
        assert!(table.take_superseded(&peer, conn(3)).is_empty());
        // The peer connects again long after (it restarted): the old ones go, once.
        let later = t0 + SUPERSEDE_AFTER + Duration::from_secs(3);
        table.connected(conn(4), peer, None, later);
        table.connected(conn(5), peer, None, later + Duration::from_millis(5));
        assert_eq!(
            table.take_superseded(&peer, conn(4)),
            vec![conn(1), conn(3)]
        );
        assert!(table.take_superseded(&peer, conn(5)).is_empty());
        // Another peer's connections are not touched.
        assert!(table.take_superseded(&other, conn(2)).is_empty());
        assert_eq!(table.connection_count(), 3);
    }
}
