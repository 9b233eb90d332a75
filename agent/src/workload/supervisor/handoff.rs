//! Pods leaving this node, and pods found running after an agent restart.
//!
//! - **Make-before-break**: a pod no longer desired here keeps running while it is ready and
//!   its replica is placed on a live node that does not report its copy ready yet, so a
//!   rebalance never lowers the ready count. Otherwise it is stopped (gracefully, then
//!   removed) and shown as Terminating meanwhile.
//! - **Adoption**: a pod the runtime runs that has no local state (the agent restarted) is
//!   taken back from this node's own record of it (restart counts, readiness, events), or as a
//!   new pod when it is desired and has no record; one that is neither desired nor recorded is
//!   stopped.
//! - **The first pass** (the plan made with this node's pods forfeited) stops everything this
//!   node no longer owns before it starts or restarts anything.

use shoal_gossip::Now;
use tracing::info;

use super::pod::LocalPod;
use super::{Action, Busy, DEFAULT_GRACE, Phase, Supervisor};
use crate::runtime::PodInfo;
use crate::workload::plan::DesiredPod;
use crate::workload::stored::{ReplicaRef, record_name};

impl Supervisor {
    /// Whether a local pod that is no longer desired here stays until its replica's new copy
    /// is ready.
    pub(super) fn keep_for_handoff(&self, uid: &str) -> bool {
        let Some(pod) = self.pods.get(uid) else {
            return false;
        };
        if !pod.ready() {
            return false;
        }
        // Not placed anywhere else: scaled down, deleted, rolled, or placed here again as
        // another pod.
        let Some(placement) = self.placement(&pod.desired.replica) else {
            return false;
        };
        placement.live && !placement.ready
    }

    fn placement(&self, replica: &ReplicaRef) -> Option<&super::Placement> {
        self.plan.as_ref()?.elsewhere.get(replica)
    }

    /// Stops and removes a pod (local or stray), with its grace period.
    pub(super) fn stop(&mut self, uid: &str, now: Now) {
        let grace = match self.pods.get_mut(uid) {
            Some(pod) => {
                if !pod.terminating() {
                    pod.terminating_since_ms = Some(now.wall_ms);
                    pod.event(
                        now.wall_ms,
                        "Normal",
                        "Killing",
                        "Stopping the pod: not placed on this node any more".into(),
                    );
                    info!(pod = %pod.name(), namespace = %pod.namespace(), %uid,
                        "stopping a pod no longer placed here");
                }
                pod.grace()
            }
            None => {
                let name = self.strays.get(uid).map(|p| p.name.clone());
                info!(pod = ?name, %uid, "stopping a pod this node does not own");
                DEFAULT_GRACE
            }
        };
        self.touch(uid);
        // Nothing else happens to it: its deadlines go.
        self.timers.stop_pod(uid);
        self.busy.insert(uid.to_owned(), Busy::Stopping);
        if let Phase::FirstStops(pending) = &mut self.phase {
            pending.insert(uid.to_owned());
        }
        self.actions.push_back(Action::StopPod {
            uid: uid.to_owned(),
            grace,
        });
    }

    /// A pod was stopped and removed (errors are the driver's to log: the pod is gone from our
    /// view either way, and a listing that still shows it makes it a stray again).
    pub(crate) fn handle_stopped(&mut self, uid: &str, now: Now) {
        self.busy.remove(uid);
        self.mark_stale(uid);
        self.strays.remove(uid);
        if let Some(pod) = self.pods.get(uid) {
            info!(pod = %pod.name(), %uid, "pod stopped and removed");
        }
        self.remove_pod(uid);
        if let Phase::FirstStops(pending) = &mut self.phase {
            pending.remove(uid);
            if pending.is_empty() {
                self.enter_running(now);
                return;
            }
        }
        // It may be desired here again meanwhile.
        self.reconcile(uid, now);
    }

    /// Local state for a pod found in the runtime, if it is ours: from this node's record of
    /// it (the same pod incarnation), or new when it is desired and unrecorded.
    pub(super) fn adopt(
        &self,
        uid: &str,
        info: PodInfo,
        want: Option<&DesiredPod>,
        now: Now,
    ) -> Option<LocalPod> {
        let plan = self.plan.as_ref()?;
        let record = plan
            .own_records
            .get(&record_name(&info.namespace, &info.name))
            .filter(|r| r.pod.metadata.uid.as_deref().is_none_or(|u| u == uid));
        match (record, want) {
            (Some(record), _) => {
                let desired = want.cloned().unwrap_or_else(|| DesiredPod {
                    node: self.config.me,
                    pod: record.pod.clone(),
                    replica: record.replica.clone(),
                    deployment: record.deployment.clone(),
                    template_hash: record.template_hash.clone(),
                    uid: uid.to_owned(),
                    spec_hash: info.spec_hash.clone(),
                });
                info!(pod = %info.name, namespace = %info.namespace, %uid, desired = want.is_some(),
                    "adopting a pod this node ran before");
                Some(LocalPod::adopted(desired, info, record, now.wall_ms))
            }
            (None, Some(want)) => {
                let mut pod = LocalPod::new(want.clone(), now.wall_ms);
                pod.info = Some(info);
                pod.waiting = None;
                Some(pod)
            }
            (None, None) => None,
        }
    }

    /// The first pass, once there is a plan and a listing: adopt, and stop what this node no
    /// longer owns; nothing starts until those stops are done.
    pub(super) fn begin_if_ready(&mut self, now: Now) {
        if !matches!(self.phase, Phase::Starting) || self.plan.is_none() || !self.listing.seen {
            return;
        }
        self.phase = Phase::FirstStops(Default::default());
        self.reconcile_all(now);
        self.sweep_records();
        let pending = match &self.phase {
            Phase::FirstStops(pending) => pending.len(),
            _ => 0,
        };
        if pending == 0 {
            self.enter_running(now);
        } else {
            info!(
                pods = pending,
                "first pass: stopping the pods this node no longer owns before starting any"
            );
        }
    }

    /// The first pass is done: every pod is reconciled in full (starts, restarts, probes).
    fn enter_running(&mut self, now: Now) {
        info!(pods = self.pods.len(), "first pass done");
        self.phase = Phase::Running;
        self.reconcile_all(now);
    }
}
