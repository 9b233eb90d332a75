//! A deterministic simulator: many copies of the real [`Node`] in one process.
//!
//! Virtual time (microseconds), one seed from which every node's seed and every network
//! decision derive, and a priority queue of timed deliveries and timers (ordered by time, then
//! by insertion, so the same seed replays the same run bit for bit). Every message goes through
//! [`Node::poll_transmit`] as encoded bytes and through [`Node::handle_message`] as bytes, as it
//! would on the wire. The network has latency with jitter, loss, partitions, crashes (the
//! node's memory is lost), pauses (like SIGSTOP: nothing is handled until it resumes, then the
//! backlog is) and slow nodes (every message they receive is handled late).
//!
//! Timers follow the sans-IO contract: after every input the node's [`Node::poll_timeout`] is
//! read and a timer event with a new generation is queued; a timer whose generation is not the
//! node's current one is stale and ignored.
//!
//! [`Sim`] measures what `shoal sim` reports ([`Report`]); [`Scenario`] runs scripted operations
//! with assertions for tests.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::clock::ClockRefusal;
use crate::config::Config;
use crate::id::NodeId;
use crate::member::MemberState;
use crate::node::{Event, Identity, Node};
use crate::store::{Entry, Key, ObjectKey, Version};
use crate::time::{Instant, Now};

/// Wall-clock time of the simulated epoch (milliseconds since the Unix epoch), so HLC stamps
/// look like real ones.
const EPOCH_MS: u64 = 1_767_225_600_000;
/// Most messages a paused node buffers (like a socket receive buffer); more are dropped.
const PAUSE_BUFFER: usize = 4096;

/// How the simulated network and cluster behave.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes at the start.
    pub nodes: usize,
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Smallest one-way latency.
    pub latency_min: Duration,
    /// Largest one-way latency (uniform between the two).
    pub latency_max: Duration,
    /// Probability that a message is lost, 0.0 to 1.0.
    pub loss: f64,
    /// Extra delay before a slow node handles each message it receives.
    pub slow_delay: Duration,
    /// Each node's wall clock is off by a uniform amount in `[-skew, +skew]` (HLC input).
    pub clock_skew: Duration,
    /// The gossip configuration every node runs.
    pub gossip: Config,
}

impl SimConfig {
    /// A busy LAN or Wi-Fi: one-way latency 1-10 ms, no loss, slow nodes 1 s late.
    pub fn lan(nodes: usize, seed: u64) -> Self {
        SimConfig {
            nodes,
            seed,
            latency_min: Duration::from_millis(1),
            latency_max: Duration::from_millis(10),
            loss: 0.0,
            slow_delay: Duration::from_secs(1),
            clock_skew: Duration::ZERO,
            gossip: Config::lan(nodes),
        }
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Deliver {
        to: usize,
        from_addr: String,
        bytes: Vec<u8>,
    },
    Timer {
        node: usize,
        generation: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Up,
    Paused,
    Crashed,
}

struct SimNode {
    identity: Identity,
    node: Option<Node<ChaCha8Rng>>,
    health: Health,
    slow: bool,
    skew_ms: i64,
    timer_generation: u64,
    timer_at: Option<Instant>,
    backlog: VecDeque<(String, Vec<u8>)>,
    killed_at: Option<Instant>,
}

/// One tracked write: who wrote what when, and when each node first held it.
struct TrackedWrite {
    at: Instant,
    version: Version,
    reached: Vec<Option<Instant>>,
}

struct TrackedKill {
    target: usize,
    at: Instant,
    seen_dead: Vec<Option<Instant>>,
}

/// The simulation.
pub struct Sim {
    config: SimConfig,
    now: Instant,
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<(Instant, u64, Action)>>,
    next_seq: u64,
    nodes: Vec<SimNode>,
    by_addr: BTreeMap<String, usize>,
    by_id: BTreeMap<NodeId, usize>,
    /// Partition group of each node while a partition is on.
    partition: Option<Vec<u32>>,
    /// Groups of the last partition, kept after healing to attribute dead marks.
    last_partition: Option<Vec<u32>>,
    loss: f64,
    writes: Vec<TrackedWrite>,
    write_index: BTreeMap<ObjectKey, usize>,
    kills: Vec<TrackedKill>,
    /// Healthy (never killed, never slowed) nodes some node marked dead, and when.
    false_dead: BTreeSet<usize>,
    /// Dead marks explained by a partition (observer and target on different sides).
    partition_dead_marks: u64,
    /// Suspicion episodes `(target, incarnation)` of healthy nodes.
    healthy_suspicions: BTreeSet<(usize, u64)>,
    /// Suspicion episodes and dead marks of slow nodes.
    slow_suspicions: BTreeSet<(usize, u64)>,
    slow_dead: BTreeSet<(usize, u64)>,
    msgs: u64,
    bytes: u64,
    /// Largest message sent, in bytes.
    max_message: usize,
    dropped: u64,
    write_counter: u64,
    writes_refused: u64,
    /// State of crashed nodes as they had persisted it.
    persisted: BTreeMap<usize, Vec<crate::message::Update>>,
    /// Member and object changes seen by nodes, kept for [`Sim::take_observations`] when
    /// asked for with [`Sim::keep_observations`].
    observations: Option<Vec<Observation>>,
}

/// A change one node saw: its membership view or an object in its store changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// When.
    pub at: Instant,
    /// The node that saw it.
    pub node: usize,
    /// What changed.
    pub what: Observed,
}

/// What an [`Observation`] is about.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// The node now sees this member in this state.
    Member {
        /// The member.
        id: NodeId,
        /// Its state as the node sees it.
        state: MemberState,
    },
    /// An object of the node's store changed; `entry` is what it holds now (`None` once
    /// collected).
    Object {
        /// The object.
        key: ObjectKey,
        /// The entry the node holds after the change.
        entry: Option<Entry>,
    },
}

impl Sim {
    /// A cluster of `config.nodes` nodes that already know each other (as a cluster that has
    /// been running does), all up, no faults.
    pub fn new(config: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let loss = config.loss;
        let mut sim = Sim {
            now: Instant(0),
            queue: BinaryHeap::new(),
            next_seq: 0,
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            by_id: BTreeMap::new(),
            partition: None,
            last_partition: None,
            loss,
            writes: Vec::new(),
            write_index: BTreeMap::new(),
            kills: Vec::new(),
            false_dead: BTreeSet::new(),
            partition_dead_marks: 0,
            healthy_suspicions: BTreeSet::new(),
            slow_suspicions: BTreeSet::new(),
            slow_dead: BTreeSet::new(),
            msgs: 0,
            bytes: 0,
            max_message: 0,
            dropped: 0,
            write_counter: 0,
            writes_refused: 0,
            persisted: BTreeMap::new(),
            observations: None,
            rng: ChaCha8Rng::seed_from_u64(rng.random()),
            config,
        };
        let n = sim.config.nodes;
        for _ in 0..n {
            sim.spawn_node();
        }
        // Everyone knows everyone: every node starts from the same state, holding all
        // membership records.
        let mut template = crate::store::Store::new();
        for s in &sim.nodes {
            let node = s.node.as_ref().expect("just spawned");
            let key = Key::Member(s.identity.id);
            let entry = node.store().get(&key).expect("own record").clone();
            template
                .merge(key, entry, crate::store::MergeGuard::default())
                .expect("member record");
        }
        for i in 0..n {
            let now = sim.now_for(i);
            let node = sim.nodes[i].node.as_mut().expect("just spawned");
            node.restore_store(template.clone(), true, now);
            while node.poll_event().is_some() {}
            sim.schedule_timer(i);
        }
        sim
    }

    fn spawn_node(&mut self) -> usize {
        let index = self.nodes.len();
        let mut id = [0u8; 32];
        self.rng.fill_bytes(&mut id);
        let identity = Identity {
            id: NodeId(id),
            name: format!("n{index}"),
            addr: format!("n{index}"),
        };
        let skew = self.config.clock_skew.as_millis() as i64;
        let skew_ms = if skew > 0 {
            self.rng.random_range(-skew..=skew)
        } else {
            0
        };
        self.by_addr.insert(identity.addr.clone(), index);
        self.by_id.insert(identity.id, index);
        self.nodes.push(SimNode {
            identity,
            node: None,
            health: Health::Up,
            slow: false,
            skew_ms,
            timer_generation: 0,
            timer_at: None,
            backlog: VecDeque::new(),
            killed_at: None,
        });
        self.boot(index, None);
        index
    }

    /// Creates the node's core (again, after a crash): fresh memory, or `persisted` state.
    fn boot(&mut self, index: usize, persisted: Option<Vec<crate::message::Update>>) {
        let seed = self.rng.random();
        let now = self.now_for(index);
        let mut node = Node::new(
            self.config.gossip.clone(),
            self.nodes[index].identity.clone(),
            ChaCha8Rng::seed_from_u64(seed),
            now,
        );
        if let Some(state) = persisted {
            node.restore(state, true, now);
        }
        while node.poll_event().is_some() {}
        self.nodes[index].node = Some(node);
        self.nodes[index].health = Health::Up;
        self.nodes[index].killed_at = None;
        self.nodes[index].backlog.clear();
    }

    fn now_for(&self, index: usize) -> Now {
        let wall = (EPOCH_MS + self.now.0 / 1000) as i64 + self.nodes[index].skew_ms;
        Now::new(self.now, wall.max(0) as u64)
    }

    /// Node `index`'s clock against its members' (whether it may write); `None` if it is down.
    pub fn clock_status(&self, index: usize) -> Option<crate::clock::ClockStatus> {
        let now = self.now_for(index);
        self.nodes[index]
            .node
            .as_ref()
            .map(|node| node.clock_status(now))
    }

    /// Sets how far node `index`'s wall clock is off from true time, in milliseconds (a step
    /// of its clock: NTP, `date -s`, a laptop waking up).
    pub fn set_clock_offset(&mut self, index: usize, offset_ms: i64) {
        self.nodes[index].skew_ms = offset_ms;
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Number of nodes ever created (crashed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the simulation has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A node's core, if it is not crashed.
    pub fn node(&self, index: usize) -> Option<&Node<ChaCha8Rng>> {
        self.nodes[index].node.as_ref()
    }

    /// A node's identity.
    pub fn identity(&self, index: usize) -> &Identity {
        &self.nodes[index].identity
    }

    /// Whether the node is running (not crashed, not paused).
    pub fn is_up(&self, index: usize) -> bool {
        self.nodes[index].health == Health::Up
    }

    /// Indices of nodes that are up.
    pub fn up_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.is_up(i)).collect()
    }

    fn push(&mut self, at: Instant, action: Action) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((at, seq, action)));
    }

    fn schedule_timer(&mut self, index: usize) {
        let Some(node) = self.nodes[index].node.as_ref() else {
            return;
        };
        let next = node.poll_timeout();
        if next == self.nodes[index].timer_at {
            return;
        }
        self.nodes[index].timer_at = next;
        self.nodes[index].timer_generation += 1;
        if let Some(at) = next {
            let generation = self.nodes[index].timer_generation;
            self.push(
                at.max(self.now),
                Action::Timer {
                    node: index,
                    generation,
                },
            );
        }
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Instant) {
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > until {
                break;
            }
            let Reverse((at, _, action)) = self.queue.pop().expect("peeked");
            self.now = at;
            match action {
                Action::Deliver {
                    to,
                    from_addr,
                    bytes,
                } => match self.nodes[to].health {
                    Health::Crashed => self.dropped += 1,
                    Health::Paused => {
                        if self.nodes[to].backlog.len() < PAUSE_BUFFER {
                            self.nodes[to].backlog.push_back((from_addr, bytes));
                        } else {
                            self.dropped += 1;
                        }
                    }
                    Health::Up => {
                        let now = self.now_for(to);
                        if let Some(node) = self.nodes[to].node.as_mut() {
                            node.handle_message(&from_addr, &bytes, now);
                        }
                        self.after_input(to);
                    }
                },
                Action::Timer { node, generation } => {
                    if self.nodes[node].timer_generation != generation
                        || self.nodes[node].health != Health::Up
                    {
                        continue;
                    }
                    self.nodes[node].timer_at = None;
                    let now = self.now_for(node);
                    if let Some(core) = self.nodes[node].node.as_mut() {
                        core.handle_timeout(now);
                    }
                    self.after_input(node);
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Drains a node's outputs after an input: transmissions into the network, events into
    /// the metrics, and its next timer.
    fn after_input(&mut self, index: usize) {
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        if let Some(node) = self.nodes[index].node.as_mut() {
            while let Some(t) = node.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
        }
        let from_addr = self.nodes[index].identity.addr.clone();
        for t in transmits {
            self.msgs += 1;
            self.bytes += t.bytes.len() as u64;
            self.max_message = self.max_message.max(t.bytes.len());
            let Some(&to) = self.by_addr.get(&t.addr) else {
                self.dropped += 1;
                continue;
            };
            if let Some(groups) = &self.partition {
                if groups[index] != groups[to] {
                    self.dropped += 1;
                    continue;
                }
            }
            if self.loss > 0.0 && self.rng.random_bool(self.loss) {
                self.dropped += 1;
                continue;
            }
            let min = self.config.latency_min.as_micros() as u64;
            let max = self.config.latency_max.as_micros() as u64;
            let mut latency = Duration::from_micros(self.rng.random_range(min..=max.max(min)));
            if self.nodes[to].slow {
                latency += self.config.slow_delay;
            }
            self.push(
                self.now + latency,
                Action::Deliver {
                    to,
                    from_addr: from_addr.clone(),
                    bytes: t.bytes,
                },
            );
        }
        for event in events {
            if let Some(log) = self.observations.as_mut() {
                let what = match &event {
                    Event::MemberChanged(m) => Some(Observed::Member {
                        id: m.id,
                        state: m.state,
                    }),
                    Event::EntryChanged(Key::Object(key)) => Some(Observed::Object {
                        key: key.clone(),
                        entry: self.nodes[index]
                            .node
                            .as_ref()
                            .and_then(|n| n.store().get(&Key::Object(key.clone())).cloned()),
                    }),
                    _ => None,
                };
                if let Some(what) = what {
                    log.push(Observation {
                        at: self.now,
                        node: index,
                        what,
                    });
                }
            }
            self.observe(index, event);
        }
        self.schedule_timer(index);
    }

    fn is_healthy(&self, index: usize) -> bool {
        !self.nodes[index].slow && self.kills.iter().all(|k| k.target != index)
    }

    fn observe(&mut self, observer: usize, event: Event) {
        match event {
            Event::EntryChanged(Key::Object(key)) => {
                let Some(&w) = self.write_index.get(&key) else {
                    return;
                };
                let Some(node) = self.nodes[observer].node.as_ref() else {
                    return;
                };
                let holds = node
                    .store()
                    .get(&Key::Object(key))
                    .is_some_and(|e| e.version == self.writes[w].version);
                if holds && self.writes[w].reached[observer].is_none() {
                    self.writes[w].reached[observer] = Some(self.now);
                }
            }
            Event::MemberChanged(member) => {
                let Some(&target) = self.by_id.get(&member.id) else {
                    return;
                };
                if target == observer {
                    return;
                }
                let healthy = self.is_healthy(target);
                match member.state {
                    MemberState::Suspect => {
                        if healthy {
                            self.healthy_suspicions.insert((target, member.incarnation));
                        } else if self.nodes[target].slow {
                            self.slow_suspicions.insert((target, member.incarnation));
                        }
                    }
                    MemberState::Dead => {
                        let split = self
                            .last_partition
                            .as_ref()
                            .is_some_and(|g| g[observer] != g[target]);
                        if split {
                            self.partition_dead_marks += 1;
                        } else if healthy {
                            self.false_dead.insert(target);
                        } else if self.nodes[target].slow {
                            self.slow_dead.insert((target, member.incarnation));
                        }
                    }
                    _ => {}
                }
                if matches!(member.state, MemberState::Dead | MemberState::Left) {
                    for kill in &mut self.kills {
                        if kill.target == target
                            && kill.seen_dead[observer].is_none()
                            && self.nodes[target].killed_at == Some(kill.at)
                        {
                            kill.seen_dead[observer] = Some(self.now);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    // ---- faults and operations -------------------------------------------------------------

    /// Crashes a node (kill -9): its memory is gone, messages to it are lost. What it had
    /// persisted (its whole store, as the agent persists every change before acknowledging
    /// it) is kept for [`Sim::last_snapshot`].
    pub fn crash(&mut self, index: usize) {
        let n = self.nodes.len();
        if let Some(state) = self.snapshot(index) {
            self.persisted.insert(index, state);
        }
        self.nodes[index].health = Health::Crashed;
        self.nodes[index].node = None;
        self.nodes[index].killed_at = Some(self.now);
        self.nodes[index].timer_generation += 1;
        self.nodes[index].timer_at = None;
        self.kills.push(TrackedKill {
            target: index,
            at: self.now,
            seen_dead: vec![None; n],
        });
    }

    /// Restarts a crashed node, with its state as persisted when `persisted` is true
    /// (otherwise empty), and has it join through `seed`.
    pub fn restart(
        &mut self,
        index: usize,
        persisted: Option<Vec<crate::message::Update>>,
        seed: usize,
    ) {
        self.boot(index, persisted);
        let addr = self.nodes[seed].identity.addr.clone();
        let now = self.now_for(index);
        if let Some(node) = self.nodes[index].node.as_mut() {
            node.join(vec![addr], now);
        }
        self.after_input(index);
    }

    /// Adds a fresh node that joins through `seed`. Returns its index.
    pub fn add_node(&mut self, seed: usize) -> usize {
        let index = self.spawn_node();
        for w in &mut self.writes {
            w.reached.push(None);
        }
        for k in &mut self.kills {
            k.seen_dead.push(None);
        }
        if let Some(p) = self.partition.as_mut() {
            p.push(0);
        }
        if let Some(p) = self.last_partition.as_mut() {
            p.push(0);
        }
        let addr = self.nodes[seed].identity.addr.clone();
        let now = self.now_for(index);
        if let Some(node) = self.nodes[index].node.as_mut() {
            node.join(vec![addr], now);
        }
        self.after_input(index);
        index
    }

    /// Pauses a node (SIGSTOP): it handles nothing until resumed; messages queue up.
    pub fn pause(&mut self, index: usize) {
        if self.nodes[index].health == Health::Up {
            self.nodes[index].health = Health::Paused;
        }
    }

    /// Resumes a paused node: it handles its backlog, then its overdue timers.
    pub fn resume(&mut self, index: usize) {
        if self.nodes[index].health != Health::Paused {
            return;
        }
        self.nodes[index].health = Health::Up;
        let backlog = std::mem::take(&mut self.nodes[index].backlog);
        for (from, bytes) in backlog {
            let now = self.now_for(index);
            if let Some(node) = self.nodes[index].node.as_mut() {
                node.handle_message(&from, &bytes, now);
            }
            self.after_input(index);
        }
        self.nodes[index].timer_at = None;
        self.nodes[index].timer_generation += 1;
        let now = self.now_for(index);
        if let Some(node) = self.nodes[index].node.as_mut() {
            node.handle_timeout(now);
        }
        self.after_input(index);
    }

    /// Makes a node slow: every message it receives is handled `slow_delay` late.
    pub fn set_slow(&mut self, index: usize, slow: bool) {
        self.nodes[index].slow = slow;
    }

    /// Sets the message loss probability.
    pub fn set_loss(&mut self, loss: f64) {
        self.loss = loss.clamp(0.0, 1.0);
    }

    /// Splits the network: nodes only reach nodes with the same group number.
    pub fn partition(&mut self, groups: Vec<u32>) {
        assert_eq!(groups.len(), self.nodes.len(), "one group per node");
        self.last_partition = Some(groups.clone());
        self.partition = Some(groups);
    }

    /// Heals the partition.
    pub fn heal(&mut self) {
        self.partition = None;
    }

    /// Gracefully stops a node: it announces that it leaves, keeps running for a moment to
    /// spread the news, then stops.
    pub fn leave(&mut self, index: usize) {
        let now = self.now_for(index);
        if let Some(node) = self.nodes[index].node.as_mut() {
            node.leave(now);
        }
        self.after_input(index);
    }

    /// Has node `index` write an object; the write is tracked for convergence.
    pub fn write(&mut self, index: usize, value_len: usize) -> ObjectKey {
        self.write_counter += 1;
        let key = ObjectKey {
            kind: "sim".into(),
            namespace: "default".into(),
            name: format!("w{}", self.write_counter),
        };
        let mut value = vec![0u8; value_len];
        self.rng.fill_bytes(&mut value);
        let now = self.now_for(index);
        let Some(node) = self.nodes[index].node.as_mut() else {
            return key;
        };
        let Ok(entry) = node.write_object(key.clone(), Some(value), now) else {
            // The node's clock disagrees with its members': nothing was written.
            self.writes_refused += 1;
            self.after_input(index);
            return key;
        };
        let mut reached = vec![None; self.nodes.len()];
        reached[index] = Some(self.now);
        self.write_index.insert(key.clone(), self.writes.len());
        self.writes.push(TrackedWrite {
            at: self.now,
            version: entry.version,
            reached,
        });
        // The writer's own EntryChanged event is already accounted for above.
        self.after_input(index);
        key
    }

    /// Has node `index` write (or with `None`, delete) object `sim/default/NAME`. Not tracked
    /// for convergence statistics. Nothing happens if the node is down; an error if its clock
    /// rule refused the write.
    pub fn write_named(
        &mut self,
        index: usize,
        name: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), ClockRefusal> {
        let key = ObjectKey {
            kind: "sim".into(),
            namespace: "default".into(),
            name: name.into(),
        };
        self.write_through(index, key, value)
            .map_or(Ok(()), |written| written.map(|_| ()))
    }

    /// What a crashed node had persisted when it crashed.
    pub fn last_snapshot(&self, index: usize) -> Option<Vec<crate::message::Update>> {
        self.persisted.get(&index).cloned()
    }

    /// The state a node would have persisted (every entry of its store).
    pub fn snapshot(&self, index: usize) -> Option<Vec<crate::message::Update>> {
        let node = self.nodes[index].node.as_ref()?;
        Some(
            node.store()
                .iter()
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
        )
    }

    /// The state `observer` holds of `target`, if it knows it.
    pub fn view(&self, observer: usize, target: usize) -> Option<MemberState> {
        let node = self.nodes[observer].node.as_ref()?;
        node.member(&self.nodes[target].identity.id)
            .map(|m| m.state)
    }

    /// Whether every up node sees every up node alive and every crashed node not alive.
    pub fn membership_converged(&self) -> bool {
        let up = self.up_nodes();
        up.iter().all(|&o| {
            (0..self.nodes.len()).all(|t| {
                let seen = self.view(o, t);
                match self.nodes[t].health {
                    Health::Up => seen == Some(MemberState::Alive),
                    Health::Paused => true,
                    Health::Crashed => {
                        matches!(
                            seen,
                            None | Some(MemberState::Dead) | Some(MemberState::Left)
                        )
                    }
                }
            })
        })
    }

    /// Delivers raw bytes to a node at once, as if from `from_addr` (for garbage-input tests).
    pub fn inject(&mut self, index: usize, from_addr: &str, bytes: &[u8]) {
        let now = self.now_for(index);
        if let Some(node) = self.nodes[index].node.as_mut() {
            node.handle_message(from_addr, bytes, now);
        }
        self.after_input(index);
    }

    /// Largest message sent so far, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message
    }

    /// Random number from the simulation's generator (for scenario choices).
    pub fn random_index(&mut self, below: usize) -> usize {
        self.rng.random_range(0..below)
    }

    /// From now on, keeps every member change and object change each node sees, for
    /// [`Sim::take_observations`] (a simulator layered on this one follows each node's view).
    pub fn keep_observations(&mut self) {
        self.observations.get_or_insert_with(Vec::new);
    }

    /// The changes seen since the last call, in the order they happened.
    pub fn take_observations(&mut self) -> Vec<Observation> {
        self.observations
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Has node `index` write (or with `None`, delete) an object; returns the entry written,
    /// `None` if the node is down or its clock rule refused the write.
    pub fn write_object(
        &mut self,
        index: usize,
        key: ObjectKey,
        value: Option<Vec<u8>>,
    ) -> Option<Entry> {
        self.write_through(index, key, value)?.ok()
    }

    /// Node `index` writes an object: `None` if it is down; refusals are counted.
    fn write_through(
        &mut self,
        index: usize,
        key: ObjectKey,
        value: Option<Vec<u8>>,
    ) -> Option<Result<Entry, ClockRefusal>> {
        let now = self.now_for(index);
        let written = self.nodes[index]
            .node
            .as_mut()
            .map(|node| node.write_object(key, value, now));
        if matches!(written, Some(Err(_))) {
            self.writes_refused += 1;
        }
        self.after_input(index);
        written
    }

    /// Healthy nodes (never crashed nor slowed) that some node marked dead outside a
    /// partition, so far.
    pub fn false_positives(&self) -> usize {
        self.false_dead.len()
    }

    /// Messages and bytes sent so far, by all nodes.
    pub fn traffic(&self) -> (u64, u64) {
        (self.msgs, self.bytes)
    }

    // ---- the `shoal sim` run ---------------------------------------------------------------

    /// Runs the standard capacity-planning scenario and reports what it measured.
    pub fn run_standard(config: SimConfig, plan: &Plan) -> Report {
        let mut sim = Sim::new(config);
        sim.run_plan(plan)
    }

    fn run_plan(&mut self, plan: &Plan) -> Report {
        let n = self.nodes.len();
        let end = Instant(plan.seconds.as_micros() as u64);
        // Slow nodes and kill victims are distinct random nodes.
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.rng.random_range(0..=i);
            order.swap(i, j);
        }
        let slow: Vec<usize> = order.iter().copied().take(plan.slow).collect();
        let victims: Vec<usize> = order
            .iter()
            .copied()
            .skip(plan.slow)
            .take(plan.kill.min(n.saturating_sub(plan.slow + 1)))
            .collect();
        for &s in &slow {
            self.set_slow(s, true);
        }
        // Timeline of scheduled operations.
        let mut ops: Vec<(Instant, PlanOp)> = Vec::new();
        let warmup = Duration::from_secs(2).min(plan.seconds / 4);
        let tail = Duration::from_secs(3).min(plan.seconds / 4);
        if plan.writes_per_s > 0.0 {
            let step = Duration::from_secs_f64(1.0 / plan.writes_per_s);
            let mut t = Instant(0) + warmup;
            while t + tail < end {
                ops.push((t, PlanOp::Write));
                t = t + step;
            }
        }
        // Kills spread evenly over the first 60% of the run after warm-up, leaving time to
        // detect the last one.
        if !victims.is_empty() {
            let span = plan.seconds.mul_f64(0.6).saturating_sub(warmup);
            for (k, &v) in victims.iter().enumerate() {
                let at = Instant(0) + warmup + span.mul_f64(k as f64 / victims.len() as f64);
                ops.push((at, PlanOp::Kill(v)));
            }
        }
        if let Some((p, h)) = plan.partition {
            ops.push((Instant(p.as_micros() as u64), PlanOp::Partition));
            ops.push((Instant(h.as_micros() as u64), PlanOp::Heal));
        }
        ops.sort_by_key(|(t, _)| *t);
        let mut heal_at = None;
        let mut heal_ms = None;
        for (at, op) in ops {
            self.run_checking_heal(at, heal_at, &mut heal_ms);
            match op {
                PlanOp::Write => {
                    let up: Vec<usize> = self.up_nodes();
                    if !up.is_empty() {
                        let w = up[self.rng.random_range(0..up.len())];
                        self.write(w, plan.value_bytes);
                    }
                }
                PlanOp::Kill(v) => self.crash(v),
                PlanOp::Partition => {
                    // Two sides of (about) equal size.
                    let groups = (0..self.nodes.len()).map(|i| (i % 2) as u32).collect();
                    self.partition(groups);
                }
                PlanOp::Heal => {
                    self.heal();
                    heal_at = Some(self.now);
                }
            }
        }
        self.run_checking_heal(end, heal_at, &mut heal_ms);
        self.report(plan, &slow, heal_ms)
    }

    /// Runs until `until`; after a heal, in 100 ms steps until membership has converged,
    /// recording how long that took.
    fn run_checking_heal(
        &mut self,
        until: Instant,
        heal_at: Option<Instant>,
        heal_ms: &mut Option<f64>,
    ) {
        if let (Some(healed), None) = (heal_at, *heal_ms) {
            while self.now < until {
                if self.membership_converged() {
                    *heal_ms = Some(self.now.saturating_since(healed).as_secs_f64() * 1000.0);
                    break;
                }
                let step = (self.now + Duration::from_millis(100)).min(until);
                self.run_until(step);
            }
        }
        self.run_until(until);
    }

    fn report(&self, plan: &Plan, slow: &[usize], heal_ms: Option<f64>) -> Report {
        let live: Vec<usize> = self.up_nodes();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // Convergence: per write, the delay until each live node held it.
        let mut deliveries = Vec::new();
        let mut to_half = Vec::new();
        let mut to_99 = Vec::new();
        let mut to_all = Vec::new();
        let mut undelivered = 0u64;
        for w in &self.writes {
            let mut delays: Vec<f64> = Vec::new();
            let mut missing = 0;
            for &i in &live {
                match w.reached.get(i).copied().flatten() {
                    Some(t) => delays.push(ms(t.saturating_since(w.at))),
                    None => missing += 1,
                }
            }
            undelivered += missing;
            if missing > 0 || delays.is_empty() {
                continue;
            }
            delays.sort_by(f64::total_cmp);
            let at = |q: f64| {
                delays[((q * delays.len() as f64).ceil() as usize).clamp(1, delays.len()) - 1]
            };
            to_half.push(at(0.5));
            to_99.push(at(0.99));
            to_all.push(at(1.0));
            deliveries.extend(delays);
        }
        // Detection: per kill, the delay until every live node marked the victim dead.
        let mut detect = Vec::new();
        let mut undetected = 0u64;
        for kill in &self.kills {
            let mut worst: Option<f64> = Some(0.0);
            for &i in &live {
                match kill.seen_dead.get(i).copied().flatten() {
                    Some(t) => {
                        worst = worst.map(|w| w.max(ms(t.saturating_since(kill.at))));
                    }
                    None => worst = None,
                }
            }
            match worst {
                Some(w) => detect.push(w),
                None => undetected += 1,
            }
        }
        let seconds = plan.seconds.as_secs_f64().max(1e-9);
        let n = self.nodes.len() as f64;
        let slow_raised: u64 = slow
            .iter()
            .filter_map(|&s| self.node(s))
            .map(|node| node.stats().suspicions_raised)
            .sum();
        Report {
            nodes: self.nodes.len(),
            seconds: plan.seconds.as_secs_f64(),
            seed: self.config.seed,
            loss: self.config.loss,
            writes: self.writes.len(),
            writes_refused: self.writes_refused,
            converge_ms: Percentiles::of(&mut deliveries),
            converge_to_50_ms: Percentiles::of(&mut to_half),
            converge_to_99_ms: Percentiles::of(&mut to_99),
            converge_to_all_ms: Percentiles::of(&mut to_all),
            undelivered,
            kills: self.kills.len(),
            detect_ms: Percentiles::of(&mut detect),
            undetected,
            false_positives: self.false_dead.len(),
            healthy_suspicions: self.healthy_suspicions.len(),
            slow_nodes: slow.len(),
            slow_suspicions: self.slow_suspicions.len(),
            slow_marked_dead: self.slow_dead.len(),
            suspicions_raised_by_slow: slow_raised,
            partition_dead_marks: self.partition_dead_marks,
            heal_ms,
            bytes_per_node_per_s: self.bytes as f64 / n / seconds,
            msgs_per_node_per_s: self.msgs as f64 / n / seconds,
            max_message_bytes: self.max_message,
            dropped_msgs: self.dropped,
            wall_ms: 0.0,
        }
    }
}

enum PlanOp {
    Write,
    Kill(usize),
    Partition,
    Heal,
}

/// What `shoal sim` does during the run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Length of the run (virtual time).
    pub seconds: Duration,
    /// Objects written per second, each by a random live node.
    pub writes_per_s: f64,
    /// Size of each written value, in bytes.
    pub value_bytes: usize,
    /// Nodes crashed during the run (spread over its first 60%).
    pub kill: usize,
    /// Nodes that handle every message late.
    pub slow: usize,
    /// Partition into two halves at the first time, healed at the second.
    pub partition: Option<(Duration, Duration)>,
}

/// Percentiles of a set of durations in milliseconds of simulated time (0 when empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Number of samples.
    pub count: usize,
}

impl Percentiles {
    /// Percentiles of `values` (sorted in place).
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let rank = (q * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
            count: values.len(),
        }
    }
}

/// What a simulation run measured. Times are milliseconds of simulated time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Nodes in the run.
    pub nodes: usize,
    /// Simulated seconds.
    pub seconds: f64,
    /// The seed (replays the run exactly).
    pub seed: u64,
    /// Message loss probability.
    pub loss: f64,
    /// Writes made.
    pub writes: usize,
    /// Writes their node refused because its clock disagreed with its members' (not made).
    pub writes_refused: u64,
    /// Delay until a live node holds a write, pooled over every (write, live node) pair: the
    /// time by which 50% and 99% of deliveries had happened, and the slowest one. The
    /// headline convergence figure.
    pub converge_ms: Percentiles,
    /// Time for a write to reach 50% of live nodes, across writes.
    pub converge_to_50_ms: Percentiles,
    /// Time for a write to reach 99% of live nodes, across writes.
    pub converge_to_99_ms: Percentiles,
    /// Time for a write to reach every live node, across writes.
    pub converge_to_all_ms: Percentiles,
    /// (write, live node) pairs never delivered by the end of the run.
    pub undelivered: u64,
    /// Nodes crashed.
    pub kills: usize,
    /// Time from a crash until every live node marked it dead, across crashes.
    pub detect_ms: Percentiles,
    /// Crashes not marked dead by every live node by the end.
    pub undetected: u64,
    /// Nodes neither crashed nor slowed that some node marked dead (outside partitions).
    pub false_positives: usize,
    /// Suspicion episodes (node, incarnation) of nodes neither crashed nor slowed.
    pub healthy_suspicions: usize,
    /// Slow nodes in the run.
    pub slow_nodes: usize,
    /// Suspicion episodes of slow nodes.
    pub slow_suspicions: usize,
    /// Times (node, incarnation) a slow node was marked dead.
    pub slow_marked_dead: usize,
    /// Suspicions raised by the slow nodes themselves.
    pub suspicions_raised_by_slow: u64,
    /// Dead marks between nodes on opposite sides of a partition (expected, not false).
    pub partition_dead_marks: u64,
    /// Time from healing a partition until every node sees every live node alive.
    pub heal_ms: Option<f64>,
    /// Bytes sent per node per second.
    pub bytes_per_node_per_s: f64,
    /// Messages sent per node per second.
    pub msgs_per_node_per_s: f64,
    /// Largest message sent, in bytes (fragments included).
    pub max_message_bytes: usize,
    /// Messages lost to loss, partitions or crashed recipients.
    pub dropped_msgs: u64,
    /// Wall-clock time of the run (filled in by the caller; not part of the deterministic
    /// result).
    pub wall_ms: f64,
}
