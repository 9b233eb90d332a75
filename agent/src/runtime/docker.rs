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
//! - **Pod IPs** are chosen by the runtime, so that the containers' environment can hold them:
//!   the network is created with a subnet of its own (one of Docker's default pools,
//!   172.17-31.0.0/16 and 192.168.0.0/16 in /20s, that no network of the engine and no route
//!   of the host overlaps, looked for from a place derived from the network's name; told in
//!   [`LABEL_SUBNET`]), because the engine takes an explicit IP only on a network created with
//!   a subnet. With none free, or all taken by networks made at the same moment ten times in
//!   a row, the engine picks the subnet, as for an older agent's network (below). A start picks an address of it derived from the
//!   pod's uid, skipping the gateway, the addresses of the network's containers, running or
//!   not (a stopped one takes its address again when it restarts), and those starts in
//!   progress in this agent hold (an in-process reservation); the first container asks for
//!   it in its endpoint's IPAM config. Another agent on the engine may pick the same address
//!   at the same moment: the start that loses gets the engine's `Address already in use` and
//!   tries another (three times). Every container of the pod gets it under each name of its
//!   `pod_ip_env` (Kubernetes' `fieldRef: status.podIP`, so `POD_IP` when the manifest asks
//!   for it under that name), and a pod keeps it when its first container restarts. `POD_IP`
//!   is not set unasked, unlike under the process runtime: a server that binds `$POD_IP` (the
//!   demo does) would no longer answer on `localhost`, which a pod's containers share here.
//!   On a network an older agent made without such a subnet the engine picks addresses, and a
//!   pod with `pod_ip_env` fails to start, saying so (removing that network when no container
//!   uses it lets the next start make it anew).
//! - **Containers** are named `shoal_<namespace>_<pod>_<container>_<uid>` and carry the labels
//!   of the [module](super) plus the user's (and [`LABEL_VOLUMES`]); `command` and `args`
//!   replace the image's entrypoint and cmd; `POD_NAME` and `POD_NAMESPACE` are set (and the
//!   `pod_ip_env` names), and the first container's hostname is the pod's name. The values of `sensitive_env` go
//!   into the container's config like the others: the engine keeps them in its own state (as
//!   Kubernetes' Docker runtime did), nothing of them is written to the agent's data dir. The
//!   json-file log driver is capped like the process runtime's logs
//!   ([`RuntimeConfig::log_max_bytes`] x 2). CPU and memory limits are the engine's
//!   (`NanoCpus`, `Memory`).
//! - **Volumes** are written before the first container is created (see [`super::volume`]):
//!   without secrets in `<data_dir>/docker/pods/<uid>/volumes/<name>/`, sensitive ones only in
//!   RAM-backed storage (`<tmpfs>/shoal-<id>/pods/<uid>/volumes/<name>/`, so secrets are on the
//!   host's tmpfs and never on its disk; no RAM-backed storage, no start). Each mount is a bind
//!   mount of the volume's directory at `mount_path`, always read-only, whatever `read_only`
//!   says (as Kubernetes mounts config map, secret, downward API and projected volumes since
//!   1.10: a container that could write there could plant links that the agent's writer,
//!   running as the agent's user, would follow out of the volume); the links
//!   inside it are relative, so the container sees [`Runtime::update_volume`]'s atomic
//!   updates at once. A `sub_path` mount binds a copy of what it names made of hard links
//!   (`<pod dir>/subpaths/<container>/<n>`): the file as it was at the start, not updated live
//!   (as in Kubernetes), at a path that stays when an update removes the old data, so that a
//!   restarted container mounts it again. The directories go with the pod (`remove_pod`, a
//!   failed start, recovery of incomplete pods), and at [`Runtime::recover`] those of pods
//!   that no longer exist are removed. The engine must see the agent's paths as they are (an
//!   agent in a container needs its data dir and the RAM-backed directory mounted at the same
//!   paths).
//! - **Scratch volumes** ([`PodSpec::scratch`], Kubernetes `emptyDir`) are directories of the
//!   pod, made empty and 0777 (any container user writes) before the first container:
//!   `<data_dir>/docker/pods/<uid>/scratch/<name>/`, or for a `memory` one
//!   `<tmpfs>/shoal-<id>/pods/<uid>/scratch/<name>/` on the host's RAM-backed storage (tmpfs
//!   inside the container too; no RAM-backed storage, no start). Each mount binds the
//!   directory (its `sub_path`, made when missing), read-write unless `read_only`; so the
//!   pod's containers share it and it outlives container restarts (and agent restarts), as in
//!   Kubernetes, and goes with the pod's directories. A per-container tmpfs mount would have
//!   enforced a memory volume's `size_limit`, but would be neither shared nor kept across a
//!   restart: the limit is instead reported, as for disk, in [`PodInfo::scratch_bytes`]
//!   ([`LABEL_SCRATCH`] tells listings which volumes to count). Files a container writes
//!   there belong to its user: an agent that is not root cannot remove what a root container
//!   made in a sub directory.
//! - **Host paths** ([`PodSpec::host_paths`]) are checked (or made) before anything else as
//!   their [`super::HostPathCheck`] says, a failure being [`RuntimeError::HostPath`], and bind
//!   mounted (the `sub_path` inside them, made when missing, must stay inside once links are
//!   resolved), read-write unless `read_only`; [`LABEL_HOST_PATHS`] tells listings where they
//!   are.
//! - **Crash safety**: the labels are the record, and the engine writes them atomically with
//!   the container, so every container that exists is found again. A pod is *whole* when its
//!   containers carry every index up to [`LABEL_POD_CONTAINERS`] and none is `created` (never
//!   started), `dead` or `removing`; anything else is what an interrupted start (containers
//!   created one by one, each then started) or removal (the last first) left.
//!   [`Runtime::recover`] removes incomplete pods when the runtime is made; `start_pod` of a
//!   uid that has an incomplete pod removes it first, and when a container name is taken by a
//!   container of this agent's (one its labels did not show, say one the engine is still
//!   removing), removes that and creates again, once. A whole pod is `PodExists`.
//! - **Not done**: `POD_IP` is set only when the manifest asks for it (`pod_ip_env`); on a shoal
//!   network an older agent made (no [`LABEL_SUBNET`]) the pod's IP cannot be in the
//!   environment and may change when its first container restarts; no port is published on the host (pods are reached at their IP on the shoal
//!   network); a timed-out exec's process is left running (the engine cannot kill an exec).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary,
    ContainerSummaryStateEnum, EndpointIpamConfig, EndpointSettings, HostConfig,
    HostConfigLogConfig, Ipam, IpamConfig, Mount as DockerMount, MountType, NetworkCreateRequest,
    NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RestartContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;
use ipnet::Ipv4Net;
use tokio::sync::OnceCell;
use tracing::{debug, info, warn};

use super::volume::{
    VolumeStore, check_host_path, dir_sub_path, resolve_sub_path, snapshot, sub_path_mode,
};
use super::{
    ContainerInfo, ContainerSpec, ContainerState, EXEC_OUTPUT_LIMIT, ExecResult, LABEL_CLUSTER,
    LABEL_CONTAINER, LABEL_CONTAINER_INDEX, LABEL_NAMESPACE, LABEL_NODE, LABEL_POD,
    LABEL_POD_CONTAINERS, LABEL_POD_UID, LABEL_SPEC_HASH, LogStream, PodInfo, PodSpec, Recovery,
    Runtime, RuntimeConfig, RuntimeError, RuntimeKind, VolumeSpec, validate_spec,
};

/// Label of the first container: the pod's volumes, `name=disk` or `name=ram` separated by
/// commas (so that listings tell [`PodInfo::volume_dirs`] without reading anything).
pub const LABEL_VOLUMES: &str = "io.shoal.volumes";
/// Label of the pod's containers: the pod's scratch volumes ([`PodSpec::scratch`]) as JSON, so
/// that listings tell where they are and how much they hold.
pub const LABEL_SCRATCH: &str = "io.shoal.scratch";
/// Label of the pod's containers: the pod's host path volumes ([`PodSpec::host_paths`]) as
/// JSON.
pub const LABEL_HOST_PATHS: &str = "io.shoal.host-paths";
/// Label of the shoal network: the subnet shoal gave it, from which pods get explicit IPs.
/// A network without it (made by an older agent) lets the engine choose pods' IPs.
pub const LABEL_SUBNET: &str = "io.shoal.subnet";

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Looks for a free subnet when creating the shoal network (see `create_network`).
const NETWORK_TRIES: u32 = 10;
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

/// A subnet of Docker's default pools (172.17-31.0.0/16, then 192.168.0.0/16 in /20s) that
/// overlaps none of `taken`: the first free one from a place derived from `name`, so that
/// engines' networks of other names made at the same moment rarely want the same one (and
/// agents making the same network want the same one).
fn free_subnet(name: &str, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    let pools: Vec<Ipv4Net> = (17..=31)
        .map(|b| Ipv4Net::new_assert(Ipv4Addr::new(172, b, 0, 0), 16))
        .chain((0..16).map(|i| Ipv4Net::new_assert(Ipv4Addr::new(192, 168, i * 16, 0), 20)))
        .collect();
    let start = (super::process::fnv1a(name.as_bytes()) % pools.len() as u64) as usize;
    (0..pools.len())
        .map(|i| pools[(start + i) % pools.len()])
        .find(|candidate| !taken.iter().any(|t| overlaps(candidate, t)))
}

/// The destinations of the host's IPv4 routes but the default one (`/proc/net/route`).
fn host_routes() -> Vec<Ipv4Net> {
    let Ok(text) = std::fs::read_to_string("/proc/net/route") else {
        return Vec::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // The kernel prints network-order addresses as host-order integers.
            let hex = |i: usize| {
                u32::from_str_radix(fields.get(i)?, 16)
                    .ok()
                    .map(|raw| Ipv4Addr::from(raw.to_ne_bytes()))
            };
            let (dest, mask) = (hex(1)?, hex(7)?);
            let prefix = u8::try_from(mask.to_bits().leading_ones()).ok()?;
            (prefix > 0).then(|| Ipv4Net::new(dest, prefix).ok().map(|n| n.trunc()))?
        })
        .collect()
}

/// The pod's IP in `subnet`: derived from the uid (so that agents sharing the network rarely
/// pick the same one at the same moment), the first that is not `taken` from there on; never
/// the subnet's first or last address.
fn pick_ip(uid: &str, subnet: Ipv4Net, taken: impl Fn(&Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    let base = subnet.network().to_bits();
    let size = 1u64 << (32 - u32::from(subnet.prefix_len()));
    if size < 4 {
        return None;
    }
    // Hosts are base+1 ..= base+size-2.
    let hosts = size - 2;
    let start = super::process::fnv1a(uid.as_bytes()) % hosts;
    (0..hosts)
        .map(|probe| Ipv4Addr::from_bits(base + 1 + ((start + probe) % hosts) as u32))
        .find(|ip| !taken(ip))
}

/// Whether a start failed because the IP asked for is taken (another agent gave it meanwhile).
fn is_address_taken(err: &RuntimeError) -> bool {
    matches!(err, RuntimeError::Engine { source, .. }
        if engine_message(source).contains("Address already in use"))
}

/// `name=disk,name=ram`: the pod's volumes as [`LABEL_VOLUMES`] tells them.
fn volumes_label(pod: &PodSpec) -> String {
    pod.volumes
        .iter()
        .map(|v| format!("{}={}", v.name, if v.sensitive { "ram" } else { "disk" }))
        .collect::<Vec<_>>()
        .join(",")
}

/// The volumes a [`LABEL_VOLUMES`] tells: (name, sensitive).
fn parse_volumes_label(label: &str) -> Vec<(&str, bool)> {
    label
        .split(',')
        .filter_map(|part| {
            let (name, kind) = part.split_once('=')?;
            Some((name, kind == "ram"))
        })
        .collect()
}

/// Writes the pod's volumes afresh (what an earlier incarnation of the uid left is removed
/// first) and makes each container's bind mounts: a volume's directory, or for a `sub_path`
/// a copy of what it names made of hard links (`<pod dir>/subpaths/<container>/<n>`: the files
/// as they are now, not updated live, as in Kubernetes, at a path that outlives the update
/// removing their data directory, so that a restarted container mounts it again).
fn prepare_volumes(
    store: &VolumeStore,
    pod: &PodSpec,
) -> Result<Vec<Vec<DockerMount>>, RuntimeError> {
    for h in &pod.host_paths {
        check_host_path(h)?;
    }
    store.remove_disk(&pod.uid)?;
    store.remove_ram(&pod.uid)?;
    store.write_pod(pod)?;
    store.make_scratch(pod)?;
    pod.containers
        .iter()
        .map(|c| {
            c.mounts
                .iter()
                .enumerate()
                .map(|(index, m)| {
                    let (root, scratch) =
                        if let Some(h) = pod.host_paths.iter().find(|h| h.name == m.volume) {
                            (Some(PathBuf::from(&h.path)), false)
                        } else if let Some(s) = pod.scratch.iter().find(|s| s.name == m.volume) {
                            (store.scratch_dir(&pod.uid, &s.name, s.memory), true)
                        } else {
                            (None, false)
                        };
                    if let Some(root) = root {
                        // Read-write unless asked otherwise, as in Kubernetes.
                        let source = match &m.sub_path {
                            None => root,
                            Some(sub) => {
                                dir_sub_path(&root, &m.volume, sub, sub_path_mode(scratch))?
                            }
                        };
                        return Ok(DockerMount {
                            target: Some(m.mount_path.clone()),
                            source: Some(source.display().to_string()),
                            typ: Some(MountType::BIND),
                            read_only: Some(m.read_only),
                            ..Default::default()
                        });
                    }
                    let sensitive = pod
                        .volumes
                        .iter()
                        .any(|v| v.name == m.volume && v.sensitive);
                    let missing = || {
                        RuntimeError::InvalidSpec(format!(
                            "container {:?} mounts volume {:?}, which was not written",
                            c.name, m.volume
                        ))
                    };
                    let dir = store
                        .volume_dir(&pod.uid, &m.volume, sensitive)
                        .ok_or_else(missing)?;
                    let source = match &m.sub_path {
                        None => dir,
                        Some(sub) => {
                            let real = resolve_sub_path(&dir, sub)?;
                            let dest = store.sub_path_dir(&pod.uid, sensitive, &c.name, index)?;
                            snapshot(&real, &dest)?;
                            dest
                        }
                    };
                    Ok(DockerMount {
                        target: Some(m.mount_path.clone()),
                        source: Some(source.display().to_string()),
                        typ: Some(MountType::BIND),
                        // Always: see the module docs.
                        read_only: Some(true),
                        ..Default::default()
                    })
                })
                .collect()
        })
        .collect()
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

/// The shoal network as this runtime uses it.
#[derive(Clone, Debug)]
struct Network {
    /// Its id (or name, when it was not listed yet).
    id: String,
    /// The subnet shoal gave it ([`LABEL_SUBNET`]), and its gateway: pods get explicit IPs.
    /// `None` for a network an older agent made (the engine picks IPs).
    subnet: Option<(Ipv4Net, Option<Ipv4Addr>)>,
}

/// IPs being given to pods by starts in progress: taken out of the free ones until the start
/// is over (the engine shows them from then on). Released when dropped.
struct Reservation {
    set: Arc<Mutex<HashSet<Ipv4Addr>>>,
    ips: Vec<Ipv4Addr>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|e| e.into_inner());
        for ip in &self.ips {
            set.remove(ip);
        }
    }
}

/// How container `index` of a pod is made.
#[derive(Clone, Copy)]
struct Making<'a> {
    index: usize,
    /// The shoal network's id.
    network: &'a str,
    /// The first container's id, for the others (they join its network namespace).
    first_id: Option<&'a str>,
    /// The pod's IP, when the network gives explicit ones.
    ip: Option<Ipv4Addr>,
    /// The container's bind mounts.
    mounts: &'a [DockerMount],
}

/// The Docker runtime. Cheap to clone.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    config: Arc<RuntimeConfig>,
    network: String,
    network_id: Arc<OnceCell<Network>>,
    /// Where the pods' volumes live (`<data_dir>/docker/pods/`, and RAM-backed storage).
    volumes: Arc<VolumeStore>,
    /// Serialises the updates of volumes.
    volume_lock: Arc<tokio::sync::Mutex<()>>,
    /// IPs given to pods whose start is in progress ([`Reservation`]).
    reserved_ips: Arc<Mutex<HashSet<Ipv4Addr>>>,
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
        let volumes = VolumeStore::new(
            &config,
            RuntimeKind::Docker,
            config.data_dir.join("docker").join("pods"),
        );
        Ok(DockerRuntime {
            docker,
            config: Arc::new(config),
            network,
            network_id: Arc::new(OnceCell::new()),
            volumes: Arc::new(volumes),
            volume_lock: Arc::new(tokio::sync::Mutex::new(())),
            reserved_ips: Arc::new(Mutex::new(HashSet::new())),
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

    /// The shoal network, creating it if there is none. Agents sharing an engine may create
    /// it at the same moment, and Docker (before API 1.44) accepts two networks of one name:
    /// then every agent takes the oldest (creation time, then id), and removes the others when
    /// nothing is attached to them. A network created after an agent looked is younger than
    /// the one it chose, so all agents choose the same one.
    async fn ensure_network(&self) -> Result<Network, RuntimeError> {
        self.network_id
            .get_or_try_init(|| async {
                if self.shoal_networks().await?.is_empty() {
                    self.create_network().await?;
                }
                let mut networks = self.shoal_networks().await?;
                networks.sort();
                let Some((_, winner)) = networks.first().cloned() else {
                    // Not listed (yet): the name is what there is to go by.
                    return Ok(Network {
                        id: self.network.clone(),
                        subnet: None,
                    });
                };
                for (_, loser) in &networks[1..] {
                    match self.docker.remove_network(loser).await {
                        Ok(()) => info!(network = %self.network, id = %loser,
                            "removed a duplicate of the shoal network"),
                        Err(e) => debug!(network = %self.network, id = %loser, error = %e,
                            "a duplicate of the shoal network stays (in use?)"),
                    }
                }
                self.network_info(&winner).await
            })
            .await
            .cloned()
    }

    /// Creates the shoal network with a subnet of its own ([`free_subnet`], told in
    /// [`LABEL_SUBNET`]): the engine gives explicit IPs only on networks created with a subnet.
    /// Another network may take the subnet between the look and the creation: then it looks
    /// again; after [`NETWORK_TRIES`] looks (or with no subnet free), the engine picks one and
    /// pods get no explicit IP.
    async fn create_network(&self) -> Result<(), RuntimeError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let taken = self.taken_subnets().await?;
            let subnet = free_subnet(&self.network, &taken).filter(|_| attempt < NETWORK_TRIES);
            let mut labels =
                HashMap::from([(LABEL_CLUSTER.to_string(), self.config.cluster_id.clone())]);
            let ipam = subnet.map(|subnet| {
                labels.insert(LABEL_SUBNET.to_string(), subnet.to_string());
                Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet.to_string()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }
            });
            if subnet.is_none() {
                warn!(network = %self.network,
                    "no free subnet for the shoal network: the engine picks one, and pods cannot have their IP in their environment");
            }
            let request = NetworkCreateRequest {
                name: self.network.clone(),
                driver: Some("bridge".to_string()),
                labels: Some(labels),
                ipam,
                ..Default::default()
            };
            match self.docker.create_network(request).await {
                Ok(_) => {
                    info!(network = %self.network, subnet = ?subnet, "created the shoal network");
                    return Ok(());
                }
                // Another agent created it meanwhile (engines that refuse duplicates).
                Err(e) if status_code(&e) == Some(409) => return Ok(()),
                // The subnet was taken meanwhile, perhaps by another agent's shoal network.
                Err(e) if subnet.is_some() && engine_message(&e).contains("overlaps") => {
                    if !self.shoal_networks().await?.is_empty() {
                        return Ok(());
                    }
                    debug!(network = %self.network, subnet = ?subnet, "the subnet was taken meanwhile");
                    // Others are creating networks too: let them finish.
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                Err(e) => {
                    return Err(RuntimeError::engine(
                        format!("creating network {}", self.network),
                        e,
                    ));
                }
            }
        }
    }

    /// The IPv4 subnets of the engine's networks and of the host's routes.
    async fn taken_subnets(&self) -> Result<Vec<Ipv4Net>, RuntimeError> {
        let networks = self
            .docker
            .list_networks(None::<bollard::query_parameters::ListNetworksOptions>)
            .await
            .map_err(|e| RuntimeError::engine("listing networks", e))?;
        let mut taken: Vec<Ipv4Net> = networks
            .iter()
            .filter_map(|n| n.ipam.as_ref()?.config.as_ref())
            .flatten()
            .filter_map(|c| c.subnet.as_deref()?.parse().ok())
            .collect();
        taken.extend(host_routes());
        Ok(taken)
    }

    /// What the network is ([`Network`]).
    async fn network_info(&self, id: &str) -> Result<Network, RuntimeError> {
        let inspect =
            self.docker.inspect_network(id, None).await.map_err(|e| {
                RuntimeError::engine(format!("inspecting network {}", self.network), e)
            })?;
        let subnet: Option<Ipv4Net> = inspect
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SUBNET))
            .and_then(|s| s.parse().ok());
        let gateway = |subnet: Ipv4Net| {
            inspect
                .ipam
                .as_ref()?
                .config
                .as_ref()?
                .iter()
                .filter(|c| c.subnet.as_deref().and_then(|s| s.parse().ok()) == Some(subnet))
                .find_map(|c| c.gateway.as_deref()?.parse().ok())
        };
        Ok(Network {
            id: id.to_string(),
            subnet: subnet.map(|s| (s, gateway(s))),
        })
    }

    /// The IPs of the network's containers, running or not (a stopped container keeps the IP
    /// it was given, and takes it again when it restarts).
    async fn used_ips(&self, network: &str) -> Result<HashSet<Ipv4Addr>, RuntimeError> {
        let filters = HashMap::from([("network".to_string(), vec![network.to_string()])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| RuntimeError::engine("listing the network's containers", e))?;
        let mut used: HashSet<Ipv4Addr> = containers
            .iter()
            .filter_map(|c| c.network_settings.as_ref()?.networks.as_ref())
            .flat_map(|n| n.values())
            .flat_map(|e| {
                [
                    e.ipam_config.as_ref().and_then(|c| c.ipv4_address.clone()),
                    e.ip_address.clone(),
                ]
            })
            .flatten()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let inspect = self
            .docker
            .inspect_network(network, None)
            .await
            .map_err(|e| RuntimeError::engine(format!("inspecting network {}", self.network), e))?;
        used.extend(inspect.containers.iter().flatten().filter_map(|(_, e)| {
            e.ipv4_address
                .as_deref()?
                .split('/')
                .next()?
                .parse::<Ipv4Addr>()
                .ok()
        }));
        Ok(used)
    }

    /// Gives the pod an IP of the network's subnet that no container has or is being given
    /// (nor one of `avoid`), kept in the reservation until the start is over. `Ok(None)` on a
    /// network without a subnet of shoal's.
    async fn reserve_ip(
        &self,
        network: &Network,
        uid: &str,
        reservation: &mut Option<Reservation>,
        avoid: &HashSet<Ipv4Addr>,
    ) -> Result<Option<Ipv4Addr>, RuntimeError> {
        let Some((subnet, gateway)) = network.subnet else {
            return Ok(None);
        };
        let used = self.used_ips(&network.id).await?;
        let mut reserved = self.reserved_ips.lock().unwrap_or_else(|e| e.into_inner());
        let ip = pick_ip(uid, subnet, |ip| {
            used.contains(ip) || reserved.contains(ip) || avoid.contains(ip) || Some(*ip) == gateway
        })
        .ok_or(RuntimeError::NoFreeIp(subnet))?;
        reserved.insert(ip);
        reservation
            .get_or_insert_with(|| Reservation {
                set: self.reserved_ips.clone(),
                ips: Vec::new(),
            })
            .ips
            .push(ip);
        Ok(Some(ip))
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
        made: &Making<'_>,
    ) -> ContainerCreateBody {
        let Making {
            index,
            network,
            first_id,
            ip,
            mounts,
        } = *made;
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
        if !pod.volumes.is_empty() {
            labels.insert(LABEL_VOLUMES.to_string(), volumes_label(pod));
        }
        if !pod.scratch.is_empty() {
            labels.insert(
                LABEL_SCRATCH.to_string(),
                serde_json::to_string(&pod.scratch).unwrap_or_default(),
            );
        }
        if !pod.host_paths.is_empty() {
            labels.insert(
                LABEL_HOST_PATHS.to_string(),
                serde_json::to_string(&pod.host_paths).unwrap_or_default(),
            );
        }

        // Shoal's variables first; the spec's win (the engine keeps the last of duplicates,
        // but we dedupe so `inspect` shows one value); then the pod IP's. Sensitive values go
        // into the container's config like the others: the engine keeps them in its state.
        // `POD_IP` is not set unasked (as in Kubernetes): a server that binds `$POD_IP` would
        // no longer answer on `localhost`, which the pod's containers share here.
        let mut env: Vec<(String, String)> = vec![
            ("POD_NAME".to_string(), pod.name.clone()),
            ("POD_NAMESPACE".to_string(), pod.namespace.clone()),
        ];
        for (k, v) in &spec.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        if let Some(ip) = ip {
            for name in &spec.pod_ip_env {
                env.retain(|(ek, _)| ek != name);
                env.push((name.clone(), ip.to_string()));
            }
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
            mounts: (!mounts.is_empty()).then(|| mounts.to_vec()),
            ..Default::default()
        };
        // The pod's IP, asked for on the network the first container owns.
        let networking_config = ip
            .filter(|_| first_id.is_none())
            .map(|ip| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.to_string(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(ip.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            });
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
            networking_config,
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
        made: &Making<'_>,
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
            let body = self.container_body(pod, spec, made);
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
        self.remove_pod_dirs(&pod.uid).await;
        err
    }

    /// Removes the pod's volumes (on disk and in RAM-backed storage); failures are logged.
    async fn remove_pod_dirs(&self, uid: &str) {
        let (store, uid) = (self.volumes.clone(), uid.to_string());
        let removed = tokio::task::spawn_blocking(move || {
            let disk = store.remove_disk(&uid);
            let ram = store.remove_ram(&uid);
            disk.and(ram).map_err(|e| (uid, e))
        })
        .await;
        if let Ok(Err((uid, e))) = removed {
            warn!(pod = %uid, error = %e, "removing the pod's volumes failed");
        }
    }

    /// The directory of the pod's volume `name` (where a listing says it is), for tests.
    #[cfg(test)]
    pub(crate) fn volume_dir(&self, uid: &str, name: &str, sensitive: bool) -> Option<PathBuf> {
        self.volumes.volume_dir(uid, name, sensitive)
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
                let scratch: Vec<super::ScratchVolume> = labels
                    .get(LABEL_SCRATCH)
                    .and_then(|l| serde_json::from_str(l).ok())
                    .unwrap_or_default();
                let host_paths: Vec<super::HostPathVolume> = labels
                    .get(LABEL_HOST_PATHS)
                    .and_then(|l| serde_json::from_str(l).ok())
                    .unwrap_or_default();
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
                        volume_dirs: {
                            let mut dirs = self.volumes.volume_dirs(
                                uid,
                                labels
                                    .get(LABEL_VOLUMES)
                                    .map(|l| parse_volumes_label(l))
                                    .unwrap_or_default(),
                            );
                            dirs.extend(self.volumes.other_dirs(uid, &scratch, &host_paths));
                            dirs
                        },
                        scratch_bytes: self.volumes.scratch_bytes(uid, &scratch),
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
            self.remove_pod_dirs(&uid).await;
            info!(pod = %uid, "removed a pod an interrupted operation left incomplete");
            recovery.removed.push(uid);
        }
        // Volumes of pods that are gone: removed while the agent was down, or an interrupted
        // start that had not created a container yet.
        let whole: HashSet<&str> = summaries
            .iter()
            .filter_map(|s| s.labels.as_ref()?.get(LABEL_POD_UID))
            .map(String::as_str)
            .filter(|uid| !recovery.removed.iter().any(|r| r == uid))
            .collect();
        let mut gone: Vec<String> = self.volumes.disk_uids();
        gone.extend(self.volumes.ram_uids());
        gone.sort();
        gone.dedup();
        for uid in gone.iter().filter(|uid| !whole.contains(uid.as_str())) {
            info!(pod = %uid, "removing the volumes of a pod that is gone");
            self.remove_pod_dirs(uid).await;
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
        if network.subnet.is_none() {
            if let Some(c) = pod.containers.iter().find(|c| !c.pod_ip_env.is_empty()) {
                return Err(RuntimeError::InvalidSpec(format!(
                    "container {:?} of pod {}/{} takes the pod's IP in its environment, which the shoal network {} cannot give before the pod starts: an older agent made it without a subnet of shoal's; remove the network once no container uses it, and it is made again",
                    c.name, pod.namespace, pod.name, self.network
                )));
            }
        }
        // Volumes before any container: what a crash leaves of them the next recovery
        // removes.
        let prepared = {
            let (store, spec) = (self.volumes.clone(), pod.clone());
            tokio::task::spawn_blocking(move || prepare_volumes(&store, &spec))
                .await
                .map_err(|e| RuntimeError::io("writing volumes", std::io::Error::other(e)))
                .and_then(|r| r)
        };
        let mounts = match prepared {
            Ok(mounts) => mounts,
            Err(err) => {
                self.remove_pod_dirs(&pod.uid).await;
                return Err(err);
            }
        };
        let mut reservation = None;
        let mut avoid = HashSet::new();
        let mut ip = match self
            .reserve_ip(&network, &pod.uid, &mut reservation, &avoid)
            .await
        {
            Ok(ip) => ip,
            Err(err) => {
                self.remove_pod_dirs(&pod.uid).await;
                return Err(err);
            }
        };
        let mut created: Vec<String> = Vec::new();
        let mut first_id: Option<String> = None;
        for (index, spec) in pod.containers.iter().enumerate() {
            let mut tries = 0;
            let id = loop {
                let made = Making {
                    index,
                    network: &network.id,
                    first_id: first_id.as_deref(),
                    ip,
                    mounts: &mounts[index],
                };
                let id = match self.create_one(pod, spec, &made).await {
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
                match self.start_one(pod, spec, &id).await {
                    Ok(()) => break id,
                    // Another agent on this engine gave the IP meanwhile: another one.
                    Err(err)
                        if index == 0 && ip.is_some() && is_address_taken(&err) && tries < 3 =>
                    {
                        warn!(pod = %pod.uid, ip = ?ip, "the pod's IP was taken meanwhile; taking another");
                        tries += 1;
                        created.pop();
                        let next = match self.remove_one(&id).await {
                            Ok(()) => {
                                avoid.extend(ip);
                                self.reserve_ip(&network, &pod.uid, &mut reservation, &avoid)
                                    .await
                            }
                            Err(e) => Err(e),
                        };
                        match next {
                            Ok(next) => ip = next,
                            Err(e) => return Err(self.undo_start(pod, spec, &created, e).await),
                        }
                    }
                    Err(err) => return Err(self.undo_start(pod, spec, &created, err).await),
                }
            };
            #[cfg(test)]
            if self.crash.fires(super::CrashPoint::StartAfterStart(index)) {
                return Err(super::simulated_crash(super::CrashPoint::StartAfterStart(
                    index,
                )));
            }
            first_id.get_or_insert(id);
        }
        info!(pod = %pod.uid, name = %pod.name, namespace = %pod.namespace, ip = ?ip, "pod started");
        drop(reservation);
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
        let (store, uid) = (self.volumes.clone(), pod_uid.to_string());
        tokio::task::spawn_blocking(move || store.remove_disk(&uid).and(store.remove_ram(&uid)))
            .await
            .map_err(|e| RuntimeError::io("removing volumes", std::io::Error::other(e)))??;
        if !found.is_empty() {
            info!(pod = %pod_uid, "pod removed");
        }
        Ok(())
    }

    async fn list_pods(&self) -> Result<Vec<PodInfo>, RuntimeError> {
        let summaries = self.containers(None).await?;
        self.collect_pods(summaries).await
    }

    async fn update_volume(&self, pod_uid: &str, volume: &VolumeSpec) -> Result<(), RuntimeError> {
        let _updating = self.volume_lock.lock().await;
        if self.pod_containers(pod_uid).await?.is_empty() {
            return Err(RuntimeError::PodNotFound {
                pod_uid: pod_uid.to_string(),
            });
        }
        let (store, uid, spec) = (self.volumes.clone(), pod_uid.to_string(), volume.clone());
        let changed = tokio::task::spawn_blocking(move || store.update(&uid, &spec))
            .await
            .map_err(|e| RuntimeError::io("updating a volume", std::io::Error::other(e)))??;
        if changed {
            info!(pod = %pod_uid, volume = %volume.name, "volume updated");
        }
        Ok(())
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
    fn subnets_and_ips_are_chosen_clear_of_what_is_taken() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let first = free_subnet("shoal-a", &[]).unwrap();
        assert_eq!(free_subnet("shoal-a", &[]), Some(first), "deterministic");
        // Taken ones are skipped: a network inside one, a route covering it and the next.
        for taken in [
            vec![first],
            vec![net(&format!("{}/24", first.network()))],
            vec![
                Ipv4Net::new(first.network(), first.prefix_len() - 1)
                    .unwrap()
                    .trunc(),
            ],
        ] {
            let next = free_subnet("shoal-a", &taken).unwrap();
            assert!(
                !taken
                    .iter()
                    .any(|t| t.contains(&next.network()) || next.contains(&t.network())),
                "{next} overlaps {taken:?}"
            );
        }
        // Only the pools are taken from.
        let all: Vec<Ipv4Net> = vec![net("172.16.0.0/12"), net("192.168.0.0/17")];
        let left = free_subnet("shoal-a", &all).unwrap();
        assert!(net("192.168.128.0/17").contains(&left.network()), "{left}");
        assert_eq!(left.prefix_len(), 20);
        assert_eq!(
            free_subnet("shoal-a", &[net("0.0.0.0/1"), net("128.0.0.0/1")]),
            None
        );
        // Other names start elsewhere.
        let starts: std::collections::BTreeSet<Ipv4Net> = (0..8)
            .filter_map(|i| free_subnet(&format!("shoal-{i}"), &[]))
            .collect();
        assert!(starts.len() > 1, "{starts:?}");

        let subnet = net("172.30.0.0/24");
        let a = pick_ip("pod-a", subnet, |_| false).unwrap();
        assert_eq!(
            pick_ip("pod-a", subnet, |_| false),
            Some(a),
            "deterministic"
        );
        assert!(subnet.contains(&a));
        let b = pick_ip("pod-a", subnet, |ip| *ip == a).unwrap();
        assert_ne!(a, b);
        // Never the network's first or last address; none left when all are taken.
        let small = net("10.0.0.0/30");
        let only: Vec<Ipv4Addr> = (0..8)
            .filter_map(|i| pick_ip(&format!("p{i}"), small, |_| false))
            .collect();
        assert!(
            only.iter()
                .all(|ip| *ip == Ipv4Addr::new(10, 0, 0, 1) || *ip == Ipv4Addr::new(10, 0, 0, 2)),
            "{only:?}"
        );
        assert_eq!(pick_ip("p", small, |_| true), None);
        assert_eq!(pick_ip("p", net("10.0.0.0/31"), |_| false), None);
        assert_eq!(
            parse_volumes_label("config=disk,token=ram"),
            vec![("config", false), ("token", true)]
        );
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
