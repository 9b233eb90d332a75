//! The pod supervisor: a sans-IO state machine that makes this node run what the plan gives it.
//!
//! No tokio, no clock, no I/O: inputs come in through `handle_*` calls with the time as an
//! argument ([`Now`]: the monotonic instant for deadlines, the wall clock for the timestamps
//! records carry), outputs go out through [`Supervisor::poll_action`] (runtime work to do),
//! [`Supervisor::poll_record_update`] (pod records to publish) and
//! [`Supervisor::poll_timeout`] (the next deadline). The reconciler drives it with tokio and
//! a real runtime; tests drive it in virtual time with a fake one.
//!
//! # What it does
//!
//! - **Start** a desired pod the runtime does not have (pulling its images first when the
//!   runtime has images; a failed pull is `ErrImagePull`, then `ImagePullBackOff` until the
//!   back-off ends), see `start.rs`.
//! - **Restart** exited containers per `restartPolicy` with Kubernetes' back-off (the first
//!   restart at once, then 10 s doubling to 5 min, reset after 10 min of running):
//!   `CrashLoopBackOff` while waiting, see `restart.rs`.
//! - **Probes**: startup holds the others; readiness decides `ready` with its success and
//!   failure thresholds (no probe: ready once running); liveness restarts the container after
//!   `failureThreshold` failures in a row; `initialDelaySeconds` and `periodSeconds` as in
//!   Kubernetes, see `probes.rs`.
//! - **Stop** pods no longer desired here, make-before-break: a ready pod whose replica moved
//!   keeps running until the new node reports its copy ready (or that node is not live), see
//!   `handoff.rs`.
//! - **Report** each pod as the record `pod/<ns>/<name>`, encoded and published only when it
//!   changed; events are folded and capped at 20 per pod, see `records.rs`.
//! - **After an agent restart**, the first pass plans with this node's pods forfeited (the
//!   driver asks [`Supervisor::plan_forfeit`]), stops what it no longer owns before it starts
//!   or restarts anything, and adopts the pods it still owns from its own records (restart
//!   counts, readiness and events kept).
//!
//! # Invariants
//!
//! - At most one runtime action (pull, start, stop, restart) is in flight per pod; probes are
//!   not counted.
//! - A runtime listing only speaks for a pod if it was asked for after the last action on that
//!   pod completed (a listing taken while a start or stop ran would contradict it).
//! - At most one listing is in flight; completions that want a fresh one while it runs get one
//!   right after it, so many completions at once cost one listing.
//! - Work is proportional to what changed: a listing, a plan, a completion or a deadline
//!   reconciles only the pods it concerns.

mod config;
mod handoff;
mod input;
mod pod;
mod probes;
mod records;
mod restart;
mod start;
mod timer;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_gossip::{Instant, NodeId, Now};
use tracing::{debug, info, warn};

pub(crate) use input::{NodePlan, Placement, snapshot_synced};
use pod::LocalPod;
use timer::{PodTimer, Timer, TimerTable};

use crate::manifest::ProbeKind;
use crate::manifest::{self, Probe};
use crate::runtime::{self, PodInfo, RuntimeError};
use crate::workload::service::ServiceRange;

/// Time between listings of the runtime's pods when nothing asks for one sooner.
pub(crate) const LIST_INTERVAL: Duration = Duration::from_secs(1);
/// How long the first pass waits for the first synchronisation with the cluster.
pub(crate) const SYNC_WAIT: Duration = Duration::from_secs(5);
/// Grace period for stopping a pod the supervisor knows nothing about.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What the supervisor needs to know about this node.
#[derive(Clone, Debug)]
pub(crate) struct SupervisorConfig {
    /// This node.
    pub(crate) me: NodeId,
    /// This node's address, `host:port` or a bare host: the host part is the pods' `hostIP`.
    pub(crate) host_ip: String,
    /// The cluster's service range (the DNS server pods get).
    pub(crate) service_range: ServiceRange,
    /// Whether the runtime runs images, so they are pulled before a pod starts (Docker); the
    /// process runtime has none.
    pub(crate) pull_images: bool,
    /// This start of the agent (its node info's `run`), written into every record, so that
    /// readers tell records of an earlier run apart ([`crate::workload::stored::PodRecord::run`]).
    pub(crate) run: u64,
    /// Opens the secrets pods use (`None`: secrets stay sealed, and pods that use one wait
    /// with `CreateContainerConfigError`; tests that need none).
    pub(crate) secret_box: Option<crate::secret_box::SecretBox>,
}

/// Runtime work for the driver to do; each has a matching `handle_*` for its result.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Action {
    /// List the runtime's pods: [`Supervisor::handle_pods_listed`].
    ListPods,
    /// Make sure these images are present, in order, reporting progress:
    /// [`Supervisor::handle_pull_progress`], then [`Supervisor::handle_pulled`].
    PullImages { uid: String, images: Vec<String> },
    /// Create and start the pod: [`Supervisor::handle_started`].
    StartPod { uid: String, spec: runtime::PodSpec },
    /// Stop the pod (SIGTERM, SIGKILL after `grace`), then remove it:
    /// [`Supervisor::handle_stopped`].
    StopPod { uid: String, grace: Duration },
    /// Restart one container: [`Supervisor::handle_restarted`].
    RestartContainer {
        uid: String,
        container: String,
        grace: Duration,
    },
    /// Rewrite a started pod's volume with this content:
    /// [`Supervisor::handle_volume_updated`].
    UpdateVolume {
        uid: String,
        volume: runtime::VolumeSpec,
    },
    /// Run one probe: [`Supervisor::handle_probe_result`] with the same `token`.
    RunProbe {
        uid: String,
        container: Box<manifest::Container>,
        kind: ProbeKind,
        probe: Probe,
        ip: Option<IpAddr>,
        token: u64,
    },
}

/// A record to publish as this node's owned entry `name`; `None` removes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordUpdate {
    pub(crate) name: String,
    pub(crate) value: Option<Vec<u8>>,
}

/// The runtime action in flight for a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Busy {
    Pulling,
    Starting,
    Stopping,
    Restarting,
}

/// Where the supervisor is in its life.
#[derive(Debug)]
enum Phase {
    /// Waiting for the first plan and the first listing; nothing is done yet.
    Starting,
    /// The first pass stops what this node no longer owns (these uids); nothing starts until
    /// they are gone.
    FirstStops(BTreeSet<String>),
    /// Normal operation.
    Running,
}

/// Listings of the runtime.
#[derive(Debug, Default)]
struct Listing {
    /// The sequence number of the last listing asked for.
    seq: u64,
    /// The one in flight.
    in_flight: Option<u64>,
    /// Another is wanted once the one in flight is back.
    again: bool,
    /// A listing came back at least once.
    seen: bool,
}

/// The supervisor of one node's pods. See the module documentation.
pub(crate) struct Supervisor {
    config: SupervisorConfig,
    /// The host part of `config.host_ip`.
    host: String,
    phase: Phase,
    /// When the first pass stops waiting for the cluster.
    sync_deadline: Instant,
    plan: Option<NodePlan>,
    pods: BTreeMap<String, LocalPod>,
    /// Pods the runtime runs that have no local state (yet): adopted or stopped.
    strays: BTreeMap<String, PodInfo>,
    busy: BTreeMap<String, Busy>,
    /// Pods acted on since the last listing was asked for, with the first listing sequence
    /// number that speaks for them.
    stale: BTreeMap<String, u64>,
    listing: Listing,
    timers: TimerTable,
    actions: VecDeque<Action>,
    records: records::Records,
    next_probe_token: u64,
    /// Held pods whose hold ended (they may start although the plan still says held).
    released: BTreeSet<String>,
    /// Pods stopped for using more scratch space than their limit, with when and why: their
    /// next incarnation shows it.
    evicted: BTreeMap<String, (u64, String)>,
}

impl Supervisor {
    /// A supervisor that has seen nothing yet: it asks for a listing at once and waits for a
    /// plan.
    pub(crate) fn new(config: SupervisorConfig, now: Now) -> Self {
        let host = config
            .host_ip
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .unwrap_or_else(|| config.host_ip.clone());
        let mut sup = Supervisor {
            config,
            host,
            phase: Phase::Starting,
            sync_deadline: now.mono + SYNC_WAIT,
            plan: None,
            pods: BTreeMap::new(),
            strays: BTreeMap::new(),
            busy: BTreeMap::new(),
            released: BTreeSet::new(),
            evicted: BTreeMap::new(),
            stale: BTreeMap::new(),
            listing: Listing::default(),
            timers: TimerTable::default(),
            actions: VecDeque::new(),
            records: records::Records::default(),
            next_probe_token: 0,
        };
        sup.timers.set(Timer::SyncWait, sup.sync_deadline);
        sup.request_listing();
        sup
    }

    // ---------------------------------------------------------------------------------------
    // Inputs.

    /// Whether the driver should compute a plan now, and how: `None` while the first pass
    /// still waits for the cluster (`synced`: see [`snapshot_synced`]; it waits at most
    /// [`SYNC_WAIT`]), else `Some(forfeit)`: whether to plan with this node's own pods not
    /// counted as running (until the first pass is done, as they may have been replaced while
    /// the agent was away).
    pub(crate) fn plan_forfeit(&self, synced: bool, now: Now) -> Option<bool> {
        match self.phase {
            Phase::Starting if self.plan.is_none() && !synced && now.mono < self.sync_deadline => {
                None
            }
            Phase::Starting | Phase::FirstStops(_) => Some(true),
            Phase::Running => Some(false),
        }
    }

    /// The plan this node follows now.
    pub(crate) fn plan(&self) -> Option<&NodePlan> {
        self.plan.as_ref()
    }

    /// A new plan for this node.
    pub(crate) fn handle_plan(&mut self, plan: NodePlan, now: Now) {
        let old = self.plan.replace(plan);
        if matches!(self.phase, Phase::Starting) {
            self.begin_if_ready(now);
            return;
        }
        let new = self.plan.as_ref().expect("just set");
        let objects_changed = old
            .as_ref()
            .is_none_or(|o| o.objects_revision() != new.objects_revision());
        let mut touched: BTreeSet<String> = BTreeSet::new();
        // Pods shared with the old plan are the same pods: nothing to compare.
        let same_pods = old
            .as_ref()
            .is_some_and(|o| Arc::ptr_eq(&o.pods, &new.pods));
        for (uid, want) in new.pods.iter().filter(|_| !same_pods) {
            let same = old
                .as_ref()
                .and_then(|o| o.pods.get(uid))
                .is_some_and(|w| w == want);
            if !same {
                touched.insert(uid.clone());
            }
        }
        if let Some(old) = &old {
            touched.extend(
                old.pods
                    .keys()
                    .filter(|uid| !new.pods.contains_key(*uid))
                    .cloned(),
            );
        }
        // Hand-offs depend on where replicas are and how ready they are elsewhere.
        touched.extend(
            self.pods
                .keys()
                .filter(|uid| !new.pods.contains_key(*uid))
                .cloned(),
        );
        touched.extend(self.strays.keys().cloned());
        let desired = &self.plan.as_ref().expect("just set").pods;
        self.evicted.retain(|uid, _| desired.contains_key(uid));
        self.sweep_records();
        for uid in touched {
            self.reconcile(&uid, now);
        }
        if objects_changed {
            self.handle_config_changes(now);
        }
    }

    /// The runtime's pods (or why it could not list them).
    pub(crate) fn handle_pods_listed(
        &mut self,
        result: Result<Vec<PodInfo>, RuntimeError>,
        now: Now,
    ) {
        let seq = self.listing.in_flight.take().unwrap_or(self.listing.seq);
        self.timers.set(Timer::List, now.mono + LIST_INTERVAL);
        if std::mem::take(&mut self.listing.again) {
            self.request_listing();
        }
        let listed = match result {
            Ok(pods) => pods,
            Err(e) => {
                warn!(error = %e, "listing pods failed");
                return;
            }
        };
        self.listing.seen = true;
        self.stale.retain(|_, from| *from > seq);
        let mut listed: BTreeMap<String, PodInfo> =
            listed.into_iter().map(|p| (p.uid.clone(), p)).collect();
        // Pods the listing cannot speak for keep what we know of them.
        let untrusted = |uid: &str| self.busy.contains_key(uid) || self.stale.contains_key(uid);
        let mut touched = Vec::new();
        let desired = |uid: &str| self.plan.as_ref().is_some_and(|p| p.pods.contains_key(uid));
        let mut missing = Vec::new();
        for (uid, pod) in &mut self.pods {
            if untrusted(uid) {
                listed.remove(uid);
                continue;
            }
            match listed.remove(uid) {
                Some(info) => {
                    if pod.info.as_ref() != Some(&info) {
                        pod.info = Some(info);
                        touched.push(uid.clone());
                    }
                }
                None => {
                    if pod.info.take().is_some() {
                        if desired(uid) {
                            missing.push(uid.clone());
                        }
                        touched.push(uid.clone());
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .strays
            .keys()
            .filter(|uid| !untrusted(uid) && !listed.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.strays.remove(&uid);
        }
        for (uid, info) in listed {
            if untrusted(&uid) {
                continue;
            }
            if self.strays.get(&uid) != Some(&info) {
                self.strays.insert(uid.clone(), info);
                touched.push(uid);
            }
        }
        for uid in &missing {
            if let Some(pod) = self.pods.get_mut(uid) {
                warn!(pod = %pod.name(), %uid, "the runtime lost a pod; creating it again");
                pod.event(
                    now.wall_ms,
                    "Warning",
                    "Missing",
                    "the runtime lost the pod; creating it again".into(),
                );
            }
        }
        if matches!(self.phase, Phase::Starting) {
            self.begin_if_ready(now);
            return;
        }
        for uid in touched {
            self.touch(&uid);
            self.reconcile(&uid, now);
        }
    }

    /// Every deadline at or before `now`.
    pub(crate) fn handle_timeout(&mut self, now: Now) {
        let mut due: BTreeSet<String> = BTreeSet::new();
        while let Some(timer) = self.timers.pop_expired(now.mono) {
            match timer {
                // The driver asks again how to plan; nothing else waits for it.
                Timer::SyncWait => {}
                Timer::List => self.request_listing(),
                Timer::Pod(uid, what) => {
                    if what == PodTimer::Hold {
                        self.released.insert(uid.clone());
                    }
                    if let PodTimer::Probe(container, kind) = &what {
                        if let Some(c) = self
                            .pods
                            .get_mut(&uid)
                            .and_then(|p| p.containers.get_mut(container))
                        {
                            c.probe_mut(*kind).due = true;
                        }
                    }
                    due.insert(uid);
                }
            }
        }
        for uid in due {
            self.reconcile(&uid, now);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Outputs.

    /// The next runtime action to perform.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next deadline: call [`Supervisor::handle_timeout`] then.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// Whether the first pass is done (this node's own pods are no longer forfeited).
    #[cfg(test)]
    pub(crate) fn is_running(&self) -> bool {
        matches!(self.phase, Phase::Running)
    }

    // ---------------------------------------------------------------------------------------
    // The pass over one pod.

    /// Brings one pod closer to the plan: the level-triggered core, called for every pod an
    /// input concerns. `uid` may be desired, local, a stray or none of them.
    fn reconcile(&mut self, uid: &str, now: Now) {
        if matches!(self.phase, Phase::Starting) {
            return;
        }
        let Some(plan) = &self.plan else { return };
        let wanted = plan.pods.contains_key(uid);
        let busy = self.busy.contains_key(uid);
        if !self.pods.contains_key(uid) {
            let want = plan.pods.get(uid).cloned();
            if let Some(info) = self.strays.get(uid).cloned() {
                if busy {
                    return;
                }
                match self.adopt(uid, info, want.as_ref(), now) {
                    Some(pod) => {
                        self.strays.remove(uid);
                        let mounts = !pod.desired.pod.spec.volumes.is_empty();
                        self.insert_pod(uid, pod);
                        if mounts {
                            self.refresh_volumes(uid, now);
                        }
                    }
                    None => {
                        self.stop(uid, now);
                        return;
                    }
                }
            } else if let Some(want) = want {
                // A hold lasts its whole time, whatever later plans say (only the plan that
                // moved the replica here knows it moved).
                let hold = Timer::Pod(uid.to_owned(), PodTimer::Hold);
                let holding = self.timers.get(&hold).is_some();
                if !self.released.contains(uid) && (holding || plan.held.contains(uid)) {
                    if !holding {
                        debug!(pod = %want.pod.metadata.name, %uid,
                            "placed here, moved from a node that may be starting it: waiting");
                        self.timers.set(hold, now.mono + input::HOLD);
                    }
                    return;
                }
                self.released.remove(uid);
                info!(pod = %want.pod.metadata.name,
                    namespace = %want.pod.metadata.namespace.as_deref().unwrap_or("default"),
                    %uid, "pod placed on this node");
                self.insert_pod(uid, LocalPod::new(want, now.wall_ms));
            } else {
                self.released.remove(uid);
                return;
            }
        }
        let (has_info, terminating, changed) = {
            let want = self.plan.as_ref().and_then(|p| p.pods.get(uid));
            let pod = self.pods.get_mut(uid).expect("ensured above");
            let mut changed = false;
            if let Some(want) = want {
                // Compared first: this runs for every input, a clone only when it changed.
                if pod.desired != *want {
                    pod.desired = want.clone();
                    changed = true;
                }
                changed |= pod.terminating_since_ms.take().is_some();
                if pod.info.is_some() {
                    changed |= pod.waiting.take().is_some();
                }
            }
            (pod.info.is_some(), pod.terminating(), changed)
        };
        if changed {
            self.touch(uid);
        }
        if !busy && wanted && has_info && !terminating && self.evict_if_over(uid, now) {
            return;
        }
        if busy {
            // The action in flight decides; its completion reconciles the pod again.
        } else if wanted && !has_info {
            let retry = Timer::Pod(uid.to_owned(), PodTimer::StartRetry);
            if self.timers.get(&retry).is_some_and(|t| t > now.mono) {
                let pod = self.pods.get_mut(uid).expect("ensured above");
                let pull_failed = pod
                    .waiting
                    .as_ref()
                    .is_some_and(|(reason, _)| reason == "ErrImagePull");
                if pull_failed {
                    if let Some((reason, _)) = &mut pod.waiting {
                        *reason = "ImagePullBackOff".into();
                    }
                    self.touch(uid);
                }
            } else if self.pods.get(uid).is_some_and(|p| p.config_wait) {
                // Waits for what it reads to change (`handle_config_changes`).
            } else if matches!(self.phase, Phase::Running) {
                self.start(uid, now);
            }
        } else if !wanted && has_info {
            if terminating || !self.keep_for_handoff(uid) {
                self.stop(uid, now);
            }
        } else if !wanted && !terminating {
            // Gone from the runtime and from the plan: nothing is left to do for it.
            debug!(%uid, "forgetting a pod neither desired nor running");
            self.remove_pod(uid);
            return;
        }
        if matches!(self.phase, Phase::Running) {
            self.restart_exited(uid, now);
            self.schedule_probes(uid, now);
        }
        self.update_ready_since(uid, now);
    }

    /// Reconciles every pod the supervisor knows of or is asked to run.
    fn reconcile_all(&mut self, now: Now) {
        let mut uids: BTreeSet<String> = self.pods.keys().cloned().collect();
        uids.extend(self.strays.keys().cloned());
        if let Some(plan) = &self.plan {
            uids.extend(plan.pods.keys().cloned());
        }
        for uid in uids {
            self.reconcile(&uid, now);
        }
    }

    fn insert_pod(&mut self, uid: &str, mut pod: LocalPod) {
        // A pod evicted here and started again says why it started over.
        if let Some((at_ms, message)) = self.evicted.remove(uid) {
            pod.event(at_ms, "Warning", "Evicted", message);
        }
        self.records.index(&pod.record_name, uid);
        self.pods.insert(uid.to_owned(), pod);
        self.touch(uid);
    }

    /// Forgets a pod: its state, its deadlines; its record is removed (or another pod of the
    /// same name publishes its own).
    fn remove_pod(&mut self, uid: &str) {
        self.timers.stop_pod(uid);
        if let Some(pod) = self.pods.remove(uid) {
            self.records.unindex(&pod.record_name, uid);
        }
    }

    /// Asks for a listing, or for another right after the one in flight.
    fn request_listing(&mut self) {
        if self.listing.in_flight.is_some() {
            self.listing.again = true;
            return;
        }
        self.timers.stop(&Timer::List);
        self.listing.seq += 1;
        self.listing.in_flight = Some(self.listing.seq);
        self.actions.push_back(Action::ListPods);
    }

    /// An action on `uid` completed: listings asked for before now do not speak for it.
    fn mark_stale(&mut self, uid: &str) {
        self.stale.insert(uid.to_owned(), self.listing.seq + 1);
    }

    /// Keeps `ready_since_ms` in step with readiness: set when every container became ready,
    /// cleared when one is not.
    fn update_ready_since(&mut self, uid: &str, now: Now) {
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        let all_ready = !pod.desired.pod.spec.containers.is_empty()
            && pod.desired.pod.spec.containers.iter().all(|spec| {
                let running = pod
                    .info
                    .as_ref()
                    .and_then(|i| i.container(&spec.name))
                    .is_some_and(|c| matches!(c.state, runtime::ContainerState::Running { .. }));
                running && pod.containers.get(&spec.name).is_some_and(|c| c.ready)
            });
        let changed = match (all_ready, pod.ready_since_ms) {
            (true, None) => {
                pod.ready_since_ms = Some(now.wall_ms);
                true
            }
            (false, Some(_)) => {
                pod.ready_since_ms = None;
                true
            }
            _ => false,
        };
        if changed {
            self.touch(uid);
        }
    }
}
