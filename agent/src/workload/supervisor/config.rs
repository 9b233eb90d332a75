//! Pods and the config maps and secrets they read: resolving them when a pod starts, waiting
//! with `CreateContainerConfigError` for what is missing (and starting as soon as it appears),
//! and rewriting mounted files when what they show changes.
//!
//! A change is seen by identity: each pod keeps the objects it read as they were (shared, not
//! copied), and a plan made from a snapshot whose objects changed compares them with the
//! plan's. Cost per change of objects: one pointer comparison per object each local pod
//! reads; only pods that read a changed object are resolved again, and only volumes whose
//! content changed are written.

use std::sync::Arc;

use shoal_gossip::Now;
use tracing::{debug, warn};

use super::start::volume_digest;
use super::{Action, Supervisor};
use crate::runtime::RuntimeError;
use crate::workload::pod_config::{self, Missing, PodConfig, PodFacts};

/// Why a pod is not created while something it reads is missing (Kubernetes' reason).
pub(super) const CONFIG_ERROR: &str = "CreateContainerConfigError";

impl Supervisor {
    /// Resolves a pod's variables and volumes from the plan's objects, and remembers what it
    /// read. `None` when the pod or the plan is gone.
    pub(super) fn resolve_config(&mut self, uid: &str) -> Option<Result<PodConfig, Missing>> {
        self.remember_refs(uid);
        let plan = self.plan.as_ref()?;
        let pod = self.pods.get_mut(uid)?;
        let configs = &plan.configs;
        let node_name = pod.desired.pod.spec.node_name.clone().unwrap_or_default();
        let facts = PodFacts {
            uid: &pod.desired.uid,
            node_name: &node_name,
            host_ip: &self.host,
            allocatable: configs.allocatable(),
        };
        let objects = configs.with_box(self.config.secret_box.as_ref());
        Some(pod_config::resolve(&pod.desired.pod, &facts, &objects))
    }

    /// Remembers the objects a pod reads as the plan holds them now (shared, not copied), to
    /// tell later whether one changed.
    fn remember_refs(&mut self, uid: &str) {
        let (Some(plan), Some(pod)) = (self.plan.as_ref(), self.pods.get_mut(uid)) else {
            return;
        };
        let namespace = pod.namespace().to_owned();
        pod.config_refs = pod_config::reference_keys(&namespace, &pod.desired.pod.spec)
            .into_iter()
            .map(|key| {
                let object = plan.configs.object(&key).cloned();
                (key, object)
            })
            .collect();
        pod.config_resolved = true;
    }

    /// A pod cannot start: something it reads is missing. It waits, without a back-off, for
    /// the objects it reads to change.
    pub(super) fn config_missing(&mut self, uid: &str, missing: Missing, now: Now) {
        self.busy.remove(uid);
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        let message = missing.to_string();
        let waiting = Some((CONFIG_ERROR.to_owned(), message.clone()));
        if pod.waiting != waiting {
            warn!(pod = %pod.name(), namespace = %pod.namespace(), %uid, reason = %message,
                "the pod waits for a config map, secret or key it reads");
        }
        pod.event(
            now.wall_ms,
            "Warning",
            "Failed",
            format!("Error: {message}"),
        );
        pod.waiting = waiting;
        pod.config_wait = true;
        self.touch(uid);
    }

    /// The plan's objects changed: pods waiting for one start, running pods whose mounted
    /// files show a changed one have them rewritten.
    pub(super) fn handle_config_changes(&mut self, now: Now) {
        let Some(plan) = &self.plan else {
            return;
        };
        let mut changed = Vec::new();
        for (uid, pod) in &self.pods {
            let differs =
                pod.config_refs
                    .iter()
                    .any(|(key, old)| match (old, plan.configs.object(key)) {
                        (None, None) => false,
                        (Some(a), Some(b)) => !Arc::ptr_eq(a, b),
                        _ => true,
                    });
            // A pod adopted after an agent restart has not been resolved by this one yet.
            let unresolved = !pod.config_resolved
                && pod.info.is_some()
                && !pod.desired.pod.spec.volumes.is_empty();
            if differs || unresolved {
                changed.push(uid.clone());
            }
        }
        for uid in changed {
            let Some(pod) = self.pods.get_mut(&uid) else {
                continue;
            };
            if pod.config_wait {
                pod.config_wait = false;
                debug!(pod = %pod.name(), %uid, "what the pod reads changed: starting it again");
                self.reconcile(&uid, now);
                continue;
            }
            if pod.info.is_none() || pod.terminating() || pod.desired.pod.spec.volumes.is_empty() {
                // Not started yet (it resolves when it starts), or nothing mounted to follow:
                // variables are read once, at start, as in Kubernetes. Nothing is opened.
                self.remember_refs(&uid);
                continue;
            }
            self.refresh_volumes(&uid, now);
        }
    }

    /// Resolves a running pod's volumes again and queues a rewrite of each that changed (a
    /// pod adopted after an agent restart: what it reads may have changed meanwhile).
    pub(super) fn refresh_volumes(&mut self, uid: &str, now: Now) {
        match self.resolve_config(uid) {
            Some(Ok(config)) => self.push_volume_updates(uid, config),
            Some(Err(missing)) => {
                // The files keep what they showed, as the kubelet keeps them.
                let Some(pod) = self.pods.get_mut(uid) else {
                    return;
                };
                pod.event(
                    now.wall_ms,
                    "Warning",
                    "FailedMount",
                    format!("MountVolume.SetUp failed: {missing}"),
                );
                self.touch(uid);
            }
            None => {}
        }
    }

    /// Evicts a running pod whose scratch directory (`emptyDir`) holds more than its
    /// `sizeLimit`, as the kubelet does: it is stopped and removed, scratch and all, and starts
    /// again empty. Returns whether it did.
    pub(super) fn evict_if_over(&mut self, uid: &str, now: Now) -> bool {
        let Some(pod) = self.pods.get_mut(uid) else {
            return false;
        };
        let Some(info) = &pod.info else {
            return false;
        };
        let over = pod.desired.pod.spec.volumes.iter().find_map(|v| {
            let crate::manifest::VolumeSource::EmptyDir(e) = &v.source else {
                return None;
            };
            let limit = e.size_limit?;
            let used = *info.scratch_bytes.get(&v.name)?;
            (used > limit.bytes()).then(|| {
                format!(
                    "Usage of EmptyDir volume \"{}\" exceeds the limit \"{limit}\".",
                    v.name
                )
            })
        });
        let Some(message) = over else {
            return false;
        };
        warn!(pod = %pod.name(), namespace = %pod.namespace(), %uid, reason = %message,
            "evicting a pod");
        pod.event(now.wall_ms, "Warning", "Evicted", message.clone());
        // Marked terminating first, so that the stop tells this reason and no other.
        pod.terminating_since_ms = Some(now.wall_ms);
        self.evicted.insert(uid.to_owned(), (now.wall_ms, message));
        self.stop(uid, now);
        true
    }

    /// Queues a rewrite of each volume whose content changed.
    fn push_volume_updates(&mut self, uid: &str, config: PodConfig) {
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        for volume in config.volumes {
            let digest = volume_digest(&volume);
            if pod.volume_digests.get(&volume.name) == Some(&digest) {
                continue;
            }
            debug!(pod = %pod.name(), %uid, volume = %volume.name, "rewriting a volume");
            pod.volume_digests.insert(volume.name.clone(), digest);
            self.actions.push_back(Action::UpdateVolume {
                uid: uid.to_owned(),
                volume,
            });
        }
    }

    /// A volume was rewritten (or could not be).
    pub(crate) fn handle_volume_updated(
        &mut self,
        uid: &str,
        volume: &str,
        result: Result<(), RuntimeError>,
        now: Now,
    ) {
        let Err(e) = result else {
            return;
        };
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        if matches!(e, RuntimeError::PodNotFound { .. }) || pod.terminating() {
            return;
        }
        let message = format!("MountVolume.SetUp failed for volume \"{volume}\": {e}");
        warn!(pod = %pod.name(), %uid, %volume, error = %e, "rewriting a volume failed");
        // Written again at the next change.
        pod.volume_digests.remove(volume);
        pod.event(now.wall_ms, "Warning", "FailedMount", message);
        self.touch(uid);
    }
}
