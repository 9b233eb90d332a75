//! The whole cluster in one process, deterministically: `shoal sim --workloads`.
//!
//! Real: the gossip simulator ([`shoal_gossip::sim::Sim`]: real [`shoal_gossip::Node`]s,
//! virtual time, one seeded RNG, latency, loss, partitions, crashes), the planner
//! ([`crate::workload::plan::plan`], through [`planner::plan_cluster`]) and the scheduler
//! under it, one [`Supervisor`] per node driving a [`FakeRuntime`] of its own, and the
//! application of manifests (objects are written by the applying node into its gossip store
//! and reach the others by gossip). Each node plans from its own view: the members in the
//! states its gossip node sees them, the objects its store holds ([`view`]), and the pod
//! records that have reached its side of the network ([`board`]).
//!
//! Simplified, and why:
//! - **Pod records travel on a board, not through each node's gossip store.** Replicating
//!   10,000 records through 1,000 stores is ~10 million stored entries and, with every
//!   receiver forwarding news and each node retransmitting each change a dozen times, hundreds
//!   of millions of merges per wave of changes: minutes of CPU and gigabytes. A record reaches
//!   every node of the writer's side of the network `record_delay` after it is written, at the
//!   next `record_tick`, as gossip's eager push gets a change to a 1,000-node cluster in tens
//!   of milliseconds; across a partition only after the heal and one anti-entropy interval.
//!   A node's plan sees its own records with the same delay.
//! - **Node info is known to every node from the start** (name, address, capacity): the
//!   simulated cluster has been running before, and nodes never change theirs.
//! - **Planning is coalesced**: a node plans at most every `plan_interval` of virtual time
//!   when its view changed, as a busy reconciler plans once per group of changes, and a node
//!   whose plan inputs equal another's shares its plan exactly ([`planner`]).
//! - **Runtime actions take virtual time**: starting a pod takes `start_to_ready` (its
//!   containers run and, having no readiness probe, are ready when the start completes); other
//!   actions take `action_latency`.
//!
//! Everything is ordered (`BTreeMap`s, one event queue ordered by time then insertion), all
//! randomness comes from the seed, and no wall clock decides anything, so a seed replays a
//! run bit for bit. [`scenario`] scripts runs as data for tests; [`standard`] is what `shoal
//! sim --workloads` runs.

mod board;
mod planner;
pub(crate) mod scenario;
pub(crate) mod standard;
mod truth;
mod view;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use shoal_gossip::sim::{Observation, Observed, Sim, SimConfig};
use shoal_gossip::{ClockRefusal, ClockVerdict, Instant, NodeId, Now, ObjectKey};
use xxhash_rust::xxh3::xxh3_64;

use self::board::Boards;
use self::planner::{MemberFacts, PlanCache};
use self::truth::Truth;
use self::view::{Interner, View};
use crate::manifest::ProbeKind;
use crate::manifest::{ProbeHandler, Resource};
use crate::node_info::NodeInfo;
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{PodInfo, Runtime, RuntimeError};
use crate::workload::batch::{Batch, BatchGate};
use crate::workload::probe;
use crate::workload::service::DEFAULT_SERVICE_RANGE;
use crate::workload::stored::{PodRecord, ReplicaRef, StoredObject};
use crate::workload::supervisor::{Action, NodePlan, Supervisor, SupervisorConfig};
use crate::workload::view::apply_one;

/// The wall clock at virtual time zero (ms since the Unix epoch), the gossip simulator's.
const EPOCH_MS: u64 = 1_767_225_600_000;

/// How the simulated cluster behaves, beyond the network.
#[derive(Clone, Debug)]
pub(crate) struct ClusterConfig {
    /// The nodes, the network and the seed (the gossip simulator's configuration).
    pub(crate) network: SimConfig,
    /// How long a pod takes from its start to ready. Default 1 s.
    pub(crate) start_to_ready: Duration,
    /// How long every other runtime action takes (stop, list, probe). Default 10 ms.
    pub(crate) action_latency: Duration,
    /// How long a pod record takes to reach the other nodes of its side. Default 50 ms, about
    /// the median and below the 99th percentile of gossip's delivery at 1,000 nodes.
    pub(crate) record_delay: Duration,
    /// Records reach the board at multiples of this. Default 50 ms.
    pub(crate) record_tick: Duration,
    /// A node plans at most this often. Default 100 ms.
    pub(crate) plan_interval: Duration,
    /// A node plans this long after the first change it has not planned from, so that a
    /// burst of changes (the objects of one apply arriving in several messages) is planned
    /// from at once. Default 0 (the reconciler plans as soon as it can).
    pub(crate) plan_delay: Duration,
    /// CPU each node offers, in millicores. Default 8000.
    pub(crate) cpu_millis: u64,
    /// Memory each node offers, in bytes. Default 32 GiB.
    pub(crate) memory_bytes: u64,
}

impl ClusterConfig {
    /// `nodes` nodes on a LAN, with the defaults above.
    pub(crate) fn lan(nodes: usize, seed: u64) -> ClusterConfig {
        ClusterConfig {
            network: SimConfig::lan(nodes, seed),
            start_to_ready: Duration::from_secs(1),
            action_latency: Duration::from_millis(10),
            record_delay: Duration::from_millis(50),
            record_tick: Duration::from_millis(50),
            plan_interval: Duration::from_millis(100),
            plan_delay: Duration::ZERO,
            cpu_millis: 8000,
            memory_bytes: 32 << 30,
        }
    }
}

/// A finished runtime action, delivered to the supervisor after the action's latency.
#[derive(Debug)]
enum Completion {
    Listed(Result<Vec<PodInfo>, RuntimeError>),
    Pulled(String, Result<(), RuntimeError>),
    Started(String, Result<PodInfo, RuntimeError>),
    Stopped(String),
    Restarted(String, String, Result<(), RuntimeError>),
    Probed {
        uid: String,
        container: String,
        kind: ProbeKind,
        token: u64,
        result: Result<(), String>,
    },
    VolumeUpdated(String, String, Result<(), RuntimeError>),
}

/// Something due at a moment of virtual time.
#[derive(Debug)]
enum Due {
    /// A change a node's gossip core saw.
    Observed(Observation),
    /// A runtime action of a node completes (`life`: the node's life it belongs to).
    Done {
        node: usize,
        life: u64,
        done: Completion,
    },
    /// A supervisor's deadline.
    Deadline { node: usize, life: u64, token: u64 },
    /// A node plans if its view changed.
    Plan { node: usize, life: u64 },
    /// A node's plan may change with the time alone (`minReadySeconds`).
    Replan { node: usize, life: u64 },
    /// An apply a node holds part of may be due to be taken in part.
    BatchExpiry { node: usize, life: u64 },
    /// A pod record reaches the board of its writer's side.
    Record {
        writer: usize,
        name: String,
        counter: u64,
        value: Option<Arc<PodRecord>>,
    },
    /// The boards of a healed partition merge.
    MergeBoards,
}

/// One node: its supervisor, its runtime, its view, and when it plans.
struct SimNode {
    id: NodeId,
    up: bool,
    /// Raised at every crash and restart: what was due for an earlier life is dropped.
    life: u64,
    config: SupervisorConfig,
    sup: Supervisor,
    rt: FakeRuntime,
    view: View,
    /// Objects of an apply held back from the view until the apply is whole.
    gate: BatchGate<Arc<view::Interned>>,
    /// A `BatchExpiry` is queued for then.
    gate_at: Option<Instant>,
    /// The replica of each pod its last plan gave it, by uid.
    desired: BTreeMap<String, ReplicaRef>,
    /// Its view changed since it last planned.
    dirty: bool,
    /// A `Plan` is queued for then.
    plan_at: Option<Instant>,
    last_plan: Option<Instant>,
    planned_forfeit: Option<bool>,
    /// The supervisor's deadline queued, and its token.
    deadline: Option<Instant>,
    deadline_token: u64,
    /// Its counter of record writes (the owned entries' version).
    record_counter: u64,
}

/// The simulated cluster.
pub(crate) struct ClusterSim {
    config: ClusterConfig,
    gossip: Sim,
    now: Instant,
    queue: BTreeMap<(Instant, u64), Due>,
    seq: u64,
    nodes: Vec<SimNode>,
    facts: BTreeMap<NodeId, MemberFacts>,
    interner: Interner,
    boards: Boards,
    plans: PlanCache,
    truth: Truth,
    /// Plans handed to supervisors.
    node_plans: u64,
    /// Records published.
    record_writes: u64,
    /// Records published that have not reached the board yet.
    records_in_flight: u64,
    /// The last version of each object written (what every node should come to hold).
    written: BTreeMap<ObjectKey, Option<Arc<view::Interned>>>,
}

fn now_of(mono: Instant) -> Now {
    Now::new(mono, EPOCH_MS + mono.as_micros() / 1000)
}

impl ClusterSim {
    /// A cluster of `config.network.nodes` nodes that know each other, running nothing.
    pub(crate) fn new(config: ClusterConfig) -> ClusterSim {
        let mut gossip = Sim::new(config.network.clone());
        gossip.keep_observations();
        let now = gossip.now();
        let mut facts = BTreeMap::new();
        for i in 0..gossip.len() {
            facts.insert(
                gossip.identity(i).id,
                member_facts(&config, gossip.identity(i)),
            );
        }
        let mut sim = ClusterSim {
            boards: Boards::new(gossip.len()),
            gossip,
            now,
            queue: BTreeMap::new(),
            seq: 0,
            nodes: Vec::new(),
            facts,
            interner: Interner::default(),
            plans: PlanCache::default(),
            truth: Truth::default(),
            node_plans: 0,
            record_writes: 0,
            records_in_flight: 0,
            written: BTreeMap::new(),
            config,
        };
        for i in 0..sim.gossip.len() {
            let node = sim.new_node(i);
            sim.nodes.push(node);
            sim.drain(i);
        }
        sim
    }

    fn new_node(&mut self, i: usize) -> SimNode {
        let identity = self.gossip.identity(i).clone();
        let config = SupervisorConfig {
            me: identity.id,
            host_ip: identity.addr.clone(),
            service_range: DEFAULT_SERVICE_RANGE,
            pull_images: false,
            run: 1,
            secret_box: None,
        };
        let view = self
            .gossip
            .node(i)
            .map(|n| View::of_node(n, &mut self.interner))
            .unwrap_or_default();
        SimNode {
            id: identity.id,
            up: true,
            life: 0,
            sup: Supervisor::new(config.clone(), now_of(self.now)),
            config,
            rt: FakeRuntime::new(),
            view,
            gate: BatchGate::default(),
            gate_at: None,
            desired: BTreeMap::new(),
            dirty: true,
            plan_at: None,
            last_plan: None,
            planned_forfeit: None,
            deadline: None,
            deadline_token: 0,
            record_counter: 0,
        }
    }

    // ---- time ------------------------------------------------------------------------------

    /// Virtual time now.
    pub(crate) fn now(&self) -> Instant {
        self.now
    }

    fn push(&mut self, at: Instant, due: Due) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), due);
    }

    /// Runs until `until`, calling `check` after every event; stops at the first error.
    pub(crate) fn run_until(
        &mut self,
        until: Instant,
        check: &mut dyn FnMut(&ClusterSim) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let next = self.queue.first_key_value().map(|((t, _), _)| *t);
            let target = next.filter(|t| *t <= until).unwrap_or(until);
            // Gossip runs ahead to the next event; what its nodes saw meanwhile is queued at
            // the time they saw it (nothing flows back from the workloads into gossip).
            self.gossip.run_until(target);
            let seen = self.gossip.take_observations();
            if !seen.is_empty() {
                for o in seen {
                    self.push(o.at, Due::Observed(o));
                }
                continue;
            }
            if next.is_none_or(|t| t > until) {
                self.now = self.now.max(until);
                return check(self);
            }
            let ((at, _), due) = self.queue.pop_first().expect("peeked");
            self.now = at;
            self.handle(due);
            check(self)?;
        }
    }

    /// Runs for `d` of virtual time.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        let _ = self.run_until(until, &mut |_| Ok(()));
    }

    fn handle(&mut self, due: Due) {
        match due {
            Due::Observed(o) => self.handle_observed(o),
            Due::Done { node, life, done } => {
                if self.is_life(node, life) {
                    self.deliver(node, done);
                    self.drain(node);
                }
            }
            Due::Deadline { node, life, token } => {
                if self.is_life(node, life) && self.nodes[node].deadline_token == token {
                    self.nodes[node].deadline = None;
                    self.nodes[node].sup.handle_timeout(now_of(self.now));
                    self.drain(node);
                }
            }
            Due::Plan { node, life } => {
                if self.is_life(node, life) {
                    self.nodes[node].plan_at = None;
                    self.plan_node(node);
                }
            }
            Due::BatchExpiry { node, life } => {
                if self.is_life(node, life) {
                    self.nodes[node].gate_at = None;
                    let now_ms = now_of(self.now).wall_ms;
                    let released = self.nodes[node].gate.expire(now_ms);
                    self.take_objects(node, released);
                }
            }
            Due::Replan { node, life } => {
                if self.is_life(node, life) {
                    self.nodes[node].dirty = true;
                    self.request_plan(node);
                }
            }
            Due::Record {
                writer,
                name,
                counter,
                value,
            } => {
                self.records_in_flight -= 1;
                let owner = self.nodes[writer].id;
                if let Some(group) = self.boards.write(writer, owner, name, counter, value) {
                    self.board_changed(Some(group));
                }
            }
            Due::MergeBoards => {
                self.boards.merge();
                self.board_changed(None);
            }
        }
    }

    fn is_life(&self, node: usize, life: u64) -> bool {
        self.nodes[node].up && self.nodes[node].life == life
    }

    // ---- views and planning ----------------------------------------------------------------

    fn handle_observed(&mut self, o: Observation) {
        let i = o.node;
        if !self.nodes[i].up {
            return;
        }
        match o.what {
            Observed::Member { id, state } => {
                if self.nodes[i].view.set_member(id, state) {
                    self.nodes[i].dirty = true;
                    self.request_plan(i);
                }
            }
            Observed::Object { key, entry } => {
                let value = entry.and_then(|e| self.interner.get(&key, &e));
                let batch = value
                    .as_ref()
                    .and_then(|v| v.object.as_ref())
                    .and_then(|o| o.stored.batch);
                let now_ms = now_of(self.now).wall_ms;
                let released = self.nodes[i].gate.offer(key, batch, value, now_ms);
                self.take_objects(i, released);
            }
        }
    }

    /// Node `i`'s view takes these object versions (from its batch gate); its next batch
    /// expiry is queued.
    fn take_objects(&mut self, i: usize, objects: Vec<(ObjectKey, Option<Arc<view::Interned>>)>) {
        let mut changed = false;
        for (key, value) in objects {
            changed |= self.nodes[i].view.set_object(key, value);
        }
        if changed {
            self.nodes[i].dirty = true;
            self.request_plan(i);
        }
        let next = self.nodes[i]
            .gate
            .next_deadline_ms()
            .map(|ms| Instant(ms.saturating_sub(EPOCH_MS) * 1000));
        if let Some(at) = next {
            if self.nodes[i].gate_at.is_none_or(|queued| at < queued) {
                let life = self.nodes[i].life;
                self.nodes[i].gate_at = Some(at);
                self.push(at, Due::BatchExpiry { node: i, life });
            }
        }
    }

    /// The records of a side changed (`None`: every side): its nodes plan again.
    fn board_changed(&mut self, group: Option<usize>) {
        for i in 0..self.nodes.len() {
            if group.is_none_or(|g| self.boards.of(i).0 == g) && self.nodes[i].up {
                self.nodes[i].dirty = true;
                self.request_plan(i);
            }
        }
    }

    /// Queues a plan for node `i`: `plan_delay` from now, and no sooner than `plan_interval`
    /// after its last plan.
    fn request_plan(&mut self, i: usize) {
        let node = &self.nodes[i];
        if !node.up || node.plan_at.is_some() {
            return;
        }
        let first = self.now + self.config.plan_delay;
        let at = node
            .last_plan
            .map_or(first, |t| (t + self.config.plan_interval).max(first));
        let life = node.life;
        self.nodes[i].plan_at = Some(at);
        self.push(at, Due::Plan { node: i, life });
    }

    /// Plans node `i` if its view changed or its supervisor wants another kind of plan, as
    /// the reconciler does.
    fn plan_node(&mut self, i: usize) {
        let now = now_of(self.now);
        let node = &self.nodes[i];
        let synced = node.view.synced(&node.id);
        let Some(forfeit) = node.sup.plan_forfeit(synced, now) else {
            return;
        };
        if !node.dirty && node.planned_forfeit == Some(forfeit) {
            return;
        }
        let me = node.id;
        let (group, board) = self.boards.of(i);
        let planned = self.plans.plan(
            &node.view,
            (group, board.version, &board.snapshot),
            &self.facts,
            forfeit.then_some(&me),
            now.wall_ms,
        );
        let (snapshot, plan) = (planned.snapshot.clone(), planned.plan.clone());
        let node_plan = NodePlan::new(
            &snapshot,
            &plan,
            &me,
            self.nodes[i].config.service_range,
            self.nodes[i].sup.plan(),
        );
        let node = &mut self.nodes[i];
        node.desired = node_plan
            .pods
            .iter()
            .map(|(uid, p)| (uid.clone(), p.replica.clone()))
            .collect();
        node.sup.handle_plan(node_plan, now);
        node.dirty = false;
        node.planned_forfeit = Some(forfeit);
        node.last_plan = Some(self.now);
        self.node_plans += 1;
        if let Some(at_ms) = plan.next_change_ms {
            let at = Instant((at_ms.saturating_sub(EPOCH_MS)) * 1000);
            let life = self.nodes[i].life;
            self.push(at, Due::Replan { node: i, life });
        }
        self.drain(i);
    }

    // ---- supervisors and runtimes ----------------------------------------------------------

    /// Takes a supervisor's outputs: actions run on its fake runtime (their results come
    /// back after their latency), records go to the observer and toward the board, its
    /// next deadline is queued.
    fn drain(&mut self, i: usize) {
        let now = now_of(self.now);
        self.nodes[i].rt.set_now_ms(now.wall_ms);
        while let Some(action) = self.nodes[i].sup.poll_action() {
            if let Action::StartPod { uid, .. } = &action {
                if let Some(replica) = self.nodes[i].desired.get(uid) {
                    self.truth.started(i, replica, self.now);
                }
            }
            let latency = match action {
                Action::StartPod { .. } => self.config.start_to_ready,
                _ => self.config.action_latency,
            };
            let done = execute(&self.nodes[i].rt, action);
            let life = self.nodes[i].life;
            self.push(
                self.now + latency,
                Due::Done {
                    node: i,
                    life,
                    done,
                },
            );
        }
        while let Some(update) = self.nodes[i].sup.poll_record_update() {
            let value = update
                .value
                .as_deref()
                .and_then(|bytes| PodRecord::decode(bytes).ok())
                .map(Arc::new);
            self.record_writes += 1;
            self.truth
                .publish(i, update.name.clone(), value.as_ref(), self.now);
            self.nodes[i].record_counter += 1;
            let counter = self.nodes[i].record_counter;
            let at = self.record_arrival();
            self.records_in_flight += 1;
            self.push(
                at,
                Due::Record {
                    writer: i,
                    name: update.name,
                    counter,
                    value,
                },
            );
        }
        let next = self.nodes[i].sup.poll_timeout();
        if next != self.nodes[i].deadline {
            let node = &mut self.nodes[i];
            node.deadline = next;
            node.deadline_token += 1;
            if let Some(at) = next {
                let (life, token) = (node.life, node.deadline_token);
                self.push(
                    at,
                    Due::Deadline {
                        node: i,
                        life,
                        token,
                    },
                );
            }
        }
        // A supervisor that leaves its first pass wants a plan without the forfeit.
        let node = &self.nodes[i];
        let synced = node.view.synced(&node.id);
        if let Some(forfeit) = node.sup.plan_forfeit(synced, now) {
            if node.planned_forfeit != Some(forfeit) {
                self.request_plan(i);
            }
        }
    }

    /// When a record written now reaches the board.
    fn record_arrival(&self) -> Instant {
        let tick = self.config.record_tick.as_micros().max(1) as u64;
        let at = (self.now + self.config.record_delay).as_micros();
        Instant(at.div_ceil(tick) * tick)
    }

    fn deliver(&mut self, i: usize, done: Completion) {
        let now = now_of(self.now);
        let sup = &mut self.nodes[i].sup;
        match done {
            Completion::Listed(result) => sup.handle_pods_listed(result, now),
            Completion::Pulled(uid, result) => sup.handle_pulled(&uid, result, now),
            Completion::Started(uid, result) => sup.handle_started(&uid, result, now),
            Completion::Stopped(uid) => sup.handle_stopped(&uid, now),
            Completion::Restarted(uid, container, result) => {
                sup.handle_restarted(&uid, &container, result, now)
            }
            Completion::Probed {
                uid,
                container,
                kind,
                token,
                result,
            } => sup.handle_probe_result(&uid, &container, kind, token, result, now),
            Completion::VolumeUpdated(uid, volume, result) => {
                sup.handle_volume_updated(&uid, &volume, result, now)
            }
        }
    }

    // ---- operations ------------------------------------------------------------------------

    /// Node `writer` applies manifests (YAML or JSON) as `shoal apply` would on it: each
    /// object over the version its own store holds. Errors name what does not parse.
    pub(crate) fn apply(&mut self, writer: usize, yaml: &str) -> Result<(), String> {
        let resources =
            crate::manifest::parse("sim.yaml", yaml.as_bytes()).map_err(|e| e.to_string())?;
        self.until_writable(writer)?;
        let mut changed = Vec::new();
        for resource in resources {
            changed.extend(self.changed_object(writer, resource)?);
        }
        // Written together, as the agent's apply does: one batch.
        let now_ms = now_of(self.now).wall_ms;
        let batch = (changed.len() > 1).then(|| Batch {
            id: xxh3_64(format!("{yaml}/{now_ms}").as_bytes()),
            size: changed.len() as u32,
            at_ms: now_ms,
        });
        for (key, mut new) in changed {
            new.batch = batch;
            self.write_stored(writer, key, new);
        }
        Ok(())
    }

    /// Node `writer` changes a Deployment it holds (scale, new template) and writes it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn change_deployment(
        &mut self,
        writer: usize,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut crate::manifest::Deployment),
    ) -> Result<(), String> {
        let key = ObjectKey::new("deployment", namespace, name);
        let Some(Resource::Deployment(mut d)) =
            self.stored(writer, &key).and_then(|s| s.resource().ok())
        else {
            return Err(format!("n{writer} holds no deployment {namespace}/{name}"));
        };
        change(&mut d);
        d.metadata.clear_read_only();
        self.write_resource(writer, Resource::Deployment(d))
    }

    fn stored(&self, writer: usize, key: &ObjectKey) -> Option<StoredObject> {
        let node = self.gossip.node(writer)?;
        let entry = node.store().get(&shoal_gossip::Key::Object(key.clone()))?;
        StoredObject::decode(entry.value.as_ref()?).ok()
    }

    /// Waits, as the CLI does, while node `writer` has not compared its clock with its peers
    /// yet (a probe round after the start); an error if it refuses writes for another reason.
    fn until_writable(&mut self, writer: usize) -> Result<(), String> {
        let deadline = self.now + Duration::from_secs(5);
        loop {
            let Some(status) = self.gossip.clock_status(writer) else {
                return Err(format!("n{writer} is down"));
            };
            match status.verdict {
                ClockVerdict::Agrees => return Ok(()),
                ClockVerdict::NotCompared if self.now < deadline => {
                    self.run_for(Duration::from_millis(50));
                }
                _ => return Err(format!("n{writer}: {}", ClockRefusal(status))),
            }
        }
    }

    fn write_resource(&mut self, writer: usize, resource: Resource) -> Result<(), String> {
        self.until_writable(writer)?;
        if let Some((key, new)) = self.changed_object(writer, resource)? {
            self.write_stored(writer, key, new);
        }
        Ok(())
    }

    /// What node `writer` would write to apply `resource` over what its store holds; `None`
    /// when that is unchanged.
    fn changed_object(
        &self,
        writer: usize,
        resource: Resource,
    ) -> Result<Option<(ObjectKey, StoredObject)>, String> {
        if !self.nodes[writer].up {
            return Err(format!("n{writer} is down"));
        }
        let key = crate::workload::view::key_of(&resource);
        let old = self.stored(writer, &key);
        let now_ms = now_of(self.now).wall_ms;
        let uid = || format!("{:016x}", xxh3_64(format!("{key}/{now_ms}").as_bytes()));
        let (_, new) = apply_one(&resource, old.as_ref(), now_ms, uid);
        Ok(new.map(|new| (key, new)))
    }

    fn write_stored(&mut self, writer: usize, key: ObjectKey, new: StoredObject) {
        if let Some(entry) = self
            .gossip
            .write_object(writer, key.clone(), Some(new.encode()))
        {
            let interned = self.interner.get(&key, &entry);
            self.written.insert(key, interned);
        }
    }

    /// Node `i`'s machine dies: its agent and its pods are gone; the others learn it from
    /// gossip.
    pub(crate) fn kill(&mut self, i: usize) {
        if !self.nodes[i].up {
            return;
        }
        let running: BTreeSet<String> = self.nodes[i].rt.pod_uids().into_iter().collect();
        let lost: BTreeSet<ReplicaRef> = self.nodes[i]
            .desired
            .iter()
            .filter(|(uid, _)| running.contains(*uid))
            .map(|(_, r)| r.clone())
            .collect();
        self.gossip.crash(i);
        let node = &mut self.nodes[i];
        node.up = false;
        node.life += 1;
        node.rt = FakeRuntime::new();
        node.gate = BatchGate::default();
        node.gate_at = None;
        node.plan_at = None;
        node.deadline = None;
        self.truth.kill(i, lost, self.now);
    }

    /// Node `i`'s machine comes back, empty (its pods did not survive), with the gossip state
    /// it had persisted, and joins through a node that is up.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.nodes[i].up {
            return Err(format!("n{i} is up"));
        }
        let seeds: Vec<usize> = self.gossip.up_nodes();
        let Some(&seed) = seeds.get(self.gossip.random_index(seeds.len().max(1))) else {
            return Err("no node is up to join through".into());
        };
        let persisted = self.gossip.last_snapshot(i);
        self.gossip.restart(i, persisted, seed);
        let life = self.nodes[i].life + 1;
        let mut node = self.new_node(i);
        node.life = life;
        node.record_counter = self.nodes[i].record_counter;
        self.nodes[i] = node;
        self.drain(i);
        self.request_plan(i);
        Ok(())
    }

    /// Splits the network into groups (nodes in none form one more group).
    pub(crate) fn partition(&mut self, groups: &[Vec<usize>]) {
        let mut assignment = vec![groups.len() as u32; self.nodes.len()];
        for (g, members) in groups.iter().enumerate() {
            for &m in members {
                assignment[m] = g as u32;
            }
        }
        self.gossip.partition(assignment.clone());
        self.boards.split(&assignment);
    }

    /// Heals the partition: the network at once, the boards one anti-entropy interval later.
    pub(crate) fn heal(&mut self) {
        self.gossip.heal();
        if self.boards.is_split() {
            let at = self.now + self.config.network.gossip.anti_entropy_interval;
            self.push(at, Due::MergeBoards);
        }
    }

    // ---- what the observer sees ------------------------------------------------------------

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether node `i` is up.
    pub(crate) fn is_up(&self, i: usize) -> bool {
        self.nodes[i].up
    }

    /// The observer's account of what runs.
    fn truth(&self) -> &Truth {
        &self.truth
    }

    /// The Deployments as last written: (`namespace/name`, replicas, template hash).
    fn deployments_written(&self) -> Vec<(String, u32, String)> {
        self.written
            .iter()
            .filter_map(|(k, o)| {
                let (d, hash) = o.as_ref()?.object.as_ref()?.deployment()?;
                Some((
                    format!("{}/{}", k.namespace, k.name),
                    d.spec.replicas,
                    hash.to_owned(),
                ))
            })
            .collect()
    }

    /// Whether every record published has reached every node (no record on its way, no
    /// partition's boards waiting to merge).
    fn records_delivered(&self) -> bool {
        self.records_in_flight == 0 && !self.boards.is_split()
    }

    /// Whether node `i` holds every object as last written.
    fn holds_written(&self, i: usize) -> bool {
        self.written.iter().all(|(key, o)| {
            let held = self.nodes[i].view.version_of(key);
            held == o.as_ref().map(|o| o.version)
        })
    }
}

fn member_facts(config: &ClusterConfig, identity: &shoal_gossip::Identity) -> MemberFacts {
    MemberFacts {
        name: identity.name.clone(),
        addr: identity.addr.clone(),
        info: NodeInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            os: "linux".into(),
            arch: "amd64".into(),
            cpu_millis: config.cpu_millis,
            memory_bytes: config.memory_bytes,
            runtime: "process".into(),
            ..NodeInfo::default()
        },
    }
}

/// Does a supervisor's action on a fake runtime; its result is delivered later.
fn execute(rt: &FakeRuntime, action: Action) -> Completion {
    match action {
        Action::ListPods => Completion::Listed(block_on(rt.list_pods())),
        Action::PullImages { uid, images } => {
            let mut result = Ok(());
            for image in images {
                result = block_on(rt.ensure_image(&image, &mut |_| {}));
                if result.is_err() {
                    break;
                }
            }
            Completion::Pulled(uid, result)
        }
        Action::StartPod { uid, spec } => Completion::Started(uid, block_on(rt.start_pod(&spec))),
        Action::StopPod { uid, grace } => {
            let _ = block_on(rt.stop_pod(&uid, grace));
            let _ = block_on(rt.remove_pod(&uid));
            Completion::Stopped(uid)
        }
        Action::RestartContainer {
            uid,
            container,
            grace,
        } => {
            let result = block_on(rt.restart_container(&uid, &container, grace));
            Completion::Restarted(uid, container, result)
        }
        Action::RunProbe {
            uid,
            container,
            kind,
            probe,
            ip,
            token,
        } => {
            let result = match &probe.handler {
                ProbeHandler::Exec(_) => block_on(probe::run(rt, &uid, &container, &probe, ip)),
                _ => rt.probe(&uid, &container.name, kind),
            };
            Completion::Probed {
                uid,
                container: container.name,
                kind,
                token,
                result,
            }
        }
        Action::UpdateVolume { uid, volume } => {
            let result = block_on(rt.update_volume(&uid, &volume));
            Completion::VolumeUpdated(uid, volume.name, result)
        }
    }
}
