//! Restarts of exited containers, per `restartPolicy`, with Kubernetes' back-off: the first
//! restart at once, then 10 s, doubling up to 5 min; a container that ran for 10 min starts
//! over at no delay. While a restart waits, the container shows `CrashLoopBackOff`.
//!
//! An exit is acted on once (it is recognised by its `finished_at_ms`); the back-off deadline
//! is the pod's `Restart` timer, and `restart_pending` says a restart is owed.

use std::time::Duration;

use shoal_gossip::Now;
use tracing::info;

use super::records::terminated;
use super::timer::{PodTimer, Timer};
use super::{Action, Busy, Supervisor};
use crate::manifest::RestartPolicy;
use crate::runtime::{self, RuntimeError};

/// First restart delay after the first restart (Kubernetes' kubelet).
pub(crate) const BACKOFF_START: Duration = Duration::from_secs(10);
/// Longest restart delay.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A container running this long gets its back-off reset.
pub(crate) const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The delay after `current`: none, then 10 s, doubling to 5 min.
pub(super) fn next_backoff(current: Duration) -> Duration {
    if current.is_zero() {
        BACKOFF_START
    } else {
        (current * 2).min(BACKOFF_MAX)
    }
}

impl Supervisor {
    /// Notes new runs and new exits of the pod's containers and restarts the first one whose
    /// back-off is over (one action per pod at a time: the others follow when it completes).
    pub(super) fn restart_exited(&mut self, uid: &str, now: Now) {
        if self.busy.contains_key(uid) {
            return;
        }
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        if pod.terminating() {
            return;
        }
        let Some(info) = pod.info.take() else {
            return;
        };
        let policy = pod.desired.pod.spec.restart_policy;
        let grace = pod.grace();
        let pod_name = pod.desired.pod.metadata.name.clone();
        let mut changed = false;
        let mut restart = None;
        let mut backoff_events = Vec::new();
        for ci in &info.containers {
            let Some(c) = pod.containers.get_mut(&ci.name) else {
                continue;
            };
            match &ci.state {
                // A new run (the first seen, or one the runtime started since): the probes'
                // initial delay and the back-off reset count from now.
                runtime::ContainerState::Running { started_at_ms }
                    if c.running_since.is_none()
                        || (started_at_ms.is_some() && c.run_started_at_ms != *started_at_ms) =>
                {
                    c.running_since = Some(now.mono);
                    c.run_started_at_ms = *started_at_ms;
                }
                runtime::ContainerState::Exited {
                    exit_code,
                    finished_at_ms,
                    reason,
                    message,
                } => {
                    if c.running_since
                        .is_some_and(|s| now.mono.saturating_since(s) >= BACKOFF_RESET)
                    {
                        c.backoff = Duration::ZERO;
                    }
                    c.running_since = None;
                    if c.ready {
                        c.ready = false;
                        changed = true;
                    }
                    let this_exit = Some(*finished_at_ms);
                    if c.handled_exit_of != this_exit {
                        c.handled_exit_of = this_exit;
                        c.last_state =
                            Some(terminated(*exit_code, reason, message, *finished_at_ms));
                        changed = true;
                        let wanted = match policy {
                            RestartPolicy::Always => true,
                            RestartPolicy::OnFailure => *exit_code != Some(0),
                            RestartPolicy::Never => false,
                        };
                        let timer = Timer::Pod(uid.to_owned(), PodTimer::Restart(ci.name.clone()));
                        if wanted {
                            let delay = c.backoff;
                            c.backoff = next_backoff(c.backoff);
                            c.restart_pending = true;
                            if !delay.is_zero() {
                                self.timers.set(timer, now.mono + delay);
                                info!(pod = %pod_name, container = %ci.name, delay_s = delay.as_secs(),
                                    exit_code = ?exit_code, "container exited; restarting after its back-off");
                                backoff_events.push(format!(
                                    "Back-off {}s restarting failed container {}",
                                    delay.as_secs(),
                                    ci.name
                                ));
                            }
                        } else {
                            c.restart_pending = false;
                            self.timers.stop(&timer);
                        }
                    }
                    let timer = Timer::Pod(uid.to_owned(), PodTimer::Restart(ci.name.clone()));
                    if c.restart_pending && !self.timers.is_set(&timer) {
                        c.restart_pending = false;
                        c.restarts += 1;
                        c.reset_probes();
                        c.running_since = None;
                        changed = true;
                        restart = Some(ci.name.clone());
                        break;
                    }
                }
                _ => {}
            }
        }
        pod.info = Some(info);
        for message in backoff_events {
            pod.event(now.wall_ms, "Warning", "BackOff", message);
        }
        if let Some(container) = restart {
            self.stop_probe_timers(uid, &container);
            info!(pod = %pod_name, %uid, container = %container, "restarting container");
            self.busy.insert(uid.to_owned(), Busy::Restarting);
            self.actions.push_back(Action::RestartContainer {
                uid: uid.to_owned(),
                container,
                grace,
            });
        }
        if changed {
            self.touch(uid);
        }
    }

    /// A container restart (after an exit or a failed liveness or startup probe) completed.
    pub(crate) fn handle_restarted(
        &mut self,
        uid: &str,
        container: &str,
        result: Result<(), RuntimeError>,
        now: Now,
    ) {
        self.busy.remove(uid);
        self.mark_stale(uid);
        // Its new state is only known from a new listing.
        self.request_listing();
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        match result {
            Ok(()) => pod.event(
                now.wall_ms,
                "Normal",
                "Started",
                format!("Restarted container {container}"),
            ),
            Err(e) => pod.event(now.wall_ms, "Warning", "Failed", e.to_string()),
        }
        self.touch(uid);
        self.reconcile(uid, now);
    }
}
