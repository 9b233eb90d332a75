//! The Docker runtime: containers through the engine's API (bollard, over the unix socket).
//!
//! - **Engine**: `$DOCKER_HOST` when it is `unix://PATH`, else `/var/run/docker.sock`; the API
//!   version is negotiated down to the engine's (Docker 20.10 speaks 1.41). Only unix sockets
//!   are supported.
//! - **Network**: a bridge network `shoal-<first 12 characters of the cluster id>`, created on
//!   the first `start_pod` (labelled [`LABEL_CLUSTER`]) and shared by every agent of the cluster
//!   on this engine. The first container of a pod is attached to it and gets the pod's IP; the
//!   others join its network namespace (`network_mode: container:<first>`), as Kubernetes'
//!   pause container does, so they reach each other on `localhost`. The network is never
//!   removed by the runtime (tests remove theirs: [`DockerRuntime::remove_network`]).
//! - **Containers** are named `shoal_<namespace>_<pod>_<container>_<uid>` and carry the labels
//!   of the [module](super) plus the user's; `command` and `args` replace the image's
//!   entrypoint and cmd; `POD_NAME` and `POD_NAMESPACE` are set, and the first container's
//!   hostname is the pod's name. The json-file log driver is capped like the process runtime's
//!   logs ([`RuntimeConfig::log_max_bytes`] x 2). CPU and memory limits are the engine's
//!   (`NanoCpus`, `Memory`).
//! - **Crash safety**: the labels are the record, and the engine writes them atomically with
//!   the container, so every container that exists is found again. A pod is *whole* when its
//!   containers carry every index up to [`LABEL_POD_CONTAINERS`] and none is `created` (never
//!   started), `dead` or `removing`; anything else is what an interrupted start (containers
//!   created one by one, each then started) or removal (the last first) left.
//!   [`Runtime::recover`] removes incomplete pods when the runtime is made; `start_pod` of a
//!   uid that has an incomplete pod removes it first, and when a container name is taken by a
//!   container of this agent's (one its labels did not show, say one the engine is still
//!   removing), removes that and creates again, once. A whole pod is `PodExists`.
//! - **Not done**: `POD_IP` is not in the containers' environment (the IP is allocated when the
//!   first container starts; a server should bind `0.0.0.0`, the norm in a container); the
//!   pod's IP may change when its first container restarts; no port is published on the host
//!   (pods are reached at their IP on the shoal network); a timed-out exec's process is left
//!   running (the engine cannot kill an exec).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryStateEnum, HostConfig, HostConfigLogConfig, NetworkCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use super::{
    ContainerInfo, ContainerSpec, ContainerState, EXEC_OUTPUT_LIMIT, ExecResult, LABEL_CLUSTER,
    LABEL_CONTAINER, LABEL_CONTAINER_INDEX, LABEL_NAMESPACE, LABEL_NODE, LABEL_POD,
    LABEL_POD_CONTAINERS, LABEL_POD_UID, LABEL_SPEC_HASH, LogStream, PodInfo, PodSpec, Recovery,
    Runtime, RuntimeConfig, RuntimeError, RuntimeKind, validate_spec,
};

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Timeout of ordinary requests (the engine answers them in milliseconds).
const REQUEST_TIMEOUT_S: u64 = 120;

/// Where the engine is: `$DOCKER_HOST` (unix sockets only) or the default socket.
fn socket_path() -> Result<String, RuntimeError> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
            Some(path) => Ok(path.to_string()),
            None if host.starts_with('/') => Ok(host),
            None => Err(RuntimeError::EngineUnavailable {
                endpoint: host,
                reason: "only unix:// sockets are supported".to_string(),
            }),
        },
        _ => Ok(DEFAULT_SOCKET.to_string()),
    }
}

fn connect(timeout_s: u64) -> Result<Docker, RuntimeError> {
    let path = socket_path()?;
    if !Path::new(&path).exists() {
        return Err(RuntimeError::EngineUnavailable {
            endpoint: path,
            reason: "no such socket".to_string(),
        });
    }
    Docker::connect_with_unix(&path, timeout_s, bollard::API_DEFAULT_VERSION).map_err(|e| {
        RuntimeError::EngineUnavailable {
            endpoint: path,
            reason: e.to_string(),
        }
    })
}

/// Whether a Docker engine answers within two seconds (for `--runtime`'s default).
pub async fn docker_available() -> bool {
    let Ok(docker) = connect(2) else { return false };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), docker.ping()).await,
        Ok(Ok(_))
    )
}

fn status_code(err: &DockerError) -> Option<u16> {
    match err {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(err: &DockerError) -> bool {
    status_code(err) == Some(404)
}

/// The engine's own message, without bollard's "Docker responded with status code" prefix.
fn engine_message(err: &DockerError) -> String {
    match err {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// Docker container names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A hostname from a pod name: at most 63 characters of `[a-z0-9-]`.
fn hostname(pod_name: &str) -> String {
    let h: String = pod_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let h = h.trim_matches('-');
    if h.is_empty() {
        "pod".to_string()
    } else {
        h.to_string()
    }
}

/// Splits `repo[:tag]` (a digest is kept in the repository): Docker pulls every tag when the
/// tag is empty, so it defaults to `latest`.
fn split_image(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (
            image[..last_slash + i].to_string(),
            image[last_slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// One container of a pod as a listing shows it, for telling a whole pod from an incomplete
/// one.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Part {
    /// [`LABEL_CONTAINER_INDEX`].
    index: Option<usize>,
    /// [`LABEL_POD_CONTAINERS`] (absent on containers made before it existed).
    count: Option<usize>,
    state: Option<ContainerSummaryStateEnum>,
}

impl Part {
    fn of(summary: &ContainerSummary) -> Part {
        let label = |key: &str| {
            summary
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .and_then(|v| v.parse().ok())
        };
        Part {
            index: label(LABEL_CONTAINER_INDEX),
            count: label(LABEL_POD_CONTAINERS),
            state: summary.state,
        }
    }
}

/// Whether the containers found for one pod are the whole pod: each index up to the pod's
/// container count once, none never started (`created`), `dead` or being removed. Containers
/// made before the count label are taken as whole when their indices run from 0 without a gap
/// (a later container missing cannot be seen on them).
fn is_whole(parts: &[Part]) -> bool {
    use ContainerSummaryStateEnum as S;
    if parts.is_empty()
        || parts
            .iter()
            .any(|p| matches!(p.state, Some(S::CREATED | S::DEAD | S::REMOVING)))
    {
        return false;
    }
    let count = parts.iter().find_map(|p| p.count).unwrap_or(parts.len());
    let mut indices: Vec<Option<usize>> = parts.iter().map(|p| p.index).collect();
    indices.sort_unstable();
    parts.iter().all(|p| p.count.is_none_or(|c| c == count))
        && indices.len() == count
        && indices
            .iter()
            .enumerate()
            .all(|(i, index)| *index == Some(i))
}

/// One of the pod's containers as found by its labels.
#[derive(Clone, Debug)]
struct Found {
    id: String,
    index: usize,
    name: String,
}

/// The Docker runtime. Cheap to clone.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    config: RuntimeConfig,
    network: String,
    network_id: std::sync::Arc<OnceCell<String>>,
    /// Where the next operation stops short, as if the agent were killed there (tests).
    #[cfg(test)]
    crash: super::CrashSwitch,
}

impl DockerRuntime {
    /// Connects to the engine and negotiates the API version.
    pub async fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let docker = connect(REQUEST_TIMEOUT_S)?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| RuntimeError::EngineUnavailable {
                endpoint: socket_path().unwrap_or_default(),
                reason: "no answer within 10 s".to_string(),
            })?
            .map_err(|e| RuntimeError::EngineUnavailable {
                endpoint: socket_path().unwrap_or_default(),
                reason: e.to_string(),
            })?;
        let short: String = config
            .cluster_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            .take(12)
            .collect();
        let network = format!(
            "shoal-{}",
            if short.is_empty() { "default" } else { &short }
        );
        info!(network = %network, api = %docker.client_version(), "docker runtime ready");
        Ok(DockerRuntime {
            docker,
            config,
            network,
            network_id: std::sync::Arc::new(OnceCell::new()),
            #[cfg(test)]
            crash: super::CrashSwitch::default(),
        })
    }

    /// Makes the next operation stop short at `point`, as if the agent were killed there.
    #[cfg(test)]
    pub(crate) fn crash_at(&self, point: super::CrashPoint) {
        self.crash.arm(point);
    }

    /// The shoal network's name.
    pub fn network_name(&self) -> &str {
        &self.network
    }

    /// The bollard client, for tests and tools.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Removes the shoal network (tests; the agent never does). A missing network is `Ok`.
    pub async fn remove_network(&self) -> Result<(), RuntimeError> {
        match self.docker.remove_network(&self.network).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(RuntimeError::engine(
                format!("removing network {}", self.network),
                e,
            )),
        }
    }

    /// The shoal network's id, creating the network if there is none. Agents sharing an
    /// engine may create it at the same moment, and Docker (before API 1.44) accepts two
    /// networks of one name: then every agent takes the oldest (creation time, then id), and
    /// removes the others when nothing is attached to them. A network created after an agent
    /// looked is younger than the one it chose, so all agents choose the same one.
    async fn ensure_network(&self) -> Result<String, RuntimeError> {
        self.network_id
            .get_or_try_init(|| async {
                if self.shoal_networks().await?.is_empty() {
                    let request = NetworkCreateRequest {
                        name: self.network.clone(),
                        driver: Some("bridge".to_string()),
                        labels: Some(HashMap::from([(
                            LABEL_CLUSTER.to_string(),
                            self.config.cluster_id.clone(),
                        )])),
                        ..Default::default()
                    };
                    match self.docker.create_network(request).await {
                        Ok(_) => info!(network = %self.network, "created the shoal network"),
                        // Another agent created it meanwhile (engines that refuse duplicates).
                        Err(e) if status_code(&e) == Some(409) => {}
                        Err(e) => {
                            return Err(RuntimeError::engine(
                                format!("creating network {}", self.network),
                                e,
                            ));
                        }
                    }
                }
                let mut networks = self.shoal_networks().await?;
                networks.sort();
                let Some((_, winner)) = networks.first().cloned() else {
                    // Not listed (yet): the name is what there is to go by.
                    return Ok(self.network.clone());
                };
                for (_, loser) in &networks[1..] {
                    match self.docker.remove_network(loser).await {
                        Ok(()) => info!(network = %self.network, id = %loser,
                            "removed a duplicate of the shoal network"),
                        Err(e) => debug!(network = %self.network, id = %loser, error = %e,
                            "a duplicate of the shoal network stays (in use?)"),
                    }
                }
                Ok(winner)
            })
            .await
            .cloned()
    }

    /// Networks named exactly like the shoal network, as (creation time in ns, id).
    async fn shoal_networks(&self) -> Result<Vec<(i128, String)>, RuntimeError> {
        let filters = HashMap::from([("name".to_string(), vec![self.network.clone()])]);
        let options = ListNetworksOptionsBuilder::new().filters(&filters).build();
        let networks = self
            .docker
            .list_networks(Some(options))
            .await
            .map_err(|e| RuntimeError::engine(format!("listing network {}", self.network), e))?;
        Ok(networks
            .into_iter()
            // The name filter matches substrings.
            .filter(|n| n.name.as_deref() == Some(self.network.as_str()))
            .filter_map(|n| {
                let created = n.created.as_deref().and_then(rfc3339_nanos).unwrap_or(0);
                Some((created, n.id?))
            })
            .collect())
    }

    fn base_filters(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_CLUSTER}={}", self.config.cluster_id),
                format!("{LABEL_NODE}={}", self.config.node_id),
            ],
        )])
    }

    /// This agent's containers (of one pod, or all), running or not.
    async fn containers(
        &self,
        pod_uid: Option<&str>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let mut filters = self.base_filters();
        if let Some(uid) = pod_uid {
            filters
                .get_mut("label")
                .expect("label filter")
                .push(format!("{LABEL_POD_UID}={uid}"));
        }
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| RuntimeError::engine("listing containers", e))
    }

    /// The pod's containers, in pod order.
    async fn pod_containers(&self, pod_uid: &str) -> Result<Vec<Found>, RuntimeError> {
        let mut found: Vec<Found> = self
            .containers(Some(pod_uid))
            .await?
            .into_iter()
            .filter_map(|s| {
                let labels = s.labels.unwrap_or_default();
                Some(Found {
                    id: s.id?,
                    index: labels
                        .get(LABEL_CONTAINER_INDEX)
                        .and_then(|i| i.parse().ok())
                        .unwrap_or(usize::MAX),
                    name: labels.get(LABEL_CONTAINER).cloned().unwrap_or_default(),
                })
            })
            .collect();
        found.sort_by_key(|f| f.index);
        Ok(found)
    }

    async fn find_container(&self, pod_uid: &str, container: &str) -> Result<Found, RuntimeError> {
        let found = self.pod_containers(pod_uid).await?;
        if found.is_empty() {
            return Err(RuntimeError::PodNotFound {
                pod_uid: pod_uid.to_string(),
            });
        }
        found
            .into_iter()
            .find(|f| f.name == container)
            .ok_or_else(|| RuntimeError::ContainerNotFound {
                pod_uid: pod_uid.to_string(),
                container: container.to_string(),
            })
    }

    /// A client whose request timeout outlasts a stop with this grace period.
    fn client_for_grace(&self, grace: Duration) -> Docker {
        self.docker
            .clone()
            .with_timeout(Duration::from_secs(REQUEST_TIMEOUT_S) + grace)
    }

    fn grace_secs(grace: Duration) -> i32 {
        i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).unwrap_or(i32::MAX)
    }

    async fn stop_one(
        &self,
        docker: &Docker,
        id: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let options = StopContainerOptionsBuilder::new()
            .t(Self::grace_secs(grace))
            .build();
        match docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(RuntimeError::engine(format!("stopping container {id}"), e)),
        }
    }

    async fn remove_one(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 404: gone; 409: removal already in progress.
            Err(e) if is_not_found(&e) || status_code(&e) == Some(409) => Ok(()),
            Err(e) => Err(RuntimeError::engine(format!("removing container {id}"), e)),
        }
    }

    fn container_body(
        &self,
        pod: &PodSpec,
        spec: &ContainerSpec,
        index: usize,
        network: &str,
        first_id: Option<&str>,
    ) -> ContainerCreateBody {
        let mut labels: HashMap<String, String> = pod
            .labels
            .iter()
            .filter(|(k, _)| !k.starts_with("io.shoal."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in [
            (LABEL_CLUSTER, self.config.cluster_id.as_str()),
            (LABEL_NODE, self.config.node_id.as_str()),
            (LABEL_NAMESPACE, pod.namespace.as_str()),
            (LABEL_POD, pod.name.as_str()),
            (LABEL_POD_UID, pod.uid.as_str()),
            (LABEL_CONTAINER, spec.name.as_str()),
            (LABEL_SPEC_HASH, pod.spec_hash.as_str()),
        ] {
            labels.insert(k.to_string(), v.to_string());
        }
        labels.insert(LABEL_CONTAINER_INDEX.to_string(), index.to_string());
        labels.insert(
            LABEL_POD_CONTAINERS.to_string(),
            pod.containers.len().to_string(),
        );

        // Shoal's variables first; the spec's win (the engine keeps the last of duplicates,
        // but we dedupe so `inspect` shows one value).
        let mut env: Vec<(String, String)> = vec![
            ("POD_NAME".to_string(), pod.name.clone()),
            ("POD_NAMESPACE".to_string(), pod.namespace.clone()),
        ];
        for (k, v) in &spec.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }

        let log_max = self.config.log_max_bytes.max(1024);
        let host_config = HostConfig {
            network_mode: Some(match first_id {
                None => network.to_owned(),
                Some(first) => format!("container:{first}"),
            }),
            memory: spec
                .memory_limit_bytes
                .map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            nano_cpus: spec
                .cpu_millis_limit
                .map(|m| i64::try_from(m.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
            // The resolver belongs to the network namespace's owner; the others share it.
            dns: pod
                .dns
                .as_ref()
                .filter(|_| first_id.is_none())
                .map(|d| d.servers.iter().map(ToString::to_string).collect()),
            dns_search: pod
                .dns
                .as_ref()
                .filter(|_| first_id.is_none())
                .map(|d| d.searches.clone()),
            dns_options: pod
                .dns
                .as_ref()
                .filter(|_| first_id.is_none())
                .map(|d| d.options.clone()),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_string()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), format!("{}k", log_max / 1024)),
                    ("max-file".to_string(), "2".to_string()),
                ])),
            }),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.clone(),
            // A hostname conflicts with joining another container's namespaces.
            hostname: first_id.is_none().then(|| hostname(&pod.name)),
            // The pod's ports are the first container's (the others cannot expose any).
            exposed_ports: first_id.is_none().then(|| {
                pod.containers
                    .iter()
                    .flat_map(|c| &c.ports)
                    .map(|(port, proto)| format!("{port}/{}", proto.as_str()))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect()
            }),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Creates container `index` of the pod (not started). A container of that name that
    /// carries this agent's labels (left by an interrupted operation and missed by the label
    /// listing, or still being removed by the engine) is removed and the create tried again,
    /// once; one of another agent's is an error.
    async fn create_one(
        &self,
        pod: &PodSpec,
        spec: &ContainerSpec,
        index: usize,
        network: &str,
        first_id: Option<&str>,
    ) -> Result<String, RuntimeError> {
        let name = format!(
            "shoal_{}_{}_{}_{}",
            name_part(&pod.namespace),
            name_part(&pod.name),
            name_part(&spec.name),
            name_part(&pod.uid)
        );
        let mut retried = false;
        loop {
            let body = self.container_body(pod, spec, index, network, first_id);
            let options = CreateContainerOptionsBuilder::new().name(&name).build();
            let err = match self.docker.create_container(Some(options), body).await {
                Ok(response) => return Ok(response.id),
                Err(e) => e,
            };
            if is_not_found(&err) && engine_message(&err).contains("image") {
                return Err(RuntimeError::ImageNotPresent {
                    image: spec.image.clone(),
                });
            }
            if status_code(&err) == Some(409) && !retried && self.is_ours(&name).await? {
                warn!(pod = %pod.uid, container = %spec.name, name = %name,
                    "a container of this agent holds the name: removing it and creating again");
                self.remove_one(&name).await?;
                retried = true;
                continue;
            }
            return Err(RuntimeError::engine(
                format!("creating container {:?} of pod {}", spec.name, pod.uid),
                err,
            ));
        }
    }

    /// Whether the container `id_or_name` carries this agent's cluster and node labels.
    async fn is_ours(&self, id_or_name: &str) -> Result<bool, RuntimeError> {
        let Some(inspect) = self.inspect(id_or_name).await? else {
            // Gone meanwhile: the name is free again.
            return Ok(true);
        };
        let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
        Ok(labels.get(LABEL_CLUSTER) == Some(&self.config.cluster_id)
            && labels.get(LABEL_NODE) == Some(&self.config.node_id))
    }

    async fn start_one(
        &self,
        pod: &PodSpec,
        spec: &ContainerSpec,
        id: &str,
    ) -> Result<(), RuntimeError> {
        self.docker.start_container(id, None).await.map_err(|e| {
            RuntimeError::engine(
                format!("starting container {:?} of pod {}", spec.name, pod.uid),
                e,
            )
        })?;
        debug!(pod = %pod.uid, container = %spec.name, id = %id, "container started");
        Ok(())
    }

    /// Removes the containers a failed start created (the last first); returns its error.
    async fn undo_start(
        &self,
        pod: &PodSpec,
        spec: &ContainerSpec,
        created: &[String],
        err: RuntimeError,
    ) -> RuntimeError {
        warn!(pod = %pod.uid, container = %spec.name, error = %err,
            "starting the pod failed; removing what was created");
        for id in created.iter().rev() {
            if let Err(e) = self.remove_one(id).await {
                warn!(pod = %pod.uid, id = %id, error = %e, "cleanup failed");
            }
        }
        err
    }

    /// This agent's pods that are not whole ([`is_whole`]), by uid, with their containers'
    /// ids and whether each runs.
    fn incomplete(summaries: &[ContainerSummary]) -> BTreeMap<String, Vec<(String, bool)>> {
        let mut pods: BTreeMap<String, Vec<&ContainerSummary>> = BTreeMap::new();
        for s in summaries {
            if let Some(uid) = s.labels.as_ref().and_then(|l| l.get(LABEL_POD_UID)) {
                pods.entry(uid.clone()).or_default().push(s);
            }
        }
        pods.into_iter()
            .filter(|(_, containers)| {
                let parts: Vec<Part> = containers.iter().map(|s| Part::of(s)).collect();
                !is_whole(&parts)
            })
            .map(|(uid, containers)| {
                let ids = containers
                    .iter()
                    .filter_map(|s| {
                        let running = matches!(s.state, Some(ContainerSummaryStateEnum::RUNNING));
                        Some((s.id.clone()?, running))
                    })
                    .collect();
                (uid, ids)
            })
            .collect()
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        match self.docker.inspect_container(id, None).await {
            Ok(response) => Ok(Some(response)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(RuntimeError::engine(
                format!("inspecting container {id}"),
                e,
            )),
        }
    }

    fn container_state(inspect: &ContainerInspectResponse) -> ContainerState {
        let Some(state) = &inspect.state else {
            return ContainerState::Unknown {
                detail: "no state".to_string(),
            };
        };
        let started = state.started_at.as_deref().and_then(parse_rfc3339_ms);
        let finished = state.finished_at.as_deref().and_then(parse_rfc3339_ms);
        match state.status {
            Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
            Some(
                ContainerStateStatusEnum::RUNNING
                | ContainerStateStatusEnum::PAUSED
                | ContainerStateStatusEnum::RESTARTING,
            ) => ContainerState::Running {
                started_at_ms: started,
            },
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
                let code = state.exit_code.and_then(|c| i32::try_from(c).ok());
                let message = state.error.clone().filter(|e| !e.is_empty());
                let mut exited = ContainerState::exited(code, finished, message);
                if state.oom_killed == Some(true) {
                    if let ContainerState::Exited { reason, .. } = &mut exited {
                        *reason = "OOMKilled".to_string();
                    }
                }
                exited
            }
            other => ContainerState::Unknown {
                detail: other.map_or_else(|| "no status".to_string(), |s| s.to_string()),
            },
        }
    }

    fn pod_ip(&self, inspect: &ContainerInspectResponse) -> Option<IpAddr> {
        inspect
            .network_settings
            .as_ref()?
            .networks
            .as_ref()?
            .get(&self.network)?
            .ip_address
            .as_deref()
            .filter(|ip| !ip.is_empty())?
            .parse()
            .ok()
    }

    /// Reads the containers' labels and states into pods.
    async fn collect_pods(
        &self,
        summaries: Vec<bollard::models::ContainerSummary>,
    ) -> Result<Vec<PodInfo>, RuntimeError> {
        let inspections = futures::future::join_all(
            summaries
                .iter()
                .filter_map(|s| s.id.as_deref())
                .map(|id| self.inspect(id)),
        )
        .await;
        // uid -> (pod, containers with their index)
        let mut pods: BTreeMap<String, (PodInfo, Vec<(usize, ContainerInfo)>)> = BTreeMap::new();
        for inspection in inspections {
            let Some(inspect) = inspection? else { continue };
            let labels = inspect
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default();
            let Some(uid) = labels.get(LABEL_POD_UID) else {
                continue;
            };
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let index: usize = labels
                .get(LABEL_CONTAINER_INDEX)
                .and_then(|i| i.parse().ok())
                .unwrap_or(usize::MAX);
            let entry = pods.entry(uid.clone()).or_insert_with(|| {
                (
                    PodInfo {
                        uid: uid.clone(),
                        namespace: label(LABEL_NAMESPACE),
                        name: label(LABEL_POD),
                        spec_hash: label(LABEL_SPEC_HASH),
                        labels: labels
                            .iter()
                            .filter(|(k, _)| !k.starts_with("io.shoal."))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        ip: None,
                        containers: Vec::new(),
                    },
                    Vec::new(),
                )
            });
            let state = Self::container_state(&inspect);
            if index == 0 && matches!(state, ContainerState::Running { .. }) {
                entry.0.ip = self.pod_ip(&inspect);
            }
            entry.1.push((
                index,
                ContainerInfo {
                    name: label(LABEL_CONTAINER),
                    image: inspect
                        .config
                        .as_ref()
                        .and_then(|c| c.image.clone())
                        .unwrap_or_default(),
                    runtime_id: inspect.id.clone().unwrap_or_default(),
                    state,
                },
            ));
        }
        Ok(pods
            .into_values()
            .map(|(mut pod, mut containers)| {
                containers.sort_by_key(|(i, _)| *i);
                pod.containers = containers.into_iter().map(|(_, c)| c).collect();
                pod
            })
            .collect())
    }
}

impl Runtime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Docker
    }

    async fn ensure_image(
        &self,
        image: &str,
        on_progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(RuntimeError::engine(format!("inspecting image {image}"), e));
            }
        }
        let (repo, tag) = split_image(image);
        info!(image, "pulling image");
        on_progress(format!("pulling image {image}"));
        let options = CreateImageOptionsBuilder::new()
            .from_image(&repo)
            .tag(&tag)
            .build();
        let mut stream = self.docker.create_image(Some(options), None, None);
        // Layer id -> last status told, so progress is one line per change, not per byte.
        let mut told: HashMap<String, String> = HashMap::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| RuntimeError::ImagePull {
                image: image.to_string(),
                reason: engine_message(&e),
            })?;
            if let Some(detail) = info.error_detail {
                return Err(RuntimeError::ImagePull {
                    image: image.to_string(),
                    reason: detail
                        .message
                        .unwrap_or_else(|| "the engine gave no reason".to_string()),
                });
            }
            if let Some(status) = info.status {
                let id = info.id.unwrap_or_default();
                if told.get(&id) != Some(&status) {
                    let line = if id.is_empty() {
                        status.clone()
                    } else {
                        format!("{id}: {status}")
                    };
                    on_progress(line);
                    if told.len() < 1024 {
                        told.insert(id, status);
                    }
                }
            }
        }
        // The stream can end without an error and without the image (an engine quirk).
        match self.docker.inspect_image(image).await {
            Ok(_) => {
                info!(image, "pulled image");
                Ok(())
            }
            Err(e) => Err(RuntimeError::ImagePull {
                image: image.to_string(),
                reason: format!(
                    "the pull ended but the image is missing: {}",
                    engine_message(&e)
                ),
            }),
        }
    }

    async fn recover(&self) -> Result<Recovery, RuntimeError> {
        let summaries = self.containers(None).await?;
        let mut recovery = Recovery::default();
        for (uid, containers) in Self::incomplete(&summaries) {
            for (id, running) in containers {
                self.remove_one(&id).await?;
                recovery.killed += usize::from(running);
            }
            info!(pod = %uid, "removed a pod an interrupted operation left incomplete");
            recovery.removed.push(uid);
        }
        Ok(recovery)
    }

    async fn start_pod(&self, pod: &PodSpec) -> Result<PodInfo, RuntimeError> {
        validate_spec(pod)?;
        let existing = self.containers(Some(&pod.uid)).await?;
        if !existing.is_empty() {
            let Some(leftovers) = Self::incomplete(&existing).remove(&pod.uid) else {
                return Err(RuntimeError::PodExists {
                    pod_uid: pod.uid.clone(),
                });
            };
            info!(pod = %pod.uid, containers = leftovers.len(),
                "replacing what an interrupted operation left of the pod");
            for (id, _) in leftovers {
                self.remove_one(&id).await?;
            }
        }
        let network = self.ensure_network().await?;
        let mut created: Vec<String> = Vec::new();
        let mut first_id: Option<String> = None;
        for (index, spec) in pod.containers.iter().enumerate() {
            let id = match self
                .create_one(pod, spec, index, &network, first_id.as_deref())
                .await
            {
                Ok(id) => id,
                Err(err) => return Err(self.undo_start(pod, spec, &created, err).await),
            };
            created.push(id.clone());
            #[cfg(test)]
            if self.crash.fires(super::CrashPoint::StartAfterCreate(index)) {
                return Err(super::simulated_crash(super::CrashPoint::StartAfterCreate(
                    index,
                )));
            }
            if let Err(err) = self.start_one(pod, spec, &id).await {
                return Err(self.undo_start(pod, spec, &created, err).await);
            }
            #[cfg(test)]
            if self.crash.fires(super::CrashPoint::StartAfterStart(index)) {
                return Err(super::simulated_crash(super::CrashPoint::StartAfterStart(
                    index,
                )));
            }
            first_id.get_or_insert(id);
        }
        info!(pod = %pod.uid, name = %pod.name, namespace = %pod.namespace, "pod started");
        let summaries = self.containers(Some(&pod.uid)).await?;
        self.collect_pods(summaries)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| RuntimeError::PodNotFound {
                pod_uid: pod.uid.clone(),
            })
    }

    async fn restart_container(
        &self,
        pod_uid: &str,
        container: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let target = self.find_container(pod_uid, container).await?;
        let docker = self.client_for_grace(grace);
        let options = || {
            RestartContainerOptionsBuilder::new()
                .t(Self::grace_secs(grace))
                .build()
        };
        let mut ids = vec![target.id.clone()];
        if target.index == 0 {
            // The others live in the first container's network namespace, which a restart
            // replaces: restart them too so they join the new one.
            ids.extend(
                self.pod_containers(pod_uid)
                    .await?
                    .into_iter()
                    .filter(|f| f.index != 0)
                    .map(|f| f.id),
            );
        }
        for id in ids {
            docker
                .restart_container(&id, Some(options()))
                .await
                .map_err(|e| {
                    RuntimeError::engine(
                        format!("restarting container {container:?} of pod {pod_uid}"),
                        e,
                    )
                })?;
        }
        info!(pod = %pod_uid, container, "container restarted");
        Ok(())
    }

    async fn stop_pod(&self, pod_uid: &str, grace: Duration) -> Result<(), RuntimeError> {
        let found = self.pod_containers(pod_uid).await?;
        let docker = self.client_for_grace(grace);
        // The others first (in parallel), then the one owning the network namespace.
        let (first, others): (Vec<Found>, Vec<Found>) =
            found.into_iter().partition(|f| f.index == 0);
        for result in
            futures::future::join_all(others.iter().map(|f| self.stop_one(&docker, &f.id, grace)))
                .await
        {
            result?;
        }
        for f in &first {
            self.stop_one(&docker, &f.id, grace).await?;
        }
        debug!(pod = %pod_uid, "pod stopped");
        Ok(())
    }

    async fn remove_pod(&self, pod_uid: &str) -> Result<(), RuntimeError> {
        let found = self.pod_containers(pod_uid).await?;
        // The last first, the network namespace's owner last: a crash in between leaves an
        // incomplete pod, which the next agent's recovery removes.
        for f in found.iter().rev() {
            self.remove_one(&f.id).await?;
            #[cfg(test)]
            if self.crash.fires(super::CrashPoint::RemoveMidway) {
                return Err(super::simulated_crash(super::CrashPoint::RemoveMidway));
            }
        }
        if !found.is_empty() {
            info!(pod = %pod_uid, "pod removed");
        }
        Ok(())
    }

    async fn list_pods(&self) -> Result<Vec<PodInfo>, RuntimeError> {
        let summaries = self.containers(None).await?;
        self.collect_pods(summaries).await
    }

    async fn logs(
        &self,
        pod_uid: &str,
        container: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<LogStream, RuntimeError> {
        let target = self.find_container(pod_uid, container).await?;
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::new()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let context = format!("reading the logs of container {container:?} of pod {pod_uid}");
        let stream = self
            .docker
            .logs(&target.id, Some(options))
            .map(move |item| match item {
                Ok(
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message }
                    | LogOutput::StdIn { message },
                ) => Ok(message),
                Err(e) => Err(RuntimeError::engine(context.clone(), e)),
            });
        Ok(Box::pin(stream))
    }

    async fn exec(
        &self,
        pod_uid: &str,
        container: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        let target = self.find_container(pod_uid, container).await?;
        let context = || format!("exec in container {container:?} of pod {pod_uid}");
        let run = async {
            let exec = self
                .docker
                .create_exec(
                    &target.id,
                    CreateExecOptions {
                        cmd: Some(command.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| {
                    if status_code(&e) == Some(409) {
                        RuntimeError::ContainerNotRunning {
                            pod_uid: pod_uid.to_string(),
                            container: container.to_string(),
                        }
                    } else {
                        RuntimeError::engine(context(), e)
                    }
                })?;
            let mut output = Vec::new();
            let mut truncated = false;
            match self
                .docker
                .start_exec(&exec.id, None)
                .await
                .map_err(|e| RuntimeError::engine(context(), e))?
            {
                StartExecResults::Attached {
                    output: mut out, ..
                } => {
                    while let Some(chunk) = out.next().await {
                        let chunk = chunk.map_err(|e| RuntimeError::engine(context(), e))?;
                        let bytes: &[u8] = chunk.as_ref();
                        let room = EXEC_OUTPUT_LIMIT - output.len();
                        if bytes.len() > room {
                            truncated = true;
                        }
                        output.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    }
                }
                StartExecResults::Detached => {}
            }
            // The exit code is set once the engine has seen the process end.
            loop {
                let inspect = self
                    .docker
                    .inspect_exec(&exec.id)
                    .await
                    .map_err(|e| RuntimeError::engine(context(), e))?;
                if inspect.running != Some(true) {
                    if let Some(code) = inspect.exit_code {
                        return Ok(ExecResult {
                            exit_code: i32::try_from(code).unwrap_or(-1),
                            output,
                            truncated,
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or_else(|_| {
                Err(RuntimeError::ExecTimeout {
                    container: container.to_string(),
                    timeout,
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        assert_eq!(split_image("nginx"), ("nginx".into(), "latest".into()));
        assert_eq!(split_image("nginx:1.25"), ("nginx".into(), "1.25".into()));
        assert_eq!(
            split_image("localhost:5000/a/b"),
            ("localhost:5000/a/b".into(), "latest".into())
        );
        assert_eq!(
            split_image("registry.invalid/nope:1"),
            ("registry.invalid/nope".into(), "1".into())
        );
        assert_eq!(
            split_image("x@sha256:abc"),
            ("x@sha256:abc".into(), String::new())
        );
        assert_eq!(hostname("Web_0"), "web-0");
        assert_eq!(name_part("a/b c"), "a-b-c");
    }

    #[test]
    fn a_pod_is_whole_with_every_container_started() {
        use ContainerSummaryStateEnum as S;
        let part = |index, count, state| Part {
            index: Some(index),
            count,
            state: Some(state),
        };
        let two = Some(2);
        assert!(is_whole(&[
            part(1, two, S::EXITED),
            part(0, two, S::RUNNING)
        ]));
        // A start interrupted after the first container, or a removal after the last.
        assert!(!is_whole(&[part(0, two, S::RUNNING)]));
        // Created, never started.
        assert!(!is_whole(&[
            part(0, two, S::RUNNING),
            part(1, two, S::CREATED)
        ]));
        assert!(!is_whole(&[
            part(0, two, S::RUNNING),
            part(1, two, S::REMOVING)
        ]));
        assert!(!is_whole(&[part(0, two, S::DEAD), part(1, two, S::EXITED)]));
        // The same index twice is not the pod's other container.
        assert!(!is_whole(&[
            part(0, two, S::RUNNING),
            part(0, two, S::RUNNING)
        ]));
        assert!(!is_whole(&[]));
        // Containers made before the count label: whole when their indices have no gap.
        assert!(is_whole(&[
            part(0, None, S::RUNNING),
            part(1, None, S::RUNNING)
        ]));
        assert!(!is_whole(&[part(1, None, S::RUNNING)]));
        assert!(!is_whole(&[part(0, None, S::CREATED)]));
    }
}

/// Nanoseconds since the Unix epoch of an RFC 3339 time as Docker writes it
/// (`2026-11-27T22:18:12.113364123Z`, or with an offset `+01:00`).
fn rfc3339_nanos(text: &str) -> Option<i128> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339);
    time.ok().map(time::OffsetDateTime::unix_timestamp_nanos)
}

/// Unix milliseconds of an RFC 3339 time as Docker writes it; `None` for Docker's zero time
/// (year 1), any other time before the epoch, or anything else.
fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    u64::try_from(rfc3339_nanos(text)? / 1_000_000).ok()
}

#[cfg(test)]
mod time_tests {
    use super::{parse_rfc3339_ms, rfc3339_nanos};

    #[test]
    fn docker_times_in_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:34:56.123456789Z"),
            Some(1_714_566_896_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T14:34:56.5+02:00"),
            Some(1_714_566_896_500)
        );
        assert_eq!(parse_rfc3339_ms("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("garbage"), None);
    }

    #[test]
    fn docker_times_order_by_instant() {
        assert_eq!(rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_nanos("2026-11-27T22:18:12.1Z"),
            Some(1_795_817_892_100_000_000)
        );
        // A shorter fraction is not a later time.
        assert!(rfc3339_nanos("2026-11-27T22:18:12.1Z") < rfc3339_nanos("2026-11-27T22:18:12.11Z"));
        assert_eq!(
            rfc3339_nanos("2026-11-27T23:18:12.5+01:00"),
            rfc3339_nanos("2026-11-27T22:18:12.5Z")
        );
        assert_eq!(rfc3339_nanos("yesterday"), None);
        // RFC 3339 allows any number of digits; past nanoseconds they do not count.
        assert_eq!(
            rfc3339_nanos("2026-11-27T22:18:12.1234567891Z"),
            rfc3339_nanos("2026-11-27T22:18:12.123456789Z")
        );
    }
}
