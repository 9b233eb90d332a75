//! The reconciler: the tokio driver of this node's [`Supervisor`], which holds all the policy
//! (starts, restarts with back-off, probes, hand-offs, adoption, pod records).
//!
//! One task owns the supervisor and `select!`s over snapshot changes, completions of runtime
//! work (each action runs in a task of its own and sends its result back) and the supervisor's
//! next deadline. After every input it drains the outputs: actions are spawned, changed pod
//! records are written in one batch ([`DriverHandle::write_owned_many`], one durable commit).
//!
//! Work is proportional to change: the plan is computed only when the snapshot changed (or
//! when the supervisor leaves its first pass, which plans with this node's pods forfeited),
//! completions that arrive together are handled together, and the runtime is listed on the
//! supervisor's timer (every second, and after restarts), not on every input.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_gossip::{NodeId, Now};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant as TokioInstant;
use tracing::{debug, info, warn};

use super::plan::{Plan, Planner};
use super::probe;
use super::service::ServiceRange;
use super::snapshot::Snapshot;
use super::supervisor::{Action, NodePlan, Supervisor, SupervisorConfig, snapshot_synced};
use crate::clock::Clock;
use crate::driver::DriverHandle;
use crate::manifest::{self, Probe, ProbeKind};
use crate::runtime::{AnyRuntime, PodInfo, Runtime, RuntimeError, RuntimeKind, VolumeSpec};
use crate::secret_box::SecretBox;

/// At most this many completions wait to be handled; runtime tasks wait beyond it.
const DONE_QUEUE: usize = 4096;
/// Pull progress becomes at most one pod event this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Under a stream of changes, plans are at least this far apart, and at least twice as far
/// as the last plan took, so that planning takes at most a third of the task's time however
/// fast changes come (the first change after a quiet moment is planned at once).
const MIN_PLAN_GAP: Duration = Duration::from_millis(20);

/// What the reconciler needs to know about this node.
pub(crate) struct ReconcilerConfig {
    pub(crate) me: NodeId,
    /// This node's address (the host part is the pods' `hostIP`).
    pub(crate) host_ip: String,
    /// The cluster's service range (for the service-link variables pods start with).
    pub(crate) service_range: ServiceRange,
    /// This start of the agent (its node info's `run`).
    pub(crate) run: u64,
    /// Opens the secrets this node's pods use.
    pub(crate) secret_box: SecretBox,
}

/// Results of runtime work done in tasks.
enum Done {
    Listed(Result<Vec<PodInfo>, RuntimeError>),
    Progress {
        uid: String,
        message: String,
    },
    Pulled {
        uid: String,
        result: Result<(), RuntimeError>,
    },
    Started {
        uid: String,
        result: Result<PodInfo, RuntimeError>,
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
        token: u64,
        result: Result<(), String>,
    },
    VolumeUpdated {
        uid: String,
        volume: String,
        result: Result<(), RuntimeError>,
    },
}

/// Volume rewrites waiting for the writer task: the newest content per pod and volume, so
/// that many changes in a row cost one write each, and what waits is bounded by the pods'
/// volumes however fast their objects change.
#[derive(Default)]
struct VolumeQueue {
    pending: std::sync::Mutex<BTreeMap<(String, String), VolumeSpec>>,
    wake: tokio::sync::Notify,
}

impl VolumeQueue {
    fn push(&self, uid: String, volume: VolumeSpec) {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((uid, volume.name.clone()), volume);
        self.wake.notify_one();
    }

    fn take(&self) -> Option<((String, String), VolumeSpec)> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_first()
    }
}

/// Writes queued volume rewrites one at a time (two writes of one volume never race).
async fn write_volumes(
    queue: Arc<VolumeQueue>,
    runtime: Arc<AnyRuntime>,
    done: mpsc::Sender<Done>,
) {
    loop {
        while let Some(((uid, name), volume)) = queue.take() {
            let result = runtime.update_volume(&uid, &volume).await;
            let done_msg = Done::VolumeUpdated {
                uid,
                volume: name,
                result,
            };
            if done.send(done_msg).await.is_err() {
                return;
            }
        }
        queue.wake.notified().await;
    }
}

/// The grace period every pod gets when the agent stops them all on its way out (Kubernetes'
/// default `terminationGracePeriodSeconds`).
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Stops and removes every pod of this node (when the node leaves the cluster), all at once:
/// the whole takes at most one `grace` period (and the removals), however many pods there are.
pub(crate) async fn stop_all<R: Runtime>(runtime: &R, grace: Duration) {
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
    let stops = pods.into_iter().map(|pod| async move {
        if let Err(e) = runtime.stop_pod(&pod.uid, grace).await {
            warn!(pod = %pod.name, error = %e, "stopping a pod failed");
        }
        if let Err(e) = runtime.remove_pod(&pod.uid).await {
            warn!(pod = %pod.name, error = %e, "removing a pod failed");
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
    let (done_tx, done_rx) = mpsc::channel(DONE_QUEUE);
    let volumes = Arc::new(VolumeQueue::default());
    tokio::spawn(write_volumes(
        volumes.clone(),
        runtime.clone(),
        done_tx.clone(),
    ));
    let clock = Clock::real();
    let supervisor = Supervisor::new(
        SupervisorConfig {
            me: config.me,
            host_ip: config.host_ip.clone(),
            service_range: config.service_range,
            pull_images: runtime.kind() == RuntimeKind::Docker,
            run: config.run,
            secret_box: Some(config.secret_box.clone()),
        },
        clock.now(),
    );
    let mut reconciler = Reconciler {
        config,
        runtime,
        driver,
        snapshots,
        plans,
        done_tx,
        done_rx,
        volumes,
        supervisor,
        planner: Planner::default(),
        clock,
        plan_due: true,
        planned_forfeit: None,
        replan_at: None,
        next_plan_at: TokioInstant::now(),
        plan_waits: false,
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
    /// Volume rewrites for the writer task.
    volumes: Arc<VolumeQueue>,
    supervisor: Supervisor,
    planner: Planner,
    clock: Clock,
    /// The snapshot changed since the last plan.
    plan_due: bool,
    /// The forfeit the last plan was made with.
    planned_forfeit: Option<bool>,
    /// When the last plan changes with no change of state (a pod becomes available after its
    /// Deployment's `minReadySeconds`): plan again then.
    replan_at: Option<TokioInstant>,
    /// No plan before this (see [`MIN_PLAN_GAP`]).
    next_plan_at: TokioInstant,
    /// A plan is due and waits until `next_plan_at`.
    plan_waits: bool,
}

impl Reconciler {
    async fn run(&mut self) {
        loop {
            self.plan_if_due();
            self.perform_actions();
            self.publish_records().await;
            let deadline = self
                .supervisor
                .poll_timeout()
                .map(|t| self.clock.instant(t));
            tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.plan_due = true;
                }
                done = self.done_rx.recv() => {
                    let Some(done) = done else { break };
                    let now = self.clock.now();
                    self.handle_done(done, now);
                    // Everything else that completed meanwhile, before the outputs.
                    while let Ok(more) = self.done_rx.try_recv() {
                        self.handle_done(more, now);
                    }
                }
                () = sleep_until(deadline) => {
                    self.supervisor.handle_timeout(self.clock.now());
                }
                () = sleep_until(self.replan_at) => {
                    self.replan_at = None;
                    self.plan_due = true;
                }
                () = sleep_until(self.plan_waits.then_some(self.next_plan_at)) => {
                    self.plan_waits = false;
                }
            }
        }
    }

    /// Plans when the snapshot changed or the supervisor wants another kind of plan.
    fn plan_if_due(&mut self) {
        let now = self.clock.now();
        let me = self.config.me;
        // A change seen here must not be lost: the snapshot is marked seen only when planned
        // from.
        if self.snapshots.has_changed().unwrap_or(false) {
            self.plan_due = true;
        }
        let synced = snapshot_synced(&self.snapshots.borrow(), &me);
        let Some(forfeit) = self.supervisor.plan_forfeit(synced, now) else {
            return;
        };
        if !self.plan_due && self.planned_forfeit == Some(forfeit) {
            return;
        }
        if TokioInstant::now() < self.next_plan_at {
            self.plan_waits = true;
            return;
        }
        let started = TokioInstant::now();
        let snapshot = self.snapshots.borrow_and_update().clone();
        let plan = self
            .planner
            .plan(&snapshot, forfeit.then_some(&me), now.wall_ms);
        let node_plan = NodePlan::new(
            &snapshot,
            &plan,
            &me,
            self.config.service_range,
            self.supervisor.plan(),
        );
        debug!(
            pods_here = node_plan.pods.len(),
            unschedulable = plan.unschedulable().len(),
            forfeit,
            "planned from a new snapshot"
        );
        self.supervisor.handle_plan(node_plan, now);
        self.replan_at = plan
            .next_change_ms
            .map(|at| TokioInstant::now() + Duration::from_millis(at.saturating_sub(now.wall_ms)));
        self.plans.send_replace(plan);
        let took = started.elapsed();
        self.next_plan_at = TokioInstant::now() + MIN_PLAN_GAP.max(took * 2);
        self.plan_due = false;
        self.planned_forfeit = Some(forfeit);
    }

    fn handle_done(&mut self, done: Done, now: Now) {
        let sup = &mut self.supervisor;
        match done {
            Done::Listed(result) => sup.handle_pods_listed(result, now),
            Done::Progress { uid, message } => sup.handle_pull_progress(&uid, message, now),
            Done::Pulled { uid, result } => sup.handle_pulled(&uid, result, now),
            Done::Started { uid, result } => sup.handle_started(&uid, result, now),
            Done::Stopped { uid } => sup.handle_stopped(&uid, now),
            Done::Restarted {
                uid,
                container,
                result,
            } => sup.handle_restarted(&uid, &container, result, now),
            Done::Probed {
                uid,
                container,
                kind,
                token,
                result,
            } => sup.handle_probe_result(&uid, &container, kind, token, result, now),
            Done::VolumeUpdated {
                uid,
                volume,
                result,
            } => sup.handle_volume_updated(&uid, &volume, result, now),
        }
    }

    /// Runs each action the supervisor asks for in a task of its own.
    fn perform_actions(&mut self) {
        while let Some(action) = self.supervisor.poll_action() {
            let runtime = self.runtime.clone();
            let done = self.done_tx.clone();
            match action {
                Action::ListPods => {
                    tokio::spawn(async move {
                        let _ = done.send(Done::Listed(runtime.list_pods().await)).await;
                    });
                }
                Action::PullImages { uid, images } => {
                    tokio::spawn(pull(runtime, done, uid, images));
                }
                Action::StartPod { uid, spec } => {
                    tokio::spawn(async move {
                        let result = runtime.start_pod(&spec).await;
                        let _ = done.send(Done::Started { uid, result }).await;
                    });
                }
                Action::StopPod { uid, grace } => {
                    tokio::spawn(async move {
                        if let Err(e) = runtime.stop_pod(&uid, grace).await {
                            warn!(%uid, error = %e, "stopping a pod failed");
                        }
                        if let Err(e) = runtime.remove_pod(&uid).await {
                            warn!(%uid, error = %e, "removing a pod failed");
                        }
                        let _ = done.send(Done::Stopped { uid }).await;
                    });
                }
                Action::RestartContainer {
                    uid,
                    container,
                    grace,
                } => {
                    tokio::spawn(async move {
                        let result = runtime.restart_container(&uid, &container, grace).await;
                        if let Err(e) = &result {
                            warn!(%uid, %container, error = %e, "restarting a container failed");
                        }
                        let _ = done
                            .send(Done::Restarted {
                                uid,
                                container,
                                result,
                            })
                            .await;
                    });
                }
                Action::RunProbe {
                    uid,
                    container,
                    kind,
                    probe,
                    ip,
                    token,
                } => {
                    tokio::spawn(run_probe(
                        runtime, done, uid, container, kind, probe, ip, token,
                    ));
                }
                Action::UpdateVolume { uid, volume } => self.volumes.push(uid, volume),
            }
        }
    }

    /// Writes every changed record in one batch.
    async fn publish_records(&mut self) {
        let mut writes = Vec::new();
        while let Some(update) = self.supervisor.poll_record_update() {
            writes.push((update.name, update.value));
        }
        if writes.is_empty() {
            return;
        }
        debug!(records = writes.len(), "publishing pod records");
        let names: Vec<String> = writes.iter().map(|(name, _)| name.clone()).collect();
        if self.driver.write_owned_many(writes).await.is_err() {
            warn!(
                records = names.len(),
                "publishing pod records failed: the agent is shutting down"
            );
            self.supervisor.handle_publish_failed(names);
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<TokioInstant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Pulls a pod's images in order, with at most one progress line a second as pod events.
async fn pull(
    runtime: Arc<AnyRuntime>,
    done: mpsc::Sender<Done>,
    uid: String,
    images: Vec<String>,
) {
    for image in images {
        let mut last: Option<std::time::Instant> = None;
        let progress_tx = done.clone();
        let progress_uid = uid.clone();
        let mut report = |message: String| {
            if last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                last = Some(std::time::Instant::now());
                let _ = progress_tx.try_send(Done::Progress {
                    uid: progress_uid.clone(),
                    message,
                });
            }
        };
        if let Err(e) = runtime.ensure_image(&image, &mut report).await {
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
            uid,
            result: Ok(()),
        })
        .await;
}

#[allow(clippy::too_many_arguments)]
async fn run_probe(
    runtime: Arc<AnyRuntime>,
    done: mpsc::Sender<Done>,
    uid: String,
    container: Box<manifest::Container>,
    kind: ProbeKind,
    probe: Probe,
    ip: Option<IpAddr>,
    token: u64,
) {
    let result = probe::run(runtime.as_ref(), &uid, &container, &probe, ip).await;
    let _ = done
        .send(Done::Probed {
            uid,
            container: container.name,
            kind,
            token,
            result,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::runtime::{ContainerSpec, PodSpec, ProcessRuntime, RuntimeConfig};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_every_pod_at_shutdown_takes_one_grace_period_not_one_per_pod() {
        let dir = std::env::temp_dir().join(format!("shoal-stop-all-{}", std::process::id()));
        let runtime = ProcessRuntime::new(RuntimeConfig::new("cluster-1", "node-1", &dir))
            .expect("the process runtime");
        // Three pods whose processes ignore SIGTERM: each stop takes its whole grace period.
        for i in 0..3 {
            let spec = PodSpec {
                uid: format!("uid-stubborn-{i}"),
                namespace: "default".into(),
                name: format!("stubborn-{i}"),
                spec_hash: "h".into(),
                containers: vec![ContainerSpec {
                    name: "c".into(),
                    command: vec![
                        "sh".into(),
                        "-c".into(),
                        "trap '' TERM; touch ready; while true; do sleep 0.05; done".into(),
                    ],
                    ..Default::default()
                }],
                labels: Default::default(),
                dns: None,
                volumes: Vec::new(),
                scratch: Vec::new(),
                host_paths: Vec::new(),
            };
            runtime.start_pod(&spec).await.expect("starting");
            let ready = runtime.pod_dir(&spec.uid).join("containers/c/ready");
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ready.exists() {
                assert!(Instant::now() < deadline, "{} never started", spec.name);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let grace = Duration::from_secs(2);
        let started = Instant::now();
        stop_all(&runtime, grace).await;
        let took = started.elapsed();
        assert!(runtime.list_pods().await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            took >= grace && took < grace * 2,
            "stopping 3 pods with a {grace:?} grace period took {took:?}"
        );
    }
}
