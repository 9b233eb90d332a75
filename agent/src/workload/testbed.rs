//! A small cluster in virtual time, for tests: the real planner, one [`Supervisor`] per node,
//! each with a [`FakeRuntime`], and pod records shared at once (gossip here is perfect and
//! instant).
//!
//! [`NodeRig`] is one node: its supervisor, its fake runtime, the work in flight (each action
//! is done on the fake runtime when the supervisor asks, and its result delivered after the
//! rig's `latency`) and the records it published. [`Testbed`] steps a few rigs from event to
//! event (the earliest completion or deadline of any rig), re-planning every node whenever the
//! shared state changes. A whole-cluster simulator can drive rigs with gossip nodes instead
//! of the instant sharing.
//!
//! Everything is deterministic: ordered maps, no randomness, time only from the testbed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::executor::block_on;
use shoal_gossip::{Instant, MemberState, NodeId, Now, ObjectKey};

use super::plan::plan;
use super::snapshot::{MemberSnap, Snapshot};
use super::stored::{PodRecord, StoredObject, object_key};
use super::supervisor::{Action, NodePlan, Supervisor, SupervisorConfig};
use super::view::{apply_one, deployment_status};
use crate::manifest::ProbeHandler;
use crate::manifest::ProbeKind;
use crate::manifest::{DeploymentStatus, Resource, parse};
use crate::node_info::NodeInfo;
use crate::runtime::fake::FakeRuntime;
use crate::runtime::{PodInfo, Runtime, RuntimeError};
use crate::workload::probe;
use crate::workload::service::{DEFAULT_SERVICE_RANGE, ServiceRange};

/// How long each runtime action takes in the testbed, unless a test says otherwise.
pub(crate) const DEFAULT_LATENCY: Duration = Duration::from_millis(10);

/// The wall clock at virtual time zero (ms since the Unix epoch), so stamps look real.
pub(crate) const EPOCH_MS: u64 = 1_767_225_600_000;

/// Both clocks at virtual time `mono`.
pub(crate) fn at(mono: Instant) -> Now {
    Now::new(mono, EPOCH_MS + mono.as_micros() / 1000)
}

/// The id of test node `i`.
pub(crate) fn node_id(i: usize) -> NodeId {
    NodeId([i as u8 + 1; 32])
}

/// Test node `i` as the planner sees it.
pub(crate) fn member(i: usize, state: MemberState) -> MemberSnap {
    MemberSnap {
        id: node_id(i),
        name: format!("node-{i}"),
        addr: format!("127.0.0.1:{}", 7000 + i),
        state,
        info: Some(NodeInfo {
            version: "test".into(),
            os: "linux".into(),
            arch: "amd64".into(),
            created_ms: 0,
            started_ms: 0,
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            labels: BTreeMap::new(),
            runtime: "process".into(),
            mesh: None,
            service_range: None,
            ..NodeInfo::default()
        }),
    }
}

/// `yaml` applied over `old` as the API would.
pub(crate) fn stored(yaml: &str, old: Option<&StoredObject>) -> (ObjectKey, StoredObject) {
    let resource = parse("test.yaml", yaml.as_bytes())
        .expect("valid manifest")
        .remove(0);
    let (_, new) = apply_one(&resource, old, EPOCH_MS, || "uid-1".into());
    let new = new.unwrap_or_else(|| old.expect("unchanged needs an old object").clone());
    let key = resource.key();
    (object_key(key.kind, &key.namespace, &key.name), new)
}

/// A finished runtime action, waiting to be delivered to the supervisor.
#[derive(Debug)]
pub(crate) enum Completion {
    Listed(Result<Vec<PodInfo>, RuntimeError>),
    Pulled {
        uid: String,
        progress: Vec<String>,
        result: Result<(), RuntimeError>,
    },
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

/// What happened on a rig, in order, for tests that check sequences.
// A test log: matching on the action in place matters more than its size.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Happened {
    /// The supervisor asked for this.
    Issued(Instant, Action),
    /// A stop completed and was delivered.
    StopDelivered(Instant, String),
}

/// One node: a supervisor, its fake runtime, and the work in flight.
pub(crate) struct NodeRig {
    pub(crate) index: usize,
    pub(crate) id: NodeId,
    pub(crate) config: SupervisorConfig,
    pub(crate) sup: Supervisor,
    pub(crate) rt: FakeRuntime,
    /// The records it published (what the cluster sees of its pods), by name.
    pub(crate) published: BTreeMap<String, PodRecord>,
    /// How many record updates it published.
    pub(crate) record_writes: usize,
    /// Every probe result delivered: (when, uid, kind, passed).
    pub(crate) probe_results: Vec<(Instant, String, ProbeKind, bool)>,
    /// The agent is not running (its runtime's pods are): nothing is delivered or planned.
    pub(crate) frozen: bool,
    /// How long each action takes.
    pub(crate) latency: Duration,
    /// Whether its containers ignore SIGTERM, so that a stop takes the pod's whole grace
    /// period (as a server that does not handle SIGTERM as PID 1 makes Docker wait).
    pub(crate) ignore_sigterm: bool,
    pub(crate) history: Vec<Happened>,
    pending: BTreeMap<(Instant, u64), Completion>,
    seq: u64,
    /// Whether the published records changed since the testbed last looked.
    pub(crate) changed: bool,
}

impl NodeRig {
    pub(crate) fn new(index: usize, now: Now, range: ServiceRange, pull_images: bool) -> Self {
        let config = SupervisorConfig {
            me: node_id(index),
            host_ip: format!("127.0.0.1:{}", 7000 + index),
            service_range: range,
            pull_images,
            run: 1,
            secret_box: None,
        };
        NodeRig {
            index,
            id: node_id(index),
            sup: Supervisor::new(config.clone(), now),
            config,
            rt: FakeRuntime::new(),
            published: BTreeMap::new(),
            record_writes: 0,
            probe_results: Vec::new(),
            frozen: false,
            latency: DEFAULT_LATENCY,
            ignore_sigterm: false,
            history: Vec::new(),
            pending: BTreeMap::new(),
            seq: 0,
            changed: false,
        }
    }

    /// The agent restarts (kill -9 and start): a new supervisor, the same runtime and records;
    /// the runtime recovers from interrupted operations first, as the agent's does when it is
    /// made.
    pub(crate) fn restart_agent(&mut self, now: Now) {
        self.rt.set_now_ms(now.wall_ms);
        block_on(self.rt.recover()).expect("the fake runtime recovers");
        self.sup = Supervisor::new(self.config.clone(), now);
        self.pending.clear();
    }

    /// Plans for this node from `snapshot` if the supervisor wants a plan now; returns the
    /// forfeit it planned with.
    pub(crate) fn plan(
        &mut self,
        snapshot: &Arc<Snapshot>,
        synced: bool,
        now: Now,
    ) -> Option<bool> {
        let forfeit = self.sup.plan_forfeit(synced, now)?;
        let plan = plan(snapshot, forfeit.then_some(&self.id), now.wall_ms);
        let node_plan = NodePlan::new(
            snapshot,
            &plan,
            &self.id,
            self.config.service_range,
            self.sup.plan(),
        );
        self.sup.handle_plan(node_plan, now);
        self.drain(now);
        Some(forfeit)
    }

    /// Does what the supervisor asks on the fake runtime (results are delivered after
    /// `latency`) and takes the records it publishes.
    pub(crate) fn drain(&mut self, now: Now) {
        self.rt.set_now_ms(now.wall_ms);
        while let Some(action) = self.sup.poll_action() {
            self.history
                .push(Happened::Issued(now.mono, action.clone()));
            let takes = match &action {
                Action::StopPod { grace, .. } if self.ignore_sigterm => *grace,
                _ => self.latency,
            };
            let done = self.execute(action);
            self.seq += 1;
            self.pending.insert((now.mono + takes, self.seq), done);
        }
        while let Some(update) = self.sup.poll_record_update() {
            self.record_writes += 1;
            self.changed = true;
            match update.value {
                Some(bytes) => {
                    let record = PodRecord::decode(&bytes).expect("records decode");
                    self.published.insert(update.name, record);
                }
                None => {
                    self.published.remove(&update.name);
                }
            }
        }
    }

    fn execute(&mut self, action: Action) -> Completion {
        let rt = &self.rt;
        match action {
            Action::ListPods => Completion::Listed(block_on(rt.list_pods())),
            Action::PullImages { uid, images } => {
                let mut progress = Vec::new();
                let mut result = Ok(());
                for image in images {
                    let pulled = block_on(rt.ensure_image(&image, &mut |m| progress.push(m)));
                    if pulled.is_err() {
                        result = pulled;
                        break;
                    }
                }
                Completion::Pulled {
                    uid,
                    progress,
                    result,
                }
            }
            Action::StartPod { uid, spec } => {
                Completion::Started(uid, block_on(rt.start_pod(&spec)))
            }
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
                // Exec probes go through the runtime as in production; network probes get the
                // fake's scripted answer.
                let result = match &probe.handler {
                    ProbeHandler::Exec(_) => block_on(probe::run(rt, &uid, &container, &probe, ip)),
                    _ => rt.probe(&uid, &container.name, kind),
                };
                Completion::Probed {
                    result,
                    uid,
                    container: container.name,
                    kind,
                    token,
                }
            }
            Action::UpdateVolume { uid, volume } => {
                let result = block_on(rt.update_volume(&uid, &volume));
                Completion::VolumeUpdated(uid, volume.name, result)
            }
        }
    }

    /// The earliest completion or deadline.
    pub(crate) fn next_event(&self) -> Option<Instant> {
        let completion = self.pending.keys().next().map(|(t, _)| *t);
        match (completion, self.sup.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Delivers every completion and fires every deadline due at `now`.
    pub(crate) fn advance(&mut self, now: Now) {
        loop {
            let due = self
                .pending
                .first_key_value()
                .is_some_and(|((t, _), _)| *t <= now.mono);
            if due {
                let (_, done) = self.pending.pop_first().expect("checked");
                self.deliver(done, now);
            } else if self.sup.poll_timeout().is_some_and(|t| t <= now.mono) {
                self.sup.handle_timeout(now);
            } else {
                break;
            }
            self.drain(now);
        }
    }

    fn deliver(&mut self, done: Completion, now: Now) {
        let sup = &mut self.sup;
        match done {
            Completion::Listed(result) => sup.handle_pods_listed(result, now),
            Completion::Pulled {
                uid,
                progress,
                result,
            } => {
                for line in progress {
                    sup.handle_pull_progress(&uid, line, now);
                }
                sup.handle_pulled(&uid, result, now);
            }
            Completion::Started(uid, result) => sup.handle_started(&uid, result, now),
            Completion::Stopped(uid) => {
                self.history
                    .push(Happened::StopDelivered(now.mono, uid.clone()));
                sup.handle_stopped(&uid, now);
            }
            Completion::Restarted(uid, container, result) => {
                sup.handle_restarted(&uid, &container, result, now)
            }
            Completion::Probed {
                uid,
                container,
                kind,
                token,
                result,
            } => {
                self.probe_results
                    .push((now.mono, uid.clone(), kind, result.is_ok()));
                sup.handle_probe_result(&uid, &container, kind, token, result, now)
            }
            Completion::VolumeUpdated(uid, volume, result) => {
                sup.handle_volume_updated(&uid, &volume, result, now)
            }
        }
    }

    /// Checks that what it published is what its supervisor would publish now: every state
    /// change that shows in a record was noticed.
    pub(crate) fn check_published(&self) {
        for (name, record) in &self.published {
            // Through the encoding, as published (timestamps keep whole seconds).
            let current = self
                .sup
                .current_record(name)
                .and_then(|r| PodRecord::decode(&r.encode()).ok());
            assert_eq!(
                current.as_ref(),
                Some(record),
                "{} published a stale record {name}",
                self.id
            );
        }
    }

    /// Runs this rig alone until `until` (for tests of one node with hand-made plans).
    pub(crate) fn run_to(&mut self, now: Now, until: Instant) -> Now {
        let mut t = now;
        while let Some(next) = self.next_event().filter(|n| *n <= until) {
            t = at(next.max(t.mono));
            self.advance(t);
        }
        at(until.max(t.mono))
    }

    /// The uid of the pod named `name` it runs.
    pub(crate) fn uid_of(&self, name: &str) -> String {
        self.record(name)
            .and_then(|r| r.pod.metadata.uid.clone())
            .unwrap_or_else(|| panic!("no record of {name}"))
    }

    /// The published record of the pod named `name` (default namespace).
    pub(crate) fn record(&self, name: &str) -> Option<&PodRecord> {
        self.published.get(&format!("pod/default/{name}"))
    }
}

/// A few nodes sharing state at once.
pub(crate) struct Testbed {
    pub(crate) now: Now,
    pub(crate) rigs: Vec<NodeRig>,
    pub(crate) members: Vec<MemberSnap>,
    objects: BTreeMap<ObjectKey, StoredObject>,
    /// Bumped whenever the shared state changes.
    version: u64,
    /// What each rig last planned with: (version, forfeit).
    planned: Vec<Option<(u64, bool)>>,
}

impl Testbed {
    /// `nodes` live nodes.
    pub(crate) fn new(nodes: usize) -> Self {
        Testbed::new_with(nodes, nodes, false)
    }

    /// `nodes` nodes of which the first `joined` are members (the others [`Testbed::join`]
    /// later); `pull_images`: the runtimes have images to pull.
    pub(crate) fn new_with(nodes: usize, joined: usize, pull_images: bool) -> Self {
        let now = at(Instant(0));
        let mut bed = Testbed {
            now,
            rigs: (0..nodes)
                .map(|i| NodeRig::new(i, now, DEFAULT_SERVICE_RANGE, pull_images))
                .collect(),
            members: (0..joined).map(|i| member(i, MemberState::Alive)).collect(),
            objects: BTreeMap::new(),
            version: 0,
            planned: vec![None; nodes],
        };
        bed.sync();
        bed
    }

    /// Node `i` joins the cluster.
    pub(crate) fn join(&mut self, i: usize) {
        self.members.push(member(i, MemberState::Alive));
        self.version += 1;
        self.sync();
    }

    /// Applies a manifest (creates or updates the object).
    pub(crate) fn apply(&mut self, yaml: &str) {
        let resource = parse("test.yaml", yaml.as_bytes())
            .expect("valid manifest")
            .remove(0);
        let key = resource.key();
        let key = object_key(key.kind, &key.namespace, &key.name);
        let (key, stored) = stored(yaml, self.objects.get(&key));
        self.objects.insert(key, stored);
        self.version += 1;
        self.sync();
    }

    /// Deletes an object.
    pub(crate) fn delete(&mut self, kind: &str, name: &str) {
        self.objects
            .retain(|k, _| !(k.kind == kind && k.name == name));
        self.version += 1;
        self.sync();
    }

    /// Node `i` gets these labels (as its node info would announce them).
    pub(crate) fn set_labels(&mut self, i: usize, labels: &[(&str, &str)]) {
        let id = node_id(i);
        for m in self.members.iter_mut().filter(|m| m.id == id) {
            if let Some(info) = &mut m.info {
                info.labels = labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
            }
        }
        self.version += 1;
        self.sync();
    }

    /// Node `i`'s machine dies: it is dead to the others and does nothing more.
    pub(crate) fn kill(&mut self, i: usize) {
        let id = node_id(i);
        for m in self.members.iter_mut().filter(|m| m.id == id) {
            m.state = MemberState::Dead;
        }
        self.version += 1;
        self.sync();
    }

    /// Node `i`'s agent stops (kill -9): its pods run on, it does nothing, the others still
    /// see it live.
    pub(crate) fn stop_agent(&mut self, i: usize) {
        self.rigs[i].frozen = true;
    }

    /// Node `i`'s agent starts again: a new supervisor over the same runtime.
    pub(crate) fn start_agent(&mut self, i: usize) {
        let now = self.now;
        self.rigs[i].restart_agent(now);
        self.rigs[i].frozen = false;
        self.planned[i] = None;
        self.sync();
    }

    /// The shared state as every node sees it.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot::new(
            self.members.clone(),
            self.objects
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            self.rigs
                .iter()
                .flat_map(|rig| rig.published.values().map(|r| (rig.id, r.clone())))
                .collect(),
        )
    }

    /// Whether node `i` is a live member whose agent runs.
    fn is_up(&self, i: usize) -> bool {
        let id = node_id(i);
        !self.rigs[i].frozen && self.members.iter().any(|m| m.id == id && m.state.is_live())
    }

    /// Re-plans every node until the shared state stops changing.
    fn sync(&mut self) {
        for _ in 0..1000 {
            for i in 0..self.rigs.len() {
                if self.rigs[i].changed {
                    self.rigs[i].changed = false;
                    self.version += 1;
                }
            }
            let snapshot = Arc::new(self.snapshot());
            let mut planned_any = false;
            for i in 0..self.rigs.len() {
                if !self.is_up(i) {
                    continue;
                }
                let now = self.now;
                let rig = &mut self.rigs[i];
                rig.drain(now);
                let Some(forfeit) = rig.sup.plan_forfeit(true, now) else {
                    continue;
                };
                if self.planned[i] == Some((self.version, forfeit)) {
                    continue;
                }
                rig.plan(&snapshot, true, now);
                self.planned[i] = Some((self.version, forfeit));
                planned_any = true;
            }
            if !planned_any && self.rigs.iter().all(|r| !r.changed) {
                return;
            }
        }
        panic!("the cluster never settles at {:?}", self.now.mono);
    }

    /// Goes to the next event before `limit` (or to `limit`); returns whether it was an event.
    fn step(&mut self, limit: Instant) -> bool {
        let next = (0..self.rigs.len())
            .filter(|i| self.is_up(*i))
            .filter_map(|i| self.rigs[i].next_event())
            .min();
        let Some(next) = next.filter(|t| *t <= limit) else {
            self.now = at(limit);
            self.sync();
            return false;
        };
        self.now = at(next.max(self.now.mono));
        for i in 0..self.rigs.len() {
            if self.is_up(i) {
                let now = self.now;
                self.rigs[i].advance(now);
            }
        }
        self.sync();
        for rig in &self.rigs {
            rig.check_published();
        }
        true
    }

    /// Runs for `d` of virtual time, calling `check` after every event.
    pub(crate) fn run_for(&mut self, d: Duration, mut check: impl FnMut(&Testbed)) {
        let limit = self.now.mono + d;
        while self.step(limit) {
            check(self);
        }
        check(self);
    }

    /// Runs until `done` holds (checked after every event), at most `timeout`; returns how
    /// long it took.
    pub(crate) fn run_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Testbed) -> bool,
    ) -> Duration {
        let start = self.now.mono;
        let limit = start + timeout;
        loop {
            if done(self) {
                return self.now.mono.saturating_since(start);
            }
            assert!(
                self.step(limit) || done(self),
                "{what}: not reached within {timeout:?}; pods: {:#?}",
                self.pods()
            );
        }
    }

    /// Every published pod as (node, name, ready, template hash), ordered.
    pub(crate) fn pods(&self) -> Vec<(usize, String, bool, Option<String>)> {
        let mut out: Vec<_> = self
            .rigs
            .iter()
            .filter(|r| {
                self.members
                    .iter()
                    .any(|m| m.id == r.id && m.state.is_live())
            })
            .flat_map(|r| {
                r.published.values().map(|p| {
                    (
                        r.index,
                        p.pod.metadata.name.clone(),
                        p.is_ready(),
                        p.template_hash.clone(),
                    )
                })
            })
            .collect();
        out.sort();
        out
    }

    /// A Deployment's status as `get deployment` computes it now.
    pub(crate) fn deployment_status(&self, name: &str) -> DeploymentStatus {
        let stored = self
            .objects
            .iter()
            .find(|(k, _)| k.kind == "deployment" && k.name == name)
            .map(|(_, v)| v)
            .expect("the deployment exists");
        let Ok(Resource::Deployment(d)) = stored.resource() else {
            panic!("not a deployment");
        };
        let snapshot = self.snapshot();
        deployment_status(&d, &snapshot, &snapshot.counted(), self.now.wall_ms)
    }
}
