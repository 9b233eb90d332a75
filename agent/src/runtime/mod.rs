//! Runtime drivers: what actually runs a pod's containers on this node.
//!
//! One trait, [`Runtime`], two implementations: [`DockerRuntime`] (containers through the Docker
//! engine's API, with `bollard`) and [`ProcessRuntime`] (each container is a child process, for
//! machines without Docker and for fast tests). [`AnyRuntime`] is the one the agent holds,
//! chosen by `shoal agent --runtime docker|process` (default: docker when
//! [`docker_available`]).
//!
//! # Role
//!
//! The reconciler is level-triggered: it compares the pods this node should run with what
//! [`Runtime::list_pods`] reports and calls [`Runtime::start_pod`], [`Runtime::stop_pod`],
//! [`Runtime::remove_pod`] and [`Runtime::restart_container`]. It owns restart policy, back-off,
//! probes' scheduling and pod status. A runtime is a thin, honest driver: it does what it is
//! told, reports what is there (including exited containers, with exit codes), and keeps no
//! policy of its own. Its input is its own [`PodSpec`], independent of the manifest types.
//!
//! # Invariants
//!
//! - **A pod is found again after an agent restart.** Docker containers carry the labels
//!   [`LABEL_CLUSTER`], [`LABEL_NODE`], [`LABEL_NAMESPACE`], [`LABEL_POD`], [`LABEL_POD_UID`],
//!   [`LABEL_CONTAINER`], [`LABEL_SPEC_HASH`] (and [`LABEL_CONTAINER_INDEX`],
//!   [`LABEL_POD_CONTAINERS`]); process pods live
//!   in `<data_dir>/pods/<uid>/pod.json`. `list_pods` reports only this agent's pods (same cluster
//!   id and node id), never another agent's on the same machine.
//! - **`start_pod` is all or nothing**: when a container cannot be created or started, the ones
//!   already started are removed and the error names the container.
//! - **`stop_pod` and `remove_pod` are idempotent**: a pod that is not there is already stopped
//!   and removed (`Ok`). `restart_container`, `logs` and `exec` on a missing pod or container
//!   are [`RuntimeError::PodNotFound`] / [`RuntimeError::ContainerNotFound`].
//! - **Every operation is safe to crash at any point** (kill -9 of the agent, or the machine
//!   going down, in the middle of a start, restart, stop or removal): what it leaves is either a
//!   *whole* pod (every container of the spec created, none left never started), which the next
//!   agent lists and the supervisor adopts, or an *incomplete* one, which
//!   [`Runtime::recover`] removes with everything it runs when the runtime is made again, and
//!   which `start_pod` of the same uid replaces if it meets one. So a pod interrupted while
//!   being created can always be created again, and nothing keeps running that no listing
//!   shows. How each runtime keeps this is in its module (the process runtime: a container's
//!   program runs only once its pid is durably recorded; Docker: the labels are the record,
//!   written atomically with each container).
//! - **Stop is graceful, then forced**: SIGTERM, then SIGKILL after the grace period (Docker's
//!   stop with a timeout; the whole process group for processes). `remove_pod` of a running pod
//!   kills it at once: call `stop_pod` first for a graceful end.
//! - **Bounded memory**: logs are streamed in chunks through bounded channels, exec output is
//!   capped at [`EXEC_OUTPUT_LIMIT`], container logs on disk are capped and rotated
//!   ([`RuntimeConfig::log_max_bytes`] x 2, for both runtimes), volumes are capped
//!   ([`volume::MAX_VOLUME_BYTES`], [`volume::MAX_POD_VOLUME_BYTES`]).
//! - **Volumes are written atomically** ([`volume`]): a reader sees a whole version of a
//!   volume, never a mix of two, and an unchanged volume is not written at all.
//! - **Secret data never reaches the host's disk**: sensitive volumes and (process runtime)
//!   the values of `sensitive_env` live in RAM-backed storage only, or the pod does not start
//!   ([`RuntimeError::Secret`]); `Debug` of a spec shows neither file data nor sensitive
//!   values.
//!
//! # What each runtime enforces, and what it does not
//!
//! | | Docker | Process |
//! |---|---|---|
//! | image | pulled when missing ([`Runtime::ensure_image`]), run | ignored: `command` is required ([`RuntimeError::MissingCommand`]) |
//! | `command` / `args` | replace the image's entrypoint / cmd (Kubernetes' meaning) | `command ++ args` is executed |
//! | network | a shoal bridge network `shoal-<cluster>`; the first container owns the pod's network namespace and IP, the others join it (`container:<first>`), so they reach each other on `localhost` | no isolation; the pod gets its own loopback address from 127.64.0.0/10 as `POD_IP`, and a process that binds `$POD_IP` never collides with another pod's ports |
//! | pod IP | the first container's address on the shoal network, chosen by the runtime from the network's subnet and kept across restarts (engine-chosen, and liable to change, on a network an older agent made) | fixed for the pod's life, persisted |
//! | env | spec env, plus each `pod_ip_env` name (`POD_IP` only when asked for so: a server binding `$POD_IP` would not answer on the `localhost` the pod's containers share), `POD_NAME`, `POD_NAMESPACE`; hostname = pod name. `sensitive_env` values are in the container's config (the engine's state), not in the agent's data dir | spec env, plus `POD_IP` (and each `pod_ip_env` name), `POD_NAME`, `POD_NAMESPACE`, `HOSTNAME`, `PATH` (the agent's), `HOME` (the container's dir), `SHOAL_VOLUME_<NAME>` per mount; nothing else of the agent's environment leaks in. `sensitive_env` values are kept in RAM-backed storage, never in `pod.json` |
//! | volumes of files ([`PodSpec::volumes`]) | bind mounts of the volume's directory at `mount_path`, always read-only (as Kubernetes' config map and secret volumes); updates seen live (not through a `sub_path`, bound to a copy of the file as it was at the start) | not mounted (no privileges): `SHOAL_VOLUME_<NAME>` = the volume's directory (joined with the `sub_path`); `mount_path` and `read_only` are ignored |
//! | volume files | `<data_dir>/docker/pods/<uid>/volumes/<name>/`; sensitive ones in RAM-backed storage only (`$XDG_RUNTIME_DIR`, `/dev/shm` or `/run` when tmpfs/ramfs: `shoal-<id>/pods/<uid>/volumes/<name>/`), else the pod does not start | `<data_dir>/pods/<uid>/volumes/<name>/`; sensitive ones as under Docker |
//! | scratch volumes ([`PodSpec::scratch`], `emptyDir`) | a directory of the pod, `<data_dir>/docker/pods/<uid>/scratch/<name>/` (`memory`: in RAM-backed storage, `shoal-<id>/pods/<uid>/scratch/<name>/`, tmpfs inside the container), empty and 0777 at the start, bind-mounted read-write (unless `read_only`), shared by the pod's containers, kept across container and agent restarts, removed with the pod | the same directory under `<data_dir>/pods/<uid>/scratch/<name>/` (`memory`: as under Docker), told in `SHOAL_VOLUME_<NAME>` |
//! | scratch `size_limit` | not enforced: the usage is reported in [`PodInfo::scratch_bytes`] for the agent to evict | the same |
//! | host paths ([`PodSpec::host_paths`], `hostPath`) | checked or made at `start_pod` ([`HostPathCheck`]; else [`RuntimeError::HostPath`]), bind-mounted read-write (unless `read_only`), `sub_path` inside made when missing | checked the same; `SHOAL_VOLUME_<NAME>` = the path (joined with the `sub_path`) |
//! | cpu / memory limits | enforced by the engine (`NanoCpus`, `Memory`); an OOM kill is reported as reason `OOMKilled` | **not enforced** (no cgroups without privileges): recorded and ignored |
//! | filesystem | the image's | none: the working dir defaults to `<data_dir>/pods/<uid>/<container>/`; a relative `working_dir` is taken under it, an absolute one as is |
//! | exit codes | the engine's | the real code while the agent is the parent; a process that ended while the agent was down (after a restart the agent is no longer its parent) is `Exited` with `exit_code: None` and reason `Unknown` |
//! | exec | `docker exec` in the container | the command runs on the host with the container's env and working dir |
//!
//! See the [`docker`] and [`process`] modules for their details.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

pub mod docker;
pub mod process;
pub mod testing;
pub mod volume;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod docker_tests;
// Used by tests and by `shoal sim --workloads`; some of its scripting only by tests.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod fake;
#[cfg(test)]
mod process_tests;

pub use docker::{DockerRuntime, docker_available};
pub use process::ProcessRuntime;

/// Label: the cluster id of the agent that created the container.
pub const LABEL_CLUSTER: &str = "io.shoal.cluster";
/// Label: the node id of the agent that created the container.
pub const LABEL_NODE: &str = "io.shoal.node";
/// Label: the pod's namespace.
pub const LABEL_NAMESPACE: &str = "io.shoal.namespace";
/// Label: the pod's name.
pub const LABEL_POD: &str = "io.shoal.pod";
/// Label: the pod incarnation's uid ([`PodSpec::uid`]).
pub const LABEL_POD_UID: &str = "io.shoal.pod-uid";
/// Label: the container's name within its pod.
pub const LABEL_CONTAINER: &str = "io.shoal.container";
/// Label: the container's position in the pod (0 owns the network namespace).
pub const LABEL_CONTAINER_INDEX: &str = "io.shoal.container-index";
/// Label: [`PodSpec::spec_hash`].
pub const LABEL_SPEC_HASH: &str = "io.shoal.spec-hash";
/// Label: how many containers the pod has, so that a pod missing some (its start or removal
/// was interrupted) is told from a whole one.
pub const LABEL_POD_CONTAINERS: &str = "io.shoal.pod-containers";

/// At most this many bytes of an exec's output are kept (the rest is read and dropped).
pub const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;

/// What a runtime is asked to run: one pod incarnation. The runtime's own input type,
/// independent of the manifest module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    /// Unique id of this pod incarnation (made by the reconciler). Letters, digits, `.`, `_`
    /// and `-` only, at most 128 bytes: it names a directory and goes into container names.
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Hash of the desired spec, so the reconciler can tell a pod is out of date.
    pub spec_hash: String,
    /// The containers, in order; the first owns the pod's network namespace under Docker.
    pub containers: Vec<ContainerSpec>,
    /// User labels, also put on the containers (keys under `io.shoal.` are reserved and
    /// skipped).
    pub labels: BTreeMap<String, String>,
    /// The pod's resolver (Docker: the containers' `resolv.conf`); `None` keeps the engine's.
    /// The process runtime has no resolver of its own to set (its pods use the host's).
    #[serde(default)]
    pub dns: Option<PodDns>,
    /// Volumes of files the agent writes for the pod (config maps, secrets, the downward API),
    /// which [`ContainerSpec::mounts`] name. Where each lives is in [`PodInfo::volume_dirs`].
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
    /// Scratch directories (Kubernetes `emptyDir`): empty when the pod starts, kept across
    /// container restarts (and agent restarts), removed with the pod.
    #[serde(default)]
    pub scratch: Vec<ScratchVolume>,
    /// Directories or files of the host (Kubernetes `hostPath`), checked when the pod starts.
    #[serde(default)]
    pub host_paths: Vec<HostPathVolume>,
}

/// A scratch directory of a pod (Kubernetes `emptyDir`), shared by its containers.
///
/// Made empty and writable by any user (0777, as Kubernetes) when the pod starts, kept across
/// container and agent restarts, removed by [`Runtime::remove_pod`]. On disk under the pod's
/// directory in the agent's data dir, or with `memory` in RAM-backed storage (see
/// [`volume`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScratchVolume {
    /// The pod's name for the volume (a DNS-1123 label, unique among all its volumes).
    pub name: String,
    /// In RAM (tmpfs or ramfs), counted against memory, never on disk.
    #[serde(default)]
    pub memory: bool,
    /// Bytes, if limited: not enforced by the file system; the usage of a limited scratch
    /// volume is reported in [`PodInfo::scratch_bytes`] for the agent to evict the pod.
    #[serde(default)]
    pub size_limit: Option<u64>,
}

/// A directory or file of the host given to a pod (Kubernetes `hostPath`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPathVolume {
    /// The pod's name for the volume (a DNS-1123 label, unique among all its volumes).
    pub name: String,
    /// The absolute path on the host.
    pub path: String,
    /// What must be at `path` when the pod starts.
    #[serde(default)]
    pub check: HostPathCheck,
}

/// What `start_pod` checks (or makes) at a [`HostPathVolume::path`], as Kubernetes' `hostPath`
/// `type`. A failed check fails the start ([`RuntimeError::HostPath`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HostPathCheck {
    /// Nothing is checked.
    #[default]
    None,
    /// A directory, made (0755, parents too) when missing.
    DirectoryOrCreate,
    /// An existing directory.
    Directory,
    /// A file, made empty (0644) when missing; its parent directory must exist.
    FileOrCreate,
    /// An existing regular file.
    File,
    /// An existing Unix socket.
    Socket,
    /// An existing character device.
    CharDevice,
    /// An existing block device.
    BlockDevice,
}

impl HostPathCheck {
    /// What the check expects, for error messages.
    pub fn expected(self) -> &'static str {
        match self {
            HostPathCheck::None => "anything",
            HostPathCheck::DirectoryOrCreate | HostPathCheck::Directory => "a directory",
            HostPathCheck::FileOrCreate | HostPathCheck::File => "a regular file",
            HostPathCheck::Socket => "a socket",
            HostPathCheck::CharDevice => "a character device",
            HostPathCheck::BlockDevice => "a block device",
        }
    }
}

/// A volume of files the agent writes for a pod: a config map, a secret, the downward API or a
/// projection of them.
///
/// Written atomically ([`volume`]: a reader never sees a mix of two versions), at most
/// [`volume::MAX_VOLUME_FILES`] files and [`volume::MAX_VOLUME_BYTES`] of data, and rewritten
/// live by [`Runtime::update_volume`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The pod's name for the volume (a DNS-1123 label).
    pub name: String,
    /// Holds secret data: kept in RAM-backed storage only, never on the host's disk.
    pub sensitive: bool,
    /// The volume's whole content.
    pub files: Vec<VolumeFile>,
}

/// One file of a [`VolumeSpec`]. Its `Debug` shows the path, size and mode, never the data.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFile {
    /// Relative path inside the volume (`app.conf`, `dir/key`); never absolute, no `..`, no
    /// empty parts, does not start with `..`.
    pub path: String,
    /// The content.
    pub data: Vec<u8>,
    /// Permission bits (0o644 by default in Kubernetes; 0o400 etc.); at most 0o777.
    pub mode: u32,
}

impl fmt::Debug for VolumeFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VolumeFile")
            .field("path", &self.path)
            .field("size", &self.data.len())
            .field("mode", &format_args!("{:#o}", self.mode))
            .finish()
    }
}

/// A volume mounted into a container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The volume's name: one of [`PodSpec::volumes`], [`PodSpec::scratch`] or
    /// [`PodSpec::host_paths`].
    pub volume: String,
    /// Absolute path in the container (Docker; the process runtime tells the volume's
    /// directory in `SHOAL_VOLUME_<NAME>` instead, see [`process::volume_env_name`]).
    pub mount_path: String,
    /// Mounted read-only. Docker mounts every volume of files ([`PodSpec::volumes`])
    /// read-only anyway (as Kubernetes does config map, secret, downward API and projected
    /// volumes): a container that could write to a volume could plant links the agent's
    /// writer would follow. Scratch and host path volumes are read-write unless this is set.
    /// The process runtime ignores it.
    pub read_only: bool,
    /// A path inside the volume to mount instead of its root (a file or dir); not updated
    /// live (as in Kubernetes).
    pub sub_path: Option<String>,
}

/// A pod's resolver configuration, as Kubernetes writes it into `resolv.conf`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDns {
    /// Name servers.
    pub servers: Vec<std::net::IpAddr>,
    /// Search domains, in order.
    pub searches: Vec<String>,
    /// Options (`ndots:5`).
    pub options: Vec<String>,
}

/// One container of a [`PodSpec`]. Its `Debug` shows `<redacted>` for the values of the
/// variables named in [`ContainerSpec::sensitive_env`].
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Name, unique within the pod (letters, digits, `.`, `_`, `-`; at most 63 bytes).
    pub name: String,
    /// Image reference (Docker only).
    pub image: String,
    /// Replaces the image's entrypoint (Docker); the program and its first arguments (process,
    /// where it is required).
    pub command: Vec<String>,
    /// Replaces the image's cmd (Docker); more arguments (process).
    pub args: Vec<String>,
    /// Environment, in order; a later entry wins over an earlier one and over shoal's own.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// Ports the container listens on (informational: pods are reached at their IP).
    pub ports: Vec<(u16, Protocol)>,
    /// CPU limit in millicores (Docker only).
    pub cpu_millis_limit: Option<u64>,
    /// Memory limit in bytes (Docker only).
    pub memory_limit_bytes: Option<u64>,
    /// Volumes of the pod mounted into this container.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Names in `env` whose values come from secrets: never written to the agent's disk (the
    /// process runtime keeps them in RAM-backed storage; Docker in the container's config, in
    /// the engine's own state, as Kubernetes with Docker) and never in `Debug` output.
    #[serde(default)]
    pub sensitive_env: Vec<String>,
    /// Names set to the pod's IP (Kubernetes' `fieldRef: status.podIP`); they win over an
    /// entry of the same name in `env`.
    #[serde(default)]
    pub pod_ip_env: Vec<String>,
}

impl fmt::Debug for ContainerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Env<'a>(&'a ContainerSpec);
        impl fmt::Debug for Env<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list()
                    .entries(self.0.env.iter().map(|(k, v)| {
                        if self.0.sensitive_env.contains(k) {
                            (k.as_str(), "<redacted>")
                        } else {
                            (k.as_str(), v.as_str())
                        }
                    }))
                    .finish()
            }
        }
        f.debug_struct("ContainerSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &Env(self))
            .field("working_dir", &self.working_dir)
            .field("ports", &self.ports)
            .field("cpu_millis_limit", &self.cpu_millis_limit)
            .field("memory_limit_bytes", &self.memory_limit_bytes)
            .field("mounts", &self.mounts)
            .field("sensitive_env", &self.sensitive_env)
            .field("pod_ip_env", &self.pod_ip_env)
            .finish()
    }
}

/// A port's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Lower case, as Docker writes it (`8080/tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A pod as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// [`PodSpec::uid`].
    pub uid: String,
    /// [`PodSpec::namespace`].
    pub namespace: String,
    /// [`PodSpec::name`].
    pub name: String,
    /// [`PodSpec::spec_hash`].
    pub spec_hash: String,
    /// [`PodSpec::labels`] (the user's; shoal's own `io.shoal.` labels are not included).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The pod's IP, when it has one (Docker: while the first container runs).
    pub ip: Option<IpAddr>,
    /// The containers, in the spec's order.
    pub containers: Vec<ContainerInfo>,
    /// Volume name -> the host directory holding its files ([`PodSpec::volumes`]): under the
    /// agent's data dir, or under RAM-backed storage for sensitive ones.
    /// Scratch and host path volumes are there too (a memory scratch volume under Docker
    /// also lives in RAM-backed storage on the host, so it has a directory as well).
    #[serde(default)]
    pub volume_dirs: BTreeMap<String, String>,
    /// Scratch volume name -> bytes its files take, for the scratch volumes with a
    /// [`ScratchVolume::size_limit`] only. Counted at each listing by walking the directory
    /// (symbolic links not followed), and bounded: the count stops once past the limit
    /// (reported as `limit + 1`) or after [`volume::MAX_SCRATCH_ENTRIES`] entries (what was
    /// counted so far), so a listing costs at most that many `lstat`s per limited volume.
    #[serde(default)]
    pub scratch_bytes: BTreeMap<String, u64>,
}

impl PodInfo {
    /// The container named `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerInfo> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Whether every container runs.
    pub fn all_running(&self) -> bool {
        self.containers
            .iter()
            .all(|c| matches!(c.state, ContainerState::Running { .. }))
    }
}

/// One container as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// [`ContainerSpec::name`].
    pub name: String,
    /// The image (Docker), or the program (process).
    pub image: String,
    /// The Docker container id, or the process id.
    pub runtime_id: String,
    /// Its state.
    pub state: ContainerState,
}

/// A container's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ContainerState {
    /// Created, never started.
    Created,
    /// Running.
    Running {
        /// When it (last) started, Unix milliseconds.
        started_at_ms: Option<u64>,
    },
    /// Ended.
    Exited {
        /// Exit code (128 + signal number when killed by a signal); `None` when unknown.
        exit_code: Option<i32>,
        /// When it ended, Unix milliseconds.
        finished_at_ms: Option<u64>,
        /// `Completed` (code 0), `Error`, `OOMKilled`, or `Unknown` (exit code unknown).
        reason: String,
        /// More detail, if any (the engine's error, how the process ended).
        message: Option<String>,
    },
    /// Something the runtime cannot classify (Docker's `removing`, say).
    Unknown {
        /// What the runtime saw.
        detail: String,
    },
}

impl ContainerState {
    /// `Exited` from an exit code, with Kubernetes' reasons.
    pub(crate) fn exited(
        exit_code: Option<i32>,
        finished_at_ms: Option<u64>,
        message: Option<String>,
    ) -> Self {
        let reason = match exit_code {
            Some(0) => "Completed",
            Some(_) => "Error",
            None => "Unknown",
        };
        ContainerState::Exited {
            exit_code,
            finished_at_ms,
            reason: reason.to_string(),
            message,
        }
    }
}

/// What an exec returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecResult {
    /// The command's exit code.
    pub exit_code: i32,
    /// Its stdout then stderr (Docker: interleaved as written), at most [`EXEC_OUTPUT_LIMIT`]
    /// bytes.
    pub output: Vec<u8>,
    /// Whether output beyond the limit was dropped.
    pub truncated: bool,
}

/// A container's log, as chunks of bytes (stdout and stderr together).
pub type LogStream = Pin<Box<dyn Stream<Item = Result<Bytes, RuntimeError>> + Send>>;

/// Which runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// The Docker engine.
    Docker,
    /// Plain child processes.
    Process,
}

impl RuntimeKind {
    /// `docker` or `process`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Process => "process",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RuntimeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "docker" => Ok(RuntimeKind::Docker),
            "process" => Ok(RuntimeKind::Process),
            other => Err(format!(
                "unknown runtime {other:?}: expected docker or process"
            )),
        }
    }
}

/// How a runtime is set up.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The cluster's id: labels, and the Docker network's name (`shoal-<first 12 characters>`).
    pub cluster_id: String,
    /// This node's id: labels, so agents sharing an engine never take each other's pods.
    pub node_id: String,
    /// The agent's data dir; the process runtime keeps `pods/<uid>/` in it.
    pub data_dir: PathBuf,
    /// Size at which a container's log file is rotated; one rotated file is kept.
    pub log_max_bytes: u64,
    /// The RAM-backed directory (tmpfs or ramfs) under which secret data is kept
    /// (`shoal-<this agent>/pods/<uid>/`). `None` (the default) takes the first RAM-backed one
    /// of `$XDG_RUNTIME_DIR`, `/dev/shm` and `/run`. A directory given here must be RAM-backed
    /// too: secret data never falls back to disk (tests point it at a directory of their own).
    pub ram_dir: Option<PathBuf>,
}

impl RuntimeConfig {
    /// A config with the default log cap (10 MiB x 2).
    pub fn new(
        cluster_id: impl Into<String>,
        node_id: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        RuntimeConfig {
            cluster_id: cluster_id.into(),
            node_id: node_id.into(),
            data_dir: data_dir.into(),
            log_max_bytes: 10 * 1024 * 1024,
            ram_dir: None,
        }
    }
}

/// What went wrong in a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image could not be pulled (an `ImagePullBackOff` for the pod).
    #[error("pulling image {image:?} failed: {reason}")]
    ImagePull {
        /// The image.
        image: String,
        /// Why, in the engine's words.
        reason: String,
    },
    /// The image is not on this node (call `ensure_image` first).
    #[error("image {image:?} is not present on this node")]
    ImageNotPresent {
        /// The image.
        image: String,
    },
    /// A container has no command, which the process runtime needs.
    #[error(
        "container {container:?}: the process runtime needs a command (images are not run without Docker)"
    )]
    MissingCommand {
        /// The container.
        container: String,
    },
    /// The spec cannot be run as given.
    #[error("invalid pod spec: {0}")]
    InvalidSpec(String),
    /// A host path volume's check failed ([`HostPathCheck`]).
    #[error("host path volume {volume:?}: {path} {problem}")]
    HostPath {
        /// The volume's name.
        volume: String,
        /// The host path.
        path: String,
        /// What is wrong (`is not a directory`, `does not exist: expected a socket`).
        problem: String,
    },
    /// A whole pod with this uid already exists (an incomplete one, left by an interrupted
    /// operation, is replaced instead).
    #[error("pod {pod_uid} already exists")]
    PodExists {
        /// The pod's uid.
        pod_uid: String,
    },
    /// No pod with this uid.
    #[error("pod {pod_uid} not found")]
    PodNotFound {
        /// The pod's uid.
        pod_uid: String,
    },
    /// No such container in the pod.
    #[error("container {container:?} not found in pod {pod_uid}")]
    ContainerNotFound {
        /// The pod's uid.
        pod_uid: String,
        /// The container.
        container: String,
    },
    /// The container does not run (exec needs a running container).
    #[error("container {container:?} of pod {pod_uid} is not running")]
    ContainerNotRunning {
        /// The pod's uid.
        pod_uid: String,
        /// The container.
        container: String,
    },
    /// A process could not be started.
    #[error("container {container:?}: cannot run {program:?}: {source}")]
    Spawn {
        /// The container.
        container: String,
        /// The program.
        program: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An exec did not finish in time (the Docker exec's process may still run; a process
    /// runtime exec is killed).
    #[error("exec in container {container:?} timed out after {timeout:?}")]
    ExecTimeout {
        /// The container.
        container: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Secret data (a sensitive volume or sensitive environment) cannot be kept as it must be:
    /// there is no RAM-backed storage, or what was kept there is gone. Never falls back to
    /// disk.
    #[error("{0}")]
    Secret(String),
    /// No pod IP left to give (the process runtime's 127.64.0.0/10, or the Docker network's
    /// subnet, is full).
    #[error("no free pod IP in {0}")]
    NoFreeIp(ipnet::Ipv4Net),
    /// No Docker engine can be reached.
    #[error("no Docker engine reachable at {endpoint}: {reason}")]
    EngineUnavailable {
        /// Where we looked.
        endpoint: String,
        /// Why it failed.
        reason: String,
    },
    /// The Docker engine refused or failed a request.
    #[error("{context}: {source}")]
    Engine {
        /// What we were doing.
        context: String,
        /// The engine's (or transport's) error.
        source: bollard::errors::Error,
    },
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn engine(context: impl Into<String>, source: bollard::errors::Error) -> Self {
        RuntimeError::Engine {
            context: context.into(),
            source,
        }
    }

    /// Whether this is a "not found" of a pod or container.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            RuntimeError::PodNotFound { .. } | RuntimeError::ContainerNotFound { .. }
        )
    }
}

/// What [`Runtime::recover`] found left by interrupted operations and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The uids of the incomplete pods removed (a start or a removal was interrupted).
    pub removed: Vec<String>,
    /// Processes (process runtime) or containers (Docker) that ran outside any record and
    /// were killed.
    pub killed: usize,
}

/// Where a test makes an operation stop short, as if the agent were killed right there: the
/// operation returns an error without undoing anything. Each runtime takes the points that
/// exist in its own sequence of steps (the conformance suite asks each fixture for its
/// list).
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// `start_pod`: container `n` was just created, not started (Docker: created; process:
    /// its process spawned and held at the start gate, the pod not recorded).
    StartAfterCreate(usize),
    /// `start_pod`: container `n` was just started, the next ones not created.
    StartAfterStart(usize),
    /// `start_pod`: the pod is recorded whole, its containers not released yet (process: the
    /// children still wait at their gates).
    StartAfterRecord,
    /// `remove_pod`: the first step of the removal is done (process: `pod.json` deleted;
    /// Docker: the last container removed), the rest is not.
    RemoveMidway,
}

/// Where the next operation of a runtime stops short ([`CrashPoint`]); shared by the clones
/// of a runtime.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub(crate) struct CrashSwitch(std::sync::Arc<std::sync::Mutex<Option<CrashPoint>>>);

#[cfg(test)]
impl CrashSwitch {
    /// The next operation that reaches `point` stops there.
    pub(crate) fn arm(&self, point: CrashPoint) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(point);
    }

    /// Whether the operation stops at `point` (the switch is then used up).
    pub(crate) fn fires(&self, point: CrashPoint) -> bool {
        let mut armed = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if *armed == Some(point) {
            *armed = None;
            return true;
        }
        false
    }
}

/// The error of an operation a test stopped short at `point`.
#[cfg(test)]
pub(crate) fn simulated_crash(point: CrashPoint) -> RuntimeError {
    RuntimeError::io(
        format!("stopped short at {point:?}"),
        std::io::Error::other("a simulated crash of the agent"),
    )
}

/// A runtime driver. Methods return `Send` futures, so an `Arc<AnyRuntime>` can be used from
/// any task.
pub trait Runtime: Send + Sync {
    /// Which runtime this is.
    fn kind(&self) -> RuntimeKind;

    /// Cleans up after operations an earlier agent did not finish (it was killed in the middle
    /// of a start or a removal): every incomplete pod of this agent is removed, with whatever
    /// it still runs, so that it is not listed and can be created again. Whole pods are left
    /// for the supervisor to adopt. Called once when the runtime is made, before the first
    /// listing ([`AnyRuntime::new`] does).
    fn recover(&self) -> impl Future<Output = Result<Recovery, RuntimeError>> + Send;

    /// Makes sure `image` is on this node: Docker pulls it when missing, telling progress to
    /// `on_progress` (one line per layer and status change); a failed pull is
    /// [`RuntimeError::ImagePull`] with the engine's reason. The process runtime has nothing to
    /// do.
    fn ensure_image(
        &self,
        image: &str,
        on_progress: &mut (dyn FnMut(String) + Send),
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Creates and starts every container of the pod, in order, and reports the pod (with its
    /// IP). All or nothing.
    fn start_pod(
        &self,
        pod: &PodSpec,
    ) -> impl Future<Output = Result<PodInfo, RuntimeError>> + Send;

    /// Stops the container (SIGTERM, SIGKILL after `grace`) if it runs, and starts it again.
    /// Under Docker, restarting the first container restarts the others too, so they join its
    /// new network namespace.
    fn restart_container(
        &self,
        pod_uid: &str,
        container: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stops every container of the pod: SIGTERM, then SIGKILL after `grace`. The containers
    /// stay (as exited) until [`Runtime::remove_pod`]. A missing pod is `Ok`.
    fn stop_pod(
        &self,
        pod_uid: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes the pod's containers (killing any still running) and its state. A missing pod is
    /// `Ok`.
    fn remove_pod(&self, pod_uid: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// This agent's pods (same cluster and node), exited containers included.
    fn list_pods(&self) -> impl Future<Output = Result<Vec<PodInfo>, RuntimeError>> + Send;

    /// Rewrites a volume of a started pod with `volume`'s content, atomically (a reader sees
    /// the old files or the new ones, never a mix; see [`volume`]); nothing is written when
    /// the content is unchanged. Containers see it at once (mounts of a `sub_path` excepted,
    /// as in Kubernetes). [`RuntimeError::PodNotFound`] for a missing pod,
    /// [`RuntimeError::InvalidSpec`] when the pod has no such volume, its `sensitive` differs
    /// from the pod's, or the content is not a valid volume.
    fn update_volume(
        &self,
        pod_uid: &str,
        volume: &VolumeSpec,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// A container's log (stdout and stderr): the last `tail` lines (all when `None`), then,
    /// with `follow`, what it writes until it ends.
    fn logs(
        &self,
        pod_uid: &str,
        container: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> impl Future<Output = Result<LogStream, RuntimeError>> + Send;

    /// Runs `command` in a running container (for exec probes), waiting at most `timeout`.
    fn exec(
        &self,
        pod_uid: &str,
        container: &str,
        command: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<ExecResult, RuntimeError>> + Send;
}

/// The runtime the agent holds: one of the two.
pub enum AnyRuntime {
    /// Docker.
    Docker(DockerRuntime),
    /// Processes.
    Process(ProcessRuntime),
}

impl AnyRuntime {
    /// Connects to Docker or sets up the process runtime, then recovers what an earlier
    /// agent's interrupted operations left ([`Runtime::recover`]; a failure there is logged:
    /// `start_pod` replaces an incomplete pod it meets anyway). Must be called within a tokio
    /// runtime (the process runtime starts a log rotation task).
    pub async fn new(kind: RuntimeKind, config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let runtime = match kind {
            RuntimeKind::Docker => AnyRuntime::Docker(DockerRuntime::new(config).await?),
            RuntimeKind::Process => AnyRuntime::Process(ProcessRuntime::new(config)?),
        };
        match runtime.recover().await {
            Ok(recovery) if recovery == Recovery::default() => {}
            Ok(recovery) => tracing::info!(
                runtime = %kind,
                removed = ?recovery.removed,
                killed = recovery.killed,
                "removed what interrupted operations of the last agent left"
            ),
            Err(e) => tracing::warn!(
                runtime = %kind,
                error = %e,
                "recovering from the last agent's interrupted operations failed"
            ),
        }
        Ok(runtime)
    }

    /// The default for `--runtime`: Docker when an engine answers quickly, else processes.
    pub async fn default_kind() -> RuntimeKind {
        if docker_available().await {
            RuntimeKind::Docker
        } else {
            RuntimeKind::Process
        }
    }
}

impl Runtime for AnyRuntime {
    fn kind(&self) -> RuntimeKind {
        match self {
            AnyRuntime::Docker(r) => r.kind(),
            AnyRuntime::Process(r) => r.kind(),
        }
    }

    async fn recover(&self) -> Result<Recovery, RuntimeError> {
        match self {
            AnyRuntime::Docker(r) => r.recover().await,
            AnyRuntime::Process(r) => r.recover().await,
        }
    }

    async fn ensure_image(
        &self,
        image: &str,
        on_progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), RuntimeError> {
        match self {
            AnyRuntime::Docker(r) => r.ensure_image(image, on_progress).await,
            AnyRuntime::Process(r) => r.ensure_image(image, on_progress).await,
        }
    }

    async fn start_pod(&self, pod: &PodSpec) -> Result<PodInfo, RuntimeError> {
        match self {
            AnyRuntime::Docker(r) => r.start_pod(pod).await,
            AnyRuntime::Process(r) => r.start_pod(pod).await,
        }
    }

    async fn restart_container(
        &self,
        pod_uid: &str,
        container: &str,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        match self {
            AnyRuntime::Docker(r) => r.restart_container(pod_uid, container, grace).await,
            AnyRuntime::Process(r) => r.restart_container(pod_uid, container, grace).await,
        }
    }

    async fn stop_pod(&self, pod_uid: &str, grace: Duration) -> Result<(), RuntimeError> {
        match self {
            AnyRuntime::Docker(r) => r.stop_pod(pod_uid, grace).await,
            AnyRuntime::Process(r) => r.stop_pod(pod_uid, grace).await,
        }
    }

    async fn remove_pod(&self, pod_uid: &str) -> Result<(), RuntimeError> {
        match self {
            AnyRuntime::Docker(r) => r.remove_pod(pod_uid).await,
            AnyRuntime::Process(r) => r.remove_pod(pod_uid).await,
        }
    }

    async fn list_pods(&self) -> Result<Vec<PodInfo>, RuntimeError> {
        match self {
            AnyRuntime::Docker(r) => r.list_pods().await,
            AnyRuntime::Process(r) => r.list_pods().await,
        }
    }

    async fn update_volume(&self, pod_uid: &str, volume: &VolumeSpec) -> Result<(), RuntimeError> {
        match self {
            AnyRuntime::Docker(r) => r.update_volume(pod_uid, volume).await,
            AnyRuntime::Process(r) => r.update_volume(pod_uid, volume).await,
        }
    }

    async fn logs(
        &self,
        pod_uid: &str,
        container: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<LogStream, RuntimeError> {
        match self {
            AnyRuntime::Docker(r) => r.logs(pod_uid, container, follow, tail).await,
            AnyRuntime::Process(r) => r.logs(pod_uid, container, follow, tail).await,
        }
    }

    async fn exec(
        &self,
        pod_uid: &str,
        container: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecResult, RuntimeError> {
        match self {
            AnyRuntime::Docker(r) => r.exec(pod_uid, container, command, timeout).await,
            AnyRuntime::Process(r) => r.exec(pod_uid, container, command, timeout).await,
        }
    }
}

/// Checks what both runtimes need of a spec: a safe uid, at least one container, unique and
/// safe container names, and valid volumes, mounts and env names
/// ([`volume::validate_pod_volumes`]).
pub(crate) fn validate_spec(pod: &PodSpec) -> Result<(), RuntimeError> {
    if !is_safe_name(&pod.uid, 128) {
        return Err(RuntimeError::InvalidSpec(format!(
            "pod uid {:?} must be 1-128 letters, digits, '.', '_' or '-', not starting with '.'",
            pod.uid
        )));
    }
    if pod.name.is_empty() || pod.namespace.is_empty() {
        return Err(RuntimeError::InvalidSpec(format!(
            "pod {:?} in namespace {:?}: name and namespace must not be empty",
            pod.name, pod.namespace
        )));
    }
    if pod.containers.is_empty() {
        return Err(RuntimeError::InvalidSpec(format!(
            "pod {}/{} has no containers",
            pod.namespace, pod.name
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &pod.containers {
        if !is_safe_name(&c.name, 63) {
            return Err(RuntimeError::InvalidSpec(format!(
                "container name {:?} must be 1-63 letters, digits, '.', '_' or '-', not starting with '.'",
                c.name
            )));
        }
        if !seen.insert(c.name.as_str()) {
            return Err(RuntimeError::InvalidSpec(format!(
                "pod {}/{} has two containers named {:?}",
                pod.namespace, pod.name, c.name
            )));
        }
    }
    volume::validate_pod_volumes(pod)
}

/// Letters, digits, `.`, `_`, `-`; not empty, not starting with `.`, at most `max` bytes.
pub(crate) fn is_safe_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_validation() {
        let mut pod = PodSpec {
            uid: "u1".into(),
            namespace: "default".into(),
            name: "web".into(),
            spec_hash: "h".into(),
            containers: vec![ContainerSpec {
                name: "c".into(),
                ..Default::default()
            }],
            labels: BTreeMap::new(),
            dns: None,
            volumes: Vec::new(),
            scratch: Vec::new(),
            host_paths: Vec::new(),
        };
        validate_spec(&pod).unwrap();
        pod.uid = "../x".into();
        assert!(validate_spec(&pod).is_err());
        pod.uid = "u1".into();
        pod.containers.push(pod.containers[0].clone());
        let err = validate_spec(&pod).unwrap_err().to_string();
        assert!(err.contains("two containers named \"c\""), "{err}");
        assert_eq!(
            "docker".parse::<RuntimeKind>().unwrap(),
            RuntimeKind::Docker
        );
        assert!("podman".parse::<RuntimeKind>().is_err());
    }
}
