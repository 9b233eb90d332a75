//! Pod records: what this node reports about each pod it runs, as the owned entry
//! `pod/<ns>/<name>`.
//!
//! A record is a pure function of the pod's local state ([`Supervisor::record_of`]); a pod is
//! marked dirty whenever that state changes ([`Supervisor::touch`]), and only dirty records
//! are built, encoded, and published, and only when their bytes differ from what was last
//! published. Records of this node that no local pod matches (after an agent restart, those
//! of pods it no longer runs) are removed.

use std::collections::{BTreeMap, BTreeSet};

use xxhash_rust::xxh3::xxh3_64;

use super::pod::{CONTAINER_CREATING, ContainerLocal, LocalPod};
use super::{RecordUpdate, Supervisor};
use crate::manifest::{
    self, ConditionStatus, PodCondition, PodConditionType, PodPhase, PodStatus, RestartPolicy,
    Timestamp,
};
use crate::runtime;
use crate::workload::stored::PodRecord;

/// Publication state of the records.
#[derive(Debug, Default)]
pub(super) struct Records {
    /// What was last published under each name: a hash of the bytes, or `None` once removed.
    published: BTreeMap<String, Option<u64>>,
    /// Names whose record may have changed.
    dirty: BTreeSet<String>,
    /// Local pods by record name (two incarnations of a bare pod share a name).
    names: BTreeMap<String, BTreeSet<String>>,
}

impl Records {
    pub(super) fn index(&mut self, name: &str, uid: &str) {
        self.names
            .entry(name.to_owned())
            .or_default()
            .insert(uid.to_owned());
        self.dirty.insert(name.to_owned());
    }

    pub(super) fn unindex(&mut self, name: &str, uid: &str) {
        if let Some(uids) = self.names.get_mut(name) {
            uids.remove(uid);
            if uids.is_empty() {
                self.names.remove(name);
            }
        }
        self.dirty.insert(name.to_owned());
    }
}

impl Supervisor {
    /// The pod's record may have changed: it is rebuilt at the next poll.
    pub(super) fn touch(&mut self, uid: &str) {
        if let Some(pod) = self.pods.get(uid) {
            if !self.records.dirty.contains(&pod.record_name) {
                self.records.dirty.insert(pod.record_name.clone());
            }
        }
    }

    /// Marks for removal the records the replicated state says this node reports but no local
    /// pod matches.
    pub(super) fn sweep_records(&mut self) {
        let Some(plan) = &self.plan else { return };
        for (name, _) in plan.own_records.iter() {
            if !self.records.names.contains_key(name) && !self.records.dirty.contains(name) {
                self.records.dirty.insert(name.to_owned());
            }
        }
    }

    /// The next record to publish (or remove), if one changed.
    pub(crate) fn poll_record_update(&mut self) -> Option<RecordUpdate> {
        while let Some(name) = self.records.dirty.pop_first() {
            match self.publishing_pod(&name) {
                Some(uid) => {
                    let bytes = self.record_of(&uid).encode();
                    let hash = xxh3_64(&bytes);
                    if self.records.published.get(&name) == Some(&Some(hash)) {
                        continue;
                    }
                    self.records.published.insert(name.clone(), Some(hash));
                    return Some(RecordUpdate {
                        name,
                        value: Some(bytes),
                    });
                }
                None => {
                    let in_state = match self.records.published.get(&name) {
                        Some(published) => published.is_some(),
                        None => self
                            .plan
                            .as_ref()
                            .is_some_and(|p| p.own_records.contains_key(&name)),
                    };
                    if !in_state {
                        continue;
                    }
                    self.records.published.insert(name.clone(), None);
                    return Some(RecordUpdate { name, value: None });
                }
            }
        }
        None
    }

    /// Publishing these records failed: they are published again at the next poll.
    pub(crate) fn handle_publish_failed(&mut self, names: impl IntoIterator<Item = String>) {
        for name in names {
            self.records.published.remove(&name);
            self.records.dirty.insert(name);
        }
    }

    /// The local pod whose record goes under `name`: the one still desired, else the newest
    /// uid (deterministic either way).
    fn publishing_pod(&self, name: &str) -> Option<String> {
        let uids = self.records.names.get(name)?;
        uids.iter()
            .rev()
            .find(|uid| self.pods.get(*uid).is_some_and(|p| !p.terminating()))
            .or_else(|| uids.iter().next_back())
            .cloned()
    }

    /// The record this node reports for a local pod.
    pub(super) fn record_of(&self, uid: &str) -> PodRecord {
        let pod = &self.pods[uid];
        record_of(pod, &self.host, self.config.run)
    }

    /// The decoded record of a pod by record name (for tests and the simulator).
    #[cfg(test)]
    pub(crate) fn current_record(&self, name: &str) -> Option<PodRecord> {
        self.publishing_pod(name).map(|uid| self.record_of(&uid))
    }
}

/// A container's exit as the runtime reported it, in Kubernetes' terms (an unknown exit code
/// shows as -1).
pub(super) fn terminated(
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

fn runtime_scheme(image: &str) -> &'static str {
    if image.contains('/') || image.contains(':') {
        "docker"
    } else {
        "process"
    }
}

/// The record of a pod: its status in Kubernetes' terms from what the runtime reports and
/// the supervisor's own state (restarts, readiness, back-off).
fn record_of(pod: &LocalPod, host: &str, run: u64) -> PodRecord {
    let none = ContainerLocal::default();
    let mut statuses = Vec::new();
    for spec in &pod.desired.pod.spec.containers {
        let local = pod.containers.get(&spec.name).unwrap_or(&none);
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
                if local.restart_pending {
                    manifest::ContainerState::Waiting {
                        reason: Some("CrashLoopBackOff".into()),
                        message: Some(format!(
                            "back-off restarting failed container {} in pod {}",
                            spec.name,
                            pod.name()
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
                    .unwrap_or((CONTAINER_CREATING.into(), String::new()));
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
    let running = statuses
        .iter()
        .any(|s| matches!(s.state, manifest::ContainerState::Running { .. }));
    let all_exited = statuses
        .iter()
        .all(|s| matches!(s.state, manifest::ContainerState::Terminated { .. }));
    let failed = statuses.iter().any(|s| {
        matches!(s.state, manifest::ContainerState::Terminated { exit_code, .. } if exit_code != 0)
    });
    // As in Kubernetes, a pod is finished only when no container of it will run again: with
    // `restartPolicy: Always` (every Deployment's pods) an exited container is restarted, so
    // the pod stays `Running` and its replica stays placed where it is.
    let will_restart = match pod.desired.pod.spec.restart_policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Never => false,
    };
    let phase = if all_exited && pod.info.is_some() && !will_restart {
        if failed {
            PodPhase::Failed
        } else {
            PodPhase::Succeeded
        }
    } else if (all_exited && pod.info.is_some()) // exited, to be restarted
        || running
        || statuses.iter().any(|s| {
            matches!(&s.state, manifest::ContainerState::Waiting { reason: Some(r), .. } if r == "CrashLoopBackOff")
        })
    {
        PodPhase::Running
    } else {
        PodPhase::Pending
    };
    let mut p = pod.desired.pod.clone();
    p.metadata.creation_timestamp = Some(Timestamp(pod.accepted_ms));
    p.metadata.deletion_timestamp = pod.terminating_since_ms.map(Timestamp);
    // Readiness as the conditions show it: `ready_since_ms` is kept in step with it.
    let ready_since = if all_ready { pod.ready_since_ms } else { None };
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
                ready_since.or(Some(pod.accepted_ms)),
            ),
            condition(
                PodConditionType::ContainersReady,
                all_ready,
                (!all_ready).then_some("ContainersNotReady"),
                ready_since.or(Some(pod.accepted_ms)),
            ),
            condition(
                PodConditionType::PodScheduled,
                true,
                None,
                Some(pod.accepted_ms),
            ),
        ],
        host_ip: Some(host.to_owned()),
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
        format: crate::workload::stored::FORMAT,
        pod: p,
        status,
        replica: pod.desired.replica.clone(),
        deployment: pod.desired.deployment.clone(),
        template_hash: pod.desired.template_hash.clone(),
        ready_since_ms: ready_since,
        events: pod.events.iter().cloned().collect(),
        run,
    }
}
