//! Probes, as Kubernetes runs them: a running container's startup probe runs until it passes
//! once and holds the other two; readiness sets the container's `ready` after
//! `successThreshold` successes in a row and clears it after `failureThreshold` failures (no
//! readiness probe: ready once started); liveness restarts the container after
//! `failureThreshold` failures in a row, and so does a startup probe that never passes. The
//! first probe runs `initialDelaySeconds` after the run was first seen, the next ones every
//! `periodSeconds` after the previous result.
//!
//! Each probe's next run is the pod's `Probe` timer; a probe whose timer fired while it could
//! not run is `due` and runs as soon as it can. Results carry the token of the run they answer,
//! so a result that arrives after the container restarted is ignored.

use std::time::Duration;

use shoal_gossip::Now;
use tracing::{debug, info};

use super::timer::{PodTimer, Timer};
use super::{Action, Busy, Supervisor};
use crate::manifest::ProbeKind;
use crate::runtime;

const KINDS: [ProbeKind; 3] = [
    ProbeKind::Startup,
    ProbeKind::Liveness,
    ProbeKind::Readiness,
];

impl Supervisor {
    /// Starts the pod's probes that are due, and sets the timers of those that will be.
    pub(super) fn schedule_probes(&mut self, uid: &str, now: Now) {
        // Not while the pod is being restarted (or stopped): a probe would see the old run.
        if self.busy.contains_key(uid) {
            return;
        }
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        if pod.terminating() {
            return;
        }
        let Some(info) = &pod.info else {
            return;
        };
        let ip = info.ip;
        let mut changed = false;
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
            if spec.startup_probe.is_none() && !c.started {
                c.started = true;
                changed = true;
            }
            if spec.readiness_probe.is_none() && c.started && !c.ready {
                c.ready = true;
                changed = true;
            }
            let running_since = c.running_since.unwrap_or(now.mono);
            for kind in KINDS {
                let Some(probe) = kind.probe_of(spec) else {
                    continue;
                };
                if (kind == ProbeKind::Startup) == c.started {
                    continue;
                }
                let timer = Timer::Pod(uid.to_owned(), PodTimer::Probe(spec.name.clone(), kind));
                let state = c.probe_mut(kind);
                if state.in_flight.is_some() || self.timers.is_set(&timer) {
                    continue;
                }
                if !state.due {
                    let first =
                        running_since + Duration::from_secs(probe.initial_delay_seconds.into());
                    if first > now.mono {
                        self.timers.set(timer, first);
                        continue;
                    }
                }
                state.due = false;
                self.next_probe_token += 1;
                state.in_flight = Some(self.next_probe_token);
                self.actions.push_back(Action::RunProbe {
                    uid: uid.to_owned(),
                    container: Box::new(spec.clone()),
                    kind,
                    probe: probe.clone(),
                    ip,
                    token: self.next_probe_token,
                });
            }
        }
        if changed {
            self.touch(uid);
        }
    }

    /// A probe's result (`Err` says what failed, for the pod's events).
    pub(crate) fn handle_probe_result(
        &mut self,
        uid: &str,
        container: &str,
        kind: ProbeKind,
        token: u64,
        result: Result<(), String>,
        now: Now,
    ) {
        let busy = self.busy.contains_key(uid);
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
        else {
            return;
        };
        let Some(probe) = kind.probe_of(spec) else {
            return;
        };
        let (period, success_threshold, failure_threshold) = (
            Duration::from_secs(probe.period_seconds.max(1).into()),
            probe.success_threshold,
            probe.failure_threshold,
        );
        let grace = pod.grace();
        let Some(c) = pod.containers.get_mut(container) else {
            return;
        };
        let state = c.probe_mut(kind);
        if state.in_flight != Some(token) {
            debug!(%uid, container, kind = kind.as_str(), "dropping the result of a probe of an earlier run");
            return;
        }
        state.in_flight = None;
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
        let mut changed = false;
        let mut restart = false;
        match kind {
            ProbeKind::Startup => {
                if successes >= 1 {
                    changed |= !c.started;
                    c.started = true;
                } else if failures >= failure_threshold {
                    restart = true;
                }
            }
            ProbeKind::Readiness => {
                if successes >= success_threshold {
                    changed |= !c.ready;
                    c.ready = true;
                } else if failures >= failure_threshold {
                    changed |= c.ready;
                    c.ready = false;
                }
            }
            ProbeKind::Liveness => {
                if failures >= failure_threshold {
                    restart = true;
                }
            }
        }
        if restart {
            c.reset_probes();
            // The run ends: the next one's probes wait for their initial delay again.
            c.running_since = None;
            changed |= c.ready;
            c.ready = false;
        }
        if let Err(message) = &result {
            pod.event(
                now.wall_ms,
                "Warning",
                "Unhealthy",
                format!("{} probe failed: {message}", kind.as_str()),
            );
            changed = true;
        }
        let timer = Timer::Pod(uid.to_owned(), PodTimer::Probe(container.to_owned(), kind));
        if restart {
            self.stop_probe_timers(uid, container);
        } else {
            self.timers.set(timer, now.mono + period);
        }
        // A probe cannot restart a container while another action runs on the pod.
        if restart && !busy {
            let pod = self.pods.get_mut(uid).expect("looked up above");
            info!(pod = %pod.name(), %uid, container, kind = kind.as_str(), "probe failed too often; restarting the container");
            pod.event(
                now.wall_ms,
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
            self.busy.insert(uid.to_owned(), Busy::Restarting);
            self.actions.push_back(Action::RestartContainer {
                uid: uid.to_owned(),
                container: container.to_owned(),
                grace,
            });
            changed = true;
        }
        if changed {
            self.touch(uid);
        }
        self.reconcile(uid, now);
    }

    /// Removes the timers of a container's probes (its probe history was reset).
    pub(super) fn stop_probe_timers(&mut self, uid: &str, container: &str) {
        for kind in KINDS {
            self.timers.stop(&Timer::Pod(
                uid.to_owned(),
                PodTimer::Probe(container.to_owned(), kind),
            ));
        }
    }
}
