//! The reconciler: makes this node run what the plan gives it. Level-triggered: every pass
//! compares the desired pods (the [`plan`] of the latest snapshot) with what the runtime
//! reports, and acts on the difference; a pass runs on every snapshot change, every runtime
//! action that completes, and every 500 ms.
//!
//! - **Start** a desired pod the runtime does not have (pulling its images first, with progress
//!   as pod events; a failed pull is `ErrImagePull`, then `ImagePullBackOff`).
//! - **Restart** exited containers per `restartPolicy` with Kubernetes' back-off (the first
//!   restart at once, then 10 s doubling to 5 min, reset after 10 min of running):
//!   `CrashLoopBackOff` while waiting. A liveness probe that fails `failureThreshold` times in a
//!   row restarts the container too.
//! - **Probes**: readiness decides a container's `ready` (no probe: ready once running), startup
//!   holds the other probes until it passes; httpGet, tcpSocket and exec.
//! - **Stop** pods no longer desired here, make-before-break: a replica that moved to another
//!   node keeps running here until the new node reports it ready (or the new node is not live,
//!   or this copy is not ready anyway), so a rebalance never lowers the ready count.
//! - **Report** each pod's status as the owned entry `pod/<ns>/<name>` (only when it changed);
//!   gossip spreads it, so `get pods` on any node shows the whole cluster.
//! - **After a restart** of the agent, the first pass plans without counting this node's own
//!   pods as running (they may have been replaced while it was away), removes what it no
//!   longer owns before starting anything, and adopts the pods it still owns.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_gossip::NodeId;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::plan::{DesiredPod, Plan, plan};
use super::probe::{self, ProbeKind};
use super::service::{self, ServiceRange};
use super::snapshot::Snapshot;
use super::stored::{PodEvent, PodRecord, record_name};
use crate::driver::{DriverHandle, wall_ms};
use crate::manifest::{
    self, ConditionStatus, PodCondition, PodConditionType, PodPhase, PodStatus, Probe,
    RestartPolicy, Timestamp,
};
use crate::runtime::{self, AnyRuntime, ContainerSpec, PodInfo, Runtime, RuntimeError};

/// Time between passes when nothing else happens.
const TICK: Duration = Duration::from_millis(500);
/// First restart delay after the first restart (Kubernetes' kubelet).
const BACKOFF_START: Duration = Duration::from_secs(10);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container running this long gets its back-off reset.
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Events kept per pod.
const MAX_EVENTS: usize = 20;
/// How long the first pass waits for the first synchronisation with the cluster.
const SYNC_WAIT: Duration = Duration::from_secs(5);

/// What the reconciler needs to know about this node.
pub(crate) struct ReconcilerConfig {
    pub(crate) me: NodeId,
    /// This node's address (the host part is the pods' `hostIP`).
    pub(crate) host_ip: String,
    /// The cluster's service range (for the service-link variables pods start with).
    pub(crate) service_range: ServiceRange,
}

/// Results of runtime work done in tasks.
enum Done {
    Started {
        uid: String,
        result: Result<PodInfo, RuntimeError>,
    },
    Pulled {
        uid: String,
        result: Result<(), RuntimeError>,
    },
    Progress {
        uid: String,
        message: String,
    },
    Stopped {
        uid: String,
    },
    Restarted {
        uid: String,
        container: String,
        result: Result<(), RuntimeError>,
    },
    Probed {
        uid: String,
        container: String,
        kind: ProbeKind,
        result: Result<(), String>,
    },
}

#[derive(Default)]
struct ProbeState {
    next_at: Option<Instant>,
    successes: u32,
    failures: u32,
    running: bool,
}

#[derive(Default)]
struct ContainerLocal {
    restarts: u32,
    backoff: Duration,
    restart_at: Option<Instant>,
    last_state: Option<manifest::ContainerState>,
    /// The `started_at_ms` of the run whose exit was last handled.
    handled_exit_of: Option<Option<u64>>,
    ready: bool,
    started: bool,
    readiness: ProbeState,
    liveness: ProbeState,
    startup: ProbeState,
    running_since: Option<Instant>,
}

struct LocalPod {
    desired: DesiredPod,
    info: Option<PodInfo>,
    accepted_ms: u64,
    containers: BTreeMap<String, ContainerLocal>,
    events: VecDeque<PodEvent>,
    /// Why the pod's containers are not created yet (`ErrImagePull`, `ContainerCreating` ...).
    waiting: Option<(String, String)>,
    pull_retry_at: Option<Instant>,
    pull_backoff: Duration,
    ready_since_ms: Option<u64>,
    /// Stop requested (no longer desired here): shown as Terminating.
    terminating: bool,
}

impl LocalPod {
    fn new(desired: DesiredPod) -> Self {
        let containers = desired
            .pod
            .spec
            .containers
            .iter()
            .map(|c| (c.name.clone(), ContainerLocal::default()))
            .collect();
        LocalPod {
            desired,
            info: None,
            accepted_ms: wall_ms(),
            containers,
            events: VecDeque::new(),
            waiting: Some(("ContainerCreating".into(), String::new())),
            pull_retry_at: None,
            pull_backoff: Duration::ZERO,
            ready_since_ms: None,
            terminating: false,
        }
    }

    fn event(&mut self, kind: &str, reason: &str, message: impl Into<String>) {
        let message = message.into();
        let now = wall_ms();
        if let Some(last) = self.events.back_mut() {
            if last.reason == reason && last.message == message {
                last.count += 1;
                last.at_ms = now;
                return;
            }
        }
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(PodEvent {
            at_ms: now,
            kind: kind.into(),
            reason: reason.into(),
            message,
            count: 1,
        });
    }
}

/// Stops and removes every pod of this node (when the node leaves the cluster), each with at
/// most its grace period, in parallel.
pub(crate) async fn stop_all(runtime: &Arc<AnyRuntime>) {
    let pods = match runtime.list_pods().await {
        Ok(pods) => pods,
        Err(e) => {
            warn!(error = %e, "listing pods to stop them failed");
            return;
        }
    };
    if pods.is_empty() {
        return;
    }
    info!(pods = pods.len(), "stopping this node's pods");
    let stops = pods.into_iter().map(|pod| {
        let runtime = runtime.clone();
        async move {
            if let Err(e) = runtime.stop_pod(&pod.uid, Duration::from_secs(30)).await {
                warn!(pod = %pod.name, error = %e, "stopping a pod failed");
            }
            if let Err(e) = runtime.remove_pod(&pod.uid).await {
                warn!(pod = %pod.name, error = %e, "removing a pod failed");
            }
        }
    });
    futures::future::join_all(stops).await;
}

/// Starts the reconciler task.
pub(crate) fn start(
    config: ReconcilerConfig,
    runtime: Arc<AnyRuntime>,
    driver: DriverHandle,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    plans: watch::Sender<Arc<Plan>>,
) -> tokio::task::JoinHandle<()> {
    let (done_tx, done_rx) = mpsc::channel(1024);
    let mut reconciler = Reconciler {
        config,
        runtime,
        driver,
        snapshots,
        plans,
        done_tx,
        done_rx,
        pods: BTreeMap::new(),
        busy: BTreeSet::new(),
        written: BTreeMap::new(),
        first_pass_done: false,
        started_at: Instant::now(),
    };
    tokio::spawn(async move { reconciler.run().await })
}

struct Reconciler {
    config: ReconcilerConfig,
    runtime: Arc<AnyRuntime>,
    driver: DriverHandle,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    plans: watch::Sender<Arc<Plan>>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    pods: BTreeMap<String, LocalPod>,
    /// Pods with a runtime action in flight.
    busy: BTreeSet<String>,
    /// Record bytes last written, by record name.
    written: BTreeMap<String, Option<Vec<u8>>>,
    first_pass_done: bool,
    started_at: Instant,
}

impl Reconciler {
    async fn run(&mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                done = self.done_rx.recv() => {
                    if let Some(done) = done {
                        self.handle_done(done);
                        // Take every other completion that is waiting before the next pass.
                        while let Ok(more) = self.done_rx.try_recv() {
                            self.handle_done(more);
                        }
                    }
                }
                _ = tick.tick() => {}
            }
            self.pass().await;
        }
    }

    fn handle_done(&mut self, done: Done) {
        match done {
            Done::Pulled { uid, result } => {
                // After a good pull the same task goes on to start the pod: it stays busy
                // until `Started`, or the next pass would start it a second time.
                if result.is_err() {
                    self.busy.remove(&uid);
                }
                let Some(pod) = self.pods.get_mut(&uid) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        pod.pull_backoff = Duration::ZERO;
                        pod.pull_retry_at = None;
                    }
                    Err(e) => {
                        let message = e.to_string();
                        pod.event("Warning", "Failed", message.clone());
                        pod.pull_backoff = next_backoff(pod.pull_backoff);
                        pod.pull_retry_at = Some(Instant::now() + pod.pull_backoff);
                        pod.waiting = Some(("ErrImagePull".into(), message));
                    }
                }
            }
            Done::Progress { uid, message } => {
                if let Some(pod) = self.pods.get_mut(&uid) {
                    pod.event("Normal", "Pulling", message);
                }
            }
            Done::Started { uid, result } => {
                self.busy.remove(&uid);
                let Some(pod) = self.pods.get_mut(&uid) else {
                    return;
                };
                match result {
                    Ok(info) => {
                        pod.waiting = None;
                        for c in &info.containers {
                            pod.event("Normal", "Started", format!("Started container {}", c.name));
                        }
                        pod.info = Some(info);
                    }
                    Err(RuntimeError::ImageNotPresent { .. }) => {
                        // Pull first next time.
                        pod.pull_retry_at = None;
                        pod.waiting = Some(("ContainerCreating".into(), String::new()));
                    }
                    Err(e) => {
                        let message = e.to_string();
                        warn!(pod = %pod.desired.pod.metadata.name, error = %message, "starting a pod failed");
                        pod.event("Warning", "Failed", message.clone());
                        pod.waiting = Some(("CreateContainerError".into(), message));
                        pod.pull_backoff = next_backoff(pod.pull_backoff);
                        pod.pull_retry_at = Some(Instant::now() + pod.pull_backoff);
                    }
                }
            }
            Done::Stopped { uid } => {
                self.busy.remove(&uid);
                if let Some(pod) = self.pods.remove(&uid) {
                    info!(pod = %pod.desired.pod.metadata.name, "pod stopped and removed");
                }
            }
            Done::Restarted {
                uid,
                container,
                result,
            } => {
                self.busy.remove(&uid);
                let Some(pod) = self.pods.get_mut(&uid) else {
                    return;
                };
                match result {
                    Ok(()) => pod.event(
                        "Normal",
                        "Started",
                        format!("Restarted container {container}"),
                    ),
                    Err(e) => pod.event("Warning", "Failed", e.to_string()),
                }
            }
            Done::Probed {
                uid,
                container,
                kind,
                result,
            } => self.handle_probe(&uid, &container, kind, result),
        }
    }

    fn handle_probe(
        &mut self,
        uid: &str,
        container: &str,
        kind: ProbeKind,
        result: Result<(), String>,
    ) {
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        let Some(spec) = pod
            .desired
            .pod
            .spec
            .containers
            .iter()
            .find(|c| c.name == container)
            .cloned()
        else {
            return;
        };
        let Some(probe) = kind.probe_of(&spec).cloned() else {
            return;
        };
        let mut restart = false;
        let mut event = None;
        {
            let Some(c) = pod.containers.get_mut(container) else {
                return;
            };
            let state = c.probe_mut(kind);
            state.running = false;
            state.next_at =
                Some(Instant::now() + Duration::from_secs(probe.period_seconds.max(1).into()));
            match &result {
                Ok(()) => {
                    state.successes += 1;
                    state.failures = 0;
                }
                Err(_) => {
                    state.failures += 1;
                    state.successes = 0;
                }
            }
            let (successes, failures) = (state.successes, state.failures);
            match kind {
                ProbeKind::Startup => {
                    if successes >= 1 {
                        c.started = true;
                    } else if failures >= probe.failure_threshold {
                        restart = true;
                    }
                }
                ProbeKind::Readiness => {
                    if successes >= probe.success_threshold {
                        c.ready = true;
                    } else if failures >= probe.failure_threshold {
                        c.ready = false;
                    }
                }
                ProbeKind::Liveness => {
                    if failures >= probe.failure_threshold {
                        restart = true;
                    }
                }
            }
            if let Err(message) = &result {
                event = Some(format!("{} probe failed: {message}", kind.as_str()));
            }
            if restart {
                c.liveness = ProbeState::default();
                c.readiness = ProbeState::default();
                c.startup = ProbeState::default();
                c.ready = false;
            }
        }
        if let Some(message) = event {
            pod.event("Warning", "Unhealthy", message);
        }
        if restart && !self.busy.contains(uid) {
            pod.event(
                "Normal",
                "Killing",
                format!(
                    "Container {container} failed its {} probe, will be restarted",
                    kind.as_str()
                ),
            );
            if let Some(c) = pod.containers.get_mut(container) {
                c.restarts += 1;
            }
            let grace = Duration::from_secs(pod.desired.pod.spec.termination_grace_period_seconds);
            self.spawn_restart(uid.to_owned(), container.to_owned(), grace);
        }
    }

    async fn pass(&mut self) {
        let snapshot = self.snapshots.borrow().clone();
        let me = self.config.me;
        if !self.first_pass_done
            && !snapshot_synced(&snapshot, &me)
            && self.started_at.elapsed() < SYNC_WAIT
        {
            return;
        }
        let forfeit = (!self.first_pass_done).then_some(&me);
        let plan = plan(&snapshot, forfeit, wall_ms());
        let actual = match self.runtime.list_pods().await {
            Ok(pods) => pods,
            Err(e) => {
                warn!(error = %e, "listing pods failed");
                return;
            }
        };
        let actual: BTreeMap<String, PodInfo> =
            actual.into_iter().map(|p| (p.uid.clone(), p)).collect();
        let desired: BTreeMap<String, DesiredPod> =
            plan.pods_on(&me).map(|p| (p.uid.clone(), p)).collect();
        let first_pass = !self.first_pass_done;

        // Pods this node runs that are no longer desired here.
        let mut stops = Vec::new();
        for (uid, info) in &actual {
            if desired.contains_key(uid) || self.busy.contains(uid) {
                continue;
            }
            let adopted = self.adopt(uid, info, &snapshot);
            let keep = adopted
                && self.pods.get(uid).is_some_and(|pod| {
                    !pod.terminating && self.keep_for_handoff(pod, &plan, &snapshot)
                });
            if !keep {
                stops.push(uid.clone());
            }
        }
        for uid in stops {
            self.stop(&uid, first_pass).await;
        }

        // Pods desired here.
        for (uid, want) in &desired {
            if !self.pods.contains_key(uid) {
                info!(pod = %want.pod.metadata.name, namespace = %want.pod.metadata.namespace.as_deref().unwrap_or(""), "pod placed on this node");
                self.pods.insert(uid.clone(), LocalPod::new(want.clone()));
            }
            let pod = self.pods.get_mut(uid).expect("inserted");
            pod.desired = want.clone();
            pod.terminating = false;
            match actual.get(uid) {
                Some(info) => {
                    pod.info = Some(info.clone());
                    pod.waiting = None;
                }
                None if !self.busy.contains(uid) => {
                    if pod.info.take().is_some() {
                        pod.event(
                            "Warning",
                            "Missing",
                            "the runtime lost the pod; creating it again",
                        );
                    }
                    if pod.pull_retry_at.is_some_and(|t| t > Instant::now()) {
                        if let Some((reason, _)) = &mut pod.waiting {
                            if reason == "ErrImagePull" {
                                *reason = "ImagePullBackOff".into();
                            }
                        }
                        continue;
                    }
                    self.spawn_start(uid.clone());
                }
                None => {}
            }
        }
        // Local pods that vanished from both desired and actual (stopped meanwhile).
        self.pods.retain(|uid, pod| {
            desired.contains_key(uid) || actual.contains_key(uid) || pod.terminating
        });

        self.restart_exited();
        self.schedule_probes();
        self.publish(&snapshot).await;
        self.first_pass_done = true;
        let _ = self.plans.send(Arc::new(plan));
    }

    /// Makes sure a running pod we did not start in this life has local state (after an agent
    /// restart), from this node's own record of it.
    fn adopt(&mut self, uid: &str, info: &PodInfo, snapshot: &Snapshot) -> bool {
        if !self.pods.contains_key(uid) {
            let record = snapshot.records_of(&self.config.me).find(|(_, r)| {
                r.pod.metadata.name == info.name
                    && r.pod.metadata.namespace.as_deref() == Some(info.namespace.as_str())
            });
            let Some((_, record)) = record else {
                return false;
            };
            let desired = DesiredPod {
                node: self.config.me,
                pod: record.pod.clone(),
                replica: record.replica.clone(),
                deployment: record.deployment.clone(),
                template_hash: record.template_hash.clone(),
                uid: uid.to_owned(),
                spec_hash: info.spec_hash.clone(),
            };
            let mut pod = LocalPod::new(desired);
            pod.info = Some(info.clone());
            pod.waiting = None;
            pod.ready_since_ms = record.ready_since_ms;
            if let Some(start) = record.status.start_time {
                pod.accepted_ms = start.0;
            }
            pod.events = record.events.iter().cloned().collect();
            for status in &record.status.container_statuses {
                if let Some(c) = pod.containers.get_mut(&status.name) {
                    c.restarts = status.restart_count;
                    c.ready = status.ready;
                    c.started = true;
                }
            }
            self.pods.insert(uid.to_owned(), pod);
        }
        true
    }

    /// Make-before-break: whether a pod no longer desired here keeps running until its
    /// replica's new copy is ready.
    fn keep_for_handoff(&self, pod: &LocalPod, plan: &Plan, snapshot: &Snapshot) -> bool {
        if !pod_ready(pod) {
            return false;
        }
        let Some(target) = plan.node_of(&pod.desired.replica) else {
            // The replica is not wanted anywhere any more (scaled down, deleted, rolled).
            return false;
        };
        if *target == self.config.me || !snapshot.is_live(target) {
            return false;
        }
        let ready_there = snapshot
            .records_of(target)
            .any(|(_, r)| r.replica == pod.desired.replica && r.is_ready());
        !ready_there
    }

    async fn stop(&mut self, uid: &str, wait: bool) {
        let grace = self
            .pods
            .get(uid)
            .map(|p| Duration::from_secs(p.desired.pod.spec.termination_grace_period_seconds))
            .unwrap_or(Duration::from_secs(30));
        if let Some(pod) = self.pods.get_mut(uid) {
            if !pod.terminating {
                pod.terminating = true;
                pod.event(
                    "Normal",
                    "Killing",
                    "Stopping the pod: not placed on this node any more",
                );
                info!(pod = %pod.desired.pod.metadata.name, "stopping a pod no longer placed here");
            }
        }
        self.busy.insert(uid.to_owned());
        let runtime = self.runtime.clone();
        let done = self.done_tx.clone();
        let uid = uid.to_owned();
        let work = async move {
            if let Err(e) = runtime.stop_pod(&uid, grace).await {
                warn!(%uid, error = %e, "stopping a pod failed");
            }
            if let Err(e) = runtime.remove_pod(&uid).await {
                warn!(%uid, error = %e, "removing a pod failed");
            }
            let _ = done.send(Done::Stopped { uid }).await;
        };
        if wait {
            // After a restart, what this node no longer owns goes before anything starts.
            work.await;
            while let Ok(d) = self.done_rx.try_recv() {
                self.handle_done(d);
            }
        } else {
            tokio::spawn(work);
        }
    }

    fn spawn_start(&mut self, uid: String) {
        let Some(pod) = self.pods.get_mut(&uid) else {
            return;
        };
        // Service links, as Kubernetes sets them: the services that exist when the pod
        // starts (they are not part of the spec: a new service does not restart pods).
        let namespace = pod
            .desired
            .pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        let links = service::service_env_vars(
            self.config.service_range,
            &self.snapshots.borrow(),
            namespace,
        );
        let spec = runtime_spec(&pod.desired, &links, self.config.service_range);
        let pull_needed = pod.pull_retry_at.is_none()
            && pod
                .waiting
                .as_ref()
                .is_some_and(|(r, _)| r == "ContainerCreating")
            && matches!(*self.runtime, AnyRuntime::Docker(_));
        pod.waiting = Some(("ContainerCreating".into(), String::new()));
        self.busy.insert(uid.clone());
        let runtime = self.runtime.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            if pull_needed {
                for c in &spec.containers {
                    let progress_tx = done.clone();
                    let progress_uid = uid.clone();
                    let mut last = std::time::Instant::now() - Duration::from_secs(10);
                    let mut report = move |message: String| {
                        // One progress event a second at most.
                        if last.elapsed() >= Duration::from_secs(1) {
                            last = std::time::Instant::now();
                            let _ = progress_tx.try_send(Done::Progress {
                                uid: progress_uid.clone(),
                                message,
                            });
                        }
                    };
                    if let Err(e) = runtime.ensure_image(&c.image, &mut report).await {
                        let _ = done
                            .send(Done::Pulled {
                                uid,
                                result: Err(e),
                            })
                            .await;
                        return;
                    }
                }
                let _ = done
                    .send(Done::Pulled {
                        uid: uid.clone(),
                        result: Ok(()),
                    })
                    .await;
            }
            let result = runtime.start_pod(&spec).await;
            let _ = done.send(Done::Started { uid, result }).await;
        });
    }

    fn spawn_restart(&mut self, uid: String, container: String, grace: Duration) {
        self.busy.insert(uid.clone());
        let runtime = self.runtime.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let result = runtime.restart_container(&uid, &container, grace).await;
            let _ = done
                .send(Done::Restarted {
                    uid,
                    container,
                    result,
                })
                .await;
        });
    }

    /// Restarts exited containers as `restartPolicy` says, with back-off.
    fn restart_exited(&mut self) {
        let now = Instant::now();
        let mut restarts = Vec::new();
        for (uid, pod) in &mut self.pods {
            if pod.terminating || self.busy.contains(uid) {
                continue;
            }
            let Some(info) = pod.info.clone() else {
                continue;
            };
            let policy = pod.desired.pod.spec.restart_policy;
            let grace = Duration::from_secs(pod.desired.pod.spec.termination_grace_period_seconds);
            for ci in &info.containers {
                let Some(c) = pod.containers.get_mut(&ci.name) else {
                    continue;
                };
                match &ci.state {
                    runtime::ContainerState::Running { started_at_ms } => {
                        if c.running_since.is_none() {
                            c.running_since = Some(now);
                        }
                        if c.running_since.is_some_and(|s| now - s >= BACKOFF_RESET) {
                            c.backoff = Duration::ZERO;
                        }
                        let _ = started_at_ms;
                    }
                    runtime::ContainerState::Exited {
                        exit_code,
                        finished_at_ms,
                        reason,
                        message,
                    } => {
                        c.running_since = None;
                        c.ready = false;
                        let this_exit = Some(*finished_at_ms);
                        if c.handled_exit_of != this_exit {
                            // A new exit: record it and decide.
                            c.handled_exit_of = this_exit;
                            c.last_state =
                                Some(terminated(*exit_code, reason, message, *finished_at_ms));
                            let restart = match policy {
                                RestartPolicy::Always => true,
                                RestartPolicy::OnFailure => *exit_code != Some(0),
                                RestartPolicy::Never => false,
                            };
                            if restart {
                                let delay = c.backoff;
                                c.backoff = if c.backoff.is_zero() {
                                    BACKOFF_START
                                } else {
                                    (c.backoff * 2).min(BACKOFF_MAX)
                                };
                                c.restart_at = Some(now + delay);
                                if !delay.is_zero() {
                                    pod.events.push_back(PodEvent {
                                        at_ms: wall_ms(),
                                        kind: "Warning".into(),
                                        reason: "BackOff".into(),
                                        message: format!(
                                            "Back-off {}s restarting failed container {}",
                                            delay.as_secs(),
                                            ci.name
                                        ),
                                        count: 1,
                                    });
                                    while pod.events.len() > MAX_EVENTS {
                                        pod.events.pop_front();
                                    }
                                }
                            } else {
                                c.restart_at = None;
                            }
                        }
                        if c.restart_at.is_some_and(|t| t <= now) {
                            c.restart_at = None;
                            c.restarts += 1;
                            c.readiness = ProbeState::default();
                            c.liveness = ProbeState::default();
                            c.startup = ProbeState::default();
                            restarts.push((uid.clone(), ci.name.clone(), grace));
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
        for (uid, container, grace) in restarts {
            self.spawn_restart(uid, container, grace);
        }
    }

    /// Starts the probes that are due.
    fn schedule_probes(&mut self) {
        let now = Instant::now();
        let mut to_run = Vec::new();
        for (uid, pod) in &mut self.pods {
            if pod.terminating {
                continue;
            }
            let Some(info) = &pod.info else {
                continue;
            };
            let ip = info.ip;
            for spec in &pod.desired.pod.spec.containers {
                let Some(ci) = info.container(&spec.name) else {
                    continue;
                };
                let Some(c) = pod.containers.get_mut(&spec.name) else {
                    continue;
                };
                if !matches!(ci.state, runtime::ContainerState::Running { .. }) {
                    continue;
                }
                if spec.startup_probe.is_none() {
                    c.started = true;
                }
                if spec.readiness_probe.is_none() && c.started {
                    c.ready = true;
                }
                for kind in [
                    ProbeKind::Startup,
                    ProbeKind::Liveness,
                    ProbeKind::Readiness,
                ] {
                    let Some(probe) = kind.probe_of(spec) else {
                        continue;
                    };
                    if kind != ProbeKind::Startup && !c.started {
                        continue;
                    }
                    if kind == ProbeKind::Startup && c.started {
                        continue;
                    }
                    let running_since = c.running_since.unwrap_or(now);
                    let state = c.probe_mut(kind);
                    if state.running {
                        continue;
                    }
                    let due = state.next_at.unwrap_or(
                        running_since + Duration::from_secs(probe.initial_delay_seconds.into()),
                    );
                    if due > now {
                        continue;
                    }
                    state.running = true;
                    to_run.push((uid.clone(), spec.clone(), kind, probe.clone(), ip));
                }
            }
        }
        for (uid, container, kind, probe, ip) in to_run {
            self.spawn_probe(uid, container, kind, probe, ip);
        }
    }

    fn spawn_probe(
        &self,
        uid: String,
        container: manifest::Container,
        kind: ProbeKind,
        probe: Probe,
        ip: Option<IpAddr>,
    ) {
        let runtime = self.runtime.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let result = probe::run(&runtime, &uid, &container, &probe, ip).await;
            let _ = done
                .send(Done::Probed {
                    uid,
                    container: container.name,
                    kind,
                    result,
                })
                .await;
        });
    }

    /// Writes the records of this node's pods that changed, and removes those of pods gone.
    async fn publish(&mut self, snapshot: &Snapshot) {
        let me = self.config.me;
        let mut current: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for pod in self.pods.values_mut() {
            let record = record_of(pod, &self.config.host_ip);
            let name = record_name(
                pod.desired
                    .pod
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or("default"),
                &pod.desired.pod.metadata.name,
            );
            current.insert(name, record.encode());
        }
        // What the state says this node reports (after a restart, what it reported before).
        let mut stale: Vec<String> = snapshot
            .records_of(&me)
            .map(|(name, _)| name.to_owned())
            .filter(|name| !current.contains_key(name))
            .collect();
        stale.extend(
            self.written
                .iter()
                .filter(|(name, bytes)| bytes.is_some() && !current.contains_key(*name))
                .map(|(name, _)| name.clone()),
        );
        stale.sort();
        stale.dedup();
        for name in stale {
            if self.written.get(&name) == Some(&None) {
                continue;
            }
            debug!(record = %name, "removing pod record");
            if self.driver.write_owned(name.clone(), None).await.is_ok() {
                self.written.insert(name, None);
            }
        }
        for (name, bytes) in current {
            if self.written.get(&name).and_then(|b| b.as_ref()) == Some(&bytes) {
                continue;
            }
            if self
                .driver
                .write_owned(name.clone(), Some(bytes.clone()))
                .await
                .is_ok()
            {
                self.written.insert(name, Some(bytes));
            }
        }
    }
}

impl ContainerLocal {
    fn probe_mut(&mut self, kind: ProbeKind) -> &mut ProbeState {
        match kind {
            ProbeKind::Readiness => &mut self.readiness,
            ProbeKind::Liveness => &mut self.liveness,
            ProbeKind::Startup => &mut self.startup,
        }
    }
}

fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        BACKOFF_START
    } else {
        (current * 2).min(BACKOFF_MAX)
    }
}

/// Whether this node had synced with the cluster when the snapshot was taken: it then knows at
/// least one other live member with node info.
/// Whether this node's state can be trusted to plan from: it hears from another live member,
/// or it knows no other member at all (a new cluster of one, which has nobody to catch up
/// with; a node that has not joined yet holds no objects, so it would start nothing).
fn snapshot_synced(snapshot: &Snapshot, me: &NodeId) -> bool {
    snapshot.members().all(|m| m.id == *me)
        || snapshot
            .members()
            .any(|m| m.id != *me && m.state.is_live() && m.info.is_some())
}

fn pod_ready(pod: &LocalPod) -> bool {
    pod.info.as_ref().is_some_and(PodInfo::all_running) && pod.containers.values().all(|c| c.ready)
}

/// The runtime's input for a desired pod.
/// A container's exit as the runtime reported it, in Kubernetes' terms (an unknown exit code
/// shows as -1).
fn terminated(
    exit_code: Option<i32>,
    reason: &str,
    message: &Option<String>,
    finished_at_ms: Option<u64>,
) -> manifest::ContainerState {
    manifest::ContainerState::Terminated {
        exit_code: exit_code.unwrap_or(-1),
        signal: None,
        reason: Some(reason.to_owned()),
        message: message.clone(),
        started_at: None,
        finished_at: finished_at_ms.map(Timestamp),
    }
}

fn runtime_spec(
    desired: &DesiredPod,
    links: &[manifest::EnvVar],
    service_range: ServiceRange,
) -> runtime::PodSpec {
    let pod = &desired.pod;
    runtime::PodSpec {
        uid: desired.uid.clone(),
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone(),
        spec_hash: desired.spec_hash.clone(),
        containers: pod
            .spec
            .containers
            .iter()
            .map(|c| {
                // The container's own variables win over service links of the same name.
                let mut env: Vec<(String, String)> = links
                    .iter()
                    .filter(|l| !c.env.iter().any(|e| e.name == l.name))
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect();
                for e in &c.env {
                    env.push((e.name.clone(), e.value.clone()));
                }
                ContainerSpec {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    command: c.command.clone(),
                    args: c.args.clone(),
                    env,
                    working_dir: c.working_dir.clone(),
                    ports: c
                        .ports
                        .iter()
                        .map(|p| {
                            let protocol = match p.protocol {
                                manifest::Protocol::Tcp => runtime::Protocol::Tcp,
                                manifest::Protocol::Udp => runtime::Protocol::Udp,
                            };
                            (p.container_port, protocol)
                        })
                        .collect(),
                    cpu_millis_limit: c.resources.limits.cpu.map(|q| q.millis()),
                    memory_limit_bytes: c.resources.limits.memory.map(|q| q.bytes()),
                }
            })
            .collect(),
        labels: pod.metadata.labels.clone(),
        // A loopback range is out of a container's reach (its loopback is its own): the
        // engine's resolver then stays.
        dns: (!service_range.is_loopback()).then(|| pod_dns(&namespace_of(pod), service_range)),
    }
}

fn namespace_of(pod: &manifest::Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// Kubernetes' `ClusterFirst` resolver: the cluster DNS, and search domains so that `NAME` and
/// `NAME.NAMESPACE` resolve to services.
fn pod_dns(namespace: &str, range: ServiceRange) -> runtime::PodDns {
    let domain = crate::dns::CLUSTER_DOMAIN;
    runtime::PodDns {
        servers: vec![std::net::IpAddr::V4(range.dns_address())],
        searches: vec![
            format!("{namespace}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.to_owned(),
        ],
        options: vec!["ndots:5".to_owned()],
    }
}

fn condition(
    kind: PodConditionType,
    ok: bool,
    reason: Option<&str>,
    since: Option<u64>,
) -> PodCondition {
    PodCondition {
        kind,
        status: ConditionStatus::from(ok),
        reason: reason.map(str::to_owned),
        message: None,
        last_transition_time: since.map(Timestamp),
    }
}

/// The record this node reports for a pod.
fn record_of(pod: &mut LocalPod, host_ip: &str) -> PodRecord {
    let now = wall_ms();
    let mut statuses = Vec::new();
    let spec_containers = pod.desired.pod.spec.containers.clone();
    for spec in &spec_containers {
        let local = pod.containers.entry(spec.name.clone()).or_default();
        let info = pod.info.as_ref().and_then(|i| i.container(&spec.name));
        let state = match info.map(|i| &i.state) {
            Some(runtime::ContainerState::Running { started_at_ms }) => {
                manifest::ContainerState::Running {
                    started_at: started_at_ms.map(Timestamp),
                }
            }
            Some(runtime::ContainerState::Exited {
                exit_code,
                finished_at_ms,
                reason,
                message,
            }) => {
                if local.restart_at.is_some() {
                    manifest::ContainerState::Waiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: Some(format!(
                            "back-off restarting failed container {} in pod {}",
                            spec.name, pod.desired.pod.metadata.name
                        )),
                    }
                } else {
                    terminated(*exit_code, reason, message, *finished_at_ms)
                }
            }
            _ => {
                let (reason, message) = pod
                    .waiting
                    .clone()
                    .unwrap_or(("ContainerCreating".into(), String::new()));
                manifest::ContainerState::Waiting {
                    reason: Some(reason),
                    message: (!message.is_empty()).then_some(message),
                }
            }
        };
        statuses.push(manifest::ContainerStatus {
            name: spec.name.clone(),
            state,
            last_state: local.last_state.clone(),
            ready: local.ready
                && matches!(
                    info.map(|i| &i.state),
                    Some(runtime::ContainerState::Running { .. })
                ),
            restart_count: local.restarts,
            image: spec.image.clone(),
            image_id: None,
            container_id: info.map(|i| format!("{}://{}", runtime_scheme(&i.image), i.runtime_id)),
            started: Some(local.started),
        });
    }
    let all_ready = !statuses.is_empty() && statuses.iter().all(|s| s.ready);
    if all_ready {
        pod.ready_since_ms.get_or_insert(now);
    } else {
        pod.ready_since_ms = None;
    }
    let running = statuses
        .iter()
        .any(|s| matches!(s.state, manifest::ContainerState::Running { .. }));
    let all_exited = statuses
        .iter()
        .all(|s| matches!(s.state, manifest::ContainerState::Terminated { .. }));
    let phase = if all_exited && pod.info.is_some() {
        let failed = statuses.iter().any(|s| {
            matches!(s.state, manifest::ContainerState::Terminated { exit_code, .. } if exit_code != 0)
        });
        if failed { PodPhase::Failed } else { PodPhase::Succeeded }
    } else if running
        || statuses
            .iter()
            .any(|s| matches!(&s.state, manifest::ContainerState::Waiting { reason: Some(r), .. } if r == "CrashLoopBackOff"))
    {
        PodPhase::Running
    } else {
        PodPhase::Pending
    };
    let mut p = pod.desired.pod.clone();
    p.metadata.creation_timestamp = Some(Timestamp(pod.accepted_ms));
    if pod.terminating {
        p.metadata.deletion_timestamp = Some(Timestamp(now));
    }
    let host = host_ip
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
        .unwrap_or_else(|| host_ip.to_owned());
    let status = PodStatus {
        phase,
        conditions: vec![
            condition(
                PodConditionType::Initialized,
                true,
                None,
                Some(pod.accepted_ms),
            ),
            condition(
                PodConditionType::Ready,
                all_ready,
                (!all_ready).then_some("ContainersNotReady"),
                pod.ready_since_ms.or(Some(pod.accepted_ms)),
            ),
            condition(
                PodConditionType::ContainersReady,
                all_ready,
                (!all_ready).then_some("ContainersNotReady"),
                pod.ready_since_ms.or(Some(pod.accepted_ms)),
            ),
            condition(
                PodConditionType::PodScheduled,
                true,
                None,
                Some(pod.accepted_ms),
            ),
        ],
        host_ip: Some(host),
        pod_ip: pod
            .info
            .as_ref()
            .and_then(|i| i.ip)
            .map(|ip| ip.to_string()),
        start_time: Some(Timestamp(pod.accepted_ms)),
        container_statuses: statuses,
        reason: None,
        message: None,
    };
    PodRecord {
        format: super::stored::FORMAT,
        pod: p,
        status,
        replica: pod.desired.replica.clone(),
        deployment: pod.desired.deployment.clone(),
        template_hash: pod.desired.template_hash.clone(),
        ready_since_ms: pod.ready_since_ms,
        events: pod.events.iter().cloned().collect(),
    }
}

fn runtime_scheme(image: &str) -> &'static str {
    if image.contains('/') || image.contains(':') {
        "docker"
    } else {
        "process"
    }
}
