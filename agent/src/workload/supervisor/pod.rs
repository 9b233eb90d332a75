//! What the supervisor keeps about each pod it runs: the desired pod, what the runtime last
//! reported, and per container the restart, back-off and probe state.
//!
//! Deadlines are not kept here (they are in the [`super::timer::TimerTable`]); flags here say
//! what a deadline is for (a restart waits for its back-off while `restart_pending`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use shoal_gossip::{Instant, ObjectKey};

use crate::manifest;
use crate::manifest::ProbeKind;
use crate::runtime::PodInfo;
use crate::workload::plan::DesiredPod;
use crate::workload::snapshot::Object;
use crate::workload::stored::{PodEvent, PodRecord, record_name};

/// Events kept per pod.
pub(crate) const MAX_EVENTS: usize = 20;

/// Why a pod's containers are not created yet.
pub(super) const CONTAINER_CREATING: &str = "ContainerCreating";

/// One probe of one container.
#[derive(Debug, Default)]
pub(super) struct ProbeState {
    /// Consecutive successes.
    pub(super) successes: u32,
    /// Consecutive failures.
    pub(super) failures: u32,
    /// The token of the probe in flight: a result with another token is stale (the container
    /// restarted since) and ignored.
    pub(super) in_flight: Option<u64>,
    /// Its timer fired while it could not run (the container was not running): it runs as soon
    /// as it can.
    pub(super) due: bool,
}

/// One container of a pod.
#[derive(Debug, Default)]
pub(super) struct ContainerLocal {
    pub(super) restarts: u32,
    /// The delay before the next restart after an exit.
    pub(super) backoff: Duration,
    /// An exit is waiting for its restart (`CrashLoopBackOff` while its back-off runs).
    pub(super) restart_pending: bool,
    pub(super) last_state: Option<manifest::ContainerState>,
    /// The `finished_at_ms` of the exit last handled (so an exit is acted on once).
    pub(super) handled_exit_of: Option<Option<u64>>,
    pub(super) ready: bool,
    pub(super) started: bool,
    pub(super) readiness: ProbeState,
    pub(super) liveness: ProbeState,
    pub(super) startup: ProbeState,
    /// Since when this run has been seen running (probes' initial delay, back-off reset).
    pub(super) running_since: Option<Instant>,
    /// The runtime's start time of that run, to tell a new run from the same one.
    pub(super) run_started_at_ms: Option<u64>,
}

impl ContainerLocal {
    pub(super) fn probe_mut(&mut self, kind: ProbeKind) -> &mut ProbeState {
        match kind {
            ProbeKind::Readiness => &mut self.readiness,
            ProbeKind::Liveness => &mut self.liveness,
            ProbeKind::Startup => &mut self.startup,
        }
    }

    /// Forgets every probe's history (after a restart).
    pub(super) fn reset_probes(&mut self) {
        self.readiness = ProbeState::default();
        self.liveness = ProbeState::default();
        self.startup = ProbeState::default();
    }
}

/// A pod this node runs or is about to run.
#[derive(Debug)]
pub(super) struct LocalPod {
    pub(super) desired: DesiredPod,
    /// `pod/<ns>/<name>`.
    pub(super) record_name: String,
    /// What the runtime last reported; `None` while it has no such pod.
    pub(super) info: Option<PodInfo>,
    /// When this node took the pod on, ms since the Unix epoch.
    pub(super) accepted_ms: u64,
    pub(super) containers: BTreeMap<String, ContainerLocal>,
    pub(super) events: VecDeque<PodEvent>,
    /// Why the pod's containers are not created yet (`ErrImagePull`, `ContainerCreating` ...)
    /// and a message.
    pub(super) waiting: Option<(String, String)>,
    /// The delay before the next attempt after a failed pull or start.
    pub(super) start_backoff: Duration,
    /// When every container became ready, ms since the Unix epoch.
    pub(super) ready_since_ms: Option<u64>,
    /// When its stop was requested (it is no longer desired here): shown as Terminating.
    pub(super) terminating_since_ms: Option<u64>,
    /// The config maps and secrets it read when last resolved, as they were (`None`: absent),
    /// so that a change of one is seen by identity.
    pub(super) config_refs: Vec<(ObjectKey, Option<Arc<Object>>)>,
    /// Whether this agent resolved it yet (`config_refs` are then what it read). A pod adopted
    /// after an agent restart was not.
    pub(super) config_resolved: bool,
    /// A digest of each volume's content as last written, by volume name.
    pub(super) volume_digests: BTreeMap<String, u64>,
    /// It waits for a config map, secret or key that is missing
    /// (`CreateContainerConfigError`): it starts when one of `config_refs` changes.
    pub(super) config_wait: bool,
}

impl LocalPod {
    /// A pod just placed here, not created yet.
    pub(super) fn new(desired: DesiredPod, now_ms: u64) -> Self {
        let containers = desired
            .pod
            .spec
            .containers
            .iter()
            .map(|c| (c.name.clone(), ContainerLocal::default()))
            .collect();
        let namespace = desired
            .pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        LocalPod {
            record_name: record_name(namespace, &desired.pod.metadata.name),
            desired,
            info: None,
            accepted_ms: now_ms,
            containers,
            events: VecDeque::new(),
            waiting: Some((CONTAINER_CREATING.into(), String::new())),
            start_backoff: Duration::ZERO,
            ready_since_ms: None,
            terminating_since_ms: None,
            config_refs: Vec::new(),
            config_resolved: false,
            volume_digests: BTreeMap::new(),
            config_wait: false,
        }
    }

    /// A pod the runtime runs that this node reported before (an agent restart): its restart
    /// counts, readiness, start time and events come back from the record.
    pub(super) fn adopted(
        desired: DesiredPod,
        info: PodInfo,
        record: &PodRecord,
        now_ms: u64,
    ) -> Self {
        let mut pod = LocalPod::new(desired, now_ms);
        pod.info = Some(info);
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
        pod
    }

    pub(super) fn name(&self) -> &str {
        &self.desired.pod.metadata.name
    }

    pub(super) fn namespace(&self) -> &str {
        self.desired
            .pod
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default")
    }

    pub(super) fn terminating(&self) -> bool {
        self.terminating_since_ms.is_some()
    }

    pub(super) fn grace(&self) -> Duration {
        Duration::from_secs(self.desired.pod.spec.termination_grace_period_seconds)
    }

    /// Every container runs and is ready.
    pub(super) fn ready(&self) -> bool {
        self.info.as_ref().is_some_and(PodInfo::all_running)
            && self.containers.values().all(|c| c.ready)
    }

    /// Adds an event; a repeat of the last one (same reason and message) is folded into it.
    pub(super) fn event(&mut self, now_ms: u64, kind: &str, reason: &str, message: String) {
        if let Some(last) = self.events.back_mut() {
            if last.reason == reason && last.message == message {
                last.count += 1;
                last.at_ms = now_ms;
                return;
            }
        }
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(PodEvent {
            at_ms: now_ms,
            kind: kind.into(),
            reason: reason.into(),
            message,
            count: 1,
        });
    }
}
