//! One node's gossip protocol: a sans-IO state machine.
//!
//! [`Node`] owns the replicated [`Store`], the local view of members, the SWIM prober and the
//! dissemination queue. Inputs come in through `handle_*` calls ([`Node::handle_message`],
//! [`Node::handle_timeout`]) and local operations ([`Node::join`], [`Node::leave`],
//! [`Node::write_object`] ...); outputs go out through [`Node::poll_transmit`],
//! [`Node::poll_event`] and [`Node::poll_timeout`]. Time is always an argument and randomness
//! comes from the generic `R`, so the same code runs under the tokio driver and under the
//! deterministic simulator.
//!
//! # Protocols
//! - **Membership** (SWIM with Lifeguard): every protocol period (`probe_interval`, shorter
//!   above 100 members, scaled by the local health multiplier) one live member, in a shuffled round-robin order, gets a ping; no ack within
//!   `probe_timeout` sends `indirect_probes` ping requests through other members, which answer
//!   with the relayed ack or a nack. A probe that ends without ack makes the target *suspect*.
//!   A suspicion becomes *dead* after a timeout that starts at `suspicion_max_mult` times the
//!   minimum and shrinks as independent suspicions confirm it; the suspect refutes by raising
//!   its incarnation. Dead members are pinged at a low rate, and any message from a member we
//!   consider suspect or dead is answered with that verdict, so it refutes and partitions heal.
//! - **State**: the [`Store`] holds membership records, node-owned entries and objects; every
//!   change goes through [`Store::merge`], so the order messages arrive in does not matter.
//! - **Dissemination**: a fresh update is pushed at once to `eager_fanout` members by every node
//!   that learns it, then gossiped every `gossip_interval` and piggybacked on probes until each
//!   node has sent it `retransmit_limit(n)` times. Periodic delta anti-entropy (fingerprints of
//!   a 64 x 64 tree, then only differing entries) repairs whatever was missed, and a joining
//!   node pulls the whole state in chunks.
//!
//! # Invariants
//! - Only this node writes its own membership record; anything else said about it is refuted.
//! - No panic on any input bytes; malformed input is dropped and counted in [`Stats`].
//! - Ordinary messages fit `max_message_size`; larger ones are fragmented.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, RngExt};

use crate::clock::{ClockOffsets, ClockRefusal, ClockStatus, ClockVerdict};
use crate::config::Config;
use crate::hlc::{Hlc, HlcClock};
use crate::id::NodeId;
use crate::member::{Member, MemberRecord, MemberState};
use crate::message::{self, Body, ENVELOPE_OVERHEAD, Envelope, LeafDigest, Update, encoded_len};
use crate::store::{Entry, Key, MergeGuard, MergeOutcome, ObjectKey, Store, Version};
use crate::time::{Instant, Now};

use crate::broadcast::BroadcastQueue;

/// Most top buckets answered in one anti-entropy round.
const MAX_SYNC_TOPS: usize = 16;
/// Most leaves compared in one anti-entropy round.
const MAX_SYNC_LEAVES: usize = 256;
/// Most incomplete fragmented messages kept at once.
const MAX_PARTIAL_MESSAGES: usize = 64;

/// Who this node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Its key.
    pub id: NodeId,
    /// Its human-readable name.
    pub name: String,
    /// The address others reach its gossip endpoint at.
    pub addr: String,
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The recipient, when known (a join goes to an address whose node is not known yet).
    pub to: Option<NodeId>,
    /// The recipient's address.
    pub addr: String,
    /// The encoded message, at most `max_message_size` bytes.
    pub bytes: Vec<u8>,
}

/// Something the rest of the agent may want to react to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member was added or changed state or incarnation (this node included).
    MemberChanged(Member),
    /// An entry of the store was created, replaced or removed (by a local write, a remote
    /// update or garbage collection). Read its value with [`Node::store`].
    EntryChanged(Key),
    /// A join request was accepted by `via`; bulk catch-up from it starts.
    Joined {
        /// The member that accepted.
        via: NodeId,
    },
    /// The first complete synchronisation with the cluster finished.
    Synced,
}

/// Counters of what the node did and what it refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages handed to the transport.
    pub msgs_sent: u64,
    /// Bytes handed to the transport.
    pub bytes_sent: u64,
    /// Messages received.
    pub msgs_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Received byte strings that were not a valid message (dropped).
    pub decode_errors: u64,
    /// Pings addressed to another node, and fragments that did not reassemble (dropped).
    pub misdirected: u64,
    /// Updates that were well-formed messages but invalid entries (dropped).
    pub invalid_updates: u64,
    /// Entries refused because they could only be resurrections of collected deletions.
    pub refused_resurrections: u64,
    /// Incomplete fragmented messages dropped.
    pub fragments_dropped: u64,
    /// Messages too large to send even fragmented (dropped).
    pub oversized: u64,
    /// Times this node refuted a suspicion or death of itself.
    pub refutations: u64,
    /// Suspicions this node raised after failed probes.
    pub suspicions_raised: u64,
    /// Members this node declared dead.
    pub deaths_declared: u64,
    /// Remote timestamps more than the allowed skew ahead of the local wall clock.
    pub clock_skew_warnings: u64,
    /// Object writes refused because this node's clock disagreed with its members'.
    pub writes_refused_clock: u64,
}

/// What merging one update did.
enum Outcome {
    /// News: applied (or a new confirmation); to be spread.
    Fresh(Update),
    /// The sender is behind: here is our newer entry.
    Behind(Update),
    /// Nothing to do.
    Nothing,
}

/// What merging a batch of updates did.
#[derive(Default)]
struct Merged {
    fresh: Vec<Update>,
    newer: Vec<Update>,
}

#[derive(Debug)]
struct Probe {
    seq: u32,
    target: NodeId,
    direct_deadline: Instant,
    indirect_sent: bool,
    expected_nacks: u32,
    nacks: u32,
    acked: bool,
    /// When the ping left: its ack measures the target's clock.
    sent: Instant,
}

#[derive(Debug)]
struct IndirectProbe {
    requester: NodeId,
    requester_addr: String,
    requester_seq: u32,
    nack_at: Instant,
    nacked: bool,
    expires: Instant,
}

#[derive(Debug)]
struct Suspicion {
    incarnation: u64,
    started: Instant,
    confirmers: BTreeSet<NodeId>,
    deadline: Instant,
}

#[derive(Debug)]
struct JoinAttempt {
    seeds: Vec<String>,
    delay: Duration,
    next_at: Instant,
    /// When the last join was sent: the ack measures the answering seed's clock.
    sent_at: Instant,
}

#[derive(Debug)]
struct Bulk {
    id: u32,
    peer: NodeId,
    addr: String,
    after: Option<Key>,
    deadline: Instant,
}

#[derive(Debug)]
struct Partial {
    count: u16,
    parts: BTreeMap<u16, Vec<u8>>,
    size: usize,
    expires: Instant,
}

/// One node of the gossip protocol. See the module documentation.
pub struct Node<R> {
    config: Config,
    me: Identity,
    rng: R,
    store: Store,
    hlc: HlcClock,
    /// The members' clocks against ours, from the acks of direct probes.
    clocks: ClockOffsets,
    incarnation: u64,
    leaving: bool,
    members: BTreeMap<NodeId, Member>,
    /// Alive and suspect members other than this node, for random choices.
    live: Vec<NodeId>,
    probe_order: Vec<NodeId>,
    probe_index: usize,
    probe: Option<Probe>,
    indirect: BTreeMap<u32, IndirectProbe>,
    suspicions: BTreeMap<NodeId, Suspicion>,
    /// Lifeguard's local health multiplier: 0 is healthy.
    health: u32,
    seq: u32,
    queue: BroadcastQueue,
    join: Option<JoinAttempt>,
    bulk: Option<Bulk>,
    synced: bool,
    fragments: BTreeMap<(NodeId, u32), Partial>,
    /// The latest time the caller passed in.
    last_seen: Instant,
    next_probe_at: Instant,
    next_gossip_at: Instant,
    next_dead_probe_at: Instant,
    next_sync_at: Instant,
    next_gc_at: Instant,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl<R: Rng> Node<R> {
    /// A new node that knows only itself. Call [`Node::restore`] to load persisted state and
    /// [`Node::join`] to contact the cluster.
    pub fn new(config: Config, me: Identity, rng: R, now: Now) -> Self {
        let mono = now.mono;
        let mut node = Node {
            next_probe_at: mono + config.probe_interval,
            next_gossip_at: mono + config.gossip_interval,
            next_dead_probe_at: mono + config.dead_probe_interval,
            next_sync_at: mono + config.anti_entropy_interval,
            next_gc_at: mono + config.gc_interval,
            config,
            me,
            rng,
            store: Store::new(),
            hlc: HlcClock::new(),
            clocks: ClockOffsets::default(),
            incarnation: 0,
            leaving: false,
            members: BTreeMap::new(),
            live: Vec::new(),
            probe_order: Vec::new(),
            probe_index: 0,
            probe: None,
            indirect: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            health: 0,
            seq: 0,
            queue: BroadcastQueue::default(),
            join: None,
            bulk: None,
            synced: false,
            fragments: BTreeMap::new(),
            last_seen: mono,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        };
        // Spread the periodic timers of nodes started together over their periods.
        let jitter = |rng: &mut R, d: Duration| {
            Duration::from_micros(rng.random_range(0..=d.as_micros() as u64))
        };
        node.next_probe_at = mono + jitter(&mut node.rng, node.config.probe_interval);
        node.next_sync_at = mono + jitter(&mut node.rng, node.config.anti_entropy_interval);
        node.next_dead_probe_at = mono + jitter(&mut node.rng, node.config.dead_probe_interval);
        node.write_own_record(now, false);
        node
    }

    /// Loads persisted state (entries saved from [`Event::EntryChanged`]) before the node
    /// talks to anyone. This node's own membership record, if present, only raises its
    /// incarnation: a restarted node starts one incarnation above its last life, so whatever
    /// the cluster said of it then is overridden. `synced` says whether the node had completed
    /// a synchronisation before it stopped.
    pub fn restore(&mut self, updates: impl IntoIterator<Item = Update>, synced: bool, now: Now) {
        let mut last_incarnation = None;
        for (key, entry) in updates {
            if key == Key::Member(self.me.id) {
                if let Version::Member { incarnation, .. } = entry.version {
                    last_incarnation = Some(incarnation.max(last_incarnation.unwrap_or(0)));
                }
                continue;
            }
            self.observe_entry_clock(&entry, now);
            if self.store.merge(key, entry, MergeGuard::default()).is_err() {
                self.stats.invalid_updates += 1;
            }
        }
        self.rebuild_member_view(now.mono);
        self.synced = synced;
        if let Some(incarnation) = last_incarnation {
            self.incarnation = self.incarnation.max(incarnation + 1);
            self.write_own_record(now, false);
        }
        self.rebuild_live();
    }

    /// Replaces the node's state with `store` (which must hold this node's own record, as a
    /// copy of a running cluster's state does). For simulations that start many nodes from the
    /// same state: cloning one store is much cheaper than merging every entry into each node.
    pub fn restore_store(&mut self, store: Store, synced: bool, now: Now) {
        let own = Key::Member(self.me.id);
        let own_entry = self.own_entry();
        self.store = store;
        if self.store.get(&own) != Some(&own_entry) {
            // Not our current record: take ours (written just now, so it is the greater).
            let _ = self.store.merge(own, own_entry, MergeGuard::default());
        }
        self.rebuild_member_view(now.mono);
        self.synced = synced;
        self.rebuild_live();
    }

    /// Rebuilds the view of members from the store's membership records.
    fn rebuild_member_view(&mut self, now: Instant) {
        self.members.clear();
        let members: Vec<(NodeId, Entry)> = self
            .store
            .members()
            .map(|(id, e)| (id, e.clone()))
            .collect();
        for (id, entry) in members {
            if let Some(record) = entry.value.as_deref().and_then(MemberRecord::decode) {
                self.set_member_view(id, &entry, record, now);
            }
        }
    }

    /// Starts joining through any of `seeds` (addresses). Join requests are resent with
    /// exponential back-off until one member accepts; then the state is pulled in bulk.
    pub fn join(&mut self, seeds: Vec<String>, now: Now) {
        if self.leaving {
            self.leaving = false;
            self.incarnation += 1;
            self.write_own_record(now, true);
        }
        let seeds: Vec<String> = seeds.into_iter().filter(|s| *s != self.me.addr).collect();
        if seeds.is_empty() {
            return;
        }
        self.join = Some(JoinAttempt {
            seeds,
            delay: self.config.join_retry_min,
            next_at: now.mono,
            sent_at: now.mono,
        });
        self.handle_timeout(now);
    }

    /// Leaves the cluster gracefully: the node announces `left` to several members at once.
    /// Keep driving the node for a moment (a few round trips) so the announcement spreads,
    /// then drop it.
    pub fn leave(&mut self, now: Now) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        self.join = None;
        self.probe = None;
        // Queued and pushed to twice the usual fanout: the announcement must get out before
        // the process stops.
        self.write_own_record(now, true);
        self.push_to_random(self.config.eager_fanout, None, 1);
    }

    /// Writes (or with `None`, deletes) an object any node may write. The write is stamped
    /// with this node's hybrid logical clock, applied locally and pushed to the cluster at
    /// once. Returns the entry as stored. Refused, with nothing written, while this node's
    /// clock disagrees with its members' or has not been compared with its live peers yet
    /// (see [`crate::clock`]): a write stamped by a clock that is off could undo later ones.
    pub fn write_object(
        &mut self,
        key: ObjectKey,
        value: Option<Vec<u8>>,
        now: Now,
    ) -> Result<Entry, ClockRefusal> {
        self.clock_allows_writes(now)?;
        Ok(self.stamp_object(key, value, now))
    }

    /// Writes several objects, all or none (see [`Node::write_object`]).
    pub fn write_objects(
        &mut self,
        writes: Vec<(ObjectKey, Option<Vec<u8>>)>,
        now: Now,
    ) -> Result<Vec<Entry>, ClockRefusal> {
        self.clock_allows_writes(now)?;
        Ok(writes
            .into_iter()
            .map(|(key, value)| self.stamp_object(key, value, now))
            .collect())
    }

    fn clock_allows_writes(&mut self, now: Now) -> Result<(), ClockRefusal> {
        let status = self.clock_status(now);
        match status.verdict {
            ClockVerdict::Agrees => Ok(()),
            ClockVerdict::NotCompared | ClockVerdict::Off { .. } => {
                self.stats.writes_refused_clock += 1;
                Err(ClockRefusal(status))
            }
        }
    }

    fn stamp_object(&mut self, key: ObjectKey, value: Option<Vec<u8>>, now: Now) -> Entry {
        let hlc = self.hlc.now(now.wall_ms);
        let entry = Entry {
            version: Version::Object {
                hlc,
                writer: self.me.id,
            },
            written_at: hlc,
            value,
        };
        self.write_local(Key::Object(key), entry.clone(), now);
        entry
    }

    /// This node's clock against its members' (see [`crate::clock`]): whether it may stamp
    /// object writes now.
    pub fn clock_status(&self, now: Now) -> ClockStatus {
        let max_offset = self.config.max_clock_offset.as_millis() as u64;
        self.clocks.status(now, max_offset, !self.live.is_empty())
    }

    /// Every member's clock this node measured since it started: its clock minus ours, in
    /// milliseconds, and the round trip it was measured over.
    pub fn clock_offsets(&self, now: Now) -> impl Iterator<Item = (NodeId, (i64, u64))> + '_ {
        self.clocks.offsets(now)
    }

    /// Writes (or with `None`, deletes) an entry this node owns, under `name`. Versioned by
    /// this node alone: each write gets the next version of that key.
    pub fn write_owned(&mut self, name: String, value: Option<Vec<u8>>, now: Now) -> Entry {
        let key = Key::Owned {
            owner: self.me.id,
            name,
        };
        let version = match self.store.get(&key).map(|e| e.version) {
            Some(Version::Owned { version }) => version + 1,
            _ => 1,
        };
        let entry = Entry {
            version: Version::Owned { version },
            written_at: self.hlc.now(now.wall_ms),
            value,
        };
        self.write_local(key, entry.clone(), now);
        entry
    }

    fn write_local(&mut self, key: Key, entry: Entry, now: Now) {
        self.last_seen = self.last_seen.max(now.mono);
        match self
            .store
            .merge(key.clone(), entry.clone(), MergeGuard::default())
        {
            Ok(MergeOutcome::Applied { .. }) => {
                self.events.push_back(Event::EntryChanged(key.clone()));
                self.queue_update((key, entry));
                self.push_to_random(self.config.eager_fanout, None, 1);
            }
            Ok(_) | Err(_) => {
                // A local write always carries a version above what the store holds (HLC and
                // owner counters only grow), so this is unreachable short of a clock bug;
                // nothing is sent.
                debug_assert!(false, "local write not applied");
            }
        }
    }

    /// Handles bytes received from `src_addr`. Never panics; invalid bytes are counted and
    /// dropped.
    pub fn handle_message(&mut self, src_addr: &str, bytes: &[u8], now: Now) {
        self.last_seen = self.last_seen.max(now.mono);
        self.stats.msgs_received += 1;
        self.stats.bytes_received += bytes.len() as u64;
        let envelope = match message::decode(bytes) {
            Ok(envelope) => envelope,
            Err(_) => {
                self.stats.decode_errors += 1;
                return;
            }
        };
        if envelope.from == self.me.id {
            return;
        }
        self.dispatch(src_addr, envelope, now, true);
    }

    fn dispatch(&mut self, src_addr: &str, envelope: Envelope, now: Now, outer: bool) {
        let from = envelope.from;
        match envelope.body {
            Body::Ping {
                seq,
                target,
                updates,
            } => {
                if target != self.me.id {
                    self.stats.misdirected += 1;
                    return;
                }
                let merged = self.apply_updates(updates, now, true);
                // The ack carries our verdict on the sender first, then whatever fits.
                let prefix: Vec<Update> = self.verdict_for(from).into_iter().collect();
                let updates = self.piggyback(prefix, ENVELOPE_OVERHEAD + 8);
                self.send_to(
                    Some(from),
                    src_addr.to_owned(),
                    Body::Ack {
                        seq,
                        wall_ms: now.wall_ms,
                        updates,
                    },
                );
                self.send_packed(from, src_addr, merged.newer, |updates| Body::Correction {
                    updates,
                });
                self.eager_push(merged.fresh, Some(from));
            }
            Body::Ack {
                seq,
                wall_ms,
                updates,
            } => {
                // Only the target's own answer to our ping measures its clock (a relayed ack
                // carries the relay's).
                if let Some(probe) = self
                    .probe
                    .as_ref()
                    .filter(|p| p.seq == seq && p.target == from)
                {
                    self.clocks.record(from, wall_ms, probe.sent, now);
                }
                self.handle_ack(seq, now);
                self.absorb(from, src_addr, updates, now);
            }
            Body::PingReq {
                seq,
                target,
                target_addr,
                updates,
            } => {
                self.absorb(from, src_addr, updates, now);
                if target != self.me.id {
                    let probe_seq = self.next_seq();
                    self.indirect.insert(
                        probe_seq,
                        IndirectProbe {
                            requester: from,
                            requester_addr: src_addr.to_owned(),
                            requester_seq: seq,
                            nack_at: now.mono + self.scaled(self.config.probe_timeout).mul_f64(0.8),
                            nacked: false,
                            expires: now.mono + self.scaled(self.period()),
                        },
                    );
                    self.send_ping(probe_seq, target, target_addr);
                }
            }
            Body::Nack { seq } => {
                if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    probe.nacks += 1;
                }
            }
            Body::Gossip { updates } => {
                self.absorb(from, src_addr, updates, now);
                self.tell_verdict(from, src_addr);
            }
            Body::Join {
                me: (key, entry),
                wall_ms,
            } => {
                if key != Key::Member(from) {
                    self.stats.invalid_updates += 1;
                    return;
                }
                let merged = self.apply_updates(vec![(key, entry)], now, true);
                // The joiner's clock, within the one-way delay; its probes refine it.
                self.clocks.record(from, wall_ms, now.mono, now);
                self.send_to(
                    Some(from),
                    src_addr.to_owned(),
                    Body::JoinAck {
                        wall_ms: now.wall_ms,
                    },
                );
                self.eager_push(merged.fresh, Some(from));
            }
            Body::JoinAck { wall_ms } => {
                if let Some(join) = self.join.take() {
                    self.clocks.record(from, wall_ms, join.sent_at, now);
                    self.events.push_back(Event::Joined { via: from });
                    self.request_bulk(from, src_addr.to_owned(), None, now);
                }
            }
            Body::BulkRequest { id, after } => {
                let (entries, done) = self.bulk_chunk(after.as_ref());
                self.send_to(
                    Some(from),
                    src_addr.to_owned(),
                    Body::BulkChunk { id, entries, done },
                );
            }
            Body::BulkChunk { id, entries, done } => {
                if !self
                    .bulk
                    .as_ref()
                    .is_some_and(|b| b.id == id && b.peer == from)
                {
                    return;
                }
                let last = entries.last().map(|(k, _)| k.clone());
                // Catch-up entries are old news for everyone else: merge, do not spread.
                self.apply_updates(entries, now, false);
                if done {
                    self.bulk = None;
                    self.mark_synced();
                } else if let Some(last) = last {
                    self.request_bulk(from, src_addr.to_owned(), Some(last), now);
                } else {
                    // An empty chunk that is not the last: a confused peer. Retry later.
                }
            }
            Body::SyncRoot { fingerprints } => self.handle_sync_root(from, src_addr, &fingerprints),
            Body::SyncTops { tops } => self.handle_sync_tops(from, src_addr, tops),
            Body::SyncLeaves { leaves } => self.handle_sync_leaves(from, src_addr, leaves),
            Body::SyncWant { keys } => self.handle_sync_want(from, src_addr, keys),
            Body::Correction { updates } => {
                // Repair of what we sent stale: the cluster has it already, so merge without
                // spreading (spreading would answer lag with more traffic, which a slow node
                // turns into a feedback loop).
                self.apply_updates(updates, now, false);
            }
            Body::SyncEntries { entries } => {
                // Anti-entropy already sends both ways what differs: no corrections here.
                let merged = self.apply_updates(entries, now, true);
                self.eager_push(merged.fresh, Some(from));
            }
            Body::Fragment {
                id,
                index,
                count,
                data,
            } => {
                if !outer {
                    self.stats.misdirected += 1;
                    return;
                }
                if let Some(bytes) = self.reassemble(from, id, index, count, data, now.mono) {
                    match message::decode(&bytes) {
                        Ok(inner) if inner.from == from => {
                            self.dispatch(src_addr, inner, now, false)
                        }
                        _ => self.stats.decode_errors += 1,
                    }
                }
            }
        }
    }

    /// Fires every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        self.last_seen = self.last_seen.max(now.mono);
        let t = now.mono;
        if let Some(join) = self.join.as_mut().filter(|j| j.next_at <= t) {
            join.next_at = t + join.delay;
            join.delay = (join.delay * 2).min(self.config.join_retry_max);
            join.sent_at = t;
            let seeds = join.seeds.clone();
            let me = (Key::Member(self.me.id), self.own_entry());
            for seed in seeds {
                self.send_to(
                    None,
                    seed,
                    Body::Join {
                        me: me.clone(),
                        wall_ms: now.wall_ms,
                    },
                );
            }
        }
        if self.leaving {
            if t >= self.next_gossip_at {
                self.next_gossip_at = t + self.config.gossip_interval;
                self.push_to_random(
                    self.config.gossip_fanout,
                    None,
                    self.config.gossip_round_messages,
                );
            }
            return;
        }
        // Probing.
        let mut send_indirect = None;
        if let Some(probe) = self.probe.as_mut() {
            if !probe.acked && !probe.indirect_sent && t >= probe.direct_deadline {
                probe.indirect_sent = true;
                send_indirect = Some((probe.seq, probe.target));
            }
        }
        if let Some((seq, target)) = send_indirect {
            self.send_ping_reqs(seq, target);
        }
        if t >= self.next_probe_at {
            self.finish_probe(now);
            self.next_probe_at = t + self.scaled(self.period());
            self.start_probe(t);
        }
        // Indirect probes on behalf of others.
        let mut nacks = Vec::new();
        self.indirect.retain(|_, p| {
            if !p.nacked && t >= p.nack_at {
                p.nacked = true;
                nacks.push((p.requester, p.requester_addr.clone(), p.requester_seq));
            }
            t < p.expires
        });
        for (to, addr, seq) in nacks {
            self.send_to(Some(to), addr, Body::Nack { seq });
        }
        // Suspicions that ran out.
        let expired: Vec<(NodeId, u64)> = self
            .suspicions
            .iter()
            .filter(|(_, s)| t >= s.deadline)
            .map(|(id, s)| (*id, s.incarnation))
            .collect();
        for (id, incarnation) in expired {
            self.suspicions.remove(&id);
            self.declare(id, incarnation, MemberState::Dead, now);
        }
        // Periodic gossip of what is still queued. Alone, a node keeps nothing queued: the
        // updates are in its store, and whoever joins or comes back later gets them by
        // anti-entropy (a one-node cluster would otherwise queue every change it ever makes).
        if self.live.is_empty() && self.join.is_none() {
            self.queue.clear();
        }
        if t >= self.next_gossip_at {
            self.next_gossip_at = t + self.config.gossip_interval;
            if !self.queue.is_empty() {
                self.push_to_random(
                    self.config.gossip_fanout,
                    None,
                    self.config.gossip_round_messages,
                );
            }
        }
        // Dead members are pinged now and then, so partitions heal by themselves.
        if t >= self.next_dead_probe_at {
            self.next_dead_probe_at = t + self.config.dead_probe_interval;
            let dead: Vec<NodeId> = self
                .members
                .values()
                .filter(|m| m.state == MemberState::Dead)
                .map(|m| m.id)
                .collect();
            if !dead.is_empty() {
                let target = dead[self.rng.random_range(0..dead.len())];
                let addr = self.members[&target].addr.clone();
                let seq = self.next_seq();
                self.send_ping(seq, target, addr);
            }
        }
        // Anti-entropy with one random member.
        if t >= self.next_sync_at {
            self.next_sync_at = t + self.config.anti_entropy_interval;
            if let Some(peer) = self.sample_live(1, &[]).first().copied() {
                let fingerprints = self.store.root_fingerprints().to_vec();
                self.send(peer, Body::SyncRoot { fingerprints });
            }
        }
        // Bulk catch-up requests that went unanswered.
        if let Some((after, last_peer, last_addr)) = self
            .bulk
            .as_ref()
            .filter(|b| t >= b.deadline)
            .map(|b| (b.after.clone(), b.peer, b.addr.clone()))
        {
            // Try another member if we know one by now, else the same again.
            let other = self.sample_live(1, &[last_peer]).first().copied();
            let (peer, addr) = match other.and_then(|p| self.members.get(&p)) {
                Some(m) => (m.id, m.addr.clone()),
                None => (last_peer, last_addr),
            };
            self.request_bulk(peer, addr, after, now);
        }
        // Incomplete fragmented messages.
        let before = self.fragments.len();
        self.fragments.retain(|_, p| p.expires > t);
        self.stats.fragments_dropped += (before - self.fragments.len()) as u64;
        // Garbage collection of old tombstones and long-gone members.
        if t >= self.next_gc_at {
            self.next_gc_at = t + self.config.gc_interval;
            self.collect_garbage(now);
        }
    }

    /// The next moment [`Node::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.join.as_ref().map(|j| j.next_at);
        let mut consider = |t: Instant| {
            next = Some(next.map_or(t, |n: Instant| n.min(t)));
        };
        if let Some(bulk) = &self.bulk {
            consider(bulk.deadline);
        }
        if self.leaving {
            if !self.queue.is_empty() {
                consider(self.next_gossip_at);
            }
            return next;
        }
        if let Some(probe) = self.probe.as_ref().filter(|p| !p.acked && !p.indirect_sent) {
            consider(probe.direct_deadline);
        }
        consider(self.next_probe_at);
        for p in self.indirect.values() {
            consider(if p.nacked { p.expires } else { p.nack_at });
        }
        for s in self.suspicions.values() {
            consider(s.deadline);
        }
        if !self.queue.is_empty() {
            consider(self.next_gossip_at);
        }
        consider(self.next_dead_probe_at);
        consider(self.next_sync_at);
        consider(self.next_gc_at);
        for p in self.fragments.values() {
            consider(p.expires);
        }
        next
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// This node's identity.
    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// This node's current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The replicated state as this node holds it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Every member this node knows, itself included, in id order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// One member as this node sees it.
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.get(id)
    }

    /// Number of alive and suspect members, this node included.
    pub fn live_count(&self) -> usize {
        self.live.len() + usize::from(!self.leaving)
    }

    /// Lifeguard's local health multiplier (0 = healthy, up to `max_local_health`).
    pub fn local_health(&self) -> u32 {
        self.health
    }

    /// Whether the node has completed a synchronisation with the cluster.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Whether [`Node::leave`] was called.
    pub fn is_leaving(&self) -> bool {
        self.leaving
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of updates waiting for (re)transmission.
    pub fn queued_updates(&self) -> usize {
        self.queue.len()
    }

    // ---- membership ------------------------------------------------------------------------

    fn own_state(&self) -> MemberState {
        if self.leaving {
            MemberState::Left
        } else {
            MemberState::Alive
        }
    }

    fn own_entry(&self) -> Entry {
        self.store
            .get(&Key::Member(self.me.id))
            .cloned()
            .expect("own record is always in the store")
    }

    /// Writes this node's membership record for the current incarnation and state.
    fn write_own_record(&mut self, now: Now, disseminate: bool) {
        let state = self.own_state();
        let record = MemberRecord {
            name: self.me.name.clone(),
            addr: self.me.addr.clone(),
            by: None,
        };
        let entry = Entry {
            version: Version::Member {
                incarnation: self.incarnation,
                rank: state.rank(),
            },
            written_at: self.hlc.now(now.wall_ms),
            value: Some(record.encode()),
        };
        let key = Key::Member(self.me.id);
        // Our own record is the only one we never take from others, so it replaces whatever
        // the store holds: remove by merging a strictly greater version.
        match self
            .store
            .merge(key.clone(), entry.clone(), MergeGuard::default())
        {
            Ok(MergeOutcome::Applied { .. }) => {}
            _ => {
                // The store holds something at least as great: a record from a previous life.
                // Raise the incarnation above it and write again.
                if let Some(Version::Member { incarnation, .. }) =
                    self.store.get(&key).map(|e| e.version)
                {
                    self.incarnation = incarnation + 1;
                    return self.write_own_record(now, disseminate);
                }
            }
        }
        self.set_member_view(self.me.id, &entry, record, now.mono);
        self.events.push_back(Event::EntryChanged(key.clone()));
        if disseminate {
            self.queue_update((key, entry));
            self.push_to_random(self.config.eager_fanout, None, 1);
        }
    }

    /// Something was said about this node. Anything that is not exactly our own current
    /// record, and not older, is refuted with a higher incarnation; an older claim is answered
    /// with our current record.
    fn handle_self_record(&mut self, entry: &Entry, now: Now) -> Outcome {
        let Version::Member { incarnation, rank } = entry.version else {
            self.stats.invalid_updates += 1;
            return Outcome::Nothing;
        };
        let ours = (self.incarnation, self.own_state().rank());
        if (incarnation, rank) < ours {
            return Outcome::Behind((Key::Member(self.me.id), self.own_entry()));
        }
        if (incarnation, rank) == ours {
            return Outcome::Nothing;
        }
        if rank == MemberState::Suspect.rank() {
            self.health = (self.health + 1).min(self.config.max_local_health);
        }
        self.stats.refutations += 1;
        self.incarnation = self.incarnation.max(incarnation) + 1;
        self.write_own_record(now, true);
        Outcome::Nothing
    }

    /// Declares `id` suspect or dead at `incarnation`, as this node's own verdict.
    fn declare(&mut self, id: NodeId, incarnation: u64, state: MemberState, now: Now) {
        let Some(member) = self.members.get(&id) else {
            return;
        };
        let record = MemberRecord {
            name: member.name.clone(),
            addr: member.addr.clone(),
            by: Some(self.me.id),
        };
        let addr = member.addr.clone();
        let entry = Entry {
            version: Version::Member {
                incarnation,
                rank: state.rank(),
            },
            written_at: self.hlc.now(now.wall_ms),
            value: Some(record.encode()),
        };
        match state {
            MemberState::Suspect => self.stats.suspicions_raised += 1,
            MemberState::Dead => self.stats.deaths_declared += 1,
            _ => {}
        }
        let merged = self.apply_updates(vec![(Key::Member(id), entry.clone())], now, true);
        if state == MemberState::Suspect {
            // Tell the suspect directly too: the sooner it hears, the sooner it refutes.
            self.send_to(
                Some(id),
                addr,
                Body::Gossip {
                    updates: vec![(Key::Member(id), entry)],
                },
            );
        }
        self.eager_push(merged.fresh, None);
    }

    /// Updates the local view of a member from its (already merged) record.
    fn set_member_view(&mut self, id: NodeId, entry: &Entry, record: MemberRecord, now: Instant) {
        let Version::Member { incarnation, rank } = entry.version else {
            return;
        };
        let Some(state) = MemberState::from_rank(rank) else {
            return;
        };
        let previous = self.members.get(&id);
        let changed = previous.is_none_or(|m| {
            m.state != state || m.incarnation != incarnation || m.addr != record.addr
        });
        if !changed {
            return;
        }
        let was_live = previous.is_some_and(|m| m.state.is_live());
        let member = Member {
            id,
            name: record.name,
            addr: record.addr,
            incarnation,
            state,
            since: now,
        };
        self.members.insert(id, member.clone());
        if id != self.me.id && was_live != state.is_live() {
            // `live` is kept sorted by id, as a rebuild from `members` would give.
            match (self.live.binary_search(&id), state.is_live()) {
                (Err(at), true) => self.live.insert(at, id),
                (Ok(at), false) => {
                    self.live.remove(at);
                }
                _ => {}
            }
        }
        self.events.push_back(Event::MemberChanged(member));
    }

    fn rebuild_live(&mut self) {
        self.live = self
            .members
            .values()
            .filter(|m| m.id != self.me.id && m.state.is_live())
            .map(|m| m.id)
            .collect();
    }

    /// A member's record, to tell it what we think of it when we do not think it alive.
    fn verdict_for(&self, id: NodeId) -> Option<Update> {
        let member = self.members.get(&id)?;
        if member.state == MemberState::Alive {
            return None;
        }
        let entry = self.store.get(&Key::Member(id))?.clone();
        Some((Key::Member(id), entry))
    }

    /// Sends a member our non-alive verdict on it, so it can refute.
    fn tell_verdict(&mut self, id: NodeId, addr: &str) {
        if let Some(verdict) = self.verdict_for(id) {
            self.send_to(
                Some(id),
                addr.to_owned(),
                Body::Gossip {
                    updates: vec![verdict],
                },
            );
        }
    }

    fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let n = self.live.len() + 1;
        let min = self.config.suspicion_min(n);
        let max = min * self.config.suspicion_max_mult;
        let k = (self.config.suspicion_confirmations as usize).min(n.saturating_sub(2));
        if k == 0 {
            return min;
        }
        let fraction = ((confirmations as f64) + 1.0).ln() / ((k as f64) + 1.0).ln();
        max.saturating_sub((max - min).mul_f64(fraction.min(1.0)))
            .max(min)
    }

    /// The protocol period for the cluster's size now.
    fn period(&self) -> Duration {
        self.config.probe_interval_for(self.live.len() + 1)
    }

    fn scaled(&self, d: Duration) -> Duration {
        d * (self.health + 1)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn start_probe(&mut self, now: Instant) {
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let seq = self.next_seq();
        let addr = self.members[&target].addr.clone();
        self.send_ping(seq, target, addr);
        self.probe = Some(Probe {
            seq,
            target,
            direct_deadline: now + self.scaled(self.config.probe_timeout),
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
            acked: false,
            sent: now,
        });
    }

    fn next_probe_target(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while self.probe_index < self.probe_order.len() {
                let id = self.probe_order[self.probe_index];
                self.probe_index += 1;
                if self.members.get(&id).is_some_and(|m| m.state.is_live()) {
                    return Some(id);
                }
            }
            self.probe_order = self.live.clone();
            self.probe_order.shuffle(&mut self.rng);
            self.probe_index = 0;
        }
        None
    }

    fn send_ping(&mut self, seq: u32, target: NodeId, addr: String) {
        // A suspect or dead target learns our verdict with the ping, so it can refute at once
        // (Lifeguard's "buddy system").
        let mut prefix = Vec::new();
        if let Some(verdict) = self.verdict_for(target) {
            prefix.push(verdict);
        }
        let updates = self.piggyback(prefix, ENVELOPE_OVERHEAD + 8 + 34);
        self.send_to(
            Some(target),
            addr,
            Body::Ping {
                seq,
                target,
                updates,
            },
        );
    }

    fn send_ping_reqs(&mut self, seq: u32, target: NodeId) {
        let Some(addr) = self.members.get(&target).map(|m| m.addr.clone()) else {
            return;
        };
        let helpers = self.sample_live(self.config.indirect_probes, &[target]);
        if let Some(probe) = self.probe.as_mut() {
            probe.expected_nacks = helpers.len() as u32;
        }
        for helper in helpers {
            let updates = self.piggyback(Vec::new(), ENVELOPE_OVERHEAD + 8 + 34 + addr.len());
            self.send(
                helper,
                Body::PingReq {
                    seq,
                    target,
                    target_addr: addr.clone(),
                    updates,
                },
            );
        }
    }

    fn handle_ack(&mut self, seq: u32, now: Now) {
        if let Some(probe) = self.probe.as_mut().filter(|p| p.seq == seq) {
            if !probe.acked {
                probe.acked = true;
                self.health = self.health.saturating_sub(1);
            }
            return;
        }
        if let Some(relay) = self.indirect.remove(&seq) {
            self.send_to(
                Some(relay.requester),
                relay.requester_addr,
                Body::Ack {
                    seq: relay.requester_seq,
                    wall_ms: now.wall_ms,
                    updates: Vec::new(),
                },
            );
        }
    }

    fn finish_probe(&mut self, now: Now) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        if probe.acked {
            return;
        }
        // Lifeguard: with helpers that should nack, every missing nack hints that our own
        // links are the problem; without helpers, any failed probe counts against us.
        let penalty = if probe.expected_nacks > 0 {
            probe.expected_nacks.saturating_sub(probe.nacks)
        } else {
            1
        };
        self.health = (self.health + penalty).min(self.config.max_local_health);
        let Some(member) = self.members.get(&probe.target) else {
            return;
        };
        if member.state.is_live() {
            let incarnation = member.incarnation;
            self.declare(probe.target, incarnation, MemberState::Suspect, now);
        }
    }

    // ---- state and dissemination -----------------------------------------------------------

    fn guard(&self, now: Now) -> MergeGuard {
        if !self.synced {
            return MergeGuard::default();
        }
        let grace = self.config.tombstone_grace.as_millis() as u64;
        MergeGuard {
            horizon: Some(Hlc {
                wall_ms: now.wall_ms.saturating_sub(grace),
                logical: 0,
            }),
        }
    }

    fn observe_entry_clock(&mut self, entry: &Entry, now: Now) {
        if let Version::Object { hlc, .. } = entry.version {
            if self.hlc.observe(hlc, now.wall_ms).skewed {
                self.stats.clock_skew_warnings += 1;
            }
        }
    }

    /// Merges gossiped updates from `from`, answers what it sent that we know newer versions
    /// of, and pushes what was news.
    fn absorb(&mut self, from: NodeId, src_addr: &str, updates: Vec<Update>, now: Now) {
        let merged = self.apply_updates(updates, now, true);
        self.send_packed(from, src_addr, merged.newer, |updates| Body::Correction {
            updates,
        });
        self.eager_push(merged.fresh, Some(from));
    }

    /// Merges updates from the network. `fresh` are those that were news (applied, or a new
    /// confirmation of a suspicion); when `disseminate`, they are also queued for gossip.
    /// `newer` holds our entries for keys the sender is behind on: answering a stale update
    /// with the newer one repairs a node that missed a change (say, a refutation) as soon as
    /// it gossips, instead of at its next anti-entropy round.
    fn apply_updates(&mut self, updates: Vec<Update>, now: Now, disseminate: bool) -> Merged {
        let mut merged = Merged::default();
        for (key, entry) in updates {
            match self.apply_update(key, entry, now) {
                Outcome::Fresh(update) => merged.fresh.push(update),
                Outcome::Behind(update) => merged.newer.push(update),
                Outcome::Nothing => {}
            }
        }
        if disseminate {
            for update in &merged.fresh {
                self.queue_update(update.clone());
            }
        }
        merged
    }

    fn apply_update(&mut self, key: Key, entry: Entry, now: Now) -> Outcome {
        let member_record = match &key {
            Key::Member(id) if *id == self.me.id => {
                return self.handle_self_record(&entry, now);
            }
            Key::Member(_) => {
                let Version::Member { rank, .. } = entry.version else {
                    self.stats.invalid_updates += 1;
                    return Outcome::Nothing;
                };
                let record = entry.value.as_deref().and_then(MemberRecord::decode);
                match record {
                    Some(record) if MemberState::from_rank(rank).is_some() => Some(record),
                    _ => {
                        self.stats.invalid_updates += 1;
                        return Outcome::Nothing;
                    }
                }
            }
            _ => None,
        };
        self.observe_entry_clock(&entry, now);
        let guard = self.guard(now);
        match self.store.merge(key.clone(), entry.clone(), guard) {
            Ok(MergeOutcome::Applied { .. }) => {
                if let (Key::Member(id), Some(record)) = (&key, member_record) {
                    self.on_member_record(*id, &entry, record, now);
                }
                self.events.push_back(Event::EntryChanged(key.clone()));
                Outcome::Fresh((key, entry))
            }
            Ok(outcome @ (MergeOutcome::Stale | MergeOutcome::Duplicate)) => {
                let ours = self.store.get(&key).cloned();
                // Another member's independent suspicion of a member we suspect confirms it
                // (Lifeguard) and is worth spreading, even if the store keeps its first record.
                if let (Key::Member(id), Some(record)) = (&key, member_record) {
                    if let (Version::Member { incarnation, rank }, Some(by)) =
                        (entry.version, record.by)
                    {
                        if rank == MemberState::Suspect.rank()
                            && by != self.me.id
                            && self.confirm_suspicion(*id, incarnation, by)
                        {
                            return Outcome::Fresh((key, entry));
                        }
                    }
                }
                // The sender is behind: for membership, only when our incarnation or state is
                // ahead (a record differing only in who declared it is no news).
                let behind = outcome == MergeOutcome::Stale
                    && ours
                        .as_ref()
                        .is_some_and(|ours| match (ours.version, entry.version) {
                            (Version::Member { .. }, theirs) => ours.version > theirs,
                            _ => true,
                        });
                match ours {
                    Some(ours) if behind => Outcome::Behind((key, ours)),
                    _ => Outcome::Nothing,
                }
            }
            Ok(MergeOutcome::RefusedResurrection) => {
                self.stats.refused_resurrections += 1;
                Outcome::Nothing
            }
            Err(_) => {
                self.stats.invalid_updates += 1;
                Outcome::Nothing
            }
        }
    }

    /// A member record was applied to the store: update the view and the suspicion timers.
    fn on_member_record(&mut self, id: NodeId, entry: &Entry, record: MemberRecord, now: Now) {
        let Version::Member { incarnation, rank } = entry.version else {
            return;
        };
        let by = record.by;
        self.set_member_view(id, entry, record, now.mono);
        match MemberState::from_rank(rank) {
            Some(MemberState::Suspect) => {
                let restart = self
                    .suspicions
                    .get(&id)
                    .is_none_or(|s| s.incarnation != incarnation);
                if restart {
                    let timeout = self.suspicion_timeout(0);
                    let mut confirmers = BTreeSet::new();
                    confirmers.extend(by);
                    self.suspicions.insert(
                        id,
                        Suspicion {
                            incarnation,
                            started: now.mono,
                            confirmers,
                            deadline: now.mono + timeout,
                        },
                    );
                } else if let Some(by) = by {
                    self.confirm_suspicion(id, incarnation, by);
                }
            }
            Some(MemberState::Left) => {
                self.suspicions.remove(&id);
                self.clocks.forget(id);
            }
            _ => {
                self.suspicions.remove(&id);
            }
        }
    }

    /// Counts `by` as confirming the suspicion of `id`; returns whether it was new.
    fn confirm_suspicion(&mut self, id: NodeId, incarnation: u64, by: NodeId) -> bool {
        let Some(suspicion) = self.suspicions.get(&id) else {
            return false;
        };
        if suspicion.incarnation != incarnation || suspicion.confirmers.contains(&by) {
            return false;
        }
        // The first suspector started the timer; later ones confirm it.
        let confirmations = suspicion.confirmers.len();
        let timeout = self.suspicion_timeout(confirmations);
        let suspicion = self.suspicions.get_mut(&id).expect("present");
        suspicion.confirmers.insert(by);
        suspicion.deadline = suspicion.started + timeout;
        true
    }

    fn queue_update(&mut self, update: Update) {
        if self.queue.is_empty() {
            // The update is pushed eagerly now; the first periodic round is one interval away.
            self.next_gossip_at = self
                .next_gossip_at
                .max(self.last_seen + self.config.gossip_interval);
        }
        self.queue.push(update);
    }

    /// Pushes fresh updates at once to `eager_fanout` members other than the one they came from.
    fn eager_push(&mut self, fresh: Vec<Update>, from: Option<NodeId>) {
        if fresh.is_empty() {
            return;
        }
        self.push_to_random(self.config.eager_fanout, from, 1);
    }

    /// Sends queued updates (fewest-sent first) to `fanout` random live members, up to
    /// `messages` messages each. Members take turns message by message, so that each gets
    /// the updates sent fewest times when the queue runs dry before the last message.
    fn push_to_random(&mut self, fanout: usize, exclude: Option<NodeId>, messages: usize) {
        let exclude: Vec<NodeId> = exclude.into_iter().collect();
        let peers = self.sample_live(fanout, &exclude);
        let limit = self.config.retransmit_limit(self.live.len() + 1);
        let budget = self.budget(ENVELOPE_OVERHEAD);
        for _ in 0..messages.max(1) {
            for &peer in &peers {
                let updates = self.queue.take(budget, limit, &[], true);
                if updates.is_empty() {
                    return;
                }
                self.send(peer, Body::Gossip { updates });
            }
        }
    }

    /// Builds the updates of a probe message: `prefix` first, then queued updates that fit.
    fn piggyback(&mut self, prefix: Vec<Update>, base: usize) -> Vec<Update> {
        let used: usize = prefix.iter().map(encoded_len).sum();
        let budget = self.budget(base).saturating_sub(used);
        let skip: Vec<Key> = prefix.iter().map(|(k, _)| k.clone()).collect();
        let limit = self.config.retransmit_limit(self.live.len() + 1);
        let mut updates = prefix;
        updates.extend(self.queue.take(budget, limit, &skip, false));
        updates
    }

    fn budget(&self, base: usize) -> usize {
        self.config.max_message_size.get().saturating_sub(base)
    }

    fn sample_live(&mut self, k: usize, exclude: &[NodeId]) -> Vec<NodeId> {
        let n = self.live.len();
        let want = (k + exclude.len()).min(n);
        let picks = rand::seq::index::sample(&mut self.rng, n, want);
        picks
            .into_iter()
            .map(|i| self.live[i])
            .filter(|id| !exclude.contains(id))
            .take(k)
            .collect()
    }

    // ---- bulk catch-up ---------------------------------------------------------------------

    fn request_bulk(&mut self, peer: NodeId, addr: String, after: Option<Key>, now: Now) {
        let id = self.next_seq();
        self.bulk = Some(Bulk {
            id,
            peer,
            addr: addr.clone(),
            after: after.clone(),
            deadline: now.mono + self.config.bulk_request_timeout,
        });
        self.send_to(Some(peer), addr, Body::BulkRequest { id, after });
    }

    /// The entries after `after`, in key order, that fit one message (at least one).
    fn bulk_chunk(&self, after: Option<&Key>) -> (Vec<Update>, bool) {
        let budget = self.budget(ENVELOPE_OVERHEAD + 8);
        let mut used = 0;
        let mut entries = Vec::new();
        for (key, entry) in self.store.iter_after(after) {
            let size = encoded_len(key) + encoded_len(entry);
            if !entries.is_empty() && used + size > budget {
                return (entries, false);
            }
            used += size;
            entries.push((key.clone(), entry.clone()));
        }
        (entries, true)
    }

    fn mark_synced(&mut self) {
        if !self.synced {
            self.synced = true;
            self.events.push_back(Event::Synced);
        }
    }

    // ---- anti-entropy ----------------------------------------------------------------------

    fn handle_sync_root(&mut self, from: NodeId, addr: &str, theirs: &[u64]) {
        let ours = self.store.root_fingerprints();
        if theirs.len() != ours.len() {
            self.stats.invalid_updates += 1;
            return;
        }
        let differing: Vec<u8> = (0..ours.len())
            .filter(|&t| ours[t] != theirs[t])
            .take(MAX_SYNC_TOPS)
            .map(|t| t as u8)
            .collect();
        if differing.is_empty() {
            // In sync with a member: our picture is as complete as the cluster's.
            self.mark_synced();
            return;
        }
        let tops: Vec<(u8, Vec<u64>)> = differing
            .into_iter()
            .map(|t| (t, self.store.bucket_fingerprints(t).to_vec()))
            .collect();
        self.send_packed(from, addr, tops, |tops| Body::SyncTops { tops });
    }

    fn handle_sync_tops(&mut self, from: NodeId, addr: &str, tops: Vec<(u8, Vec<u64>)>) {
        let mut leaves: Vec<((u8, u8), LeafDigest)> = Vec::new();
        for (top, theirs) in tops.into_iter().take(MAX_SYNC_TOPS) {
            if top >= 64 || theirs.len() != 64 {
                self.stats.invalid_updates += 1;
                return;
            }
            let ours = self.store.bucket_fingerprints(top);
            for sub in 0..64u8 {
                if ours[sub as usize] != theirs[sub as usize] && leaves.len() < MAX_SYNC_LEAVES {
                    leaves.push(((top, sub), self.store.leaf_digest(top, sub)));
                }
            }
        }
        self.send_packed(from, addr, leaves, |leaves| Body::SyncLeaves { leaves });
    }

    fn handle_sync_leaves(
        &mut self,
        from: NodeId,
        addr: &str,
        leaves: Vec<((u8, u8), LeafDigest)>,
    ) {
        let mut send: Vec<Update> = Vec::new();
        let mut want: Vec<((u8, u8), u64)> = Vec::new();
        for ((top, sub), theirs) in leaves.into_iter().take(MAX_SYNC_LEAVES) {
            if top >= 64 || sub >= 64 {
                self.stats.invalid_updates += 1;
                return;
            }
            let theirs: BTreeMap<u64, u64> = theirs.into_iter().collect();
            let mut ours = BTreeMap::new();
            for (key, entry) in self.store.leaf_items(top, sub) {
                let (key_hash, item_hash) = crate::store::digest_of(key, entry);
                ours.insert(key_hash, item_hash);
                if theirs.get(&key_hash) != Some(&item_hash) {
                    send.push((key.clone(), entry.clone()));
                }
            }
            for (key_hash, item_hash) in theirs {
                if ours.get(&key_hash) != Some(&item_hash) {
                    want.push(((top, sub), key_hash));
                }
            }
        }
        self.send_packed(from, addr, send, |entries| Body::SyncEntries { entries });
        self.send_packed(from, addr, want, |keys| Body::SyncWant { keys });
    }

    fn handle_sync_want(&mut self, from: NodeId, addr: &str, keys: Vec<((u8, u8), u64)>) {
        let mut send: Vec<Update> = Vec::new();
        for ((top, sub), wanted) in keys.into_iter().take(MAX_SYNC_LEAVES * 8) {
            if top >= 64 || sub >= 64 {
                self.stats.invalid_updates += 1;
                return;
            }
            for (key, entry) in self.store.leaf_items(top, sub) {
                if crate::store::digest_of(key, entry).0 == wanted {
                    send.push((key.clone(), entry.clone()));
                }
            }
        }
        self.send_packed(from, addr, send, |entries| Body::SyncEntries { entries });
    }

    /// Sends `items` in as few messages as fit the size limit (an item too big for one message
    /// goes alone, fragmented).
    fn send_packed<T: serde::Serialize>(
        &mut self,
        to: NodeId,
        addr: &str,
        items: Vec<T>,
        body: impl Fn(Vec<T>) -> Body,
    ) {
        let budget = self.budget(ENVELOPE_OVERHEAD + 8);
        let mut batch = Vec::new();
        let mut used = 0;
        for item in items {
            let size = encoded_len(&item);
            if !batch.is_empty() && used + size > budget {
                self.send_to(Some(to), addr.to_owned(), body(std::mem::take(&mut batch)));
                used = 0;
            }
            used += size;
            batch.push(item);
        }
        if !batch.is_empty() {
            self.send_to(Some(to), addr.to_owned(), body(batch));
        }
    }

    fn collect_garbage(&mut self, now: Now) {
        let grace = self.config.tombstone_grace.as_millis() as u64;
        let horizon = Hlc {
            wall_ms: now.wall_ms.saturating_sub(grace),
            logical: 0,
        };
        let removed = self.store.gc(horizon);
        if removed.is_empty() {
            return;
        }
        for key in removed {
            if let Key::Member(id) = &key {
                self.members.remove(id);
                self.suspicions.remove(id);
                self.clocks.forget(*id);
            }
            self.events.push_back(Event::EntryChanged(key));
        }
        self.rebuild_live();
    }

    // ---- sending ---------------------------------------------------------------------------

    fn send(&mut self, to: NodeId, body: Body) {
        let Some(addr) = self.members.get(&to).map(|m| m.addr.clone()) else {
            return;
        };
        self.send_to(Some(to), addr, body);
    }

    fn send_to(&mut self, to: Option<NodeId>, addr: String, body: Body) {
        let bytes = message::encode(&Envelope {
            from: self.me.id,
            body,
        });
        let max = self.config.max_message_size.get();
        if bytes.len() <= max {
            self.emit(to, addr, bytes);
            return;
        }
        // Fragment: each piece carries a slice of the encoded message.
        let chunk = max.saturating_sub(ENVELOPE_OVERHEAD + 16).max(64);
        let count = bytes.len().div_ceil(chunk);
        if count > u16::MAX as usize || bytes.len() > self.config.max_reassembled_size {
            self.stats.oversized += 1;
            return;
        }
        let id = self.next_seq();
        for (index, data) in bytes.chunks(chunk).enumerate() {
            let fragment = message::encode(&Envelope {
                from: self.me.id,
                body: Body::Fragment {
                    id,
                    index: index as u16,
                    count: count as u16,
                    data: data.to_vec(),
                },
            });
            self.emit(to, addr.clone(), fragment);
        }
    }

    fn emit(&mut self, to: Option<NodeId>, addr: String, bytes: Vec<u8>) {
        self.stats.msgs_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.outbox.push_back(Transmit { to, addr, bytes });
    }

    fn reassemble(
        &mut self,
        from: NodeId,
        id: u32,
        index: u16,
        count: u16,
        data: Vec<u8>,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let max_parts = self.config.max_reassembled_size / 64 + 1;
        if count < 2 || index >= count || count as usize > max_parts {
            self.stats.misdirected += 1;
            return None;
        }
        if !self.fragments.contains_key(&(from, id)) && self.fragments.len() >= MAX_PARTIAL_MESSAGES
        {
            // Drop the oldest incomplete message to make room.
            let oldest = self
                .fragments
                .iter()
                .min_by_key(|(_, p)| p.expires)
                .map(|(k, _)| *k)?;
            self.fragments.remove(&oldest);
            self.stats.fragments_dropped += 1;
        }
        let expires = now + self.config.fragment_timeout;
        let partial = self.fragments.entry((from, id)).or_insert(Partial {
            count,
            parts: BTreeMap::new(),
            size: 0,
            expires,
        });
        if partial.count != count {
            self.fragments.remove(&(from, id));
            self.stats.fragments_dropped += 1;
            return None;
        }
        if partial.parts.contains_key(&index) {
            return None;
        }
        partial.size += data.len();
        partial.parts.insert(index, data);
        if partial.size > self.config.max_reassembled_size {
            self.fragments.remove(&(from, id));
            self.stats.fragments_dropped += 1;
            return None;
        }
        if partial.parts.len() < count as usize {
            return None;
        }
        let partial = self.fragments.remove(&(from, id))?;
        Some(partial.parts.into_values().flatten().collect())
    }
}
