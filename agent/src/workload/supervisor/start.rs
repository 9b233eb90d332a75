//! Creating pods: pulling their images first when the runtime has images (progress becomes
//! pod events), then starting them with their runtime spec.
//!
//! A failed pull is `ErrImagePull` (then `ImagePullBackOff` while the back-off runs); a start
//! that fails for another reason is `CreateContainerError`. Both wait out the same back-off as
//! restarts (10 s doubling to 5 min) in the pod's `StartRetry` timer. A start that finds an
//! image missing pulls it at once.

use shoal_gossip::Now;
use tracing::{debug, info, warn};

use super::pod::CONTAINER_CREATING;
use super::restart::next_backoff;
use super::timer::{PodTimer, Timer};
use super::{Action, Busy, Supervisor};
use crate::manifest;
use crate::runtime::{self, ContainerSpec, PodInfo, RuntimeError};
use crate::workload::plan::DesiredPod;
use crate::workload::pod_config::PodConfig;
use crate::workload::service::ServiceRange;

impl Supervisor {
    /// Creates a desired pod the runtime does not have: pulls first if it may need images.
    pub(super) fn start(&mut self, uid: &str, now: Now) {
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        let pull = self.config.pull_images
            && pod
                .waiting
                .as_ref()
                .is_some_and(|(reason, _)| reason == CONTAINER_CREATING);
        let creating = Some((CONTAINER_CREATING.to_owned(), String::new()));
        if pod.waiting != creating {
            pod.waiting = creating;
            self.touch(uid);
        }
        self.timers
            .stop(&Timer::Pod(uid.to_owned(), PodTimer::StartRetry));
        if pull {
            let pod = &self.pods[uid];
            let images = pod
                .desired
                .pod
                .spec
                .containers
                .iter()
                .map(|c| c.image.clone())
                .collect();
            debug!(pod = %pod.name(), %uid, "pulling the pod's images");
            self.busy.insert(uid.to_owned(), Busy::Pulling);
            self.actions.push_back(Action::PullImages {
                uid: uid.to_owned(),
                images,
            });
        } else {
            self.push_start(uid, now);
        }
    }

    fn push_start(&mut self, uid: &str, now: Now) {
        let config = match self.resolve_config(uid) {
            Some(Ok(config)) => config,
            Some(Err(missing)) => {
                self.config_missing(uid, missing, now);
                return;
            }
            None => return,
        };
        let Some(pod) = self.pods.get_mut(uid) else {
            return;
        };
        for warning in &config.warnings {
            pod.event(
                now.wall_ms,
                "Warning",
                "InvalidEnvironmentVariableNames",
                warning.clone(),
            );
        }
        pod.config_wait = false;
        pod.volume_digests = config
            .volumes
            .iter()
            .map(|v| (v.name.clone(), volume_digest(v)))
            .collect();
        let pod = &self.pods[uid];
        let links = self
            .plan
            .as_ref()
            .and_then(|p| p.service_env.get(pod.namespace()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let spec = runtime_spec(&pod.desired, links, self.config.service_range, config);
        info!(pod = %pod.name(), namespace = %pod.namespace(), %uid, "starting pod");
        self.busy.insert(uid.to_owned(), Busy::Starting);
        self.actions.push_back(Action::StartPod {
            uid: uid.to_owned(),
            spec,
        });
    }

    /// A line of pull progress (the driver sends at most one a second).
    pub(crate) fn handle_pull_progress(&mut self, uid: &str, message: String, now: Now) {
        if let Some(pod) = self.pods.get_mut(uid) {
            pod.event(now.wall_ms, "Normal", "Pulling", message);
            self.touch(uid);
        }
    }

    /// The pod's images were pulled (or one could not be).
    pub(crate) fn handle_pulled(&mut self, uid: &str, result: Result<(), RuntimeError>, now: Now) {
        let wanted = self.plan.as_ref().is_some_and(|p| p.pods.contains_key(uid));
        let Some(pod) = self.pods.get_mut(uid) else {
            self.busy.remove(uid);
            return;
        };
        match result {
            // The pod stays busy from the pull to the end of its start.
            Ok(()) if wanted => {
                pod.start_backoff = std::time::Duration::ZERO;
                self.push_start(uid, now);
                return;
            }
            Ok(()) => {
                pod.start_backoff = std::time::Duration::ZERO;
            }
            Err(e) => {
                let message = e.to_string();
                warn!(pod = %pod.name(), %uid, error = %message, "pulling an image failed");
                pod.event(now.wall_ms, "Warning", "Failed", message.clone());
                pod.start_backoff = next_backoff(pod.start_backoff);
                pod.waiting = Some(("ErrImagePull".into(), message));
                let retry = now.mono + pod.start_backoff;
                self.timers
                    .set(Timer::Pod(uid.to_owned(), PodTimer::StartRetry), retry);
                self.touch(uid);
            }
        }
        self.busy.remove(uid);
        self.reconcile(uid, now);
    }

    /// The pod was created and started (or could not be).
    pub(crate) fn handle_started(
        &mut self,
        uid: &str,
        result: Result<PodInfo, RuntimeError>,
        now: Now,
    ) {
        self.busy.remove(uid);
        self.mark_stale(uid);
        let Some(pod) = self.pods.get_mut(uid) else {
            // Forgotten meanwhile: a stray now, which the next reconcile stops.
            if let Ok(info) = result {
                self.strays.insert(uid.to_owned(), info);
                self.reconcile(uid, now);
            }
            return;
        };
        match result {
            Ok(info) => {
                pod.waiting = None;
                if !self.config.pull_images {
                    // The process runtime cannot mount: say where each mount's files are.
                    let mut notes = Vec::new();
                    for c in &pod.desired.pod.spec.containers {
                        for m in &c.volume_mounts {
                            let Some(dir) = info.volume_dirs.get(&m.name) else {
                                continue;
                            };
                            notes.push(format!(
                                "volume {:?} of container {} is at {dir} (${}), not at {}: the process runtime does not mount",
                                m.name,
                                c.name,
                                runtime::process::volume_env_name(&m.name),
                                m.mount_path
                            ));
                        }
                    }
                    for note in notes {
                        pod.event(now.wall_ms, "Normal", "VolumeDirectory", note);
                    }
                }
                for c in &info.containers {
                    pod.event(
                        now.wall_ms,
                        "Normal",
                        "Started",
                        format!("Started container {}", c.name),
                    );
                }
                pod.info = Some(info);
            }
            Err(RuntimeError::ImageNotPresent { image }) => {
                // Pull first, at once.
                debug!(pod = %pod.name(), %uid, %image, "an image is missing; pulling it");
                self.timers
                    .stop(&Timer::Pod(uid.to_owned(), PodTimer::StartRetry));
                pod.waiting = Some((CONTAINER_CREATING.into(), String::new()));
            }
            Err(e) => {
                let message = e.to_string();
                warn!(pod = %pod.name(), %uid, error = %message, "starting a pod failed");
                pod.event(now.wall_ms, "Warning", "Failed", message.clone());
                pod.waiting = Some(("CreateContainerError".into(), message));
                pod.start_backoff = next_backoff(pod.start_backoff);
                let retry = now.mono + pod.start_backoff;
                self.timers
                    .set(Timer::Pod(uid.to_owned(), PodTimer::StartRetry), retry);
            }
        }
        self.touch(uid);
        self.reconcile(uid, now);
    }
}

/// A digest of a volume's content, to tell whether an update changes it.
pub(super) fn volume_digest(volume: &runtime::VolumeSpec) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for file in &volume.files {
        hasher.update(&(file.path.len() as u64).to_le_bytes());
        hasher.update(file.path.as_bytes());
        hasher.update(&file.mode.to_le_bytes());
        hasher.update(&(file.data.len() as u64).to_le_bytes());
        hasher.update(&file.data);
    }
    hasher.digest()
}

/// The runtime's input for a desired pod, with the service links it starts with and what it
/// reads from config maps, secrets and the downward API.
pub(super) fn runtime_spec(
    desired: &DesiredPod,
    links: &[manifest::EnvVar],
    service_range: ServiceRange,
    config: PodConfig,
) -> runtime::PodSpec {
    let pod = &desired.pod;
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    runtime::PodSpec {
        uid: desired.uid.clone(),
        namespace: namespace.clone(),
        name: pod.metadata.name.clone(),
        spec_hash: desired.spec_hash.clone(),
        volumes: config.volumes,
        scratch: config.scratch,
        host_paths: config.host_paths,
        containers: pod
            .spec
            .containers
            .iter()
            .zip(config.containers)
            .map(|(c, resolved)| {
                // The container's own variables win over service links of the same name.
                let mut env: Vec<(String, String)> = links
                    .iter()
                    .filter(|l| {
                        !resolved.env.iter().any(|(n, _)| *n == l.name)
                            && !resolved.pod_ip_env.contains(&l.name)
                    })
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect();
                env.extend(resolved.env);
                ContainerSpec {
                    mounts: resolved.mounts,
                    sensitive_env: resolved.sensitive_env,
                    pod_ip_env: resolved.pod_ip_env,
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
        dns: (!service_range.is_loopback()).then(|| pod_dns(&namespace, service_range)),
    }
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
