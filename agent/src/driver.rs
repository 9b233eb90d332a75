//! The gossip driver: one tokio task that owns the sans-IO [`Node`] and connects it to the
//! world.
//!
//! The task `select!`s over network input, the node's next timer
//! (`sleep_until(node.poll_timeout())`) and a command channel from the API; after every input it
//! drains the node's outputs: transmissions go to the network layer, changed entries go to the
//! persistence thread and, for the keys its [`Subscriber`] wants, with their new bytes to it;
//! member changes update the published [`ClusterView`] (a `watch` channel, so readers never lock
//! the core) and go to the subscriber as the member list.
//!
//! The driver knows nothing of what the entries mean: it never decodes a value. Whoever makes
//! sense of them (the workload projector) runs elsewhere, fed through an unbounded channel, so
//! the driver never waits for it.
//!
//! Durability: an API write is acknowledged only after the persistence thread has committed it
//! (and every change before it) to disk. The persistence thread commits in groups: whatever
//! batches queued up while it was writing go into the next transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha12Rng;
use serde::Serialize;
use shoal_gossip::{
    ClockRefusal, ClockStatus, ClockVerdict, Config, Entry, Event, Identity, Key, MemberState,
    Node, NodeId, ObjectKey, Stats,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant as TokioInstant;
use tracing::{debug, error, info, warn};

use crate::clock::{Clock, wall_ms};
use crate::disk::{DiskRefusal, DiskStatus};
use crate::net::{NetEvent, NetHandle, NetMetrics};
use crate::persist::{Db, META_LAST_CONTACT, META_SYNCED};

mod persistence;

pub(crate) use persistence::Saved;
use persistence::{Ack, Batch};

/// A member as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberView {
    pub(crate) id: NodeId,
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) incarnation: u64,
    pub(crate) state: MemberState,
    /// Wall-clock time (ms) this node saw the state change, or the agent start for members
    /// restored from disk.
    pub(crate) since_ms: u64,
    /// Whether this member is the local node.
    pub(crate) local: bool,
}

/// What the agent publishes for readers.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClusterView {
    pub(crate) members: Vec<MemberView>,
    /// How joining goes.
    pub(crate) join: JoinStatus,
}

/// How this node's joining goes, as the API shows it (`/api/v1/stats` under `join`, and the
/// local node of `/api/v1/nodes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct JoinStatus {
    /// The addresses it joins through: `--join`, `shoal join`, or after a restart the members
    /// it knew.
    pub(crate) peers: Vec<String>,
    /// Whether no member has accepted it yet.
    pub(crate) joining: bool,
    /// What went wrong since it last joined: peers that refused it (at any time), addresses
    /// that could not be reached (while joining).
    pub(crate) failures: Vec<JoinFailure>,
}

/// A peer that refused this node, or an address it could not reach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct JoinFailure {
    /// The address (as given), or the peer id.
    pub(crate) peer: String,
    /// Whether the peer refused this node (else: unreachable).
    pub(crate) refused: bool,
    /// Why, for people (`cluster key mismatch: ...` when the keys differ).
    pub(crate) reason: String,
    /// How many times.
    pub(crate) count: u64,
    /// The last time, wall ms.
    pub(crate) last_ms: u64,
}

/// A member's membership facts, as the driver sends them to its [`Subscriber`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberFacts {
    pub(crate) id: NodeId,
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) state: MemberState,
    /// Whether this agent has had a message of state from it since it started (always true of
    /// itself): until then, all it knows of the member was restored from before the restart.
    pub(crate) heard: bool,
}

/// One change of the replicated state, as the driver saw it.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    /// An object's new bytes (`None`: deleted).
    Object {
        key: ObjectKey,
        value: Option<Vec<u8>>,
    },
    /// An owned entry's new bytes (`None`: deleted).
    Owned {
        owner: NodeId,
        name: String,
        value: Option<Vec<u8>>,
    },
    /// The whole member list (sent when any member changed).
    Members(Vec<MemberFacts>),
    /// The first message of state (anything but the failure detector's probes) from this
    /// member since the agent started.
    Heard(NodeId),
}

/// Who hears of changes: the entries it wants, with their new bytes, and the member list
/// whenever membership changed, in groups (one `Vec` per turn of the driver). At start it gets
/// every wanted entry of the restored state.
pub(crate) struct Subscriber {
    /// Whether it wants changes of this key. Called on the driver's task for every changed
    /// key: it must be cheap and must not look at values.
    pub(crate) wants: fn(&Key) -> bool,
    /// Where the changes go. Unbounded, so the driver never waits: the receiver takes what
    /// queued up in one go.
    pub(crate) changes_tx: mpsc::UnboundedSender<Vec<Change>>,
}

/// Counters of the driver and the layers under it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct AgentStats {
    pub(crate) gossip: GossipStats,
    pub(crate) net: NetMetrics,
    pub(crate) persisted_batches: u64,
    pub(crate) live_members: usize,
    pub(crate) queued_updates: usize,
    pub(crate) local_health: u32,
    pub(crate) incarnation: u64,
    /// Messages waiting behind the failure detector's, and those dropped when too many waited.
    pub(crate) backlog: usize,
    pub(crate) backlog_dropped: u64,
    /// How joining goes: the peers, and who refused this node or could not be reached.
    pub(crate) join: JoinStatus,
    /// Object writes refused because the disk was full or failing.
    pub(crate) writes_refused_disk: u64,
    /// A digest of every entry this node holds (tombstones and member records included): two
    /// nodes that hold the same state show the same digest.
    pub(crate) state_digest: String,
    /// Entries this node holds.
    pub(crate) entries: usize,
    /// The data dir's disk.
    pub(crate) disk: DiskStatus,
}

/// The core's counters, serialisable.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct GossipStats {
    pub(crate) msgs_sent: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) msgs_received: u64,
    pub(crate) bytes_received: u64,
    pub(crate) decode_errors: u64,
    pub(crate) misdirected: u64,
    pub(crate) invalid_updates: u64,
    pub(crate) refused_resurrections: u64,
    pub(crate) fragments_dropped: u64,
    pub(crate) oversized: u64,
    pub(crate) refutations: u64,
    pub(crate) suspicions_raised: u64,
    pub(crate) deaths_declared: u64,
    pub(crate) clock_skew_warnings: u64,
    pub(crate) writes_refused_clock: u64,
}

impl From<&Stats> for GossipStats {
    fn from(s: &Stats) -> Self {
        GossipStats {
            msgs_sent: s.msgs_sent,
            bytes_sent: s.bytes_sent,
            msgs_received: s.msgs_received,
            bytes_received: s.bytes_received,
            decode_errors: s.decode_errors,
            misdirected: s.misdirected,
            invalid_updates: s.invalid_updates,
            refused_resurrections: s.refused_resurrections,
            fragments_dropped: s.fragments_dropped,
            oversized: s.oversized,
            refutations: s.refutations,
            suspicions_raised: s.suspicions_raised,
            deaths_declared: s.deaths_declared,
            clock_skew_warnings: s.clock_skew_warnings,
            writes_refused_clock: s.writes_refused_clock,
        }
    }
}

/// Requests from the API to the driver.
pub(crate) enum Command {
    /// Join through these addresses.
    Join(Vec<String>),
    /// Leave gracefully; the reply comes once the announcement had time to spread.
    Leave(oneshot::Sender<()>),
    /// Write (or with `None` delete) an object; the reply comes once it is durable, or at
    /// once if this node's clock rule refuses it.
    Write {
        key: ObjectKey,
        value: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<(Entry, Saved), WriteError>>,
    },
    /// Write (or delete) several objects at once, all or none: one durable commit, one reply.
    WriteMany {
        writes: Vec<(ObjectKey, Option<Vec<u8>>)>,
        reply: oneshot::Sender<Result<(Vec<Entry>, Saved), WriteError>>,
    },
    /// Read one object.
    Get {
        key: ObjectKey,
        reply: oneshot::Sender<Option<Entry>>,
    },
    /// List objects of a kind, optionally in one namespace (tombstones excluded).
    List {
        kind: String,
        namespace: Option<String>,
        reply: oneshot::Sender<Vec<(ObjectKey, Entry)>>,
    },
    /// Counters.
    Stats(oneshot::Sender<AgentStats>),
    /// Write (or with `None` delete) an entry this node owns; the reply comes once durable.
    WriteOwned {
        name: String,
        value: Option<Vec<u8>>,
        reply: oneshot::Sender<Entry>,
    },
    /// Several `WriteOwned` at once (`None` deletes); one reply, with the last entry, once all
    /// are durable (they go to the same commit). Never empty.
    WriteOwnedMany {
        writes: Vec<(String, Option<Vec<u8>>)>,
        reply: oneshot::Sender<Entry>,
    },
}

/// A handle to send commands to the driver.
#[derive(Clone)]
pub(crate) struct DriverHandle {
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<Arc<ClusterView>>,
    clock: watch::Receiver<Arc<ClockView>>,
    disk: watch::Receiver<Arc<DiskStatus>>,
}

/// This node's clock against its members', as the API shows it (refreshed every second).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClockView {
    /// The most a clock may be off (`--max-clock-offset-ms`).
    pub(crate) max_offset_ms: u64,
    /// Whether this node may stamp writes; `None` before the first refresh.
    pub(crate) status: Option<ClockStatus>,
    /// Each measured member's clock minus this node's, in milliseconds, with the round trip
    /// it was measured over.
    pub(crate) offsets: BTreeMap<NodeId, (i64, u64)>,
}

/// How often the clock view is refreshed (and a clock that went off is logged again).
const CLOCK_REFRESH: Duration = Duration::from_secs(1);
/// How often a node whose clock is off says so again.
const CLOCK_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A digest of a store: its 64 top-level anti-entropy fingerprints folded with its size. O(1).
fn state_digest(store: &shoal_gossip::Store) -> String {
    let mut digest = store.len() as u64;
    for f in store.root_fingerprints() {
        digest = (digest.rotate_left(23) ^ f).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    format!("{digest:016x}")
}

/// The driver is gone (the agent is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the agent is shutting down")]
pub(crate) struct Gone;

/// Why an object write was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    #[error(transparent)]
    Gone(#[from] Gone),
    /// This node's clock disagrees with its members' (nothing was written).
    #[error(transparent)]
    Clock(#[from] ClockRefusal),
    /// This node's disk is full or failing (nothing was written).
    #[error(transparent)]
    Disk(#[from] DiskRefusal),
}

/// An object write that was made, and whether it is on this node's disk yet.
#[derive(Debug)]
pub(crate) struct Written<T> {
    pub(crate) value: T,
    pub(crate) saved: Saved,
}

impl DriverHandle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Gone> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub(crate) async fn join(&self, peers: Vec<String>) -> Result<(), Gone> {
        self.commands
            .send(Command::Join(peers))
            .await
            .map_err(|_| Gone)
    }

    pub(crate) async fn leave(&self) -> Result<(), Gone> {
        self.call(Command::Leave).await
    }

    /// Writes (or with `None` deletes) an object; returns once it is durable, or once this
    /// node knows it cannot save it yet ([`Saved::No`]: made all the same).
    pub(crate) async fn write(
        &self,
        key: ObjectKey,
        value: Option<Vec<u8>>,
    ) -> Result<Written<Entry>, WriteError> {
        let (value, saved) = self
            .call(|reply| Command::Write { key, value, reply })
            .await??;
        Ok(Written { value, saved })
    }

    /// Writes several objects, all or none: in the store at once, durable in one commit,
    /// acknowledged once.
    pub(crate) async fn write_many(
        &self,
        writes: Vec<(ObjectKey, Option<Vec<u8>>)>,
    ) -> Result<Written<Vec<Entry>>, WriteError> {
        let (value, saved) = self
            .call(|reply| Command::WriteMany { writes, reply })
            .await??;
        Ok(Written { value, saved })
    }

    pub(crate) async fn get(&self, key: ObjectKey) -> Result<Option<Entry>, Gone> {
        self.call(|reply| Command::Get { key, reply }).await
    }

    pub(crate) async fn list(
        &self,
        kind: String,
        namespace: Option<String>,
    ) -> Result<Vec<(ObjectKey, Entry)>, Gone> {
        self.call(|reply| Command::List {
            kind,
            namespace,
            reply,
        })
        .await
    }

    pub(crate) async fn stats(&self) -> Result<AgentStats, Gone> {
        self.call(Command::Stats).await
    }

    /// Writes (or with `None` deletes) an entry this node owns; returns once it is durable,
    /// or once this node knows it cannot save it yet (it is made all the same).
    pub(crate) async fn write_owned(
        &self,
        name: String,
        value: Option<Vec<u8>>,
    ) -> Result<Entry, Gone> {
        self.call(|reply| Command::WriteOwned { name, value, reply })
            .await
    }

    /// Writes (or with `None` deletes) several entries this node owns; returns once all are
    /// durable, after one commit.
    pub(crate) async fn write_owned_many(
        &self,
        writes: Vec<(String, Option<Vec<u8>>)>,
    ) -> Result<(), Gone> {
        if writes.is_empty() {
            return Ok(());
        }
        self.call(|reply| Command::WriteOwnedMany { writes, reply })
            .await
            .map(|_| ())
    }

    /// The latest published view of the cluster.
    pub(crate) fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// This node's clock against its members', as of the last refresh.
    pub(crate) fn clock(&self) -> Arc<ClockView> {
        self.clock.borrow().clone()
    }

    /// The data dir's disk, as the persistence thread last saw it.
    pub(crate) fn disk(&self) -> watch::Receiver<Arc<DiskStatus>> {
        self.disk.clone()
    }
}

/// What the driver needs to start.
pub(crate) struct DriverSetup {
    pub(crate) config: Config,
    pub(crate) identity: Identity,
    pub(crate) net: NetHandle,
    pub(crate) net_events: mpsc::Receiver<NetEvent>,
    pub(crate) db: Db,
    pub(crate) restored: Vec<(Key, Entry)>,
    pub(crate) synced: bool,
    pub(crate) seeds: Vec<String>,
    /// Entries this node writes about itself at start (name, value), such as its node info.
    pub(crate) own_entries: Vec<(String, Vec<u8>)>,
    /// How far the wall clock the gossip core reads is moved (fault tests; 0 otherwise).
    pub(crate) clock_offset_ms: i64,
    /// How fast that wall clock drifts, in parts per million (fault tests; 0 otherwise).
    pub(crate) clock_drift_ppm: i64,
    /// Free space (bytes) under which the node refuses object writes.
    pub(crate) disk_reserve: u64,
    /// Meta values the agent could not write at start (a full disk): written first.
    pub(crate) deferred_meta: Vec<(&'static str, Vec<u8>)>,
}

/// Starts the driver task. Returns a handle and a future that completes when the driver stopped
/// (after a leave, or when `shutdown` fires) with everything flushed.
pub(crate) fn start(
    setup: DriverSetup,
    subscriber: Subscriber,
    shutdown: watch::Receiver<bool>,
) -> (DriverHandle, tokio::task::JoinHandle<()>) {
    let clock = Clock {
        origin: TokioInstant::now(),
        offset_ms: setup.clock_offset_ms,
        drift_ppm: setup.clock_drift_ppm,
    };
    let now = clock.now();
    let me = setup.identity.id;
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let mut node = Node::new(
        setup.config,
        setup.identity,
        ChaCha12Rng::from_seed(seed),
        now,
    );
    node.restore(setup.restored, setup.synced, now);
    let (commands_tx, commands_rx) = mpsc::channel(256);
    let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
    let (clock_tx, clock_rx) = watch::channel(Arc::new(ClockView::default()));
    let persistence = persistence::start(setup.db, setup.disk_reserve, setup.deferred_meta);
    let disk = persistence.status.clone();
    let mut driver = Driver {
        node,
        clock,
        net: setup.net,
        net_events: setup.net_events,
        commands: commands_rx,
        view: view_tx,
        clock_view: clock_tx,
        clock_logged: None,
        clock_warned: BTreeSet::new(),
        subscriber,
        pending_changes: Vec::new(),
        members_changed: true,
        persist: persistence.batches,
        persist_thread: Some(persistence.thread),
        disk: persistence.status,
        since: BTreeMap::new(),
        started_ms: wall_ms(),
        dirty: BTreeSet::new(),
        pending_acks: Vec::new(),
        view_dirty: true,
        persisted_batches: 0,
        writes_refused_disk: 0,
        last_contact_saved: 0,
        shutdown,
        leave_replies: Vec::new(),
        backlog: Default::default(),
        backlog_dropped: 0,
        heard: BTreeSet::from([me]),
        join: JoinStatus::default(),
        join_logged: BTreeMap::new(),
        join_summary_logged: false,
        join_report_at: None,
    };
    driver.send_whole_state();
    for (name, value) in setup.own_entries {
        driver.node.write_owned(name, Some(value), now);
    }
    if !setup.seeds.is_empty() {
        driver.start_join(&setup.seeds);
        driver.node.join(setup.seeds, now);
    }
    let handle = DriverHandle {
        commands: commands_tx,
        view: view_rx,
        clock: clock_rx,
        disk,
    };
    let task = tokio::spawn(async move { driver.run().await });
    (handle, task)
}

struct Driver {
    node: Node<ChaCha12Rng>,
    clock: Clock,
    net: NetHandle,
    net_events: mpsc::Receiver<NetEvent>,
    commands: mpsc::Receiver<Command>,
    view: watch::Sender<Arc<ClusterView>>,
    clock_view: watch::Sender<Arc<ClockView>>,
    /// When a clock that is off was last logged (`None`: it agrees).
    clock_logged: Option<TokioInstant>,
    /// Members whose clocks were logged as far from ours (until they come back).
    clock_warned: BTreeSet<NodeId>,
    /// Who hears of changes (the projector, which decodes them off this task).
    subscriber: Subscriber,
    pending_changes: Vec<Change>,
    members_changed: bool,
    persist: std::sync::mpsc::Sender<Batch>,
    persist_thread: Option<std::thread::JoinHandle<()>>,
    /// The data dir's disk, as the persistence thread last saw it.
    disk: watch::Receiver<Arc<DiskStatus>>,
    /// Wall time each member was last seen changing state.
    since: BTreeMap<NodeId, u64>,
    started_ms: u64,
    dirty: BTreeSet<Key>,
    pending_acks: Vec<Ack>,
    view_dirty: bool,
    persisted_batches: u64,
    writes_refused_disk: u64,
    last_contact_saved: u64,
    shutdown: watch::Receiver<bool>,
    leave_replies: Vec<oneshot::Sender<()>>,
    /// Messages other than the failure detector's, waiting their turn (bounded by the network
    /// layer's inbound queue: the driver takes at most `NET_BATCH` more per turn).
    backlog: std::collections::VecDeque<(String, Vec<u8>)>,
    /// Backlogged messages dropped because the backlog was full.
    backlog_dropped: u64,
    /// Members a message of state came from since the agent started, and itself.
    heard: BTreeSet<NodeId>,
    /// How joining goes.
    join: JoinStatus,
    /// When each address's failure was last logged (a refusal is logged at most every
    /// [`JOIN_LOG_INTERVAL`] per address).
    join_logged: BTreeMap<String, TokioInstant>,
    /// Whether this join's "cannot join" summary was logged.
    join_summary_logged: bool,
    /// When to say so if the node has not joined by then.
    join_report_at: Option<TokioInstant>,
}

/// Most network events taken at once before the driver looks at its other inputs.
const NET_BATCH: usize = 256;
/// Longest run of backlogged (non-probe) messages the driver handles before it looks at its
/// other inputs again.
const BACKLOG_SLICE: Duration = Duration::from_millis(5);
/// Most messages the backlog holds (about 10 MB of the largest).
const BACKLOG_MAX: usize = 8192;

/// Least time between two logs of one address's join failures.
const JOIN_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// How long after a join starts the agent says that it has not joined, if it has not.
const JOIN_REPORT_AFTER: Duration = Duration::from_secs(10);
/// Most failures kept in the join status.
const MAX_JOIN_FAILURES: usize = 64;

/// How long a leaving node keeps gossiping its departure before it stops.
const LEAVE_LINGER: Duration = Duration::from_millis(600);

impl Driver {
    async fn run(&mut self) {
        let mut leave_deadline: Option<TokioInstant> = None;
        let mut contact_tick = tokio::time::interval(Duration::from_secs(30));
        let mut clock_tick = tokio::time::interval(CLOCK_REFRESH);
        clock_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let timer = self
                .node
                .poll_timeout()
                .map(|t| self.clock.instant(t))
                .unwrap_or_else(|| TokioInstant::now() + Duration::from_secs(3600));
            let linger =
                leave_deadline.unwrap_or_else(|| TokioInstant::now() + Duration::from_secs(3600));
            let join_report = self
                .join_report_at
                .unwrap_or_else(|| TokioInstant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                event = self.net_events.recv() => {
                    let Some(event) = event else {
                        warn!("network layer stopped");
                        break;
                    };
                    // Everything that is waiting: failure-detector messages first, the rest
                    // into the backlog, handled in slices below.
                    self.handle_net_event(event);
                    for _ in 0..NET_BATCH {
                        match self.net_events.try_recv() {
                            Ok(event) => self.handle_net_event(event),
                            Err(_) => break,
                        }
                    }
                }
                command = self.commands.recv() => match command {
                    Some(command) => {
                        if let Some(deadline) = self.handle_command(command) {
                            leave_deadline.get_or_insert(deadline);
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(timer) => {
                    self.node.handle_timeout(self.clock.now());
                }
                _ = tokio::time::sleep_until(linger), if leave_deadline.is_some() => {
                    break;
                }
                _ = tokio::time::sleep_until(join_report), if self.join_report_at.is_some() => {
                    self.join_report_at = None;
                    self.report_join("has not joined");
                }
                _ = contact_tick.tick() => self.note_contact(),
                _ = clock_tick.tick() => self.refresh_clock(),
                changed = self.shutdown.changed() => {
                    if (changed.is_err() || *self.shutdown.borrow()) && leave_deadline.is_none() {
                        info!("leaving the cluster");
                        self.node.leave(self.clock.now());
                        leave_deadline = Some(TokioInstant::now() + LEAVE_LINGER);
                    }
                }
                () = std::future::ready(()), if !self.backlog.is_empty() => {}
            }
            self.handle_backlog();
            self.drain();
        }
        self.note_contact();
        self.flush();
        for reply in self.leave_replies.drain(..) {
            let _ = reply.send(());
        }
        // Close the persistence channel and wait for the last commit.
        let (dead_tx, _) = std::sync::mpsc::channel();
        drop(std::mem::replace(&mut self.persist, dead_tx));
        if let Some(thread) = self.persist_thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.publish(true);
    }

    /// Handles a network event: a failure-detector message at once, other messages later
    /// ([`Driver::handle_backlog`]).
    fn handle_net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::Message { from, addr, bytes } => {
                if shoal_gossip::message::is_probe(&bytes) {
                    self.node.handle_message(&addr, &bytes, self.clock.now());
                } else {
                    if self.backlog.len() >= BACKLOG_MAX {
                        // Far behind: the oldest goes (gossip resends, anti-entropy repairs).
                        self.backlog.pop_front();
                        self.backlog_dropped += 1;
                    }
                    self.backlog.push_back((addr, bytes));
                    // The transport authenticated the sender: it is alive now, whatever the
                    // state restored from disk said.
                    if self.heard.insert(from) {
                        self.pending_changes.push(Change::Heard(from));
                    }
                }
            }
            NetEvent::Discovered { addr } => {
                if self.node.live_count() <= 1 {
                    info!(%addr, "discovered a peer on the local network; joining");
                    self.node.join(vec![addr], self.clock.now());
                }
            }
            NetEvent::PeerRefused { peer, reason } => {
                debug!(%peer, reason, "peer refused");
            }
            NetEvent::RefusedBy { peer, addr, reason } => {
                if self.note_join_failure(&addr, true, &reason) {
                    if self.join.joining {
                        error!(peer = %addr, peer_id = %peer, "cannot join through {addr}: {reason}");
                    } else {
                        error!(peer = %addr, peer_id = %peer, "peer {addr} refused this node: {reason}");
                    }
                }
                self.check_join_hopeless();
            }
            NetEvent::Unreachable { addr, reason } => {
                if self.join.joining && self.join.peers.contains(&addr) {
                    if self.note_join_failure(&addr, false, &reason) {
                        warn!(peer = %addr, "cannot reach {addr} to join: {reason}");
                    }
                    self.check_join_hopeless();
                }
            }
        }
    }

    /// Starts following a join through `peers`.
    fn start_join(&mut self, peers: &[String]) {
        let me = self.node.identity().addr.clone();
        self.join = JoinStatus {
            peers: peers.iter().filter(|p| **p != me).cloned().collect(),
            joining: true,
            failures: Vec::new(),
        };
        self.join.joining = !self.join.peers.is_empty();
        self.join_summary_logged = false;
        self.join_report_at = self
            .join
            .joining
            .then(|| TokioInstant::now() + JOIN_REPORT_AFTER);
        self.view_dirty = true;
    }

    /// Records a failure of `peer` in the join status; true if it should be logged now.
    fn note_join_failure(&mut self, peer: &str, refused: bool, reason: &str) -> bool {
        let now_ms = wall_ms();
        match self.join.failures.iter_mut().find(|f| f.peer == peer) {
            Some(f) => {
                f.refused = refused;
                f.reason = reason.to_owned();
                f.count += 1;
                f.last_ms = now_ms;
            }
            None => {
                if self.join.failures.len() >= MAX_JOIN_FAILURES {
                    self.join.failures.remove(0);
                }
                self.join.failures.push(JoinFailure {
                    peer: peer.to_owned(),
                    refused,
                    reason: reason.to_owned(),
                    count: 1,
                    last_ms: now_ms,
                });
            }
        }
        self.view_dirty = true;
        let now = TokioInstant::now();
        match self.join_logged.get(peer) {
            Some(at) if now.duration_since(*at) < JOIN_LOG_INTERVAL => false,
            _ => {
                if self.join_logged.len() >= MAX_JOIN_FAILURES {
                    self.join_logged.clear();
                }
                self.join_logged.insert(peer.to_owned(), now);
                true
            }
        }
    }

    /// Says so, once per join, when every peer it joins through refused it or could not be
    /// reached.
    fn check_join_hopeless(&mut self) {
        if self.join.joining
            && !self.join_summary_logged
            && self
                .join
                .peers
                .iter()
                .all(|p| self.join.failures.iter().any(|f| f.peer == *p))
        {
            self.report_join("cannot join the cluster");
        }
    }

    /// Logs, if the node still joins, why each peer it joins through has not accepted it.
    fn report_join(&mut self, what: &str) {
        if !self.join.joining || self.node.live_count() > 1 {
            return;
        }
        self.join_summary_logged = true;
        let peers: Vec<String> = self
            .join
            .peers
            .iter()
            .map(|p| match self.join.failures.iter().find(|f| f.peer == *p) {
                Some(f) if f.refused => format!("{p} refused it: {}", f.reason),
                Some(f) => format!("{p} is unreachable: {}", f.reason),
                None => format!("{p} has not answered"),
            })
            .collect();
        error!(
            peers = ?self.join.peers,
            "{what}: {}; this node runs alone until a peer accepts it, and keeps trying",
            peers.join("; ")
        );
    }

    /// Handles backlogged messages for at most [`BACKLOG_SLICE`], so that the loop comes back
    /// to probes and timers in time however much state arrives.
    fn handle_backlog(&mut self) {
        let started = std::time::Instant::now();
        while let Some((addr, bytes)) = self.backlog.pop_front() {
            self.node.handle_message(&addr, &bytes, self.clock.now());
            if started.elapsed() >= BACKLOG_SLICE {
                break;
            }
        }
    }

    /// Handles an API command; returns the linger deadline when it was a leave.
    fn handle_command(&mut self, command: Command) -> Option<TokioInstant> {
        let now = self.clock.now();
        match command {
            Command::Join(peers) => {
                info!(?peers, "joining");
                self.start_join(&peers);
                self.node.join(peers, now);
            }
            Command::Leave(reply) => {
                self.leave_replies.push(reply);
                if !self.node.is_leaving() {
                    info!("leaving the cluster on request");
                    self.node.leave(now);
                    return Some(TokioInstant::now() + LEAVE_LINGER);
                }
            }
            Command::Write { key, value, reply } => {
                match self
                    .disk_allows()
                    .and_then(|()| Ok(self.node.write_object(key, value, now)?))
                {
                    Ok(entry) => self.pending_acks.push(Ack::Object(reply, entry)),
                    Err(refused) => {
                        let _ = reply.send(Err(refused));
                    }
                }
            }
            Command::WriteMany { writes, reply } => {
                match self
                    .disk_allows()
                    .and_then(|()| Ok(self.node.write_objects(writes, now)?))
                {
                    Ok(entries) => self.pending_acks.push(Ack::Objects(reply, entries)),
                    Err(refused) => {
                        let _ = reply.send(Err(refused));
                    }
                }
            }
            Command::Get { key, reply } => {
                let entry = self.node.store().get(&Key::Object(key)).cloned();
                let _ = reply.send(entry);
            }
            Command::List {
                kind,
                namespace,
                reply,
            } => {
                let items = self
                    .node
                    .store()
                    .range_objects(&kind, namespace.as_deref())
                    .filter(|(_, e)| e.value.is_some())
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect();
                let _ = reply.send(items);
            }
            Command::WriteOwned { name, value, reply } => {
                let entry = self.node.write_owned(name, value, now);
                self.pending_acks.push(Ack::Owned(reply, entry));
            }
            Command::WriteOwnedMany { writes, reply } => {
                // Every write is flushed with the ack below, so one ack covers them all.
                let last = writes
                    .into_iter()
                    .map(|(name, value)| self.node.write_owned(name, value, now))
                    .last();
                if let Some(entry) = last {
                    self.pending_acks.push(Ack::Owned(reply, entry));
                }
            }
            Command::Stats(reply) => {
                let _ = reply.send(AgentStats {
                    gossip: GossipStats::from(self.node.stats()),
                    net: self.net.metrics(),
                    persisted_batches: self.persisted_batches,
                    live_members: self.node.live_count(),
                    queued_updates: self.node.queued_updates(),
                    local_health: self.node.local_health(),
                    incarnation: self.node.incarnation(),
                    backlog: self.backlog.len(),
                    backlog_dropped: self.backlog_dropped,
                    join: self.join.clone(),
                    writes_refused_disk: self.writes_refused_disk,
                    state_digest: state_digest(self.node.store()),
                    entries: self.node.store().len(),
                    disk: DiskStatus::clone(&self.disk.borrow()),
                });
            }
        }
        None
    }

    /// Drains the node's outputs after an input.
    fn drain(&mut self) {
        while let Some(transmit) = self.node.poll_transmit() {
            self.net.send(transmit.to, &transmit.addr, transmit.bytes);
        }
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::EntryChanged(key) => {
                    self.note_change(&key);
                    self.dirty.insert(key);
                }
                Event::MemberChanged(member) => {
                    if member.id != self.node.identity().id {
                        info!(
                            node = %member.name,
                            id = %member.id,
                            state = member.state.as_str(),
                            incarnation = member.incarnation,
                            addr = %member.addr,
                            "member changed"
                        );
                    }
                    self.since.insert(member.id, wall_ms());
                    self.view_dirty = true;
                    self.members_changed = true;
                }
                Event::Joined { via } => {
                    info!(via = %via, "joined the cluster");
                    self.note_contact();
                    self.join.joining = false;
                    self.join.failures.clear();
                    self.join_report_at = None;
                    self.view_dirty = true;
                }
                Event::Synced => {
                    info!("synchronised with the cluster");
                    self.view_dirty = true;
                    self.queue_meta(META_SYNCED, vec![1]);
                }
            }
        }
        if !self.dirty.is_empty() || !self.pending_acks.is_empty() {
            self.flush();
        }
        if self.view_dirty {
            self.publish(false);
        }
        self.send_changes();
    }

    /// Notes a changed entry for the subscriber (its new bytes), if it wants it.
    fn note_change(&mut self, key: &Key) {
        if !(self.subscriber.wants)(key) {
            return;
        }
        let value = self.node.store().get(key).and_then(|e| e.value.clone());
        let change = match key {
            Key::Owned { owner, name } => Change::Owned {
                owner: *owner,
                name: name.clone(),
                value,
            },
            Key::Object(object) => Change::Object {
                key: object.clone(),
                value,
            },
            Key::Member(_) => return,
        };
        self.pending_changes.push(change);
    }

    /// Sends the subscriber what changed since the last call.
    fn send_changes(&mut self) {
        if self.members_changed {
            self.members_changed = false;
            let members = self
                .node
                .members()
                .map(|m| MemberFacts {
                    id: m.id,
                    name: m.name.clone(),
                    addr: m.addr.clone(),
                    state: m.state,
                    heard: self.heard.contains(&m.id),
                })
                .collect();
            self.pending_changes.push(Change::Members(members));
        }
        if !self.pending_changes.is_empty() {
            let changes = std::mem::take(&mut self.pending_changes);
            let _ = self.subscriber.changes_tx.send(changes);
        }
    }

    /// Sends the subscriber every entry it wants (at start: the restored state).
    fn send_whole_state(&mut self) {
        let wants = self.subscriber.wants;
        let keys: Vec<Key> = self
            .node
            .store()
            .iter()
            .map(|(k, _)| k)
            .filter(|k| wants(k))
            .cloned()
            .collect();
        for key in keys {
            self.note_change(&key);
        }
        self.members_changed = true;
        self.send_changes();
    }

    fn queue_meta(&mut self, key: &'static str, value: Vec<u8>) {
        let _ = self.persist.send(Batch {
            changes: Vec::new(),
            meta: vec![(key, value)],
            acks: Vec::new(),
        });
    }

    /// Remembers that we are in contact with the cluster (for the stale-node rule).
    fn note_contact(&mut self) {
        if self.node.live_count() > 1 {
            let now = wall_ms();
            if now.saturating_sub(self.last_contact_saved) >= 10_000 {
                self.last_contact_saved = now;
                self.queue_meta(META_LAST_CONTACT, now.to_le_bytes().to_vec());
            }
        }
    }

    /// Whether the disk takes object writes (checked before a write is made, so that a write
    /// refused for the disk is not made at all).
    fn disk_allows(&mut self) -> Result<(), WriteError> {
        match self.disk.borrow().refusal() {
            None => Ok(()),
            Some(refused) => {
                self.writes_refused_disk += 1;
                Err(WriteError::Disk(refused))
            }
        }
    }

    /// Sends changed entries (and acks waiting on them) to the persistence thread.
    fn flush(&mut self) {
        let store = self.node.store();
        let changes: Vec<(Key, Option<Entry>)> = std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|key| {
                let entry = store.get(&key).cloned();
                (key, entry)
            })
            .collect();
        let acks = std::mem::take(&mut self.pending_acks);
        if changes.is_empty() && acks.is_empty() {
            return;
        }
        self.persisted_batches += 1;
        if self
            .persist
            .send(Batch {
                changes,
                meta: Vec::new(),
                acks,
            })
            .is_err()
        {
            warn!("persistence thread is gone; changes are not saved");
        }
    }

    /// Refreshes the clock view and says when this node's clock, or a member's, is off:
    /// O(members), once a second.
    fn refresh_clock(&mut self) {
        let now = self.clock.now();
        let status = self.node.clock_status(now);
        let max_offset_ms = self.node.config().max_clock_offset.as_millis() as u64;
        let offsets: BTreeMap<NodeId, (i64, u64)> = self.node.clock_offsets(now).collect();
        match &status.verdict {
            ClockVerdict::Off {
                skew_ms,
                agree,
                measured,
            } => {
                let due = self
                    .clock_logged
                    .is_none_or(|at| at.elapsed() >= CLOCK_LOG_INTERVAL);
                if due {
                    self.clock_logged = Some(TokioInstant::now());
                    error!(
                        skew_ms,
                        agree,
                        members = measured + 1,
                        max_offset_ms,
                        "this node's clock is off from the cluster's: writes through it are \
                         refused until it agrees again (fix its time, e.g. with NTP)"
                    );
                }
            }
            ClockVerdict::Agrees | ClockVerdict::NotCompared => {
                if self.clock_logged.take().is_some() {
                    info!("this node's clock agrees with the cluster's again: writes accepted");
                }
            }
        }
        // A member far from us (half the maximum) is worth a warning once, whoever is wrong.
        for (id, (offset, _)) in &offsets {
            let far = offset.unsigned_abs() > max_offset_ms / 2;
            if far && self.clock_warned.insert(*id) {
                let name = self
                    .node
                    .member(id)
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                warn!(
                    member = %name,
                    offset_ms = offset,
                    max_offset_ms,
                    "a member's clock is far from this node's"
                );
            } else if !far {
                self.clock_warned.remove(id);
            }
        }
        self.clock_warned.retain(|id| offsets.contains_key(id));
        // Offsets move by a millisecond or two between refreshes: always a new view.
        self.clock_view.send_replace(Arc::new(ClockView {
            max_offset_ms,
            status: Some(status),
            offsets,
        }));
    }

    fn publish(&mut self, stopped: bool) {
        self.view_dirty = false;
        let me = self.node.identity().id;
        let members = self
            .node
            .members()
            .map(|m| MemberView {
                id: m.id,
                name: m.name.clone(),
                addr: m.addr.clone(),
                incarnation: m.incarnation,
                state: if stopped && m.id == me {
                    MemberState::Left
                } else {
                    m.state
                },
                since_ms: self.since.get(&m.id).copied().unwrap_or(self.started_ms),
                local: m.id == me,
            })
            .collect();
        let view = ClusterView {
            members,
            join: self.join.clone(),
        };
        self.view.send_replace(Arc::new(view));
    }
}
