//! The typed model: the subset of Kubernetes' `v1 Namespace`, `v1 Pod`, `apps/v1 Deployment`,
//! `v1 Service`, `v1 ConfigMap` and `v1 Secret` that shoal runs, with every default filled in.
//!
//! The serde shapes are Kubernetes' own (camelCase, `{"httpGet": {...}}`, `{"type":
//! "RollingUpdate", "rollingUpdate": {...}}`, quantities as strings), so serializing a
//! [`Resource`] gives a manifest kubectl users recognise, and the canonical stored form is that
//! same JSON with the read-only fields left out (see `canonical.rs`). Deserializing is only for
//! that stored form: user input goes through the decoder, which reports every problem by field
//! path and line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::de::{self, Deserializer};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use crate::quantity::{Cpu, Memory};
use crate::timestamp::Timestamp;

/// The namespace of namespaced objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The kinds of object shoal understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1 Namespace` (cluster-scoped).
    Namespace,
    /// `v1 Pod`.
    Pod,
    /// `apps/v1 Deployment`.
    Deployment,
    /// `v1 Service`.
    Service,
    /// `v1 ConfigMap`.
    ConfigMap,
    /// `v1 Secret`.
    Secret,
}

impl Kind {
    /// Every supported kind.
    pub const ALL: [Kind; 6] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Deployment,
        Kind::Service,
        Kind::ConfigMap,
        Kind::Secret,
    ];

    /// The `apiVersion` objects of this kind carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::ConfigMap | Kind::Secret => "v1",
            Kind::Deployment => "apps/v1",
        }
    }

    /// The `kind` field's value (`Deployment`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
            Kind::Service => "Service",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }

    /// The kind in the replicated store's object keys (`deployment`): lower case, so that it
    /// passes the API's key rule.
    pub fn key_kind(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Deployment => "deployment",
            Kind::Service => "service",
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }

    /// The kind for a store key kind ([`Kind::key_kind`]).
    pub fn from_key_kind(key_kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.key_kind() == key_kind)
    }

    /// kubectl's resource type as it prints it before `/name` (`deployment.apps`).
    pub fn resource_type(self) -> &'static str {
        match self {
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::Deployment => "deployment.apps",
            Kind::Service => "service",
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an object lives in the replicated state: `(kind, namespace, name)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace (`default` when the manifest named none); empty for cluster-scoped kinds
    /// (Namespace), as in Kubernetes.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl fmt::Display for ResourceKey {
    /// kubectl's `TYPE/NAME` (`deployment.apps/web`), without the namespace.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.resource_type(), self.name)
    }
}

/// Standard object metadata.
///
/// `uid`, `resourceVersion`, `generation`, `creationTimestamp` and `deletionTimestamp` are
/// filled by shoal, not by users: manifests may carry them (kubectl round-trips them from `get
/// -o yaml`) and the parser ignores them; the stored form leaves them out (`from_stored` drops
/// them); the caller sets them before rendering an object for `get`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// The name, unique per kind and namespace.
    pub name: String,
    /// The namespace: always set for namespaced kinds once parsed (`default` if the manifest
    /// named none), never for Namespace objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Read-only: the object's unique id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Read-only: the version of the stored object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Read-only: incremented on every change of the spec (see `next_generation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Read-only: when the object was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Timestamp>,
    /// Read-only: when the object's deletion was requested (it is terminating).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<Timestamp>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// Clears the read-only fields (what the stored form leaves out).
    pub fn clear_read_only(&mut self) {
        self.uid = None;
        self.resource_version = None;
        self.generation = None;
        self.creation_timestamp = None;
        self.deletion_timestamp = None;
    }
}

/// A `v1 Namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Metadata (no namespace: namespaces are cluster-scoped).
    pub metadata: ObjectMeta,
}

/// A `v1 Pod`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// What to run.
    pub spec: PodSpec,
}

/// An `apps/v1 Deployment`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Replicas, selector, pod template and rollout strategy.
    pub spec: DeploymentSpec,
}

/// What a pod runs and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodSpec {
    /// The containers (at least one; names unique).
    pub containers: Vec<Container>,
    /// Default `Always`; a Deployment's pods must use `Always`.
    pub restart_policy: RestartPolicy,
    /// Labels a node must have to run this pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Seconds between SIGTERM and SIGKILL when the pod stops; default 30.
    pub termination_grace_period_seconds: u64,
    /// Volumes the containers can mount (names unique).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Read-only: the node the pod was placed on. Users cannot set it (placement is shoal's,
    /// steer it with `nodeSelector`); the stored form leaves it out; the caller sets it before
    /// rendering a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

impl Default for PodSpec {
    fn default() -> Self {
        PodSpec {
            containers: Vec::new(),
            restart_policy: RestartPolicy::Always,
            node_selector: BTreeMap::new(),
            termination_grace_period_seconds: 30,
            volumes: Vec::new(),
            node_name: None,
        }
    }
}

/// When the containers of a pod are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// Always (the default; the only value a Deployment allows).
    #[default]
    Always,
    /// Only after a failure (non-zero exit).
    OnFailure,
    /// Never.
    Never,
}

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    /// Name, unique in the pod (a DNS-1123 label).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's command (arguments) when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Working directory; the image's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Variables from whole config maps and secrets, in order, before `env` (which wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    /// Environment variables, in order (a later duplicate wins, as in Kubernetes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Ports the container listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// CPU and memory requests and limits. Requests default to the limits when only limits
    /// are given (Kubernetes' rule).
    #[serde(default, skip_serializing_if = "ResourceRequirements::is_empty")]
    pub resources: ResourceRequirements,
    /// Restart the container when this fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Send traffic only while this succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Hold the other probes until this succeeds once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// When to pull the image; defaults as Kubernetes does: `Always` for `:latest` or no tag,
    /// `IfNotPresent` otherwise.
    pub image_pull_policy: PullPolicy,
    /// Where the pod's volumes appear in this container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

/// When to pull a container image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Every time the container starts.
    Always,
    /// Only if the node does not have it.
    #[default]
    IfNotPresent,
    /// Never (the image must be on the node).
    Never,
}

impl PullPolicy {
    /// Kubernetes' default for an image reference: `Always` when the tag is `latest` or absent
    /// (and there is no digest), `IfNotPresent` otherwise.
    pub fn default_for(image: &str) -> PullPolicy {
        if image.contains('@') {
            return PullPolicy::IfNotPresent;
        }
        // The tag follows the last ':' after the last '/' (a registry host may carry a port).
        let last = image.rsplit('/').next().unwrap_or(image);
        match last.rsplit_once(':') {
            Some((_, "latest")) | None => PullPolicy::Always,
            Some(_) => PullPolicy::IfNotPresent,
        }
    }
}

/// An environment variable: a literal value, or one taken from a config map, a secret, the
/// pod's own fields or its resources.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Value (empty when absent). `$(VAR)` references are not expanded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// Where the value comes from instead of `value` (never both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// Where an environment variable's value comes from (exactly one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvVarSource {
    /// A key of a config map.
    ConfigMapKeyRef(KeySelector),
    /// A key of a secret.
    SecretKeyRef(KeySelector),
    /// A field of the pod.
    FieldRef(ObjectFieldSelector),
    /// A container's resource request or limit.
    ResourceFieldRef(ResourceFieldSelector),
}

/// A key of a config map or secret in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySelector {
    /// The object's name.
    pub name: String,
    /// The key.
    pub key: String,
    /// Whether the pod starts without it (the variable is then left out).
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

/// A field of the pod: `metadata.name`, `metadata.namespace`, `metadata.uid`,
/// `metadata.labels['k']`, `metadata.annotations['k']`, `spec.nodeName`, `status.podIP`,
/// `status.hostIP` (`metadata.labels` and `metadata.annotations` whole in downward API
/// files only).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectFieldSelector {
    /// The field's path, as Kubernetes writes it.
    pub field_path: String,
}

/// A container's resource request or limit, divided by `divisor` and rounded up.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceFieldSelector {
    /// The container; required in downward API volumes, the variable's own container when
    /// absent in `env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// `requests.cpu`, `limits.cpu`, `requests.memory` or `limits.memory`.
    pub resource: String,
    /// The unit the value is given in, a quantity (`1m`, `1Mi`); default `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divisor: Option<String>,
}

/// All keys of a config map or secret as variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromSource {
    /// Put before every key's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// The object (exactly one of `configMapRef`, `secretRef`).
    #[serde(flatten)]
    pub source: EnvFromRef,
}

/// The object an [`EnvFromSource`] reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvFromRef {
    /// A config map.
    ConfigMapRef(ObjectRef),
    /// A secret.
    SecretRef(ObjectRef),
}

/// A config map or secret in the pod's namespace, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectRef {
    /// The object's name.
    pub name: String,
    /// Whether the pod starts without it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

/// Where a volume appears in a container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    /// The pod's volume.
    pub name: String,
    /// An absolute path in the container (no `:`).
    pub mount_path: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// A relative path in the volume to mount instead of its root (not updated live).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// A pod's volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its name, unique in the pod (a DNS-1123 label).
    pub name: String,
    /// What it holds (exactly one source).
    #[serde(flatten)]
    pub source: VolumeSource,
}

/// What a volume holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeSource {
    /// The keys of a config map as files.
    ConfigMap(ConfigMapVolume),
    /// The keys of a secret as files (RAM-backed, never on a disk).
    Secret(SecretVolume),
    /// Fields of the pod as files.
    #[serde(rename = "downwardAPI")]
    DownwardApi(DownwardApiVolume),
    /// Config maps, secrets and downward API files in one directory.
    Projected(ProjectedVolume),
    /// An empty directory that lives as long as the pod, on disk or in RAM.
    EmptyDir(EmptyDirVolume),
    /// A file or directory of the node.
    HostPath(HostPathVolume),
}

/// An `emptyDir` volume (`emptyDir: {}` is the usual one: on disk, no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDirVolume {
    /// Where the directory lives; default the node's disk.
    #[serde(default, skip_serializing_if = "EmptyDirMedium::is_disk")]
    pub medium: EmptyDirMedium,
    /// The most the directory may hold (a memory quantity, `1Gi`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<Memory>,
}

/// Where an `emptyDir` volume lives (Kubernetes' `medium`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum EmptyDirMedium {
    /// The node's disk (Kubernetes' `""`, the default).
    #[default]
    #[serde(rename = "")]
    Disk,
    /// RAM (a tmpfs), counted as the pod's memory: `Memory`.
    Memory,
}

impl EmptyDirMedium {
    /// Whether this is the default, [`EmptyDirMedium::Disk`].
    pub fn is_disk(&self) -> bool {
        *self == EmptyDirMedium::Disk
    }
}

/// A `hostPath` volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostPathVolume {
    /// The path on the node: absolute, no `..` element.
    pub path: String,
    /// What must be at `path` before the pod starts (Kubernetes' `type`); default no check.
    #[serde(
        rename = "type",
        default,
        skip_serializing_if = "HostPathType::is_unset"
    )]
    pub path_type: HostPathType,
}

/// What a `hostPath` volume's path must be (Kubernetes' `HostPathType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum HostPathType {
    /// No check (Kubernetes' `""`, the default).
    #[default]
    #[serde(rename = "")]
    Unset,
    /// A directory, created (empty, mode 0755) when nothing is there.
    DirectoryOrCreate,
    /// An existing directory.
    Directory,
    /// A file, created (empty, mode 0644) when nothing is there.
    FileOrCreate,
    /// An existing file.
    File,
    /// An existing UNIX socket.
    Socket,
    /// An existing character device.
    CharDevice,
    /// An existing block device.
    BlockDevice,
}

impl HostPathType {
    /// Every type, with its Kubernetes name (`""` for [`HostPathType::Unset`]).
    pub const ALL: [(&'static str, HostPathType); 8] = [
        ("", HostPathType::Unset),
        ("DirectoryOrCreate", HostPathType::DirectoryOrCreate),
        ("Directory", HostPathType::Directory),
        ("FileOrCreate", HostPathType::FileOrCreate),
        ("File", HostPathType::File),
        ("Socket", HostPathType::Socket),
        ("CharDevice", HostPathType::CharDevice),
        ("BlockDevice", HostPathType::BlockDevice),
    ];

    /// Whether this is the default, [`HostPathType::Unset`].
    pub fn is_unset(&self) -> bool {
        *self == HostPathType::Unset
    }

    /// Kubernetes' name (`""` for [`HostPathType::Unset`]).
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("", |(name, _)| name)
    }
}

/// A `configMap` volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapVolume {
    /// The config map.
    pub name: String,
    /// The keys to project and where (every key, as a file of its name, when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    /// The files' mode; default 0644.
    pub default_mode: u32,
    /// Whether the pod starts without the config map (or a key of `items`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

/// A `secret` volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretVolume {
    /// The secret.
    pub secret_name: String,
    /// The keys to project and where (every key when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    /// The files' mode; default 0644.
    pub default_mode: u32,
    /// Whether the pod starts without the secret (or a key of `items`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

/// A key projected to a file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyToPath {
    /// The key.
    pub key: String,
    /// The file's relative path (no `..`).
    pub path: String,
    /// The file's mode; the volume's `defaultMode` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// A `downwardAPI` volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DownwardApiVolume {
    /// The files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<DownwardApiFile>,
    /// The files' mode; default 0644.
    pub default_mode: u32,
}

/// One downward API file (exactly one of `fieldRef`, `resourceFieldRef`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DownwardApiFile {
    /// The file's relative path.
    pub path: String,
    /// A field of the pod (`metadata.labels` and `metadata.annotations` whole, one
    /// `key="value"` per line, are allowed here; `status.podIP` and `spec.nodeName` are not,
    /// as in Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_ref: Option<ObjectFieldSelector>,
    /// A resource of a container (`containerName` required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_field_ref: Option<ResourceFieldSelector>,
    /// The file's mode; the volume's `defaultMode` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// A `projected` volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectedVolume {
    /// The sources, in order (no file path twice).
    pub sources: Vec<ProjectionSource>,
    /// The files' mode; default 0644.
    pub default_mode: u32,
}

/// One source of a projected volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProjectionSource {
    /// Keys of a config map.
    ConfigMap(KeyProjection),
    /// Keys of a secret.
    Secret(KeyProjection),
    /// Downward API files.
    #[serde(rename = "downwardAPI")]
    DownwardApi(DownwardApiProjection),
}

/// Keys of a config map or secret in a projected volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyProjection {
    /// The object.
    pub name: String,
    /// The keys to project and where (every key when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
    /// Whether the pod starts without it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub optional: bool,
}

/// Downward API files in a projected volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownwardApiProjection {
    /// The files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<DownwardApiFile>,
}

/// The default mode of volume files, as in Kubernetes (0644).
pub const DEFAULT_VOLUME_MODE: u32 = 0o644;

/// Largest config map or secret, in bytes of its keys and values (Kubernetes' 1 MiB).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A `v1 ConfigMap`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMap {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// UTF-8 values by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Binary values by key (base64 in manifests); no key in both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binary_data: BTreeMap<String, ByteData>,
    /// Whether changes are refused (only deleting and creating again changes it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub immutable: bool,
}

impl ConfigMap {
    /// Every key with its bytes, `data` and `binaryData` together.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .chain(self.binary_data.iter().map(|(k, v)| (k.as_str(), &v.0[..])))
    }
}

/// A `v1 Secret`. `stringData` is merged into `data` when parsed (as Kubernetes does on
/// write), so a parsed secret holds only `data`.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The values by key (base64 in manifests and in `-o yaml`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, ByteData>,
    /// `Opaque` (the default), `kubernetes.io/tls`, `kubernetes.io/basic-auth`,
    /// `kubernetes.io/dockerconfigjson`, `kubernetes.io/ssh-auth`, or a type of the user's own
    /// with a domain (`example.com/token`).
    #[serde(rename = "type")]
    pub secret_type: String,
    /// Whether changes are refused.
    #[serde(default, skip_serializing_if = "is_false")]
    pub immutable: bool,
}

impl fmt::Debug for Secret {
    /// Keys and sizes only, never a value (logs must not hold secrets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.secret_type)
            .field("data", &self.data)
            .field("immutable", &self.immutable)
            .finish()
    }
}

/// Bytes written as base64 in manifests and objects. `Debug` prints the size only.
#[derive(Clone, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct ByteData(pub Vec<u8>);

impl fmt::Debug for ByteData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for ByteData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for ByteData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(ByteData)
            .map_err(de::Error::custom)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A port a container listens on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    /// The port number (1-65535).
    pub container_port: u16,
    /// A name services and probes can refer to (an IANA service name, unique in the
    /// container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `TCP` (default) or `UDP`.
    pub protocol: Protocol,
    /// The node port to expose it on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
}

/// A port's protocol.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

/// CPU and memory requests and limits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequirements {
    /// What the scheduler reserves.
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub requests: ResourceList,
    /// What the container may use at most.
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub limits: ResourceList,
}

impl ResourceRequirements {
    /// Whether neither requests nor limits are set.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }
}

/// Amounts of CPU and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceList {
    /// CPU, in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Memory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
}

impl ResourceList {
    /// Whether no amount is set.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none()
    }
}

/// A health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// How to check (exactly one of `httpGet`, `tcpSocket`, `exec`).
    #[serde(flatten)]
    pub handler: ProbeHandler,
    /// Seconds after the container starts before the first check; default 0.
    pub initial_delay_seconds: u32,
    /// Seconds between checks; default 10.
    pub period_seconds: u32,
    /// Seconds before a check times out; default 1.
    pub timeout_seconds: u32,
    /// Consecutive successes to count as healthy after a failure; default 1 (and must be 1
    /// for liveness and startup probes).
    pub success_threshold: u32,
    /// Consecutive failures to count as unhealthy; default 3.
    pub failure_threshold: u32,
}

impl Probe {
    /// A probe with Kubernetes' default timings.
    pub fn new(handler: ProbeHandler) -> Probe {
        Probe {
            handler,
            initial_delay_seconds: 0,
            period_seconds: 10,
            timeout_seconds: 1,
            success_threshold: 1,
            failure_threshold: 3,
        }
    }
}

/// Which of a container's probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    /// `startupProbe`: holds the others until it passes.
    Startup,
    /// `livenessProbe`: the container is restarted when it fails.
    Liveness,
    /// `readinessProbe`: decides whether the pod is ready.
    Readiness,
}

impl ProbeKind {
    /// `startup`, `liveness` or `readiness`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startup",
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
        }
    }

    /// This probe of `container`, if it has one.
    pub fn probe_of(self, container: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => container.startup_probe.as_ref(),
            ProbeKind::Liveness => container.liveness_probe.as_ref(),
            ProbeKind::Readiness => container.readiness_probe.as_ref(),
        }
    }
}

/// How a probe checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeHandler {
    /// An HTTP GET; healthy on a 2xx or 3xx answer.
    HttpGet(HttpGetAction),
    /// A TCP connection; healthy if it opens.
    TcpSocket(TcpSocketAction),
    /// A command in the container; healthy if it exits 0.
    Exec(ExecAction),
}

/// An HTTP GET probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetAction {
    /// Path; default `/`.
    pub path: String,
    /// Port number or the name of one of the container's ports.
    pub port: PortRef,
    /// `HTTP` (default) or `HTTPS` (certificates are not verified, as in Kubernetes).
    pub scheme: Scheme,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

/// An HTTP header of a probe request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

/// HTTP or HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Scheme {
    /// Plain HTTP (the default).
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// HTTPS.
    #[serde(rename = "HTTPS")]
    Https,
}

/// A TCP probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSocketAction {
    /// Port number or the name of one of the container's ports.
    pub port: PortRef,
}

/// A command probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAction {
    /// The command and its arguments (not run in a shell).
    pub command: Vec<String>,
}

/// A port given by number or by the name of a container port (Kubernetes' int-or-string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A port number.
    Number(u16),
    /// A container port's name.
    Name(String),
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

/// The desired state of a Deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentSpec {
    /// How many pods; default 1.
    pub replicas: u32,
    /// Which pods belong to the Deployment; must match the template's labels.
    pub selector: LabelSelector,
    /// The pods to run.
    pub template: PodTemplateSpec,
    /// How to replace old pods with new ones; default RollingUpdate with 25% / 25%.
    pub strategy: DeploymentStrategy,
    /// Seconds a new pod must be ready before it counts as available; default 0.
    pub min_ready_seconds: u32,
    /// Old revisions to keep for rollback; default 10.
    pub revision_history_limit: u32,
    /// Seconds without progress before the rollout is reported as failed
    /// (`Progressing=False`, `ProgressDeadlineExceeded`); default 600.
    pub progress_deadline_seconds: u32,
    /// Whether rollouts are paused; default false.
    pub paused: bool,
}

impl Default for DeploymentSpec {
    fn default() -> Self {
        DeploymentSpec {
            replicas: 1,
            selector: LabelSelector::default(),
            template: PodTemplateSpec::default(),
            strategy: DeploymentStrategy::default(),
            min_ready_seconds: 0,
            revision_history_limit: 10,
            progress_deadline_seconds: 600,
            paused: false,
        }
    }
}

/// A label selector (only `matchLabels`; `matchExpressions` is not supported yet).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Labels a pod must all have.
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    /// Whether `labels` has every label of the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The pods a Deployment creates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodTemplateSpec {
    /// The pods' labels and annotations.
    pub metadata: TemplateMeta,
    /// The pods' spec.
    pub spec: PodSpec,
}

/// A pod template's metadata: labels and annotations (a template has no name of its own).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMeta {
    /// Labels every pod gets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations every pod gets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How a Deployment replaces its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum DeploymentStrategy {
    /// Kill all old pods, then create the new ones.
    Recreate,
    /// Replace pods a few at a time.
    RollingUpdate {
        /// How many at a time.
        #[serde(rename = "rollingUpdate")]
        rolling_update: RollingUpdate,
    },
}

impl Default for DeploymentStrategy {
    fn default() -> Self {
        DeploymentStrategy::RollingUpdate {
            rolling_update: RollingUpdate::default(),
        }
    }
}

/// The pace of a rolling update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollingUpdate {
    /// Pods above the desired count during the update; default 25%.
    pub max_surge: IntOrPercent,
    /// Pods below the desired count during the update; default 25%.
    pub max_unavailable: IntOrPercent,
}

impl Default for RollingUpdate {
    fn default() -> Self {
        RollingUpdate {
            max_surge: IntOrPercent::Percent(25),
            max_unavailable: IntOrPercent::Percent(25),
        }
    }
}

impl RollingUpdate {
    /// `(max surge, max unavailable)` as pod counts for `replicas` desired pods, as Kubernetes
    /// resolves them: surge rounds up, unavailability rounds down, and if both come to 0,
    /// one pod may be unavailable (so that the rollout can make progress).
    pub fn resolve(&self, replicas: u32) -> (u32, u32) {
        let surge = self.max_surge.resolve(replicas, true);
        let unavailable = self.max_unavailable.resolve(replicas, false);
        if surge == 0 && unavailable == 0 {
            (0, 1)
        } else {
            (surge, unavailable)
        }
    }
}

/// A count or a percentage of the desired replicas (`3` or `"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntOrPercent {
    /// A number of pods.
    Int(u32),
    /// A percentage of the desired replicas.
    Percent(u32),
}

impl IntOrPercent {
    /// The number of pods for `replicas`, a percentage rounded up or down.
    pub fn resolve(self, replicas: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Int(n) => n,
            IntOrPercent::Percent(p) => {
                let scaled = u64::from(p) * u64::from(replicas);
                let n = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    /// Whether this is zero pods (`0` or `"0%"`).
    pub fn is_zero(self) -> bool {
        matches!(self, IntOrPercent::Int(0) | IntOrPercent::Percent(0))
    }

    /// Parses `"25%"`.
    pub fn parse_percent(text: &str) -> Option<IntOrPercent> {
        let digits = text.strip_suffix('%')?;
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(IntOrPercent::Percent)
    }
}

impl fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrPercent::Int(n) => write!(f, "{n}"),
            IntOrPercent::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrPercent::Int(n) => s.serialize_u32(*n),
            IntOrPercent::Percent(_) => s.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IntOrPercent, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(IntOrPercent::Int(n)),
            Raw::Text(t) => IntOrPercent::parse_percent(&t)
                .ok_or_else(|| de::Error::custom(format!("{t:?} is not a count or a percentage"))),
        }
    }
}

/// A `v1 Service`: a stable virtual address for the ready pods its selector matches.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Type, selector, ports and cluster IP.
    pub spec: ServiceSpec,
}

/// The desired state of a Service. Fields are in the order `kubectl get -o yaml` prints them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// The virtual IP: given by the user, or assigned by the cluster when the service is first
    /// applied and kept in the stored object from then on (as Kubernetes' API server does), or
    /// `None` for a headless service. Left out of the stored form only while unassigned (a
    /// manifest as parsed, before `apply` assigns it).
    #[serde(
        rename = "clusterIP",
        default,
        skip_serializing_if = "ClusterIp::is_auto"
    )]
    pub cluster_ip: ClusterIp,
    /// The ports (at least one, except for a headless service); names unique, and required
    /// when there is more than one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Labels a pod must all have to be an endpoint. Empty: the service has no endpoints
    /// (Kubernetes leaves them to the user; shoal has no Endpoints objects to write).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Always `None` (`ClientIP` is not supported yet).
    pub session_affinity: SessionAffinity,
    /// `ClusterIP` (the default) or `NodePort`.
    #[serde(rename = "type")]
    pub kind: ServiceType,
}

impl ServiceSpec {
    /// Whether the service is headless (`clusterIP: None`).
    pub fn is_headless(&self) -> bool {
        self.cluster_ip == ClusterIp::Headless
    }
}

/// A Service's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ServiceType {
    /// A virtual IP reachable inside the cluster (the default).
    #[default]
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    /// A cluster IP, plus a port on every node (`nodePort`, 30000-32767).
    NodePort,
}

impl ServiceType {
    /// The name Kubernetes uses (`ClusterIP`, `NodePort`).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
        }
    }
}

/// Session affinity: only `None` (every connection may go to any endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SessionAffinity {
    /// No affinity (the default, and the only value supported).
    #[default]
    None,
}

/// A Service's `spec.clusterIP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClusterIp {
    /// Absent or `""`: the cluster assigns an address when the service is applied.
    #[default]
    Auto,
    /// `None`: a headless service, with no virtual IP.
    Headless,
    /// This address (which must lie in the cluster's service range).
    Ip(Ipv4Addr),
}

impl ClusterIp {
    /// Whether no address is given (or assigned) yet.
    pub fn is_auto(&self) -> bool {
        matches!(self, ClusterIp::Auto)
    }

    /// The address, if it is one.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        match self {
            ClusterIp::Ip(ip) => Some(*ip),
            _ => None,
        }
    }

    /// Parses what a manifest may give: `""`, `None`, or an IPv4 address.
    pub fn parse(text: &str) -> Option<ClusterIp> {
        match text {
            "" => Some(ClusterIp::Auto),
            "None" => Some(ClusterIp::Headless),
            _ => text.parse().ok().map(ClusterIp::Ip),
        }
    }
}

impl fmt::Display for ClusterIp {
    /// `""`, `None`, or the address, as Kubernetes writes `spec.clusterIP`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterIp::Auto => Ok(()),
            ClusterIp::Headless => f.write_str("None"),
            ClusterIp::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl Serialize for ClusterIp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClusterIp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ClusterIp, D::Error> {
        let text = String::deserialize(d)?;
        ClusterIp::parse(&text).ok_or_else(|| {
            de::Error::custom(format!("{text:?} is not an IPv4 address, \"\" or None"))
        })
    }
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// The port's name (a DNS-1123 label); required when the service has more than one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Always TCP (UDP and SCTP are not supported yet).
    pub protocol: Protocol,
    /// The port on the cluster IP (1-65535).
    pub port: u16,
    /// The pods' port: a number, or the name of a container port (a pod without a port of
    /// that name is not an endpoint). Defaults to `port`.
    pub target_port: PortRef,
    /// With type NodePort: the port every node opens for this port (30000-32767); assigned by
    /// the cluster when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
}

impl Default for ServicePort {
    fn default() -> Self {
        ServicePort::new(0)
    }
}

impl ServicePort {
    /// A TCP port with `targetPort` defaulted to `port`.
    pub fn new(port: u16) -> ServicePort {
        ServicePort {
            name: None,
            protocol: Protocol::Tcp,
            port,
            target_port: PortRef::Number(port),
            node_port: None,
        }
    }
}

/// One parsed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// A Namespace.
    Namespace(Namespace),
    /// A Pod.
    Pod(Pod),
    /// A Deployment.
    Deployment(Deployment),
    /// A Service.
    Service(Service),
    /// A ConfigMap.
    ConfigMap(ConfigMap),
    /// A Secret.
    Secret(Secret),
}

impl Resource {
    /// The kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Pod(_) => Kind::Pod,
            Resource::Deployment(_) => Kind::Deployment,
            Resource::Service(_) => Kind::Service,
            Resource::ConfigMap(_) => Kind::ConfigMap,
            Resource::Secret(_) => Kind::Secret,
        }
    }

    /// The metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Namespace(o) => &o.metadata,
            Resource::Pod(o) => &o.metadata,
            Resource::Deployment(o) => &o.metadata,
            Resource::Service(o) => &o.metadata,
            Resource::ConfigMap(o) => &o.metadata,
            Resource::Secret(o) => &o.metadata,
        }
    }

    /// The metadata, to set the read-only fields before rendering.
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Resource::Namespace(o) => &mut o.metadata,
            Resource::Pod(o) => &mut o.metadata,
            Resource::Deployment(o) => &mut o.metadata,
            Resource::Service(o) => &mut o.metadata,
            Resource::ConfigMap(o) => &mut o.metadata,
            Resource::Secret(o) => &mut o.metadata,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// Where the object lives in the replicated state: namespace `default` when the manifest
    /// named none, empty for Namespace objects (cluster-scoped).
    pub fn key(&self) -> ResourceKey {
        let meta = self.metadata();
        let namespace = if self.kind().is_namespaced() {
            meta.namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
        } else {
            String::new()
        };
        ResourceKey {
            kind: self.kind(),
            namespace,
            name: meta.name.clone(),
        }
    }
}

impl Serialize for Resource {
    /// The Kubernetes object: `apiVersion`, `kind`, `metadata`, `spec` (none for a Namespace);
    /// a ConfigMap's `immutable`, `data` and `binaryData`, a Secret's `immutable`, `data` and
    /// `type` instead of a spec.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kind = self.kind();
        let mut st = s.serialize_struct("Resource", 6)?;
        st.serialize_field("apiVersion", kind.api_version())?;
        st.serialize_field("kind", kind.as_str())?;
        st.serialize_field("metadata", self.metadata())?;
        match self {
            Resource::Namespace(_) => {}
            Resource::Pod(p) => st.serialize_field("spec", &p.spec)?,
            Resource::Deployment(d) => st.serialize_field("spec", &d.spec)?,
            Resource::Service(svc) => st.serialize_field("spec", &svc.spec)?,
            Resource::ConfigMap(cm) => {
                if cm.immutable {
                    st.serialize_field("immutable", &true)?;
                }
                if !cm.data.is_empty() {
                    st.serialize_field("data", &cm.data)?;
                }
                if !cm.binary_data.is_empty() {
                    st.serialize_field("binaryData", &cm.binary_data)?;
                }
            }
            Resource::Secret(secret) => {
                if secret.immutable {
                    st.serialize_field("immutable", &true)?;
                }
                if !secret.data.is_empty() {
                    st.serialize_field("data", &secret.data)?;
                }
                st.serialize_field("type", &secret.secret_type)?;
            }
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults() {
        for (image, policy) in [
            ("nginx", PullPolicy::Always),
            ("nginx:latest", PullPolicy::Always),
            ("nginx:1.27", PullPolicy::IfNotPresent),
            ("registry:5000/team/app", PullPolicy::Always),
            ("registry:5000/team/app:v2", PullPolicy::IfNotPresent),
            ("nginx@sha256:abcd", PullPolicy::IfNotPresent),
        ] {
            assert_eq!(PullPolicy::default_for(image), policy, "{image}");
        }
    }

    #[test]
    fn rolling_update_resolution() {
        let ru = RollingUpdate::default();
        assert_eq!(ru.resolve(10), (3, 2));
        assert_eq!(ru.resolve(1), (1, 0));
        assert_eq!(ru.resolve(0), (0, 1));
        let ints = RollingUpdate {
            max_surge: IntOrPercent::Int(0),
            max_unavailable: IntOrPercent::Int(2),
        };
        assert_eq!(ints.resolve(5), (0, 2));
        assert_eq!(
            IntOrPercent::parse_percent("25%"),
            Some(IntOrPercent::Percent(25))
        );
        assert_eq!(IntOrPercent::parse_percent("%"), None);
        assert_eq!(IntOrPercent::parse_percent("2.5%"), None);
        assert_eq!(IntOrPercent::parse_percent("-5%"), None);
    }
}
